//! `cargo bench -p radix-cache`: match, insert, peek and eviction costs on the shared-prefix workload
//! (256 groups x 16 requests, a 2,048-token shared prefix + 128 unique tokens each).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use radix_cache::{Namespace, RadixCache, SlotAllocator};

const GROUPS: u32 = 256;
const PER_GROUP: u32 = 16;
const PREFIX: u32 = 2048;
const UNIQUE: u32 = 128;
const NS: Namespace = Namespace(0);

fn request(g: u32, r: u32) -> Vec<u32> {
    let mut k: Vec<u32> = (0..PREFIX).map(|i| g * 1_000_000 + i).collect();
    k.extend((0..UNIQUE).map(|i| 500_000_000 + (g * PER_GROUP + r) * UNIQUE + i));
    k
}

/// Runs the whole workload as a scheduler would: match, then insert the full key (freeing duplicates).
fn run_workload(cache: &mut RadixCache, alloc: &mut SlotAllocator, keys: &[Vec<u32>]) {
    for k in keys {
        let m = cache.match_prefix(NS, k);
        let own = alloc.allocate(k.len() - m.len).expect("pool sized for the workload");
        let mut slots = m.slots;
        slots.extend(own);
        let out = cache.insert(NS, k, &slots).unwrap();
        alloc.free(&slots[m.len..out.cached_len.max(m.len)]).unwrap();
    }
}

fn benches(c: &mut Criterion) {
    let keys: Vec<Vec<u32>> = (0..GROUPS).flat_map(|g| (0..PER_GROUP).map(move |r| request(g, r))).collect();
    let pool = (GROUPS * (PREFIX + PER_GROUP * UNIQUE)) as usize;

    let mut g = c.benchmark_group("shared_prefix_workload");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("match_and_insert_4096_requests", |b| {
        b.iter_batched(
            || (RadixCache::new(1), SlotAllocator::new(pool)),
            |(mut cache, mut alloc)| run_workload(&mut cache, &mut alloc, &keys),
            BatchSize::LargeInput,
        )
    });
    g.finish();

    // A warm cache holding the whole workload.
    let mut cache = RadixCache::new(1);
    let mut alloc = SlotAllocator::new(pool + 8192);
    run_workload(&mut cache, &mut alloc, &keys);
    let long: Vec<u32> = (0..4096).map(|i| 900_000_000 + i).collect();
    let s = alloc.allocate(long.len()).unwrap();
    cache.insert(NS, &long, &s).unwrap();

    let mut g = c.benchmark_group("lookups");
    g.throughput(Throughput::Elements(4096));
    g.bench_function("match_cached_4096_prefix", |b| b.iter(|| black_box(cache.match_prefix(NS, black_box(&long)))));
    g.bench_function("peek_cached_4096_prefix", |b| b.iter(|| black_box(cache.peek(NS, black_box(&long)))));
    g.throughput(Throughput::Elements((PREFIX + UNIQUE) as u64));
    g.bench_function("match_request_2176_tokens", |b| {
        b.iter(|| black_box(cache.match_prefix(NS, black_box(&keys[7]))))
    });
    g.finish();

    let mut g = c.benchmark_group("insert");
    g.throughput(Throughput::Elements(UNIQUE as u64));
    g.bench_function("insert_128_new_under_2048_prefix", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(2000);
                let mut cache = RadixCache::new(1);
                let mut alloc = SlotAllocator::new((PREFIX + UNIQUE * n as u32) as usize);
                let prefix: Vec<u32> = (0..PREFIX).collect();
                let s = alloc.allocate(PREFIX as usize).unwrap();
                cache.insert(NS, &prefix, &s).unwrap();
                let inputs: Vec<(Vec<u32>, Vec<radix_cache::SlotId>)> = (0..n as u32)
                    .map(|j| {
                        let mut k = prefix.clone();
                        k.extend((0..UNIQUE).map(|i| 1_000_000 + j * UNIQUE + i));
                        let mut sl = s.clone();
                        sl.extend(alloc.allocate(UNIQUE as usize).unwrap());
                        (k, sl)
                    })
                    .collect();
                let t = Instant::now();
                for (k, sl) in &inputs {
                    black_box(cache.insert(NS, k, sl).unwrap());
                }
                total += t.elapsed();
                done += n;
            }
            total
        })
    });
    g.finish();

    let mut g = c.benchmark_group("evict");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(pool as u64));
    g.bench_function("evict_full_pool_in_2048_token_steps", |b| {
        b.iter_batched(
            || {
                let mut cache = RadixCache::new(1);
                let mut alloc = SlotAllocator::new(pool);
                run_workload(&mut cache, &mut alloc, &keys);
                (cache, alloc)
            },
            |(mut cache, mut alloc)| {
                let mut out = Vec::with_capacity(4096);
                while cache.evictable_size() > 0 {
                    out.clear();
                    cache.evict(2048, &mut out);
                    alloc.free(&out).unwrap();
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(radix, benches);
criterion_main!(radix);
