//! Matrix products straight on GGUF's quantized blocks: `y = x @ w.T` with `w` kept as ggml blocks (issue #21).
//!
//! A [`QuantMatrix`] holds a weight's rows once, as blocks, repacked at load:
//!
//! - The 32-value types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) are interleaved eight rows at a time (as ggml's CPU
//!   repack does), and within each group of eight blocks the fields are gathered (eight f16 scales, eight mins,
//!   fifth bits, then the quants as 4-byte pieces of the eight rows side by side; see `Fields`), so one 16-byte
//!   load and one `vcvtph2ps` give the eight rows' scales, each 32-byte load of quants feeds eight outputs, and
//!   lane `r` of every integer sum is row `r`'s. The record has exactly the bytes of the eight blocks: no memory
//!   is added.
//! - The K-quants (Q4_K, Q5_K, Q6_K, 256-value super-blocks whose sub-block scales are unpacked per block anyway)
//!   stay row-major in ggml's layout and run through [`crate::qdot::vec_dot_k`].
//!
//! Rows may come in several segments of different types (a Q/K/V projection whose V is Q8_0 while Q and K are
//! Q5_0, as llama.cpp's Q4_K_M mixes them), each at its own offset in the output.
//!
//! Products with up to [`INT_ROWS`] rows of `x` (decode steps) quantize `x` to int8 per block and run in integers
//! (`maddubs`/`madd`), scaled and accumulated in f32, as ggml's CPU kernels; a tile of up to four rows of `x`
//! reuses each unpacked weight register. Larger products (prefill) dequantize up to 16 MB of rows at a time into an
//! f32 buffer and hand it to libtorch's GEMM, where the f32 arithmetic is at its best; the dequantization is paid once
//! per chunk for all rows of `x`. The f32 weights never exist whole.
//!
//! Numerics: a prefill-sized product is exactly the f32 product of the dequantized weights; a decode-sized one
//! rounds `x` to int8 per block first, as llama.cpp does on every path (on SmolLM2, mean KL 0.005 from f32, the
//! same as llama.cpp's). Rounding is not continuous: a summation-order difference upstream (a prompt prefilled
//! whole or a token at a time, a sequence alone or in a batch of more than 32 rows, a prefix from the cache) can
//! move a value across a rounding step, and the difference then spreads, so outputs computed through different
//! paths agree in distribution, not bit for bit as the f32 path nearly does. (Rounding the prefill's activations
//! too was measured and does not help: the two int8 paths then differ by the same KL as each from f32.)
//!
//! Kernels are chosen at run time: AVX2, FMA and F16C, else a portable path that is correct and slow.

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::qdot::{self, Q8Block, Q8KBlock};
use crate::quant::{self, GgmlType};

/// Rows interleaved per group.
pub const GROUP: usize = 8;
/// The largest product run in integers; above it, chunks are dequantized for libtorch's GEMM.
pub const INT_ROWS: usize = 32;
/// Products streaming fewer weight bytes (times rows) than this run on the calling thread.
const SERIAL_BYTES: usize = 32 << 10;
/// Weight values dequantized per chunk on the GEMM path (16 MB of f32): most matrices in one chunk, the LM head
/// of a large vocabulary in several.
const CHUNK_VALUES: usize = 4 << 20;

/// Whether this CPU runs the fast kernels (AVX2, FMA, F16C).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu_gemm::available() && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a [`QuantMatrix`] can hold rows of this type.
pub fn supports(ty: GgmlType) -> bool {
    is_q32(ty) || is_k(ty)
}

fn is_q32(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0)
}

fn is_k(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
}

/// Some rows of a weight as the file stores them (row-major ggml blocks).
pub struct RowBlocks<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub bytes: &'a [u8],
    /// Undo llama.cpp's Q/K row permutation over this many heads (see [`crate::weights::unpermute_qk`]).
    pub unpermute_heads: Option<usize>,
}

/// Where the fields of a 32-value type sit in a ggml block and in an eight-row record.
///
/// A record holds one block column of eight rows: their eight f16 scales, eight f16 mins (Q4_1, Q5_1), eight
/// fifth-bit masks (Q5_0, Q5_1; see below), then the quants as 4-byte pieces, piece-major: piece `p` of rows 0..8,
/// then piece `p + 1`... So one 32-byte load is the same four quant bytes of all eight rows, and after a
/// multiply-add against four activation bytes broadcast to every lane, lane `r` holds row `r`'s partial sum: no
/// horizontal reductions. For the 4-bit types a piece is 4 bytes of packed nibbles: its low nibbles are values
/// `4p..4p + 4` and its high nibbles values `16 + 4p..`; for Q8_0 a piece is values `4p..4p + 4`. The fifth-bit
/// mask of chunk `c` (values `4c..4c + 4`) has bit `4r + j` set when value `4c + j` of row `r` has its fifth bit,
/// so it expands straight into the byte order of that chunk's register.
#[derive(Clone, Copy)]
struct Fields {
    /// Offset of the min (f16) in a block, if the type has one.
    m: Option<usize>,
    /// Offset of the fifth-bit word (u32) in a block, for Q5_0/Q5_1.
    qh: Option<usize>,
    /// Offset of the quants in a block, and their length.
    qs: usize,
    qs_len: usize,
}

