//! The engine thread and the handle the async world talks to it through.
//!
//! The scheduler owns the model, the KV pool and the radix cache on one thread (libtorch calls block). Callers
//! hold a cloneable [`EngineHandle`]: `submit` queues a request and returns its stream of [`Event`]s. Dropping
//! the stream (a client disconnect) cancels the request at the next step.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use tokenizers::Tokenizer;

use crate::executor::Executor;
use crate::metrics::Metrics;
use crate::params::{MaxTokens, Request, ValidationError, MAX_TOP_LOGPROBS};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerStats, Seq};

/// One generated token as reported to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub id: u32,
    /// Log-probability under the model (when logprobs were asked for and the token was sampled).
    pub logprob: Option<f32>,
    /// The most likely alternatives at that step, best first.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Why a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, or the grammar is complete.
    Stop,
    /// A stop string (not included in the text).
    StopString(String),
    /// A stop token id.
    StopToken(u32),
    /// `max_tokens` or the context length.
    Length,
    /// The engine could not go on (the message says why).
    Error(String),
}

impl FinishReason {
    /// The OpenAI `finish_reason`.
    pub fn label(&self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::StopString(_) | FinishReason::StopToken(_) => "stop",
            FinishReason::Length => "length",
            FinishReason::Error(_) => "error",
        }
    }
}

/// The end of a request, with its usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens found in the radix cache.
    pub cached_tokens: usize,
}

/// What a request's stream carries: deltas, then exactly one `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New tokens and the text they release (text held back for a possible stop string comes later).
    Delta {
        text: String,
        tokens: Vec<TokenInfo>,
    },
    /// The prompt's tokens with their logprobs (the first has none), when the request asked for them; sent once,
    /// before any `Delta`.
    PromptLogprobs(Vec<TokenInfo>),
    Finished(Finished),
}

/// A request the engine has checked ([`EngineHandle::validate`]): the only kind [`EngineHandle::submit`] takes.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    req: Request,
    /// Tokens it may generate: what it asked for, within what the context has left.
    max_tokens: usize,
}

impl ValidRequest {
    pub fn request(&self) -> &Request {
        &self.req
    }

    pub fn into_request(self) -> Request {
        self.req
    }

    /// Constrains the output to `grammar` (compiled after the request was found valid, so an invalid request
    /// costs no compile).
    pub fn set_grammar(&mut self, grammar: Option<Arc<grammar::Grammar>>) {
        self.req.grammar = grammar;
    }

    /// The `i`-th of several samples of this request: seeded requests take seed `seed + i`, so samples differ
    /// yet repeat.
    pub fn sample(&self, i: u64) -> Self {
        let mut s = self.clone();
        if let Some(seed) = s.req.sampling.seed {
            s.req.sampling.seed = Some(seed.wrapping_add(i));
        }
        s
    }
}

/// Why a valid request was not queued; it is given back.
#[derive(Debug)]
pub enum SubmitError {
    /// The waiting queue is full (the frontend answers 503 and the client retries).
    QueueFull(Box<ValidRequest>),
    /// The engine has stopped.
    Stopped(Box<ValidRequest>),
}

impl SubmitError {
    /// The request that was not queued.
    pub fn into_request(self) -> ValidRequest {
        match self {
            SubmitError::QueueFull(r) | SubmitError::Stopped(r) => *r,
        }
    }
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::QueueFull(_) => write!(f, "the server is at capacity (request queue full); retry later"),
            SubmitError::Stopped(_) => write!(f, "the engine has stopped"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// A request's events; drop it to cancel the request.
#[derive(Debug)]
pub struct RequestStream {
    pub id: u64,
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
}

impl RequestStream {
    /// The next event; `None` after `Finished`.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Blocking version, for threads outside an async runtime (tests, benchmarks).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Collects the whole output (blocking): text, tokens and the finish.
    pub fn collect_blocking(mut self) -> Output {
        let mut out = Output::default();
        while let Some(ev) = self.blocking_recv() {
            if out.add(ev) {
                break;
            }
        }
        out
    }

    /// Collects the whole output.
    pub async fn collect_async(mut self) -> Output {
        let mut out = Output::default();
        while let Some(ev) = self.recv().await {
            if out.add(ev) {
                break;
            }
        }
        out
    }
}

/// A whole output, gathered from a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    pub text: String,
    pub tokens: Vec<TokenInfo>,
    /// The prompt's logprobs, when asked for ([`Request::prompt_logprobs`]).
    pub prompt: Vec<TokenInfo>,
    pub finished: Option<Finished>,
}

impl Output {
    /// Adds an event; true once finished.
    fn add(&mut self, ev: Event) -> bool {
        match ev {
            Event::Delta { text, tokens } => {
                self.text.push_str(&text);
                self.tokens.extend(tokens);
                false
            }
            Event::PromptLogprobs(p) => {
                self.prompt = p;
                false
            }
            Event::Finished(f) => {
                self.finished = Some(f);
                true
            }
        }
    }

