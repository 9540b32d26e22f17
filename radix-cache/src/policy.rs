//! Which unlocked leaf to evict first.

/// What a policy may look at for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStats {
    /// Logical time of the last match or insert that touched the node (larger is more recent).
    pub last_access: u64,
    /// How many matches have ended at or passed through the node.
    pub hits: u64,
}

/// Orders evictable leaves: the smallest key is evicted first.
pub trait EvictionPolicy: Send + Sync + std::fmt::Debug {
    fn key(&self, stats: &NodeStats) -> (u64, u64);
}

/// Least recently used first (SGLang's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Lru;

impl EvictionPolicy for Lru {
    fn key(&self, s: &NodeStats) -> (u64, u64) {
        (s.last_access, 0)
    }
}

/// Least frequently used first, least recently used among equals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lfu;

impl EvictionPolicy for Lfu {
    fn key(&self, s: &NodeStats) -> (u64, u64) {
        (s.hits, s.last_access)
    }
}
