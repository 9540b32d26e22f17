//! Loading a whole model: a GGUF file, or a Hugging Face folder.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tch::{Device, Kind};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::llama::{LlamaModel, Progress};
use crate::tokenizer::{self, SpecialTokens, Tokenizer};
use crate::weights::{SafeTensorFiles, WeightSource};

/// Where and in what precision to run.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: Device,
    pub kind: Kind,
    /// libtorch intra-op threads of the thread that runs the model (0: one per core).
    pub threads: usize,
    /// How a GGUF file's quantized matrices are held on the CPU.
    pub weights: WeightFormat,
}

/// How a GGUF file's quantized matrices are held on the CPU (other devices and dtypes always dequantize).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As their blocks (about the file's size in memory), computed as [`Self::QuantizedExact`] where the CPU has
    /// AVX-512 F, BW and VNNI, whose kernels run llama.cpp's numerics at the f32 path's prompt speed, and as
    /// [`Self::QuantizedF32Prefill`] elsewhere: with AVX2 alone the exact prompts run at 0.70x (SmolLM2) and
    /// 0.41x (Qwen2.5) the f32 path's speed, where the f32-GEMM prompts keep 0.95x and 0.92x (`make
    /// bench-model` with `RADIXSERVE_NO_AVX512=1`, BENCHMARKS.md session 14).
    #[default]
    Quantized,
    /// The same blocks, every step computed as llama.cpp's CPU backend computes it, to the bit (activations
    /// rounded to int8, products in integers, and the rest of the layer in [`crate::ggml_ops`]): outputs equal
    /// llama.cpp's on the same GGUF, on any CPU with AVX2, FMA and F16C. Without F16C, or for models with Llama 3
    /// rope scaling, steps run as [`Self::QuantizedF32Prefill`].
    QuantizedExact,
    /// The same blocks; steps of up to 32 tokens in integers, longer ones (prompts) multiplying the activations as
    /// they are by the weights dequantized a chunk at a time (libtorch's f32 GEMM), with libtorch's norms and
    /// attention: closer to f32 than to llama.cpp, not equal to either.
    QuantizedF32Prefill,
    /// Dequantized to f32 at load (the numerics reference; about 8x the memory of a 4-bit file).
    F32,
}

impl std::str::FromStr for WeightFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quantized" => Ok(Self::Quantized),
            "quantized-exact" => Ok(Self::QuantizedExact),
            "quantized-f32-prefill" => Ok(Self::QuantizedF32Prefill),
            "f32" => Ok(Self::F32),
            other => Err(Error::invalid(format!(
                "weights `{other}`: expected `quantized`, `quantized-exact`, `quantized-f32-prefill` or `f32`"
            ))),
        }
    }
}

impl Default for LoadOptions {
    /// f32 on the CPU: the only fast choice on CPUs without bf16 hardware; GGUF matrices stay quantized.
    fn default() -> Self {
        Self { device: Device::Cpu, kind: Kind::Float, threads: 0, weights: WeightFormat::Quantized }
    }
}

/// This process's resident memory in bytes (Linux: `VmRSS` of `/proc/self/status`; `None` elsewhere).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

/// A loaded model with everything needed to serve it.
pub struct Model {
    /// A short name for `/v1/models` (file stem or folder name).
    pub name: String,
    pub path: PathBuf,
    pub net: LlamaModel,
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
    /// The model's own Jinja chat template, if it has one.
    pub chat_template: Option<String>,
    /// The sampling its authors recommend, where the model ships it.
    pub sampling: SamplingHints,
}

/// Sampling values a model ships: GGUF's `general.sampling.*` keys (as llama.cpp writes and reads them) or the
/// `generation_config.json` beside a Hugging Face folder. Each is `None` where the model says nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingHints {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl SamplingHints {
    /// From a lookup of numbers by key, given each field's key: temperature, top_p, top_k, min_p, repetition penalty.
    fn read(num: impl Fn(&str) -> Option<f64>, keys: [&str; 5]) -> Self {
        let f = |k: &str| num(k).map(|v| v as f32);
        Self {
            temperature: f(keys[0]),
            top_p: f(keys[1]),
            top_k: num(keys[2]).filter(|v| v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(v)).map(|v| v as u32),
            min_p: f(keys[3]),
            repetition_penalty: f(keys[4]),
        }
    }

    /// GGUF's keys, as llama.cpp writes and reads them.
    fn from_gguf(g: &GgufFile) -> Self {
        let keys = ["temp", "top_p", "top_k", "min_p", "penalty_repeat"].map(|k| format!("general.sampling.{k}"));
        Self::read(|k| g.get(k).and_then(Value::as_f64), keys.each_ref().map(String::as_str))
    }

    /// `generation_config.json`'s (transformers') names.
    fn from_generation_config(cfg: &Json) -> Self {
        Self::read(
            |k| cfg.get(k).and_then(Json::as_f64),
            ["temperature", "top_p", "top_k", "min_p", "repetition_penalty"],
        )
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).field("net", &self.net).finish()
    }
}

