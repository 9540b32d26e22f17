//! The embedding engine: the scheduler of an embedding model.
//!
//! An embedding model has no KV cache and no radix tree (an encoder sees each input once; a decoder used as an
//! embedder keeps nothing between calls), so its scheduler is small: one thread owns the model, requests wait in a
//! bounded queue (beyond `max_queued` [`EmbedHandle::submit`] answers [`EmbedSubmitError::QueueFull`]), and each
//! step packs the waiting requests' inputs, oldest first, into one forward call up to a token budget: continuous
//! batching, where a request of many inputs may be split over steps and several small requests share one. A request
//! whose [`EmbedTicket`] is dropped (the client went away) is removed before its next input is computed.
//! The same [`Metrics`] as the generation engine are kept (those about KV slots stay zero).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::params::ValidationError;

/// What the embedding engine runs a step on.
pub trait Embedder: Send + 'static {
    /// The longest input, in tokens.
    fn max_tokens(&self) -> usize;
    /// The vectors' length.
    fn dim(&self) -> usize;
    /// One vector per input, in order; every input is 1 to `max_tokens` long.
    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String>;
}

/// Limits of the embedding engine.
#[derive(Debug, Clone, Copy)]
pub struct EmbedConfig {
    /// Most requests in the engine (waiting or partly computed); beyond it `submit` answers `QueueFull`.
    pub max_queued: usize,
    /// Token budget of one step (at least one input runs, whatever its length).
    pub step_tokens: usize,
    /// Most inputs in one step.
    pub max_batch: usize,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self { max_queued: 1024, step_tokens: 8192, max_batch: 64 }
    }
}

/// Inputs the engine has checked ([`EmbedHandle::validate`]): non-empty, each 1 to `max_tokens` tokens.
#[derive(Debug, Clone)]
pub struct ValidEmbed {
    inputs: Vec<Vec<u32>>,
}

impl ValidEmbed {
    pub fn inputs(&self) -> &[Vec<u32>] {
        &self.inputs
    }

    /// Tokens over all inputs (the usage).
    pub fn tokens(&self) -> usize {
        self.inputs.iter().map(Vec::len).sum()
    }
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedSubmitError {
    QueueFull,
    Stopped,
}

impl std::fmt::Display for EmbedSubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::QueueFull => write!(f, "the server is at capacity (request queue full); retry later"),
            Self::Stopped => write!(f, "the embedding engine has stopped"),
        }
    }
}

impl std::error::Error for EmbedSubmitError {}

/// The vectors of a request, or why it failed; drop it to cancel the request.
#[derive(Debug)]
pub struct EmbedTicket {
    rx: tokio::sync::oneshot::Receiver<Result<Vec<Vec<f32>>, String>>,
}

impl EmbedTicket {
    pub async fn wait(self) -> Result<Vec<Vec<f32>>, String> {
        self.rx.await.unwrap_or_else(|_| Err("the embedding engine stopped".into()))
    }

    pub fn wait_blocking(self) -> Result<Vec<Vec<f32>>, String> {
        self.rx.blocking_recv().unwrap_or_else(|_| Err("the embedding engine stopped".into()))
    }
}

struct Job {
    inputs: Vec<Vec<u32>>,
    /// Inputs before this one are computed.
    next: usize,
    out: Vec<Vec<f32>>,
    tx: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
    arrived: Instant,
    started: bool,
}

struct Shared {
    metrics: Metrics,
    in_engine: AtomicUsize,
    max_queued: usize,
    max_tokens: usize,
    dim: usize,
}

/// Cloneable access to an embedding engine's thread.
#[derive(Clone)]
pub struct EmbedHandle {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmbedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedHandle")
            .field("max_tokens", &self.shared.max_tokens)
            .field("dim", &self.shared.dim)
            .finish()
    }
}

