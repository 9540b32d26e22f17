//! A lazy DFA over a [`Program`] (an NFA with subroutines), built state by state as outputs and masks reach
//! them.
//!
//! A DFA state is the set of *threads* the program may be in: a state that reads a byte, and the stack of
//! places its calls return to. Following a [`S::Call`] pushes, a [`S::Return`] pops, so a definition used at a
//! hundred places is held once in the program, where a regular NFA holds a hundred copies (and compiling it,
//! not running it, was most of the time to first mask for schemas with many shared definitions). The states are
//! the ones the copied NFA's subset construction would make, so the language is the same; only the states an
//! output or a mask visits are ever made.
//!
//! Transitions are a table over byte classes (bytes no transition of the program tells apart share a class), so
//! a step already made is one lookup. Ids are stable: the cache is never cleared; past its byte budget it
//! refuses new states instead ([`Full`]).

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::rx::{Program, S};

/// A DFA state; [`DEAD`] when no thread is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct State(u32);

impl State {
    /// The state's number: states are numbered densely from 0 as they are made.
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// The state with no threads: nothing more can be read.
pub(crate) const DEAD: State = State(0);

/// A transition not made yet, of a state whose classes are not grouped yet (see [`Dfa::make_transitions`]).
const UNKNOWN: u32 = u32::MAX;

/// Table entries above this are transitions not made yet: [`UNKNOWN`], or `PENDING - g` for one of group `g`.
const LAST_STATE: u32 = u32::MAX - 258;
/// A transition not made yet of group 0; group `g` is `PENDING - g` (a state has at most 256 classes).
const PENDING: u32 = u32::MAX - 1;

/// The most stacked calls a thread may hold (calls nest as deep as definitions do; this only bounds a program
/// gone wrong).
const MAX_CALL_DEPTH: u32 = 4096;

/// A thread: (its stack, as an id into [`Cache::stacks`]; a state of the program).
type Thread = (u32, u32);

/// The cache is past its byte budget (or a thread past [`MAX_CALL_DEPTH`]): no new state can be made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Full;

pub(crate) struct Dfa {
    prog: Program,
    classes: [u8; 256],
    stride: usize,
}

/// The states made so far and their transitions; one per grammar, behind its lock.
pub(crate) struct Cache {
    /// `state * stride + class` to the next state, or a transition not made yet (above [`LAST_STATE`]).
    table: Vec<u32>,
    /// Each state's threads (sorted), and whether the program's match state is among them.
    threads: Vec<Arc<[Thread]>>,
    matching: Vec<bool>,
    ids: FxHashMap<Arc<[Thread]>, u32>,
    /// Stack id to (the stack below, where the top call returns); id 0 is the empty stack.
    stacks: Vec<(u32, u32)>,
    stack_ids: FxHashMap<(u32, u32), u32>,
    depth: Vec<u32>,
    bytes: usize,
    limit: usize,
    /// Per program state, the closure that last met it and with which stack (most states are met with one
    /// stack per closure); `seen` holds the threads met with another stack.
    marks: Vec<(u32, u32)>,
    round: u32,
    seen: FxHashSet<Thread>,
    todo: Vec<Thread>,
    out: Vec<Thread>,
    /// Buffers of [`Dfa::group_classes`]: per class, the threads it moves and the last thread that did.
    moved: Vec<Vec<Thread>>,
    last: Vec<u32>,
}

impl Dfa {
    pub(crate) fn new(prog: Program) -> Self {
        // A class boundary after the last byte of every range (and before its first).
        let mut boundary = [false; 256];
        let mut mark = |lo: u8, hi: u8| {
            if lo > 0 {
                boundary[lo as usize - 1] = true;
            }
            boundary[hi as usize] = true;
        };
        for s in &prog.states {
            match s {
                S::Range(t) => mark(t.start, t.end),
                S::Sparse(ts) => ts.iter().for_each(|t| mark(t.start, t.end)),
                _ => {}
            }
        }
        let mut classes = [0u8; 256];
        for b in 1..256 {
            classes[b] = classes[b - 1] + u8::from(boundary[b - 1]);
        }
        let stride = classes[255] as usize + 1;
        Self { prog, classes, stride }
    }

    /// The class of byte `b`: bytes of one class lead every state to the same place.
    pub(crate) fn class(&self, b: u8) -> u8 {
        self.classes[b as usize]
    }

    /// An empty cache holding at most about `limit` bytes of states.
    pub(crate) fn create_cache(&self, limit: usize) -> Cache {
        let mut cache = Cache {
            table: Vec::new(),
            threads: Vec::new(),
            matching: Vec::new(),
            ids: FxHashMap::default(),
            stacks: vec![(0, 0)],
            stack_ids: FxHashMap::default(),
            depth: vec![0],
            bytes: 0,
            limit,
            marks: vec![(0, 0); self.prog.states.len()],
            round: 0,
            seen: FxHashSet::default(),
            todo: Vec::new(),
            out: Vec::new(),
            moved: Vec::new(),
            last: Vec::new(),
        };
        let dead = cache.add(Arc::from(Vec::new()), false, self.stride);
        debug_assert_eq!(dead, DEAD.0);
        cache.table.iter_mut().for_each(|t| *t = DEAD.0);
        cache
    }

