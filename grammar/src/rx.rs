//! A regex as a tree whose shared pieces stay shared, and its compiler to a Thompson NFA that copies a piece's
//! compiled states at each further use instead of compiling it again.
//!
//! JSON Schema regexes repeat the same pieces many times: the free JSON value at every undeclared key, a
//! definition at every `$ref`, a string's character class in every string. As `regex-syntax` `Hir` every use is a
//! deep copy of the tree, and `regex-automata` compiles each copy from scratch (its Unicode classes through a
//! UTF-8 compiler each time). Here a piece is an `Arc`, so a use costs a pointer, and [`Rx::to_nfa`] compiles a
//! shared piece once and then copies its states (a relocation of indices) at every other use. Two pieces are
//! smaller as an NFA than any regex can write them: lists (`item (sep item)*` with one copy of the item) and
//! members in any order (followed as the set written so far). The NFA matches what the tree written out as one
//! `Hir` ([`Rx::to_hir`]) matches (the proptest below checks it). Grammars use [`Rx::to_program`], where a large
//! shared piece is not even copied: it is compiled once and *called* ([`Program`]), so a schema's program holds
//! each definition once; [`Rx::to_nfa`] builds a `regex-automata` NFA (copies only) for tests and tools.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use regex_automata::nfa::thompson::{self, Transition};
use regex_automata::util::primitives::StateID;
use regex_syntax::hir::{Class, Hir, HirKind};

use crate::error::{Error, Result};

/// A regex over bytes: cheap to clone (pieces are shared), compiled with [`Rx::to_nfa`].
#[derive(Clone)]
pub struct Rx(Arc<Node>);

enum Node {
    Lit(Box<[u8]>),
    Hir(Hir),
    Cat(Vec<Rx>),
    Alt(Vec<Rx>),
    Rep(Rx, u32, Option<u32>),
    /// `item (sep item)*`, compiled with one copy of `item` (the NFA loops back through `sep`).
    List(Rx, Rx),
    /// Items separated by `sep`: each of `required` exactly once, in any order, and `others` any number of times
    /// anywhere. Compiled over the sets of required items written so far (2^n loops), not the n! orders.
    Unordered {
        required: Vec<Rx>,
        others: Option<Rx>,
        sep: Rx,
    },
    /// `x`, which a program compiles once and calls wherever this node is used, however small (see
    /// [`Rx::called`]).
    Called(Rx),
}

impl Rx {
    pub fn literal(bytes: &[u8]) -> Self {
        Self(Arc::new(Node::Lit(bytes.into())))
    }
    pub fn hir(h: Hir) -> Self {
        Self(Arc::new(Node::Hir(h)))
    }
    pub fn concat(parts: Vec<Rx>) -> Self {
        Self(Arc::new(Node::Cat(parts)))
    }
    pub fn alternation(parts: Vec<Rx>) -> Self {
        Self(Arc::new(Node::Alt(parts)))
    }
    /// `x` repeated `min..=max` times (`max` `None`: no bound).
    pub fn repeat(x: Rx, min: u32, max: Option<u32>) -> Self {
        Self(Arc::new(Node::Rep(x, min, max)))
    }

    /// `item (sep item)*`: one or more items with `sep` between them. A regex must write `item` twice; the NFA
    /// holds one copy and loops back to it through `sep`.
    pub fn list(item: Rx, sep: Rx) -> Self {
        Self(Arc::new(Node::List(item, sep)))
    }

    /// `x`, compiled once by a program and called at every use of this node whatever its size (shared pieces are
    /// otherwise copied below [`Program::CALL_MIN`] states). For a small piece used at many places that must all
    /// go on to the same state after it: the copies would each lead somewhere else. Regex text and NFAs copy it.
    pub fn called(x: Rx) -> Self {
        Self(Arc::new(Node::Called(x)))
    }

    /// See [`Rx::unordered`]: at most this many required items (2^n sets of them).
    pub const MAX_UNORDERED: usize = 12;

    /// Items separated by `sep`: each of `required` exactly once in any order, `others` any number of times
    /// anywhere (at least one item when `required` is empty). The NFA follows which required items are written
    /// (2^n states), where a regex must write out every order (n!). At most [`Rx::MAX_UNORDERED`] required.
    pub fn unordered(required: Vec<Rx>, others: Option<Rx>, sep: Rx) -> Self {
        Self(Arc::new(Node::Unordered { required, others, sep }))
    }

    /// The same regex as one `Hir` tree (shared pieces copied at each use); an error when that tree would hold
    /// more than 720 orders of an [`Rx::unordered`].
    pub fn to_hir(&self) -> Result<Hir> {
        let rep = |x: Hir, min: u32, max: Option<u32>| {
            Hir::repetition(regex_syntax::hir::Repetition { min, max, greedy: true, sub: Box::new(x) })
        };
        Ok(match &*self.0 {
            Node::Lit(b) => Hir::literal(b.clone()),
            Node::Hir(h) => h.clone(),
            Node::Cat(xs) => Hir::concat(xs.iter().map(Rx::to_hir).collect::<Result<_>>()?),
            Node::Alt(xs) => Hir::alternation(xs.iter().map(Rx::to_hir).collect::<Result<_>>()?),
            Node::Rep(x, min, max) => rep(x.to_hir()?, *min, *max),
            Node::List(item, sep) => {
                let item = item.to_hir()?;
                let more = rep(Hir::concat(vec![sep.to_hir()?, item.clone()]), 0, None);
                Hir::concat(vec![item, more])
            }
            Node::Unordered { required, others, sep } => {
                if required.len() > 6 {
                    return Err(Error::too_large(format!(
                        "{} members in any order: too many orders to write as one regex",
                        required.len()
                    )));
                }
                let sep = sep.to_hir()?;
                let required = required.iter().map(Rx::to_hir).collect::<Result<Vec<_>>>()?;
                let others = others.as_ref().map(Rx::to_hir).transpose()?;
                if required.is_empty() {
                    let o = others.unwrap_or_else(Hir::fail);
                    return Ok(Hir::concat(vec![o.clone(), rep(Hir::concat(vec![sep, o]), 0, None)]));
                }
                // Every order: (o sep)* r1 (sep o)* sep r2 (sep o)* ...
                let before = others.as_ref().map(|o| rep(Hir::concat(vec![o.clone(), sep.clone()]), 0, None));
                let after = others.as_ref().map(|o| rep(Hir::concat(vec![sep.clone(), o.clone()]), 0, None));
                let mut orders = Vec::new();
                let mut order: Vec<usize> = (0..required.len()).collect();
                permute(&mut order, 0, &mut |order| {
                    let mut parts: Vec<Hir> = before.iter().cloned().collect();
                    for (n, &i) in order.iter().enumerate() {
                        if n > 0 {
                            parts.push(sep.clone());
                        }
                        parts.push(required[i].clone());
                        parts.extend(after.iter().cloned());
                    }
                    orders.push(Hir::concat(parts));
                });
                Hir::alternation(orders)
            }
            Node::Called(x) => x.to_hir()?,
        })
    }

