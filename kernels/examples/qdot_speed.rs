//! Matrix speed on a model's real weights: [`kernels::qmatmul::QuantMatrix`] straight on the GGUF blocks against
//! the f32 paths on the same matrices dequantized (the packed f32 GEMM for decode-sized steps, libtorch's GEMM for
//! prefill-sized ones), every 2-D weight of every layer per pass (cache-cold), at 1, 8, 32 and 256 rows:
//! `cargo run --release -p kernels --example qdot_speed [-- MODEL.gguf]`.

use std::time::Instant;

use kernels::cpu_gemm::PackedWeights;
use kernels::gguf::GgufFile;
use kernels::qmatmul::{QuantMatrix, RowBlocks};
use tch::{Device, Kind, Tensor};

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..5 {
        f();
    }
    t.elapsed().as_secs_f64() / 5.0
}

fn main() {
    // As the server: libtorch's OpenMP threads spin briefly, not for 300k rounds after every op.
    kernels::torch::init_process();
    let path = std::env::args().nth(1).unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let g = GgufFile::open(&path).unwrap();
    let mut quant = Vec::new();
    let mut dense = Vec::new();
    for name in (0..64).flat_map(|l| {
        ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
            .map(|t| format!("blk.{l}.{t}.weight"))
    }) {
        let Some(t) = g.tensor(&name).cloned() else { continue };
        let (rows, cols) = (t.dims[1] as usize, t.dims[0] as usize);
        let bytes = g.tensor_bytes(&t);
        let q = QuantMatrix::new(cols, &[RowBlocks { ty: t.ty, rows, bytes, unpermute_heads: None }]).unwrap();
        let w = Tensor::from_slice(&kernels::quant::dequantize(t.ty, bytes, rows * cols).unwrap())
            .view([rows as i64, cols as i64]);
        dense.push((PackedWeights::pack(&w).unwrap(), w));
        quant.push(q);
    }
    let qbytes: f64 = quant.iter().map(|q| q.bytes() as f64).sum();
    let fbytes: f64 = quant.iter().map(|q| (q.n() * q.k() * 4) as f64).sum();
    println!("{} matrices, {:.1} MB as blocks, {:.1} MB as f32", quant.len(), qbytes / 1e6, fbytes / 1e6);
    for m in [1i64, 8, 32, 256] {
        let xs: Vec<Tensor> =
            quant.iter().map(|q| Tensor::randn([m, q.k() as i64], (Kind::Float, Device::Cpu))).collect();
        let tq = time(|| {
            for (q, x) in quant.iter().zip(&xs) {
                drop(std::hint::black_box(q.matmul_t(x).unwrap()));
            }
        });
        let ti = time(|| {
            for (q, x) in quant.iter().zip(&xs) {
                drop(std::hint::black_box(q.matmul_t_int(x).unwrap()));
            }
        });
        let tf = time(|| {
            for ((p, w), x) in dense.iter().zip(&xs) {
                let y =
                    if m as usize <= kernels::cpu_gemm::MAX_ROWS { p.matmul_t(x).unwrap() } else { x.matmul(&w.tr()) };
                drop(std::hint::black_box(y));
            }
        });
        println!(
            "rows {m:>3}: blocks {:7.2} ms ({:5.1} GB/s of blocks), in integers {:7.2} ms | f32 {:7.2} ms ({:5.1} GB/s) | {:.2}x",
            tq * 1e3,
            qbytes / tq / 1e9,
            ti * 1e3,
            tf * 1e3,
            fbytes / tf / 1e9,
            tf / tq
        );
    }
}