/// Starts the embedding engine's thread over `model`.
pub fn start_embedder<E: Embedder>(mut model: E, cfg: EmbedConfig) -> std::io::Result<EmbedHandle> {
    let metrics = Metrics::new();
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        in_engine: AtomicUsize::new(0),
        max_queued: cfg.max_queued,
        max_tokens: model.max_tokens(),
        dim: model.dim(),
    });
    let (tx, rx) = mpsc::channel::<Job>();
    let thread_shared = shared.clone();
    std::thread::Builder::new().name("radixserve-embedder".into()).spawn(move || {
        let sh = thread_shared;
        let mut queue: VecDeque<Job> = VecDeque::new();
        loop {
            if queue.is_empty() {
                match rx.recv() {
                    Ok(job) => queue.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                queue.push_back(job);
            }
            // Cancelled requests leave before anything more is computed for them.
            queue.retain(|j| {
                let gone = j.tx.is_closed();
                if gone {
                    sh.in_engine.fetch_sub(1, Ordering::Relaxed);
                    sh.metrics.requests.with_label_values(&["abort"]).inc();
                }
                !gone
            });
            if queue.is_empty() {
                continue;
            }
            let plan = plan_step(&queue, cfg);
            let now = Instant::now();
            for &(j, _) in &plan {
                if !queue[j].started {
                    queue[j].started = true;
                    sh.metrics.queue_time.observe(now.duration_since(queue[j].arrived).as_secs_f64());
                }
            }
            let batch: Vec<&[u32]> = plan
                .iter()
                .flat_map(|&(j, n)| queue[j].inputs[queue[j].next..queue[j].next + n].iter())
                .map(Vec::as_slice)
                .collect();
            let tokens: usize = batch.iter().map(|b| b.len()).sum();
            sh.metrics.running.set(plan.len() as i64);
            sh.metrics.queued.set(queue.len().saturating_sub(plan.len()) as i64);
            sh.metrics.batch_size.observe(batch.len() as f64);
            sh.metrics.step_tokens.observe(tokens as f64);
            sh.metrics.prompt_tokens.inc_by(tokens as u64);
            let t0 = Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.embed(&batch)))
                .unwrap_or_else(|_| Err("internal error in the embedding model".into()))
                .and_then(|v| {
                    if v.len() == batch.len() {
                        Ok(v)
                    } else {
                        Err(format!("the model returned {} vectors for {} inputs", v.len(), batch.len()))
                    }
                });
            tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, inputs = batch.len(), tokens, "embedding step");
            let mut done = Vec::new();
            match result {
                Ok(vectors) => {
                    let mut it = vectors.into_iter();
                    for &(j, n) in &plan {
                        let job = &mut queue[j];
                        job.out.extend(it.by_ref().take(n));
                        job.next += n;
                        if job.next == job.inputs.len() {
                            done.push((j, Ok(())));
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("embedding step failed: {e}");
                    done.extend(plan.iter().map(|&(j, _)| (j, Err(e.clone()))));
                }
            }
            // Remove finished jobs, highest index first so the others keep theirs.
            done.sort_by_key(|(j, _)| std::cmp::Reverse(*j));
            for (j, outcome) in done {
                let job = queue.remove(j).expect("planned job exists");
                sh.in_engine.fetch_sub(1, Ordering::Relaxed);
                sh.metrics.e2e_latency.observe(job.arrived.elapsed().as_secs_f64());
                let label = if outcome.is_ok() { "stop" } else { "error" };
                sh.metrics.requests.with_label_values(&[label]).inc();
                let _ = job.tx.send(outcome.map(|()| job.out));
            }
            sh.metrics.running.set(0);
            sh.metrics.queued.set(queue.len() as i64);
        }
    })?;
    Ok(EmbedHandle { tx, shared })
}

/// The step: for each job in queue order, how many of its next inputs run, within the token and input budgets
/// (the first input always runs).
fn plan_step(queue: &VecDeque<Job>, cfg: EmbedConfig) -> Vec<(usize, usize)> {
    let mut plan = Vec::new();
    let (mut tokens, mut inputs) = (0usize, 0usize);
    'jobs: for (j, job) in queue.iter().enumerate() {
        let mut n = 0;
        for input in &job.inputs[job.next..] {
            let fits = tokens + input.len() <= cfg.step_tokens && inputs < cfg.max_batch.max(1);
            if !fits && inputs > 0 {
                if n > 0 {
                    plan.push((j, n));
                }
                break 'jobs;
            }
            tokens += input.len();
            inputs += 1;
            n += 1;
        }
        if n > 0 {
            plan.push((j, n));
        }
    }
    plan
}

impl EmbedHandle {
    /// Checks the inputs: at least one, each 1 to `max_tokens` long (the error names the input's index).
    pub fn validate(&self, inputs: Vec<Vec<u32>>) -> Result<ValidEmbed, ValidationError> {
        if inputs.is_empty() {
            return Err(ValidationError::invalid("input", "input must not be empty"));
        }
        let max = self.shared.max_tokens;
        for (i, s) in inputs.iter().enumerate() {
            if s.is_empty() {
                return Err(ValidationError::invalid("input", format!("input[{i}] is empty")));
            }
            if s.len() > max {
                return Err(ValidationError::context_length(
                    "input",
                    format!(
                        "input[{i}] has {} tokens; this model's maximum context length is {max} tokens (set \
                         truncate_prompt_tokens to keep the last tokens)",
                        s.len()
                    ),
                ));
            }
        }
        Ok(ValidEmbed { inputs })
    }

