//! A packed-panel f32 GEMM for CPU decode steps (1 to [`MAX_ROWS`] rows): `y = x @ w.T`.
//!
//! Decoding multiplies a handful of rows by every weight matrix: at batch 1 the step is bound by streaming the
//! weights from memory, at batch 32 by arithmetic. MKL (through libtorch) is poor at both on these shapes: it
//! repacks the weights on every call for small M, streaming about 14 GB/s at batch 1 and reaching under half the
//! machine's FLOP rate at batch 32. Here the weights are repacked once, at load, into panels of 16 outputs laid
//! out k-major (`panel[k][0..16]`); a 6 x 16 register tile (12 AVX2 accumulators) is updated by broadcasting one
//! x value per row against two 8-wide weight vectors (2 loads and 6 broadcasts per 12 FMAs, no horizontal sums),
//! and panels are split into one contiguous range per thread of [`crate::team`] so each core reads one
//! sequential stream.
//! Measured side by side with libtorch: `cargo run --release -p kernels --example gemm_speed`.
//!
//! The packed copy doubles the CPU weight memory: libtorch's copy stays for prefill, where MKL is at its best.

use tch::{Device, Kind, Tensor};

/// The largest step this kernel takes; larger ones (prefill) go to libtorch's GEMM.
pub const MAX_ROWS: usize = 32;

/// Whether this CPU runs the kernel (AVX2 and FMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Outputs per panel.
const NR: usize = 16;
/// Rows of x per register tile.
const MR: usize = 6;

/// Weights `[n, k]` repacked as `n / 16` panels of `k x 16`.
pub struct PackedWeights {
    n: usize,
    k: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeights").field("n", &self.n).field("k", &self.k).finish()
    }
}

impl PackedWeights {
    /// Packs `w` (`[n, k]`, f32 on the CPU), or `None` if the shape or the CPU does not suit the kernel.
    pub fn pack(w: &Tensor) -> Option<Self> {
        let s = w.size();
        if s.len() != 2 || w.device() != Device::Cpu || w.kind() != Kind::Float || !available() {
            return None;
        }
        let (n, k) = (s[0] as usize, s[1] as usize);
        if n % NR != 0 || k == 0 {
            return None;
        }
        let w = w.contiguous();
        // SAFETY: contiguous f32 CPU tensor of n * k elements, only read, alive for this scope.
        let src = unsafe { std::slice::from_raw_parts(w.data_ptr() as *const f32, n * k) };
        let mut data = vec![0f32; n * k];
        for (p, panel) in data.chunks_exact_mut(k * NR).enumerate() {
            for j in 0..NR {
                let row = &src[(p * NR + j) * k..(p * NR + j + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + j] = v;
                }
            }
        }
        Some(Self { n, k, data })
    }

    /// Bytes of the packed copy.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }

    /// `x @ w.T` for `x: [m, k]` f32 on the CPU.
    pub fn matmul_t(&self, x: &Tensor) -> Option<Tensor> {
        let s = x.size();
        if s.len() != 2 || s[1] as usize != self.k || x.device() != Device::Cpu || x.kind() != Kind::Float {
            return None;
        }
        let m = s[0] as usize;
        let x = x.contiguous();
        // SAFETY: contiguous f32 CPU tensor of m * k elements, only read during this call.
        let xs = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, m * self.k) };
        let y = Tensor::empty([m as i64, self.n as i64], (Kind::Float, Device::Cpu));
        let out = crate::team::SharedMut::new(y.data_ptr() as *mut f32);
        let panels = self.n / NR;
        let per_task = panels.div_ceil(crate::team::width()).max(1);
        crate::team::run(panels.div_ceil(per_task), &|task| {
            for p in task * per_task..((task + 1) * per_task).min(panels) {
                let panel = &self.data[p * self.k * NR..(p + 1) * self.k * NR];
                let mut r = 0;
                while r < m {
                    let rows = MR.min(m - r);
                    let mut tile = [[0f32; NR]; MR];
                    tile_kernel(panel, &xs[r * self.k..(r + rows) * self.k], self.k, rows, &mut tile);
                    for (i, t) in tile.iter().enumerate().take(rows) {
                        // SAFETY: row r + i < m and columns p*16..p*16+16 <= n lie inside `y` (m x n); each
                        // (row, panel) cell is written by exactly one task, so writes never overlap.
                        unsafe {
                            std::ptr::copy_nonoverlapping(t.as_ptr(), out.get().add((r + i) * self.n + p * NR), NR);
                        }
                    }
                    r += rows;
                }
            }
        });
        Some(y)
    }
}

