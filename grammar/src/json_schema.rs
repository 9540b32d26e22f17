//! JSON Schema to regex, through `outlines-core`, refusing what it would silently ignore.
//!
//! outlines-core turns each schema object into a regex by its *first* keyword among `properties`, `allOf`,
//! `anyOf`, `oneOf`, `prefixItems`, `enum`, `const`, `$ref`, `type`, and ignores the rest. Some of what it
//! ignores only narrows the output (fixed key order, no extra keys: valid instances may be refused, never invalid
//! ones produced). Some would let invalid output through: numeric bounds, `uniqueItems`, `minProperties` beside
//! `properties`, `anyOf` beside `properties`, overlapping `oneOf` alternatives (an instance matching two is
//! invalid), and `allOf`, which it *concatenates*. [`check`] walks the schema first and rejects every keyword in a
//! position where it would not be enforced, naming it. Whatever passes the check is enforced exactly or more
//! strictly, so a constrained output always validates.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Every keyword that constrains instances in drafts 4 to 2020-12. Anything else (`title`, `$id`, `definitions`,
/// vendor extensions like `x-kubernetes-*`, misspellings) is ignored by validators, so it is an annotation here too.
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

/// The keywords outlines-core dispatches on, in its order.
const BRANCHES: &[&str] = &["properties", "allOf", "anyOf", "oneOf", "prefixItems", "enum", "const", "$ref", "type"];

/// Most optional properties in one object (see `check`).
const MAX_OPTIONAL_PROPERTIES: usize = 48;

/// How deep `$ref`s may recurse when the schema is unrolled into a regex.
const MAX_REF_DEPTH: usize = 3;

/// RFC 3339 `date-time` with a required offset; days valid in every year (29 February is refused, never a 30th).
const DATE: &str = r"[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))";
const TIME: &str =
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])";
const UUID: &str = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";

/// Our pattern for a string `format`, or `None` for formats we do not enforce.
fn format_pattern(format: &str) -> Option<String> {
    Some(match format {
        "date-time" => format!("^{DATE}T{TIME}$"),
        "date" => format!("^{DATE}$"),
        "time" => format!("^{TIME}$"),
        "uuid" => format!("^{UUID}$"),
        _ => return None,
    })
}

/// A user `pattern` as outlines-core can embed it safely: outlines writes `("P")` around it, so P is rewritten
/// to `^(?:P')$` (outlines strips the anchors, the group keeps alternations inside the string), where P' only
/// produces characters a JSON string may hold unescaped (no `"`, `\` or controls). A pattern is a search in JSON
/// Schema; matching it whole is stricter, which may refuse valid strings but never admits invalid ones.
fn json_safe_pattern(p: &str) -> Result<String> {
    use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, Hir, HirKind};
    let core = p.strip_prefix('^').unwrap_or(p);
    let core = match core.strip_suffix('$') {
        Some(c) if !c.ends_with('\\') => c,
        _ => core,
    };
    let hir = regex_syntax::Parser::new().parse(core).map_err(|e| Error::syntax(format!("pattern {p:?}: {e}")))?;
    if !hir.properties().look_set().is_empty() {
        return Err(unsupported("pattern", &format!("with anchors or look-arounds inside ({p:?})")));
    }
    let safe = ClassUnicode::new([
        ClassUnicodeRange::new('\u{20}', '\u{21}'),
        ClassUnicodeRange::new('\u{23}', '\u{5B}'),
        ClassUnicodeRange::new('\u{5D}', '\u{7E}'),
        ClassUnicodeRange::new('\u{80}', '\u{10FFFF}'),
    ]);
    fn restrict(h: &Hir, safe: &ClassUnicode) -> Hir {
        match h.kind() {
            HirKind::Literal(lit) => match std::str::from_utf8(&lit.0) {
                Ok(text) if text.chars().all(|c| safe.ranges().iter().any(|r| r.start() <= c && c <= r.end())) => {
                    h.clone()
                }
                _ => Hir::fail(),
            },
            HirKind::Class(Class::Unicode(c)) => {
                let mut c = c.clone();
                c.intersect(safe);
                Hir::class(Class::Unicode(c))
            }
            HirKind::Class(Class::Bytes(b)) => {
                let ascii: Vec<ClassUnicodeRange> = b
                    .ranges()
                    .iter()
                    .filter(|r| r.end() < 0x80)
                    .map(|r| ClassUnicodeRange::new(r.start() as char, r.end() as char))
                    .collect();
                let mut c = ClassUnicode::new(ascii);
                c.intersect(safe);
                Hir::class(Class::Unicode(c))
            }
            HirKind::Repetition(r) => {
                let mut r = r.clone();
                r.sub = Box::new(restrict(&r.sub, safe));
                Hir::repetition(r)
            }
            HirKind::Capture(c) => restrict(&c.sub, safe),
            HirKind::Concat(hs) => Hir::concat(hs.iter().map(|x| restrict(x, safe)).collect()),
            HirKind::Alternation(hs) => Hir::alternation(hs.iter().map(|x| restrict(x, safe)).collect()),
            HirKind::Empty | HirKind::Look(_) => h.clone(),
        }
    }
    Ok(format!("^(?:{})$", restrict(&hir, &safe)))
}

