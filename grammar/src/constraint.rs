//! Constraints as users give them, compiled to one regular language.

use crate::error::{Error, Result};

/// JSON whitespace allowed between tokens: nothing, one space, or a newline and an indent of up to 20 blanks
/// (llama.cpp's choice too). Pretty-printed JSON fits ten levels deep at two spaces per level, and the run is
/// bounded so a model cannot stall in whitespace. A tighter bound (it was `[ \t\n]{0,4}`) cuts a model's
/// indent at the second level, and models then close the object they meant to fill: `"vcenter": {\n    }`.
pub const DEFAULT_WHITESPACE: &str = r"( |\n[ \t]{0,20})?";

/// Checks a regex for the whitespace between JSON tokens: it must parse, and match nothing but JSON blanks
/// (space, tab, newline, carriage return), without anchors.
pub fn check_json_whitespace(whitespace: &str) -> Result<()> {
    fn blanks_only(h: &regex_syntax::hir::Hir) -> bool {
        use regex_syntax::hir::{Class, HirKind};
        let blank = |b: u32| matches!(b, 0x20 | 0x09 | 0x0A | 0x0D);
        // The blanks are 9, 10, 13 and 32: no range of three or more values holds only blanks.
        let range = |a: u32, b: u32| b - a < 2 && (a..=b).all(blank);
        match h.kind() {
            HirKind::Empty => true,
            HirKind::Literal(l) => l.0.iter().all(|&b| blank(b.into())),
            HirKind::Class(Class::Unicode(c)) => c.ranges().iter().all(|r| range(r.start().into(), r.end().into())),
            HirKind::Class(Class::Bytes(c)) => c.ranges().iter().all(|r| range(r.start().into(), r.end().into())),
            HirKind::Look(_) => false,
            HirKind::Repetition(r) => blanks_only(&r.sub),
            HirKind::Capture(c) => blanks_only(&c.sub),
            HirKind::Concat(xs) | HirKind::Alternation(xs) => xs.iter().all(blanks_only),
        }
    }
    if blanks_only(&crate::grammar::parse(whitespace, "json whitespace")?) {
        Ok(())
    } else {
        Err(Error::syntax(format!("json whitespace {whitespace:?} may match more than spaces, tabs and newlines")))
    }
}

/// A constraint on a request's output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Constraint {
    /// The whole output matches this regex.
    Regex(String),
    /// The output is exactly one of these strings.
    Choice(Vec<String>),
    /// Any JSON object, nested at most `max_depth` levels (OpenAI's `json_object` mode).
    JsonObject { max_depth: u32 },
    /// A JSON value valid against this JSON Schema (its text).
    JsonSchema(String),
    /// Calls to functions (see [`crate::ToolCalls`]); each call's arguments validate against its function's
    /// `parameters`.
    ToolCalls(crate::ToolCalls),
}

impl Constraint {
    /// The regex the output must match, parsed (JSON Schemas are built as a parsed regex directly).
    pub fn to_rx(&self) -> Result<crate::Rx> {
        self.to_rx_with(DEFAULT_WHITESPACE)
    }

    /// [`Constraint::to_rx`] with `whitespace` (a regex) between JSON tokens instead of the default.
    pub fn to_rx_with(&self, whitespace: &str) -> Result<crate::Rx> {
        match self {
            Constraint::JsonSchema(text) => {
                let schema: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| Error::syntax(format!("json schema is not JSON: {e}")))?;
                let opts = crate::json_schema::Options { whitespace: whitespace.into(), ..Default::default() };
                crate::json_schema::schema_to_rx(&schema, &opts)
            }
            Constraint::ToolCalls(calls) => calls.to_rx(),
            other => crate::grammar::parse(&other.to_regex_with(whitespace)?, "regex")
                .and_then(crate::grammar::whole_output)
                .map(crate::Rx::hir),
        }
    }

    /// The regex the output must match.
    pub fn to_regex(&self) -> Result<String> {
        self.to_regex_with(DEFAULT_WHITESPACE)
    }

    /// [`Constraint::to_regex`] with `whitespace` (a regex) between JSON tokens instead of the default.
    pub fn to_regex_with(&self, whitespace: &str) -> Result<String> {
        match self {
            Constraint::Regex(r) => {
                regex_syntax::Parser::new().parse(r).map_err(|e| Error::syntax(format!("regex: {e}")))?;
                Ok(r.clone())
            }
            Constraint::Choice(options) => {
                if options.is_empty() {
                    return Err(Error::syntax("choice: no options"));
                }
                Ok(options.iter().map(|o| regex_syntax::escape(o)).collect::<Vec<_>>().join("|"))
            }
            Constraint::JsonObject { max_depth } => {
                if *max_depth == 0 || *max_depth > 6 {
                    return Err(Error::unsupported(format!("json_object max_depth {max_depth} (1 to 6)")));
                }
                Ok(json_object_regex(*max_depth, whitespace))
            }
            Constraint::JsonSchema(text) => {
                let schema: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| Error::syntax(format!("json schema is not JSON: {e}")))?;
                crate::json_schema::schema_to_regex(&schema, whitespace)
            }
            Constraint::ToolCalls(calls) => Ok(crate::json_schema::printable(calls.to_rx()?.to_hir()?).to_string()),
        }
    }
}

/// A JSON string: any character but `"`, `\` and controls, or an escape.
pub const JSON_STRING: &str = r#""([^"\\\x00-\x1F]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*""#;
/// A JSON number (RFC 8259).
pub const JSON_NUMBER: &str = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?";

/// A JSON object whose values nest at most `depth` objects/arrays deep (the object itself counts as one).
fn json_object_regex(depth: u32, ws: &str) -> String {
    let value = json_value_regex(depth - 1, ws);
    let member = format!("{JSON_STRING}{ws}:{ws}{value}");
    format!(r"\{{{ws}({member}({ws},{ws}{member})*)?{ws}\}}")
}

pub(crate) fn json_value_regex(depth: u32, ws: &str) -> String {
    let mut alts = vec![JSON_STRING.to_string(), JSON_NUMBER.to_string(), "true|false|null".to_string()];
    if depth > 0 {
        alts.push(json_object_regex(depth, ws));
        let inner = json_value_regex(depth - 1, ws);
        alts.push(format!(r"\[{ws}({inner}({ws},{ws}{inner})*)?{ws}\]"));
    }
    format!("({})", alts.join("|"))
}
