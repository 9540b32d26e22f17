//! The continuous-batching engine: requests in, token streams out, over the radix cache, the grammar engine and
//! the model.
//!
//! ```text
//! frontend ──submit(Request)──▶ EngineHandle ──channel──▶ scheduler thread ──forward──▶ Executor (model + KV)
//!          ◀──Event stream───── RequestStream ◀─────────── sampling, stops, detokenization
//! ```
//!
//! See [`scheduler`] for what one step does and how KV slots move between requests and the radix cache.

pub mod embed;
mod engine;
pub mod executor;
pub mod kv_events;
pub mod metrics;
mod params;
pub mod sampler;
pub mod scheduler;
pub mod text;

pub use embed::{start_embedder, EmbedConfig, EmbedHandle, EmbedSubmitError, EmbedTicket, Embedder, ValidEmbed};
pub use engine::{
    start, EngineHandle, EngineStats, Event, FinishReason, Finished, Output, RequestStream, SubmitError, TokenInfo,
    ValidRequest,
};
#[cfg(feature = "model")]
pub use executor::ModelExecutor;
pub use executor::{Executor, SeqStep};
pub use metrics::Metrics;
pub use params::{ErrorCode, MaxTokens, Request, SamplingParams, StopParams, ValidationError, MAX_TOP_LOGPROBS};
pub use scheduler::{Policy, Scheduler, SchedulerConfig, SchedulerStats};
