//! What every generating route shares between parsing its body and writing its answer: tokenizing, compiling a
//! constraint (cached, off the async threads, within the time limit), the engine's validation and submission, and
//! turning engine tokens into the API's logprob entries.

use std::sync::Arc;

use grammar::{Constraint, Grammar};
use runtime::{FinishReason, Finished, Output, Request, RequestStream, TokenInfo, ValidRequest};
use serde_json::Value;

use super::api::common::{CommonParams, Params};
use super::api::completions::CompletionLogprobs;
use super::api::{TokenLogprob, TopLogprob, Usage};
use super::error::ApiError;
use super::Ready;

/// 404 unless `model` is absent, empty, or the served model's id.
pub(crate) fn check_model(ready: &Ready, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !m.is_empty() && m != ready.model_id => Err(ApiError::model_not_found(m)),
        _ => Ok(()),
    }
}

/// Token ids of `text`; `add_special` adds the tokenizer's own special tokens (BOS for Llama): wanted for raw
/// prompts, not for a rendered chat template, which writes its own.
pub(crate) fn encode(ready: &Ready, text: &str, add_special: bool) -> Result<Vec<u32>, ApiError> {
    let enc =
        ready.tokenizer.encode(text, add_special).map_err(|e| ApiError::bad_request(format!("tokenizing: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

/// Compiles (or fetches) a grammar off the async threads, within the time limit; errors name `param`, the
/// request field the constraint came from.
pub(crate) async fn compile(ready: &Ready, c: Constraint, param: &str) -> Result<Arc<Grammar>, ApiError> {
    let cache = ready.grammars.clone();
    let job = tokio::task::spawn_blocking(move || cache.get_or_compile(&c));
    let e = match tokio::time::timeout(ready.grammar_timeout, job).await {
        Err(_) => ApiError::bad_request(format!(
            "the constraint did not compile within {} s; simplify it",
            ready.grammar_timeout.as_secs()
        )),
        Ok(Err(e)) => return Err(ApiError::internal(format!("grammar compilation failed: {e}"))),
        Ok(Ok(Ok(g))) => return Ok(g),
        Ok(Ok(Err(e))) => ApiError::from(e),
    };
    Err(ApiError { param: Some(param.into()), ..e })
}

/// A JSON Schema given as an object or as a string holding one, as the constraint's text.
pub(crate) fn schema_text(v: &Value, param: &str) -> Result<String, ApiError> {
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

/// The constraint fields harnesses send beside OpenAI's (`regex`, `json_schema`), with the field each came from.
pub(crate) fn extra_constraints(c: &CommonParams) -> Result<Vec<(Constraint, &'static str)>, ApiError> {
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
    prompt_logprobs: Option<usize>,
    prompt_param: &str,
) -> Result<ValidRequest, ApiError> {
    let mut req = Request::new(prompt);
    req.sampling = params.sampling.clone();
    req.stop = params.stop.clone();
    req.logprobs = logprobs;
    req.prompt_logprobs = prompt_logprobs;
    req.skip_special_tokens = params.skip_special_tokens;
    ready
        .engine
        .validate(req)
        .map_err(|e| ApiError::from(e.renamed("prompt", prompt_param).renamed("max_tokens", params.max_tokens_param)))
}

/// Starts `n` samples of a request (seeds `seed + i`, so samples differ yet repeat).
pub(crate) fn submit(ready: &Ready, req: &ValidRequest, n: usize) -> Result<Vec<RequestStream>, ApiError> {
    (0..n as u64).map(|i| ready.engine.submit(req.sample(i)).map_err(ApiError::from)).collect()
}

/// A request's whole output and its finish; a generation that failed is a 500.
pub(crate) async fn collect(stream: RequestStream) -> Result<(Output, Finished), ApiError> {
    let out = stream.collect_async().await;
    let fin = out.finished.clone().ok_or_else(|| ApiError::internal("the engine dropped a request"))?;
    failed(&fin)?;
    Ok((out, fin))
}

/// The 500 for a generation the engine could not finish.
pub(crate) fn failed(fin: &Finished) -> Result<(), ApiError> {
    match &fin.reason {
        FinishReason::Error(m) => Err(ApiError::internal(format!("generation failed: {m}"))),
        _ => Ok(()),
    }
}

/// Usage over several prompts of `n` samples each, `fins` in choice order: each prompt counts once, and its
/// first sample reports what the cache gave it.
pub(crate) fn usage(prompt_tokens: usize, n: usize, fins: &[Finished]) -> Usage {
    let completion: usize = fins.iter().map(|f| f.completion_tokens).sum();
    let cached: usize = fins.iter().step_by(n.max(1)).map(|f| f.cached_tokens).sum();
    Usage::new(prompt_tokens, completion, cached)
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

/// Chat's logprob entry for a generated token.
pub(crate) fn chat_logprob(ready: &Ready, t: &TokenInfo) -> TokenLogprob {
    let (token, bytes) = token_text(ready, t.id);
    let top_logprobs = t
        .top_logprobs
        .iter()
        .map(|&(id, logprob)| {
            let (token, bytes) = token_text(ready, id);
            TopLogprob { token, logprob, bytes }
        })
        .collect();
    TokenLogprob { token, logprob: t.logprob.unwrap_or(0.0), bytes, top_logprobs }
}

/// Legacy completions logprobs for `tokens` whose text starts at `offset` in the choice's text. A token without
/// a logprob (an echoed prompt's first) gets `null` for it and for its alternatives, as OpenAI's did.
pub(crate) fn completion_logprobs(ready: &Ready, tokens: &[TokenInfo], mut offset: usize) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    for t in tokens {
        let (s, _) = token_text(ready, t.id);
        lp.text_offset.push(offset);
        offset += s.len();
        lp.tokens.push(s);
        lp.token_logprobs.push(t.logprob);
        lp.top_logprobs
            .push(t.logprob.map(|_| t.top_logprobs.iter().map(|&(id, v)| (token_text(ready, id).0, v)).collect()));
    }
    lp
}
