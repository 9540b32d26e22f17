//! A compiled constraint: a lazily built byte-level DFA plus the vocabulary, with token masks cached per DFA state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use regex_syntax::hir::{Hir, HirKind, Look};

use crate::bitset::TokenBitset;
use crate::dfa::{Cache, Dfa, DEAD};
use crate::error::{Error, Result};
use crate::rx::Rx;
use crate::space::{char_offset, each_position, is_plain, loop_run, KindTokens, Loop, TokenSpace, UPTO};

/// Limits on compiling one constraint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes the lazy DFA's states may take (its cache); a grammar that needs more stops admitting tokens.
    pub dfa_bytes: usize,
    /// Bytes the compiled program (the NFA the DFA is built from) may take.
    pub determinize_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { dfa_bytes: 64 << 20, determinize_bytes: 128 << 20 }
    }
}

/// Ends every output in the compiled language, so a match is only reported after it: a byte that is not valid
/// UTF-8 anywhere, never produced by the constraints (which are all over text).
const END: u8 = 0xFF;

/// Subtrees with fewer tokens than this are walked even from a looping state (not worth the state's check).
const BULK_MIN: usize = 16;

/// A DFA state (stable for the grammar's life: the lazy DFA's cache is never cleared).
pub(crate) type State = crate::dfa::State;

/// `regex` parsed as every constraint's regex is (nested up to 1000 deep: JSON Schema regexes nest deeply); a
/// syntax error says `what` was being parsed.
pub(crate) fn parse(regex: &str, what: &str) -> Result<Hir> {
    regex_syntax::ParserBuilder::new()
        .nest_limit(1000)
        .build()
        .parse(regex)
        .map_err(|e| Error::syntax(format!("{what}: {e}")))
}

/// The regex as a whole-output pattern: a leading `^` and trailing `$` are implied and dropped; anchors or
/// look-arounds anywhere else are refused (they would make states that are not dead but can never match).
pub(crate) fn whole_output(h: Hir) -> Result<Hir> {
    if h.properties().look_set().is_empty() {
        return Ok(h);
    }
    let mut items = match h.kind() {
        HirKind::Concat(_) => match h.into_kind() {
            HirKind::Concat(hs) => hs,
            _ => unreachable!("checked just above"),
        },
        _ => vec![h],
    };
    while items.first().is_some_and(|x| matches!(x.kind(), HirKind::Look(Look::Start))) {
        items.remove(0);
    }
    while items.last().is_some_and(|x| matches!(x.kind(), HirKind::Look(Look::End))) {
        items.pop();
    }
    let h = Hir::concat(items);
    if !h.properties().look_set().is_empty() {
        return Err(Error::unsupported("regex: anchors or look-arounds inside the pattern"));
    }
    Ok(h)
}

/// What [`Grammar`] keeps behind its lock: the lazy DFA's cache and, per state met in a mask's walk, how it loops
/// (indexed by state: a mask's walk asks it of thousands of states).
struct Lazy {
    cache: Cache,
    uniform: Vec<Option<Uniform>>,
}

/// Where every character of a kind leads a state, when they all lead to the same one.
#[derive(Debug, Clone, Copy)]
struct Uniform {
    plain: Option<State>,
    text: Option<State>,
    /// The plain bytes that do not lead back to the state when every other character of text does (a few:
    /// the `.` of `[^.]*\.json`); empty otherwise.
    text_loop_but: u128,
}

/// The most bytes [`Uniform::text_loop_but`] holds.
const LOOP_BUT_MAX: u32 = 8;

/// A regular language over output bytes, ready to mask tokens. Cheap to share (`Arc`) across requests.
///
/// The DFA is built lazily (the `dfa` module): compiling is just the program (an NFA whose shared pieces are
/// called, not copied), and states are made the first time an output or a mask reaches them, so a schema with
/// a huge DFA costs only the part requests visit.
pub struct Grammar {
    dfa: Dfa,
    cache: Mutex<Lazy>,
    start: State,
    /// Set when the DFA's cache filled up: no new state can be made, so no mask is complete any more and nothing
    /// more is admitted.
    exhausted: AtomicBool,
    space: Arc<TokenSpace>,
    masks: DashMap<State, Arc<TokenBitset>>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar").field("cached_masks", &self.masks.len()).finish()
    }
}

