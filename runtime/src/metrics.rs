//! Prometheus metrics of the engine (names carry their units, as Prometheus recommends).

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Every metric the engine updates; rendered by [`Metrics::render`] for `GET /metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_latency: Histogram,
    pub queue_time: Histogram,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub cache_hit_tokens: IntCounter,
    pub cache_lookup_tokens: IntCounter,
    pub cache_hit_rate: prometheus::Gauge,
    pub jump_forward_tokens: IntCounter,
    pub running: IntGauge,
    pub queued: IntGauge,
    pub kv_slots_used: IntGauge,
    pub kv_slots_total: IntGauge,
    /// Slots not free for new work: held by running requests or locked by them in the cache (evictable cached
    /// slots count as free).
    pub kv_slots_in_use: IntGauge,
    pub cached_tokens: IntGauge,
    pub batch_size: Histogram,
    pub step_tokens: Histogram,
    pub retractions: IntCounter,
    /// KV-cache events handed to the publisher, and dropped because it was behind.
    pub kv_events: IntCounter,
    pub kv_events_dropped: IntCounter,
    pub requests: IntCounterVec,
}

fn exp_buckets(start: f64, factor: f64, n: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, n).expect("valid bucket parameters")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("radixserve".into()), None).expect("valid prefix");
        let latency = exp_buckets(0.001, 2.0, 18);
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric name");
                m
            }};
        }
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        };
        Self {
            time_to_first_token: reg!(hist(
                "time_to_first_token_seconds",
                "Time from arrival to the first generated token.",
                latency.clone()
            )),
            inter_token_latency: reg!(hist(
                "inter_token_latency_seconds",
                "Time between consecutive token deliveries of a request.",
                exp_buckets(0.0005, 2.0, 16)
            )),
            e2e_latency: reg!(hist("e2e_request_latency_seconds", "Time from arrival to finish.", latency.clone())),
            queue_time: reg!(hist("queue_time_seconds", "Time from arrival to first scheduling.", latency)),
            prompt_tokens: reg!(IntCounter::new("prompt_tokens_total", "Prompt tokens of admitted requests.")),
            generation_tokens: reg!(IntCounter::new("generation_tokens_total", "Generated tokens.")),
            cache_hit_tokens: reg!(IntCounter::new(
                "cache_hit_tokens_total",
                "Prompt tokens found in the radix cache."
            )),
            cache_lookup_tokens: reg!(IntCounter::new(
                "cache_lookup_tokens_total",
                "Prompt tokens looked up in the radix cache (hit rate = hit / lookup)."
            )),
            cache_hit_rate: reg!(prometheus::Gauge::new(
                "cache_hit_rate",
                "Share of admitted prompt tokens found in the radix cache, since start."
            )),
            jump_forward_tokens: reg!(IntCounter::new(
                "jump_forward_tokens_total",
                "Tokens appended by grammar jump-forward without sampling."
            )),
            running: reg!(IntGauge::new("num_running_requests", "Requests in the running batch.")),
            queued: reg!(IntGauge::new("num_queued_requests", "Requests waiting to be scheduled.")),
            kv_slots_used: reg!(IntGauge::new("kv_slots_used", "KV-cache slots in use (running or cached).")),
            kv_slots_total: reg!(IntGauge::new("kv_slots_total", "KV-cache slots in the pool.")),
            kv_slots_in_use: reg!(IntGauge::new(
                "kv_slots_in_use",
                "KV-cache slots held by running requests (evictable cached slots are free)."
            )),
            cached_tokens: reg!(IntGauge::new("radix_cache_tokens", "Tokens held by the radix cache.")),
            batch_size: reg!(hist(
                "batch_size_requests",
                "Sequences per forward step.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
            )),
            step_tokens: reg!(hist("step_tokens", "Tokens per forward step.", exp_buckets(1.0, 2.0, 14))),
            retractions: reg!(IntCounter::new(
                "retractions_total",
                "Running requests pre-empted for KV memory and requeued."
            )),
            kv_events: reg!(IntCounter::new("kv_events_total", "KV-cache events handed to the publisher.")),
            kv_events_dropped: reg!(IntCounter::new(
                "kv_events_dropped_total",
                "KV-cache events dropped because the publisher was behind (it never holds up a step)."
            )),
            requests: reg!(IntCounterVec::new(
                Opts::new("requests_total", "Finished requests by finish reason."),
                &["finish_reason"]
            )),
            registry,
        }
    }

    /// Every metric, as Prometheus families (to be labelled and merged with other engines').
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}
