//! BERT, the encoder behind sentence-transformers models such as all-MiniLM-L6-v2.
//!
//! Bidirectional attention, absolute learned positions, token types, post-LayerNorm residual blocks and erf GELU,
//! as Hugging Face's `BertModel`. The batch is ragged, as in [`crate::llama`]: every token of every sequence goes
//! through the matrix products together (one `[T, H]` matrix, no padding), and attention runs per sequence, so a
//! short input beside a long one costs its own length only and the numbers are those of the input alone.
//! There is no KV cache: an encoder sees each input once.

use std::ops::Range;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::linear::Linear;
use crate::team::SharedMut;
use crate::weights::SafeTensorFiles;

/// The fields of a BERT `config.json` the forward pass uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}
fn absolute() -> String {
    "absolute".into()
}

impl BertConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| Error::format(format!("config.json: {e}")))?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::format(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if cfg.position_embedding_type != "absolute" {
            return Err(Error::unsupported(format!("BERT position_embedding_type {}", cfg.position_embedding_type)));
        }
        if !matches!(cfg.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
            return Err(Error::unsupported(format!("BERT hidden_act {}", cfg.hidden_act)));
        }
        Ok(cfg)
    }
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
    /// The same weights as plain floats, for [`rows::add_layer_norm`].
    wv: Vec<f32>,
    bv: Vec<f32>,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT encoder (without the pooler head, which sentence-transformers does not use).
pub struct BertModel {
    cfg: BertConfig,
    device: Device,
    kind: Kind,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    /// `gelu` is erf GELU; the `*tanh`/`gelu_new` variants use the tanh approximation.
    gelu_tanh: bool,
    /// libtorch threads of the thread that runs the model (0: one per core).
    threads: usize,
    /// Every product and attention run on AMX tiles ([`crate::amx`]; erf GELU, head sizes that are multiples of
    /// 32): the whole forward then runs on [`crate::team`], the row-wise steps in [`rows`] and attention a task
    /// per sequence and head group, with libtorch at one thread (its OpenMP team and ours would otherwise spin
    /// against each other on the same cores).
    on_team: bool,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel").field("cfg", &self.cfg).field("device", &self.device).finish()
    }
}

/// Hidden states of a ragged batch: `[T, H]` rows, sequence `i` at `rows[i]`.
#[derive(Debug)]
pub struct Hidden {
    pub tensor: Tensor,
    pub rows: Vec<Range<usize>>,
}

