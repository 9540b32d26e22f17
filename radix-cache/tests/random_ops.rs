//! Seeded random operations against a naive reference, checking every invariant after every operation.
//!
//! The harness plays a scheduler: requests arrive (match, lock, allocate slots for the rest), finish or are
//! cancelled part-way (insert what they computed, free duplicates and partial pages, unlock), and memory pressure
//! evicts. The reference is a map from every cached prefix `(namespace, tokens[..=i])` to the slot of token `i`.

use std::collections::{HashMap, HashSet};

use radix_cache::{Lfu, Namespace, NodeHandle, RadixCache, SlotAllocator, SlotId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const OPS: usize = 100_000;
const CAPACITY: usize = 384;

/// Token `i` of a key is cached under the whole pages up to and including its own (tokens of different pages
/// never share a slot, even when they agree up to `i`), plus its offset in the page.
struct Reference {
    page: usize,
    map: HashMap<(u64, Vec<u32>, usize), SlotId>,
}

impl Reference {
    fn matched(&self, ns: Namespace, key: &[u32]) -> Vec<SlotId> {
        let mut out = Vec::new();
        for i in 0..key.len() / self.page * self.page {
            match self.map.get(&self.at(ns, key, i)) {
                Some(&s) => out.push(s),
                None => break,
            }
        }
        out.truncate(out.len() / self.page * self.page);
        out
    }
    fn at(&self, ns: Namespace, key: &[u32], i: usize) -> (u64, Vec<u32>, usize) {
        let page_end = (i / self.page + 1) * self.page;
        (ns.0, key[..page_end].to_vec(), i % self.page)
    }
    fn insert(&mut self, ns: Namespace, key: &[u32], slots: &[SlotId], upto: usize) {
        for (i, &slot) in slots.iter().enumerate().take(upto) {
            let k = self.at(ns, key, i);
            self.map.entry(k).or_insert(slot);
        }
    }
    fn evicted(&mut self, freed: &HashSet<SlotId>) {
        self.map.retain(|_, s| !freed.contains(s));
    }
}

struct Request {
    ns: Namespace,
    key: Vec<u32>,
    /// Slots for every token: `[..matched]` are the tree's (locked), the rest this request's own.
    slots: Vec<SlotId>,
    matched: usize,
    node: NodeHandle,
}

fn random_key(rng: &mut StdRng, bases: &[Vec<u32>]) -> Vec<u32> {
    // Keys grow from a few shared bases so prefixes are shared and diverge at every depth.
    let base = &bases[rng.random_range(0..bases.len())];
    let keep = rng.random_range(0..=base.len());
    let mut k = base[..keep].to_vec();
    let extra = rng.random_range(0..12);
    k.extend((0..extra).map(|_| rng.random_range(0..4u32)));
    k
}

fn run(seed: u64, page: usize, lfu: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cache = if lfu { RadixCache::with_policy(page, Box::new(Lfu)) } else { RadixCache::new(page) };
    let mut alloc = SlotAllocator::new(CAPACITY);
    let mut reference = Reference { page, map: HashMap::new() };
    let mut running: Vec<Request> = Vec::new();
    let bases: Vec<Vec<u32>> = (0..6).map(|_| (0..20).map(|_| rng.random_range(0..4u32)).collect()).collect();
    let mut freed_buf = Vec::new();
    let mut counts = [0usize; 6];
    for op in 0..OPS {
        let choice = rng.random_range(0..100);
        let ns = Namespace(rng.random_range(0..2));
        if choice < 30 && running.len() < 8 {
            counts[0] += 1;
            // A request arrives.
            let key = random_key(&mut rng, &bases);
            if key.is_empty() {
                continue;
            }
            let m = cache.match_prefix(ns, &key);
            assert_eq!(m.slots, reference.matched(ns, &key), "op {op}: match of {key:?}");
            cache.lock(m.node).unwrap();
            let need = key.len() - m.len;
            let own = match alloc.allocate(need) {
                Some(s) => s,
                None => {
                    freed_buf.clear();
                    cache.evict(need - alloc.free_count(), &mut freed_buf);
                    let freed: HashSet<SlotId> = freed_buf.iter().copied().collect();
                    assert!(!m.slots.iter().any(|s| freed.contains(s)), "op {op}: evicted a locked slot");
                    alloc.free(&freed_buf).unwrap();
                    reference.evicted(&freed);
                    match alloc.allocate(need) {
                        Some(s) => s,
                        None => {
                            cache.unlock(m.node).unwrap();
                            continue;
                        }
                    }
                }
            };
            let mut slots = m.slots.clone();
            slots.extend(own);
            running.push(Request { ns, key, slots, matched: m.len, node: m.node });
        } else if choice < 55 && !running.is_empty() {
            counts[1] += 1;
            // A request finishes (or is cancelled after computing part of its key).
            let r = running.swap_remove(rng.random_range(0..running.len()));
            let computed = if rng.random_bool(0.3) { rng.random_range(r.matched..=r.key.len()) } else { r.key.len() };
            let out = cache.insert(r.ns, &r.key[..computed], &r.slots[..computed]).unwrap();
            // Slots the tree already had under other ids are duplicates; those past whole pages stay ours.
            let mut to_free: Vec<SlotId> = r.slots[r.matched..out.cached_len.max(r.matched)].to_vec();
            to_free.extend_from_slice(&r.slots[out.inserted_len.max(r.matched)..]);
            reference.insert(r.ns, &r.key, &r.slots, out.inserted_len);
            alloc.free(&to_free).unwrap();
            cache.unlock(r.node).unwrap();
        } else if choice < 70 {
            counts[2] += 1;
            let n = rng.random_range(1..48);
            freed_buf.clear();
            let before = cache.evictable_size();
            let got = cache.evict(n, &mut freed_buf);
            assert_eq!(got, freed_buf.len());
            assert!(got >= n.min(before), "op {op}: evicted {got} of {n} asked with {before} evictable");
            let freed: HashSet<SlotId> = freed_buf.iter().copied().collect();
            for r in &running {
                assert!(!r.slots[..r.matched].iter().any(|s| freed.contains(s)), "op {op}: evicted a locked slot");
            }
            alloc.free(&freed_buf).unwrap();
            reference.evicted(&freed);
        } else if choice < 85 {
            counts[3] += 1;
            let key = random_key(&mut rng, &bases);
            assert_eq!(cache.peek(ns, &key), reference.matched(ns, &key).len(), "op {op}: peek {key:?}");
        } else if choice < 95 {
            counts[4] += 1;
            let key = random_key(&mut rng, &bases);
            let m = cache.match_prefix(ns, &key);
            assert_eq!(m.slots, reference.matched(ns, &key), "op {op}: match {key:?}");
        } else {
            counts[5] += 1;
            // A second user of a running request's prefix (n > 1 sampling): lock and unlock a path that is
            // already locked; sizes and counts must come back exactly (checked below).
            if let Some(r) = running.first() {
                let m = cache.match_prefix(r.ns, &r.key[..r.matched]);
                cache.lock(m.node).unwrap();
                cache.unlock(m.node).unwrap();
            }
        }
        cache.validate().unwrap_or_else(|e| panic!("seed {seed} page {page} op {op}: {e}"));
        assert_eq!(cache.total_size(), reference.map.len(), "op {op}: tree size vs reference");
        // Every allocated slot is held exactly once: by the tree or by one running request.
        let mut held = Vec::new();
        cache.collect_slots(&mut held);
        for r in &running {
            held.extend_from_slice(&r.slots[r.matched..]);
        }
        let set: HashSet<SlotId> = held.iter().copied().collect();
        assert_eq!(set.len(), held.len(), "op {op}: a slot is held twice");
        assert_eq!(held.len(), alloc.used_count(), "op {op}: leaked slots");
        assert!(held.iter().all(|s| alloc.is_allocated(*s)));
    }
    assert!(counts.iter().all(|&c| c > 1000), "every kind of operation ran: {counts:?}");
    // Drain: finish everything, evict everything, nothing is left.
    for r in running.drain(..) {
        let out = cache.insert(r.ns, &r.key, &r.slots).unwrap();
        let mut to_free: Vec<SlotId> = r.slots[r.matched..out.cached_len.max(r.matched)].to_vec();
        to_free.extend_from_slice(&r.slots[out.inserted_len.max(r.matched)..]);
        alloc.free(&to_free).unwrap();
        cache.unlock(r.node).unwrap();
    }
    assert_eq!(cache.protected_size(), 0);
    freed_buf.clear();
    cache.evict(usize::MAX, &mut freed_buf);
    alloc.free(&freed_buf).unwrap();
    assert_eq!(cache.total_size(), 0);
    assert_eq!(alloc.used_count(), 0, "no slot leaked");
    cache.validate().unwrap();
}

#[test]
fn random_ops_page_1() {
    for seed in [1, 2, 3] {
        run(seed, 1, false);
    }
}

#[test]
fn random_ops_page_2() {
    for seed in [4, 5] {
        run(seed, 2, false);
    }
}

#[test]
fn random_ops_page_4() {
    for seed in [6, 7] {
        run(seed, 4, false);
    }
}

#[test]
fn random_ops_lfu_policy() {
    run(8, 1, true);
    run(9, 4, true);
}
