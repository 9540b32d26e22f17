//! ggml tensor types and their dequantization to f32.
//!
//! Block layouts follow llama.cpp's `ggml-common.h`; each `dequant_*` mirrors `dequantize_row_*` in
//! `ggml-quants.c`. Tests compare against the `gguf` Python package on real tensors and on random blocks
//! (`kernels/testdata/dequant.json`, written by `tools/make_fixtures.py`).

use half::{bf16, f16};

use crate::error::{Error, Result};

/// The tensor types this reader knows (ggml's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

const QK: usize = 32;
const QK_K: usize = 256;

impl GgmlType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => QK,
            Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 2 + QK / 2,
            Self::Q4_1 => 4 + QK / 2,
            Self::Q5_0 => 2 + 4 + QK / 2,
            Self::Q5_1 => 4 + 4 + QK / 2,
            Self::Q8_0 => 2 + QK,
            Self::Q4K => 4 + 12 + QK_K / 2,
            Self::Q5K => 4 + 12 + QK_K / 8 + QK_K / 2,
            Self::Q6K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// Bytes for `n` elements, or `None` if `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bl = self.block_len() as u64;
        n.is_multiple_of(bl).then(|| n / bl * self.block_bytes() as u64)
    }
}

/// Dequantizes `n` elements of type `ty` from `bytes`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let need = ty
        .bytes_for(n as u64)
        .ok_or_else(|| Error::format(format!("{n} elements is not a whole number of {ty:?} blocks")))?;
    if bytes.len() as u64 != need {
        return Err(Error::format(format!("{ty:?}: {n} elements need {need} bytes, got {}", bytes.len())));
    }
    let mut out = Vec::with_capacity(n);
    let blocks = bytes.chunks_exact(ty.block_bytes());
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Q4_0 => blocks.for_each(|b| dequant_q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| dequant_q4_1(b, &mut out)),
        GgmlType::Q5_0 => blocks.for_each(|b| dequant_q5(b, false, &mut out)),
        GgmlType::Q5_1 => blocks.for_each(|b| dequant_q5(b, true, &mut out)),
        GgmlType::Q8_0 => blocks.for_each(|b| dequant_q8_0(b, &mut out)),
        GgmlType::Q4K => blocks.for_each(|b| dequant_q4_k(b, &mut out)),
        GgmlType::Q5K => blocks.for_each(|b| dequant_q5_k(b, &mut out)),
        GgmlType::Q6K => blocks.for_each(|b| dequant_q6_k(b, &mut out)),
    }
    debug_assert_eq!(out.len(), n);
    Ok(out)
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `{ d: f16, qs: [u8; 16] }`: x = d * (q - 8), low nibbles first then high nibbles.
fn dequant_q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..];
    out.extend(qs.iter().map(|&q| d * ((q & 0xf) as i32 - 8) as f32));
    out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
}

/// `{ d: f16, m: f16, qs: [u8; 16] }`: x = d * q + m.
fn dequant_q4_1(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..];
    out.extend(qs.iter().map(|&q| d * (q & 0xf) as f32 + m));
    out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
}

/// Q5_0 `{ d: f16, qh: u32, qs: [u8; 16] }`: x = d * (q - 16); Q5_1 `{ d, m: f16, qh, qs }`: x = d * q + m.
/// The fifth bit of element `j` is bit `j` of `qh` (low nibbles, j < 16) or bit `j` (high nibbles, j >= 16).
fn dequant_q5(b: &[u8], with_min: bool, out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let (qh_at, offset, m) = if with_min { (4, 0, f16_at(b, 2)) } else { (2, 16, 0.0) };
    let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
    let qs = &b[qh_at + 4..];
    let lo = qs.iter().enumerate().map(|(j, &q)| ((q & 0xf) as u32 | ((qh >> j) << 4) & 0x10) as i32 - offset);
    out.extend(lo.map(|x| d * x as f32 + m));
    let hi = qs.iter().enumerate().map(|(j, &q)| ((q >> 4) as u32 | (qh >> (j + 12)) & 0x10) as i32 - offset);
    out.extend(hi.map(|x| d * x as f32 + m));
}

/// `{ d: f16, qs: [i8; 32] }`: x = d * q.
fn dequant_q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..].iter().map(|&q| d * (q as i8) as f32));
}

/// The 6-bit scale and min of sub-block `j` packed into the 12 bytes of a K-quant block.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc as f32, m as f32)
    }
}

/// `{ d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`, 8 sub-blocks of 32.
fn dequant_q4_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..];
    for (j, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1, dmin * m1);
        let (d2, m2) = (d * sc2, dmin * m2);
        out.extend(q.iter().map(|&v| d1 * (v & 0xf) as f32 - m1));
        out.extend(q.iter().map(|&v| d2 * (v >> 4) as f32 - m2));
    }
}

/// `{ d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }`: Q4_K plus a fifth bit from `qh`.
fn dequant_q5_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..];
    for (j, ql) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1, dmin * m1);
        let (d2, m2) = (d * sc2, dmin * m2);
        let u1 = 1u8 << (2 * j);
        let u2 = 2u8 << (2 * j);
        out.extend(ql.iter().zip(qh).map(|(&l, &h)| {
            let hi = if h & u1 != 0 { 16 } else { 0 };
            d1 * ((l & 0xf) + hi) as f32 - m1
        }));
        out.extend(ql.iter().zip(qh).map(|(&l, &h)| {
            let hi = if h & u2 != 0 { 16 } else { 0 };
            d2 * ((l >> 4) + hi) as f32 - m2
        }));
    }
}

/// `{ ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }`: 6-bit values in two halves of 128.
fn dequant_q6_k(b: &[u8], out: &mut Vec<f32>) {
    let ql_all = &b[..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &ql_all[64 * half..64 * half + 64];
        let qh = &qh_all[32 * half..32 * half + 32];
        let sc = &sc_all[8 * half..8 * half + 8];
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_ggml() {
        assert_eq!(GgmlType::Q4_0.block_bytes(), 18);
        assert_eq!(GgmlType::Q4_1.block_bytes(), 20);
        assert_eq!(GgmlType::Q8_0.block_bytes(), 34);
        assert_eq!(GgmlType::Q5_0.block_bytes(), 22);
        assert_eq!(GgmlType::Q5_1.block_bytes(), 24);
        assert_eq!(GgmlType::Q4K.block_bytes(), 144);
        assert_eq!(GgmlType::Q5K.block_bytes(), 176);
        assert_eq!(GgmlType::Q6K.block_bytes(), 210);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 18], 31).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 17], 32).is_err());
        assert!(dequantize(GgmlType::Q6K, &[0u8; 210], 256).is_ok());
    }
}
