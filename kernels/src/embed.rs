//! Embedding models: a sentence-transformers folder (a BERT encoder, its pooling and normalization as the folder
//! declares them), or a decoder model whose final hidden states are pooled (vLLM's `--convert embed`, SGLang's
//! `--is-embedding`).
//!
//! A sentence-transformers folder is read the way `SentenceTransformer(path)` reads it: `modules.json` lists the
//! modules in order (Transformer, Pooling in `1_Pooling/config.json`, optionally Normalize);
//! `sentence_bert_config.json` gives `max_seq_length`, the longest input (longer ones are refused or truncated by
//! the caller, never silently cut here).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

use crate::bert::{BertConfig, BertModel};
use crate::error::{Error, Result};
use crate::kv::KvPool;
use crate::llama::{LlamaModel, LogitsFor, Progress, SeqInput};
use crate::model::{LoadOptions, Model};
use crate::tokenizer::{self, Tokenizer};
use crate::weights::SafeTensorFiles;

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the input's tokens.
    Mean,
    /// The first token's state (BERT's `[CLS]`).
    Cls,
    /// The last token's state (decoder models: the only token that has seen the whole input).
    Last,
    /// The component-wise maximum over tokens.
    Max,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mean" => Ok(Self::Mean),
            "cls" => Ok(Self::Cls),
            "last" | "lasttoken" => Ok(Self::Last),
            "max" => Ok(Self::Max),
            other => Err(format!("unknown pooling {other:?} (mean, cls, last, max)")),
        }
    }
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Cls => "cls",
            Self::Last => "last",
            Self::Max => "max",
        }
    }

    /// From a sentence-transformers `1_Pooling/config.json`.
    fn from_sentence_transformers(cfg: &Json) -> Result<Self> {
        let on = |k: &str| cfg.get(k).and_then(Json::as_bool).unwrap_or(false);
        let modes = [
            ("pooling_mode_mean_tokens", Self::Mean),
            ("pooling_mode_cls_token", Self::Cls),
            ("pooling_mode_lasttoken", Self::Last),
            ("pooling_mode_max_tokens", Self::Max),
        ];
        let chosen: Vec<Self> = modes.iter().filter(|(k, _)| on(k)).map(|&(_, p)| p).collect();
        if on("pooling_mode_mean_sqrt_len_tokens") || on("pooling_mode_weightedmean_tokens") {
            return Err(Error::unsupported("sentence-transformers pooling mean_sqrt_len / weightedmean"));
        }
        match chosen.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::format("1_Pooling/config.json turns no pooling mode on")),
            _ => Err(Error::unsupported("several pooling modes concatenated")),
        }
    }

    /// Pools rows `[n, H]` of one sequence into `[H]`.
    fn pool(self, rows: &Tensor) -> Tensor {
        match self {
            Self::Mean => rows.mean_dim(0, false, Kind::Float),
            Self::Cls => rows.get(0),
            Self::Last => rows.get(rows.size()[0] - 1),
            Self::Max => rows.amax(0, false),
        }
    }
}

enum Net {
    Bert(BertModel),
    /// A decoder and a scratch KV pool as large as one call's tokens (nothing is kept between calls).
    Decoder {
        model: Box<LlamaModel>,
        kv: KvPool,
    },
}

/// A model that turns token sequences into vectors.
pub struct EmbeddingModel {
    /// A short name for `/v1/models` (folder name or file stem).
    pub name: String,
    pub path: PathBuf,
    pub tokenizer: Tokenizer,
    pub pooling: Pooling,
    /// Whether vectors are scaled to unit length.
    pub normalize: bool,
    /// The longest input, in tokens.
    pub max_tokens: usize,
    net: Net,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("name", &self.name)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("dim", &self.dim())
            .finish()
    }
}

/// Tokens one decoder-embedding call computes at most (larger batches are split).
const DECODER_CALL_TOKENS: usize = 4096;

