//! Why a MaskBench schema fails: compiles it, then walks each test instance byte by byte and prints where a valid
//! instance is refused (or that an invalid one is accepted).
//!
//! `cargo run --release -p bench --example schema_debug -- ../shared/maskbench/dev/<file>.json ...`

use std::sync::Arc;

use grammar::{Grammar, Limits, Matcher, TokenSpace, Vocabulary};

fn main() {
    // One token per byte, EOS last: the walk reports the exact byte where the output leaves the language.
    let tokens: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).chain([None]).collect();
    let space = TokenSpace::new(Vocabulary::from_bytes(tokens, &[256]));
    for path in std::env::args().skip(1) {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("file")).expect("json");
        println!("== {path}");
        // As `maskbench` scores it: the spec's reading of an unspecified additionalProperties.
        let opts = grammar::json_schema::Options { strict_properties: false, ..Default::default() };
        let compiled = grammar::json_schema::schema_to_rx(&doc["schema"], &opts)
            .and_then(|rx| Grammar::from_rx(&rx, space.clone(), Limits::default()));
        let g = match compiled {
            Ok(g) => Arc::new(g),
            Err(e) => {
                println!("compile error: {e}");
                continue;
            }
        };
        for t in doc["tests"].as_array().into_iter().flatten() {
            let valid = t["valid"].as_bool().unwrap_or(false);
            let text = bench::pyjson::dumps(&t["data"]);
            let mut m = Matcher::new(g.clone());
            let mut refused_at = None;
            for (i, b) in text.bytes().enumerate() {
                if m.advance(b as u32).is_err() {
                    refused_at = Some(i);
                    break;
                }
            }
            let accepted = refused_at.is_none() && m.is_accepting();
            if accepted != valid {
                let at = refused_at.unwrap_or(text.len());
                let lo = at.saturating_sub(120);
                let hi = (at + 60).min(text.len());
                let safe = |i: usize| (0..=i).rev().find(|&j| text.is_char_boundary(j)).unwrap_or(0);
                println!(
                    "{} instance {} at byte {at}: ...{}<<HERE>>{}...",
                    if valid { "valid" } else { "invalid" },
                    if valid { "refused" } else { "accepted" },
                    &text[safe(lo)..safe(at)],
                    &text[safe(at)..safe(hi)]
                );
            }
        }
    }
}
