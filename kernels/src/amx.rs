//! f32 matrix products `y = x @ w.T + b` on Intel AMX tiles, accurate to about 2^-16 of each product ("bf16x3").
//!
//! An encoder's batch (all-MiniLM-L6-v2 over 32 passages of 128 tokens) is 4096 rows through 24 products; in f32
//! MKL runs them near this machine's FMA limit, and so does sentence-transformers. AMX's `tdpbf16ps` multiplies 16
//! x 32 by 32 x 16 bf16 tiles into f32 sums, 16 times the work of an AVX-512 FMA per cycle, but a bf16 operand
//! keeps 8 significant bits (error up to 2^-9), far from f32's 24 and from the 1e-5 the issue allows. So each f32
//! is split into two bf16 values, `v = hi + lo` with `hi = bf16(v)` and `lo = bf16(v - hi)` (16 significant bits,
//! error at most 2^-17 |v|), and a product is `x_hi w_hi + x_lo w_hi + x_hi w_lo`, dropping `x_lo w_lo` (under
//! 2^-16 of `|x w|`): three tile products per f32 one, summed in f32 by the tiles, as CUTLASS's "3xTF32" does on
//! tensor cores. Measured on all-MiniLM-L6-v2: within 3e-6 of sentence-transformers per component, where the issue asks
//! 1e-5 (`kernels/tests/embeddings.rs`; libtorch's f32 path: 3e-7).
//!
//! [`SplitWeights::matmul_t_then_into`] fuses two products (an FFN): each output block of the first goes through
//! the activation and is split straight into the second's input tiles, so the middle never goes to memory as f32.
//! `attention` runs an encoder's attention on the same kernel: per head, keys and values packed as weights,
//! queries and (unnormalized) probabilities split as activations, the softmax's exponentials in f32 between the
//! two products.
//!
//! Layouts, all in whole 1 KiB tiles so every tile load reads one contiguous KiB: weights are split and packed
//! once at load as `[n / 32][k / 32][hi 0-15, hi 16-31, lo 0-15, lo 16-31]`, each tile 16 rows of k pairs by 16
//! outputs (the VNNI order `tdpbf16ps` reads); activations are split per call into `[m / 16][k / 32][hi, lo]`,
//! each tile 16 rows by 32 k. A kernel call sums a 16 x 32 block of outputs in two accumulator tiles (started
//! from the bias, loaded with stride 0) from six operand tiles per 32 k, each loaded once into its own register:
//! measured faster than the usual 2 x 2 block of accumulators (8 loads per 12 products, but into 4 registers that
//! each product phase must wait to overwrite) on data from L2, 16.4 against 18.2 TSC cycles per product
//! (`tools/amx_loop.c`; the products alone: 11.2).
//! Tasks of up to 128 rows by a range of 32-column blocks are spread over [`crate::team`]; a task walks k in
//! steps of 128 (the step's 16 KiB of weight tiles stay in L1 across its row blocks, the sums go through the
//! output buffer between steps): 10% faster than whole-k passes, whose weight tiles came from L2 for every block.
//!
//! Written by hand with inline assembly: Rust's AMX intrinsics and target features are unstable, and no crate on
//! stable Rust offers the tiles. Linux only (the kernel must grant the tile state, `arch_prctl`).
//! `RADIXSERVE_NO_AMX=1` (or `RADIXSERVE_NO_AVX512=1`) turns it off, to compare with the f32 path.

use std::cell::RefCell;
use std::thread::LocalKey;

use tch::{Device, Kind, Tensor};

use crate::team::SharedMut;

/// Rows of outputs per kernel call (one tile).
const MB: usize = 16;
/// Outputs per kernel call (two tiles).
const NB: usize = 32;
/// Kernel calls over rows per task, so a task's columns of weights are read from L2 for 128 rows.
const SUPER: usize = 8;
/// The k values one tile holds per row.
const KC: usize = 32;
/// Chunks of k per pass over a task's row blocks (four weight tiles each: 16 KiB, in L1 across the blocks).
const KSTEP: usize = 4;
/// Values of split activations kept between products on a thread (64 MiB).
const KEEP_SPLIT: usize = 32 << 20;

/// Whether this process runs the tiles: the CPU has AMX-BF16 (and AVX-512 F/BW/BF16 for the split), Linux granted the
/// tile state, and neither `RADIXSERVE_NO_AMX` nor `RADIXSERVE_NO_AVX512` is set.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("RADIXSERVE_NO_AMX").is_ok_and(|v| v != "0");
        !off && !crate::ggml_ops::avx512_disabled() && hardware()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn hardware() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let tiles = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && {
            let edx = __cpuid_count(7, 0).edx;
            edx & (1 << 22) != 0 && edx & (1 << 24) != 0
        };
    // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: without it the first tile instruction raises SIGILL.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; it only changes which register state this process may use.
    tiles && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn hardware() -> bool {
    false
}

/// One tile's bytes: 16 rows of 64.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Tile([u16; 512]);

