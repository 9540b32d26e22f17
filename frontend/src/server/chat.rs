//! `/v1/chat/completions` and `/v1/completions`: from the OpenAI request to engine requests and back, streamed
//! (SSE) or whole.

use std::sync::Arc;

use futures_util::stream::StreamExt;
use grammar::{Constraint, Grammar};
use runtime::{Event, FinishReason, Finished, Request, RequestStream, TokenInfo, ValidRequest};
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::ApiError;
use super::openai::{
    parse_request, top_logprobs, ChatRequest, CommonParams, CompletionRequest, Content, Message, Params, PromptField,
};
use super::sse::{merged, sse_response};
use super::tools::{self, tool_mode, CallScan, ToolFormat, ToolMode};
use super::{json_reply, now_secs, random_id, Ready};

fn check_model(ready: &Ready, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !m.is_empty() && m != ready.model_id => Err(ApiError::model_not_found(m)),
        _ => Ok(()),
    }
}

/// Compiles (or fetches) a grammar off the async threads, within the time limit; errors name `param`, the
/// request field the constraint came from.
pub(crate) async fn compile(ready: &Ready, c: Constraint, param: &str) -> Result<Arc<Grammar>, ApiError> {
    let cache = ready.grammars.clone();
    let job = tokio::task::spawn_blocking(move || cache.get_or_compile(&c));
    let e = match tokio::time::timeout(ready.grammar_timeout, job).await {
        Err(_) => ApiError::bad_request(format!(
            "the constraint did not compile within {} s; simplify the schema",
            ready.grammar_timeout.as_secs()
        )),
        Ok(Err(e)) => return Err(ApiError::internal(format!("grammar compilation failed: {e}"))),
        Ok(Ok(Ok(g))) => return Ok(g),
        Ok(Ok(Err(e))) => ApiError::from(e),
    };
    Err(ApiError { param: Some(param.into()), ..e })
}

/// A JSON Schema given as an object or as a string holding one.
fn schema_text(v: &Value, param: &str) -> Result<String, ApiError> {
    let schema = match v {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .map_err(|e| ApiError::invalid(param, format!("{param} is not valid JSON: {e}")))?,
        other => other.clone(),
    };
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(ApiError::invalid(param, format!("{param} must be a JSON Schema object")));
    }
    // Unsupported keywords are refused when it compiles (off the async threads: a large schema takes seconds).
    Ok(schema.to_string())
}

/// The extra constraint fields harnesses send (`regex`, `json_schema`).
fn extra_constraints(c: &CommonParams) -> Result<Vec<(Constraint, &'static str)>, ApiError> {
    let mut out = Vec::new();
    if let Some(r) = &c.regex {
        Constraint::Regex(r.clone()).to_regex().map_err(|e| ApiError::invalid("regex", e.to_string()))?;
        out.push((Constraint::Regex(r.clone()), "regex"));
    }
    if let Some(s) = &c.json_schema {
        out.push((Constraint::JsonSchema(schema_text(s, "json_schema")?), "json_schema"));
    }
    Ok(out)
}

/// The engine's request for `prompt`, checked by the engine (ranges, and that it fits the context); errors name
/// the field as the client gave it (`prompt_param` for the prompt).
pub(crate) fn validate(
    ready: &Ready,
    prompt: Vec<u32>,
    params: &Params,
    logprobs: Option<usize>,
    prompt_param: &str,
) -> Result<ValidRequest, ApiError> {
    let mut req = Request::new(prompt);
    req.sampling = params.sampling.clone();
    req.stop = params.stop.clone();
    req.logprobs = logprobs;
    req.skip_special_tokens = params.skip_special_tokens;
    ready
        .engine
        .validate(req)
        .map_err(|e| ApiError::from(e.renamed("prompt", prompt_param).renamed("max_tokens", params.max_tokens_param)))
}

/// Starts `n` samples of a request (seeds `seed + i`, so samples differ yet repeat).
fn submit(ready: &Ready, req: &ValidRequest, n: usize) -> Result<Vec<RequestStream>, ApiError> {
    (0..n as u64).map(|i| ready.engine.submit(req.sample(i)).map_err(ApiError::from)).collect()
}

