//! The official `openai` Python SDK, LangChain's `ChatOpenAI` and instructor (installed in the project venv by
//! `make test`) against the real server.

mod common;

use std::process::Command;

fn run_smoke(script: &str) {
    let s = common::server();
    let root = radixserve_tests::repo_root();
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `make setup` (make test does)", python.display());
    let out = Command::new(python).arg(root.join("tests").join(script)).arg(&s.base).arg(common::KEY).output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains("all passed"), "{log}");
}

#[test]
fn the_openai_python_sdk_works_unchanged() {
    run_smoke("openai_smoke.py");
}

#[test]
fn langchain_chat_openai_works_unchanged() {
    run_smoke("langchain_smoke.py");
}

#[test]
fn instructor_tools_mode_works_unchanged() {
    run_smoke("instructor_smoke.py");
}

#[test]
fn embeddings_with_the_sdk_and_langchain_and_a_rag_round_trip() {
    run_smoke("embeddings_smoke.py");
}

#[test]
fn the_responses_api_with_the_sdk_and_the_agents_sdk() {
    run_smoke("responses_smoke.py");
}

/// schemathesis (its own venv, set up by `make test`) fuzzes the embeddings and Responses routes from our OpenAPI
/// document: no input gives a 5xx.
#[test]
fn schemathesis_finds_no_server_error_on_the_embeddings_and_responses_routes() {
    let s = common::server();
    let cache = std::env::var_os("RADIXSERVE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/radixserve"));
    let st = cache.join("schemathesis-venv/bin/schemathesis");
    assert!(st.exists(), "{} is missing: run `make setup` (make test does)", st.display());
    let out = Command::new(st)
        .args(["run", &format!("{}/openapi.json", s.base), "--experimental=openapi-3.1"])
        .args(["--checks", "not_a_server_error", "--hypothesis-max-examples", "60", "--hypothesis-deadline=None"])
        .args(["--hypothesis-seed", "7", "--endpoint", "^/v1/(responses|embeddings)"])
        .args(["-H", &format!("Authorization: Bearer {}", common::KEY)])
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains("not_a_server_error") && log.contains("5 passed"), "{log}");
}
