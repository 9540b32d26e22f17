//! The continuous-batching scheduler: one step at a time, on one thread.
//!
//! # A step
//! 1. Requests whose client went away are dropped (their computed KV goes to the cache).
//! 2. Every running sequence gets its next tokens: one for a decode; for a prompt (or a jump-forward run, or a
//!    pre-empted request coming back) a chunk within the step's token budget, so a long prompt never stalls the
//!    decodes for more than one chunk.
//! 3. Waiting requests are admitted while the budget, `max_running` and KV memory allow, longest cached prefix
//!    first (`lpm`) or in arrival order (`fcfs`, and always once the queue is long). Each one matches its prompt
//!    in the radix cache, locks the match and only computes the rest.
//! 4. KV slots for the step come from the free list, then from evicting cache leaves, then by pre-empting the
//!    youngest running request (its KV goes to the cache and it waits again with its tokens: nothing is lost).
//! 5. One forward call runs every chunk; each sequence whose chunk reached its end samples a token (grammar
//!    mask, penalties, seed), appends jump-forward tokens, checks its stop conditions and streams its delta.
//!
//! # Sequences and slots
//! A sequence's `tokens` are its prompt then its output; `slots[i]` holds the KV of `tokens[i]` for
//! `i < slots.len()`, and the next forward always covers `tokens[slots.len()..]` (at least the last sampled
//! token). The first `tree_len` slots belong to the radix cache and are pinned by a lock on `node`; the rest are
//! the sequence's own. After a prompt chunk, and when a sequence ends for any reason, its computed tokens are
//! inserted into the cache: duplicates of what the cache already had are freed, the rest is handed over.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use grammar::{Matcher, TokenBitset};
use radix_cache::{Namespace, NodeHandle, RadixCache, SlotAllocator, SlotId};
use tokenizers::Tokenizer;

use crate::engine::{Event, FinishReason, Finished, TokenInfo};
use crate::executor::{Executor, SeqStep};
use crate::kv_events::{self, KvEvent, KvEventBatch, KvEventSink};
use crate::metrics::Metrics;
use crate::params::Request;
use crate::sampler::{self, SamplerState};
use crate::text::{Detokenizer, StopStrings};

/// Order in which waiting requests are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Longest cached prefix first (falls back to arrival order when the queue is long).
    Lpm,
    /// Arrival order.
    Fcfs,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lpm" => Ok(Policy::Lpm),
            "fcfs" => Ok(Policy::Fcfs),
            _ => Err(format!("unknown schedule policy {s:?} (lpm, fcfs)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most sequences in the running batch.
    pub max_running: usize,
    /// Most requests waiting; beyond it `submit` answers [`crate::SubmitError::QueueFull`].
    pub max_queued: usize,
    /// Token budget of one step (chunked prefill): decodes count one each, prompt chunks fill the rest.
    pub step_tokens: usize,
    /// Use the radix cache (off: every request computes its whole prompt; the no-cache baseline).
    pub enable_cache: bool,
    pub policy: Policy,
    /// Queue length beyond which `lpm` falls back to arrival order (matching costs per waiting request).
    pub lpm_max_queue: usize,
    /// Append grammar-forced text without sampling.
    pub jump_forward: bool,
    /// Where KV-cache events go (none: not collected).
    pub kv_events: Option<KvEventSink>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_running: 64,
            max_queued: 1024,
            step_tokens: 512,
            enable_cache: true,
            policy: Policy::Lpm,
            lpm_max_queue: 128,
            jump_forward: true,
            kv_events: None,
        }
    }
}

/// Decode tokens kept in reserve per running sequence when admitting new ones (pre-emption handles the rest).
const DECODE_RESERVE: usize = 16;
/// A waiting request sharing more than this many uncomputed prompt tokens with a running one still computing its
/// prompt, and at least half of its own uncomputed prompt, waits until that prompt is done and in the cache, so
/// the shared part is computed once. (Sharing only a system prompt in front of a long question, it goes ahead:
/// waiting for the other's whole prompt would cost it more time than the shared part saves.)
const SHARED_DEFER: usize = 32;

const NS: Namespace = Namespace(0);

pub(crate) type EventTx = tokio::sync::mpsc::UnboundedSender<Event>;

pub(crate) struct Seq {
    pub id: u64,
    req: Request,
    tx: EventTx,
    tokens: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    slots: Vec<u32>,
    tree_len: usize,
    node: Option<NodeHandle>,
    /// Prompt tokens found in the cache at first admission (reported as `cached_tokens`).
    cached_tokens: Option<usize>,
    matcher: Option<Matcher>,
    sampler: SamplerState,
    detok: Detokenizer,
    stops: StopStrings,
    arrival: Instant,
    last_token_at: Option<Instant>,
    /// Prompt logprobs computed so far (positions 1.. of the prompt), until sent.
    prompt_lps: Vec<TokenInfo>,
    prompt_lps_sent: bool,
}

impl Seq {
    pub(crate) fn new(id: u64, req: Request, tx: EventTx, max_tokens: usize) -> Self {
        let sampler = SamplerState::new(&req.sampling, &req.prompt);
        let matcher = req.grammar.clone().map(Matcher::new);
        let stops = StopStrings::new(req.stop.stop.clone());
        Self {
            id,
            tokens: req.prompt.clone(),
            prompt_len: req.prompt.len(),
            max_tokens,
            slots: Vec::new(),
            tree_len: 0,
            node: None,
            cached_tokens: None,
            matcher,
            sampler,
            detok: Detokenizer::new(),
            stops,
            arrival: Instant::now(),
            last_token_at: None,
            prompt_lps: Vec::new(),
            prompt_lps_sent: false,
            req,
            tx,
        }
    }