/// bf16 of `v`, rounded to nearest even (as `vcvtneps2bf16` does for finite values).
fn bf16(v: f32) -> u16 {
    let b = v.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn widen(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `v = hi + lo` to 16 significant bits.
fn split(v: f32) -> (u16, u16) {
    let hi = bf16(v);
    (hi, bf16(v - widen(hi)))
}

/// An element-wise step applied to a product's output right after the kernel writes it.
pub type Epilogue<'a> = &'a (dyn Fn(&mut [f32]) + Sync);

/// Weights `[n, k]` split into bf16 halves and packed as tiles (four per 32 outputs and 32 k), with the bias.
pub struct SplitWeights {
    n: usize,
    k: usize,
    tiles: Vec<Tile>,
    bias: Vec<f32>,
}

impl std::fmt::Debug for SplitWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitWeights").field("n", &self.n).field("k", &self.k).finish()
    }
}

thread_local! {
    /// The split activations of the last call on this thread, kept to spare an allocation per product.
    /// Whole tiles, so every tile row is one cache line.
    static SPLIT: RefCell<Vec<Tile>> = const { RefCell::new(Vec::new()) };
    /// The middle of [`SplitWeights::matmul_t_then_into`], as the second product's input tiles.
    static MIDDLE: RefCell<Vec<Tile>> = const { RefCell::new(Vec::new()) };
}

/// Where a product's outputs go.
#[derive(Clone, Copy)]
enum Dest {
    /// f32 rows of n values (an `mp x n` buffer).
    F32(SharedMut),
    /// Input tiles of a product whose k is this one's n: `[mp / 16][n / 32][hi, lo]`.
    Split(SharedMut<u16>),
}

/// The u16 values of whole tiles.
fn tile_values(t: &mut [Tile]) -> &mut [u16] {
    // SAFETY: `Tile` is 512 u16 with no padding; the view borrows `t` mutably.
    unsafe { std::slice::from_raw_parts_mut(t.as_mut_ptr() as *mut u16, t.len() * 512) }
}

/// Runs `f` on the first `tiles` tiles of this thread's buffer `key` (grown as needed), then drops the buffer if
/// it grew past a typical batch's (32 x 128 rows by 1536, [`KEEP_SPLIT`]); else it is kept for the next product.
fn with_kept<R>(key: &'static LocalKey<RefCell<Vec<Tile>>>, tiles: usize, f: impl FnOnce(&mut [u16]) -> R) -> R {
    key.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < tiles {
            buf.resize(tiles, Tile([0; 512]));
        }
        let out = f(tile_values(&mut buf[..tiles]));
        if buf.capacity() * 512 > KEEP_SPLIT {
            *buf = Vec::new();
        }
        out
    })
}

/// Splits the rows of `x` (contiguous f32 `[m, k]`) into this thread's activation tiles (`[mp / 16][k / 32][hi,
/// lo]`, padding rows zero) and runs `f` on them.
fn with_split<R>(x: &Tensor, f: impl FnOnce(&[u16]) -> R) -> R {
    let (m, k) = (x.size()[0] as usize, x.size()[1] as usize);
    // SAFETY: contiguous f32 CPU tensor of m * k elements (checked by the callers), only read here.
    let xs = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, m * k) };
    // A 16-row block is 32k values.
    let block = 32 * k;
    with_kept(&SPLIT, m.next_multiple_of(MB) / 16 * block / 512, |a| {
        crate::team::rows_mut(a, block, 4, &|first, part| {
            for (b, dst) in part.chunks_exact_mut(block).enumerate() {
                for r in 0..16 {
                    let row = (first + b) * 16 + r;
                    split_row(xs.get(row * k..(row + 1) * k), dst, r);
                }
            }
        });
        f(a)
    })
}

impl SplitWeights {
    /// Splits `w` (`[n, k]`, f32 on the CPU, `n` and `k` multiples of 32) and `b` (`[n]`), or `None` where the
    /// tiles cannot run (see [`available`]) or the shape does not suit them.
    pub fn pack(w: &Tensor, b: Option<&Tensor>) -> Option<Self> {
        let s = w.size();
        if s.len() != 2 || w.device() != Device::Cpu || w.kind() != Kind::Float || !available() {
            return None;
        }
        let (n, k) = (s[0] as usize, s[1] as usize);
        if n == 0 || k == 0 || n % NB != 0 || k % KC != 0 {
            return None;
        }
        let bias = match b {
            Some(b) if b.size() != [n as i64] || b.device() != Device::Cpu => return None,
            Some(b) => Vec::<f32>::try_from(b.to_kind(Kind::Float).contiguous()).ok()?,
            None => vec![0.0; n],
        };
        let w = Vec::<f32>::try_from(w.contiguous().view([-1])).ok()?;
        let mut tiles = vec![Tile([0; 512]); n / 16 * (k / KC) * 2];
        pack_tiles(&mut tiles, n, k, |o, kk| w[o * k + kk]);
        Some(Self { n, k, tiles, bias })
    }

    /// Bytes held (both halves and the bias).
    pub fn bytes(&self) -> usize {
        self.tiles.len() * std::mem::size_of::<Tile>() + self.bias.len() * 4
    }

