//! Side-by-side speed of the AMX bf16x3 products ([`kernels::amx`]) and libtorch's f32 GEMM (MKL) on
//! all-MiniLM-L6-v2's shapes, 128 and 4096 rows (batches of 1 and 32 passages of 128 tokens), with both rooflines
//! measured in the same run on every core: AVX-512 FMA chains (f32) and `tdpbf16ps` chains (tiles; a bf16x3 product
//! is three of them): `cargo run --release -p kernels --example amx_speed`.

use std::time::Instant;

use kernels::amx::SplitWeights;
use tch::{Device, Kind, Tensor};

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut n = 0;
    while n < 3 || t.elapsed().as_secs_f64() < 1.0 {
        f();
        n += 1;
    }
    t.elapsed().as_secs_f64() / n as f64
}

fn main() {
    // The server's allocator thresholds and libtorch spin (re-executes once).
    kernels::torch::init_process();
    if !kernels::amx::available() {
        println!("AMX tiles unavailable on this machine (or turned off): nothing to measure");
        return;
    }
    tch::set_num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()) as i32);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all = |f: fn() -> f64| {
        std::thread::scope(|s| {
            (0..cores).map(|_| s.spawn(f)).collect::<Vec<_>>().into_iter().map(|h| h.join().unwrap()).sum::<f64>()
        })
    };
    let fma = all(|| fma_flops_per_s(0.5));
    let tiles = all(|| kernels::amx::peak_macs_per_s(0.5).unwrap_or(0.0) * 2.0 / 3.0);
    println!(
        "rooflines on {cores} cores: f32 FMA {:.0} GFLOP/s | tiles {:.0} GFLOP/s f32-equivalent (bf16x3)",
        fma / 1e9,
        tiles / 1e9
    );
    // One encoder layer: fused QKV, attention output, FFN up, FFN down ([out, in]).
    let shapes = [(1152i64, 384i64), (384, 384), (1536, 384), (384, 1536)];
    let ws: Vec<(Tensor, Tensor)> = shapes
        .iter()
        .map(|&(n, k)| {
            let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.05;
            (w, Tensor::randn([n], (Kind::Float, Device::Cpu)))
        })
        .collect();
    let split: Vec<SplitWeights> = ws.iter().map(|(w, b)| SplitWeights::pack(w, Some(b)).unwrap()).collect();
    let macs_per_row: f64 = shapes.iter().map(|&(n, k)| (n * k) as f64).sum();
    for m in [128i64, 4096] {
        let xs: Vec<Tensor> = shapes.iter().map(|&(_, k)| Tensor::randn([m, k], (Kind::Float, Device::Cpu))).collect();
        let flops = 2.0 * macs_per_row * m as f64;
        let tiles = time(|| split.iter().zip(&xs).for_each(|(s, x)| drop(s.matmul_t(x).unwrap())));
        let torch = time(|| ws.iter().zip(&xs).for_each(|((w, b), x)| drop(x.linear(w, Some(b)))));
        let worst = split
            .iter()
            .zip(&ws)
            .zip(&xs)
            .map(|((s, (w, b)), x)| {
                let (a, r) = (s.matmul_t(x).unwrap(), x.linear(w, Some(b)));
                ((a - &r).abs().max() / r.abs().max()).double_value(&[])
            })
            .fold(0.0, f64::max);
        println!(
            "{m:>4} rows, one layer: tiles {:.2} ms ({:.0} GFLOP/s f32-equivalent) | \
             torch f32 {:.2} ms ({:.0} GFLOP/s) | {:.2}x | worst difference {worst:.1e} of the largest output",
            tiles * 1e3,
            flops / tiles / 1e9,
            torch * 1e3,
            flops / torch / 1e9,
            torch / tiles
        );
    }
}

/// f32 FLOP per second of twelve independent AVX-512 FMA chains on the calling thread, over about `seconds`.
fn fma_flops_per_s(seconds: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F (checked).
        return unsafe { fma_avx512(seconds) };
    }
    let _ = seconds;
    0.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(seconds: f64) -> f64 {
    use std::arch::x86_64::*;
    let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..10_000 {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        rounds += 10_000;
    }
    let sum: f32 = acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum();
    std::hint::black_box(sum);
    rounds as f64 * 12.0 * 16.0 * 2.0 / start.elapsed().as_secs_f64()
}
