//! Dot products straight on GGUF's quantized blocks (issue #21's first part): weights stay in their ggml block
//! layout, activations are quantized per 32-value block to int8 on the fly ([`quantize_row_q8`]), and each block
//! pair's dot product runs in integers, scaled and accumulated in f32, as ggml's `ggml_vec_dot_*_q8_*` do.
//!
//! Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-value blocks). An AVX2 kernel per type is picked at run time
//! ([`vec_dot`]); [`vec_dot_portable`] is the plain-Rust fallback and the reference the kernels are tested against.
//! Not yet wired into the model's linear layers; the K-quants (256-value blocks with sub-block scales) are next.

use half::f16;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

const QK: usize = 32;

/// 32 activations as int8 with their scale (`x ≈ d * q`) and the sum of the `q` (for the types with an offset).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8Block {
    pub d: f32,
    pub qs: [i8; QK],
    pub sum: i32,
}

/// Quantizes a row (a multiple of 32 long) to int8 blocks: `d = max|x| / 127`, `q = round(x / d)`.
pub fn quantize_row_q8(x: &[f32]) -> Result<Vec<Q8Block>> {
    if !x.len().is_multiple_of(QK) {
        return Err(Error::invalid(format!("row of {} values is not a whole number of {QK}-blocks", x.len())));
    }
    Ok(x.chunks_exact(QK)
        .map(|b| {
            let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; QK];
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(b) {
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                sum += *q as i32;
            }
            Q8Block { d, qs, sum }
        })
        .collect())
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The integer weights of one block (what the block's scale multiplies), its scale and its offset (0 for the
/// symmetric types): `w = d * q + m`.
pub fn block_ints(ty: GgmlType, b: &[u8]) -> Result<([i32; QK], f32, f32)> {
    let mut q = [0i32; QK];
    let nib = |qs: &[u8], j: usize| -> i32 {
        if j < 16 {
            (qs[j] & 0x0F) as i32
        } else {
            (qs[j - 16] >> 4) as i32
        }
    };
    match ty {
        GgmlType::Q4_0 => {
            (0..QK).for_each(|j| q[j] = nib(&b[2..18], j) - 8);
            Ok((q, half(b, 0), 0.0))
        }
        GgmlType::Q4_1 => {
            (0..QK).for_each(|j| q[j] = nib(&b[4..20], j));
            Ok((q, half(b, 0), half(b, 2)))
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let off = if ty == GgmlType::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
            let bias = if ty == GgmlType::Q5_0 { 16 } else { 0 };
            (0..QK).for_each(|j| q[j] = (nib(&b[off + 4..off + 20], j) | (((qh >> j) & 1) as i32) << 4) - bias);
            let m = if ty == GgmlType::Q5_1 { half(b, 2) } else { 0.0 };
            Ok((q, half(b, 0), m))
        }
        GgmlType::Q8_0 => {
            (0..QK).for_each(|j| q[j] = b[2 + j] as i8 as i32);
            Ok((q, half(b, 0), 0.0))
        }
        other => Err(Error::unsupported(format!("quantized dot product for {other:?}"))),
    }
}

fn check(ty: GgmlType, w: &[u8], a: &[Q8Block]) -> Result<usize> {
    if !matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0) {
        return Err(Error::unsupported(format!("quantized dot product for {ty:?}")));
    }
    let bb = ty.block_bytes();
    if w.len() != a.len() * bb {
        return Err(Error::invalid(format!("{} weight bytes for {} activation blocks of {ty:?}", w.len(), a.len())));
    }
    Ok(bb)
}

/// The dot product of a row of `ty` blocks with quantized activations, in plain Rust: per block the exact integer
/// sum `Σ q_w q_a`, then `d_w d_a Σ + m d_a Σ q_a`.
pub fn vec_dot_portable(ty: GgmlType, w: &[u8], a: &[Q8Block]) -> Result<f32> {
    let bb = check(ty, w, a)?;
    let mut acc = 0.0f32;
    for (blk, act) in w.chunks_exact(bb).zip(a) {
        let (q, d, m) = block_ints(ty, blk)?;
        let isum: i32 = q.iter().zip(&act.qs).map(|(&x, &y)| x * y as i32).sum();
        acc += d * act.d * isum as f32 + m * act.d * act.sum as f32;
    }
    Ok(acc)
}

