//! A compiled constraint: a lazily built byte-level DFA plus the vocabulary, with token masks cached per DFA state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::nfa::thompson;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};
use regex_syntax::hir::{Hir, HirKind, Look};

use crate::bitset::TokenBitset;
use crate::error::{Error, Result};
use crate::trie::TokenTrie;
use crate::vocab::Vocabulary;

/// Limits on compiling one constraint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes the lazy DFA's states may take (its cache); a grammar that needs more stops admitting tokens.
    pub dfa_bytes: usize,
    /// Bytes the NFA may take.
    pub determinize_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { dfa_bytes: 64 << 20, determinize_bytes: 128 << 20 }
    }
}

/// A vocabulary and its trie, built once per tokenizer and shared by every grammar over it.
#[derive(Debug)]
pub struct TokenSpace {
    pub vocab: Vocabulary,
    pub trie: TokenTrie,
    /// Tokens made only of [`is_plain`] bytes (three quarters of Llama 3's vocabulary) and the trie of the others.
    plain: TokenBitset,
    rest_of_plain: TokenTrie,
    /// Tokens that are whole UTF-8 text without `"`, `\` or controls (all but 5% of Llama 3's), and the trie of the
    /// others.
    text: TokenBitset,
    rest_of_text: TokenTrie,
}

/// Printable ASCII but `"` and `\`: what free text inside a JSON string is mostly made of.
fn is_plain(b: u8) -> bool {
    (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\'
}

fn is_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|t| t.chars().all(|c| c as u32 >= 0x80 || is_plain(c as u8)))
}

impl TokenSpace {
    pub fn new(vocab: Vocabulary) -> Arc<Self> {
        let trie = TokenTrie::new(&vocab);
        let mut plain = TokenBitset::new(vocab.len());
        let mut text = TokenBitset::new(vocab.len());
        for (id, bytes) in vocab.iter() {
            if bytes.iter().all(|&b| is_plain(b)) {
                plain.set(id);
            }
            if is_text(bytes) {
                text.set(id);
            }
        }
        let rest_of_plain = TokenTrie::from_tokens(vocab.iter().filter(|(id, _)| !plain.contains(*id)));
        let rest_of_text = TokenTrie::from_tokens(vocab.iter().filter(|(id, _)| !text.contains(*id)));
        Arc::new(Self { vocab, trie, plain, rest_of_plain, text, rest_of_text })
    }
}

/// Ends every output in the compiled language, so a match is only reported after it: a byte that is not valid
/// UTF-8 anywhere, never produced by the constraints (which are all over text).
const END: u8 = 0xFF;

/// A DFA state (stable for the grammar's life: the lazy DFA's cache is never cleared, see [`Grammar::step`]).
pub(crate) type State = LazyStateID;

/// `h` without the parts that can never match (empty classes), or `None` when nothing matches at all. With none
/// left, every state of the Thompson NFA lies on a path to the match, so every DFA state but the dead one can
/// still end in a match: "not dead" is "still a prefix of the language", which is what a mask needs.
fn prune_fail(h: &Hir) -> Option<Hir> {
    match h.kind() {
        HirKind::Class(c) => match c {
            regex_syntax::hir::Class::Unicode(u) if u.ranges().is_empty() => None,
            regex_syntax::hir::Class::Bytes(b) if b.ranges().is_empty() => None,
            _ => Some(h.clone()),
        },
        HirKind::Empty | HirKind::Literal(_) | HirKind::Look(_) => Some(h.clone()),
        HirKind::Capture(c) => prune_fail(&c.sub),
        HirKind::Repetition(r) => match prune_fail(&r.sub) {
            Some(sub) => Some(Hir::repetition(regex_syntax::hir::Repetition { sub: Box::new(sub), ..r.clone() })),
            None if r.min == 0 => Some(Hir::empty()),
            None => None,
        },
        HirKind::Concat(hs) => hs.iter().map(prune_fail).collect::<Option<Vec<_>>>().map(Hir::concat),
        HirKind::Alternation(hs) => {
            let kept: Vec<Hir> = hs.iter().filter_map(prune_fail).collect();
            (!kept.is_empty()).then(|| Hir::alternation(kept))
        }
    }
}

