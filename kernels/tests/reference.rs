//! The forward pass, tokenizer and dequantizers against outside references, on the real SmolLM2 model.
//!
//! Fixtures come from `tools/make_fixtures.py` (Hugging Face `transformers` and the `gguf` package on the same
//! GGUF file). The model file is fetched by `make test`; set `RADIXSERVE_MODEL` to use another copy. The model is
//! loaded with f32 weights (`WeightFormat::F32`, the numerics reference); `quantized.rs` checks the quantized
//! default against it and against llama.cpp.

use std::sync::{Mutex, MutexGuard, OnceLock};

use base64::Engine;
use kernels::gguf::GgufFile;
use kernels::quant::{dequantize, GgmlType};
use kernels::{LoadOptions, LogitsFor, Model, SeqInput, WeightFormat};
use serde_json::Value;
use tch::{Kind, Tensor};

use radixserve_tests::model_path;

/// One model per test binary; tests take turns (libtorch already uses every core).
fn model() -> MutexGuard<'static, Model> {
    static M: OnceLock<Mutex<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let path = model_path();
        assert!(path.exists(), "model not found at {} (run `make test`, which fetches it)", path.display());
        Mutex::new(
            Model::load(&path, LoadOptions { weights: WeightFormat::F32, ..LoadOptions::default() }, &mut |_, _| {})
                .expect("load model"),
        )
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

