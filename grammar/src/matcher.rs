//! Per-request grammar state: cheap to create, advanced one token at a time, rolled back on demand.

use std::sync::Arc;

use crate::bitset::TokenBitset;
use crate::grammar::Grammar;

/// Why a token was refused; the matcher is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The token's bytes leave the language.
    Disallowed(u32),
    /// EOS while the output is not complete.
    NotComplete(u32),
    /// A special token that writes nothing the grammar can see, or an id outside the vocabulary.
    Special(u32),
    /// The matcher already ended with EOS.
    Finished,
}

/// Where one request is in its grammar.
#[derive(Debug, Clone)]
pub struct Matcher {
    grammar: Arc<Grammar>,
    /// DFA state after each accepted token; `states[0]` is the start.
    states: Vec<crate::grammar::State>,
    finished: bool,
}

impl Matcher {
    pub fn new(grammar: Arc<Grammar>) -> Self {
        let start = grammar.start();
        Self { grammar, states: vec![start], finished: false }
    }

    /// The grammar this matcher walks.
    pub fn grammar(&self) -> &Arc<Grammar> {
        &self.grammar
    }

    fn state(&self) -> crate::grammar::State {
        *self.states.last().expect("start state is never popped")
    }

    /// Accepts `token` if the grammar allows it next.
    pub fn advance(&mut self, token: u32) -> Result<(), Rejected> {
        if self.finished {
            return Err(Rejected::Finished);
        }
        let space = self.grammar.space();
        if space.vocab.eos().contains(&token) {
            if self.is_accepting() {
                self.finished = true;
                return Ok(());
            }
            return Err(Rejected::NotComplete(token));
        }
        let bytes = space.vocab.bytes(token).ok_or(Rejected::Special(token))?;
        let next = self.grammar.walk(self.state(), bytes).ok_or(Rejected::Disallowed(token))?;
        self.states.push(next);
        Ok(())
    }

    /// Writes the allowed tokens into `mask` (EOS only when the output may end here).
    pub fn mask_into(&self, mask: &mut TokenBitset) {
        if self.finished {
            mask.clear();
            return;
        }
        mask.copy_from(&self.grammar.mask(self.state()));
        if self.is_accepting() {
            for &e in self.grammar.space().vocab.eos() {
                mask.set(e);
            }
        }
    }

    /// Whether the output so far is a complete match.
    pub fn is_accepting(&self) -> bool {
        self.grammar.accepts(self.state())
    }

    /// Whether the grammar allows nothing but ending (the caller can stop without sampling EOS).
    pub fn is_complete(&self) -> bool {
        self.finished || (self.is_accepting() && self.grammar.mask(self.state()).count() == 0)
    }

    /// Tokens accepted so far (EOS not counted).
    pub fn len(&self) -> usize {
        self.states.len() - 1
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Undoes the last `n` accepted tokens; a final EOS counts as one.
    pub fn rollback(&mut self, mut n: usize) {
        if self.finished && n > 0 {
            self.finished = false;
            n -= 1;
        }
        let keep = self.states.len().saturating_sub(n).max(1);
        self.states.truncate(keep);
    }

    /// The bytes the grammar forces next, if there is only one way on (jump-forward decoding): stops where a
    /// choice opens or the output may end. Empty when the next byte is not forced.
    pub fn forced_bytes(&self) -> Vec<u8> {
        self.forced_path().0
    }

    /// The forced bytes and the state before each of them.
    fn forced_path(&self) -> (Vec<u8>, Vec<crate::grammar::State>) {
        let g = &self.grammar;
        let mut s = self.state();
        let (mut bytes, mut states) = (Vec::new(), Vec::new());
        while !g.accepts(s) {
            let Some((b, t)) = g.only_next(s) else { break };
            bytes.push(b);
            states.push(s);
            s = t;
        }
        (bytes, states)
    }

    /// The tokens jump-forward appends without sampling: [`Matcher::forced_tokens_with`] with the longest
    /// tokens that fit.
    pub fn forced_tokens(&self) -> Vec<u32> {
        self.forced_tokens_with(|_| None)
    }

    /// The tokens jump-forward appends without sampling: the forced bytes ([`Matcher::forced_bytes`]) as
    /// `tokenize` writes them if its tokens spell exactly those bytes, else as the longest tokens that fit, less
    /// a tail left to sampling.
    ///
    /// Pass the model's tokenizer: SmolLM2's writes `store_failures` as `store _ fail ures`, the longest tokens
    /// are `store _ failure s`, and the model has only seen the first. The tail starts at the first token from
    /// which an allowed token reaches past the forced bytes: a forced key `"name"` ends in `"`, where a model
    /// writes `":` as one token, and after a lone forced `"` SmolLM2 answers ` :` and drifts.
    pub fn forced_tokens_with(&self, tokenize: impl FnOnce(&[u8]) -> Option<Vec<u32>>) -> Vec<u32> {
        let (forced, states) = self.forced_path();
        if forced.is_empty() {
            return Vec::new();
        }
        let g = &self.grammar;
        let space = g.space();
        let spells = |ids: &[u32]| {
            let mut at = 0;
            ids.iter().all(|&t| {
                let b = space.vocab.bytes(t).unwrap_or_default();
                let ok = !b.is_empty() && forced[at..].starts_with(b);
                at += b.len();
                ok
            }) && at == forced.len()
        };
        let ids = tokenize(&forced).filter(|ids| spells(ids)).unwrap_or_else(|| {
            let mut ids = Vec::new();
            let mut at = 0;
            while let Some((id, len)) = space.trie.longest_prefix(&forced[at..]) {
                ids.push(id);
                at += len;
            }
            ids
        });
        // (token, where its bytes start); both ways spell a prefix of the forced bytes, whose states are known.
        let mut tokens = Vec::with_capacity(ids.len());
        let mut pos = 0;
        for id in ids {
            tokens.push((id, pos));
            pos += space.vocab.bytes(id).map_or(0, <[u8]>::len);
        }
        let reaches_past = |&(_, start): &(u32, usize)| {
            let Some(node) = space.trie.node(&forced[start..pos]) else { return false };
            let longer = space.trie.extensions(node);
            if longer.is_empty() {
                return false;
            }
            let mask = g.mask(states[start]);
            longer.iter().any(|&t| mask.contains(t))
        };
        let keep = tokens.iter().position(reaches_past).unwrap_or(tokens.len());
        tokens[..keep].iter().map(|&(id, _)| id).collect()
    }
}
