//! What the scheduler runs a step on: the model and its KV pool, behind a trait so the scheduler's bookkeeping
//! can also be unit-tested against a scripted executor.

use kernels::{KvPool, LlamaModel, LogitsFor, SeqInput};

/// One forward step over a batch of sequences (see [`kernels::llama`] for the batch rules).
pub trait Executor: Send + 'static {
    /// KV slots in the pool (ids `0..num_slots`).
    fn num_slots(&self) -> usize;
    /// The model's context length.
    fn max_positions(&self) -> usize;
    /// Runs the batch; returns one host row of logits per sequence whose `logits` is [`LogitsFor::Last`], in
    /// batch order.
    fn forward(&mut self, batch: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, String>;
}

/// The real thing: a Llama-family model and its paged KV pool.
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

    fn forward(&mut self, batch: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, String> {
        debug_assert!(batch.iter().all(|s| s.logits != LogitsFor::All), "the scheduler asks for last rows only");
        let out = self.model.forward(&mut self.kv, batch).map_err(|e| e.to_string())?;
        let host = out.tensor.to_device(kernels::Device::Cpu).to_kind(kernels::Kind::Float);
        let flat = Vec::<f32>::try_from(host.flatten(0, -1)).map_err(|e| format!("reading logits: {e}"))?;
        let vocab = if out.rows.iter().any(|r| !r.is_empty()) { host.size()[1] as usize } else { 0 };
        Ok(out.rows.iter().filter(|r| !r.is_empty()).map(|r| flat[r.start * vocab..r.end * vocab].to_vec()).collect())
    }
}