    /// The anchored NFA of this regex, whole: its match state is reached only at the end of a member. Parts that
    /// can never match (empty classes) are left out, so every state lies on a path to the match; `None` when
    /// nothing matches at all. Anchors and look-arounds are refused. `size_limit` bounds the NFA's heap.
    pub fn to_nfa(&self, size_limit: usize) -> Result<Option<thompson::NFA>> {
        let Some((c, start)) = Compiler::run(self, size_limit, None)? else { return Ok(None) };
        c.build(start).map(Some)
    }

    /// This regex as a [`Program`], whole as in [`Rx::to_nfa`], where shared pieces of
    /// [`Program::CALL_MIN`] states or more are compiled once and called: a program holds each definition of
    /// a schema once however many times it is used. `size_limit` bounds its states as in [`Rx::to_nfa`].
    pub(crate) fn to_program(&self, size_limit: usize) -> Result<Option<Program>> {
        self.to_program_calling(size_limit, Program::CALL_MIN)
    }

    /// About the size of the program this regex compiles to, as regex text would weigh it: a shared piece counts in
    /// full once, and at each further use as much as the program spends there (a copy when it is small, a call
    /// when it is large). A written-out weight, which counts every use in full, grows with how often a
    /// definition is used (the free JSON value nests two uses per level, so 2^depth); this one grows with what
    /// the program holds, which is what compiling it costs.
    pub fn weight(&self) -> usize {
        self.weigh(&mut HashMap::default())
    }

    /// [`Rx::weight`] beyond that of `parts` (pieces of this regex, counted as already in the program): what
    /// building this regex around them adds.
    pub fn weight_around(&self, parts: &[&Rx]) -> usize {
        // A part's own weight only decides whether a further use is a call or a copy: weighed up to that.
        let mut seen: HashMap<usize, usize> =
            parts.iter().map(|p| (Arc::as_ptr(&p.0) as usize, p.weight_at_most(Program::CALL_MIN as usize))).collect();
        self.weigh(&mut seen)
    }

    /// The weight written out (every use in full), or `cap` once it reaches `cap`.
    fn weight_at_most(&self, cap: usize) -> usize {
        let sum = |xs: &mut dyn Iterator<Item = &Rx>| {
            let mut total = 0;
            for x in xs {
                total += x.weight_at_most(cap - total);
                if total >= cap {
                    return cap;
                }
            }
            total
        };
        match &*self.0 {
            Node::Lit(b) => b.len().min(cap),
            Node::Hir(h) => hir_weight(h).min(cap),
            Node::Cat(xs) | Node::Alt(xs) => sum(&mut xs.iter()),
            Node::Rep(x, min, max) => {
                let copies = max.unwrap_or(min.saturating_add(1)).max(1) as usize;
                x.weight_at_most(cap).saturating_mul(copies).min(cap)
            }
            Node::List(item, sep) => sum(&mut [item, sep].into_iter()),
            Node::Unordered { required, others, sep } => sum(&mut required.iter().chain(others).chain([sep])),
            Node::Called(x) => x.weight_at_most(cap),
        }
    }

    fn weigh(&self, seen: &mut HashMap<usize, usize>) -> usize {
        if Arc::strong_count(&self.0) == 1 {
            return self.weigh_node(seen);
        }
        self.weigh_again(seen)
    }

    /// The weight of a piece the program compiles once and copies or calls after (see `Compiler::again`).
    fn weigh_again(&self, seen: &mut HashMap<usize, usize>) -> usize {
        let key = Arc::as_ptr(&self.0) as usize;
        match seen.get(&key) {
            Some(_) if matches!(*self.0, Node::Called(_)) => CALL_WEIGHT,
            Some(&w) if w >= Program::CALL_MIN as usize => CALL_WEIGHT,
            Some(&w) => w,
            None => {
                let w = self.weigh_node(seen);
                seen.insert(key, w);
                w
            }
        }
    }

    fn weigh_node(&self, seen: &mut HashMap<usize, usize>) -> usize {
        match &*self.0 {
            Node::Lit(b) => b.len(),
            Node::Hir(h) => hir_weight(h),
            Node::Cat(xs) => xs.iter().fold(0usize, |a, x| a.saturating_add(x.weigh(seen))),
            Node::Alt(xs) => xs.iter().fold(0usize, |a, x| a.saturating_add(x.weigh(seen)).saturating_add(1)),
            Node::Rep(x, min, max) => {
                let copies = max.unwrap_or(min.saturating_add(1)).clamp(1, 1 << 20) as usize;
                x.weigh(seen).saturating_mul(copies)
            }
            Node::List(item, sep) => item.weigh(seen).saturating_add(sep.weigh(seen)),
            Node::Unordered { required, others, sep } => {
                // One copy (or call) of every item and separator at each set of required items written so far.
                // (The compiler takes every item as shared: `Compiler::unordered` goes through `again`.)
                let sets = 1usize.checked_shl(required.len() as u32).unwrap_or(usize::MAX);
                let all = |seen: &mut HashMap<usize, usize>| {
                    required
                        .iter()
                        .chain(others)
                        .chain([sep])
                        .fold(0usize, |a, x| a.saturating_add(x.weigh_again(seen)))
                };
                let once = all(seen);
                once.saturating_add(sets.saturating_mul(all(seen)))
            }
            Node::Called(x) => x.weigh(seen).saturating_add(CALL_WEIGHT),
        }
    }