/// A token as text and bytes, for logprobs.
fn token_text(ready: &Ready, id: u32) -> (String, Vec<u8>) {
    match ready.space.vocab.bytes(id) {
        Some(b) => (String::from_utf8_lossy(b).into_owned(), b.to_vec()),
        None => {
            let s = ready.tokenizer.id_to_token(id).unwrap_or_default();
            let b = s.as_bytes().to_vec();
            (s, b)
        }
    }
}

fn chat_logprob(ready: &Ready, t: &TokenInfo) -> Value {
    let (tok, bytes) = token_text(ready, t.id);
    let top: Vec<Value> = t
        .top_logprobs
        .iter()
        .map(|&(id, lp)| {
            let (s, b) = token_text(ready, id);
            json!({"token": s, "logprob": lp, "bytes": b})
        })
        .collect();
    json!({"token": tok, "logprob": t.logprob.unwrap_or(0.0), "bytes": bytes, "top_logprobs": top})
}

fn usage(prompt: usize, fins: &[Finished]) -> Value {
    let completion: usize = fins.iter().map(|f| f.completion_tokens).sum();
    let cached = fins.first().map_or(0, |f| f.cached_tokens);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Turns one choice's engine events into chat output, deciding early whether the output is text or tool calls.
struct ChatChoice {
    index: usize,
    mode: ToolMode,
    /// The forms a call may be written in.
    forms: Vec<ToolFormat>,
    /// Text not yet emitted (a possible tool call being read).
    pending: String,
    /// Known to be text: stream it as it comes.
    is_text: bool,
    with_logprobs: bool,
    /// Streaming tool calls: where the scan of `pending` is and what it has sent.
    scan: CallScan,
}

/// The end of a choice.
struct ChoiceEnd {
    content: String,
    calls: Vec<(String, String)>,
    finish_reason: &'static str,
    error: Option<String>,
}

impl ChatChoice {
    fn new(index: usize, mode: ToolMode, format: ToolFormat, with_logprobs: bool) -> Self {
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
    fn push(&mut self, text: &str) -> String {
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

    /// Tool-call delta entries for the output so far (streaming; empty while the output is, or may be, text).
    fn call_deltas(&mut self) -> Vec<Value> {
        if self.is_text
            || self.mode == ToolMode::Off
            || ToolFormat::starts_call(&self.forms, &self.pending) != Some(true)
        {
            return Vec::new();
        }
        self.scan.advance(&self.pending)
    }

    fn finish(&mut self, fin: &Finished) -> ChoiceEnd {
        let rest = std::mem::take(&mut self.pending);
        let mut end =
            ChoiceEnd { content: String::new(), calls: Vec::new(), finish_reason: fin.reason.label(), error: None };
        if let FinishReason::Error(m) = &fin.reason {
            end.error = Some(m.clone());
        }
        if !self.is_text && fin.reason != FinishReason::Length {
            if let Some(calls) = ToolFormat::parse_any(&self.forms, &rest) {
                end.calls = calls;
                end.finish_reason = "tool_calls";
                return end;
            }
        }
        // Not a (complete) call: what was read is the answer's text, never dropped.
        end.content = rest;
        end
    }
}

fn tool_calls_json(calls: &[(String, String)], ids: &[String]) -> Vec<Value> {
    calls
        .iter()
        .zip(ids)
        .map(|((name, args), id)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
        .collect()
}

/// Renders the conversation for the model's template; returns the prompt text.
fn render_chat(ready: &Ready, req: &ChatRequest, mode: &ToolMode) -> Result<String, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let tools_on = *mode != ToolMode::Off;
    let in_template = tools_on && ready.template_has_tools;
    let mut msgs: Vec<Value> = Vec::with_capacity(req.messages.len() + 1);
    for (i, m) in req.messages.iter().enumerate() {
        msgs.push(message_json(ready, m, i, in_template)?);
    }
    if tools_on && !in_template {
        let block = ready.tool_format.system_block(req.tools.as_deref().unwrap_or_default());
        match msgs.first_mut() {
            Some(first) if first["role"] == "system" => {
                let c = first["content"].as_str().unwrap_or_default().to_string();
                first["content"] = Value::String(format!("{c}\n\n{block}"));
            }
            _ => msgs.insert(0, json!({"role": "system", "content": block})),
        }
    }
    let tools: Option<Vec<Value>> = if in_template {
        req.tools.as_ref().map(|ts| {
            ts.iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.function.name,
                        "description": t.function.description,
                        "parameters": t.function.parameters.clone().unwrap_or(json!({"type": "object"})),
                    }})
                })
                .collect()
        })
    } else {
        None
    };
    ready
        .template
        .render(&msgs, tools.as_deref(), true)
        .map_err(|e| ApiError::bad_request(format!("{e} (rendering the messages with the model's chat template)")))
}

