//! The server's life: 503 until the model is loaded, 503 when the queue is full (and serving again after), clients
//! that leave before their first token, the checks at the edge over raw HTTP, and the real `radixserve serve` binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{args, start, user};
use serde_json::json;

#[test]
fn health_is_503_until_ready_and_a_full_queue_answers_503() {
    let s = start(args(&["--max-running-requests", "1", "--max-queued-requests", "1", "--kv-cache-mb", "256"]), false);
    let (st, v) = s.get("/health");
    assert_eq!(st, 503, "the model cannot be loaded this fast: {v}");
    assert_eq!(s.post("/v1/chat/completions", &json!({"messages": user("hi")})).0, 503);
    let t0 = std::time::Instant::now();
    while s.get("/health").0 != 200 {
        assert!(t0.elapsed().as_secs() < 120, "model never became ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // One running, one queued: the rest of a burst is turned away with 503, and nothing crashes.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let (st, v) = s.post(
                        "/v1/chat/completions",
                        &json!({"messages": user("Write a long story."), "max_tokens": 40, "ignore_eos": true}),
                    );
                    if st == 503 {
                        assert_eq!(v["error"]["code"], "server_overloaded", "{v}");
                    }
                    st
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.iter().all(|&s| s == 200 || s == 503), "{statuses:?}");
    assert_eq!(s.post("/v1/chat/completions", &json!({"messages": user("Say hi."), "max_tokens": 4})).0, 200);
}

/// The binary `make serve` runs: it prints its address, answers, and stops on a signal.
/// The `radixserve` binary serving the model on a free port with its own state folder and `extra` options, once
/// it says it is ready: the process and its base URL.
fn spawn_binary(extra: &[&str]) -> (std::process::Child, String) {
    // Test binaries live in target/<profile>/deps; the server binary one folder up.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("radixserve");
    assert!(bin.exists(), "{} is missing: build the workspace binaries first (make test does)", bin.display());
    let mut child = Command::new(&bin)
        .args(["serve", "--model"])
        .arg(radixserve_tests::model_path())
        .args(["--port", "0", "--kv-cache-mb", "256", "--state-dir"])
        .arg(common::state_dir())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first.strip_prefix("radixserve listening on ").unwrap_or_else(|| panic!("{first}")).to_string();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.contains("ready"), "{ready}");
    (child, base)
}

