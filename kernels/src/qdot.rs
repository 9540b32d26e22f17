//! Dot products straight on GGUF's quantized blocks (issue #21's first part): weights stay in their ggml block
//! layout, activations are quantized per 32-value block to int8 on the fly ([`quantize_row_q8`]), and each block
//! pair's dot product runs in integers, scaled and accumulated in f32 in the order of ggml's AVX2
//! `ggml_vec_dot_*_q8_*`, so each result equals llama.cpp's to the bit.
//!
//! Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-value blocks, against [`Q8Block`]s) and the K-quants Q4_K, Q5_K, Q6_K
//! (256-value super-blocks with 6- or 8-bit sub-block scales, against [`Q8KBlock`]s that carry their 16-value
//! sums, as ggml's `block_q8_K`), whose per-block sums llama.cpp combines in one of several orders by type and
//! batch size ([`KOrder`]). An AVX2 kernel per type is picked at run time ([`vec_dot`], [`vec_dot_k`]);
//! [`vec_dot_portable`] and [`vec_dot_k_portable`] are the plain-Rust fallbacks and the references the kernels are
//! tested against, bit for bit. [`crate::qmatmul`] runs the 32-value types eight or sixteen rows at a time on its
//! own repacked layout and the K-quants through [`vec_dot_k`].

use half::f16;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

const QK: usize = 32;

/// 32 activations as int8 with their scale (`x ≈ d * q`) and, for the types with an offset, `s = d Σ q`. As
/// ggml's `block_q8_1`, both are kept at f16 precision, and `s` is computed from the scale before its rounding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8Block {
    pub d: f32,
    pub qs: [i8; QK],
    pub s: f32,
}

