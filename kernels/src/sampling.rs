//! Sampling math on logits tensors (the policy, which token rules apply, is the runtime's).

use tch::{Kind, Tensor};

/// Greedy choice per row of `[rows, vocab]` logits.
pub fn argmax(logits: &Tensor) -> Vec<u32> {
    let ids = logits.argmax(-1, false).to_kind(Kind::Int64).to_device(tch::Device::Cpu);
    Vec::<i64>::try_from(ids.flatten(0, -1)).unwrap_or_default().into_iter().map(|v| v as u32).collect()
}