    /// The request back, before it ran (a submit the engine thread never received), and its token budget.
    pub(crate) fn into_request(self) -> (Request, usize) {
        (self.req, self.max_tokens)
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn pending(&self) -> usize {
        self.tokens.len() - self.slots.len()
    }

    /// Whether the prompt's logprobs are asked for and not yet sent: the prompt is then computed in full, with the
    /// logits of every position.
    fn wants_prompt_logprobs(&self) -> bool {
        self.req.prompt_logprobs.is_some() && !self.prompt_lps_sent
    }

    fn cancelled(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Counts for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub steps: u64,
    pub forward_tokens: u64,
    pub retractions: u64,
    pub jump_forward_tokens: u64,
}

pub struct Scheduler<E: Executor> {
    exec: E,
    cfg: SchedulerConfig,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    mem: Memory,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    metrics: Metrics,
    stats: SchedulerStats,
    mask: Option<TokenBitset>,
    /// Requests submitted and not yet admitted (see [`Scheduler::count_waiting_in`]).
    not_admitted: Option<Arc<AtomicUsize>>,
}

/// The KV slots: the free list and the radix cache, with the protocol that moves slots between them and
/// sequences.
struct Memory {
    cache: RadixCache,
    alloc: SlotAllocator,
    enable_cache: bool,
    /// KV-cache events of this step, when they are published (`SchedulerConfig::kv_events`): page size and events.
    events: Option<(usize, Vec<KvEvent>)>,
    freed: Vec<SlotId>,
}

struct Planned {
    /// Index into `running`.
    seq: usize,
    n: usize,
    new_slots: Vec<u32>,
}

impl<E: Executor> Scheduler<E> {
    pub fn new(exec: E, cfg: SchedulerConfig, tokenizer: Arc<Tokenizer>, eos: Vec<u32>, metrics: Metrics) -> Self {
        let n = exec.num_slots();
        metrics.kv_slots_total.set(n as i64);
        let enable_cache = cfg.enable_cache;
        let events = cfg.kv_events.as_ref().map(|s| (s.page_size.max(1), Vec::new()));
        Self {
            exec,
            cfg,
            tokenizer,
            eos,
            mem: Memory {
                cache: RadixCache::new(1),
                alloc: SlotAllocator::new(n),
                enable_cache,
                freed: Vec::new(),
                events,
            },
            waiting: VecDeque::new(),
            running: Vec::new(),
            not_admitted: None,
            metrics,
            stats: SchedulerStats::default(),
            mask: None,
        }
    }

    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Slots neither free nor held by the cache: what running sequences own. Zero when idle (leak check).
    pub fn slots_in_use_by_requests(&self) -> usize {
        self.mem.alloc.used_count() - self.mem.cache.total_size()
    }

    pub fn cache_stats(&self) -> radix_cache::CacheStats {
        self.mem.cache.stats()
    }

    /// `counter` counts requests submitted and not yet admitted (what `--max-queued-requests` bounds): the
    /// submitter adds one, the scheduler takes it away at a request's first admission, or when a request that was
    /// never admitted is cancelled or aborted.
    pub(crate) fn count_waiting_in(&mut self, counter: Arc<AtomicUsize>) {
        self.not_admitted = Some(counter);
    }

    /// A request that was counted as not admitted no longer is.
    fn leaves_queue(&self, seq: &Seq) {
        if seq.cached_tokens.is_none() {
            if let Some(c) = &self.not_admitted {
                c.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn enqueue(&mut self, seq: Seq) {
        self.waiting.push_back(seq);
        self.metrics.queued.set(self.waiting.len() as i64);
    }

    /// Empties the radix cache; refused (false) while requests run, since they hold parts of it.
    pub fn flush_cache(&mut self) -> bool {
        if !self.running.is_empty() {
            return false;
        }
        self.mem.freed.clear();
        if self.mem.cache.reset(&mut self.mem.freed).is_err() {
            return false;
        }
        self.mem.free_collected();
        if let Some((_, events)) = &mut self.mem.events {
            events.push(KvEvent::AllBlocksCleared);
        }
        self.publish_events();
        self.update_gauges();
        true
    }

    /// Hands this step's KV-cache events to the publisher without waiting; a full channel drops them (counted).
    fn publish_events(&mut self) {
        let (Some(sink), Some((_, events))) = (&self.cfg.kv_events, &mut self.mem.events) else { return };
        if events.is_empty() {
            return;
        }
        let events = std::mem::take(events);
        let n = events.len() as u64;
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        if sink.offer(KvEventBatch { ts, events }) {
            self.metrics.kv_events.inc_by(n);
        } else {
            self.metrics.kv_events_dropped.inc_by(n);
        }
    }

    /// The hashes of every whole block the radix cache holds (what a consumer of the KV-cache events should have
    /// rebuilt), with the events' page size (1 when they are off).
    pub fn kv_blocks(&self) -> Vec<u64> {
        let page = self.mem.events.as_ref().map_or(1, |(p, _)| *p);
        let mut out = Vec::new();
        self.mem
            .cache
            .for_each_path(NS, &mut |path, start| out.extend(kv_events::blocks_ending_after(path, start, page)));
        out.sort_unstable();
        out
    }

    fn update_gauges(&self) {
        self.metrics.running.set(self.running.len() as i64);
        self.metrics.queued.set(self.waiting.len() as i64);
        self.metrics.kv_slots_used.set(self.mem.alloc.used_count() as i64);
        self.metrics.kv_slots_in_use.set((self.mem.alloc.used_count() - self.mem.cache.evictable_size()) as i64);
        self.metrics.cached_tokens.set(self.mem.cache.total_size() as i64);
    }

    /// Runs one step; returns false when there was nothing to do.
    pub fn step(&mut self) -> bool {
        self.drop_cancelled();
        if self.is_idle() {
            self.update_gauges();
            return false;
        }
        let mut plan = self.plan_running();
        self.admit(&mut plan);
        if !self.allocate(&mut plan) || plan.is_empty() {
            self.update_gauges();
            return !self.is_idle();
        }
        self.run(plan);
        self.publish_events();
        self.update_gauges();
        true
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.retain(|s| {
            let gone = s.cancelled();
            if gone {
                self.leaves_queue(s);
            }
            !gone
        });
        self.waiting = waiting;
        let dropped = before - self.waiting.len();
        if dropped > 0 {
            self.metrics.requests.with_label_values(&["abort"]).inc_by(dropped as u64);
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancelled() {
                let seq = self.running.remove(i);
                self.metrics.requests.with_label_values(&["abort"]).inc();
                self.release(seq);
            } else {
                i += 1;
            }
        }
    }

    /// Chunks for the running sequences: decodes first (one token each, always), then continuing prompts.
    fn plan_running(&mut self) -> Vec<Planned> {
        let mut budget = self.cfg.step_tokens;
        let mut plan = Vec::with_capacity(self.running.len());
        for (i, s) in self.running.iter().enumerate() {
            if s.pending() == 1 {
                plan.push(Planned { seq: i, n: 1, new_slots: Vec::new() });
                budget = budget.saturating_sub(1);
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            let p = s.pending();
            if p > 1 && budget > 0 {
                let n = p.min(budget);
                plan.push(Planned { seq: i, n, new_slots: Vec::new() });
                budget -= n;
            }
        }
        plan
    }

    fn budget_left(&self, plan: &[Planned]) -> usize {
        self.cfg.step_tokens.saturating_sub(plan.iter().map(|p| p.n).sum())
    }

    /// Moves waiting requests into the running batch while budget, limits and memory allow.
    fn admit(&mut self, plan: &mut Vec<Planned>) {
        if self.waiting.is_empty() || self.running.len() >= self.cfg.max_running {
            return;
        }
        if self.cfg.enable_cache && self.cfg.policy == Policy::Lpm && self.waiting.len() <= self.cfg.lpm_max_queue {
            // Stable: equal matches keep arrival order.
            let cache = &self.mem.cache;
            let mut keyed: Vec<(usize, Seq)> = self.waiting.drain(..).map(|s| (cache.peek(NS, &s.tokens), s)).collect();
            keyed.sort_by_key(|(m, _)| std::cmp::Reverse(*m));
            self.waiting = keyed.into_iter().map(|(_, s)| s).collect();
        }
        let mut reserve: usize =
            self.running.iter().map(|s| s.max_tokens.saturating_sub(s.generated()).min(DECODE_RESERVE)).sum();
        let mut deferred: Vec<Seq> = Vec::new();
        while self.running.len() < self.cfg.max_running {
            let budget = self.budget_left(plan);
            if budget == 0 {
                break;
            }
            let Some(mut seq) = self.waiting.pop_front() else { break };
            // Match the prompt (all but its last token: that one must be computed for its logits).
            // Prompt logprobs need every position's logits: the cached part is recomputed, not matched.
            if seq.wants_prompt_logprobs() {
                seq.prompt_lps.clear();
            }
            let (matched, node) = if self.cfg.enable_cache && !seq.wants_prompt_logprobs() {
                let m = self.mem.cache.match_prefix(NS, &seq.tokens[..seq.tokens.len() - 1]);
                self.mem.cache.lock(m.node).expect("fresh handle");
                seq.slots = m.slots.iter().map(|s| s.0).collect();
                (m.len, Some(m.node))
            } else {
                (0, None)
            };
            seq.tree_len = matched;
            seq.node = node;
            // Another request still computing its prompt (admitted in this step or an earlier one) will put a
            // prefix this one shares in the cache when it is done: wait for it rather than compute it twice.
            let shared = self.cfg.enable_cache
                && self.running.iter().filter(|other| other.slots.len() < other.prompt_len).any(|other| {
                    let prompt = &other.tokens[..other.prompt_len];
                    let common = prompt.iter().zip(&seq.tokens).take_while(|(a, b)| a == b).count();
                    let saved = common.saturating_sub(matched);
                    saved > SHARED_DEFER && 2 * saved >= seq.prompt_len.saturating_sub(matched)
                });
            let n = seq.pending().min(budget);
            let available = self.mem.alloc.free_count() + self.mem.cache.evictable_size();
            if shared || available < n + reserve {
                self.mem.unpin(&mut seq);
                if shared {
                    deferred.push(seq);
                    continue;
                }
                self.waiting.push_front(seq);
                break;
            }
            reserve += seq.max_tokens.saturating_sub(seq.generated()).min(DECODE_RESERVE);
            if seq.cached_tokens.is_none() {
                self.leaves_queue(&seq);
                let prompt_hit = matched.min(seq.prompt_len);
                seq.cached_tokens = Some(prompt_hit);
                self.metrics.queue_time.observe(seq.arrival.elapsed().as_secs_f64());
                self.metrics.prompt_tokens.inc_by(seq.prompt_len as u64);
                self.metrics.cache_lookup_tokens.inc_by(seq.prompt_len as u64);
                self.metrics.cache_hit_tokens.inc_by(prompt_hit as u64);
                let lookups = self.metrics.cache_lookup_tokens.get().max(1) as f64;
                self.metrics.cache_hit_rate.set(self.metrics.cache_hit_tokens.get() as f64 / lookups);
            }
            self.running.push(seq);
            plan.push(Planned { seq: self.running.len() - 1, n, new_slots: Vec::new() });
        }
        for s in deferred.into_iter().rev() {
            self.waiting.push_front(s);
        }
    }

    /// Finds slots for every planned chunk: free list, then cache eviction, then pre-emption of the youngest
    /// running sequences. Returns false if the step cannot run at all.
    fn allocate(&mut self, plan: &mut Vec<Planned>) -> bool {
        loop {
            let need: usize = plan.iter().map(|p| p.n).sum();
            if need == 0 {
                return !plan.is_empty();
            }
            let free = self.mem.alloc.free_count();
            if free < need {
                self.mem.freed.clear();
                self.mem.evict(need - free);
                self.mem.free_collected();
            }
            if self.mem.alloc.free_count() >= need {
                for p in plan.iter_mut() {
                    p.new_slots =
                        self.mem.alloc.allocate(p.n).expect("counted above").into_iter().map(|s| s.0).collect();
                }
                return true;
            }
            // Pre-empt the youngest sequence (latest arrival) and plan again without it.
            let Some(victim) = (0..self.running.len()).max_by_key(|&i| self.running[i].arrival) else {
                return false;
            };
            if self.running.len() == 1 {
                // Alone and still short: shrink its chunk to what memory holds (a prompt chunk), or give up.
                let avail = self.mem.alloc.free_count() + self.mem.cache.evictable_size();
                if let Some(p) = plan.first_mut() {
                    if avail > 0 && p.n > 1 {
                        p.n = p.n.min(avail);
                        continue;
                    }
                }
                let seq = self.running.remove(0);
                plan.clear();
                self.finish(seq, FinishReason::Error("the KV cache cannot hold this request".into()));
                return false;
            }
            let mut seq = self.running.remove(victim);
            plan.retain(|p| p.seq != victim);
            for p in plan.iter_mut() {
                if p.seq > victim {
                    p.seq -= 1;
                }
            }
            self.retract(&mut seq);
            self.waiting.push_front(seq);
        }
    }

    /// Pre-empts a running sequence: its computed KV goes to the cache, it keeps its tokens and state.
    fn retract(&mut self, seq: &mut Seq) {
        self.stats.retractions += 1;
        self.metrics.retractions.inc();
        self.mem.cache_and_unpin(seq, false);
    }

    /// Ends a sequence that is no longer in `running` and hands its memory back.
    fn release(&mut self, mut seq: Seq) {
        self.mem.cache_and_unpin(&mut seq, false);
    }

    fn run(&mut self, mut plan: Vec<Planned>) {
        plan.sort_by_key(|p| p.seq);
        self.stats.steps += 1;
        let tokens: usize = plan.iter().map(|p| p.n).sum();
        self.stats.forward_tokens += tokens as u64;
        self.metrics.batch_size.observe(plan.len() as f64);
        self.metrics.step_tokens.observe(tokens as f64);
        let result = {
            let inputs: Vec<SeqStep<'_>> = plan
                .iter()
                .map(|p| {
                    let s = &self.running[p.seq];
                    let start = s.slots.len();
                    SeqStep {
                        context_slots: &s.slots,
                        tokens: &s.tokens[start..start + p.n],
                        new_slots: &p.new_slots,
                        wants_logits: start + p.n == s.tokens.len(),
                        all_logits: s.wants_prompt_logprobs() && start < s.prompt_len,
                    }
                })
                .collect();
            let t0 = Instant::now();
            let r = self.exec.forward(&inputs);
            tracing::trace!(ms = t0.elapsed().as_secs_f64() * 1e3, seqs = inputs.len(), tokens, "forward step");
            r
        };
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("forward step failed: {e}");
                // The step's new slots are the sequences' now (their KV may be garbage: do not cache them).
                for p in plan.into_iter().rev() {
                    let mut seq = self.running.remove(p.seq);
                    self.mem.alloc.free(&to_ids(&p.new_slots)).expect("allocated this step");
                    self.mem.finish_uncached(&mut seq);
                    self.send_finish(seq, FinishReason::Error(format!("model step failed: {e}")));
                }
                return;
            }
        };
        let mut rows = rows.into_iter();
        let mut done: Vec<(usize, FinishReason)> = Vec::new();
        for p in &plan {
            let seq = &mut self.running[p.seq];
            let was_prompt = p.n > 1;
            let start = seq.slots.len();
            seq.slots.extend_from_slice(&p.new_slots);
            let row = if seq.wants_prompt_logprobs() && start < seq.prompt_len {
                // A row per new token: the one at position `pos` scores the prompt token at `pos + 1`; the row of
                // the prompt's last token is the sampling row.
                let k = seq.req.prompt_logprobs.unwrap_or(0);
                let mut last = None;
                for pos in start..start + p.n {
                    let row = rows.next().expect("a row per new token with all_logits");
                    match seq.tokens.get(pos + 1).filter(|_| pos + 1 < seq.prompt_len) {
                        Some(&next) => {
                            let (lp, top) = sampler::logprobs(&row, next, k);
                            seq.prompt_lps.push(TokenInfo { id: next, logprob: Some(lp), top_logprobs: top });
                        }
                        None => last = Some(row),
                    }
                }
                if seq.slots.len() < seq.tokens.len() {
                    continue;
                }
                let mut all = vec![TokenInfo { id: seq.tokens[0], logprob: None, top_logprobs: Vec::new() }];
                all.append(&mut seq.prompt_lps);
                let _ = seq.tx.send(Event::PromptLogprobs(all));
                seq.prompt_lps_sent = true;
                last.expect("the prompt's last position has a row")
            } else {
                if seq.slots.len() < seq.tokens.len() {
                    continue; // a prompt chunk that is not the last
                }
                rows.next().expect("one row per sequence at its end")
            };
            if was_prompt && self.cfg.enable_cache {
                self.mem.cache_and_unpin(&mut self.running[p.seq], true);
            }
            if self.running[p.seq].max_tokens == 0 {
                // Scoring only (prompt logprobs with max_tokens 0): nothing is generated.
                done.push((p.seq, FinishReason::Length));
                continue;
            }
            if let Some(reason) = self.sample_and_emit(p.seq, row) {
                done.push((p.seq, reason));
            }
        }
        for (i, reason) in done.into_iter().rev() {
            let seq = self.running.remove(i);
            self.finish(seq, reason);
        }
    }

    /// Samples the next token of `running[i]`, appends jump-forward tokens, streams the delta. Returns the finish
    /// reason if the sequence ended.
    fn sample_and_emit(&mut self, i: usize, mut row: Vec<f32>) -> Option<FinishReason> {
        let eos = &self.eos;
        let seq = &mut self.running[i];
        let now = Instant::now();
        let min_tokens_pending = seq.generated() < seq.req.stop.min_tokens;
        let banned: Vec<u32> = if min_tokens_pending {
            eos.iter().chain(&seq.req.stop.stop_token_ids).copied().collect()
        } else {
            Vec::new()
        };
        let mask = match &seq.matcher {
            Some(m) => {
                let mask = self.mask.get_or_insert_with(|| TokenBitset::new(m_len(m)));
                m.mask_into(mask);
                Some(&*mask)
            }
            None => None,
        };
        let raw = seq.req.logprobs.map(|_| row.clone());
        let Some(token) = sampler::sample(&seq.req.sampling, &mut seq.sampler, &mut row, mask, &banned) else {
            return Some(FinishReason::Error("no token is allowed here (the constraint and bans exclude all)".into()));
        };
        let info = match (&raw, seq.req.logprobs) {
            (Some(raw), Some(k)) => {
                let (lp, top) = sampler::logprobs(raw, token, k);
                TokenInfo { id: token, logprob: Some(lp), top_logprobs: top }
            }
            _ => TokenInfo { id: token, logprob: None, top_logprobs: Vec::new() },
        };
        let mut infos = vec![info];
        let mut text = String::new();
        let mut reason = self.append(i, token, &mut text);
        // Jump-forward: append the tokens the grammar forces without sampling (see `Matcher::forced_tokens_with`).
        if reason.is_none() && self.cfg.jump_forward && self.running[i].req.logprobs.is_none() {
            let tokenizer = &self.tokenizer;
            let encode = |bytes: &[u8]| {
                let text = std::str::from_utf8(bytes).ok()?;
                Some(tokenizer.encode(text, false).ok()?.get_ids().to_vec())
            };
            let forced = match &self.running[i].matcher {
                Some(m) => m.forced_tokens_with(encode),
                None => Vec::new(),
            };
            for id in forced {
                if reason.is_some() {
                    break;
                }
                self.stats.jump_forward_tokens += 1;
                self.metrics.jump_forward_tokens.inc();
                infos.push(TokenInfo { id, logprob: None, top_logprobs: Vec::new() });
                reason = self.append(i, id, &mut text);
            }
        }
        let seq = &mut self.running[i];
        self.metrics.generation_tokens.inc_by(infos.len() as u64);
        match seq.last_token_at {
            None => self.metrics.time_to_first_token.observe(now.duration_since(seq.arrival).as_secs_f64()),
            Some(t) => self.metrics.inter_token_latency.observe(now.duration_since(t).as_secs_f64()),
        }
        seq.last_token_at = Some(now);
        if reason.is_some() && !matches!(reason, Some(FinishReason::StopString(_))) {
            let tail = seq.detok.finish(&self.tokenizer, seq.req.skip_special_tokens);
            let (t, hit) = seq.stops.push(&tail);
            text.push_str(&t);
            if hit.is_none() {
                text.push_str(&seq.stops.flush());
            }
        }
        let _ = seq.tx.send(Event::Delta { text, tokens: infos });
        reason
    }

    /// Appends one token to `running[i]` (matcher, penalties, text) and checks stop conditions.
    fn append(&mut self, i: usize, token: u32, text: &mut String) -> Option<FinishReason> {
        let max_positions = self.exec.max_positions();
        let seq = &mut self.running[i];
        seq.tokens.push(token);
        seq.sampler.observe(&seq.req.sampling, token);
        let may_stop = seq.generated() >= seq.req.stop.min_tokens;
        if let Some(m) = seq.matcher.as_mut() {
            if m.advance(token).is_err() && !self.eos.contains(&token) {
                return Some(FinishReason::Error(format!("token {token} left the grammar")));
            }
        }
        if self.eos.contains(&token) && !seq.req.stop.ignore_eos && may_stop {
            return Some(FinishReason::Stop);
        }
        if seq.req.stop.stop_token_ids.contains(&token) && may_stop {
            return Some(FinishReason::StopToken(token));
        }
        let piece = seq.detok.push(&self.tokenizer, token, seq.req.skip_special_tokens);
        let (out, hit) = seq.stops.push(&piece);
        text.push_str(&out);
        if let Some(s) = hit {
            if may_stop {
                return Some(FinishReason::StopString(s));
            }
        }
        if seq.matcher.as_ref().is_some_and(|m| m.is_complete()) {
            return Some(FinishReason::Stop);
        }
        if seq.generated() >= seq.max_tokens || seq.tokens.len() >= max_positions {
            return Some(FinishReason::Length);
        }
        None
    }

    fn finish(&mut self, seq: Seq, reason: FinishReason) {
        let mut seq = seq;
        self.mem.cache_and_unpin(&mut seq, false);
        self.send_finish(seq, reason);
    }

    fn send_finish(&mut self, seq: Seq, reason: FinishReason) {
        tracing::debug!(id = seq.id, reason = ?reason, generated = seq.generated(), "request finished");
        self.metrics.requests.with_label_values(&[reason.label()]).inc();
        self.metrics.e2e_latency.observe(seq.arrival.elapsed().as_secs_f64());
        let fin = Finished {
            reason,
            prompt_tokens: seq.prompt_len,
            completion_tokens: seq.generated(),
            cached_tokens: seq.cached_tokens.unwrap_or(0),
        };
        let _ = seq.tx.send(Event::Finished(fin));
    }

    /// Sends every queued and running request an error and frees everything (engine shutdown).
    pub(crate) fn abort_all(&mut self, why: &str) {
        while let Some(seq) = self.running.pop() {
            self.finish(seq, FinishReason::Error(why.into()));
        }
        while let Some(seq) = self.waiting.pop_front() {
            self.leaves_queue(&seq);
            self.send_finish(seq, FinishReason::Error(why.into()));
        }
    }
}

impl Memory {
    /// Gives up a sequence's cache lock and slots without caching anything (used before it ran).
    fn unpin(&mut self, seq: &mut Seq) {
        if let Some(node) = seq.node.take() {
            self.cache.unlock(node).expect("locked at admission");
        }
        seq.slots.clear();
        seq.tree_len = 0;
    }

    /// Inserts what `seq` computed into the cache (if on) and drops its lock and slots; with `keep`, relocks the
    /// inserted prefix and keeps using the cache's slots for it (a prompt chunk just computed).
    fn cache_and_unpin(&mut self, seq: &mut Seq, keep: bool) {
        let n = seq.slots.len();
        if !self.enable_cache {
            self.alloc.free(&to_ids(&seq.slots[seq.tree_len..])).expect("own slots are allocated");
            seq.slots.clear();
            seq.tree_len = 0;
            return;
        }
        let ids = to_ids(&seq.slots);
        let out = self.cache.insert(NS, &seq.tokens[..n], &ids).expect("one slot per token");
        if let Some((page, events)) = &mut self.events {
            events.extend(kv_events::stored(&seq.tokens[..out.inserted_len], out.cached_len, out.inserted_len, *page));
        }
        // Slots the cache already had for [tree_len, cached_len) are duplicates; past inserted_len they are ours.
        let dup_end = out.cached_len.max(seq.tree_len);
        let mut to_free: Vec<SlotId> = ids[seq.tree_len..dup_end].to_vec();
        let old = seq.node.take();
        if keep {
            let m = self.cache.match_prefix(NS, &seq.tokens[..out.inserted_len]);
            debug_assert_eq!(m.len, out.inserted_len);
            self.cache.lock(m.node).expect("fresh handle");
            seq.slots.splice(..m.len, m.slots.iter().map(|s| s.0));
            seq.tree_len = m.len;
            seq.node = Some(m.node);
        } else {
            to_free.extend_from_slice(&ids[out.inserted_len.max(dup_end)..]);
            seq.slots.clear();
            seq.tree_len = 0;
        }
        if let Some(node) = old {
            self.cache.unlock(node).expect("locked at admission");
        }
        if !to_free.is_empty() {
            self.alloc.free(&to_free).expect("own slots are allocated");
        }
    }

    /// Frees a sequence's own slots without caching them and drops its lock.
    fn finish_uncached(&mut self, seq: &mut Seq) {
        self.alloc.free(&to_ids(&seq.slots[seq.tree_len..])).expect("own slots are allocated");
        seq.slots.truncate(seq.tree_len);
        self.unpin(seq);
    }

    /// Evicts at least `n` tokens from the cache into `freed`, noting the blocks that go when events are on.
    fn evict(&mut self, n: usize) {
        match &mut self.events {
            None => {
                self.cache.evict(n, &mut self.freed);
            }
            Some((page, events)) => {
                let page = *page;
                let mut note = |path: &[u32], start: usize| events.extend(kv_events::removed(path, start, page));
                self.cache.evict_observed(n, &mut self.freed, Some(&mut note));
            }
        }
    }

    fn free_collected(&mut self) {
        if !self.freed.is_empty() {
            self.alloc.free(&self.freed).expect("slots handed back by the cache are allocated");
            self.freed.clear();
        }
    }
}

fn to_ids(slots: &[u32]) -> Vec<SlotId> {
    slots.iter().map(|&s| SlotId(s)).collect()
}

fn m_len(m: &Matcher) -> usize {
    m.grammar().space().vocab.len()
}

#[cfg(test)]
mod tests {
    //! The scheduler's bookkeeping against a scripted executor whose "model" hashes the whole prefix behind each
    //! KV slot: the next token is a function of every token before it, read back through the slots the scheduler
    //! handed over. Wrong slots (a cache bug, a leak reused too early, a bad chunk) change the outputs.

    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::rc::Rc;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::engine::{Event, FinishReason};
    use crate::params::SamplingParams;

    const V: usize = 64;
    const EOS: u32 = 63;

    /// What each slot holds: the position and the hash of the prefix ending there.
    struct Scripted {
        kv: Vec<Option<(usize, u64)>>,
        log: Rc<RefCell<Vec<Vec<usize>>>>,
    }

    // The scheduler needs Send executors; the test drives it on one thread.
    unsafe impl Send for Scripted {}

    fn mix(h: u64, t: u32) -> u64 {
        (h ^ t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
    }

    impl Executor for Scripted {
        fn num_slots(&self) -> usize {
            self.kv.len()
        }
        fn max_positions(&self) -> usize {
            4096
        }
        fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>, String> {
            let mut written = HashSet::new();
            let context: HashSet<u32> = batch.iter().flat_map(|s| s.context_slots.iter().copied()).collect();
            let mut rows = Vec::new();
            self.log.borrow_mut().push(batch.iter().map(|s| s.tokens.len()).collect());
            for s in batch {
                assert_eq!(s.tokens.len(), s.new_slots.len());
                let mut h = 0u64;
                for (i, &slot) in s.context_slots.iter().enumerate() {
                    let (pos, hash) = self.kv[slot as usize].expect("context slot was written");
                    assert_eq!(pos, i, "context slot {slot} holds position {pos}, used at {i}");
                    h = hash;
                }
                let row_of = |h: u64| {
                    let mut row = vec![0.0f32; V];
                    row[(h % V as u64) as usize] = 1.0;
                    row
                };
                for (j, (&t, &slot)) in s.tokens.iter().zip(s.new_slots).enumerate() {
                    assert!(written.insert(slot) && !context.contains(&slot), "slot {slot} reused within a step");
                    h = mix(h, t);
                    self.kv[slot as usize] = Some((s.context_slots.len() + j, h));
                    if s.all_logits {
                        rows.push(row_of(h));
                    }
                }
                if s.wants_logits && !s.all_logits {
                    rows.push(row_of(h));
                }
            }
            Ok(rows)
        }
    }

    fn tokenizer() -> Arc<Tokenizer> {
        let vocab: serde_json::Map<String, serde_json::Value> =
            (0..V).map(|i| (format!("t{i}"), serde_json::Value::from(i))).collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
        });
        Arc::new(json.to_string().parse().expect("a valid tokenizer"))
    }

    type Log = Rc<RefCell<Vec<Vec<usize>>>>;

    fn scheduler(slots: usize, cfg: SchedulerConfig) -> (Scheduler<Scripted>, Log) {
        let log = Rc::new(RefCell::new(Vec::new()));
        let exec = Scripted { kv: vec![None; slots], log: log.clone() };
        (Scheduler::new(exec, cfg, tokenizer(), vec![EOS], Metrics::new()), log)
    }

    type Rx = tokio::sync::mpsc::UnboundedReceiver<Event>;
    /// A request's ids and finish, `None` if it was cancelled.
    type Outcome = Option<(Vec<u32>, FinishReason)>;

    fn submit(s: &mut Scheduler<Scripted>, prompt: Vec<u32>, max_tokens: usize) -> Rx {
        let mut req = Request::new(prompt);
        req.sampling = SamplingParams::greedy();
        req.stop.max_tokens = crate::MaxTokens::Given(max_tokens);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        s.enqueue(Seq::new(0, req, tx, max_tokens));
        rx
    }

    /// Drains a finished request: (ids, finish).
    fn drain(rx: &mut Rx) -> (Vec<u32>, FinishReason) {
        let mut ids = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Event::Delta { tokens, .. } => ids.extend(tokens.iter().map(|t| t.id)),
                Event::PromptLogprobs(_) => {}
                Event::Finished(f) => return (ids, f.reason),
            }
        }
        panic!("not finished");
    }

    /// A consumer that applies the KV-cache events in order holds exactly the radix cache's whole blocks, after
    /// random work with evictions, a flush, and more work.
    #[test]
    fn kv_events_rebuild_the_caches_blocks() {
        for seed in 0..6u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (tx, mut rx) = tokio::sync::mpsc::channel(100_000);
            let page = [1usize, 4, 16][seed as usize % 3];
            let cfg = SchedulerConfig {
                step_tokens: 24,
                max_running: 4,
                kv_events: Some(KvEventSink { page_size: page, tx }),
                ..Default::default()
            };
            let (mut s, _) = scheduler(160, cfg);
            let bases: Vec<Vec<u32>> = (0..4).map(|_| (0..40).map(|_| rng.random_range(0..EOS)).collect()).collect();
            let mut set = std::collections::HashSet::new();
            let apply = |set: &mut std::collections::HashSet<u64>,
                         rx: &mut tokio::sync::mpsc::Receiver<KvEventBatch>| {
                while let Ok(batch) = rx.try_recv() {
                    for e in batch.events {
                        match e {
                            KvEvent::BlockStored { hashes, tokens, block_size, .. } => {
                                assert_eq!(tokens.len(), hashes.len() * block_size);
                                for h in hashes {
                                    assert!(set.insert(h), "stored twice");
                                }
                            }
                            KvEvent::BlockRemoved { hashes } => {
                                for h in hashes {
                                    assert!(set.remove(&h), "removed a block never stored");
                                }
                            }
                            KvEvent::AllBlocksCleared => set.clear(),
                        }
                    }
                }
            };
            for round in 0..2 {
                let mut rxs = Vec::new();
                for _ in 0..25 {
                    let mut p = bases[rng.random_range(0..4)].clone();
                    p.truncate(rng.random_range(5..=40));
                    p.extend((0..rng.random_range(0..10)).map(|_| rng.random_range(0..EOS)));
                    rxs.push(submit(&mut s, p, rng.random_range(1..12)));
                    s.step();
                }
                while s.step() {}
                for mut r in rxs {
                    drain(&mut r);
                }
                apply(&mut set, &mut rx);
                let mut got: Vec<u64> = set.iter().copied().collect();
                got.sort_unstable();
                assert_eq!(got, s.kv_blocks(), "seed {seed} page {page} round {round}");
                if round == 0 {
                    assert!(s.cache_stats().evicted_tokens > 0, "seed {seed}: the workload evicted");
                    assert!(s.flush_cache());
                    apply(&mut set, &mut rx);
                    assert!(set.is_empty() && s.kv_blocks().is_empty());
                }
            }
            assert!(s.metrics.kv_events_dropped.get() == 0 && s.metrics.kv_events.get() > 0);
            check_memory(&s);
        }
    }

