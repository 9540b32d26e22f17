//! Routes beside the OpenAI ones: models, SGLang's `/generate`, cache flushing, tokenization, the OpenAPI
//! description.

use std::sync::Arc;

use grammar::Constraint;
use runtime::{Event, FinishReason};
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;

use super::chat::{compile, encode, validate};
use super::error::ApiError;
use super::openai::{parse_body, StopField};
use super::sse::sse_response;
use super::{json_reply, Ready};

fn model_card(ready: &Ready) -> Value {
    json!({
        "id": ready.model_id,
        "object": "model",
        "created": ready.created,
        "owned_by": "radixserve",
        "root": ready.model_id,
        "parent": null,
        "max_model_len": ready.max_model_len,
        "sampling_defaults": ready.sampling_defaults,
    })
}

pub fn models(ready: &Ready) -> Response {
    json_reply(&json!({"object": "list", "data": [model_card(ready)]}), StatusCode::OK)
}

pub fn model(ready: &Ready, id: &str) -> Result<Response, ApiError> {
    if id == ready.model_id {
        Ok(json_reply(&model_card(ready), StatusCode::OK))
    } else {
        Err(ApiError::model_not_found(id))
    }
}

pub fn flush_cache(ready: &Ready) -> Result<Response, ApiError> {
    if ready.engine.flush_cache() {
        Ok(json_reply(&json!({"message": "Cache flushed."}), StatusCode::OK))
    } else {
        Err(ApiError::bad_request("the cache cannot be flushed while requests are running; retry when idle"))
    }
}

#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    #[serde(alias = "text")]
    prompt: String,
    add_special_tokens: Option<bool>,
}

pub fn tokenize(ready: &Ready, body: &[u8]) -> Result<Response, ApiError> {
    let req: TokenizeRequest = parse_body(body)?;
    let ids = encode(ready, &req.prompt, req.add_special_tokens.unwrap_or(true))?;
    Ok(json_reply(&json!({"tokens": ids, "count": ids.len(), "max_model_len": ready.max_model_len}), StatusCode::OK))
}

#[derive(Debug, Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

pub fn detokenize(ready: &Ready, body: &[u8]) -> Result<Response, ApiError> {
    let req: DetokenizeRequest = parse_body(body)?;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= ready.vocab_size) {
        return Err(ApiError::invalid("tokens", format!("{bad} is not a token id")));
    }
    let text = ready.tokenizer.decode(&req.tokens, false).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(json_reply(&json!({"prompt": text}), StatusCode::OK))
}

