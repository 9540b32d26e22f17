//! Compiled grammars shared across requests.
//!
//! Requests bring the same schemas again and again (an agent's tool set, a RAG pipeline's answer format), and
//! compiling one costs milliseconds to seconds. The cache maps a [`Constraint`] to its compiled [`Grammar`] over
//! one [`TokenSpace`] (so the key is effectively constraint x vocabulary). Each key holds a `OnceLock`, so
//! concurrent requests for the same new constraint compile it once while the others wait, and a constraint that
//! failed to compile fails fast the next time too. It is `Sync`: the runtime compiles on a worker thread, off the
//! scheduler's. Size and time are bounded by [`Limits`] (DFA and NFA sizes) and by `max_entries`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use crate::constraint::Constraint;
use crate::error::Result;
use crate::grammar::{Grammar, Limits};
use crate::space::TokenSpace;

type Slot = Arc<OnceLock<Result<Arc<Grammar>>>>;

pub struct GrammarCache {
    space: Arc<TokenSpace>,
    limits: Limits,
    whitespace: String,
    max_entries: usize,
    map: DashMap<Constraint, Slot>,
    compiles: AtomicU64,
    hits: AtomicU64,
}

impl std::fmt::Debug for GrammarCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCache")
            .field("entries", &self.map.len())
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl GrammarCache {
    pub fn new(space: Arc<TokenSpace>, limits: Limits, max_entries: usize) -> Self {
        Self {
            space,
            limits,
            whitespace: crate::DEFAULT_WHITESPACE.into(),
            max_entries: max_entries.max(1),
            map: DashMap::new(),
            compiles: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// JSON constraints (schemas, `json_object`) allow `whitespace`, a regex, between tokens instead of
    /// [`crate::DEFAULT_WHITESPACE`]; refused as [`crate::check_json_whitespace`] says.
    pub fn with_json_whitespace(mut self, whitespace: &str) -> Result<Self> {
        crate::check_json_whitespace(whitespace)?;
        self.whitespace = whitespace.into();
        Ok(self)
    }

    /// The compiled grammar for `c`, compiling it on first use (once, whoever asks concurrently).
    pub fn get_or_compile(&self, c: &Constraint) -> Result<Arc<Grammar>> {
        let slot: Slot = match self.map.get(c) {
            Some(s) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                s.clone()
            }
            None => {
                if self.map.len() >= self.max_entries {
                    // Make room: drop an arbitrary entry (grammars in use stay alive through their Arcs). The key
                    // is taken in its own statement: the iterator's shard lock must be released before `remove`.
                    let victim = self.map.iter().next().map(|e| e.key().clone());
                    if let Some(k) = victim {
                        self.map.remove(&k);
                    }
                }
                self.map.entry(c.clone()).or_default().clone()
            }
        };
        slot.get_or_init(|| {
            self.compiles.fetch_add(1, Ordering::Relaxed);
            Ok(Arc::new(Grammar::from_rx(&c.to_rx_with(&self.whitespace)?, self.space.clone(), self.limits)?))
        })
        .clone()
    }

    /// Grammars compiled so far (cache misses that did the work).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }
    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Vocabulary;

    fn space() -> Arc<TokenSpace> {
        let toks = (0..=255u8).map(|b| Some(vec![b])).chain([None]).collect();
        TokenSpace::new(Vocabulary::from_bytes(toks, &[256]))
    }

    #[test]
    fn concurrent_requests_compile_once_and_errors_are_cached() {
        let cache = Arc::new(GrammarCache::new(space(), Limits::default(), 8));
        let c = Constraint::JsonSchema(r#"{"type": "object", "properties": {"a": {"type": "integer"}}}"#.into());
        let grammars: Vec<Arc<Grammar>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| cache.get_or_compile(&c).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(cache.compiles(), 1);
        assert!(grammars.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])), "one shared grammar");
        let bad = Constraint::JsonSchema(r#"{"type": "integer", "multipleOf": 3}"#.into());
        let e1 = cache.get_or_compile(&bad).unwrap_err();
        let e2 = cache.get_or_compile(&bad).unwrap_err();
        assert_eq!(e1, e2);
        assert!(e1.to_string().contains("multipleOf"));
        assert_eq!(cache.compiles(), 2, "the failure is cached, not recompiled");
    }

    #[test]
    fn entries_are_bounded() {
        let cache = GrammarCache::new(space(), Limits::default(), 3);
        for i in 0..10 {
            cache.get_or_compile(&Constraint::Choice(vec![format!("option{i}")])).unwrap();
        }
        assert!(cache.len() <= 3);
        assert_eq!(cache.compiles(), 10);
    }

    #[test]
    fn json_whitespace_is_configurable_and_checked() {
        let accepts = |cache: &GrammarCache, c: &Constraint, text: &str| {
            let mut m = crate::Matcher::new(cache.get_or_compile(c).unwrap());
            text.bytes().all(|b| m.advance(b.into()).is_ok()) && m.is_accepting()
        };
        let schema = Constraint::JsonSchema(r#"{"type": "object", "properties": {"a": {"type": "integer"}}}"#.into());
        let object = Constraint::JsonObject { max_depth: 2 };
        let pretty = "{\n    \"a\": 1\n}";
        let default = GrammarCache::new(space(), Limits::default(), 8);
        assert!(accepts(&default, &schema, pretty) && accepts(&default, &object, pretty));
        assert!(!accepts(&default, &schema, "{\n\n\"a\": 1}"), "the default takes one newline between tokens");
        let narrow = GrammarCache::new(space(), Limits::default(), 8).with_json_whitespace("[ ]{0,2}").unwrap();
        assert!(!accepts(&narrow, &schema, pretty) && !accepts(&narrow, &object, pretty));
        assert!(accepts(&narrow, &schema, r#"{  "a": 1}"#) && accepts(&narrow, &object, r#"{  "a": 1}"#));
        let compact = GrammarCache::new(space(), Limits::default(), 8).with_json_whitespace("").unwrap();
        assert!(accepts(&compact, &schema, r#"{"a":1}"#) && !accepts(&compact, &schema, r#"{"a": 1}"#));
        assert!(!accepts(&compact, &object, r#"{"a": 1}"#));
        for bad in ["[ a]*", r"\s*", ".?", "^ ", "( "] {
            let err = GrammarCache::new(space(), Limits::default(), 8).with_json_whitespace(bad).unwrap_err();
            assert!(err.is_syntax(), "{bad:?}: {err}");
        }
    }
}