    /// [`Rx::to_program`], calling shared pieces of at least `call_min` states.
    fn to_program_calling(&self, size_limit: usize, call_min: u32) -> Result<Option<Program>> {
        let Some((mut c, start)) = Compiler::run(self, size_limit, Some(call_min))? else { return Ok(None) };
        c.fill_holes();
        Ok(Some(Program { states: c.states, start }))
    }
}

/// An NFA with subroutines: [`S::Call`] enters a piece compiled once (remembering where to go on), its
/// [`S::Return`] goes back there. No piece calls itself (a tree of `Arc`s has no cycles), so the calls nest to
/// a bounded depth and the program matches a regular language: the one its pieces copied at each call would.
/// [`crate::dfa::Dfa`] runs it.
pub(crate) struct Program {
    pub(crate) states: Vec<S>,
    pub(crate) start: u32,
}

/// What a call of a shared piece weighs (its two states).
const CALL_WEIGHT: usize = 2;

/// About the length of `h` as regex text, counted repetitions expanded.
fn hir_weight(h: &Hir) -> usize {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => 1,
        HirKind::Literal(l) => l.0.len(),
        HirKind::Class(Class::Unicode(c)) => 2 + 4 * c.ranges().len(),
        HirKind::Class(Class::Bytes(c)) => 2 + 4 * c.ranges().len(),
        HirKind::Repetition(r) => {
            let copies = r.max.unwrap_or(r.min + 1).clamp(1, 1 << 20) as usize;
            hir_weight(&r.sub).saturating_mul(copies)
        }
        HirKind::Capture(c) => hir_weight(&c.sub),
        HirKind::Concat(hs) => hs.iter().map(hir_weight).fold(0usize, usize::saturating_add),
        HirKind::Alternation(hs) => hs.iter().map(|x| hir_weight(x) + 1).fold(0usize, usize::saturating_add),
    }
}

impl Program {
    /// Shared pieces smaller than this many states are copied at each use (cheaper to run than a call). Copies
    /// were most of a large schema's states at 32 (the JSON string, keys, the whitespace at every use); on
    /// MaskBench's dev split 8, 12 and 16 gave TTFM p99 7.1-7.6 ms against 8.3 ms at 32, TBM p99 the same.
    pub(crate) const CALL_MIN: u32 = 16;
}

impl std::fmt::Debug for Rx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Node::Lit(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Node::Hir(h) => write!(f, "/{h}/"),
            Node::Cat(xs) => f.debug_tuple("Cat").field(xs).finish(),
            Node::Alt(xs) => f.debug_tuple("Alt").field(xs).finish(),
            Node::Rep(x, min, max) => write!(f, "Rep({x:?}, {min}, {max:?})"),
            Node::List(x, sep) => write!(f, "List({x:?}, {sep:?})"),
            Node::Unordered { required, others, sep } => {
                write!(f, "Unordered({required:?}, {others:?}, {sep:?})")
            }
            Node::Called(x) => write!(f, "Called({x:?})"),
        }
    }
}

/// Calls `f` with every order of `xs[k..]` after `xs[..k]`.
fn permute(xs: &mut [usize], k: usize, f: &mut impl FnMut(&[usize])) {
    if k == xs.len() {
        return f(xs);
    }
    for i in k..xs.len() {
        xs.swap(k, i);
        permute(xs, k + 1, f);
        xs.swap(k, i);
    }
}

/// A state of the compiled regex; ids are indices into [`Compiler::states`].
#[derive(Clone)]
pub(crate) enum S {
    /// An epsilon move (`HOLE` until patched).
    Empty(u32),
    Range(Transition),
    /// Sorted, disjoint ranges. (Boxed slices, not `Vec`s: a state is 24 bytes instead of 32, and programs run
    /// to hundreds of thousands of states.)
    Sparse(Box<[Transition]>),
    Union(Box<[u32]>),
    Match,
    /// Enter the piece at `target`; its [`S::Return`] goes on at `ret` (programs only).
    Call {
        target: u32,
        ret: u32,
    },
    /// The end of a called piece.
    Return,
}

const HOLE: u32 = u32::MAX;

/// A compiled piece: enter at `start`; `end` is an `Empty` state still to be pointed at what follows.
#[derive(Clone, Copy)]
struct Frag {
    start: u32,
    end: u32,
}

/// Where a piece's states lie (`lo..hi`, contiguous: a piece's states are added together) and its ends, so the
/// piece can be copied; `None`: the piece matches nothing.
type Template = Option<(u32, u32, Frag)>;

/// An id inside a piece's states, moved with the piece.
fn relocate(id: u32, lo: u32, hi: u32, base: u32) -> u32 {
    if (lo..hi).contains(&id) {
        id - lo + base
    } else {
        // Only the piece's end points outside it (at what followed the original).
        HOLE
    }
}

fn sid(id: u32) -> StateID {
    StateID::new(id as usize).expect("ids are checked against the state limit when added")
}

struct Compiler {
    states: Vec<S>,
    /// Pieces used more than once, by address: compiled once, copied after.
    shared: HashMap<usize, Template>,
    /// Unicode classes by ranges (the JSON string character appears in every string).
    classes: HashMap<Vec<(char, char)>, Template>,
    /// Most bytes the states may take.
    limit: usize,
    /// In a [`Program`], shared pieces of at least this many states are called rather than copied.
    call_min: Option<u32>,
    /// Called pieces by address: where they start (`None`: the piece matches nothing).
    called: HashMap<usize, Option<u32>>,
}

