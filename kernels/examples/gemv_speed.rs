//! Side-by-side speed of the small-batch CPU kernel and libtorch on cache-cold weights shaped like SmolLM2's
//! (120 distinct matrices per pass): `cargo run --release -p kernels --example gemv_speed`.

use std::time::Instant;
use tch::{Device, Kind, Tensor};
fn main() {
    let ws: Vec<Tensor> = (0..120)
        .map(|i| Tensor::randn([if i % 4 == 2 { 3072 } else { 960 }, 576], (Kind::Float, Device::Cpu)))
        .collect();
    let bytes: f64 = ws.iter().map(|w| w.numel() as f64 * 4.0).sum();
    for b in [1i64, 4, 8, 16, 32] {
        let x = Tensor::randn([b, 576], (Kind::Float, Device::Cpu));
        for pass in 0..2 {
            let t = Instant::now();
            for _ in 0..5 {
                for w in &ws {
                    let _ = kernels::cpu_gemv::matmul_t(&x, w).unwrap();
                }
            }
            let custom = t.elapsed().as_secs_f64() / 5.0;
            let t = Instant::now();
            for _ in 0..5 {
                for w in &ws {
                    let _ = x.linear::<Tensor>(w, None);
                }
            }
            let torch = t.elapsed().as_secs_f64() / 5.0;
            if pass == 1 {
                println!(
                    "b={b}: custom {:.1} GB/s ({:.1} ms), torch {:.1} GB/s ({:.1} ms)",
                    bytes / custom / 1e9,
                    custom * 1e3,
                    bytes / torch / 1e9,
                    torch * 1e3
                );
            }
        }
    }
}
