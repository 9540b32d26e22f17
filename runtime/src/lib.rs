//! The continuous-batching engine: requests in, token streams out, over the radix cache, the grammar engine and
//! the model (the runtime issue's work). Today it holds the cross-crate tests that need the real model's
//! tokenizer and the grammar engine together.
