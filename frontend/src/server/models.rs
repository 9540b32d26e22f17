//! The models one server serves, each on its own engine thread with its own memory budget: chat (generation)
//! models and embedding models side by side on one port, picked by the request's `model`.
//!
//! Models come from `--model [ID=]PATH` (repeatable; a BERT folder is an embedding model, anything else a chat
//! model), `--embedding-model [ID=]PATH` (a decoder served as an embedder, vLLM's `--convert embed`) or
//! `--models FILE`, a TOML list of `[[model]]` tables:
//!
//! ```toml
//! [[model]]
//! id = "smollm2"                      # default: the file or folder name
//! path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! kind = "chat"                       # or "embedding"; default: detected as above
//! kv_cache_mb = 1024                  # chat models: KV-cache memory (default: --kv-cache-mb)
//! sampling_defaults = { temperature = 0.2, top_p = 0.9 }   # or "model" / "openai"
//!
//! [[model]]
//! path = "models/all-MiniLM-L6-v2"
//! pooling = "mean"                    # embedding models: mean, cls, last, max (default: the model's)
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use kernels::Pooling;
use serde::{Deserialize, Serialize};

use super::defaults::DefaultsSource;
use super::error::ApiError;
use super::tools::ToolFormat;
use super::Ready;

/// What a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Generation: chat, completions, SGLang's /generate.
    Chat,
    /// Vectors: /v1/embeddings.
    Embedding,
}

impl ModelKind {
    fn routes(self) -> &'static str {
        match self {
            ModelKind::Chat => "/v1/chat/completions, /v1/completions and /generate",
            ModelKind::Embedding => "/v1/embeddings",
        }
    }
}

/// One model to serve, from the command line or a `[[model]]` table of `--models`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub id: Option<String>,
    pub path: PathBuf,
    pub kind: Option<ModelKind>,
    pub kv_cache_mb: Option<usize>,
    pub max_total_tokens: Option<usize>,
    #[serde(default, deserialize_with = "defaults_source")]
    pub sampling_defaults: Option<DefaultsSource>,
    #[serde(default, deserialize_with = "from_str_opt")]
    pub pooling: Option<Pooling>,
    #[serde(default, deserialize_with = "from_str_opt")]
    pub tool_call_parser: Option<ToolFormat>,
}

impl ModelSpec {
    /// `[ID=]PATH` as given to `--model`.
    pub fn parse_arg(s: &str) -> Result<Self, String> {
        let (id, path) = match s.split_once('=') {
            Some((id, path)) if !id.is_empty() && !id.contains('/') => (Some(id.to_string()), path),
            _ => (None, s),
        };
        if path.is_empty() {
            return Err("expected [ID=]PATH".into());
        }
        Ok(Self {
            id,
            path: PathBuf::from(path),
            kind: None,
            kv_cache_mb: None,
            max_total_tokens: None,
            sampling_defaults: None,
            pooling: None,
            tool_call_parser: None,
        })
    }

    /// The kind given, else detected: a BERT folder embeds, anything else chats.
    pub fn kind(&self) -> ModelKind {
        self.kind.unwrap_or_else(|| {
            if self.path.is_dir() && kernels::embed::is_bert_folder(&self.path) {
                ModelKind::Embedding
            } else {
                ModelKind::Chat
            }
        })
    }

    /// The id given, else the file name without extension (or the folder's name).
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(|| default_id(&self.path))
    }
}

fn default_id(path: &Path) -> String {
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_string())
}

/// `sampling_defaults` in TOML: `"model"`, `"openai"` or a table of values.
fn defaults_source<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DefaultsSource>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    v.map(|v| {
        let text = match &v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    })
    .transpose()
}

fn from_str_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    Option::<String>::deserialize(d)?.map(|s| s.parse().map_err(serde::de::Error::custom)).transpose()
}

/// The `--models` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    model: Vec<ModelSpec>,
}

/// Reads a `--models` TOML file; relative paths are taken from the file's folder.
pub fn read_models_file(path: &Path) -> anyhow::Result<Vec<ModelSpec>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let file: ModelsFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(file
        .model
        .into_iter()
        .map(|mut m| {
            if m.path.is_relative() && !m.path.exists() {
                m.path = base.join(&m.path);
            }
            m
        })
        .collect())
}

/// A loaded embedding model: what `/v1/embeddings` needs.
pub struct EmbedReady {
    pub engine: runtime::EmbedHandle,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    /// Token ids are below this (the tokenizer's count, added tokens included; computed once: the tokenizer
    /// builds a map to count them).
    pub vocab_size: u32,
    pub model_id: String,
    pub created: u64,
    /// The longest input, in tokens.
    pub max_tokens: usize,
    pub dim: usize,
    pub pooling: Pooling,
    pub normalize: bool,
}

