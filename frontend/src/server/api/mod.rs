//! The API's request and response bodies as serde types, one module per API: handlers build responses from these
//! types (never from `json!`), and the OpenAPI document is derived from them (`super::openapi`).
//!
//! Requests are lenient as OpenAI's are: unknown fields are ignored and `null` means absent. A body that does not
//! fit its type is a 400 naming the field (`serde_path_to_error`).

pub mod chat;
pub mod common;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod native;
pub mod responses;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::ApiError;
use common::CommonParams;

/// Token counts of a request (OpenAI's `usage`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the radix cache.
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// Every error: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

/// One token and its log-probability, with the most likely alternatives (chat's `logprobs.content[]`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// Parses a JSON body, naming the offending field in the error.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_value(&json_object(body)?)
}

/// A request with the common sampling fields: both read from the same body.
pub trait WithCommon: serde::de::DeserializeOwned {
    fn set_common(&mut self, c: CommonParams);
}

pub fn parse_request<T: WithCommon>(body: &[u8]) -> Result<T, ApiError> {
    let v = json_object(body)?;
    let mut req: T = from_value(&v)?;
    req.set_common(from_value(&v)?);
    Ok(req)
}

fn json_object(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    Ok(value)
}

fn from_value<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            ApiError::bad_request(inner)
        } else {
            ApiError::invalid(path.clone(), format!("{path}: {inner}"))
        }
    })
}
