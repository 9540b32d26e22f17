//! The OpenAPI 3.1 description of every route (what schemathesis fuzzes), derived by utoipa from the request and
//! response types in [`super::api`], then given the limits of the model actually loaded ([`document`]).

use serde_json::{json, Value};
use utoipa::OpenApi;

use super::api::chat::{ChatChunk, ChatCompletion, ChatRequest};
use super::api::common::{CommonParams, MAX_N};
use super::api::completions::{Completion, CompletionRequest};
use super::api::embeddings::{EmbeddingRequest, EmbeddingResponse};
use super::api::models::{ModelCard, ModelList};
use super::api::native::{
    DetokenizeRequest, DetokenizeResponse, GenerateRequest, GenerateResponse, Health, Message, TokenizeRequest,
    TokenizeResponse,
};
use super::api::responses::{Deleted, InputItemList, ResponseObject, ResponsesRequest};
use super::api::ErrorBody;

// Each route's documentation; the handlers live in their own files and read these types.

/// Chat completion; with `stream: true`, server-sent `ChatChunk`s ending in `[DONE]`.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatRequest, responses(
    (status = 200, body = ChatCompletion), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn chat() {}

/// Text completion; with `stream: true`, server-sent `Completion` chunks ending in `[DONE]`.
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest, responses(
    (status = 200, body = Completion), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn completions() {}

/// Embeddings of one or more inputs, from an embedding model (the first served when `model` is absent).
#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingRequest, responses(
    (status = 200, body = EmbeddingResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn embeddings() {}

/// A model response (OpenAI's Responses API); with `stream: true`, server-sent typed events (`event:` names,
/// each with a `sequence_number`) ending in `response.completed`.
#[utoipa::path(post, path = "/v1/responses", request_body = ResponsesRequest, responses(
    (status = 200, body = ResponseObject), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn responses_create() {}

/// A stored response.
#[utoipa::path(get, path = "/v1/responses/{response_id}", params(("response_id" = String, Path)), responses(
    (status = 200, body = ResponseObject), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn responses_get() {}

/// Deletes a stored response.
#[utoipa::path(delete, path = "/v1/responses/{response_id}", params(("response_id" = String, Path)), responses(
    (status = 200, body = Deleted), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn responses_delete() {}

/// The input items of a stored response, newest first.
#[utoipa::path(get, path = "/v1/responses/{response_id}/input_items", params(("response_id" = String, Path)),
    responses((status = 200, body = InputItemList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn responses_input_items() {}

/// The served models.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)))]
#[allow(dead_code)]
fn models() {}

/// One model.
#[utoipa::path(get, path = "/v1/models/{model}", params(("model" = String, Path)), responses(
    (status = 200, body = ModelCard), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn model() {}

/// SGLang-native generation; with `stream: true`, server-sent `GenerateResponse`s ending in `[DONE]`.
#[utoipa::path(post, path = "/generate", request_body = GenerateRequest, responses(
    (status = 200, body = GenerateResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn generate() {}

/// Token ids of a text.
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest, responses(
    (status = 200, body = TokenizeResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
#[allow(dead_code)]
fn tokenize() {}

/// The text of token ids.
#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest, responses(
    (status = 200, body = DetokenizeResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
#[allow(dead_code)]
fn detokenize() {}

/// Empties the radix cache (400 while requests run).
#[utoipa::path(post, path = "/flush_cache", responses(
    (status = 200, body = Message), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
#[allow(dead_code)]
fn flush_cache() {}

/// 200 once every model is loaded, 503 (naming those that are not) before.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn health() {}

/// Prometheus metrics (text).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}

/// This description.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
#[allow(dead_code)]
fn openapi() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "radixserve",
        description = "OpenAI-compatible LLM serving with prefix caching and structured generation."
    ),
    paths(
        chat,
        completions,
        embeddings,
        responses_create,
        responses_get,
        responses_delete,
        responses_input_items,
        models,
        model,
        generate,
        tokenize,
        detokenize,
        flush_cache,
        health,
        metrics,
        openapi
    ),
    components(schemas(CommonParams, ChatChunk))
)]
struct ApiDoc;

/// The model-dependent limits the document states.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Token ids are below this.
    pub vocab_size: usize,
    /// Prompt plus output tokens of one request.
    pub max_model_len: usize,
}

/// The document, with `limits` (none while the model loads).
pub fn document(limits: Option<Limits>) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|e| json!({"error": e.to_string()}));
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let schemas = &mut doc["components"]["schemas"];
    // A chat or text completion request is its own fields and the common ones (read from the same body).
    for name in ["ChatRequest", "CompletionRequest"] {
        let own = schemas[name].take();
        schemas[name] = json!({"allOf": [own, {"$ref": "#/components/schemas/CommonParams"}]});
    }
    let common = &mut schemas["CommonParams"]["properties"];
    let range = |v: &mut Value, min: Value, max: Value| {
        v["minimum"] = min;
        v["maximum"] = max;
    };
    range(&mut common["n"], json!(1), json!(MAX_N));
    range(&mut common["temperature"], json!(0), json!(2));
    range(&mut common["presence_penalty"], json!(-2), json!(2));
    range(&mut common["frequency_penalty"], json!(-2), json!(2));
    range(&mut common["min_p"], json!(0), json!(1));
    common["top_p"]["exclusiveMinimum"] = json!(0);
    common["top_p"]["maximum"] = json!(1);
    common["top_k"]["minimum"] = json!(-1);
    if let Some(l) = limits {
        for field in ["max_tokens", "max_completion_tokens"] {
            range(&mut common[field], json!(1), json!(l.max_model_len.saturating_sub(1)));
        }
        // Every list of token ids: within the vocabulary.
        bound_token_ids(&mut doc, l.vocab_size.saturating_sub(1));
    }
    doc
}

/// Sets `maximum` on the integer items of every array property named like a list of token ids.
fn bound_token_ids(v: &mut Value, max_id: usize) {
    const ID_LISTS: &[&str] = &["tokens", "input_ids", "stop_token_ids", "prompt"];
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for (name, prop) in props.iter_mut() {
                    if ID_LISTS.contains(&name.as_str()) {
                        bound_items(prop, max_id);
                    }
                }
            }
            map.values_mut().for_each(|x| bound_token_ids(x, max_id));
        }
        Value::Array(xs) => xs.iter_mut().for_each(|x| bound_token_ids(x, max_id)),
        _ => {}
    }
}

