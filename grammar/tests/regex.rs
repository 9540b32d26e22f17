//! Regex constraints: data-file cases, proptest properties, and masks consistent with advancing.

use std::sync::Arc;

use grammar::{Constraint, Grammar, Limits, Matcher, TokenBitset, TokenSpace, Vocabulary};
use proptest::prelude::*;

/// Every single byte, plus multi-byte tokens: enough to write anything, and to split it many ways.
fn byte_space(extra: &[&str]) -> Arc<TokenSpace> {
    let mut toks: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
    toks.extend(extra.iter().map(|t| Some(t.as_bytes().to_vec())));
    toks.push(None); // EOS
    let eos = toks.len() as u32 - 1;
    TokenSpace::new(Vocabulary::from_bytes(toks, &[eos]))
}

fn grammar(re: &str, space: &Arc<TokenSpace>) -> Arc<Grammar> {
    Arc::new(Grammar::from_regex(re, space.clone(), Limits::default()).unwrap())
}

/// Feeds `text` one byte-token at a time; returns whether every byte was accepted and the end accepts.
fn accepts_bytes(g: &Arc<Grammar>, text: &[u8]) -> bool {
    let mut m = Matcher::new(g.clone());
    text.iter().all(|&b| m.advance(b as u32).is_ok()) && m.is_accepting()
}

fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run through cargo test"))
}

#[test]
fn data_file_cases() {
    let text = std::fs::read_to_string(manifest_dir().join("testdata/regex_cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let space = byte_space(&["yes", "no", "foo", "bar", "baz", "true", "false", "\": "]);
    for case in cases.as_array().unwrap() {
        let re = case["regex"].as_str().unwrap();
        let g = grammar(re, &space);
        for s in case["accept"].as_array().unwrap() {
            assert!(accepts_bytes(&g, s.as_str().unwrap().as_bytes()), "{re} should accept {s}");
        }
        for s in case["reject"].as_array().unwrap() {
            assert!(!accepts_bytes(&g, s.as_str().unwrap().as_bytes()), "{re} should reject {s}");
        }
    }
}

#[test]
fn eos_only_when_complete_and_nothing_after_a_full_match() {
    let space = byte_space(&["yes", "yesno"]);
    let g = grammar("yes|no", &space);
    let eos = space.vocab.eos()[0];
    let mut m = Matcher::new(g);
    let mut mask = TokenBitset::new(space.vocab.len());
    m.mask_into(&mut mask);
    assert!(!mask.contains(eos), "EOS before any output");
    assert!(!mask.contains(257), "\"yesno\" is not in the language");
    m.advance(256).unwrap(); // "yes"
    m.mask_into(&mut mask);
    assert_eq!(mask.iter().collect::<Vec<_>>(), vec![eos], "after a complete match only EOS may follow");
    assert!(m.is_complete());
    assert!(m.advance(b'n' as u32).is_err());
    m.advance(eos).unwrap();
    assert!(m.advance(eos).is_err(), "nothing after EOS");
    m.rollback(1);
    assert!(m.is_accepting() && m.len() == 1, "rolling back EOS keeps \"yes\"");
    m.rollback(1);
    assert!(m.is_empty() && !m.is_accepting());
}