    /// `x @ w.T + b` for `x: [m, k]` f32 on the CPU; `None` for other inputs.
    pub fn matmul_t(&self, x: &Tensor) -> Option<Tensor> {
        let x = self.input(x)?;
        let m = x.size()[0] as usize;
        let mp = m.next_multiple_of(MB);
        let y = Tensor::empty([mp as i64, self.n as i64], (Kind::Float, Device::Cpu));
        let out = SharedMut::new(y.data_ptr() as *mut f32);
        with_split(&x, |a| self.run(a, mp, Dest::F32(out), None));
        Some(if mp == m { y } else { y.narrow(0, 0, m as i64) })
    }

    /// `next(then(x @ w.T + b))` for a product `next` whose inputs are this one's outputs (an FFN): the middle
    /// values go from each output block, through `then`, straight into `next`'s input tiles, never through f32
    /// rows in memory (4096 x 1536 floats written and read again per MiniLM layer, otherwise). `None` where
    /// [`Self::matmul_t`] would be, or where `next`'s k is not this product's n.
    pub fn matmul_t_then_into(&self, x: &Tensor, then: Epilogue<'_>, next: &SplitWeights) -> Option<Tensor> {
        if next.k != self.n {
            return None;
        }
        let x = self.input(x)?;
        let m = x.size()[0] as usize;
        let mp = m.next_multiple_of(MB);
        let y = Tensor::empty([mp as i64, next.n as i64], (Kind::Float, Device::Cpu));
        let out = SharedMut::new(y.data_ptr() as *mut f32);
        with_split(&x, |a| {
            with_kept(&MIDDLE, mp / 16 * (self.n / KC) * 2, |b| {
                self.run(a, mp, Dest::Split(SharedMut::new(b.as_mut_ptr())), Some(then));
                next.run(b, mp, Dest::F32(out), None);
            })
        });
        Some(if mp == m { y } else { y.narrow(0, 0, m as i64) })
    }

    /// `x` as a contiguous f32 CPU matrix of this product's k, or `None`.
    fn input(&self, x: &Tensor) -> Option<Tensor> {
        let s = x.size();
        let fits = s.len() == 2 && s[1] as usize == self.k && s[0] > 0;
        (fits && x.device() == Device::Cpu && x.kind() == Kind::Float).then(|| x.contiguous())
    }

    /// The product of split activations `a` (`mp` rows) into `dest`, spread over the team.
    fn run(&self, a: &[u16], mp: usize, dest: Dest, then: Option<Epilogue<'_>>) {
        assert!(a.len() >= mp * 2 * self.k);
        let supers = mp.div_ceil(MB * SUPER);
        let pairs = self.n / NB;
        // Small inputs: split the columns too, so every thread has work.
        let chunks = (2 * crate::team::width()).div_ceil(supers).clamp(1, pairs);
        let per_chunk = pairs.div_ceil(chunks);
        crate::team::run(supers * chunks, &|t| {
            let (chunk, sup) = (t / supers, t % supers);
            let blocks = sup * SUPER..((sup + 1) * SUPER).min(mp / MB);
            let cols = chunk * per_chunk..((chunk + 1) * per_chunk).min(pairs);
            // SAFETY: `available()` held when these weights were packed; the blocks lie inside `a` (mp / 16 blocks
            // of 32k) and `dest` (covering mp rows by n), and each (block, pair) of it belongs to exactly one task.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                self.task(a, blocks, cols, dest, then)
            };
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (blocks, cols, dest, then);
                unreachable!("SplitWeights are only packed where the tiles run")
            }
        });
    }

    /// Output blocks `blocks` (of 16 rows) by `pairs` (of 32 columns).
    ///
    /// # Safety
    /// The tiles must be available ([`available`]); `a` holds the split rows of every block, `dest` covers them,
    /// and no other thread writes these blocks.
    #[cfg(target_arch = "x86_64")]
    unsafe fn task(
        &self,
        a: &[u16],
        blocks: std::ops::Range<usize>,
        pairs: std::ops::Range<usize>,
        dest: Dest,
        then: Option<Epilogue<'_>>,
    ) {
        let (k, n, kcs) = (self.k, self.n, self.k / KC);
        assert!(blocks.end * MB * 2 * k <= a.len() && pairs.end * NB <= n && self.tiles.len() >= pairs.end * kcs * 4);
        // Split destinations: a pair's sums wait here between k steps (16 rows by 32 per block).
        let mut sums = match dest {
            Dest::F32(_) => Vec::new(),
            Dest::Split(_) => vec![0f32; blocks.len() * MB * NB],
        };
        // SAFETY: the caller's promises, and the bounds just asserted.
        unsafe {
            tiles::configure();
            for p in pairs {
                let w = self.tiles.as_ptr().add(p * kcs * 4);
                // K in steps of KSTEP chunks, so the pair's weight tiles of a step stay in L1 for every block.
                for k0 in (0..kcs).step_by(KSTEP) {
                    let steps = KSTEP.min(kcs - k0);
                    for bl in blocks.clone() {
                        let (c, row) = match dest {
                            Dest::F32(out) => (out.get().add(bl * MB * n + p * NB), n),
                            Dest::Split(_) => (sums.as_mut_ptr().add((bl - blocks.start) * MB * NB), NB),
                        };
                        // The first step starts from the bias, the others from the sums stored by the last.
                        let (start, stride) =
                            if k0 == 0 { (self.bias.as_ptr().add(p * NB), 0) } else { (c as *const f32, 4 * row) };
                        tiles::block(
                            a.as_ptr().add(bl * MB * 2 * k + k0 * 1024),
                            w.add(k0 * 4),
                            steps,
                            start,
                            stride,
                            c,
                            row,
                        );
                        if k0 + steps < kcs {
                            continue;
                        }
                        for r in 0..MB {
                            let values = std::slice::from_raw_parts_mut(c.add(r * row), NB);
                            if let Some(f) = then {
                                f(values);
                            }
                            if let Dest::Split(next) = dest {
                                // Block bl of the next product's input, its chunk p (these 32 columns).
                                let tiles =
                                    std::slice::from_raw_parts_mut(next.get().add((bl * (n / KC) + p) * 1024), 1024);
                                split_row(Some(values), tiles, r);
                            }
                        }
                    }
                }
            }
            tiles::release();
        }
    }
}

