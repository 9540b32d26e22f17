//! A radix tree over token ids mapping prompt prefixes to KV-cache slots (SGLang's RadixAttention).
//!
//! Requests that share a prefix (a system prompt, few-shot examples, RAG context, earlier turns of a chat, the
//! `n` samples of one prompt) find it here and compute only what follows. The crate knows token ids and slot ids,
//! never a request, a tensor or a thread: the scheduler owns one [`RadixCache`] and one [`SlotAllocator`].
//!
//! ```
//! use radix_cache::{Namespace, RadixCache, SlotAllocator};
//!
//! let mut slots = SlotAllocator::new(1024);
//! let mut cache = RadixCache::new(1);
//! let ns = Namespace::default();
//!
//! // A first request computes its prompt, then hands its KV slots to the cache.
//! let prompt = [1, 2, 3, 4, 5];
//! let kv = slots.allocate(prompt.len()).unwrap();
//! let done = cache.insert(ns, &prompt, &kv).unwrap();
//! assert_eq!(done.cached_len, 0);
//!
//! // A second request sharing the first three tokens reuses their slots and locks them while it runs.
//! let m = cache.match_prefix(ns, &[1, 2, 3, 9]);
//! assert_eq!((m.len, &m.slots[..]), (3, &kv[..3]));
//! cache.lock(m.node).unwrap();
//! assert_eq!(cache.protected_size(), 3);
//! cache.unlock(m.node).unwrap();
//!
//! // Under memory pressure, unlocked leaves go first, least recently used first.
//! let mut freed = Vec::new();
//! cache.evict(1, &mut freed);
//! slots.free(&freed).unwrap();
//! cache.validate().unwrap();
//! ```
//!
//! Invariants (checked by [`RadixCache::validate`] after every operation in the randomized tests): the tree's
//! tokens are `evictable + protected`; every slot is held once; a locked node's tokens are never evicted; every
//! node is reachable from its namespace's root; keys and slots are whole pages. The protocols (lock refs, the life
//! of a slot, eviction) are written down in the [`tree`] module.

mod alloc;
mod ids;
pub mod policy;
pub mod tree;

pub use alloc::{SlotAllocator, SlotError};
pub use ids::{Namespace, NodeHandle, SlotId};
pub use policy::{EvictionPolicy, Lfu, Lru, NodeStats};
pub use tree::{CacheError, CacheStats, InsertOutcome, PrefixMatch, RadixCache};
