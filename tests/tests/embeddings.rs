//! `/v1/embeddings` and many models on one port, over HTTP, on the real models: SmolLM2 (chat) and
//! all-MiniLM-L6-v2 (embedding) served by one server.

mod common;

use base64::Engine;
use common::{server, EMBED_ID};
use serde_json::{json, Value};

fn fixture() -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let p = radixserve_tests::repo_root().join("kernels/testdata/minilm_reference.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let emb = c["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (c["text"].as_str().unwrap().to_string(), ids, emb)
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn embed(body: Value) -> (u16, Value) {
    server().post("/v1/embeddings", &body)
}

#[test]
fn vectors_equal_sentence_transformers_over_http_with_exact_usage() {
    // Every non-empty fixture text in one request (a batch of mixed lengths, non-ASCII, 240 tokens).
    let cases: Vec<_> = fixture().into_iter().filter(|(t, _, _)| !t.is_empty()).collect();
    let texts: Vec<&str> = cases.iter().map(|(t, _, _)| t.as_str()).collect();
    let (st, v) = embed(json!({"model": EMBED_ID, "input": texts}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], EMBED_ID);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), cases.len());
    for (i, (d, (text, _, want))) in data.iter().zip(&cases).enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let got = floats(&d["embedding"]);
        assert!(max_diff(&got, want) <= 1e-5, "{text:?}: {}", max_diff(&got, want));
    }
    let tokens: usize = cases.iter().map(|(_, ids, _)| ids.len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    assert_eq!(v["usage"]["total_tokens"], tokens);

    // Token ids in (one list, and a list of lists) give the same vectors as the texts.
    let (_, ids, want) = &cases[3];
    let (st, v) = embed(json!({"model": EMBED_ID, "input": ids}));
    assert_eq!(st, 200, "{v}");
    assert!(max_diff(&floats(&v["data"][0]["embedding"]), want) <= 1e-5);
    let (st, v) = embed(json!({"model": EMBED_ID, "input": [ids, cases[0].1]}));
    assert_eq!(st, 200, "{v}");
    assert!(max_diff(&floats(&v["data"][0]["embedding"]), want) <= 1e-5);
    assert_eq!(v["usage"]["prompt_tokens"], ids.len() + cases[0].1.len());
}

#[test]
fn base64_and_dimensions() {
    let (st, f) = embed(json!({"model": EMBED_ID, "input": "Hello world"}));
    assert_eq!(st, 200, "{f}");
    let float = floats(&f["data"][0]["embedding"]);
    assert_eq!(float.len(), 384);
    let (st, b) = embed(json!({"model": EMBED_ID, "input": "Hello world", "encoding_format": "base64"}));
    assert_eq!(st, 200, "{b}");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(decoded, float, "base64 is the little-endian f32 bytes of the same vector");

    let (st, d) = embed(json!({"model": EMBED_ID, "input": "Hello world", "dimensions": 64}));
    assert_eq!(st, 200, "{d}");
    let short = floats(&d["data"][0]["embedding"]);
    assert_eq!(short.len(), 64);
    let norm: f32 = short.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "re-normalized: {norm}");
    let scale = float[..64].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(short.iter().zip(&float[..64]).all(|(s, f)| (s - f / scale).abs() < 1e-6), "the first 64, rescaled");

    for bad in [0, 385] {
        let (st, e) = embed(json!({"model": EMBED_ID, "input": "x", "dimensions": bad}));
        assert_eq!(st, 400, "{e}");
        assert_eq!(e["error"]["param"], "dimensions");
    }
}