/// SGLang's sampling parameters for `/generate`.
#[derive(Debug, Default, Deserialize)]
struct NativeSampling {
    max_new_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    stop: Option<StopField>,
    stop_token_ids: Option<Vec<u32>>,
    ignore_eos: Option<bool>,
    min_new_tokens: Option<i64>,
    skip_special_tokens: Option<bool>,
    json_schema: Option<Value>,
    regex: Option<String>,
    seed: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct GenerateRequest {
    text: Option<String>,
    input_ids: Option<Vec<u32>>,
    #[serde(default)]
    sampling_params: NativeSampling,
    stream: Option<bool>,
    return_logprob: Option<bool>,
    top_logprobs_num: Option<i64>,
}

pub async fn generate(ready: Arc<Ready>, body: &[u8]) -> Result<Response, ApiError> {
    let req: GenerateRequest = parse_body(body)?;
    let prompt = match (&req.text, &req.input_ids) {
        (Some(t), None) => encode(&ready, t, true)?,
        (None, Some(ids)) => ids.clone(),
        _ => return Err(ApiError::bad_request("give exactly one of `text` and `input_ids`")),
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("text", "the prompt is empty"));
    }
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= ready.vocab_size) {
        return Err(ApiError::invalid("input_ids", format!("{bad} is not a token id")));
    }
    // Reuse the OpenAI checks by mapping onto the common fields.
    let sp = &req.sampling_params;
    let common = super::openai::CommonParams {
        max_tokens: sp.max_new_tokens,
        temperature: sp.temperature,
        top_p: sp.top_p,
        top_k: sp.top_k,
        min_p: sp.min_p,
        repetition_penalty: sp.repetition_penalty,
        frequency_penalty: sp.frequency_penalty,
        presence_penalty: sp.presence_penalty,
        stop: sp.stop.clone(),
        stop_token_ids: sp.stop_token_ids.clone(),
        ignore_eos: sp.ignore_eos,
        min_tokens: sp.min_new_tokens,
        skip_special_tokens: sp.skip_special_tokens,
        seed: sp.seed,
        ..Default::default()
    };
    let mut params = common.params(ready.vocab_size, &ready.sampling_defaults).map_err(|mut e| {
        e.param = e.param.map(|p| format!("sampling_params.{p}"));
        e
    })?;
    params.max_tokens_param = "max_new_tokens";
    if sp.max_new_tokens.is_none() {
        params.stop.max_tokens = runtime::MaxTokens::UpTo(128);
    }
    let constraint = match (&sp.regex, &sp.json_schema) {
        (Some(r), None) => Some(Constraint::Regex(r.clone())),
        (None, Some(Value::String(s))) => Some(Constraint::JsonSchema(s.clone())),
        (None, Some(v)) => Some(Constraint::JsonSchema(v.to_string())),
        (None, None) => None,
        _ => return Err(ApiError::bad_request("give at most one of regex and json_schema")),
    };
    let grammar = match constraint {
        Some(c) => {
            let param = if sp.regex.is_some() { "sampling_params.regex" } else { "sampling_params.json_schema" };
            Some(compile(&ready, c, param).await?)
        }
        None => None,
    };
    let logprobs = if req.return_logprob.unwrap_or(false) {
        Some(super::openai::top_logprobs(req.top_logprobs_num, "top_logprobs_num")?)
    } else {
        None
    };
    let mut valid = validate(&ready, prompt, &params, logprobs, "input_ids").map_err(|mut e| {
        if e.param.as_deref().is_some_and(|p| p != "input_ids") {
            e.param = e.param.map(|p| format!("sampling_params.{p}"));
        }
        e
    })?;
    valid.set_grammar(grammar);
    let mut stream = ready.engine.submit(valid)?;
    let meta = |fin: &runtime::Finished, ids: &[u32]| {
        let finish = match &fin.reason {
            FinishReason::StopString(s) => json!({"type": "stop", "matched": s}),
            FinishReason::StopToken(t) => json!({"type": "stop", "matched": t}),
            FinishReason::Stop => json!({"type": "stop", "matched": null}),
            FinishReason::Length => json!({"type": "length", "length": fin.completion_tokens}),
            FinishReason::Error(m) => json!({"type": "abort", "message": m}),
        };
        json!({
            "prompt_tokens": fin.prompt_tokens,
            "completion_tokens": fin.completion_tokens,
            "cached_tokens": fin.cached_tokens,
            "finish_reason": finish,
            "output_ids": ids,
        })
    };
    if req.stream.unwrap_or(false) {
        return Ok(sse_response(move |tx| async move {
            let mut text = String::new();
            let mut ids = Vec::new();
            while let Some(ev) = stream.recv().await {
                let (done, v) = match ev {
                    Event::Delta { text: t, tokens } => {
                        text.push_str(&t);
                        ids.extend(tokens.iter().map(|t| t.id));
                        (false, json!({"text": text, "meta_info": {"completion_tokens": ids.len()}}))
                    }
                    Event::Finished(fin) => (true, json!({"text": text, "meta_info": meta(&fin, &ids)})),
                };
                if !tx.send(&v).await {
                    return;
                }
                if done {
                    break;
                }
            }
            tx.done().await;
        }));
    }
    let out = stream.collect_async().await;
    let fin = out.finished.clone().ok_or_else(|| ApiError::internal("the engine dropped the request"))?;
    let mut v = json!({"text": out.text, "meta_info": meta(&fin, &out.ids())});
    if logprobs.is_some() {
        v["meta_info"]["output_token_logprobs"] =
            out.tokens.iter().map(|t| json!([t.logprob, t.id, null])).collect::<Vec<_>>().into();
    }
    Ok(json_reply(&v, StatusCode::OK))
}

