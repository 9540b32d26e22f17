//! `radixserve serve`: the OpenAI-compatible HTTP server on warp.
//!
//! One catch-all warp filter hands (method, path, headers, body) to [`route`], so every answer, including 404,
//! 405, 401 and 413, goes through the one error mapping in [`error`]. The model loads in the background after
//! the socket is bound: `/health` answers 503 until it is ready, and so does every model route.

pub mod api;
mod chat;
mod completions;
pub mod defaults;
mod edge;
pub mod embeddings;
pub mod error;
mod fleet;
mod generation;
pub mod kv_publisher;
mod listen;
pub mod models;
mod native;
pub mod openapi;
mod prompt;
mod responses;
mod routes;
mod sse;
pub mod store;
pub mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use grammar::{GrammarCache, Limits, TokenSpace, Vocabulary};
use runtime::{EngineHandle, ModelExecutor, Policy, SchedulerConfig};
use tokenizers::Tokenizer;
use warp::reply::Response;
use warp::Reply;

use crate::chat_template::ChatTemplate;
use crate::load::{chat_template, load_model, DeviceArgs};
use models::{ModelKind, Served};
use tools::ToolFormat;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// A model to serve, `[ID=]PATH`: a `.gguf` file or a Hugging Face folder (repeatable). A BERT folder (a
    /// sentence-transformers model) serves /v1/embeddings; anything else chat and completions.
    #[arg(long = "model", value_name = "[ID=]PATH", value_parser = models::ModelSpec::parse_arg)]
    pub model: Vec<models::ModelSpec>,
    /// A decoder model served as an embedder (pooled final hidden states, as vLLM's `--convert embed`),
    /// `[ID=]PATH` (repeatable).
    #[arg(long = "embedding-model", value_name = "[ID=]PATH", value_parser = models::ModelSpec::parse_arg)]
    pub embedding_model: Vec<models::ModelSpec>,
    /// A TOML file of `[[model]]` tables (id, path, kind, kv_cache_mb, sampling_defaults, pooling), served after
    /// the --model ones.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Pooling of embedding models that do not say: mean, cls, last, max (default: the model's own; last token
    /// for decoders).
    #[arg(long)]
    pub pooling: Option<kernels::Pooling>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (the address is printed).
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// The id clients use for the first model (default: the file name without extension).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer <key>` on every route but /health, /metrics and /openapi.json.
    #[arg(long, env = "RADIXSERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Memory for the KV cache, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub kv_cache_mb: usize,
    /// KV slots (tokens) in the pool; overrides --kv-cache-mb.
    #[arg(long)]
    pub max_total_tokens: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub max_running_requests: usize,
    /// Waiting requests beyond this are answered 503.
    #[arg(long, default_value_t = 1024)]
    pub max_queued_requests: usize,
    /// Token budget of one scheduler step (chunked prefill).
    #[arg(long, default_value_t = 512)]
    pub chunked_prefill_size: usize,
    /// `lpm` (longest cached prefix first) or `fcfs`.
    #[arg(long, default_value = "lpm")]
    pub schedule_policy: Policy,
    /// Compute every prompt in full (the no-cache baseline).
    #[arg(long)]
    pub disable_radix_cache: bool,
    #[arg(long)]
    pub disable_jump_forward: bool,
    /// Tool-call format: json, hermes, llama3_json, mistral (default: from the chat template).
    #[arg(long)]
    pub tool_call_parser: Option<ToolFormat>,
    /// Host names served, comma-separated (`*`: any). Default: any, except on a loopback --host, where only
    /// localhost, 127.0.0.1 and [::1] (a guard against DNS rebinding; name yours here to reach it by another name).
    #[arg(long)]
    pub allowed_hosts: Option<String>,
    /// Where the Responses API keeps stored responses (an embedded database, `responses.redb`), so chains survive a
    /// restart. Default: `$RADIXSERVE_CACHE/state`, else `~/.cache/radixserve/state`. One server per folder.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Most stored responses kept (the oldest go first).
    #[arg(long, default_value_t = 100_000)]
    pub responses_max_count: usize,
    /// Stored responses older than this many seconds are dropped (default 30 days, as OpenAI keeps them).
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    pub responses_max_age_s: u64,
    /// Tokens per KV block as routers see it: `vllm:cache_config_info`'s `block_size` and the pages KV-cache
    /// events describe (the radix cache itself shares prefixes of any length).
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,
    /// KV-cache events, as vLLM's JSON: e.g. '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint":
    /// "tcp://*:5557"}': the first chat model's radix cache, in blocks of --page-size tokens, on a ZMQ PUB socket
    /// in the msgpack layout llm-d's KV-cache indexer reads.
    #[arg(long)]
    pub kv_events_config: Option<kv_publisher::KvEventsConfig>,
    /// On SIGTERM: seconds running requests get to finish before the server exits.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_s: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a new grammar may take to compile before the request is refused.
    #[arg(long, default_value_t = 30)]
    pub grammar_timeout_s: u64,
    /// Regex of the whitespace allowed between JSON tokens in `json_object` and `json_schema` output, like
    /// SGLang's --constrained-json-whitespace-pattern (default `( |\n[ \t]{0,20})?`; "" for compact JSON).
    #[arg(long, value_parser = json_whitespace)]
    pub json_whitespace: Option<String>,
    /// What a request that leaves a sampling field unset gets: `model` (the model's recommendation, from GGUF
    /// `general.sampling.*` or generation_config.json; OpenAI's where it has none), `openai` (temperature 1), or a
    /// JSON object of values over the model's, e.g. '{"temperature": 0.2, "top_p": 0.9}'.
    #[arg(long, default_value = "model")]
    pub sampling_defaults: defaults::DefaultsSource,
    #[command(flatten)]
    pub device: DeviceArgs,
}

