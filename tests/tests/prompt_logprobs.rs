//! Prompt logprobs through `/v1/completions` (`echo` with `logprobs`, lm-evaluation-harness' loglikelihood), on the
//! real model: the values equal a full recomputation's log-softmax, and a prompt whose prefix the radix cache holds
//! scores exactly as a cold one (the engine recomputes cached positions for such requests). The server runs with
//! f32 weights (`--weights f32`): with the quantized default, a 16-token chunk runs the int8 decode kernels and a
//! whole-prompt reference the dequantized GEMM, so they differ by the activations' rounding (see `quantized.rs`).

mod common;

use kernels::{LoadOptions, LogitsFor, Model, SeqInput, WeightFormat};
use serde_json::{json, Value};

/// Every prompt position's log-softmax, the whole prompt in one forward call of a fresh model.
fn reference(ids: &[u32]) -> Vec<Vec<f32>> {
    let opts = LoadOptions { weights: WeightFormat::F32, ..LoadOptions::default() };
    let m = Model::load(&radixserve_tests::model_path(), opts, &mut |_, _| {}).unwrap();
    let mut kv = m.net.new_kv_pool(ids.len()).unwrap();
    let slots: Vec<u32> = (0..ids.len() as u32).collect();
    let input = SeqInput { context_slots: &[], tokens: ids, new_slots: &slots, logits: LogitsFor::All };
    let out = m.net.forward(&mut kv, &[input]).unwrap();
    let lsm = out.tensor.log_softmax(-1, kernels::Kind::Double);
    (0..ids.len())
        .map(|i| Vec::<f64>::try_from(lsm.get(i as i64)).unwrap().iter().map(|&x| x as f32).collect())
        .collect()
}

fn score(s: &common::Server, ids: &[u32], max_tokens: usize) -> Value {
    let body = json!({"prompt": ids, "echo": true, "logprobs": 3, "max_tokens": max_tokens, "temperature": 0});
    let (st, v) = s.post("/v1/completions", &body);
    assert_eq!(st, 200, "{v}");
    v
}

#[test]
fn prompt_logprobs_equal_a_full_recomputation_cold_or_cached() {
    // Chunks of 16 tokens: the prompt is scored over several steps, each chunk attending to the ones before.
    let s = common::start(
        common::args(&["--kv-cache-mb", "256", "--chunked-prefill-size", "16", "--weights", "f32"]),
        true,
    );
    let text = "Question: What is the capital of France?\nAnswer: The capital of France is Paris, a city on the Seine.";
    let (st, tok) = s.post("/tokenize", &json!({"prompt": text}));
    assert_eq!(st, 200);
    let ids: Vec<u32> = tok["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let want = reference(&ids);

    // Cold, scoring only (max_tokens 0): every token echoed, the first without a logprob.
    let cold = score(&s, &ids, 0);
    let c = &cold["choices"][0];
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(cold["usage"]["completion_tokens"], 0);
    assert_eq!(cold["usage"]["prompt_tokens"], ids.len());
    let lp = &c["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), ids.len());
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null(), "{lp}");
    assert_eq!(
        c["text"].as_str().unwrap(),
        lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect::<String>()
    );
    let mut worst = 0.0f32;
    for i in 1..ids.len() {
        let got = lp["token_logprobs"][i].as_f64().unwrap() as f32;
        worst = worst.max((got - want[i - 1][ids[i] as usize]).abs());
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(top.len(), 3);
        // The best alternative is the reference's argmax, with its logprob.
        let best = want[i - 1].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let top_best = top.values().map(|v| v.as_f64().unwrap() as f32).fold(f32::NEG_INFINITY, f32::max);
        worst = worst.max((top_best - best).abs());
    }
    eprintln!("prompt logprobs: worst difference from a full recomputation {worst:e}");
    assert!(worst <= 1e-4, "{worst:e}");

    // Put the prompt (and more) in the radix cache, then score again: identical values.
    let (st, warmup) = s.post("/v1/completions", &json!({"prompt": ids, "max_tokens": 4, "temperature": 0}));
    assert_eq!(st, 200, "{warmup}");
    let (st, again) = s.post("/v1/completions", &json!({"prompt": ids, "max_tokens": 1, "temperature": 0}));
    assert_eq!(st, 200, "{again}");
    assert!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0,
        "the prefix is cached: {again}"
    );
    let warm = score(&s, &ids, 0);
    assert_eq!(warm["choices"][0]["logprobs"], cold["choices"][0]["logprobs"], "cached prefix scores as a cold one");

    // With generation: the prompt's entries, then the generated tokens', offsets running through the text.
    let gen = score(&s, &ids, 5);
    let g = &gen["choices"][0];
    let n = g["logprobs"]["tokens"].as_array().unwrap().len();
    assert_eq!(n, ids.len() + gen["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    assert_eq!(
        g["logprobs"]["token_logprobs"].as_array().unwrap()[..ids.len()],
        lp["token_logprobs"].as_array().unwrap()[..]
    );
    let offsets: Vec<u64> =
        g["logprobs"]["text_offset"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[0] == 0, "{offsets:?}");
    assert!(g["text"].as_str().unwrap().starts_with(c["text"].as_str().unwrap()));

    // Streamed: the echoed prompt arrives with its logprobs, then the generated tokens.
    let lines = s.stream(
        "/v1/completions",
        &json!({"prompt": ids, "echo": true, "logprobs": 3, "max_tokens": 3,
                                                    "temperature": 0, "stream": true}),
    );
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], c["text"]);
    assert_eq!(first["choices"][0]["logprobs"]["token_logprobs"], lp["token_logprobs"]);

    // max_tokens 0 without echo is still refused, naming the field.
    let (st, e) = s.post("/v1/completions", &json!({"prompt": ids, "max_tokens": 0}));
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("max_tokens")), "{e}");
    let (st, e) = s.post("/v1/chat/completions", &json!({"messages": common::user("hi"), "max_tokens": 0}));
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("max_tokens")), "{e}");
}
