//! Schema nodes to one regex tree ([`Rx`]) over the JSON text, its shared pieces shared. How big the whole is gets
//! weighed once it is built ([`Rx::weight`], in `schema_to_rx`), as the program will hold it, not summed along the
//! way as if every use of a piece were a copy.

use std::collections::HashMap;
use std::sync::Arc;

use regex_syntax::hir::Hir;
use serde_json::Value;

use super::cx::{memo, Cx};
use super::ir::{admits, intersect, Array, Node, Object};
use super::pattern::{string_contents, StringPattern};
use super::{unsupported, Options};
use crate::error::Result;
use crate::rx::Rx;

/// Most a schema's regex may weigh ([`Rx::weight`]: about the length of the program's pieces as regex text) before
/// its program is even compiled.
pub(crate) const MAX_REGEX: usize = 4 << 20;

fn lit(s: &str) -> Rx {
    Rx::literal(s.as_bytes())
}

fn cat(parts: Vec<Rx>) -> Rx {
    Rx::concat(parts)
}

fn alt(parts: Vec<Rx>) -> Rx {
    Rx::alternation(parts)
}

fn rep(x: Rx, min: u64, max: Option<u64>) -> Rx {
    let clamp = |n: u64| n.min(u32::MAX as u64) as u32;
    Rx::repeat(x, clamp(min), max.map(clamp))
}

fn opt(x: Rx) -> Rx {
    rep(x, 0, Some(1))
}

/// `item (sep item)*` (one copy of `item` in the NFA).
fn list(item: Rx, sep: Rx) -> Rx {
    Rx::list(item, sep)
}

/// Any JSON value nested at most `depth` levels: the language of [`crate::constraint::json_value_regex`], with
/// each level written once.
fn any_value(cx: &Cx, depth: u32, ws: &Rx) -> Result<Rx> {
    let string = parsed(cx, crate::JSON_STRING)?;
    let mut value = alt(vec![string.clone(), parsed(cx, crate::JSON_NUMBER)?, parsed(cx, "true|false|null")?]);
    let sep = cat(vec![ws.clone(), lit(","), ws.clone()]);
    let colon = cat(vec![ws.clone(), lit(":"), ws.clone()]);
    let scalars = value.clone();
    for _ in 0..depth {
        let member = cat(vec![string.clone(), colon.clone(), value.clone()]);
        let object = cat(vec![lit("{"), ws.clone(), opt(list(member, sep.clone())), ws.clone(), lit("}")]);
        let array = cat(vec![lit("["), ws.clone(), opt(list(value, sep.clone())), ws.clone(), lit("]")]);
        value = alt(vec![scalars.clone(), object, array]);
    }
    Ok(value)
}

/// `re` parsed, once per schema: schemas repeat the same number, integer and undeclared-key regexes (a `$ref`'d
/// object is written at every use). A hit is the same shared piece, which the NFA compiler then copies instead
/// of compiling again.
fn parsed(cx: &Cx, re: &str) -> Result<Rx> {
    memo(&cx.parsed, &re.to_string(), || {
        let hir = crate::grammar::parse(re, &format!("internal regex {re:?}"))?;
        Ok(Rx::hir(hir))
    })
}

/// A key (quoted) that is none of `names`, once per schema like [`parsed`]'s regexes.
fn undeclared_key(cx: &Cx, names: &[&str]) -> Result<Rx> {
    let id: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    memo(&cx.keys_except, &id, || Ok(cat(vec![lit("\""), key_except(cx, names.iter().copied())?, lit("\"")])))
}

fn of(hir: Hir) -> Rx {
    Rx::hir(hir)
}

pub(crate) struct Emitter<'a> {
    cx: &'a Cx,
    any: Rx,
    ws: Rx,
    /// `ws , ws`
    sep: Rx,
    /// `ws : ws`
    colon: Rx,
    /// Strict properties (see [`Options::strict_properties`]) for the subtree being written.
    strict: bool,
    /// Whether lenient objects may take their few required members in any order (larger regexes).
    pub free_order: bool,
    /// Objects written, by the object (a `$ref`'d one is one `Arc` wherever it is used) and the two settings
    /// above: written once, the same piece at every use, which the program compiles once and calls. The `Arc`
    /// is kept so that its address is not reused while this emitter lives.
    objects: HashMap<ObjectKey, (Arc<Object>, Option<Rx>)>,
}