impl Compiler {
    /// Compiles `x` whole (its end leads to the match state): the compiler and the start state, or `None` when
    /// `x` matches nothing.
    fn run(x: &Rx, limit: usize, call_min: Option<u32>) -> Result<Option<(Self, u32)>> {
        let mut c = Compiler {
            // The weight is about the program's size: reserved once instead of grown by doubling (the copies
            // and fresh pages of a growing vector were a tenth of compiling the slowest MaskBench schemas).
            states: Vec::with_capacity(x.weight().min(limit / 24)),
            shared: HashMap::default(),
            classes: HashMap::default(),
            limit,
            call_min,
            called: HashMap::default(),
        };
        let Some(f) = c.rx(x)? else { return Ok(None) };
        let m = c.push(S::Match)?;
        c.patch(f.end, m);
        Ok(Some((c, f.start)))
    }

    fn push(&mut self, s: S) -> Result<u32> {
        // About what a state costs in the final NFA (a transition is 8 bytes, a state's header about 24).
        if self.states.len().saturating_mul(24) > self.limit {
            return Err(Error::too_large(format!("the NFA is past {} states", self.states.len())));
        }
        self.states.push(s);
        Ok(self.states.len() as u32 - 1)
    }

    fn empty(&mut self) -> Result<Frag> {
        let e = self.push(S::Empty(HOLE))?;
        Ok(Frag { start: e, end: e })
    }

    fn patch(&mut self, from: u32, to: u32) {
        match &mut self.states[from as usize] {
            S::Empty(next) => *next = to,
            _ => unreachable!("only a piece's end (an Empty state) is patched"),
        }
    }

    /// Compiles a piece with `f`, or copies it when it was compiled before under `key`.
    fn memo<K: std::hash::Hash + Eq>(
        &mut self,
        table: fn(&mut Self) -> &mut HashMap<K, Template>,
        key: K,
        f: impl FnOnce(&mut Self) -> Result<Option<Frag>>,
    ) -> Result<Option<Frag>> {
        if let Some(t) = table(self).get(&key).copied() {
            return t.map(|t| self.copy(t)).transpose();
        }
        let lo = self.states.len() as u32;
        let frag = f(self)?;
        let hi = self.states.len() as u32;
        table(self).insert(key, frag.map(|f| (lo, hi, f)));
        Ok(frag)
    }

    /// A fresh copy of the states `lo..hi` (a piece compiled before), its end unpatched.
    fn copy(&mut self, (lo, hi, f): (u32, u32, Frag)) -> Result<Frag> {
        let base = self.states.len() as u32;
        for i in lo..hi {
            let s = match &self.states[i as usize] {
                S::Empty(n) => S::Empty(relocate(*n, lo, hi, base)),
                S::Range(t) => S::Range(Transition { next: sid(relocate(t.next.as_u32(), lo, hi, base)), ..*t }),
                S::Sparse(ts) => S::Sparse(
                    ts.iter()
                        .map(|t| Transition { next: sid(relocate(t.next.as_u32(), lo, hi, base)), ..*t })
                        .collect(),
                ),
                S::Union(alts) => S::Union(alts.iter().map(|&a| relocate(a, lo, hi, base)).collect()),
                S::Match => S::Match,
                // A called piece stays where it is (a piece first compiled inside `lo..hi` is copied along,
                // unused).
                S::Call { target, ret } => S::Call { target: *target, ret: relocate(*ret, lo, hi, base) },
                S::Return => S::Return,
            };
            self.push(s)?;
        }
        let end = f.end - lo + base;
        self.states[end as usize] = S::Empty(HOLE);
        Ok(Frag { start: f.start - lo + base, end })
    }

    fn rx(&mut self, x: &Rx) -> Result<Option<Frag>> {
        if Arc::strong_count(&x.0) > 1 {
            return self.again(x);
        }
        self.node(&x.0)
    }

    /// `x`, copied when it was compiled before (for pieces used more than once), or called in a program
    /// when it is large.
    fn again(&mut self, x: &Rx) -> Result<Option<Frag>> {
        if matches!(*x.0, Node::Called(_)) {
            // A call at every use (its body is compiled once, by `called`), never a copy of one.
            return self.node(&x.0);
        }
        let key = Arc::as_ptr(&x.0) as usize;
        if let Some(call_min) = self.call_min.filter(|_| !self.shared.contains_key(&key)) {
            if let Some(&target) = self.called.get(&key) {
                return target.map(|t| self.call(t)).transpose();
            }
            let lo = self.states.len() as u32;
            let Some(f) = self.node(&x.0)? else {
                self.shared.insert(key, None);
                return Ok(None);
            };
            let hi = self.states.len() as u32;
            if hi - lo < call_min {
                self.shared.insert(key, Some((lo, hi, f)));
                return Ok(Some(f));
            }
            self.states[f.end as usize] = S::Return;
            self.called.insert(key, Some(f.start));
            return self.call(f.start).map(Some);
        }
        self.memo(|c| &mut c.shared, key, |c| c.node(&x.0))
    }

    /// `x` called (compiled the first time), in a program; copied in an NFA.
    fn called(&mut self, x: &Rx) -> Result<Option<Frag>> {
        if self.call_min.is_none() {
            return self.again(x);
        }
        let key = Arc::as_ptr(&x.0) as usize;
        if let Some(&target) = self.called.get(&key) {
            return target.map(|t| self.call(t)).transpose();
        }
        let Some(f) = self.node(&x.0)? else {
            self.called.insert(key, None);
            return Ok(None);
        };
        self.states[f.end as usize] = S::Return;
        self.called.insert(key, Some(f.start));
        self.call(f.start).map(Some)
    }

    /// A call of the piece starting at `target`.
    fn call(&mut self, target: u32) -> Result<Frag> {
        let ret = self.push(S::Empty(HOLE))?;
        let start = self.push(S::Call { target, ret })?;
        Ok(Frag { start, end: ret })
    }

