//! Dot products straight on GGUF's quantized blocks (issue #21's first part): weights stay in their ggml block
//! layout, activations are quantized per 32-value block to int8 on the fly ([`quantize_row_q8`]), and each block
//! pair's dot product runs in integers, scaled and accumulated in f32, as ggml's `ggml_vec_dot_*_q8_*` do.
//!
//! Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-value blocks, against [`Q8Block`]s) and the K-quants Q4_K, Q5_K, Q6_K
//! (256-value super-blocks with 6- or 8-bit sub-block scales, against [`Q8KBlock`]s that carry their 16-value
//! sums, as ggml's `block_q8_K`). An AVX2 kernel per type is picked at run time ([`vec_dot`], [`vec_dot_k`]);
//! [`vec_dot_portable`] and [`vec_dot_k_portable`] are the plain-Rust fallbacks and the references the kernels are
//! tested against. [`crate::qmatmul`] runs the 32-value types four rows at a time on its own repacked layout and
//! the K-quants through [`vec_dot_k`].

use half::f16;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

const QK: usize = 32;

/// 32 activations as int8 with their scale (`x ≈ d * q`) and the sum of the `q` (for the types with an offset).
/// As ggml's `block_q8_0`/`block_q8_1`, the scale is kept at f16 precision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8Block {
    pub d: f32,
    pub qs: [i8; QK],
    pub sum: i32,
}

/// Quantizes a row (a multiple of 32 long) to int8 blocks as ggml's AVX2 `quantize_row_q8_0` does:
/// `q = round_ties_even(x * 127 / max|x|)`, `d = max|x| / 127` rounded to f16. Rounding as llama.cpp does keeps
/// our greedy outputs on its at near-ties (issue #21 compares them token for token).
pub fn quantize_row_q8(x: &[f32]) -> Result<Vec<Q8Block>> {
    if !x.len().is_multiple_of(QK) {
        return Err(Error::invalid(format!("row of {} values is not a whole number of {QK}-blocks", x.len())));
    }
    Ok(x.chunks_exact(QK)
        .map(|b| {
            let mut qs = [0i8; QK];
            let d = round_to_int8(b, &mut qs);
            Q8Block { d, qs, sum: qs.iter().map(|&q| q as i32).sum() }
        })
        .collect())
}