/// The tiles' arithmetic limit on the calling thread, for benchmarks: bf16 multiply-adds per second of four
/// independent `tdpbf16ps` chains on data already in the tiles, over about `seconds`. `None` without tiles.
pub fn peak_macs_per_s(seconds: f64) -> Option<f64> {
    if !available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let start = std::time::Instant::now();
        let mut products = 0u64;
        // SAFETY: tiles available (checked); the configured tiles are zeroed before use.
        unsafe {
            tiles::configure();
            std::arch::asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                options(nostack, nomem)
            );
            while start.elapsed().as_secs_f64() < seconds {
                for _ in 0..1000 {
                    std::arch::asm!(
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        options(nostack, nomem)
                    );
                }
                products += 4000;
            }
            tiles::release();
        }
        Some(products as f64 * 16.0 * 16.0 * 32.0 / start.elapsed().as_secs_f64())
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Packs `w(o, kk)` for `n` outputs by `k` (multiples of 32) as weight tiles: `[n / 32][k / 32][hi 0-15, hi
/// 16-31, lo 0-15, lo 16-31]`, tile row r holding k pairs (2r, 2r + 1) for 16 outputs, `[j][pair]`.
fn pack_tiles(tiles: &mut [Tile], n: usize, k: usize, w: impl Fn(usize, usize) -> f32) {
    let kcs = k / KC;
    assert!(n.is_multiple_of(NB) && k.is_multiple_of(KC) && tiles.len() == n / NB * kcs * 4);
    for p in 0..n / NB {
        for kc in 0..kcs {
            let four = &mut tiles[(p * kcs + kc) * 4..][..4];
            for side in 0..2 {
                for r in 0..16 {
                    for j in 0..16 {
                        for t in 0..2 {
                            let (h, l) = split(w(p * NB + side * 16 + j, kc * KC + 2 * r + t));
                            four[side].0[r * 32 + j * 2 + t] = h;
                            four[2 + side].0[r * 32 + j * 2 + t] = l;
                        }
                    }
                }
            }
        }
    }
}

/// Bidirectional attention of one sequence on the tiles, for heads `heads`: `out[i][head] = softmax(q_i K^T /
/// sqrt(d)) V`, reading the sequence's `n` rows of fused projections (`qkv`, row stride `3 * hidden`: queries,
/// keys, values, each head-major) and writing its rows of `out` (stride `hidden`), only the heads' columns.
/// Both products are the linear layers' kernel, bf16x3: keys and values packed as weights per head, queries and
/// probabilities split as activations; the softmax in f32 between them. Head size a multiple of 32. A logit is off
/// by up to about 2^-16 of `sum |q_i k_i| / sqrt(d)` (f32: 2^-24), so probabilities by twice that: on
/// all-MiniLM-L6-v2 the embeddings stay within 3e-6 of sentence-transformers'.
///
/// # Safety
/// [`available`] must hold; `qkv` must be valid for reading `n` rows of `3 * hidden` floats and `out` for writing
/// `n` rows of `hidden`, of which no other thread writes these heads' columns; `heads.end * d <= hidden`.
pub(crate) unsafe fn attention(
    qkv: *const f32,
    out: *mut f32,
    n: usize,
    hidden: usize,
    d: usize,
    heads: std::ops::Range<usize>,
) {
    assert!(d.is_multiple_of(KC) && heads.end * d <= hidden && n > 0);
    let np = n.next_multiple_of(NB);
    let dcs = d / KC;
    let scale = 1.0 / (d as f32).sqrt();
    // SAFETY: the caller's promise for qkv's extent.
    let src = unsafe { std::slice::from_raw_parts(qkv, n * 3 * hidden) };
    let mut keys = vec![Tile([0; 512]); np / NB * dcs * 4];
    let mut values = vec![Tile([0; 512]); d / NB * (np / KC) * 4];
    let mut queries = vec![Tile([0; 512]); dcs * 2];
    let mut probs = vec![Tile([0; 512]); np / KC * 2];
    let mut scores = vec![0f32; 16 * np];
    let mut rows = vec![0f32; 16 * d];
    let zeros = [0f32; NB];
    // SAFETY: `available()` (the caller's promise).
    unsafe { tiles::configure() };
    for head in heads {
        let (q0, k0, v0) = (head * d, hidden + head * d, 2 * hidden + head * d);
        let row = |key: usize, col: usize| (key < n).then(|| &src[key * 3 * hidden + col..][..d]);
        // SAFETY: `available()` confirmed AVX-512 F, BW and BF16; the buffers are sized for np keys by d.
        unsafe {
            pack_keys(&mut keys, np, d, |key| row(key, k0));
            pack_values(&mut values, np, d, |key| row(key, v0));
        }
        for b in 0..n.div_ceil(16) {
            let q = tile_values(&mut queries);
            for r in 0..16 {
                let row = b * 16 + r;
                split_row((row < n).then(|| &src[row * 3 * hidden + q0..][..d]), q, r);
            }
            // SAFETY (the products): tiles configured; every tile buffer holds what `block` reads for these
            // extents, `scores` is 16 x np and `rows` 16 x d.
            for p in 0..np / NB {
                unsafe {
                    tiles::block(
                        queries.as_ptr() as *const u16,
                        keys.as_ptr().add(p * dcs * 4),
                        dcs,
                        zeros.as_ptr(),
                        0,
                        scores.as_mut_ptr().add(p * NB),
                        np,
                    )
                };
            }
            // Unnormalized probabilities, split straight into their tiles; rows are divided by their sums below.
            let pr = tile_values(&mut probs);
            let mut sums = [0f32; 16];
            for (r, row) in scores.chunks_exact(np).enumerate() {
                sums[r] = exp_split(row, n, scale, pr, r);
            }
            for p in 0..d / NB {
                unsafe {
                    tiles::block(
                        probs.as_ptr() as *const u16,
                        values.as_ptr().add(p * (np / KC) * 4),
                        np / KC,
                        zeros.as_ptr(),
                        0,
                        rows.as_mut_ptr().add(p * NB),
                        d,
                    )
                };
            }
            for (r, row) in rows.chunks_exact(d).enumerate().take(n - b * 16) {
                let dst = (b * 16 + r) * hidden + q0;
                for (i, v) in row.iter().enumerate() {
                    // SAFETY: row b * 16 + r < n of `out`, this head's columns (the caller's promise).
                    unsafe { *out.add(dst + i) = v / sums[r] };
                }
            }
        }
    }
    // SAFETY: configured above.
    unsafe { tiles::release() };
}

