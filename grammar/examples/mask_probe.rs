//! Times the masks along one output of one schema: each state's first mask (nothing cached) and the same again
//! on a fresh grammar with its DFA states already built, to split determinizing from walking.
//!
//! `cargo run --release -p grammar --example mask_probe -- <tokenizer.json> '<schema>' '<output>'`

use std::sync::Arc;
use std::time::Instant;

use grammar::{Grammar, Limits, Matcher, TokenBitset, TokenSpace, Vocabulary};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tok = tokenizers::Tokenizer::from_file(&args[1]).expect("tokenizer.json");
    let space = TokenSpace::new(Vocabulary::from_tokenizer(&tok, &[]).expect("vocabulary"));
    println!("trie nodes {}", space.trie.node_count());
    let schema: serde_json::Value = serde_json::from_str(&args[2]).expect("schema JSON");
    let rx = grammar::json_schema::schema_to_rx(
        &schema,
        &grammar::json_schema::Options {
            strict_properties: std::env::var_os("STRICT").is_some(),
            ..Default::default()
        },
    )
    .expect("schema compiles");
    let ids = tok.encode(args[3].as_str(), false).expect("encodes").get_ids().to_vec();
    let g = Arc::new(Grammar::from_rx(&rx, space.clone(), Limits::default()).expect("grammar"));
    let mut mask = TokenBitset::new(space.vocab.len());
    let passes: usize = std::env::var("PASSES").ok().and_then(|p| p.parse().ok()).unwrap_or(2);
    for pass in 0..passes {
        let mut m = Matcher::new(g.clone());
        let mut times = Vec::new();
        for &t in &ids {
            let t0 = Instant::now();
            m.mask_into(&mut mask);
            times.push(t0.elapsed().as_micros());
            if m.advance(t).is_err() {
                println!("token {t} refused");
                break;
            }
        }
        if pass < 2 {
            println!("pass {pass}: {times:?}");
        }
        g.clear_masks();
    }
}