    /// The state before any byte.
    pub(crate) fn start(&self, cache: &mut Cache) -> Result<State, Full> {
        cache.todo.clear();
        cache.todo.push((0, self.prog.start));
        self.close(cache)
    }

    /// The transition out of `s` on `b` if it was made before.
    #[inline]
    pub(crate) fn known(&self, cache: &Cache, s: State, b: u8) -> Option<State> {
        let t = cache.table[s.0 as usize * self.stride + self.classes[b as usize] as usize];
        (t <= LAST_STATE).then_some(State(t))
    }

    /// The state after `b` in `s` ([`DEAD`] when no thread reads `b`).
    pub(crate) fn next(&self, cache: &mut Cache, s: State, b: u8) -> Result<State, Full> {
        let at = s.0 as usize * self.stride + self.classes[b as usize] as usize;
        if cache.table[at] > LAST_STATE {
            self.make_transitions(cache, s, b)?;
        }
        Ok(State(cache.table[at]))
    }

    /// Makes the transition of `s` on `b`, and with it those of every class of its group: classes that move the
    /// same threads lead to the same state, so a group is closed once. A state's classes fall into a few groups
    /// (text, a quote, an escape, the letters that go on with a declared name) against dozens of classes, and a
    /// mask asks for most of them: closing once per class was most of the time of a new state's first mask.
    ///
    /// The first transition asked of a state groups its classes (one pass over its threads' transitions) and
    /// writes each class's group into the table in place of the state (`PENDING - g`); classes that move no
    /// thread lead to [`DEAD`] at once. Each group is closed when one of its classes is first asked for, so no
    /// state is made that nothing reaches.
    fn make_transitions(&self, cache: &mut Cache, s: State, b: u8) -> Result<(), Full> {
        let row = s.0 as usize * self.stride;
        let at = row + self.classes[b as usize] as usize;
        if cache.table[at] == UNKNOWN {
            self.group_classes(cache, s);
        }
        let group = cache.table[at];
        if group <= LAST_STATE {
            return Ok(());
        }
        self.moved_by(cache, s, b);
        let t = self.close(cache)?;
        for entry in &mut cache.table[row..row + self.stride] {
            if *entry == group {
                *entry = t.0;
            }
        }
        Ok(())
    }

    /// Sets `cache.todo` to the threads of `s` that read `b`, each moved by the first of its transitions that
    /// does (pushed in reverse, so [`Dfa::close`] follows them in order).
    fn moved_by(&self, cache: &mut Cache, s: State, b: u8) {
        let threads = cache.threads[s.0 as usize].clone();
        cache.todo.clear();
        for &(stack, q) in threads.iter().rev() {
            let next = match &self.prog.states[q as usize] {
                S::Range(t) => (t.start <= b && b <= t.end).then_some(t.next),
                S::Sparse(ts) => ts.iter().find(|t| t.start <= b && b <= t.end).map(|t| t.next),
                _ => None,
            };
            if let Some(n) = next {
                cache.todo.push((stack, n.as_u32()));
            }
        }
    }

    /// Writes each class's group into `s`'s row (see [`Dfa::make_transitions`]).
    fn group_classes(&self, cache: &mut Cache, s: State) {
        let threads = cache.threads[s.0 as usize].clone();
        let mut moved = std::mem::take(&mut cache.moved);
        moved.resize_with(self.stride, Vec::new);
        moved.iter_mut().for_each(Vec::clear);
        // The threads each class moves, in the state's order: a thread by the first of its transitions that
        // reads the class (`last` is the thread a class last moved).
        let mut last = std::mem::take(&mut cache.last);
        last.clear();
        last.resize(self.stride, u32::MAX);
        for (i, &(stack, q)) in threads.iter().enumerate() {
            let ts = match &self.prog.states[q as usize] {
                S::Range(t) => std::slice::from_ref(t),
                S::Sparse(ts) => &ts[..],
                _ => continue,
            };
            for t in ts {
                // Class boundaries fall on every transition's ends, so a transition reads whole classes.
                for c in self.classes[t.start as usize] as usize..=self.classes[t.end as usize] as usize {
                    if last[c] != i as u32 {
                        last[c] = i as u32;
                        moved[c].push((stack, t.next.as_u32()));
                    }
                }
            }
        }
        let row = s.0 as usize * self.stride;
        let mut groups: FxHashMap<&[Thread], u32> = FxHashMap::default();
        for (c, m) in moved.iter().enumerate() {
            cache.table[row + c] = if m.is_empty() {
                DEAD.0
            } else {
                let next = groups.len() as u32;
                PENDING - *groups.entry(m.as_slice()).or_insert(next)
            };
        }
        drop(groups);
        cache.moved = moved;
        cache.last = last;
    }

