//! Embedding models against outside references: all-MiniLM-L6-v2 against sentence-transformers' own `encode`, and
//! SmolLM2 as a decoder embedder against transformers' final hidden states (fixtures from `tools/make_fixtures.py`).

use kernels::{EmbeddingModel, LoadOptions, Pooling, WeightFormat};
use radixserve_tests::{embed_model_path, model_path, repo_root};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = repo_root().join("kernels/testdata").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn minilm_equals_sentence_transformers() {
    let mut m = EmbeddingModel::load(&embed_model_path(), LoadOptions::default(), None, &mut |_, _| {}).unwrap();
    assert!(m.is_encoder());
    assert_eq!((m.dim(), m.max_tokens, m.pooling, m.normalize), (384, 256, Pooling::Mean, true));
    let fx = fixture("minilm_reference.json");
    let cases = fx["cases"].as_array().unwrap();
    // Our tokenizer gives sentence-transformers' ids (with [CLS]/[SEP]).
    let ours: Vec<Vec<u32>> = cases.iter().map(|c| m.encode(c["text"].as_str().unwrap()).unwrap()).collect();
    for (c, o) in cases.iter().zip(&ours) {
        assert_eq!(o, &ids(&c["ids"]), "ids of {:?}", c["text"]);
    }
    // All at once (mixed lengths in one batch), then one by one: each within 1e-5 per component.
    let batch: Vec<&[u32]> = ours.iter().map(Vec::as_slice).collect();
    let together = m.embed(&batch).unwrap();
    let mut worst = 0.0f32;
    for (i, c) in cases.iter().enumerate() {
        let want = floats(&c["embedding"]);
        let alone = m.embed(&[&ours[i]]).unwrap().remove(0);
        worst = worst.max(max_diff(&together[i], &want)).max(max_diff(&alone, &want));
    }
    // Where the CPU has the tiles, the encoder takes them (no silent fall back to libtorch).
    let tiles = kernels::amx::available();
    assert_eq!(m.on_tiles(), tiles);
    eprintln!("all-MiniLM-L6-v2 (AMX tiles: {tiles}): worst component difference from sentence-transformers {worst:e}");
    assert!(worst <= 1e-5, "worst difference {worst:e}");
}

/// The same agreement on the other path: where this CPU has AMX tiles the test above ran on them, so run it again
/// in a child process with them turned off (the switch is read once per process): libtorch's f32 products, what
/// CPUs without AMX run.
#[test]
fn minilm_equals_sentence_transformers_on_the_other_path() {
    if !kernels::amx::available() {
        eprintln!("no AMX tiles here: the test above already ran the libtorch path");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "minilm_equals_sentence_transformers", "--nocapture"])
        .env("RADIXSERVE_NO_AMX", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stderr}");
    assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}\n{stderr}");
    assert!(stderr.contains("AMX tiles: false"), "the child ran the tiles: {stderr}");
}

#[test]
fn smollm2_pooled_hidden_states_equal_transformers() {
    let fx = fixture("smollm2_embed_reference.json");
    let mut worst = 0.0f32;
    let f32_weights = LoadOptions { weights: WeightFormat::F32, ..LoadOptions::default() };
    for (pooling, key) in [(Pooling::Last, "last"), (Pooling::Mean, "mean")] {
        let mut m = EmbeddingModel::load(&model_path(), f32_weights, Some(pooling), &mut |_, _| {}).unwrap();
        assert!(!m.is_encoder());
        let cases = fx["cases"].as_array().unwrap();
        let inputs: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["ids"])).collect();
        let batch: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let got = m.embed(&batch).unwrap();
        for (c, g) in cases.iter().zip(&got) {
            assert_eq!(g.len(), 576);
            worst = worst.max(max_diff(g, &floats(&c[key])));
        }
    }
    eprintln!("SmolLM2 as an embedder: worst component difference from transformers {worst:e}");
    // Unit vectors of 576 components from the same GGUF dequantized to f32 on both sides (measured: 2.3e-6).
    assert!(worst <= 1e-5, "worst difference {worst:e}");
}

/// The quantized default (int8 activations in steps of up to 32 tokens) moves the vectors a little: each stays
/// within a cosine of 0.999 of transformers'.
#[test]
fn smollm2_quantized_embeddings_stay_close() {
    let fx = fixture("smollm2_embed_reference.json");
    let mut m =
        EmbeddingModel::load(&model_path(), LoadOptions::default(), Some(Pooling::Last), &mut |_, _| {}).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    let inputs: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["ids"])).collect();
    let got = m.embed(&inputs.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    let mut worst = 1.0f32;
    for (c, g) in cases.iter().zip(&got) {
        let want = floats(&c["last"]);
        worst = worst.min(g.iter().zip(&want).map(|(a, b)| a * b).sum::<f32>());
    }
    eprintln!("SmolLM2 quantized as an embedder: lowest cosine to transformers {worst:.6}");
    assert!(worst >= 0.999, "lowest cosine {worst}");
}
