//! `/v1/embeddings`: inputs to token ids (checked: none empty, each within the model's limit unless
//! `truncate_prompt_tokens` asks to keep the last tokens), through the model's embedding engine (batched with
//! whatever else is waiting), then `dimensions` and the encoding.

use std::sync::Arc;

use base64::Engine;
use runtime::EmbedSubmitError;
use warp::reply::Response;

use super::api::embeddings::{
    Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbeddingVector, EncodingFormat,
};
use super::api::parse_body;
use super::error::ApiError;
use super::json_ok;
use super::models::EmbedReady;

pub async fn embeddings(model: Arc<EmbedReady>, body: &[u8]) -> Result<Response, ApiError> {
    let req: EmbeddingRequest = parse_body(body)?;
    let mut inputs = token_inputs(&model, &req.input)?;
    if let Some(t) = req.truncate_prompt_tokens {
        let keep = match t {
            -1 => model.max_tokens,
            n if n >= 1 && n as usize <= model.max_tokens => n as usize,
            n => {
                return Err(ApiError::invalid(
                    "truncate_prompt_tokens",
                    format!(
                        "truncate_prompt_tokens must be -1 or 1 to {} (the model's limit), got {n}",
                        model.max_tokens
                    ),
                ))
            }
        };
        for s in &mut inputs {
            if s.len() > keep {
                s.drain(..s.len() - keep);
            }
        }
    }
    if let Some(d) = req.dimensions {
        if d == 0 || d > model.dim {
            return Err(ApiError::invalid(
                "dimensions",
                format!("dimensions must be 1 to {} (this model's size), got {d}", model.dim),
            ));
        }
    }
    let valid = model.engine.validate(inputs).map_err(ApiError::from)?;
    let prompt_tokens = valid.tokens();
    let ticket = model.engine.submit(valid).map_err(|e| match e {
        EmbedSubmitError::QueueFull => ApiError { retry_after: Some(1), ..ApiError::overloaded(e.to_string()) },
        EmbedSubmitError::Stopped => ApiError::unavailable(e.to_string()),
    })?;
    let vectors = ticket.wait().await.map_err(|e| ApiError::internal(format!("embedding failed: {e}")))?;
    let format = req.encoding_format.unwrap_or_default();
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let v = match req.dimensions {
                Some(d) if d < v.len() => shorten(&v[..d]),
                _ => v,
            };
            let embedding = match format {
                EncodingFormat::Float => EmbeddingVector::Float(v),
                EncodingFormat::Base64 => EmbeddingVector::Base64(
                    base64::engine::general_purpose::STANDARD
                        .encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
                ),
            };
            Embedding { object: "embedding", index, embedding }
        })
        .collect();
    Ok(json_ok(&EmbeddingResponse {
        object: "list",
        data,
        model: model.model_id.clone(),
        usage: EmbeddingUsage { prompt_tokens, total_tokens: prompt_tokens },
    }))
}

/// The first components of a vector, scaled back to unit length (Matryoshka truncation).
fn shorten(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}

/// Token ids of every input; an empty string or list is a 400 naming it.
fn token_inputs(model: &EmbedReady, input: &EmbeddingInput) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |i: usize, s: &str| -> Result<Vec<u32>, ApiError> {
        if s.is_empty() {
            return Err(ApiError::invalid("input", format!("input[{i}] is an empty string")));
        }
        let enc = model.tokenizer.encode(s, true).map_err(|e| ApiError::bad_request(format!("tokenizing: {e}")))?;
        Ok(enc.get_ids().to_vec())
    };
    let vocab = model.vocab_size;
    let check_ids = |i: usize, ids: &[u32]| -> Result<Vec<u32>, ApiError> {
        if ids.is_empty() {
            return Err(ApiError::invalid("input", format!("input[{i}] is an empty list of tokens")));
        }
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(ApiError::invalid(
                "input",
                format!("input[{i}]: {bad} is not a token id (vocabulary {vocab})"),
            ));
        }
        Ok(ids.to_vec())
    };
    let out: Vec<Vec<u32>> = match input {
        EmbeddingInput::Text(s) => vec![encode(0, s)?],
        EmbeddingInput::Texts(v) => v.iter().enumerate().map(|(i, s)| encode(i, s)).collect::<Result<_, _>>()?,
        EmbeddingInput::Tokens(ids) => vec![check_ids(0, ids)?],
        EmbeddingInput::TokenLists(v) => {
            v.iter().enumerate().map(|(i, s)| check_ids(i, s)).collect::<Result<_, _>>()?
        }
    };
    if out.is_empty() {
        return Err(ApiError::invalid("input", "input must not be an empty list"));
    }
    Ok(out)
}