impl Grammar {
    /// Compiles `regex` (the whole output must match it) over `space`.
    pub fn from_regex(regex: &str, space: Arc<TokenSpace>, limits: Limits) -> Result<Self> {
        if regex.len() > limits.dfa_bytes / 16 {
            return Err(Error::too_large(format!(
                "regex of {} bytes is past the limit of {}",
                regex.len(),
                limits.dfa_bytes / 16
            )));
        }
        let hir = parse(regex, "regex")?;
        Self::from_hir(hir, space, limits)
    }

    /// Compiles a parsed regex (the whole output must match it; a leading `^` and trailing `$` are implied)
    /// over `space`.
    pub fn from_hir(hir: Hir, space: Arc<TokenSpace>, limits: Limits) -> Result<Self> {
        Self::from_rx(&Rx::hir(whole_output(hir)?), space, limits)
    }

    /// Compiles a regex tree (the whole output must match it) over `space`.
    pub fn from_rx(rx: &Rx, space: Arc<TokenSpace>, limits: Limits) -> Result<Self> {
        // The END byte closes every member; parts that never match are left out of the program, so every state
        // but the dead one is still a prefix of some member.
        let whole = Rx::concat(vec![rx.clone(), Rx::literal(&[END])]);
        let program = whole
            .to_program(limits.determinize_bytes)?
            .ok_or_else(|| Error::syntax("the constraint matches no output at all"))?;
        let dfa = Dfa::new(program);
        let mut cache = dfa.create_cache(limits.dfa_bytes);
        let start = dfa
            .start(&mut cache)
            .map_err(|_| Error::too_large("the constraint's start state is past the DFA's cache limit"))?;
        Ok(Self {
            dfa,
            cache: Mutex::new(Lazy { cache, uniform: Vec::new() }),
            start,
            exhausted: AtomicBool::new(false),
            space,
            masks: DashMap::new(),
        })
    }

