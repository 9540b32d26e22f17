//! KV-cache events on the real model: a subscriber decoding them as llm-d's indexer does (pyzmq + msgpack in the
//! project venv) rebuilds, from the stream alone, exactly the set of blocks the radix tree holds, after a random
//! workload with evictions, a `/flush_cache`, and more work.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[test]
fn a_subscriber_rebuilds_the_radix_trees_blocks_from_the_events() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let stop = std::env::temp_dir().join(format!("radixserve-kv-stop-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let python = radixserve_tests::repo_root().join(".venv/bin/python");
    let mut sub = Command::new(python)
        .arg(radixserve_tests::repo_root().join("tests/kv_events_subscriber.py"))
        .arg(&endpoint)
        .arg(&stop)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // The indexer binds; the server connects (an endpoint without a wildcard host).
    let cfg =
        json!({"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": endpoint, "topic": "kv@pod-0@smollm2"})
            .to_string();
    let s = common::start(
        common::args(&["--max-total-tokens", "700", "--page-size", "16", "--kv-events-config", &cfg]),
        true,
    );
    std::thread::sleep(std::time::Duration::from_millis(500)); // ZMQ's slow joiner
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let bases: Vec<String> =
        (0..5).map(|i| format!("Shared context {i}: ") + &"the cache keeps prefixes. ".repeat(30)).collect();
    let run = |rng: &mut rand::rngs::StdRng, n: usize| {
        for i in 0..n {
            let base = &bases[rng.random_range(0..bases.len())];
            let body = json!({"prompt": format!("{base} Question {i}?"), "max_tokens": rng.random_range(1..12),
                              "temperature": 0});
            let (st, v) = s.post("/v1/completions", &body);
            assert_eq!(st, 200, "{v}");
        }
    };
    run(&mut rng, 25);
    let engine = s.engine().unwrap();
    let evicted = engine.stats().unwrap().cache.evicted_tokens;
    assert!(evicted > 0, "the workload evicted (a pool of 700 slots for 5 prefixes of ~200 tokens)");
    let (st, _) = s.post("/flush_cache", &json!({}));
    assert_eq!(st, 200);
    run(&mut rng, 10);
    std::fs::write(&stop, b"").unwrap();
    let report: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    sub.wait().unwrap();
    let _ = std::fs::remove_file(&stop);
    let want: Vec<u64> = engine.kv_blocks().unwrap();
    let got: Vec<u64> = report["blocks"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert!(!want.is_empty());
    assert_eq!(got, want, "the subscriber's blocks are the tree's ({} events)", report["events"]);
    assert_eq!(report["contiguous"], true, "no batch lost: {report}");
    assert_eq!(report["topics"], json!(["kv@pod-0@smollm2"]));
    let (_, m) = s.get("/metrics");
    let text = m.as_str().unwrap();
    let dropped = text.lines().find(|l| l.starts_with("radixserve_kv_events_dropped_total{")).unwrap();
    assert!(dropped.ends_with(" 0"), "{dropped}");
}

/// No subscriber at all (the endpoint refuses): the server loads and serves as usual; the events it cannot hand
/// over are dropped and counted, never waited for.
#[test]
fn an_absent_subscriber_loses_events_and_stalls_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = json!({"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": format!("tcp://127.0.0.1:{port}"),
                     "buffer_steps": 2})
    .to_string();
    let s =
        common::start(common::args(&["--kv-cache-mb", "128", "--page-size", "16", "--kv-events-config", &cfg]), true);
    for i in 0..8 {
        let body = json!({"prompt": format!("{i} ") + &"A prefix of a few pages. ".repeat(10), "max_tokens": 4});
        let (st, v) = s.post("/v1/completions", &body);
        assert_eq!(st, 200, "{v}");
    }
    let (_, m) = s.get("/metrics");
    let text = m.as_str().unwrap();
    let value = |name: &str| -> f64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).unwrap().parse().unwrap()
    };
    assert!(value("radixserve_kv_events_dropped_total{") > 0.0, "dropped events are counted");
}