fn json_whitespace(s: &str) -> Result<String, String> {
    grammar::check_json_whitespace(s).map(|()| s.to_string()).map_err(|e| e.to_string())
}

/// Everything a request needs once the model is loaded.
pub struct Ready {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub space: Arc<TokenSpace>,
    pub grammars: Arc<GrammarCache>,
    pub template: ChatTemplate,
    pub template_has_tools: bool,
    pub tool_format: ToolFormat,
    pub model_id: String,
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub created: u64,
    pub grammar_timeout: std::time::Duration,
    pub sampling_defaults: defaults::SamplingDefaults,
    /// The model's file or folder, and its architecture (SGLang's `/model_info`).
    pub model_path: PathBuf,
    pub arch: kernels::Arch,
}

pub struct AppState {
    /// Every served model in the order given; the first of each kind answers requests that name none.
    models: Vec<models::ModelSlot>,
    /// Stored responses of the Responses API.
    responses: Arc<store::ResponseStore>,
    /// The options in force (SGLang's `/server_info`).
    args: ServeArgs,
    /// Set on SIGTERM: readiness answers 503 and new requests are refused while running ones finish.
    draining: std::sync::atomic::AtomicBool,
    api_key: Option<String>,
    allowed_hosts: edge::AllowedHosts,
    max_body: usize,
    http_requests: prometheus::IntCounterVec,
    registry: prometheus::Registry,
}

impl AppState {
    /// Whether no engine has anything to do (nothing queued, nothing running).
    fn idle(&self) -> bool {
        self.models.iter().all(|m| match m.state.get() {
            Some(Ok(Served::Chat(r))) => r.engine.waiting() == 0 && r.engine.metrics().running.get() == 0,
            Some(Ok(Served::Embedding(e))) => e.engine.in_engine() == 0,
            _ => true,
        })
    }
}

/// An id for a response or a call: `prefix` and 24 random letters and digits.
pub(crate) fn random_id(prefix: &str) -> String {
    use rand::Rng;
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..24).map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char).collect();
    format!("{prefix}{tail}")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A running server (for tests and embedding): its address and a way to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting and waits for open connections to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Drains: readiness answers 503 and new work is refused (503 with `Retry-After`) while what every engine
    /// has been given finishes, up to `grace`.
    pub async fn drain(&self, grace: std::time::Duration) {
        self.state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + grace;
        // Idle twice in a row, 50 ms apart: a request between its admission and the step that counts it as
        // running is seen by one check or the other.
        let mut idle_checks = 0;
        while tokio::time::Instant::now() < deadline && idle_checks < 2 {
            idle_checks = if self.state.idle() { idle_checks + 1 } else { 0 };
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if !self.state.idle() {
            tracing::warn!("the shutdown grace period ended with requests still running");
        }
    }

    /// The first chat model's engine, once loaded (tests and embedders reach the scheduler through it).
    pub fn chat_engine(&self) -> Option<EngineHandle> {
        match models::resolve(&self.state.models, ModelKind::Chat, None) {
            Ok(Served::Chat(r)) => Some(r.engine.clone()),
            _ => None,
        }
    }

    /// Waits until every model is loaded (or one failed to load).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        loop {
            if let Some((id, Err(e))) = self.state.models.iter().find_map(|m| Some((&m.id, m.state.get()?))) {
                anyhow::bail!("model {id} failed to load: {e}");
            }
            if self.state.models.iter().all(|m| m.state.get().is_some()) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Every model the arguments name: `--model`, then `--embedding-model`, then the `--models` file.
fn model_specs(args: &ServeArgs) -> anyhow::Result<Vec<models::ModelSpec>> {
    let mut specs = args.model.clone();
    specs.extend(
        args.embedding_model.iter().cloned().map(|m| models::ModelSpec { kind: Some(ModelKind::Embedding), ..m }),
    );
    if let Some(f) = &args.models {
        specs.extend(models::read_models_file(f)?);
    }
    if let (Some(name), Some(first)) = (&args.served_model_name, specs.first_mut()) {
        first.id = Some(name.clone());
    }
    Ok(specs)
}

/// `$RADIXSERVE_CACHE/state`, else `~/.cache/radixserve/state`, else `./radixserve-state`.
fn default_state_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("RADIXSERVE_CACHE") {
        return PathBuf::from(c).join("state");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/radixserve/state"),
        None => PathBuf::from("radixserve-state"),
    }
}

