//! Fused CPU kernels for the attention half of a layer, f32 only: rope plus the KV-pool write, and decode
//! attention read straight from the pool's slots.
//!
//! Why: in a decode step on a 2-core CPU, libtorch's per-op overhead (a few microseconds each, ~40 ops per layer)
//! and the slot gathers (copying every sequence's K/V into a padded batch before SDPA) cost as much as the
//! attention math. These kernels do each job in one pass over the data it needs. Other devices and dtypes use the
//! libtorch path in `llama.rs`, which tests compare these against.

use tch::{Device, Kind, Tensor};

/// Whether the fused kernels can run on these tensors.
pub fn applies(t: &Tensor) -> bool {
    t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()
}

/// Shape of the attention heads.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// How [`rope_and_store`] rotates and stores.
#[derive(Debug, Clone, Copy)]
pub struct Rope {
    /// Each head's pairs are adjacent (`2i, 2i + 1`: GGUF's order for Llama) rather than its halves (`i, i + d/2`).
    pub adjacent: bool,
    /// As llama.cpp: the rotation's fused multiply-adds, and K and V stored at f16 precision.
    pub ggml: bool,
}

/// In place on `qkv` (`[t, (nh + 2 nkv) * d]`, contiguous f32): rotate the Q and K heads of row `i` by position
/// `positions[i]` (pairs as `rope` says, tables `[max_pos, d / 2]`), then copy row `i`'s K and V heads into
/// `pool_k` / `pool_v` (`[slots, nkv, d]`) at `slots[i]`.
///
/// The caller guarantees (as `Plan::new` checks): `positions` are inside the tables, `slots` are inside the pool
/// and distinct, all tensors are contiguous f32 on the CPU.
pub fn rope_and_store(
    qkv: &mut Tensor,
    (cos, sin): (&Tensor, &Tensor),
    positions: &[i64],
    slots: &[i64],
    (pool_k, pool_v): (&mut Tensor, &mut Tensor),
    h: Heads,
    rope: Rope,
) {
    let d = h.head_dim;
    let half = d / 2;
    let width = (h.n_heads + 2 * h.n_kv_heads) * d;
    let t = positions.len();
    assert!(qkv.size() == [t as i64, width as i64] && slots.len() == t && applies(qkv));
    assert!(applies(cos) && applies(sin) && applies(pool_k) && applies(pool_v));
    let table_rows = cos.size()[0] as usize;
    let pool_rows = pool_k.size()[0] as usize;
    let kv_width = h.n_kv_heads * d;
    assert!(positions.iter().all(|&p| (p as usize) < table_rows) && slots.iter().all(|&s| (s as usize) < pool_rows));
    // SAFETY: every tensor is contiguous f32 on the CPU with the sizes asserted above; `qkv`, `pool_k`, `pool_v`
    // are borrowed mutably for this call so nothing else reads or writes them meanwhile, and `cos`/`sin` are only
    // read.
    let (x, cos, sin, pk, pv) = unsafe {
        (
            std::slice::from_raw_parts_mut(qkv.data_ptr() as *mut f32, t * width),
            std::slice::from_raw_parts(cos.data_ptr() as *const f32, table_rows * half),
            std::slice::from_raw_parts(sin.data_ptr() as *const f32, table_rows * half),
            std::slice::from_raw_parts_mut(pool_k.data_ptr() as *mut f32, pool_rows * kv_width),
            std::slice::from_raw_parts_mut(pool_v.data_ptr() as *mut f32, pool_rows * kv_width),
        )
    };
    let k_at = h.n_heads * d;
    let rotated = (h.n_heads + h.n_kv_heads) * d;
    // The rows rotated in parallel (a prompt's rows are independent), then stored in the pool.
    crate::team::rows_mut(x, width, crate::ggml_ops::PARALLEL_ROWS, &|first, part| {
        for (i, row) in part.chunks_exact_mut(width).enumerate() {
            let p = positions[first + i] as usize;
            let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
            for head in row[..rotated].chunks_exact_mut(d) {
                if rope.ggml {
                    crate::ggml_ops::rotate_head(head, c, s, rope.adjacent);
                    continue;
                }
                for j in 0..half {
                    let (u, v) = if rope.adjacent { (2 * j, 2 * j + 1) } else { (j, j + half) };
                    let (a, b) = (head[u], head[v]);
                    (head[u], head[v]) = (a * c[j] - b * s[j], b * c[j] + a * s[j]);
                }
            }
            if rope.ggml {
                // llama.cpp's cache holds K and V at f16.
                crate::ggml_ops::f16_round_slice(&mut row[k_at..]);
            }
        }
    });
    for (row, &slot) in x.chunks_exact(width).zip(slots) {
        let slot = slot as usize;
        pk[slot * kv_width..(slot + 1) * kv_width].copy_from_slice(&row[k_at..k_at + kv_width]);
        pv[slot * kv_width..(slot + 1) * kv_width].copy_from_slice(&row[k_at + kv_width..k_at + 2 * kv_width]);
    }
}