/// The regex for `schema`, or an error naming the first keyword we cannot enforce.
pub fn schema_to_regex(schema: &Value, whitespace: &str) -> Result<String> {
    let mut holes = Vec::new();
    let schema = spell_out_any(schema, &mut holes, schema, 0)?;
    check(&schema, &schema, &mut HashSet::new())?;
    let mut regex = outlines_core::json_schema::regex_from_value(&schema, Some(whitespace), Some(MAX_REF_DEPTH))
        .map_err(|e| Error::unsupported(format!("json schema: {e}")))?;
    // Our own regexes go where outlines-core wrote the placeholder constants (`"marker"`).
    for (i, re) in holes.iter().enumerate() {
        let quoted = format!("\"{}\"", hole_marker(i));
        if !regex.contains(&quoted) {
            return Err(Error::unsupported(format!("json schema: internal placeholder {i} lost (report this schema)")));
        }
        regex = regex.replace(&quoted, &format!("(?:{re})"));
    }
    Ok(regex)
}

/// A string constant that stands for our own regex until outlines-core has written the rest.
fn hole_marker(i: usize) -> String {
    format!("RsXhOlE{i}zQ")
}

/// Replaces every empty subschema (`{}` or annotations only: any value) with an explicit `anyOf` of the six JSON
/// types. outlines-core writes `{}` as a top-level alternation without parentheses, so pasted after `"key":` it
/// splits the surrounding regex: valid values are refused and, worse, a bare `null` passes for an object.
///
/// String `format`s become our own patterns ([`format_pattern`]; outlines-core's `date-time` admits a missing
/// offset) and every `pattern` is made safe to embed ([`json_safe_pattern`]).
fn spell_out_any(v: &Value, holes: &mut Vec<String>, root: &Value, merges: usize) -> Result<Value> {
    fn is_any(v: &Value) -> bool {
        v.as_object().is_some_and(|o| o.keys().all(|k| is_annotation(k)))
    }
    fn any() -> Value {
        let types = ["null", "boolean", "number", "string", "array", "object"];
        serde_json::json!({"anyOf": types.iter().map(|t| serde_json::json!({"type": t})).collect::<Vec<_>>()})
    }
    let sub = |v: &Value, holes: &mut Vec<String>| -> Result<Value> {
        if is_any(v) {
            Ok(any())
        } else {
            spell_out_any(v, holes, root, merges)
        }
    };
    let Value::Object(o) = v else { return Ok(v.clone()) };
    // Merged `allOf`s nest at most this deep (a branch `$ref` back to its own schema would inline forever; past
    // the limit `check` refuses the `allOf`).
    const MAX_MERGES: usize = 8;
    if o.contains_key("allOf") && merges < MAX_MERGES {
        if let Some(merged) = merge_all_of(o, root)? {
            return spell_out_any(&merged, holes, root, merges + 1);
        }
    }
    // Bounded integers and numbers: our regex, in a placeholder constant (outlines-core ignores the bounds).
    let numeric_only = o
        .keys()
        .all(|k| is_annotation(k) || k == "type" || k == "format" || crate::numeric::KEYWORDS.contains(&k.as_str()));
    if numeric_only {
        if let Some(re) = crate::numeric::bounded(o)? {
            holes.push(re);
            return Ok(serde_json::json!({"const": hole_marker(holes.len() - 1)}));
        }
    }
    // `double` and `float` only say how a number is stored; JSON numbers a model writes fit either.
    let numeric_annotation = matches!(o.get("type").and_then(Value::as_str), Some("number" | "integer"))
        && matches!(o.get("format").and_then(Value::as_str), Some("double" | "float"));
    let mut out = Map::new();
    for (k, x) in o {
        let nx = match (k.as_str(), x) {
            ("properties" | "definitions" | "$defs", Value::Object(m)) => {
                Value::Object(m.iter().map(|(n, s)| Ok((n.clone(), sub(s, holes)?))).collect::<Result<_>>()?)
            }
            ("anyOf" | "oneOf" | "allOf" | "prefixItems", Value::Array(a)) => {
                Value::Array(a.iter().map(|s| sub(s, holes)).collect::<Result<_>>()?)
            }
            ("items" | "additionalProperties", Value::Object(_)) => sub(x, holes)?,
            ("format", _) if numeric_annotation => continue,
            ("pattern", Value::String(p)) => Value::String(json_safe_pattern(p)?),
            _ => x.clone(),
        };
        out.insert(k.clone(), nx);
    }
    // Enum values the `type` excludes can never be valid: drop them (exact) rather than refuse the schema.
    if let (Some(Value::Array(values)), Some(t)) = (o.get("enum"), o.get("type")) {
        let kept: Vec<Value> = values.iter().filter(|v| type_admits(t, v)).cloned().collect();
        if kept.is_empty() {
            return Err(unsupported("enum", "with no value that its \"type\" admits (nothing is valid)"));
        }
        out.insert("enum".into(), Value::Array(kept));
    }
    // A lone `format` on a string becomes our pattern; other combinations are refused later by `check`.
    if let (Some(Value::String(f)), false) = (o.get("format"), numeric_annotation) {
        let alone = !["pattern", "minLength", "maxLength"].iter().any(|k| o.contains_key(*k));
        if alone {
            let pat = format_pattern(f)
                .ok_or_else(|| unsupported("format", &format!("{f:?} (supported: date-time, date, time, uuid)")))?;
            out.remove("format");
            out.insert("pattern".into(), Value::String(pat));
        }
    }
    Ok(Value::Object(out))
}

