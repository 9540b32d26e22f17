//! The Llama-family transformer (Llama, Mistral, Qwen2) over a paged KV pool.
//!
//! # The batch
//! A forward call takes a ragged list of sequences. Each brings the slots of its cached context, its new tokens
//! and the slots to write their K/V into; positions are `context.len() + i`. Prefill (no context), extend (new
//! tokens after a cached prefix) and decode (one new token) are the same call and can be mixed in one batch.
//!
//! # How it runs
//! All new tokens of the batch go through every matrix multiplication together (one GEMM per projection per
//! layer, which is what makes batching pay on a memory-bound machine). Attention is grouped: single-token
//! (decode) sequences are padded to the longest context and done in one masked SDPA call; multi-token sequences
//! get one causal SDPA call each. K/V of new tokens are written into the pool before attention reads it back.
//! Logits are computed only for the rows asked for.
//!
//! With `--weights quantized-exact` on the CPU (and the default `quantized` where the CPU has AVX-512 VNNI), every
//! step is instead computed as llama.cpp's CPU
//! backend computes it, to the bit: the products in integers at every size ([`crate::qmatmul`]), the norms, rope,
//! attention and SwiGLU of [`crate::ggml_ops`], K and V at f16 precision, and Llama's Q/K rows in the GGUF's
//! order (rope pairs adjacent), since the attention's sums run over the head dimension in that order.

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kv::KvPool;
use std::sync::Arc;

use crate::linear::Linear;
use crate::model::{LoadOptions, WeightFormat};
use crate::qmatmul::{QuantMatrix, RowBlocks};
use crate::weights::{gguf_qk_permuted, WeightSource};

/// Which positions of a sequence need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// None (a prefill chunk that is not the last).
    None,
    /// The last new token only (the usual case).
    Last,
    /// Every new token (prompt logprobs, scoring, tests).
    All,
}

/// One sequence of a batch.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// Slots holding the K/V of the tokens before `tokens`, in order.
    pub context_slots: &'a [u32],
    /// The new tokens; at least one.
    pub tokens: &'a [u32],
    /// Where each new token's K/V goes; same length as `tokens`, disjoint from every context in the batch.
    pub new_slots: &'a [u32],
    pub logits: LogitsFor,
}

/// Logits of a batch: one row per position asked for, sequences in input order.
#[derive(Debug)]
pub struct Logits {
    /// `[rows, vocab]`, float32, on the model's device.
    pub tensor: Tensor,
    /// For each input sequence, its rows in `tensor`.
    pub rows: Vec<Range<usize>>,
}

struct Layer {
    attn_norm: Tensor,
    qkv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    gate_up: Linear,
    down: Linear,
}

/// The token embedding table: a tensor, or quantized blocks whose rows are dequantized on lookup.
enum Embedding {
    Dense(Tensor),
    Quant(Arc<QuantMatrix>),
}

/// Loading progress: tensors done out of total.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

pub struct LlamaModel {
    cfg: ModelConfig,
    device: Device,
    kind: Kind,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// `[max_positions, head_dim / 2]` each.
    cos: Tensor,
    sin: Tensor,
    /// Use the fused CPU kernels of [`crate::cpu_attention`] (f32 on CPU only).
    fused: bool,
    /// With quantized weights and the fused kernels: compute every step as llama.cpp's CPU backend does, to the
    /// bit ([`crate::ggml_ops`]; the products in integers at every size).
    ggml: bool,
    /// Q and K rows keep GGUF's order, each head's rope pairs adjacent (`2i, 2i + 1`) rather than HF's halves.
    interleaved: bool,
    /// libtorch threads of the thread that runs the model (0: one per core).
    threads: usize,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel").field("cfg", &self.cfg).field("device", &self.device).finish()
    }
}

