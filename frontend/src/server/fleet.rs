//! What routers and schedulers in front of a fleet of radixserve replicas read.
//!
//! - SGLang's native metadata routes, as the SGLang Model Gateway (`sglang-router`) reads them when it registers a
//!   worker: `/model_info` and `/server_info` (and their older `/get_*` names), fields as in the gateway's
//!   `sgl-model-gateway/src/core/steps/worker/local/discover_metadata.rs` (`ServerInfo`: `model_path`,
//!   `served_model_name`, `max_total_tokens`, `max_running_requests`...; `ModelInfo`: `model_path`,
//!   `tokenizer_path`, `is_generation`, `model_type`, `architectures`), plus SGLang's own names beside them; and
//!   `/health_generate`, which generates one token.
//! - vLLM's `/v1/chat/completions/render` and `/v1/completions/render` (the prompt and token ids a request would be
//!   given, nothing generated), which llm-d's precise prefix scorer tokenizes through.
//! - The Gateway API Inference Extension's model-server protocol metrics
//!   (`docs/proposals/003-model-server-protocol/README.md` in kubernetes-sigs/gateway-api-inference-extension),
//!   under vLLM's names, which the endpoint picker reads by default: `vllm:num_requests_waiting`,
//!   `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` (and its older name `vllm:gpu_cache_usage_perc`), and
//!   `vllm:cache_config_info{block_size, num_gpu_blocks}`.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use warp::reply::Response;

use super::api::chat::ChatRequest;
use super::api::completions::{CompletionRequest, PromptField};
use super::api::parse_request;
use super::chat::prepare;
use super::error::ApiError;
use super::generation::{collect, encode, submit, validate};
use super::models::{ModelKind, ModelSlot, Served};
use super::{json_ok, AppState, Ready};

/// SGLang's `/model_info`.
#[derive(Debug, Serialize)]
struct ModelInfo {
    model_path: String,
    /// A `tokenizer.json` folder (Hugging Face models); `null` for GGUF files, whose tokenizer is inside the file.
    tokenizer_path: Option<String>,
    is_generation: bool,
    model_type: String,
    architectures: Vec<String>,
    served_model_name: String,
    weight_version: &'static str,
    has_image_understanding: bool,
    has_audio_understanding: bool,
    preferred_sampling_params: Value,
}

fn chat_model(state: &AppState) -> Result<Arc<Ready>, ApiError> {
    match super::models::resolve(&state.models, ModelKind::Chat, None)? {
        Served::Chat(r) => Ok(r.clone()),
        Served::Embedding(_) => Err(ApiError::internal("a chat slot holds an embedding model")),
    }
}

fn arch_names(arch: kernels::Arch) -> (&'static str, &'static str) {
    match arch {
        kernels::Arch::Llama => ("llama", "LlamaForCausalLM"),
        kernels::Arch::Mistral => ("mistral", "MistralForCausalLM"),
        kernels::Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
    }
}

/// The first served model's (a chat model's, when there is one) description.
pub fn model_info(state: &AppState) -> Result<Response, ApiError> {
    let first = state.models.first().ok_or_else(|| ApiError::internal("no model"))?;
    let info = match first.served()? {
        Served::Chat(r) => {
            let (model_type, arch) = arch_names(r.arch);
            let folder = r.model_path.is_dir().then(|| r.model_path.display().to_string());
            ModelInfo {
                model_path: r.model_path.display().to_string(),
                tokenizer_path: folder.filter(|_| r.model_path.join("tokenizer.json").exists()),
                is_generation: true,
                model_type: model_type.into(),
                architectures: vec![arch.into()],
                served_model_name: r.model_id.clone(),
                weight_version: "default",
                has_image_understanding: false,
                has_audio_understanding: false,
                preferred_sampling_params: serde_json::to_value(&r.sampling_defaults).unwrap_or(Value::Null),
            }
        }
        Served::Embedding(e) => ModelInfo {
            model_path: first.spec.path.display().to_string(),
            tokenizer_path: first.spec.path.is_dir().then(|| first.spec.path.display().to_string()),
            is_generation: false,
            model_type: "bert".into(),
            architectures: vec!["BertModel".into()],
            served_model_name: e.model_id.clone(),
            weight_version: "default",
            has_image_understanding: false,
            has_audio_understanding: false,
            preferred_sampling_params: Value::Null,
        },
    };
    Ok(json_ok(&info))
}