    fn node(&mut self, n: &Node) -> Result<Option<Frag>> {
        match n {
            Node::Lit(b) => self.literal(b).map(Some),
            Node::Hir(h) => self.hir(h),
            Node::Cat(xs) => self.concat(xs, Self::rx),
            Node::Alt(xs) => self.alternation(xs, Self::rx),
            Node::Rep(x, min, max) => self.repeat(*min, *max, |c| c.rx(x)),
            Node::List(item, sep) => {
                let Some(i) = self.rx(item)? else { return Ok(None) };
                let exit = self.push(S::Empty(HOLE))?;
                let next = match self.rx(sep)? {
                    Some(s) => {
                        self.patch(s.end, i.start);
                        s.start
                    }
                    None => exit,
                };
                let u = self.push(S::Union(Box::new([next, exit])))?;
                self.patch(i.end, u);
                Ok(Some(Frag { start: i.start, end: exit }))
            }
            Node::Unordered { required, others, sep } => self.unordered(required, others.as_ref(), sep),
            Node::Called(x) => self.called(x),
        }
    }

    /// See [`Rx::unordered`]. State `at[set]`: something is written, and of the required items those in `set`;
    /// from there `sep` then another item, or out once all are written. The first item comes from `entry`.
    fn unordered(&mut self, required: &[Rx], others: Option<&Rx>, sep: &Rx) -> Result<Option<Frag>> {
        let n = required.len();
        if n > Rx::MAX_UNORDERED {
            return Err(Error::too_large(format!("{n} members in any order (at most {})", Rx::MAX_UNORDERED)));
        }
        if self.again(sep)?.is_none() {
            // Nothing goes between items: one item at most.
            return match (n, others) {
                (0, Some(o)) => self.again(o),
                (1, _) => self.again(&required[0]),
                _ => Ok(None),
            };
        }
        if let ([r], Some(o)) = (required, others) {
            // One required item: `(o sep)* r (sep o)*` holds two copies of the others, the sets three.
            let star = |x: Vec<Rx>| Rx::repeat(Rx::concat(x), 0, None);
            let written =
                Rx::concat(vec![star(vec![o.clone(), sep.clone()]), r.clone(), star(vec![sep.clone(), o.clone()])]);
            return self.rx(&written);
        }
        let full = (1usize << n) - 1;
        let at: Vec<u32> = (0..=full).map(|_| self.push(S::Union(Box::default()))).collect::<Result<_>>()?;
        let exit = self.push(S::Empty(HOLE))?;
        // The first item: an other (when any matches) or a required one (each must match something).
        let mut entry = Vec::new();
        let others = match others {
            Some(o) => self.again(o)?.map(|f| {
                self.patch(f.end, at[0]);
                entry.push(f.start);
                o
            }),
            None => None,
        };
        for (i, r) in required.iter().enumerate() {
            let Some(f) = self.again(r)? else { return Ok(None) };
            self.patch(f.end, at[1 << i]);
            entry.push(f.start);
        }
        if entry.is_empty() {
            return Ok(None);
        }
        for set in 0..=full {
            let mut alts = Vec::new();
            if set == full {
                alts.push(exit);
            }
            let next: Vec<(usize, &Rx)> = others
                .map(|o| (set, o))
                .into_iter()
                .chain((0..n).filter(|i| set & (1 << i) == 0).map(|i| (set | 1 << i, &required[i])))
                .collect();
            if !next.is_empty() {
                let s = self.again(sep)?.ok_or_else(|| Error::syntax("regex: a separator stopped matching"))?;
                let mut then = Vec::with_capacity(next.len());
                for (to, item) in next {
                    let f = self.again(item)?.ok_or_else(|| Error::syntax("regex: an item stopped matching"))?;
                    self.patch(f.end, at[to]);
                    then.push(f.start);
                }
                let then = self.push(S::Union(then.into()))?;
                self.patch(s.end, then);
                alts.push(s.start);
            }
            self.states[at[set] as usize] = S::Union(alts.into());
        }
        let start = self.push(S::Union(entry.into()))?;
        Ok(Some(Frag { start, end: exit }))
    }

    fn hir(&mut self, h: &Hir) -> Result<Option<Frag>> {
        match h.kind() {
            HirKind::Empty => self.empty().map(Some),
            HirKind::Literal(l) => self.literal(&l.0).map(Some),
            HirKind::Class(Class::Bytes(c)) => {
                let ts = c.ranges().iter().map(|r| (r.start(), r.end()));
                self.byte_class(ts.collect())
            }
            HirKind::Class(Class::Unicode(cls)) => {
                if cls.ranges().iter().all(|r| r.end() <= '\x7F') {
                    return self.byte_class(cls.ranges().iter().map(|r| (r.start() as u8, r.end() as u8)).collect());
                }
                let key: Vec<(char, char)> = cls.ranges().iter().map(|r| (r.start(), r.end())).collect();
                self.memo(|c| &mut c.classes, key, |c| c.utf8_class(cls))
            }
            HirKind::Look(_) => Err(Error::unsupported("regex: anchors or look-arounds inside the pattern")),
            HirKind::Repetition(r) => self.repeat(r.min, r.max, |c| c.hir(&r.sub)),
            HirKind::Capture(cap) => self.hir(&cap.sub),
            HirKind::Concat(hs) => self.concat(hs, Self::hir),
            HirKind::Alternation(hs) => self.alternation(hs, Self::hir),
        }
    }

    fn literal(&mut self, bytes: &[u8]) -> Result<Frag> {
        let end = self.push(S::Empty(HOLE))?;
        let mut next = end;
        // Written back to front, each byte pointing at the next: the states of a literal sit after its end.
        for &b in bytes.iter().rev() {
            next = self.push(S::Range(Transition { start: b, end: b, next: sid(next) }))?;
        }
        Ok(Frag { start: next, end })
    }

    fn byte_class(&mut self, ranges: Vec<(u8, u8)>) -> Result<Option<Frag>> {
        if ranges.is_empty() {
            return Ok(None);
        }
        let end = self.push(S::Empty(HOLE))?;
        let ts = ranges.into_iter().map(|(start, e)| Transition { start, end: e, next: sid(end) }).collect();
        let start = self.push(S::Sparse(ts))?;
        Ok(Some(Frag { start, end }))
    }