fn message_json(ready: &Ready, m: &Message, i: usize, tools_in_template: bool) -> Result<Value, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!("unknown role {other:?} (system, developer, user, assistant, tool)"),
            ))
        }
    };
    let mut content = match &m.content {
        None => String::new(),
        Some(Content::Text(s)) => s.clone(),
        Some(Content::Parts(parts)) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}]"),
                            format!("content parts of type {kind:?} are not supported (text only)"),
                        ))
                    }
                }
            }
            s
        }
    };
    if m.content.is_none() && !(role == "assistant" && m.tool_calls.is_some()) {
        return Err(ApiError::invalid(format!("messages[{i}].content"), "content is required"));
    }
    if role == "tool" && m.tool_call_id.is_none() {
        return Err(ApiError::invalid(format!("messages[{i}].tool_call_id"), "tool messages need a tool_call_id"));
    }
    let mut out = json!({"role": role});
    if let Some(calls) = &m.tool_calls {
        let mut parsed = Vec::new();
        for (j, c) in calls.iter().enumerate() {
            let args = match &c.function.arguments {
                Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| {
                    ApiError::invalid(
                        format!("messages[{i}].tool_calls[{j}].function.arguments"),
                        format!("arguments must be a JSON object string: {e}"),
                    )
                })?,
                v => v.clone(),
            };
            parsed.push((c.id.clone(), c.function.name.clone(), args));
        }
        if tools_in_template {
            out["tool_calls"] = parsed
                .iter()
                .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
                .collect();
        } else {
            let calls: Vec<(&str, &Value)> = parsed.iter().map(|(_, name, args)| (name.as_str(), args)).collect();
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(&ready.tool_format.render_calls(&calls));
        }
    }
    out["content"] = Value::String(content);
    if let Some(id) = &m.tool_call_id {
        out["tool_call_id"] = Value::String(id.clone());
    }
    if let Some(n) = &m.name {
        out["name"] = Value::String(n.clone());
    }
    Ok(out)
}

