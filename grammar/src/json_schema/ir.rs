//! A JSON Schema as a tree of typed nodes: `$ref`s resolved (recursion unrolled to a fixed depth), `allOf`
//! intersected, `type` arrays and untyped keywords split per JSON type, `enum`/`const` filtered by the keywords
//! beside them. Every keyword that constrains instances is either represented here or refused by name.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::cx::Cx;
use super::pattern::StringPattern;
use super::{unsupported, Options};
use crate::error::{Error, Result};

// Keywords are read by name below; anything else (`title`, `$id`, `definitions`, vendor extensions like
// `x-kubernetes-*`, misspellings) is ignored by validators, so it is an annotation here too. The validation
// keywords of drafts 4 to 2020-12 not handled are refused by name in `Builder::node` (`then`/`else` only act
// with `if`, `minContains`/`maxContains` only with `contains`).

/// Every keyword that constrains instances in drafts 4 to 2020-12.
const VALIDATION: &[&str] = &[
    "type",
    "enum",
    "const",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "format",
    "items",
    "additionalItems",
    "prefixItems",
    "maxItems",
    "minItems",
    "uniqueItems",
    "contains",
    "maxContains",
    "minContains",
    "maxProperties",
    "minProperties",
    "required",
    "properties",
    "patternProperties",
    "additionalProperties",
    "dependencies",
    "dependentRequired",
    "dependentSchemas",
    "propertyNames",
    "if",
    "then",
    "else",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "$ref",
    "$dynamicRef",
    "$recursiveRef",
    "unevaluatedItems",
    "unevaluatedProperties",
];

fn is_annotation(k: &str) -> bool {
    !VALIDATION.contains(&k)
}

/// Keywords that apply to one JSON type each (they say nothing about values of other types).
const STRING_KEYS: &[&str] = &["minLength", "maxLength", "pattern", "format"];
const NUMBER_KEYS: &[&str] = &["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"];
const ARRAY_KEYS: &[&str] = &["items", "additionalItems", "prefixItems", "minItems", "maxItems", "uniqueItems"];
const OBJECT_KEYS: &[&str] = &[
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "minProperties",
    "maxProperties",
    "dependencies",
    "dependentRequired",
    "propertyNames",
];

