//! A real radixserve server on a loopback port with the real model, and a small HTTP client for it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::sync::OnceLock;

use frontend::server::{RunningServer, ServeArgs};
use serde_json::Value;

pub const KEY: &str = "test-key-123";

pub struct Server {
    pub base: String,
    pub model: String,
    _rt: tokio::runtime::Runtime,
    _server: RunningServer,
}

/// A fresh folder for one server's stored responses (each server needs its own).
pub fn state_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("radixserve-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Server arguments: the chat model, port 0, its own state folder (unless `extra` names one), then `extra`.
pub fn args(extra: &[&str]) -> ServeArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let model = radixserve_tests::model_path();
    let mut argv =
        vec!["radixserve".to_string(), "--model".into(), model.display().to_string(), "--port".into(), "0".into()];
    if !extra.contains(&"--state-dir") {
        argv.extend(["--state-dir".to_string(), state_dir().display().to_string()]);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    <Cli as clap::Parser>::parse_from(argv).serve
}

/// Starts a server in this process (its own runtime); waits for the model unless `wait` is false.
pub fn start(args: ServeArgs, wait: bool) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = rt.block_on(frontend::server::start(args)).unwrap();
    if wait {
        rt.block_on(server.wait_ready()).unwrap();
    }
    let base = format!("http://{}", server.addr);
    Server { base, model: String::new(), _rt: rt, _server: server }
}

/// The id of the embedding model the shared server serves beside the chat model.
pub const EMBED_ID: &str = "minilm";

/// The shared server of a test binary: the chat model (first, 512 MiB of KV cache) and all-MiniLM-L6-v2 as
/// `minilm`, API key set.
pub fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| shared(&[]))
}

/// The same server with f32 weights (`--weights f32`), for tests whose assertions need outputs that do not depend on
/// the batch or the cache (the same seed gives the same text streamed or not, with n = 2, on a cache hit): the
/// quantized default's int8 decode kernels round activations, and rounding spreads the f32 summation-order
/// differences between such paths into different tokens at near-ties (as in llama.cpp).
#[allow(dead_code)]
pub fn exact_server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| shared(&["--weights", "f32"]))
}

fn shared(extra: &[&str]) -> Server {
    let embed = format!("{EMBED_ID}={}", radixserve_tests::embed_model_path().display());
    let mut argv = vec!["--api-key", KEY, "--kv-cache-mb", "512", "--max-body-bytes", "1048576", "--model", &embed];
    argv.extend_from_slice(extra);
    let mut s = start(args(&argv), true);
    let (st, v) = s.get("/v1/models");
    assert_eq!(st, 200);
    s.model = v["data"][0]["id"].as_str().unwrap().to_string();
    s
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

impl Server {
    /// The first chat model's engine (the scheduler's own view, for checks against what the API says).
    pub fn engine(&self) -> Option<runtime::EngineHandle> {
        self._server.chat_engine()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST JSON with the API key; (status, body as JSON or as a string value).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string(), Some(KEY))
    }

    pub fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = agent().post(self.url(path)).header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("authorization", &format!("Bearer {k}"));
        }
        let mut resp = req.send(body).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut resp = agent().get(self.url(path)).header("authorization", &format!("Bearer {KEY}")).call().unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// POST with `stream: true`; returns the `data:` payloads (the last is `[DONE]`).
    pub fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let resp = agent()
            .post(self.url(path))
            .header("content-type", "application/json")
            .header("authorization", &format!("Bearer {KEY}"))
            .send(body.to_string())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let reader = BufReader::new(resp.into_body().into_reader());
        reader
            .lines()
            .map(|l| l.unwrap())
            .filter_map(|l| l.strip_prefix("data:").map(|d| d.trim_start().to_string()))
            .collect()
    }

    /// Chat completion with the shared model; asserts 200.
    pub fn chat(&self, mut body: Value) -> Value {
        body["model"] = Value::String(self.model.clone());
        let (st, v) = self.post("/v1/chat/completions", &body);
        assert_eq!(st, 200, "{v}");
        v
    }
}

pub fn user(text: &str) -> Value {
    serde_json::json!([{"role": "user", "content": text}])
}

pub fn weather_tool() -> Value {
    serde_json::json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 40},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city", "unit"],
                "additionalProperties": false
            }
        }
    })
}

pub fn time_tool() -> Value {
    serde_json::json!({
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a timezone",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string", "maxLength": 40}},
                "required": ["timezone"],
                "additionalProperties": false
            }
        }
    })
}

/// Validates `instance` against `schema`.
pub fn validates(schema: &Value, instance: &Value) -> bool {
    jsonschema::validator_for(schema).unwrap().is_valid(instance)
}