/// Decode attention: for sequence `s` (query row `s` of `qkv`, already roped) attend over the pool slots
/// `gather[offsets[s]..offsets[s + 1]]` (its context and its own new token, in order). Returns `[b, nh * d]`.
pub fn decode_attention(
    qkv: &Tensor,
    pool_k: &Tensor,
    pool_v: &Tensor,
    gather: &[u32],
    offsets: &[usize],
    h: Heads,
) -> Tensor {
    let d = h.head_dim;
    let b = offsets.len() - 1;
    let width = (h.n_heads + 2 * h.n_kv_heads) * d;
    let kv_width = h.n_kv_heads * d;
    let group = h.n_heads / h.n_kv_heads;
    assert!(applies(qkv) && applies(pool_k) && applies(pool_v) && qkv.size()[1] == width as i64);
    assert!(qkv.size()[0] as usize >= b && offsets[b] == gather.len());
    let pool_rows = pool_k.size()[0] as usize;
    assert!(gather.iter().all(|&s| (s as usize) < pool_rows));
    // SAFETY: contiguous f32 CPU tensors of the sizes asserted above, only read here.
    let (q, pk, pv) = unsafe {
        (
            std::slice::from_raw_parts(qkv.data_ptr() as *const f32, b * width),
            std::slice::from_raw_parts(pool_k.data_ptr() as *const f32, pool_rows * kv_width),
            std::slice::from_raw_parts(pool_v.data_ptr() as *const f32, pool_rows * kv_width),
        )
    };
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; b * h.n_heads * d];
    // One task per (sequence, KV head): its `group` query heads share every K/V row they read. On the kernels'
    // thread team, as the matrix products around it (a pool whose workers sleep would be woken every layer).
    let base = crate::team::SharedMut::new(out.as_mut_ptr());
    crate::team::run(b * h.n_kv_heads, &|task| {
        // SAFETY: task t owns out[t * group * d..(t + 1) * group * d], inside `out` (b * n_kv_heads tasks of
        // group * d = b * n_heads * d values); no other task writes it and `out` outlives `team::run`.
        let o = unsafe { std::slice::from_raw_parts_mut(base.get().add(task * group * d), group * d) };
        let (s, kvh) = (task / h.n_kv_heads, task % h.n_kv_heads);
        let slots = &gather[offsets[s]..offsets[s + 1]];
        let qs = &q[s * width + kvh * group * d..s * width + (kvh + 1) * group * d];
        #[cfg(target_arch = "x86_64")]
        if crate::cpu_gemm::available() {
            // SAFETY: AVX2 and FMA are present (checked just above).
            unsafe { attend_avx2(qs, slots, pk, pv, kvh, h, scale, o) };
            return;
        }
        attend(qs, slots, pk, pv, kvh, h, scale, o);
    });
    Tensor::from_slice(&out).view([b as i64, (h.n_heads * d) as i64])
}