pub async fn chat(ready: Arc<Ready>, body: &[u8]) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_request(body)?;
    check_model(&ready, req.common.model.as_deref())?;
    let params = req.common.params(ready.vocab_size, &ready.sampling_defaults)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (true, k) => Some(top_logprobs(k, "top_logprobs")?),
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true"));
        }
        (false, _) => None,
    };
    let mode = tool_mode(req.tools.as_deref(), req.tool_choice.as_ref())?;
    let mut constraints = extra_constraints(&req.common)?;
    if let Some(rf) = &req.response_format {
        match rf.kind.as_str() {
            "text" => {}
            "json_object" => constraints.push((Constraint::JsonObject { max_depth: 4 }, "response_format")),
            "json_schema" => {
                let schema = rf.json_schema.as_ref().and_then(|j| j.schema.as_ref()).ok_or_else(|| {
                    ApiError::invalid("response_format.json_schema.schema", "json_schema needs a `schema`")
                })?;
                let param = "response_format.json_schema.schema";
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
    let parallel = req.parallel_tool_calls.unwrap_or(true);
    let tools = req.tools.as_deref().unwrap_or_default();
    match &mode {
        ToolMode::Off => {}
        ToolMode::Auto | ToolMode::Required | ToolMode::Named(_) => {
            if !constraints.is_empty() {
                return Err(ApiError::bad_request(
                    "tools with tool_choice auto/required cannot be combined with response_format, regex or json_schema",
                ));
            }
            constraints.extend(tools::constraint(ready.tool_format, tools, &mode, parallel).map(|c| (c, "tools")));
        }
    }
    if constraints.len() > 1 {
        return Err(ApiError::bad_request("give at most one of response_format, regex and json_schema"));
    }
    let text = render_chat(&ready, &req, &mode)?;
    let prompt = encode(&ready, &text, false)?;
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty"));
    }
    let mut valid = validate(&ready, prompt.clone(), &params, logprobs, "messages")?;
    if let Some((c, param)) = constraints.pop() {
        valid.set_grammar(Some(compile(&ready, c, param).await?));
    }
    let streams = submit(&ready, &valid, params.n)?;
    let choices: Vec<ChatChoice> =
        (0..params.n).map(|i| ChatChoice::new(i, mode.clone(), ready.tool_format, logprobs.is_some())).collect();
    let id = random_id("chatcmpl-");
    let model = ready.model_id.clone();
    let created = now_secs();
    if params.stream {
        return Ok(stream_chat(ready, streams, choices, prompt.len(), params.include_usage, id, model, created));
    }
    // Whole answers.
    let mut out_choices = Vec::new();
    let mut fins = Vec::new();
    for (stream, mut ch) in streams.into_iter().zip(choices) {
        let out = stream.collect_async().await;
        let fin = out.finished.clone().ok_or_else(|| ApiError::internal("the engine dropped a request"))?;
        let mut content = ch.push(&out.text);
        let end = ch.finish(&fin);
        if let Some(e) = end.error {
            return Err(ApiError::internal(format!("generation failed: {e}")));
        }
        content.push_str(&end.content);
        let mut message = json!({"role": "assistant", "content": if end.calls.is_empty() || !content.is_empty() { Value::String(content) } else { Value::Null }});
        if !end.calls.is_empty() {
            let ids: Vec<String> = end.calls.iter().map(|_| random_id("call_")).collect();
            message["tool_calls"] = Value::Array(tool_calls_json(&end.calls, &ids));
        }
        let lp = if ch.with_logprobs {
            json!({"content": out.tokens.iter().map(|t| chat_logprob(&ready, t)).collect::<Vec<_>>()})
        } else {
            Value::Null
        };
        out_choices
            .push(json!({"index": ch.index, "message": message, "logprobs": lp, "finish_reason": end.finish_reason}));
        fins.push(fin);
    }
    Ok(json_reply(
        &json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": out_choices, "usage": usage(prompt.len(), &fins), "system_fingerprint": Value::Null,
        }),
        StatusCode::OK,
    ))
}

