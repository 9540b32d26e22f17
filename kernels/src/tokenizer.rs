//! Tokenizers: a Hugging Face `tokenizer.json`, or one built from GGUF metadata.
//!
//! From GGUF we write the equivalent `tokenizer.json` document and let the `tokenizers` crate load it, so both
//! paths run the same, well-tested code. Two GGUF tokenizer models are handled:
//! - `gpt2`: byte-level BPE (SmolLM2, Llama 3, Qwen2, Mistral Nemo...), with the pre-tokenizer named by
//!   `tokenizer.ggml.pre` (the split regex differs per model family);
//! - `llama`: SentencePiece BPE with byte fallback (Llama 2, TinyLlama, Mistral 7B), merges derived from the scores.
//!
//! Tokens of type control (3) and user-defined (4) become added tokens; control ones are special.

use std::collections::HashMap;

use serde_json::{json, Value as Json};
pub use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// GPT-2's split regex (the `ByteLevel` pre-tokenizer's own).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Special ids the runtime needs besides the tokenizer itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    /// Every id that ends generation (EOS, end-of-turn, `<|eot_id|>`...).
    pub eos: Vec<u32>,
    pub add_bos: bool,
}

/// Loads a `tokenizer.json`.
pub fn from_file(path: &std::path::Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| Error::tokenizer(format!("{}: {e}", path.display())))
}

/// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
pub fn from_gguf(g: &GgufFile) -> Result<(Tokenizer, SpecialTokens)> {
    let doc = gguf_tokenizer_json(g)?;
    let tok = Tokenizer::from_bytes(doc.to_string().as_bytes())
        .map_err(|e| Error::tokenizer(format!("building the GGUF tokenizer: {e}")))?;
    let special = gguf_special_tokens(g, &tok);
    Ok((tok, special))
}

fn strings(g: &GgufFile, key: &str) -> Result<Vec<String>> {
    let arr = g.get(key).and_then(Value::as_array).ok_or_else(|| Error::tokenizer(format!("missing {key}")))?;
    arr.iter()
        .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| Error::tokenizer(format!("{key}: non-string item"))))
        .collect()
}

fn gguf_special_tokens(g: &GgufFile, tok: &Tokenizer) -> SpecialTokens {
    let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
    let bos = id("tokenizer.ggml.bos_token_id");
    let mut eos: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
    for extra in [id("tokenizer.ggml.eot_token_id"), id("tokenizer.ggml.eom_token_id")].into_iter().flatten() {
        if !eos.contains(&extra) {
            eos.push(extra);
        }
    }
    // Chat models whose template ends turns with a token other than EOS: stop on it too.
    for name in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"] {
        if let Some(i) = tok.token_to_id(name) {
            if name == "<|endoftext|>" && !eos.is_empty() {
                continue;
            }
            if !eos.contains(&i) {
                eos.push(i);
            }
        }
    }
    let add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);
    SpecialTokens { bos, eos, add_bos }
}

/// The `tokenizer.json` document equivalent to the GGUF metadata.
fn gguf_tokenizer_json(g: &GgufFile) -> Result<Json> {
    let model = g.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("gpt2");
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(Error::tokenizer(format!("{} tokens but {} token types", tokens.len(), types.len())));
    }
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(id, (content, &t))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": t == TOKEN_TYPE_USER_DEFINED, "special": t == TOKEN_TYPE_CONTROL})
        })
        .collect();
    let vocab: serde_json::Map<String, Json> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(model == "llama");
    let bos = g
        .get("tokenizer.ggml.bos_token_id")
        .and_then(Value::as_u64)
        .and_then(|i| tokens.get(i as usize).map(|t| (i, t.clone())));
    let post_processor = match (add_bos, bos) {
        (true, Some((id, content))) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": content, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": content, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": content, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {content.clone(): {"id": content, "ids": [id], "tokens": [content]}}
        }),
        _ => Json::Null,
    };
    match model {
        "gpt2" => {
            let merges = strings(g, "tokenizer.ggml.merges")?;
            let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
            Ok(json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": byte_level_pre_tokenizer(pre)?,
                "post_processor": post_processor,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                          "ignore_merges": pre.starts_with("llama"), "vocab": vocab, "merges": merges}
            }))
        }
        "llama" => {
            let scores: Vec<f64> = match g.get("tokenizer.ggml.scores").and_then(Value::as_array) {
                Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
                None => vec![0.0; tokens.len()],
            };
            let merges = sentencepiece_merges(&tokens, &scores);
            let unk = g.get("tokenizer.ggml.unknown_token_id").and_then(Value::as_u64).unwrap_or(0) as usize;
            Ok(json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false},
                "post_processor": post_processor,
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
                "model": {"type": "BPE", "dropout": null, "unk_token": tokens.get(unk), "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                          "ignore_merges": false, "vocab": vocab, "merges": merges}
            }))
        }
        other => Err(Error::unsupported(format!("GGUF tokenizer model {other:?} (supported: gpt2, llama)"))),
    }
}

/// The pre-tokenizer for a byte-level BPE, by llama.cpp's `tokenizer.ggml.pre` name.
fn byte_level_pre_tokenizer(pre: &str) -> Result<Json> {
    let byte_level_no_regex =
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false});
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level_no_regex.clone()]})
    };
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" | "starcoder" | "refact" => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
        // SmolLM and SmolLM2: every digit alone, then GPT-2's byte-level split.
        "smollm" | "smollm2" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]}),
        "llama3" | "llama-bpe" | "llama-v3" | "dbrx" | "smaug-bpe" | "tekken" => split(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT),
        other => return Err(Error::unsupported(format!("GGUF pre-tokenizer {other:?}"))),
    })
}

/// Derives BPE merges from a SentencePiece vocabulary: every way to write a token as two tokens, ranked by the
/// merged token's score (higher first), then by the pieces' ids, as Hugging Face's converters do.
fn sentencepiece_merges(tokens: &[String], scores: &[f64]) -> Vec<Json> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for (piece_id, piece) in tokens.iter().enumerate() {
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                let score = scores.get(piece_id).copied().unwrap_or(0.0);
                merges.push((score, li, ri, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges.into_iter().map(|(_, _, _, l, r)| json!([l, r])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_merges_rank_by_score() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].iter().map(|s| s.to_string()).collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -0.5, -2.0];
        let m = sentencepiece_merges(&tokens, &scores);
        assert_eq!(m[0], json!(["b", "c"]));
        assert_eq!(m[1], json!(["a", "b"]));
        assert_eq!(m.len(), 4); // abc = a+bc or ab+c
    }

    #[test]
    fn unknown_pre_tokenizer_is_named() {
        let err = byte_level_pre_tokenizer("klingon").unwrap_err();
        assert!(err.to_string().contains("klingon"));
    }
}