impl EmbeddingModel {
    /// Loads a sentence-transformers folder (or a plain Hugging Face BERT folder: mean pooling, normalized).
    /// `pooling` overrides what the folder declares.
    pub fn load_encoder(dir: &Path, opts: LoadOptions, pooling: Option<Pooling>) -> Result<Self> {
        // On one libtorch thread: see `torch::Threads`.
        let _one = crate::torch::Threads::hold(1);
        let read_json = |f: &str| -> Result<Option<Json>> {
            let p = dir.join(f);
            if !p.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(p.display(), e))?;
            serde_json::from_str(&text).map(Some).map_err(|e| Error::format(format!("{}: {e}", p.display())))
        };
        let modules = read_json("modules.json")?;
        let types: Vec<(String, String)> = modules
            .as_ref()
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .map(|m| {
                        let s = |k: &str| m.get(k).and_then(Json::as_str).unwrap_or_default().to_string();
                        (s("type"), s("path"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let has = |t: &str| types.iter().any(|(ty, _)| ty.ends_with(t));
        for (ty, _) in &types {
            let known = ["models.Transformer", "models.Pooling", "models.Normalize"];
            if !known.iter().any(|k| ty.ends_with(k)) {
                return Err(Error::unsupported(format!("sentence-transformers module {ty}")));
            }
        }
        let declared = match types.iter().find(|(ty, _)| ty.ends_with("models.Pooling")) {
            Some((_, path)) => {
                let cfg = read_json(&format!("{path}/config.json"))?
                    .ok_or_else(|| Error::format(format!("{}: no {path}/config.json", dir.display())))?;
                Pooling::from_sentence_transformers(&cfg)?
            }
            None => Pooling::Mean,
        };
        let normalize = if modules.is_some() { has("models.Normalize") } else { true };
        let cfg_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| Error::io(dir.join("config.json").display(), e))?;
        let cfg = BertConfig::from_json(&cfg_text).map_err(|e| e.in_file(dir.display()))?;
        let max_seq = read_json("sentence_bert_config.json")?
            .and_then(|c| c.get("max_seq_length").and_then(Json::as_u64))
            .map(|n| n as usize)
            .unwrap_or(cfg.max_position_embeddings)
            .min(cfg.max_position_embeddings);
        let mut tok = tokenizer::from_file(&dir.join("tokenizer.json"))?;
        // Lengths are the caller's business: no silent cut at tokenizer.json's own limit, no padding.
        tok.with_truncation(None).map_err(|e| Error::tokenizer(e.to_string()))?;
        tok.with_padding(None);
        let st = SafeTensorFiles::open_folder(dir)?;
        let net = BertModel::load(cfg, &st, opts.device, opts.kind, opts.threads)?;
        Ok(Self {
            name: folder_name(dir),
            path: dir.to_path_buf(),
            tokenizer: tok,
            pooling: pooling.unwrap_or(declared),
            normalize,
            max_tokens: max_seq,
            net: Net::Bert(net),
        })
    }

    /// A decoder model (GGUF or Hugging Face folder) as an embedder: `pooling` (default last token) over its final
    /// hidden states (after the final norm), scaled to unit length.
    pub fn load_decoder(
        path: &Path,
        opts: LoadOptions,
        pooling: Option<Pooling>,
        progress: Progress<'_>,
    ) -> Result<Self> {
        let m = Model::load(path, opts, progress)?;
        let kv = m.net.new_kv_pool(DECODER_CALL_TOKENS)?;
        let max_tokens = m.net.max_positions().min(DECODER_CALL_TOKENS);
        Ok(Self {
            name: m.name,
            path: m.path,
            tokenizer: m.tokenizer,
            pooling: pooling.unwrap_or(Pooling::Last),
            normalize: true,
            max_tokens,
            net: Net::Decoder { model: Box::new(m.net), kv },
        })
    }

    /// Loads `path` as an embedder: a folder with a BERT `config.json` is an encoder, anything else a decoder.
    pub fn load(path: &Path, opts: LoadOptions, pooling: Option<Pooling>, progress: Progress<'_>) -> Result<Self> {
        if path.is_dir() && is_bert_folder(path) {
            Self::load_encoder(path, opts, pooling)
        } else {
            Self::load_decoder(path, opts, pooling, progress)
        }
    }

    /// The vectors' length.
    pub fn dim(&self) -> usize {
        match &self.net {
            Net::Bert(b) => b.config().hidden_size,
            Net::Decoder { model, .. } => model.config().hidden_size,
        }
    }

    /// Whether the model's products run on AMX tiles ([`crate::amx`]; encoders on CPUs that have them).
    pub fn on_tiles(&self) -> bool {
        matches!(&self.net, Net::Bert(b) if b.on_tiles())
    }

    /// Whether this is an encoder (BERT) rather than a pooled decoder.
    pub fn is_encoder(&self) -> bool {
        matches!(self.net, Net::Bert(_))
    }

    /// The input ids for a text, with the special tokens the model's tokenizer adds (`[CLS]`/`[SEP]` for BERT).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| Error::tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// One pooled (and, if the model says so, unit-length) vector per input, in order. Every input must be
    /// non-empty and at most [`Self::max_tokens`] long.
    pub fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if let Some((i, s)) = batch.iter().enumerate().find(|(_, s)| s.is_empty() || s.len() > self.max_tokens) {
            return Err(Error::invalid(format!("input {i} has {} tokens (1 to {} allowed)", s.len(), self.max_tokens)));
        }
        let (pooling, normalize) = (self.pooling, self.normalize);
        let finish = |hidden: &Tensor, rows: &[std::ops::Range<usize>]| -> Result<Vec<Vec<f32>>> {
            let pooled: Vec<Tensor> =
                rows.iter().map(|r| pooling.pool(&hidden.narrow(0, r.start as i64, r.len() as i64))).collect();
            let mut v = Tensor::f_stack(&pooled, 0)?.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?;
            if normalize {
                // torch.nn.functional.normalize: x / max(||x||, 1e-12)
                let norm = (&v * &v).f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?.sqrt().clamp_min(1e-12);
                v /= norm;
            }
            let dim = v.size()[1] as usize;
            let flat = Vec::<f32>::try_from(v.flatten(0, -1)).map_err(Error::from)?;
            Ok(flat.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
        };
        match &mut self.net {
            Net::Bert(b) => {
                let out = b.forward(batch)?;
                tch::no_grad(|| finish(&out.tensor, &out.rows))
            }
            Net::Decoder { model, kv } => {
                let mut result = Vec::with_capacity(batch.len());
                let mut start = 0;
                while start < batch.len() {
                    // As many inputs as fit in the scratch pool (each fits alone: max_tokens <= pool).
                    let mut end = start;
                    let mut tokens = 0;
                    while end < batch.len() && tokens + batch[end].len() <= kv.num_slots() {
                        tokens += batch[end].len();
                        end += 1;
                    }
                    let mut next = 0u32;
                    let slots: Vec<Vec<u32>> = batch[start..end]
                        .iter()
                        .map(|s| {
                            let r = (next..next + s.len() as u32).collect();
                            next += s.len() as u32;
                            r
                        })
                        .collect();
                    let inputs: Vec<SeqInput<'_>> = batch[start..end]
                        .iter()
                        .zip(&slots)
                        .map(|(s, sl)| SeqInput {
                            context_slots: &[],
                            tokens: s,
                            new_slots: sl,
                            logits: LogitsFor::All,
                        })
                        .collect();
                    let out = model.forward_hidden(kv, &inputs)?;
                    result.extend(tch::no_grad(|| finish(&out.tensor, &out.rows))?);
                    start = end;
                }
                Ok(result)
            }
        }
    }
}

fn folder_name(dir: &Path) -> String {
    dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_string())
}

/// Whether `dir` holds a BERT model (`config.json` with `model_type` `bert`).
pub fn is_bert_folder(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Json>(&t).ok())
        .and_then(|c| c.get("model_type").and_then(Json::as_str).map(|m| m == "bert"))
        .unwrap_or(false)
}