/// The regex as a whole-output pattern: a leading `^` and trailing `$` are implied and dropped; anchors or
/// look-arounds anywhere else are refused (they would make states that are not dead but can never match).
fn whole_output(h: Hir) -> Result<Hir> {
    let mut items = match h.kind() {
        HirKind::Concat(hs) => hs.clone(),
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

/// A regular language over output bytes, ready to mask tokens. Cheap to share (`Arc`) across requests.
///
/// The DFA is built lazily (regex-automata's hybrid DFA): compiling is just the NFA, and states are made the
/// first time an output or a mask reaches them, so a schema with a huge DFA costs only the part requests visit.
pub struct Grammar {
    dfa: DFA,
    cache: Mutex<Cache>,
    start: State,
    /// Set when the DFA's cache filled up: its state ids are then no longer valid, so nothing more is admitted.
    exhausted: AtomicBool,
    space: Arc<TokenSpace>,
    masks: DashMap<State, Arc<TokenBitset>>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar").field("cached_masks", &self.masks.len()).finish()
    }
}

fn too_large_or_syntax(regex: &str, e: &dyn std::error::Error) -> Error {
    // The cause (e.g. "exceeded size limit") is in the source chain.
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    if msg.contains("exceeded") || msg.contains("limit") || msg.contains("capacity") {
        Error::too_large(format!("{regex} compiles past the limits: {msg}"))
    } else {
        Error::syntax(format!("regex: {msg}"))
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
        let hir = regex_syntax::ParserBuilder::new()
            .nest_limit(1000)
            .build()
            .parse(regex)
            .map_err(|e| Error::syntax(format!("regex: {e}")))?;
        Self::from_hir(hir, space, limits)
    }

    /// Compiles a parsed regex (the whole output must match it) over `space`.
    pub fn from_hir(hir: Hir, space: Arc<TokenSpace>, limits: Limits) -> Result<Self> {
        let regex = "the constraint";
        let hir =
            prune_fail(&whole_output(hir)?).ok_or_else(|| Error::syntax("the constraint matches no output at all"))?;
        let hir = Hir::concat(vec![hir, Hir::literal([END])]);
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .nfa_size_limit(Some(limits.determinize_bytes))
                    .shrink(false)
                    .which_captures(thompson::WhichCaptures::None),
            )
            .build_from_hir(&hir)
            .map_err(|e| too_large_or_syntax(regex, &e))?;
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    // All: keep going while any longer match is still possible (full-match semantics).
                    .match_kind(MatchKind::All)
                    .cache_capacity(limits.dfa_bytes)
                    .minimum_cache_clear_count(None),
            )
            .build_from_nfa(nfa)
            .map_err(|e| too_large_or_syntax(regex, &e))?;
        let mut cache = dfa.create_cache();
        let start = dfa
            .start_state(&mut cache, &start::Config::new().anchored(Anchored::Yes))
            .map_err(|e| Error::syntax(format!("regex start state: {e}")))?;
        Ok(Self {
            dfa,
            cache: Mutex::new(cache),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One byte on from `s`, with the cache held; `None` when the output leaves the language.
    fn step(&self, cache: &mut Cache, s: State, b: u8) -> Option<State> {
        if b == END || self.exhausted.load(Ordering::Relaxed) {
            return None;
        }
        let next = self.dfa.next_state(cache, s, b).ok()?;
        if cache.clear_count() > 0 {
            // The cache was full and has been cleared: every id handed out before is stale.
            self.exhausted.store(true, Ordering::Relaxed);
            return None;
        }
        (!next.is_dead()).then_some(next)
    }

    /// Whether the output may end in state `s`.
    pub(crate) fn accepts(&self, s: State) -> bool {
        let mut cache = self.lock();
        if self.exhausted.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(end) = self.dfa.next_state(&mut cache, s, END) else { return false };
        let ok = self.dfa.next_eoi_state(&mut cache, end).is_ok_and(|e| e.is_match());
        if cache.clear_count() > 0 {
            self.exhausted.store(true, Ordering::Relaxed);
            return false;
        }
        ok
    }

    /// Walks `bytes` from `s`; `None` if the output leaves the language.
    pub(crate) fn walk(&self, mut s: State, bytes: &[u8]) -> Option<State> {
        let mut cache = self.lock();
        for &b in bytes {
            s = self.step(&mut cache, s, b)?;
        }
        Some(s)
    }

    /// The single byte that may follow in `s`, if exactly one may (`None` when several or none).
    pub(crate) fn only_next(&self, s: State) -> Option<(u8, State)> {
        let mut cache = self.lock();
        let mut only = None;
        for b in 0..=255u8 {
            if let Some(t) = self.step(&mut cache, s, b) {
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

    /// Depth-first walk of the token trie alongside the DFA, pruning at dead states.
    ///
    /// In a state that every character of text leads back to (free text in a JSON string), every text token is
    /// allowed and leaves the state unchanged: those come from a precomputed set and only the trie of the other
    /// tokens (5% of Llama 3's) is walked. Likewise for states that only plain ASCII leads back to.
    fn compute_mask(&self, s: State) -> TokenBitset {
        let mut cache = self.lock();
        let space = &self.space;
        let loops_plain = (0x20..0x7Fu8).filter(|&b| is_plain(b)).all(|b| self.step(&mut cache, s, b) == Some(s));
        let (trie, mut mask) = if loops_plain && self.loops_on_text(&mut cache, s) {
            (&space.rest_of_text, space.text.clone())
        } else if loops_plain {
            (&space.rest_of_plain, space.plain.clone())
        } else {
            (&space.trie, TokenBitset::new(space.vocab.len()))
        };
        let mut stack: Vec<(u32, State)> = vec![(0, s)];
        while let Some((node, state)) = stack.pop() {
            let n = trie.nodes[node as usize];
            for &(byte, child) in &trie.children[n.first_child as usize..(n.first_child + n.n_children) as usize] {
                let Some(next) = self.step(&mut cache, state, byte) else { continue };
                let c = trie.nodes[child as usize];
                for &t in &trie.token_ids[c.first_token as usize..(c.first_token + c.n_tokens) as usize] {
                    mask.set(t);
                }
                if c.n_children > 0 {
                    stack.push((child, next));
                }
            }
        }
        if self.exhausted.load(Ordering::Relaxed) {
            mask.clear();
        }
        mask
    }

    /// Whether every multi-byte UTF-8 character leads `s` back to `s`. Bytes of one DFA byte class act alike in
    /// every state, so one byte per class and position (within the valid range for that position) covers every
    /// character.
    fn loops_on_text(&self, cache: &mut Cache, s: State) -> bool {
        let classes = self.dfa.byte_classes();
        let reps = |lo: u8, hi: u8| -> Vec<u8> {
            let mut seen = Vec::new();
            let mut out = Vec::new();
            for b in lo..=hi {
                let c = classes.get(b);
                if !seen.contains(&c) {
                    seen.push(c);
                    out.push(b);
                }
            }
            out
        };
        let any = reps(0x80, 0xBF);
        for lead in 0xC2..=0xF4u8 {
            // The valid range of the byte after the lead, and how many continuation bytes follow that one.
            let second = match lead {
                0xE0 => reps(0xA0, 0xBF),
                0xED => reps(0x80, 0x9F),
                0xF0 => reps(0x90, 0xBF),
                0xF4 => reps(0x80, 0x8F),
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
                let mut frontier = vec![t];
                for _ in 0..more {
                    let mut next = Vec::new();
                    for &f in &frontier {
                        for &c in &any {
                            match self.step(cache, f, c) {
                                Some(x) if !next.contains(&x) => next.push(x),
                                Some(_) => {}
                                None => return false,
                            }
                        }
                    }
                    frontier = next;
                }
                if frontier.iter().any(|&f| f != s) {
                    return false;
                }
            }
        }
        true
    }

    /// States whose masks are cached.
    pub fn cached_masks(&self) -> usize {
        self.masks.len()
    }
}