/// An object's address, whether properties are strict, whether members may come in any order.
type ObjectKey = (usize, bool, bool);

/// One character of an object key written the single way we allow for undeclared keys (no `\/`, no `\u`), so a
/// key has exactly one spelling and can be told apart from the declared ones.
const KEY_UNIT: &str = r#"(?:[^"\\\x00-\x1F]|\\["\\bfnrt])"#;

impl<'a> Emitter<'a> {
    pub fn new(opts: &Options, cx: &'a Cx) -> Result<Self> {
        // The free JSON value, once per (depth, whitespace) across this schema's attempts.
        let (any, ws) = memo(&cx.free_values, &(opts.any_depth, opts.whitespace.clone()), || {
            let ws = parsed(cx, &opts.whitespace)?;
            Ok((any_value(cx, opts.any_depth, &ws)?, ws))
        })?;
        let sep = cat(vec![ws.clone(), lit(","), ws.clone()]);
        let colon = cat(vec![ws.clone(), lit(":"), ws.clone()]);
        Ok(Self { cx, any, ws, sep, colon, strict: opts.strict_properties, free_order: true, objects: HashMap::new() })
    }

    /// The regex for the values `n` admits; `None` when it admits none.
    pub fn emit(&mut self, n: &Node) -> Result<Option<Rx>> {
        let out = match n {
            Node::Any => self.any.clone(),
            Node::Never => return Ok(None),
            Node::Null => lit("null"),
            Node::Bool => alt(vec![lit("true"), lit("false")]),
            Node::Int { lo, hi } => parsed(self.cx, &crate::numeric::integer_regex(*lo, *hi))?,
            Node::Num { lo, hi, decimals } => match number(*lo, *hi, *decimals)? {
                Some(re) => parsed(self.cx, &re)?,
                None => return Ok(None),
            },
            Node::Str(s) => match string_contents(self.cx, s.min, s.max, s.pattern.as_deref(), s.format.as_deref())? {
                Some(c) => cat(vec![lit("\""), of(c), lit("\"")]),
                None => return Ok(None),
            },
            Node::Consts(vs) => alt(vs.iter().map(|v| self.constant(v)).collect()),
            Node::Except(_) => return Err(unsupported("not", "of values where any other value could follow")),
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
                alt(alts)
            }
            Node::OneOf(xs) => {
                // An output must match exactly one alternative: whatever one alternative writes must fail all
                // the others. When it would not, writing its objects without undeclared keys may be enough.
                // Failing that, an object alternative can leave out a key each other alternative requires.
                let mut alts = Vec::new();
                for (i, a) in xs.iter().enumerate() {
                    let outer = self.strict;
                    let mut a = a.clone();
                    let mut ok = self.excludes_all(i, xs)?;
                    if !ok {
                        if let Some(r) = without_others_keys(&a, i, xs) {
                            let mut ys = xs.clone();
                            ys[i] = r.clone();
                            if self.excludes_all(i, &ys)? {
                                ok = true;
                                a = r;
                            }
                        }
                    }
                    if !ok && !outer {
                        self.strict = true;
                        ok = self.excludes_all(i, xs)?;
                    }
                    let r = if ok { self.emit(&a) } else { Ok(None) };
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
                alt(alts)
            }
            Node::Array(a) => match self.array(a)? {
                Some(r) => r,
                None => return Ok(None),
            },
            Node::Object(o) => {
                let key = (Arc::as_ptr(o) as usize, self.strict, self.free_order);
                let written = match self.objects.get(&key) {
                    Some((_, r)) => r.clone(),
                    None => {
                        let r = self.object(o)?;
                        self.objects.insert(key, (o.clone(), r.clone()));
                        r
                    }
                };
                match written {
                    Some(r) => r,
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(out))
    }

    fn constant(&self, v: &Value) -> Rx {
        match v {
            Value::Number(n) => match n.as_f64() {
                // 1 and 1.0 are the same JSON Schema value.
                Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => {
                    cat(vec![lit(&format!("{}", f as i64)), opt(cat(vec![lit("."), rep(lit("0"), 1, None)]))])
                }
                _ => lit(&n.to_string()),
            },
            Value::Array(a) => {
                let mut parts = vec![lit("["), self.ws.clone()];
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        parts.push(self.sep.clone());
                    }
                    parts.push(self.constant(x));
                }
                parts.extend([self.ws.clone(), lit("]")]);
                cat(parts)
            }
            Value::Object(o) => {
                let mut parts = vec![lit("{"), self.ws.clone()];
                for (i, (k, x)) in o.iter().enumerate() {
                    if i > 0 {
                        parts.push(self.sep.clone());
                    }
                    parts.extend([key_literal(k), self.colon.clone(), self.constant(x)]);
                }
                parts.extend([self.ws.clone(), lit("}")]);
                cat(parts)
            }
            other => lit(&other.to_string()),
        }
    }