    pub fn ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }
}

enum Command {
    Submit(Box<Seq>),
    FlushCache(mpsc::Sender<bool>),
    Stats(mpsc::Sender<EngineStats>),
    KvBlocks(mpsc::Sender<Vec<u64>>),
}

/// A snapshot of the scheduler's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub scheduler: SchedulerStats,
    pub cache: radix_cache::CacheStats,
    /// Slots held by requests (0 when idle: anything else is a leak).
    pub slots_in_use_by_requests: usize,
}

struct Shared {
    metrics: Metrics,
    /// Submitted and not yet admitted by the scheduler (bounded by `max_queued`).
    queued: Arc<AtomicUsize>,
    next_id: AtomicU64,
    max_queued: usize,
    max_positions: usize,
    num_slots: usize,
}

/// Cloneable, `Send + Sync` access to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("max_positions", &self.shared.max_positions).finish()
    }
}

/// Starts the scheduler thread over `exec`. `eos` lists the ids that end a generation.
pub fn start<E: Executor>(
    exec: E,
    cfg: SchedulerConfig,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
) -> std::io::Result<EngineHandle> {
    let metrics = Metrics::new();
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        queued: Arc::new(AtomicUsize::new(0)),
        next_id: AtomicU64::new(1),
        max_queued: cfg.max_queued,
        max_positions: exec.max_positions(),
        num_slots: exec.num_slots(),
    });
    let (tx, rx) = mpsc::channel::<Command>();
    let thread_shared = shared.clone();
    std::thread::Builder::new().name("radixserve-scheduler".into()).spawn(move || {
        let mut sched = Scheduler::new(exec, cfg, tokenizer, eos, metrics);
        sched.count_waiting_in(thread_shared.queued.clone());
        let handle = |sched: &mut Scheduler<E>, cmd: Command| match cmd {
            Command::Submit(seq) => sched.enqueue(*seq),
            Command::FlushCache(reply) => {
                let _ = reply.send(sched.flush_cache());
            }
            Command::KvBlocks(reply) => {
                let _ = reply.send(sched.kv_blocks());
            }
            Command::Stats(reply) => {
                let _ = reply.send(EngineStats {
                    scheduler: sched.stats(),
                    cache: sched.cache_stats(),
                    slots_in_use_by_requests: sched.slots_in_use_by_requests(),
                });
            }
        };
        loop {
            if sched.is_idle() {
                match rx.recv() {
                    Ok(cmd) => handle(&mut sched, cmd),
                    Err(_) => break,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => handle(&mut sched, cmd),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        sched.abort_all("the engine is shutting down");
                        return;
                    }
                }
            }
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sched.step()));
            if caught.is_err() {
                // A bug, not bad input: fail every request rather than leave clients hanging.
                tracing::error!("scheduler step panicked; failing all requests");
                sched.abort_all("internal error in the scheduler");
            }
        }
    })?;
    Ok(EngineHandle { tx, shared })
}

