//! One schema's compile context: its time budget and the pieces its parts share, owned by the compile
//! ([`super::schema_to_rx`]) and lent to the tree builder (`ir::Builder`), the emitter (`emit::Emitter`) and the
//! pattern helpers, instead of thread-locals set and cleared around the compile.
//!
//! Everything here lives as long as one schema's compile (all its narrower retries included): a `$ref`'d object
//! written at a hundred places parses its key regexes once, and nothing a big schema built stays behind after it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex_syntax::hir::Hir;

use super::pattern::StringPattern;
use crate::error::{Error, Result};
use crate::rx::Rx;

pub(crate) struct Cx {
    /// When the trees must be built by (see `Options::build_budget`).
    deadline: Instant,
    /// Regexes parsed, by their text.
    pub parsed: RefCell<HashMap<String, Rx>>,
    /// Undeclared keys of the objects met, by their declared names.
    pub keys_except: RefCell<HashMap<Vec<String>, Rx>>,
    /// The free JSON value and the whitespace, by (depth, whitespace).
    pub free_values: RefCell<HashMap<(u32, String), (Rx, Rx)>>,
    /// `pattern`s compiled, by their text.
    pub patterns: RefCell<HashMap<String, Arc<StringPattern>>>,
    /// Checked formats as matchers (for `enum`/`const` values) and as regexes (for output), by name.
    pub format_matchers: RefCell<HashMap<String, Arc<regex_automata::meta::Regex>>>,
    pub format_hirs: RefCell<HashMap<String, Hir>>,
}

impl Cx {
    /// A context whose trees must be built within `budget`.
    pub fn new(budget: Duration) -> Self {
        Self {
            deadline: Instant::now() + budget,
            parsed: RefCell::default(),
            keys_except: RefCell::default(),
            free_values: RefCell::default(),
            patterns: RefCell::default(),
            format_matchers: RefCell::default(),
            format_hirs: RefCell::default(),
        }
    }

    /// An error once the trees being built are past their time budget. `Options::build_budget` exists because
    /// `allOf`, `not` and `if` copy the other side into each alternative they distribute over: one MaskBench
    /// schema (JsonSchemaStore's semgrep) took 23 s and 4 GB per attempt without it.
    pub fn in_budget(&self) -> Result<()> {
        if Instant::now() > self.deadline {
            return Err(Error::too_large(
                "json schema: its allOf/not/if/$ref combinations take too long to expand (Options::build_budget)",
            ));
        }
        Ok(())
    }
}

/// `map[key]`, made by `make` the first time.
pub(crate) fn memo<K: Hash + Eq + Clone, V: Clone>(
    map: &RefCell<HashMap<K, V>>,
    key: &K,
    make: impl FnOnce() -> Result<V>,
) -> Result<V> {
    if let Some(v) = map.borrow().get(key) {
        return Ok(v.clone());
    }
    let v = make()?;
    map.borrow_mut().insert(key.clone(), v.clone());
    Ok(v)
}