#[test]
fn the_radixserve_binary_serves() {
    let (mut child, base) = spawn_binary(&[]);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(
            json!({"messages": user("What is the capital of France? Answer in one sentence."), "max_tokens": 20, "temperature": 0})
                .to_string(),
        )
        .unwrap();
    let body = resp.body_mut().read_to_string().unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{body}");
    assert!(body.contains("Paris"), "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `make serve`'s own command line (`make -n serve`), run as make would run it: the server comes up with both
/// models and the chat model carries SmolLM2's sampling defaults. (A comma inside make's `$(if ...)` once cut the
/// defaults' JSON short, and the binary refused to start.)
#[test]
fn make_serve_starts_both_models() {
    let root = radixserve_tests::repo_root();
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("radixserve");
    let out = Command::new("make")
        .current_dir(&root)
        .args(["-n", "-s", "serve", "PORT=0"])
        .arg(format!("BIN={}", bin.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(" serve --model")).unwrap_or_else(|| panic!("no serve line: {text}"));
    let state = common::state_dir();
    let mut child = Command::new("sh")
        .current_dir(&root)
        .arg("-c")
        .arg(format!("exec {line} --kv-cache-mb 256 --state-dir '{}'", state.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().map(|l| l.unwrap()).unwrap_or_else(|| panic!("`{line}` printed nothing"));
    let base = first.strip_prefix("radixserve listening on ").unwrap_or_else(|| panic!("{first}")).to_string();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.contains("ready"), "{ready}");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let body = agent.get(format!("{base}/v1/models")).call().unwrap().body_mut().read_to_string().unwrap();
    let models: serde_json::Value = serde_json::from_str(&body).unwrap();
    let data = models["data"].as_array().unwrap();
    let chat = data.iter().find(|m| m["kind"] == "chat").unwrap_or_else(|| panic!("{body}"));
    assert_eq!(chat["sampling_defaults"], json!({"temperature": 0.2, "top_p": 0.9}), "{body}");
    assert!(data.iter().any(|m| m["kind"] == "embedding"), "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Sends `head` (request line and headers, without the blank line) and `body` over a new connection; returns the
/// status, the headers (lower case) and the body.
fn raw(base: &str, head: &str, body: &str) -> (u16, String, String) {
    let mut c = TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    write!(c, "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// The sum of the engine's step sizes: prompt and generated tokens computed so far.
fn computed_tokens(s: &common::Server) -> f64 {
    metric(s, "radixserve_step_tokens_sum")
}

/// A series of the (one) served model: `name` is the family, optionally with `{label="value"}` (the `model` label
/// every engine series carries is matched whatever its value).
fn metric(s: &common::Server, name: &str) -> f64 {
    let (family, label) = match name.split_once('{') {
        Some((f, l)) => (f, l.trim_end_matches('}')),
        None => (name, ""),
    };
    let (_, m) = s.get("/metrics");
    m.as_str()
        .unwrap()
        .lines()
        .find(|l| l.strip_prefix(family).is_some_and(|rest| rest.starts_with("{model=\"") && rest.contains(label)))
        .and_then(|l| l.split_whitespace().last())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Clients that leave 0.3 s into a long prompt's prefill, streamed or not, are cancelled there: the engine does not
/// go on computing their prompts for nobody (it used to compute every one of them to its first token).
#[test]
fn clients_that_leave_before_their_first_token_are_cancelled() {
    let s = start(args(&["--kv-cache-mb", "512", "--chunked-prefill-size", "256"]), true);
    let aborts = || metric(&s, "radixserve_requests_total{finish_reason=\"abort\"}");
    let before = (aborts(), computed_tokens(&s));
    let prompt_tokens = 4 * 3000;
    let conns: Vec<TcpStream> = (0..4)
        .map(|i| {
            // Distinct prompts of about 3,000 tokens: nothing to share through the cache.
            let text = format!("{i} ").repeat(1500);
            let body = json!({"messages": user(&text), "max_tokens": 8, "stream": i % 2 == 0}).to_string();
            let mut c = TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
            write!(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", common::KEY, body.len()).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(conns);
    let t0 = Instant::now();
    while aborts() < before.0 + 4.0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the requests were not cancelled");
        std::thread::sleep(Duration::from_millis(50));
    }
    let computed = computed_tokens(&s) - before.1;
    assert!(computed < prompt_tokens as f64 / 2.0, "computed {computed} of {prompt_tokens} prompt tokens for nobody");
    // Still serving.
    assert_eq!(s.post("/v1/chat/completions", &json!({"messages": user("Say hi."), "max_tokens": 4})).0, 200);
}

/// What the edge answers, each in OpenAI's error shape: 415 for a body that is not declared JSON, 403 for a
/// `Host` not served on loopback, 431 for oversized headers, and `Retry-After` on a full queue's 503.
#[test]
fn the_edge_answers_in_the_openai_shape() {
    let s = start(args(&["--max-running-requests", "1", "--max-queued-requests", "1", "--kv-cache-mb", "256"]), true);
    let chat = json!({"messages": user("Say hi."), "max_tokens": 2}).to_string();
    let post = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1";
    let error = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()["error"].clone();
    let (st, _, body) = raw(&s.base, &format!("{post}\r\nContent-Type: text/plain"), &chat);
    assert_eq!((st, error(&body)["code"].as_str()), (415, Some("unsupported_media_type")), "{body}");
    let (st, _, body) = raw(&s.base, &format!("{post}\r\nOrigin: https://attacker.example"), &chat);
    assert_eq!(st, 415, "a browser's typeless body: {body}");
    let (st, _, body) = raw(&s.base, &format!("{post}\r\nContent-Type: application/json; charset=utf-8"), &chat);
    assert_eq!(st, 200, "{body}");
    let (st, _, body) = raw(&s.base, post, &chat);
    assert_eq!(st, 200, "a script that sends no type: {body}");
    let (st, _, body) = raw(
        &s.base,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: attacker.example:30000\r\nContent-Type: application/json",
        &chat,
    );
    assert_eq!((st, error(&body)["code"].as_str()), (403, Some("host_not_allowed")), "{body}");
    let big = format!("{post}\r\nX-Big: {}", "a".repeat(100 << 10));
    let (st, _, body) = raw(&s.base, &big, &chat);
    assert_eq!((st, error(&body)["code"].as_str()), (431, Some("request_header_fields_too_large")), "{body}");
    let many: String = (0..200).map(|i| format!("\r\nX-H{i}: v")).collect();
    let (st, _, body) = raw(&s.base, &format!("{post}{many}"), &chat);
    assert_eq!(st, 431, "{body}");
    // One running and one waiting: a third request is turned away with a hint when to retry.
    // Long enough (1,000 tokens: seconds even at batch-1 decode speed) that the queue is seen full.
    let long = json!({"messages": user("Write a long story."), "max_tokens": 1000, "ignore_eos": true}).to_string();
    let typed = format!("{post}\r\nContent-Type: application/json");
    let saw_retry = std::thread::scope(|scope| {
        // The first streams, so its tokens prove it was admitted. (Polling the running gauge instead, a read right
        // after the earlier request can still show that one running, and the second request then arrived before
        // the first was admitted and was turned away as the queue's second. The first chunk, the role, may go out
        // before admission: wait for two more.)
        let (admitted, first_token) = std::sync::mpsc::channel();
        let (base, typed) = (&s.base, &typed);
        let first = scope.spawn(move || {
            let body = json!({"messages": user("Write a long story."), "max_tokens": 1000, "ignore_eos": true,
                              "stream": true})
            .to_string();
            let mut c = TcpStream::connect(base.trim_start_matches("http://")).unwrap();
            write!(c, "{typed}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
            let mut lines = BufReader::new(c).lines();
            let status = lines.next().and_then(|l| l.ok()?.split_whitespace().nth(1)?.parse::<u16>().ok());
            let mut chunks = 0;
            for line in lines.map_while(Result::ok) {
                if line.starts_with("data:") {
                    chunks += 1;
                    if chunks == 3 {
                        admitted.send(()).unwrap();
                    }
                }
            }
            status.unwrap_or(0)
        });
        first_token.recv_timeout(Duration::from_secs(60)).expect("the first request streams tokens");
        let second = scope.spawn(|| raw(base, typed, &long));
        let t0 = Instant::now();
        while metric(&s, "radixserve_num_queued_requests") < 1.0 {
            assert!(!second.is_finished(), "the second request was not queued: {:?}", second.join().unwrap());
            assert!(t0.elapsed() < Duration::from_secs(60), "the second request was not seen queued");
            std::thread::sleep(Duration::from_millis(10));
        }
        let (st, head, body) = raw(base, typed, &chat);
        assert_eq!((st, error(&body)["code"].as_str()), (503, Some("server_overloaded")), "a third request: {body}");
        assert_eq!((first.join().unwrap(), second.join().unwrap().0), (200, 200), "admitted requests finish");
        head
    });
    assert!(saw_retry.contains("\r\nretry-after: 1"), "a 503 with Retry-After: {saw_retry}");
}

/// A request that leaves sampling unset gets the server's defaults (`make serve` gives SmolLM2 its model card's
/// temperature 0.2 and top_p 0.9), shown on `/v1/models`: seed for seed, it is sampled exactly as a request that
/// sets those values, and a field the request sets wins.
#[test]
fn unset_sampling_fields_take_the_served_defaults() {
    // f32 weights: "seed for seed" compares requests that meet the prompt cold and cached.
    let defaults = r#"{"temperature": 0.2, "top_p": 0.9}"#;
    let s = start(args(&["--kv-cache-mb", "256", "--sampling-defaults", defaults, "--weights", "f32"]), true);
    let (_, models) = s.get("/v1/models");
    assert_eq!(models["data"][0]["sampling_defaults"], json!({"temperature": 0.2, "top_p": 0.9}), "{models}");
    let answer = |extra: serde_json::Value| {
        let mut body = json!({"messages": user("What is the capital of France?"), "max_tokens": 24});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (st, v) = s.post("/v1/chat/completions", &body);
        assert_eq!(st, 200, "{v}");
        v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    };
    let mut differs = 0;
    for seed in 0..4 {
        let unset = answer(json!({"seed": seed}));
        assert_eq!(unset, answer(json!({"seed": seed, "temperature": 0.2, "top_p": 0.9})), "seed {seed}");
        differs += usize::from(unset != answer(json!({"seed": seed, "temperature": 1.5, "top_p": 1.0})));
    }
    assert!(differs > 0, "the request's own values win");
}

/// SIGTERM under load: readiness goes 503 at once and new work gets 503 with `Retry-After`, liveness stays 200,
/// every admitted request finishes, and the process exits 0.
#[test]
fn sigterm_drains_then_exits_zero() {
    let (mut child, base) = spawn_binary(&["--shutdown-grace-s", "60"]);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let get = |path: &str| agent.get(format!("{base}{path}")).call().unwrap().status().as_u16();
    let post = |stream: bool| {
        let body =
            json!({"messages": user("Tell a long story."), "max_tokens": 64, "ignore_eos": true, "stream": stream});
        let mut r = agent
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap();
        let retry = r.headers().get("retry-after").is_some();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap(), retry)
    };
    std::thread::scope(|scope| {
        let running: Vec<_> = (0..4).map(|i| scope.spawn(move || post(i % 2 == 0))).collect();
        // Let them be admitted, then SIGTERM.
        std::thread::sleep(Duration::from_millis(500));
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(get("/health"), 503, "readiness fails while draining");
        assert_eq!(get("/live"), 200, "liveness holds while draining");
        let (st, body, retry) = post(false);
        assert_eq!((st, retry), (503, true), "{body}");
        for r in running {
            let (st, body, _) = r.join().unwrap();
            assert_eq!(st, 200, "an admitted request finishes: {body}");
            assert!(body.contains("\"completion_tokens\":64") || body.contains("[DONE]"), "{body}");
        }
    });
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status after draining");
}