    fn array(&mut self, a: &Array) -> Result<Option<Rx>> {
        let prefix: Vec<Option<Rx>> = a.prefix.iter().map(|p| self.emit(p)).collect::<Result<_>>()?;
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
            // Items from a finite set: written in the set's order, each at most once (stricter than the spec,
            // which takes any order).
            return match (&*a.items, a.prefix.is_empty()) {
                (Node::Consts(vs), true)
                    if vs.len() <= 32 && a.min <= 1 && max.is_none_or(|m| m >= vs.len() as u64) =>
                {
                    let items: Vec<Rx> = vs.iter().map(|v| self.constant(v)).collect();
                    Ok(Some(self.subsequence(items, a.min == 1)))
                }
                _ => Err(unsupported("uniqueItems", "unless the items are one of at most 32 values")),
            };
        }
        let elem = |i: usize| -> Rx {
            match prefix.get(i) {
                Some(p) => p.clone(),
                None => rest.clone(),
            }
            .unwrap_or_else(|| lit(""))
        };
        // tail(i): elements i.. once element i-1 is written; k is the first index past the prefix (at least 1).
        let n = prefix.len() as u64;
        let k = n.max(1);
        let mut tail = match (&rest, max) {
            (_, Some(m)) if m <= k => lit(""),
            (Some(r), _) => rep(cat(vec![self.sep.clone(), r.clone()]), a.min.saturating_sub(k), max.map(|m| m - k)),
            (None, _) => lit(""),
        };
        for i in (1..k).rev() {
            if max.is_some_and(|m| i >= m) {
                tail = lit("");
                continue;
            }
            let item = cat(vec![self.sep.clone(), elem(i as usize), tail]);
            tail = if i < a.min { item } else { opt(item) };
        }
        let body = if max == Some(0) {
            lit("")
        } else if let (true, None, Some(r), 0..=1) = (prefix.is_empty(), max, &rest, a.min) {
            // The common array: one loop over the items.
            let items = list(r.clone(), self.sep.clone());
            if a.min == 0 {
                opt(items)
            } else {
                items
            }
        } else {
            let first = cat(vec![elem(0), tail]);
            if a.min == 0 {
                opt(first)
            } else {
                first
            }
        };
        Ok(Some(cat(vec![lit("["), self.ws.clone(), body, self.ws.clone(), lit("]")])))
    }

    /// An array of some of `items`, in their order, each at most once.
    fn subsequence(&self, items: Vec<Rx>, nonempty: bool) -> Rx {
        let sep = self.sep.clone();
        // s: items i.. once one is written; f: items i.. when none is yet.
        let mut s = lit("");
        let mut f: Option<Rx> = None;
        for m in items.into_iter().rev() {
            let next = s;
            f = Some(match f {
                Some(f) => alt(vec![cat(vec![m.clone(), next.clone()]), f]),
                None => cat(vec![m.clone(), next.clone()]),
            });
            s = cat(vec![opt(cat(vec![sep.clone(), m])), next]);
        }
        let body = match f {
            Some(f) if nonempty => f,
            Some(f) => opt(f),
            None => lit(""),
        };
        cat(vec![lit("["), self.ws.clone(), body, self.ws.clone(), lit("]")])
    }

    fn object(&mut self, o: &Object) -> Result<Option<Rx>> {
        // Declared properties (and required names the schema only reaches through patterns or
        // additionalProperties), each with every pattern it matches applied.
        let mut props: Vec<(String, Node)> = Vec::new();
        for (k, n) in &o.props {
            props.push((k.clone(), self.with_patterns(o, k, n.clone())?));
        }
        for r in &o.required {
            if !props.iter().any(|(k, _)| k == r) {
                props.push((r.clone(), o.schema_for(self.cx, r)?));
            }
        }
        let mut members: Vec<(Rx, bool)> = Vec::new();
        for (k, n) in &props {
            let required = o.required.contains(k);
            let name_ok = match &o.names {
                Some(names) => admits(self.cx, names, &Value::String(k.clone()))?,
                None => true,
            };
            let value = if name_ok { self.emit(n)? } else { None };
            match value {
                Some(v) => members.push((cat(vec![key_literal(k), self.colon.clone(), v]), required)),
                None if required => return Ok(None),
                None => {}
            }
        }
        // Undeclared keys.
        let mut extras: Vec<Rx> = Vec::new();
        let additional: Option<Node> = match &o.additional {
            Some(n) if **n == Node::Never => None,
            Some(n) => Some((**n).clone()),
            None if !self.strict || !declares(o) => Some(Node::Any),
            None => None,
        };
        if !o.patterns.is_empty() {
            // Undeclared keys must match a pattern: any additionalProperties beside the patterns is read as false
            // (stricter; a key matching none would need the patterns' complement, which the tree cannot say).
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
                    if StringPattern::new(self.cx, p)?.is_match(k) && intersect(self.cx, d.clone(), n.clone())? != *n {
                        return Err(unsupported("patternProperties", &format!("matching the declared {k:?}")));
                    }
                }
                if let (Some(v), Some(key)) = (self.emit(n)?, StringPattern::new(self.cx, p)?.contents(0, None)?) {
                    extras.push(cat(vec![lit("\""), of(key), lit("\""), self.colon.clone(), v]));
                }
            }
        } else if let Some(add) = &additional {
            let key = match &o.names {
                None => Some(undeclared_key(self.cx, &props.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())?),
                Some(names) if props.is_empty() => self.emit(names)?,
                Some(_) => return Err(unsupported("propertyNames", "beside properties and additionalProperties")),
            };
            if let (Some(key), Some(v)) = (key, self.emit(add)?) {
                extras.push(cat(vec![key, self.colon.clone(), v]));
            }
        }
        let extra = if extras.is_empty() { None } else { Some(alt(extras)) };
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
                // A regex cannot keep a key from being written twice, and a parsed object counts it once: a
                // lower bound of 2 or more could be met by repeating one key.
                if o.min_props >= 2 {
                    return Err(unsupported("minProperties", "of 2 or more met by undeclared keys alone"));
                }
                counted = Some((o.min_props, o.max_props));
            } else if o.min_props == 1 && o.max_props.is_none_or(|m| most.is_some_and(|x| x <= m)) {
                nonempty = true;
            } else {
                return Err(unsupported("minProperties/maxProperties", "beside declared properties"));
            }
        }
        let sep = self.sep.clone();
        let braces = |body: Rx, ws: &Rx| cat(vec![lit("{"), ws.clone(), body, ws.clone(), lit("}")]);
        // Lenient objects with nothing required: members in any order, so the regex grows linearly (a fixed order
        // needs an alternation over which optional member comes first, quadratic in their number). A key may
        // then be written twice; both values satisfy its schema, and a parsed object keeps one of them.
        if !self.strict && counted.is_none() && !members.is_empty() && members.iter().all(|m| !m.1) {
            let any = alt(members.iter().map(|m| m.0.clone()).chain(extra.clone()).collect());
            let body = list(any, sep);
            let body = if nonempty { body } else { opt(body) };
            return Ok(Some(braces(body, &self.ws)));
        }
        // Lenient objects with required members (up to MAX_FREE_ORDER): those in any order (each exactly once),
        // optional members and undeclared keys any number of times around them.
        let required: Vec<&Rx> = members.iter().filter(|m| m.1).map(|m| &m.0).collect();
        if !self.strict && self.free_order && counted.is_none() && (1..=MAX_FREE_ORDER).contains(&required.len()) {
            let optional: Vec<Rx> = members.iter().filter(|m| !m.1).map(|m| m.0.clone()).chain(extra.clone()).collect();
            let others = (!optional.is_empty()).then(|| alt(optional));
            let items: Vec<&Rx> = members.iter().map(|m| &m.0).chain(extra.iter()).collect();
            let body = Rx::unordered(required.iter().map(|&r| r.clone()).collect(), others.clone(), sep.clone());
            // What free order adds: 2^r sets of required members written, each with a copy (or a call) of every
            // member. The members themselves are paid for once either way.
            let cost = body.weight_around(&items);
            if cost <= MAX_FREE_ORDER_WEIGHT {
                return Ok(Some(braces(body, &self.ws)));
            }
        }
        // s: members i.. once something is written; f: members i.. when nothing is yet (None: must write).
        let (mut s, mut f, empty_ok) = match (&extra, counted) {
            // At most none: no member form at all (the form below writes one member before counting the rest).
            (Some(_), Some((lo, Some(0)))) => (lit(""), None, lo == 0),
            (Some(x), Some((lo, hi))) => {
                let more =
                    rep(cat(vec![sep.clone(), x.clone()]), lo.saturating_sub(1), hi.map(|h| h.saturating_sub(1)));
                (lit(""), Some(cat(vec![x.clone(), more])), lo == 0)
            }
            (Some(x), None) => {
                let more = rep(cat(vec![sep.clone(), x.clone()]), 0, None);
                (more, Some(list(x.clone(), sep.clone())), true)
            }
            (None, _) => (lit(""), None, true),
        };
        // With a required member, the first one (r) is always written: members before it are `(?:m sep)?`
        // (something comes after them), members after it `sep m` or `(?:sep m)?`, and undeclared keys after all:
        // linear, each member written once.
        if let Some(r) = members.iter().position(|m| m.1) {
            let mut parts = Vec::with_capacity(members.len() + 3);
            for (i, (m, required)) in members.into_iter().enumerate() {
                parts.push(match i.cmp(&r) {
                    std::cmp::Ordering::Less => opt(cat(vec![m, sep.clone()])),
                    std::cmp::Ordering::Equal => m,
                    std::cmp::Ordering::Greater if required => cat(vec![sep.clone(), m]),
                    std::cmp::Ordering::Greater => opt(cat(vec![sep.clone(), m])),
                });
            }
            parts.push(s);
            return Ok(Some(braces(cat(parts), &self.ws)));
        }
        // With none, an alternation over which member comes first.
        for (m, _) in members.into_iter().rev() {
            let next = s;
            let first = cat(vec![m.clone(), next.clone()]);
            f = Some(match f {
                Some(f) => alt(vec![first, f]),
                None => first,
            });
            s = cat(vec![opt(cat(vec![sep.clone(), m])), next]);
        }
        let body = match (f, empty_ok && !nonempty) {
            (Some(f), true) => opt(f),
            (Some(f), false) => f,
            (None, true) => lit(""),
            (None, false) => return Ok(None),
        };
        Ok(Some(braces(body, &self.ws)))
    }

    /// A declared property's schema with the schemas of the patterns its name matches.
    fn with_patterns(&self, o: &Object, k: &str, n: Node) -> Result<Node> {
        let mut n = n;
        for (p, pn) in &o.patterns {
            if StringPattern::new(self.cx, p)?.is_match(k) {
                n = intersect(self.cx, n, pn.clone())?;
            }
        }
        Ok(n)
    }

    /// Whether `o` can write key `k` at all.
    fn can_write(&self, o: &Object, k: &str) -> Result<bool> {
        if let Some((_, n)) = o.props.iter().find(|(p, _)| p == k) {
            return Ok(*n != Node::Never);
        }
        for (p, n) in &o.patterns {
            if *n != Node::Never && StringPattern::new(self.cx, p)?.is_match(k) {
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
                    if admits(self.cx, b, v)? {
                        return Ok(false);
                    }
                }
                true
            }
            (a, Node::Consts(vs)) => {
                for v in vs {
                    if admits(self.cx, a, v)? {
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
                    let yk = y.schema_for(self.cx, k)?;
                    if yk == Node::Never || self.excludes(&x.schema_for(self.cx, k)?, &yk)? {
                        return Ok(true);
                    }
                }
                false
            }
            _ => false,
        })
    }
}

