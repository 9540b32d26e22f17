//! Batch-1 matrix-vector speed on SmolLM2's real weights: the integer dot products of `kernels::qdot` straight on
//! the GGUF blocks against the packed f32 GEMM on the same matrices dequantized (what decode streams today), every
//! 2-D weight of every layer per pass (cache-cold), on the rayon pool for both:
//! `cargo run --release -p kernels --example qdot_speed [-- MODEL.gguf]`.

use std::time::Instant;

use kernels::cpu_gemm::PackedWeights;
use kernels::gguf::GgufFile;
use kernels::qdot::{quantize_row_q8, vec_dot};
use kernels::quant::GgmlType;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..8 {
        f();
    }
    t.elapsed().as_secs_f64() / 8.0
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let g = GgufFile::open(&path).unwrap();
    let supported = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];
    // (rows, cols, type, bytes) of every 2-D block weight the integer kernels take.
    let mats: Vec<(usize, usize, GgmlType, Vec<u8>)> = (0..64)
        .flat_map(|l| {
            ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
                .map(|t| format!("blk.{l}.{t}.weight"))
        })
        .filter_map(|name| g.tensor(&name).cloned())
        .filter(|t| t.dims.len() == 2 && supported.contains(&t.ty))
        .map(|t| (t.dims[1] as usize, t.dims[0] as usize, t.ty, g.tensor_bytes(&t).to_vec()))
        .collect();
    let packed: Vec<PackedWeights> = mats
        .iter()
        .map(|(rows, cols, ty, bytes)| {
            let w = kernels::quant::dequantize(*ty, bytes, rows * cols).unwrap();
            PackedWeights::pack(&Tensor::from_slice(&w).view([*rows as i64, *cols as i64])).unwrap()
        })
        .collect();
    let qbytes: f64 = mats.iter().map(|m| m.3.len() as f64).sum();
    let fbytes: f64 = mats.iter().map(|m| (m.0 * m.1 * 4) as f64).sum();
    println!("{} matrices, {:.1} MB as blocks, {:.1} MB as f32", mats.len(), qbytes / 1e6, fbytes / 1e6);
    let quant = time(|| {
        for (rows, cols, ty, bytes) in &mats {
            let x: Vec<f32> = (0..*cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let a = quantize_row_q8(&x).unwrap();
            let row_bytes = bytes.len() / rows;
            let y: Vec<f32> = bytes.par_chunks_exact(row_bytes).map(|r| vec_dot(*ty, r, &a).unwrap()).collect();
            std::hint::black_box(y);
        }
    });
    let f32_gemm = time(|| {
        for (p, (_, cols, _, _)) in packed.iter().zip(&mats) {
            let x = Tensor::randn([1, *cols as i64], (Kind::Float, Device::Cpu));
            drop(std::hint::black_box(p.matmul_t(&x).unwrap()));
        }
    });
    println!(
        "batch 1: blocks {:.2} ms ({:.1} GB/s of blocks) | packed f32 {:.2} ms ({:.1} GB/s) | {:.2}x",
        quant * 1e3,
        qbytes / quant / 1e9,
        f32_gemm * 1e3,
        fbytes / f32_gemm / 1e9,
        f32_gemm / quant
    );
}