    pub fn space(&self) -> &Arc<TokenSpace> {
        &self.space
    }
    pub(crate) fn start(&self) -> State {
        self.start
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lazy> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One byte on from `s`, with the cache held; `None` when the output leaves the language.
    #[inline]
    fn step(&self, cache: &mut Cache, s: State, b: u8) -> Option<State> {
        // A transition made before: a table lookup. END is never output (only `accepts` reads it).
        if b != END {
            if let Some(next) = self.dfa.known(cache, s, b) {
                return (next != DEAD).then_some(next);
            }
        }
        self.step_slow(cache, s, b)
    }

    fn step_slow(&self, cache: &mut Cache, s: State, b: u8) -> Option<State> {
        if b == END || self.exhausted.load(Ordering::Relaxed) {
            return None;
        }
        match self.dfa.next(cache, s, b) {
            Ok(next) => (next != DEAD).then_some(next),
            Err(_) => {
                // The cache is full: the grammar admits nothing more (a mask computed now would be partial).
                self.exhausted.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether the output may end in state `s`.
    pub(crate) fn accepts(&self, s: State) -> bool {
        let mut lazy = self.lock();
        let cache = &mut lazy.cache;
        if self.exhausted.load(Ordering::Relaxed) {
            return false;
        }
        match self.dfa.next(cache, s, END) {
            Ok(end) => self.dfa.is_match(cache, end),
            Err(_) => {
                self.exhausted.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    /// Walks `bytes` from `s`; `None` if the output leaves the language.
    pub(crate) fn walk(&self, s: State, bytes: &[u8]) -> Option<State> {
        self.walk_in(&mut self.lock().cache, s, bytes)
    }

    /// [`Grammar::walk`] with the cache held.
    fn walk_in(&self, cache: &mut Cache, mut s: State, bytes: &[u8]) -> Option<State> {
        for &b in bytes {
            s = self.step(cache, s, b)?;
        }
        Some(s)
    }

    /// The single byte that may follow in `s`, if exactly one may (`None` when several or none).
    pub(crate) fn only_next(&self, s: State) -> Option<(u8, State)> {
        let cache = &mut self.lock().cache;
        let mut only = None;
        for b in 0..=255u8 {
            if let Some(t) = self.step(cache, s, b) {
                if only.is_some() {
                    return None;
                }
                only = Some((b, t));
            }
        }
        only
    }

    /// Tokens allowed in state `s` (EOS excluded), computed once per state and cached.
    pub(crate) fn mask(&self, s: State) -> Arc<TokenBitset> {
        if let Some(m) = self.masks.get(&s) {
            return m.clone();
        }
        let m = Arc::new(self.compute_mask(s));
        if !self.exhausted.load(Ordering::Relaxed) {
            self.masks.insert(s, m.clone());
        }
        m
    }

    /// Depth-first walk of the token trie alongside the DFA, pruning at dead states, with shortcuts for the
    /// states where output spends most of its tokens (a walk of Llama 3's whole trie takes milliseconds):
    ///
    /// - a state that every character of text leads back to (free text in a JSON string): every text token is
    ///   allowed from a precomputed set and only the trie of the other tokens (5% of Llama 3's) is walked;
    ///   likewise for states that only plain ASCII leads back to;
    /// - a state from which every character leads to one same state, and so on (a string with a length bound
    ///   counting its characters down): [`Grammar::chain_mask`];
    /// - a state that every character but a few ASCII ones leads back to (`[^.]*` before `\.json`): every text
    ///   token but those holding one of these, which are walked, and the trie of the others;
    /// - a state from which most first characters lead to free text (the start of a key in an object that
    ///   takes any key, next to the declared ones): [`Grammar::split_root`];
    /// - below the root, a node whose state loops on text: [`Grammar::bulk`].
    ///
    /// A state that loops on text is never in the middle of a character (it takes ASCII next), and the
    /// language is UTF-8, so "the bytes from here on are whole text" is exactly what leads it back to itself.
    fn compute_mask(&self, s: State) -> TokenBitset {
        let mut lazy = self.lock();
        let space = &self.space;
        let (trie, mut mask, ranges) = match self.loop_kind(&mut lazy, s) {
            kind @ (Loop::Text | Loop::Plain) => {
                let k = space.kind(kind);
                (&k.rest, k.set.clone(), vec![(1, k.rest.node_count(), s)])
            }
            Loop::No => {
                let u = self.uniform(&mut lazy, s);
                if u.text.is_some() {
                    return self.chain_mask(&mut lazy, s, Loop::Text);
                }
                if u.plain.is_some() {
                    return self.chain_mask(&mut lazy, s, Loop::Plain);
                }
                if u.text_loop_but != 0 {
                    let mut mask = space.text.set.clone();
                    let but = (0..128).filter(|&b| u.text_loop_but & (1 << b) != 0);
                    for b in but.clone() {
                        space.containing[b].iter().for_each(|&t| mask.unset(t));
                    }
                    for b in but {
                        for &t in &space.containing[b] {
                            if self.walk_in(&mut lazy.cache, s, space.vocab.bytes(t).unwrap_or_default()).is_some() {
                                mask.set(t);
                            }
                        }
                    }
                    (&space.text.rest, mask, vec![(1, space.text.rest.node_count(), s)])
                } else {
                    let (mask, ranges) = self.split_root(&mut lazy, s);
                    (&space.trie, mask, ranges)
                }
            }
        };
        let full = std::ptr::eq(trie, &space.trie);
        // The state at each depth along the current path: a node's parent is the last node one level up.
        let mut states = vec![s; trie.max_depth + 1];
        for (start, end, before) in ranges.into_iter().filter(|r| r.0 < r.1) {
            states[trie.nodes[start].depth as usize - 1] = before;
            let mut i = start;
            while i < end {
                let node = trie.nodes[i];
                let depth = node.depth as usize;
                let Some(next) = self.step(&mut lazy.cache, states[depth - 1], node.byte) else {
                    i = node.end as usize;
                    continue;
                };
                for &t in trie.tokens_at(i) {
                    mask.set(t);
                }
                let below = trie.below(i);
                if full && below.len() >= BULK_MIN {
                    let kind = self.loop_kind(&mut lazy, next);
                    if kind != Loop::No {
                        self.bulk(&mut lazy.cache, next, depth, below, kind, &mut mask);
                        i = node.end as usize;
                        continue;
                    }
                }
                states[depth] = next;
                i += 1;
            }
        }
        if self.exhausted.load(Ordering::Relaxed) {
            mask.clear();
        }
        mask
    }

    /// The mask of `s`, a state from which every character of `kind` leads to one same state, and from there
    /// on for a while: inside a string with a length bound, counting its characters. Tokens all of that kind
    /// are allowed by their number of characters alone, from precomputed sets; the others (a closing quote after
    /// some text, say) are read from the state their leading run leads to.
    fn chain_mask(&self, lazy: &mut Lazy, s: State, kind: Loop) -> TokenBitset {
        let k = self.space.kind(kind);
        let ids = &self.space.trie.token_ids;
        // chain[j]: the state after j characters of the kind, as long as each leads on uniformly; a chain that
        // ends in a loop goes on for ever.
        let mut chain = vec![s];
        let mut endless = false;
        while chain.len() <= k.max_chars.min(254) {
            let last = chain[chain.len() - 1];
            let u = self.uniform(lazy, last);
            match if kind == Loop::Text { u.text } else { u.plain } {
                Some(to) if to == last => {
                    endless = true;
                    break;
                }
                Some(to) => chain.push(to),
                None => break,
            }
        }
        let most = if endless { usize::MAX } else { chain.len() - 1 };
        let at = |j: usize| chain[j.min(chain.len() - 1)];
        let mut mask = k.upto[most.min(UPTO)].clone();
        let cache = &mut lazy.cache;
        let vocab = &self.space.vocab;
        // The bytes of token `q` past `n` characters of its run.
        let past = |q: usize, n: usize| {
            let bytes = vocab.bytes(ids[q]).unwrap_or_default();
            &bytes[char_offset(bytes, n)..]
        };
        for &q in &k.long {
            let q = q as usize;
            if k.run_chars[q] as usize <= most || self.walk_in(cache, at(most), past(q, most)).is_some() {
                mask.set(ids[q]);
            }
        }
        each_position(&k.whole, 0..ids.len(), false, |q| {
            let run = k.run_chars[q] as usize;
            let live = if run <= most {
                self.walk_in(cache, at(run), &k.tail_bytes[k.tails[q] as usize..k.tails[q + 1] as usize]).is_some()
            } else {
                self.walk_in(cache, at(most), past(q, most)).is_some()
            };
            if live {
                mask.set(ids[q]);
            }
        });
        if self.exhausted.load(Ordering::Relaxed) {
            mask.clear();
        }
        mask
    }

    /// The first character of a walk from `s`, a state that loops on nothing, over the full trie: the starting
    /// mask and the subtrees left to walk, as (first node, end, the state before the first node).
    ///
    /// When the first character of most tokens leads to states that loop on one kind of text (the start of a key
    /// in an object that takes any key, next to the declared ones), the mask starts as every token of that kind
    /// and the subtrees that do not are taken out of it and walked: a few thousand token updates instead of one
    /// per token of the vocabulary.
    fn split_root(&self, lazy: &mut Lazy, s: State) -> (TokenBitset, Vec<(usize, usize, State)>) {
        let space = &self.space;
        let trie = &space.trie;
        let last = trie.node_count();
        let whole_walk = || (TokenBitset::new(space.vocab.len()), vec![(1, last, s)]);
        // The nodes one whole character down (one byte for ASCII and bytes that start no character): (node,
        // the state before it, its state, how that loops); live nodes part way through a character are `partial`,
        // for their own tokens.
        let mut kids: Vec<(usize, State, Option<State>, Loop)> = Vec::new();
        let mut partial: Vec<usize> = Vec::new();
        // The state before the node at each depth (1 to 4) of the current path.
        let mut before = [s; 5];
        let chars = &trie.first_chars;
        let mut i = 0;
        while i < chars.len() {
            let e = chars[i];
            let at = before[e.depth as usize - 1];
            match self.step(&mut lazy.cache, at, e.byte) {
                Some(next) if e.depth < e.len => {
                    partial.push(e.node as usize);
                    before[e.depth as usize] = next;
                    i += 1;
                }
                next => {
                    let kind = next.map_or(Loop::No, |x| self.loop_kind(lazy, x));
                    kids.push((e.node as usize, at, next, kind));
                    i = e.skip as usize;
                }
            }
        }
        let cover =
            |k: Loop| -> usize { kids.iter().filter(|x| x.3 == k).map(|&(c, ..)| trie.subtree_tokens(c).len()).sum() };
        let kind = if cover(Loop::Text) >= cover(Loop::Plain) { Loop::Text } else { Loop::Plain };
        if 2 * cover(kind) < trie.token_ids.len() {
            return whole_walk();
        }
        let k = space.kind(kind);
        let mut mask = k.set.clone();
        let ids = &trie.token_ids;
        // Tokens that end part way through a live first character: none is of either kind.
        for c in partial {
            for &t in trie.tokens_at(c) {
                mask.set(t);
            }
        }
        let mut ranges = Vec::new();
        for (c, before, next, loops) in kids {
            let tokens = trie.subtree_tokens(c);
            let depth = trie.nodes[c].depth as usize;
            match next {
                Some(next) if loops == kind => each_position(&k.whole, tokens, false, |q| {
                    if self.rest_live(&mut lazy.cache, next, k, q, depth) {
                        mask.set(ids[q]);
                    }
                }),
                _ => {
                    each_position(&k.whole, tokens, true, |q| mask.unset(ids[q]));
                    if next.is_some() {
                        ranges.push((c, trie.nodes[c].end as usize, before));
                    }
                }
            }
        }
        (mask, ranges)
    }

    /// The tokens below a node of the full trie (positions `below` in its `token_ids`), reached at `depth` in
    /// state `s` that loops on `kind`: those whose bytes from `depth` on are all of that kind are allowed as they
    /// are; the others are walked.
    fn bulk(
        &self,
        cache: &mut Cache,
        s: State,
        depth: usize,
        below: std::ops::Range<usize>,
        kind: Loop,
        mask: &mut TokenBitset,
    ) {
        let space = &self.space;
        let ids = &space.trie.token_ids;
        let k = space.kind(kind);
        each_position(&k.whole, below.clone(), true, |q| mask.set(ids[q]));
        each_position(&k.whole, below, false, |q| {
            if self.rest_live(cache, s, k, q, depth) {
                mask.set(ids[q]);
            }
        });
    }

    /// Whether the token at position `q` of the full trie, reached at `depth` in state `s` that loops on
    /// `k.kind`, stays live to its end. The run of that kind leads back to `s`, so the DFA only reads what
    /// follows it (usually a closing quote and what comes after).
    fn rest_live(&self, cache: &mut Cache, s: State, k: &KindTokens, q: usize, depth: usize) -> bool {
        if k.from[q] != u8::MAX && k.from[q] as usize <= depth {
            return true;
        }
        let rest = if k.run_end[q] as usize >= depth {
            &k.tail_bytes[k.tails[q] as usize..k.tails[q + 1] as usize]
        } else {
            // The run ended above this node (the path holds a byte of another kind): from here on.
            let bytes = self.space.vocab.bytes(self.space.trie.token_ids[q]).unwrap_or_default();
            let rest = bytes.get(depth..).unwrap_or_default();
            &rest[loop_run(rest, k.kind)..]
        };
        self.walk_in(cache, s, rest).is_some()
    }

    /// How `s` loops.
    fn loop_kind(&self, lazy: &mut Lazy, s: State) -> Loop {
        let u = self.uniform(lazy, s);
        if u.text == Some(s) {
            Loop::Text
        } else if u.plain == Some(s) {
            Loop::Plain
        } else {
            Loop::No
        }
    }

    /// Where every character of each kind leads `s`, when they all lead to one live state; worked out once per
    /// state.
    fn uniform(&self, lazy: &mut Lazy, s: State) -> Uniform {
        if let Some(&Some(u)) = lazy.uniform.get(s.index()) {
            return u;
        }
        let cache = &mut lazy.cache;
        let first = self.step(cache, s, b' ');
        let (mut same, mut back) = (true, 0u128);
        for b in (0x20..0x7Fu8).filter(|&b| is_plain(b)) {
            let to = self.step(cache, s, b);
            same &= to == first;
            if to != Some(s) {
                back |= 1 << b;
                if !same && back.count_ones() > LOOP_BUT_MAX {
                    break;
                }
            }
        }
        let plain = first.filter(|_| same);
        let text = plain.filter(|&to| self.text_leads_to(cache, s, to));
        let loops_but = back != 0 && back.count_ones() <= LOOP_BUT_MAX && self.text_leads_to(cache, s, s);
        let u = Uniform { plain, text, text_loop_but: if loops_but { back } else { 0 } };
        if lazy.uniform.len() <= s.index() {
            lazy.uniform.resize(s.index() + 1, None);
        }
        lazy.uniform[s.index()] = Some(u);
        u
    }

    /// Whether every multi-byte UTF-8 character leads `s` to `to`. Bytes of one DFA byte class act alike in
    /// every state, so one byte per class and position (within the valid range for that position) covers every
    /// character.
    fn text_leads_to(&self, cache: &mut Cache, s: State, to: State) -> bool {
        let classes = &self.dfa;
        let reps = |lo: u8, hi: u8, skip: &[u8]| -> Vec<u8> {
            let mut seen = Vec::new();
            let mut out = Vec::new();
            for b in (lo..=hi).filter(|b| !skip.contains(b)) {
                let c = classes.class(b);
                if !seen.contains(&c) {
                    seen.push(c);
                    out.push(b);
                }
            }
            out
        };
        let any = reps(0x80, 0xBF, &[]);
        // U+2028 and U+2029 (E2 80 A8/A9) are not text here (patterns leave out ECMA line terminators): their
        // last bytes are skipped after E2 80 when 0x80 is a class of its own (otherwise they stand for other
        // characters as well, and are checked).
        let lone_80 = (0x80..=0xBFu8).filter(|&x| classes.class(x) == classes.class(0x80)).count() == 1;
        let no_separators = reps(0x80, 0xBF, &[0xA8, 0xA9]);
        for lead in 0xC2..=0xF4u8 {
            // The valid range of the byte after the lead, and how many continuation bytes follow that one.
            let second = match lead {
                0xE0 => reps(0xA0, 0xBF, &[]),
                0xED => reps(0x80, 0x9F, &[]),
                0xF0 => reps(0x90, 0xBF, &[]),
                0xF4 => reps(0x80, 0x8F, &[]),
                _ => any.clone(),
            };
            let more = match lead {
                0xC2..=0xDF => 0,
                0xE0..=0xEF => 1,
                _ => 2,
            };
            let Some(a) = self.step(cache, s, lead) else { return false };
            for &b in &second {
                let Some(t) = self.step(cache, a, b) else { return false };
                let third = if lead == 0xE2 && b == 0x80 && lone_80 { &no_separators } else { &any };
                let mut frontier = vec![t];
                for level in 0..more {
                    let mut next = Vec::new();
                    for &f in &frontier {
                        for &c in if level == 0 { third } else { &any } {
                            match self.step(cache, f, c) {
                                Some(x) if !next.contains(&x) => next.push(x),
                                Some(_) => {}
                                None => return false,
                            }
                        }
                    }
                    frontier = next;
                }
                if frontier.iter().any(|&f| f != to) {
                    return false;
                }
            }
        }
        true
    }

    /// Forgets the cached masks (the DFA's states stay built): for measuring mask computation.
    pub fn clear_masks(&self) {
        self.masks.clear();
    }

    /// States whose masks are cached.
    pub fn cached_masks(&self) -> usize {
        self.masks.len()
    }
}