    /// A Unicode class as UTF-8: the trie of its `Utf8Sequence`s (sorted, so at each position two sequences'
    /// ranges are equal or disjoint: a node's ranges are one sparse state), its equal subtrees made once (suffix
    /// sharing). regex-automata's compiler builds the same automaton, but sets up tables of 10,000 entries per
    /// class to do it, which cost more than the class itself on schemas of many small classes (the undeclared
    /// keys of every object).
    fn utf8_class(&mut self, class: &regex_syntax::hir::ClassUnicode) -> Result<Option<Frag>> {
        const LEAF: usize = usize::MAX;
        if class.ranges().is_empty() {
            return Ok(None);
        }
        // Trie nodes: each a sorted list of (byte range, child node or LEAF).
        let mut nodes: Vec<Vec<(u8, u8, usize)>> = vec![Vec::new()];
        for r in class.ranges() {
            for seq in regex_syntax::utf8::Utf8Sequences::new(r.start(), r.end()) {
                let bytes = seq.as_slice();
                let mut at = 0;
                for (i, b) in bytes.iter().enumerate() {
                    at = match nodes[at].last() {
                        Some(&(lo, hi, child)) if (lo, hi) == (b.start, b.end) => child,
                        Some(&(_, hi, _)) if b.start <= hi => {
                            return Err(Error::syntax("regex class: UTF-8 sequences out of order"));
                        }
                        _ => {
                            let child = if i + 1 == bytes.len() { LEAF } else { nodes.len() };
                            if child != LEAF {
                                nodes.push(Vec::new());
                            }
                            nodes[at].push((b.start, b.end, child));
                            child
                        }
                    };
                    if at == LEAF && i + 1 < bytes.len() {
                        return Err(Error::syntax("regex class: UTF-8 sequences of different lengths"));
                    }
                }
            }
        }
        let end = self.push(S::Empty(HOLE))?;
        let mut made: HashMap<Vec<(u8, u8, u32)>, u32> = HashMap::default();
        let start = self.utf8_node(&nodes, 0, end, &mut made)?;
        Ok(Some(Frag { start, end }))
    }

    /// The state for trie node `at` of [`Compiler::utf8_class`] (`end` for a leaf), equal nodes made once.
    fn utf8_node(
        &mut self,
        nodes: &[Vec<(u8, u8, usize)>],
        at: usize,
        end: u32,
        made: &mut HashMap<Vec<(u8, u8, u32)>, u32>,
    ) -> Result<u32> {
        if at == usize::MAX {
            return Ok(end);
        }
        let mut ts = Vec::with_capacity(nodes[at].len());
        for &(lo, hi, child) in &nodes[at] {
            ts.push((lo, hi, self.utf8_node(nodes, child, end, made)?));
        }
        if let Some(&s) = made.get(&ts) {
            return Ok(s);
        }
        let t = |&(start, end, next): &(u8, u8, u32)| Transition { start, end, next: sid(next) };
        let s = match &ts[..] {
            [one] => self.push(S::Range(t(one)))?,
            _ => self.push(S::Sparse(ts.iter().map(t).collect()))?,
        };
        made.insert(ts, s);
        Ok(s)
    }

    fn concat<T>(&mut self, xs: &[T], f: fn(&mut Self, &T) -> Result<Option<Frag>>) -> Result<Option<Frag>> {
        let mut out: Option<Frag> = None;
        for x in xs {
            let Some(g) = f(self, x)? else { return Ok(None) };
            out = Some(match out {
                None => g,
                Some(o) => {
                    self.patch(o.end, g.start);
                    Frag { start: o.start, end: g.end }
                }
            });
        }
        match out {
            Some(o) => Ok(Some(o)),
            None => self.empty().map(Some),
        }
    }

    fn alternation<T>(&mut self, xs: &[T], f: fn(&mut Self, &T) -> Result<Option<Frag>>) -> Result<Option<Frag>> {
        let mut arms = Vec::with_capacity(xs.len());
        for x in xs {
            if let Some(g) = f(self, x)? {
                arms.push(g);
            }
        }
        match arms.len() {
            0 => Ok(None),
            1 => Ok(Some(arms[0])),
            _ => {
                let end = self.push(S::Empty(HOLE))?;
                for a in &arms {
                    self.patch(a.end, end);
                }
                let start = self.push(S::Union(arms.iter().map(|a| a.start).collect()))?;
                Ok(Some(Frag { start, end }))
            }
        }
    }

    /// `min..=max` copies of the piece `f` compiles (compiled once, copied after).
    fn repeat(
        &mut self,
        min: u32,
        max: Option<u32>,
        f: impl FnOnce(&mut Self) -> Result<Option<Frag>>,
    ) -> Result<Option<Frag>> {
        if max == Some(0) {
            return self.empty().map(Some);
        }
        let lo = self.states.len() as u32;
        // States of a piece that matches nothing stay behind, unreachable: pieces inside it may be templates.
        let Some(first) = f(self)? else {
            return if min == 0 { self.empty().map(Some) } else { Ok(None) };
        };
        let t = (lo, self.states.len() as u32, first);
        let mut unused = Some(first);
        let mut take = |c: &mut Self| match unused.take() {
            Some(f) => Ok(f),
            None => c.copy(t),
        };
        let mut parts = Vec::with_capacity(min as usize + 1);
        for _ in 0..min {
            parts.push(take(self)?);
        }
        match max {
            None => {
                // A loop: another copy (then back here) or on.
                let body = take(self)?;
                let exit = self.push(S::Empty(HOLE))?;
                let u = self.push(S::Union(Box::new([body.start, exit])))?;
                self.patch(body.end, u);
                parts.push(Frag { start: u, end: exit });
            }
            Some(max) if max > min => {
                // Optional copies, nested: each one taken (then the next offered) or all done.
                let done = self.push(S::Empty(HOLE))?;
                let mut entry = HOLE;
                let mut prev_end = HOLE;
                for _ in min..max {
                    let body = take(self)?;
                    let u = self.push(S::Union(Box::new([body.start, done])))?;
                    if prev_end == HOLE {
                        entry = u;
                    } else {
                        self.patch(prev_end, u);
                    }
                    prev_end = body.end;
                }
                self.patch(prev_end, done);
                parts.push(Frag { start: entry, end: done });
            }
            Some(_) => {}
        }
        Ok(self.concat_frags(&parts))
    }

