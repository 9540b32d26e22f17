//! `peek` must not touch the heap: the scheduler calls it for every waiting request on every step.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use radix_cache::{Namespace, RadixCache, SlotAllocator};

struct Counting;

thread_local! {
    /// Allocations made by this thread (tests in this binary run in parallel on their own threads).
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: the slot may be gone while a thread is being torn down.
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn peek_does_not_allocate() {
    for page in [1, 16] {
        let mut cache = RadixCache::new(page);
        let mut alloc = SlotAllocator::new(1 << 16);
        let prefix: Vec<u32> = (0..2048).collect();
        for g in 0..8u32 {
            let mut k = prefix.clone();
            k.extend((0..128).map(|i| 10_000 + g * 1000 + i));
            let s = alloc.allocate(k.len()).unwrap();
            cache.insert(Namespace(0), &k, &s).unwrap();
        }
        let mut query = prefix.clone();
        query.extend((0..128).map(|i| 10_000 + 3 * 1000 + i));
        let before = allocations();
        let mut total = 0;
        for _ in 0..100 {
            total += cache.peek(Namespace(0), &query);
            total += cache.peek(Namespace(7), &query);
        }
        let after = allocations();
        assert_eq!(total, 100 * query.len() / page * page);
        assert_eq!(after - before, 0, "peek allocated");
    }
}

#[test]
fn repeated_matches_keep_the_eviction_heap_bounded() {
    let mut cache = RadixCache::new(1);
    let mut alloc = SlotAllocator::new(64);
    let s = alloc.allocate(4).unwrap();
    cache.insert(Namespace(0), &[1, 2, 3, 4], &s).unwrap();
    for _ in 0..100_000 {
        cache.match_prefix(Namespace(0), &[1, 2, 3, 4]);
    }
    assert!(cache.heap_len() <= 2 * cache.node_count() + 1025, "heap grew to {}", cache.heap_len());
}
