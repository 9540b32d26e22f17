//! Shared helpers for the workspace's tests, and (in `tests/`) the end-to-end tests over HTTP.

use std::path::PathBuf;

/// The repository root, read at run time: the target folder is shared between checkouts, so a path baked in at
/// compile time could name another checkout.
pub fn repo_root() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run through cargo test");
    PathBuf::from(dir).join("..")
}

/// The real model the tests run on: `RADIXSERVE_MODEL`, or the SmolLM2 GGUF that `make test` fetches.
pub fn model_path() -> PathBuf {
    std::env::var_os("RADIXSERVE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// The embedding model the tests run on: `RADIXSERVE_EMBED_MODEL`, or the all-MiniLM-L6-v2 folder that `make test`
/// fetches.
pub fn embed_model_path() -> PathBuf {
    std::env::var_os("RADIXSERVE_EMBED_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/all-MiniLM-L6-v2"))
}