    /// Prompt logprobs come whole, once, before the output, whatever the chunking; a prompt served from the
    /// cache gives the same values as a cold one (its positions are recomputed); `max_tokens` 0 only scores.
    #[test]
    fn prompt_logprobs_are_whole_and_the_same_cold_or_cached() {
        let prompt: Vec<u32> = (0..40).map(|i| (i * 7 % EOS as usize) as u32).collect();
        let run = |s: &mut Scheduler<Scripted>, max_tokens: usize| {
            let mut req = Request::new(prompt.clone());
            req.sampling = SamplingParams::greedy();
            req.stop.max_tokens = crate::MaxTokens::Given(max_tokens);
            req.prompt_logprobs = Some(2);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            s.enqueue(Seq::new(0, req, tx, max_tokens));
            while s.step() {}
            let mut events = Vec::new();
            while let Ok(ev) = rx.try_recv() {
                events.push(ev);
            }
            events
        };
        for cfg in [SchedulerConfig::default(), SchedulerConfig { step_tokens: 7, ..Default::default() }] {
            let (mut s, _) = scheduler(256, cfg);
            let cold = run(&mut s, 3);
            // Cached now: the same prompt again, and once scoring only.
            let warm = run(&mut s, 3);
            let score = run(&mut s, 0);
            check_memory(&s);
            let Event::PromptLogprobs(p) = &cold[0] else { panic!("prompt logprobs come first: {cold:?}") };
            assert_eq!(p.len(), prompt.len());
            assert_eq!(p[0].logprob, None);
            assert_eq!(p.iter().map(|t| t.id).collect::<Vec<_>>(), prompt);
            assert!(p[1..].iter().all(|t| t.logprob.is_some() && t.top_logprobs.len() == 2));
            assert_eq!(cold.iter().filter(|e| matches!(e, Event::PromptLogprobs(_))).count(), 1);
            assert_eq!(cold, warm, "a cached prompt scores as a cold one");
            assert_eq!(score[0], cold[0]);
            match score.last() {
                Some(Event::Finished(f)) => {
                    assert_eq!((f.reason.clone(), f.completion_tokens), (FinishReason::Length, 0));
                }
                other => panic!("{other:?}"),
            }
            assert!(!score.iter().any(|e| matches!(e, Event::Delta { .. })), "nothing generated");
        }
    }

