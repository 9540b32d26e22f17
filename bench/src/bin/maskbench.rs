//! `make maskbench`: the MaskBench protocol (`../shared/maskbench/README.md`) on a folder of MaskBench files.
//!
//! For each schema: compile and compute the first mask (TTFM); for each test instance, serialize it as Python's
//! `json.dumps(data, ensure_ascii=False)`, tokenize it with the given tokenizer (no special tokens), and for each
//! token compute the mask (TBM) and check the token is in it; then check EOS is allowed at the end. A schema
//! passes when every valid instance is accepted to the end and every invalid one is refused somewhere. One
//! thread. Our engine runs on every schema; outlines-core's own `Index` runs on the first `--outlines-sample`
//! schemas and llguidance (1.9.1, the engine MaskBench's authors wrote; its default JSON options, one thread) on
//! the first `--llguidance-sample`, and ours is reported on the same samples beside them.

/// mimalloc: compiling a grammar builds and drops many small regex and automaton nodes; on a sample of MaskBench
/// schemas it cut compile time by about a fifth against glibc's malloc (noisy, shared machine).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::pyjson;
use clap::Parser;
use grammar::{Grammar, Limits, Matcher, TokenBitset, TokenSpace, Vocabulary};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

#[derive(Debug, Parser)]
struct Args {
    /// A folder of MaskBench `*.json` files.
    #[arg(long, default_value = "../shared/maskbench/dev")]
    data: PathBuf,
    #[arg(long, default_value = "models/llama3/tokenizer.json")]
    tokenizer: PathBuf,
    /// Per-schema time budget (compile + all tests), seconds.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Schemas to run (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Skip this many schemas of the sorted list first.
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Print each schema's file name before compiling it.
    #[arg(long)]
    verbose: bool,
    /// Schemas (from the start of the sorted list) also run through outlines-core's Index (0: none).
    #[arg(long, default_value_t = 100)]
    outlines_sample: usize,
    /// Schemas (from the start of the sorted list) also run through llguidance (0: none).
    #[arg(long, default_value_t = 0)]
    llguidance_sample: usize,
    /// Objects that declare properties take no undeclared keys unless `additionalProperties` says so (the
    /// server's default, like xgrammar's strict mode). Off by default here: MaskBench scores the spec, where an
    /// unspecified `additionalProperties` allows any other key.
    #[arg(long)]
    strict_properties: bool,
    /// Regex of the whitespace between JSON tokens (default: the server's, grammar's DEFAULT_WHITESPACE).
    #[arg(long, default_value = grammar::DEFAULT_WHITESPACE)]
    whitespace: String,
    /// Print every mask that takes longer than this (microseconds) with the output before it, to find slow
    /// states (0: off).
    #[arg(long, default_value_t = 0)]
    trace_slow_us: u64,
    /// Per-schema results, one JSON object per line.
    #[arg(long, default_value = "bench-out/maskbench.jsonl")]
    json_out: PathBuf,
}

/// One engine's compiled schema.
enum Compiled {
    Ours(Arc<Grammar>),
    Outlines(outlines_core::index::Index),
    /// A matcher at the start of the output; each instance runs on a clone (lexer caches shared, as our
    /// grammar's masks are).
    Llg(Box<llguidance::Matcher>),
}

/// The peers' views of the vocabulary.
struct Peers {
    outlines: outlines_core::vocabulary::Vocabulary,
    llg: Option<llguidance::ParserFactory>,
}

/// llguidance's parser factory over the tokens of `tokenizer.json` (its own reading of the file), EOS `eos`.
fn llg_factory(path: &std::path::Path, eos: u32) -> anyhow::Result<llguidance::ParserFactory> {
    use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let words = llguidance::token_bytes_from_tokenizer_json(&json)?;
    let trie = TokTrie::from(&TokRxInfo::new(words.len() as u32, eos), &words);
    let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
    let mut factory = llguidance::ParserFactory::new_simple(&env)?;
    factory.set_stderr_log_level(0);
    Ok(factory)
}