impl BertModel {
    /// Loads the weights of a Hugging Face `BertModel` (names with or without the `bert.` prefix).
    pub fn load(cfg: BertConfig, st: &SafeTensorFiles, device: Device, kind: Kind, threads: usize) -> Result<Self> {
        let prefix = if st.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let put = |t: Tensor| -> Result<Tensor> { Ok(t.f_to_kind(kind)?.f_to_device(device)?) };
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let full = format!("{prefix}{name}");
            let t = st.load(&full)?;
            let got: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            if got != shape {
                return Err(Error::format(format!("tensor {full} has shape {got:?}, the config implies {shape:?}")));
            }
            put(t)
        };
        let h = cfg.hidden_size;
        let norm = |name: &str| -> Result<LayerNorm> {
            let (w, b) = (get(&format!("{name}.weight"), &[h])?, get(&format!("{name}.bias"), &[h])?);
            let floats = |t: &Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu));
            Ok(LayerNorm { wv: floats(&w)?, bv: floats(&b)?, w, b })
        };
        let word = get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let position = get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?;
        let token_type = get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
        let emb_norm = norm("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let weights = |name: &str, out: usize, inp: usize| -> Result<(Tensor, Tensor)> {
                Ok((get(&format!("{p}.{name}.weight"), &[out, inp])?, get(&format!("{p}.{name}.bias"), &[out])?))
            };
            let lin = |name: &str, out: usize, inp: usize| -> Result<Linear> {
                let (w, b) = weights(name, out, inp)?;
                Ok(Linear::encoder(w, Some(b)))
            };
            let (q, k, v) = (
                weights("attention.self.query", h, h)?,
                weights("attention.self.key", h, h)?,
                weights("attention.self.value", h, h)?,
            );
            let qkv = Linear::encoder(Tensor::cat(&[&q.0, &k.0, &v.0], 0), Some(Tensor::cat(&[&q.1, &k.1, &v.1], 0)));
            layers.push(Layer {
                qkv,
                attn_out: lin("attention.output.dense", h, h)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                inter: lin("intermediate.dense", cfg.intermediate_size, h)?,
                out: lin("output.dense", h, cfg.intermediate_size)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let gelu_tanh = cfg.hidden_act != "gelu";
        let on_team = !gelu_tanh
            && (h / cfg.num_attention_heads).is_multiple_of(32)
            && layers.iter().all(|l| [&l.qkv, &l.attn_out, &l.inter, &l.out].iter().all(|lin| lin.on_tiles()));
        Ok(Self { gelu_tanh, on_team, threads, cfg, device, kind, word, position, token_type, emb_norm, layers })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether the forward runs on AMX tiles ([`crate::amx`]) and the kernels' team, rather than libtorch's ops.
    pub fn on_tiles(&self) -> bool {
        self.on_team
    }

    /// The last layer's hidden states of each sequence (token type 0 throughout, positions from 0).
    pub fn forward(&self, batch: &[&[u32]]) -> Result<Hidden> {
        if batch.is_empty() {
            return Err(Error::invalid("empty batch"));
        }
        let vocab = self.cfg.vocab_size as u32;
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut rows = Vec::with_capacity(batch.len());
        for (i, s) in batch.iter().enumerate() {
            if s.is_empty() {
                return Err(Error::invalid(format!("sequence {i} is empty")));
            }
            if s.len() > self.cfg.max_position_embeddings {
                return Err(Error::invalid(format!(
                    "sequence {i}: {} tokens exceed the model's {} positions",
                    s.len(),
                    self.cfg.max_position_embeddings
                )));
            }
            if let Some(&t) = s.iter().find(|&&t| t >= vocab) {
                return Err(Error::invalid(format!("sequence {i}: token id {t} out of vocabulary ({vocab})")));
            }
            rows.push(ids.len()..ids.len() + s.len());
            ids.extend(s.iter().map(|&t| t as i64));
            pos.extend(0..s.len() as i64);
        }
        if self.on_team {
            crate::torch::ensure_threads(1);
            crate::team::set_width(self.threads);
        } else {
            crate::torch::ensure_threads(self.threads);
        }
        let tensor = tch::no_grad(|| self.forward_rows(&ids, &pos, &rows))?;
        Ok(Hidden { tensor, rows })
    }

    fn forward_rows(&self, ids: &[i64], pos: &[i64], rows: &[Range<usize>]) -> Result<Tensor> {
        let c = &self.cfg;
        let (h, nh) = (c.hidden_size as i64, c.num_attention_heads as i64);
        let d = h / nh;
        let eps = c.layer_norm_eps;
        let ln = |x: &Tensor, n: &LayerNorm| x.f_layer_norm([h], Some(&n.w), Some(&n.b), eps, false);
        let ids = Tensor::from_slice(ids).to_device(self.device);
        let pos = Tensor::from_slice(pos).to_device(self.device);
        let x = self.word.f_index_select(0, &ids)? + self.position.f_index_select(0, &pos)? + self.token_type.get(0);
        let mut x = ln(&x, &self.emb_norm)?;
        let gelu = if self.gelu_tanh { "tanh" } else { "none" };
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let attn = if self.on_team {
                self.attention_on_team(&qkv, rows)?
            } else {
                let mut outs = Vec::with_capacity(rows.len());
                for r in rows {
                    let n = r.len() as i64;
                    // [n, 3H] -> three [1, heads, n, d]
                    let s = qkv.narrow(0, r.start as i64, n).view([n, 3, nh, d]).permute([1, 2, 0, 3]);
                    let (q, k, v) = (s.get(0).unsqueeze(0), s.get(1).unsqueeze(0), s.get(2).unsqueeze(0));
                    let o =
                        Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false)?;
                    outs.push(o.squeeze_dim(0).transpose(0, 1).reshape([n, h]));
                }
                if outs.len() == 1 {
                    outs.pop().expect("one")
                } else {
                    Tensor::f_cat(&outs, 0)?
                }
            };
            let y = layer.attn_out.forward(&attn)?;
            x = if self.on_team {
                rows::add_layer_norm(y, &x, &layer.attn_norm, eps)?
            } else {
                ln(&(y + &x), &layer.attn_norm)?
            };
            let y = if self.on_team {
                layer.inter.forward_then_into(&x, &rows::gelu, &layer.out)?
            } else {
                layer.out.forward(&layer.inter.forward(&x)?.f_gelu(gelu)?)?
            };
            x = if self.on_team {
                rows::add_layer_norm(y, &x, &layer.out_norm, eps)?
            } else {
                ln(&(y + &x), &layer.out_norm)?
            };
        }
        Ok(x)
    }

    /// Attention of every sequence on the tiles ([`crate::amx::attention`]), spread over the team: a task per
    /// sequence and group of heads (two groups when there are fewer sequences than threads), each writing its
    /// columns of the output.
    fn attention_on_team(&self, qkv: &Tensor, rows: &[Range<usize>]) -> Result<Tensor> {
        let (h, nh) = (self.cfg.hidden_size, self.cfg.num_attention_heads);
        let d = h / nh;
        let qkv = qkv.contiguous();
        let out = Tensor::f_empty([qkv.size()[0], h as i64], (Kind::Float, Device::Cpu))?;
        let groups = if rows.len() < crate::team::width() && nh % 2 == 0 { 2 } else { 1 };
        let per = nh / groups;
        let (src, dst) = (SharedMut::new(qkv.data_ptr() as *mut f32), SharedMut::new(out.data_ptr() as *mut f32));
        crate::team::run(rows.len() * groups, &|task| {
            let (r, g) = (&rows[task / groups], task % groups);
            // SAFETY: `on_team` holds only where the tiles run and d is a multiple of 32; `qkv` is [t, 3h] and
            // `out` [t, h], both contiguous and alive for the run; this task reads rows r of qkv and writes rows r,
            // heads g * per.., of out, which no other task writes.
            unsafe {
                crate::amx::attention(
                    src.get().add(r.start * 3 * h),
                    dst.get().add(r.start * h),
                    r.len(),
                    h,
                    d,
                    g * per..(g + 1) * per,
                )
            };
        });
        Ok(out)
    }
}

