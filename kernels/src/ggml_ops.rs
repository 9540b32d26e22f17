//! The non-matrix operations of a decoder layer computed as llama.cpp's CPU backend (ggml, AVX2 build) computes
//! them, to the bit: RMS norm, the rope tables and rotation, attention over a KV cache held at f16 precision, and
//! SwiGLU. With the 32-value block products of [`crate::qmatmul`] (also in ggml's order) a quantized model's
//! logits equal llama.cpp's on the same GGUF, which is what issue #21 measures us by.
//!
//! Why to the bit: the activations are rounded to int8 before every product, so a difference in the last bit of
//! any value moves some activation across a rounding step now and then; that step spreads through the layers and
//! a greedy continuation leaves llama.cpp's at the next near-tie. Agreement "up to rounding" is not a stable state.
//!
//! What is reproduced, each checked against tensors dumped from llama.cpp through its eval callback:
//! - RMS norm: the squares summed in f64 one after another, `x * scale * w`.
//! - Rope: angles by repeated f32 multiplication (`theta *= theta_scale`), `cosf`/`sinf`, and the rotation with the
//!   fused multiply-adds its compiler emits (`fma(x0, cos, -(x1 sin))`, `fma(x0, sin, x1 cos)`).
//! - Attention (llama.cpp's non-flash path): K, V, Q and the softmax weights at f16 precision; the two products
//!   as llamafile's `tinyBLAS` computes them when the step has two or more tokens (eight partial sums over the
//!   shared dimension) and as `ggml_vec_dot_f16` when it has one (four by eight partial sums, `hadd` reduction);
//!   the softmax with ggml's vectorised `expf` and its f64 sum of eight-value groups.
//! - SwiGLU: `x / (1 + expf(-x)) * g` with the same `expf`.
//!
//! The constants and the order of operations of `expf` are those of ggml's `ggml_v_expf` (MIT licence), which is
//! the point: any other exp differs in the last bit.
//!
//! How it was matched: llama.cpp's eval callback (through llama-cpp-python) dumps every intermediate tensor of a
//! prompt and two decode steps; each of ours was compared with its counterpart, op by op, until all were equal
//! on SmolLM2 (Q4_1, Q8_0) and Qwen2.5 (Q5_0, Q8_0, Q4_K, Q6_K). `kernels/tests/quantized.rs` keeps the result:
//! every argmax and every greedy continuation of the llama.cpp fixture equal.
//!
//! Everything here needs AVX2, FMA and F16C ([`available`]); callers use their f32 paths elsewhere. With AVX-512
//! the `Tiled` attention takes a KV head's query heads three at a time and runs sixteen keys (scores, from keys
//! transposed once per step), two keys (scores of a sequence with one row in the step, keys read in place) or
//! sixteen outputs (values) per register, lane for lane the same arithmetic.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this CPU can run these kernels (AVX2, FMA, F16C).
pub fn available() -> bool {
    crate::qmatmul::available()
}