/// Object alternative `i` of a `oneOf` with, for each other alternative, one key that one requires and `i` does
/// not, forbidden: then whatever `i` writes lacks it and fails the other. `None` when that is not possible.
fn without_others_keys(x: &Node, i: usize, xs: &[Node]) -> Option<Node> {
    let Node::Object(o) = x else { return None };
    let mut o = (**o).clone();
    for (j, y) in xs.iter().enumerate() {
        if j == i {
            continue;
        }
        let Node::Object(yo) = y else { return None };
        let k = yo.required.iter().find(|k| !o.required.contains(*k))?;
        match o.props.iter_mut().find(|(p, _)| p == k) {
            Some((_, n)) => *n = Node::Never,
            None => o.props.push((k.clone(), Node::Never)),
        }
    }
    Some(Node::Object(Arc::new(o)))
}

/// Most required members a lenient object takes in any order (the NFA follows which are written: 2^n sets).
const MAX_FREE_ORDER: usize = Rx::MAX_UNORDERED;

/// Most that taking its members in any order may add to an object ([`Rx::weight_around`]: the copies and calls of
/// its members at each set written, its members themselves not counted, so an object is not charged again for
/// members that are any-order objects themselves); past it the object keeps the schema's order.
const MAX_FREE_ORDER_WEIGHT: usize = 64 << 10;

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
        Node::Except(_) => 0x3F,
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

