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
//! [`QuantMatrix::matmul_t_int`] quantizes `x` to int8 per block and runs in integers at every size, each output
//! in the order of llama.cpp's CPU kernel for its type and the product's size (see [`crate::qdot`]): eight
//! partial sums per row for the 32-value types, one fused multiply-add per block each, the tree of
//! `hsum_float_8`; the K-quants per [`crate::qdot::KOrder`]. The results equal llama.cpp's to the bit, which is
//! what `--weights quantized-exact` runs (and the default, `quantized`, with AVX-512 VNNI; [`crate::ggml_ops`] has
//! the rest of the layer);
//! [`QuantMatrix::matmul_t`] (`--weights quantized-f32-prefill`) runs the same kernels up to [`INT_ROWS`] rows. Integer sums are exact in any order, so the
//! kernels are free in how they get them: eight rows per 256-bit register (AVX2, `maddubs`/`madd`), or two groups
//! of eight per 512-bit register with `vpdpbusd` (AVX-512 VNNI, where present; the same lanes).
//!
//! [`QuantMatrix::matmul_t`] runs products of more than [`INT_ROWS`] rows (prompts) differently: it dequantizes up
//! to 16 MB of rows at a time into an f32 buffer for libtorch's GEMM (`--weights quantized-f32-prefill`); the
//! dequantization is paid once per chunk for all rows of `x`, and the f32 weights never exist whole. That product
//! is exactly the f32 product of the dequantized weights, close to llama.cpp's but not equal.
//!
//! Kernels are chosen at run time: AVX2, FMA and F16C, else a portable path that is correct and slow.

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::qdot::{self, Q8Block, Q8KBlock};
use crate::quant::{self, GgmlType};

