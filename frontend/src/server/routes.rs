//! The route table and what every request goes through: the edge checks, the body read up to its limit, the
//! handler, and the request counter by route and status. One catch-all filter hands (method, path, headers, body)
//! to [`handle`], so every answer, 404, 405, 401, 413 and 415 included, goes through the one error mapping.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::error::ApiError;
use super::models::{self, ModelKind, Served};
use super::{chat, completions, edge, embeddings, fleet, json_ok, native, openapi, responses, AppState};

/// Every route, as one filter: (method, path, headers, body) to [`handle`].
pub(super) fn routes(
    state: Arc<AppState>,
) -> impl warp::Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::any()
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |method: Method, path: warp::path::FullPath, headers: HeaderMap, body| {
            let st = state.clone();
            async move { handle(st, method, path.as_str().to_string(), headers, body).await }
        })
}

/// Reads the body, up to the limit.
async fn read_body<S, B>(mut body: S, limit: usize) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: warp::Buf,
{
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if out.len() + chunk.remaining() > limit {
            // Read (a bounded amount of) the rest, so the client gets the 413 rather than a broken pipe.
            let mut seen = out.len() + chunk.remaining();
            while let Some(Ok(c)) = body.next().await {
                seen += c.remaining();
                if seen > limit.saturating_mul(8).max(64 << 20) {
                    break;
                }
            }
            return Err(ApiError::too_large(limit));
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(out))
}

/// Routes whose body is a JSON request (checked for its media type).
const JSON_BODY_ROUTES: &[&str] = &[
    "chat",
    "completions",
    "embeddings",
    "responses",
    "generate",
    "tokenize",
    "detokenize",
    "render_chat",
    "render_completions",
];

/// Routes that start work on a model: refused while the server drains.
const WORK_ROUTES: &[&str] = &["chat", "completions", "embeddings", "responses", "generate", "health_generate"];

/// The route table: (method, path) to a handler name.
fn route_name(method: &Method, path: &str) -> Result<&'static str, ApiError> {
    let p = path.trim_end_matches('/');
    let (allowed, name): (&[Method], &'static str) = match p {
        "/v1/chat/completions" => (&[Method::POST], "chat"),
        "/v1/chat/completions/render" => (&[Method::POST], "render_chat"),
        "/v1/completions/render" => (&[Method::POST], "render_completions"),
        "/model_info" | "/get_model_info" => (&[Method::GET], "model_info"),
        "/server_info" | "/get_server_info" => (&[Method::GET], "server_info"),
        "/health_generate" => (&[Method::GET], "health_generate"),
        "/live" => (&[Method::GET], "live"),
        "/v1/completions" => (&[Method::POST], "completions"),
        "/v1/embeddings" => (&[Method::POST], "embeddings"),
        "/v1/responses" => (&[Method::POST], "responses"),
        _ if p.starts_with("/v1/responses/") && p.ends_with("/input_items") => (&[Method::GET], "response_input_items"),
        _ if p.starts_with("/v1/responses/") => (&[Method::GET, Method::DELETE], "response"),
        "/v1/models" => (&[Method::GET], "models"),
        "/health" => (&[Method::GET], "health"),
        "/metrics" => (&[Method::GET], "metrics"),
        "/generate" => (&[Method::POST], "generate"),
        "/flush_cache" => (&[Method::POST, Method::GET], "flush_cache"),
        "/tokenize" => (&[Method::POST], "tokenize"),
        "/detokenize" => (&[Method::POST], "detokenize"),
        "/openapi.json" => (&[Method::GET], "openapi"),
        _ if p.starts_with("/v1/models/") => (&[Method::GET], "model"),
        _ => return Err(ApiError::not_found(format!("no route {path}"))),
    };
    if allowed.contains(method) {
        Ok(name)
    } else {
        Err(ApiError::method_not_allowed(method.as_str(), path))
    }
}

