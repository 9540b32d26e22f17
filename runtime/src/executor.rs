//! What the scheduler runs a step on: the model and its KV pool, behind a trait over plain types (no tensors), so
//! the scheduler's bookkeeping is unit-tested against a scripted executor without libtorch
//! (`cargo test -p runtime --lib`), while [`ModelExecutor`] (feature `model`, on in the workspace through the
//! frontend) runs the real thing.

/// One sequence of a step: the K/V slots of its tokens so far, the new tokens, where their K/V goes.
#[derive(Debug, Clone, Copy)]
pub struct SeqStep<'a> {
    /// Slots holding the K/V of the tokens before `tokens`, in order.
    pub context_slots: &'a [u32],
    /// The new tokens; at least one.
    pub tokens: &'a [u32],
    /// Where each new token's K/V goes; as long as `tokens`, disjoint from every context in the batch.
    pub new_slots: &'a [u32],
    /// Whether the step returns the logits after the last new token (the sequence's prompt is then computed).
    pub wants_logits: bool,
    /// Whether the step returns the logits after *every* new token (prompt logprobs); overrides `wants_logits`.
    pub all_logits: bool,
}

/// One forward step over a batch of sequences.
pub trait Executor: Send + 'static {
    /// KV slots in the pool (ids `0..num_slots`).
    fn num_slots(&self) -> usize;
    /// The model's context length.
    fn max_positions(&self) -> usize;
    /// Runs the batch; returns host rows of logits in batch order: one per new token of a sequence with
    /// [`SeqStep::all_logits`], else one for a sequence that [`SeqStep::wants_logits`], else none.
    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>, String>;
}

#[cfg(feature = "model")]
pub use model::ModelExecutor;

#[cfg(feature = "model")]
mod model {
    use kernels::{KvPool, LlamaModel, LogitsFor, SeqInput};

    use super::{Executor, SeqStep};

    /// The real thing: a Llama-family model and its paged KV pool (see `kernels::llama` for the batch rules).
    pub struct ModelExecutor {
        model: LlamaModel,
        kv: KvPool,
    }

    impl ModelExecutor {
        pub fn new(model: LlamaModel, num_slots: usize) -> kernels::Result<Self> {
            let kv = model.new_kv_pool(num_slots)?;
            Ok(Self { model, kv })
        }
    }

    impl Executor for ModelExecutor {
        fn num_slots(&self) -> usize {
            self.kv.num_slots()
        }

        fn max_positions(&self) -> usize {
            self.model.max_positions()
        }

        fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>, String> {
            let inputs: Vec<SeqInput<'_>> = batch
                .iter()
                .map(|s| SeqInput {
                    context_slots: s.context_slots,
                    tokens: s.tokens,
                    new_slots: s.new_slots,
                    logits: if s.all_logits {
                        LogitsFor::All
                    } else if s.wants_logits {
                        LogitsFor::Last
                    } else {
                        LogitsFor::None
                    },
                })
                .collect();
            let out = self.model.forward(&mut self.kv, &inputs).map_err(|e| e.to_string())?;
            let host = out.tensor.to_device(kernels::Device::Cpu).to_kind(kernels::Kind::Float);
            let flat = Vec::<f32>::try_from(host.flatten(0, -1)).map_err(|e| format!("reading logits: {e}"))?;
            let vocab = if out.rows.iter().any(|r| !r.is_empty()) { host.size()[1] as usize } else { 0 };
            Ok(out.rows.iter().flat_map(|r| r.clone()).map(|i| flat[i * vocab..(i + 1) * vocab].to_vec()).collect())
        }
    }
}