/// SGLang's `/server_info`: the options in force and the engine's sizes.
#[derive(Debug, Serialize)]
struct ServerInfo {
    model_path: String,
    served_model_name: String,
    tokenizer_path: Option<String>,
    is_embedding: bool,
    version: &'static str,
    context_length: usize,
    /// KV-cache capacity in tokens (SGLang's `max_total_num_tokens`; the gateway reads `max_total_tokens`).
    max_total_tokens: usize,
    max_total_num_tokens: usize,
    page_size: usize,
    max_running_requests: usize,
    max_queued_requests: usize,
    chunked_prefill_size: usize,
    max_prefill_tokens: usize,
    schedule_policy: String,
    disable_radix_cache: bool,
    disable_jump_forward: bool,
    kv_cache_mb: usize,
    device: String,
    dtype: Option<String>,
    host: String,
    port: u16,
    draining: bool,
    models: Vec<ServedModel>,
}

#[derive(Debug, Serialize)]
struct ServedModel {
    id: String,
    kind: ModelKind,
    path: String,
    ready: bool,
}

pub fn server_info(state: &AppState) -> Result<Response, ApiError> {
    let a = &state.args;
    let first = state.models.first().ok_or_else(|| ApiError::internal("no model"))?;
    let (context_length, slots, is_embedding) = match first.served()? {
        Served::Chat(r) => (r.max_model_len, r.engine.num_slots(), false),
        Served::Embedding(e) => (e.max_tokens, 0, true),
    };
    let info = ServerInfo {
        model_path: first.spec.path.display().to_string(),
        served_model_name: first.id.clone(),
        tokenizer_path: first.spec.path.join("tokenizer.json").exists().then(|| first.spec.path.display().to_string()),
        is_embedding,
        version: env!("CARGO_PKG_VERSION"),
        context_length,
        max_total_tokens: slots,
        max_total_num_tokens: slots,
        page_size: a.page_size,
        max_running_requests: a.max_running_requests,
        max_queued_requests: a.max_queued_requests,
        chunked_prefill_size: a.chunked_prefill_size,
        max_prefill_tokens: a.chunked_prefill_size,
        schedule_policy: format!("{:?}", a.schedule_policy).to_lowercase(),
        disable_radix_cache: a.disable_radix_cache,
        disable_jump_forward: a.disable_jump_forward,
        kv_cache_mb: a.kv_cache_mb,
        device: a.device.device.clone(),
        dtype: a.device.dtype.clone(),
        host: a.host.clone(),
        port: a.port,
        draining: state.draining.load(std::sync::atomic::Ordering::Relaxed),
        models: state
            .models
            .iter()
            .map(|s| ServedModel {
                id: s.id.clone(),
                kind: s.kind,
                path: s.spec.path.display().to_string(),
                ready: matches!(s.state.get(), Some(Ok(_))),
            })
            .collect(),
    };
    Ok(json_ok(&info))
}

/// SGLang's `/health_generate`: 200 once the first chat model generates a token.
pub async fn health_generate(state: &AppState) -> Result<Response, ApiError> {
    let ready = chat_model(state)?;
    let req: ChatRequest = parse_request(br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}"#)?;
    let p = prepare(&ready, &req).await?;
    let stream = submit(&ready, &p.valid, 1)?.pop().ok_or_else(|| ApiError::internal("no stream"))?;
    let (out, _) = collect(stream).await?;
    if out.tokens.is_empty() {
        return Err(ApiError::unavailable("the model generated nothing"));
    }
    Ok(json_ok(&super::api::native::Health { status: "ok" }))
}

