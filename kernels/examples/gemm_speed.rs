//! Side-by-side speed of the packed CPU GEMM and libtorch on cache-cold weights shaped like SmolLM2's
//! (120 distinct matrices per pass): `cargo run --release -p kernels --example gemm_speed`.

use std::time::Instant;

use kernels::cpu_gemm::PackedWeights;
use tch::{Device, Kind, Tensor};

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..4 {
        f();
    }
    t.elapsed().as_secs_f64() / 4.0
}

fn main() {
    let ws: Vec<Tensor> = (0..120)
        .map(|i| Tensor::randn([if i % 4 == 2 { 3072 } else { 960 }, 576], (Kind::Float, Device::Cpu)))
        .collect();
    let packed: Vec<PackedWeights> = ws.iter().map(|w| PackedWeights::pack(w).unwrap()).collect();
    let bytes: f64 = ws.iter().map(|w| w.numel() as f64 * 4.0).sum();
    for b in [1i64, 4, 8, 16, 32] {
        let x = Tensor::randn([b, 576], (Kind::Float, Device::Cpu));
        let flops = bytes / 4.0 * 2.0 * b as f64;
        let gemm = time(|| packed.iter().for_each(|p| drop(p.matmul_t(&x).unwrap())));
        let torch = time(|| ws.iter().for_each(|w| drop(x.linear::<Tensor>(w, None))));
        println!(
            "b={b:>2}: packed gemm {:.1} ms ({:.1} GB/s, {:.0} GFLOP/s) | torch {:.1} ms ({:.1} GB/s, {:.0} GFLOP/s)",
            gemm * 1e3,
            bytes / gemm / 1e9,
            flops / gemm / 1e9,
            torch * 1e3,
            bytes / torch / 1e9,
            flops / torch / 1e9
        );
    }
}