/// Token ids of `text`; `add_special` adds the tokenizer's own special tokens (BOS for Llama): wanted for raw
/// prompts, not for a rendered chat template, which writes its own.
pub(crate) fn encode(ready: &Ready, text: &str, add_special: bool) -> Result<Vec<u32>, ApiError> {
    let enc =
        ready.tokenizer.encode(text, add_special).map_err(|e| ApiError::bad_request(format!("tokenizing: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

#[allow(clippy::too_many_arguments)]
fn stream_chat(
    ready: Arc<Ready>,
    streams: Vec<RequestStream>,
    mut choices: Vec<ChatChoice>,
    prompt_len: usize,
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
) -> Response {
    sse_response(move |tx| async move {
        let chunk = |choices: Value| {
            let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        for ch in &choices {
            let first = json!([{"index": ch.index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            if !tx.send(&chunk(first)).await {
                return;
            }
        }
        let mut fins: Vec<Option<Finished>> = vec![None; choices.len()];
        let mut events = Box::pin(merged(streams));
        while let Some((i, ev)) = events.next().await {
            let ch = &mut choices[i];
            match ev {
                Event::Delta { text, tokens } => {
                    let shown = ch.push(&text);
                    for c in ch.call_deltas() {
                        let delta = json!([{"index": i, "delta": {"tool_calls": [c]}, "logprobs": null, "finish_reason": null}]);
                        if !tx.send(&chunk(delta)).await {
                            return;
                        }
                    }
                    let lp = ch.with_logprobs.then(
                        || json!({"content": tokens.iter().map(|t| chat_logprob(&ready, t)).collect::<Vec<_>>()}),
                    );
                    if shown.is_empty() && lp.is_none() {
                        continue;
                    }
                    let delta =
                        json!([{"index": i, "delta": {"content": shown}, "logprobs": lp, "finish_reason": null}]);
                    if !tx.send(&chunk(delta)).await {
                        return;
                    }
                }
                Event::Finished(fin) => {
                    let streamed = ch.scan.calls + usize::from(ch.scan.in_args);
                    let mut end = ch.finish(&fin);
                    if streamed > 0 {
                        // The calls went out as they were written: send only what the scan did not (nothing, when
                        // the output parsed), and never the raw text again.
                        end.content.clear();
                        if end.calls.len() >= streamed {
                            end.calls.drain(..streamed);
                        } else {
                            end.calls.clear();
                        }
                    }
                    if let Some(e) = end.error {
                        let err = ApiError::internal(format!("generation failed: {e}"));
                        tx.send(&err.body()).await;
                        tx.done().await;
                        return;
                    }
                    if !end.content.is_empty() {
                        let delta = json!([{"index": i, "delta": {"content": end.content}, "logprobs": null, "finish_reason": null}]);
                        if !tx.send(&chunk(delta)).await {
                            return;
                        }
                    }
                    for (k, (name, args)) in end.calls.iter().enumerate().map(|(k, c)| (k + streamed, c)) {
                        let head = json!([{"index": i, "delta": {"tool_calls": [{"index": k, "id": random_id("call_"), "type": "function", "function": {"name": name, "arguments": ""}}]}, "logprobs": null, "finish_reason": null}]);
                        let body = json!([{"index": i, "delta": {"tool_calls": [{"index": k, "function": {"arguments": args}}]}, "logprobs": null, "finish_reason": null}]);
                        if !tx.send(&chunk(head)).await || !tx.send(&chunk(body)).await {
                            return;
                        }
                    }
                    let last = json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": end.finish_reason}]);
                    if !tx.send(&chunk(last)).await {
                        return;
                    }
                    fins[i] = Some(fin);
                }
            }
        }
        if include_usage {
            let fins: Vec<Finished> = fins.into_iter().flatten().collect();
            let mut c =
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": []});
            c["usage"] = usage(prompt_len, &fins);
            tx.send(&c).await;
        }
        tx.done().await;
    })
}

/// Legacy completions logprobs for `tokens` whose text starts at `offset` in the choice's text.
fn completion_logprobs(ready: &Ready, tokens: &[TokenInfo], mut offset: usize) -> Value {
    let mut toks = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offs = Vec::new();
    for t in tokens {
        let (s, _) = token_text(ready, t.id);
        offs.push(offset);
        offset += s.len();
        toks.push(Value::String(s));
        lps.push(json!(t.logprob));
        let mut top = serde_json::Map::new();
        for &(id, lp) in &t.top_logprobs {
            top.insert(token_text(ready, id).0, json!(lp));
        }
        tops.push(Value::Object(top));
    }
    json!({"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
}

pub async fn completions(ready: Arc<Ready>, body: &[u8]) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_request(body)?;
    check_model(&ready, req.common.model.as_deref())?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    if req.best_of.is_some_and(|b| b != 1 && Some(b) != req.common.n) {
        return Err(ApiError::invalid("best_of", "best_of is not supported (use n)"));
    }
    let params = req.common.params(ready.vocab_size, &ready.sampling_defaults)?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) => Some(top_logprobs(Some(k), "logprobs")?),
    };
    let echo = req.echo.unwrap_or(false);
    if echo && logprobs.is_some() {
        return Err(ApiError::invalid("echo", "echo with logprobs (prompt logprobs) is not supported"));
    }
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        PromptField::Text(s) => vec![encode(&ready, s, true)?],
        PromptField::Texts(v) => v.iter().map(|s| encode(&ready, s, true)).collect::<Result<_, _>>()?,
        PromptField::Ids(ids) => vec![ids.clone()],
        PromptField::IdLists(v) => v.clone(),
    };
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
        return Err(ApiError::invalid("prompt", "the prompt must not be empty"));
    }
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t as usize >= ready.vocab_size) {
        return Err(ApiError::invalid("prompt", format!("{bad} is not a token id")));
    }
    let mut constraints = extra_constraints(&req.common)?;
    if constraints.len() > 1 {
        return Err(ApiError::bad_request("give at most one of regex and json_schema"));
    }
    let mut valid = prompts
        .iter()
        .map(|p| validate(&ready, p.clone(), &params, logprobs, "prompt"))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((c, param)) = constraints.pop() {
        let grammar = compile(&ready, c, param).await?;
        valid.iter_mut().for_each(|v| v.set_grammar(Some(grammar.clone())));
    }
    let mut streams = Vec::new();
    let mut echoes = Vec::new();
    for (p, v) in prompts.iter().zip(&valid) {
        let echo_text = if echo { ready.tokenizer.decode(p, false).unwrap_or_default() } else { String::new() };
        for s in submit(&ready, v, params.n)? {
            streams.push(s);
            echoes.push(echo_text.clone());
        }
    }
    let prompt_tokens: usize = prompts.iter().map(|p| p.len()).sum();
    let n = params.n;
    let id = random_id("cmpl-");
    let model = ready.model_id.clone();
    let created = now_secs();
    if params.stream {
        let include_usage = params.include_usage;
        return Ok(sse_response(move |tx| async move {
            let mut offsets: Vec<usize> = vec![0; echoes.len()];
            let mut fins: Vec<Option<Finished>> = vec![None; echoes.len()];
            let chunk = |choices: Value| {
                let mut c = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
                if include_usage {
                    c["usage"] = Value::Null;
                }
                c
            };
            for (i, e) in echoes.iter().enumerate() {
                if !e.is_empty() {
                    offsets[i] = e.len();
                    if !tx.send(&chunk(json!([{"index": i, "text": e, "logprobs": null, "finish_reason": null}]))).await
                    {
                        return;
                    }
                }
            }
            let mut events = Box::pin(merged(streams));
            while let Some((i, ev)) = events.next().await {
                let c = match ev {
                    Event::Delta { text, tokens } => {
                        let lp = logprobs.map(|_| completion_logprobs(&ready, &tokens, offsets[i]));
                        offsets[i] += text.len();
                        if text.is_empty() && lp.is_none() {
                            continue;
                        }
                        json!([{"index": i, "text": text, "logprobs": lp, "finish_reason": null}])
                    }
                    Event::Finished(fin) => {
                        if let FinishReason::Error(m) = &fin.reason {
                            tx.send(&ApiError::internal(format!("generation failed: {m}")).body()).await;
                            tx.done().await;
                            return;
                        }
                        let r = fin.reason.label();
                        fins[i] = Some(fin);
                        json!([{"index": i, "text": "", "logprobs": null, "finish_reason": r}])
                    }
                };
                if !tx.send(&chunk(c)).await {
                    return;
                }
            }
            if include_usage {
                let mut c =
                    json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": []});
                let fins: Vec<Finished> = fins.into_iter().flatten().collect();
                c["usage"] = usage_many(prompt_tokens, n, &fins);
                tx.send(&c).await;
            }
            tx.done().await;
        }));
    }
    let mut choices = Vec::new();
    let mut fins = Vec::new();
    for (i, (s, e)) in streams.into_iter().zip(echoes).enumerate() {
        let out = s.collect_async().await;
        let fin = out.finished.clone().ok_or_else(|| ApiError::internal("the engine dropped a request"))?;
        if let FinishReason::Error(m) = &fin.reason {
            return Err(ApiError::internal(format!("generation failed: {m}")));
        }
        let lp = logprobs.map(|_| completion_logprobs(&ready, &out.tokens, e.len()));
        choices.push(json!({"index": i, "text": format!("{e}{}", out.text), "logprobs": lp, "finish_reason": fin.reason.label()}));
        fins.push(fin);
    }
    Ok(json_reply(
        &json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices,
                "usage": usage_many(prompt_tokens, n, &fins)}),
        StatusCode::OK,
    ))
}

/// Usage over several prompts of `n` samples each, `fins` in choice order: each prompt counts once, and its
/// first sample reports what the cache gave it.
fn usage_many(prompt_tokens: usize, n: usize, fins: &[Finished]) -> Value {
    let mut u = usage(prompt_tokens, fins);
    let cached: usize = fins.iter().step_by(n.max(1)).map(|f| f.cached_tokens).sum();
    u["prompt_tokens_details"]["cached_tokens"] = json!(cached);
    u
}