/// What a request would be given: vLLM's render answer (the prompt, its token ids, no generation).
#[derive(Debug, Serialize)]
struct Rendered {
    model: String,
    prompt: String,
    token_ids: Vec<u32>,
    count: usize,
}

pub async fn render_chat(ready: Arc<Ready>, body: &[u8]) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_request(body)?;
    let p = prepare(&ready, &req).await?;
    let token_ids = p.valid.into_request().prompt;
    let prompt = ready.tokenizer.decode(&token_ids, false).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json_ok(&Rendered { model: ready.model_id.clone(), prompt, count: token_ids.len(), token_ids }))
}

pub async fn render_completions(ready: Arc<Ready>, body: &[u8]) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_request(body)?;
    let params = req.common.params(ready.vocab_size, &ready.sampling_defaults)?;
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        PromptField::Text(s) => vec![encode(&ready, s, true)?],
        PromptField::Texts(v) => v.iter().map(|s| encode(&ready, s, true)).collect::<Result<_, _>>()?,
        PromptField::Ids(ids) => vec![ids.clone()],
        PromptField::IdLists(v) => v.clone(),
    };
    let mut out = Vec::with_capacity(prompts.len());
    for ids in prompts {
        // The same checks a real request gets (empty, context, token ids).
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= ready.vocab_size) {
            return Err(ApiError::invalid("prompt", format!("{bad} is not a token id")));
        }
        let token_ids = validate(&ready, ids, &params, None, None, "prompt")?.into_request().prompt;
        let prompt = ready.tokenizer.decode(&token_ids, false).map_err(|e| ApiError::internal(e.to_string()))?;
        out.push(Rendered { model: ready.model_id.clone(), prompt, count: token_ids.len(), token_ids });
    }
    Ok(json_ok(&out))
}

/// The model-server protocol's series under vLLM's names, for every loaded chat model (label `model_name`, as
/// vLLM's), read at scrape time: waiting is what the engine has been given and not yet admitted, running and KV
/// use are the scheduler's as of its last step.
pub fn protocol_metrics(slots: &[ModelSlot], page_size: usize) -> String {
    let chats: Vec<&Arc<Ready>> = slots
        .iter()
        .filter_map(|s| match s.state.get() {
            Some(Ok(Served::Chat(r))) => Some(r),
            _ => None,
        })
        .collect();
    let mut out = String::new();
    let mut family = |name: &str, help: &str, value: &dyn Fn(&Ready) -> (String, f64)| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for r in &chats {
            let (extra, v) = value(r);
            out.push_str(&format!("{name}{{model_name=\"{}\"{extra}}} {v}\n", escape(&r.model_id)));
        }
    };
    family("vllm:num_requests_waiting", "Requests waiting to be admitted (model-server protocol).", &|r| {
        (String::new(), r.engine.waiting() as f64)
    });
    family("vllm:num_requests_running", "Requests in the running batch (model-server protocol).", &|r| {
        (String::new(), r.engine.metrics().running.get() as f64)
    });
    let usage = |r: &Ready| {
        let m = r.engine.metrics();
        let total = m.kv_slots_total.get().max(1) as f64;
        (String::new(), m.kv_slots_in_use.get() as f64 / total)
    };
    family(
        "vllm:kv_cache_usage_perc",
        "KV-cache use, 0 to 1: slots held by requests (cached, unlocked ones are free).",
        &usage,
    );
    family("vllm:gpu_cache_usage_perc", "The same as vllm:kv_cache_usage_perc (the older name).", &usage);
    family("vllm:cache_config_info", "KV-cache layout: block size in tokens and block count.", &|r| {
        let blocks = r.engine.num_slots() / page_size.max(1);
        (format!(",block_size=\"{page_size}\",num_gpu_blocks=\"{blocks}\""), 1.0)
    });
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
