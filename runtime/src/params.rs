//! What a request asks for: its prompt, how to sample, when to stop, what to report.

use std::sync::Arc;

use grammar::Grammar;

/// How tokens are chosen at each step. The defaults are plain sampling at temperature 1 (OpenAI's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p` (1 disables it).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 disables it).
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` times the most likely one (0 disables it).
    pub min_p: f32,
    /// CTRL-style penalty on tokens seen in the prompt or output (1 disables it).
    pub repetition_penalty: f32,
    /// Subtracted once per earlier occurrence of a token in the output (OpenAI semantics).
    pub frequency_penalty: f32,
    /// Subtracted once if a token occurred in the output at all.
    pub presence_penalty: f32,
    /// Added to the logits of these tokens (OpenAI `logit_bias`; -100 bans a token).
    pub logit_bias: Vec<(u32, f32)>,
    /// A seeded request draws the same tokens whatever else runs in the batch.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Whether sampling needs the output's token counts (any penalty is on).
    pub(crate) fn tracks_counts(&self) -> bool {
        self.repetition_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let finite = |v: f32, name: &str| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(ValidationError::invalid(name, format!("{name} must be a finite number")))
            }
        };
        finite(self.temperature, "temperature")?;
        finite(self.top_p, "top_p")?;
        finite(self.min_p, "min_p")?;
        finite(self.repetition_penalty, "repetition_penalty")?;
        finite(self.frequency_penalty, "frequency_penalty")?;
        finite(self.presence_penalty, "presence_penalty")?;
        if self.temperature < 0.0 {
            return Err(ValidationError::invalid(
                "temperature",
                format!("temperature must be >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ValidationError::invalid("top_p", format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(ValidationError::invalid("min_p", format!("min_p must be in [0, 1], got {}", self.min_p)));
        }
        if self.repetition_penalty <= 0.0 {
            return Err(ValidationError::invalid(
                "repetition_penalty",
                format!("repetition_penalty must be > 0, got {}", self.repetition_penalty),
            ));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(ValidationError::invalid(
                "frequency_penalty",
                format!("frequency_penalty must be in [-2, 2], got {}", self.frequency_penalty),
            ));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(ValidationError::invalid(
                "presence_penalty",
                format!("presence_penalty must be in [-2, 2], got {}", self.presence_penalty),
            ));
        }
        for &(_, b) in &self.logit_bias {
            if !(-100.0..=100.0).contains(&b) {
                return Err(ValidationError::invalid(
                    "logit_bias",
                    format!("logit_bias values must be in [-100, 100], got {b}"),
                ));
            }
        }
        Ok(())
    }
}

/// Why a request was refused before it was queued: the field at fault (in OpenAI's names: `prompt`,
/// `max_tokens`, `temperature`, ...; a route renames it to its own, see [`ValidationError::renamed`]), what kind of
/// fault, and a message that names the field and the value given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub param: String,
    pub code: ErrorCode,
    pub message: String,
}

/// What kind of fault a [`ValidationError`] is (OpenAI's `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A value out of range or of the wrong form.
    InvalidValue,
    /// The prompt, or the prompt plus the tokens asked for, does not fit the model's context.
    ContextLengthExceeded,
}

impl ErrorCode {
    /// OpenAI's `code` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
        }
    }
}

impl ValidationError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { param: param.into(), code: ErrorCode::InvalidValue, message: message.into() }
    }

    pub fn context_length(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { param: param.into(), code: ErrorCode::ContextLengthExceeded, message: message.into() }
    }

    /// The same error about the field a route calls `to` where the engine says `from` (`prompt` is a chat
    /// request's `messages`, `max_tokens` may have been given as `max_completion_tokens`).
    pub fn renamed(mut self, from: &str, to: &str) -> Self {
        if self.param == from {
            self.param = to.to_string();
        }
        self
    }
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ValidationError {}

/// How many tokens a request may generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokens {
    /// The client's number: the prompt plus this many must fit the model's context, else the request is refused
    /// naming `max_tokens` (as OpenAI and vLLM do).
    Given(usize),
    /// A default: as many as fit in the context, at most this.
    UpTo(usize),
}

/// When generation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopParams {
    /// Most tokens to generate.
    pub max_tokens: MaxTokens,
    /// EOS and stop tokens are not honoured before this many tokens.
    pub min_tokens: usize,
    /// Keep going past EOS (benchmarks).
    pub ignore_eos: bool,
    /// Strings that end the output; they are not part of it.
    pub stop: Vec<String>,
    /// Token ids that end the output (the token is counted but not shown).
    pub stop_token_ids: Vec<u32>,
}

impl Default for StopParams {
    fn default() -> Self {
        Self {
            max_tokens: MaxTokens::UpTo(256),
            min_tokens: 0,
            ignore_eos: false,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
        }
    }
}

/// One generation request, tokenized and validated by the caller.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopParams,
    /// Report the chosen token's logprob and this many alternatives (0..=20) per token; `None` for no logprobs.
    pub logprobs: Option<usize>,
    /// Report every prompt token's logprob (given the tokens before it) and this many alternatives, in one
    /// [`crate::Event::PromptLogprobs`] before the first generated token. The prompt is then computed in full:
    /// positions the radix cache holds are recomputed (their logits are not kept), so a cached prefix gives the
    /// same values as a cold one. With it, `max_tokens` may be 0 (score the prompt, generate nothing).
    pub prompt_logprobs: Option<usize>,
    /// Constrain the output to this grammar (compiled by the caller, off the scheduler thread).
    pub grammar: Option<Arc<Grammar>>,
    /// Skip special tokens when turning ids into text.
    pub skip_special_tokens: bool,
}

impl Request {
    pub fn new(prompt: Vec<u32>) -> Self {
        Self {
            prompt,
            sampling: SamplingParams::default(),
            stop: StopParams::default(),
            logprobs: None,
            prompt_logprobs: None,
            grammar: None,
            skip_special_tokens: true,
        }
    }
}

/// Most alternatives a request may ask for per token.
pub const MAX_TOP_LOGPROBS: usize = 20;
