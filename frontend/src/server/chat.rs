//! `POST /v1/chat/completions`: parse, validate, submit, then stream or collect.

use std::sync::Arc;

use grammar::Constraint;
use runtime::{Event, FinishReason, Finished, ValidRequest};
use warp::reply::Response;

use super::api::chat::{
    AssistantMessage, ChatChoice, ChatChunk, ChatCompletion, ChatLogprobs, ChatRequest, ChunkChoice, Delta,
    FunctionCall, ToolCall, ToolCallDelta,
};
use super::api::common::Params;
use super::api::parse_request;
use super::error::ApiError;
use super::generation::{
    chat_logprob, check_model, collect, compile, encode, extra_constraints, failed, schema_text, submit, usage,
    validate,
};
use super::prompt::render_chat;
use super::sse::{stream_events, EventStream};
use super::tools::{self, tool_mode, CallScan, ToolFormat, ToolMode};
use super::{json_ok, now_secs, random_id, Ready};

/// A chat request checked, rendered, tokenized and constrained: ready to submit (chat completions and the
/// Responses API both go through it).
pub(crate) struct Prepared {
    pub valid: ValidRequest,
    pub mode: ToolMode,
    pub params: Params,
    pub logprobs: Option<usize>,
}

pub(crate) async fn prepare(ready: &Ready, req: &ChatRequest) -> Result<Prepared, ApiError> {
    check_model(ready, req.common.model.as_deref())?;
    let params = req.common.params(ready.vocab_size, &ready.sampling_defaults)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (true, k) => Some(super::api::common::top_logprobs(k, "top_logprobs")?),
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true"));
        }
        (false, _) => None,
    };
    let mode = tool_mode(req.tools.as_deref(), req.tool_choice.as_ref())?;
    let constraint = constraint(ready, req, &mode)?;
    let text = render_chat(ready, req, &mode)?;
    let prompt = encode(ready, &text, false)?;
    let mut valid = validate(ready, prompt, &params, logprobs, None, "messages")?;
    if let Some((c, param)) = constraint {
        valid.set_grammar(Some(compile(ready, c, param).await?));
    }
    Ok(Prepared { valid, mode, params, logprobs })
}

pub async fn chat(ready: Arc<Ready>, body: &[u8]) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_request(body)?;
    let Prepared { valid, mode, params, logprobs } = prepare(&ready, &req).await?;
    let prompt_tokens = valid.request().prompt.len();
    let streams = submit(&ready, &valid, params.n)?;
    let readers: Vec<ChoiceReader> =
        (0..params.n).map(|i| ChoiceReader::new(i, mode.clone(), ready.tool_format, logprobs.is_some())).collect();
    let head = Head { id: random_id("chatcmpl-"), model: ready.model_id.clone(), created: now_secs() };
    if params.stream {
        let fins = vec![None; readers.len()];
        let state = ChatStream { ready, readers, fins, prompt_tokens, include_usage: params.include_usage, head };
        return Ok(stream_events(streams, state));
    }
    let mut choices = Vec::new();
    let mut fins = Vec::new();
    for (stream, mut reader) in streams.into_iter().zip(readers) {
        let (out, fin) = collect(stream).await?;
        let mut content = reader.push(&out.text);
        let end = reader.finish(&fin);
        content.push_str(&end.content);
        let tool_calls: Vec<ToolCall> = end
            .calls
            .into_iter()
            .map(|(name, arguments)| ToolCall {
                id: random_id("call_"),
                kind: "function",
                function: FunctionCall { name, arguments },
            })
            .collect();
        let content = (tool_calls.is_empty() || !content.is_empty()).then_some(content);
        let logprobs = reader
            .with_logprobs
            .then(|| ChatLogprobs { content: out.tokens.iter().map(|t| chat_logprob(&ready, t)).collect() });
        choices.push(ChatChoice {
            index: reader.index,
            message: AssistantMessage { role: "assistant", content, tool_calls },
            logprobs,
            finish_reason: end.finish_reason,
        });
        fins.push(fin);
    }
    Ok(json_ok(&ChatCompletion {
        id: head.id,
        object: "chat.completion",
        created: head.created,
        model: head.model,
        choices,
        usage: usage(prompt_tokens, fins.len(), &fins),
        system_fingerprint: None,
    }))
}

