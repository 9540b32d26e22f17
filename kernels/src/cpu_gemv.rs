//! A small-batch f32 matrix product for CPU decode: `y[b, o] = sum_i x[b, i] * w[o, i]` for up to
//! [`MAX_ROWS`] rows of `x`.
//!
//! Why: decoding multiplies a handful of rows by every weight matrix, so the step is bound by streaming the
//! weights from memory. MKL's GEMM (through libtorch) packs the weights on every call for small M and reaches
//! well under the machine's bandwidth on our 150 small matrices per step; this kernel reads each weight row
//! exactly once, computes all rows' dot products from it with AVX2 FMA, and splits output rows across a thread
//! pool. Larger batches, other dtypes, other devices and CPUs without AVX2+FMA use libtorch.

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// The largest batch this kernel takes; beyond it GEMM's compute efficiency wins.
pub const MAX_ROWS: usize = 32;
/// Rows of `x` computed together from one pass over a weight row (accumulators held in registers).
const GROUP: usize = 8;
/// Steps of up to this many tokens do every matrix product in this kernel; libtorch's remaining ops in such a
/// step are small element-wise ones that run faster on one thread than with a thread wake-up per op.
pub const SMALL_BATCH: usize = MAX_ROWS;
/// Weight rows per cache block (64 rows of 1,536 floats = 384 KiB, inside a 512 KiB L2).
const BLOCK_ROWS: usize = 64;

/// Whether this CPU runs the kernel.
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

/// Whether `x @ w.T` can run here: f32 CPU contiguous tensors, at most [`MAX_ROWS`] rows, width a multiple of 8.
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    let (xs, ws) = (x.size(), w.size());
    xs.len() == 2
        && ws.len() == 2
        && xs[1] == ws[1]
        && (1..=MAX_ROWS as i64).contains(&xs[0])
        && ws[1] % 8 == 0
        && x.device() == Device::Cpu
        && w.device() == Device::Cpu
        && x.kind() == Kind::Float
        && w.kind() == Kind::Float
        && w.is_contiguous()
}

/// `x @ w.T` (`x: [b, in]`, `w: [out, in]`), or `None` when [`applies`] is false or the CPU lacks AVX2+FMA.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    if !applies(x, w) || !available() {
        return None;
    }
    let x = x.contiguous();
    let (b, k) = (x.size()[0] as usize, x.size()[1] as usize);
    let n = w.size()[0] as usize;
    // SAFETY: both tensors are contiguous f32 on the CPU (checked by `applies`) with the element counts used here,
    // and they outlive these slices (borrowed for this call only; nothing else writes them meanwhile).
    let xs = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, b * k) };
    let ws = unsafe { std::slice::from_raw_parts(w.data_ptr() as *const f32, n * k) };
    // Computed transposed ([out, b]) so each task writes one contiguous chunk; transposed back at the end
    // (a free view when b = 1).
    let y = Tensor::empty([n as i64, b as i64], (Kind::Float, Device::Cpu));
    // SAFETY: `y` was just allocated as a contiguous f32 CPU tensor of n * b elements and nothing else refers to
    // it until this function returns it.
    let out = unsafe { std::slice::from_raw_parts_mut(y.data_ptr() as *mut f32, n * b) };
    // One contiguous range of rows per thread keeps each thread's weight reads a single sequential stream
    // (interleaved small tasks make the hardware prefetcher restart at every task). Inside it, blocks of
    // BLOCK_ROWS rows small enough for L2: every group of x rows is done with a block before the next is read.
    let rows_per_task = n.div_ceil(rayon::current_num_threads()).max(BLOCK_ROWS);
    out.par_chunks_mut(rows_per_task * b).enumerate().for_each(|(task, chunk)| {
        for (blk, y) in chunk.chunks_mut(BLOCK_ROWS * b).enumerate() {
            let first = task * rows_per_task + blk * BLOCK_ROWS;
            let rows = y.len() / b;
            rows_block(&ws[first * k..(first + rows) * k], xs, b, k, y);
        }
    });
    Some(if b == 1 { y.view([1, n as i64]) } else { y.tr().contiguous() })
}

/// `y[r * b + j] = w_r . x_j` for the rows `w_r` of `w` (a block of `y.len() / b` rows) and the `b` rows of `xs`.
fn rows_block(w: &[f32], xs: &[f32], b: usize, k: usize, y: &mut [f32]) {
    let rows = y.len() / b;
    if b > GROUP {
        // Register-blocked: BR weight rows against 4 x rows per pass (BR x 4 accumulators in registers; 3 rows
        // spill on AVX2 and run 1.5x slower).
        const BR: usize = 2;
        let mut g = 0;
        while g + 4 <= b {
            let xg = &xs[g * k..(g + 4) * k];
            let mut r = 0;
            while r + BR <= rows {
                let mut acc = [[0f32; 4]; BR];
                block::<BR, 4>(&w[r * k..(r + BR) * k], xg, k, &mut acc);
                for (i, a) in acc.iter().enumerate() {
                    y[(r + i) * b + g..(r + i) * b + g + 4].copy_from_slice(a);
                }
                r += BR;
            }
            for r in r..rows {
                dot_rows(&w[r * k..(r + 1) * k], xg, k, &mut y[r * b + g..r * b + g + 4]);
            }
            g += 4;
        }
        if g < b {
            let xg = &xs[g * k..b * k];
            for r in 0..rows {
                dot_rows(&w[r * k..(r + 1) * k], xg, k, &mut y[r * b + g..r * b + b]);
            }
        }
        return;
    }
    for g in (0..b).step_by(GROUP) {
        let gb = GROUP.min(b - g);
        let xg = &xs[g * k..(g + gb) * k];
        for (r, yr) in y.chunks_exact_mut(b).enumerate() {
            dot_rows(&w[r * k..(r + 1) * k], xg, k, &mut yr[g..g + gb]);
        }
    }
}

