//! `/v1/responses`: OpenAI's Responses API over the chat machinery.
//!
//! A request becomes a conversation of items (those of `previous_response_id`'s chain, read from the store, then
//! its own `input`), the conversation becomes chat messages (`function_call` items an assistant turn's tool calls,
//! `function_call_output` items tool messages), and from there it is a chat request: the same template, tool and
//! `text.format` grammars and engine. Since a turn's prompt is the previous turn's prompt and output plus the new
//! input, the radix cache serves all but the new part (`input_tokens_details.cached_tokens`).
//!
//! The output becomes items again (a `message` with `output_text`, `function_call`s), streamed as OpenAI's typed
//! events in order with a `sequence_number` each, and stored (unless `store: false`) with the conversation.

use std::sync::Arc;

use runtime::{Event, FinishReason, Finished, TokenInfo};
use serde_json::{json, Value};
use warp::reply::Response;

use super::api::chat::ChatRequest;
use super::api::responses::{
    Deleted, IncompleteDetails, InputItemList, InputTokensDetails, Item, OutputLogprob, OutputTokensDetails,
    OutputTopLogprob, Part, ResponseObject, ResponseUsage, ResponsesRequest, StreamEvent, TextConfig,
};
use super::api::{parse_body, parse_request};
use super::chat::{prepare, ChoiceReader, Prepared};
use super::error::ApiError;
use super::generation::{chat_logprob, collect, failed, submit};
use super::sse::{stream_events, EventStream};
use super::store::{ResponseStore, Stored};
use super::{json_ok, now_secs, random_id, Ready};

/// What `include` asks for to get the output tokens' logprobs.
const INCLUDE_LOGPROBS: &str = "message.output_text.logprobs";

pub async fn create(ready: Arc<Ready>, store: Arc<ResponseStore>, body: &[u8]) -> Result<Response, ApiError> {
    let req: ResponsesRequest = parse_body(body)?;
    check_tools(&req)?;
    if let Some(inc) = req.include.iter().flatten().find(|i| i.as_str() != INCLUDE_LOGPROBS) {
        return Err(ApiError::invalid(
            "include",
            format!("include {inc:?} is not supported (only {INCLUDE_LOGPROBS})"),
        ));
    }
    let truncation = match req.truncation.as_deref() {
        None | Some("disabled") => "disabled",
        Some("auto") => "auto",
        Some(other) => {
            return Err(ApiError::invalid("truncation", format!("truncation must be auto or disabled, got {other:?}")))
        }
    };
    let previous = match &req.previous_response_id {
        None => Vec::new(),
        Some(id) => load(&store, id).await?.ok_or_else(|| previous_not_found(id))?.conversation,
    };
    let input = parse_input(req.input.as_ref())?;
    let mut conversation = previous;
    conversation.extend(input.iter().cloned());
    // `auto` truncation drops the oldest items until the conversation fits.
    let mut first = 0;
    let (prepared, chat) = loop {
        let chat = chat_request(&req, &conversation[first..])?;
        match prepare(&ready, &chat).await.map_err(rename_params) {
            Err(e)
                if truncation == "auto"
                    && e.code == Some("context_length_exceeded")
                    && first + 1 < conversation.len() =>
            {
                first += 1;
                // Never start on a tool result whose call was dropped.
                while first + 1 < conversation.len() && matches!(conversation[first], Item::FunctionCallOutput { .. }) {
                    first += 1;
                }
            }
            Err(e) => return Err(e),
            Ok(p) => break (p, chat),
        }
    };
    let Prepared { valid, mode, params, logprobs } = prepared;
    let input_tokens = valid.request().prompt.len();
    let stream = submit(&ready, &valid, 1)?.pop().ok_or_else(|| ApiError::internal("no stream"))?;
    let reader = ChoiceReader::new(0, mode, ready.tool_format, logprobs.is_some());
    let head = head(&req, &ready, truncation, chat.parallel_tool_calls.unwrap_or(true));
    let turn = Turn { store: req.store.unwrap_or(true).then_some(store), input, conversation, input_tokens };
    if params.stream {
        let state = ResponseStream {
            ready,
            reader,
            turn: Some(turn),
            head,
            seq: 0,
            message: None,
            calls: Vec::new(),
            next_index: 0,
            logprobs: Vec::new(),
            message_logprobs: Vec::new(),
        };
        return Ok(stream_events(vec![stream], state));
    }
    let (out, fin) = collect(stream).await?;
    let mut reader = reader;
    let mut text = reader.push(&out.text);
    let end = reader.finish(&fin);
    text.push_str(&end.content);
    let lps = reader.with_logprobs.then(|| output_logprobs(&ready, &out.tokens));
    let mut output = Vec::new();
    if !text.is_empty() || end.calls.is_empty() {
        output.push(message_item(random_id("msg_"), text, lps, "completed"));
    }
    for (name, arguments) in end.calls {
        output.push(call_item(random_id("fc_"), random_id("call_"), name, arguments, "completed"));
    }
    let response = turn.finish(head, output, &fin)?;
    Ok(json_ok(&response))
}