/// [`attend`] with AVX2+FMA intrinsics: scores for eight keys at a time (eight accumulators reduced by one
/// `hadd` tree), softmax, then the weighted sum of values with the output row held in registers.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2(
    qs: &[f32],
    slots: &[u32],
    pk: &[f32],
    pv: &[f32],
    kvh: usize,
    h: Heads,
    scale: f32,
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = h.head_dim;
    if !d.is_multiple_of(64) {
        return attend(qs, slots, pk, pv, kvh, h, scale, o);
    }
    let kv_width = h.n_kv_heads * d;
    let group = qs.len() / d;
    let n = slots.len();
    let row_at = |slot: u32| slot as usize * kv_width + kvh * d;
    assert!(slots.iter().all(|&s| row_at(s) + d <= pk.len() && row_at(s) + d <= pv.len()) && o.len() == group * d);
    let mut scores = vec![0f32; group * n];
    for g in 0..group {
        let q = &qs[g * d..(g + 1) * d];
        let row = &mut scores[g * n..(g + 1) * n];
        let mut j = 0;
        while j + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut i = 0;
            while i < d {
                // SAFETY: i + 8 <= d = q.len(); each key row has d floats inside pk (asserted above).
                unsafe {
                    let qv = _mm256_loadu_ps(q.as_ptr().add(i));
                    for (u, a) in acc.iter_mut().enumerate() {
                        let k = pk.as_ptr().add(row_at(slots[j + u]) + i);
                        *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k), *a);
                    }
                }
                i += 8;
            }
            let t0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
            let t1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
            let lo = _mm256_permute2f128_ps::<0x20>(t0, t1);
            let hi = _mm256_permute2f128_ps::<0x31>(t0, t1);
            let sums = _mm256_mul_ps(_mm256_add_ps(lo, hi), _mm256_set1_ps(scale));
            // SAFETY: j + 8 <= n = row.len().
            unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(j), sums) };
            j += 8;
        }
        for (jj, s) in row.iter_mut().enumerate().skip(j) {
            let at = row_at(slots[jj]);
            *s = q.iter().zip(&pk[at..at + d]).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in row.iter_mut() {
            *x = exp(*x - max);
        }
        let inv = 1.0 / row.iter().sum::<f32>();
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
    for g in 0..group {
        let row = &scores[g * n..(g + 1) * n];
        for c in (0..d).step_by(64) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (&p, &slot) in row.iter().zip(slots) {
                let pb = _mm256_set1_ps(p);
                let v = pv[row_at(slot) + c..row_at(slot) + c + 64].as_ptr();
                for (u, a) in acc.iter_mut().enumerate() {
                    // SAFETY: v points at 64 floats inside pv (sliced just above).
                    *a = _mm256_fmadd_ps(pb, unsafe { _mm256_loadu_ps(v.add(8 * u)) }, *a);
                }
            }
            for (u, a) in acc.iter().enumerate() {
                // SAFETY: g * d + c + 8u + 8 <= group * d = o.len().
                unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(g * d + c + 8 * u), *a) };
            }
        }
    }
}

/// `group` query heads (`qs`, group x d) against the K/V head `kvh` of `slots`; writes `o` (group x d).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend(qs: &[f32], slots: &[u32], pk: &[f32], pv: &[f32], kvh: usize, h: Heads, scale: f32, o: &mut [f32]) {
    let d = h.head_dim;
    let kv_width = h.n_kv_heads * d;
    let group = qs.len() / d;
    let n = slots.len();
    let mut scores = vec![0f32; group * n];
    for (j, &slot) in slots.iter().enumerate() {
        let at = slot as usize * kv_width + kvh * d;
        let k = &pk[at..at + d];
        for g in 0..group {
            scores[g * n + j] = qs[g * d..(g + 1) * d].iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
    }
    for g in 0..group {
        let row = &mut scores[g * n..(g + 1) * n];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in row.iter_mut() {
            *x = exp(*x - max);
        }
        let sum: f32 = row.iter().sum();
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
    o.fill(0.0);
    for (j, &slot) in slots.iter().enumerate() {
        let at = slot as usize * kv_width + kvh * d;
        let v = &pv[at..at + d];
        for g in 0..group {
            let p = scores[g * n + j];
            for (oi, &vi) in o[g * d..(g + 1) * d].iter_mut().zip(v) {
                *oi += p * vi;
            }
        }
    }
}

/// `e^x` for the softmax, branch-free so it vectorizes (Cephes' `expf`: range reduction by ln 2, degree-6
/// polynomial, exponent bits; relative error about 1e-7). Inputs below -87 give 0-ish denormal-free results.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let fx = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - fx * 0.693_359_4 + fx * 2.121_944_4e-4;
    let z = r * r;
    let p =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let y = p * z + r + 1.0;
    y * f32::from_bits(((fx as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1000.0) < 1e-37);
    }
}
