//! `/v1/models` and `/v1/models/{id}`.

use serde::Serialize;
use utoipa::ToSchema;

use crate::server::defaults::SamplingDefaults;
use crate::server::models::ModelKind;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// `model`
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub parent: Option<String>,
    /// `chat` (chat, completions, /generate) or `embedding` (/v1/embeddings).
    pub kind: ModelKind,
    /// Whether the model is loaded (`ready`), still `loading`, or `failed` (see /health).
    pub status: &'static str,
    /// Tokens one request may hold, prompt and output (embedding models: one input); absent until loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
    /// Chat models: what a request that leaves a sampling field unset gets (`serve --sampling-defaults`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_defaults: Option<SamplingDefaults>,
    /// Embedding models: the vectors' length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    /// Embedding models: how token states are pooled (`mean`, `cls`, `last`, `max`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooling: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    /// `list`
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}
