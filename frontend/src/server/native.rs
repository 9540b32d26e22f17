//! Routes beside the OpenAI ones: models, SGLang's `/generate`, cache flushing, tokenization.

use std::sync::Arc;

use grammar::Constraint;
use runtime::{Event, FinishReason, Finished};
use serde_json::Value;
use warp::reply::Response;
use warp::Reply;

use super::api::common::{top_logprobs, CommonParams};
use super::api::models::{ModelCard, ModelList};
use super::api::native::{
    DetokenizeRequest, DetokenizeResponse, GenerateRequest, GenerateResponse, Health, Matched, Message, MetaInfo,
    NativeFinish, TokenizeRequest, TokenizeResponse,
};
use super::api::parse_body;
use super::error::ApiError;
use super::generation::{collect, compile, encode, failed, validate};
use super::models::{ModelSlot, Served};
use super::sse::{stream_events, EventStream};
use super::{json_ok, Ready};

fn model_card(slot: &ModelSlot) -> ModelCard {
    let mut card = ModelCard {
        id: slot.id.clone(),
        object: "model",
        created: 0,
        owned_by: "radixserve",
        root: slot.id.clone(),
        parent: None,
        kind: slot.kind,
        status: "loading",
        max_model_len: None,
        sampling_defaults: None,
        dimensions: None,
        pooling: None,
    };
    match slot.state.get() {
        None => {}
        Some(Err(_)) => card.status = "failed",
        Some(Ok(Served::Chat(r))) => {
            card.status = "ready";
            card.created = r.created;
            card.max_model_len = Some(r.max_model_len);
            card.sampling_defaults = Some(r.sampling_defaults.clone());
        }
        Some(Ok(Served::Embedding(e))) => {
            card.status = "ready";
            card.created = e.created;
            card.max_model_len = Some(e.max_tokens);
            card.dimensions = Some(e.dim);
            card.pooling = Some(e.pooling.as_str());
        }
    }
    card
}

pub fn models(slots: &[ModelSlot]) -> Response {
    json_ok(&ModelList { object: "list", data: slots.iter().map(model_card).collect() })
}

pub fn model(slots: &[ModelSlot], id: &str) -> Result<Response, ApiError> {
    let slot = slots.iter().find(|s| s.id == id).ok_or_else(|| ApiError::model_not_found(id))?;
    Ok(json_ok(&model_card(slot)))
}

/// 200 when every model is ready; else 503 naming those that are not.
pub fn health(slots: &[ModelSlot]) -> Response {
    let not_ready: Vec<String> = slots
        .iter()
        .filter_map(|s| match s.state.get() {
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(format!("`{}` failed to load: {e}", s.id)),
            None => Some(format!("`{}` is loading", s.id)),
        })
        .collect();
    if not_ready.is_empty() {
        json_ok(&Health { status: "ok" })
    } else {
        ApiError { retry_after: Some(5), ..ApiError::unavailable(format!("not ready: {}", not_ready.join("; "))) }
            .into_response()
    }
}

/// Every loaded model's engine metrics, each series labelled with its `model`, then the server's own.
pub fn metrics(slots: &[ModelSlot], server: &prometheus::Registry, page_size: usize) -> Response {
    let mut families: Vec<prometheus::proto::MetricFamily> = Vec::new();
    for slot in slots {
        let gathered = match slot.state.get() {
            Some(Ok(Served::Chat(r))) => r.engine.metrics().gather(),
            Some(Ok(Served::Embedding(e))) => e.engine.metrics().gather(),
            _ => continue,
        };
        for mut fam in gathered {
            for m in fam.mut_metric().iter_mut() {
                let mut labels = m.get_label().to_vec();
                let mut l = prometheus::proto::LabelPair::default();
                l.set_name("model".into());
                l.set_value(slot.id.clone());
                labels.insert(0, l);
                m.set_label(labels);
            }
            match families.iter_mut().find(|f| f.name() == fam.name()) {
                Some(f) => f.mut_metric().extend(fam.take_metric()),
                None => families.push(fam),
            }
        }
    }
    families.extend(server.gather());
    let mut buf = Vec::new();
    let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut buf);
    buf.extend_from_slice(super::fleet::protocol_metrics(slots, page_size).as_bytes());
    warp::reply::with_header(buf, "content-type", "text/plain; version=0.0.4").into_response()
}

pub fn flush_cache(ready: &Ready) -> Result<Response, ApiError> {
    if ready.engine.flush_cache() {
        Ok(json_ok(&Message { message: "Cache flushed." }))
    } else {
        Err(ApiError::bad_request("the cache cannot be flushed while requests are running; retry when idle"))
    }
}

pub fn tokenize(ready: &Ready, body: &[u8]) -> Result<Response, ApiError> {
    let req: TokenizeRequest = parse_body(body)?;
    let tokens = encode(ready, &req.prompt, req.add_special_tokens.unwrap_or(true))?;
    Ok(json_ok(&TokenizeResponse { count: tokens.len(), tokens, max_model_len: ready.max_model_len }))
}