/// Binds the socket, starts loading the models in the background (one after another) and serves until stopped.
pub async fn start(args: ServeArgs) -> anyhow::Result<RunningServer> {
    let slots = models::slots(model_specs(&args)?)?;
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let responses = Arc::new(store::ResponseStore::open(
        &state_dir,
        args.responses_max_count,
        std::time::Duration::from_secs(args.responses_max_age_s),
    )?);
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("bad --host/--port {}:{}", args.host, args.port))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr()?;
    let registry = prometheus::Registry::new();
    let http_requests = prometheus::IntCounterVec::new(
        prometheus::Opts::new("radixserve_http_requests_total", "HTTP requests by route and status."),
        &["route", "status"],
    )?;
    registry.register(Box::new(http_requests.clone()))?;
    let state = Arc::new(AppState {
        models: slots,
        responses,
        args: args.clone(),
        draining: std::sync::atomic::AtomicBool::new(false),
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        allowed_hosts: edge::AllowedHosts::new(args.allowed_hosts.as_deref(), addr.ip()),
        max_body: args.max_body_bytes,
        http_requests,
        registry,
    });
    let loader = state.clone();
    tokio::task::spawn_blocking(move || {
        let first_chat = loader.models.iter().position(|m| m.kind == ModelKind::Chat);
        for (i, slot) in loader.models.iter().enumerate() {
            let loaded = match slot.kind {
                ModelKind::Chat => load(&args, slot, first_chat == Some(i)).map(|r| {
                    tracing::info!("chat model {} ready ({} KV slots)", r.model_id, r.engine.num_slots());
                    Served::Chat(Arc::new(r))
                }),
                ModelKind::Embedding => load_embedder(&args, slot).map(|r| {
                    tracing::info!(
                        "embedding model {} ready ({} dimensions, {} pooling, inputs up to {} tokens)",
                        r.model_id,
                        r.dim,
                        r.pooling.as_str(),
                        r.max_tokens
                    );
                    Served::Embedding(Arc::new(r))
                }),
            };
            if let Err(e) = &loaded {
                tracing::error!("loading the model {} failed: {e:#}", slot.id);
            }
            let _ = slot.state.set(loaded.map_err(|e| format!("{e:#}")));
        }
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = listen::serve(listener, state.clone(), async {
        let _ = rx.await;
    });
    let task = tokio::spawn(server);
    Ok(RunningServer { addr, state, shutdown: Some(tx), task: Some(task) })
}

/// `radixserve serve`: runs until Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let server = start(args).await?;
        println!("radixserve listening on http://{}", server.addr);
        tokio::select! {
            r = server.wait_ready() => r?,
            _ = tokio::signal::ctrl_c() => { server.stop().await; return Ok(()); }
        }
        println!("radixserve ready on http://{}/v1", server.addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {
                let grace = std::time::Duration::from_secs(server.state.args.shutdown_grace_s);
                tracing::info!("SIGTERM: draining (up to {} s for running requests)", grace.as_secs());
                server.drain(grace).await;
            }
        }
        tracing::info!("shutting down");
        server.stop().await;
        Ok(())
    })
}