pub async fn retrieve(store: &ResponseStore, id: &str) -> Result<Response, ApiError> {
    let s = load(store, id).await?.ok_or_else(|| not_found(id))?;
    Ok(json_ok(&s.response))
}

pub async fn delete(store: &ResponseStore, id: &str) -> Result<Response, ApiError> {
    if !store.delete(id).map_err(|e| ApiError::internal(e.to_string()))? {
        return Err(not_found(id));
    }
    Ok(json_ok(&Deleted { id: id.to_string(), object: "response", deleted: true }))
}

pub async fn input_items(store: &ResponseStore, id: &str) -> Result<Response, ApiError> {
    let s = load(store, id).await?.ok_or_else(|| not_found(id))?;
    // Newest first, as OpenAI lists them by default.
    let data: Vec<Item> = s.input_items.into_iter().rev().collect();
    Ok(json_ok(&InputItemList {
        object: "list",
        first_id: data.first().map(|i| i.id().to_string()),
        last_id: data.last().map(|i| i.id().to_string()),
        data,
        has_more: false,
    }))
}

async fn load(store: &ResponseStore, id: &str) -> Result<Option<Stored>, ApiError> {
    store.get(id).map_err(|e| ApiError::internal(e.to_string()))
}

fn not_found(id: &str) -> ApiError {
    ApiError { code: Some("not_found"), ..ApiError::not_found(format!("No response with id '{id}' found.")) }
}

fn previous_not_found(id: &str) -> ApiError {
    ApiError {
        param: Some("previous_response_id".into()),
        code: Some("previous_response_not_found"),
        ..ApiError::not_found(format!("Previous response with id '{id}' not found."))
    }
}

/// Function tools only; a built-in tool is refused by its type.
fn check_tools(req: &ResponsesRequest) -> Result<(), ApiError> {
    for (i, t) in req.tools.iter().flatten().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::invalid(
                format!("tools[{i}].type"),
                format!("tool type {:?} is not supported: radixserve runs function tools only", t.kind),
            ));
        }
        if t.name.as_deref().unwrap_or_default().is_empty() {
            return Err(ApiError::invalid(format!("tools[{i}].name"), "a function tool needs a name"));
        }
    }
    Ok(())
}

/// The request's `input` as items (ids given where the client gave none).
fn parse_input(input: Option<&Value>) -> Result<Vec<Item>, ApiError> {
    let list = match input {
        None | Some(Value::Null) => return Err(ApiError::invalid("input", "input is required")),
        Some(Value::String(s)) => {
            return Ok(vec![Item::Message {
                id: random_id("msg_"),
                role: "user".into(),
                content: vec![Part::InputText { text: s.clone() }],
                status: "completed".into(),
            }])
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid("input", "input must be a string or a list of items")),
    };
    if list.is_empty() {
        return Err(ApiError::invalid("input", "input must not be empty"));
    }
    list.iter().enumerate().map(|(i, v)| parse_item(i, v)).collect()
}