/// Row-wise steps of the encoder on [`crate::team`], in place on a product's fresh output.
mod rows {
    use tch::{Kind, Tensor};

    use super::LayerNorm;
    use crate::error::Result;

    /// Rows per task: a task is at least a few microseconds of work.
    const MIN_ROWS: usize = 16;

    /// The floats of `t`, a contiguous f32 CPU tensor that nothing else refers to.
    fn floats_mut(t: &mut Tensor) -> &mut [f32] {
        assert!(t.kind() == Kind::Float && t.is_contiguous() && t.device() == tch::Device::Cpu);
        // SAFETY: contiguous f32 CPU storage of numel elements, borrowed mutably with `t`.
        unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) }
    }

    /// `LayerNorm(y + x)`, written over `y` (`[t, h]`).
    pub(super) fn add_layer_norm(mut y: Tensor, x: &Tensor, n: &LayerNorm, eps: f64) -> Result<Tensor> {
        let h = n.wv.len();
        let x = x.contiguous();
        assert_eq!(x.size(), y.size());
        // SAFETY: contiguous f32 CPU tensor of the same shape, only read during this call.
        let xs = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, x.numel()) };
        let (eps, wv, bv) = (eps as f32, &n.wv, &n.bv);
        crate::team::rows_mut(floats_mut(&mut y), h, MIN_ROWS, &|first, part| {
            let res = &xs[first * h..first * h + part.len()];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512 F (checked).
                return unsafe { add_norm_avx512(part, res, wv, bv, eps) };
            }
            add_norm(part, res, wv, bv, eps)
        });
        Ok(y)
    }

    /// [`add_norm`] sixteen at a time (rows of a multiple of 16 values; others go to [`add_norm`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn add_norm_avx512(rows: &mut [f32], res: &[f32], w: &[f32], b: &[f32], eps: f32) {
        use std::arch::x86_64::*;
        let h = w.len();
        if !h.is_multiple_of(16) || b.len() != h {
            return add_norm(rows, res, w, b, eps);
        }
        for (row, res) in rows.chunks_exact_mut(h).zip(res.chunks_exact(h)) {
            let (r, x) = (row.as_mut_ptr(), res.as_ptr());
            // SAFETY: every access is at j < h inside this row, its residual row, w and b (all h long).
            unsafe {
                let mut sum = _mm512_setzero_ps();
                for j in (0..h).step_by(16) {
                    let v = _mm512_add_ps(_mm512_loadu_ps(r.add(j)), _mm512_loadu_ps(x.add(j)));
                    _mm512_storeu_ps(r.add(j), v);
                    sum = _mm512_add_ps(sum, v);
                }
                let mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / h as f32);
                let mut sq = _mm512_setzero_ps();
                for j in (0..h).step_by(16) {
                    let d = _mm512_sub_ps(_mm512_loadu_ps(r.add(j)), mean);
                    sq = _mm512_fmadd_ps(d, d, sq);
                }
                let rstd = _mm512_set1_ps(1.0 / (_mm512_reduce_add_ps(sq) / h as f32 + eps).sqrt());
                for j in (0..h).step_by(16) {
                    let d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(r.add(j)), mean), rstd);
                    let y = _mm512_fmadd_ps(d, _mm512_loadu_ps(w.as_ptr().add(j)), _mm512_loadu_ps(b.as_ptr().add(j)));
                    _mm512_storeu_ps(r.add(j), y);
                }
            }
        }
    }

    fn add_norm(rows: &mut [f32], res: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let h = w.len();
        for (row, res) in rows.chunks_exact_mut(h).zip(res.chunks_exact(h)) {
            row.iter_mut().zip(res).for_each(|(v, r)| *v += r);
            let mean = row.iter().sum::<f32>() / h as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(w).zip(b) {
                *v = (*v - mean) * rstd * w + b;
            }
        }
    }

    /// Erf GELU, `x / 2 (1 + erf(x / sqrt 2))`, in place.
    pub(super) fn gelu(v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F (checked).
            return unsafe { gelu_avx512(v) };
        }
        gelu_in_place(v)
    }

    /// [`gelu_in_place`] sixteen at a time: FMA steps, and the division as a reciprocal estimate with one Newton
    /// step (relative error about 2^-28).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn gelu_avx512(v: &mut [f32]) {
        use std::arch::x86_64::*;
        let mut chunks = v.chunks_exact_mut(16);
        for c in &mut chunks {
            // SAFETY: 16 floats read and written inside the chunk.
            unsafe {
                let x = _mm512_loadu_ps(c.as_ptr());
                let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
                let t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-4.0)), _mm512_set1_ps(4.0));
                let t2 = _mm512_mul_ps(t, t);
                let mut p = _mm512_set1_ps(ERF_P[0]);
                for &a in &ERF_P[1..] {
                    p = _mm512_fmadd_ps(p, t2, _mm512_set1_ps(a));
                }
                let mut q = _mm512_set1_ps(ERF_Q[0]);
                for &b in &ERF_Q[1..] {
                    q = _mm512_fmadd_ps(q, t2, _mm512_set1_ps(b));
                }
                let r = _mm512_rcp14_ps(q);
                let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0)));
                let erf = _mm512_mul_ps(_mm512_mul_ps(t, p), r);
                let half = _mm512_mul_ps(x, _mm512_set1_ps(0.5));
                _mm512_storeu_ps(c.as_mut_ptr(), _mm512_fmadd_ps(half, erf, half));
            }
        }
        gelu_in_place(chunks.into_remainder());
    }

    fn gelu_in_place(v: &mut [f32]) {
        for v in v.iter_mut() {
            *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }

    /// erf's numerator, odd in x: `x P(x^2)`, highest power first.
    const ERF_P: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ];
    /// erf's denominator, even in x: `Q(x^2)`, highest power first.
    const ERF_Q: [f32; 5] = [-1.456_607_2e-5, -2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2];

    /// erf for f32 as a rational function of `x` clamped to [-4, 4] (beyond it erf rounds to +-1 in f32): odd
    /// degree 13 over even degree 8, the approximation Eigen and XLA use: 9e-8 from erf in exact arithmetic, 5e-7
    /// in f32's (tested against libtorch's erf in f64).
    pub(super) fn erf(x: f32) -> f32 {
        let x = x.clamp(-4.0, 4.0);
        let x2 = x * x;
        let p = ERF_P[1..].iter().fold(ERF_P[0], |p, &a| p * x2 + a);
        let q = ERF_Q[1..].iter().fold(ERF_Q[0], |q, &b| q * x2 + b);
        x * p / q
    }

    #[cfg(test)]
    mod tests {
        use tch::{Device, Kind, Tensor};

        #[test]
        fn erf_within_5e_7() {
            let xs: Vec<f32> = (-60_000..=60_000).map(|i| i as f32 * 1e-4).collect();
            let want = Vec::<f64>::try_from(Tensor::from_slice(&xs).to_kind(Kind::Double).erf()).unwrap();
            let worst = xs.iter().zip(&want).map(|(&x, &w)| (super::erf(x) as f64 - w).abs()).fold(0.0, f64::max);
            assert!(worst < 5e-7, "worst {worst:e}");
        }

        /// Both add + LayerNorm kernels against libtorch's `layer_norm(y + x)`.
        #[test]
        fn add_norm_equals_libtorch() {
            let (t, h) = (37i64, 384i64);
            let y = Tensor::randn([t, h], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
            let x = Tensor::randn([t, h], (Kind::Float, Device::Cpu));
            let (w, b) =
                (Tensor::randn([h], (Kind::Float, Device::Cpu)), Tensor::randn([h], (Kind::Float, Device::Cpu)));
            let want =
                Vec::<f32>::try_from((&y + &x).layer_norm([h], Some(&w), Some(&b), 1e-12, false).view([-1])).unwrap();
            let (wv, bv) = (Vec::<f32>::try_from(&w).unwrap(), Vec::<f32>::try_from(&b).unwrap());
            let (ys, xs) = (Vec::<f32>::try_from(y.view([-1])).unwrap(), Vec::<f32>::try_from(x.view([-1])).unwrap());
            let mut plain = ys.clone();
            super::add_norm(&mut plain, &xs, &wv, &bv, 1e-12);
            let mut runs = vec![plain];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                let mut wide = ys.clone();
                // SAFETY: the CPU has AVX-512 F (checked).
                unsafe { super::add_norm_avx512(&mut wide, &xs, &wv, &bv, 1e-12) };
                runs.push(wide);
            }
            for got in runs {
                let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
                assert!(worst < 1e-5, "worst {worst:e}");
            }
        }

        /// Both GELUs (the AVX-512 one where this CPU has it, and the portable one) against libtorch's in f64,
        /// within erf's error times |x| / 2.
        #[test]
        fn gelu_within_erfs_error() {
            let xs: Vec<f32> = (-100_000..=100_000).map(|i| i as f32 * 1e-4).collect();
            let want = Vec::<f64>::try_from(Tensor::from_slice(&xs).to_kind(Kind::Double).gelu("none")).unwrap();
            let (mut wide, mut plain) = (xs.clone(), xs.clone());
            super::gelu(&mut wide);
            super::gelu_in_place(&mut plain);
            for got in [&wide, &plain] {
                let (worst, at) = got
                    .iter()
                    .zip(&want)
                    .zip(&xs)
                    .map(|((&g, &w), &x)| ((g as f64 - w).abs() / (x.abs() as f64 / 2.0).max(1.0), x))
                    .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
                assert!(worst < 5e-7, "worst {worst:e} at {at}");
            }
            assert_ne!(wide, xs);
            let _ = Device::Cpu;
        }
    }
}