/// Quantizes a row (a multiple of 32 long) to int8 blocks as ggml's AVX2 `quantize_row_q8_0` does:
/// `q = round_ties_even(x * 127 / max|x|)`, `d = max|x| / 127` rounded to f16. Rounding as llama.cpp does keeps
/// our greedy outputs on its at near-ties (issue #21 compares them token for token).
pub fn quantize_row_q8(x: &[f32]) -> Result<Vec<Q8Block>> {
    if !x.len().is_multiple_of(QK) {
        return Err(Error::invalid(format!("row of {} values is not a whole number of {QK}-blocks", x.len())));
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_gemm::available() {
        // SAFETY: AVX2 and FMA were detected just above; every chunk is 32 values.
        return Ok(x.chunks_exact(QK).map(|b| unsafe { avx2::quantize_block(b) }).collect());
    }
    Ok(x.chunks_exact(QK).map(quantize_block).collect())
}

/// One block of [`quantize_row_q8`] in plain Rust (the reference for the AVX2 version).
fn quantize_block(b: &[f32]) -> Q8Block {
    let mut qs = [0i8; QK];
    let (d, exact) = round_to_int8(b, &mut qs);
    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
    Q8Block { d, qs, s: to_f16_precision(exact * sum as f32) }
}

/// Rounds `values` to int8 with one scale into `qs`; returns the scale at f16 precision and as computed (see
/// [`quantize_row_q8`]).
fn round_to_int8(values: &[f32], qs: &mut [i8]) -> (f32, f32) {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(values) {
        *q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    (to_f16_precision(d), d)
}

/// `v` rounded to the nearest f16 (ties to even, as F16C's conversion); a value past f16's range (activations
/// above 8e6) stays f32 rather than become infinite.
fn to_f16_precision(v: f32) -> f32 {
    Some(f16::from_f32(v)).filter(|h| h.is_finite()).map_or(v, f16::to_f32)
}

/// The sum of eight partial sums in the tree of ggml's `hsum_float_8` (the 128-bit halves added lane by lane,
/// then pairs): the last step of every 32-value dot product, so a result equals llama.cpp's to the bit.
#[inline]
pub(crate) fn hsum_tree(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
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
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.1") {
        // SAFETY: SSE4.1 was detected just above.
        unsafe { round_scaled_sse41(iscale, values, qs) };
        return 1.0 / iscale;
    }
    round_scaled(iscale, values, qs);
    1.0 / iscale
}

/// `q = min(round_ties_even(s v), 127)`.
#[inline(always)]
fn round_scaled(iscale: f32, values: &[f32], qs: &mut [i8]) {
    for (q, v) in qs.iter_mut().zip(values) {
        *q = (iscale * v).round_ties_even().min(127.0) as i8;
    }
}

/// [`round_scaled`] where rounding is one instruction (`roundss`) rather than a call into libm.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1")]
fn round_scaled_sse41(iscale: f32, values: &[f32], qs: &mut [i8]) {
    round_scaled(iscale, values, qs);
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

/// A Q4_K or Q6_K block in the integers the AVX-512 prompt kernel multiplies ([`crate::qmatmul`]): the 256
/// weights unsigned (Q4_K's `q`, Q6_K's `q + 32`), the sub-blocks' scales (Q4_K: eight of 32 values; Q6_K:
/// sixteen of 16, signed), Q4_K's eight mins, and the block's `d` and `dmin` (0 for Q6_K).
pub(crate) struct KUnpacked {
    pub q: [u8; QK_K],
    pub scales: [i32; 16],
    pub mins: [i32; 8],
    pub d: f32,
    pub dmin: f32,
}

pub(crate) fn kblock_unpacked(ty: GgmlType, b: &[u8]) -> Result<KUnpacked> {
    let (ints, _, _) = kblock_ints(ty, b)?;
    let mut out = KUnpacked { q: [0; QK_K], scales: [0; 16], mins: [0; 8], d: 0.0, dmin: 0.0 };
    match ty {
        GgmlType::Q4K => {
            for (o, &v) in out.q.iter_mut().zip(&ints) {
                *o = v as u8;
            }
            for (j, (sc, m)) in scales_mins_k4(&b[4..16]).into_iter().enumerate() {
                (out.scales[j], out.mins[j]) = (sc as i32, m as i32);
            }
            (out.d, out.dmin) = (half(b, 0), half(b, 2));
        }
        GgmlType::Q6K => {
            for (o, &v) in out.q.iter_mut().zip(&ints) {
                *o = (v + 32) as u8;
            }
            for (o, &sc) in out.scales.iter_mut().zip(&b[192..208]) {
                *o = sc as i8 as i32;
            }
            out.d = half(b, 208);
        }
        other => return Err(Error::unsupported(format!("unpacked K-quant block for {other:?}"))),
    }
    Ok(out)
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

/// How a K-quant row's super-blocks are combined, after each block's exact integer sums: as llama.cpp's CPU
/// backend does for that type and batch size, so results equal its to the bit (see [`crate::ggml_ops`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KOrder {
    /// `ggml_vec_dot_*_q8_K` (Q6_K below eight activation rows): eight partial sums, lane `k` taking values
    /// `4k..4k + 4` of each 32 (less the offset's share), times `d_w d_a` in one fused multiply-add per block,
    /// then `hsum_float_8`.
    Lanes,
    /// The tiled K-quant product (Q6_K, Q5_K from eight rows): per block
    /// `fma(d_w Σ - dmin Σ_min, d_a, acc)` (the first product rounded, the difference fused).
    Chain,
    /// The repacked Q4_K 8x8 kernels: the scales' and the mins' parts in two chains, `fma(Σ, d_w d_a, a)` and
    /// `fma(Σ_min, dmin d_a, m)`, then `a - m`; per block (`ggml_gemv_q4_K_8x8_q8_K`, the rows past the last
    /// whole four) ...
    Split,
    /// ... or per 64 values (`ggml_gemm_q4_K_8x8_q8_K`, the rows in whole fours).
    Split64,
}

impl KOrder {
    /// llama.cpp's order (its AVX2 build) for `ty` at activation row `row` of a product with `rows` of them.
    /// Q5_K's follows the tiled product from eight rows and is otherwise an approximation: no model we test has
    /// Q5_K tensors.
    pub fn of(ty: GgmlType, rows: usize, row: usize) -> Self {
        match ty {
            GgmlType::Q6K if rows < 8 => Self::Lanes,
            GgmlType::Q6K | GgmlType::Q5K if rows >= 8 => Self::Chain,
            _ if row < rows - rows % 4 => Self::Split64,
            _ => Self::Split,
        }
    }
}

/// A super-block's integer sums against one activation block: per lane (as [`KOrder::Lanes`] groups them) the
/// scaled products less the offset's share, their total, the mins' total `Σ m_j Σ q_a` (Q4_K, Q5_K), and the
/// scaled products and mins per 64 values ([`KOrder::Split64`]).
struct KSums {
    lanes: [i32; 8],
    total: i32,
    mins: i32,
    parts: [(i32, i32); 4],
}

fn kblock_sums(ty: GgmlType, blk: &[u8], act: &Q8KBlock) -> Result<KSums> {
    let (q, _, _) = kblock_ints(ty, blk)?;
    let mut lanes = [0i32; 8];
    let mut mins = 0i32;
    let mut parts = [(0i32, 0i32); 4];
    match ty {
        GgmlType::Q6K => {
            let sc = &blk[192..208];
            for (j, (&qj, &y)) in q.iter().zip(&act.qs).enumerate() {
                // kblock_ints gives q - 32: the lanes hold the unsigned values' products less 32 Σ q_a.
                lanes[j % 32 / 4] += sc[j / 16] as i8 as i32 * (qj + 32) * y as i32;
            }
            for (k, lane) in lanes.iter_mut().enumerate() {
                *lane -= 32
                    * (act.bsums[2 * k] as i32 * sc[2 * k] as i8 as i32
                        + act.bsums[2 * k + 1] as i32 * sc[2 * k + 1] as i8 as i32);
            }
        }
        _ => {
            let sm = scales_mins_k4(&blk[4..16]);
            for (j, (&qj, &y)) in q.iter().zip(&act.qs).enumerate() {
                let v = sm[j / 32].0 as i32 * qj * y as i32;
                lanes[j % 32 / 4] += v;
                parts[j / 64].0 += v;
            }
            for j in 0..8 {
                let m = sm[j].1 as i32 * (act.bsums[2 * j] as i32 + act.bsums[2 * j + 1] as i32);
                mins += m;
                parts[j / 2].1 += m;
            }
        }
    }
    Ok(KSums { lanes, total: lanes.iter().sum(), mins, parts })
}

/// The f32 parts of a K-quant block: its scale and its mins' scale (0 for Q6_K).
fn kblock_scales(ty: GgmlType, blk: &[u8]) -> (f32, f32) {
    if ty == GgmlType::Q6K {
        (half(blk, 208), 0.0)
    } else {
        (half(blk, 0), half(blk, 2))
    }
}

/// Folds a row's per-block sums in `order` (see [`KOrder`]).
#[derive(Default)]
struct KFold {
    lanes: [f32; 8],
    acc: f32,
    mins: f32,
}

impl KFold {
    /// Adds a block's sums (`lanes` only read for [`KOrder::Lanes`]; for [`KOrder::Split64`] call once per 64
    /// values with their sums as `total` and `mins`).
    #[inline]
    fn add(&mut self, order: KOrder, lanes: &[i32; 8], (total, mins): (i32, i32), (d, dmin): (f32, f32), da: f32) {
        match order {
            KOrder::Lanes => {
                let dd = da * d;
                for (a, &l) in self.lanes.iter_mut().zip(lanes) {
                    *a = dd.mul_add(l as f32, *a);
                }
            }
            KOrder::Chain => self.acc = (-dmin).mul_add(mins as f32, d * total as f32).mul_add(da, self.acc),
            KOrder::Split | KOrder::Split64 => {
                self.acc = (total as f32).mul_add(d * da, self.acc);
                self.mins = (mins as f32).mul_add(dmin * da, self.mins);
            }
        }
    }

    fn finish(&self, order: KOrder) -> f32 {
        match order {
            KOrder::Lanes => hsum_tree(self.lanes),
            KOrder::Chain => self.acc,
            KOrder::Split | KOrder::Split64 => self.acc - self.mins,
        }
    }
}

/// The dot product of a row of K-quant blocks with [`Q8KBlock`]s in plain Rust, combined in `order`: the
/// reference for [`vec_dot_k`].
pub fn vec_dot_k_portable(ty: GgmlType, w: &[u8], a: &[Q8KBlock], order: KOrder) -> Result<f32> {
    let bb = check(ty, w, a.len(), true)?;
    let mut fold = KFold::default();
    for (blk, act) in w.chunks_exact(bb).zip(a) {
        let sums = kblock_sums(ty, blk, act)?;
        let scales = kblock_scales(ty, blk);
        if order == KOrder::Split64 {
            for &part in &sums.parts {
                fold.add(order, &sums.lanes, part, scales, act.d);
            }
        } else {
            fold.add(order, &sums.lanes, (sums.total, sums.mins), scales, act.d);
        }
    }
    Ok(fold.finish(order))
}

/// [`vec_dot_k_portable`] with the AVX2 kernel where the CPU has AVX2 and FMA.
pub fn vec_dot_k(ty: GgmlType, w: &[u8], a: &[Q8KBlock], order: KOrder) -> Result<f32> {
    check(ty, w, a.len(), true)?;
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu_gemm::available() {
            // SAFETY: AVX2 and FMA were detected just above; `check` made the slices agree in length.
            return Ok(unsafe { avx2::vec_dot_k(ty, w, a, order) });
        }
    }
    vec_dot_k_portable(ty, w, a, order)
}

/// [`vec_dot_k`] for one row of blocks against up to four activation rows (each in its order) without the checks,
/// for callers that made them once per matrix: the block's weights are unpacked once for all of them.
///
/// # Safety
/// `ty` is a K-quant, `w.len() == a[r].len() * ty.block_bytes()` for every row, `a`, `orders` and `out` have the
/// same length (at most 4), and if the CPU lacks AVX2 and FMA this runs the portable code (which checks again).
pub(crate) unsafe fn vec_dot_k_rows_unchecked(
    ty: GgmlType,
    w: &[u8],
    a: &[&[Q8KBlock]],
    orders: &[KOrder],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu_gemm::available() {
            // SAFETY: as this function's contract.
            return unsafe { avx2::vec_dot_k_rows(ty, w, a, orders, out) };
        }
    }
    for ((o, act), &order) in out.iter_mut().zip(a).zip(orders) {
        *o = vec_dot_k_portable(ty, w, act, order).unwrap_or(0.0);
    }
}

