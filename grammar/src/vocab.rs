//! A tokenizer's vocabulary as raw bytes: what each token id writes into the output.
//!
//! Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) stores bytes as printable characters (`Ġ` is a space, `Ċ` a
//! newline); SentencePiece stores `▁` for a space and `<0xNN>` for raw bytes. Special and added control tokens
//! (`<|im_end|>`, `<|eot_id|>`) write nothing a grammar can see: they are not grammar tokens, except the EOS ids,
//! which end a constrained output when the grammar accepts.

use std::collections::HashMap;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// Token id -> bytes, for every token a grammar may allow.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    /// `None` for special tokens (never allowed by a grammar, EOS aside).
    tokens: Vec<Option<Box<[u8]>>>,
    eos: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    ByteLevel,
    SentencePiece,
}

impl Vocabulary {
    /// Builds the vocabulary of `tok`; `eos` are the ids that end generation (several are allowed).
    pub fn from_tokenizer(tok: &Tokenizer, eos: &[u32]) -> Result<Self> {
        let doc: serde_json::Value = serde_json::to_value(tok).map_err(|e| Error::vocab(format!("{e}")))?;
        let encoding = encoding_of(&doc)?;
        let n = tok.get_vocab_size(true);
        let special: std::collections::HashSet<u32> = doc["added_tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|t| t["special"].as_bool().unwrap_or(false))
                    .filter_map(|t| t["id"].as_u64().map(|i| i as u32))
                    .collect()
            })
            .unwrap_or_default();
        let byte_of = byte_level_table();
        let mut tokens = vec![None; n];
        for (text, id) in tok.get_vocab(true) {
            let id = id as usize;
            if id >= n || special.contains(&(id as u32)) {
                continue;
            }
            let bytes = match encoding {
                Encoding::ByteLevel => text.chars().map(|c| byte_of.get(&c).copied()).collect::<Option<Vec<u8>>>(),
                Encoding::SentencePiece => Some(sentencepiece_bytes(&text)),
            };
            // Tokens whose text is not in the byte alphabet (added, non-special tokens) write their text.
            let bytes = bytes.unwrap_or_else(|| text.into_bytes());
            if !bytes.is_empty() {
                tokens[id] = Some(bytes.into_boxed_slice());
            }
        }
        if eos.iter().any(|&e| e as usize >= n) {
            return Err(Error::vocab(format!("EOS ids {eos:?} outside the vocabulary of {n}")));
        }
        for &e in eos {
            tokens[e as usize] = None;
        }
        Ok(Self { tokens, eos: eos.to_vec() })
    }

    /// A vocabulary from explicit byte strings (tests, synthetic vocabularies); `None` marks special tokens.
    pub fn from_bytes(tokens: Vec<Option<Vec<u8>>>, eos: &[u32]) -> Self {
        let mut tokens: Vec<Option<Box<[u8]>>> =
            tokens.into_iter().map(|t| t.filter(|b| !b.is_empty()).map(Vec::into_boxed_slice)).collect();
        for &e in eos {
            if let Some(t) = tokens.get_mut(e as usize) {
                *t = None;
            }
        }
        Self { tokens, eos: eos.to_vec() }
    }

    /// Number of token ids (the mask width).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    /// The bytes token `id` writes, or `None` for special tokens and EOS.
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).and_then(|t| t.as_deref())
    }
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.tokens.iter().enumerate().filter_map(|(i, t)| t.as_deref().map(|b| (i as u32, b)))
    }
}

fn encoding_of(doc: &serde_json::Value) -> Result<Encoding> {
    fn mentions(v: &serde_json::Value, what: &str) -> bool {
        match v {
            serde_json::Value::String(s) => s == what,
            serde_json::Value::Array(a) => a.iter().any(|x| mentions(x, what)),
            serde_json::Value::Object(o) => o.values().any(|x| mentions(x, what)),
            _ => false,
        }
    }
    let dec = &doc["decoder"];
    if mentions(dec, "ByteLevel") {
        Ok(Encoding::ByteLevel)
    } else if mentions(dec, "ByteFallback") || mentions(dec, "Metaspace") || mentions(dec, "\u{2581}") {
        Ok(Encoding::SentencePiece)
    } else {
        Err(Error::vocab(format!("unknown tokenizer decoder {dec}: cannot map tokens to bytes")))
    }
}

/// GPT-2's byte-to-character table, inverted: printable bytes map to themselves, the rest to U+0100 onwards.
fn byte_level_table() -> HashMap<char, u8> {
    let mut printable: Vec<u8> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut map: HashMap<char, u8> = printable.iter().map(|&b| (char::from(b), b)).collect();
    printable.sort_unstable();
    let mut extra = 0u32;
    for b in 0..=255u8 {
        if printable.binary_search(&b).is_err() {
            map.insert(char::from_u32(256 + extra).expect("valid char"), b);
            extra += 1;
        }
    }
    map
}

/// `▁` is a space and `<0xNN>` a raw byte; everything else is its UTF-8.
fn sentencepiece_bytes(text: &str) -> Vec<u8> {
    if let Some(hex) = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
        if let (2, Ok(b)) = (hex.len(), u8::from_str_radix(hex, 16)) {
            return vec![b];
        }
    }
    text.replace('\u{2581}', " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_covers_every_byte_once() {
        let t = byte_level_table();
        assert_eq!(t.len(), 256);
        let mut seen = [false; 256];
        for &b in t.values() {
            assert!(!seen[b as usize]);
            seen[b as usize] = true;
        }
        assert_eq!(t[&'\u{0120}'], b' ');
        assert_eq!(t[&'\u{010A}'], b'\n');
    }

    #[test]
    fn sentencepiece_pieces() {
        assert_eq!(sentencepiece_bytes("\u{2581}the"), b" the");
        assert_eq!(sentencepiece_bytes("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_bytes("<0xZZ>"), b"<0xZZ>");
    }
}