    /// Queues a checked request.
    pub fn submit(&self, req: ValidEmbed) -> Result<EmbedTicket, EmbedSubmitError> {
        if self.shared.in_engine.fetch_add(1, Ordering::Relaxed) >= self.shared.max_queued {
            self.shared.in_engine.fetch_sub(1, Ordering::Relaxed);
            return Err(EmbedSubmitError::QueueFull);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let n = req.inputs.len();
        let job = Job {
            inputs: req.inputs,
            next: 0,
            out: Vec::with_capacity(n),
            tx,
            arrived: Instant::now(),
            started: false,
        };
        if self.tx.send(job).is_err() {
            self.shared.in_engine.fetch_sub(1, Ordering::Relaxed);
            return Err(EmbedSubmitError::Stopped);
        }
        Ok(EmbedTicket { rx })
    }

    /// The longest input, in tokens.
    pub fn max_tokens(&self) -> usize {
        self.shared.max_tokens
    }

    pub fn dim(&self) -> usize {
        self.shared.dim
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Requests in the engine now (waiting or partly computed).
    pub fn in_engine(&self) -> usize {
        self.shared.in_engine.load(Ordering::Relaxed)
    }
}

#[cfg(feature = "model")]
impl Embedder for kernels::EmbeddingModel {
    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn dim(&self) -> usize {
        kernels::EmbeddingModel::dim(self)
    }

    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        kernels::EmbeddingModel::embed(self, batch).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted embedder: the vector of an input is `[len, first token]`; records each step's batch sizes.
    struct Scripted {
        steps: Arc<std::sync::Mutex<Vec<usize>>>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Embedder for Scripted {
        fn max_tokens(&self) -> usize {
            16
        }
        fn dim(&self) -> usize {
            2
        }
        fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
            if let Some(g) = &self.gate {
                let _ = g.recv();
            }
            self.steps.lock().unwrap().push(batch.len());
            Ok(batch.iter().map(|b| vec![b.len() as f32, b[0] as f32]).collect())
        }
    }

    fn inputs(lens: &[usize]) -> Vec<Vec<u32>> {
        lens.iter().enumerate().map(|(i, &n)| vec![i as u32; n]).collect()
    }

    #[test]
    fn validation_names_the_input() {
        let steps = Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = start_embedder(Scripted { steps, gate: None }, EmbedConfig::default()).unwrap();
        assert_eq!(h.validate(vec![]).unwrap_err().param, "input");
        let e = h.validate(inputs(&[3, 0])).unwrap_err();
        assert!(e.message.contains("input[1]"), "{}", e.message);
        let e = h.validate(inputs(&[3, 17])).unwrap_err();
        assert!(e.message.contains("input[1]") && e.message.contains("16"), "{}", e.message);
    }

    #[test]
    fn inputs_split_over_steps_come_back_in_order() {
        let steps = Arc::new(std::sync::Mutex::new(Vec::new()));
        let cfg = EmbedConfig { max_queued: 8, step_tokens: 10, max_batch: 3 };
        let h = start_embedder(Scripted { steps: steps.clone(), gate: None }, cfg).unwrap();
        let lens = [4, 4, 4, 9, 1, 16, 2];
        let out = h.submit(h.validate(inputs(&lens)).unwrap()).unwrap().wait_blocking().unwrap();
        let want: Vec<Vec<f32>> = lens.iter().enumerate().map(|(i, &n)| vec![n as f32, i as f32]).collect();
        assert_eq!(out, want);
        // Within budget every step, except a single over-long input alone.
        assert!(steps.lock().unwrap().iter().all(|&n| (1..=3).contains(&n)));
        assert_eq!(h.in_engine(), 0);
    }

    #[test]
    fn queue_limit_cancellation_and_batching_across_requests() {
        let steps = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (gate_tx, gate_rx) = mpsc::channel();
        let cfg = EmbedConfig { max_queued: 3, step_tokens: 100, max_batch: 8 };
        let h = start_embedder(Scripted { steps: steps.clone(), gate: Some(gate_rx) }, cfg).unwrap();
        let first = h.submit(h.validate(inputs(&[2])).unwrap()).unwrap();
        // Wait until the first step holds the model, then queue two more and one too many.
        while h.metrics().running.get() == 0 {
            std::thread::yield_now();
        }
        let cancelled = h.submit(h.validate(inputs(&[3])).unwrap()).unwrap();
        let second = h.submit(h.validate(inputs(&[4, 5])).unwrap()).unwrap();
        assert_eq!(h.submit(h.validate(inputs(&[1])).unwrap()).unwrap_err(), EmbedSubmitError::QueueFull);
        drop(cancelled);
        for _ in 0..3 {
            let _ = gate_tx.send(());
        }
        assert_eq!(first.wait_blocking().unwrap(), vec![vec![2.0, 0.0]]);
        assert_eq!(second.wait_blocking().unwrap(), vec![vec![4.0, 0.0], vec![5.0, 1.0]]);
        // Step 1: the first request; step 2: only the second's two inputs (the cancelled one never ran).
        assert_eq!(*steps.lock().unwrap(), vec![1, 2]);
        while h.in_engine() != 0 {
            std::thread::yield_now();
        }
        assert_eq!(h.metrics().requests.with_label_values(&["abort"]).get(), 1);
    }
}