pub fn detokenize(ready: &Ready, body: &[u8]) -> Result<Response, ApiError> {
    let req: DetokenizeRequest = parse_body(body)?;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= ready.vocab_size) {
        return Err(ApiError::invalid("tokens", format!("{bad} is not a token id")));
    }
    let prompt = ready.tokenizer.decode(&req.tokens, false).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(json_ok(&DetokenizeResponse { prompt }))
}

/// SGLang's default for `max_new_tokens` (fewer when the context has less room).
const NATIVE_MAX_NEW_TOKENS: usize = 128;

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
    // The OpenAI checks, through the common fields.
    let sp = &req.sampling_params;
    let common = CommonParams {
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
    // The prompt's field as the client gave it; every other field is one of `sampling_params`.
    let prompt_param = if req.text.is_some() { "text" } else { "input_ids" };
    let in_sampling = |mut e: ApiError| {
        if e.param.as_deref().is_some_and(|p| p != prompt_param) {
            e.param = e.param.map(|p| format!("sampling_params.{p}"));
        }
        e
    };
    let mut params = common.params(ready.vocab_size, &ready.sampling_defaults).map_err(in_sampling)?;
    params.max_tokens_param = "max_new_tokens";
    if sp.max_new_tokens.is_none() {
        params.stop.max_tokens = runtime::MaxTokens::UpTo(NATIVE_MAX_NEW_TOKENS);
    }
    let constraint = match (&sp.regex, &sp.json_schema) {
        (Some(r), None) => Some((Constraint::Regex(r.clone()), "sampling_params.regex")),
        (None, Some(Value::String(s))) => Some((Constraint::JsonSchema(s.clone()), "sampling_params.json_schema")),
        (None, Some(v)) => Some((Constraint::JsonSchema(v.to_string()), "sampling_params.json_schema")),
        (None, None) => None,
        _ => return Err(ApiError::bad_request("give at most one of regex and json_schema")),
    };
    let logprobs = if req.return_logprob.unwrap_or(false) {
        Some(top_logprobs(req.top_logprobs_num, "top_logprobs_num")?)
    } else {
        None
    };
    let mut valid = validate(&ready, prompt, &params, logprobs, None, prompt_param).map_err(in_sampling)?;
    if let Some((c, param)) = constraint {
        valid.set_grammar(Some(compile(&ready, c, param).await?));
    }
    let stream = ready.engine.submit(valid)?;
    if req.stream.unwrap_or(false) {
        return Ok(stream_events(vec![stream], GenerateStream::default()));
    }
    let (out, fin) = collect(stream).await?;
    let mut meta = meta(&fin, out.ids());
    if logprobs.is_some() {
        meta.output_token_logprobs = Some(out.tokens.iter().map(|t| (t.logprob, t.id, None)).collect());
    }
    Ok(json_ok(&GenerateResponse { text: out.text, meta_info: meta }))
}

/// The finished request's `meta_info`.
fn meta(fin: &Finished, output_ids: Vec<u32>) -> MetaInfo {
    let finish = match &fin.reason {
        FinishReason::StopString(s) => NativeFinish::Stop { matched: Some(Matched::Text(s.clone())) },
        FinishReason::StopToken(t) => NativeFinish::Stop { matched: Some(Matched::Token(*t)) },
        FinishReason::Stop => NativeFinish::Stop { matched: None },
        FinishReason::Length => NativeFinish::Length { length: fin.completion_tokens },
        FinishReason::Error(m) => NativeFinish::Abort { message: m.clone() },
    };
    MetaInfo {
        prompt_tokens: Some(fin.prompt_tokens),
        completion_tokens: fin.completion_tokens,
        cached_tokens: Some(fin.cached_tokens),
        finish_reason: Some(finish),
        output_ids: Some(output_ids),
        output_token_logprobs: None,
    }
}

/// SGLang's stream: the whole text so far at every event, the finish's `meta_info` on the last.
#[derive(Default)]
struct GenerateStream {
    text: String,
    ids: Vec<u32>,
}

impl EventStream for GenerateStream {
    type Chunk = GenerateResponse;

    fn first(&mut self) -> Vec<GenerateResponse> {
        Vec::new()
    }

    fn on_event(&mut self, _: usize, event: Event) -> Result<Vec<GenerateResponse>, ApiError> {
        let meta_info = match event {
            Event::PromptLogprobs(_) => return Ok(Vec::new()),
            Event::Delta { text, tokens } => {
                self.text.push_str(&text);
                self.ids.extend(tokens.iter().map(|t| t.id));
                MetaInfo { completion_tokens: self.ids.len(), ..MetaInfo::default() }
            }
            Event::Finished(fin) => {
                failed(&fin)?;
                meta(&fin, self.ids.clone())
            }
        };
        Ok(vec![GenerateResponse { text: self.text.clone(), meta_info }])
    }

    fn last(self) -> Vec<GenerateResponse> {
        Vec::new()
    }
}
