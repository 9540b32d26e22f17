//! Model weights and the transformer forward pass, on libtorch through `tch`.
//!
//! This is the only crate of radixserve that links libtorch. It reads models (GGUF files with our own reader
//! and dequantizers, or Hugging Face folders of safetensors), builds their tokenizer, and runs the Llama-family
//! forward pass over a paged KV pool: any mix of prefill, extend-after-cached-prefix and decode sequences in one
//! call, with logits only where asked.
//!
//! ```no_run
//! use kernels::{LoadOptions, LogitsFor, Model, SeqInput};
//!
//! let model = Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), LoadOptions::default(), &mut |_, _| {})?;
//! let ids: Vec<u32> = model.tokenizer.encode("The capital of France is", false).unwrap().get_ids().to_vec();
//! let mut kv = model.net.new_kv_pool(1024)?;
//! let slots: Vec<u32> = (0..ids.len() as u32).collect();
//! let out = model.net.forward(
//!     &mut kv,
//!     &[SeqInput { context_slots: &[], tokens: &ids, new_slots: &slots, logits: LogitsFor::Last }],
//! )?;
//! let next = out.tensor.argmax(-1, false).int64_value(&[0]);
//! # Ok::<(), kernels::Error>(())
//! ```
//!
//! Invariants: slots passed as `new_slots` are written before attention reads them; a slot may appear in one
//! batch as a write target at most once and never also as another sequence's context. Weights are f32 on the
//! CPU by default (see [`LoadOptions`]); the same code runs on CUDA in bf16/f16.

pub mod amx;
pub mod bert;
pub mod config;
mod cpu_attention;
pub mod cpu_gemm;
pub mod embed;
mod error;
pub mod ggml_ops;
pub mod gguf;
pub mod kv;
mod linear;
pub mod llama;
mod model;
pub mod qdot;
pub mod qmatmul;
pub mod quant;
pub mod sampling;
pub mod team;
pub mod tokenizer;
pub mod torch;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use embed::{EmbeddingModel, Pooling};
pub use error::{Error, Result};
pub use kv::KvPool;
pub use llama::{LlamaModel, Logits, LogitsFor, Progress, SeqInput};
pub use model::{resident_bytes, LoadOptions, Model, SamplingHints, WeightFormat};
pub use tch::{Device, Kind};
