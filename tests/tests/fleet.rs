//! What a fleet's routers read, on the real model: SGLang's metadata routes, the model-server protocol's metrics
//! (true at every scrape under load), the render routes, and two replicas behind the SGLang Model Gateway
//! (`sglang-router`, pinned in the project venv) with `cache_aware` routing.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{args, start, user};
use serde_json::{json, Value};

/// The value of a series of `/metrics` whose line starts with `prefix` (name and labels up to the value).
fn series(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[test]
fn sglang_metadata_and_render_routes_say_what_is_true() {
    let s = start(args(&["--kv-cache-mb", "256", "--page-size", "16", "--max-running-requests", "7"]), true);
    let (_, models) = s.get("/v1/models");
    let id = models["data"][0]["id"].as_str().unwrap().to_string();
    let (st, mi) = s.get("/model_info");
    assert_eq!(st, 200);
    assert_eq!(mi["served_model_name"], id.as_str());
    assert_eq!((mi["is_generation"].as_bool(), mi["model_type"].as_str()), (Some(true), Some("llama")));
    assert_eq!(mi["architectures"], json!(["LlamaForCausalLM"]));
    assert!(mi["model_path"].as_str().unwrap().ends_with(".gguf"));
    assert_eq!(s.get("/get_model_info").1, mi);
    let (st, si) = s.get("/server_info");
    assert_eq!(st, 200);
    let (_, m) = s.get("/metrics");
    let slots = series(m.as_str().unwrap(), "radixserve_kv_slots_total{").unwrap();
    assert_eq!(si["max_total_tokens"].as_f64(), Some(slots));
    assert_eq!(si["max_total_num_tokens"].as_f64(), Some(slots));
    assert_eq!((si["page_size"].as_u64(), si["max_running_requests"].as_u64()), (Some(16), Some(7)));
    assert_eq!(si["served_model_name"], id.as_str());
    assert_eq!(si["context_length"], models["data"][0]["max_model_len"]);
    assert_eq!(s.get("/get_server_info").1["max_total_tokens"], si["max_total_tokens"]);
    assert_eq!(s.get("/health_generate").0, 200);
    let blocks = format!(
        "vllm:cache_config_info{{model_name=\"{id}\",block_size=\"16\",num_gpu_blocks=\"{}\"}}",
        slots as u64 / 16
    );
    assert_eq!(series(m.as_str().unwrap(), &blocks), Some(1.0), "{blocks}");

    // Render: the prompt and ids a request would get, and nothing generated.
    let (st, r) = s.post("/v1/chat/completions/render", &json!({"messages": user("What is 2+2?")}));
    assert_eq!(st, 200, "{r}");
    let (_, c) = s.post("/v1/chat/completions", &json!({"messages": user("What is 2+2?"), "max_tokens": 1}));
    assert_eq!(r["token_ids"].as_array().unwrap().len() as u64, c["usage"]["prompt_tokens"].as_u64().unwrap());
    assert!(r["prompt"].as_str().unwrap().contains("What is 2+2?"));
    let (st, r) = s.post("/v1/completions/render", &json!({"prompt": ["Hello there", "Bye"]}));
    assert_eq!(st, 200, "{r}");
    let (_, t) = s.post("/tokenize", &json!({"prompt": "Hello there"}));
    assert_eq!(r[0]["token_ids"], t["tokens"]);
    assert_eq!(r.as_array().unwrap().len(), 2);
    let (st, e) = s.post("/v1/completions/render", &json!({"prompt": ""}));
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("prompt")), "{e}");
}

