//! Model hyper-parameters, from GGUF metadata or a Hugging Face `config.json`.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// Architectures of the Llama family: same block, different details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3, SmolLM2, TinyLlama.
    Llama,
    /// Mistral: Llama with its own name (sliding window ignored below its window length).
    Mistral,
    /// Qwen2 / Qwen2.5: Llama with biases on the Q, K and V projections.
    Qwen2,
}

impl Arch {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "llama" | "llamaforcausallm" => Ok(Self::Llama),
            "mistral" | "mistralforcausallm" => Ok(Self::Mistral),
            "qwen2" | "qwen2forcausallm" => Ok(Self::Qwen2),
            other => Err(Error::unsupported(format!("architecture {other:?} (supported: llama, mistral, qwen2)"))),
        }
    }
    pub fn qkv_bias(self) -> bool {
        self == Self::Qwen2
    }
}

/// Llama 3.1-style RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::format(m));
        if self.num_heads == 0 || self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!("{} heads over {} KV heads", self.num_heads, self.num_kv_heads));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dim {}", self.head_dim));
        }
        if self.hidden_size == 0 || self.num_layers == 0 || self.vocab_size == 0 || self.intermediate_size == 0 {
            return bad(format!("empty model dimensions {self:?}"));
        }
        Ok(())
    }

    /// Parameters excluding the input embedding table (which is read one row per token).
    pub fn matmul_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let per_layer = h * (q + 2 * kv) + q * h + 3 * h * self.intermediate_size as u64;
        per_layer * self.num_layers as u64 + h * self.vocab_size as u64
    }

    /// Reads the `{arch}.*` keys of a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::format("missing general.architecture"))?
            .to_string();
        let arch = Arch::parse(&arch_name)?;
        let p = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<u64> {
            g.get(&p(k)).and_then(Value::as_u64).ok_or_else(|| Error::format(format!("missing {}", p(k))))
        };
        let f = |k: &str| g.get(&p(k)).and_then(Value::as_f64);
        let hidden_size = req("embedding_length")? as usize;
        let num_heads = req("attention.head_count")? as usize;
        let num_kv_heads = g.get(&p("attention.head_count_kv")).and_then(Value::as_u64).unwrap_or(num_heads as u64);
        let head_dim = match g.get(&p("attention.key_length")).and_then(Value::as_u64) {
            Some(d) => d as usize,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let vocab_size = match g.get(&p("vocab_size")).and_then(Value::as_u64) {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(<[Value]>::len)
                .ok_or_else(|| Error::format("no vocab size"))?,
        };
        let rope_scaling = match g.get(&p("rope.scaling.type")).and_then(Value::as_str) {
            None | Some("none") => None,
            Some(other) => return Err(Error::unsupported(format!("rope scaling {other:?}"))),
        };
        let cfg = Self {
            arch,
            hidden_size,
            intermediate_size: req("feed_forward_length")? as usize,
            num_layers: req("block_count")? as usize,
            num_heads,
            num_kv_heads: num_kv_heads as usize,
            head_dim,
            vocab_size,
            rms_norm_eps: f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: f("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: req("context_length").unwrap_or(4096) as usize,
            // Set by the weight loader: GGUF ties when there is no `output.weight`.
            tie_word_embeddings: g.tensor("output.weight").is_none(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let c: HfConfig = serde_json::from_str(text).map_err(|e| Error::format(format!("config.json: {e}")))?;
        let arch_name = c
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or(c.model_type.clone())
            .ok_or_else(|| Error::format("config.json names no architecture"))?;
        let arch = Arch::parse(&arch_name)?;
        let num_kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        let rope_scaling = match &c.rope_scaling {
            None => None,
            Some(s) => {
                let kind = s.rope_type.as_deref().or(s.kind.as_deref()).unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => Some(Llama3RopeScaling {
                        factor: s.factor.unwrap_or(8.0),
                        low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                        high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                        original_max_position_embeddings: s.original_max_position_embeddings.unwrap_or(8192.0),
                    }),
                    other => return Err(Error::unsupported(format!("rope_scaling type {other:?}"))),
                }
            }
        };
        let cfg = Self {
            arch,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads,
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
            vocab_size: c.vocab_size,
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: c.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRopeScaling>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
}

#[derive(Deserialize)]
struct HfRopeScaling {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llama3_rope_scaling_from_hf_config() {
        let cfg = ModelConfig::from_hf_json(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192},"tie_word_embeddings":true}"#,
        )
        .unwrap();
        assert_eq!(cfg.head_dim, 16);
        assert_eq!(cfg.rope_scaling.unwrap().factor, 8.0);
        assert!(cfg.tie_word_embeddings);
    }

    #[test]
    fn unknown_architecture_is_named() {
        let err = ModelConfig::from_hf_json(
            r#"{"architectures":["GPTNeoXForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("gptneoxforcausallm"), "{err}");
    }
}
