//! The KV-cache event publisher: `--kv-events-config` (vLLM's `KVEventsConfig` JSON) turns it on; the scheduler's
//! event batches (see `runtime::kv_events`) go out on a ZMQ PUB socket as three-frame messages
//! `[topic, sequence number (8 bytes, big-endian), payload]`, the payload msgpack in the layout vLLM writes and
//! llm-d's KV-cache indexer decodes (`pkg/kvcache/kvevents/events.go` and `pool.go` of llm-d-kv-cache-manager):
//! an event batch is the array `[ts, [event, ...]]`; each event an array led by its tag:
//! `["BlockStored", block_hashes, parent_block_hash | nil, token_ids, block_size, lora_id (nil)]`,
//! `["BlockRemoved", block_hashes]`, `["AllBlocksCleared"]`. The topic defaults to `kv@<pod>@<model>` (the indexer's
//! `kv@<pod-id>@<model-name>`, pod from `POD_NAME` or `HOSTNAME`).
//!
//! ZMQ is the pure-Rust `zeromq` crate. The publisher runs on its own thread; PUB drops messages for subscribers
//! that are not there, and the scheduler hands batches over with a non-blocking send on a bounded channel
//! (`buffer_steps` batches): nothing here can hold up decoding; what the channel refuses is counted in
//! `radixserve_kv_events_dropped_total`.

use serde::Deserialize;
use zeromq::{Socket, SocketSend};

use runtime::kv_events::{KvEvent, KvEventBatch, KvEventSink};

/// vLLM's `--kv-events-config` fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEventsConfig {
    #[serde(default)]
    pub enable_kv_cache_events: bool,
    /// `zmq` or `null` (no publisher).
    #[serde(default = "null_publisher")]
    pub publisher: String,
    /// Bound when it names a wildcard host (`tcp://*:5557`), else connected to (an indexer that binds).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Empty: `kv@<pod>@<model>`.
    #[serde(default)]
    pub topic: String,
    /// Batches the channel to the publisher holds before dropping.
    #[serde(default = "default_buffer")]
    pub buffer_steps: usize,
    /// Accepted for vLLM compatibility (the PUB socket's own queue is the `zeromq` crate's).
    #[serde(default)]
    pub hwm: Option<usize>,
    #[serde(default)]
    pub max_queue_size: Option<usize>,
    /// Replaying missed batches is not implemented; setting it is an error.
    #[serde(default)]
    pub replay_endpoint: Option<String>,
}

fn null_publisher() -> String {
    "null".into()
}
fn default_endpoint() -> String {
    "tcp://*:5557".into()
}
fn default_buffer() -> usize {
    10_000
}

impl std::str::FromStr for KvEventsConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let c: Self = serde_json::from_str(s).map_err(|e| format!("--kv-events-config: {e}"))?;
        if !matches!(c.publisher.as_str(), "zmq" | "null") {
            return Err(format!("--kv-events-config: publisher {:?} (zmq or null)", c.publisher));
        }
        if c.replay_endpoint.is_some() {
            return Err("--kv-events-config: replay_endpoint is not supported".into());
        }
        Ok(c)
    }
}

impl KvEventsConfig {
    pub fn enabled(&self) -> bool {
        self.enable_kv_cache_events && self.publisher == "zmq"
    }
}

/// Starts the publisher thread for `model_id`'s events; returns the scheduler's end.
pub fn start(cfg: &KvEventsConfig, model_id: &str, page_size: usize) -> anyhow::Result<KvEventSink> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<KvEventBatch>(cfg.buffer_steps.max(1));
    let topic = if cfg.topic.is_empty() {
        let pod =
            std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "radixserve".into());
        format!("kv@{pod}@{model_id}")
    } else {
        cfg.topic.clone()
    };
    let endpoint = cfg.endpoint.clone();
    let bind = endpoint.contains('*') || endpoint.contains("0.0.0.0") || endpoint.contains("[::]");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut socket = zeromq::PubSocket::new();
    // A bind fails the start at once (a taken port); a connect waits in the background for its peer (an indexer
    // that is not up yet), events meanwhile filling the channel and then being dropped and counted.
    if bind {
        rt.block_on(socket.bind(&endpoint.replace('*', "0.0.0.0")))
            .map_err(|e| anyhow::anyhow!("KV events: binding {endpoint}: {e}"))?;
    }
    tracing::info!("KV-cache events: publishing on {endpoint} (topic {topic:?}, blocks of {page_size} tokens)");
    std::thread::Builder::new().name("radixserve-kv-events".into()).spawn(move || {
        rt.block_on(async move {
            if !bind {
                if let Err(e) = socket.connect(&endpoint).await {
                    tracing::error!("KV events: connecting to {endpoint}: {e}; no events will be published");
                    return;
                }
            }
            let mut seq: u64 = 0;
            while let Some(batch) = rx.recv().await {
                let mut msg = zeromq::ZmqMessage::from(topic.clone().into_bytes());
                msg.push_back(seq.to_be_bytes().to_vec().into());
                msg.push_back(encode(&batch).into());
                seq += 1;
                if let Err(e) = socket.send(msg).await {
                    tracing::warn!("KV events: sending batch {seq}: {e}");
                }
            }
        })
    })?;
    Ok(KvEventSink { page_size, tx })
}

/// The msgpack payload of a batch (see the module docs).
pub fn encode(batch: &KvEventBatch) -> Vec<u8> {
    use rmp::encode::{write_array_len, write_f64, write_nil, write_str, write_uint};
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let w = &mut out;
    let _ = write_array_len(w, 2);
    let _ = write_f64(w, batch.ts);
    let _ = write_array_len(w, batch.events.len() as u32);
    for e in &batch.events {
        match e {
            KvEvent::BlockStored { hashes, parent, tokens, block_size } => {
                let _ = write_array_len(w, 6);
                let _ = write_str(w, "BlockStored");
                let _ = write_array_len(w, hashes.len() as u32);
                hashes.iter().for_each(|&h| drop(write_uint(w, h)));
                match parent {
                    Some(p) => drop(write_uint(w, *p)),
                    None => drop(write_nil(w)),
                }
                let _ = write_array_len(w, tokens.len() as u32);
                tokens.iter().for_each(|&t| drop(write_uint(w, t as u64)));
                let _ = write_uint(w, *block_size as u64);
                let _ = write_nil(w);
            }
            KvEvent::BlockRemoved { hashes } => {
                let _ = write_array_len(w, 2);
                let _ = write_str(w, "BlockRemoved");
                let _ = write_array_len(w, hashes.len() as u32);
                hashes.iter().for_each(|&h| drop(write_uint(w, h)));
            }
            KvEvent::AllBlocksCleared => {
                let _ = write_array_len(w, 1);
                let _ = write_str(w, "AllBlocksCleared");
            }
        }
    }
    out
}