#[test]
fn protocol_metrics_are_true_at_every_scrape_under_load() {
    let s = start(args(&["--kv-cache-mb", "256", "--max-running-requests", "2"]), true);
    let (_, models) = s.get("/v1/models");
    let id = models["data"][0]["id"].as_str().unwrap().to_string();
    // One scrape, every series read from it.
    let scrape = || {
        let (_, m) = s.get("/metrics");
        let text = m.as_str().unwrap().to_string();
        let id = id.clone();
        move |name: &str| series(&text, &format!("{name}{{model_name=\"{id}\"}}")).unwrap()
    };
    let read = |name: &str| scrape()(name);
    let n = 5;
    let (mut saw_waiting, mut saw_full) = (false, false);
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..n)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    let body = json!({"messages": user(&format!("Story {i}.")), "max_tokens": 48, "ignore_eos": true});
                    assert_eq!(s.post("/v1/chat/completions", &body).0, 200);
                })
            })
            .collect();
        let t0 = Instant::now();
        while clients.iter().any(|c| !c.is_finished()) && t0.elapsed() < Duration::from_secs(120) {
            let m = scrape();
            let (waiting, running, usage, old) = (
                m("vllm:num_requests_waiting"),
                m("vllm:num_requests_running"),
                m("vllm:kv_cache_usage_perc"),
                m("vllm:gpu_cache_usage_perc"),
            );
            assert!(running <= 2.0, "running {running} above --max-running-requests");
            assert!(waiting + running <= n as f64, "waiting {waiting} + running {running} > {n} sent");
            assert!((0.0..=1.0).contains(&usage) && usage == old, "usage {usage} / {old}");
            if running > 0.0 {
                assert!(usage > 0.0, "requests run in no KV slots?");
            }
            saw_waiting |= waiting >= 1.0;
            saw_full |= running == 2.0;
            std::thread::sleep(Duration::from_millis(20));
        }
        for c in clients {
            c.join().unwrap();
        }
    });
    assert!(saw_waiting && saw_full, "the load was seen: waiting {saw_waiting}, full batch {saw_full}");
    // Idle: nothing waiting, nothing running, no slot held (the cache's are evictable).
    let t0 = Instant::now();
    while read("vllm:num_requests_running") != 0.0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = scrape();
    assert_eq!(
        (m("vllm:num_requests_waiting"), m("vllm:num_requests_running"), m("vllm:kv_cache_usage_perc")),
        (0.0, 0.0, 0.0)
    );
}

struct Router(Child);

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn router(workers: &[&str], policy: &str) -> (Router, String) {
    let port = free_port();
    let python = radixserve_tests::repo_root().join(".venv/bin/python");
    let child = Command::new(python)
        .args(["-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--policy", policy, "--worker-urls"])
        .args(workers)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sglang-router (make setup installs it)");
    (Router(child), format!("http://127.0.0.1:{port}"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn post(base: &str, body: &Value) -> (u16, Value) {
    match agent()
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .send(body.to_string())
    {
        Ok(mut r) => {
            let st = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (st, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

#[test]
fn two_replicas_behind_the_sglang_gateway_route_by_prefix_and_survive_one_dying() {
    let a = start(args(&["--kv-cache-mb", "256"]), true);
    let b = start(args(&["--kv-cache-mb", "256"]), true);
    let (_, models) = a.get("/v1/models");
    let id = models["data"][0]["id"].as_str().unwrap().to_string();
    let (_router, base) = router(&[&a.base, &b.base], "cache_aware");
    // The gateway registers both workers with the real model id.
    let t0 = Instant::now();
    loop {
        let got =
            agent().get(format!("{base}/v1/models")).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok());
        if got.as_deref().is_some_and(|t| t.contains(&format!("\"{id}\""))) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the gateway never listed {id}: {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Four groups sharing long prefixes: after a group's first request, its others find the prefix cached (the
    // gateway sent them to the replica that holds it).
    let groups: Vec<String> = (0..4)
        .map(|g| {
            format!("Document {g}. ") + &format!("Topic {g} sentence about caching prefixes in servers. ").repeat(40)
        })
        .collect();
    let mut worst = f64::MAX;
    for round in 0..3 {
        for (g, prefix) in groups.iter().enumerate() {
            let body = json!({"model": id, "prompt": format!("{prefix}Question {round}: summarize."), "max_tokens": 2,
                              "temperature": 0});
            let (st, v) = post(&base, &body);
            assert_eq!(st, 200, "group {g} round {round}: {v}");
            if round > 0 {
                let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_f64().unwrap();
                let prompt = v["usage"]["prompt_tokens"].as_f64().unwrap();
                worst = worst.min(cached / prompt);
            }
        }
    }
    assert!(worst >= 0.9, "a repeated group's request found only {:.0}% of its prompt cached", worst * 100.0);

    // One replica dies mid-run: every request that comes back is served; the other replica keeps serving.
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (base, id) = (&base, &id);
                scope.spawn(move || {
                    post(
                        base,
                        &json!({"model": id, "prompt": format!("Count to {i}:"), "max_tokens": 24, "ignore_eos": true}),
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        drop(b); // the replica's runtime, listener and connections go at once
        handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    // The gateway retries what the dead replica dropped: none is lost.
    let lost: Vec<&(u16, Value)> = results.iter().filter(|(st, _)| *st != 200).collect();
    assert!(lost.is_empty(), "requests lost when a replica died: {lost:?}");
    for _ in 0..6 {
        let (st, v) = post(&base, &json!({"model": id, "prompt": "After the failure:", "max_tokens": 4}));
        assert_eq!(st, 200, "the surviving replica serves: {v}");
    }
    drop(a);
}