fn load(args: &ServeArgs, slot: &models::ModelSlot, first_chat: bool) -> anyhow::Result<Ready> {
    let spec = &slot.spec;
    let opts = args.device.options()?;
    let model = load_model(&spec.path, opts)?;
    let template = chat_template(&model)?;
    let source = spec.sampling_defaults.as_ref().unwrap_or(&args.sampling_defaults);
    let sampling_defaults = defaults::SamplingDefaults::resolve(source, &model.sampling)?;
    tracing::info!(
        "{}: sampling defaults for fields a request leaves unset: {}",
        slot.id,
        sampling_defaults.describe()
    );
    let template_source = model.chat_template.clone().unwrap_or_default();
    let model_id = slot.id.clone();
    let slots = match spec.max_total_tokens.or(args.max_total_tokens) {
        Some(n) => n,
        None => kernels::KvPool::slots_for_budget(
            model.net.config(),
            opts.kind,
            spec.kv_cache_mb.unwrap_or(args.kv_cache_mb) << 20,
        ),
    };
    anyhow::ensure!(slots >= 64, "the KV cache holds only {slots} tokens; give it more memory (--kv-cache-mb)");
    let (model_path, arch) = (model.path.clone(), model.net.config().arch);
    let tokenizer = Arc::new(model.tokenizer);
    let space = TokenSpace::new(Vocabulary::from_tokenizer(&tokenizer, &model.special.eos)?);
    let exec = ModelExecutor::new(model.net, slots)?;
    // KV-cache events: the first chat model's (one endpoint).
    let kv_events = match &args.kv_events_config {
        Some(c) if c.enabled() && first_chat => Some(kv_publisher::start(c, &model_id, args.page_size)?),
        _ => None,
    };
    let cfg = SchedulerConfig {
        kv_events,
        max_running: args.max_running_requests.max(1),
        max_queued: args.max_queued_requests,
        step_tokens: args.chunked_prefill_size.max(16),
        enable_cache: !args.disable_radix_cache,
        policy: args.schedule_policy,
        jump_forward: !args.disable_jump_forward,
        ..SchedulerConfig::default()
    };
    let engine = runtime::start(exec, cfg, tokenizer.clone(), model.special.eos.clone())?;
    let vocab_size = tokenizer.get_vocab_size(true);
    let mut grammars = GrammarCache::new(space.clone(), Limits::default(), 256);
    if let Some(ws) = &args.json_whitespace {
        grammars = grammars.with_json_whitespace(ws).context("--json-whitespace")?;
    }
    // Tokens one request may hold: the model's context, or the KV pool if smaller (the engine's own limit).
    let max_model_len = engine.context_len();
    Ok(Ready {
        engine,
        grammars: Arc::new(grammars),
        space,
        tokenizer,
        template,
        template_has_tools: template_source.contains("tools"),
        tool_format: spec
            .tool_call_parser
            .or(args.tool_call_parser)
            .unwrap_or_else(|| ToolFormat::detect(&template_source)),
        model_id,
        max_model_len,
        vocab_size,
        created: now_secs(),
        grammar_timeout: std::time::Duration::from_secs(args.grammar_timeout_s.max(1)),
        sampling_defaults,
        model_path,
        arch,
    })
}

/// Loads an embedding model and starts its engine.
fn load_embedder(args: &ServeArgs, slot: &models::ModelSlot) -> anyhow::Result<models::EmbedReady> {
    let opts = args.device.options()?;
    let pooling = slot.spec.pooling.or(args.pooling);
    let model = kernels::EmbeddingModel::load(&slot.spec.path, opts, pooling, &mut |_, _| {})
        .with_context(|| format!("loading the embedding model {}", slot.spec.path.display()))?;
    let tokenizer = Arc::new(model.tokenizer.clone());
    let (max_tokens, dim, pooling, normalize) = (model.max_tokens, model.dim(), model.pooling, model.normalize);
    tracing::info!(
        model = %slot.spec.path.display(),
        dim,
        pooling = pooling.as_str(),
        amx_tiles = model.on_tiles(),
        "loaded embedding model"
    );
    let cfg = runtime::EmbedConfig {
        max_queued: args.max_queued_requests,
        step_tokens: args.chunked_prefill_size.max(max_tokens).max(16) * 8,
        max_batch: args.max_running_requests.max(1),
    };
    let engine = runtime::start_embedder(model, cfg)?;
    Ok(models::EmbedReady {
        engine,
        vocab_size: tokenizer.get_vocab_size(true) as u32,
        tokenizer,
        model_id: slot.id.clone(),
        created: now_secs(),
        max_tokens,
        dim,
        pooling,
        normalize,
    })
}

/// A JSON reply, 200.
pub(crate) fn json_ok<T: serde::Serialize>(body: &T) -> Response {
    warp::reply::json(body).into_response()
}