    /// Whether `s` holds the program's match state (reached after the whole output).
    pub(crate) fn is_match(&self, cache: &Cache, s: State) -> bool {
        cache.matching[s.0 as usize]
    }

    /// The state of the threads in `cache.todo` and all they reach without reading a byte.
    fn close(&self, cache: &mut Cache) -> Result<State, Full> {
        cache.round = cache.round.wrapping_add(1);
        if cache.round == 0 {
            cache.marks.iter_mut().for_each(|m| *m = (0, 0));
            cache.round = 1;
        }
        let round = cache.round;
        if !cache.seen.is_empty() {
            cache.seen.clear();
        }
        let mut out = std::mem::take(&mut cache.out);
        out.clear();
        let mut matching = false;
        while let Some((stack, q)) = cache.todo.pop() {
            let mark = &mut cache.marks[q as usize];
            if mark.0 != round {
                *mark = (round, stack);
            } else if mark.1 == stack || !cache.seen.insert((stack, q)) {
                continue;
            }
            match &self.prog.states[q as usize] {
                S::Empty(n) => cache.todo.push((stack, *n)),
                S::Union(alts) => cache.todo.extend(alts.iter().rev().map(|&a| (stack, a))),
                S::Call { target, ret } => {
                    let inner = cache.push(stack, *ret)?;
                    cache.todo.push((inner, *target));
                }
                S::Return => {
                    // The empty stack never reaches a return: pieces are only called.
                    if stack != 0 {
                        let (below, ret) = cache.stacks[stack as usize];
                        cache.todo.push((below, ret));
                    }
                }
                S::Range(_) => out.push((stack, q)),
                S::Sparse(ts) if !ts.is_empty() => out.push((stack, q)),
                S::Sparse(_) => {}
                S::Match => {
                    matching = true;
                    out.push((stack, q));
                }
            }
        }
        out.sort_unstable();
        let found = cache.ids.get(out.as_slice()).copied();
        let threads: Arc<[Thread]> = match found {
            Some(id) => {
                cache.out = out;
                return Ok(State(id));
            }
            None => Arc::from(out.as_slice()),
        };
        cache.out = out;
        let cost = threads.len() * 2 * std::mem::size_of::<Thread>() + self.stride * 4 + 64;
        // (Ids above LAST_STATE mean "not made yet" in the table: a cache of that many states would be past any
        // byte budget first, but the id space is checked as well.)
        if cache.bytes + cost > cache.limit || cache.threads.len() > LAST_STATE as usize {
            return Err(Full);
        }
        cache.bytes += cost;
        Ok(State(cache.add(threads, matching, self.stride)))
    }
}

impl Cache {
    fn add(&mut self, threads: Arc<[Thread]>, matching: bool, stride: usize) -> u32 {
        let id = self.threads.len() as u32;
        self.table.extend(std::iter::repeat_n(UNKNOWN, stride));
        self.ids.insert(threads.clone(), id);
        self.threads.push(threads);
        self.matching.push(matching);
        id
    }

    /// The stack `below` with a call returning to `ret` on top.
    fn push(&mut self, below: u32, ret: u32) -> Result<u32, Full> {
        if let Some(&id) = self.stack_ids.get(&(below, ret)) {
            return Ok(id);
        }
        let depth = self.depth[below as usize] + 1;
        if depth > MAX_CALL_DEPTH {
            return Err(Full);
        }
        let id = self.stacks.len() as u32;
        self.stacks.push((below, ret));
        self.depth.push(depth);
        self.stack_ids.insert((below, ret), id);
        self.bytes += 32;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every transition made by group (see [`Dfa::make_transitions`]) is the state a byte on its own leads to:
    /// the closure of the threads that read it, asked of states met in a lenient object (calls, declared names,
    /// undeclared keys, Unicode classes), bytes in a scrambled order.
    #[test]
    fn transitions_made_by_group_equal_those_made_byte_by_byte() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 3}, "nick": {"type": "string"},
            "id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["name", "id"]});
        let opts = crate::json_schema::Options { strict_properties: false, ..Default::default() };
        let rx = crate::json_schema::schema_to_rx(&schema, &opts).unwrap();
        let dfa = Dfa::new(rx.to_program(1 << 26).unwrap().unwrap());
        let mut cache = dfa.create_cache(1 << 26);
        let mut todo = vec![dfa.start(&mut cache).unwrap()];
        let mut seen: FxHashSet<State> = todo.iter().copied().collect();
        while let Some(s) = todo.pop() {
            if seen.len() > 400 {
                break;
            }
            for b in (0..=255u8).map(|i| i.wrapping_mul(73).wrapping_add(41)) {
                let got = dfa.next(&mut cache, s, b).unwrap();
                dfa.moved_by(&mut cache, s, b);
                let want = dfa.close(&mut cache).unwrap();
                assert_eq!(got, want, "state {s:?} byte {b:#04x}");
                if seen.insert(got) {
                    todo.push(got);
                }
            }
        }
        assert!(seen.len() > 100, "{} states met", seen.len());
    }
}
