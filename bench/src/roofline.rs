//! Measures this machine's roofline through libtorch, in the same process as the thing it is compared with:
//! absolute numbers on a shared machine drift, ratios measured side by side do not.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

/// What the machine does right now.
#[derive(Debug, Clone, Copy)]
pub struct Roofline {
    /// Plain read bandwidth: summing a buffer much larger than the caches, bytes/s.
    pub read_bw: f64,
    /// Streaming f32 weights through a matrix-vector product, bytes/s.
    pub matvec_bw: f64,
    /// f32 matmul throughput, FLOP/s.
    pub matmul_flops: f64,
}

impl Roofline {
    /// The memory bandwidth the roofline uses: the better of the two measurements (the stricter roofline).
    pub fn mem_bw(&self) -> f64 {
        self.read_bw.max(self.matvec_bw)
    }

    /// Seconds for a step that must stream `bytes` and compute `flops`, at best.
    pub fn time_for(&self, bytes: f64, flops: f64) -> f64 {
        (bytes / self.mem_bw()).max(flops / self.matmul_flops)
    }

    pub fn measure(device: Device) -> Self {
        tch::no_grad(|| {
            let buf = Tensor::ones([128 << 20], (Kind::Float, device)); // 512 MiB
            let read_bw = best_rate(5, (128u64 << 20) as f64 * 4.0, || {
                let _ = buf.sum(Kind::Float).double_value(&[]);
            });
            drop(buf);
            let w = Tensor::randn([16384, 4096], (Kind::Float, device)); // 256 MiB
            let x = Tensor::randn([1, 4096], (Kind::Float, device));
            let matvec_bw = best_rate(5, 16384.0 * 4096.0 * 4.0, || {
                let _ = x.linear::<Tensor>(&w, None).double_value(&[0, 0]);
            });
            drop(w);
            let n = 2048i64;
            let a = Tensor::randn([n, n], (Kind::Float, device));
            let b = Tensor::randn([n, n], (Kind::Float, device));
            let matmul_flops = best_rate(5, 2.0 * (n * n * n) as f64, || {
                let _ = a.matmul(&b).double_value(&[0, 0]);
            });
            Self { read_bw, matvec_bw, matmul_flops }
        })
    }
}

/// The best of `reps` runs, as units per second.
pub fn best_rate(reps: usize, units: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    units / best
}
