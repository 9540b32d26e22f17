//! Which JSON Schema keywords keep schemas from compiling: runs schema-to-regex (no DFA) over a folder of
//! MaskBench files and counts the errors by message (`SHOW=<text>` lists the files whose error contains it).
//!
//! `cargo run --release -p grammar --example schema_coverage -- ../shared/maskbench/dev`

use std::collections::BTreeMap;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "../shared/maskbench/dev".into());
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let (mut ok, mut total) = (0, 0);
    // STRICT=1: the server's default; otherwise the spec's reading of additionalProperties, as maskbench runs.
    let opts =
        grammar::json_schema::Options { strict_properties: std::env::var_os("STRICT").is_some(), ..Default::default() };
    for entry in std::fs::read_dir(&dir).expect("a folder of MaskBench files") {
        let path = entry.expect("readable folder").path();
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        total += 1;
        if std::env::var_os("VERBOSE").is_some() {
            eprintln!("{}", path.display());
        }
        match grammar::json_schema::schema_to_regex_with(&doc["schema"], &opts) {
            Ok(_) => ok += 1,
            Err(e) => {
                let msg = e.to_string();
                if std::env::var("SHOW").is_ok_and(|f| msg.contains(&f)) {
                    println!("{}", path.display());
                }
                // Group by the keyword and the reason, not the schema-specific details.
                let key: String = msg.split(['(', '#']).next().unwrap_or(&msg).chars().take(110).collect();
                *errors.entry(key).or_default() += 1;
            }
        }
    }
    let mut v: Vec<_> = errors.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    println!("{ok}/{total} schemas convert");
    for (k, n) in v.iter().take(40) {
        println!("{n:6}  {k}");
    }
}