/// One schema, as the set of JSON values it admits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Any,
    /// Admits nothing (a `false` schema, a recursion cut at its depth limit, an empty intersection).
    Never,
    Null,
    Bool,
    /// Integers in `[lo, hi]`.
    Int {
        lo: Option<i128>,
        hi: Option<i128>,
    },
    /// Numbers between the bounds (value, inclusive); at most `decimals` fractional digits when set.
    Num {
        lo: Option<(f64, bool)>,
        hi: Option<(f64, bool)>,
        decimals: Option<u32>,
    },
    Str(Str),
    Array(Array),
    /// Shared (`Arc`): a `$ref`'d object expanded at many places is one object, which the emitter writes once
    /// (the program then calls it); changing one copy (`Arc::make_mut`) makes it another.
    Object(Arc<Object>),
    /// Exactly one of these values (`enum`, `const`).
    Consts(Vec<Value>),
    AnyOf(Vec<Node>),
    /// Exactly one alternative matches (the emitter requires the alternatives to be disjoint).
    OneOf(Vec<Node>),
    /// Any value but these (from `not` and `if`); written only once intersected down to a finite set or a type
    /// that holds none of them.
    Except(Vec<Value>),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Str {
    pub min: u64,
    pub max: Option<u64>,
    pub pattern: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Array {
    pub prefix: Vec<Node>,
    /// Items after the prefix (`Never`: none).
    pub items: Box<Node>,
    pub min: u64,
    pub max: Option<u64>,
    pub unique: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Object {
    /// Declared properties, in the schema's order (outputs write them in this order).
    pub props: Vec<(String, Node)>,
    pub required: BTreeSet<String>,
    /// `patternProperties`: (ECMA pattern, schema).
    pub patterns: Vec<(String, Node)>,
    /// `additionalProperties`; `None` when the schema does not say.
    pub additional: Option<Box<Node>>,
    pub min_props: u64,
    pub max_props: Option<u64>,
    /// `propertyNames` as a string node, when given.
    pub names: Option<Box<Node>>,
}

impl Object {
    /// The schema a value under `key` must satisfy (Never: the key may not appear).
    pub fn schema_for(&self, cx: &Cx, key: &str) -> Result<Node> {
        if let Some((_, n)) = self.props.iter().find(|(k, _)| k == key) {
            return Ok(n.clone());
        }
        let mut node: Option<Node> = None;
        for (p, n) in &self.patterns {
            if StringPattern::new(cx, p)?.is_match(key) {
                node = Some(match node {
                    None => n.clone(),
                    Some(m) => intersect(cx, m, n.clone())?,
                });
            }
        }
        Ok(node.unwrap_or_else(|| self.additional.as_deref().cloned().unwrap_or(Node::Any)))
    }
}

impl Array {
    fn any() -> Self {
        Self { prefix: Vec::new(), items: Box::new(Node::Any), min: 0, max: None, unique: false }
    }
}

impl Object {
    /// Any object (undeclared keys explicitly allowed).
    fn any() -> Self {
        Self { additional: Some(Box::new(Node::Any)), ..Self::default() }
    }
}

fn any_of(mut alts: Vec<Node>) -> Node {
    match alts.len() {
        0 => Node::Never,
        1 => alts.pop().unwrap_or(Node::Never),
        _ => Node::AnyOf(alts),
    }
}

/// Builds nodes from schema values.
pub(crate) struct Builder<'a> {
    root: &'a Value,
    opts: &'a Options,
    /// The compile's budget and shared pieces.
    cx: &'a Cx,
    /// The `$ref`s being expanded, outermost first.
    refs: Vec<String>,
    /// Nodes built so far (a guard against exponential unrolling).
    built: usize,
    /// Trees built for a `$ref` in a context (see [`Builder::context`]), with the nodes their building counted:
    /// a definition used at many places is read once per context.
    expanded: HashMap<(String, Context), (Node, usize)>,
    /// The `$ref`s met anywhere below each `$ref`'s target, followed through their own targets.
    reach: HashMap<String, Rc<Vec<String>>>,
}

/// How many times each `$ref` that matters is being expanded around a `$ref`: see [`Builder::context`].
type Context = Vec<(String, usize)>;

/// Most nodes one schema may expand to.
const MAX_NODES: usize = 200_000;

impl<'a> Builder<'a> {
    pub fn new(root: &'a Value, opts: &'a Options, cx: &'a Cx) -> Self {
        Self { root, opts, cx, refs: Vec::new(), built: 0, expanded: HashMap::new(), reach: HashMap::new() }
    }

    pub fn node(&mut self, v: &Value) -> Result<Node> {
        self.built += 1;
        if self.built > MAX_NODES {
            return Err(Error::too_large(format!("json schema expands past {MAX_NODES} subschemas")));
        }
        self.cx.in_budget()?;
        let o = match v {
            Value::Bool(true) => return Ok(Node::Any),
            Value::Bool(false) => return Ok(Node::Never),
            Value::Object(o) => o,
            other => return Err(Error::syntax(format!("json schema: a schema must be an object, got {other}"))),
        };
        for k in ["contains", "$dynamicRef", "$recursiveRef", "unevaluatedItems"] {
            if o.contains_key(k) {
                return Err(unsupported(k, "(it cannot be written as a regular language here)"));
            }
        }
        if let Some(u) = o.get("unevaluatedProperties") {
            // Without allOf/anyOf/oneOf/$ref around, it is additionalProperties under another name.
            let plain = !["allOf", "anyOf", "oneOf", "$ref"].iter().any(|k| o.contains_key(*k));
            if !plain || o.contains_key("additionalProperties") {
                return Err(unsupported("unevaluatedProperties", "beside allOf/anyOf/oneOf/$ref"));
            }
            let mut o2 = o.clone();
            o2.insert("additionalProperties".into(), u.clone());
            o2.remove("unevaluatedProperties");
            return self.node(&Value::Object(o2));
        }
        let mut node = self.typed(o)?;
        if let Some(not) = o.get("not") {
            let n = self.negate(not)?;
            node = intersect(self.cx, node, n)?;
        }
        if let Some(r) = o.get("$ref") {
            let r = r.as_str().ok_or_else(|| Error::syntax("$ref must be a string"))?;
            let target = self.referenced(r)?;
            node = intersect(self.cx, node, target)?;
        }
        if let Some(all) = o.get("allOf") {
            for s in array_of(all, "allOf")? {
                let n = self.node(s)?;
                node = intersect(self.cx, node, n)?;
            }
        }
        for (k, one) in [("anyOf", false), ("oneOf", true)] {
            if let Some(alts) = o.get(k) {
                let alts = array_of(alts, k)?;
                if alts.is_empty() {
                    return Err(Error::syntax(format!("json schema: {k} is empty")));
                }
                let nodes = alts.iter().map(|s| self.node(s)).collect::<Result<Vec<_>>>()?;
                let n = if one { Node::OneOf(nodes) } else { Node::AnyOf(nodes) };
                node = intersect(self.cx, node, n)?;
            }
        }
        if let Some(c) = o.get("const") {
            node = intersect(self.cx, Node::Consts(vec![c.clone()]), node)?;
        }
        if let Some(e) = o.get("enum") {
            let values = e.as_array().ok_or_else(|| Error::syntax("json schema: enum must be an array"))?;
            node = intersect(self.cx, Node::Consts(values.clone()), node)?;
        }
        // if/then/else: (if and then) or (not if and else).
        if let Some(cond) = o.get("if") {
            let yes = self.node(cond)?;
            let no = self.negate(cond).map_err(|_| unsupported("if", "whose condition we cannot negate"))?;
            let then = match o.get("then") {
                Some(t) => self.node(t)?,
                None => Node::Any,
            };
            let other = match o.get("else") {
                Some(e) => self.node(e)?,
                None => Node::Any,
            };
            let branches = vec![intersect(self.cx, yes, then)?, intersect(self.cx, no, other)?];
            node = intersect(self.cx, node, any_of(branches.into_iter().filter(|b| *b != Node::Never).collect()))?;
        }
        Ok(node)
    }

    /// The values `v` does not admit, for the forms of `not` we can write: `{}`/booleans, types, a forbidden
    /// property (`{"required": [name]}`), and `anyOf`/`$ref` of those.
    fn negate(&mut self, v: &Value) -> Result<Node> {
        let o = match v {
            Value::Bool(b) => return Ok(if *b { Node::Never } else { Node::Any }),
            Value::Object(o) => o,
            _ => return Err(Error::syntax("json schema: not must be a schema")),
        };
        let keys: Vec<&str> = o.keys().map(String::as_str).filter(|k| !is_annotation(k)).collect();
        let refuse = || Err(unsupported("not", &format!("of {}", Value::Object(o.clone()))));
        match keys.as_slice() {
            [] => Ok(Node::Never),
            ["$ref"] => {
                let r = o["$ref"].as_str().ok_or_else(|| Error::syntax("$ref must be a string"))?;
                if self.refs.iter().any(|x| x == r) {
                    return refuse();
                }
                let target = resolve(self.root, r)?;
                self.refs.push(r.to_string());
                let n = self.negate(target);
                self.refs.pop();
                n
            }
            ["anyOf"] => {
                let mut node = Node::Any;
                for s in array_of(&o["anyOf"], "anyOf")? {
                    let n = self.negate(s)?;
                    node = intersect(self.cx, node, n)?;
                }
                Ok(node)
            }
            ["type"] => {
                let named: Vec<&str> = match &o["type"] {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                    _ => return refuse(),
                };
                // Not an integer would include fractional numbers, which we cannot single out: numbers go.
                let mut alts = Vec::new();
                for (t, n) in [
                    ("null", Node::Null),
                    ("boolean", Node::Bool),
                    ("string", Node::Str(Str::default())),
                    ("array", Node::Array(Array::any())),
                    ("object", Node::Object(Arc::new(Object::any()))),
                ] {
                    if !named.contains(&t) {
                        alts.push(n);
                    }
                }
                if !named.contains(&"number") && !named.contains(&"integer") {
                    alts.push(Node::Num { lo: None, hi: None, decimals: None });
                }
                Ok(any_of(alts))
            }
            ["const"] => Ok(Node::Except(vec![o["const"].clone()])),
            ["enum"] => Ok(Node::Except(array_of(&o["enum"], "enum")?.clone())),
            keys if keys.contains(&"properties")
                && keys.iter().all(|k| matches!(*k, "properties" | "required" | "type"))
                && o.get("type").is_none_or(|t| t == "object") =>
            {
                // Not (an object whose listed properties, where present, satisfy their schemas, with the required
                // ones present): anything else, or an object with one of them present and failing its schema, or
                // one required missing.
                let mut alts = vec![
                    Node::Null,
                    Node::Bool,
                    Node::Num { lo: None, hi: None, decimals: None },
                    Node::Str(Str::default()),
                    Node::Array(Array::any()),
                ];
                let props = o["properties"].as_object().ok_or_else(|| Error::syntax("properties must be an object"))?;
                for (k, sub) in props {
                    let bad = self.negate(sub)?;
                    let mut required = BTreeSet::new();
                    required.insert(k.clone());
                    alts.push(Node::Object(Arc::new(Object {
                        props: vec![(k.clone(), bad)],
                        required,
                        ..Object::any()
                    })));
                }
                let names: Vec<&str> = o
                    .get("required")
                    .and_then(Value::as_array)
                    .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
                for name in names {
                    alts.push(Node::Object(Arc::new(Object {
                        props: vec![(name.to_string(), Node::Never)],
                        ..Object::any()
                    })));
                }
                Ok(any_of(alts))
            }
            ["required"] | ["required", "type"] | ["type", "required"]
                if o.get("type").is_none_or(|t| t == "object") =>
            {
                let names: Vec<&str> =
                    o["required"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
                let [name] = names.as_slice() else { return refuse() };
                let forbidden = Object { props: vec![(name.to_string(), Node::Never)], ..Object::any() };
                Ok(any_of(vec![
                    Node::Null,
                    Node::Bool,
                    Node::Num { lo: None, hi: None, decimals: None },
                    Node::Str(Str::default()),
                    Node::Array(Array::any()),
                    Node::Object(Arc::new(forbidden)),
                ]))
            }
            _ => refuse(),
        }
    }

    fn referenced(&mut self, r: &str) -> Result<Node> {
        let depth = self.refs.iter().filter(|x| *x == r).count();
        if depth >= self.opts.max_ref_depth {
            // A regex can only unroll recursion to a fixed depth: deeper instances are refused (never invalid).
            return Ok(Node::Never);
        }
        let key = (r.to_string(), self.context(r));
        if let Some((n, count)) = self.expanded.get(&key) {
            // Counted as if built again, so the limit on nodes holds as before.
            self.built += count;
            if self.built > MAX_NODES {
                return Err(Error::too_large(format!("json schema expands past {MAX_NODES} subschemas")));
            }
            self.cx.in_budget()?;
            return Ok(n.clone());
        }
        let target = resolve(self.root, r)?;
        let before = self.built;
        self.refs.push(r.to_string());
        let n = self.node(target);
        self.refs.pop();
        let n = n?;
        self.expanded.insert(key, (n.clone(), self.built - before));
        Ok(n)
    }

    /// What the tree of `$ref` `r` depends on besides `r` itself: how many times each `$ref` it can reach is
    /// being expanded around it (recursion is cut by that count; `not` refuses a `$ref` inside itself).
    fn context(&mut self, r: &str) -> Context {
        let reach = self.reach(r);
        std::iter::once(r)
            .chain(reach.iter().map(String::as_str))
            .map(|x| (x.to_string(), self.refs.iter().filter(|y| *y == x).count()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The `$ref`s met below `r`'s target, and below theirs, in the order first met.
    fn reach(&mut self, r: &str) -> Rc<Vec<String>> {
        if let Some(x) = self.reach.get(r) {
            return x.clone();
        }
        fn refs_in<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        out.push(r);
                    }
                    o.values().for_each(|x| refs_in(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs_in(x, out)),
                _ => {}
            }
        }
        let mut all: Vec<String> = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut todo = vec![r.to_string()];
        while let Some(x) = todo.pop() {
            // Strings under a "$ref" key inside data (`default`, `examples`) are taken too: a longer context only
            // shares less. One that resolves to nothing is never expanded, so it is never on the stack either.
            let Ok(target) = resolve(self.root, &x) else { continue };
            let mut found = Vec::new();
            refs_in(target, &mut found);
            for f in found {
                if seen.insert(f.to_string()) {
                    all.push(f.to_string());
                    todo.push(f.to_string());
                }
            }
        }
        let all = Rc::new(all);
        self.reach.insert(r.to_string(), all.clone());
        all
    }

    /// The node for `type` and the keywords that apply per type.
    fn typed(&mut self, o: &Map<String, Value>) -> Result<Node> {
        let mut types: Vec<&str> = match o.get("type") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| t.as_str().ok_or_else(|| Error::syntax("json schema: type names must be strings")))
                .collect::<Result<_>>()?,
            Some(_) => return Err(Error::syntax("json schema: type must be a string or an array")),
        };
        if types.is_empty() {
            // Untyped keywords only constrain values of their type; values of other types pass. We infer the
            // type(s) from the keywords instead (an untyped `properties` means an object), like xgrammar and
            // llguidance: stricter than the letter of the spec, never admitting invalid values.
            let has = |keys: &[&str]| keys.iter().any(|k| o.contains_key(*k));
            if has(STRING_KEYS) {
                types.push("string");
            }
            if has(NUMBER_KEYS) {
                types.push("number");
            }
            if has(ARRAY_KEYS) {
                types.push("array");
            }
            if has(OBJECT_KEYS) {
                types.push("object");
            }
            if types.is_empty() {
                return Ok(Node::Any);
            }
        }
        let mut alts = Vec::new();
        for t in types {
            alts.push(match t {
                "null" => Node::Null,
                "boolean" => Node::Bool,
                "integer" => number(self.cx, o, true)?,
                "number" => number(self.cx, o, false)?,
                "string" => string(o)?,
                "array" => self.array(o)?,
                "object" => self.object(o)?,
                other => return Err(Error::syntax(format!("json schema: unknown type {other:?}"))),
            });
        }
        Ok(if alts.len() == 1 { alts.pop().unwrap_or(Node::Never) } else { Node::AnyOf(alts) })
    }

    fn array(&mut self, o: &Map<String, Value>) -> Result<Node> {
        let (prefix, rest) = match (o.get("prefixItems"), o.get("items")) {
            (Some(p), items) => (array_of(p, "prefixItems")?.as_slice(), items),
            // Draft 4-7: `items` as an array is the prefix, `additionalItems` the rest.
            (None, Some(Value::Array(p))) => (p.as_slice(), o.get("additionalItems")),
            (None, items) => (&[][..], items),
        };
        let prefix = prefix.iter().map(|s| self.node(s)).collect::<Result<Vec<_>>>()?;
        let items = match rest {
            None => Node::Any,
            Some(s) => self.node(s)?,
        };
        Ok(Node::Array(Array {
            prefix,
            items: Box::new(items),
            min: count(o, "minItems")?.unwrap_or(0),
            max: count(o, "maxItems")?,
            unique: o.get("uniqueItems") == Some(&Value::Bool(true)),
        }))
    }

    fn object(&mut self, o: &Map<String, Value>) -> Result<Node> {
        let mut obj = Object {
            min_props: count(o, "minProperties")?.unwrap_or(0),
            max_props: count(o, "maxProperties")?,
            ..Object::default()
        };
        if let Some(p) = o.get("properties") {
            let p = p.as_object().ok_or_else(|| Error::syntax("json schema: properties must be an object"))?;
            for (k, s) in p {
                let n = self.node(s)?;
                obj.props.push((k.clone(), n));
            }
        }
        if let Some(p) = o.get("patternProperties") {
            let p = p.as_object().ok_or_else(|| Error::syntax("json schema: patternProperties must be an object"))?;
            for (k, s) in p {
                StringPattern::new(self.cx, k)?;
                let n = self.node(s)?;
                obj.patterns.push((k.clone(), n));
            }
        }
        if let Some(a) = o.get("additionalProperties") {
            obj.additional = Some(Box::new(self.node(a)?));
        }
        if let Some(r) = o.get("required") {
            let r = r.as_array().ok_or_else(|| Error::syntax("json schema: required must be an array"))?;
            for name in r {
                let name = name.as_str().ok_or_else(|| Error::syntax("json schema: required names are strings"))?;
                obj.required.insert(name.to_string());
            }
        }
        if let Some(n) = o.get("propertyNames") {
            let n = match n {
                Value::Object(m) if !m.contains_key("type") => {
                    let mut m = m.clone();
                    m.insert("type".into(), "string".into());
                    self.node(&Value::Object(m))?
                }
                other => self.node(other)?,
            };
            obj.names = Some(Box::new(n));
        }
        // `dependencies` / `dependentRequired` / `dependentSchemas`: when a key is present, other keys must be
        // too, or the object must satisfy a schema. Each optional trigger splits the object in two: without
        // the key, or with it and what it implies (at most 3 triggers, 8 variants).
        let mut triggers: Vec<(String, Node)> = Vec::new();
        for k in ["dependencies", "dependentRequired", "dependentSchemas"] {
            let Some(d) = o.get(k) else { continue };
            let d = d.as_object().ok_or_else(|| Error::syntax(format!("json schema: {k} must be an object")))?;
            for (trigger, dep) in d {
                if matches!(obj.schema_for(self.cx, trigger)?, Node::Never) {
                    continue; // the key can never appear
                }
                let implied = match dep {
                    Value::Array(names) => {
                        let names: BTreeSet<String> =
                            names.iter().filter_map(Value::as_str).map(String::from).collect();
                        if names.iter().all(|n| obj.required.contains(n)) {
                            continue;
                        }
                        Node::Object(Arc::new(Object { required: names, ..Object::any() }))
                    }
                    schema => self.node(schema)?,
                };
                triggers.push((trigger.clone(), implied));
            }
        }
        if triggers.is_empty() {
            return Ok(Node::Object(Arc::new(obj)));
        }
        if triggers.len() > 3 {
            return Err(unsupported("dependencies", "on more than 3 optional properties"));
        }
        let mut variants = vec![Node::Object(Arc::new(obj))];
        for (trigger, implied) in triggers {
            let mut next = Vec::new();
            for v in variants {
                let Node::Object(base) = v else { continue };
                if base.required.contains(&trigger) {
                    next.push(intersect(self.cx, Node::Object(base), implied.clone())?);
                    continue;
                }
                let mut without = (*base).clone();
                match without.props.iter_mut().find(|(k, _)| *k == trigger) {
                    Some((_, n)) => *n = Node::Never,
                    None => without.props.push((trigger.clone(), Node::Never)),
                }
                let mut with = base;
                Arc::make_mut(&mut with).required.insert(trigger.clone());
                for n in [Node::Object(Arc::new(without)), intersect(self.cx, Node::Object(with), implied.clone())?] {
                    if n != Node::Never {
                        next.push(n);
                    }
                }
            }
            variants = next;
        }
        Ok(any_of(variants))
    }
}

fn array_of<'v>(v: &'v Value, k: &str) -> Result<&'v Vec<Value>> {
    v.as_array().ok_or_else(|| Error::syntax(format!("json schema: {k} must be an array")))
}

