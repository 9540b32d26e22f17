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
