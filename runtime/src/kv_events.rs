//! KV-cache events: what the radix cache stores and evicts, as blocks of `page_size` tokens, for routers that
//! keep an index of which replica holds which prefix (llm-d's KV-cache indexer; vLLM and SGLang publish the same).
//!
//! The scheduler collects a step's events and hands them over with `try_send` on a bounded channel: a full channel
//! (a slow or absent consumer) drops the batch and counts it (`radixserve_kv_events_dropped_total`), it never waits.
//! The frontend's publisher thread sends the batches on (ZMQ, msgpack).
//!
//! A block is a whole page of a cached prefix. Its hash chains its parent's: `hash = FNV-1a-64(parent hash as 8
//! little-endian bytes, then each token id as 4 little-endian bytes)`, the first block's parent hash being 0 and
//! reported as none. Stored events carry the token ids, so an index may rehash them its own way.

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

/// One event, in the indexer's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Consecutive blocks of one prefix, now cached: their hashes, the hash of the block before the first (none
    /// for a prefix's first block), and their tokens (`hashes.len() * page_size` of them).
    BlockStored { hashes: Vec<u64>, parent: Option<u64>, tokens: Vec<u32>, block_size: usize },
    /// Blocks no longer cached.
    BlockRemoved { hashes: Vec<u64> },
    /// Everything is gone (`/flush_cache`).
    AllBlocksCleared,
}

/// A step's events, in order, with the time they were made (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct KvEventBatch {
    pub ts: f64,
    pub events: Vec<KvEvent>,
}

/// The scheduler's side: page size, the channel to the publisher, and what was dropped.
#[derive(Clone)]
pub struct KvEventSink {
    pub page_size: usize,
    /// Bounded; `try_send` never waits (and needs no async runtime on the scheduler's thread).
    pub tx: Sender<KvEventBatch>,
}

impl std::fmt::Debug for KvEventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvEventSink").field("page_size", &self.page_size).finish()
    }
}

impl KvEventSink {
    /// Hands a batch over without waiting; false if it was dropped (channel full or publisher gone).
    pub fn offer(&self, batch: KvEventBatch) -> bool {
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => false,
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The hash of a block given its parent's (0 for none) and its tokens.
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = FNV_OFFSET;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    };
    parent.to_le_bytes().into_iter().for_each(&mut eat);
    for t in tokens {
        t.to_le_bytes().into_iter().for_each(&mut eat);
    }
    h
}

/// The hashes of the blocks of `path` (whole pages from its start), in order.
pub fn path_hashes(path: &[u32], page: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(path.len() / page);
    let mut parent = 0;
    for block in path.chunks_exact(page) {
        parent = block_hash(parent, block);
        out.push(parent);
    }
    out
}

/// The event for blocks of `path` whose pages end in `(from, to]` tokens (newly stored ones); none if none.
pub fn stored(path: &[u32], from: usize, to: usize, page: usize) -> Option<KvEvent> {
    let (first, end) = (from / page, to.min(path.len()) / page);
    if first >= end {
        return None;
    }
    let hashes = path_hashes(&path[..end * page], page);
    Some(KvEvent::BlockStored {
        parent: first.checked_sub(1).map(|i| hashes[i]),
        hashes: hashes[first..].to_vec(),
        tokens: path[first * page..end * page].to_vec(),
        block_size: page,
    })
}

/// The hashes of the whole blocks of `path` that end past `start`: those a tail beginning at `start` completes (a
/// tree node's own blocks), or loses when it is evicted (a block ending at or before `start` stays).
pub fn blocks_ending_after(path: &[u32], start: usize, page: usize) -> Vec<u64> {
    let (first, end) = (start / page, path.len() / page);
    if first >= end {
        return Vec::new();
    }
    path_hashes(&path[..end * page], page).split_off(first)
}

/// The event for the blocks of `path` that end past `start` (an evicted tail beginning at `start`); none if none.
pub fn removed(path: &[u32], start: usize, page: usize) -> Option<KvEvent> {
    let hashes = blocks_ending_after(path, start, page);
    (!hashes.is_empty()).then_some(KvEvent::BlockRemoved { hashes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_chain_and_events_cover_whole_pages_only() {
        let path: Vec<u32> = (0..10).collect();
        let h = path_hashes(&path, 4);
        assert_eq!(h.len(), 2);
        assert_eq!(h[1], block_hash(h[0], &[4, 5, 6, 7]));
        // Stored: tokens 3..10 new -> the block ending at 8 (the one ending at 4 was already whole).
        match stored(&path, 4, 10, 4).unwrap() {
            KvEvent::BlockStored { hashes, parent, tokens, block_size } => {
                assert_eq!((hashes, parent, tokens, block_size), (vec![h[1]], Some(h[0]), vec![4, 5, 6, 7], 4));
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(stored(&path, 8, 10, 4), None, "a partial page is not a block");
        // Removed: a tail from 6 takes the block 4..8 with it; one from 8 takes nothing whole.
        assert_eq!(removed(&path, 6, 4), Some(KvEvent::BlockRemoved { hashes: vec![h[1]] }));
        assert_eq!(removed(&path, 8, 4), None);
        assert_eq!(removed(&path, 0, 4), Some(KvEvent::BlockRemoved { hashes: h.clone() }));
    }
}
