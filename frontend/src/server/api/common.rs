//! Fields shared by chat and text completions (OpenAI's, and the extras harnesses send), and their reading into
//! the engine's parameters. Ranges and what fits the context are the engine's to check
//! ([`runtime::EngineHandle::validate`]); this reads forms (token ids within the vocabulary, `n`, `stop`).

use std::collections::HashMap;

use runtime::{MaxTokens, SamplingParams, StopParams, MAX_TOP_LOGPROBS};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::server::defaults::SamplingDefaults;
use crate::server::error::ApiError;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Fields shared by chat and text completions (OpenAI's plus the extras harnesses send).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
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
    #[schema(value_type = Option<Object>)]
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
            // 0 is the engine's to judge: it scores a prompt (completions with echo), else it is refused.
            Some(m) if m < 0 => {
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
