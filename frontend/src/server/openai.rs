//! OpenAI request shapes (lenient: unknown fields are ignored, `null` means absent) and their validation into the
//! engine's parameters.

use std::collections::HashMap;

use runtime::{MaxTokens, SamplingParams, StopParams, MAX_TOP_LOGPROBS};
use serde::Deserialize;
use serde_json::Value;

use super::defaults::SamplingDefaults;
use super::error::ApiError;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Fields shared by chat and text completions (OpenAI's plus the extras harnesses send).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<i64>,
    pub stop: Option<StopField>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    // Extras (SGLang / vLLM).
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub min_tokens: Option<i64>,
    pub ignore_eos: Option<bool>,
    pub regex: Option<String>,
    pub json_schema: Option<Value>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub skip_special_tokens: Option<bool>,
}

/// The engine-side parameters of a request, validated.
#[derive(Debug, Clone)]
pub struct Params {
    pub sampling: SamplingParams,
    pub stop: StopParams,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub skip_special_tokens: bool,
    /// The field the client gave the token limit in (what an error about it names).
    pub max_tokens_param: &'static str,
}

/// Tokens generated when the request sets no limit (fewer when the context has less room).
pub const DEFAULT_MAX_TOKENS: usize = 1024;
pub const MAX_N: usize = 64;

impl CommonParams {
    /// Checks ranges and builds engine parameters; `vocab` bounds `logit_bias` keys and `stop_token_ids`, and
    /// fields left unset take `defaults`.
    pub fn params(&self, vocab: usize, defaults: &SamplingDefaults) -> Result<Params, ApiError> {
        let mut sampling = SamplingParams::default();
        defaults.apply(&mut sampling);
        if let Some(t) = self.temperature {
            if !t.is_finite() || t < 0.0 {
                return Err(ApiError::invalid("temperature", format!("temperature must be >= 0, got {t}")));
            }
            sampling.temperature = t;
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], got {p}")));
            }
            sampling.top_p = p;
        }
        if let Some(k) = self.top_k {
            // -1 and 0 both mean "off" in vLLM / SGLang.
            if k < -1 {
                return Err(ApiError::invalid("top_k", format!("top_k must be -1, 0 or positive, got {k}")));
            }
            sampling.top_k = k.max(0) as usize;
        }
        if let Some(m) = self.min_p {
            sampling.min_p = m;
        }
        if let Some(r) = self.repetition_penalty {
            sampling.repetition_penalty = r;
        }
        if let Some(p) = self.presence_penalty {
            sampling.presence_penalty = p;
        }
        if let Some(p) = self.frequency_penalty {
            sampling.frequency_penalty = p;
        }
        if let Some(bias) = &self.logit_bias {
            for (k, &v) in bias {
                let id: u32 = k.parse().ok().filter(|&i: &u32| (i as usize) < vocab).ok_or_else(|| {
                    ApiError::invalid("logit_bias", format!("logit_bias key {k:?} is not a token id"))
                })?;
                sampling.logit_bias.push((id, v));
            }
            sampling.logit_bias.sort_by_key(|b| b.0);
        }
        if let Some(s) = self.seed {
            sampling.seed = Some(s as u64);
        }
        // Ranges (and what fits the context) are the engine's to check: `EngineHandle::validate`.
        let max_tokens_param =
            if self.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => MaxTokens::UpTo(DEFAULT_MAX_TOKENS),
            Some(m) if m < 1 => {
                let param = max_tokens_param;
                return Err(ApiError::invalid(param, format!("{param} must be at least 1, got {m}")));
            }
            Some(m) => MaxTokens::Given(usize::try_from(m).unwrap_or(usize::MAX)),
        };
        let min_tokens = match self.min_tokens {
            None => 0,
            Some(m) if m < 0 => return Err(ApiError::invalid("min_tokens", "min_tokens must be >= 0")),
            Some(m) => m as usize,
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > 16 {
            return Err(ApiError::invalid("stop", "at most 16 stop sequences"));
        }
        let stop_token_ids = self.stop_token_ids.clone().unwrap_or_default();
        if let Some(&bad) = stop_token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid("stop_token_ids", format!("{bad} is not a token id")));
        }
        let n = match self.n {
            None => 1,
            Some(n) if !(1..=MAX_N as i64).contains(&n) => {
                return Err(ApiError::invalid("n", format!("n must be between 1 and {MAX_N}, got {n}")))
            }
            Some(n) => n as usize,
        };
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid("stream_options", "stream_options is only allowed when stream is true"));
        }
        Ok(Params {
            sampling,
            stop: StopParams {
                max_tokens,
                min_tokens,
                ignore_eos: self.ignore_eos.unwrap_or(false),
                stop,
                stop_token_ids,
            },
            n,
            stream,
            include_usage: self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false),
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
            max_tokens_param,
        })
    }
}

/// `top_logprobs` checks shared by chat and completions.
pub fn top_logprobs(k: Option<i64>, param: &str) -> Result<usize, ApiError> {
    match k {
        None => Ok(0),
        Some(k) if k < 0 || k as usize > MAX_TOP_LOGPROBS => {
            Err(ApiError::invalid(param, format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {k}")))
        }
        Some(k) => Ok(k as usize),
    }
}

/// Message content: a string or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCallIn {
    pub name: String,
    /// A JSON string (OpenAI) or, leniently, an object.
    pub arguments: Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallIn {
    pub id: Option<String>,
    pub function: FunctionCallIn,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
    pub name: Option<String>,
    pub tool_calls: Option<Vec<ToolCallIn>>,
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named {
        #[serde(rename = "type")]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub schema: Option<Value>,
    pub strict: Option<bool>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    pub json_schema: Option<JsonSchemaFormat>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// Filled from the same body by [`parse_request`] (serde's `flatten` would lose the field paths in errors).
    #[serde(skip)]
    pub common: CommonParams,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub response_format: Option<ResponseFormat>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
}

/// `prompt` of a text completion: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    #[serde(skip)]
    pub common: CommonParams,
    pub echo: Option<bool>,
    pub logprobs: Option<i64>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
}

/// Parses a JSON body, naming the offending field in the error.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_value(&json_object(body)?)
}

/// A request with the common sampling fields: both read from the same body.
pub trait WithCommon: serde::de::DeserializeOwned {
    fn set_common(&mut self, c: CommonParams);
}

impl WithCommon for ChatRequest {
    fn set_common(&mut self, c: CommonParams) {
        self.common = c;
    }
}

impl WithCommon for CompletionRequest {
    fn set_common(&mut self, c: CommonParams) {
        self.common = c;
    }
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