impl LlamaModel {
    /// Builds the model from a weight source, converting to `opts.kind` on `opts.device`. GGUF matrices stay
    /// quantized blocks where `opts.weights` asks for it and the CPU runs [`crate::qmatmul`] (f32 on CPU only).
    pub fn load(cfg: ModelConfig, src: &WeightSource, opts: LoadOptions, progress: Progress<'_>) -> Result<Self> {
        let (device, kind) = (opts.device, opts.kind);
        let is_gguf = matches!(src, WeightSource::Gguf(_));
        let quantize = matches!(
            opts.weights,
            WeightFormat::Quantized | WeightFormat::QuantizedExact | WeightFormat::QuantizedF32Prefill
        ) && is_gguf
            && device == Device::Cpu
            && kind == Kind::Float
            && crate::qmatmul::available();
        // `quantized-exact` (and `quantized` where the CPU runs it fast) follows llama.cpp's numerics (`ggml` below), which sums Q·K over the head dimension
        // in the file's order: for the architectures whose GGUF interleaves each head's rope pairs, the rows stay
        // so and the rope turns adjacent pairs. (The Llama 3 frequency scaling is not reproduced: such models
        // keep the HF order and the f64 tables.)
        let ggml_wanted = quantize
            && (opts.weights == WeightFormat::QuantizedExact
                || (opts.weights == WeightFormat::Quantized && crate::qmatmul::exact_is_fast()))
            && cfg.rope_scaling.is_none()
            && crate::ggml_ops::available();
        let interleaved = ggml_wanted && is_gguf && gguf_qk_permuted(cfg.arch);
        let permute = is_gguf && gguf_qk_permuted(cfg.arch) && !interleaved;
        let total = cfg.num_layers + 2;
        let put = |t: Tensor| -> Result<Tensor> { Ok(t.f_to_kind(kind)?.f_to_device(device)?) };
        let load = |name: &str, heads: Option<usize>, shape: &[usize]| -> Result<Tensor> {
            let w = src.load(name, if permute { heads } else { None })?;
            check_shape(name, &w, shape)?;
            Ok(w)
        };
        // Stacked matrices `[Σ rows, k]` (name, Q/K heads to unpermute, rows) as quantized blocks, where every part
        // can stay blocks.
        let blocks = |parts: &[(&str, Option<usize>, usize)], k: usize| -> Result<Option<Arc<QuantMatrix>>> {
            if !quantize {
                return Ok(None);
            }
            let mut blocks = Vec::with_capacity(parts.len());
            for &(name, heads, rows) in parts {
                match src.blocks(name) {
                    Some((ty, r, c, bytes))
                        if crate::qmatmul::supports(ty)
                            && (r, c) == (rows, k)
                            && k.is_multiple_of(ty.block_len())
                            && rows.is_multiple_of(crate::qmatmul::GROUP) =>
                    {
                        blocks.push(RowBlocks { ty, rows, bytes, unpermute_heads: heads.filter(|_| permute) })
                    }
                    _ => return Ok(None),
                }
            }
            Ok(Some(Arc::new(QuantMatrix::new(k, &blocks)?)))
        };
        // A linear layer over such a stack: blocks, else one f32 tensor.
        let matrix = |parts: &[(&str, Option<usize>, usize)], k: usize, bias: Option<Tensor>| -> Result<Linear> {
            if let Some(q) = blocks(parts, k)? {
                return Ok(Linear::quantized(q, bias));
            }
            let ws =
                parts.iter().map(|&(name, heads, rows)| load(name, heads, &[rows, k])).collect::<Result<Vec<_>>>()?;
            let w = if ws.len() == 1 { ws.into_iter().next().expect("one part") } else { Tensor::f_cat(&ws, 0)? };
            Ok(Linear::new(put(w)?, bias))
        };
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let embed = match blocks(&[("token_embd.weight", None, vocab)], h)? {
            Some(q) => Embedding::Quant(q),
            None => Embedding::Dense(put(load("token_embd.weight", None, &[vocab, h])?)?),
        };
        progress(1, total);
        let (q_out, kv_out) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let name = |t: &str| format!("blk.{l}.{t}");
            let bqkv = if cfg.arch.qkv_bias() {
                let bq = load(&name("attn_q.bias"), Some(cfg.num_heads), &[q_out])?;
                let bk = load(&name("attn_k.bias"), Some(cfg.num_kv_heads), &[kv_out])?;
                let bv = load(&name("attn_v.bias"), None, &[kv_out])?;
                Some(put(Tensor::cat(&[bq, bk, bv], 0))?)
            } else {
                None
            };
            let (q, k, v) = (name("attn_q.weight"), name("attn_k.weight"), name("attn_v.weight"));
            let (o, gate, up, down) =
                (name("attn_output.weight"), name("ffn_gate.weight"), name("ffn_up.weight"), name("ffn_down.weight"));
            let inter = cfg.intermediate_size;
            layers.push(Layer {
                attn_norm: put(load(&name("attn_norm.weight"), None, &[h])?)?,
                qkv: matrix(
                    &[(&q, Some(cfg.num_heads), q_out), (&k, Some(cfg.num_kv_heads), kv_out), (&v, None, kv_out)],
                    h,
                    bqkv,
                )?,
                wo: matrix(&[(&o, None, h)], q_out, None)?,
                ffn_norm: put(load(&name("ffn_norm.weight"), None, &[h])?)?,
                gate_up: matrix(&[(&gate, None, inter), (&up, None, inter)], h, None)?,
                down: matrix(&[(&down, None, h)], inter, None)?,
            });
            progress(l + 2, total);
        }
        let norm = put(src.load("output_norm.weight", None)?)?;
        check_shape("output_norm.weight", &norm, &[cfg.hidden_size])?;
        let lm_head = if src.contains("output.weight") && !cfg.tie_word_embeddings {
            matrix(&[("output.weight", None, vocab)], h, None)?
        } else {
            match &embed {
                Embedding::Quant(q) => Linear::quantized(q.clone(), None),
                Embedding::Dense(w) => Linear::new(w.shallow_clone(), None),
            }
        };
        let freq_factors = if src.contains("rope_freqs.weight") {
            Some(Vec::<f32>::try_from(src.load("rope_freqs.weight", None)?.flatten(0, -1))?)
        } else {
            None
        };
        let ggml = ggml_wanted && layers.first().is_some_and(|l| matches!(l.gate_up, Linear::Quant { .. }));
        let (cos, sin) = if ggml_wanted {
            let (c, s) = crate::ggml_ops::rope_tables(
                cfg.rope_theta as f32,
                cfg.head_dim,
                cfg.max_position_embeddings.max(1),
                freq_factors.as_deref(),
            );
            let shape = [cfg.max_position_embeddings.max(1) as i64, (cfg.head_dim / 2) as i64];
            (Tensor::from_slice(&c).view(shape), Tensor::from_slice(&s).view(shape))
        } else {
            rope_tables(&cfg, freq_factors.as_deref())?
        };
        progress(total, total);
        Ok(Self {
            fused: device == Device::Cpu && kind == Kind::Float,
            ggml,
            interleaved,
            threads: 0,
            device,
            kind,
            embed,
            layers,
            norm,
            lm_head,
            cos: cos.f_to_kind(kind)?.f_to_device(device)?,
            sin: sin.f_to_kind(kind)?.f_to_device(device)?,
            cfg,
        })
    }

    /// Bytes of weights held (quantized blocks, tensors, packed copies; a tied LM head counted once).
    pub fn weight_bytes(&self) -> usize {
        let t = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        let embed = match &self.embed {
            Embedding::Quant(q) => q.bytes(),
            Embedding::Dense(w) => t(w),
        };
        let tied = match (&self.embed, &self.lm_head) {
            (Embedding::Quant(a), Linear::Quant { q, .. }) => Arc::ptr_eq(a, q),
            (Embedding::Dense(a), Linear::Dense { w, .. }) => a.data_ptr() == w.data_ptr(),
            _ => false,
        };
        let head = self.lm_head.bytes() - if tied { embed } else { 0 };
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                t(&l.attn_norm)
                    + t(&l.ffn_norm)
                    + [&l.qkv, &l.wo, &l.gate_up, &l.down].iter().map(|m| m.bytes()).sum::<usize>()
            })
            .sum();
        embed + head + layers + t(&self.norm)
    }

    /// Whether the matrices run on quantized blocks.
    pub fn quantized(&self) -> bool {
        self.layers.first().is_some_and(|l| matches!(l.gate_up, Linear::Quant { .. }))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// Switches the fused CPU attention kernels on or off (they are on by default for f32 on CPU, and can only
    /// be on there); the libtorch path is the reference they are tested against.
    pub fn use_fused_cpu_kernels(&mut self, on: bool) {
        self.fused = on && self.device == Device::Cpu && self.kind == Kind::Float;
    }

    /// Whether steps are computed as llama.cpp computes them (quantized weights with the fused CPU kernels).
    pub fn ggml_numerics(&self) -> bool {
        self.ggml && self.fused
    }

    /// libtorch threads for the thread that runs the model (0: one per core); set on that thread at each step.
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n;
    }

    /// Longest sequence the position tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.size()[0] as usize
    }

    /// Allocates a KV pool of `num_slots` for this model.
    pub fn new_kv_pool(&self, num_slots: usize) -> Result<KvPool> {
        KvPool::new(&self.cfg, num_slots, self.kind, self.device)
    }

    /// Runs one forward step over a batch; see the module docs.
    pub fn forward(&self, kv: &mut KvPool, batch: &[SeqInput<'_>]) -> Result<Logits> {
        self.run(kv, batch, true)
    }

    /// Like [`Self::forward`], but returns the final hidden states (after the final norm) of the positions asked
    /// for instead of their logits: `[rows, hidden_size]`, float32 (embeddings from a decoder).
    pub fn forward_hidden(&self, kv: &mut KvPool, batch: &[SeqInput<'_>]) -> Result<Logits> {
        self.run(kv, batch, false)
    }

    /// The step, ending in the LM head (`logits`) or at the final-normed hidden states.
    fn run(&self, kv: &mut KvPool, batch: &[SeqInput<'_>], logits: bool) -> Result<Logits> {
        let plan = Plan::new(self, kv, batch)?;
        // Steps of up to MAX_ROWS tokens do every matrix product in our kernels; libtorch's remaining ops there are
        // small element-wise ones that run faster on one thread than with a thread wake-up per op.
        crate::torch::ensure_threads(self.threads);
        crate::team::set_width(self.threads);
        let _one_thread = (self.device == Device::Cpu
            && plan.n_tokens as usize <= crate::cpu_gemm::MAX_ROWS
            && crate::cpu_gemm::available())
        .then(|| crate::torch::Threads::hold(1));
        tch::no_grad(|| {
            let hidden = self.forward_planned(kv, &plan)?;
            let width = if logits { self.cfg.vocab_size } else { self.cfg.hidden_size };
            let tensor = match hidden.tensor {
                Some(h) if logits && self.ggml_numerics() => self.lm_head.forward_int(&h)?,
                Some(h) if logits => self.lm_head.forward(&h)?.f_to_kind(Kind::Float)?,
                Some(h) => h.f_to_kind(Kind::Float)?,
                None => Tensor::zeros([0, width as i64], (Kind::Float, self.device)),
            };
            Ok(Logits { tensor, rows: hidden.rows })
        })
    }

    /// Runs the layers; returns the final-normed hidden states of the rows asked for (`None` when none are).
    fn forward_planned(&self, kv: &mut KvPool, plan: &Plan) -> Result<HiddenRows> {
        let c = &self.cfg;
        let (nh, nkv, d) = (c.num_heads as i64, c.num_kv_heads as i64, c.head_dim as i64);
        let t = plan.n_tokens;
        let eps = c.rms_norm_eps;
        let h_dim = c.hidden_size as i64;
        let mut x = match &self.embed {
            Embedding::Dense(t) => t.f_index_select(0, &plan.ids)?,
            Embedding::Quant(q) => q.rows(&plan.ids_host)?,
        };
        // The libtorch rope path reads the tables row by position; the fused kernel reads them itself.
        let rope_rows = if self.fused {
            None
        } else {
            Some((
                self.cos.f_index_select(0, &plan.positions)?.unsqueeze(1),
                self.sin.f_index_select(0, &plan.positions)?.unsqueeze(1),
            ))
        };
        let ggml = self.ggml_numerics();
        let norm = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
            if ggml {
                rms_norm_ggml(x, w, eps as f32)
            } else {
                Ok(x.f_rms_norm([h_dim], Some(w), eps)?)
            }
        };
        let linear = |m: &Linear, x: &Tensor| if ggml { m.forward_int(x) } else { m.forward(x) };
        for (l, layer) in self.layers.iter().enumerate() {
            let h = norm(&x, &layer.attn_norm)?;
            let mut qkv = linear(&layer.qkv, &h)?.contiguous();
            let heads =
                crate::cpu_attention::Heads { n_heads: c.num_heads, n_kv_heads: c.num_kv_heads, head_dim: c.head_dim };
            let (q, k, v) = if self.fused {
                crate::cpu_attention::rope_and_store(
                    &mut qkv,
                    (&self.cos, &self.sin),
                    &plan.positions_host,
                    &plan.write_host,
                    (&mut kv.k[l], &mut kv.v[l]),
                    heads,
                    crate::cpu_attention::Rope { adjacent: self.interleaved, ggml },
                );
                (
                    qkv.narrow(1, 0, nh * d).view([t, nh, d]),
                    qkv.narrow(1, nh * d, nkv * d).view([t, nkv, d]),
                    qkv.narrow(1, (nh + nkv) * d, nkv * d).view([t, nkv, d]),
                )
            } else {
                let (cos, sin) = rope_rows.as_ref().expect("computed when not fused");
                let rope = if self.interleaved { rope_adjacent } else { rope };
                let q = rope(&qkv.narrow(1, 0, nh * d).view([t, nh, d]), cos, sin);
                let k = rope(&qkv.narrow(1, nh * d, nkv * d).view([t, nkv, d]), cos, sin);
                let v = qkv.narrow(1, (nh + nkv) * d, nkv * d).view([t, nkv, d]);
                let _ = kv.k[l].f_index_copy_(0, &plan.write_slots, &k)?;
                let _ = kv.v[l].f_index_copy_(0, &plan.write_slots, &v)?;
                (q, k, v)
            };
            let mut outs: Vec<Tensor> = Vec::with_capacity(1 + plan.prefills.len());
            if ggml {
                outs.push(attention_ggml(&qkv, (&kv.k[l], &kv.v[l]), plan, heads));
            }
            if let Some(dec) = plan.decode.as_ref().filter(|_| !ggml) {
                let b = dec.n_seqs;
                if self.fused {
                    outs.push(crate::cpu_attention::decode_attention(
                        &qkv,
                        &kv.k[l],
                        &kv.v[l],
                        &dec.slots_host,
                        &dec.offsets,
                        heads,
                    ));
                } else {
                    let qd = q.narrow(0, 0, b).unsqueeze(2);
                    let gather = |pool: &Tensor| -> Result<Tensor> {
                        Ok(pool.f_index_select(0, &dec.gather)?.view([b, dec.max_len, nkv, d]).permute([0, 2, 1, 3]))
                    };
                    let (kd, vd) = (gather(&kv.k[l])?, gather(&kv.v[l])?);
                    let o =
                        Tensor::f_scaled_dot_product_attention(&qd, &kd, &vd, Some(&dec.mask), 0.0, false, None, true)?;
                    outs.push(o.reshape([b, nh * d]));
                }
            }
            for p in plan.prefills.iter().filter(|_| !ggml) {
                let qp = q.narrow(0, p.start, p.len).transpose(0, 1).unsqueeze(0);
                let (kp, vp) = match &p.gather {
                    None => (k.narrow(0, p.start, p.len), v.narrow(0, p.start, p.len)),
                    Some(g) => (kv.k[l].f_index_select(0, g)?, kv.v[l].f_index_select(0, g)?),
                };
                let kp = kp.transpose(0, 1).unsqueeze(0);
                let vp = vp.transpose(0, 1).unsqueeze(0);
                let o = Tensor::f_scaled_dot_product_attention(
                    &qp,
                    &kp,
                    &vp,
                    p.mask.as_ref(),
                    0.0,
                    p.mask.is_none(),
                    None,
                    true,
                )?;
                outs.push(o.squeeze_dim(0).transpose(0, 1).reshape([p.len, nh * d]));
            }
            let attn = if outs.len() == 1 { outs.pop().unwrap() } else { Tensor::f_cat(&outs, 0)? };
            x += linear(&layer.wo, &attn)?;
            let h = norm(&x, &layer.ffn_norm)?;
            let gu = linear(&layer.gate_up, &h)?;
            let inter = c.intermediate_size as i64;
            let act = if ggml {
                swiglu_ggml(&gu, inter as usize)
            } else {
                gu.narrow(1, 0, inter).silu() * gu.narrow(1, inter, inter)
            };
            x += linear(&layer.down, &act)?;
        }
        let tensor = match &plan.logit_rows {
            Some(r) => Some(norm(&x.f_index_select(0, r)?, &self.norm)?),
            None => None,
        };
        Ok(HiddenRows { tensor, rows: plan.out_rows.clone() })
    }
}

/// [`crate::ggml_ops::rms_norm`] of the rows of `x` (contiguous f32 on the CPU) times `w`.
fn rms_norm_ggml(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let (x, w) = (x.contiguous(), w.contiguous());
    let y = x.empty_like();
    let (n, k) = (x.numel(), w.numel());
    // SAFETY: contiguous f32 CPU tensors (the ggml path runs only there) of n and k values; `y` is fresh.
    let (xs, ws, ys) = unsafe {
        (
            std::slice::from_raw_parts(x.data_ptr() as *const f32, n),
            std::slice::from_raw_parts(w.data_ptr() as *const f32, k),
            std::slice::from_raw_parts_mut(y.data_ptr() as *mut f32, n),
        )
    };
    crate::ggml_ops::rms_norm(xs, ws, eps, ys);
    Ok(y)
}

/// [`crate::ggml_ops::swiglu`] of `gu` (`[rows, 2 inter]`, gate then up).
fn swiglu_ggml(gu: &Tensor, inter: usize) -> Tensor {
    let gu = gu.contiguous();
    let rows = gu.size()[0];
    let y = Tensor::empty([rows, inter as i64], (Kind::Float, Device::Cpu));
    // SAFETY: `gu` is contiguous f32 on the CPU with rows * 2 inter values; `y` is fresh with rows * inter.
    let (g, ys) = unsafe {
        (
            std::slice::from_raw_parts(gu.data_ptr() as *const f32, gu.numel()),
            std::slice::from_raw_parts_mut(y.data_ptr() as *mut f32, rows as usize * inter),
        )
    };
    crate::ggml_ops::swiglu(g, inter, ys);
    y
}

/// [`crate::ggml_ops::attention`] for every row of the step (the rows in the plan's order, as `qkv`'s).
fn attention_ggml(qkv: &Tensor, (k, v): (&Tensor, &Tensor), plan: &Plan, h: crate::cpu_attention::Heads) -> Tensor {
    // SAFETY: `qkv` and the pool's tensors are contiguous f32 on the CPU (the fused path's condition), only read.
    let (q, pk, pv) = unsafe {
        (
            std::slice::from_raw_parts(qkv.data_ptr() as *const f32, qkv.numel()),
            std::slice::from_raw_parts(k.data_ptr() as *const f32, k.numel()),
            std::slice::from_raw_parts(v.data_ptr() as *const f32, v.numel()),
        )
    };
    let order = crate::ggml_ops::DotOrder::for_step(plan.n_tokens as usize);
    let out = crate::ggml_ops::attention(q, (pk, pv), &plan.attend_rows, &plan.attend_slots, h, order);
    Tensor::from_slice(&out).view([plan.n_tokens, (h.n_heads * h.head_dim) as i64])
}

/// The final-normed hidden states of the rows a batch asked for.
struct HiddenRows {
    tensor: Option<Tensor>,
    rows: Vec<Range<usize>>,
}

fn check_shape(name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    let got: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    if got != want {
        return Err(Error::format(format!("tensor {name} has shape {got:?}, the config implies {want:?}")));
    }
    Ok(())
}

/// HF's rotate-half rope: `[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]` per head.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[2] / 2;
    let x1 = x.narrow(2, 0, half);
    let x2 = x.narrow(2, half, half);
    Tensor::cat(&[&x1 * cos - &x2 * sin, &x2 * cos + &x1 * sin], 2)
}