/// [`vec_dot_portable`] with the AVX2 kernel where the CPU has AVX2 and FMA.
pub fn vec_dot(ty: GgmlType, w: &[u8], a: &[Q8Block]) -> Result<f32> {
    check(ty, w, a)?;
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu_gemm::available() {
            // SAFETY: AVX2 and FMA were detected just above; `check` made the slices agree in length.
            return Ok(unsafe { avx2::vec_dot(ty, w, a) });
        }
    }
    vec_dot_portable(ty, w, a)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{half, Q8Block, QK};
    use crate::quant::GgmlType;

    /// 32 bytes: the low nibbles of `qs[0..16]` then their high nibbles (the order of a block's 32 values).
    #[target_feature(enable = "avx2")]
    unsafe fn nibbles(qs: *const u8) -> __m256i {
        // SAFETY: the caller passes 16 readable bytes.
        let tmp = unsafe { _mm_loadu_si128(qs as *const __m128i) };
        let both = _mm256_insertf128_si256(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4), 1);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }

    /// 0xFF in byte j where bit j of `bits` is set, else 0.
    #[target_feature(enable = "avx2")]
    fn bits_to_bytes(bits: u32) -> __m256i {
        let x = _mm256_set1_epi32(bits as i32);
        let shuf = _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303);
        let bytes = _mm256_shuffle_epi8(x, shuf);
        let mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
        _mm256_cmpeq_epi8(_mm256_or_si256(bytes, mask), _mm256_set1_epi64x(-1))
    }

    /// Σ x_i y_i over 32 signed bytes each, as 8 i32 lanes (abs/sign so `maddubs` sees an unsigned operand).
    #[target_feature(enable = "avx2")]
    fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
    }

    /// Σ x_i y_i with `x` unsigned bytes (0..=31), `y` signed, as 8 i32 lanes.
    #[target_feature(enable = "avx2")]
    fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// AVX2 and FMA must be available; `w` holds `a.len()` blocks of `ty`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn vec_dot(ty: GgmlType, w: &[u8], a: &[Q8Block]) -> f32 {
        let bb = ty.block_bytes();
        let mut acc = _mm256_setzero_ps();
        let mut offset_acc = 0.0f32;
        for (i, act) in a.iter().enumerate() {
            let blk = &w[i * bb..(i + 1) * bb];
            // SAFETY: `qs` is 32 readable bytes of the activation block.
            let y = unsafe { _mm256_loadu_si256(act.qs.as_ptr() as *const __m256i) };
            let d = half(blk, 0);
            let (isum, m) = match ty {
                GgmlType::Q4_0 => {
                    // SAFETY: a Q4_0 block is 2 + 16 bytes.
                    let x = _mm256_sub_epi8(unsafe { nibbles(blk.as_ptr().add(2)) }, _mm256_set1_epi8(8));
                    (dot_i8(x, y), 0.0)
                }
                GgmlType::Q4_1 => {
                    // SAFETY: a Q4_1 block is 4 + 16 bytes.
                    (dot_u8_i8(unsafe { nibbles(blk.as_ptr().add(4)) }, y), half(blk, 2))
                }
                GgmlType::Q5_0 => {
                    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    // SAFETY: a Q5_0 block is 2 + 4 + 16 bytes.
                    let lo = unsafe { nibbles(blk.as_ptr().add(6)) };
                    // Where the fifth bit is clear, set the top four: the byte reads as (nibble - 16).
                    let hi = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0xF0u8 as i8));
                    (dot_i8(_mm256_or_si256(lo, hi), y), 0.0)
                }
                GgmlType::Q5_1 => {
                    let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
                    // SAFETY: a Q5_1 block is 4 + 4 + 16 bytes.
                    let lo = unsafe { nibbles(blk.as_ptr().add(8)) };
                    let hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
                    (dot_u8_i8(_mm256_or_si256(lo, hi), y), half(blk, 2))
                }
                _ => {
                    // Q8_0 (the only other type `check` lets through).
                    // SAFETY: a Q8_0 block is 2 + 32 bytes.
                    let x = unsafe { _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i) };
                    (dot_i8(x, y), 0.0)
                }
            };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * act.d), _mm256_cvtepi32_ps(isum), acc);
            offset_acc += m * act.d * act.sum as f32;
        }
        hsum(acc) + offset_acc
    }

    const _: () = assert!(QK == 32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` random blocks of `ty` with sane scales (random bits elsewhere).
    fn random_blocks(ty: GgmlType, n: usize, rng: &mut impl Rng) -> Vec<u8> {
        let bb = ty.block_bytes();
        let mut out = vec![0u8; n * bb];
        rng.fill(out.as_mut_slice());
        for blk in out.chunks_exact_mut(bb) {
            let d = f16::from_f32(rng.random_range(0.001f32..0.05));
            blk[..2].copy_from_slice(&d.to_le_bytes());
            if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                let m = f16::from_f32(rng.random_range(-0.2f32..0.2));
                blk[2..4].copy_from_slice(&m.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn every_kernel_equals_the_integer_reference_and_the_f32_dot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0] {
            for &n in &[1usize, 3, 24] {
                let w = random_blocks(ty, n, &mut rng);
                let x: Vec<f32> = (0..n * QK).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let a = quantize_row_q8(&x).unwrap();
                // The integer part, block by block, against a wide (i64) product of the dequantized integers.
                let bb = ty.block_bytes();
                let mut exact = 0.0f64;
                for (blk, act) in w.chunks_exact(bb).zip(&a) {
                    let (q, d, m) = block_ints(ty, blk).unwrap();
                    let isum: i64 = q.iter().zip(&act.qs).map(|(&x, &y)| x as i64 * y as i64).sum();
                    exact += d as f64 * act.d as f64 * isum as f64 + m as f64 * act.d as f64 * act.sum as f64;
                }
                let portable = vec_dot_portable(ty, &w, &a).unwrap();
                let fast = vec_dot(ty, &w, &a).unwrap();
                let scale = exact.abs().max(1.0);
                assert!((portable as f64 - exact).abs() <= 1e-5 * scale, "{ty:?} portable {portable} vs {exact}");
                assert!((fast as f64 - exact).abs() <= 1e-5 * scale, "{ty:?} kernel {fast} vs {exact}");
                // Against the f32 dot of the dequantized weights with the unquantized activations: only the
                // activations' rounding separates them (half a step of each block's scale per value).
                let deq = crate::quant::dequantize(ty, &w, n * QK).unwrap();
                let f32_dot: f64 = deq.iter().zip(&x).map(|(&u, &v)| u as f64 * v as f64).sum();
                let bound: f64 = a
                    .iter()
                    .enumerate()
                    .map(|(i, act)| {
                        let wabs: f64 = deq[i * QK..(i + 1) * QK].iter().map(|v| v.abs() as f64).sum();
                        0.5 * act.d as f64 * wabs
                    })
                    .sum();
                assert!(
                    (fast as f64 - f32_dot).abs() <= bound + 1e-4,
                    "{ty:?} {fast} vs f32 {f32_dot} (bound {bound})"
                );
            }
        }
    }

    #[test]
    fn wrong_lengths_and_types_are_errors() {
        let a = quantize_row_q8(&[0.5; 32]).unwrap();
        assert!(vec_dot(GgmlType::Q4_0, &[0u8; 17], &a).is_err());
        assert!(vec_dot(GgmlType::Q4K, &[0u8; 144], &a).is_err());
        assert!(quantize_row_q8(&[1.0; 33]).is_err());
        assert_eq!(quantize_row_q8(&[0.0; 32]).unwrap()[0].qs, [0; 32]);
    }
}