/// `allOf` of object schemas (and the keywords beside it) as one object schema: properties and `required`
/// united, `additionalProperties: false` kept when it still holds. `None` when the branches are not all plain
/// objects (then `check` refuses `allOf` by name); an error when they conflict.
fn merge_all_of(o: &Map<String, Value>, root: &Value) -> Result<Option<Value>> {
    const OBJECT_KEYS: &[&str] = &["type", "properties", "required", "additionalProperties"];
    let Some(Value::Array(branches)) = o.get("allOf") else { return Ok(None) };
    let mut parts: Vec<&Map<String, Value>> = Vec::new();
    let siblings: Map<String, Value> =
        o.iter().filter(|(k, _)| *k != "allOf").map(|(k, v)| (k.clone(), v.clone())).collect();
    for b in branches {
        let mut b = b;
        let mut hops = 0;
        while let Some(r) = b.get("$ref").and_then(Value::as_str) {
            hops += 1;
            if hops > 8 {
                return Ok(None);
            }
            b = resolve(root, r)?;
        }
        match b {
            Value::Object(m) => parts.push(m),
            _ => return Ok(None),
        }
    }
    parts.push(&siblings);
    let object_like = |m: &Map<String, Value>| {
        m.iter().all(|(k, v)| is_annotation(k) || (OBJECT_KEYS.contains(&k.as_str()) && (k != "type" || v == "object")))
    };
    if !parts.iter().all(|m| object_like(m)) || !parts.iter().any(|m| m.contains_key("properties")) {
        return Ok(None);
    }
    let mut props = Map::new();
    let mut required: Vec<Value> = Vec::new();
    for m in &parts {
        if let Some(Value::Object(p)) = m.get("properties") {
            for (k, v) in p {
                match props.get(k) {
                    Some(old) if old != v => {
                        return Err(unsupported("allOf", &format!("with two different schemas for property {k:?}")))
                    }
                    _ => {
                        props.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if let Some(Value::Array(r)) = m.get("required") {
            for x in r {
                if !required.contains(x) {
                    required.push(x.clone());
                }
            }
        }
    }
    // `additionalProperties: false` in one branch allows only that branch's properties in the whole instance.
    let mut closed = false;
    for m in &parts {
        match m.get("additionalProperties") {
            None | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                let own = m.get("properties").and_then(Value::as_object);
                if !props.keys().all(|k| own.is_some_and(|p| p.contains_key(k))) {
                    return Err(unsupported(
                        "allOf",
                        "with additionalProperties false in a branch that lacks others' properties",
                    ));
                }
                closed = true;
            }
            Some(_) => return Ok(None),
        }
    }
    // Annotations beside `allOf` stay (`definitions` that `$ref`s point into, when the `allOf` is the root).
    let mut out: Map<String, Value> =
        siblings.iter().filter(|(k, _)| is_annotation(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    out.insert("type".into(), Value::from("object"));
    out.insert("properties".into(), Value::Object(props));
    if !required.is_empty() {
        out.insert("required".into(), Value::Array(required));
    }
    if closed {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Ok(Some(Value::Object(out)))
}

fn unsupported(keyword: &str, why: &str) -> Error {
    Error::unsupported(format!("json schema keyword {keyword:?} is not supported {why}"))
}

/// Checks that every keyword of `node` is enforced by the branch outlines-core will take for it.
pub fn check(node: &Value, root: &Value, refs: &mut HashSet<String>) -> Result<()> {
    let obj = match node {
        Value::Object(o) => o,
        Value::Bool(_) => return Err(unsupported("true/false", "as a schema")),
        other => return Err(Error::syntax(format!("json schema: a schema must be an object, got {other}"))),
    };
    let keys: Vec<&str> = obj.keys().map(String::as_str).filter(|k| !is_annotation(k)).collect();
    let Some(branch) = BRANCHES.iter().copied().find(|b| keys.contains(b)) else {
        return match keys.first() {
            None => Ok(()), // {}: any JSON value
            Some(k) => Err(unsupported(k, "without a type")),
        };
    };
    let allowed: &[&str] = match branch {
        "properties" => &["properties", "required", "type", "additionalProperties"],
        "allOf" | "anyOf" | "oneOf" => &[branch],
        "prefixItems" => &["prefixItems", "type"],
        "enum" | "const" => &[branch, "type"],
        "$ref" => &["$ref"],
        _ => &["type"], // widened per type below
    };
    let type_allowed = if branch == "type" { allowed_for_types(obj)? } else { Vec::new() };
    if let Some(k) = keys.iter().find(|k| !allowed.contains(k) && !type_allowed.contains(k)) {
        return Err(unsupported(k, &format!("beside {branch:?}")));
    }
    match branch {
        "properties" => {
            if let Some(t) = obj.get("type") {
                if t != "object" {
                    return Err(unsupported("type", "other than \"object\" beside \"properties\""));
                }
            }
            let props = obj["properties"].as_object().ok_or_else(|| Error::syntax("properties must be an object"))?;
            // outlines-core can only write listed properties: a required name it does not list would be missing
            // from every output, so every output would be invalid.
            if let Some(req) = obj.get("required").and_then(Value::as_array) {
                if let Some(missing) = req.iter().filter_map(Value::as_str).find(|r| !props.contains_key(*r)) {
                    return Err(unsupported(
                        "required",
                        &format!("naming {missing:?}, which properties does not define"),
                    ));
                }
            }
            // outlines-core writes optional properties as an alternation over which comes first, each followed by
            // the rest: the regex grows with the square of their number (gigabytes for a few hundred).
            let required = obj.get("required").and_then(Value::as_array).map_or(0, Vec::len);
            let optional = props.len().saturating_sub(required);
            if optional > MAX_OPTIONAL_PROPERTIES {
                return Err(Error::too_large(format!(
                    "json schema: an object with {optional} optional properties (at most {MAX_OPTIONAL_PROPERTIES})"
                )));
            }
            for v in props.values() {
                check(v, root, refs)?;
            }
        }
        "allOf" => match obj["allOf"].as_array().map(Vec::as_slice) {
            Some([one]) => check(one, root, refs)?,
            _ => return Err(unsupported("allOf", "with more than one schema")),
        },
        "anyOf" | "oneOf" => {
            let alts = obj[branch].as_array().ok_or_else(|| Error::syntax(format!("{branch} must be an array")))?;
            if alts.is_empty() {
                return Err(Error::syntax(format!("{branch} is empty")));
            }
            for a in alts {
                check(a, root, refs)?;
            }
            if branch == "oneOf" && !disjoint_types(alts) {
                return Err(unsupported("oneOf", "unless its alternatives have distinct types"));
            }
        }
        "prefixItems" => {
            for a in obj["prefixItems"].as_array().ok_or_else(|| Error::syntax("prefixItems must be an array"))? {
                check(a, root, refs)?;
            }
        }
        "enum" | "const" => {
            let values: Vec<&Value> = match (branch, &obj[branch]) {
                ("enum", Value::Array(a)) => a.iter().collect(),
                ("enum", _) => return Err(Error::syntax("enum must be an array")),
                (_, v) => vec![v],
            };
            for v in values {
                if let Some(t) = obj.get("type") {
                    if !type_admits(t, v) {
                        return Err(unsupported("type", &format!("that excludes the {branch} value {v}")));
                    }
                }
                if !plain_keys(v) {
                    return Err(unsupported(branch, "with object keys that need escaping"));
                }
            }
        }
        "$ref" => {
            let r = obj["$ref"].as_str().ok_or_else(|| Error::syntax("$ref must be a string"))?;
            // `refs` is the chain of references being followed: meeting one again is a cycle. A regex can only
            // unroll it to a fixed depth (outlines-core: 3), which truncates the language and, with optional
            // properties written out O(n^2) times per level, can grow past gigabytes.
            if !refs.insert(r.to_string()) {
                return Err(unsupported("$ref", &format!("recursive ({r:?} refers back to itself)")));
            }
            let target = resolve(root, r)?;
            check(target, root, refs)?;
            refs.remove(r);
        }
        _ => {
            // `type`: check the subschemas the type's own keywords carry.
            if let Some(items) = obj.get("items") {
                if items.is_array() {
                    return Err(unsupported("items", "as an array (use prefixItems)"));
                }
                check(items, root, refs)?;
            }
            if let Some(ap @ Value::Object(_)) = obj.get("additionalProperties") {
                check(ap, root, refs)?;
            }
        }
    }
    Ok(())
}

/// Keywords enforced for the type(s) named by `type`.
fn allowed_for_types(obj: &Map<String, Value>) -> Result<Vec<&'static str>> {
    let types: Vec<&str> = match &obj["type"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a
            .iter()
            .map(|t| t.as_str().ok_or_else(|| Error::syntax("type names must be strings")))
            .collect::<Result<_>>()?,
        _ => return Err(Error::syntax("type must be a string or an array")),
    };
    let mut allowed = vec!["type"];
    for t in types {
        match t {
            "string" => {
                // outlines-core takes one of: length bounds, pattern, format, and ignores the others.
                let groups = [
                    obj.contains_key("minLength") || obj.contains_key("maxLength"),
                    obj.contains_key("pattern"),
                    obj.contains_key("format"),
                ];
                if groups.iter().filter(|&&g| g).count() > 1 {
                    return Err(unsupported("pattern/format/minLength", "together on one string"));
                }
                allowed.extend(["minLength", "maxLength", "pattern", "format"]);
            }
            "array" => allowed.extend(["items", "minItems", "maxItems"]),
            "object" => allowed.extend(["additionalProperties", "minProperties", "maxProperties"]),
            "number" | "integer" | "boolean" | "null" => {}
            other => return Err(Error::syntax(format!("json schema: unknown type {other:?}"))),
        }
    }
    Ok(allowed)
}

/// True when no JSON value can match two of the alternatives: all are constants with distinct values, or each
/// names one type and no two share it (integer and number count as the same).
fn disjoint_types(alts: &[Value]) -> bool {
    if alts.iter().all(|a| a.get("const").is_some()) {
        let vals: HashSet<String> = alts.iter().map(|a| a["const"].to_string()).collect();
        return vals.len() == alts.len();
    }
    let mut seen = HashSet::new();
    alts.iter().all(|a| match a.get("type").and_then(Value::as_str) {
        Some("integer") => seen.insert("number"),
        Some(t) => seen.insert(t),
        None => false,
    })
}

/// Whether a JSON value is of a `type` (string or array of strings).
fn type_admits(t: &Value, v: &Value) -> bool {
    let one = |name: &str| match name {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    };
    match t {
        Value::String(s) => one(s),
        Value::Array(a) => a.iter().filter_map(Value::as_str).any(one),
        _ => false,
    }
}

/// outlines-core writes constant object keys into the regex unescaped: allow only keys with no regex meaning.
fn plain_keys(v: &Value) -> bool {
    match v {
        Value::Object(o) => o
            .iter()
            .all(|(k, x)| k.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == ' ') && plain_keys(x)),
        Value::Array(a) => a.iter().all(plain_keys),
        _ => true,
    }
}

/// Resolves a local `$ref` (`#/definitions/x`, `#/$defs/x`, `#`).
fn resolve<'a>(root: &'a Value, r: &str) -> Result<&'a Value> {
    let path = r.strip_prefix('#').ok_or_else(|| unsupported("$ref", &format!("to {r:?} (only local references)")))?;
    let mut node = root;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let part = part.replace("~1", "/").replace("~0", "~");
        node = node.get(&part).ok_or_else(|| Error::syntax(format!("$ref {r:?} points nowhere")))?;
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(schema: Value) -> String {
        schema_to_regex(&schema, r"[ ]?").unwrap_err().to_string()
    }

    #[test]
    fn ignored_keywords_are_named() {
        assert!(err(json!({"type": "integer", "multipleOf": 3})).contains("\"multipleOf\""));
        assert!(err(json!({"type": "integer", "minimum": 0, "multipleOf": 3})).contains("\"minimum\""));
        assert!(err(json!({"type": "number", "minimum": 0.5})).contains("fractional"));
        assert!(err(json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true})).contains("uniqueItems"));
        assert!(err(json!({"properties": {"a": {"type": "string"}}, "anyOf": [{"required": ["a"]}]})).contains("anyOf"));
        assert!(err(json!({"allOf": [{"type": "object"}, {"type": "object"}]})).contains("allOf"));
        assert!(err(json!({"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]})).contains("oneOf"));
        assert!(err(json!({"type": "string", "pattern": "a+", "maxLength": 3})).contains("together"));
        assert!(err(json!({"properties": {"n": {"type": "number", "exclusiveMaximum": 3.5}}})).contains("maximum"));
    }

    #[test]
    fn bounded_numbers_are_enforced_inside_objects() {
        let schema = json!({"type": "object", "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "n": {"type": "integer", "format": "int32"},
            "x": {"type": "number", "format": "double"}
        }, "required": ["age", "lat", "n", "x"]});
        let re =
            regex_automata::meta::Regex::new(&format!("^(?:{})$", schema_to_regex(&schema, r"[ ]?").unwrap())).unwrap();
        assert!(re.is_match(r#"{"age": 42, "lat": -12.5, "n": -7, "x": 1.5}"#));
        assert!(!re.is_match(r#"{"age": 131, "lat": -12.5, "n": -7, "x": 1}"#));
        assert!(!re.is_match(r#"{"age": 4, "lat": 90.5, "n": -7, "x": 1}"#));
        assert!(!re.is_match(r#"{"age": 4, "lat": 9, "n": 2147483648, "x": 1}"#));
    }

    #[test]
    fn enum_values_outside_the_type_are_dropped() {
        let re = schema_to_regex(&json!({"type": "string", "enum": ["a", 1, null, "b"]}), r"[ ]?").unwrap();
        let re = regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap();
        assert!(re.is_match(r#""a""#) && re.is_match(r#""b""#) && !re.is_match("1") && !re.is_match("null"));
        assert!(err(json!({"type": "integer", "enum": ["x"]})).contains("enum"));
    }

    #[test]
    fn all_of_objects_merge() {
        let schema = json!({
            "definitions": {"named": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
            "allOf": [{"$ref": "#/definitions/named"}, {"properties": {"age": {"type": "integer"}}, "required": ["age"]}]
        });
        let re =
            regex_automata::meta::Regex::new(&format!("^(?:{})$", schema_to_regex(&schema, r"[ ]?").unwrap())).unwrap();
        assert!(re.is_match(r#"{"name": "a", "age": 3}"#));
        assert!(!re.is_match(r#"{"name": "a"}"#), "both branches' required hold");
        assert!(!re.is_match(r#"{"age": 3}"#));
        let clash =
            json!({"allOf": [{"properties": {"a": {"type": "string"}}}, {"properties": {"a": {"type": "integer"}}}]});
        assert!(err(clash).contains("allOf"));
        assert!(err(json!({"allOf": [{"type": "object"}, {"type": "string"}]})).contains("allOf"));
    }

    #[test]
    fn empty_subschemas_mean_any_value() {
        let re = schema_to_regex(
            &json!({"type": "object", "properties": {"s": {}, "o": {"title": "x"}}, "required": ["s", "o"]}),
            r"[ ]?",
        )
        .unwrap();
        let m = regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap();
        assert!(m.is_match(r#"{"s": "JDBC", "o": [1, {"a": null}]}"#));
        assert!(m.is_match(r#"{"s": 1, "o": true}"#));
        assert!(!m.is_match("null"), "a bare value must not pass for the object");
    }

    #[test]
    fn supported_schemas_compile() {
        for s in [
            json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name"]}),
            json!({"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3}),
            json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
            json!({"enum": ["a", "b", 3]}),
            json!({"$defs": {"p": {"type": "string", "format": "date"}}, "properties": {"d": {"$ref": "#/$defs/p"}, "e": {"$ref": "#/$defs/p"}}}),
            json!({}),
            json!({"type": "integer", "id": "draft-04 style", "x-kubernetes-group-version-kind": [], "readonly": true}),
        ] {
            schema_to_regex(&s, r"[ ]?").unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }
}