/// The f16 at `b[at..at + 2]` as f32 (exact), inlined: the `half` crate's conversion is a call with a CPU
/// feature check, paid per block in the K-quant kernels.
#[inline]
fn half(b: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([b[at], b[at + 1]]) as u32;
    let sign = (h & 0x8000) << 16;
    let (exp, man) = ((h >> 10) & 0x1f, h & 0x3ff);
    let magnitude = match exp {
        // Zero and subnormals: man * 2^-24.
        0 => man as f32 * f32::from_bits(0x3380_0000),
        31 => f32::from_bits(0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(((exp + 112) << 23) | (man << 13)),
    };
    f32::from_bits(magnitude.to_bits() | sign)
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

/// The dot product of a row of `ty` blocks with quantized activations, in plain Rust and in the order of ggml's
/// AVX2 `ggml_vec_dot_*_q8_*`: eight partial sums, sum `j` taking each block's exact integer sum over values
/// `4j..4j + 4` times `d_w d_a` (one fused multiply-add per block), added up by [`hsum_tree`]; then the mins' part,
/// `Σ m s_a`, summed block by block.
pub fn vec_dot_portable(ty: GgmlType, w: &[u8], a: &[Q8Block]) -> Result<f32> {
    let bb = check(ty, w, a.len(), false)?;
    let mut lanes = [0f32; 8];
    let mut mins = 0.0f32;
    for (blk, act) in w.chunks_exact(bb).zip(a) {
        let (q, d, m) = block_ints(ty, blk)?;
        let dd = d * act.d;
        for (j, lane) in lanes.iter_mut().enumerate() {
            let isum: i32 = (4 * j..4 * j + 4).map(|t| q[t] * act.qs[t] as i32).sum();
            *lane = dd.mul_add(isum as f32, *lane);
        }
        mins = min_term(m, act.s, mins);
    }
    Ok(hsum_tree(lanes) + mins)
}

/// `acc + m s` in one rounding, as ggml's 32-value kernels add a block's min term (`summs += m * s`, which its
/// compiler fuses: the unfused sum differs in the last bit).
#[inline]
pub(crate) fn min_term(m: f32, s: f32, acc: f32) -> f32 {
    m.mul_add(s, acc)
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

    use super::{half, KFold, KOrder, Q8Block, Q8KBlock, QK};
    use crate::quant::GgmlType;

    /// [`super::quantize_block`] with AVX2, as ggml's `quantize_row_q8_1`: the same values.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `x` holds 32 values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_block(x: &[f32]) -> Q8Block {
        assert!(x.len() == QK);
        // SAFETY: 32 readable f32 (asserted).
        let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
        let sign = _mm256_set1_ps(-0.0);
        let abs = |v: __m256| _mm256_andnot_ps(sign, v);
        let m = _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), _mm256_max_ps(abs(v[2]), abs(v[3])));
        let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        let d = amax / 127.0;
        let inv = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                v[i], inv,
            )))
        });
        let total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        // Pack to bytes (saturating: |q| <= 127 anyway) and undo the packs' lane interleaving.
        let p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut out = Q8Block { d: super::to_f16_precision(d), qs: [0; QK], s: 0.0 };
        // SAFETY: `qs` is 32 writable bytes.
        unsafe { _mm256_storeu_si256(out.qs.as_mut_ptr() as *mut __m256i, p) };
        out.s = super::to_f16_precision(d * sum_i32(total) as f32);
        out
    }

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

    /// `hsum_float_8`: the 128-bit halves added lane by lane, then pairs ([`super::hsum_tree`] in one register).
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn hsum(v: __m256) -> f32 {
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
        let mut mins = 0.0f32;
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
            mins = super::min_term(m, act.s, mins);
        }
        hsum(acc) + mins
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
    pub(super) unsafe fn vec_dot_k(ty: GgmlType, w: &[u8], a: &[Q8KBlock], order: KOrder) -> f32 {
        let mut out = [0f32];
        // SAFETY: as this function's contract, for one activation row.
        unsafe { vec_dot_k_rows(ty, w, &[a], &[order], &mut out) };
        out[0]
    }

    /// One row of K-quant blocks against up to four activation rows (`a[r]`, combined in `orders[r]`): each
    /// block's weights are unpacked once for all of them. Row by row the same arithmetic as one at a time.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `ty` is Q4_K, Q5_K or Q6_K; `w` holds `n` blocks of it and every `a[r]`
    /// `n`; `a`, `orders` and `out` have the same length, at most 4.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn vec_dot_k_rows(ty: GgmlType, w: &[u8], a: &[&[Q8KBlock]], orders: &[KOrder], out: &mut [f32]) {
        let bb = ty.block_bytes();
        let rows = a.len();
        assert!(rows <= 4 && orders.len() == rows && out.len() == rows);
        let nb = w.len() / bb;
        assert!(a.iter().all(|r| r.len() == nb));
        let low4 = _mm256_set1_epi8(0x0F);
        let mut folds: [KFold; 4] = Default::default();
        let mut lanes_acc = [_mm256_setzero_ps(); 4];
        for i in 0..nb {
            let blk = &w[i * bb..(i + 1) * bb];
            // Memory-bound at batch 1: ask for the blocks 2 KB ahead (a hint; past the end is harmless).
            for line in 0..bb.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(2048 + 64 * line) as *const i8);
            }
            // The block's 256 weights as eight registers of 32 (chunk c: values 32c..32c + 32, unsigned), and
            // what multiplies each chunk's 16-bit pair sums: its sub-block scale (per 16 values for Q6_K).
            let mut wq = [_mm256_setzero_si256(); 8];
            let mut ws = [_mm256_setzero_si256(); 8];
            let mut sm = [(0u8, 0u8); 8];
            match ty {
                GgmlType::Q4K | GgmlType::Q5K => {
                    sm = super::scales_mins_k4(&blk[4..16]);
                    let q5 = ty == GgmlType::Q5K;
                    let qs = if q5 { &blk[48..176] } else { &blk[16..144] };
                    // SAFETY: a Q5_K block holds 32 bytes of fifth bits at 16..48.
                    let mut qh = if q5 {
                        unsafe { _mm256_loadu_si256(blk.as_ptr().add(16) as *const __m256i) }
                    } else {
                        _mm256_setzero_si256()
                    };
                    for p in 0..4 {
                        // SAFETY: qs holds 128 bytes.
                        let q = unsafe { _mm256_loadu_si256(qs.as_ptr().add(32 * p) as *const __m256i) };
                        let mut lo = _mm256_and_si256(q, low4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
                        if q5 {
                            // Bit 2p of each qh byte is the fifth bit of the low nibbles, bit 2p + 1 of the high.
                            let bit = _mm256_set1_epi8(0x10);
                            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit));
                            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), bit));
                            qh = _mm256_srli_epi16(qh, 2);
                        }
                        (wq[2 * p], wq[2 * p + 1]) = (lo, hi);
                        ws[2 * p] = _mm256_set1_epi16(sm[2 * p].0 as i16);
                        ws[2 * p + 1] = _mm256_set1_epi16(sm[2 * p + 1].0 as i16);
                    }
                }
                _ => {
                    // Q6_K: 6-bit unsigned values (stored + 32), one signed 8-bit scale per 16.
                    let sc = &blk[192..208];
                    for n in 0..2 {
                        // SAFETY: ql is 128 bytes at 0, qh 64 at 128.
                        let (ql0, ql1, qh) = unsafe {
                            (
                                _mm256_loadu_si256(blk.as_ptr().add(64 * n) as *const __m256i),
                                _mm256_loadu_si256(blk.as_ptr().add(64 * n + 32) as *const __m256i),
                                _mm256_loadu_si256(blk.as_ptr().add(128 + 32 * n) as *const __m256i),
                            )
                        };
                        wq[4 * n] = _mm256_or_si256(
                            _mm256_and_si256(ql0, low4),
                            _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), 4),
                        );
                        wq[4 * n + 1] = _mm256_or_si256(
                            _mm256_and_si256(ql1, low4),
                            _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C)), 2),
                        );
                        wq[4 * n + 2] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                            _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                        );
                        wq[4 * n + 3] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                            _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30)),
                        );
                    }
                    for (c, s) in ws.iter_mut().enumerate() {
                        *s = _mm256_set_m128i(
                            _mm_set1_epi16(sc[2 * c + 1] as i8 as i16),
                            _mm_set1_epi16(sc[2 * c] as i8 as i16),
                        );
                    }
                }
            }
            let scales = super::kblock_scales(ty, blk);
            for r in 0..rows {
                let act = &a[r][i];
                let order = orders[r];
                let y = act.qs.as_ptr();
                // Chunk c's products, as 8 lanes: lane k of every chunk holds values 4k..4k + 4 of it (ggml's
                // lanes), each times its scale.
                let part = |c: usize| {
                    // SAFETY: 32 bytes of y at 32c < 256.
                    let yc = unsafe { _mm256_loadu_si256(y.add(32 * c) as *const __m256i) };
                    _mm256_madd_epi16(_mm256_maddubs_epi16(wq[c], yc), ws[c])
                };
                let min = |j: usize| sm[j].1 as i32 * (act.bsums[2 * j] as i32 + act.bsums[2 * j + 1] as i32);
                if order == KOrder::Split64 {
                    for p in 0..4 {
                        let sums =
                            (sum_i32(_mm256_add_epi32(part(2 * p), part(2 * p + 1))), min(2 * p) + min(2 * p + 1));
                        folds[r].add(order, &[0; 8], sums, scales, act.d);
                    }
                    continue;
                }
                let mut isum = _mm256_setzero_si256();
                for c in 0..8 {
                    isum = _mm256_add_epi32(isum, part(c));
                }
                let mut mins = 0;
                if ty == GgmlType::Q6K {
                    // Less the offset of 32: lane k loses 32 (Σ q_a over 16-value groups 2k, 2k + 1, each times
                    // its scale), as ggml subtracts it.
                    // SAFETY: bsums is 16 i16, the scales 16 bytes at 192.
                    let (bsums, sc16) = unsafe {
                        (
                            _mm256_loadu_si256(act.bsums.as_ptr() as *const __m256i),
                            _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.as_ptr().add(192) as *const __m128i)),
                        )
                    };
                    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, sc16)));
                } else {
                    mins = (0..8).map(min).sum();
                }
                if order == KOrder::Lanes {
                    let dd = _mm256_set1_ps(act.d * scales.0);
                    lanes_acc[r] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(isum), lanes_acc[r]);
                } else {
                    folds[r].add(order, &[0; 8], (sum_i32(isum), mins), scales, act.d);
                }
            }
        }
        for r in 0..rows {
            out[r] = if orders[r] == KOrder::Lanes { hsum(lanes_acc[r]) } else { folds[r].finish(orders[r]) };
        }
    }

    /// [`super::hsum_tree`] across eight registers, lane by lane: partial sum `l` of every output in `a[l]`.
    #[target_feature(enable = "avx2")]
    pub(crate) fn tree8(a: &[__m256; 8]) -> __m256 {
        let pair = |x: usize, y: usize| _mm256_add_ps(a[x], a[y]);
        _mm256_add_ps(_mm256_add_ps(pair(0, 4), pair(2, 6)), _mm256_add_ps(pair(1, 5), pair(3, 7)))
    }

    /// [`tree8`] for 512-bit registers.
    #[target_feature(enable = "avx512f")]
    pub(crate) fn tree8_512(a: &[__m512; 8]) -> __m512 {
        let pair = |x: usize, y: usize| _mm512_add_ps(a[x], a[y]);
        _mm512_add_ps(_mm512_add_ps(pair(0, 4), pair(2, 6)), _mm512_add_ps(pair(1, 5), pair(3, 7)))
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
                    exact += d as f64 * act.d as f64 * isum as f64 + m as f64 * act.s as f64;
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
                let scale = exact.abs().max(1.0);
                // Every order llama.cpp uses for the type (Lanes only for Q6_K, which has no mins).
                let orders: &[KOrder] = if ty == GgmlType::Q6K {
                    &[KOrder::Lanes, KOrder::Chain]
                } else {
                    &[KOrder::Chain, KOrder::Split, KOrder::Split64]
                };
                for &order in orders {
                    let portable = vec_dot_k_portable(ty, &w, &a, order).unwrap();
                    let fast = vec_dot_k(ty, &w, &a, order).unwrap();
                    assert!((portable as f64 - exact).abs() <= 1e-5 * scale, "{ty:?} portable {portable} vs {exact}");
                    // The kernel reproduces the reference's order: equal to the bit.
                    assert_eq!(fast.to_bits(), portable.to_bits(), "{ty:?} {order:?} kernel {fast} vs {portable}");
                }
                let fast = vec_dot_k(ty, &w, &a, KOrder::of(ty, 1, 0)).unwrap();
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
        assert!(vec_dot_k(GgmlType::Q4_0, &[0u8; 18], &quantize_row_q8k(&[0.0; 256]).unwrap(), KOrder::Lanes).is_err());
        assert!(quantize_row_q8k(&[0.0; 255]).is_err());
    }

    #[test]
    fn every_f16_converts_exactly() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = half(&h.to_le_bytes(), 0);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{h:#x}: {got} vs {want}");
        }
    }

    #[test]
    fn the_avx2_quantizer_equals_the_portable_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        for scale in [1e-6f32, 0.5, 3.0, 1e4] {
            // Halves land on rounding ties now and then; zeros and a whole zero block too.
            let mut x: Vec<f32> =
                (0..32 * 64).map(|_| (rng.random_range(-254i32..=254) as f32) * 0.5 * scale).collect();
            x[..32].fill(0.0);
            for b in x.chunks_exact(32) {
                assert_eq!(quantize_row_q8(b).unwrap()[0], quantize_block(b), "{b:?}");
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