fn fixture(name: &str) -> Value {
    let p = manifest_dir().join("testdata").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Logits for every position of `ids`, prefilled in one call.
fn all_logits(m: &Model, ids: &[u32]) -> Tensor {
    let mut kv = m.net.new_kv_pool(ids.len()).unwrap();
    let slots: Vec<u32> = (0..ids.len() as u32).collect();
    let out = m
        .net
        .forward(&mut kv, &[SeqInput { context_slots: &[], tokens: ids, new_slots: &slots, logits: LogitsFor::All }])
        .unwrap();
    out.tensor
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Our logits at the fixture's positions match its top-20 within `tol`, with the same argmax.
fn check_top20(m: &Model, cases: &Value, tol: f64) {
    let mut worst = 0.0f64;
    for case in cases.as_array().unwrap() {
        let ids = ids_of(&case["ids"]);
        let logits = all_logits(m, &ids);
        for top in case["top20"].as_array().unwrap() {
            let p = top["position"].as_i64().unwrap();
            let row = logits.get(p);
            let top_ids = ids_of(&top["ids"]);
            let want: Vec<f64> = top["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            for (&id, &w) in top_ids.iter().zip(&want) {
                let got = row.double_value(&[id as i64]);
                worst = worst.max((got - w).abs());
                assert!((got - w).abs() <= tol, "{} pos {p} token {id}: got {got}, want {w}", case["name"]);
            }
            let argmax = row.argmax(0, false).int64_value(&[]) as u32;
            assert_eq!(argmax, top_ids[0], "{} pos {p}: argmax differs", case["name"]);
        }
    }
    eprintln!("worst top-20 logit difference vs transformers: {worst:.2e}");
}

/// Greedy decoding one token at a time through the KV pool reproduces the fixture's continuation.
fn check_greedy(m: &Model, cases: &Value) {
    for case in cases.as_array().unwrap() {
        let ids = ids_of(&case["ids"]);
        let want = ids_of(&case["greedy"]);
        let mut kv = m.net.new_kv_pool(ids.len() + want.len() + 1).unwrap();
        let mut slots: Vec<u32> = (0..ids.len() as u32).collect();
        let out = m
            .net
            .forward(
                &mut kv,
                &[SeqInput { context_slots: &[], tokens: &ids, new_slots: &slots, logits: LogitsFor::Last }],
            )
            .unwrap();
        let mut next = kernels::sampling::argmax(&out.tensor)[0];
        let mut got = vec![next];
        while got.len() < want.len() {
            let slot = slots.len() as u32;
            let out = m
                .net
                .forward(
                    &mut kv,
                    &[SeqInput { context_slots: &slots, tokens: &[next], new_slots: &[slot], logits: LogitsFor::Last }],
                )
                .unwrap();
            slots.push(slot);
            next = kernels::sampling::argmax(&out.tensor)[0];
            got.push(next);
        }
        assert_eq!(got, want, "{}: greedy continuation differs from transformers", case["name"]);
    }
}

#[test]
fn logits_match_transformers_on_top20() {
    check_top20(&model(), &fixture("smollm2_reference.json")["prompts"], 1e-3);
}

#[test]
fn greedy_continuation_matches_transformers_through_the_kv_pool() {
    check_greedy(&model(), &fixture("smollm2_reference.json")["prompts"]);
}

/// Opt-in (`make model-qwen`): Qwen2.5-Coder-0.5B-Instruct Q4_K_M, a Qwen2 model with QKV biases, untied LM head,
/// Q5_0/Q4_K/Q6_K/Q8_0 tensors and the qwen2 pre-tokenizer.
#[test]
#[ignore = "needs the opt-in Qwen2 model: make model-qwen"]
fn qwen2_matches_transformers() {
    let path = manifest_dir().join("../models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let m = Model::load(&path, LoadOptions { weights: WeightFormat::F32, ..LoadOptions::default() }, &mut |_, _| {})
        .expect("run make model-qwen");
    let fx = fixture("qwen2_reference.json");
    for case in fx["prompts"].as_array().unwrap() {
        let got = m.tokenizer.encode(case["rendered"].as_str().unwrap(), false).unwrap().get_ids().to_vec();
        assert_eq!(got, ids_of(&case["ids"]), "tokenizing {}", case["name"]);
    }
    check_top20(&m, &fx["prompts"], 1e-3);
    check_greedy(&m, &fx["prompts"]);
}

fn long_prompt(m: &Model, n: usize) -> Vec<u32> {
    let text = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! ".repeat(20);
    let ids = m.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    assert!(ids.len() >= n);
    ids[..n].to_vec()
}

#[test]
fn prefill_in_two_chunks_equals_one_call() {
    let m = model();
    let ids = long_prompt(&m, 100);
    let whole = all_logits(&m, &ids);
    // Chunks written to scattered, non-contiguous slots to exercise the paged gather.
    let mut kv = m.net.new_kv_pool(300).unwrap();
    let slots: Vec<u32> = (0..100u32).map(|i| (i * 7 + 3) % 300).collect();
    let a = m
        .net
        .forward(
            &mut kv,
            &[SeqInput { context_slots: &[], tokens: &ids[..60], new_slots: &slots[..60], logits: LogitsFor::All }],
        )
        .unwrap();
    let b = m
        .net
        .forward(
            &mut kv,
            &[SeqInput {
                context_slots: &slots[..60],
                tokens: &ids[60..],
                new_slots: &slots[60..],
                logits: LogitsFor::All,
            }],
        )
        .unwrap();
    let chunked = Tensor::cat(&[a.tensor, b.tensor], 0);
    let d = max_abs_diff(&whole, &chunked);
    assert!(d <= 1e-4, "60+40 differs from 100 by {d}");
}

#[test]
fn ragged_batch_equals_each_sequence_alone() {
    let m = model();
    let base = long_prompt(&m, 90);
    // Four sequences: a fresh prefill, an extend after a cached prefix, and two decodes with different contexts.
    let lens = [(0usize, 23usize), (40, 17), (31, 1), (77, 1)];
    let mut kv = m.net.new_kv_pool(512).unwrap();
    // Fill contexts alone first, each sequence in its own slot range.
    let mut ctx_slots = Vec::new();
    for (s, &(ctx, _)) in lens.iter().enumerate() {
        let slots: Vec<u32> = (0..ctx as u32).map(|i| s as u32 * 128 + i).collect();
        if ctx > 0 {
            m.net
                .forward(
                    &mut kv,
                    &[SeqInput {
                        context_slots: &[],
                        tokens: &base[..ctx],
                        new_slots: &slots,
                        logits: LogitsFor::None,
                    }],
                )
                .unwrap();
        }
        ctx_slots.push(slots);
    }
    let new_slots: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(s, &(ctx, n))| (ctx as u32..(ctx + n) as u32).map(|i| s as u32 * 128 + i).collect())
        .collect();
    let inputs: Vec<SeqInput> = lens
        .iter()
        .enumerate()
        .map(|(s, &(ctx, n))| SeqInput {
            context_slots: &ctx_slots[s],
            tokens: &base[ctx..ctx + n],
            new_slots: &new_slots[s],
            logits: LogitsFor::All,
        })
        .collect();
    let alone: Vec<Tensor> =
        inputs.iter().map(|i| m.net.forward(&mut kv, std::slice::from_ref(i)).unwrap().tensor).collect();
    let batched = m.net.forward(&mut kv, &inputs).unwrap();
    for (s, want) in alone.iter().enumerate() {
        let rows = &batched.rows[s];
        let got = batched.tensor.narrow(0, rows.start as i64, rows.len() as i64);
        let d = max_abs_diff(&got, want);
        assert!(d <= 1e-4, "sequence {s} differs in a batch by {d}");
    }
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let m = model();
    let mut kv = m.net.new_kv_pool(8).unwrap();
    let bad = [
        SeqInput { context_slots: &[], tokens: &[], new_slots: &[], logits: LogitsFor::Last },
        SeqInput { context_slots: &[], tokens: &[1, 2], new_slots: &[0], logits: LogitsFor::Last },
        SeqInput { context_slots: &[], tokens: &[1], new_slots: &[8], logits: LogitsFor::Last },
        SeqInput { context_slots: &[], tokens: &[999_999], new_slots: &[0], logits: LogitsFor::Last },
        SeqInput { context_slots: &[0], tokens: &[1], new_slots: &[0], logits: LogitsFor::Last },
    ];
    for b in bad {
        let err = m.net.forward(&mut kv, &[b]).unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
    }
    assert!(m.net.forward(&mut kv, &[]).unwrap_err().is_invalid_input());
}

#[test]
fn gguf_tokenizer_matches_transformers_on_awkward_strings() {
    let m = model();
    let fx = fixture("smollm2_reference.json");
    for case in fx["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        let got = m.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "tokenizing {text:?}");
        let back = m.tokenizer.decode(&got, false).unwrap();
        assert_eq!(back, text, "decode(encode(x)) != x");
    }
    for case in fx["prompts"].as_array().unwrap() {
        let got = m.tokenizer.encode(case["rendered"].as_str().unwrap(), false).unwrap().get_ids().to_vec();
        assert_eq!(got, ids_of(&case["ids"]), "prompt {}", case["name"]);
    }
    assert_eq!(m.special.eos, vec![2], "SmolLM2 ends turns with <|im_end|>");
}

fn ty(name: &str) -> GgmlType {
    match name {
        "F32" => GgmlType::F32,
        "F16" => GgmlType::F16,
        "BF16" => GgmlType::BF16,
        "Q4_0" => GgmlType::Q4_0,
        "Q4_1" => GgmlType::Q4_1,
        "Q5_0" => GgmlType::Q5_0,
        "Q5_1" => GgmlType::Q5_1,
        "Q8_0" => GgmlType::Q8_0,
        "Q4_K" => GgmlType::Q4K,
        "Q5_K" => GgmlType::Q5K,
        "Q6_K" => GgmlType::Q6K,
        other => panic!("fixture type {other}"),
    }
}

#[test]
fn dequantizers_match_the_gguf_package() {
    let fx = fixture("dequant.json");
    let mut seen = Vec::new();
    for case in fx["random"].as_array().unwrap() {
        let t = ty(case["type"].as_str().unwrap());
        let bytes = base64::engine::general_purpose::STANDARD.decode(case["bytes_b64"].as_str().unwrap()).unwrap();
        let n = case["n_elements"].as_u64().unwrap() as usize;
        let got = dequantize(t, &bytes, n).unwrap();
        let want: Vec<f64> = case["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!((g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()), "{t:?} element {i}: got {g}, want {w}");
        }
        seen.push(t);
    }
    for t in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        assert!(seen.contains(&t), "no random-block case for {t:?}");
    }
    // Whole real tensors of each type in the SmolLM2 file.
    let g = GgufFile::open(model_path()).unwrap();
    for case in fx["real"].as_array().unwrap() {
        let info = g.tensor(case["tensor"].as_str().unwrap()).unwrap();
        let got = g.dequantize(info).unwrap();
        let first: Vec<f64> = case["first"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (i, (&a, &b)) in got.iter().zip(&first).enumerate() {
            assert!((a as f64 - b).abs() <= 1e-6 * (1.0 + b.abs()), "{} element {i}: {a} vs {b}", case["tensor"]);
        }
        let sum: f64 = got.iter().map(|&v| v as f64).sum();
        let sum_sq: f64 = got.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let (ws, wsq) = (case["sum"].as_f64().unwrap(), case["sum_sq"].as_f64().unwrap());
        assert!((sum - ws).abs() <= 1e-6 * (1.0 + sum_sq.sqrt() * 100.0), "{} sum {sum} vs {ws}", case["tensor"]);
        assert!((sum_sq - wsq).abs() <= 1e-6 * wsq.max(1.0), "{} sum_sq {sum_sq} vs {wsq}", case["tensor"]);
    }
}

#[test]
fn kv_pool_kind_follows_the_model() {
    let m = model();
    assert_eq!(m.net.kind(), Kind::Float);
}

#[test]
fn fused_cpu_kernels_equal_the_libtorch_path() {
    let mut m = model();
    let base = long_prompt(&m, 90);
    // Contexts first, then one mixed step: a fresh prefill, an extend and two decodes.
    let run = |m: &Model| -> Vec<Tensor> {
        let mut kv = m.net.new_kv_pool(512).unwrap();
        let ctx: Vec<Vec<u32>> =
            [0u32, 40, 31, 77].iter().enumerate().map(|(s, &n)| (0..n).map(|i| s as u32 * 128 + i).collect()).collect();
        for (s, c) in ctx.iter().enumerate() {
            if !c.is_empty() {
                let toks = &base[s..s + c.len()];
                m.net
                    .forward(
                        &mut kv,
                        &[SeqInput { context_slots: &[], tokens: toks, new_slots: c, logits: LogitsFor::None }],
                    )
                    .unwrap();
            }
        }
        let news: Vec<Vec<u32>> = [(0usize, 23usize), (40, 17), (31, 1), (77, 1)]
            .iter()
            .enumerate()
            .map(|(s, &(c, n))| (c as u32..(c + n) as u32).map(|i| s as u32 * 128 + i).collect())
            .collect();
        let toks: Vec<&[u32]> = news.iter().enumerate().map(|(s, n)| &base[50 + s..50 + s + n.len()]).collect();
        let inputs: Vec<SeqInput> = (0..4)
            .map(|s| SeqInput { context_slots: &ctx[s], tokens: toks[s], new_slots: &news[s], logits: LogitsFor::All })
            .collect();
        let out = m.net.forward(&mut kv, &inputs).unwrap();
        out.rows.iter().map(|r| out.tensor.narrow(0, r.start as i64, r.len() as i64)).collect()
    };
    let fused = run(&m);
    m.net.use_fused_cpu_kernels(false);
    let reference = run(&m);
    m.net.use_fused_cpu_kernels(true);
    for (s, (a, b)) in fused.iter().zip(&reference).enumerate() {
        let d = max_abs_diff(a, b);
        assert!(d <= 1e-4, "sequence {s}: fused kernels differ from libtorch by {d}");
    }
}

/// This crate's folder, read when the test runs (cargo sets it for every run), not baked in at compile time:
/// a test binary reused from another checkout of the same sources must still find this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run through cargo test"))
}