/// `y[j] = row . x[j]` for every row `j` of `x` (`x` is `y.len()` rows of `k`).
fn dot_rows(row: &[f32], x: &[f32], k: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `matmul_t` only runs after `available()` confirmed AVX2 and FMA; lengths are checked inside.
        unsafe { avx2::dot_rows(row, x, k, y) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        for (j, yj) in y.iter_mut().enumerate() {
            *yj = row.iter().zip(&x[j * k..(j + 1) * k]).map(|(a, b)| a * b).sum();
        }
    }
}

/// `y[r][c] = w_r . x_c` for `R` weight rows (`w`, R k) and `C` x rows (`x`, C k).
fn block<const R: usize, const C: usize>(w: &[f32], x: &[f32], k: usize, y: &mut [[f32; C]; R]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: only reached from `matmul_t` after `available()` confirmed AVX2 and FMA; lengths checked inside.
        unsafe { avx2::block::<R, C>(w, x, k, y) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (r, yr) in y.iter_mut().enumerate() {
        for (c, yc) in yr.iter_mut().enumerate() {
            *yc = w[r * k..(r + 1) * k].iter().zip(&x[c * k..(c + 1) * k]).map(|(a, b)| a * b).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn hsum(a: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let s = _mm_hadd_ps(s, s);
        _mm_cvtss_f32(_mm_hadd_ps(s, s))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA. `k` must be a multiple of 8, `w.len() >= R k`, `x.len() >= C k`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block<const R: usize, const C: usize>(w: &[f32], x: &[f32], k: usize, y: &mut [[f32; C]; R]) {
        assert!(k.is_multiple_of(8) && w.len() >= R * k && x.len() >= C * k);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut i = 0;
        while i < k {
            // SAFETY: i + 8 <= k, so every load stays inside w (R k) and x (C k), asserted above.
            unsafe {
                let mut xv = [_mm256_setzero_ps(); C];
                for (c, v) in xv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(xp.add(c * k + i));
                }
                for (r, accr) in acc.iter_mut().enumerate() {
                    let wv = _mm256_loadu_ps(wp.add(r * k + i));
                    for (a, &v) in accr.iter_mut().zip(&xv) {
                        *a = _mm256_fmadd_ps(wv, v, *a);
                    }
                }
            }
            i += 8;
        }
        for (yr, accr) in y.iter_mut().zip(&acc) {
            for (yi, &a) in yr.iter_mut().zip(accr) {
                *yi = hsum(a);
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA. `k` must be a multiple of 8, `row.len() >= k`, `x.len() >= y.len() * k`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(row: &[f32], x: &[f32], k: usize, y: &mut [f32]) {
        assert!(k.is_multiple_of(8) && row.len() >= k && x.len() >= y.len() * k && y.len() <= super::GROUP);
        let b = y.len();
        if b == 1 {
            // One row: four independent accumulators so FMA latency does not serialize the stream.
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= k {
                for (u, a) in acc.iter_mut().enumerate() {
                    // SAFETY: i + 8u + 8 <= i + 32 <= k <= row.len(), x.len().
                    unsafe {
                        let off = i + 8 * u;
                        *a = _mm256_fmadd_ps(
                            _mm256_loadu_ps(row.as_ptr().add(off)),
                            _mm256_loadu_ps(x.as_ptr().add(off)),
                            *a,
                        );
                    }
                }
                i += 32;
            }
            while i < k {
                // SAFETY: i + 8 <= k (k is a multiple of 8).
                unsafe {
                    acc[0] = _mm256_fmadd_ps(
                        _mm256_loadu_ps(row.as_ptr().add(i)),
                        _mm256_loadu_ps(x.as_ptr().add(i)),
                        acc[0],
                    );
                }
                i += 8;
            }
            y[0] = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
            return;
        }
        let mut acc = [_mm256_setzero_ps(); super::GROUP];
        let mut i = 0;
        while i < k {
            // SAFETY: i + 8 <= k <= row.len() and j * k + i + 8 <= b * k <= x.len() (asserted above).
            unsafe {
                let w = _mm256_loadu_ps(row.as_ptr().add(i));
                for (j, a) in acc.iter_mut().enumerate().take(b) {
                    *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(j * k + i)), *a);
                }
            }
            i += 8;
        }
        for (yj, a) in y.iter_mut().zip(acc) {
            *yj = hsum(a);
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
        for b in [1i64, 2, 7, 8, 9, 16, 31, 32] {
            for (n, k) in [(7i64, 8i64), (960, 576), (130, 1536)] {
                let x = Tensor::randn([b, k], (Kind::Float, Device::Cpu));
                let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
                let got = matmul_t(&x, &w).unwrap();
                let want = x.linear::<Tensor>(&w, None);
                let d = (got - want).abs().max().double_value(&[]);
                assert!(d < 1e-3, "b={b} n={n} k={k}: {d}");
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_do() {
        let x = Tensor::randn([MAX_ROWS as i64 + 1, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        assert!(matmul_t(&x, &w).is_none());
        let x = Tensor::randn([2, 6], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
        assert!(matmul_t(&x, &w).is_none());
    }
}