fn parse_item(i: usize, v: &Value) -> Result<Item, ApiError> {
    let field = |f: &str| format!("input[{i}].{f}");
    let obj = v.as_object().ok_or_else(|| ApiError::invalid(format!("input[{i}]"), "an item must be an object"))?;
    let string = |f: &str| -> Result<String, ApiError> {
        match obj.get(f) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ApiError::invalid(field(f), format!("{} must be a string", field(f)))),
            None => Err(ApiError::invalid(field(f), format!("{} is required", field(f)))),
        }
    };
    let id = |prefix: &str| obj.get("id").and_then(Value::as_str).map_or_else(|| random_id(prefix), str::to_owned);
    let kind = match obj.get("type") {
        None => "message",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ApiError::invalid(field("type"), "type must be a string")),
    };
    match kind {
        "message" => {
            let role = string("role")?;
            if !matches!(role.as_str(), "user" | "assistant" | "system" | "developer") {
                return Err(ApiError::invalid(
                    field("role"),
                    format!("unknown role {role:?} (user, assistant, system, developer)"),
                ));
            }
            let content = match obj.get("content") {
                Some(Value::String(s)) => vec![if role == "assistant" {
                    Part::OutputText { text: s.clone(), annotations: Vec::new(), logprobs: None }
                } else {
                    Part::InputText { text: s.clone() }
                }],
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let pf = format!("input[{i}].content[{j}]");
                        let text = p.get("text").and_then(Value::as_str);
                        match (p.get("type").and_then(Value::as_str), text) {
                            (Some("input_text"), Some(t)) => Ok(Part::InputText { text: t.to_string() }),
                            (Some("output_text"), Some(t)) => {
                                Ok(Part::OutputText { text: t.to_string(), annotations: Vec::new(), logprobs: None })
                            }
                            (Some(t @ ("input_text" | "output_text")), None) => {
                                Err(ApiError::invalid(format!("{pf}.text"), format!("a {t} part needs a string text")))
                            }
                            (Some(other), _) => Err(ApiError::invalid(
                                format!("{pf}.type"),
                                format!("content part type {other:?} is not supported (input_text, output_text)"),
                            )),
                            (None, _) => Err(ApiError::invalid(format!("{pf}.type"), "a content part needs a type")),
                        }
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(ApiError::invalid(field("content"), "content must be a string or a list of parts"))
                }
                None => return Err(ApiError::invalid(field("content"), format!("{} is required", field("content")))),
            };
            Ok(Item::Message { id: id("msg_"), role, content, status: "completed".into() })
        }
        "function_call" => Ok(Item::FunctionCall {
            id: id("fc_"),
            call_id: string("call_id")?,
            name: string("name")?,
            arguments: string("arguments")?,
            status: "completed".into(),
        }),
        "function_call_output" => {
            let output = match obj.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => {
                    return Err(ApiError::invalid(field("output"), format!("{} is required", field("output"))))
                }
                Some(other) => other.to_string(),
            };
            Ok(Item::FunctionCallOutput {
                id: id("fco_"),
                call_id: string("call_id")?,
                output,
                status: "completed".into(),
            })
        }
        other => Err(ApiError::invalid(
            field("type"),
            format!("item type {other:?} is not supported (message, function_call, function_call_output)"),
        )),
    }
}

/// The chat request a conversation is: `instructions` as the system message, items as messages.
fn chat_request(req: &ResponsesRequest, items: &[Item]) -> Result<ChatRequest, ApiError> {
    let mut messages: Vec<Value> = Vec::new();
    if let Some(ins) = &req.instructions {
        messages.push(json!({"role": "system", "content": ins}));
    }
    for item in items {
        match item {
            Item::Message { role, content, .. } => {
                let role = if role == "developer" { "system" } else { role.as_str() };
                let text: String = content.iter().map(Part::text).collect();
                messages.push(json!({"role": role, "content": text}));
            }
            Item::FunctionCall { call_id, name, arguments, .. } => {
                let call =
                    json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
                // Consecutive calls are one assistant turn.
                match messages.last_mut() {
                    Some(m) if m["role"] == "assistant" && m["tool_calls"].is_array() => {
                        m["tool_calls"].as_array_mut().expect("checked").push(call)
                    }
                    _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Item::FunctionCallOutput { call_id, output, .. } => {
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
        }
    }
    let mut chat = json!({"messages": messages});
    let c = chat.as_object_mut().expect("an object");
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            c.insert(k.into(), v);
        }
    };
    put("model", req.model.clone().map(Value::from));
    put("temperature", req.temperature.map(Value::from));
    put("top_p", req.top_p.map(Value::from));
    put("seed", req.seed.map(Value::from));
    put("max_tokens", req.max_output_tokens.map(Value::from));
    put("parallel_tool_calls", req.parallel_tool_calls.map(Value::from));
    put("user", req.user.clone().map(Value::from));
    put("stream", req.stream.map(Value::from));
    if req.include.iter().flatten().any(|i| i == INCLUDE_LOGPROBS) || req.top_logprobs.is_some_and(|k| k > 0) {
        put("logprobs", Some(Value::from(true)));
        put("top_logprobs", Some(Value::from(req.top_logprobs.unwrap_or(0))));
    }
    if let Some(tools) = &req.tools {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {"name": t.name, "description": t.description,
                       "parameters": t.parameters, "strict": t.strict}})
            })
            .collect();
        put("tools", Some(Value::from(tools)));
    }
    match &req.tool_choice {
        None => {}
        Some(Value::String(s)) => put("tool_choice", Some(Value::from(s.clone()))),
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").cloned().unwrap_or(Value::Null);
            put("tool_choice", Some(json!({"type": "function", "function": {"name": name}})));
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!(
                "tool_choice must be none, auto, required or {{\"type\": \"function\", \"name\": ...}}, got {other}"
            ),
            ))
        }
    }
    if let Some(f) = req.text.as_ref().and_then(|t| t.format.as_ref()) {
        let rf = match f.kind.as_str() {
            "text" => json!({"type": "text"}),
            "json_object" => json!({"type": "json_object"}),
            "json_schema" => {
                json!({"type": "json_schema", "json_schema": {"name": f.name, "schema": f.schema, "strict": f.strict}})
            }
            other => {
                return Err(ApiError::invalid(
                    "text.format.type",
                    format!("unknown text.format type {other:?} (text, json_object, json_schema)"),
                ))
            }
        };
        put("response_format", Some(rf));
    }
    let bytes = serde_json::to_vec(&chat).map_err(|e| ApiError::internal(e.to_string()))?;
    parse_request(&bytes).map_err(rename_params)
}

