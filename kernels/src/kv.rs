//! The paged KV pool: per layer, one K and one V tensor indexed by slot id.
//!
//! Shape per layer: `[num_slots, num_kv_heads, head_dim]`. A slot holds one token's keys and values for every
//! layer; which slots belong to which sequence is the caller's business (the runtime's slot allocator and radix
//! cache). The forward pass writes a sequence's new tokens into the slots it is given and reads its context back
//! by gathering slots, so sequences need not be contiguous and prefixes can be shared between them.

use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::{Error, Result};

pub struct KvPool {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    num_slots: usize,
}

impl std::fmt::Debug for KvPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPool").field("layers", &self.k.len()).field("num_slots", &self.num_slots).finish()
    }
}

impl KvPool {
    /// Bytes one slot takes over all layers.
    pub fn bytes_per_slot(cfg: &ModelConfig, kind: Kind) -> usize {
        2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * kind.elt_size_in_bytes()
    }

    /// The number of slots that fit in `budget_bytes`.
    pub fn slots_for_budget(cfg: &ModelConfig, kind: Kind, budget_bytes: usize) -> usize {
        budget_bytes / Self::bytes_per_slot(cfg, kind).max(1)
    }

    /// Allocates a pool of `num_slots` slots (zeroed).
    pub fn new(cfg: &ModelConfig, num_slots: usize, kind: Kind, device: Device) -> Result<Self> {
        if num_slots == 0 {
            return Err(Error::invalid("a KV pool needs at least one slot"));
        }
        let shape = [num_slots as i64, cfg.num_kv_heads as i64, cfg.head_dim as i64];
        let mut k = Vec::with_capacity(cfg.num_layers);
        let mut v = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            k.push(Tensor::f_zeros(shape, (kind, device))?);
            v.push(Tensor::f_zeros(shape, (kind, device))?);
        }
        Ok(Self { k, v, num_slots })
    }

    pub fn num_slots(&self) -> usize {
        self.num_slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_sized_from_a_memory_budget() {
        // SmolLM2-135M's shape: 30 layers x 3 KV heads x 64 dims, K and V, f32 = 46,080 bytes per slot.
        let cfg = ModelConfig::from_hf_json(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":576,"intermediate_size":1536,
            "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152}"#,
        )
        .unwrap();
        assert_eq!(KvPool::bytes_per_slot(&cfg, Kind::Float), 46_080);
        assert_eq!(KvPool::bytes_per_slot(&cfg, Kind::BFloat16), 23_040);
        let slots = KvPool::slots_for_budget(&cfg, Kind::Float, 64 << 20);
        assert_eq!(slots, (64 << 20) / 46_080);
        let pool = KvPool::new(&cfg, slots, Kind::Float, Device::Cpu).unwrap();
        let bytes: usize = pool.k.iter().chain(&pool.v).map(|t| t.numel() * 4).sum();
        assert!(bytes <= 64 << 20 && bytes + 46_080 > 64 << 20, "{bytes} bytes for a 64 MiB budget");
        assert!(KvPool::new(&cfg, 0, Kind::Float, Device::Cpu).unwrap_err().is_invalid_input());
    }
}
