//! BERT, the encoder behind sentence-transformers models such as all-MiniLM-L6-v2.
//!
//! Bidirectional attention, absolute learned positions, token types, post-LayerNorm residual blocks and erf GELU,
//! as Hugging Face's `BertModel`. The batch is ragged, as in [`crate::llama`]: every token of every sequence goes
//! through the matrix products together (one `[T, H]` matrix, no padding), and attention runs per sequence, so a
//! short input beside a long one costs its own length only and the numbers are those of the input alone.
//! There is no KV cache: an encoder sees each input once.

use std::ops::Range;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::linear::Linear;
use crate::weights::SafeTensorFiles;

/// The fields of a BERT `config.json` the forward pass uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}
fn absolute() -> String {
    "absolute".into()
}

impl BertConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| Error::format(format!("config.json: {e}")))?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::format(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if cfg.position_embedding_type != "absolute" {
            return Err(Error::unsupported(format!("BERT position_embedding_type {}", cfg.position_embedding_type)));
        }
        if !matches!(cfg.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
            return Err(Error::unsupported(format!("BERT hidden_act {}", cfg.hidden_act)));
        }
        Ok(cfg)
    }
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT encoder (without the pooler head, which sentence-transformers does not use).
pub struct BertModel {
    cfg: BertConfig,
    device: Device,
    kind: Kind,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    /// `gelu` is erf GELU; the `*tanh`/`gelu_new` variants use the tanh approximation.
    gelu_tanh: bool,
    /// libtorch threads of the thread that runs the model (0: one per core).
    threads: usize,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel").field("cfg", &self.cfg).field("device", &self.device).finish()
    }
}

/// Hidden states of a ragged batch: `[T, H]` rows, sequence `i` at `rows[i]`.
#[derive(Debug)]
pub struct Hidden {
    pub tensor: Tensor,
    pub rows: Vec<Range<usize>>,
}

impl BertModel {
    /// Loads the weights of a Hugging Face `BertModel` (names with or without the `bert.` prefix).
    pub fn load(cfg: BertConfig, st: &SafeTensorFiles, device: Device, kind: Kind, threads: usize) -> Result<Self> {
        let prefix = if st.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let put = |t: Tensor| -> Result<Tensor> { Ok(t.f_to_kind(kind)?.f_to_device(device)?) };
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let full = format!("{prefix}{name}");
            let t = st.load(&full)?;
            let got: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            if got != shape {
                return Err(Error::format(format!("tensor {full} has shape {got:?}, the config implies {shape:?}")));
            }
            put(t)
        };
        let h = cfg.hidden_size;
        let norm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm { w: get(&format!("{name}.weight"), &[h])?, b: get(&format!("{name}.bias"), &[h])? })
        };
        let word = get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let position = get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?;
        let token_type = get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
        let emb_norm = norm("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let weights = |name: &str, out: usize, inp: usize| -> Result<(Tensor, Tensor)> {
                Ok((get(&format!("{p}.{name}.weight"), &[out, inp])?, get(&format!("{p}.{name}.bias"), &[out])?))
            };
            let lin = |name: &str, out: usize, inp: usize| -> Result<Linear> {
                let (w, b) = weights(name, out, inp)?;
                Ok(Linear::new(w, Some(b)))
            };
            let (q, k, v) = (
                weights("attention.self.query", h, h)?,
                weights("attention.self.key", h, h)?,
                weights("attention.self.value", h, h)?,
            );
            let qkv = Linear::new(Tensor::cat(&[&q.0, &k.0, &v.0], 0), Some(Tensor::cat(&[&q.1, &k.1, &v.1], 0)));
            layers.push(Layer {
                qkv,
                attn_out: lin("attention.output.dense", h, h)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                inter: lin("intermediate.dense", cfg.intermediate_size, h)?,
                out: lin("output.dense", h, cfg.intermediate_size)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            gelu_tanh: cfg.hidden_act != "gelu",
            threads,
            cfg,
            device,
            kind,
            word,
            position,
            token_type,
            emb_norm,
            layers,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The last layer's hidden states of each sequence (token type 0 throughout, positions from 0).
    pub fn forward(&self, batch: &[&[u32]]) -> Result<Hidden> {
        if batch.is_empty() {
            return Err(Error::invalid("empty batch"));
        }
        let vocab = self.cfg.vocab_size as u32;
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut rows = Vec::with_capacity(batch.len());
        for (i, s) in batch.iter().enumerate() {
            if s.is_empty() {
                return Err(Error::invalid(format!("sequence {i} is empty")));
            }
            if s.len() > self.cfg.max_position_embeddings {
                return Err(Error::invalid(format!(
                    "sequence {i}: {} tokens exceed the model's {} positions",
                    s.len(),
                    self.cfg.max_position_embeddings
                )));
            }
            if let Some(&t) = s.iter().find(|&&t| t >= vocab) {
                return Err(Error::invalid(format!("sequence {i}: token id {t} out of vocabulary ({vocab})")));
            }
            rows.push(ids.len()..ids.len() + s.len());
            ids.extend(s.iter().map(|&t| t as i64));
            pos.extend(0..s.len() as i64);
        }
        crate::torch::ensure_threads(self.threads);
        let tensor = tch::no_grad(|| self.forward_rows(&ids, &pos, &rows))?;
        Ok(Hidden { tensor, rows })
    }

    fn forward_rows(&self, ids: &[i64], pos: &[i64], rows: &[Range<usize>]) -> Result<Tensor> {
        let c = &self.cfg;
        let (h, nh) = (c.hidden_size as i64, c.num_attention_heads as i64);
        let d = h / nh;
        let eps = c.layer_norm_eps;
        let ln = |x: &Tensor, n: &LayerNorm| x.f_layer_norm([h], Some(&n.w), Some(&n.b), eps, false);
        let ids = Tensor::from_slice(ids).to_device(self.device);
        let pos = Tensor::from_slice(pos).to_device(self.device);
        let x = self.word.f_index_select(0, &ids)? + self.position.f_index_select(0, &pos)? + self.token_type.get(0);
        let mut x = ln(&x, &self.emb_norm)?;
        let gelu = if self.gelu_tanh { "tanh" } else { "none" };
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let mut outs = Vec::with_capacity(rows.len());
            for r in rows {
                let n = r.len() as i64;
                // [n, 3H] -> three [1, heads, n, d]
                let s = qkv.narrow(0, r.start as i64, n).view([n, 3, nh, d]).permute([1, 2, 0, 3]);
                let (q, k, v) = (s.get(0).unsqueeze(0), s.get(1).unsqueeze(0), s.get(2).unsqueeze(0));
                let o = Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false)?;
                outs.push(o.squeeze_dim(0).transpose(0, 1).reshape([n, h]));
            }
            let attn = if outs.len() == 1 { outs.pop().expect("one") } else { Tensor::f_cat(&outs, 0)? };
            x = ln(&(layer.attn_out.forward(&attn)? + &x), &layer.attn_norm)?;
            let inter = layer.inter.forward(&x)?.f_gelu(gelu)?;
            x = ln(&(layer.out.forward(&inter)? + &x), &layer.out_norm)?;
        }
        Ok(x)
    }
}
