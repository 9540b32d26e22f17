//! `/v1/responses` (OpenAI's Responses API): the request, the response object, its items and the streamed events.
//!
//! Items are OpenAI's: a `message` (role and content parts: `input_text` in, `output_text` out), a `function_call`
//! (`call_id`, `name`, `arguments`) and a `function_call_output` (`call_id`, `output`). The request's `input` is read
//! item by item in `super::super::responses` so an error names `input[i].field`.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A function tool (the Responses API's flat shape); other tool types are refused by name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResponseTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
}

/// `text.format`: `text`, `json_object`, or `json_schema` with `name`, `schema`, `strict`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TextFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TextConfig {
    pub format: Option<TextFormat>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ResponsesRequest {
    /// The model (default: the first chat model).
    pub model: Option<String>,
    /// A string (one user message) or a list of items.
    #[schema(value_type = Object)]
    pub input: Option<Value>,
    /// A system message put before the conversation (not carried over by `previous_response_id`).
    pub instructions: Option<String>,
    pub tools: Option<Vec<ResponseTool>>,
    /// `none`, `auto`, `required`, or `{"type": "function", "name": ...}`.
    #[schema(value_type = Object)]
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<TextConfig>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_logprobs: Option<i64>,
    /// `message.output_text.logprobs` adds the output tokens' logprobs.
    pub include: Option<Vec<String>>,
    #[schema(value_type = Object)]
    pub metadata: Option<IndexMap<String, String>>,
    /// Keep the response for `GET`, `previous_response_id` and `input_items` (default true, as OpenAI).
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    /// `disabled` (default: a conversation past the context is a 400) or `auto` (the oldest items are dropped).
    pub truncation: Option<String>,
    pub stream: Option<bool>,
    pub user: Option<String>,
    pub seed: Option<i64>,
}

/// A content part of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    InputText {
        text: String,
    },
    OutputText {
        text: String,
        #[schema(value_type = Vec<Object>)]
        annotations: Vec<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logprobs: Option<Vec<OutputLogprob>>,
    },
}

impl Part {
    pub fn text(&self) -> &str {
        match self {
            Part::InputText { text } | Part::OutputText { text, .. } => text,
        }
    }
}

/// An item of a conversation: what goes in and what comes out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Message { id: String, role: String, content: Vec<Part>, status: String },
    FunctionCall { id: String, call_id: String, name: String, arguments: String, status: String },
    FunctionCallOutput { id: String, call_id: String, output: String, status: String },
}

impl Item {
    pub fn id(&self) -> &str {
        match self {
            Item::Message { id, .. } | Item::FunctionCall { id, .. } | Item::FunctionCallOutput { id, .. } => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutputLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<OutputTopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutputTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InputTokensDetails {
    /// Input tokens served from the radix cache.
    pub cached_tokens: usize,
    /// Input tokens computed and written to the cache.
    pub cache_write_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: usize,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens`
    pub reason: String,
}

/// The response object.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResponseObject {
    pub id: String,
    /// `response`
    pub object: String,
    pub created_at: u64,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: String,
    #[schema(value_type = Object)]
    pub error: Option<Value>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub model: String,
    pub output: Vec<Item>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_logprobs: Option<i64>,
    pub text: TextConfig,
    #[schema(value_type = Object)]
    pub tool_choice: Value,
    pub tools: Vec<ResponseTool>,
    /// `disabled` or `auto`.
    pub truncation: String,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: IndexMap<String, String>,
}

/// `GET /v1/responses/{id}/input_items`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InputItemList {
    /// `list`
    pub object: &'static str,
    pub data: Vec<Item>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// `DELETE /v1/responses/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    /// `response`
    pub object: &'static str,
    pub deleted: bool,
}

/// A streamed event: its `type`, its `sequence_number`, and its own fields.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub sequence_number: usize,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub body: Value,
}