/// Chat's field names in an error, as the Responses request names them.
fn rename_params(mut e: ApiError) -> ApiError {
    const RENAMES: &[(&str, &str)] = &[
        ("messages", "input"),
        ("max_tokens", "max_output_tokens"),
        ("response_format.json_schema.schema", "text.format.schema"),
        ("response_format", "text.format"),
        ("tool_choice.function.name", "tool_choice.name"),
    ];
    if let Some(p) = &e.param {
        for (from, to) in RENAMES {
            if p == from || p.starts_with(&format!("{from}.")) || p.starts_with(&format!("{from}[")) {
                let renamed = format!("{to}{}", &p[from.len()..]);
                e.message = e.message.replace(from, to);
                e.param = Some(renamed);
                break;
            }
        }
    }
    e
}

/// The response object's fields that the request fixes.
fn head(req: &ResponsesRequest, ready: &Ready, truncation: &str, parallel: bool) -> ResponseObject {
    ResponseObject {
        id: random_id("resp_"),
        object: "response".into(),
        created_at: now_secs(),
        status: "in_progress".into(),
        error: None,
        incomplete_details: None,
        instructions: req.instructions.clone(),
        max_output_tokens: req.max_output_tokens,
        model: ready.model_id.clone(),
        output: Vec::new(),
        parallel_tool_calls: parallel,
        previous_response_id: req.previous_response_id.clone(),
        store: req.store.unwrap_or(true),
        temperature: req.temperature,
        top_p: req.top_p,
        top_logprobs: req.top_logprobs,
        text: req.text.clone().unwrap_or(TextConfig {
            format: Some(super::api::responses::TextFormat {
                kind: "text".into(),
                name: None,
                schema: None,
                strict: None,
                description: None,
            }),
        }),
        tool_choice: req.tool_choice.clone().unwrap_or_else(|| Value::from("auto")),
        tools: req.tools.clone().unwrap_or_default(),
        truncation: truncation.into(),
        usage: None,
        user: req.user.clone(),
        metadata: req.metadata.clone().unwrap_or_default(),
    }
}

fn message_item(id: String, text: String, logprobs: Option<Vec<OutputLogprob>>, status: &str) -> Item {
    Item::Message {
        id,
        role: "assistant".into(),
        content: vec![Part::OutputText { text, annotations: Vec::new(), logprobs }],
        status: status.into(),
    }
}

fn call_item(id: String, call_id: String, name: String, arguments: String, status: &str) -> Item {
    Item::FunctionCall { id, call_id, name, arguments, status: status.into() }
}

fn output_logprobs(ready: &Ready, tokens: &[TokenInfo]) -> Vec<OutputLogprob> {
    tokens
        .iter()
        .map(|t| {
            let c = chat_logprob(ready, t);
            OutputLogprob {
                token: c.token,
                logprob: c.logprob,
                bytes: c.bytes,
                top_logprobs: c
                    .top_logprobs
                    .into_iter()
                    .map(|x| OutputTopLogprob { token: x.token, logprob: x.logprob, bytes: x.bytes })
                    .collect(),
            }
        })
        .collect()
}