/// The 16 splits of `v[0..16]`, (hi, lo) as 16 bf16 each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
fn split16(v: std::arch::x86_64::__m512) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    // SAFETY: the transmutes reinterpret 256 bits as 256 bits.
    unsafe {
        let hi = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
        let wide = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
        (hi, std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_sub_ps(v, wide))))
    }
}

/// Keys as the weights of the score product (`pack_tiles(tiles, np, d, K[key][dim])`): a key's 32 values of a
/// chunk are 16 bf16 pairs, which go down column `key % 16` of its tile (a scatter at the tile's row stride).
/// `key(i)` is key i's d values, `None` past the sequence (zeros).
///
/// # Safety
/// AVX-512 F, BW and BF16; `tiles` holds `np / 32 * d / 32 * 4` tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_keys<'a>(tiles: &mut [Tile], np: usize, d: usize, key: impl Fn(usize) -> Option<&'a [f32]>) {
    use std::arch::x86_64::*;
    let dcs = d / KC;
    assert!(tiles.len() == np / NB * dcs * 4);
    let rows = _mm512_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960);
    for i in 0..np {
        let (p, side, j) = (i / NB, i % NB / 16, i % 16);
        let v = key(i);
        for kc in 0..dcs {
            let (hi, lo) = match v {
                // SAFETY: 32 values of the key's d, at kc * 32.
                Some(v) => unsafe {
                    let (h0, l0) = split16(_mm512_loadu_ps(v.as_ptr().add(kc * KC)));
                    let (h1, l1) = split16(_mm512_loadu_ps(v.as_ptr().add(kc * KC + 16)));
                    (
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h0), h1),
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(l0), l1),
                    )
                },
                None => (_mm512_setzero_si512(), _mm512_setzero_si512()),
            };
            let four = &mut tiles[(p * dcs + kc) * 4..][..4];
            // SAFETY: 16 u32 at rows 0..16, column j, of tiles `side` and `2 + side`.
            unsafe {
                _mm512_i32scatter_epi32::<1>(four[side].0.as_mut_ptr().add(2 * j) as *mut i32, rows, hi);
                _mm512_i32scatter_epi32::<1>(four[2 + side].0.as_mut_ptr().add(2 * j) as *mut i32, rows, lo);
            }
        }
    }
}