fn count(o: &Map<String, Value>, k: &str) -> Result<Option<u64>> {
    match o.get(k) {
        None => Ok(None),
        Some(v) => {
            match v.as_u64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64)) {
                Some(n) => Ok(Some(n)),
                None => Err(Error::syntax(format!("json schema: {k} must be a non-negative integer"))),
            }
        }
    }
}

fn num(o: &Map<String, Value>, k: &str) -> Result<Option<f64>> {
    match o.get(k) {
        None | Some(Value::Bool(_)) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::syntax(format!("json schema: {k} must be a number"))),
    }
}

/// Formats that only say how a number is stored, or that validators do not check: annotations.
fn number_format_range(f: &str) -> Option<(i128, i128)> {
    Some(match f {
        "int8" => (i8::MIN as i128, i8::MAX as i128),
        "int16" => (i16::MIN as i128, i16::MAX as i128),
        "int32" => (i32::MIN as i128, i32::MAX as i128),
        "int64" => (i64::MIN as i128, i64::MAX as i128),
        "uint8" => (0, u8::MAX as i128),
        "uint16" => (0, u16::MAX as i128),
        "uint32" => (0, u32::MAX as i128),
        "uint64" => (0, u64::MAX as i128),
        _ => return None,
    })
}

/// `integer` or `number` with bounds (draft 4 boolean and draft 6+ numeric exclusive bounds) and `multipleOf`.
fn number(cx: &Cx, o: &Map<String, Value>, integer: bool) -> Result<Node> {
    let flag = |k: &str| matches!(o.get(k), Some(Value::Bool(true)));
    let mut lo: Option<(f64, bool)> = num(o, "minimum")?.map(|m| (m, !flag("exclusiveMinimum")));
    if let Some(x) = num(o, "exclusiveMinimum")? {
        lo = Some(match lo {
            Some((m, incl)) if m > x || (m == x && !incl) => (m, incl),
            _ => (x, false),
        });
    }
    let mut hi: Option<(f64, bool)> = num(o, "maximum")?.map(|m| (m, !flag("exclusiveMaximum")));
    if let Some(x) = num(o, "exclusiveMaximum")? {
        hi = Some(match hi {
            Some((m, incl)) if m < x || (m == x && !incl) => (m, incl),
            _ => (x, false),
        });
    }
    let mut integer = integer;
    let mut decimals = None;
    if let Some(m) = num(o, "multipleOf")? {
        if m <= 0.0 {
            return Err(Error::syntax("json schema: multipleOf must be positive"));
        }
        // Multiples of 10^-d are the numbers with at most d decimals; 1 (or 1/k) holds for every integer.
        let d = (0..=9).find(|&d| (m * 10f64.powi(d) - 1.0).abs() < 1e-9);
        match d {
            Some(0) => integer = true,
            Some(d) if !integer => decimals = Some(d as u32),
            _ if integer && (1.0 / m).fract().abs() < 1e-9 => {}
            _ => return Err(unsupported("multipleOf", &format!("{m} (only 1 and powers of ten below it)"))),
        }
    }
    let range = o.get("format").and_then(Value::as_str).and_then(number_format_range);
    let to_int = |lo: Option<(f64, bool)>, hi: Option<(f64, bool)>| -> Result<Node> {
        for (v, _) in lo.iter().chain(hi.iter()) {
            if !v.is_finite() || v.abs() > 1e18 {
                return Err(unsupported("minimum/maximum", &format!("beyond 1e18 ({v})")));
            }
        }
        let l = lo.map(|(v, incl)| if incl { v.ceil() as i128 } else { v.floor() as i128 + 1 });
        let h = hi.map(|(v, incl)| if incl { v.floor() as i128 } else { v.ceil() as i128 - 1 });
        // An empty range is no value (`int`), not a regex of nothing that matches the empty output.
        Ok(int(l, h))
    };
    let mut node = if integer { to_int(lo, hi)? } else { Node::Num { lo, hi, decimals } };
    if let (Some((a, b)), Node::Int { .. }) = (range, &node) {
        node = intersect(cx, node, Node::Int { lo: Some(a), hi: Some(b) })?;
    }
    Ok(node)
}