/// `tile[i][j] = sum_k x[i][k] * panel[k][j]` for `rows <= MR` rows of x.
fn tile_kernel(panel: &[f32], x: &[f32], k: usize, rows: usize, tile: &mut [[f32; NR]; MR]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: PackedWeights only exist when `available()` confirmed AVX2 and FMA (checked in `pack`).
        unsafe { avx2::tile(panel, x, k, rows, tile) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..rows {
        for j in 0..NR {
            tile[i][j] = (0..k).map(|kk| x[i * k + kk] * panel[kk * NR + j]).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// # Safety
    /// The CPU must support AVX2 and FMA. `panel.len() >= k * 16`, `x.len() >= rows * k`, `rows <= 6`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(panel: &[f32], x: &[f32], k: usize, rows: usize, tile: &mut [[f32; NR]; MR]) {
        // A compile-time row count lets every loop over rows unroll and the accumulators stay in registers.
        // SAFETY (all arms): same contract as this function's.
        unsafe {
            match rows {
                1 => tile_rows::<1>(panel, x, k, tile),
                2 => tile_rows::<2>(panel, x, k, tile),
                3 => tile_rows::<3>(panel, x, k, tile),
                4 => tile_rows::<4>(panel, x, k, tile),
                5 => tile_rows::<5>(panel, x, k, tile),
                _ => tile_rows::<MR>(panel, x, k, tile),
            }
        }
    }

    /// # Safety
    /// As [`tile`], with `ROWS` rows.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_rows<const ROWS: usize>(panel: &[f32], x: &[f32], k: usize, tile: &mut [[f32; NR]; MR]) {
        let rows = ROWS;
        assert!(panel.len() >= k * NR && x.len() >= rows * k && rows <= MR);
        let (pp, xp) = (panel.as_ptr(), x.as_ptr());
        // Blocked summation: registers accumulate KB steps at a time, then join a running total, so rounding
        // grows with k / KB + KB rather than with k (one long chain differs from MKL's sums by more than 1e-4
        // on the logits).
        const KB: usize = 64;
        for t in tile.iter_mut() {
            *t = [0.0; NR];
        }
        for k0 in (0..k).step_by(KB) {
            let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
            for kk in k0..(k0 + KB).min(k) {
                // SAFETY: kk < k, so panel reads at kk*16..kk*16+16 <= k*16 and x reads at i*k+kk < rows*k.
                unsafe {
                    let w0 = _mm256_loadu_ps(pp.add(kk * NR));
                    let w1 = _mm256_loadu_ps(pp.add(kk * NR + 8));
                    for (i, a) in acc.iter_mut().enumerate() {
                        let xb = _mm256_broadcast_ss(&*xp.add(i * k + kk));
                        a[0] = _mm256_fmadd_ps(xb, w0, a[0]);
                        a[1] = _mm256_fmadd_ps(xb, w1, a[1]);
                    }
                }
            }
            // The running total lives in `tile` (memory), keeping the 12 accumulators alone in registers.
            for (t, a) in tile.iter_mut().zip(&acc) {
                // SAFETY: each tile row holds 16 floats.
                unsafe {
                    let p = t.as_mut_ptr();
                    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), a[0]));
                    _mm256_storeu_ps(p.add(8), _mm256_add_ps(_mm256_loadu_ps(p.add(8)), a[1]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libtorch() {
        if !available() {
            return;
        }
        for m in [1i64, 5, 6, 7, 13, 32] {
            for (n, k) in [(16i64, 3i64), (960, 576), (64, 1536)] {
                let x = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
                let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
                let got = PackedWeights::pack(&w).unwrap().matmul_t(&x).unwrap();
                let d = (got - x.linear::<Tensor>(&w, None)).abs().max().double_value(&[]);
                assert!(d < 1e-3, "m={m} n={n} k={k}: {d}");
            }
        }
        assert!(PackedWeights::pack(&Tensor::randn([15, 8], (Kind::Float, Device::Cpu))).is_none());
    }
}
