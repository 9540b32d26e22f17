use serde_json::{json, Value};

use super::*;

/// The options these tests write regex text with: free values two levels deep, since regex text copies each level
/// twice into the one above (the default's eight levels are shared pieces of the program, not text).
fn text_options() -> Options {
    Options { whitespace: r"[ ]?".into(), any_depth: 2, ..Options::default() }
}

fn regex(schema: &Value) -> regex_automata::meta::Regex {
    let re = schema_to_regex_with(schema, &text_options()).unwrap_or_else(|e| panic!("{schema}: {e}"));
    regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap()
}

fn err(schema: Value) -> String {
    schema_to_regex_with(&schema, &text_options()).unwrap_err().to_string()
}

/// Every `ok` text matches and every `bad` one does not; each must agree with the schema node's own check.
fn check(schema: Value, ok: &[&str], bad: &[&str]) {
    let re = regex(&schema);
    let opts = Options::default();
    let cx = super::cx::Cx::new(opts.build_budget);
    let node = ir::Builder::new(&schema, &opts, &cx).node(&schema).unwrap();
    for t in ok {
        assert!(re.is_match(t), "{schema} should accept {t}");
        let v: Value = serde_json::from_str(t).unwrap();
        assert!(ir::admits(&cx, &node, &v).unwrap(), "{schema}: node should admit {t}");
    }
    for t in bad {
        assert!(!re.is_match(t), "{schema} should refuse {t}");
    }
}

