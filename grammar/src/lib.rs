//! Constrained decoding: which tokens keep a model's output inside a constraint, at every step.
//!
//! A [`Constraint`] (a regex, a choice of strings, any JSON object; JSON Schema next) becomes one regular
//! language over output *bytes*, compiled to an NFA whose shared pieces are subroutines (`rx`) and run as a lazy
//! DFA built state by state (`dfa`; `regex-syntax` parses regexes, `regex-automata` compiles Unicode classes). A
//! [`Grammar`] pairs that DFA with a tokenizer's [`Vocabulary`] (shared through a [`TokenSpace`]): the mask of
//! allowed tokens in a DFA state comes from walking the vocabulary's byte trie alongside the DFA, pruning every
//! prefix that dies, and is cached per state, so steady-state decoding copies a cached bitset. A [`Matcher`] is
//! one request's position: `advance`, `mask_into`, `rollback`, and `forced_tokens` for jump-forward decoding.
//!
//! ```
//! use grammar::{Constraint, Grammar, Limits, Matcher, TokenBitset, TokenSpace, Vocabulary};
//!
//! // A toy vocabulary: token ids 0..5 write these bytes; id 5 is EOS.
//! let toks = ["ye", "s", "n", "o", "yes"].iter().map(|t| Some(t.as_bytes().to_vec())).chain([None]).collect();
//! let space = TokenSpace::new(Vocabulary::from_bytes(toks, &[5]));
//! let regex = Constraint::Choice(vec!["yes".into(), "no".into()]).to_regex()?;
//! let g = std::sync::Arc::new(Grammar::from_regex(&regex, space, Limits::default())?);
//! let mut m = Matcher::new(g);
//! let mut mask = TokenBitset::new(6);
//! m.mask_into(&mut mask);
//! assert_eq!(mask.iter().collect::<Vec<_>>(), vec![0, 2, 4]); // "ye", "n", "yes"
//! m.advance(0).unwrap();
//! assert!(m.advance(3).is_err()); // "yeo" is not in the language
//! m.advance(1).unwrap();
//! assert!(m.is_accepting() && m.is_complete());
//! m.advance(5).unwrap(); // EOS
//! # Ok::<(), grammar::Error>(())
//! ```
//!
//! Invariants: a token is in the mask iff advancing by it keeps the output a prefix of some member of the
//! language; EOS is in the mask iff the output so far is a member. So sampling only from the mask never produces
//! an output outside the language, and every member remains reachable.

mod bitset;
mod cache;
mod constraint;
mod dfa;
mod error;
mod grammar;
pub mod json_schema;
mod matcher;
mod numeric;
mod rx;
mod space;
mod tool_calls;
mod trie;
mod vocab;

pub use bitset::TokenBitset;
pub use cache::GrammarCache;
pub use constraint::{check_json_whitespace, Constraint, DEFAULT_WHITESPACE, JSON_NUMBER, JSON_STRING};
pub use error::{Error, Result};
pub use grammar::{Grammar, Limits};
pub use matcher::{Matcher, Rejected};
pub use rx::Rx;
pub use space::TokenSpace;
pub use tool_calls::{CallSyntax, ToolCalls, ToolFunction, CALL_WHITESPACE};
pub use trie::TokenTrie;
pub use vocab::Vocabulary;
