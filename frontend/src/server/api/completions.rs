//! `/v1/completions`: the request, the whole answer and the stream's chunks.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::common::CommonParams;
use super::{Usage, WithCommon};

// ---- Request ----

/// `prompt` of a text completion: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    #[serde(skip)]
    #[schema(ignore)]
    pub common: CommonParams,
    pub echo: Option<bool>,
    pub logprobs: Option<i64>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
}

impl WithCommon for CompletionRequest {
    fn set_common(&mut self, c: CommonParams) {
        self.common = c;
    }
}

// ---- Answers (whole and streamed chunks share the shape) ----

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// `text_completion`
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// Whole answers always have it; a stream with `stream_options.include_usage` has `null` on every chunk but
    /// the last, which has no choices.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; `null` on a stream's chunks until the choice ends.
    pub finish_reason: Option<&'static str>,
}

/// The legacy logprobs: per token, its text, logprob, the alternatives (text to logprob, best first) and where
/// its text starts in the choice's text.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    /// `null` at the prompt's first token (echoed prompt logprobs).
    #[schema(value_type = Vec<Object>)]
    pub top_logprobs: Vec<Option<IndexMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}