/// Values as the weights of the output product (`pack_tiles(tiles, d, np, V[key][dim])`): tile row r interleaves
/// keys 2r and 2r + 1 of a 32-key chunk for 16 dimensions. `key(i)` as for [`pack_keys`].
///
/// # Safety
/// AVX-512 F, BW and BF16; `tiles` holds `d / 32 * np / 32 * 4` tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_values<'a>(tiles: &mut [Tile], np: usize, d: usize, key: impl Fn(usize) -> Option<&'a [f32]>) {
    use std::arch::x86_64::*;
    let kcs = np / KC;
    assert!(tiles.len() == d / NB * kcs * 4);
    let halves = |i: usize, dim: usize| match key(i) {
        // SAFETY: 16 of the key's d values, at dim.
        Some(v) => split16(unsafe { _mm512_loadu_ps(v.as_ptr().add(dim)) }),
        None => (_mm256_setzero_si256(), _mm256_setzero_si256()),
    };
    let pair = |a: __m256i, b: __m256i| {
        _mm512_or_si512(_mm512_cvtepu16_epi32(a), _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(b)))
    };
    for kc in 0..kcs {
        for r in 0..16 {
            let (k0, k1) = (kc * KC + 2 * r, kc * KC + 2 * r + 1);
            for dim in (0..d).step_by(16) {
                let ((h0, l0), (h1, l1)) = (halves(k0, dim), halves(k1, dim));
                let (p, side) = (dim / NB, dim % NB / 16);
                let four = &mut tiles[(p * kcs + kc) * 4..][..4];
                // SAFETY: row r (32 u16) of tiles `side` and `2 + side`.
                unsafe {
                    _mm512_storeu_si512(four[side].0.as_mut_ptr().add(r * 32).cast(), pair(h0, h1));
                    _mm512_storeu_si512(four[2 + side].0.as_mut_ptr().add(r * 32).cast(), pair(l0, l1));
                }
            }
        }
    }
}

/// `e_j = exp((row_j - max) * scale)` for the first `n` of `row` (0 past them), split into row `r` of a 16-row
/// block of activation tiles (as [`split_row`] lays them out); returns the sum of the `e_j`.
fn exp_split(row: &[f32], n: usize, scale: f32, block: &mut [u16], r: usize) -> f32 {
    assert!(n <= row.len() && row.len().is_multiple_of(KC) && block.len() == row.len() * 32 && available());
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `available()` confirmed AVX-512 F, BW and BF16; lengths checked above.
        unsafe { exp_split_avx512(row, n, scale, block, r) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the tiles are x86-64's")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn exp_split_avx512(row: &[f32], n: usize, scale: f32, block: &mut [u16], r: usize) -> f32 {
    use std::arch::x86_64::*;
    let mask = |j: usize| -> __mmask16 {
        if j >= n {
            0
        } else if n - j >= 16 {
            0xffff
        } else {
            (1u16 << (n - j)) - 1
        }
    };
    let p = row.as_ptr();
    // SAFETY: masked loads read only indices below n; stores write 16 u16 inside the block's tiles.
    unsafe {
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for j in (0..n).step_by(16) {
            max = _mm512_mask_max_ps(max, mask(j), max, _mm512_maskz_loadu_ps(mask(j), p.add(j)));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let (sc, mut sum) = (_mm512_set1_ps(scale), _mm512_setzero_ps());
        for j in (0..row.len()).step_by(16) {
            let x = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask(j), p.add(j)), max), sc);
            let e = _mm512_maskz_mov_ps(mask(j), exp_avx512(x));
            sum = _mm512_add_ps(sum, e);
            let (hi, lo) = split16(e);
            let at = j / KC * 1024 + r * 32 + j % KC;
            _mm256_storeu_si256(block.as_mut_ptr().add(at).cast(), hi);
            _mm256_storeu_si256(block.as_mut_ptr().add(at + 512).cast(), lo);
        }
        _mm512_reduce_add_ps(sum)
    }
}

/// e^x for x <= 0 to about one ulp: x = k ln 2 + r with |r| <= ln 2 / 2, e^r by its Taylor series to r^7 (error
/// under 5e-9), then scaled by 2^k.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut e = _mm512_set1_ps(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(e, k)
}