/// `v` at f16 precision (round to nearest, ties to even, as F16C's `vcvtps2ph`), kept as f32.
#[inline]
pub fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Rounds every value of `x` to f16 precision in place ([`f16_round`], eight at a time with F16C).
pub fn f16_round_slice(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: F16C and AVX2 are present (checked just above).
        return unsafe { f16_round_f16c(x) };
    }
    x.iter_mut().for_each(|v| *v = f16_round(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
fn f16_round_f16c(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` is eight f32.
        unsafe {
            let v = _mm256_loadu_ps(c.as_ptr());
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    chunks.into_remainder().iter_mut().for_each(|v| *v = f16_round(*v));
}

/// RMS norm of each `n`-value row of `x` into `out`, times `w`: `x * (1 / sqrt(mean(x²) + eps)) * w`, the mean
/// taken over an f64 sum of the f32 squares in order.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    assert!(n > 0 && x.len().is_multiple_of(n) && out.len() == x.len());
    crate::team::rows_mut(out, n, PARALLEL_ROWS, &|first, ys| {
        for (xr, yr) in x[first * n..].chunks_exact(n).zip(ys.chunks_exact_mut(n)) {
            let sum: f64 = xr.iter().fold(0.0f64, |s, &v| s + (v * v) as f64);
            let mean = (sum / n as f64) as f32;
            let scale = 1.0f32 / (mean + eps).sqrt();
            for ((y, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                *y = v * scale * g;
            }
        }
    });
}

/// Rows below which the row-wise operations here run on the calling thread alone (a decode step's few rows
/// cost less than handing them to the team).
pub(crate) const PARALLEL_ROWS: usize = 32;

/// Rope tables `[positions, dims / 2]` (cos, sin) as ggml's `ggml_rope_cache_init` makes them: for position `p`
/// the angle starts at `p` and is multiplied by `base^(-2 / dims)` (computed in f32) once per pair, optionally
/// divided by a per-pair frequency factor.
pub fn rope_tables(base: f32, dims: usize, positions: usize, factors: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let half = dims / 2;
    let theta_scale = base.powf(-2.0f32 / dims as f32);
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        let mut theta = p as f32;
        for i in 0..half {
            let t = factors.map_or(theta, |f| theta / f[i]);
            cos.push(t.cos());
            sin.push(t.sin());
            theta *= theta_scale;
        }
    }
    (cos, sin)
}

/// Rotates the pairs of one head as ggml's compiled `rope_f32` does: `(fma(a, c, -(b s)), fma(a, s, b c))` for
/// pair `j` at `(2j, 2j + 1)` (`adjacent`) or `(j, j + d / 2)`, with angle `j`'s `c[j]`, `s[j]`.
pub fn rotate_head(head: &mut [f32], c: &[f32], s: &[f32], adjacent: bool) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: FMA is present (checked just above).
        return unsafe { rotate_head_fma(head, c, s, adjacent) };
    }
    rotate_pairs(head, c, s, adjacent);
}

/// [`rotate_head`] compiled with FMA, so `mul_add` is the instruction rather than a call to libm's `fmaf`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn rotate_head_fma(head: &mut [f32], c: &[f32], s: &[f32], adjacent: bool) {
    rotate_pairs(head, c, s, adjacent);
}

#[inline(always)]
fn rotate_pairs(head: &mut [f32], c: &[f32], s: &[f32], adjacent: bool) {
    let half = head.len() / 2;
    for j in 0..half {
        let (u, v) = if adjacent { (2 * j, 2 * j + 1) } else { (j, j + half) };
        let (a, b) = (head[u], head[v]);
        (head[u], head[v]) = (a.mul_add(c[j], -(b * s[j])), a.mul_add(s[j], b * c[j]));
    }
}

/// `out[i] = silu(gate[i]) * up[i]` for each row of `gu` (`[rows, 2 n]`: the gate's `n` values, then the up
/// projection's), as ggml's `ggml_vec_swiglu_f32`.
pub fn swiglu(gu: &[f32], n: usize, out: &mut [f32]) {
    assert!(available() && n > 0 && gu.len().is_multiple_of(2 * n) && out.len() * 2 == gu.len());
    #[cfg(target_arch = "x86_64")]
    crate::team::rows_mut(out, n, PARALLEL_ROWS, &|first, ys| {
        for (row, y) in gu[first * 2 * n..].chunks_exact(2 * n).zip(ys.chunks_exact_mut(n)) {
            let (g, u) = row.split_at(n);
            // SAFETY: AVX2 and FMA are present (asserted); the three slices hold `n` values each.
            unsafe { swiglu_avx2(g, u, y) };
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn swiglu_avx2(g: &[f32], u: &[f32], y: &mut [f32]) {
    let n = y.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, the length of all three slices.
        unsafe {
            let x = _mm256_loadu_ps(g.as_ptr().add(i));
            let e = expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let silu = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(u.as_ptr().add(i))));
        }
        i += 8;
    }
    for j in i..n {
        y[j] = g[j] / (1.0 + (-g[j]).exp()) * u[j];
    }
}

/// ggml's `ggml_v_expf` for eight lanes: `exp(x)` by range reduction to `2^n e^b` and a degree-5 polynomial,
/// with the exponent's overflow and underflow handled apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn expf8(x: __m256) -> __m256 {
    let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000)); // 0x1.8p23
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r); // log2(e)
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(
        n,
        _mm256_set1_ps(f32::from_bits(0x35bf_be8e)), // 0x1.7f7d1cp-20
        _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x), // 0x1.62e4p-1
    );
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let c = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_set1_ps(f32::from_bits(0x3c07_2010)),
                b,
                _mm256_set1_ps(f32::from_bits(0x3d2b_9f17)),
            ),
            u,
            _mm256_fmadd_ps(_mm256_set1_ps(f32::from_bits(0x3e2a_af33)), b, _mm256_set1_ps(f32::from_bits(0x3efffedb))),
        ),
        u,
        _mm256_mul_ps(_mm256_set1_ps(f32::from_bits(0x3f7f_fff6)), b),
    );
    if _mm256_movemask_ps(c) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let d = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    _mm256_or_ps(
        _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            d,
            _mm256_or_ps(
                _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// Which of ggml's two f16 dot products a step's attention reproduces: llamafile's `tinyBLAS` (steps of two or
/// more tokens) or `ggml_vec_dot_f16` (one token; llamafile declines a single column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotOrder {
    Tiled,
    Vec,
}

impl DotOrder {
    pub fn for_step(tokens: usize) -> Self {
        if tokens >= 2 {
            Self::Tiled
        } else {
            Self::Vec
        }
    }
}

/// A dot product of f16-precision values in `order`'s partial sums: the shared dimension's element `e` goes to
/// lane `e % 8` of accumulator 0 (`Tiled`) or of accumulator `(e / 8) % 4` (`Vec`); `get(e)` gives the two factors.
/// `n` is padded with zeros to a whole step (8 or 32), as llama.cpp's padded cache is: zeros add nothing.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_f16(order: DotOrder, n: usize, a: &[f32], b: &[f32]) -> f32 {
    // `a` and `b` hold at least n values, rounded up to 8 with zeros by the caller.
    match order {
        DotOrder::Tiled => {
            let mut acc = _mm256_setzero_ps();
            for s in (0..n).step_by(8) {
                // SAFETY: the caller pads both slices to a multiple of 8 at least n long.
                unsafe {
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(s)), _mm256_loadu_ps(b.as_ptr().add(s)), acc)
                };
            }
            crate::qdot::avx2::hsum(acc)
        }
        DotOrder::Vec => {
            let mut acc = [_mm256_setzero_ps(); 4];
            for s in (0..n).step_by(8) {
                let i = (s / 8) % 4;
                // SAFETY: as above.
                unsafe {
                    acc[i] =
                        _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(s)), _mm256_loadu_ps(b.as_ptr().add(s)), acc[i])
                };
            }
            reduce_vec(acc)
        }
    }
}

/// `GGML_F32x8_REDUCE` over four accumulators (then to f64 and back, as `ggml_vec_dot_f16` returns it: exact).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn reduce_vec(a: [__m256; 4]) -> f32 {
    let x0 = _mm256_add_ps(a[0], a[2]);
    let x1 = _mm256_add_ps(a[1], a[3]);
    let x0 = _mm256_add_ps(x0, x1);
    let t0 = _mm_add_ps(_mm256_castps256_ps128(x0), _mm256_extractf128_ps::<1>(x0));
    let t1 = _mm_hadd_ps(t0, t0);
    _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
}

/// Attention for one query row and one head, as llama.cpp computes it without flash attention: `q` (`d`
/// values, f16-rounded), the context's keys and values (`keys(j)`, `values(j)`: `d` values each at f16 precision)
/// for `j < n`, scale; writes `d` values to `out`. `scratch` is reused between calls.
pub struct HeadAttention<'a> {
    pub order: DotOrder,
    pub d: usize,
    pub scale: f32,
    pub scratch: &'a mut Vec<f32>,
}

impl HeadAttention<'_> {
    /// See the type's documentation.
    pub fn run<'k>(
        &mut self,
        q: &[f32],
        n: usize,
        keys: impl Fn(usize) -> &'k [f32],
        values: impl Fn(usize) -> &'k [f32],
        out: &mut [f32],
    ) {
        assert!(available() && self.d.is_multiple_of(8) && q.len() == self.d && out.len() == self.d && n > 0);
        // SAFETY: AVX2 and FMA are present (asserted).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            self.run_avx2(q, n, keys, values, out)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn run_avx2<'k>(
        &mut self,
        q: &[f32],
        n: usize,
        keys: impl Fn(usize) -> &'k [f32],
        values: impl Fn(usize) -> &'k [f32],
        out: &mut [f32],
    ) {
        let d = self.d;
        // Scores padded to a whole step of the value product (32 covers both orders).
        let np = n.div_ceil(32) * 32;
        let s = &mut *self.scratch;
        s.clear();
        s.resize(np + 8 * 4 * d, 0.0);
        let (w, acc) = s.split_at_mut(np);
        for (j, wj) in w[..n].iter_mut().enumerate() {
            *wj = dot_f16(self.order, d, q, keys(j)) * self.scale;
        }
        softmax_f16(w, n);
        // Values: output element `c` is the dot of the weights with column `c` of V over the shared dimension
        // j, whose element j goes to partial sum (set) `j % 8` (Tiled) or `(j / 8 % 4, j % 8)` (Vec).
        if self.order == DotOrder::Tiled {
            // Eight partial sums per output element, j % 8: for each eight outputs, the eight sums in registers
            // over every key, then the tree.
            for c in (0..d).step_by(8) {
                let mut acc = [_mm256_setzero_ps(); 8];
                let add = |j: usize, acc: &mut __m256| {
                    let v = &values(j)[c..c + 8];
                    // SAFETY: `v` is eight f32.
                    *acc = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(v.as_ptr()) }, _mm256_set1_ps(w[j]), *acc);
                };
                let full = n / 8 * 8;
                for j in (0..full).step_by(8) {
                    for (l, a) in acc.iter_mut().enumerate() {
                        add(j + l, a);
                    }
                }
                for (l, a) in acc.iter_mut().enumerate().take(n - full) {
                    add(full + l, a);
                }
                // SAFETY: c + 8 <= d = out.len().
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c), crate::qdot::avx2::tree8(&acc)) };
            }
            return;
        }
        // Vec (one-token steps): the 32 sets held as rows of `d` values in `acc`, each key's row of V one pass.
        let sets = 32;
        acc[..sets * d].fill(0.0);
        for (j, &p) in w[..n].iter().enumerate() {
            let set = (j / 8 % 4) * 8 + j % 8;
            let v = values(j);
            let row = &mut acc[set * d..(set + 1) * d];
            let pv = _mm256_set1_ps(p);
            for c in (0..d).step_by(8) {
                // SAFETY: c + 8 <= d, the length of `row` and of `v` (asserted by the caller's layout).
                unsafe {
                    let r = row.as_mut_ptr().add(c);
                    _mm256_storeu_ps(r, _mm256_fmadd_ps(_mm256_loadu_ps(v.as_ptr().add(c)), pv, _mm256_loadu_ps(r)));
                }
            }
        }
        let at = |set: usize, c: usize| acc[set * d + c];
        for (c, o) in out.iter_mut().enumerate() {
            // Accumulator a lane l is set 8a + l: a0 += a2, a1 += a3, a0 += a1; then the 128-bit halves lane by
            // lane, then two `hadd`s.
            let x0: [f32; 8] = std::array::from_fn(|l| (at(l, c) + at(16 + l, c)) + (at(8 + l, c) + at(24 + l, c)));
            let t: [f32; 4] = std::array::from_fn(|k| x0[k] + x0[k + 4]);
            *o = (t[0] + t[1]) + (t[2] + t[3]);
        }
    }
}

/// Whether `RADIXSERVE_NO_AVX512` (any value but `0`) asks the kernels to leave AVX-512 alone: the AVX2 kernels
/// (what a CPU without AVX-512 runs, with the same results to the bit) tested and timed on a machine that has it.
/// Read once.
pub fn avx512_disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("RADIXSERVE_NO_AVX512").is_ok_and(|v| v != "0"))
}

/// Whether the 512-bit attention kernels can run here (AVX-512 F).
pub fn wide_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        available() && std::arch::is_x86_feature_detected!("avx512f") && !avx512_disabled()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `Tiled` scores of sixteen keys at a time from transposed keys, for `H` query heads sharing them: lane `j` of
/// `r[h][l]` is key `j`'s partial sum `l` for head `h` (dimensions `l, l + 8, ...` in order), so the lanes hold
/// exactly what `tinyBLAS` holds for each key; then `hsum_float_8`'s tree across the eight registers, and the
/// scale. Each key register feeds all `H` heads (up to three: 24 accumulators), so the transposed keys, which
/// live in L2 for long prompts, are read once per three heads rather than once per head.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // registers indexed in lock-step by head and partial sum
fn scores_wide<const H: usize>(
    q: [&[f32]; H],
    kt: &[f32],
    stride: usize,
    n: usize,
    scale: f32,
    w: &mut [&mut [f32]; H],
) {
    let d = q[0].len();
    assert!(q.iter().all(|qh| qh.len() == d) && d.is_multiple_of(8));
    for jb in (0..n).step_by(16) {
        let mut r = [[_mm512_setzero_ps(); 8]; H];
        for s in 0..d / 8 {
            for l in 0..8 {
                let e = 8 * s + l;
                // SAFETY: row e of `kt` holds `stride` >= jb + 16 values (the caller's padding).
                let k = unsafe { _mm512_loadu_ps(kt.as_ptr().add(e * stride + jb)) };
                for h in 0..H {
                    // SAFETY: e < d = q[h].len() (asserted).
                    let qe = unsafe { *q[h].get_unchecked(e) };
                    r[h][l] = _mm512_fmadd_ps(_mm512_set1_ps(qe), k, r[h][l]);
                }
            }
        }
        for h in 0..H {
            let sum = crate::qdot::avx2::tree8_512(&r[h]);
            // SAFETY: jb + 16 <= w[h].len() (the caller pads the scores to a multiple of 32).
            unsafe { _mm512_storeu_ps(w[h].as_mut_ptr().add(jb), _mm512_mul_ps(sum, _mm512_set1_ps(scale))) };
        }
    }
}

/// Where the AVX-512 kernels read key `j`'s `d` values (keys or values) from, for `j` up to the padded count:
/// past the last key, rows whose products are discarded (scores) or multiplied by zero weights (values).
trait Rows {
    /// A pointer to `d` readable values.
    fn row(&self, j: usize) -> *const f32;
    /// Asks for rows `j..j + count` (`d` values each) to be brought into the cache, where they are scattered.
    #[inline(always)]
    fn prefetch(&self, _j: usize, _count: usize, _d: usize) {}
}

/// Rows in key order, `d` apart, zeros past the keys ([`WideKv::v`]).
struct Contiguous<'a> {
    v: &'a [f32],
    d: usize,
}

impl Rows for Contiguous<'_> {
    #[inline(always)]
    fn row(&self, j: usize) -> *const f32 {
        debug_assert!((j + 1) * self.d <= self.v.len());
        self.v.as_ptr().wrapping_add(j * self.d)
    }
}

/// Rows in the pool: key `j` at slot `slots[j]` (keys past `slots` read the last one's), `at` values into each
/// slot's `width`.
struct Pooled<'a> {
    pool: &'a [f32],
    slots: &'a [u32],
    width: usize,
    at: usize,
}

impl Pooled<'_> {
    fn new<'a>(pool: &'a [f32], slots: &'a [u32], width: usize, at: usize, d: usize) -> Pooled<'a> {
        assert!(!slots.is_empty() && at + d <= width);
        assert!(slots.iter().all(|&s| (s as usize + 1) * width <= pool.len()));
        Pooled { pool, slots, width, at }
    }
}

impl Rows for Pooled<'_> {
    #[inline(always)]
    fn row(&self, j: usize) -> *const f32 {
        let j = j.min(self.slots.len() - 1);
        // SAFETY: j < slots.len().
        let slot = unsafe { *self.slots.get_unchecked(j) } as usize;
        // Inside the pool: every slot's row was checked at `new`.
        self.pool.as_ptr().wrapping_add(slot * self.width + self.at)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch(&self, j: usize, count: usize, d: usize) {
        for r in j..(j + count).min(self.slots.len()) {
            let p = self.row(r) as *const i8;
            for line in (0..d * 4).step_by(64) {
                // SAFETY: a prefetch is a hint: it reads nothing and cannot fault.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line)) };
            }
        }
    }
}

/// The `Tiled` value product with sixteen outputs per register for `H` heads sharing the values: partial sum
/// `j % 8` of head `h`'s outputs `c..c + 16` in `acc[h][j % 8]`, over every key (`w[h]`: head `h`'s weights for
/// the `n` keys, then zeros to a multiple of 8; `v.row(j)`: key `j`'s `d` values). Lane for lane what the
/// eight-wide loop computes; each value register feeds all `H` heads. The last group of eight adds zero-weight
/// products (as llama.cpp adds its padded cache's, masked to zero), which leaves every sum as it was and keeps
/// the accumulators in registers (indexed by constants only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // registers indexed in lock-step by head and partial sum
fn values_wide<const H: usize>(w: [&[f32]; H], n: usize, v: &impl Rows, out: &mut [&mut [f32]; H]) {
    let np = n.div_ceil(8) * 8;
    let d = out[0].len();
    assert!(n > 0 && w.iter().all(|wh| wh.len() >= np && wh[n..np].iter().all(|&x| x == 0.0)));
    assert!(d.is_multiple_of(16) && out.iter().all(|o| o.len() == d));
    for c in (0..d).step_by(16) {
        let mut acc = [[_mm512_setzero_ps(); 8]; H];
        for j in (0..np).step_by(8) {
            if c == 0 {
                v.prefetch(j + PREFETCH_KEYS, 8, d);
            }
            for l in 0..8 {
                // SAFETY: every row holds d >= c + 16 values (the `Rows` contract).
                let vj = unsafe { _mm512_loadu_ps(v.row(j + l).add(c)) };
                for h in 0..H {
                    // SAFETY: j + l < np <= w[h].len() (asserted).
                    let wj = unsafe { *w[h].get_unchecked(j + l) };
                    acc[h][l] = _mm512_fmadd_ps(vj, _mm512_set1_ps(wj), acc[h][l]);
                }
            }
        }
        for h in 0..H {
            // SAFETY: c + 16 <= d = out[h].len() (asserted).
            unsafe { _mm512_storeu_ps(out[h].as_mut_ptr().add(c), crate::qdot::avx2::tree8_512(&acc[h])) };
        }
    }
}

/// How many keys ahead the kernels ask for scattered rows ([`Rows::prefetch`]).
const PREFETCH_KEYS: usize = 16;

/// `Tiled` scores of `H` heads against keys read in place (a sequence with one row in the step, where
/// transposing its keys would cost as much as reading them): two keys per register, key `j`'s eight partial
/// sums in the low half and key `j + 1`'s in the high half (dimensions `l, l + 8, ...` in order, as
/// `tinyBLAS`), then `hsum_float_8`'s pairing in each half, and the scale.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // registers indexed in lock-step by head
fn scores_rows<const H: usize>(q: [&[f32]; H], keys: &impl Rows, n: usize, scale: f32, w: &mut [&mut [f32]; H]) {
    let d = q[0].len();
    assert!(q.iter().all(|qh| qh.len() == d) && d.is_multiple_of(8) && w.iter().all(|wh| wh.len() >= n));
    // Each head's query with every eight values repeated in both halves of a register.
    let qq: Vec<__m512> = q
        .iter()
        .flat_map(|qh| {
            qh.chunks_exact(8).map(|c| {
                // SAFETY: `c` is eight f32.
                let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
                _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(x)))
            })
        })
        .collect();
    let steps = d / 8;
    let scale = _mm512_set1_ps(scale);
    for j in (0..n).step_by(2) {
        let (a, b) = (keys.row(j), keys.row(j + 1));
        // The pool's rows are scattered (one head's part of each slot): fetch those a few keys ahead.
        keys.prefetch(j + PREFETCH_KEYS, 2, d);
        let mut acc = [_mm512_setzero_ps(); H];
        for s in 0..steps {
            // SAFETY: each row holds d >= 8 s + 8 values (the `Rows` contract).
            let k = unsafe {
                let lo = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(a.add(8 * s))));
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, _mm256_castps_pd(_mm256_loadu_ps(b.add(8 * s)))))
            };
            for h in 0..H {
                acc[h] = _mm512_fmadd_ps(k, qq[h * steps + s], acc[h]);
            }
        }
        for h in 0..H {
            // hsum_float_8 in each half: (v0 + v4) + (v2 + v6), (v1 + v5) + (v3 + v7), then those two.
            let x = acc[h];
            let t = _mm512_add_ps(x, _mm512_shuffle_f32x4::<0b10_11_00_01>(x, x));
            let u = _mm512_add_ps(t, _mm512_permute_ps::<0b11_10_11_10>(t));
            let r = _mm512_mul_ps(_mm512_add_ps(u, _mm512_movehdup_ps(u)), scale);
            w[h][j] = _mm512_cvtss_f32(r);
            if j + 1 < n {
                w[h][j + 1] = _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(r));
            }
        }
    }
}

/// One KV head of one sequence laid out for the AVX-512 kernels, once per step: the keys transposed (`kt`: `d`
/// rows of `stride` values, key `j` at column `j`) and the values in key order (`v`: `stride` rows of `d`), zeros
/// past the sequence's keys; `stride` is a multiple of 32.
#[derive(Clone, Copy)]
struct WideKv<'a> {
    kt: &'a [f32],
    v: &'a [f32],
    stride: usize,
}

/// Where [`heads_wide`] reads a KV head's keys and values.
enum WideSource<'a> {
    /// A sequence with several rows in the step: its keys and values laid out once.
    Laid(WideKv<'a>),
    /// A sequence with one row: keys and values read in place from the pool.
    Pool(Pooled<'a>, Pooled<'a>),
}

/// [`HeadAttention`]'s `Tiled` order with AVX-512 for `H` query heads of one KV head (`q[h]`: `d` values,
/// f16-rounded) over the first `n` keys of `src`. `scratch` is reused between calls.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn heads_wide<const H: usize>(
    q: [&[f32]; H],
    src: &WideSource<'_>,
    n: usize,
    scale: f32,
    scratch: &mut Vec<f32>,
    out: [&mut [f32]; H],
) {
    let d = q[0].len();
    let np = n.div_ceil(32) * 32;
    assert!(d.is_multiple_of(16));
    scratch.clear();
    scratch.resize(H * np, 0.0);
    let mut ws = scratch.chunks_exact_mut(np);
    let mut w: [&mut [f32]; H] = std::array::from_fn(|_| ws.next().expect("H chunks"));
    match src {
        WideSource::Laid(kv) => {
            let &WideKv { kt, v, stride } = kv;
            assert!(stride.is_multiple_of(32) && stride >= np && kt.len() >= d * stride && v.len() >= d * stride);
            scores_wide(q, kt, stride, n, scale, &mut w);
        }
        WideSource::Pool(keys, _) => scores_rows(q, keys, n, scale, &mut w),
    }
    for wh in w.iter_mut() {
        softmax_f16(wh, n);
    }
    let w: [&[f32]; H] = std::array::from_fn(|h| &*w[h]);
    let mut out = out;
    match src {
        WideSource::Laid(kv) => values_wide(w, n, &Contiguous { v: kv.v, d }, &mut out),
        WideSource::Pool(_, values) => values_wide(w, n, values, &mut out),
    }
}

/// ggml's softmax of the scores `w[..n]` in place, then rounded to f16 (the weights' precision in the value
/// product): exp in groups of eight (padding to `w.len()`, a multiple of 8, gives exp(-inf) = 0), each group's
/// sum added in f64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn softmax_f16(w: &mut [f32], n: usize) {
    let np = w.len();
    debug_assert!(np.is_multiple_of(8) && n <= np);
    let max = w[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for g in (0..np).step_by(8) {
        let mut v = [f32::NEG_INFINITY; 8];
        let live = n.saturating_sub(g).min(8);
        v[..live].copy_from_slice(&w[g..g + live]);
        // SAFETY: `v` is eight f32.
        let e = expf8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(v.as_ptr()) }, _mm256_set1_ps(max)));
        sum += crate::qdot::avx2::hsum(e) as f64;
        // SAFETY: g + 8 <= np = w.len().
        unsafe { _mm256_storeu_ps(w.as_mut_ptr().add(g), e) };
    }
    let inv = _mm256_set1_ps((1.0 / sum) as f32);
    for g in (0..np).step_by(8) {
        // SAFETY: g + 8 <= np = w.len().
        unsafe {
            let p = w.as_mut_ptr().add(g);
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(_mm256_loadu_ps(p), inv));
            _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
        }
    }
}

/// Attention for every row of a step, as [`HeadAttention`]: row `i` of `qkv` (`[rows, (nh + 2 nkv) d]`, Q already
/// roped) attends to the pool slots `slots[o..o + n]` for `rows[i] = (o, n)`, whose K and V the pool holds at f16
/// precision. Returns `[rows, nh d]`.
pub fn attention(
    qkv: &[f32],
    (pool_k, pool_v): (&[f32], &[f32]),
    rows: &[(usize, usize)],
    slots: &[u32],
    h: crate::cpu_attention::Heads,
    order: DotOrder,
) -> Vec<f32> {
    let d = h.head_dim;
    let width = (h.n_heads + 2 * h.n_kv_heads) * d;
    let kv_width = h.n_kv_heads * d;
    let group = h.n_heads / h.n_kv_heads;
    assert!(qkv.len() == rows.len() * width && pool_k.len() == pool_v.len());
    assert!(rows.iter().all(|&(o, n)| n > 0 && o + n <= slots.len()));
    assert!(slots.iter().all(|&s| (s as usize + 1) * kv_width <= pool_k.len()));
    let scale = 1.0 / (d as f32).sqrt();
    // With AVX-512, each sequence's keys transposed once per KV head (shared by its rows and query heads):
    // sequence at slot offset `o` with up to `n` keys -> `[nkv][d][stride]`.
    let wide = order == DotOrder::Tiled && wide_available() && d.is_multiple_of(16);
    // Only for sequences with two or more rows in the step: a decode row would transpose its whole context to
    // read it once.
    let mut seqs: Vec<(usize, usize, usize)> = Vec::new();
    if wide {
        for &(o, n) in rows {
            match seqs.iter_mut().find(|s| s.0 == o) {
                Some(s) => (s.1, s.2) = (s.1.max(n), s.2 + 1),
                None => seqs.push((o, n, 1)),
            }
        }
        seqs.retain(|s| s.2 >= 2);
    }
    let seqs: Vec<(usize, usize)> = seqs.into_iter().map(|(o, n, _)| (o, n)).collect();
    let strides: Vec<usize> = seqs.iter().map(|&(_, n)| n.div_ceil(32) * 32).collect();
    // Per sequence: for each KV head its keys transposed (d x st), then for each its values (st x d).
    let mut bufs: Vec<Vec<f32>> = strides.iter().map(|&st| vec![0f32; 2 * h.n_kv_heads * d * st]).collect();
    {
        let ptrs: Vec<crate::team::SharedMut> =
            bufs.iter_mut().map(|k| crate::team::SharedMut::new(k.as_mut_ptr())).collect();
        crate::team::run(seqs.len() * h.n_kv_heads, &|task| {
            let (si, kvh) = (task / h.n_kv_heads, task % h.n_kv_heads);
            let ((o, n), st) = (seqs[si], strides[si]);
            let nkv = h.n_kv_heads;
            // SAFETY: task (si, kvh) owns KV head kvh's two d * st regions of sequence si's buffer; nothing else
            // touches them until `team::run` returns.
            let (kt, v) = unsafe {
                (
                    std::slice::from_raw_parts_mut(ptrs[si].get().add(kvh * d * st), d * st),
                    std::slice::from_raw_parts_mut(ptrs[si].get().add((nkv + kvh) * d * st), d * st),
                )
            };
            for j in 0..n {
                let at = slots[o + j] as usize * kv_width + kvh * d;
                for (e, &x) in pool_k[at..at + d].iter().enumerate() {
                    kt[e * st + j] = x;
                }
                v[j * d..(j + 1) * d].copy_from_slice(&pool_v[at..at + d]);
            }
        });
    }
    let mut out = vec![0f32; rows.len() * h.n_heads * d];
    let base = crate::team::SharedMut::new(out.as_mut_ptr());
    // One task per (row, KV head); its query heads share the keys and values it reads.
    crate::team::run(rows.len() * h.n_kv_heads, &|task| {
        let (i, kvh) = (task / h.n_kv_heads, task % h.n_kv_heads);
        // SAFETY: task (i, kvh) owns out[i * nh * d + kvh * group * d..][..group * d], inside `out`; no other task
        // writes it and `out` outlives `team::run`.
        let o = unsafe { std::slice::from_raw_parts_mut(base.get().add((i * h.n_heads + kvh * group) * d), group * d) };
        let (at, n) = rows[i];
        let ctx = &slots[at..at + n];
        let at_slot = |j: usize| ctx[j] as usize * kv_width + kvh * d;
        let mut scratch = Vec::new();
        let mut q: Vec<f32> = qkv[i * width + kvh * group * d..i * width + (kvh + 1) * group * d].to_vec();
        f16_round_slice(&mut q);
        let keys = |j: usize| &pool_k[at_slot(j)..at_slot(j) + d];
        let values = |j: usize| &pool_v[at_slot(j)..at_slot(j) + d];
        #[cfg(target_arch = "x86_64")]
        if wide {
            let src = match seqs.iter().position(|s| s.0 == at) {
                Some(si) => {
                    let (st, nkv) = (strides[si], h.n_kv_heads);
                    WideSource::Laid(WideKv {
                        kt: &bufs[si][kvh * d * st..(kvh + 1) * d * st],
                        v: &bufs[si][(nkv + kvh) * d * st..(nkv + kvh + 1) * d * st],
                        stride: st,
                    })
                }
                None => WideSource::Pool(
                    Pooled::new(pool_k, ctx, kv_width, kvh * d, d),
                    Pooled::new(pool_v, ctx, kv_width, kvh * d, d),
                ),
            };
            // The group's heads three at a time (what the registers hold), then the rest.
            let mut qs = q.chunks_exact(d);
            let mut os = o.chunks_exact_mut(d);
            for _ in 0..group / 3 {
                let (qh, oh) =
                    (std::array::from_fn(|_| qs.next().unwrap()), std::array::from_fn(|_| os.next().unwrap()));
                // SAFETY: `wide` only where AVX-512 F is; AVX2, FMA and F16C with it.
                unsafe { heads_wide::<3>(qh, &src, n, scale, &mut scratch, oh) };
            }
            match group % 3 {
                // SAFETY: as above.
                2 => unsafe {
                    let (qh, oh) = ([qs.next().unwrap(), qs.next().unwrap()], [os.next().unwrap(), os.next().unwrap()]);
                    heads_wide::<2>(qh, &src, n, scale, &mut scratch, oh)
                },
                // SAFETY: as above.
                1 => unsafe {
                    heads_wide::<1>([qs.next().unwrap()], &src, n, scale, &mut scratch, [os.next().unwrap()])
                },
                _ => {}
            }
            return;
        }
        for (qh, og) in q.chunks_exact(d).zip(o.chunks_exact_mut(d)) {
            HeadAttention { order, d, scale, scratch: &mut scratch }.run(qh, n, keys, values, og);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The AVX-512 attention (query heads three at a time, keys transposed) equals, bit for bit, the eight-wide
    /// `Tiled` loop run a head at a time, for every group size up to 7 (Qwen2.5's) and causal rows whose key
    /// counts are not multiples of 8 or 16.
    #[test]
    fn wide_attention_equals_head_by_head() {
        if !wide_available() {
            eprintln!("no AVX-512 F here: the wide kernels do not run");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for group in 1..=7 {
            let (n_kv_heads, d, m) = (2, 64, 37);
            let h = crate::cpu_attention::Heads { n_heads: group * n_kv_heads, n_kv_heads, head_dim: d };
            let width = (h.n_heads + 2 * n_kv_heads) * d;
            let qkv: Vec<f32> = (0..m * width).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            // The pool at f16 precision, its slots in a scrambled order.
            let kv_width = n_kv_heads * d;
            let mut pool = |_| {
                let mut p: Vec<f32> = (0..(m + 5) * kv_width).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                f16_round_slice(&mut p);
                p
            };
            let (pk, pv) = (pool(0), pool(1));
            let slots: Vec<u32> = (0..m as u32).map(|i| (i * 7 + 3) % (m as u32 + 5)).collect();
            // A prompt's causal rows (keys laid out once), then a step of single-row sequences at other offsets
            // (keys read in place) next to a two-row one.
            let prompt: Vec<(usize, usize)> = (0..m).map(|i| (0, i + 1)).collect();
            let mixed = vec![(3, 20), (5, 1), (1, 33), (0, 7), (10, 27), (0, 8), (2, 35)];
            for rows in [prompt, mixed] {
                let qkv = &qkv[..rows.len() * width];
                check(qkv, (&pk, &pv), &rows, &slots, h);
            }
        }
    }

    /// Both AVX-512 score kernels (keys transposed, keys in place) give each key `dot_f16`'s `Tiled` score to the
    /// bit, on values spread over many binades (where a different order of the sums would show).
    #[test]
    fn wide_scores_equal_dot_f16() {
        if !wide_available() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut value = || {
            let v = rng.random_range(-1.0f32..1.0) * 2f32.powi(rng.random_range(-8..8));
            f16_round(v)
        };
        let (d, n, stride) = (64, 45, 64);
        let q: Vec<Vec<f32>> = (0..3).map(|_| (0..d).map(|_| value()).collect()).collect();
        let keys: Vec<f32> = (0..n * d).map(|_| value()).collect();
        let mut kt = vec![0f32; d * stride];
        for j in 0..n {
            for e in 0..d {
                kt[e * stride + j] = keys[j * d + e];
            }
        }
        let slots: Vec<u32> = (0..n as u32).collect();
        let scale = 0.125;
        let mut a = vec![vec![0f32; stride]; 3];
        let mut b = vec![vec![0f32; stride]; 3];
        let qs: [&[f32]; 3] = std::array::from_fn(|h| q[h].as_slice());
        {
            let [a0, a1, a2] = &mut a[..] else { unreachable!() };
            let [b0, b1, b2] = &mut b[..] else { unreachable!() };
            // SAFETY: AVX-512 F is present (checked above).
            unsafe {
                scores_wide(qs, &kt, stride, n, scale, &mut [&mut a0[..], &mut a1[..], &mut a2[..]]);
                let rows = Pooled::new(&keys, &slots, d, 0, d);
                scores_rows(qs, &rows, n, scale, &mut [&mut b0[..], &mut b1[..], &mut b2[..]]);
            }
        }
        for h in 0..3 {
            for j in 0..n {
                // SAFETY: AVX2 and FMA are present (AVX-512 F implies them here).
                let want = unsafe { dot_f16(DotOrder::Tiled, d, &q[h], &keys[j * d..(j + 1) * d]) } * scale;
                assert_eq!(a[h][j].to_bits(), want.to_bits(), "transposed, head {h}, key {j}");
                assert_eq!(b[h][j].to_bits(), want.to_bits(), "in place, head {h}, key {j}");
            }
        }
    }

    /// [`attention`]'s rows equal [`HeadAttention`]'s `Tiled` loop, head by head, to the bit.
    fn check(
        qkv: &[f32],
        (pk, pv): (&[f32], &[f32]),
        rows: &[(usize, usize)],
        slots: &[u32],
        h: crate::cpu_attention::Heads,
    ) {
        let (d, group) = (h.head_dim, h.n_heads / h.n_kv_heads);
        let (width, kv_width) = ((h.n_heads + 2 * h.n_kv_heads) * d, h.n_kv_heads * d);
        let wide = attention(qkv, (pk, pv), rows, slots, h, DotOrder::Tiled);
        let mut scratch = Vec::new();
        for (i, &(o, n)) in rows.iter().enumerate() {
            for head in 0..h.n_heads {
                let kvh = head / group;
                let mut q = qkv[i * width + head * d..i * width + (head + 1) * d].to_vec();
                f16_round_slice(&mut q);
                let at = |j: usize| slots[o + j] as usize * kv_width + kvh * d;
                let mut out = vec![0f32; d];
                let scale = 1.0 / (d as f32).sqrt();
                HeadAttention { order: DotOrder::Tiled, d, scale, scratch: &mut scratch }.run(
                    &q,
                    n,
                    |j| &pk[at(j)..at(j) + d],
                    |j| &pv[at(j)..at(j) + d],
                    &mut out,
                );
                let got = &wide[(i * h.n_heads + head) * d..][..d];
                let same = got.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "group {group}, row {i} {:?}, head {head}: {:?} vs {:?}", (o, n), &got[..4], &out[..4]);
            }
        }
    }
}