async fn handle<S, B>(state: Arc<AppState>, method: Method, path: String, headers: HeaderMap, body: S) -> Response
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: warp::Buf,
{
    let checked = edge::check_header_size(&headers)
        .and_then(|()| state.allowed_hosts.check(&headers))
        .and_then(|()| route_name(&method, &path));
    let (label, resp) = match checked {
        Err(e) => ("unknown", e.into_response()),
        Ok(name) => {
            (name, dispatch(&state, &method, name, &path, &headers, body).await.unwrap_or_else(|e| e.into_response()))
        }
    };
    let status = resp.status().as_u16().to_string();
    state.http_requests.with_label_values(&[label, &status]).inc();
    if resp.status() == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::warn!("{method} {path} -> {status}");
    }
    resp
}

async fn dispatch<S, B>(
    state: &Arc<AppState>,
    method: &Method,
    name: &'static str,
    path: &str,
    headers: &HeaderMap,
    body: S,
) -> Result<Response, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: warp::Buf,
{
    let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
    match name {
        // Liveness: the process answers (until it exits, draining included).
        "live" => return Ok(json_ok(&super::api::native::Health { status: "ok" })),
        // Readiness: 503 while loading and while draining.
        "health" if draining => {
            return Err(ApiError { retry_after: Some(5), ..ApiError::unavailable("the server is shutting down") })
        }
        "health" => return Ok(native::health(&state.models)),
        "metrics" => return Ok(native::metrics(&state.models, &state.registry, state.args.page_size)),
        "openapi" => {
            let limits = match models::resolve(&state.models, ModelKind::Chat, None) {
                Ok(Served::Chat(r)) => {
                    Some(openapi::Limits { vocab_size: r.vocab_size, max_model_len: r.max_model_len })
                }
                _ => None,
            };
            return Ok(json_ok(&openapi::document(limits)));
        }
        _ => {}
    }
    edge::check_api_key(state.api_key.as_deref(), headers)?;
    if JSON_BODY_ROUTES.contains(&name) {
        edge::check_json_body(headers)?;
    }
    if draining && WORK_ROUTES.contains(&name) {
        return Err(ApiError {
            retry_after: Some(5),
            ..ApiError::unavailable("the server is shutting down; retry on another replica")
        });
    }
    let body = read_body(body, state.max_body).await?;
    let response_id = || {
        let rest = path.trim_end_matches('/').trim_start_matches("/v1/responses/");
        rest.trim_end_matches("/input_items").to_string()
    };
    match name {
        "response" if *method == Method::DELETE => return responses::delete(&state.responses, &response_id()).await,
        "response" => return responses::retrieve(&state.responses, &response_id()).await,
        "response_input_items" => return responses::input_items(&state.responses, &response_id()).await,
        "models" => return Ok(native::models(&state.models)),
        "model_info" => return fleet::model_info(state),
        "server_info" => return fleet::server_info(state),
        "health_generate" => return fleet::health_generate(state).await,
        "model" => return native::model(&state.models, path.trim_end_matches('/').trim_start_matches("/v1/models/")),
        "embeddings" => {
            return match models::resolve(&state.models, ModelKind::Embedding, peek_model(&body).as_deref())? {
                Served::Embedding(e) => embeddings::embeddings(e.clone(), &body).await,
                Served::Chat(_) => Err(ApiError::internal("an embedding slot holds a chat model")),
            }
        }
        _ => {}
    }
    let ready = match models::resolve(&state.models, ModelKind::Chat, peek_model(&body).as_deref())? {
        Served::Chat(r) => r.clone(),
        Served::Embedding(_) => return Err(ApiError::internal("a chat slot holds an embedding model")),
    };
    match name {
        "chat" => chat::chat(ready, &body).await,
        "render_chat" => fleet::render_chat(ready, &body).await,
        "render_completions" => fleet::render_completions(ready, &body).await,
        "responses" => responses::create(ready, state.responses.clone(), &body).await,
        "completions" => completions::completions(ready, &body).await,
        "generate" => native::generate(ready, &body).await,
        "flush_cache" => native::flush_cache(&ready),
        "tokenize" => native::tokenize(&ready, &body),
        "detokenize" => native::detokenize(&ready, &body),
        _ => Err(ApiError::internal(format!("unrouted handler {name}"))),
    }
}

/// The `model` a JSON body names, if it is a JSON object with a string `model` (anything else: none, and the
/// handler's own parsing says what is wrong with the body).
fn peek_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        model: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Peek>(body).ok()?.model? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}