fn string(o: &Map<String, Value>) -> Result<Node> {
    let pattern = match o.get("pattern") {
        None => None,
        Some(Value::String(p)) => Some(p.clone()),
        Some(_) => return Err(Error::syntax("json schema: pattern must be a string")),
    };
    let format = match o.get("format").and_then(Value::as_str) {
        Some(f) if super::pattern::format_is_checked(f)? => Some(f.to_string()),
        _ => None,
    };
    Ok(Node::Str(Str { min: count(o, "minLength")?.unwrap_or(0), max: count(o, "maxLength")?, pattern, format }))
}

/// Resolves a local `$ref` (`#/definitions/x`, `#/$defs/x`, `#`).
pub(crate) fn resolve<'v>(root: &'v Value, r: &str) -> Result<&'v Value> {
    let path = r.strip_prefix('#').ok_or_else(|| unsupported("$ref", &format!("to {r:?} (only local references)")))?;
    let mut node = root;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let part = part.replace("~1", "/").replace("~0", "~");
        let part = percent_decode(&part);
        node = match node {
            Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => node.get(&part),
        }
        .ok_or_else(|| Error::syntax(format!("json schema: $ref {r:?} points nowhere")))?;
    }
    Ok(node)
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn min_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y < x { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

fn max_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y > x { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The tighter of two lower bounds `(value, inclusive)`.
fn tighter_lo(a: Option<(f64, bool)>, b: Option<(f64, bool)>) -> Option<(f64, bool)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 > x.0 || (y.0 == x.0 && !y.1) { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

fn tighter_hi(a: Option<(f64, bool)>, b: Option<(f64, bool)>) -> Option<(f64, bool)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 < x.0 || (y.0 == x.0 && !y.1) { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Values admitted by both nodes (`allOf`).
pub(crate) fn intersect(cx: &Cx, a: Node, b: Node) -> Result<Node> {
    use Node::*;
    cx.in_budget()?;
    Ok(match (a, b) {
        (Any, x) | (x, Any) => x,
        (Never, _) | (_, Never) => Never,
        (Except(xs), Except(ys)) => Except(xs.into_iter().chain(ys).collect()),
        (Except(xs), Consts(vs)) | (Consts(vs), Except(xs)) => {
            let kept: Vec<Value> = vs.into_iter().filter(|v| !xs.iter().any(|x| json_equal(x, v))).collect();
            if kept.is_empty() {
                Never
            } else {
                Consts(kept)
            }
        }
        (Except(xs), Bool) | (Bool, Except(xs)) => {
            let kept: Vec<Value> = [true, false].into_iter().map(Value::Bool).filter(|v| !xs.contains(v)).collect();
            if kept.is_empty() {
                Never
            } else {
                Consts(kept)
            }
        }
        (Except(xs), Null) | (Null, Except(xs)) => {
            if xs.contains(&Value::Null) {
                Never
            } else {
                Null
            }
        }
        (Except(xs), AnyOf(ys)) | (AnyOf(ys), Except(xs)) => distribute(cx, ys, &Except(xs), false)?,
        (Except(xs), OneOf(ys)) | (OneOf(ys), Except(xs)) => distribute(cx, ys, &Except(xs), true)?,
        (Except(xs), x) | (x, Except(xs)) => {
            // A typed node whose values include none of the excluded ones is unchanged.
            let mut hit = false;
            for v in &xs {
                if admits(cx, &x, v)? {
                    hit = true;
                }
            }
            if hit {
                return Err(unsupported("not", "of a value inside a type we cannot subtract it from"));
            }
            x
        }
        (Consts(vs), x) | (x, Consts(vs)) => {
            let mut kept = Vec::new();
            for v in vs {
                if admits(cx, &x, &v)? {
                    kept.push(v);
                }
            }
            if kept.is_empty() {
                Never
            } else {
                Consts(kept)
            }
        }
        (AnyOf(xs), y) | (y, AnyOf(xs)) => distribute(cx, xs, &y, false)?,
        (OneOf(xs), y) | (y, OneOf(xs)) => distribute(cx, xs, &y, true)?,
        (Null, Null) => Null,
        (Bool, Bool) => Bool,
        (Int { lo: a, hi: b }, Int { lo: c, hi: d }) => int(max_opt(a, c), min_opt(b, d)),
        (Int { lo, hi }, Num { lo: nl, hi: nh, .. }) | (Num { lo: nl, hi: nh, .. }, Int { lo, hi }) => {
            let l = nl.map(|(v, incl)| if incl { v.ceil() as i128 } else { v.floor() as i128 + 1 });
            let h = nh.map(|(v, incl)| if incl { v.floor() as i128 } else { v.ceil() as i128 - 1 });
            int(max_opt(lo, l), min_opt(hi, h))
        }
        (Num { lo: a, hi: b, decimals: x }, Num { lo: c, hi: d, decimals: y }) => {
            Num { lo: tighter_lo(a, c), hi: tighter_hi(b, d), decimals: min_opt(x, y) }
        }
        (Str(a), Str(b)) => {
            let pattern = match (a.pattern, b.pattern) {
                (Some(p), Some(q)) if p != q => {
                    return Err(unsupported("pattern", "twice on one string (from allOf)"));
                }
                (p, q) => p.or(q),
            };
            let format = match (a.format, b.format) {
                (Some(p), Some(q)) if p != q => return Err(unsupported("format", "twice on one string (from allOf)")),
                (p, q) => p.or(q),
            };
            Str(self::Str { min: a.min.max(b.min), max: min_opt(a.max, b.max), pattern, format })
        }
        (Array(a), Array(b)) => {
            let n = a.prefix.len().max(b.prefix.len());
            let at = |x: &self::Array, i: usize| x.prefix.get(i).cloned().unwrap_or_else(|| (*x.items).clone());
            let mut prefix = Vec::with_capacity(n);
            for i in 0..n {
                prefix.push(intersect(cx, at(&a, i), at(&b, i))?);
            }
            Array(self::Array {
                prefix,
                items: Box::new(intersect(cx, *a.items, *b.items)?),
                min: a.min.max(b.min),
                max: min_opt(a.max, b.max),
                unique: a.unique || b.unique,
            })
        }
        (Object(a), Object(b)) => merge_objects(cx, Arc::unwrap_or_clone(a), Arc::unwrap_or_clone(b))?,
        _ => Never,
    })
}

/// `xs` (alternatives of an `anyOf`, or of a `oneOf` when `one_of`) each intersected with `y`, the empty ones
/// dropped.
fn distribute(cx: &Cx, xs: Vec<Node>, y: &Node, one_of: bool) -> Result<Node> {
    let mut out = Vec::new();
    for x in xs {
        match intersect(cx, x, y.clone())? {
            Node::Never => {}
            n => out.push(n),
        }
    }
    Ok(match out.len() {
        0 => Node::Never,
        1 => out.pop().unwrap_or(Node::Never),
        _ if one_of => Node::OneOf(out),
        _ => Node::AnyOf(out),
    })
}

fn int(lo: Option<i128>, hi: Option<i128>) -> Node {
    match (lo, hi) {
        (Some(l), Some(h)) if l > h => Node::Never,
        _ => Node::Int { lo, hi },
    }
}

fn merge_objects(cx: &Cx, a: Object, b: Object) -> Result<Node> {
    if !a.patterns.is_empty() && !b.patterns.is_empty() {
        return Err(unsupported("patternProperties", "on both sides of an allOf"));
    }
    let mut props: Vec<(String, Node)> = Vec::new();
    for (k, _) in a.props.iter().chain(b.props.iter()) {
        if props.iter().any(|(p, _)| p == k) {
            continue;
        }
        props.push((k.clone(), intersect(cx, a.schema_for(cx, k)?, b.schema_for(cx, k)?)?));
    }
    // Keys matching one side's patterns must also satisfy the other side's rule for undeclared keys.
    let (patterns, other_additional) = if a.patterns.is_empty() {
        (b.patterns.clone(), a.additional.clone())
    } else {
        (a.patterns.clone(), b.additional.clone())
    };
    let patterns = match other_additional {
        None => patterns,
        Some(extra) => patterns
            .into_iter()
            .map(|(p, n)| Ok((p, intersect(cx, n, (*extra).clone())?)))
            .collect::<Result<Vec<_>>>()?,
    };
    // `Some(Any)` and `None` admit the same; `None` keeps strict mode's reading of an unspecified schema.
    let additional = match (a.additional, b.additional) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) if *x == Node::Any => None,
        (Some(x), None) | (None, Some(x)) => Some(x),
        (Some(x), Some(y)) => Some(Box::new(intersect(cx, *x, *y)?)),
    };
    let names = match (a.names, b.names) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => Some(x),
        (Some(x), Some(y)) => Some(Box::new(intersect(cx, *x, *y)?)),
    };
    let mut required = a.required;
    required.extend(b.required);
    Ok(Node::Object(Arc::new(Object {
        props,
        required,
        patterns,
        additional,
        min_props: a.min_props.max(b.min_props),
        max_props: min_opt(a.max_props, b.max_props),
        names,
    })))
}

/// Whether `node` admits the JSON value `v`.
pub(crate) fn admits(cx: &Cx, node: &Node, v: &Value) -> Result<bool> {
    Ok(match node {
        Node::Any => true,
        Node::Never => false,
        Node::Null => v.is_null(),
        Node::Bool => v.is_boolean(),
        Node::Int { lo, hi } => match as_integer(v) {
            Some(i) => lo.is_none_or(|l| i >= l) && hi.is_none_or(|h| i <= h),
            None => false,
        },
        Node::Num { lo, hi, decimals } => match v.as_f64() {
            Some(x) => {
                lo.is_none_or(|(l, incl)| x > l || (incl && x == l))
                    && hi.is_none_or(|(h, incl)| x < h || (incl && x == h))
                    && decimals.is_none_or(|d| {
                        let s = x * 10f64.powi(d as i32);
                        (s - s.round()).abs() < 1e-9
                    })
            }
            None => false,
        },
        Node::Str(s) => match v.as_str() {
            Some(text) => {
                let n = text.chars().count() as u64;
                n >= s.min
                    && s.max.is_none_or(|m| n <= m)
                    && match &s.pattern {
                        Some(p) => StringPattern::new(cx, p)?.is_match(text),
                        None => true,
                    }
                    && match &s.format {
                        Some(f) => super::pattern::format_matches(cx, f, text)?,
                        None => true,
                    }
            }
            None => false,
        },
        Node::Array(a) => match v.as_array() {
            Some(items) => {
                let n = items.len() as u64;
                if n < a.min || a.max.is_some_and(|m| n > m) {
                    return Ok(false);
                }
                if a.unique && items.iter().enumerate().any(|(i, x)| items[..i].contains(x)) {
                    return Ok(false);
                }
                for (i, x) in items.iter().enumerate() {
                    let s = a.prefix.get(i).unwrap_or(&a.items);
                    if !admits(cx, s, x)? {
                        return Ok(false);
                    }
                }
                true
            }
            None => false,
        },
        Node::Object(o) => match v.as_object() {
            Some(m) => {
                let n = m.len() as u64;
                if n < o.min_props || o.max_props.is_some_and(|x| n > x) {
                    return Ok(false);
                }
                if o.required.iter().any(|r| !m.contains_key(r)) {
                    return Ok(false);
                }
                for (k, x) in m {
                    if let Some(names) = &o.names {
                        if !admits(cx, names, &Value::String(k.clone()))? {
                            return Ok(false);
                        }
                    }
                    if !admits(cx, &o.schema_for(cx, k)?, x)? {
                        return Ok(false);
                    }
                }
                true
            }
            None => false,
        },
        Node::Consts(vs) => vs.iter().any(|c| json_equal(c, v)),
        Node::Except(xs) => !xs.iter().any(|c| json_equal(c, v)),
        Node::AnyOf(xs) => {
            for x in xs {
                if admits(cx, x, v)? {
                    return Ok(true);
                }
            }
            false
        }
        Node::OneOf(xs) => {
            let mut hits = 0;
            for x in xs {
                if admits(cx, x, v)? {
                    hits += 1;
                }
            }
            hits == 1
        }
    })
}

/// An integer value (JSON Schema counts `1.0` as an integer).
fn as_integer(v: &Value) -> Option<i128> {
    if let Some(i) = v.as_i64() {
        return Some(i as i128);
    }
    if let Some(u) = v.as_u64() {
        return Some(u as i128);
    }
    v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e18).map(|f| f as i128)
}

/// JSON Schema equality: numbers by value (`1` equals `1.0`), objects regardless of key order.
pub(crate) fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| json_equal(p, q)))
        }
        _ => a == b,
    }
}