/// [`rope`] for heads whose pairs are adjacent (`[x0, x1, x2, x3..] -> [x0 cos - x1 sin, x1 cos + x0 sin, ..]`).
fn rope_adjacent(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let s = x.size();
    let pairs = x.view([s[0], s[1], s[2] / 2, 2]);
    let (x1, x2) = (pairs.select(3, 0), pairs.select(3, 1));
    Tensor::stack(&[&x1 * cos - &x2 * sin, &x2 * cos + &x1 * sin], 3).view([s[0], s[1], s[2]])
}

/// Cos and sin tables `[max_positions, head_dim / 2]`, with Llama 3 frequency scaling when configured.
fn rope_tables(cfg: &ModelConfig, freq_factors: Option<&[f32]>) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let mut inv_freq: Vec<f64> =
        (0..half).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / cfg.head_dim as f64)).collect();
    if let Some(s) = cfg.rope_scaling {
        let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
        let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
        for f in inv_freq.iter_mut() {
            let wavelen = 2.0 * std::f64::consts::PI / *f;
            if wavelen > low_wavelen {
                *f /= s.factor;
            } else if wavelen >= high_wavelen {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
            }
        }
    }
    if let Some(ff) = freq_factors {
        if ff.len() != half {
            return Err(Error::format(format!("rope_freqs has {} entries, want {half}", ff.len())));
        }
        for (f, &k) in inv_freq.iter_mut().zip(ff) {
            *f /= k as f64;
        }
    }
    let n = cfg.max_position_embeddings.max(1);
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for &f in &inv_freq {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let shape = [n as i64, half as i64];
    Ok((Tensor::from_slice(&cos).view(shape), Tensor::from_slice(&sin).view(shape)))
}

