//! Splits time to first mask into its parts over a folder of MaskBench files: schema to regex tree, regex to
//! automaton, first mask. Prints the medians and the slowest schemas.
//!
//! `cargo run --release -p bench --example ttfm_probe -- <folder> models/llama3/tokenizer.json`

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use grammar::{Grammar, Limits, Matcher, TokenBitset, TokenSpace, Vocabulary};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tok = tokenizers::Tokenizer::from_file(&args[2]).expect("tokenizer.json");
    let space = TokenSpace::new(Vocabulary::from_tokenizer(&tok, &[]).expect("vocabulary"));
    let opts = grammar::json_schema::Options { strict_properties: false, ..Default::default() };
    let mut files: Vec<_> =
        std::fs::read_dir(&args[1]).expect("folder").filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let mut rows = Vec::new();
    for path in files {
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // REPEAT=n: compile n times first (for profiling).
        for _ in 0..std::env::var("REPEAT").ok().and_then(|r| r.parse().ok()).unwrap_or(0) {
            if let Ok(rx) = grammar::json_schema::schema_to_rx(&doc["schema"], &opts) {
                let _ = Grammar::from_rx(&rx, space.clone(), Limits::default());
            }
        }
        let t0 = Instant::now();
        let Ok(rx) = grammar::json_schema::schema_to_rx(&doc["schema"], &opts) else { continue };
        let t1 = Instant::now();
        let Ok(g) = Grammar::from_rx(&rx, space.clone(), Limits::default()) else { continue };
        let t2 = Instant::now();
        let mut mask = TokenBitset::new(space.vocab.len());
        Matcher::new(Arc::new(g)).mask_into(&mut mask);
        let t3 = Instant::now();
        let us = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e6;
        rows.push((
            us(t0, t3),
            us(t0, t1),
            us(t1, t2),
            us(t2, t3),
            path.file_name().unwrap().to_string_lossy().into_owned(),
        ));
    }
    let n = rows.len();
    let med = |i: usize| {
        let mut v: Vec<f64> = rows.iter().map(|r| [r.0, r.1, r.2, r.3][i]).collect();
        v.sort_by(f64::total_cmp);
        v[n / 2]
    };
    println!(
        "{n} schemas; medians (us): total {:.0}, tree {:.0}, automaton {:.0}, first mask {:.0}",
        med(0),
        med(1),
        med(2),
        med(3)
    );
    let sum = |i: usize| rows.iter().map(|r| [r.0, r.1, r.2, r.3][i]).sum::<f64>() / 1e3;
    println!("sums (ms): total {:.0}, tree {:.0}, automaton {:.0}, first mask {:.0}", sum(0), sum(1), sum(2), sum(3));
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    // ALL=1: every schema, not the ten around the median.
    let all = std::env::var("ALL").is_ok();
    for r in rows.iter().skip(if all { 0 } else { n.saturating_sub(10) / 2 }).take(if all { n } else { 10 }) {
        println!("{:>9.0} {:>9.0} {:>9.0} {:>9.0}  {}", r.0, r.1, r.2, r.3, r.4);
    }
}
