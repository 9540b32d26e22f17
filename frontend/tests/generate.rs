//! The first thing a user runs: `radixserve generate` on the real model.

use std::process::Command;

fn model() -> std::path::PathBuf {
    std::env::var_os("RADIXSERVE_MODEL").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run through cargo test"))
            .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

#[test]
fn chat_answers_the_capital_of_france() {
    let out = Command::new(env!("CARGO_BIN_EXE_radixserve"))
        .args([
            "generate",
            "--chat",
            "--max-tokens",
            "32",
            "--prompt",
            "What is the capital of France? Answer in one sentence.",
            "--model",
        ])
        .arg(model())
        .output()
        .expect("run radixserve");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stdout.contains("Paris"), "answer: {stdout:?}");
    assert!(stderr.contains("tok/s"), "speed line missing: {stderr:?}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_radixserve"))
        .args(["generate", "--prompt", "hi", "--model", "/nonexistent/model.gguf"])
        .output()
        .expect("run radixserve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/model.gguf") && stderr.contains("no such file"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_radixserve"))
        .args(["generate", "--prompt", "hi", "--temperature=-1", "--model"])
        .arg(model())
        .output()
        .expect("run radixserve");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--temperature"));
}