impl Model {
    /// Loads a `.gguf` file or a Hugging Face model folder.
    pub fn load(path: &Path, opts: LoadOptions, progress: Progress<'_>) -> Result<Self> {
        // On one libtorch thread: see `torch::Threads`.
        let _one = crate::torch::Threads::hold(1);
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_string());
        if path.is_dir() {
            Self::load_hf(path, name, opts, progress)
        } else if path.exists() {
            Self::load_gguf(path, name, opts, progress)
        } else {
            Err(Error::io(path.display(), std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")))
        }
    }

    fn load_gguf(path: &Path, name: String, opts: LoadOptions, progress: Progress<'_>) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let cfg = ModelConfig::from_gguf(&g)?;
        let (tokenizer, special) = tokenizer::from_gguf(&g)?;
        let chat_template = g.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_owned);
        let sampling = SamplingHints::from_gguf(&g);
        let src = WeightSource::Gguf(g);
        let mut net = LlamaModel::load(cfg, &src, opts, progress)?;
        net.set_threads(opts.threads);
        Ok(Self { name, path: path.to_path_buf(), net, tokenizer, special, chat_template, sampling })
    }

    fn load_hf(dir: &Path, name: String, opts: LoadOptions, progress: Progress<'_>) -> Result<Self> {
        let read = |f: &str| -> Result<Option<String>> {
            let p = dir.join(f);
            if !p.exists() {
                return Ok(None);
            }
            std::fs::read_to_string(&p).map(Some).map_err(|e| Error::io(p.display(), e))
        };
        let json = |f: &str| -> Result<Option<Json>> {
            read(f)?.map(|t| serde_json::from_str(&t).map_err(|e| Error::format(format!("{f}: {e}")))).transpose()
        };
        let config_text =
            read("config.json")?.ok_or_else(|| Error::format(format!("{}: no config.json", dir.display())))?;
        let cfg = ModelConfig::from_hf_json(&config_text)?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(Error::format(format!("{}: no tokenizer.json", dir.display())));
        }
        let tokenizer = tokenizer::from_file(&tok_path)?;
        let tok_cfg = json("tokenizer_config.json")?.unwrap_or(Json::Null);
        let gen_cfg = json("generation_config.json")?.unwrap_or(Json::Null);
        let special = hf_special_tokens(&tokenizer, &tok_cfg, &gen_cfg);
        let chat_template = match tok_cfg.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: take "default", else the first.
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template").and_then(Json::as_str))
                .map(str::to_owned),
            _ => read("chat_template.jinja")?,
        };
        let sampling = SamplingHints::from_generation_config(&gen_cfg);
        let src = WeightSource::SafeTensors(SafeTensorFiles::open_folder(dir)?);
        let mut net = LlamaModel::load(cfg, &src, opts, progress)?;
        net.set_threads(opts.threads);
        Ok(Self { name, path: dir.to_path_buf(), net, tokenizer, special, chat_template, sampling })
    }
}

/// BOS/EOS for a Hugging Face folder, from `tokenizer_config.json` and `generation_config.json`.
fn hf_special_tokens(tok: &Tokenizer, tok_cfg: &Json, gen_cfg: &Json) -> SpecialTokens {
    let token_id = |v: Option<&Json>| -> Option<u32> {
        let content = match v? {
            Json::String(s) => s.as_str(),
            Json::Object(o) => o.get("content")?.as_str()?,
            _ => return None,
        };
        tok.token_to_id(content)
    };
    let bos = token_id(tok_cfg.get("bos_token"))
        .or_else(|| gen_cfg.get("bos_token_id").and_then(Json::as_u64).map(|v| v as u32));
    let mut eos: Vec<u32> = Vec::new();
    match gen_cfg.get("eos_token_id") {
        Some(Json::Number(n)) => eos.extend(n.as_u64().map(|v| v as u32)),
        Some(Json::Array(a)) => eos.extend(a.iter().filter_map(Json::as_u64).map(|v| v as u32)),
        _ => {}
    }
    if let Some(e) = token_id(tok_cfg.get("eos_token")) {
        if !eos.contains(&e) {
            eos.push(e);
        }
    }
    let add_bos = tok_cfg.get("add_bos_token").and_then(Json::as_bool).unwrap_or(false);
    SpecialTokens { bos, eos, add_bos }
}