/// The one constraint on the output, with the request field it came from: tool calls, `response_format`, or the
/// harnesses' `regex`/`json_schema`; at most one of them.
fn constraint(
    ready: &Ready,
    req: &ChatRequest,
    mode: &ToolMode,
) -> Result<Option<(Constraint, &'static str)>, ApiError> {
    let mut constraints = extra_constraints(&req.common)?;
    if let Some(rf) = &req.response_format {
        match rf.kind.as_str() {
            "text" => {}
            "json_object" => constraints.push((Constraint::JsonObject { max_depth: 4 }, "response_format")),
            "json_schema" => {
                let param = "response_format.json_schema.schema";
                let schema = rf
                    .json_schema
                    .as_ref()
                    .and_then(|j| j.schema.as_ref())
                    .ok_or_else(|| ApiError::invalid(param, "json_schema needs a `schema`"))?;
                constraints.push((Constraint::JsonSchema(schema_text(schema, param)?), param));
            }
            other => {
                return Err(ApiError::invalid(
                    "response_format.type",
                    format!("unknown response_format type {other:?} (text, json_object, json_schema)"),
                ))
            }
        }
    }
    if *mode != ToolMode::Off {
        if !constraints.is_empty() {
            return Err(ApiError::bad_request(
                "tools with tool_choice auto/required cannot be combined with response_format, regex or json_schema",
            ));
        }
        let tools = req.tools.as_deref().unwrap_or_default();
        let parallel = req.parallel_tool_calls.unwrap_or(true);
        constraints.extend(tools::constraint(ready.tool_format, tools, mode, parallel).map(|c| (c, "tools")));
    }
    if constraints.len() > 1 {
        return Err(ApiError::bad_request("give at most one of response_format, regex and json_schema"));
    }
    Ok(constraints.pop())
}

/// What every chunk of one answer repeats.
struct Head {
    id: String,
    model: String,
    created: u64,
}

/// Turns one choice's engine events into chat output, deciding early whether the output is text or tool calls.
pub(crate) struct ChoiceReader {
    pub index: usize,
    mode: ToolMode,
    /// The forms a call may be written in.
    forms: Vec<ToolFormat>,
    /// Text not yet emitted (a possible tool call being read).
    pending: String,
    /// Known to be text: stream it as it comes.
    is_text: bool,
    pub with_logprobs: bool,
    /// Streaming tool calls: where the scan of `pending` is and what it has sent.
    scan: CallScan,
}

/// The end of a choice.
pub(crate) struct ChoiceEnd {
    pub content: String,
    pub calls: Vec<(String, String)>,
    pub finish_reason: &'static str,
}

impl ChoiceReader {
    pub fn new(index: usize, mode: ToolMode, format: ToolFormat, with_logprobs: bool) -> Self {
        let is_text = mode == ToolMode::Off;
        Self {
            index,
            mode,
            forms: format.answer_forms(),
            pending: String::new(),
            is_text,
            with_logprobs,
            scan: CallScan::default(),
        }
    }

    /// Text that can be shown now.
    pub fn push(&mut self, text: &str) -> String {
        if self.is_text {
            return text.to_string();
        }
        self.pending.push_str(text);
        if self.mode == ToolMode::Auto && ToolFormat::starts_call(&self.forms, &self.pending) == Some(false) {
            self.is_text = true;
            return std::mem::take(&mut self.pending);
        }
        String::new()
    }

    /// Tool-call deltas for the output so far (streaming; empty while the output is, or may be, text).
    pub fn call_deltas(&mut self) -> Vec<ToolCallDelta> {
        if self.is_text || ToolFormat::starts_call(&self.forms, &self.pending) != Some(true) {
            return Vec::new();
        }
        self.scan.advance(&self.pending)
    }

    /// Calls the scan has opened (streamed) so far.
    pub fn calls_streamed(&self) -> usize {
        self.scan.calls + usize::from(self.scan.in_args)
    }

