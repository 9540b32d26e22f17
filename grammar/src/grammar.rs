//! A compiled constraint: a byte-level DFA plus the vocabulary, with token masks cached per DFA state.

use std::sync::Arc;

use dashmap::DashMap;
use regex_automata::dfa::{dense, Automaton};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

use crate::bitset::TokenBitset;
use crate::error::{Error, Result};
use crate::trie::TokenTrie;
use crate::vocab::Vocabulary;

/// Limits on compiling one constraint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes the final DFA may take.
    pub dfa_bytes: usize,
    /// Bytes determinization may use on the way.
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
}

impl TokenSpace {
    pub fn new(vocab: Vocabulary) -> Arc<Self> {
        let trie = TokenTrie::new(&vocab);
        Arc::new(Self { vocab, trie })
    }
}

/// Marks every state reachable from `start` from which an end-of-input match is reachable.
fn live_states(dfa: &dense::DFA<Vec<u32>>, start: StateID) -> Vec<bool> {
    let reps: Vec<u8> = dfa.byte_classes().representatives(..).filter_map(|u| u.as_u8()).collect();
    let mut index: std::collections::HashMap<StateID, usize> = std::collections::HashMap::new();
    let mut states = vec![start];
    index.insert(start, 0);
    let mut preds: Vec<Vec<usize>> = vec![Vec::new()];
    let mut i = 0;
    while i < states.len() {
        let s = states[i];
        for &b in &reps {
            let t = dfa.next_state(s, b);
            if dfa.is_dead_state(t) || dfa.is_quit_state(t) {
                continue;
            }
            let j = *index.entry(t).or_insert_with(|| {
                states.push(t);
                preds.push(Vec::new());
                states.len() - 1
            });
            preds[j].push(i);
        }
        i += 1;
    }
    let mut live_idx = vec![false; states.len()];
    let mut work: Vec<usize> =
        (0..states.len()).filter(|&j| dfa.is_match_state(dfa.next_eoi_state(states[j]))).collect();
    for &j in &work {
        live_idx[j] = true;
    }
    while let Some(j) = work.pop() {
        for &p in &preds[j] {
            if !live_idx[p] {
                live_idx[p] = true;
                work.push(p);
            }
        }
    }
    let max = states.iter().map(|s| s.as_usize()).max().unwrap_or(0);
    let mut live = vec![false; max + 1];
    for (j, s) in states.iter().enumerate() {
        live[s.as_usize()] = live_idx[j];
    }
    live
}

/// A regular language over output bytes, ready to mask tokens. Cheap to share (`Arc`) across requests.
pub struct Grammar {
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
    /// `live[id]`: from this state the output can still end in a match. The DFA reports matches one byte late,
    /// so a state right after a complete match is not "dead" to it although nothing may follow; only liveness
    /// tells a grammar which outputs are still prefixes of the language.
    live: Vec<bool>,
    space: Arc<TokenSpace>,
    masks: DashMap<StateID, Arc<TokenBitset>>,
    regex: String,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar")
            .field("regex_len", &self.regex.len())
            .field("cached_masks", &self.masks.len())
            .finish()
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
        let dfa = dense::Builder::new()
            .thompson(regex_automata::nfa::thompson::Config::new().nfa_size_limit(Some(limits.dfa_bytes)))
            .configure(
                dense::Config::new()
                    .start_kind(regex_automata::dfa::StartKind::Anchored)
                    // All: keep going while any longer match is still possible (full-match semantics).
                    .match_kind(MatchKind::All)
                    .dfa_size_limit(Some(limits.dfa_bytes))
                    .determinize_size_limit(Some(limits.determinize_bytes)),
            )
            .build(regex)
            .map_err(|e| {
                // The cause (e.g. "exceeded size limit") is in the source chain.
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                if msg.contains("exceeded") || msg.contains("limit") {
                    Error::too_large(format!("regex of {} bytes compiles past the DFA limits: {msg}", regex.len()))
                } else {
                    Error::syntax(format!("regex: {msg}"))
                }
            })?;
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes))
            .map_err(|e| Error::syntax(format!("regex start state: {e}")))?;
        let live = live_states(&dfa, start);
        if !live[start.as_usize()] {
            return Err(Error::syntax("the constraint matches no output at all"));
        }
        Ok(Self { dfa, start, live, space, masks: DashMap::new(), regex: regex.to_string() })
    }

    pub fn regex(&self) -> &str {
        &self.regex
    }
    pub fn space(&self) -> &Arc<TokenSpace> {
        &self.space
    }
    pub(crate) fn start(&self) -> StateID {
        self.start
    }
    pub(crate) fn is_dead(&self, s: StateID) -> bool {
        !self.live.get(s.as_usize()).copied().unwrap_or(false)
    }
    pub(crate) fn next(&self, s: StateID, b: u8) -> StateID {
        self.dfa.next_state(s, b)
    }
    /// Whether the output may end in state `s`.
    pub(crate) fn accepts(&self, s: StateID) -> bool {
        self.dfa.is_match_state(self.dfa.next_eoi_state(s))
    }
    /// Walks `bytes` from `s`; `None` if the output leaves the language.
    pub(crate) fn walk(&self, mut s: StateID, bytes: &[u8]) -> Option<StateID> {
        for &b in bytes {
            s = self.next(s, b);
            if self.is_dead(s) {
                return None;
            }
        }
        Some(s)
    }

    /// Tokens allowed in state `s` (EOS excluded), computed once per state and cached.
    pub(crate) fn mask(&self, s: StateID) -> Arc<TokenBitset> {
        if let Some(m) = self.masks.get(&s) {
            return m.clone();
        }
        let m = Arc::new(self.compute_mask(s));
        self.masks.insert(s, m.clone());
        m
    }

    /// Depth-first walk of the token trie alongside the DFA, pruning at dead states.
    fn compute_mask(&self, s: StateID) -> TokenBitset {
        let trie = &self.space.trie;
        let mut mask = TokenBitset::new(self.space.vocab.len());
        let mut stack: Vec<(u32, StateID)> = vec![(0, s)];
        while let Some((node, state)) = stack.pop() {
            let n = trie.nodes[node as usize];
            for &(byte, child) in &trie.children[n.first_child as usize..(n.first_child + n.n_children) as usize] {
                let next = self.next(state, byte);
                if self.is_dead(next) {
                    continue;
                }
                let c = trie.nodes[child as usize];
                for &t in &trie.token_ids[c.first_token as usize..(c.first_token + c.n_tokens) as usize] {
                    mask.set(t);
                }
                if c.n_children > 0 {
                    stack.push((child, next));
                }
            }
        }
        mask
    }

    /// States whose masks are cached.
    pub fn cached_masks(&self) -> usize {
        self.masks.len()
    }
}