#[derive(Default)]
struct Stats {
    tbm_us: Vec<f64>,
    ttfm_us: Vec<f64>,
    tokens: usize,
    schemas: usize,
    passing: usize,
    compile_errors: usize,
    validation_errors: usize,
    invalidation_errors: usize,
    timeouts: usize,
    /// For each keyword, the schemas using it that had invalidation (admitted an invalid instance) or validation
    /// (refused a valid one) errors: a regression names its cause.
    invalidation_by_keyword: std::collections::BTreeMap<String, usize>,
    validation_by_keyword: std::collections::BTreeMap<String, usize>,
}

/// The assertion and applicator keywords counted by cause (annotations such as `title` or `description` say
/// nothing about a failure; unknown keys are left out).
const KEYWORDS: &[&str] = &[
    "type",
    "enum",
    "const",
    "properties",
    "patternProperties",
    "additionalProperties",
    "required",
    "minProperties",
    "maxProperties",
    "propertyNames",
    "dependencies",
    "dependentRequired",
    "dependentSchemas",
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "minContains",
    "maxContains",
    "minItems",
    "maxItems",
    "uniqueItems",
    "unevaluatedItems",
    "unevaluatedProperties",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "$ref",
    "$dynamicRef",
    "$recursiveRef",
    "contentEncoding",
    "contentMediaType",
];