#[test]
fn forced_bytes_jump_forward() {
    let space = byte_space(&[]);
    let g = grammar(r#"\{"name": "[a-z]+", "age": [0-9]+\}"#, &space);
    let mut m = Matcher::new(g);
    assert_eq!(m.forced_bytes(), br#"{"name": ""#.to_vec());
    for &b in br#"{"name": "ann"#.iter() {
        m.advance(b as u32).unwrap();
    }
    assert!(m.forced_bytes().is_empty(), "a letter or the closing quote may follow");
    m.advance(b'"' as u32).unwrap();
    assert_eq!(m.forced_bytes(), br#", "age": "#.to_vec());
}

#[test]
fn forced_tokens_leave_a_token_that_an_allowed_longer_token_extends() {
    let tokens = |m: &Matcher, space: &TokenSpace| -> Vec<String> {
        let text = |t: u32| String::from_utf8(space.vocab.bytes(t).unwrap().to_vec()).unwrap();
        m.forced_tokens().into_iter().map(text).collect()
    };
    let re = r#"\{"name"[ ]?:[ ]?"[a-z]+"\}"#;
    // No token runs past the forced `{"name"`: all of it is appended, as the longest tokens.
    let plain = byte_space(&["{\"", "name"]);
    assert_eq!(tokens(&Matcher::new(grammar(re, &plain)), &plain), ["{\"", "name", "\""]);
    // `":` would write the closing quote and the colon at once: the quote is left to sampling.
    let colon = byte_space(&["{\"", "name", "\":"]);
    assert_eq!(tokens(&Matcher::new(grammar(re, &colon)), &colon), ["{\"", "name"]);
    // `name":` runs past it from `name` on: only `{"` is forced.
    let long = byte_space(&["{\"", "name", "name\":"]);
    assert_eq!(tokens(&Matcher::new(grammar(re, &long)), &long), ["{\""]);
    // A longer token that the grammar refuses there (`",` cannot follow the key) does not count.
    let comma = byte_space(&["{\"", "name", "\","]);
    assert_eq!(tokens(&Matcher::new(grammar(re, &comma)), &comma), ["{\"", "name", "\""]);
}

#[test]
fn forced_tokens_follow_the_tokenizer_when_it_spells_the_forced_bytes() {
    let space = byte_space(&["{\"", "na", "me", "nam"]); // ids 256..=259
    let m = Matcher::new(grammar(r#"\{"name"[ ]?:[0-9]"#, &space));
    let (brace, na, me, nam) = (256, 257, 258, 259);
    let (n, e, quote) = (b'n' as u32, b'e' as u32, b'"' as u32);
    assert_eq!(m.forced_tokens(), [brace, nam, e, quote], "the longest tokens that fit");
    assert_eq!(m.forced_tokens_with(|_| Some(vec![brace, na, me, quote])), [brace, na, me, quote]);
    // Tokens that do not spell the forced bytes exactly are not used.
    assert_eq!(m.forced_tokens_with(|_| Some(vec![brace, na, me])), [brace, nam, e, quote]);
    assert_eq!(m.forced_tokens_with(|_| Some(vec![brace, n, me, quote])), [brace, nam, e, quote]);
    assert_eq!(m.forced_tokens_with(|_| Some(vec![brace, na, me, quote, quote])), [brace, nam, e, quote]);
}

#[test]
fn bad_and_empty_constraints_are_errors() {
    let space = byte_space(&[]);
    let err = Grammar::from_regex("(unclosed", space.clone(), Limits::default()).unwrap_err();
    assert!(err.is_syntax(), "{err}");
    let err = Grammar::from_regex("x[a&&b]", space.clone(), Limits::default()).unwrap_err();
    assert!(err.to_string().contains("matches no output"), "{err}");
    let tiny = Limits { dfa_bytes: 1 << 10, determinize_bytes: 1 << 10 };
    let err = Grammar::from_regex("[a-z]{50}[0-9]{50}(x|y){30}", space, tiny).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    assert!(Constraint::Choice(vec![]).to_regex().unwrap_err().is_syntax());
    assert!(Constraint::Regex("a{".into()).to_regex().is_err());
}

#[test]
fn json_object_mode_accepts_objects_only() {
    let space = byte_space(&["{\"", "\": ", "true", "null"]);
    let g = grammar(&Constraint::JsonObject { max_depth: 3 }.to_regex().unwrap(), &space);
    for ok in [r#"{}"#, r#"{"a": 1}"#, r#"{"a": [1, 2.5, "x", null], "b": {"c": true}}"#, "{\n  \"k\": -3e2\n}"] {
        assert!(accepts_bytes(&g, ok.as_bytes()), "{ok}");
    }
    for bad in [r#"[]"#, r#"{"a": }"#, r#"{"a": 1,}"#, r#"{a: 1}"#, r#""x""#, r#"{"a": [[[[1]]]]}"#] {
        assert!(!accepts_bytes(&g, bad.as_bytes()), "{bad}");
    }
}

/// Regexes over {a, b, c} built from literals, classes, alternation, repetition and groups.
fn small_regex() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just("[ab]".to_string()),
        Just("[^a]".to_string()),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("{x}{y}")),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("({x}|{y})")),
            inner.clone().prop_map(|x| format!("({x})*")),
            inner.clone().prop_map(|x| format!("({x})?")),
            inner.prop_map(|x| format!("({x}){{1,2}}")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The matcher agrees with an independent engine on full matches, whatever the tokenization.
    #[test]
    fn agrees_with_regex_full_match(re in small_regex(), inputs in prop::collection::vec("[abc]{0,8}", 12), splits in prop::collection::vec(0usize..3, 8)) {
        let space = byte_space(&["ab", "bc", "abc", "ca", "aa"]);
        let g = grammar(&re, &space);
        let reference = regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap();
        for s in &inputs {
            let want = reference.is_match(s.as_str());
            prop_assert_eq!(accepts_bytes(&g, s.as_bytes()), want, "{} on {:?}", re, s);
            // Another tokenization of the same string: greedy multi-byte tokens where the split pattern says so.
            let mut m = Matcher::new(g.clone());
            let mut rest = s.as_bytes();
            let mut i = 0;
            let mut ok = true;
            while !rest.is_empty() {
                let n = (1 + splits[i % splits.len()]).min(rest.len());
                i += 1;
                let tok = (0..space.vocab.len() as u32).find(|&t| space.vocab.bytes(t) == Some(&rest[..n]));
                let (tok, n) = match tok { Some(t) => (t, n), None => (rest[0] as u32, 1) };
                if m.advance(tok).is_err() { ok = false; break; }
                rest = &rest[n..];
            }
            prop_assert_eq!(ok && m.is_accepting(), want, "tokenized {} on {:?}", re, s);
        }
    }

    /// Every token in a mask keeps a match reachable: after it, the output either accepts or can go on.
    #[test]
    fn allowed_tokens_never_strand_the_output(re in small_regex(), walk in prop::collection::vec(0usize..1000, 10)) {
        let space = byte_space(&["ab", "bc", "abc", "ca", "aa"]);
        let g = grammar(&re, &space);
        let mut m = Matcher::new(g);
        let mut mask = TokenBitset::new(space.vocab.len());
        for pick in walk {
            m.mask_into(&mut mask);
            let allowed: Vec<u32> = mask.iter().collect();
            prop_assert!(!allowed.is_empty(), "{}: an empty mask strands the output", re);
            for &t in &allowed {
                let mut probe = m.clone();
                prop_assert!(probe.advance(t).is_ok(), "{}: masked-in token {} refused", re, t);
                if !space.vocab.eos().contains(&t) {
                    let mut after = TokenBitset::new(space.vocab.len());
                    probe.mask_into(&mut after);
                    prop_assert!(after.count() > 0, "{}: token {} leads nowhere", re, t);
                }
            }
            let t = allowed[pick % allowed.len()];
            if space.vocab.eos().contains(&t) { break; }
            m.advance(t).unwrap();
        }
    }
}

/// A mask is exactly the set of tokens `advance` takes, in every state along a JSON output, including states
/// inside free strings, where plain tokens come from a precomputed set rather than the trie walk.
#[test]
fn masks_equal_what_advance_accepts() {
    let space = byte_space(&["ab", "a\"", "\", \"", "é", "xé", "€", "a😀", "\\n", "12", " \"k", "}\"", "\": "]);
    let schema = r#"{"type": "object", "properties": {"s": {"type": "string"}, "p": {"type": "string", "pattern": "^[a-c]+$"},
        "n": {"type": "integer"}}, "required": ["s", "p", "n"]}"#;
    let g = grammar(&Constraint::JsonSchema(schema.into()).to_regex().unwrap(), &space);
    let text = r#"{"s": "ab\nxé \"q€😀", "p": "abc", "n": 12}"#;
    let mut m = Matcher::new(g.clone());
    let n = space.vocab.len();
    let mut mask = TokenBitset::new(n);
    for &b in text.as_bytes() {
        m.mask_into(&mut mask);
        for t in 0..n as u32 - 1 {
            assert_eq!(mask.contains(t), m.clone().advance(t).is_ok(), "token {t} after {} bytes", m.len());
        }
        m.advance(b as u32).unwrap();
    }
    assert!(m.is_accepting());
}