#[test]
fn bad_inputs_are_400s_naming_the_input_and_truncation_keeps_the_last_tokens() {
    for (input, needle) in [
        (json!(""), "input[0]"),
        (json!([]), "empty"),
        (json!(["fine", ""]), "input[1]"),
        (json!([[]]), "input[0]"),
        (json!([101, 999999]), "999999"),
        (json!([1, "mixed"]), "input"),
    ] {
        let (st, e) = embed(json!({"model": EMBED_ID, "input": input}));
        assert_eq!(st, 400, "{input}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(needle), "{input}: {e}");
        assert_eq!(e["error"]["param"], "input", "{e}");
    }
    let long = "word ".repeat(300);
    let (st, e) = embed(json!({"model": EMBED_ID, "input": ["short", long]}));
    assert_eq!(st, 400, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("input[1]") && msg.contains("256"), "{msg}");

    // truncate_prompt_tokens keeps the last N tokens: the same vector as embedding those N ids.
    let (st, v) = embed(json!({"model": EMBED_ID, "input": long, "truncate_prompt_tokens": 100}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 100);
    let tok = kernels::tokenizer::from_file(&radixserve_tests::embed_model_path().join("tokenizer.json")).unwrap();
    let ids = tok.encode(long.as_str(), true).unwrap().get_ids().to_vec();
    let (st, last) = embed(json!({"model": EMBED_ID, "input": ids[ids.len() - 100..]}));
    assert_eq!(st, 200, "{last}");
    assert!(max_diff(&floats(&v["data"][0]["embedding"]), &floats(&last["data"][0]["embedding"])) <= 1e-6);
    let (st, full) = embed(json!({"model": EMBED_ID, "input": long, "truncate_prompt_tokens": -1}));
    assert_eq!(st, 200, "{full}");
    assert_eq!(full["usage"]["prompt_tokens"], 256);
    let (st, e) = embed(json!({"model": EMBED_ID, "input": long, "truncate_prompt_tokens": 300}));
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("truncate_prompt_tokens")), "{e}");
}

#[test]
fn models_are_routed_by_id_and_kind() {
    let s = server();
    let (st, v) = s.get("/v1/models");
    assert_eq!(st, 200);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{v}");
    assert_eq!((data[0]["kind"].as_str(), data[1]["kind"].as_str()), (Some("chat"), Some("embedding")));
    assert_eq!(data[1]["id"], EMBED_ID);
    assert_eq!(data[1]["dimensions"], 384);
    assert_eq!(data[1]["max_model_len"], 256);
    assert_eq!(data[1]["pooling"], "mean");
    let (st, one) = s.get(&format!("/v1/models/{EMBED_ID}"));
    assert_eq!((st, one["kind"].as_str()), (200, Some("embedding")));

    // A chat request to the embedding model and the reverse: 400s that say what the model serves.
    let (st, e) = s.post("/v1/chat/completions", &json!({"model": EMBED_ID, "messages": common::user("hi")}));
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("model")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("/v1/embeddings"), "{e}");
    let (st, e) = s.post("/v1/embeddings", &json!({"model": s.model, "input": "hi"}));
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("model")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("chat"), "{e}");
    let (st, e) = s.post("/v1/embeddings", &json!({"model": "nope", "input": "hi"}));
    assert_eq!((st, e["error"]["code"].as_str()), (404, Some("model_not_found")), "{e}");

    // No model: chat goes to the first chat model, embeddings to the first embedding model.
    let (st, v) = s.post("/v1/chat/completions", &json!({"messages": common::user("hi"), "max_tokens": 2}));
    assert_eq!((st, v["model"].as_str()), (200, Some(s.model.as_str())), "{v}");
    let (st, v) = s.post("/v1/embeddings", &json!({"input": "hi"}));
    assert_eq!((st, v["model"].as_str()), (200, Some(EMBED_ID)), "{v}");
}

