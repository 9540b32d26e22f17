//! Runs `testdata/cases.toml` under every page size.

use std::collections::HashMap;

use radix_cache::{Namespace, NodeHandle, RadixCache, SlotAllocator, SlotId};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    ops: Vec<Op>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Count {
    N(usize),
    All(String),
}

#[derive(Deserialize)]
struct Op {
    op: String,
    #[serde(default)]
    key: Vec<u32>,
    expect: Option<usize>,
    expect_cached: Option<usize>,
    name: Option<String>,
    n: Option<Count>,
    total: Option<usize>,
    protected: Option<usize>,
    #[serde(default)]
    ns: u64,
}

fn run_case(case: &Case, page: usize) {
    let at = |c: usize| c / page * page;
    let ctx = |i: usize| format!("case {:?}, page {page}, op {i}", case.name);
    let mut cache = RadixCache::new(page);
    let mut alloc = SlotAllocator::new(1024);
    let mut handles: HashMap<String, NodeHandle> = HashMap::new();
    for (i, op) in case.ops.iter().enumerate() {
        let ns = Namespace(op.ns);
        match op.op.as_str() {
            "insert" => {
                let slots = alloc.allocate(op.key.len()).unwrap();
                let out = cache.insert(ns, &op.key, &slots).unwrap();
                assert_eq!(out.cached_len, at(op.expect_cached.unwrap()), "{}", ctx(i));
                assert_eq!(out.inserted_len, at(op.key.len()), "{}", ctx(i));
                let mut dup: Vec<SlotId> = slots[..out.cached_len].to_vec();
                dup.extend_from_slice(&slots[out.inserted_len..]);
                alloc.free(&dup).unwrap();
            }
            "match" => assert_eq!(cache.match_prefix(ns, &op.key).len, at(op.expect.unwrap()), "{}", ctx(i)),
            "peek" => assert_eq!(cache.peek(ns, &op.key), at(op.expect.unwrap()), "{}", ctx(i)),
            "lock" => {
                let m = cache.match_prefix(ns, &op.key);
                cache.lock(m.node).unwrap();
                handles.insert(op.name.clone().unwrap(), m.node);
            }
            "unlock" => cache.unlock(handles[op.name.as_ref().unwrap()]).unwrap(),
            "unbalanced" => {
                assert!(cache.unlock(handles[op.name.as_ref().unwrap()]).unwrap_err().is_unbalanced(), "{}", ctx(i))
            }
            "stale" => {
                let h = handles[op.name.as_ref().unwrap()];
                assert!(cache.lock(h).unwrap_err().is_stale_handle(), "{}", ctx(i));
                assert!(cache.unlock(h).unwrap_err().is_stale_handle(), "{}", ctx(i));
            }
            "evict" => {
                let n = match op.n.as_ref().unwrap() {
                    Count::N(n) => *n,
                    Count::All(s) if s == "all" => usize::MAX,
                    Count::All(s) => panic!("evict n = {s:?}"),
                };
                let mut out = Vec::new();
                cache.evict(n, &mut out);
                alloc.free(&out).unwrap();
            }
            "size" => {
                assert_eq!(cache.total_size(), at(op.total.unwrap()), "{}", ctx(i));
                assert_eq!(cache.protected_size(), at(op.protected.unwrap()), "{}", ctx(i));
            }
            other => panic!("unknown op {other}"),
        }
        cache.validate().unwrap_or_else(|e| panic!("{}: {e}", ctx(i)));
    }
}

#[test]
fn cases_under_every_page_size() {
    let text = std::fs::read_to_string(manifest_dir().join("testdata/cases.toml")).unwrap();
    let file: File = toml::from_str(&text).unwrap();
    assert!(file.case.len() >= 7);
    for page in [1, 2, 4] {
        for case in &file.case {
            run_case(case, page);
        }
    }
}

/// This crate's folder, read when the test runs (cargo sets it for every run), not baked in at compile time:
/// a test binary reused from another checkout of the same sources must still find this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run through cargo test"))
}