/// Splits row `r` (`None`: a padding row, zeros) of a 16-row block into its tiles, `[k / 32][hi, lo][16][32]`.
fn split_row(src: Option<&[f32]>, block: &mut [u16], r: usize) {
    let Some(src) = src else {
        for t in block.chunks_exact_mut(512) {
            t[r * 32..r * 32 + 32].fill(0);
        }
        return;
    };
    assert_eq!(block.len(), src.len() * 32);
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: `available()` confirmed AVX-512 F and BF16; lengths asserted above.
        unsafe { split_row_avx512(src, block, r) };
        return;
    }
    for (c, pair) in src.chunks_exact(KC).zip(block.chunks_exact_mut(1024)) {
        let (hi, lo) = pair.split_at_mut(512);
        for (j, &v) in c.iter().enumerate() {
            (hi[r * 32 + j], lo[r * 32 + j]) = split(v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn split_row_avx512(src: &[f32], block: &mut [u16], r: usize) {
    use std::arch::x86_64::*;
    for (c, pair) in src.chunks_exact(KC).zip(block.chunks_exact_mut(1024)) {
        let (hi, lo) = pair.split_at_mut(512);
        for half in 0..2 {
            let at = r * 32 + half * 16;
            // SAFETY: 16 f32 read inside `c`, 16 u16 written inside each tile.
            unsafe {
                let (vh, vl) = split16(_mm512_loadu_ps(c.as_ptr().add(half * 16)));
                _mm256_storeu_si256(hi.as_mut_ptr().add(at).cast(), vh);
                _mm256_storeu_si256(lo.as_mut_ptr().add(at).cast(), vl);
            }
        }
    }
}

/// The tile instructions, as inline assembly (tmm0-1: the output block; tmm2-3: activations; tmm4-7: weights).
#[cfg(target_arch = "x86_64")]
mod tiles {
    use std::arch::asm;

    use super::Tile;

    /// Palette 1, eight tiles of 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// # Safety
    /// The tiles must be available on this CPU and granted to this process.
    pub(super) unsafe fn configure() {
        let mut c = Config { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        c.colsb[..8].fill(64);
        c.rows[..8].fill(16);
        // SAFETY: a valid palette-1 configuration (the caller vouches for the CPU).
        unsafe { asm!("ldtilecfg [{c}]", c = in(reg) &c, options(nostack, readonly)) };
    }

    /// # Safety
    /// After [`configure`] on this thread.
    pub(super) unsafe fn release() {
        // SAFETY: returns the tile state to its initial one.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// `c[0..16][0..32] = start + a . w` over `k = 32 kcs`: `a` points at a 16-row block of activation tiles
    /// (`[kcs][hi, lo]`), `w` at the `kcs` groups of four weight tiles of 32 outputs, `start` at 16 rows of 32
    /// floats `stride` bytes apart (a bias with stride 0, or sums so far), `c` at an f32 buffer of row length `n`.
    ///
    /// # Safety
    /// After [`configure`]; every pointer is valid for the extent described.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) unsafe fn block(
        a: *const u16,
        w: *const Tile,
        kcs: usize,
        start: *const f32,
        stride: usize,
        c: *mut f32,
        n: usize,
    ) {
        // Bytes per tile row.
        let s = 64usize;
        // SAFETY (every block below): the caller's pointers and extents; tiles configured.
        unsafe {
            asm!(
                "tileloadd tmm0, [{b0} + {bs}*1]",
                "tileloadd tmm1, [{b1} + {bs}*1]",
                b0 = in(reg) start,
                b1 = in(reg) start.add(16),
                bs = in(reg) stride,
                options(nostack, readonly),
            );
            for kc in 0..kcs {
                // Tiles (bytes): activations hi +0, lo +1024; weights hi 0-15 +0, hi 16-31 +1024, lo +2048, +3072.
                // The small products first (hi.lo, then lo.hi after hi.hi), f32 sums throughout.
                asm!(
                    "tileloadd tmm2, [{a} + {s}*1]",
                    "tileloadd tmm6, [{w} + {s}*1 + 2048]",
                    "tileloadd tmm7, [{w} + {s}*1 + 3072]",
                    "tileloadd tmm4, [{w} + {s}*1]",
                    "tileloadd tmm5, [{w} + {s}*1 + 1024]",
                    "tileloadd tmm3, [{a} + {s}*1 + 1024]",
                    "tdpbf16ps tmm0, tmm2, tmm6",
                    "tdpbf16ps tmm1, tmm2, tmm7",
                    "tdpbf16ps tmm0, tmm2, tmm4",
                    "tdpbf16ps tmm1, tmm2, tmm5",
                    "tdpbf16ps tmm0, tmm3, tmm4",
                    "tdpbf16ps tmm1, tmm3, tmm5",
                    a = in(reg) a.add(kc * 1024),
                    w = in(reg) w.add(kc * 4),
                    s = in(reg) s,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c0} + {sc}*1], tmm0",
                "tilestored [{c1} + {sc}*1], tmm1",
                c0 = in(reg) c,
                c1 = in(reg) c.add(16),
                sc = in(reg) 4 * n,
                options(nostack),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn split_keeps_sixteen_bits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100_000 {
            let v: f32 = rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-6..6));
            let (h, l) = split(v);
            let back = widen(h) as f64 + widen(l) as f64;
            assert!((back - v as f64).abs() <= v.abs() as f64 * 2f64.powi(-16), "{v} -> {back}");
        }
        assert_eq!(bf16(1.0), 0x3f80);
        // Ties to even: 1 + 2^-8 sits halfway between 1 and 1 + 2^-7.
        assert_eq!(bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    }

    /// Attention on the tiles against libtorch's `scaled_dot_product_attention`, for lengths around the tile
    /// sizes, all heads and a subset (whose columns alone are written). The bound is bf16x3's: a logit is off by
    /// up to about 2^-16 of `scale * sum |q_i k_i|`, a probability by twice the worst logit, a value by 2^-16;
    /// a layout slip or a dropped correction term (2^-9) is far outside it.
    #[test]
    fn attention_equals_libtorch() {
        if !available() {
            eprintln!("AMX tiles unavailable here: nothing to test");
            return;
        }
        let (h, nh, d) = (384usize, 12usize, 32usize);
        let scale = 1.0 / (d as f64).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for n in [1usize, 5, 16, 33, 128, 200] {
            let data: Vec<f32> = (0..n * 3 * h).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let qkv = Tensor::from_slice(&data).view([n as i64, 3 * h as i64]);
            let s = qkv.view([n as i64, 3, nh as i64, d as i64]).permute([1, 2, 0, 3]);
            let (q, k, v) = (s.get(0).unsqueeze(0), s.get(1).unsqueeze(0), s.get(2).unsqueeze(0));
            let want = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false);
            let want = Vec::<f32>::try_from(want.squeeze_dim(0).transpose(0, 1).reshape([-1])).unwrap();
            let at =
                |row: usize, part: usize, head: usize, dim: usize| data[row * 3 * h + part * h + head * d + dim] as f64;
            // tol[row][head]
            let tol: Vec<Vec<f64>> = (0..n)
                .map(|i| {
                    (0..nh)
                        .map(|hd| {
                            let logits = (0..n)
                                .map(|j| (0..d).map(|x| (at(i, 0, hd, x) * at(j, 1, hd, x)).abs()).sum::<f64>())
                                .fold(0.0, f64::max);
                            let vmax = (0..n)
                                .flat_map(|j| (0..d).map(move |x| (j, x)))
                                .map(|(j, x)| at(j, 2, hd, x).abs())
                                .fold(0.0, f64::max);
                            vmax * (2f64.powi(-16) + 2.0 * 2f64.powi(-16) * scale * logits)
                        })
                        .collect()
                })
                .collect();
            for heads in [0..nh, 3..7] {
                let mut out = vec![f32::NAN; n * h];
                // SAFETY: tiles available (checked); qkv is n x 3h contiguous, out n x h.
                unsafe { attention(qkv.data_ptr() as *const f32, out.as_mut_ptr(), n, h, d, heads.clone()) };
                for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                    let (row, head) = (i / h, i % h / d);
                    if heads.contains(&head) {
                        let tol = tol[row][head];
                        assert!(((g - w).abs() as f64) <= tol, "n {n}, element {i}: {g} against {w} (bound {tol:e})");
                    } else {
                        assert!(g.is_nan(), "n {n}: element {i} of head {head} written");
                    }
                }
            }
        }
    }

    /// The fused FFN (`matmul_t_then_into`) equals its two products one after the other, bit for bit (the middle
    /// values are the same floats, split the same way), on a partial row block and several tasks.
    #[test]
    fn fused_products_equal_two_products() {
        if !available() {
            eprintln!("AMX tiles unavailable here: nothing to test");
            return;
        }
        let relu: Epilogue<'_> = &|v: &mut [f32]| v.iter_mut().for_each(|x| *x = x.max(0.0));
        for m in [1i64, 37, 300] {
            let up = Tensor::randn([192, 64], (Kind::Float, Device::Cpu)) * 0.1;
            let down = Tensor::randn([96, 192], (Kind::Float, Device::Cpu)) * 0.1;
            let (bu, bd) =
                (Tensor::randn([192], (Kind::Float, Device::Cpu)), Tensor::randn([96], (Kind::Float, Device::Cpu)));
            let (up, down) =
                (SplitWeights::pack(&up, Some(&bu)).unwrap(), SplitWeights::pack(&down, Some(&bd)).unwrap());
            let x = Tensor::randn([m, 64], (Kind::Float, Device::Cpu));
            let two = down.matmul_t(&up.matmul_t(&x).unwrap().relu()).unwrap();
            let fused = up.matmul_t_then_into(&x, relu, &down).unwrap();
            assert_eq!(fused.size(), [m, 96]);
            assert!(fused.equal(&two), "m {m}");
        }
        assert!(SplitWeights::pack(&Tensor::zeros([32, 32], (Kind::Float, Device::Cpu)), None)
            .unwrap()
            .matmul_t_then_into(
                &Tensor::zeros([4, 32], (Kind::Float, Device::Cpu)),
                relu,
                &SplitWeights::pack(&Tensor::zeros([32, 64], (Kind::Float, Device::Cpu)), None).unwrap()
            )
            .is_none());
    }

    /// `(x @ w.T + b)` from the tiles against an f64 reference, for shapes that exercise partial row blocks,
    /// column-split tasks and several tasks per thread. The bound (2^-15 of the sum of |x w|) is 60 times under
    /// what bf16 products alone would give, so a kernel that dropped a correction term fails it.
    #[test]
    fn tiles_equal_f64_products_to_sixteen_bits() {
        if !available() {
            eprintln!("AMX tiles unavailable here: nothing to test");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (m, k, n) in [(1, 32, 32), (70, 96, 64), (128, 384, 384), (300, 1536, 96), (4096 + 5, 64, 32)] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-0.1f32..0.1)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let wt = Tensor::from_slice(&w).view([n as i64, k as i64]);
            let packed = SplitWeights::pack(&wt, Some(&Tensor::from_slice(&b))).expect("packs");
            let y = packed.matmul_t(&Tensor::from_slice(&x).view([m as i64, k as i64])).expect("runs");
            assert_eq!(y.size(), [m as i64, n as i64]);
            let y = Vec::<f32>::try_from(y.contiguous().view([-1])).unwrap();
            let mut worst = 0f64;
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut mag) = (b[j] as f64, b[j].abs() as f64);
                    for kk in 0..k {
                        let p = x[i * k + kk] as f64 * w[j * k + kk] as f64;
                        want += p;
                        mag += p.abs();
                    }
                    let err = (y[i * n + j] as f64 - want).abs() / mag;
                    worst = worst.max(err);
                }
            }
            assert!(worst < 2f64.powi(-15), "{m}x{k}x{n}: relative error {worst:e}");
        }
    }
}
