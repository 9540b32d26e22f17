//! `/v1/models` and `/v1/models/{id}`.

use serde::Serialize;
use utoipa::ToSchema;

use crate::server::defaults::SamplingDefaults;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// `model`
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub parent: Option<String>,
    /// Tokens one request may hold, prompt and output.
    pub max_model_len: usize,
    /// What a request that leaves a sampling field unset gets (`serve --sampling-defaults`).
    pub sampling_defaults: SamplingDefaults,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    /// `list`
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}
