//! Schema nodes to one regex over the JSON text.

use serde_json::Value;

use super::ir::{admits, intersect, Array, Node, Object};
use super::pattern::{repeat, string_contents, StringPattern};
use super::{unsupported, Options};
use crate::error::{Error, Result};

/// Longest regex one schema may produce before the DFA is even tried.
const MAX_REGEX: usize = 4 << 20;

pub(crate) struct Emitter<'a> {
    opts: &'a Options,
    any: String,
    /// Strict properties (see [`Options::strict_properties`]) for the subtree being written.
    strict: bool,
}

/// One character of an object key written the single way we allow for undeclared keys (no `\/`, no `\u`), so a
/// key has exactly one spelling and can be told apart from the declared ones.
const KEY_UNIT: &str = r#"(?:[^"\\\x00-\x1F]|\\["\\bfnrt])"#;

impl<'a> Emitter<'a> {
    pub fn new(opts: &'a Options) -> Self {
        let any = crate::constraint::json_value_regex(opts.any_depth, &opts.whitespace);
        Self { opts, any, strict: opts.strict_properties }
    }

    /// The regex for the values `n` admits; `None` when it admits none.
    pub fn emit(&mut self, n: &Node) -> Result<Option<String>> {
        let out = match n {
            Node::Any => self.any.clone(),
            Node::Never => return Ok(None),
            Node::Null => "null".into(),
            Node::Bool => "(?:true|false)".into(),
            Node::Int { lo, hi } => crate::numeric::integer_regex(*lo, *hi),
            Node::Num { lo, hi, decimals } => number(*lo, *hi, *decimals)?,
            Node::Str(s) => {
                let c = string_contents(s.min, s.max, s.pattern.as_deref(), s.format.as_deref())?;
                format!("\"{c}\"")
            }
            Node::Consts(vs) => alternation(vs.iter().map(|v| self.constant(v)).collect()),
            Node::AnyOf(xs) => {
                let mut alts = Vec::new();
                for x in xs {
                    if let Some(r) = self.emit(x)? {
                        alts.push(r);
                    }
                }
                if alts.is_empty() {
                    return Ok(None);
                }
                alternation(alts)
            }
            Node::OneOf(xs) => {
                // An output must match exactly one alternative: whatever one alternative writes must fail all
                // the others. When it would not, writing its objects without undeclared keys may be enough.
                let mut alts = Vec::new();
                for (i, a) in xs.iter().enumerate() {
                    let outer = self.strict;
                    let mut ok = self.excludes_all(i, xs)?;
                    if !ok && !outer {
                        self.strict = true;
                        ok = self.excludes_all(i, xs)?;
                    }
                    let r = if ok { self.emit(a) } else { Ok(None) };
                    self.strict = outer;
                    if !ok {
                        return Err(unsupported("oneOf", "with alternatives that can match the same value"));
                    }
                    if let Some(r) = r? {
                        alts.push(r);
                    }
                }
                if alts.is_empty() {
                    return Ok(None);
                }
                alternation(alts)
            }
            Node::Array(a) => match self.array(a)? {
                Some(r) => r,
                None => return Ok(None),
            },
            Node::Object(o) => match self.object(o)? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        if out.len() > MAX_REGEX {
            return Err(Error::too_large(format!("json schema: regex past {MAX_REGEX} bytes")));
        }
        Ok(Some(out))
    }

    fn constant(&self, v: &Value) -> String {
        let ws = &self.opts.whitespace;
        match v {
            Value::Number(n) => match n.as_f64() {
                // 1 and 1.0 are the same JSON Schema value.
                Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => {
                    format!(r"{}(?:\.0+)?", regex_syntax::escape(&format!("{}", f as i64)))
                }
                _ => regex_syntax::escape(&n.to_string()),
            },
            Value::Array(a) => {
                let items: Vec<String> = a.iter().map(|x| self.constant(x)).collect();
                format!(r"\[{ws}{}{ws}\]", items.join(&format!("{ws},{ws}")))
            }
            Value::Object(o) => {
                let members: Vec<String> =
                    o.iter().map(|(k, x)| format!("{}{ws}:{ws}{}", key_literal(k), self.constant(x))).collect();
                format!(r"\{{{ws}{}{ws}\}}", members.join(&format!("{ws},{ws}")))
            }
            other => regex_syntax::escape(&other.to_string()),
        }
    }

    fn array(&mut self, a: &Array) -> Result<Option<String>> {
        let ws = self.opts.whitespace.clone();
        let sep = format!("{ws},{ws}");
        let prefix: Vec<Option<String>> = a.prefix.iter().map(|p| self.emit(p)).collect::<Result<_>>()?;
        let rest = self.emit(&a.items)?;
        // Elements that can exist: the prefix up to its first impossible element, then `rest` if any.
        let possible = prefix.iter().position(Option::is_none).unwrap_or(prefix.len());
        let mut max = a.max;
        if possible < prefix.len() || rest.is_none() {
            max = Some(max.map_or(possible as u64, |m| m.min(possible as u64)));
        }
        if max.is_some_and(|m| m < a.min) {
            return Ok(None);
        }
        if a.unique && max.is_none_or(|m| m > 1) {
            return Err(unsupported("uniqueItems", "on arrays that may hold more than one item"));
        }
        let elem = |i: usize| -> String {
            match prefix.get(i) {
                Some(p) => p.clone().unwrap_or_default(),
                None => rest.clone().unwrap_or_default(),
            }
        };
        // tail(i): elements i.. once element i-1 is written; k is the first index past the prefix (at least 1).
        let n = prefix.len() as u64;
        let k = n.max(1);
        let mut tail = match (&rest, max) {
            (_, Some(m)) if m <= k => String::new(),
            (Some(r), _) => repeat(&format!("(?:{sep}{r})"), a.min.saturating_sub(k), max.map(|m| m - k)),
            (None, _) => String::new(),
        };
        for i in (1..k).rev() {
            if max.is_some_and(|m| i >= m) {
                tail = String::new();
                continue;
            }
            let e = elem(i as usize);
            tail = if i < a.min { format!("{sep}{e}{tail}") } else { format!("(?:{sep}{e}{tail})?") };
        }
        let body = if max == Some(0) {
            String::new()
        } else {
            let first = format!("{}{tail}", elem(0));
            if a.min == 0 {
                format!("(?:{first})?")
            } else {
                first
            }
        };
        Ok(Some(format!(r"\[{ws}{body}{ws}\]")))
    }

    fn object(&mut self, o: &Object) -> Result<Option<String>> {
        let ws = self.opts.whitespace.clone();
        let sep = format!("{ws},{ws}");
        // Declared properties (and required names the schema only reaches through patterns or
        // additionalProperties), each with every pattern it matches applied.
        let mut props: Vec<(String, Node)> = Vec::new();
        for (k, n) in &o.props {
            props.push((k.clone(), self.with_patterns(o, k, n.clone())?));
        }
        for r in &o.required {
            if !props.iter().any(|(k, _)| k == r) {
                props.push((r.clone(), o.schema_for(r)?));
            }
        }
        let mut members: Vec<(String, bool)> = Vec::new();
        for (k, n) in &props {
            let required = o.required.contains(k);
            let name_ok = match &o.names {
                Some(names) => admits(names, &Value::String(k.clone()))?,
                None => true,
            };
            let value = if name_ok { self.emit(n)? } else { None };
            match value {
                Some(v) => members.push((format!("{}{ws}:{ws}{v}", key_literal(k)), required)),
                None if required => return Ok(None),
                None => {}
            }
        }
        // Undeclared keys.
        let mut extras: Vec<String> = Vec::new();
        let additional: Option<Node> = match &o.additional {
            Some(n) if **n == Node::Never => None,
            Some(n) => Some((**n).clone()),
            None if !self.strict || !declares(o) => Some(Node::Any),
            None => None,
        };
        if !o.patterns.is_empty() {
            if o.additional.as_deref().is_some_and(|n| *n != Node::Never) {
                return Err(unsupported("additionalProperties", "beside patternProperties"));
            }
            if o.names.is_some() {
                return Err(unsupported("propertyNames", "beside patternProperties"));
            }
            if o.patterns.len() > 1 && o.patterns.iter().any(|(_, n)| *n != o.patterns[0].1) {
                return Err(unsupported("patternProperties", "with several patterns of different schemas"));
            }
            for (p, n) in &o.patterns {
                // A declared key matching the pattern could be written twice; the last value must still hold
                // for the declared schema, so the pattern's schema must imply it.
                for (k, d) in &o.props {
                    if StringPattern::new(p)?.is_match(k) && intersect(d.clone(), n.clone())? != *n {
                        return Err(unsupported("patternProperties", &format!("matching the declared {k:?}")));
                    }
                }
                if let Some(v) = self.emit(n)? {
                    let key = format!("\"{}\"", StringPattern::new(p)?.contents(0, None)?);
                    extras.push(format!("{key}{ws}:{ws}{v}"));
                }
            }
        } else if let Some(add) = &additional {
            let key = match &o.names {
                None => format!("\"{}\"", key_except(props.iter().map(|(k, _)| k.as_str()))),
                Some(names) if props.is_empty() => self.emit(names)?.unwrap_or_default(),
                Some(_) => return Err(unsupported("propertyNames", "beside properties and additionalProperties")),
            };
            if let (false, Some(v)) = (key.is_empty(), self.emit(add)?) {
                extras.push(format!("{key}{ws}:{ws}{v}"));
            }
        }
        let extra = if extras.is_empty() { None } else { Some(alternation(extras)) };
        // Property counts.
        let n_required = members.iter().filter(|m| m.1).count() as u64;
        let most = if extra.is_some() { None } else { Some(members.len() as u64) };
        if o.max_props.is_some_and(|m| m < n_required) || most.is_some_and(|m| m < o.min_props) {
            return Ok(None);
        }
        let mut counted: Option<(u64, Option<u64>)> = None;
        let mut nonempty = false;
        if o.min_props > n_required || o.max_props.is_some_and(|m| most.is_none_or(|x| x > m)) {
            if members.is_empty() && extra.is_some() {
                counted = Some((o.min_props, o.max_props));
            } else if o.min_props == 1 && o.max_props.is_none_or(|m| most.is_some_and(|x| x <= m)) {
                nonempty = true;
            } else {
                return Err(unsupported("minProperties/maxProperties", "beside declared properties"));
            }
        }
        // Lenient objects with nothing required: members in any order, so the regex grows linearly (a fixed order
        // needs an alternation over which optional member comes first, quadratic in their number). A key may
        // then be written twice; both values satisfy its schema, and a parsed object keeps one of them.
        if !self.strict && counted.is_none() && !members.is_empty() && members.iter().all(|m| !m.1) {
            let any = alternation(members.iter().map(|m| m.0.clone()).chain(extra.clone()).collect());
            let body = format!("{any}(?:{sep}{any})*");
            let body = if nonempty { body } else { format!("(?:{body})?") };
            return Ok(Some(format!(r"\{{{ws}{body}{ws}\}}")));
        }
        // s: members i.. once something is written; f: members i.. when nothing is yet (None: must write).
        let (mut s, mut f, mut empty_ok) = match (&extra, counted) {
            (Some(x), Some((lo, hi))) => {
                let more = repeat(&format!("(?:{sep}{x})"), lo.saturating_sub(1), hi.map(|h| h.saturating_sub(1)));
                (String::new(), Some(format!("{x}{more}")), lo == 0)
            }
            (Some(x), None) => {
                let more = format!("(?:{sep}{x})*");
                (more.clone(), Some(format!("{x}{more}")), true)
            }
            (None, _) => (String::new(), None, true),
        };
        // Once a required member follows, an optional one is simply `(?:m sep)?` (something comes after it), so
        // only objects with no required member pay for the alternation over which member comes first.
        let mut required_after = false;
        for (m, required) in members.iter().rev() {
            let next = s;
            if *required {
                f = Some(format!("{m}{next}"));
                empty_ok = false;
                required_after = true;
                s = format!("{sep}{m}{next}");
            } else {
                f = Some(match f {
                    Some(f) if required_after => format!("(?:{m}{sep})?{f}"),
                    Some(f) => format!("(?:{m}{next}|{f})"),
                    None => format!("{m}{next}"),
                });
                s = format!("(?:{sep}{m})?{next}");
            }
            if f.as_ref().is_some_and(|f| f.len() > MAX_REGEX) {
                return Err(Error::too_large(format!("json schema: object regex past {MAX_REGEX} bytes")));
            }
        }
        let body = match (f, empty_ok && !nonempty) {
            (Some(f), true) => format!("(?:{f})?"),
            (Some(f), false) => f,
            (None, true) => String::new(),
            (None, false) => return Ok(None),
        };
        Ok(Some(format!(r"\{{{ws}{body}{ws}\}}")))
    }

    /// A declared property's schema with the schemas of the patterns its name matches.
    fn with_patterns(&self, o: &Object, k: &str, n: Node) -> Result<Node> {
        let mut n = n;
        for (p, pn) in &o.patterns {
            if StringPattern::new(p)?.is_match(k) {
                n = intersect(n, pn.clone())?;
            }
        }
        Ok(n)
    }

    /// Whether `o` can write key `k` at all.
    fn can_write(&self, o: &Object, k: &str) -> Result<bool> {
        if o.props.iter().any(|(p, n)| p == k && *n != Node::Never) {
            return Ok(true);
        }
        for (p, n) in &o.patterns {
            if *n != Node::Never && StringPattern::new(p)?.is_match(k) {
                return Ok(true);
            }
        }
        Ok(match &o.additional {
            Some(n) => **n != Node::Never,
            None => !self.strict || !declares(o),
        })
    }

    /// Whether nothing written for alternative `i` is valid against another of `xs`.
    fn excludes_all(&self, i: usize, xs: &[Node]) -> Result<bool> {
        for (j, b) in xs.iter().enumerate() {
            if i != j && !self.excludes(&xs[i], b)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// True when no value this emitter writes for `a` is valid against `b` (false when unsure).
    fn excludes(&self, a: &Node, b: &Node) -> Result<bool> {
        if kinds(a) & kinds(b) == 0 {
            return Ok(true);
        }
        Ok(match (a, b) {
            (Node::Consts(vs), b) => {
                for v in vs {
                    if admits(b, v)? {
                        return Ok(false);
                    }
                }
                true
            }
            (a, Node::Consts(vs)) => {
                for v in vs {
                    if admits(a, v)? {
                        return Ok(false);
                    }
                }
                true
            }
            (Node::AnyOf(xs) | Node::OneOf(xs), b) => {
                for x in xs {
                    if !self.excludes(x, b)? {
                        return Ok(false);
                    }
                }
                true
            }
            (a, Node::AnyOf(ys) | Node::OneOf(ys)) => {
                for y in ys {
                    if !self.excludes(a, y)? {
                        return Ok(false);
                    }
                }
                true
            }
            (Node::Int { .. } | Node::Num { .. }, Node::Int { .. } | Node::Num { .. }) => {
                let (alo, ahi) = interval(a);
                let (blo, bhi) = interval(b);
                ahi < blo || bhi < alo
            }
            (Node::Str(x), Node::Str(y)) => x.max.is_some_and(|m| m < y.min) || y.max.is_some_and(|m| m < x.min),
            (Node::Array(x), Node::Array(y)) => {
                if x.max.is_some_and(|m| m < y.min) || y.max.is_some_and(|m| m < x.min) {
                    return Ok(true);
                }
                for i in 0..x.min.min(8) as usize {
                    let xi = x.prefix.get(i).unwrap_or(&x.items);
                    let yi = y.prefix.get(i).unwrap_or(&y.items);
                    if self.excludes(xi, yi)? {
                        return Ok(true);
                    }
                }
                false
            }
            (Node::Object(x), Node::Object(y)) => {
                for k in &y.required {
                    if !self.can_write(x, k)? {
                        return Ok(true);
                    }
                }
                for k in &x.required {
                    let yk = y.schema_for(k)?;
                    if yk == Node::Never || self.excludes(&x.schema_for(k)?, &yk)? {
                        return Ok(true);
                    }
                }
                false
            }
            _ => false,
        })
    }
}

/// Whether an object declares keys (forbidden ones, `Never`, do not count): strict mode then takes no others.
fn declares(o: &Object) -> bool {
    !o.patterns.is_empty() || o.props.iter().any(|(_, n)| *n != Node::Never)
}

/// Bit set of the JSON types a node admits.
fn kinds(n: &Node) -> u8 {
    match n {
        Node::Any => 0x3F,
        Node::Never => 0,
        Node::Null => 1,
        Node::Bool => 2,
        Node::Int { .. } | Node::Num { .. } => 4,
        Node::Str(_) => 8,
        Node::Array(_) => 16,
        Node::Object(_) => 32,
        Node::Consts(vs) => vs.iter().fold(0, |k, v| {
            k | match v {
                Value::Null => 1,
                Value::Bool(_) => 2,
                Value::Number(_) => 4,
                Value::String(_) => 8,
                Value::Array(_) => 16,
                Value::Object(_) => 32,
            }
        }),
        Node::AnyOf(xs) | Node::OneOf(xs) => xs.iter().fold(0, |k, x| k | kinds(x)),
    }
}

/// A number node's range, as (low, high) floats (closed; good enough to prove two ranges apart).
fn interval(n: &Node) -> (f64, f64) {
    match n {
        Node::Int { lo, hi } => (lo.map_or(f64::NEG_INFINITY, |l| l as f64), hi.map_or(f64::INFINITY, |h| h as f64)),
        Node::Num { lo, hi, .. } => (lo.map_or(f64::NEG_INFINITY, |l| l.0), hi.map_or(f64::INFINITY, |h| h.0)),
        _ => (f64::NEG_INFINITY, f64::INFINITY),
    }
}

fn number(lo: Option<(f64, bool)>, hi: Option<(f64, bool)>, decimals: Option<u32>) -> Result<String> {
    let whole = |b: Option<(f64, bool)>, name: &str| -> Result<Option<(i128, bool)>> {
        match b {
            None => Ok(None),
            Some((v, incl)) if v.fract() == 0.0 && v.abs() <= 1e18 => Ok(Some((v as i128, incl))),
            Some((v, _)) => Err(unsupported(name, &format!("with a fractional or huge bound ({v}) on a number"))),
        }
    };
    let (lo, hi) = (whole(lo, "minimum")?, whole(hi, "maximum")?);
    if let (Some((a, ai)), Some((b, bi))) = (lo, hi) {
        if a > b || (a == b && !(ai && bi)) {
            return Ok(crate::json_schema::pattern::NOTHING.into());
        }
    }
    if lo.is_none() && hi.is_none() && decimals.is_none() {
        return Ok(crate::constraint::JSON_NUMBER.to_string());
    }
    Ok(crate::numeric::number_regex(lo, hi, decimals))
}

fn alternation(alts: Vec<String>) -> String {
    if alts.len() == 1 {
        return alts.into_iter().next().unwrap_or_default();
    }
    format!("(?:{})", alts.join("|"))
}

/// A declared key, as JSON writes it.
fn key_literal(k: &str) -> String {
    regex_syntax::escape(&Value::String(k.to_string()).to_string())
}

/// Contents of any key except the given names (keys in the one spelling `KEY_UNIT` allows).
fn key_except<'k>(names: impl Iterator<Item = &'k str>) -> String {
    #[derive(Default)]
    struct Trie {
        end: bool,
        kids: Vec<(String, Trie)>,
    }
    fn unit(c: char) -> Option<String> {
        Some(match c {
            '"' => "\\\"".into(),
            '\\' => "\\\\".into(),
            '\n' => "\\n".into(),
            '\t' => "\\t".into(),
            '\r' => "\\r".into(),
            '\u{8}' => "\\b".into(),
            '\u{c}' => "\\f".into(),
            c if (c as u32) < 0x20 => return None, // only writable as \u00XX, which undeclared keys never use
            c => c.to_string(),
        })
    }
    let mut root = Trie::default();
    for name in names {
        let Some(units) = name.chars().map(unit).collect::<Option<Vec<String>>>() else { continue };
        let mut node = &mut root;
        for u in units {
            let i = match node.kids.iter().position(|(k, _)| *k == u) {
                Some(i) => i,
                None => {
                    node.kids.push((u, Trie::default()));
                    node.kids.len() - 1
                }
            };
            node = &mut node.kids[i].1;
        }
        node.end = true;
    }
    fn not(t: &Trie) -> String {
        let mut alts = Vec::new();
        if !t.end {
            alts.push(String::new());
        }
        let raw: String =
            t.kids.iter().filter(|(u, _)| !u.starts_with('\\')).map(|(u, _)| regex_syntax::escape(u)).collect();
        let escs: String = ["\"", "\\", "b", "f", "n", "r", "t"]
            .iter()
            .filter(|e| !t.kids.iter().any(|(u, _)| u.strip_prefix('\\') == Some(**e)))
            .map(|e| regex_syntax::escape(e))
            .collect();
        let mut other = vec![format!(r#"[^"\\\x00-\x1F{raw}]"#)];
        if !escs.is_empty() {
            other.push(format!(r"\\[{escs}]"));
        }
        alts.push(format!("(?:{}){KEY_UNIT}*", other.join("|")));
        for (u, kid) in &t.kids {
            alts.push(format!("{}{}", regex_syntax::escape(u), not(kid)));
        }
        format!("(?:{})", alts.join("|"))
    }
    if root.kids.is_empty() && !root.end {
        return format!("{KEY_UNIT}*");
    }
    not(&root)
}