/// Index tensors for one forward call, built once and shared by every layer.
struct Plan {
    n_tokens: i64,
    ids: Tensor,
    ids_host: Vec<i64>,
    positions: Tensor,
    write_slots: Tensor,
    positions_host: Vec<i64>,
    write_host: Vec<i64>,
    decode: Option<DecodeGroup>,
    prefills: Vec<PrefillSeq>,
    logit_rows: Option<Tensor>,
    out_rows: Vec<Range<usize>>,
    /// Per row (in the internal order): the slots it attends to, `attend_slots[o..o + n]` for `(o, n)`.
    attend_rows: Vec<(usize, usize)>,
    attend_slots: Vec<u32>,
}

struct DecodeGroup {
    n_seqs: i64,
    max_len: i64,
    /// `[n_seqs * max_len]` slots, padded with the sequence's own last slot.
    gather: Tensor,
    /// `[n_seqs, 1, 1, max_len]`, true where a key is attended.
    mask: Tensor,
    /// The same slots unpadded, sequence `s` at `slots_host[offsets[s]..offsets[s + 1]]` (fused CPU kernel).
    slots_host: Vec<u32>,
    offsets: Vec<usize>,
}

struct PrefillSeq {
    /// First row and count of this sequence's new tokens in the batch's internal order.
    start: i64,
    len: i64,
    /// Context plus new slots, when there is a cached context; `None` attends to the new tokens only.
    gather: Option<Tensor>,
    /// `[1, 1, n, L]` causal mask offset by the context; `None` means plain causal.
    mask: Option<Tensor>,
}