#[test]
fn thirty_clients_mixing_chat_and_embeddings_all_succeed_and_metrics_carry_the_model() {
    let s = server();
    let passages: Vec<String> =
        (0..12).map(|i| format!("Passage {i} about caching prefixes in LLM serving.")).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..30)
            .map(|i| {
                let passages = &passages;
                scope.spawn(move || {
                    if i % 2 == 0 {
                        let (st, v) = s.post("/v1/embeddings", &json!({"model": EMBED_ID, "input": passages}));
                        assert_eq!(st, 200, "{v}");
                        assert_eq!(v["data"].as_array().unwrap().len(), passages.len());
                    } else {
                        let body = json!({"model": s.model, "messages": common::user(&format!("Count to {i}.")),
                                          "max_tokens": 8, "temperature": 0});
                        let (st, v) = s.post("/v1/chat/completions", &body);
                        assert_eq!(st, 200, "{v}");
                        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    let (st, m) = s.get("/metrics");
    assert_eq!(st, 200);
    let text = m.as_str().unwrap();
    for model in [EMBED_ID, s.model.as_str()] {
        // Finished requests of that model, over finish reasons (chat ones mostly stop at max_tokens).
        let prefix = format!("radixserve_requests_total{{model=\"{model}\",");
        let n: f64 = text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter(|l| !l.starts_with("finish_reason=\"abort\"") && !l.starts_with("finish_reason=\"error\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert!(n >= 15.0, "{model}: {n} finished requests in\n{text}");
    }
    // One HELP per family: the two engines' series are merged, not printed twice.
    assert_eq!(text.matches("# HELP radixserve_requests_total ").count(), 1);
    let (st, h) = s.get("/health");
    assert_eq!((st, h["status"].as_str()), (200, Some("ok")));
}

#[test]
fn health_names_the_model_that_is_not_ready() {
    let args = common::args(&["--model", "broken=/nonexistent/model.gguf"]);
    let srv = common::start(args, false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (st, v) = srv.get("/health");
        assert_eq!(st, 503, "{v}");
        let msg = v["error"]["message"].as_str().unwrap().to_string();
        if msg.contains("`broken` failed to load") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{msg}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The chat model is served meanwhile; the broken one answers 503 naming itself.
    let (st, v) = srv.post("/v1/chat/completions", &json!({"messages": common::user("hi"), "max_tokens": 1}));
    assert_eq!(st, 200, "{v}");
    let (st, v) = srv.post("/v1/embeddings", &json!({"model": "broken", "input": "hi"}));
    assert_eq!(st, 400, "a chat-kind slot: {v}");
}

/// SmolLM2 served as an embedder (`--embedding-model`, last-token pooling): its vectors are transformers' final
/// hidden states, pooled and normalized (the fixture `kernels` checks in process), and it cannot chat.
#[test]
fn a_decoder_served_as_an_embedder() {
    let path = radixserve_tests::model_path();
    // f32 weights: transformers' fixture is the f32 reference (the quantized default is checked in `kernels`).
    let argv = ["--embedding-model", &format!("smol-embed={}", path.display()), "--weights", "f32"];
    let srv = common::start(common::args(&argv), true);
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(radixserve_tests::repo_root().join("kernels/testdata/smollm2_embed_reference.json"))
            .unwrap(),
    )
    .unwrap();
    let cases = fx["cases"].as_array().unwrap();
    let inputs: Vec<&Value> = cases.iter().map(|c| &c["ids"]).collect();
    let (st, v) = srv.post("/v1/embeddings", &json!({"model": "smol-embed", "input": inputs}));
    assert_eq!(st, 200, "{v}");
    for (d, c) in v["data"].as_array().unwrap().iter().zip(cases) {
        let got = floats(&d["embedding"]);
        assert_eq!(got.len(), 576);
        assert!(max_diff(&got, &floats(&c["last"])) <= 1e-5, "{}", c["text"]);
    }
    let (st, e) = srv.post("/v1/chat/completions", &json!({"model": "smol-embed", "messages": common::user("hi")}));
    assert_eq!(st, 400, "{e}");
    let (_, models) = srv.get("/v1/models");
    assert_eq!(models["data"][1]["pooling"], "last");
}