impl Fields {
    fn of(ty: GgmlType) -> Self {
        match ty {
            GgmlType::Q4_0 => Self { m: None, qh: None, qs: 2, qs_len: 16 },
            GgmlType::Q4_1 => Self { m: Some(2), qh: None, qs: 4, qs_len: 16 },
            GgmlType::Q5_0 => Self { m: None, qh: Some(2), qs: 6, qs_len: 16 },
            GgmlType::Q5_1 => Self { m: Some(2), qh: Some(4), qs: 8, qs_len: 16 },
            _ => Self { m: None, qh: None, qs: 2, qs_len: 32 },
        }
    }
    /// Record offsets: scales at 0 (8 x f16), then mins (8 x f16), then fifth-bit masks (8 x u32), then quants.
    fn rec_m(self) -> usize {
        2 * GROUP
    }
    fn rec_qh(self) -> usize {
        2 * GROUP + if self.m.is_some() { 2 * GROUP } else { 0 }
    }
    fn rec_qs(self) -> usize {
        self.rec_qh() + if self.qh.is_some() { 4 * GROUP } else { 0 }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes eight blocks (rows `r = 0..8` of one block column) as one record.
fn to_record(ty: GgmlType, blocks: [&[u8]; GROUP], rec: &mut [u8]) {
    let f = Fields::of(ty);
    for (r, b) in blocks.iter().enumerate() {
        rec[2 * r..2 * r + 2].copy_from_slice(&b[..2]);
        if let Some(m) = f.m {
            rec[f.rec_m() + 2 * r..f.rec_m() + 2 * r + 2].copy_from_slice(&b[m..m + 2]);
        }
        for p in 0..f.qs_len / 4 {
            let at = f.rec_qs() + 4 * (GROUP * p + r);
            rec[at..at + 4].copy_from_slice(&b[f.qs + 4 * p..f.qs + 4 * p + 4]);
        }
    }
    if let Some(qh) = f.qh {
        for c in 0..8 {
            let mask = (0..GROUP).fold(0u32, |m, r| m | ((u32_at(blocks[r], qh) >> (4 * c)) & 0xF) << (4 * r));
            rec[f.rec_qh() + 4 * c..f.rec_qh() + 4 * c + 4].copy_from_slice(&mask.to_le_bytes());
        }
    }
}

/// The ggml block of row `r` of a record (the inverse of [`to_record`]).
fn from_record(ty: GgmlType, rec: &[u8], r: usize) -> [u8; 34] {
    let f = Fields::of(ty);
    let mut b = [0u8; 34];
    b[..2].copy_from_slice(&rec[2 * r..2 * r + 2]);
    if let Some(m) = f.m {
        b[m..m + 2].copy_from_slice(&rec[f.rec_m() + 2 * r..f.rec_m() + 2 * r + 2]);
    }
    if let Some(qh) = f.qh {
        let word = (0..8).fold(0u32, |w, c| w | ((u32_at(rec, f.rec_qh() + 4 * c) >> (4 * r)) & 0xF) << (4 * c));
        b[qh..qh + 4].copy_from_slice(&word.to_le_bytes());
    }
    for p in 0..f.qs_len / 4 {
        let at = f.rec_qs() + 4 * (GROUP * p + r);
        b[f.qs + 4 * p..f.qs + 4 * p + 4].copy_from_slice(&rec[at..at + 4]);
    }
    b
}

/// Rows `row0..row0 + rows` of the matrix, of one type.
struct Segment {
    ty: GgmlType,
    row0: usize,
    rows: usize,
    /// 32-value types: records of four rows, group-major then block column; K-quants: rows of blocks.
    data: Vec<u8>,
}

/// A weight `[n, k]` held as quantized blocks; see the module docs.
pub struct QuantMatrix {
    n: usize,
    k: usize,
    segs: Vec<Segment>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<GgmlType> = self.segs.iter().map(|s| s.ty).collect();
        f.debug_struct("QuantMatrix").field("n", &self.n).field("k", &self.k).field("types", &types).finish()
    }
}

/// The source row that llama.cpp's Q/K permutation put at `row` (heads of `2 * half` rows).
fn permuted_source(row: usize, rows: usize, n_head: usize) -> usize {
    let per_head = rows / n_head;
    let half = per_head / 2;
    let (h, rem) = (row / per_head, row % per_head);
    let (j, i) = (rem / half, rem % half);
    h * per_head + i * 2 + j
}

impl QuantMatrix {
    /// Repacks `parts` (stacked in order) into one matrix of `k` columns. Every part's type must be supported,
    /// its row count a multiple of [`GROUP`] and `k` a whole number of its blocks.
    pub fn new(k: usize, parts: &[RowBlocks<'_>]) -> Result<Self> {
        let mut segs = Vec::with_capacity(parts.len());
        let mut row0 = 0;
        for p in parts {
            let bl = p.ty.block_len();
            if !supports(p.ty) || k == 0 || !k.is_multiple_of(bl) || !p.rows.is_multiple_of(GROUP) {
                return Err(Error::unsupported(format!("{} rows x {k} of {:?} as quantized blocks", p.rows, p.ty)));
            }
            let (nb, bb) = (k / bl, p.ty.block_bytes());
            let row_bytes = nb * bb;
            if p.bytes.len() != p.rows * row_bytes {
                return Err(Error::format(format!("{:?}: {} bytes for {} rows of {k}", p.ty, p.bytes.len(), p.rows)));
            }
            if let Some(h) = p.unpermute_heads {
                if h == 0 || !p.rows.is_multiple_of(2 * h) {
                    return Err(Error::format(format!("cannot unpermute {} rows over {h} heads", p.rows)));
                }
            }
            let src = |r: usize| -> &[u8] {
                let s = p.unpermute_heads.map_or(r, |h| permuted_source(r, p.rows, h));
                &p.bytes[s * row_bytes..(s + 1) * row_bytes]
            };
            let mut data = vec![0u8; p.bytes.len()];
            if is_q32(p.ty) {
                for g in 0..p.rows / GROUP {
                    let rows: [&[u8]; GROUP] = std::array::from_fn(|r| src(g * GROUP + r));
                    for b in 0..nb {
                        let at = (g * nb + b) * GROUP * bb;
                        to_record(p.ty, rows.map(|row| &row[b * bb..(b + 1) * bb]), &mut data[at..at + GROUP * bb]);
                    }
                }
            } else {
                for (r, out) in data.chunks_exact_mut(row_bytes).enumerate() {
                    out.copy_from_slice(src(r));
                }
            }
            segs.push(Segment { ty: p.ty, row0, rows: p.rows, data });
            row0 += p.rows;
        }
        if segs.is_empty() {
            return Err(Error::invalid("a quantized matrix needs rows"));
        }
        Ok(Self { n: row0, k, segs })
    }

    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    /// Bytes of blocks held.
    pub fn bytes(&self) -> usize {
        self.segs.iter().map(|s| s.data.len()).sum()
    }

    /// The segment holding `row`, and the row's index in it.
    fn locate(&self, row: usize) -> (&Segment, usize) {
        let seg = self.segs.iter().find(|s| row < s.row0 + s.rows).expect("row inside the matrix");
        (seg, row - seg.row0)
    }

    /// Dequantizes `out.len() / k` rows from `row` on (rows of one group of one segment at most) into `out`.
    fn dequant_rows(&self, row: usize, out: &mut [f32]) {
        let (seg, r) = self.locate(row);
        let (bl, bb) = (seg.ty.block_len(), seg.ty.block_bytes());
        let nb = self.k / bl;
        if !is_q32(seg.ty) {
            for (i, dst) in out.chunks_exact_mut(self.k).enumerate() {
                let bytes = &seg.data[(r + i) * nb * bb..(r + i + 1) * nb * bb];
                dst.copy_from_slice(&quant::dequantize(seg.ty, bytes, self.k).expect("whole blocks"));
            }
            return;
        }
        let (g, lane0) = (r / GROUP, r % GROUP);
        let lanes = out.len() / self.k;
        assert!(lane0 + lanes <= GROUP, "rows of one group");
        let records = &seg.data[g * nb * GROUP * bb..(g + 1) * nb * GROUP * bb];
        #[cfg(target_arch = "x86_64")]
        if lanes == GROUP && available() {
            // SAFETY: the features were just detected; `records` is the group's `nb` whole records of `seg.ty`
            // and `out` holds its eight rows of `k = nb * 32` values.
            unsafe { avx2::dequant_group(seg.ty, records, nb, out) };
            return;
        }
        // A few rows (an embedding lookup), or no AVX2: block by block.
        for (i, dst) in out.chunks_exact_mut(self.k).enumerate() {
            for (b, d) in dst.chunks_exact_mut(bl).enumerate() {
                let blk = from_record(seg.ty, &records[b * GROUP * bb..(b + 1) * GROUP * bb], lane0 + i);
                d.copy_from_slice(&quant::dequantize(seg.ty, &blk[..bb], bl).expect("a whole block"));
            }
        }
    }

    /// Rows `ids` dequantized, `[ids.len(), k]` f32 (an embedding lookup).
    pub fn rows(&self, ids: &[i64]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i < 0 || i as usize >= self.n) {
            return Err(Error::invalid(format!("row {bad} outside a matrix of {} rows", self.n)));
        }
        let y = Tensor::empty([ids.len() as i64, self.k as i64], (Kind::Float, Device::Cpu));
        // SAFETY: a fresh contiguous f32 tensor of ids.len() * k values, written here only.
        let out = unsafe { std::slice::from_raw_parts_mut(y.data_ptr() as *mut f32, ids.len() * self.k) };
        // A decode step looks up a row or a few: not worth waking anyone.
        if ids.len() < 64 {
            out.chunks_exact_mut(self.k).zip(ids).for_each(|(dst, &i)| self.dequant_rows(i as usize, dst));
        } else {
            out.par_chunks_exact_mut(self.k).zip(ids).for_each(|(dst, &i)| self.dequant_rows(i as usize, dst));
        }
        Ok(y)
    }

