//! Side-by-side speed of the AMX bf16x3 products ([`kernels::amx`]) and libtorch's f32 GEMM (MKL) on
//! all-MiniLM-L6-v2's shapes, 128 and 4096 rows (batches of 1 and 32 passages of 128 tokens), and the machine's
//! f32 FMA limit measured in the same run: `cargo run --release -p kernels --example amx_speed`.

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
            "{m:>4} rows, one layer: tiles {:.2} ms ({:.0} GFLOP/s f32-equivalent) | torch f32 {:.2} ms ({:.0} GFLOP/s) | \
             {:.2}x | worst difference {worst:.1e} of the largest output",
            tiles * 1e3,
            flops / tiles / 1e9,
            torch * 1e3,
            flops / torch / 1e9,
            torch / tiles
        );
    }
}