/// A JSON Schema compiled as the server compiles it (`lenient`: undeclared keys allowed, as the spec reads an
/// absent `additionalProperties`), through the program and the lazy DFA.
fn schema_grammar(schema: serde_json::Value, lenient: bool, space: &Arc<TokenSpace>) -> Arc<Grammar> {
    let opts =
        grammar::json_schema::Options { whitespace: "[ ]?".into(), strict_properties: !lenient, ..Default::default() };
    let rx = grammar::json_schema::schema_to_rx(&schema, &opts).unwrap();
    Arc::new(Grammar::from_rx(&rx, space.clone(), Limits::default()).unwrap())
}

#[test]
fn free_values_nest_eight_levels() {
    // Each level of the free value is one shared piece called by the level above, so eight levels cost eight
    // pieces (written out as regex text they would be 2^8 copies of a string).
    let space = byte_space(&[]);
    let g = schema_grammar(serde_json::json!({"type": "object", "properties": {"x": {}}}), false, &space);
    let nested = |n: usize, inner: &str| format!(r#"{{"x": {}{inner}{}}}"#, "[".repeat(n), "]".repeat(n));
    assert!(accepts_bytes(&g, nested(8, "1").as_bytes()));
    // Three levels inside five arrays: eight.
    assert!(accepts_bytes(&g, nested(5, r#"{"a": [true, {"b": null}]}"#).as_bytes()));
    assert!(!accepts_bytes(&g, nested(6, r#"{"a": [true, {"b": null}]}"#).as_bytes()));
    assert!(!accepts_bytes(&g, nested(9, "1").as_bytes()), "nine levels are past the limit");
}

#[test]
fn objects_keep_any_order_when_a_member_is_a_large_object_in_any_order() {
    // MaskBench's Glaiveai2K calculate_area: `dimensions` takes 5 required members in any order, and 9 once its
    // `dependencies` apply (512 sets of members written). The budget for any order counts what this object's own
    // order adds, not its members' size, so the outer object still takes `shape` and `dimensions` in any order.
    let keys = ["length", "width", "radius", "base", "height"];
    let props: serde_json::Map<String, serde_json::Value> =
        keys.iter().map(|k| (k.to_string(), serde_json::json!({"type": "number"}))).collect();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "dimensions": {
                "type": "object",
                "dependencies": {"shape": ["rectangle", "circle", "triangle"]},
                "properties": props,
                "required": keys,
            },
            "shape": {"type": "string"},
        },
        "required": ["shape"],
    });
    let g = schema_grammar(schema, true, &space_for_objects());
    let dims = r#"{"height": 2, "base": 1, "length": 3, "radius": 0, "width": 1}"#;
    for ok in
        [format!(r#"{{"shape": "x", "dimensions": {dims}}}"#), format!(r#"{{"dimensions": {dims}, "shape": "x"}}"#)]
    {
        assert!(accepts_bytes(&g, ok.as_bytes()), "{ok}");
    }
    let missing = r#"{"shape": "x", "dimensions": {"height": 2, "base": 1, "length": 3, "radius": 0}}"#;
    assert!(!accepts_bytes(&g, missing.as_bytes()), "a required member left out");
}

fn space_for_objects() -> Arc<TokenSpace> {
    byte_space(&["{\"", "\": ", ", \""])
}

#[test]
fn undeclared_keys_are_any_key_but_the_declared_ones() {
    // Undeclared keys are written as "not a declared name": past a name's first character (ASCII or not) any
    // other character may follow, and a declared name takes its own schema, never the undeclared keys' one.
    let space = space_for_objects();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"a": {"type": "integer"}, "é": {"type": "integer"}, "ab": {"type": "integer"},
            "x\"y": {"type": "integer"}},
        "additionalProperties": {"type": "string"},
    });
    let g = schema_grammar(schema, true, &space);
    for ok in [
        r#"{"a": 1}"#,
        r#"{"ü": "x"}"#,
        r#"{"b": "x"}"#,
        r#"{"abc": "x"}"#,
        r#"{"éa": "x"}"#,
        r#"{"é": 2}"#,
        r#"{"😀": "x"}"#,
        // Past a declared name's prefix: a character past ASCII, an escape, a name's own escape.
        r#"{"aé": "x"}"#,
        r#"{"ab😀c": "x"}"#,
        r#"{"a\n": "x"}"#,
        r#"{"x\"y": 3}"#,
        r#"{"x\"": "x"}"#,
        r#"{"x\n": "x"}"#,
        r#"{"xé": "x"}"#,
    ] {
        assert!(accepts_bytes(&g, ok.as_bytes()), "{ok}");
    }
    for bad in [
        r#"{"a": "x"}"#,
        r#"{"ab": "x"}"#,
        r#"{"é": "x"}"#,
        r#"{"b": 1}"#,
        r#"{"aé": 1}"#,
        r#"{"a\n": 1}"#,
        r#"{"x\"y": "x"}"#,
        r#"{"x\"": 1}"#,
    ] {
        assert!(!accepts_bytes(&g, bad.as_bytes()), "{bad}");
    }
}