    /// `x @ w.T` for `x: [m, k]` f32 on the CPU: `[m, n]`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 2 || s[1] as usize != self.k || x.device() != Device::Cpu || x.kind() != Kind::Float {
            return Err(Error::invalid(format!(
                "quantized matmul of {s:?} {:?} by [{}, {}]",
                x.kind(),
                self.n,
                self.k
            )));
        }
        let m = s[0] as usize;
        if m == 0 {
            return Ok(Tensor::zeros([0, self.n as i64], (Kind::Float, Device::Cpu)));
        }
        let x = x.contiguous();
        if m > INT_ROWS {
            return self.matmul_dequantized(&x);
        }
        // SAFETY: contiguous f32 CPU tensor of m * k elements, only read during this call.
        let xs = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, m * self.k) };
        let a32: Vec<Vec<Q8Block>> = if self.segs.iter().any(|s| is_q32(s.ty)) {
            xs.chunks_exact(self.k).map(qdot::quantize_row_q8).collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let ak: Vec<Vec<Q8KBlock>> = if self.segs.iter().any(|s| is_k(s.ty)) {
            xs.chunks_exact(self.k).map(qdot::quantize_row_q8k).collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let y = Tensor::empty([m as i64, self.n as i64], (Kind::Float, Device::Cpu));
        let out = crate::team::SharedMut::new(y.data_ptr() as *mut f32);
        let groups = self.n / GROUP;
        // One contiguous range of groups per thread of the team (each core streams one run of the weights). A
        // small product runs on the calling thread alone: sharing it costs more than it saves.
        let threads = if self.bytes() * m < SERIAL_BYTES { 1 } else { crate::team::width() };
        let per_task = groups.div_ceil(threads).max(1);
        let fast = available();
        let run = |task: usize| {
            let mut tile = vec![[0f32; GROUP]; m];
            for g in task * per_task..((task + 1) * per_task).min(groups) {
                let row = g * GROUP;
                let seg = self.segs.iter().find(|s| row < s.row0 + s.rows).expect("group inside the matrix");
                self.group(seg, (row - seg.row0) / GROUP, &a32, &ak, fast, &mut tile);
                for (i, t) in tile.iter().enumerate() {
                    // SAFETY: row i < m, columns row..row + GROUP <= n lie inside `y` (m x n); each group's columns
                    // are written by exactly one task.
                    unsafe { std::ptr::copy_nonoverlapping(t.as_ptr(), out.get().add(i * self.n + row), GROUP) };
                }
            }
        };
        crate::team::run(groups.div_ceil(per_task), &run);
        Ok(y)
    }

    /// The eight outputs of group `g` of `seg` for every row of the activations: `tile[i][r]`.
    fn group(
        &self,
        seg: &Segment,
        g: usize,
        a32: &[Vec<Q8Block>],
        ak: &[Vec<Q8KBlock>],
        fast: bool,
        tile: &mut [[f32; GROUP]],
    ) {
        let bb = seg.ty.block_bytes();
        let nb = self.k / seg.ty.block_len();
        let span = GROUP * nb * bb;
        let data = &seg.data[g * span..(g + 1) * span];
        if is_k(seg.ty) {
            for r in 0..GROUP {
                let w = &data[r * nb * bb..(r + 1) * nb * bb];
                for (t, a) in tile.iter_mut().zip(ak) {
                    // SAFETY: `seg.ty` is a K-quant and `w` holds `nb` blocks, as many as `a` (checked at `new`).
                    t[r] = unsafe { qdot::vec_dot_k_unchecked(seg.ty, w, a) };
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if fast {
            for (t, a) in tile.chunks_mut(4).zip(a32.chunks(4)) {
                // SAFETY: the CPU has AVX2, FMA and F16C (`fast`); `data` is `nb` records of `seg.ty` and every
                // activation row has `nb` blocks.
                unsafe { avx2::group_q32(seg.ty, data, nb, a, t) };
            }
            return;
        }
        let _ = fast;
        for (t, a) in tile.iter_mut().zip(a32) {
            for (r, out) in t.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for (b, act) in a.iter().enumerate() {
                    let blk = from_record(seg.ty, &data[b * GROUP * bb..(b + 1) * GROUP * bb], r);
                    acc += qdot::vec_dot_portable(seg.ty, &blk[..bb], std::slice::from_ref(act)).unwrap_or(0.0);
                }
                *out = acc;
            }
        }
    }

    /// Prefill-sized products: chunks of rows dequantized into an f32 buffer, multiplied by libtorch's GEMM.
    fn matmul_dequantized(&self, x: &Tensor) -> Result<Tensor> {
        thread_local! {
            // The dequantized chunk, kept between calls: a fresh buffer of this size would be paid again in page
            // faults on every call.
            static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let chunk_rows = (CHUNK_VALUES / self.k / GROUP * GROUP).max(GROUP);
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let need = chunk_rows.min(self.n) * self.k;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            self.matmul_chunks(x, chunk_rows, &mut buf[..need])
        })
    }

    fn matmul_chunks(&self, x: &Tensor, chunk_rows: usize, buf: &mut [f32]) -> Result<Tensor> {
        let mut outs = Vec::with_capacity(self.n.div_ceil(chunk_rows) + self.segs.len());
        let starts = self.segs.iter().flat_map(|s| (s.row0..s.row0 + s.rows).step_by(chunk_rows).map(move |r| (s, r)));
        for (seg, r0) in starts {
            let rows = chunk_rows.min(seg.row0 + seg.rows - r0);
            let chunk = &mut buf[..rows * self.k];
            // Whole groups at a time (chunks and segments start on group boundaries), one range per thread.
            let groups = rows.div_ceil(GROUP);
            let per_task = groups.div_ceil(crate::team::width()).max(1);
            let out = crate::team::SharedMut::new(chunk.as_mut_ptr());
            crate::team::run_then_park(groups.div_ceil(per_task), &|task| {
                for g in task * per_task..((task + 1) * per_task).min(groups) {
                    let n = GROUP.min(rows - g * GROUP) * self.k;
                    // SAFETY: group g's rows are g * GROUP.. of the chunk, inside it, and each group is written by
                    // one task only.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(g * GROUP * self.k), n) };
                    self.dequant_rows(r0 + g * GROUP, dst);
                }
            });
            // SAFETY: `chunk` is rows * k f32 values that outlive the borrowed tensor, which is dropped (after
            // the GEMM has read it) before `buf` is written again.
            let w = unsafe {
                Tensor::from_blob(
                    chunk.as_ptr() as *const u8,
                    &[rows as i64, self.k as i64],
                    &[self.k as i64, 1],
                    Kind::Float,
                    Device::Cpu,
                )
            };
            outs.push(x.f_matmul(&w.tr())?);
        }
        Ok(if outs.len() == 1 { outs.pop().expect("one chunk") } else { Tensor::f_cat(&outs, 1)? })
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Fields, GROUP};
    use crate::qdot::Q8Block;
    use crate::quant::GgmlType;

    /// 0x10 in byte j where bit j of `bits` is set, else 0.
    #[target_feature(enable = "avx2")]
    fn fifth_bits(bits: u32) -> __m256i {
        _mm256_and_si256(crate::qdot::avx2::bits_to_bytes(bits), _mm256_set1_epi8(0x10))
    }

    /// The eight rows' scales of a record, and what multiplies an activation block's sum for each: the min (Q4_1,
    /// Q5_1), the unsigned encodings' offset (-8 d for Q4_0, -16 d for Q5_0), or nothing (Q8_0).
    ///
    /// # Safety
    /// F16C; `p` points at a whole record of `ty`.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales_offsets(ty: GgmlType, f: Fields, p: *const u8) -> (__m256, __m256) {
        // SAFETY: the scales are the record's first 16 bytes, the mins the 16 at `rec_m` (types with a min).
        unsafe {
            let d8 = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            let off8 = match ty {
                GgmlType::Q4_0 => _mm256_mul_ps(d8, _mm256_set1_ps(-8.0)),
                GgmlType::Q5_0 => _mm256_mul_ps(d8, _mm256_set1_ps(-16.0)),
                GgmlType::Q4_1 | GgmlType::Q5_1 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(f.rec_m()) as *const __m128i)),
                _ => _mm256_setzero_ps(),
            };
            (d8, off8)
        }
    }

    /// The quants of a record as registers of eight rows by four values: `(chunk c, register)` for the chunks
    /// (values `4c..4c + 4`) held by piece load `p`: two for the 4- and 5-bit types (values `4p..` and
    /// `16 + 4p..`, unsigned), one for Q8_0 (signed).
    ///
    /// # Safety
    /// AVX2; `p` points at a whole record of `ty`; `piece` < 4 (8 for Q8_0).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn chunks(ty: GgmlType, f: Fields, p: *const u8, piece: usize) -> [(usize, __m256i); 2] {
        // SAFETY (all reads): inside the record, by the offsets of `Fields`.
        unsafe {
            let raw = _mm256_loadu_si256(p.add(f.rec_qs() + 32 * piece) as *const __m256i);
            if ty == GgmlType::Q8_0 {
                return [(piece, raw), (piece, raw)];
            }
            let low4 = _mm256_set1_epi8(0x0F);
            let mut lo = _mm256_and_si256(raw, low4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
            if f.qh.is_some() {
                let mask = |c: usize| (p.add(f.rec_qh() + 4 * c) as *const u32).read_unaligned();
                lo = _mm256_or_si256(lo, fifth_bits(mask(piece)));
                hi = _mm256_or_si256(hi, fifth_bits(mask(piece + 4)));
            }
            [(piece, lo), (piece + 4, hi)]
        }
    }

    /// `tile[i][r] = Σ_b w[r, b] · a[i][b]` for the eight rows of one group and up to four activation rows.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `ty` is a 32-value type; `data` holds `nb` records of it; each `a[i]` has `nb` blocks;
    /// `a.len() == tile.len() <= 4`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_q32(
        ty: GgmlType,
        data: &[u8],
        nb: usize,
        a: &[Vec<Q8Block>],
        tile: &mut [[f32; GROUP]],
    ) {
        // SAFETY: the contract above, passed on.
        unsafe {
            match (ty, a.len()) {
                (GgmlType::Q4_0, 1) => tile_q32::<0, 1>(data, nb, a, tile),
                (GgmlType::Q4_0, 2) => tile_q32::<0, 2>(data, nb, a, tile),
                (GgmlType::Q4_0, 3) => tile_q32::<0, 3>(data, nb, a, tile),
                (GgmlType::Q4_0, _) => tile_q32::<0, 4>(data, nb, a, tile),
                (GgmlType::Q4_1, 1) => tile_q32::<1, 1>(data, nb, a, tile),
                (GgmlType::Q4_1, 2) => tile_q32::<1, 2>(data, nb, a, tile),
                (GgmlType::Q4_1, 3) => tile_q32::<1, 3>(data, nb, a, tile),
                (GgmlType::Q4_1, _) => tile_q32::<1, 4>(data, nb, a, tile),
                (GgmlType::Q5_0, 1) => tile_q32::<2, 1>(data, nb, a, tile),
                (GgmlType::Q5_0, 2) => tile_q32::<2, 2>(data, nb, a, tile),
                (GgmlType::Q5_0, 3) => tile_q32::<2, 3>(data, nb, a, tile),
                (GgmlType::Q5_0, _) => tile_q32::<2, 4>(data, nb, a, tile),
                (GgmlType::Q5_1, 1) => tile_q32::<3, 1>(data, nb, a, tile),
                (GgmlType::Q5_1, 2) => tile_q32::<3, 2>(data, nb, a, tile),
                (GgmlType::Q5_1, 3) => tile_q32::<3, 3>(data, nb, a, tile),
                (GgmlType::Q5_1, _) => tile_q32::<3, 4>(data, nb, a, tile),
                (_, 1) => tile_q32::<4, 1>(data, nb, a, tile),
                (_, 2) => tile_q32::<4, 2>(data, nb, a, tile),
                (_, 3) => tile_q32::<4, 3>(data, nb, a, tile),
                (_, _) => tile_q32::<4, 4>(data, nb, a, tile),
            }
        }
    }

    /// How far ahead of the record being read the kernel prefetches (measured with `qdot_speed` at batch 1 on
    /// SmolLM2's weights: 512 bytes 14.9 GB/s, 1024 16.5, 2048 18.0, 4096 17.5).
    const PREFETCH: usize = 2048;

    const TYPES: [GgmlType; 5] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];

    /// [`group_q32`] for type `TYPES[T]` and `XR` activation rows (compile-time, so every loop unrolls and the
    /// accumulators stay in registers).
    ///
    /// # Safety
    /// As [`group_q32`], with `a.len() == XR`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // several arrays indexed in lock-step by activation row
    unsafe fn tile_q32<const T: usize, const XR: usize>(
        data: &[u8],
        nb: usize,
        a: &[Vec<Q8Block>],
        tile: &mut [[f32; GROUP]],
    ) {
        let ty = TYPES[T];
        let f = Fields::of(ty);
        let rb = GROUP * ty.block_bytes();
        assert!(data.len() >= nb * rb && a.len() == XR && tile.len() == XR && a.iter().all(|r| r.len() >= nb));
        let ones = _mm256_set1_epi16(1);
        let pieces = if ty == GgmlType::Q8_0 { 8 } else { 4 };
        let mut acc = [_mm256_setzero_ps(); XR];
        for b in 0..nb {
            // SAFETY: record b lies inside `data` and a[i][b] inside `a` (asserted); every read is inside them.
            unsafe {
                let p = data.as_ptr().add(b * rb);
                // One stream per core from memory is latency-bound without help: ask for the record PREFETCH
                // bytes ahead (a hint; prefetching past the end is harmless).
                // One line per 64 bytes of record, so consecutive records' prefetches cover the stream.
                for line in 0..rb.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + 64 * line) as *const i8);
                }
                let y: [*const u8; XR] =
                    std::array::from_fn(|i| a.get_unchecked(i).get_unchecked(b).qs.as_ptr() as *const u8);
                let bcast = |i: usize, c: usize| _mm256_set1_epi32((y[i].add(4 * c) as *const i32).read_unaligned());
                let mut isum = [_mm256_setzero_si256(); XR];
                if matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1) {
                    // 4-bit: at most 8 * 2 * 15 * 127 in magnitude, so the 16-bit sums cannot overflow.
                    let mut s16 = [_mm256_setzero_si256(); XR];
                    for piece in 0..4 {
                        let [(c0, w0), (c1, w1)] = chunks(ty, f, p, piece);
                        for i in 0..XR {
                            let both = _mm256_add_epi16(
                                _mm256_maddubs_epi16(w0, bcast(i, c0)),
                                _mm256_maddubs_epi16(w1, bcast(i, c1)),
                            );
                            s16[i] = _mm256_add_epi16(s16[i], both);
                        }
                    }
                    for i in 0..XR {
                        isum[i] = _mm256_madd_epi16(s16[i], ones);
                    }
                } else if ty == GgmlType::Q8_0 {
                    for piece in 0..pieces {
                        let [(c, w), _] = chunks(ty, f, p, piece);
                        // Both signed: move w's sign onto y so `maddubs` sees |w| unsigned.
                        let aw = _mm256_sign_epi8(w, w);
                        for i in 0..XR {
                            let sy = _mm256_sign_epi8(bcast(i, c), w);
                            isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sy), ones));
                        }
                    }
                } else {
                    // 5-bit: two products fit 16 bits (2 * 2 * 31 * 127), so widen after each pair.
                    for piece in 0..4 {
                        let [(c0, w0), (c1, w1)] = chunks(ty, f, p, piece);
                        for i in 0..XR {
                            let both = _mm256_add_epi16(
                                _mm256_maddubs_epi16(w0, bcast(i, c0)),
                                _mm256_maddubs_epi16(w1, bcast(i, c1)),
                            );
                            isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(both, ones));
                        }
                    }
                }
                let (d8, off8) = scales_offsets(ty, f, p);
                for i in 0..XR {
                    let act = a.get_unchecked(i).get_unchecked(b);
                    acc[i] =
                        _mm256_fmadd_ps(_mm256_mul_ps(d8, _mm256_set1_ps(act.d)), _mm256_cvtepi32_ps(isum[i]), acc[i]);
                    if ty != GgmlType::Q8_0 {
                        acc[i] = _mm256_fmadd_ps(off8, _mm256_set1_ps(act.d * act.sum as f32), acc[i]);
                    }
                }
            }
        }
        for i in 0..XR {
            // SAFETY: each tile row holds eight f32.
            unsafe { _mm256_storeu_ps(tile[i].as_mut_ptr(), acc[i]) };
        }
    }

    /// Dequantizes the eight rows of a group (`nb` records) into `out`, row after row of `k = 32 * nb` values.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `records` holds `nb` whole records of the 32-value type `ty`; `out` holds
    /// `8 * 32 * nb` floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequant_group(ty: GgmlType, records: &[u8], nb: usize, out: &mut [f32]) {
        let f = Fields::of(ty);
        let rb = GROUP * ty.block_bytes();
        let k = 32 * nb;
        assert!(records.len() >= nb * rb && out.len() >= GROUP * k);
        let pieces = if ty == GgmlType::Q8_0 { 8 } else { 4 };
        // Lanes of rows 2q and 2q + 1, four values each.
        let pair: [__m256i; 4] = std::array::from_fn(|q| {
            let (a, b) = (2 * q as i32, 2 * q as i32 + 1);
            _mm256_setr_epi32(a, a, a, a, b, b, b, b)
        });
        for blk in 0..nb {
            // SAFETY: reads inside record `blk` (asserted); writes at row * k + 32 * blk + 4 * c + 0..4, inside
            // `out` (asserted).
            unsafe {
                let p = records.as_ptr().add(blk * rb);
                let (d8, m8) = scales_offsets(ty, f, p);
                let dq: [__m256; 4] = std::array::from_fn(|q| _mm256_permutevar8x32_ps(d8, pair[q]));
                let mq: [__m256; 4] = std::array::from_fn(|q| _mm256_permutevar8x32_ps(m8, pair[q]));
                let dst = out.as_mut_ptr().add(32 * blk);
                for piece in 0..pieces {
                    let regs = chunks(ty, f, p, piece);
                    let n = if ty == GgmlType::Q8_0 { 1 } else { 2 };
                    for &(c, w) in &regs[..n] {
                        let halves = [_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)];
                        for q in 0..4 {
                            let eight = if q % 2 == 0 { halves[q / 2] } else { _mm_srli_si128(halves[q / 2], 8) };
                            let ints = if ty == GgmlType::Q8_0 {
                                _mm256_cvtepi8_epi32(eight)
                            } else {
                                _mm256_cvtepu8_epi32(eight)
                            };
                            let v = _mm256_fmadd_ps(dq[q], _mm256_cvtepi32_ps(ints), mq[q]);
                            _mm_storeu_ps(dst.add(2 * q * k + 4 * c), _mm256_castps256_ps128(v));
                            _mm_storeu_ps(dst.add((2 * q + 1) * k + 4 * c), _mm256_extractf128_ps(v, 1));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `rows` random rows of `k` values of `ty`.
    fn random_rows(ty: GgmlType, rows: usize, k: usize, rng: &mut impl Rng) -> Vec<u8> {
        crate::qdot::tests::random_blocks(ty, rows * k / ty.block_len(), rng)
    }

    #[test]
    fn products_equal_the_dequantized_f32_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let k = 512;
        let types = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ];
        for pair in types.windows(2) {
            // Two segments of different types, the first permuted as llama.cpp stores Q and K.
            let (a, b) = (random_rows(pair[0], 16, k, &mut rng), random_rows(pair[1], 8, k, &mut rng));
            let parts = [
                RowBlocks { ty: pair[0], rows: 16, bytes: &a, unpermute_heads: Some(2) },
                RowBlocks { ty: pair[1], rows: 8, bytes: &b, unpermute_heads: None },
            ];
            let q = QuantMatrix::new(k, &parts).unwrap();
            let wa = Tensor::from_slice(&quant::dequantize(pair[0], &a, 16 * k).unwrap()).view([16, k as i64]);
            let wa = crate::weights::unpermute_qk(&wa, 2).unwrap();
            let wb = Tensor::from_slice(&quant::dequantize(pair[1], &b, 8 * k).unwrap()).view([8, k as i64]);
            let w = Tensor::cat(&[wa, wb], 0);
            assert!(q.rows(&(0..24).collect::<Vec<i64>>()).unwrap().allclose(&w, 1e-6, 1e-7, false), "{pair:?} rows");
            for m in [1i64, 3, 4, 7, 32, 33, 70] {
                let x = Tensor::randn([m, k as i64], (Kind::Float, Device::Cpu));
                let got = q.matmul_t(&x).unwrap();
                // Up to INT_ROWS rows, x is quantized to int8 per block (as each segment's type pairs it): the
                // product equals the f32 product of the dequantized weights with the dequantized activations.
                // Above, x is multiplied as it is.
                let xs = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
                let xq = |ty: GgmlType| -> Tensor {
                    if m as usize > INT_ROWS {
                        return x.shallow_clone();
                    }
                    let rows: Vec<f32> = xs
                        .chunks(k)
                        .flat_map(|r| -> Vec<f32> {
                            if is_k(ty) {
                                qdot::quantize_row_q8k(r)
                                    .unwrap()
                                    .iter()
                                    .flat_map(|b| b.qs.map(|q| q as f32 * b.d))
                                    .collect()
                            } else {
                                qdot::quantize_row_q8(r)
                                    .unwrap()
                                    .iter()
                                    .flat_map(|b| b.qs.map(|q| q as f32 * b.d))
                                    .collect()
                            }
                        })
                        .collect();
                    Tensor::from_slice(&rows).view([m, k as i64])
                };
                let want = Tensor::cat(
                    &[xq(pair[0]).matmul(&w.narrow(0, 0, 16).tr()), xq(pair[1]).matmul(&w.narrow(0, 16, 8).tr())],
                    1,
                );
                let err = (&got - &want).abs().max().double_value(&[]);
                let scale = want.abs().max().double_value(&[]);
                assert!(err <= 1e-5 * scale, "{pair:?} m={m}: error {err} against scale {scale}");
            }
        }
    }

    #[test]
    fn a_matrix_larger_than_one_chunk() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let (rows, k) = (CHUNK_VALUES / 512 + 24, 512);
        let a = random_rows(GgmlType::Q4_1, rows, k, &mut rng);
        let q =
            QuantMatrix::new(k, &[RowBlocks { ty: GgmlType::Q4_1, rows, bytes: &a, unpermute_heads: None }]).unwrap();
        let w =
            Tensor::from_slice(&quant::dequantize(GgmlType::Q4_1, &a, rows * k).unwrap()).view([rows as i64, k as i64]);
        let x = Tensor::randn([40, k as i64], (Kind::Float, Device::Cpu));
        let (got, want) = (q.matmul_t(&x).unwrap(), x.matmul(&w.tr()));
        let err = (&got - &want).abs().max().double_value(&[]);
        assert!(err <= 1e-5 * want.abs().max().double_value(&[]), "{err}");
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let b = vec![0u8; 12 * 18];
        let part =
            |rows: usize, ty: GgmlType, bytes: &'static [u8]| RowBlocks { ty, rows, bytes, unpermute_heads: None };
        let b: &'static [u8] = b.leak();
        assert!(QuantMatrix::new(32, &[part(12, GgmlType::Q4_0, b)]).is_err(), "rows not a multiple of 8");
        assert!(QuantMatrix::new(64, &[part(8, GgmlType::Q4_0, &b[..144])]).is_err(), "too few bytes");
        assert!(QuantMatrix::new(32, &[part(8, GgmlType::F16, &b[..128])]).is_err(), "unsupported type");
        let q = QuantMatrix::new(32, &[part(8, GgmlType::Q4_0, &b[..144])]).unwrap();
        assert!(q.matmul_t(&Tensor::zeros([1, 31], (Kind::Float, Device::Cpu))).is_err());
        assert!(q.rows(&[8]).is_err());
    }
}