/// What a turn keeps until its output is known.
struct Turn {
    store: Option<Arc<ResponseStore>>,
    input: Vec<Item>,
    conversation: Vec<Item>,
    input_tokens: usize,
}

impl Turn {
    /// The finished response: status, usage, output; stored unless `store: false` (a short blocking write, done
    /// in place on the async worker, which tokio hands the worker's other tasks off for).
    fn finish(self, mut r: ResponseObject, output: Vec<Item>, fin: &Finished) -> Result<ResponseObject, ApiError> {
        failed(fin)?;
        if fin.reason == FinishReason::Length {
            r.status = "incomplete".into();
            r.incomplete_details = Some(IncompleteDetails { reason: "max_output_tokens".into() });
        } else {
            r.status = "completed".into();
        }
        r.usage = Some(ResponseUsage {
            input_tokens: self.input_tokens,
            input_tokens_details: InputTokensDetails {
                cached_tokens: fin.cached_tokens,
                cache_write_tokens: self.input_tokens.saturating_sub(fin.cached_tokens),
            },
            output_tokens: fin.completion_tokens,
            output_tokens_details: OutputTokensDetails { reasoning_tokens: 0 },
            total_tokens: self.input_tokens + fin.completion_tokens,
        });
        r.output = output;
        if let Some(store) = self.store {
            let mut conversation = self.conversation;
            conversation.extend(r.output.iter().cloned());
            let stored = Stored { response: r.clone(), input_items: self.input, conversation };
            tokio::task::block_in_place(|| store.put(&stored))
                .map_err(|e| ApiError::internal(format!("storing the response: {e}")))?;
        }
        Ok(r)
    }
}

/// The streamed response: OpenAI's events in order, each with its `sequence_number`.
struct ResponseStream {
    ready: Arc<Ready>,
    reader: ChoiceReader,
    turn: Option<Turn>,
    head: ResponseObject,
    seq: usize,
    /// The open message item: (output index, id, text so far).
    message: Option<(usize, String, String)>,
    /// Open function calls (streamed): (output index, item id, call id, name, arguments so far).
    calls: Vec<(usize, String, String, String, String)>,
    next_index: usize,
    /// Logprobs of output held back while it might have been a call.
    logprobs: Vec<OutputLogprob>,
    /// Logprobs of the message's text so far.
    message_logprobs: Vec<OutputLogprob>,
}

impl ResponseStream {
    fn event(&mut self, kind: &'static str, body: Value) -> StreamEvent {
        let e = StreamEvent { kind, sequence_number: self.seq, body };
        self.seq += 1;
        e
    }

    fn with_response(&mut self, kind: &'static str, r: &ResponseObject) -> StreamEvent {
        let body = json!({"response": r});
        self.event(kind, body)
    }

    /// Text for the message item, opening it first if needed.
    fn text(&mut self, out: &mut Vec<StreamEvent>, delta: &str, logprobs: Vec<OutputLogprob>) {
        if self.message.is_none() {
            let (index, id) = (self.next_index, random_id("msg_"));
            self.next_index += 1;
            let item = Item::Message {
                id: id.clone(),
                role: "assistant".into(),
                content: Vec::new(),
                status: "in_progress".into(),
            };
            out.push(self.event("response.output_item.added", json!({"output_index": index, "item": item})));
            let part = json!({"type": "output_text", "text": "", "annotations": []});
            out.push(self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            ));
            self.message = Some((index, id, String::new()));
        }
        if delta.is_empty() {
            return;
        }
        self.message_logprobs.extend(logprobs.iter().cloned());
        let (index, id, text) = self.message.as_mut().expect("opened above");
        text.push_str(delta);
        let body = json!({"item_id": id.clone(), "output_index": *index, "content_index": 0, "delta": delta,
                          "logprobs": logprobs});
        out.push(self.event("response.output_text.delta", body));
    }
}

impl EventStream for ResponseStream {
    type Chunk = StreamEvent;
    const DONE: bool = false;