    fn check_memory(s: &Scheduler<Scripted>) {
        assert!(s.is_idle());
        assert_eq!(s.slots_in_use_by_requests(), 0, "slots leaked");
        assert_eq!(s.mem.cache.protected_size(), 0, "locks leaked");
        s.mem.cache.validate().unwrap();
    }

    #[test]
    fn random_workloads_give_the_same_outputs_with_or_without_cache_and_memory() {
        for seed in 0..12u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let bases: Vec<Vec<u32>> =
                (0..3).map(|_| (0..rng.random_range(5..60)).map(|_| rng.random_range(0..EOS)).collect()).collect();
            let work: Vec<(Vec<u32>, usize, Option<usize>)> = (0..30)
                .map(|_| {
                    let mut p = bases[rng.random_range(0..3)].clone();
                    p.truncate(rng.random_range(1..=p.len()));
                    p.extend((0..rng.random_range(0..20)).map(|_| rng.random_range(0..EOS)));
                    let cancel = rng.random_bool(0.2).then(|| rng.random_range(0..30));
                    (p, rng.random_range(1..40), cancel)
                })
                .collect();
            let configs = [
                (4096, SchedulerConfig { enable_cache: false, policy: Policy::Fcfs, ..Default::default() }),
                (4096, SchedulerConfig::default()),
                (150, SchedulerConfig { step_tokens: 32, max_running: 5, ..Default::default() }),
                (120, SchedulerConfig { step_tokens: 7, policy: Policy::Fcfs, ..Default::default() }),
            ];
            let mut reference: Option<Vec<Outcome>> = None;
            for (slots, cfg) in configs {
                let (mut s, _) = scheduler(slots, cfg.clone());
                let mut rxs: Vec<Option<Rx>> = Vec::new();
                let mut outs: Vec<Outcome> = vec![None; work.len()];
                let mut step = 0;
                let mut next = 0;
                while next < work.len() || !s.is_idle() {
                    // Requests arrive a few per step.
                    for _ in 0..2 {
                        if next < work.len() {
                            rxs.push(Some(submit(&mut s, work[next].0.clone(), work[next].1)));
                            next += 1;
                        }
                    }
                    for (i, w) in work.iter().enumerate().take(next) {
                        if w.2 == Some(step) {
                            rxs[i] = None; // the client goes away
                        }
                    }
                    s.step();
                    step += 1;
                    assert!(step < 10_000, "no progress");
                }
                for (i, rx) in rxs.iter_mut().enumerate() {
                    if let Some(rx) = rx {
                        outs[i] = Some(drain(rx));
                    }
                }
                check_memory(&s);
                let r = reference.get_or_insert_with(|| outs.clone());
                for (i, (a, b)) in r.iter().zip(&outs).enumerate() {
                    if let (Some(a), Some(b)) = (a, b) {
                        assert_eq!(a, b, "seed {seed}, {cfg:?}, {slots} slots, request {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn chunked_prefill_keeps_decodes_running() {
        let (mut s, log) = scheduler(4096, SchedulerConfig { step_tokens: 64, ..Default::default() });
        let mut a = submit(&mut s, vec![1, 2, 3], 30);
        s.step();
        s.step();
        let long: Vec<u32> = (0..300).map(|i| (i % 60) as u32).collect();
        let mut b = submit(&mut s, long, 2);
        let start = log.borrow().len();
        while !s.is_idle() {
            s.step();
        }
        let log = log.borrow();
        let prefill_steps = &log[start..start + 5];
        for step in prefill_steps {
            assert!(step.iter().sum::<usize>() <= 64, "budget respected: {step:?}");
            assert!(step.contains(&1), "the running decode goes on in every step: {step:?}");
        }
        drain(&mut a);
        drain(&mut b);
        check_memory(&s);
    }

    #[test]
    fn a_prefix_shared_while_it_is_computed_is_computed_once() {
        // A 300-token prefix takes five 64-token steps; the requests sharing it wait for it to reach the cache
        // instead of computing it themselves (each then computes its own 4 tokens only). Unrelated requests are
        // admitted meanwhile.
        let (mut s, log) = scheduler(4096, SchedulerConfig { step_tokens: 64, ..Default::default() });
        let prefix: Vec<u32> = (0..300).map(|i| (i % 60) as u32).collect();
        let mut rxs: Vec<Rx> =
            (0..4).map(|k| submit(&mut s, [&prefix[..], &[100 + k, 101, 102, 103]].concat(), 1)).collect();
        rxs.push(submit(&mut s, vec![9; 10], 1));
        while !s.is_idle() {
            s.step();
        }
        let computed: usize = log.borrow().iter().flatten().sum();
        assert_eq!(computed, 304 + 3 * 4 + 10, "prefix computed once: {:?}", log.borrow());
        for rx in &mut rxs {
            drain(rx);
        }
        check_memory(&s);
    }

    #[test]
    fn a_short_shared_prefix_does_not_hold_a_long_prompt_back() {
        // Two 300-token prompts sharing their first 40 tokens: both are computed in the first step (waiting for
        // the other's 300 tokens to save 40 is not worth it), the 40 shared tokens twice.
        let (mut s, log) = scheduler(4096, SchedulerConfig { step_tokens: 1024, ..Default::default() });
        let shared: Vec<u32> = (0..40).collect();
        let mut rxs: Vec<Rx> =
            (0..2u32).map(|k| submit(&mut s, [&shared[..], &vec![41 + k; 260][..]].concat(), 1)).collect();
        s.step();
        assert_eq!(log.borrow()[0], vec![300, 300], "both prompts in the first step");
        while !s.is_idle() {
            s.step();
        }
        for rx in &mut rxs {
            drain(rx);
        }
        check_memory(&s);
    }

    #[test]
    fn lpm_admits_the_longest_cached_prefix_first() {
        for (policy, first) in [(Policy::Lpm, 1usize), (Policy::Fcfs, 0)] {
            let (mut s, _) = scheduler(4096, SchedulerConfig { max_running: 1, policy, ..Default::default() });
            let shared: Vec<u32> = (0..40).collect();
            let mut warm = submit(&mut s, shared.clone(), 1);
            while !s.is_idle() {
                s.step();
            }
            drain(&mut warm);
            let mut rx = [submit(&mut s, vec![50, 51, 52], 1), submit(&mut s, [&shared[..], &[7]].concat(), 1)];
            s.step();
            assert!(matches!(rx[first].try_recv(), Ok(Event::Delta { .. })), "{policy:?} runs request {first} first");
            assert!(rx[1 - first].try_recv().is_err());
        }
    }
}