    fn concat_frags(&mut self, fs: &[Frag]) -> Option<Frag> {
        let mut it = fs.iter().copied();
        let first = it.next()?;
        let mut end = first.end;
        for g in it {
            self.patch(end, g.start);
            end = g.end;
        }
        Some(Frag { start: first.start, end })
    }

    /// Pieces left behind (the parts before something that matches nothing) may still end in a hole: points
    /// them at a state that matches nothing. They are unreachable from the start either way.
    fn fill_holes(&mut self) {
        let nowhere = self.states.len() as u32;
        self.states.push(S::Sparse(Box::default()));
        for s in &mut self.states {
            match s {
                S::Empty(next) | S::Call { ret: next, .. } if *next == HOLE => *next = nowhere,
                S::Union(alts) => alts.iter_mut().filter(|a| **a == HOLE).for_each(|a| *a = nowhere),
                _ => {}
            }
        }
    }

    fn build(mut self, start: u32) -> Result<thompson::NFA> {
        let too_large = |e: thompson::BuildError| Error::too_large(format!("the NFA is past the limits: {e}"));
        self.fill_holes();
        let mut b = thompson::Builder::new();
        b.set_size_limit(Some(self.limit)).map_err(too_large)?;
        b.start_pattern().map_err(too_large)?;
        for s in self.states {
            match s {
                S::Empty(next) => {
                    let id = b.add_empty().map_err(too_large)?;
                    b.patch(id, sid(next)).map_err(too_large)?;
                }
                S::Range(t) => {
                    b.add_range(t).map_err(too_large)?;
                }
                S::Sparse(ts) => {
                    b.add_sparse(ts.into_vec()).map_err(too_large)?;
                }
                S::Union(alts) => {
                    b.add_union(alts.iter().map(|&a| sid(a)).collect()).map_err(too_large)?;
                }
                S::Match => {
                    b.add_match().map_err(too_large)?;
                }
                S::Call { .. } | S::Return => {
                    return Err(Error::syntax("regex: a call in an NFA compiled without calls"));
                }
            }
        }
        b.finish_pattern(sid(start)).map_err(too_large)?;
        b.build(sid(start), sid(start)).map_err(too_large)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dfa::{Cache, Dfa, State, DEAD};
    use proptest::prelude::*;
    use regex_automata::nfa::thompson::pikevm::PikeVM;
    use regex_automata::{Anchored, Input};

    fn class(re: &str) -> Rx {
        Rx::hir(regex_syntax::parse(re).unwrap())
    }

    #[test]
    fn unicode_classes_compile_to_their_utf8() {
        // Classes whose ranges start and end on each side of every UTF-8 length boundary, and the JSON string's
        // character; each compiled class must admit exactly its characters (one whole character, no more).
        let classes = [
            r#"[^"\\\x00-\x1F]"#,
            r"[\x{7E}-\x{81}\x{7FE}-\x{801}\x{FFFE}-\x{10001}\x{10FFFE}-\x{10FFFF}]",
            r"[^\x{80}-\x{7FF}]",
            r"[α-ωА-я一-龥😀-🙏]",
            r"\w",
        ];
        let mut probes: Vec<char> = Vec::new();
        for b in [0u32, 0x1F, 0x20, 0x7E, 0x7F, 0x80, 0x81, 0x7FE, 0x7FF, 0x800, 0x801, 0xD7FF, 0xE000, 0xFFFE, 0xFFFF]
        {
            probes.extend(char::from_u32(b));
        }
        for b in [0x10000u32, 0x10001, 0x1F600, 0x1F64F, 0x1F650, 0x10FFFE, 0x10FFFF] {
            probes.extend(char::from_u32(b));
        }
        probes.extend("\"\\aZ_9α ωАя一龥é".chars());
        for re in classes {
            let hir = regex_syntax::parse(re).unwrap();
            let whole = Rx::concat(vec![Rx::hir(hir.clone()), Rx::literal(b"#")]);
            let vm = PikeVM::new_from_nfa(whole.to_nfa(1 << 24).unwrap().unwrap()).unwrap();
            let reference = regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap();
            for &c in &probes {
                let hay = format!("{c}#");
                let got = vm.is_match(&mut vm.create_cache(), Input::new(&hay).anchored(Anchored::Yes));
                assert_eq!(got, reference.is_match(&c.to_string()), "{re} on {c:?} (U+{:04X})", c as u32);
            }
            // Two characters, or half of one, are not one character.
            let two = format!("{}{}#", probes[5], probes[5]);
            assert!(!vm.is_match(&mut vm.create_cache(), Input::new(&two).anchored(Anchored::Yes)), "{re}");
        }
    }

    #[test]
    fn weight_counts_a_shared_piece_once_and_a_call_at_each_further_use() {
        let big = Rx::literal(&[b'a'; 100]);
        let small = Rx::literal(b"ab");
        let uses = Rx::concat((0..10).map(|_| big.clone()).chain((0..10).map(|_| small.clone())).collect());
        // The program calls the large piece and copies the small one (under `Program::CALL_MIN` states).
        assert_eq!(uses.weight(), 100 + 9 * CALL_WEIGHT + 10 * 2);
        // Levels that each use the one below twice (the free JSON value) weigh what each level adds, not 2^20.
        let mut level = big.clone();
        for _ in 0..20 {
            level = Rx::alternation(vec![Rx::concat(vec![level.clone(), small.clone()]), level]);
        }
        assert!(level.weight() < 100 + 20 * 20, "{}", level.weight());
        // Members in any order, `big` already paid for: the first item (a call of `big`, the other in full) and the
        // separator, then a call (or a small copy) of each at each of the 2^2 sets.
        let members = Rx::unordered(vec![big.clone(), Rx::literal(&[b'b'; 50])], None, small.clone());
        assert_eq!(members.weight_around(&[&big]), CALL_WEIGHT + 50 + 2 + 4 * (2 * CALL_WEIGHT + 2));
    }

    #[test]
    fn a_called_piece_is_compiled_once_however_small() {
        let small = Rx::literal(b"ab");
        let copies = Rx::concat((0..40).map(|_| small.clone()).collect());
        let calls = Rx::concat((0..40).map(|_| Rx::called(small.clone())).collect());
        let called = Rx::called(small.clone());
        let shared_calls = Rx::concat((0..40).map(|_| called.clone()).collect());
        let states = |x: &Rx| x.to_program(1 << 20).unwrap().unwrap().states.len();
        // Copied: two byte states and an end per use. Called: the piece once, then a call and its return per use.
        assert!(states(&copies) >= 40 * 3, "{}", states(&copies));
        assert!(states(&shared_calls) <= 3 + 40 * 2 + 2, "{}", states(&shared_calls));
        // Distinct `called` nodes over one piece share it as well.
        assert!(states(&calls) <= 3 + 40 * 2 + 2, "{}", states(&calls));
        assert_eq!(shared_calls.weight(), 2 + CALL_WEIGHT + 39 * CALL_WEIGHT);
    }

    /// Trees over `a`, `b`, `é` with shared pieces (the same `Rx` used twice), lists, bounded and unbounded
    /// repetitions, and pieces that match nothing.
    fn tree() -> impl Strategy<Value = Rx> {
        let leaf = prop_oneof![
            Just(Rx::literal(b"a")),
            Just(Rx::literal(b"ab")),
            Just(Rx::literal(b"")),
            Just(class("[ab]")),
            Just(class("[^a]")),
            Just(class("é|b{1,2}")),
            Just(Rx::hir(regex_syntax::hir::Hir::fail())),
        ];
        leaf.prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Rx::concat),
                prop::collection::vec(inner.clone(), 0..3).prop_map(Rx::alternation),
                (inner.clone(), 0u32..3, prop::option::of(0u32..3)).prop_map(|(x, min, extra)| Rx::repeat(
                    x,
                    min,
                    extra.map(|e| min + e)
                )),
                (inner.clone(), inner.clone()).prop_map(|(x, sep)| Rx::list(x, sep)),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| Rx::concat(vec![x.clone(), y, x])),
                // A piece called at every use, however small (from both branches of an alternation too).
                (inner.clone(), inner.clone()).prop_map(|(x, y)| {
                    let c = Rx::called(x);
                    Rx::concat(vec![c.clone(), Rx::alternation(vec![c, y])])
                }),
                (prop::collection::vec(inner.clone(), 0..4), prop::option::of(inner.clone()), inner)
                    .prop_map(|(req, others, sep)| Rx::unordered(req, others, sep)),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// The NFA (shared pieces copied, lists looped) matches exactly what the same regex written out as one
        /// `Hir` tree matches.
        #[test]
        fn nfa_matches_the_written_out_regex(x in tree(), inputs in prop::collection::vec("[abé]{0,7}", 16)) {
            let hir = x.to_hir().unwrap();
            let anchored = regex_syntax::hir::Hir::concat(vec![
                regex_syntax::hir::Hir::look(regex_syntax::hir::Look::Start),
                hir,
                regex_syntax::hir::Hir::look(regex_syntax::hir::Look::End),
            ]);
            // Nested orders can outgrow the reference's size limit: those cases say nothing. (The limit is kept
            // to 1 MB: the PikeVM over a written-out NFA of every order took minutes on a few seeds.)
            let reference = regex_automata::meta::Regex::builder()
                .configure(regex_automata::meta::Config::new().nfa_size_limit(Some(1 << 20)))
                .build_from_hir(&anchored);
            prop_assume!(reference.is_ok());
            let reference = reference.unwrap();
            // A closing '#' (not in the alphabet) makes any match a whole-input match.
            let whole = Rx::concat(vec![x, Rx::literal(b"#")]);
            let nfa = whole.to_nfa(1 << 24).unwrap();
            // Programs that call every shared piece, and those that call the large ones only.
            let programs: Vec<Option<Dfa>> = [1, Program::CALL_MIN]
                .iter()
                .map(|&m| whole.to_program_calling(1 << 24, m).unwrap().map(Dfa::new))
                .collect();
            for s in &inputs {
                let want = reference.is_match(s.as_str());
                let got = match &nfa {
                    None => false,
                    Some(nfa) => {
                        let vm = PikeVM::new_from_nfa(nfa.clone()).unwrap();
                        let hay = format!("{s}#");
                        vm.is_match(&mut vm.create_cache(), Input::new(&hay).anchored(Anchored::Yes))
                    }
                };
                prop_assert_eq!(got, want, "{} on {:?}", x_text(&reference), s);
                for dfa in &programs {
                    prop_assert_eq!(program_matches(dfa.as_ref(), &format!("{s}#")), want, "program: {} on {:?}", x_text(&reference), s);
                }
            }
        }
    }

    /// Whether the program's DFA reads all of `hay` into its match state; on the way, every state but the dead
    /// one must still lead to a match (some bytes of `[abé#]` on to it).
    fn program_matches(dfa: Option<&Dfa>, hay: &str) -> bool {
        let Some(dfa) = dfa else { return false };
        let mut cache = dfa.create_cache(1 << 26);
        let mut s = dfa.start(&mut cache).unwrap();
        for &b in hay.as_bytes() {
            assert!(s == DEAD || leads_to_match(dfa, &mut cache, s), "a live state that never matches");
            s = dfa.next(&mut cache, s, b).unwrap();
        }
        dfa.is_match(&cache, s)
    }

    /// Whether some path over the test's bytes leads `s` to a match state.
    fn leads_to_match(dfa: &Dfa, cache: &mut Cache, s: State) -> bool {
        let mut seen = vec![s];
        let mut todo = vec![s];
        while let Some(s) = todo.pop() {
            if dfa.is_match(cache, s) {
                return true;
            }
            for &b in b"ab#\xC3\xA9" {
                let t = dfa.next(cache, s, b).unwrap();
                if t != DEAD && !seen.contains(&t) {
                    seen.push(t);
                    todo.push(t);
                }
            }
        }
        false
    }

    fn x_text(r: &regex_automata::meta::Regex) -> String {
        format!("{r:?}").chars().take(300).collect()
    }
}
