//! `/v1/embeddings` (OpenAI's shape, with vLLM's `truncate_prompt_tokens`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What to embed: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    #[default]
    Float,
    /// Base64 of the little-endian float32 bytes (what the OpenAI SDK asks for and decodes).
    Base64,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    pub input: EmbeddingInput,
    /// The embedding model (default: the first one served).
    pub model: Option<String>,
    #[serde(default)]
    pub encoding_format: Option<EncodingFormat>,
    /// Keep the first `dimensions` components and scale back to unit length (Matryoshka); at most the model's.
    pub dimensions: Option<usize>,
    /// Accepted and ignored.
    pub user: Option<String>,
    /// vLLM's: inputs longer than this keep their last `truncate_prompt_tokens` tokens (-1: the model's limit)
    /// instead of being refused.
    pub truncate_prompt_tokens: Option<i64>,
}

/// A vector as floats or as base64.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Embedding {
    /// `embedding`
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingResponse {
    /// `list`
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}