/// Rounds `values` to int8 with one scale into `qs`; returns the scale (see [`quantize_row_q8`]).
fn round_to_int8(values: &[f32], qs: &mut [i8]) -> f32 {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(values) {
        *q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    // A scale past f16's range (values above 8e6) stays f32 rather than become infinite.
    Some(f16::from_f32(d)).filter(|h| h.is_finite()).map_or(d, f16::to_f32)
}

/// Rounds `values` to int8 as ggml's `quantize_row_q8_K`: the scale from the signed value of largest magnitude
/// (`q = round_ties_even(-127 x / max)`, at most 127; `d = -max / 127`, negative when `max` is), kept f32.
fn round_to_int8_k(values: &[f32], qs: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in values {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        qs.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, v) in qs.iter_mut().zip(values) {
        *q = (iscale * v).round_ties_even().min(127.0) as i8;
    }
    1.0 / iscale
}

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// 256 activations as int8 with their scale and the sums of each 16 of them (ggml's `block_q8_K`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8KBlock {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

/// Quantizes a row (a multiple of 256 long) to [`Q8KBlock`]s as ggml's `quantize_row_q8_K` does.
pub fn quantize_row_q8k(x: &[f32]) -> Result<Vec<Q8KBlock>> {
    if !x.len().is_multiple_of(QK_K) {
        return Err(Error::invalid(format!("row of {} values is not a whole number of {QK_K}-blocks", x.len())));
    }
    Ok(x.chunks_exact(QK_K)
        .map(|b| {
            let mut blk = Q8KBlock { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
            blk.d = round_to_int8_k(b, &mut blk.qs);
            for (sum, qs) in blk.bsums.iter_mut().zip(blk.qs.chunks_exact(16)) {
                *sum = qs.iter().map(|&q| q as i16).sum();
            }
            blk
        })
        .collect())
}

/// The integer weights of one K-quant super-block and, per 16 values, the scale and offset that map them back:
/// `w[j] = scale[j / 16] * q[j] + offset[j / 16]`.
pub fn kblock_ints(ty: GgmlType, b: &[u8]) -> Result<([i32; QK_K], [f32; 16], [f32; 16])> {
    let mut q = [0i32; QK_K];
    let mut scale = [0f32; 16];
    let mut offset = [0f32; 16];
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let sm = scales_mins_k4(&b[4..16]);
            let (qh, qs) = if ty == GgmlType::Q5K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            for p in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * p + l];
                    let bit = |s: usize| qh.map_or(0, |h| (((h[l] >> s) & 1) as i32) << 4);
                    q[64 * p + l] = (byte & 0x0F) as i32 | bit(2 * p);
                    q[64 * p + 32 + l] = (byte >> 4) as i32 | bit(2 * p + 1);
                }
            }
            for g in 0..16 {
                let (sc, m) = sm[g / 2];
                scale[g] = d * sc as f32;
                offset[g] = -dmin * m as f32;
            }
        }
        GgmlType::Q6K => {
            let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
            let d = half(b, 208);
            for n in 0..2 {
                for l in 0..32 {
                    let (l0, l1, h) = (ql[64 * n + l], ql[64 * n + l + 32], qh[32 * n + l]);
                    let base = 128 * n + l;
                    q[base] = ((l0 & 0x0F) | ((h & 3) << 4)) as i32 - 32;
                    q[base + 32] = ((l1 & 0x0F) | (((h >> 2) & 3) << 4)) as i32 - 32;
                    q[base + 64] = ((l0 >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
                    q[base + 96] = ((l1 >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32;
                }
            }
            for g in 0..16 {
                scale[g] = d * (sc[g] as i8) as f32;
            }
        }
        other => return Err(Error::unsupported(format!("K-quant dot product for {other:?}"))),
    }
    Ok((q, scale, offset))
}

/// The eight 6-bit (scale, min) pairs packed into a Q4_K/Q5_K block's 12 bytes.
fn scales_mins_k4(s: &[u8]) -> [(u8, u8); 8] {
    std::array::from_fn(|j| {
        if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
        }
    })
}

/// `ty`'s block size in bytes, if `ty` is of the family asked for (the K-quants or the 32-value types) and `w`
/// holds `blocks` of it.
fn check(ty: GgmlType, w: &[u8], blocks: usize, k_quant: bool) -> Result<usize> {
    let family = if k_quant {
        matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
    } else {
        matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0)
    };
    if !family {
        let what = if k_quant { "K-quant dot product" } else { "quantized dot product" };
        return Err(Error::unsupported(format!("{what} for {ty:?}")));
    }
    let bb = ty.block_bytes();
    if w.len() != blocks * bb {
        return Err(Error::invalid(format!("{} weight bytes for {blocks} activation blocks of {ty:?}", w.len())));
    }
    Ok(bb)
}

/// The dot product of a row of K-quant blocks with [`Q8KBlock`]s in plain Rust (per 16 values the exact integer
/// sum, then scaled), the reference for [`vec_dot_k`].
pub fn vec_dot_k_portable(ty: GgmlType, w: &[u8], a: &[Q8KBlock]) -> Result<f32> {
    let bb = check(ty, w, a.len(), true)?;
    let mut acc = 0.0f32;
    for (blk, act) in w.chunks_exact(bb).zip(a) {
        let (q, scale, offset) = kblock_ints(ty, blk)?;
        for g in 0..16 {
            let isum: i32 = (16 * g..16 * g + 16).map(|j| q[j] * act.qs[j] as i32).sum();
            acc += act.d * (scale[g] * isum as f32 + offset[g] * act.bsums[g] as f32);
        }
    }
    Ok(acc)
}

