//! The Hugging Face folder path: a sharded safetensors folder written from the real SmolLM2 weights loads and
//! computes the same logits as the GGUF file it came from.

use std::collections::HashMap;

use kernels::gguf::GgufFile;
use kernels::weights::{gguf_qk_permuted, hf_name, WeightSource};
use kernels::{LoadOptions, LogitsFor, Model, ModelConfig, SeqInput, WeightFormat};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use radixserve_tests::model_path;

/// HF name, shape and little-endian f32 bytes.
type RawTensor = (String, Vec<i64>, Vec<u8>);

/// Writes `dir` as a Hugging Face checkpoint of the GGUF model, in two shards with an index.
fn write_hf_folder(dir: &std::path::Path) -> Model {
    let gguf = Model::load(
        &model_path(),
        LoadOptions { weights: WeightFormat::F32, ..LoadOptions::default() },
        &mut |_, _| {},
    )
    .unwrap();
    let g = GgufFile::open(model_path()).unwrap();
    let cfg = ModelConfig::from_gguf(&g).unwrap();
    let names: Vec<String> = g.tensors.iter().map(|t| t.name.clone()).collect();
    let src = WeightSource::Gguf(g);
    let mut shards: [Vec<RawTensor>; 2] = [Vec::new(), Vec::new()];
    for (i, name) in names.iter().enumerate() {
        let heads = match name.rsplit('.').nth(1) {
            Some("attn_q") => Some(cfg.num_heads),
            Some("attn_k") => Some(cfg.num_kv_heads),
            _ => None,
        }
        .filter(|_| gguf_qk_permuted(cfg.arch));
        let t = src.load(name, heads).unwrap();
        let shape = t.size();
        let data: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        shards[i % 2].push((hf_name(name), shape, bytes));
    }
    let mut weight_map = serde_json::Map::new();
    for (s, shard) in shards.iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", s + 1);
        let views: Vec<(String, TensorView)> = shard
            .iter()
            .map(|(n, shape, b)| {
                let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                (n.clone(), TensorView::new(Dtype::F32, shape, b).unwrap())
            })
            .collect();
        for (n, _) in &views {
            weight_map.insert(n.clone(), file.clone().into());
        }
        let bytes = safetensors::tensor::serialize(views, None::<HashMap<String, String>>).unwrap();
        std::fs::write(dir.join(&file), bytes).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "vocab_size": cfg.vocab_size, "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings, "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    gguf.tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
    let tok_cfg = serde_json::json!({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": false,
        "chat_template": gguf.chat_template.clone().unwrap(),
    });
    std::fs::write(dir.join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"bos_token_id": 1, "eos_token_id": [2], "temperature": 0.2, "top_p": 0.9, "do_sample": true}"#,
    )
    .unwrap();
    gguf
}

#[test]
fn sharded_safetensors_folder_equals_the_gguf() {
    let dir = std::env::temp_dir().join(format!("radixserve-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gguf = write_hf_folder(&dir);
    let hf = Model::load(&dir, LoadOptions { weights: WeightFormat::F32, ..LoadOptions::default() }, &mut |_, _| {})
        .unwrap();
    assert_eq!(hf.special.eos, vec![2]);
    assert_eq!(hf.special.bos, Some(1));
    assert_eq!(hf.chat_template, gguf.chat_template);
    // generation_config.json's sampling; SmolLM2's GGUF carries no general.sampling.* keys.
    assert_eq!(hf.sampling, kernels::SamplingHints { temperature: Some(0.2), top_p: Some(0.9), ..Default::default() });
    assert_eq!(gguf.sampling, kernels::SamplingHints::default());
    let text = "The capital of France is";
    let ids = hf.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    assert_eq!(ids, gguf.tokenizer.encode(text, false).unwrap().get_ids().to_vec());
    let run = |m: &Model| {
        let mut kv = m.net.new_kv_pool(ids.len()).unwrap();
        let slots: Vec<u32> = (0..ids.len() as u32).collect();
        m.net
            .forward(
                &mut kv,
                &[SeqInput { context_slots: &[], tokens: &ids, new_slots: &slots, logits: LogitsFor::All }],
            )
            .unwrap()
            .tensor
    };
    let d = (run(&hf) - run(&gguf)).abs().max().double_value(&[]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(d <= 1e-5, "HF folder and GGUF differ by {d}");
}

#[test]
fn missing_folder_pieces_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("radixserve-hf-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = Model::load(&dir, LoadOptions { weights: WeightFormat::F32, ..LoadOptions::default() }, &mut |_, _| {})
        .unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    let err = Model::load(
        &dir.join("nope.gguf"),
        LoadOptions { weights: WeightFormat::F32, ..LoadOptions::default() },
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("no such file"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