/// Within a property's schema (through `oneOf`/`anyOf`/arrays of arrays): integer items get `0..=max_id`.
fn bound_items(v: &mut Value, max_id: usize) {
    match v {
        Value::Object(map) => {
            let is_int = map
                .get("type")
                .is_some_and(|t| t == "integer" || t.as_array().is_some_and(|a| a.contains(&json!("integer"))));
            if is_int {
                map.insert("minimum".into(), json!(0));
                map.insert("maximum".into(), json!(max_id));
            }
            map.values_mut().for_each(|x| bound_items(x, max_id));
        }
        Value::Array(xs) => xs.iter_mut().for_each(|x| bound_items(x, max_id)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document names every route and states the loaded model's limits, not another model's.
    #[test]
    fn the_document_is_derived_and_carries_the_models_limits() {
        let doc = document(Some(Limits { vocab_size: 1000, max_model_len: 4096 }));
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/responses",
            "/v1/models",
            "/generate",
            "/tokenize",
            "/health",
        ] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
        let s = &doc["components"]["schemas"];
        assert_eq!(s["CommonParams"]["properties"]["max_tokens"]["maximum"], 4095);
        assert_eq!(s["CommonParams"]["properties"]["n"]["maximum"], MAX_N);
        assert_eq!(s["DetokenizeRequest"]["properties"]["tokens"]["items"]["maximum"], 999);
        let text = doc.to_string();
        assert!(!text.contains("49151") && !text.contains("\"maximum\":256"), "no SmolLM2 limits written in");
        assert!(s["ChatRequest"]["allOf"].is_array() && s["ChatCompletion"].is_object() && s["ErrorBody"].is_object());
    }
}