impl EngineHandle {
    /// Checks `req` against the model: a prompt that is not empty and leaves room for at least one token in the
    /// context and the KV pool, `max_tokens` that fits ([`MaxTokens::Given`]) or is clamped to what is left
    /// ([`MaxTokens::UpTo`]), and the sampling ranges.
    pub fn validate(&self, req: Request) -> Result<ValidRequest, ValidationError> {
        if req.prompt.is_empty() {
            return Err(ValidationError::invalid("prompt", "the prompt is empty"));
        }
        let limit = self.context_len();
        // Scoring a prompt (prompt logprobs, max_tokens 0) needs no room for a generated token.
        let scoring = req.prompt_logprobs.is_some() && req.stop.max_tokens == MaxTokens::Given(0);
        if req.prompt.len() > limit || (req.prompt.len() == limit && !scoring) {
            return Err(ValidationError::context_length(
                "prompt",
                format!(
                    "This model's maximum context length is {limit} tokens, but the prompt has {} tokens (the \
                     prompt and at least one generated token must fit).",
                    req.prompt.len()
                ),
            ));
        }
        let room = limit - req.prompt.len();
        let max_tokens = match req.stop.max_tokens {
            MaxTokens::Given(0) if scoring => 0,
            MaxTokens::Given(0) => {
                return Err(ValidationError::invalid(
                    "max_tokens",
                    "max_tokens must be at least 1 (0 only scores a prompt: /v1/completions with echo)",
                ))
            }
            MaxTokens::Given(n) if n > room => {
                return Err(ValidationError::context_length(
                    "max_tokens",
                    format!(
                        "This model's maximum context length is {limit} tokens. The prompt has {} tokens and \
                         max_tokens asks for {n}; at most {room} fit.",
                        req.prompt.len()
                    ),
                ))
            }
            MaxTokens::Given(n) => n,
            MaxTokens::UpTo(n) => n.clamp(1, room.max(1)),
        };
        if req.stop.min_tokens > max_tokens {
            return Err(ValidationError::invalid(
                "min_tokens",
                format!("min_tokens ({}) must not exceed max_tokens ({max_tokens})", req.stop.min_tokens),
            ));
        }
        if let Some(k) = req.logprobs.or(req.prompt_logprobs).filter(|&k| k > MAX_TOP_LOGPROBS) {
            return Err(ValidationError::invalid(
                "top_logprobs",
                format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {k}"),
            ));
        }
        req.sampling.validate()?;
        Ok(ValidRequest { req, max_tokens })
    }

    /// Queues a request; a full queue or a stopped engine gives it back.
    pub fn submit(&self, req: ValidRequest) -> Result<RequestStream, SubmitError> {
        if self.shared.queued.fetch_add(1, Ordering::Relaxed) >= self.shared.max_queued {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull(Box::new(req)));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (etx, erx) = tokio::sync::mpsc::unbounded_channel();
        let ValidRequest { req, max_tokens } = req;
        let seq = Seq::new(id, req, etx, max_tokens);
        if let Err(mpsc::SendError(Command::Submit(seq))) = self.tx.send(Command::Submit(Box::new(seq))) {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            let (req, max_tokens) = seq.into_request();
            return Err(SubmitError::Stopped(Box::new(ValidRequest { req, max_tokens })));
        }
        Ok(RequestStream { id, rx: erx })
    }

    /// Requests submitted and not yet admitted by the scheduler (exact at any moment).
    pub fn waiting(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Tokens one sequence may hold, prompt and output: the model's context, or the KV pool if smaller.
    pub fn context_len(&self) -> usize {
        self.shared.max_positions.min(self.shared.num_slots)
    }

    /// Empties the radix cache; false while requests are running.
    pub fn flush_cache(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Command::FlushCache(tx)).is_ok() && rx.recv().unwrap_or(false)
    }

    /// The scheduler's counters (blocks until the current step ends).
    pub fn stats(&self) -> Option<EngineStats> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Command::Stats(tx)).ok()?;
        rx.recv().ok()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The hashes of every whole block the radix cache holds, sorted (see `kv_events`; blocks of the events'
    /// page size, or single tokens when events are off).
    pub fn kv_blocks(&self) -> Option<Vec<u64>> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Command::KvBlocks(tx)).ok()?;
        rx.recv().ok()
    }

    /// The model's context length.
    pub fn max_positions(&self) -> usize {
        self.shared.max_positions
    }

    pub fn num_slots(&self) -> usize {
        self.shared.num_slots
    }
}
