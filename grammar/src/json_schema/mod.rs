//! JSON Schema to one regex over the JSON text.
//!
//! The schema becomes a tree of typed [`ir::Node`]s (`$ref` resolved, recursion unrolled to a fixed depth,
//! `allOf` intersected, untyped keywords split per type, `enum`/`const` filtered by what is beside them), then
//! each node becomes a regex. Every keyword that constrains instances is either enforced exactly, enforced more
//! strictly (listed below: valid instances may be refused, invalid ones are never produced), or refused with an
//! error naming it. So a constrained output always validates.
//!
//! Stricter than the spec, on purpose:
//! - properties are written in the schema's order, undeclared keys after them;
//! - with [`Options::strict_properties`] (the default, like xgrammar's strict mode), an object that declares
//!   `properties` or `patternProperties` but says nothing of `additionalProperties` takes no other keys;
//! - beside `patternProperties`, `additionalProperties` is read as `false`: an undeclared key matches a pattern;
//! - keywords of a type the schema does not name imply it (`{"properties": ...}` means an object);
//! - recursion deeper than [`Options::max_ref_depth`] is cut; `pattern`s and formats produce only characters a
//!   JSON string holds unescaped; numbers in exponent form only where no bound applies.
//!
//! outlines-core's schema-to-regex was the first engine here. It dispatches on one keyword per schema object and
//! silently drops the rest (`allOf` concatenated, `minimum`, `uniqueItems`, `oneOf` overlaps, `{}` pasted as a
//! bare alternation, `date-time` without an offset): wrapping it could only refuse more schemas. Its leaf regexes
//! and eager `Index` remain the baseline MaskBench compares against.

mod cx;
mod emit;
mod ir;
mod pattern;

use serde_json::Value;

use crate::error::{Error, Result};

/// How a schema becomes a regex.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whitespace allowed between JSON tokens.
    pub whitespace: String,
    /// Objects that declare properties take no undeclared keys unless `additionalProperties` allows them.
    pub strict_properties: bool,
    /// How many times one `$ref` may be expanded inside itself.
    pub max_ref_depth: usize,
    /// Nesting of objects/arrays inside a value the schema leaves free (`{}`, `true`, an undeclared key's
    /// value). Each level is one shared piece of the program, called by the level above, so a deeper free value
    /// costs a few states per level, not copies (MaskBench's dev split: 2 levels refused valid instances of 128
    /// schemas that 8 levels admit; 12 admit none more).
    pub any_depth: u32,
    /// Longest the schema's tree may take to build, all attempts together, before it is refused as too large
    /// (`allOf`, `not` and `if` copy one side into each alternative of the other, which can grow for minutes).
    pub build_budget: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            whitespace: crate::DEFAULT_WHITESPACE.into(),
            strict_properties: true,
            max_ref_depth: 3,
            any_depth: 8,
            build_budget: std::time::Duration::from_secs(5),
        }
    }
}

/// The regex for `schema` with default options and this whitespace, or an error naming the first keyword we
/// cannot enforce.
pub fn schema_to_regex(schema: &Value, whitespace: &str) -> Result<String> {
    schema_to_regex_with(schema, &Options { whitespace: whitespace.into(), ..Options::default() })
}

/// The regex for `schema`.
pub fn schema_to_regex_with(schema: &Value, opts: &Options) -> Result<String> {
    Ok(printable(schema_to_hir(schema, opts)?).to_string())
}

/// `h` with every repetition of a repetition grouped: regex-syntax prints `(?:0+)?` as `0+?`, which reads back
/// as a lazy `0+`.
pub(crate) fn printable(h: regex_syntax::hir::Hir) -> regex_syntax::hir::Hir {
    use regex_syntax::hir::{Capture, Hir, HirKind, Repetition};
    fn go(h: Hir, next: &mut u32) -> Hir {
        if matches!(h.kind(), HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_)) {
            return h;
        }
        match h.into_kind() {
            HirKind::Repetition(r) => {
                let sub = go(*r.sub, next);
                let sub = if matches!(sub.kind(), HirKind::Repetition(_)) {
                    *next += 1;
                    Hir::capture(Capture { index: *next, name: None, sub: Box::new(sub) })
                } else {
                    sub
                };
                Hir::repetition(Repetition { sub: Box::new(sub), ..r })
            }
            HirKind::Capture(c) => go(*c.sub, next),
            HirKind::Concat(hs) => Hir::concat(hs.into_iter().map(|x| go(x, next)).collect()),
            HirKind::Alternation(hs) => Hir::alternation(hs.into_iter().map(|x| go(x, next)).collect()),
            _ => Hir::empty(), // leaves returned above
        }
    }
    go(h, &mut 0)
}

/// How long [`schema_to_rx`] keeps trying narrower readings of a schema past the size limit.
const RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// The regex for `schema`, parsed, as one `Hir` tree.
pub fn schema_to_hir(schema: &Value, opts: &Options) -> Result<regex_syntax::hir::Hir> {
    schema_to_rx(schema, opts)?.to_hir()
}

/// The regex for `schema` with its shared pieces shared (what a [`crate::Grammar`] compiles; no regex text
/// written and read again).
pub fn schema_to_rx(schema: &Value, opts: &Options) -> Result<crate::Rx> {
    // One context for every attempt: the time budget counts them all, and pieces parsed once serve them all.
    let cx = cx::Cx::new(opts.build_budget);
    // Past the size limit, narrower readings are tried in turn, each a subset of the last (never accepting
    // more): the schema's own member order instead of any order, then recursion cut one level sooner each time
    // while the attempts stay quick (a schema that takes seconds to outgrow the limit takes gigabytes).
    let mut opts = opts.clone();
    let mut free_order = true;
    let started = std::time::Instant::now();
    loop {
        let mut emitter = emit::Emitter::new(&opts, &cx)?;
        emitter.free_order = free_order;
        let built = ir::Builder::new(schema, &opts, &cx).node(schema).and_then(|node| emitter.emit(&node));
        // Weighed as the program will hold it (shared pieces once), not as regex text would write it out.
        let built = match built {
            Ok(Some(r)) if r.weight() > emit::MAX_REGEX => {
                Err(Error::too_large(format!("json schema: regex past {} bytes", emit::MAX_REGEX)))
            }
            r => r,
        };
        match built {
            Err(e) if e.is_too_large() && !opts.strict_properties && free_order => free_order = false,
            Err(e) if e.is_too_large() && opts.max_ref_depth > 1 && started.elapsed() < RETRY_BUDGET => {
                opts.max_ref_depth -= 1
            }
            r => return r?.ok_or_else(|| Error::syntax("json schema: no value satisfies the schema")),
        }
    }
}

pub(crate) fn unsupported(keyword: &str, why: &str) -> Error {
    Error::unsupported(format!("json schema keyword {keyword:?} is not supported {why}"))
}

#[cfg(test)]
mod tests;