#[test]
fn keywords_we_cannot_enforce_are_named() {
    assert!(err(json!({"type": "integer", "multipleOf": 3})).contains("\"multipleOf\""));
    assert!(err(json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true})).contains("uniqueItems"));
    assert!(err(json!({"type": "array", "items": {"enum": [1, 2]}, "uniqueItems": true, "minItems": 2}))
        .contains("uniqueItems"));
    assert!(err(json!({"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]})).contains("oneOf"));
    assert!(err(json!({"not": {"type": "string", "minLength": 3}})).contains("\"not\""));
    assert!(err(json!({"type": "string", "pattern": "(?=a)b"})).contains("pattern"));
    assert!(err(json!({"type": "string", "pattern": "^(a|bc)+$", "maxLength": 5})).contains("maxLength"));
    assert!(err(json!({"type": "string", "format": "regex"})).contains("format"));
    // {"a": 1, "a": 2} would pass a count of two members and parse to one.
    for keys in [json!({"additionalProperties": {"type": "integer"}}), json!({"patternProperties": {"^a$": {}}})] {
        let mut schema = json!({"type": "object", "minProperties": 2, "additionalProperties": false});
        schema.as_object_mut().unwrap().extend(keys.as_object().unwrap().clone());
        assert!(err(schema).contains("minProperties"));
    }
    let deps = json!({"type": "object", "dependencies": {"a": ["b"], "c": ["b"], "d": ["b"], "e": ["b"]}});
    assert!(err(deps).contains("dependencies"));
}

#[test]
fn numbers() {
    check(
        json!({"type": "object", "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "n": {"type": "integer", "format": "int32"},
            "x": {"type": "number", "format": "double"},
            "p": {"type": "number", "multipleOf": 0.01}
        }, "required": ["age", "lat", "n", "x", "p"]}),
        &[r#"{"age": 42, "lat": -12.5, "n": -7, "x": 1.5e10, "p": 3.25}"#],
        &[
            r#"{"age": 131, "lat": -12.5, "n": -7, "x": 1, "p": 1}"#,
            r#"{"age": 4, "lat": 90.5, "n": -7, "x": 1, "p": 1}"#,
            r#"{"age": 4, "lat": 9, "n": 2147483648, "x": 1, "p": 1}"#,
            r#"{"age": 4, "lat": 9, "n": 1, "x": 1, "p": 1.001}"#,
        ],
    );
    check(json!({"type": "number", "multipleOf": 1}), &["3", "-12"], &["3.5"]);
    check(
        json!({"type": "number", "exclusiveMinimum": 0.5, "maximum": 99.99}),
        &["0.51", "99.99", "7"],
        &["0.5", "100", "99.991", "-1"],
    );
    check(json!({"type": ["integer", "null"], "exclusiveMinimum": 0}), &["1", "null"], &["0", "-3", "\"x\""]);
}

#[test]
fn strings_patterns_and_formats() {
    // Patterns are searches: unanchored ends accept anything around the match.
    check(json!({"type": "string", "pattern": "ab"}), &[r#""ab""#, r#""xaby""#], &[r#""a b""#]);
    check(json!({"type": "string", "pattern": "^ab"}), &[r#""abc""#], &[r#""cab""#]);
    check(json!({"type": "string", "pattern": "^\\d{3}$"}), &[r#""123""#], &[r#""12""#, r#""１２３""#]);
    check(json!({"type": "string", "pattern": "^a|b$"}), &[r#""ax""#, r#""xb""#], &[r#""xa""#]);
    // Lengths count characters, escapes included as one.
    check(
        json!({"type": "string", "minLength": 2, "maxLength": 3}),
        &[r#""ab""#, r#""a\nb""#, r#""éé""#],
        &[r#""a""#, r#""abcd""#],
    );
    // Length beside a pattern: the one repeated class takes the bounds.
    check(
        json!({"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 4}),
        &[r#""ab_1""#],
        &[r#""ab_12""#, r#""1ab""#],
    );
    check(json!({"type": "string", "pattern": "^x", "maxLength": 3}), &[r#""x""#, r#""xyz""#], &[r#""xyzw""#]);
    // Several variable pieces share the length budget (stricter than the spec, never looser).
    check(
        json!({"type": "string", "pattern": "^[a-z]+[0-9]+$", "maxLength": 6}),
        &[r#""abc123""#, r#""a1""#],
        &[r#""abcdefg1""#, r#""abc""#],
    );
    check(
        json!({"type": "string", "format": "email", "maxLength": 40, "minLength": 8}),
        &[r#""ann@example.com""#],
        &[r#""a@b.co""#, r#""annannannannannannannann@example.example.com""#],
    );
    check(
        json!({"type": "string", "format": "date-time"}),
        &[r#""2024-02-28T10:00:00+02:00""#],
        &[r#""2024-02-28T10:00:00""#, r#""2024-02-30T10:00:00Z""#],
    );
    check(json!({"type": "string", "format": "email"}), &[r#""a.b@example.com""#], &[r#""a.b""#, r#""@x.com""#]);
    check(json!({"type": "string", "format": "ipv4"}), &[r#""10.0.0.255""#], &[r#""10.0.0.256""#]);
    check(
        json!({"type": "string", "format": "uri"}),
        &[r#""https://example.com/a?b=c#d""#],
        &[r#""example com""#, r#""/relative""#],
    );
    // Formats validators do not check are annotations.
    check(json!({"type": "string", "format": "int32"}), &[r#""anything""#], &["1"]);
}

#[test]
fn objects() {
    let named = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name"]});
    check(named, &[r#"{"name": "a"}"#, r#"{"name": "a", "age": 3}"#], &[r#"{"age": 3}"#, r#"{"name": "a", "x": 1}"#]);
    // Optional members before a required one, and all-optional objects.
    let abc = |req: Value| json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}}, "required": req});
    check(
        abc(json!(["c"])),
        &[r#"{"c": 1}"#, r#"{"a": 1, "c": 2}"#, r#"{"a": 1, "b": 2, "c": 3}"#, r#"{"b": 2, "c": 3}"#],
        &[r#"{"a": 1}"#, r#"{"a": 1,"c": 1,}"#, r#"{, "c": 1}"#, r#"{"c": 1, "a": 1}"#],
    );
    check(abc(json!([])), &["{}", r#"{"b": 1}"#, r#"{"a": 1, "c": 2}"#], &[r#"{"a": 1, }"#, r#"{, "b": 1}"#]);
    // Explicit additionalProperties: any other key, never a declared one again.
    check(
        json!({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": {"type": "string"}}),
        &[r#"{"a": 1, "b": "x"}"#, r#"{"ab": "x", "c": "y"}"#, r#"{}"#],
        &[r#"{"a": 1, "a": "x"}"#, r#"{"a": 1, "b": 2}"#],
    );
    check(
        json!({"type": "object", "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": false}),
        &[r#"{"x-a": 1, "x-b": 2}"#, "{}"],
        &[r#"{"y": 1}"#, r#"{"x-a": "s"}"#],
    );
    // Beside patterns, additionalProperties is read as false (stricter: the patterns' complement is not built).
    for additional in [json!(true), json!({"type": "string"})] {
        check(
            json!({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
                "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": additional}),
            &[r#"{"id": 1, "x-a": 1, "x-b": 2}"#, r#"{"id": 1}"#],
            &[r#"{"id": 1, "y": "s"}"#, r#"{"id": 1, "x-a": "s"}"#, r#"{"x-a": 1}"#],
        );
    }
    check(
        json!({"type": "object", "minProperties": 1, "additionalProperties": {"type": "integer"}}),
        &[r#"{"a": 1}"#],
        &["{}"],
    );
    check(json!({"type": "object", "required": ["id"]}), &[r#"{"id": [1, {"a": null}]}"#], &["{}"]);
    // Required names that only additionalProperties reaches.
    check(
        json!({"type": "object", "required": ["k"], "additionalProperties": {"type": "boolean"}}),
        &[r#"{"k": true}"#],
        &[r#"{"k": 1}"#],
    );
}

#[test]
fn all_of_any_of_one_of() {
    let schema = json!({
        "definitions": {"named": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
        "allOf": [{"$ref": "#/definitions/named"}, {"properties": {"age": {"type": "integer"}}, "required": ["age"]}]
    });
    check(schema, &[r#"{"name": "a", "age": 3}"#], &[r#"{"name": "a"}"#, r#"{"age": 3}"#]);
    check(json!({"allOf": [{"type": "integer", "minimum": 0}, {"maximum": 9}]}), &["0", "9"], &["10", "-1"]);
    assert!(err(json!({"allOf": [{"type": "string"}, {"type": "integer"}]})).contains("no value"));
    check(json!({"anyOf": [{"type": "string"}, {"type": "null"}]}), &[r#""x""#, "null"], &["1"]);
    // Discriminated oneOf: a required const tells the branches apart.
    check(
        json!({"oneOf": [
            {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]},
            {"type": "object", "properties": {"kind": {"const": "b"}, "y": {"type": "string"}}, "required": ["kind"]}
        ]}),
        &[r#"{"kind": "a", "x": 1}"#, r#"{"kind": "b", "y": "s"}"#],
        &[r#"{"kind": "c"}"#, r#"{"kind": "a", "y": "s"}"#],
    );
    check(json!({"type": "string", "enum": ["a", 1, null, "b"]}), &[r#""a""#, r#""b""#], &["1", "null"]);
    check(json!({"enum": [1, [1, 2], {"a": "b"}]}), &["1", "1.0", "[1, 2]", r#"{"a": "b"}"#], &["2", "[2, 1]"]);
}

#[test]
fn recursion_is_unrolled() {
    let tree = json!({
        "$ref": "#/$defs/node",
        "$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}
        }, "required": ["v"]}}
    });
    check(tree, &[r#"{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}"#], &[r#"{"v": 1, "kids": [{"w": 2}]}"#]);
}

#[test]
fn mutual_recursion_is_cut_at_the_same_depth_wherever_a_definition_is_met() {
    // `b` is met first outside any `a`, then at three depths of `a`; its tree, built once per context, must
    // still stop `a` at its third expansion. The "$ref" inside `default` is data, not a reference.
    let schema = json!({
        "type": "object",
        "properties": {"first": {"$ref": "#/$defs/b"}, "then": {"$ref": "#/$defs/a"}},
        "required": ["then"],
        "additionalProperties": false,
        "$defs": {
            "a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}, "x": {"$ref": "#/$defs/leaf"}},
                "additionalProperties": false},
            "b": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}, "y": {"$ref": "#/$defs/leaf"}},
                "additionalProperties": false},
            "leaf": {"type": "integer", "default": {"$ref": "not a pointer"}}
        }
    });
    let deepest = r#"{"then": {"b": {"a": {"b": {"a": {"b": {"y": 1}}}}}}}"#;
    let too_deep = r#"{"then": {"b": {"a": {"b": {"a": {"b": {"a": {}}}}}}}}"#;
    let shallow = [r#"{"then": {"x": 1}}"#, r#"{"first": {"a": {"b": {}}}, "then": {"b": {"a": {"x": 2}, "y": 3}}}"#];
    check(schema, &[shallow[0], shallow[1], deepest], &[too_deep, r#"{"then": {"b": {"x": 1}}}"#]);
}

#[test]
fn arrays() {
    check(
        json!({"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3}),
        &["[1]", "[1, 2, 3]"],
        &["[]", "[1, 2, 3, 4]"],
    );
    check(
        json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false}),
        &["[]", r#"["a"]"#, r#"["a", 1]"#],
        &[r#"["a", 1, 2]"#, "[1]"],
    );
    check(
        json!({"type": "array", "items": [{"type": "null"}], "additionalItems": {"type": "boolean"}, "minItems": 2}),
        &["[null, true]", "[null, true, false]"],
        &["[null]", "[true, true]"],
    );
    check(json!({"type": "array", "uniqueItems": true, "maxItems": 1}), &["[]", "[3]"], &["[1, 2]"]);
    check(
        json!({"type": "array", "uniqueItems": true, "items": {"enum": ["a", "b", "c"]}}),
        &["[]", r#"["a", "c"]"#, r#"["a", "b", "c"]"#],
        &[r#"["a", "a"]"#, r#"["d"]"#],
    );
}

#[test]
fn empty_subschemas_mean_any_value() {
    check(
        json!({"type": "object", "properties": {"s": {}, "o": {"title": "x"}}, "required": ["s", "o"]}),
        &[r#"{"s": "JDBC", "o": [1, {"a": null}]}"#, r#"{"s": 1, "o": true}"#],
        &["null"],
    );
    check(json!({}), &["null", "1", r#"{"a": [1]}"#], &["nul"]);
}

#[test]
fn supported_schemas_compile() {
    for s in [
        json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
        json!({"$defs": {"p": {"type": "string", "format": "date"}}, "properties": {"d": {"$ref": "#/$defs/p"}, "e": {"$ref": "#/$defs/p"}}}),
        json!({"type": "integer", "id": "draft-04 style", "x-kubernetes-group-version-kind": [], "readonly": true}),
        json!(true),
    ] {
        schema_to_regex_with(&s, &text_options()).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

#[test]
fn simple_negations() {
    check(
        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"not": {}}}, "additionalProperties": true}),
        &[r#"{"a": 1}"#, r#"{"a": 1, "c": 2}"#],
        &[r#"{"a": 1, "b": 2}"#],
    );
    check(json!({"not": {"type": ["string", "object", "array"]}}), &["null", "true", "1.5"], &[r#""x""#, "{}", "[]"]);
    check(
        json!({"type": "object", "properties": {"x": {"type": "string"}}, "not": {"required": ["x"]}}),
        &["{}"],
        &[r#"{"x": "a"}"#],
    );
}

#[test]
fn dependencies_split_the_object() {
    check(
        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "dependencies": {"a": ["b"]}}),
        &["{}", r#"{"b": 1}"#, r#"{"a": 1, "b": 2}"#],
        &[r#"{"a": 1}"#],
    );
    check(
        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
               "dependentSchemas": {"a": {"properties": {"b": {"maxLength": 1}}, "required": ["b"]}}}),
        &[r#"{"b": "long"}"#, r#"{"a": 1, "b": "x"}"#],
        &[r#"{"a": 1, "b": "long"}"#, r#"{"a": 1}"#],
    );
}

mod props {
    use proptest::prelude::*;
    use serde_json::json;

    /// Patterns, and a generator of strings that mostly match each.
    const PATTERNS: &[(&str, &str)] = &[
        ("^[a-z]+[0-9]*$", "[a-z]{1,6}[0-9]{0,3}"),
        ("^(ab|c)+$", "(ab|c){1,5}"),
        ("x", "[a-cé]{0,3}x[a-c]{0,3}"),
        ("^a", "a[a-c]{0,6}"),
        ("[0-9]{2}$", "[a-c]{0,3}[0-9]{1,3}"),
        ("^[a-c]{1,3}-[0-9]+$", "[a-c]{1,4}-[0-9]{1,3}"),
        ("^.+@.+$", "[a-c]{0,4}@[a-cé.]{0,4}"),
    ];

    fn case() -> impl Strategy<Value = (usize, String)> {
        (0..PATTERNS.len()).prop_flat_map(|p| {
            let near = proptest::string::string_regex(PATTERNS[p].1).unwrap();
            (Just(p), prop_oneof![near, "[a-cx0-9@.é-]{0,12}"])
        })
    }

    proptest! {
        /// Whatever the regex for a string with a pattern and length bounds accepts satisfies both: the pattern
        /// (an independent regex search) and the length in characters.
        #[test]
        fn strings_never_escape_pattern_and_length((p, s) in case(), min in 0u64..6, max in proptest::option::of(0u64..10)) {
            let pattern = PATTERNS[p].0;
            let mut schema = json!({"type": "string", "pattern": pattern, "minLength": min});
            if let Some(m) = max {
                schema["maxLength"] = json!(m);
            }
            let Ok(re) = super::super::schema_to_regex(&schema, "") else { return Ok(()) };
            let re = regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap();
            if re.is_match(&serde_json::Value::String(s.clone()).to_string()) {
                let n = s.chars().count() as u64;
                prop_assert!(n >= min && max.is_none_or(|m| n <= m), "{schema}: {s:?} has {n} characters");
                prop_assert!(regex_automata::meta::Regex::new(pattern).unwrap().is_match(&s), "{schema}: {s:?}");
            }
        }
    }
}

#[test]
fn lenient_objects_and_one_of() {
    let lenient = Options { strict_properties: false, ..text_options() };
    let compile = |s: &Value| {
        let re = schema_to_regex_with(s, &lenient).unwrap();
        regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap()
    };
    // The spec's reading: undeclared keys are allowed, with any value.
    let re = compile(&json!({"type": "object", "properties": {"a": {"type": "integer"}}}));
    assert!(re.is_match(r#"{"a": 1, "b": [1, {"c": null}]}"#) && !re.is_match(r#"{"a": 1, "a": "x"}"#));
    // Nothing required: any order (written twice, a key keeps a valid value either way).
    let re = compile(&json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}));
    assert!(re.is_match(r#"{"b": "x", "a": 1}"#) && re.is_match(r#"{"z": null, "a": 1}"#) && re.is_match("{}"));
    assert!(!re.is_match(r#"{"b": 1}"#) && !re.is_match(r#"{"a": 1,}"#));
    // A few required members: any order, each exactly once.
    let re = compile(
        &json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "null"}}, "required": ["a", "b"]}),
    );
    for ok in [r#"{"b": "x", "a": 1}"#, r#"{"c": null, "a": 1, "z": 0, "b": "y"}"#, r#"{"a": 1, "b": "x", "c": null}"#]
    {
        assert!(re.is_match(ok), "{ok}");
    }
    for bad in [r#"{"a": 1}"#, r#"{"a": 1, "c": null}"#, r#"{"b": "x", "a": "1"}"#, r#"{"a": 1 "b": "x"}"#] {
        assert!(!re.is_match(bad), "{bad}");
    }
    // Alternatives told apart by their required keys are written without undeclared keys.
    let re = compile(&json!({"oneOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}
    ]}));
    assert!(re.is_match(r#"{"a": 1}"#) && re.is_match(r#"{"b": 1}"#));
    assert!(!re.is_match(r#"{"a": 1, "b": 2}"#), "valid against both alternatives, so invalid for oneOf");
    // oneOf of required sets beside properties: each alternative leaves out the others' keys.
    let re = compile(
        &json!({"type": "object", "properties": {"r": {"type": "number"}, "w": {"type": "number"}, "h": {"type": "number"}},
        "oneOf": [{"required": ["r"]}, {"required": ["w", "h"]}]}),
    );
    assert!(re.is_match(r#"{"r": 1}"#) && re.is_match(r#"{"w": 1, "h": 2}"#));
    assert!(!re.is_match(r#"{"r": 1, "w": 1, "h": 2}"#) && !re.is_match(r#"{"w": 1}"#));
}

#[test]
fn lenient_objects_take_many_required_members_in_any_order() {
    use regex_automata::nfa::thompson::pikevm::PikeVM;
    use regex_automata::{Anchored, Input};
    let lenient = Options { whitespace: "[ ]?".into(), strict_properties: false, ..Options::default() };
    let keys = ["a", "b", "c", "d", "e", "f", "g"];
    let mut props: serde_json::Map<String, Value> =
        keys.iter().map(|k| (k.to_string(), json!({"type": "integer"}))).collect();
    props.insert("z".into(), json!({"type": "integer"}));
    let schema = json!({"type": "object", "properties": props, "required": keys, "additionalProperties": false});
    // Seven required members: 5040 orders, followed as 128 sets of members written (too many to print).
    let rx = schema_to_rx(&schema, &lenient).unwrap();
    assert!(rx.to_hir().is_err());
    let nfa = crate::Rx::concat(vec![rx, crate::Rx::literal(b"#")]).to_nfa(1 << 28).unwrap().unwrap();
    let vm = PikeVM::new_from_nfa(nfa).unwrap();
    let accepts = |t: &str| {
        let hay = format!("{t}#");
        vm.is_match(&mut vm.create_cache(), Input::new(&hay).anchored(Anchored::Yes))
    };
    let object = |order: &[&str]| {
        let members: Vec<String> = order.iter().map(|k| format!("\"{k}\": 1")).collect();
        format!("{{{}}}", members.join(", "))
    };
    assert!(accepts(&object(&keys)));
    assert!(accepts(&object(&["g", "e", "c", "a", "f", "d", "b"])));
    assert!(accepts(&object(&["d", "z", "a", "b", "c", "e", "f", "g"])), "optional members anywhere");
    assert!(!accepts(&object(&["d", "y", "a", "b", "c", "e", "f", "g"])), "no undeclared keys");
    assert!(!accepts(&object(&["g", "e", "c", "a", "f", "d"])), "a required member missing");
    assert!(!accepts(&object(&["g", "e", "c", "a", "f", "d", "b", "a"])), "a required member twice");
}

#[test]
fn a_schema_that_distributes_for_too_long_is_refused_in_its_budget() {
    // allOf of anyOfs: each level multiplies the alternatives by 8 (8^7 ranges of integers at the end).
    let level = |k: i64| json!({"anyOf": (0..8).map(|i| json!({"type": "integer", "minimum": -1000 * k - i})).collect::<Vec<_>>()});
    let schema = json!({"allOf": (1..=7).map(level).collect::<Vec<_>>()});
    let opts = Options { build_budget: std::time::Duration::from_millis(50), ..Options::default() };
    let started = std::time::Instant::now();
    let e = schema_to_rx(&schema, &opts).unwrap_err();
    assert!(e.is_too_large() && e.to_string().contains("allOf"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    // Within budget, the same construction a few levels deep compiles.
    let small = json!({"allOf": (1..=2).map(level).collect::<Vec<_>>()});
    assert!(schema_to_rx(&small, &opts).is_ok());
}

#[test]
fn if_then_else_on_a_discriminator() {
    let schema = json!({
        "type": "object",
        "properties": {"kind": {"enum": ["a", "b", "c"]}, "x": {"type": "integer"}, "y": {"type": "string"}},
        "required": ["kind"],
        "if": {"properties": {"kind": {"const": "a"}}},
        "then": {"required": ["x"]},
        "else": {"required": ["y"]}
    });
    check(
        schema,
        &[r#"{"kind": "a", "x": 1}"#, r#"{"kind": "b", "y": "s"}"#, r#"{"kind": "c", "x": 2, "y": "s"}"#],
        &[r#"{"kind": "a", "y": "s"}"#, r#"{"kind": "b", "x": 1}"#, r#"{"kind": "d", "y": "s"}"#],
    );
    // A condition on a free string cannot be negated into a regex.
    assert!(err(json!({"properties": {"s": {"type": "string"}}, "if": {"properties": {"s": {"const": "a"}}}, "then": {"required": ["s"]}}))
        .contains("\"not\""));
}

/// A recursive schema too large with recursion three levels deep is cut one level sooner instead of refused:
/// shallow instances still pass, and the cut never lets through more than the schema allows.
#[test]
fn recursion_is_cut_sooner_when_the_regex_grows_too_large() {
    let props: serde_json::Map<String, Value> =
        (0..24).map(|i| (format!("child_number_{i}"), json!({"$ref": "#"}))).collect();
    let schema = json!({"type": "object", "properties": props, "additionalProperties": false});
    let deep = Options { max_ref_depth: 3, ..Options::default() };
    let cx = super::cx::Cx::new(deep.build_budget);
    let mut emitter = emit::Emitter::new(&deep, &cx).unwrap();
    let three = ir::Builder::new(&schema, &deep, &cx).node(&schema).and_then(|node| emitter.emit(&node));
    assert!(three.is_err_and(|e| e.is_too_large()), "too large three levels deep");
    let re = schema_to_regex(&schema, r"[ ]?").unwrap();
    let re = regex_automata::meta::Builder::new()
        .configure(regex_automata::meta::Config::new().nfa_size_limit(Some(1 << 30)))
        .build(&format!("^(?:{re})$"))
        .unwrap();
    for ok in
        [r#"{}"#, r#"{"child_number_0": {}}"#, r#"{"child_number_3": {"child_number_23": {}}, "child_number_5": {}}"#]
    {
        assert!(re.is_match(ok), "{ok}");
    }
    for bad in [r#"{"child_number_0": 1}"#, r#"{"other": {}}"#, r#"{"child_number_0": {"x": {}}}"#] {
        assert!(!re.is_match(bad), "{bad}");
    }
}

/// Issue #20: an object with `maxProperties` (or `minProperties`, `propertyNames`, `additionalProperties: false`)
/// and no declared `properties`, nested under a declared property, kept its members unbounded.
#[test]
fn count_and_name_bounds_of_an_undeclared_object_hold_when_nested() {
    let nested = |inner: Value| json!({"type": "object", "properties": {"params": inner}});
    check(
        nested(json!({"type": "object", "maxProperties": 0})),
        &[r#"{"params": {}}"#, "{}"],
        &[r#"{"params": {"key": "value"}}"#],
    );
    check(
        nested(json!({"type": "object", "maxProperties": 1})),
        &[r#"{"params": {}}"#, r#"{"params": {"a": 1}}"#],
        &[r#"{"params": {"a": 1, "b": 2}}"#],
    );
    check(nested(json!({"type": "object", "minProperties": 1})), &[r#"{"params": {"a": 1}}"#], &[r#"{"params": {}}"#]);
    // No object has at least one member and at most none: `params` cannot be written.
    check(
        nested(json!({"type": "object", "minProperties": 1, "maxProperties": 0})),
        &["{}"],
        &[r#"{"params": {}}"#, r#"{"params": {"a": 1}}"#],
    );
    check(
        nested(json!({"type": "object", "additionalProperties": false})),
        &[r#"{"params": {}}"#],
        &[r#"{"params": {"a": 1}}"#],
    );
    check(
        nested(json!({"type": "object", "propertyNames": {"maxLength": 2}})),
        &[r#"{"params": {"ab": 1}}"#],
        &[r#"{"params": {"abc": 1}}"#],
    );
}

/// The same shape for arrays: `maxItems: 0` (alone, beside `prefixItems`, nested) leaves only the empty array.
#[test]
fn max_items_zero_leaves_only_the_empty_array() {
    let nested = |inner: Value| json!({"type": "object", "properties": {"xs": inner}});
    check(nested(json!({"type": "array", "maxItems": 0})), &[r#"{"xs": []}"#], &[r#"{"xs": [1]}"#]);
    check(
        nested(json!({"type": "array", "prefixItems": [{"type": "integer"}], "maxItems": 0})),
        &[r#"{"xs": []}"#],
        &[r#"{"xs": [1]}"#],
    );
    check(json!({"type": "array", "items": {"type": "integer"}, "maxItems": 0}), &["[]"], &["[1]", "[1, 2]"]);
}

/// An integer range with no member is no value: refused at the top (no output is JSON), left out where optional.
/// (It compiled to a regex matching only the empty output; found by tests/soundness.rs.)
#[test]
fn an_empty_integer_range_admits_nothing() {
    assert!(err(json!({"type": "integer", "minimum": 4, "maximum": 2})).contains("no value"));
    assert!(err(json!({"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 4})).contains("no value"));
    check(
        json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 4, "maximum": 2}}}),
        &["{}"],
        &[r#"{"n": 3}"#, r#"{"n": }"#],
    );
}

/// Likewise a string whose length bounds cross (found by tests/soundness.rs: it admitted two characters).
#[test]
fn crossed_string_length_bounds_admit_nothing() {
    assert!(err(json!({"type": "string", "minLength": 2, "maxLength": 1})).contains("no value"));
    check(
        json!({"type": "object", "properties": {"s": {"type": "string", "minLength": 3, "maxLength": 2, "pattern": "^a+$"}}}),
        &["{}"],
        &[r#"{"s": "aa"}"#, r#"{"s": "aaa"}"#],
    );
    assert!(err(json!({"allOf": [{"type": "string", "minLength": 3}, {"maxLength": 2}]})).contains("no value"));
}

#[test]
fn a_refd_object_is_written_once_however_often_it_is_used() {
    // Each use of `#/$defs/point` is the same object of the tree, written once: the program compiles it once and
    // calls it at every use, so forty uses weigh forty keys and calls more than one, not forty objects.
    let point: serde_json::Map<String, Value> = (0..12)
        .map(|i| (format!("coordinate_{i}"), json!({"type": "number", "minimum": -90, "maximum": 90})))
        .collect();
    let schema = |uses: usize| {
        let props: serde_json::Map<String, Value> =
            (0..uses).map(|i| (format!("p{i}"), json!({"$ref": "#/$defs/point"}))).collect();
        json!({"$defs": {"point": {"type": "object", "properties": point, "required": ["coordinate_0"]}},
               "type": "object", "properties": props})
    };
    let weight = |uses| schema_to_rx(&schema(uses), &Options::default()).unwrap().weight();
    let (one, two, forty) = (weight(1), weight(2), weight(40));
    let object = two - one;
    assert!(object < one / 4, "a second use weighs {object} of {one}");
    assert!(forty < one + 39 * object * 2, "forty uses weigh {forty}, one {one}");
}

#[test]
fn undeclared_keys_beside_declared_names_take_few_states_per_name() {
    // An object that takes undeclared keys writes them as "not a declared name": at every character of every
    // name, the characters no name goes on with. Past ASCII (and the escapes) that is one called piece, not a
    // class compiled again at each of the names' characters.
    let name =
        |i: usize| -> String { (0..24).map(|j| (b'a' + ((i * 7 + j * 13 + i * j) % 26) as u8) as char).collect() };
    let schema = |n: usize| {
        let props: serde_json::Map<String, Value> = (0..n).map(|i| (name(i), json!({"type": "integer"}))).collect();
        json!({"type": "object", "properties": props})
    };
    let lenient = Options { strict_properties: false, ..Default::default() };
    let states = |n| schema_to_rx(&schema(n), &lenient).unwrap().to_program(1 << 28).unwrap().unwrap().states.len();
    // 24-character names: 103 states each, 168 when every name character held its own class.
    let per_name = (states(40) - states(20)) / 20;
    assert!(per_name < 130, "a name of 24 characters adds {per_name} program states");
}
