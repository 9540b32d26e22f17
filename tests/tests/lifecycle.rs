//! The server's life: 503 until the model is loaded, 503 when the queue is full (and serving again after), and
//! the real `radixserve serve` binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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
#[test]
fn the_radixserve_binary_serves() {
    // Test binaries live in target/<profile>/deps; the server binary one folder up.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("radixserve");
    assert!(bin.exists(), "{} is missing: build the workspace binaries first (make test does)", bin.display());
    let mut child = Command::new(&bin)
        .args(["serve", "--model"])
        .arg(radixserve_tests::model_path())
        .args(["--port", "0", "--kv-cache-mb", "256"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first.strip_prefix("radixserve listening on ").unwrap_or_else(|| panic!("{first}")).to_string();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.contains("ready"), "{ready}");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(
            json!({"messages": user("What is the capital of France?"), "max_tokens": 20, "temperature": 0}).to_string(),
        )
        .unwrap();
    let body = resp.body_mut().read_to_string().unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{body}");
    assert!(body.contains("Paris"), "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
}