    fn event_name(chunk: &StreamEvent) -> Option<&'static str> {
        Some(chunk.kind)
    }

    fn first(&mut self) -> Vec<StreamEvent> {
        let r = self.head.clone();
        vec![self.with_response("response.created", &r), self.with_response("response.in_progress", &r)]
    }

    fn on_event(&mut self, _: usize, event: Event) -> Result<Vec<StreamEvent>, ApiError> {
        let mut out = Vec::new();
        match event {
            Event::PromptLogprobs(_) => {}
            Event::Delta { text, tokens } => {
                let shown = self.reader.push(&text);
                for d in self.reader.call_deltas() {
                    if let (Some(call_id), Some(name)) = (d.id.clone(), d.function.name.clone()) {
                        let (index, id) = (self.next_index, random_id("fc_"));
                        self.next_index += 1;
                        let item = call_item(id.clone(), call_id.clone(), name.clone(), String::new(), "in_progress");
                        out.push(
                            self.event("response.output_item.added", json!({"output_index": index, "item": item})),
                        );
                        self.calls.push((index, id, call_id, name, String::new()));
                    }
                    if !d.function.arguments.is_empty() {
                        let Some((index, id, _, _, args)) = self.calls.last_mut() else { continue };
                        args.push_str(&d.function.arguments);
                        let body =
                            json!({"item_id": id.clone(), "output_index": *index, "delta": d.function.arguments});
                        out.push(self.event("response.function_call_arguments.delta", body));
                    }
                }
                let lps = if self.reader.with_logprobs { output_logprobs(&self.ready, &tokens) } else { Vec::new() };
                if !shown.is_empty() {
                    self.text(&mut out, &shown, lps);
                } else {
                    // Held back (a possible call): its logprobs go with the text if it turns out to be text.
                    self.logprobs.extend(lps);
                }
            }
            Event::Finished(fin) => {
                failed(&fin)?;
                let streamed = self.reader.calls_streamed();
                let mut end = self.reader.finish(&fin);
                if streamed > 0 {
                    end.content.clear();
                }
                if !end.content.is_empty() || (self.message.is_none() && end.calls.is_empty()) {
                    let lps = std::mem::take(&mut self.logprobs);
                    self.text(&mut out, &end.content, lps);
                }
                let mut output: Vec<(usize, Item)> = Vec::new();
                if let Some((index, id, text)) = self.message.take() {
                    let all = std::mem::take(&mut self.message_logprobs);
                    out.push(self.event(
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": all}),
                    ));
                    let lps = self.reader.with_logprobs.then_some(all);
                    let part = json!({"type": "output_text", "text": text, "annotations": []});
                    out.push(self.event(
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                    ));
                    let item = message_item(id, text, lps, "completed");
                    out.push(self.event("response.output_item.done", json!({"output_index": index, "item": item})));
                    output.push((index, item));
                }
                // Calls streamed as they were written are closed with the parsed arguments (the same text); any
                // the scan did not stream go out whole.
                let open = std::mem::take(&mut self.calls);
                let mut parsed = end.calls.into_iter();
                for (index, id, call_id, name, args) in open {
                    let (name, args) = parsed.next().unwrap_or((name, args));
                    let item = call_item(id.clone(), call_id, name.clone(), args.clone(), "completed");
                    out.push(self.event(
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": index, "name": name, "arguments": args}),
                    ));
                    out.push(self.event("response.output_item.done", json!({"output_index": index, "item": item})));
                    output.push((index, item));
                }
                for (name, args) in parsed {
                    let (index, id, call_id) = (self.next_index, random_id("fc_"), random_id("call_"));
                    self.next_index += 1;
                    let open = call_item(id.clone(), call_id.clone(), name.clone(), String::new(), "in_progress");
                    out.push(self.event("response.output_item.added", json!({"output_index": index, "item": open})));
                    out.push(self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": index, "delta": args}),
                    ));
                    out.push(self.event(
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": index, "name": name, "arguments": args}),
                    ));
                    let item = call_item(id, call_id, name, args, "completed");
                    out.push(self.event("response.output_item.done", json!({"output_index": index, "item": item})));
                    output.push((index, item));
                }
                output.sort_by_key(|(i, _)| *i);
                let output: Vec<Item> = output.into_iter().map(|(_, item)| item).collect();
                let turn = self.turn.take().ok_or_else(|| ApiError::internal("finished twice"))?;
                let response = turn.finish(self.head.clone(), output, &fin)?;
                // `response.completed` whatever the status (which the response carries), as vLLM sends it: the
                // openai SDK's stream helper takes its final response from that event only.
                out.push(self.with_response("response.completed", &response));
            }
        }
        Ok(out)
    }

    fn last(self) -> Vec<StreamEvent> {
        Vec::new()
    }
}
