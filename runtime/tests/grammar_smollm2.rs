//! The grammar engine on the real SmolLM2 tokenizer (built from the GGUF file by `kernels`).

use std::sync::Arc;

use grammar::{Constraint, Grammar, Limits, Matcher, TokenBitset, TokenSpace, Vocabulary};
use kernels::gguf::GgufFile;

use radixserve_tests::model_path;

#[test]
fn smollm2_vocabulary_and_json_constraint() {
    let g = GgufFile::open(model_path()).unwrap();
    let (tok, special) = kernels::tokenizer::from_gguf(&g).unwrap();
    let space = TokenSpace::new(Vocabulary::from_tokenizer(&tok, &special.eos).unwrap());
    assert_eq!(space.vocab.len(), 49_152);
    assert!(space.vocab.bytes(tok.token_to_id("<|im_start|>").unwrap()).is_none(), "special tokens excluded");
    for text in ["Hello world", "digits 12345 and tabs\t\n", "café 日本語 🚀", r#"{"a": [1, 2.5, null]}"#] {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| space.vocab.bytes(i).unwrap().to_vec()).collect();
        assert_eq!(bytes, text.as_bytes(), "{text:?}");
    }
    let regex = Constraint::JsonObject { max_depth: 2 }.to_regex().unwrap();
    let gr = Arc::new(Grammar::from_regex(&regex, space.clone(), Limits::default()).unwrap());
    let doc = r#"{"name": "Ann", "age": 30, "langs": ["en", "fr"]}"#;
    let mut m = Matcher::new(gr);
    let mut mask = TokenBitset::new(space.vocab.len());
    for id in tok.encode(doc, false).unwrap().get_ids() {
        m.mask_into(&mut mask);
        assert!(mask.contains(*id), "token {id} refused");
        m.advance(*id).unwrap();
    }
    m.mask_into(&mut mask);
    assert!(m.is_accepting() && mask.contains(special.eos[0]), "<|im_end|> ends the object");
}

/// Jump-forward on the real vocabulary: a forced key is written as the tokenizer writes it, and the closing
/// quote is left to the model, which writes `":` as one token.
#[test]
fn smollm2_jump_forward_writes_keys_as_the_tokenizer_does() {
    let g = GgufFile::open(model_path()).unwrap();
    let (tok, special) = kernels::tokenizer::from_gguf(&g).unwrap();
    let space = TokenSpace::new(Vocabulary::from_tokenizer(&tok, &special.eos).unwrap());
    let schema = r#"{"type": "object", "properties": {"store_failures": {"type": "integer"}},
        "required": ["store_failures"],
        "additionalProperties": false}"#;
    let rx = Constraint::JsonSchema(schema.into()).to_rx().unwrap();
    let mut m = Matcher::new(Arc::new(Grammar::from_rx(&rx, space.clone(), Limits::default()).unwrap()));
    let id = |t: &str| tok.token_to_id(t).unwrap_or_else(|| panic!("{t:?} is a token"));
    m.advance(id("{\"")).unwrap();
    let encode = |b: &[u8]| Some(tok.encode(std::str::from_utf8(b).ok()?, false).ok()?.get_ids().to_vec());
    let as_text = |ids: Vec<u32>| ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect::<Vec<_>>();
    let canonical = as_text(tok.encode("{\"store_failures\":", false).unwrap().get_ids().to_vec());
    assert_eq!(canonical, ["{\"", "store", "_", "fail", "ures", "\":"], "the model's own reading of the text");
    assert_eq!(as_text(m.forced_tokens_with(encode)), ["store", "_", "fail", "ures"]);
    assert_eq!(as_text(m.forced_tokens()), ["store", "_", "failure", "s"], "the longest tokens read it otherwise");
    let mut mask = TokenBitset::new(space.vocab.len());
    m.mask_into(&mut mask);
    for t in m.forced_tokens_with(encode) {
        m.advance(t).unwrap();
    }
    m.mask_into(&mut mask);
    assert!(mask.contains(id("\":")), "the model may close the key and write the colon at once");
}