impl Plan {
    fn new(m: &LlamaModel, kv: &KvPool, batch: &[SeqInput<'_>]) -> Result<Self> {
        if batch.is_empty() {
            return Err(Error::invalid("empty batch"));
        }
        let dev = m.device;
        let vocab = m.cfg.vocab_size as u32;
        let n_slots = kv.num_slots() as u32;
        let max_pos = m.max_positions();
        let mut written = std::collections::HashSet::new();
        for (i, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(Error::invalid(format!("sequence {i} has no new tokens")));
            }
            if s.new_slots.len() != s.tokens.len() {
                return Err(Error::invalid(format!(
                    "sequence {i}: {} tokens but {} slots",
                    s.tokens.len(),
                    s.new_slots.len()
                )));
            }
            if s.context_slots.len() + s.tokens.len() > max_pos {
                return Err(Error::invalid(format!(
                    "sequence {i}: {} positions exceed the model's {max_pos}",
                    s.context_slots.len() + s.tokens.len()
                )));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t >= vocab) {
                return Err(Error::invalid(format!("sequence {i}: token id {t} out of vocabulary ({vocab})")));
            }
            for &slot in s.context_slots.iter().chain(s.new_slots) {
                if slot >= n_slots {
                    return Err(Error::invalid(format!("sequence {i}: slot {slot} outside the pool ({n_slots})")));
                }
            }
            for &slot in s.new_slots {
                if !written.insert(slot) {
                    return Err(Error::invalid(format!("slot {slot} written twice in one batch")));
                }
            }
        }
        for (i, s) in batch.iter().enumerate() {
            if let Some(slot) = s.context_slots.iter().find(|s| written.contains(s)) {
                return Err(Error::invalid(format!("sequence {i}: context slot {slot} is overwritten by this batch")));
            }
        }
        // Internal order: decode sequences first, then the multi-token ones.
        let order: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].tokens.len() == 1)
            .chain((0..batch.len()).filter(|&i| batch[i].tokens.len() > 1))
            .collect();
        let n_dec = batch.iter().filter(|s| s.tokens.len() == 1).count();
        let n_tokens: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let mut ids = Vec::with_capacity(n_tokens);
        let mut pos = Vec::with_capacity(n_tokens);
        let mut write = Vec::with_capacity(n_tokens);
        let mut start_row = vec![0usize; batch.len()];
        let mut attend_rows = Vec::with_capacity(n_tokens);
        let mut attend_slots = Vec::new();
        for &i in &order {
            let s = &batch[i];
            start_row[i] = ids.len();
            let at = attend_slots.len();
            attend_slots.extend_from_slice(s.context_slots);
            attend_slots.extend_from_slice(s.new_slots);
            attend_rows.extend((0..s.tokens.len()).map(|j| (at, s.context_slots.len() + j + 1)));
            let ctx = s.context_slots.len();
            for (j, (&tok, &slot)) in s.tokens.iter().zip(s.new_slots).enumerate() {
                ids.push(tok as i64);
                pos.push((ctx + j) as i64);
                write.push(slot as i64);
            }
        }
        let decode = if n_dec > 0 {
            let max_len = order[..n_dec].iter().map(|&i| batch[i].context_slots.len() + 1).max().unwrap_or(1);
            let mut gather = Vec::with_capacity(n_dec * max_len);
            let mut mask = Vec::with_capacity(n_dec * max_len);
            let mut slots_host = Vec::new();
            let mut offsets = vec![0];
            for &i in &order[..n_dec] {
                let s = &batch[i];
                slots_host.extend_from_slice(s.context_slots);
                slots_host.push(s.new_slots[0]);
                offsets.push(slots_host.len());
                let pad = s.new_slots[0] as i64;
                gather.extend(s.context_slots.iter().map(|&x| x as i64));
                gather.push(pad);
                let len = s.context_slots.len() + 1;
                gather.extend(std::iter::repeat_n(pad, max_len - len));
                mask.extend(std::iter::repeat_n(true, len));
                mask.extend(std::iter::repeat_n(false, max_len - len));
            }
            Some(DecodeGroup {
                n_seqs: n_dec as i64,
                max_len: max_len as i64,
                gather: Tensor::from_slice(&gather).to_device(dev),
                mask: Tensor::from_slice(&mask).view([n_dec as i64, 1, 1, max_len as i64]).to_device(dev),
                slots_host,
                offsets,
            })
        } else {
            None
        };
        let mut prefills = Vec::new();
        for &i in &order[n_dec..] {
            let s = &batch[i];
            let n = s.tokens.len();
            let ctx = s.context_slots.len();
            let start = start_row[i] as i64;
            let (gather, mask) = if ctx == 0 {
                (None, None)
            } else {
                let g: Vec<i64> = s.context_slots.iter().chain(s.new_slots).map(|&x| x as i64).collect();
                let total = ctx + n;
                let mut m = Vec::with_capacity(n * total);
                for qi in 0..n {
                    m.extend((0..total).map(|kj| kj <= ctx + qi));
                }
                (
                    Some(Tensor::from_slice(&g).to_device(dev)),
                    Some(Tensor::from_slice(&m).view([1, 1, n as i64, total as i64]).to_device(dev)),
                )
            };
            prefills.push(PrefillSeq { start, len: n as i64, gather, mask });
        }
        let mut logit_rows = Vec::new();
        let mut out_rows = Vec::with_capacity(batch.len());
        for (i, s) in batch.iter().enumerate() {
            let first = logit_rows.len();
            let n = s.tokens.len();
            match s.logits {
                LogitsFor::None => {}
                LogitsFor::Last => logit_rows.push((start_row[i] + n - 1) as i64),
                LogitsFor::All => logit_rows.extend((0..n).map(|j| (start_row[i] + j) as i64)),
            }
            out_rows.push(first..logit_rows.len());
        }
        Ok(Self {
            n_tokens: n_tokens as i64,
            ids: Tensor::from_slice(&ids).to_device(dev),
            ids_host: ids,
            positions: Tensor::from_slice(&pos).to_device(dev),
            write_slots: Tensor::from_slice(&write).to_device(dev),
            positions_host: pos,
            write_host: write,
            decode,
            prefills,
            logit_rows: (!logit_rows.is_empty()).then(|| Tensor::from_slice(&logit_rows).to_device(dev)),
            out_rows,
            attend_rows,
            attend_slots,
        })
    }
}