/// The JSON Schema keywords (of [`KEYWORDS`]) `schema` uses anywhere (names under `properties`, `$defs`... are not
/// keywords; values of `enum`, `const`, `default`, `examples` are data).
fn schema_keywords(schema: &Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if KEYWORDS.contains(&k.as_str()) {
                        out.insert(k.clone());
                    }
                    match k.as_str() {
                        "enum" | "const" | "default" | "examples" => {}
                        "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                            if let Value::Object(named) = child {
                                named.values().for_each(|s| walk(s, out));
                            }
                        }
                        _ => walk(child, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|s| walk(s, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(schema, &mut out);
    out
}

/// `keyword n, keyword n...`, most frequent first.
fn by_keyword(counts: &std::collections::BTreeMap<String, usize>) -> String {
    let mut v: Vec<(&String, &usize)> = counts.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

impl Stats {
    /// The one-line summary `make maskbench` ends with.
    fn summary(&self) -> String {
        let (mut t, mut f) = (self.tbm_us.clone(), self.ttfm_us.clone());
        format!(
            "passing {}/{}, invalidation errors {}, compile errors {}, TBM p50 {:.1} us, TBM p99 {:.0} us, TTFM p50 {:.0} us, TTFM p99 {:.0} us",
            self.passing,
            self.schemas,
            self.invalidation_errors,
            self.compile_errors,
            pct(&mut t, 0.5),
            pct(&mut t, 0.99),
            pct(&mut f, 0.5),
            pct(&mut f, 0.99)
        )
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

impl Stats {
    fn table(&mut self, name: &str) {
        let avg = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        let (ta, fa) = (avg(&self.tbm_us), avg(&self.ttfm_us));
        let t = &mut self.tbm_us;
        let tbm = [ta, pct(t, 0.5), pct(t, 0.75), pct(t, 0.9), pct(t, 0.95), pct(t, 0.99), pct(t, 1.0)];
        let f = &mut self.ttfm_us;
        let ttfm = [fa, pct(f, 0.5), pct(f, 0.75), pct(f, 0.9), pct(f, 0.99), pct(f, 1.0)];
        println!("\n== {name} ==");
        println!(
            "| TBM (us) | avg {:.1} | p50 {:.1} | p75 {:.1} | p90 {:.1} | p95 {:.1} | p99 {:.1} | max {:.1} |",
            tbm[0], tbm[1], tbm[2], tbm[3], tbm[4], tbm[5], tbm[6]
        );
        println!(
            "| TTFM (us) | avg {:.0} | p50 {:.0} | p75 {:.0} | p90 {:.0} | p99 {:.0} | max {:.0} |",
            ttfm[0], ttfm[1], ttfm[2], ttfm[3], ttfm[4], ttfm[5]
        );
        println!(
            "| tokens {} | schemas {} | passing {} ({:.1}%) | compile errors {} | validation errors {} | invalidation errors {} | timeouts {} |",
            self.tokens,
            self.schemas,
            self.passing,
            100.0 * self.passing as f64 / self.schemas.max(1) as f64,
            self.compile_errors,
            self.validation_errors,
            self.invalidation_errors,
            self.timeouts
        );
        println!("| invalidation errors by keyword (schemas) | {} |", by_keyword(&self.invalidation_by_keyword));
        println!("| validation errors by keyword (schemas) | {} |", by_keyword(&self.validation_by_keyword));
    }
}

fn compile(
    engine: &str,
    schema: &Value,
    opts: &grammar::json_schema::Options,
    space: &Arc<TokenSpace>,
    peers: &Peers,
) -> Result<Compiled, String> {
    match engine {
        "ours" => {
            let rx = grammar::json_schema::schema_to_rx(schema, opts).map_err(|e| e.to_string())?;
            Ok(Compiled::Ours(Arc::new(
                Grammar::from_rx(&rx, space.clone(), Limits::default()).map_err(|e| e.to_string())?,
            )))
        }
        "llguidance" => {
            let factory = peers.llg.as_ref().ok_or("llguidance is not set up")?;
            let grammar = llguidance::api::TopLevelGrammar::from_json_schema(schema.clone());
            let m = llguidance::Matcher::new(factory.create_parser(grammar));
            match m.get_error() {
                Some(e) => Err(e),
                None => Ok(Compiled::Llg(Box::new(m))),
            }
        }
        _ => {
            let regex = outlines_core::json_schema::regex_from_value(schema, None, None).map_err(|e| e.to_string())?;
            outlines_core::index::Index::new(&regex, &peers.outlines).map(Compiled::Outlines).map_err(|e| e.to_string())
        }
    }
}

/// Feeds `tokens`; returns whether every token was allowed and EOS was allowed at the end. Pushes mask times.
fn run_instance(c: &Compiled, tokens: &[u32], eos: u32, space: &TokenSpace, tbm: &mut Vec<f64>, slow: f64) -> bool {
    let vocab_len = space.vocab.len();
    let mut mask = TokenBitset::new(vocab_len);
    match c {
        Compiled::Ours(g) => {
            let mut m = Matcher::new(g.clone());
            for (i, &t) in tokens.iter().chain(std::iter::once(&eos)).enumerate() {
                let t0 = Instant::now();
                m.mask_into(&mut mask);
                let us = t0.elapsed().as_secs_f64() * 1e6;
                tbm.push(us);
                if slow > 0.0 && us > slow {
                    let before: Vec<u8> =
                        tokens[..i].iter().flat_map(|&t| space.vocab.bytes(t).unwrap_or_default().to_vec()).collect();
                    let before = String::from_utf8_lossy(&before);
                    let tail: String = before.chars().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
                    eprintln!("slow mask {us:.0} us after {tail:?}");
                }
                if !mask.contains(t) || m.advance(t).is_err() {
                    return false;
                }
            }
            true
        }
        Compiled::Outlines(index) => {
            let mut state = index.initial_state();
            for (i, &t) in tokens.iter().chain(std::iter::once(&eos)).enumerate() {
                let t0 = Instant::now();
                mask.clear();
                for &a in index.allowed_tokens_iter(&state).into_iter().flatten() {
                    mask.set(a);
                }
                tbm.push(t0.elapsed().as_secs_f64() * 1e6);
                if !mask.contains(t) {
                    return false;
                }
                if i == tokens.len() {
                    return true;
                }
                match index.next_state(&state, &t) {
                    Some(s) => state = s,
                    None => return false,
                }
            }
            true
        }
        Compiled::Llg(start) => {
            let mut m = (**start).clone();
            for (i, &t) in tokens.iter().chain(std::iter::once(&eos)).enumerate() {
                let t0 = Instant::now();
                // EOS is in the mask when the output may end here.
                let mask = m.compute_mask_or_eos();
                tbm.push(t0.elapsed().as_secs_f64() * 1e6);
                if !mask.is_ok_and(|mask| mask.is_allowed(t)) {
                    return false;
                }
                if i == tokens.len() {
                    return true;
                }
                if m.consume_token(t).is_err() {
                    return false;
                }
            }
            true
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tok =
        Tokenizer::from_file(&args.tokenizer).map_err(|e| anyhow::anyhow!("{}: {e}", args.tokenizer.display()))?;
    let eos = tok
        .token_to_id("<|eot_id|>")
        .or_else(|| tok.token_to_id("<|end_of_text|>"))
        .or_else(|| tok.token_to_id("</s>"))
        .ok_or_else(|| anyhow::anyhow!("no EOS token"))?;
    let space = TokenSpace::new(Vocabulary::from_tokenizer(&tok, &[eos])?);
    let vocab_len = space.vocab.len();
    let mut ovocab = outlines_core::vocabulary::Vocabulary::new(eos);
    for id in 0..vocab_len as u32 {
        if let Some(b) = space.vocab.bytes(id) {
            ovocab.try_insert(b.to_vec(), id).map_err(|e| anyhow::anyhow!("outlines vocabulary: {e}"))?;
        }
    }
    let llg = if args.llguidance_sample > 0 { Some(llg_factory(&args.tokenizer, eos)?) } else { None };
    let peers = Peers { outlines: ovocab, llg };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.data)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files.drain(..args.start.min(files.len()));
    if args.limit > 0 {
        files.truncate(args.limit);
    }
    if let Some(dir) = args.json_out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args.json_out)?);
    let mut ours = Stats::default();
    let mut ours_sample = Stats::default();
    let mut outl = Stats::default();
    let mut ours_llg_sample = Stats::default();
    let mut llg = Stats::default();
    let budget = Duration::from_secs(args.timeout);
    let opts = grammar::json_schema::Options {
        strict_properties: args.strict_properties,
        whitespace: args.whitespace.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    for (i, path) in files.iter().enumerate() {
        if args.verbose {
            eprintln!("{}", path.display());
        }
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let schema = &doc["schema"];
        let tests: Vec<(bool, Vec<u32>)> = doc["tests"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|t| {
                let text = pyjson::dumps(&t["data"]);
                let ids = tok.encode(text.as_str(), false).map(|e| e.get_ids().to_vec()).unwrap_or_default();
                (t["valid"].as_bool().unwrap_or(false), ids)
            })
            .collect();
        let mut engines = vec!["ours"];
        if i < args.outlines_sample {
            engines.push("outlines");
        }
        if i < args.llguidance_sample {
            engines.push("llguidance");
        }
        for engine in engines {
            let t0 = Instant::now();
            let compiled = compile(engine, schema, &opts, &space, &peers);
            if args.trace_slow_us > 0 {
                eprintln!("{}", path.display());
            }
            let mut record = json!({"file": path.file_name().and_then(|f| f.to_str()), "engine": engine});
            let mut st = Stats { schemas: 1, ..Stats::default() };
            match compiled {
                Err(e) => {
                    st.compile_errors = 1;
                    record["error"] = json!(e);
                }
                Ok(c) => {
                    // TTFM: compile plus the first mask.
                    let mut first = Vec::new();
                    run_instance(&c, &[], eos, &space, &mut first, 0.0);
                    let ttfm = t0.elapsed().as_secs_f64() * 1e6;
                    st.ttfm_us.push(ttfm);
                    record["ttfm_us"] = json!(ttfm);
                    let mut ok = true;
                    for (valid, ids) in &tests {
                        if t0.elapsed() > budget {
                            st.timeouts = 1;
                            ok = false;
                            break;
                        }
                        st.tokens += ids.len();
                        let accepted = run_instance(&c, ids, eos, &space, &mut st.tbm_us, args.trace_slow_us as f64);
                        match (valid, accepted) {
                            (true, false) => {
                                st.validation_errors += 1;
                                ok = false;
                            }
                            (false, true) => {
                                st.invalidation_errors += 1;
                                ok = false;
                            }
                            _ => {}
                        }
                    }
                    if ok {
                        st.passing = 1;
                    }
                    let keywords = schema_keywords(schema);
                    if st.invalidation_errors > 0 {
                        keywords.iter().for_each(|k| *st.invalidation_by_keyword.entry(k.clone()).or_default() += 1);
                    }
                    if st.validation_errors > 0 {
                        keywords.iter().for_each(|k| *st.validation_by_keyword.entry(k.clone()).or_default() += 1);
                    }
                    if st.invalidation_errors + st.validation_errors > 0 {
                        record["keywords"] = json!(keywords);
                    }
                    record["passing"] = json!(ok);
                    record["validation_errors"] = json!(st.validation_errors);
                    record["invalidation_errors"] = json!(st.invalidation_errors);
                    record["timeout"] = json!(st.timeouts > 0);
                }
            }
            serde_json::to_writer(&mut out, &record)?;
            std::io::Write::write_all(&mut out, b"\n")?;
            let targets: Vec<&mut Stats> = match engine {
                "ours" => {
                    let mut t = vec![&mut ours];
                    if i < args.outlines_sample {
                        t.push(&mut ours_sample);
                    }
                    if i < args.llguidance_sample {
                        t.push(&mut ours_llg_sample);
                    }
                    t
                }
                "llguidance" => vec![&mut llg],
                _ => vec![&mut outl],
            };
            for agg in targets {
                agg.tbm_us.extend_from_slice(&st.tbm_us);
                agg.ttfm_us.extend_from_slice(&st.ttfm_us);
                agg.tokens += st.tokens;
                agg.schemas += st.schemas;
                agg.passing += st.passing;
                agg.compile_errors += st.compile_errors;
                agg.validation_errors += st.validation_errors;
                agg.invalidation_errors += st.invalidation_errors;
                agg.timeouts += st.timeouts;
                for (k, n) in &st.invalidation_by_keyword {
                    *agg.invalidation_by_keyword.entry(k.clone()).or_default() += n;
                }
                for (k, n) in &st.validation_by_keyword {
                    *agg.validation_by_keyword.entry(k.clone()).or_default() += n;
                }
            }
        }
        if (i + 1) % 250 == 0 {
            eprintln!(
                "{} / {} schemas, {:.0}s, passing so far {}",
                i + 1,
                files.len(),
                started.elapsed().as_secs_f64(),
                ours.passing
            );
        }
    }
    let n_sample = args.outlines_sample.min(files.len());
    if n_sample > 0 {
        ours_sample.table(&format!("radixserve grammar, first {n_sample} schemas"));
        outl.table(&format!("outlines-core Index, same {n_sample} schemas"));
    }
    let n_llg = args.llguidance_sample.min(files.len());
    if n_llg > 0 && n_llg < files.len() {
        ours_llg_sample.table(&format!("radixserve grammar, first {n_llg} schemas"));
    }
    if n_llg > 0 {
        llg.table(&format!("llguidance 1.9.1, {} {n_llg} schemas", if n_llg < files.len() { "first" } else { "all" }));
    }
    ours.table(&format!("radixserve grammar, all {} schemas", files.len()));
    println!("results: {}", args.json_out.display());
    if n_llg > 0 {
        println!("llguidance: {}", llg.summary());
    }
    println!("{}", ours.summary());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_the_schemas_not_its_property_names_or_data() {
        let schema = json!({"type": "object", "properties": {"maxLength": {"type": "string", "maxLength": 3},
                            "params": {"type": "object", "maxProperties": 0}},
                            "enum": [{"pattern": "x"}], "$defs": {"a": {"anyOf": [{"minimum": 1}]}}});
        let k: Vec<String> = schema_keywords(&schema).into_iter().collect();
        assert_eq!(k, ["anyOf", "enum", "maxLength", "maxProperties", "minimum", "properties", "type"]);
        let mut counts = std::collections::BTreeMap::new();
        counts.insert("type".to_string(), 2);
        counts.insert("maxProperties".to_string(), 5);
        assert_eq!(by_keyword(&counts), "maxProperties 5, type 2");
    }
}