/// The OpenAPI 3 description of every route (what schemathesis fuzzes).
pub fn openapi() -> Value {
    let err = json!({"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |desc: &str| json!({"description": desc, "content": {"application/json": {"schema": {"type": "object"}}}});
    let post = |summary: &str, schema: Value| {
        json!({"post": {
            "summary": summary,
            "requestBody": {"required": true, "content": {"application/json": {"schema": schema}}},
            "responses": {"200": ok("Success"), "400": err, "401": err, "404": err, "413": err, "503": err}
        }})
    };
    let get = |summary: &str| json!({"get": {"summary": summary, "responses": {"200": ok("Success"), "401": err, "404": err, "503": err}}});
    let message = json!({
        "type": "object", "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}}, {"type": "null"}]},
            "name": {"type": "string"},
            "tool_call_id": {"type": "string"}
        }
    });
    let sampling = json!({
        "model": {"type": "string"},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 256},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "n": {"type": "integer", "minimum": 1, "maximum": 4},
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
        "seed": {"type": "integer"},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "stream": {"type": "boolean"},
        "top_k": {"type": "integer"},
        "min_p": {"type": "number", "minimum": 0, "maximum": 1},
        "ignore_eos": {"type": "boolean"}
    });
    let mut chat_props = sampling.as_object().cloned().unwrap_or_default();
    chat_props.insert("messages".into(), json!({"type": "array", "minItems": 1, "items": message}));
    chat_props.insert("logprobs".into(), json!({"type": "boolean"}));
    chat_props.insert("top_logprobs".into(), json!({"type": "integer", "minimum": 0, "maximum": 20}));
    chat_props.insert("response_format".into(), json!({"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["text", "json_object", "json_schema"]}, "json_schema": {"type": "object"}}}));
    chat_props.insert("tools".into(), json!({"type": "array", "items": {"type": "object"}}));
    chat_props.insert("tool_choice".into(), json!({"anyOf": [{"type": "string"}, {"type": "object"}]}));
    let mut cmpl_props = sampling.as_object().cloned().unwrap_or_default();
    cmpl_props.insert("prompt".into(), json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 49151}}]}));
    cmpl_props.insert("echo".into(), json!({"type": "boolean"}));
    cmpl_props.insert("logprobs".into(), json!({"type": "integer", "minimum": 0, "maximum": 20}));
    json!({
        "openapi": "3.0.3",
        "info": {"title": "radixserve", "version": env!("CARGO_PKG_VERSION"), "description": "OpenAI-compatible LLM serving with prefix caching and structured generation."},
        "paths": {
            "/v1/chat/completions": post("Chat completion", json!({"type": "object", "required": ["messages"], "properties": chat_props})),
            "/v1/completions": post("Text completion", json!({"type": "object", "required": ["prompt"], "properties": cmpl_props})),
            "/v1/models": get("List models"),
            "/v1/models/{model}": {"get": {"summary": "One model", "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": ok("The model"), "404": err}}},
            "/health": {"get": {"summary": "200 once the model is loaded", "responses": {"200": ok("Ready"), "503": err}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/generate": post("SGLang-native generation", json!({"type": "object", "properties": {"text": {"type": "string"}, "sampling_params": {"type": "object", "properties": {"max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 256}, "temperature": {"type": "number", "minimum": 0}}}, "stream": {"type": "boolean"}}})),
            "/flush_cache": post("Empty the radix cache", json!({"type": "object"})),
            "/tokenize": post("Tokenize", json!({"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}, "add_special_tokens": {"type": "boolean"}}})),
            "/detokenize": post("Detokenize", json!({"type": "object", "required": ["tokens"], "properties": {"tokens": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 49151}}}})),
            "/openapi.json": {"get": {"summary": "This description", "responses": {"200": ok("OpenAPI 3")}}}
        },
        "components": {"schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}}}
    })
}
