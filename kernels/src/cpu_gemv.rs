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
/// Batches up to this size are bound by weight streaming alone: libtorch's own ops in such a step are tiny and
/// run best on one thread while this kernel's pool does the streaming.
pub const SMALL_BATCH: usize = 8;
/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;

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
    // Computed transposed ([out, b]) so each task writes one contiguous chunk; transposed back at the end.
    let mut out = vec![0f32; n * b];
    // Each task owns ROWS_PER_TASK weight rows: the first group of x rows streams them from memory, later
    // groups find them in cache.
    out.par_chunks_mut(ROWS_PER_TASK * b).enumerate().for_each(|(task, chunk)| {
        let first = task * ROWS_PER_TASK;
        let rows = chunk.len() / b;
        if b >= 4 {
            // Register-blocked: two weight rows against four x rows per pass (8 accumulators, 6 loads per 8 FMAs).
            let mut g = 0;
            while g + 4 <= b {
                let xg = &xs[g * k..(g + 4) * k];
                let mut r = 0;
                while r + 2 <= rows {
                    let w2 = &ws[(first + r) * k..(first + r + 2) * k];
                    let mut y = [0f32; 8];
                    block_2x4(w2, xg, k, &mut y);
                    chunk[r * b + g..r * b + g + 4].copy_from_slice(&y[..4]);
                    chunk[(r + 1) * b + g..(r + 1) * b + g + 4].copy_from_slice(&y[4..]);
                    r += 2;
                }
                if r < rows {
                    let row = &ws[(first + r) * k..(first + r + 1) * k];
                    dot_rows(row, xg, k, &mut chunk[r * b + g..r * b + g + 4]);
                }
                g += 4;
            }
            if g < b {
                let xg = &xs[g * k..b * k];
                for r in 0..rows {
                    let row = &ws[(first + r) * k..(first + r + 1) * k];
                    dot_rows(row, xg, k, &mut chunk[r * b + g..r * b + b]);
                }
            }
            return;
        }
        for g in (0..b).step_by(GROUP) {
            let gb = GROUP.min(b - g);
            let xg = &xs[g * k..(g + gb) * k];
            for (r, y) in chunk.chunks_exact_mut(b).enumerate() {
                let row = &ws[(first + r) * k..(first + r + 1) * k];
                dot_rows(row, xg, k, &mut y[g..g + gb]);
            }
        }
    });
    Some(Tensor::from_slice(&out).view([n as i64, b as i64]).tr().contiguous())
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

/// `y[i * 4 + j] = w_i . x_j` for two weight rows (`w2`, 2k) and four x rows (`x4`, 4k).
fn block_2x4(w2: &[f32], x4: &[f32], k: usize, y: &mut [f32; 8]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: only reached from `matmul_t` after `available()` confirmed AVX2 and FMA; lengths checked inside.
        unsafe { avx2::block_2x4(w2, x4, k, y) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        for i in 0..2 {
            for j in 0..4 {
                y[i * 4 + j] = w2[i * k..(i + 1) * k].iter().zip(&x4[j * k..(j + 1) * k]).map(|(a, b)| a * b).sum();
            }
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
    /// The CPU must support AVX2 and FMA. `k` must be a multiple of 8, `w2.len() >= 2k`, `x4.len() >= 4k`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_2x4(w2: &[f32], x4: &[f32], k: usize, y: &mut [f32; 8]) {
        assert!(k.is_multiple_of(8) && w2.len() >= 2 * k && x4.len() >= 4 * k);
        let mut acc = [_mm256_setzero_ps(); 8];
        let (w, x) = (w2.as_ptr(), x4.as_ptr());
        let mut i = 0;
        while i < k {
            // SAFETY: i + 8 <= k, so every load below stays inside w2 (2k) and x4 (4k), asserted above.
            unsafe {
                let w0 = _mm256_loadu_ps(w.add(i));
                let w1 = _mm256_loadu_ps(w.add(k + i));
                for j in 0..4 {
                    let xv = _mm256_loadu_ps(x.add(j * k + i));
                    acc[j] = _mm256_fmadd_ps(w0, xv, acc[j]);
                    acc[4 + j] = _mm256_fmadd_ps(w1, xv, acc[4 + j]);
                }
            }
            i += 8;
        }
        for (yi, a) in y.iter_mut().zip(acc) {
            *yi = hsum(a);
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA. `k` must be a multiple of 8, `row.len() >= k`, `x.len() >= y.len() * k`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(row: &[f32], x: &[f32], k: usize, y: &mut [f32]) {
        assert!(k.is_multiple_of(8) && row.len() >= k && x.len() >= y.len() * k && y.len() <= super::GROUP);
        let b = y.len();
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
