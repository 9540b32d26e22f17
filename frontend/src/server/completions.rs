//! `POST /v1/completions`: parse, validate, submit, then stream or collect.

use std::sync::Arc;

use runtime::{Event, Finished};
use warp::reply::Response;

use super::api::common::top_logprobs;
use super::api::completions::{Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptField};
use super::api::parse_request;
use super::error::ApiError;
use super::generation::{
    check_model, collect, compile, completion_logprobs, encode, extra_constraints, failed, submit, usage, validate,
};
use super::sse::{stream_events, EventStream};
use super::{json_ok, now_secs, random_id, Ready};

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
    let logprobs = req.logprobs.map(|k| top_logprobs(Some(k), "logprobs")).transpose()?;
    let echo = req.echo.unwrap_or(false);
    // Echo with logprobs scores the prompt too (lm-evaluation-harness' loglikelihood); with max_tokens 0 it only
    // scores. The engine then recomputes any cached prefix, so the values do not depend on the cache.
    let prompt_logprobs = if echo && (logprobs.is_some() || params.stop.max_tokens == runtime::MaxTokens::Given(0)) {
        Some(logprobs.unwrap_or(0))
    } else {
        None
    };
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
        .map(|p| validate(&ready, p.clone(), &params, logprobs, prompt_logprobs, "prompt"))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((c, param)) = constraints.pop() {
        let grammar = compile(&ready, c, param).await?;
        valid.iter_mut().for_each(|v| v.set_grammar(Some(grammar.clone())));
    }
    // Choices in order: each prompt's n samples, each starting with the prompt's text when echoed.
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
    let head = Completion {
        id: random_id("cmpl-"),
        object: "text_completion",
        created: now_secs(),
        model: ready.model_id.clone(),
        choices: Vec::new(),
        usage: None,
    };
    if params.stream {
        let usage = params.include_usage.then_some(None);
        let state = CompletionStream {
            ready,
            offsets: vec![0; echoes.len()],
            fins: vec![None; echoes.len()],
            echoes,
            prompt_tokens,
            n: params.n,
            logprobs: logprobs.is_some(),
            prompt_logprobs: prompt_logprobs.is_some(),
            head: Completion { usage, ..head },
        };
        return Ok(stream_events(streams, state));
    }
    let mut choices = Vec::new();
    let mut fins = Vec::new();
    for (index, (stream, echo)) in streams.into_iter().zip(echoes).enumerate() {
        let (out, fin) = collect(stream).await?;
        let logprobs = logprobs.map(|_| {
            let mut lp = completion_logprobs(&ready, &out.prompt, 0);
            let generated = completion_logprobs(&ready, &out.tokens, echo.len());
            lp.tokens.extend(generated.tokens);
            lp.token_logprobs.extend(generated.token_logprobs);
            lp.top_logprobs.extend(generated.top_logprobs);
            lp.text_offset.extend(generated.text_offset);
            lp
        });
        choices.push(CompletionChoice {
            index,
            text: format!("{echo}{}", out.text),
            logprobs,
            finish_reason: Some(fin.reason.label()),
        });
        fins.push(fin);
    }
    Ok(json_ok(&Completion { choices, usage: Some(Some(usage(prompt_tokens, params.n, &fins))), ..head }))
}

/// The streamed answer: echoed prompts first, then text (and logprobs) as it is generated, a finish per choice,
/// the usage chunk if asked.
struct CompletionStream {
    ready: Arc<Ready>,
    echoes: Vec<String>,
    /// Where each choice's next text starts in it (for logprobs' `text_offset`).
    offsets: Vec<usize>,
    fins: Vec<Option<Finished>>,
    prompt_tokens: usize,
    n: usize,
    logprobs: bool,
    /// The echoed prompt goes out with its logprobs once the engine has scored it, not at once.
    prompt_logprobs: bool,
    head: Completion,
}

impl CompletionStream {
    fn chunk(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<&'static str>,
    ) -> Completion {
        Completion {
            choices: vec![CompletionChoice { index, text, logprobs, finish_reason: finish }],
            ..self.head.clone()
        }
    }
}

impl EventStream for CompletionStream {
    type Chunk = Completion;

    fn first(&mut self) -> Vec<Completion> {
        self.offsets.iter_mut().zip(&self.echoes).for_each(|(o, e)| *o = e.len());
        if self.prompt_logprobs {
            return Vec::new();
        }
        let echoes = self.echoes.iter().enumerate().filter(|(_, e)| !e.is_empty());
        echoes.map(|(i, e)| self.chunk(i, e.clone(), None, None)).collect()
    }

    fn on_event(&mut self, i: usize, event: Event) -> Result<Vec<Completion>, ApiError> {
        Ok(match event {
            Event::PromptLogprobs(prompt) => {
                let lp = self.logprobs.then(|| completion_logprobs(&self.ready, &prompt, 0));
                vec![self.chunk(i, self.echoes[i].clone(), lp, None)]
            }
            Event::Delta { text, tokens } => {
                let lp = self.logprobs.then(|| completion_logprobs(&self.ready, &tokens, self.offsets[i]));
                self.offsets[i] += text.len();
                if text.is_empty() && lp.is_none() {
                    Vec::new()
                } else {
                    vec![self.chunk(i, text, lp, None)]
                }
            }
            Event::Finished(fin) => {
                failed(&fin)?;
                let reason = fin.reason.label();
                self.fins[i] = Some(fin);
                vec![self.chunk(i, String::new(), None, Some(reason))]
            }
        })
    }

    fn last(self) -> Vec<Completion> {
        if self.head.usage.is_none() {
            return Vec::new();
        }
        let fins: Vec<Finished> = self.fins.iter().flatten().cloned().collect();
        vec![Completion { usage: Some(Some(usage(self.prompt_tokens, self.n, &fins))), ..self.head }]
    }
}