/// Rows interleaved per group.
pub const GROUP: usize = 8;
/// The largest product [`QuantMatrix::matmul_t`] runs in integers; above it, chunks are dequantized for libtorch's
/// GEMM.
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
        self.product(x, false)
    }

    /// [`Self::matmul_t`] in integers whatever the number of rows (llama.cpp's numerics on prefill too).
    pub fn matmul_t_int(&self, x: &Tensor) -> Result<Tensor> {
        self.product(x, true)
    }

    fn product(&self, x: &Tensor, int_always: bool) -> Result<Tensor> {
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
        if m > INT_ROWS && !int_always {
            return self.matmul_dequantized(&x);
        }
        // SAFETY: contiguous f32 CPU tensor of m * k elements, only read during this call.
        let xs = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, m * self.k) };
        // Each activation row quantized once, the rows spread over the team.
        let rows: Vec<&[f32]> = xs.chunks_exact(self.k).collect();
        let a32: Vec<Vec<Q8Block>> = if self.segs.iter().any(|s| is_q32(s.ty)) {
            crate::team::map(&rows, PARALLEL_ROWS, &|r| qdot::quantize_row_q8(r)).into_iter().collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let ak: Vec<Vec<Q8KBlock>> = if self.segs.iter().any(|s| is_k(s.ty)) {
            crate::team::map(&rows, PARALLEL_ROWS, &|r| qdot::quantize_row_q8k(r)).into_iter().collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let y = Tensor::empty([m as i64, self.n as i64], (Kind::Float, Device::Cpu));
        let out = crate::team::SharedMut::new(y.data_ptr() as *mut f32);
        let groups = self.n / GROUP;
        // For a few rows, one contiguous range of groups per thread of the team (each core streams one run of
        // the weights). A small product runs on the calling thread alone: sharing it costs more than it saves.
        let threads = if self.bytes() * m < SERIAL_BYTES { 1 } else { crate::team::width() };
        // A product of many rows is bound by arithmetic, not by streaming the weights: there the groups go in
        // smaller runs (an even number of groups, for the two-group kernel), taken as threads come free, so a
        // core that falls behind (another process, a busy VM neighbour) does not hold the others up.
        let parts = if m >= BALANCED_ROWS { threads * 4 } else { threads };
        let per_task = groups.div_ceil(parts).next_multiple_of(2).max(1);
        let fast = available();
        let wide = fast && wide_available();
        // Per activation row and block, the sums of each four values (what the offset types' bias multiplies),
        // for the per-row kernel; prompts (the panel kernel) take them pre-scaled below.
        let biased = self.segs.iter().any(|s| matches!(s.ty, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0));
        let sums: Vec<Vec<[i32; 8]>> = if wide && m < KPANEL_ROWS {
            crate::team::map(&a32, PARALLEL_ROWS, &|r| {
                if biased {
                    r.iter().map(chunk_sums).collect()
                } else {
                    vec![[0; 8]; r.len()]
                }
            })
        } else {
            Vec::new()
        };
        // For the 32-value panel kernel (prompts): each offset type's `vpdpbusd` start values, `-offset Σ` of
        // each four activations.
        let inits: Vec<(i32, Vec<Vec<[i32; 8]>>)> = if wide && m >= KPANEL_ROWS {
            let mut offsets: Vec<i32> = self.segs.iter().filter(|s| is_q32(s.ty)).map(|s| offset_of(s.ty)).collect();
            offsets.sort_unstable();
            offsets.dedup();
            offsets
                .into_iter()
                .map(|o| {
                    let scaled = crate::team::map(&a32, PARALLEL_ROWS, &|r: &Vec<Q8Block>| {
                        r.iter().map(|b| chunk_sums(b).map(|x| -o * x)).collect::<Vec<[i32; 8]>>()
                    });
                    (o, scaled)
                })
                .collect()
        } else {
            Vec::new()
        };
        // For the K-quant prompt kernel: the activation rows as slices and each row's order.
        let a_k: Vec<&[Q8KBlock]> = ak.iter().map(|v| v.as_slice()).collect();
        let k_orders: Vec<Vec<qdot::KOrder>> = [GgmlType::Q4K, GgmlType::Q6K]
            .iter()
            .map(|&ty| (0..if ak.is_empty() { 0 } else { m }).map(|i| qdot::KOrder::of(ty, m, i)).collect())
            .collect();
        let run = |task: usize| {
            let mut tile = vec![[0f32; GROUP]; m];
            let end = ((task + 1) * per_task).min(groups);
            let mut g = task * per_task;
            while g < end {
                let row = g * GROUP;
                let seg = self.segs.iter().find(|s| row < s.row0 + s.rows).expect("group inside the matrix");
                let at = (row - seg.row0) / GROUP;
                let pair = g + 1 < end && row + 2 * GROUP <= seg.row0 + seg.rows;
                let dst = |i: usize| {
                    // SAFETY: row i < m, columns row..row + 2 GROUP <= n lie inside `y` (m x n); these two
                    // groups' columns are written by this task only, and each (row, group) once.
                    unsafe { &mut *(out.get().add(i * self.n + row) as *mut [f32; 2 * GROUP]) }
                };
                #[cfg(target_arch = "x86_64")]
                if wide && pair && matches!(seg.ty, GgmlType::Q4K | GgmlType::Q6K) && m >= KPANEL_ROWS {
                    // A prompt on Q4_K/Q6_K: the two groups' blocks unpacked once (for every activation row), then
                    // sixteen rows per register, four activation rows at a time.
                    let nsb = self.k / qdot::QK_K;
                    let rb = nsb * seg.ty.block_bytes();
                    let data = &seg.data[at * GROUP * rb..(at + 2) * GROUP * rb];
                    let rows: Vec<&[u8]> = data.chunks_exact(rb).collect();
                    let panel = avx512::KPanel::new(seg.ty, &rows, nsb).expect("Q4_K or Q6_K blocks");
                    for i0 in (0..m).step_by(4) {
                        let i1 = (i0 + 4).min(m);
                        let mut o: Vec<&mut [f32; 2 * GROUP]> = (i0..i1).map(dst).collect();
                        // SAFETY: AVX-512 F/BW/VNNI are present (`wide`); every activation row has `nsb` blocks;
                        // the orders are llama.cpp's for Q6_K (Chain from 8 rows) and Q4_K (Split64/Split).
                        unsafe {
                            let orders = &k_orders[usize::from(seg.ty == GgmlType::Q6K)][i0..i1];
                            avx512::kquant_rows(&panel, &a_k[i0..i1], orders, &mut o)
                        };
                    }
                    g += 2;
                    continue;
                }
                #[cfg(target_arch = "x86_64")]
                if wide && is_q32(seg.ty) && pair {
                    // Two groups at once in 512-bit registers: the same arithmetic, lane for lane.
                    let nb = self.k / QK;
                    let span = GROUP * nb * seg.ty.block_bytes();
                    let data = &seg.data[at * span..(at + 2) * span];
                    // A prompt: the blocks unpacked once for every activation row (a panel in L1).
                    if m >= KPANEL_ROWS {
                        let (_, init) = inits
                            .iter()
                            .find(|(b, _)| *b == offset_of(seg.ty))
                            .expect("start values made for every 32-value type's offset");
                        // SAFETY: AVX-512 F/BW are present (`wide`); `data` is two groups of `nb` records.
                        let panel = unsafe { avx512::Q32Panel::new(seg.ty, data, nb) };
                        for (i0, (a, s)) in (0..m).step_by(2).zip(a32.chunks(2).zip(init.chunks(2))) {
                            // SAFETY: AVX-512 F/BW/VNNI (`wide`); every activation row has `nb` blocks and start
                            // values.
                            unsafe {
                                if a.len() == 2 {
                                    avx512::panel_q32(&panel, a, s, &mut [dst(i0), dst(i0 + 1)])
                                } else {
                                    avx512::panel_q32(&panel, a, s, &mut [dst(i0)])
                                }
                            };
                        }
                        g += 2;
                        continue;
                    }
                    // The kernel writes each row's 16 outputs into `y` itself (a copy from a tile cost 5% of a
                    // prompt: the stores miss the cache either way, but inside the kernel they overlap its work).
                    for (i0, (a, s)) in (0..m).step_by(2).zip(a32.chunks(2).zip(sums.chunks(2))) {
                        // SAFETY: AVX-512 F/BW/VNNI and F16C are present (`wide`); `data` is two groups of `nb`
                        // records of `seg.ty`; every activation row has `nb` blocks and `nb` chunk sums.
                        unsafe {
                            if a.len() == 2 {
                                avx512::groups_q32(seg.ty, data, nb, a, s, &mut [dst(i0), dst(i0 + 1)])
                            } else {
                                avx512::groups_q32(seg.ty, data, nb, a, s, &mut [dst(i0)])
                            }
                        };
                    }
                    g += 2;
                    continue;
                }
                self.group(seg, at, &a32, &ak, fast, &mut tile);
                for (i, t) in tile.iter().enumerate() {
                    // SAFETY: row i < m, columns row..row + GROUP <= n lie inside `y` (m x n); each group's columns
                    // are written by exactly one task.
                    unsafe { std::ptr::copy_nonoverlapping(t.as_ptr(), out.get().add(i * self.n + row), GROUP) };
                }
                g += 1;
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
            // The activation rows in fours, each with its order (the same for every weight row).
            let orders: Vec<qdot::KOrder> = (0..ak.len()).map(|i| qdot::KOrder::of(seg.ty, ak.len(), i)).collect();
            let rows: Vec<&[Q8KBlock]> = ak.iter().map(|v| v.as_slice()).collect();
            for r in 0..GROUP {
                let w = &data[r * nb * bb..(r + 1) * nb * bb];
                for ((t, a), o) in tile.chunks_mut(4).zip(rows.chunks(4)).zip(orders.chunks(4)) {
                    let mut out = [0f32; 4];
                    // SAFETY: `seg.ty` is a K-quant and `w` holds `nb` blocks, as many as each row of `a`
                    // (checked at `new`); at most four rows.
                    unsafe { qdot::vec_dot_k_rows_unchecked(seg.ty, w, a, o, &mut out[..a.len()]) };
                    for (ti, v) in t.iter_mut().zip(out) {
                        ti[r] = v;
                    }
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if fast {
            for (t, a) in tile.iter_mut().zip(a32) {
                // SAFETY: the CPU has AVX2, FMA and F16C (`fast`); `data` is `nb` records of `seg.ty` and every
                // activation row has `nb` blocks.
                unsafe { avx2::group_q32(seg.ty, data, nb, a, t) };
            }
            return;
        }
        let _ = fast;
        for (t, a) in tile.iter_mut().zip(a32) {
            for (r, out) in t.iter_mut().enumerate() {
                let row: Vec<u8> = (0..nb)
                    .flat_map(|b| from_record(seg.ty, &data[b * GROUP * bb..(b + 1) * GROUP * bb], r)[..bb].to_vec())
                    .collect();
                *out = qdot::vec_dot_portable(seg.ty, &row, a).unwrap_or(0.0);
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

/// Whether llama.cpp's numerics run here about as fast as the f32 path's: the 512-bit product and attention
/// kernels (AVX-512 F, BW and VNNI, not turned off by `RADIXSERVE_NO_AVX512`). What `--weights quantized`
/// chooses by.
pub fn exact_is_fast() -> bool {
    available() && wide_available() && crate::ggml_ops::wide_available()
}

/// Whether the 512-bit kernels can run here (AVX-512 F, BW and VNNI).
fn wide_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The offset a 32-value type's stored values carry (`q + offset`, unsigned), 0 for those with a min instead.
fn offset_of(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q4_0 => 8,
        GgmlType::Q5_0 => 16,
        GgmlType::Q8_0 => 128,
        _ => 0,
    }
}

/// The sums of each four activations of a block (values `4c..4c + 4`): what an offset type's bias multiplies.
fn chunk_sums(b: &Q8Block) -> [i32; 8] {
    std::array::from_fn(|c| b.qs[4 * c..4 * c + 4].iter().map(|&q| q as i32).sum())
}

const QK: usize = 32;

/// Activation rows from which Q4_K and Q6_K products run the unpacked-panel kernel (Q6_K's order is llama.cpp's
/// tiled one from eight rows).
const KPANEL_ROWS: usize = 8;

/// Activation rows from which a product's groups are shared out in small runs rather than one per thread.
const BALANCED_ROWS: usize = 16;

/// Activation rows below which they are quantized on the calling thread alone.
const PARALLEL_ROWS: usize = 32;

/// The 32-value kernel on AVX-512 (F, BW, VNNI): two groups (16 rows) per register, `vpdpbusd` for each four
/// values' products, the same per-lane arithmetic as [`avx2::group_q32`], so results are equal to the bit. The
/// weights enter `vpdpbusd` unsigned: the offset types' stored values (`q + 8`, `q + 16`) or Q8_0's `q + 128`,
/// and the accumulation starts from `-bias Σ a` of those four activations, so each lane is the exact integer
/// sum of the signed products, as ggml's.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Fields, GROUP};
    use crate::qdot::Q8Block;
    use crate::quant::GgmlType;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && !crate::ggml_ops::avx512_disabled()
    }

    /// Two groups' eight records side by side: `lo` from the first group's record, `hi` the second's.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn pair(p0: *const u8, p1: *const u8) -> __m512i {
        // SAFETY: the caller passes 32 readable bytes at each.
        unsafe {
            _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(p0 as *const __m256i)),
                _mm256_loadu_si256(p1 as *const __m256i),
            )
        }
    }

    /// Sixteen f16 values, eight at each pointer, as f32.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn halves(p0: *const u8, p1: *const u8) -> __m512 {
        // SAFETY: the caller passes 16 readable bytes at each.
        unsafe {
            let both = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(p0 as *const __m128i)),
                _mm_loadu_si128(p1 as *const __m128i),
            );
            _mm512_cvtph_ps(both)
        }
    }

    /// Chunks `piece` and `piece + 4` (values `4 piece..4 piece + 4` and `16 + 4 piece..`) of block records `p0`
    /// and `p1` (two groups, the first's rows in the low lanes) as the unsigned bytes `vpdpbusd` multiplies: the
    /// nibbles, Q5's fifth bits added, Q8_0's values offset by 128. `piece < 4`.
    ///
    /// # Safety
    /// AVX-512 F and BW; `p0` and `p1` point at whole records of `ty` (a 32-value type).
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn chunk_pair(ty: GgmlType, f: Fields, p0: *const u8, p1: *const u8, piece: usize) -> (__m512i, __m512i) {
        let qs = f.rec_qs();
        // SAFETY: the caller's records hold their quants (and fifth-bit masks) at these offsets.
        unsafe {
            if ty == GgmlType::Q8_0 {
                let at = |c: usize| pair(p0.add(qs + 32 * c), p1.add(qs + 32 * c));
                let flip = _mm512_set1_epi8(-128);
                return (_mm512_xor_si512(at(piece), flip), _mm512_xor_si512(at(piece + 4), flip));
            }
            let low4 = _mm512_set1_epi8(0x0F);
            let raw = pair(p0.add(qs + 32 * piece), p1.add(qs + 32 * piece));
            let mut lo = _mm512_and_si512(raw, low4);
            let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), low4);
            if f.qh.is_some() {
                // Chunk c's fifth bits: bit 4r + j of the record's mask c is value 4c + j of row r.
                let mask = |c: usize| {
                    let m0 = (p0.add(f.rec_qh() + 4 * c) as *const u32).read_unaligned() as u64;
                    let m1 = (p1.add(f.rec_qh() + 4 * c) as *const u32).read_unaligned() as u64;
                    m0 | (m1 << 32)
                };
                lo = _mm512_or_si512(lo, _mm512_maskz_mov_epi8(mask(piece), _mm512_set1_epi8(0x10)));
                hi = _mm512_or_si512(hi, _mm512_maskz_mov_epi8(mask(piece + 4), _mm512_set1_epi8(0x10)));
            }
            (lo, hi)
        }
    }

    /// `out[i][r]` for the 16 rows of two consecutive groups (`data`: the first's `nb` records, then the
    /// second's) and one or two activation rows.
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI; `ty` is a 32-value type; `data` holds `2 nb` records of it; each `a[i]` and
    /// `sums[i]` has `nb` entries; `a.len() == sums.len() == out.len()` is 1 or 2.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn groups_q32(
        ty: GgmlType,
        data: &[u8],
        nb: usize,
        a: &[Vec<Q8Block>],
        sums: &[Vec<[i32; 8]>],
        out: &mut [&mut [f32; 2 * GROUP]],
    ) {
        // SAFETY: the contract above, passed on.
        unsafe {
            match (ty, a.len()) {
                (GgmlType::Q4_0, 1) => kernel::<0, 1>(data, nb, a, sums, out),
                (GgmlType::Q4_0, _) => kernel::<0, 2>(data, nb, a, sums, out),
                (GgmlType::Q4_1, 1) => kernel::<1, 1>(data, nb, a, sums, out),
                (GgmlType::Q4_1, _) => kernel::<1, 2>(data, nb, a, sums, out),
                (GgmlType::Q5_0, 1) => kernel::<2, 1>(data, nb, a, sums, out),
                (GgmlType::Q5_0, _) => kernel::<2, 2>(data, nb, a, sums, out),
                (GgmlType::Q5_1, 1) => kernel::<3, 1>(data, nb, a, sums, out),
                (GgmlType::Q5_1, _) => kernel::<3, 2>(data, nb, a, sums, out),
                (_, 1) => kernel::<4, 1>(data, nb, a, sums, out),
                (_, _) => kernel::<4, 2>(data, nb, a, sums, out),
            }
        }
    }

    const TYPES: [GgmlType; 5] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];

    /// Two groups' blocks of a 32-value type unpacked once for a product of many activation rows
    /// ([`panel_q32`]): per block, the eight 64-byte registers [`groups_q32`] would unpack (the sixteen rows'
    /// unsigned values, four per row per chunk), the scales and the mins (f32, sixteen rows each).
    pub(super) struct Q32Panel {
        nb: usize,
        w: Vec<__m512i>,
        d: Vec<__m512>,
        m: Vec<__m512>,
    }

    impl Q32Panel {
        /// # Safety
        /// AVX-512 F and BW; `ty` is a 32-value type; `data` holds two groups of `nb` records of it.
        #[target_feature(enable = "avx512f,avx512bw")]
        pub(super) unsafe fn new(ty: GgmlType, data: &[u8], nb: usize) -> Self {
            let f = Fields::of(ty);
            let rb = GROUP * ty.block_bytes();
            assert!(data.len() >= 2 * nb * rb);
            let mut p = Q32Panel { nb, w: Vec::with_capacity(8 * nb), d: Vec::new(), m: Vec::new() };
            for b in 0..nb {
                // SAFETY: record b of each group lies inside `data` (asserted); every read is inside it.
                unsafe {
                    let (p0, p1) = (data.as_ptr().add(b * rb), data.as_ptr().add((nb + b) * rb));
                    p.d.push(halves(p0, p1));
                    if f.m.is_some() {
                        p.m.push(halves(p0.add(f.rec_m()), p1.add(f.rec_m())));
                    }
                    let mut w = [_mm512_setzero_si512(); 8];
                    for piece in 0..4 {
                        (w[piece], w[piece + 4]) = chunk_pair(ty, f, p0, p1, piece);
                    }
                    p.w.extend_from_slice(&w);
                }
            }
            p
        }
    }

    /// [`groups_q32`] over a [`Q32Panel`] (the same arithmetic, lane for lane, without unpacking), with each
    /// activation row's `vpdpbusd` start values precomputed: `init[i][b][c] = -bias Σ` of chunk `c`'s four
    /// activations (0 for the types without an offset).
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI; `a`, `init` and `out` have the same length, 1 or 2; each `a[i]` and `init[i]` has
    /// the panel's `nb` entries.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn panel_q32(
        p: &Q32Panel,
        a: &[Vec<Q8Block>],
        init: &[Vec<[i32; 8]>],
        out: &mut [&mut [f32; 2 * GROUP]],
    ) {
        // SAFETY: the contract above, passed on.
        unsafe {
            match a.len() {
                1 => panel_kernel::<1>(p, a, init, out),
                _ => panel_kernel::<2>(p, a, init, out),
            }
        }
    }

    /// [`panel_q32`] for `XR` activation rows.
    ///
    /// # Safety
    /// As [`panel_q32`], with `a.len() == XR`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::needless_range_loop)] // arrays indexed in lock-step by activation row
    unsafe fn panel_kernel<const XR: usize>(
        p: &Q32Panel,
        a: &[Vec<Q8Block>],
        init: &[Vec<[i32; 8]>],
        out: &mut [&mut [f32; 2 * GROUP]],
    ) {
        let nb = p.nb;
        assert!(a.len() == XR && init.len() == XR && out.len() == XR && p.w.len() == 8 * nb && p.d.len() == nb);
        assert!(p.m.is_empty() || p.m.len() == nb);
        assert!(a.iter().all(|r| r.len() >= nb) && init.iter().all(|r| r.len() >= nb));
        let has_min = !p.m.is_empty();
        let mut acc = [[_mm512_setzero_ps(); 8]; XR];
        let mut mins = [_mm512_setzero_ps(); XR];
        // Raw pointers (every index below is inside, as asserted): no bounds checks in the loop, whose
        // accumulators must stay in registers.
        let (wp, dp, mp) = (p.w.as_ptr(), p.d.as_ptr(), p.m.as_ptr());
        let ap: [*const Q8Block; XR] = std::array::from_fn(|i| a[i].as_ptr());
        let ip: [*const [i32; 8]; XR] = std::array::from_fn(|i| init[i].as_ptr());
        for b in 0..nb {
            // SAFETY: b < nb: block b of each activation row, its start values, and the panel's block b.
            unsafe {
                let blk: [&Q8Block; XR] = std::array::from_fn(|i| &*ap[i].add(b));
                let ini: [&[i32; 8]; XR] = std::array::from_fn(|i| &*ip[i].add(b));
                let d = *dp.add(b);
                let dd: [__m512; XR] = std::array::from_fn(|i| _mm512_mul_ps(d, _mm512_set1_ps(blk[i].d)));
                for c in 0..8 {
                    let w = *wp.add(8 * b + c);
                    for i in 0..XR {
                        let yc = _mm512_set1_epi32((blk[i].qs.as_ptr().add(4 * c) as *const i32).read_unaligned());
                        let isum = _mm512_dpbusd_epi32(_mm512_set1_epi32(ini[i][c]), w, yc);
                        acc[i][c] = _mm512_fmadd_ps(dd[i], _mm512_cvtepi32_ps(isum), acc[i][c]);
                    }
                }
                if has_min {
                    let m = *mp.add(b);
                    for i in 0..XR {
                        mins[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(blk[i].s), mins[i]);
                    }
                }
            }
        }
        for i in 0..XR {
            let sum = crate::qdot::avx2::tree8_512(&acc[i]);
            // SAFETY: `out[i]` holds 16 f32.
            unsafe { _mm512_storeu_ps(out[i].as_mut_ptr(), _mm512_add_ps(sum, mins[i])) };
        }
    }

    /// Sixteen rows of Q4_K or Q6_K blocks (two groups) unpacked once for a product of many activation rows
    /// ([`kquant_rows`]): the unsigned weights four values per row per 64 bytes (`q[sb][chunk][row][4]`), the
    /// sub-blocks' scales and Q4_K's mins per row (`[sb][sub][row]`), and each block's `d` and `dmin`
    /// (`[sb][row]`). Built per task from the stored blocks, so the stored layout (what decode steps stream)
    /// stays as it is.
    pub(super) struct KPanel {
        ty: GgmlType,
        nsb: usize,
        q: Vec<u8>,
        scales: Vec<i32>,
        mins: Vec<i32>,
        d: Vec<f32>,
        dmin: Vec<f32>,
    }

    const ROWS: usize = 2 * GROUP;

    impl KPanel {
        /// The panel of `rows` (16 rows of `nsb` blocks of `ty`, Q4_K or Q6_K).
        pub(super) fn new(ty: GgmlType, rows: &[&[u8]], nsb: usize) -> crate::error::Result<Self> {
            assert!(rows.len() == ROWS && matches!(ty, GgmlType::Q4K | GgmlType::Q6K));
            let bb = ty.block_bytes();
            let mut p = KPanel {
                ty,
                nsb,
                q: vec![0; nsb * 256 * ROWS],
                scales: vec![0; nsb * 16 * ROWS],
                mins: vec![0; nsb * 8 * ROWS],
                d: vec![0.0; nsb * ROWS],
                dmin: vec![0.0; nsb * ROWS],
            };
            for (r, row) in rows.iter().enumerate() {
                for b in 0..nsb {
                    let u = crate::qdot::kblock_unpacked(ty, &row[b * bb..(b + 1) * bb])?;
                    for (c, four) in u.q.chunks_exact(4).enumerate() {
                        let at = ((b * 64 + c) * ROWS + r) * 4;
                        p.q[at..at + 4].copy_from_slice(four);
                    }
                    for (j, &sc) in u.scales.iter().enumerate() {
                        p.scales[(b * 16 + j) * ROWS + r] = sc;
                    }
                    for (j, &m) in u.mins.iter().enumerate() {
                        p.mins[(b * 8 + j) * ROWS + r] = m;
                    }
                    (p.d[b * ROWS + r], p.dmin[b * ROWS + r]) = (u.d, u.dmin);
                }
            }
            Ok(p)
        }
    }

    /// `out[i][r]` for the panel's 16 rows and up to four activation rows, in llama.cpp's K-quant order for a
    /// product of many rows: Q6_K's tiled `fma(d Σ - dmin Σ_min, d_a, acc)` per block ([`KOrder::Chain`]);
    /// Q4_K's repacked kernels' two chains `fma(Σ, d d_a, acc)`, `fma(Σ_min, dmin d_a, m)` per 64 values
    /// ([`KOrder::Split64`]) or per block ([`KOrder::Split`]), then `acc - m`. The integer sums (exact, in any
    /// order) come from `vpdpbusd` with the sixteen rows in the lanes; the float steps are lane for lane those of
    /// [`crate::qdot::vec_dot_k_portable`], so results are equal to the bit.
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI; `a.len() == orders.len() == out.len()` is 1 to 4; each `a[i]` has the panel's
    /// `nsb` blocks; `orders` are `Chain` for Q6_K and `Split64` or `Split` for Q4_K.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn kquant_rows(
        p: &KPanel,
        a: &[&[crate::qdot::Q8KBlock]],
        orders: &[crate::qdot::KOrder],
        out: &mut [&mut [f32; ROWS]],
    ) {
        // Q6_K's order from eight activation rows is the tiled one; the Q4_K kernel checks its own.
        assert!(p.ty != GgmlType::Q6K || orders.iter().all(|&o| o == crate::qdot::KOrder::Chain));
        // SAFETY: the contract above, passed on.
        unsafe {
            match (p.ty, a.len()) {
                (GgmlType::Q6K, 1) => k6::<1>(p, a, out),
                (GgmlType::Q6K, 2) => k6::<2>(p, a, out),
                (GgmlType::Q6K, 3) => k6::<3>(p, a, out),
                (GgmlType::Q6K, _) => k6::<4>(p, a, out),
                (_, 1) => k4::<1>(p, a, orders, out),
                (_, 2) => k4::<2>(p, a, orders, out),
                (_, 3) => k4::<3>(p, a, orders, out),
                (_, _) => k4::<4>(p, a, orders, out),
            }
        }
    }

    /// Four activation bytes (values `4c..4c + 4` of a block) in every lane.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn act4(qs: &[i8; 256], c: usize) -> __m512i {
        assert!(c < 64);
        // SAFETY: bytes 4c..4c + 4 lie inside the block's 256 (asserted).
        _mm512_set1_epi32(unsafe { (qs.as_ptr().add(4 * c) as *const i32).read_unaligned() })
    }

    /// [`kquant_rows`] for Q6_K and `XR` activation rows.
    ///
    /// # Safety
    /// As [`kquant_rows`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::needless_range_loop)] // registers indexed in lock-step by activation row
    unsafe fn k6<const XR: usize>(p: &KPanel, a: &[&[crate::qdot::Q8KBlock]], out: &mut [&mut [f32; ROWS]]) {
        assert!(a.len() == XR && out.len() == XR && a.iter().all(|r| r.len() == p.nsb));
        let mut acc = [_mm512_setzero_ps(); XR];
        for b in 0..p.nsb {
            let mut tot = [_mm512_setzero_si512(); XR];
            let mut corr = [_mm512_setzero_si512(); XR];
            for s in 0..16 {
                let mut isum = [_mm512_setzero_si512(); XR];
                for c in 4 * s..4 * s + 4 {
                    // SAFETY: chunk c of block b is 64 bytes inside `q` (sized at `new`).
                    let w = unsafe { _mm512_loadu_si512(p.q.as_ptr().add((b * 64 + c) * ROWS * 4) as *const _) };
                    for i in 0..XR {
                        isum[i] = _mm512_dpbusd_epi32(isum[i], w, act4(&a[i][b].qs, c));
                    }
                }
                // SAFETY: sub-block s of block b is 16 i32 inside `scales`.
                let sc = unsafe { _mm512_loadu_si512(p.scales.as_ptr().add((b * 16 + s) * ROWS) as *const _) };
                for i in 0..XR {
                    tot[i] = _mm512_add_epi32(tot[i], _mm512_mullo_epi32(isum[i], sc));
                    let bsum = _mm512_set1_epi32(a[i][b].bsums[s] as i32);
                    corr[i] = _mm512_add_epi32(corr[i], _mm512_mullo_epi32(sc, bsum));
                }
            }
            // SAFETY: block b's 16 d and dmin values lie inside theirs.
            let (d, dmin) = unsafe {
                (_mm512_loadu_ps(p.d.as_ptr().add(b * ROWS)), _mm512_loadu_ps(p.dmin.as_ptr().add(b * ROWS)))
            };
            // -dmin with its sign flipped bitwise (so -0 for Q6_K's 0, as the scalar `-dmin`).
            let neg_dmin =
                _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(dmin), _mm512_set1_epi32(i32::MIN)));
            for i in 0..XR {
                // The unsigned weights' sum less 32 Σ sc Σ a: the signed weights' (q - 32) sum.
                let total = _mm512_sub_epi32(tot[i], _mm512_slli_epi32::<5>(corr[i]));
                let t = _mm512_mul_ps(d, _mm512_cvtepi32_ps(total));
                // Q6_K has no mins: fma(-0, 0, t) = t, kept as the scalar reference writes it.
                let u = _mm512_fmadd_ps(neg_dmin, _mm512_setzero_ps(), t);
                acc[i] = _mm512_fmadd_ps(u, _mm512_set1_ps(a[i][b].d), acc[i]);
            }
        }
        for i in 0..XR {
            // SAFETY: `out[i]` holds 16 f32.
            unsafe { _mm512_storeu_ps(out[i].as_mut_ptr(), acc[i]) };
        }
    }

    /// [`kquant_rows`] for Q4_K and `XR` activation rows.
    ///
    /// # Safety
    /// As [`kquant_rows`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::needless_range_loop)] // registers indexed in lock-step by activation row
    unsafe fn k4<const XR: usize>(
        p: &KPanel,
        a: &[&[crate::qdot::Q8KBlock]],
        orders: &[crate::qdot::KOrder],
        out: &mut [&mut [f32; ROWS]],
    ) {
        use crate::qdot::KOrder;
        assert!(a.len() == XR && out.len() == XR && orders.len() == XR && a.iter().all(|r| r.len() == p.nsb));
        assert!(orders.iter().all(|o| matches!(o, KOrder::Split | KOrder::Split64)));
        let per64: [bool; XR] = std::array::from_fn(|i| orders[i] == KOrder::Split64);
        let mut acc = [_mm512_setzero_ps(); XR];
        let mut mns = [_mm512_setzero_ps(); XR];
        for b in 0..p.nsb {
            // SAFETY: block b's 16 d and dmin values lie inside theirs.
            let (d, dmin) = unsafe {
                (_mm512_loadu_ps(p.d.as_ptr().add(b * ROWS)), _mm512_loadu_ps(p.dmin.as_ptr().add(b * ROWS)))
            };
            let mut tot = [_mm512_setzero_si512(); XR];
            let mut totm = [_mm512_setzero_si512(); XR];
            for part in 0..4 {
                let mut sum = [_mm512_setzero_si512(); XR];
                let mut summ = [_mm512_setzero_si512(); XR];
                for s in 2 * part..2 * part + 2 {
                    let mut isum = [_mm512_setzero_si512(); XR];
                    for c in 8 * s..8 * s + 8 {
                        // SAFETY: chunk c of block b is 64 bytes inside `q`.
                        let w = unsafe { _mm512_loadu_si512(p.q.as_ptr().add((b * 64 + c) * ROWS * 4) as *const _) };
                        for i in 0..XR {
                            isum[i] = _mm512_dpbusd_epi32(isum[i], w, act4(&a[i][b].qs, c));
                        }
                    }
                    // SAFETY: sub-block s of block b is 16 i32 inside `scales` and `mins`.
                    let (sc, mn) = unsafe {
                        (
                            _mm512_loadu_si512(p.scales.as_ptr().add((b * 16 + s) * ROWS) as *const _),
                            _mm512_loadu_si512(p.mins.as_ptr().add((b * 8 + s) * ROWS) as *const _),
                        )
                    };
                    for i in 0..XR {
                        sum[i] = _mm512_add_epi32(sum[i], _mm512_mullo_epi32(isum[i], sc));
                        let bs = a[i][b].bsums[2 * s] as i32 + a[i][b].bsums[2 * s + 1] as i32;
                        summ[i] = _mm512_add_epi32(summ[i], _mm512_mullo_epi32(mn, _mm512_set1_epi32(bs)));
                    }
                }
                for i in 0..XR {
                    if per64[i] {
                        let da = _mm512_set1_ps(a[i][b].d);
                        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i]), _mm512_mul_ps(d, da), acc[i]);
                        mns[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(summ[i]), _mm512_mul_ps(dmin, da), mns[i]);
                    } else {
                        tot[i] = _mm512_add_epi32(tot[i], sum[i]);
                        totm[i] = _mm512_add_epi32(totm[i], summ[i]);
                    }
                }
            }
            for i in 0..XR {
                if !per64[i] {
                    let da = _mm512_set1_ps(a[i][b].d);
                    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[i]), _mm512_mul_ps(d, da), acc[i]);
                    mns[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(totm[i]), _mm512_mul_ps(dmin, da), mns[i]);
                }
            }
        }
        for i in 0..XR {
            // SAFETY: `out[i]` holds 16 f32.
            unsafe { _mm512_storeu_ps(out[i].as_mut_ptr(), _mm512_sub_ps(acc[i], mns[i])) };
        }
    }

    /// [`groups_q32`] for `TYPES[T]` and `XR` activation rows.
    ///
    /// # Safety
    /// As [`groups_q32`], with `a.len() == XR`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::needless_range_loop)] // arrays indexed in lock-step by activation row
    unsafe fn kernel<const T: usize, const XR: usize>(
        data: &[u8],
        nb: usize,
        a: &[Vec<Q8Block>],
        sums: &[Vec<[i32; 8]>],
        out: &mut [&mut [f32; 2 * GROUP]],
    ) {
        let ty = TYPES[T];
        let f = Fields::of(ty);
        let rb = GROUP * ty.block_bytes();
        assert!(data.len() >= 2 * nb * rb && a.len() == XR && sums.len() == XR && out.len() == XR);
        assert!(a.iter().all(|r| r.len() >= nb) && sums.iter().all(|r| r.len() >= nb));
        let bias = super::offset_of(ty);
        let has_min = matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1);
        let mut acc = [[_mm512_setzero_ps(); 8]; XR];
        let mut mins = [_mm512_setzero_ps(); XR];
        for b in 0..nb {
            // SAFETY: record b of each group lies inside `data`, a[i][b] and sums[i][b] inside theirs (asserted);
            // every read is inside them.
            unsafe {
                let (p0, p1) = (data.as_ptr().add(b * rb), data.as_ptr().add((nb + b) * rb));
                for line in 0..rb.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(2048 + 64 * line) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(2048 + 64 * line) as *const i8);
                }
                let d16 = halves(p0, p1);
                let dd: [__m512; XR] = std::array::from_fn(|i| _mm512_mul_ps(d16, _mm512_set1_ps(a[i][b].d)));
                let y: [*const u8; XR] = std::array::from_fn(|i| a[i][b].qs.as_ptr() as *const u8);
                let mut chunk = |c: usize, w: __m512i| {
                    for i in 0..XR {
                        let yc = _mm512_set1_epi32((y[i].add(4 * c) as *const i32).read_unaligned());
                        let init = _mm512_set1_epi32(-bias * sums[i][b][c]);
                        let isum = _mm512_dpbusd_epi32(init, w, yc);
                        acc[i][c] = _mm512_fmadd_ps(dd[i], _mm512_cvtepi32_ps(isum), acc[i][c]);
                    }
                };
                for piece in 0..4 {
                    let (lo, hi) = chunk_pair(ty, f, p0, p1, piece);
                    chunk(piece, lo);
                    chunk(piece + 4, hi);
                }
                if has_min {
                    let m16 = halves(p0.add(f.rec_m()), p1.add(f.rec_m()));
                    for i in 0..XR {
                        let s = _mm512_set1_ps(a[i][b].s);
                        mins[i] = _mm512_fmadd_ps(m16, s, mins[i]);
                    }
                }
            }
        }
        for i in 0..XR {
            let sum = crate::qdot::avx2::tree8_512(&acc[i]);
            // SAFETY: `out[i]` holds 16 f32.
            unsafe { _mm512_storeu_ps(out[i].as_mut_ptr(), _mm512_add_ps(sum, mins[i])) };
        }
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

    /// The eight rows' scales of a record, and their mins (Q4_1, Q5_1; zero for the other types).
    ///
    /// # Safety
    /// F16C; `p` points at a whole record of `ty`.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales_mins(ty: GgmlType, f: Fields, p: *const u8) -> (__m256, __m256) {
        // SAFETY: the scales are the record's first 16 bytes, the mins the 16 at `rec_m` (types with a min).
        unsafe {
            let d8 = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            let m8 = match ty {
                GgmlType::Q4_1 | GgmlType::Q5_1 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(f.rec_m()) as *const __m128i)),
                _ => _mm256_setzero_ps(),
            };
            (d8, m8)
        }
    }

    /// The eight rows' scales of a record, and what multiplies an activation block's sum for each: the min (Q4_1,
    /// Q5_1), the unsigned encodings' offset (-8 d for Q4_0, -16 d for Q5_0), or nothing (Q8_0).
    ///
    /// # Safety
    /// F16C; `p` points at a whole record of `ty`.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales_offsets(ty: GgmlType, f: Fields, p: *const u8) -> (__m256, __m256) {
        // SAFETY: as this function's contract.
        let (d8, m8) = unsafe { scales_mins(ty, f, p) };
        let off8 = match ty {
            GgmlType::Q4_0 => _mm256_mul_ps(d8, _mm256_set1_ps(-8.0)),
            GgmlType::Q5_0 => _mm256_mul_ps(d8, _mm256_set1_ps(-16.0)),
            _ => m8,
        };
        (d8, off8)
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

    /// `out[r] = Σ_b w[r, b] · a[b]` for the eight rows of one group and one row of activations, in the order of
    /// ggml's AVX2 kernels (`ggml_vec_dot_*_q8_*`, and llamafile's `tinyBLAS_Q0_AVX`, which llama.cpp runs for
    /// prefill): eight partial sums per row, sum `c` taking each block's exact integer sum over values
    /// `4c..4c + 4` times `d_w d_a` in one fused multiply-add, added up in the tree of `hsum_float_8`, then the
    /// mins' part. Here partial sum `c` of every row sits in `acc[c]`, row `r` in lane `r`, so the tree is eight
    /// vertical adds. Bit for bit llama.cpp's result is what keeps greedy outputs on its at near-ties: int8
    /// rounding downstream turns any last-bit difference into a whole rounding step (issue #21).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `ty` is a 32-value type; `data` holds `nb` records of it; `a` has `nb` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_q32(ty: GgmlType, data: &[u8], nb: usize, a: &[Q8Block], out: &mut [f32; GROUP]) {
        // SAFETY: the contract above, passed on.
        unsafe {
            match ty {
                GgmlType::Q4_0 => row_q32::<0>(data, nb, a, out),
                GgmlType::Q4_1 => row_q32::<1>(data, nb, a, out),
                GgmlType::Q5_0 => row_q32::<2>(data, nb, a, out),
                GgmlType::Q5_1 => row_q32::<3>(data, nb, a, out),
                _ => row_q32::<4>(data, nb, a, out),
            }
        }
    }

    /// How far ahead of the record being read the kernel prefetches (measured with `qdot_speed` at batch 1 on
    /// SmolLM2's weights: 512 bytes 14.9 GB/s, 1024 16.5, 2048 18.0, 4096 17.5).
    const PREFETCH: usize = 2048;

    const TYPES: [GgmlType; 5] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];

    /// [`group_q32`] for type `TYPES[T]` (compile-time, so every loop unrolls and the accumulators stay in
    /// registers).
    ///
    /// # Safety
    /// As [`group_q32`].
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_q32<const T: usize>(data: &[u8], nb: usize, a: &[Q8Block], out: &mut [f32; GROUP]) {
        let ty = TYPES[T];
        let f = Fields::of(ty);
        let rb = GROUP * ty.block_bytes();
        assert!(data.len() >= nb * rb && a.len() >= nb);
        let ones = _mm256_set1_epi16(1);
        // What a type's stored (unsigned) 4- or 5-bit values are offset by.
        let bias = match ty {
            GgmlType::Q4_0 => 8,
            GgmlType::Q5_0 => 16,
            _ => 0,
        };
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut mins = _mm256_setzero_ps();
        for b in 0..nb {
            // SAFETY: record b lies inside `data` and a[b] inside `a` (asserted); every read is inside them.
            unsafe {
                let p = data.as_ptr().add(b * rb);
                // One stream per core from memory is latency-bound without help: ask for the record PREFETCH
                // bytes ahead (a hint; prefetching past the end is harmless), one line per 64 bytes of record.
                for line in 0..rb.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + 64 * line) as *const i8);
                }
                let act = a.get_unchecked(b);
                let y = act.qs.as_ptr() as *const u8;
                let (d8, m8) = scales_mins(ty, f, p);
                let dd = _mm256_mul_ps(d8, _mm256_set1_ps(act.d));
                let mut chunk = |c: usize, w: __m256i| {
                    let yc = _mm256_set1_epi32((y.add(4 * c) as *const i32).read_unaligned());
                    let isum = if ty == GgmlType::Q4_1 || ty == GgmlType::Q5_1 {
                        // Unsigned weights: `maddubs` takes them as they are.
                        _mm256_madd_epi16(_mm256_maddubs_epi16(w, yc), ones)
                    } else {
                        // Signed (Q8_0, or the offset types less their offset): move w's sign onto y so
                        // `maddubs` sees |w| unsigned.
                        let w = if bias == 0 { w } else { _mm256_sub_epi8(w, _mm256_set1_epi8(bias)) };
                        _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(yc, w)), ones)
                    };
                    acc[c] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(isum), acc[c]);
                };
                if ty == GgmlType::Q8_0 {
                    for piece in 0..8 {
                        let [(c, w), _] = chunks(ty, f, p, piece);
                        chunk(c, w);
                    }
                } else {
                    for piece in 0..4 {
                        let [(c0, w0), (c1, w1)] = chunks(ty, f, p, piece);
                        chunk(c0, w0);
                        chunk(c1, w1);
                    }
                }
                if ty == GgmlType::Q4_1 || ty == GgmlType::Q5_1 {
                    let s = _mm256_set1_ps(act.s);
                    mins = _mm256_fmadd_ps(m8, s, mins);
                }
            }
        }
        let sum = crate::qdot::avx2::tree8(&acc);
        // SAFETY: `out` holds eight f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(sum, mins)) };
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
            // The source bytes of output row r (undoing the first segment's permutation).
            let bb = |ty: GgmlType| ty.block_bytes() * k / ty.block_len();
            let source = |r: usize| -> (GgmlType, &[u8]) {
                if r < 16 {
                    let s = permuted_source(r, 16, 2);
                    (pair[0], &a[s * bb(pair[0])..(s + 1) * bb(pair[0])])
                } else {
                    (pair[1], &b[(r - 16) * bb(pair[1])..(r - 15) * bb(pair[1])])
                }
            };
            for m in [1i64, 3, 4, 7, 32, 33, 70] {
                let x = Tensor::randn([m, k as i64], (Kind::Float, Device::Cpu));
                let xs = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
                // In integers (every size), each output is the portable dot product in llama.cpp's order for the
                // row's type, position and the product's size: equal to the bit.
                let got = Vec::<f32>::try_from(q.matmul_t_int(&x).unwrap().flatten(0, -1)).unwrap();
                for (i, row) in xs.chunks(k).enumerate() {
                    for r in 0..24 {
                        let (ty, w) = source(r);
                        let want = if is_k(ty) {
                            let order = qdot::KOrder::of(ty, m as usize, i);
                            qdot::vec_dot_k_portable(ty, w, &qdot::quantize_row_q8k(row).unwrap(), order).unwrap()
                        } else {
                            qdot::vec_dot_portable(ty, w, &qdot::quantize_row_q8(row).unwrap()).unwrap()
                        };
                        assert_eq!(got[i * 24 + r].to_bits(), want.to_bits(), "{pair:?} m={m} ({i}, {r})");
                    }
                }
                // Above INT_ROWS, `matmul_t` multiplies x as it is by the dequantized weights: the f32 product.
                if m as usize > INT_ROWS {
                    let got = q.matmul_t(&x).unwrap();
                    let want = x.matmul(&w.tr());
                    let err = (&got - &want).abs().max().double_value(&[]);
                    let scale = want.abs().max().double_value(&[]);
                    assert!(err <= 1e-5 * scale, "{pair:?} m={m}: error {err} against scale {scale}");
                }
            }
        }
    }

    /// Q4_K and Q6_K products of prompt size (the unpacked-panel kernel on two groups at a time, the row kernel
    /// on the odd group left over) equal llama.cpp's order per row, to the bit, below and above a whole four.
    #[test]
    fn k_quant_prompt_products_equal_the_portable_order() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (rows, k) = (40, 512);
        for ty in [GgmlType::Q4K, GgmlType::Q6K] {
            let a = random_rows(ty, rows, k, &mut rng);
            let q = QuantMatrix::new(k, &[RowBlocks { ty, rows, bytes: &a, unpermute_heads: None }]).unwrap();
            let rb = ty.block_bytes() * k / ty.block_len();
            for m in [8i64, 9, 12, 13, 37] {
                let x = Tensor::randn([m, k as i64], (Kind::Float, Device::Cpu));
                let xs = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
                let got = Vec::<f32>::try_from(q.matmul_t_int(&x).unwrap().flatten(0, -1)).unwrap();
                for (i, row) in xs.chunks(k).enumerate() {
                    let act = qdot::quantize_row_q8k(row).unwrap();
                    let order = qdot::KOrder::of(ty, m as usize, i);
                    for r in 0..rows {
                        let want = qdot::vec_dot_k_portable(ty, &a[r * rb..(r + 1) * rb], &act, order).unwrap();
                        let g = got[i * rows + r];
                        assert_eq!(g.to_bits(), want.to_bits(), "{ty:?} m={m} ({i}, {r}): {g} vs {want}");
                    }
                }
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