/// The regex for a bounded number; `None` when no number lies within the bounds.
fn number(lo: Option<(f64, bool)>, hi: Option<(f64, bool)>, decimals: Option<u32>) -> Result<Option<String>> {
    let huge = |b: &Option<(f64, bool)>| b.is_some_and(|(v, _)| !v.is_finite() || v.abs() > 1e18);
    if huge(&lo) || huge(&hi) {
        return Err(unsupported("minimum/maximum", "beyond 1e18 on a number"));
    }
    if let (Some((a, ai)), Some((b, bi))) = (lo, hi) {
        if a > b || (a == b && !(ai && bi)) {
            return Ok(None);
        }
    }
    let whole = |b: Option<(f64, bool)>| b.is_none_or(|(v, _)| v.fract() == 0.0);
    if lo.is_none() && hi.is_none() && decimals.is_none() {
        return Ok(Some(crate::constraint::JSON_NUMBER.to_string()));
    }
    if whole(lo) && whole(hi) {
        let int = |b: Option<(f64, bool)>| b.map(|(v, incl)| (v as i128, incl));
        return Ok(Some(crate::numeric::number_regex(int(lo), int(hi), decimals)));
    }
    if decimals.is_some() {
        return Err(unsupported("multipleOf", "beside a fractional minimum or maximum"));
    }
    let dec = |b: Option<(f64, bool)>| b.and_then(|(v, incl)| crate::numeric::Dec::new(v, incl));
    Ok(crate::numeric::decimal_regex(dec(lo), dec(hi)))
}

