//! Routes beside the OpenAI ones: SGLang's `/generate`, `/tokenize`, `/detokenize`, `/flush_cache`, `/health`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::common::StopField;

#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    #[serde(alias = "text")]
    pub prompt: String,
    pub add_special_tokens: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
    pub count: usize,
    pub max_model_len: usize,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    pub message: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: &'static str,
}

/// SGLang's sampling parameters for `/generate`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct NativeSampling {
    pub max_new_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub stop: Option<StopField>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub min_new_tokens: Option<i64>,
    pub skip_special_tokens: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub json_schema: Option<Value>,
    pub regex: Option<String>,
    pub seed: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct GenerateRequest {
    pub text: Option<String>,
    pub input_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub sampling_params: NativeSampling,
    pub stream: Option<bool>,
    pub return_logprob: Option<bool>,
    pub top_logprobs_num: Option<i64>,
}

/// A whole answer, or (streamed) the text so far with `meta_info.completion_tokens` until the last event.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateResponse {
    pub text: String,
    pub meta_info: MetaInfo,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct MetaInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<NativeFinish>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_ids: Option<Vec<u32>>,
    /// With `return_logprob`: `[logprob, token id, null]` per generated token.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub output_token_logprobs: Option<Vec<TokenLogprobEntry>>,
}

/// SGLang's `[logprob, token id, token text]` (the text left `null`).
pub type TokenLogprobEntry = (Option<f32>, u32, Option<String>);

/// SGLang's finish reason.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NativeFinish {
    Stop { matched: Option<Matched> },
    Length { length: usize },
    Abort { message: String },
}

/// What stopped a generation: a stop string or a stop token id.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Matched {
    Text(String),
    Token(u32),
}