/// A loaded model.
#[derive(Clone)]
pub enum Served {
    Chat(Arc<Ready>),
    Embedding(Arc<EmbedReady>),
}

/// One served model: its id and kind (known before it loads), and once loaded, it or why it failed.
pub struct ModelSlot {
    pub id: String,
    pub kind: ModelKind,
    pub spec: ModelSpec,
    pub(super) state: OnceLock<Result<Served, String>>,
}

impl ModelSlot {
    pub fn new(spec: ModelSpec) -> Self {
        Self { id: spec.id(), kind: spec.kind(), spec, state: OnceLock::new() }
    }

    /// The model once loaded; the 503 a request gets until then.
    pub fn served(&self) -> Result<&Served, ApiError> {
        match self.state.get() {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(ApiError::unavailable(format!("the model `{}` failed to load: {e}", self.id))),
            None => Err(ApiError {
                retry_after: Some(5),
                ..ApiError::unavailable(format!("the model `{}` is loading; retry when /health answers 200", self.id))
            }),
        }
    }
}

/// The model a request names (or, when it names none, the first of the route's kind), as the route needs it.
pub fn resolve<'a>(slots: &'a [ModelSlot], kind: ModelKind, model: Option<&str>) -> Result<&'a Served, ApiError> {
    let slot = match model.filter(|m| !m.is_empty()) {
        None => slots
            .iter()
            .find(|s| s.kind == kind)
            .ok_or_else(|| ApiError::invalid("model", format!("this server serves no {} model", kind_name(kind))))?,
        Some(id) => {
            let slot = slots.iter().find(|s| s.id == id).ok_or_else(|| ApiError::model_not_found(id))?;
            if slot.kind != kind {
                return Err(ApiError::invalid(
                    "model",
                    format!("`{id}` is {} model: it serves {}, not this route", article(slot.kind), slot.kind.routes()),
                ));
            }
            slot
        }
    };
    slot.served()
}

fn kind_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Chat => "chat",
        ModelKind::Embedding => "embedding",
    }
}

fn article(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Chat => "a chat",
        ModelKind::Embedding => "an embedding",
    }
}

/// Slots for the specs, refusing duplicate ids.
pub fn slots(specs: Vec<ModelSpec>) -> anyhow::Result<Vec<ModelSlot>> {
    anyhow::ensure!(!specs.is_empty(), "give at least one model (--model PATH or --models FILE)");
    let slots: Vec<ModelSlot> = specs.into_iter().map(ModelSlot::new).collect();
    for (i, s) in slots.iter().enumerate() {
        if slots[..i].iter().any(|o| o.id == s.id) {
            anyhow::bail!("two models have the id `{}`; give one another id (ID=PATH, or id in --models)", s.id);
        }
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_models_file_gives_every_field_and_refuses_unknown_ones() {
        let dir = std::env::temp_dir().join(format!("radixserve-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("models.toml");
        std::fs::write(
            &file,
            r#"
[[model]]
id = "chat"
path = "chat.gguf"
kind = "chat"
kv_cache_mb = 256
sampling_defaults = { temperature = 0.2, top_p = 0.9 }
tool_call_parser = "hermes"

[[model]]
path = "embed-folder"
kind = "embedding"
pooling = "cls"
"#,
        )
        .unwrap();
        let specs = read_models_file(&file).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!((specs[0].id(), specs[0].kind(), specs[0].kv_cache_mb), ("chat".into(), ModelKind::Chat, Some(256)));
        assert_eq!(specs[0].path, dir.join("chat.gguf"), "relative to the file");
        assert!(matches!(&specs[0].sampling_defaults, Some(DefaultsSource::Values(v)) if v.temperature == Some(0.2)));
        assert_eq!(
            (specs[1].id(), specs[1].kind(), specs[1].pooling),
            ("embed-folder".into(), ModelKind::Embedding, Some(Pooling::Cls))
        );
        std::fs::write(&file, "[[model]]\npath = \"x\"\nkv_cache = 1\n").unwrap();
        assert!(read_models_file(&file).unwrap_err().to_string().contains("kv_cache"));
        std::fs::write(&file, "[[model]]\npath = \"x\"\npooling = \"median\"\n").unwrap();
        assert!(read_models_file(&file).unwrap_err().to_string().contains("median"));
        let dup = slots(vec![ModelSpec::parse_arg("a=x.gguf").unwrap(), ModelSpec::parse_arg("a=y.gguf").unwrap()]);
        assert!(dup.err().unwrap().to_string().contains("`a`"));
        assert_eq!(ModelSpec::parse_arg("models/a=b.gguf").unwrap().id(), "a=b", "a path with '=' and no id");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