/// A declared key, as JSON writes it.
fn key_literal(k: &str) -> Rx {
    lit(&Value::String(k.to_string()).to_string())
}

/// Contents of any key except the given names (keys in the one spelling `KEY_UNIT` allows), built as a tree
/// over the names' trie: at each node, the end (when no name ends there), a character no name continues with
/// and then any key units, or a name's next character and on down.
fn key_except<'k>(cx: &Cx, names: impl Iterator<Item = &'k str>) -> Result<Rx> {
    use regex_syntax::hir::{ClassUnicode, ClassUnicodeRange};
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
    let units = parsed(cx, &format!("{KEY_UNIT}*"))?;
    if root.kids.is_empty() && !root.end {
        return Ok(units);
    }
    // Past ASCII every character starts an undeclared key at every node of ASCII names, as does every escape:
    // that class is one piece the program calls from every node (then on to the key units as after the node's
    // ASCII class), where a class of all but the node's next characters was compiled at every node of every name
    // (a fifth of compiling schemas with many members). Called, not copied, so that every character of text
    // leads a node to one state, as masks need (`Grammar::chain_mask`).
    let non_ascii = ClassUnicode::new([ClassUnicodeRange::new('\u{80}', '\u{10FFFF}')]);
    let escapes =
        regex_syntax::hir::ClassBytes::new(b"\"\\bfnrt".iter().map(|&e| regex_syntax::hir::ClassBytesRange::new(e, e)));
    let past_ascii = Rx::called(alt(vec![
        of(Hir::class(regex_syntax::hir::Class::Unicode(non_ascii))),
        cat(vec![lit("\\"), of(Hir::class(regex_syntax::hir::Class::Bytes(escapes)))]),
    ]));
    /// The tree below `t`.
    fn not(t: &Trie, units: &Rx, past_ascii: &Rx) -> Rx {
        let mut alts = Vec::new();
        if !t.end {
            alts.push(lit(""));
        }
        // A first unit no name continues with: a character (not a quote, backslash or control) or an escape.
        let mut taken = vec![
            ClassUnicodeRange::new('\0', '\x1F'),
            ClassUnicodeRange::new('"', '"'),
            ClassUnicodeRange::new('\\', '\\'),
        ];
        for (u, _) in &t.kids {
            if let (Some(c), None) = (u.chars().next().filter(|&c| c != '\\'), u.chars().nth(1)) {
                taken.push(ClassUnicodeRange::new(c, c));
            }
        }
        let escs: Vec<u8> =
            b"\"\\bfnrt".iter().copied().filter(|&e| !t.kids.iter().any(|(u, _)| u.as_bytes() == [b'\\', e])).collect();
        let first = if taken.iter().all(|r| r.end() <= '\x7F') && escs.len() == 7 {
            // Names going on with ASCII only and no escape here (nearly always): the other ASCII characters as
            // runs (built sorted and merged: negating a class of single characters canonicalizes them one pair at
            // a time), or the shared piece past ASCII.
            let mut ascii = [true; 128];
            taken.iter().for_each(|r| (r.start() as usize..=r.end() as usize).for_each(|c| ascii[c] = false));
            let mut ranges = Vec::new();
            let mut c = 0;
            while c < 128 {
                if ascii[c] {
                    let start = c;
                    while c < 128 && ascii[c] {
                        c += 1;
                    }
                    ranges.push(ClassUnicodeRange::new(start as u8 as char, (c - 1) as u8 as char));
                }
                c += 1;
            }
            let ascii = of(Hir::class(regex_syntax::hir::Class::Unicode(ClassUnicode::new(ranges))));
            alt(vec![ascii, past_ascii.clone()])
        } else {
            let mut chars = ClassUnicode::new(taken);
            chars.negate();
            let mut other = vec![of(Hir::class(regex_syntax::hir::Class::Unicode(chars)))];
            if !escs.is_empty() {
                let class = regex_syntax::hir::ClassBytes::new(
                    escs.iter().map(|&e| regex_syntax::hir::ClassBytesRange::new(e, e)),
                );
                other.push(cat(vec![lit("\\"), of(Hir::class(regex_syntax::hir::Class::Bytes(class)))]));
            }
            alt(other)
        };
        alts.push(cat(vec![first, units.clone()]));
        // The text: the class of the other characters, the escapes, the key units, each name's unit and subtree.
        for (u, kid) in &t.kids {
            alts.push(cat(vec![lit(u), not(kid, units, past_ascii)]));
        }
        alt(alts)
    }
    Ok(not(&root, &units, &past_ascii))
}