/// [`vec_dot_k_portable`] with the AVX2 kernel where the CPU has AVX2 and FMA.
pub fn vec_dot_k(ty: GgmlType, w: &[u8], a: &[Q8KBlock]) -> Result<f32> {
    check(ty, w, a.len(), true)?;
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu_gemm::available() {
            // SAFETY: AVX2 and FMA were detected just above; `check_k` made the slices agree in length.
            return Ok(unsafe { avx2::vec_dot_k(ty, w, a) });
        }
    }
    vec_dot_k_portable(ty, w, a)
}

/// [`vec_dot_k`] without the checks, for callers that made them once per matrix.
///
/// # Safety
/// `ty` is a K-quant, `w.len() == a.len() * ty.block_bytes()`, and if the CPU lacks AVX2 and FMA this runs the
/// portable code (which checks again).
pub(crate) unsafe fn vec_dot_k_unchecked(ty: GgmlType, w: &[u8], a: &[Q8KBlock]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu_gemm::available() {
            // SAFETY: as this function's contract.
            return unsafe { avx2::vec_dot_k(ty, w, a) };
        }
    }
    vec_dot_k_portable(ty, w, a).unwrap_or(0.0)
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

/// The dot product of a row of `ty` blocks with quantized activations, in plain Rust: per block the exact integer
/// sum `Σ q_w q_a`, then `d_w d_a Σ + m d_a Σ q_a`.
pub fn vec_dot_portable(ty: GgmlType, w: &[u8], a: &[Q8Block]) -> Result<f32> {
    let bb = check(ty, w, a.len(), false)?;
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
    check(ty, w, a.len(), false)?;
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
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{half, Q8Block, Q8KBlock, QK};
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
    pub(crate) fn bits_to_bytes(bits: u32) -> __m256i {
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

    #[target_feature(enable = "avx2")]
    fn sum_i32(v: __m256i) -> i32 {
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` is 32 writable bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, v) };
        lanes.iter().sum()
    }

    /// # Safety
    /// AVX2 and FMA must be available; `ty` is Q4_K, Q5_K or Q6_K and `w` holds `a.len()` blocks of it.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn vec_dot_k(ty: GgmlType, w: &[u8], a: &[Q8KBlock]) -> f32 {
        let bb = ty.block_bytes();
        let low4 = _mm256_set1_epi8(0x0F);
        let mut acc = 0.0f32;
        for (i, act) in a.iter().enumerate() {
            let blk = &w[i * bb..(i + 1) * bb];
            // Memory-bound at batch 1: ask for the blocks 2 KB ahead (a hint; past the end is harmless).
            for line in 0..bb.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(2048 + 64 * line) as *const i8);
            }
            let y = act.qs.as_ptr();
            let mut isum = _mm256_setzero_si256();
            // `isum` collects Σ scale_g Σ q y; the block's value is then scaled, less what the mins (or Q6_K's
            // offset of 32) take away.
            acc += act.d
                * match ty {
                    GgmlType::Q4K | GgmlType::Q5K => {
                        let sm = super::scales_mins_k4(&blk[4..16]);
                        let q5 = ty == GgmlType::Q5K;
                        let qs = if q5 { &blk[48..176] } else { &blk[16..144] };
                        // SAFETY: a Q5_K block holds 32 bytes of fifth bits at 16..48.
                        let mut qh = if q5 {
                            unsafe { _mm256_loadu_si256(blk.as_ptr().add(16) as *const __m256i) }
                        } else {
                            _mm256_setzero_si256()
                        };
                        for p in 0..4 {
                            // SAFETY: qs holds 128 bytes, y 256.
                            let (q, y0, y1) = unsafe {
                                (
                                    _mm256_loadu_si256(qs.as_ptr().add(32 * p) as *const __m256i),
                                    _mm256_loadu_si256(y.add(64 * p) as *const __m256i),
                                    _mm256_loadu_si256(y.add(64 * p + 32) as *const __m256i),
                                )
                            };
                            let mut lo = _mm256_and_si256(q, low4);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
                            if q5 {
                                // Bit 2p of each qh byte is the fifth bit of the low nibbles, bit 2p + 1 of the high.
                                let bit = _mm256_set1_epi8(0x10);
                                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit));
                                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), bit));
                                qh = _mm256_srli_epi16(qh, 2);
                            }
                            let s0 = _mm256_set1_epi16(sm[2 * p].0 as i16);
                            let s1 = _mm256_set1_epi16(sm[2 * p + 1].0 as i16);
                            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), s0));
                            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), s1));
                        }
                        let mins: i32 = (0..8)
                            .map(|j| sm[j].1 as i32 * (act.bsums[2 * j] as i32 + act.bsums[2 * j + 1] as i32))
                            .sum();
                        half(blk, 0) * sum_i32(isum) as f32 - half(blk, 2) * mins as f32
                    }
                    _ => {
                        // Q6_K: 6-bit unsigned values (stored + 32), one signed 8-bit scale per 16.
                        let sc = &blk[192..208];
                        for n in 0..2 {
                            // SAFETY: ql is 128 bytes at 0, qh 64 at 128; y holds 256.
                            let (ql0, ql1, qh) = unsafe {
                                (
                                    _mm256_loadu_si256(blk.as_ptr().add(64 * n) as *const __m256i),
                                    _mm256_loadu_si256(blk.as_ptr().add(64 * n + 32) as *const __m256i),
                                    _mm256_loadu_si256(blk.as_ptr().add(128 + 32 * n) as *const __m256i),
                                )
                            };
                            let q = [
                                _mm256_or_si256(
                                    _mm256_and_si256(ql0, low4),
                                    _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), 4),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(ql1, low4),
                                    _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C)), 2),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                                    _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30)),
                                ),
                            ];
                            for (j, qj) in q.iter().enumerate() {
                                let g = 8 * n + 2 * j;
                                // SAFETY: 32 bytes of y at 128n + 32j < 256.
                                let yj = unsafe { _mm256_loadu_si256(y.add(128 * n + 32 * j) as *const __m256i) };
                                let s = _mm256_set_m128i(
                                    _mm_set1_epi16(sc[g + 1] as i8 as i16),
                                    _mm_set1_epi16(sc[g] as i8 as i16),
                                );
                                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(*qj, yj), s));
                            }
                        }
                        let sub: i32 = (0..16).map(|g| sc[g] as i8 as i32 * act.bsums[g] as i32).sum();
                        half(blk, 208) * (sum_i32(isum) - 32 * sub) as f32
                    }
                };
        }
        acc
    }

    const _: () = assert!(QK == 32);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` random blocks of `ty` with sane scales (random bits elsewhere): every block type's kernels and matrices
    /// are tested on these.
    pub(crate) fn random_blocks(ty: GgmlType, n: usize, rng: &mut impl Rng) -> Vec<u8> {
        let bb = ty.block_bytes();
        let mut out = vec![0u8; n * bb];
        rng.fill(out.as_mut_slice());
        for blk in out.chunks_exact_mut(bb) {
            match ty {
                GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
                    let d = f16::from_f32(rng.random_range(0.0005f32..0.004)).to_le_bytes();
                    if ty == GgmlType::Q6K {
                        blk[208..210].copy_from_slice(&d);
                    } else {
                        blk[..2].copy_from_slice(&d);
                        blk[2..4].copy_from_slice(&f16::from_f32(rng.random_range(0.0f32..0.004)).to_le_bytes());
                    }
                }
                _ => {
                    let d = f16::from_f32(rng.random_range(0.001f32..0.05));
                    blk[..2].copy_from_slice(&d.to_le_bytes());
                    if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                        let m = f16::from_f32(rng.random_range(-0.2f32..0.2));
                        blk[2..4].copy_from_slice(&m.to_le_bytes());
                    }
                }
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
                // activations' rounding separates them (half a step of each block's scale per value, and the
                // scale's own rounding to f16, at most 127 * 2^-11 of it).
                let deq = crate::quant::dequantize(ty, &w, n * QK).unwrap();
                let f32_dot: f64 = deq.iter().zip(&x).map(|(&u, &v)| u as f64 * v as f64).sum();
                let bound: f64 = a
                    .iter()
                    .enumerate()
                    .map(|(i, act)| {
                        let wabs: f64 = deq[i * QK..(i + 1) * QK].iter().map(|v| v.abs() as f64).sum();
                        (0.5 + 127.0 / 2048.0) * act.d as f64 * wabs
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
    fn k_quant_kernels_equal_the_integer_reference_and_the_f32_dot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(22);
        for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
            for &n in &[1usize, 2, 19] {
                let w = random_blocks(ty, n, &mut rng);
                let x: Vec<f32> = (0..n * QK_K).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let a = quantize_row_q8k(&x).unwrap();
                let bb = ty.block_bytes();
                // The integer reference agrees with the dequantizer on every weight.
                let deq = crate::quant::dequantize(ty, &w, n * QK_K).unwrap();
                let mut exact = 0.0f64;
                for (i, (blk, act)) in w.chunks_exact(bb).zip(&a).enumerate() {
                    let (q, scale, offset) = kblock_ints(ty, blk).unwrap();
                    for j in 0..QK_K {
                        let wj = scale[j / 16] * q[j] as f32 + offset[j / 16];
                        assert!((wj - deq[i * QK_K + j]).abs() <= 1e-6 * (1.0 + wj.abs()), "{ty:?} weight {j}");
                    }
                    for g in 0..16 {
                        let isum: i64 = (16 * g..16 * g + 16).map(|j| q[j] as i64 * act.qs[j] as i64).sum();
                        exact +=
                            act.d as f64 * (scale[g] as f64 * isum as f64 + offset[g] as f64 * act.bsums[g] as f64);
                    }
                    let sums: Vec<i16> = act.qs.chunks(16).map(|c| c.iter().map(|&v| v as i16).sum()).collect();
                    assert_eq!(sums, act.bsums);
                }
                let portable = vec_dot_k_portable(ty, &w, &a).unwrap();
                let fast = vec_dot_k(ty, &w, &a).unwrap();
                let scale = exact.abs().max(1.0);
                assert!((portable as f64 - exact).abs() <= 1e-5 * scale, "{ty:?} portable {portable} vs {exact}");
                assert!((fast as f64 - exact).abs() <= 1e-5 * scale, "{ty:?} kernel {fast} vs {exact}");
                let f32_dot: f64 = deq.iter().zip(&x).map(|(&u, &v)| u as f64 * v as f64).sum();
                let bound: f64 = a
                    .iter()
                    .enumerate()
                    .map(|(i, act)| {
                        // The scale is negative when the largest value is positive (ggml's sign convention).
                        0.5 * act.d.abs() as f64
                            * deq[i * QK_K..(i + 1) * QK_K].iter().map(|v| v.abs() as f64).sum::<f64>()
                    })
                    .sum();
                assert!(
                    (fast as f64 - f32_dot).abs() <= bound + 1e-4,
                    "{ty:?} {fast} vs f32 {f32_dot} (bound {bound})"
                );
            }
        }
        assert!(vec_dot_k(GgmlType::Q4_0, &[0u8; 18], &quantize_row_q8k(&[0.0; 256]).unwrap()).is_err());
        assert!(quantize_row_q8k(&[0.0; 255]).is_err());
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