    pub fn finish(&mut self, fin: &Finished) -> ChoiceEnd {
        let rest = std::mem::take(&mut self.pending);
        let finish_reason = fin.reason.label();
        if !self.is_text && fin.reason != FinishReason::Length {
            if let Some(calls) = ToolFormat::parse_any(&self.forms, &rest) {
                return ChoiceEnd { content: String::new(), calls, finish_reason: "tool_calls" };
            }
        }
        // Not a (complete) call: what was read is the answer's text, never dropped.
        ChoiceEnd { content: rest, calls: Vec::new(), finish_reason }
    }
}

/// The streamed answer: a role chunk per choice, then content and tool-call deltas as they are generated, one
/// finish per choice, the usage chunk if asked.
struct ChatStream {
    ready: Arc<Ready>,
    readers: Vec<ChoiceReader>,
    fins: Vec<Option<Finished>>,
    prompt_tokens: usize,
    include_usage: bool,
    head: Head,
}

impl ChatStream {
    fn chunk(&self, choices: Vec<ChunkChoice>) -> ChatChunk {
        ChatChunk {
            id: self.head.id.clone(),
            object: "chat.completion.chunk",
            created: self.head.created,
            model: self.head.model.clone(),
            choices,
            usage: self.include_usage.then_some(None),
        }
    }

    /// A chunk of one choice.
    fn delta(
        &self,
        index: usize,
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<&'static str>,
    ) -> ChatChunk {
        self.chunk(vec![ChunkChoice { index, delta, logprobs, finish_reason: finish }])
    }

    fn calls(&self, index: usize, d: ToolCallDelta) -> ChatChunk {
        self.delta(index, Delta { tool_calls: vec![d], ..Delta::default() }, None, None)
    }

    fn text(&self, index: usize, text: String, logprobs: Option<ChatLogprobs>) -> ChatChunk {
        self.delta(index, Delta { content: Some(text), ..Delta::default() }, logprobs, None)
    }
}

impl EventStream for ChatStream {
    type Chunk = ChatChunk;

    fn first(&mut self) -> Vec<ChatChunk> {
        let role = || Delta { role: Some("assistant"), content: Some(String::new()), ..Delta::default() };
        (0..self.readers.len()).map(|i| self.delta(i, role(), None, None)).collect()
    }

    fn on_event(&mut self, i: usize, ev: Event) -> Result<Vec<ChatChunk>, ApiError> {
        let mut out = Vec::new();
        match ev {
            Event::Delta { text, tokens } => {
                let r = &mut self.readers[i];
                let shown = r.push(&text);
                let deltas = r.call_deltas();
                let lp = r
                    .with_logprobs
                    .then(|| ChatLogprobs { content: tokens.iter().map(|t| chat_logprob(&self.ready, t)).collect() });
                out.extend(deltas.into_iter().map(|d| self.calls(i, d)));
                if !shown.is_empty() || lp.is_some() {
                    out.push(self.text(i, shown, lp));
                }
            }
            Event::PromptLogprobs(_) => {}
            Event::Finished(fin) => {
                failed(&fin)?;
                let r = &mut self.readers[i];
                let streamed = r.calls_streamed();
                let mut end = r.finish(&fin);
                if streamed > 0 {
                    // The calls went out as they were written: send only what the scan did not (nothing, when the
                    // output parsed), and never the raw text again.
                    end.content.clear();
                    end.calls.drain(..streamed.min(end.calls.len()));
                }
                if !end.content.is_empty() {
                    out.push(self.text(i, end.content, None));
                }
                for (k, (name, args)) in end.calls.into_iter().enumerate().map(|(k, c)| (k + streamed, c)) {
                    out.push(self.calls(i, ToolCallDelta::open(k, random_id("call_"), name)));
                    out.push(self.calls(i, ToolCallDelta::arguments(k, args)));
                }
                out.push(self.delta(i, Delta::default(), None, Some(end.finish_reason)));
                self.fins[i] = Some(fin);
            }
        }
        Ok(out)
    }

    fn last(self) -> Vec<ChatChunk> {
        if !self.include_usage {
            return Vec::new();
        }
        let fins: Vec<Finished> = self.fins.iter().flatten().cloned().collect();
        vec![ChatChunk { usage: Some(Some(usage(self.prompt_tokens, fins.len(), &fins))), ..self.chunk(Vec::new()) }]
    }
}
