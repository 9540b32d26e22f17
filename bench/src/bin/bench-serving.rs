//! `bench-serving`: a load generator for any OpenAI-compatible server, in the spirit of SGLang's
//! `bench_serving` and vLLM's `bench serve`.
//!
//! Datasets: `random` (random token prompts), `generated-shared-prefix` (groups sharing a long system prompt,
//! SGLang's workload), `json-schema` (chat requests with `response_format` from a folder of MaskBench files) and
//! `tools` (chat requests with tools and `tool_choice: required`). Requests stream; TTFT, ITL, TPOT and latency
//! are measured client-side; token counts come from the server's `usage` when it reports one (otherwise output
//! tokens are counted as streamed chunks). Results print as a table and append as one JSON line per run.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dataset {
    Random,
    GeneratedSharedPrefix,
    JsonSchema,
    Tools,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:30000")]
    base_url: String,
    #[arg(long)]
    api_key: Option<String>,
    /// Name of the system under test in the results.
    #[arg(long, default_value = "radixserve")]
    label: String,
    #[arg(long, value_enum, default_value = "generated-shared-prefix")]
    dataset: Dataset,
    #[arg(long, default_value_t = 32)]
    num_prompts: usize,
    /// Poisson arrival rate in requests/s (default: all at once).
    #[arg(long)]
    request_rate: Option<f64>,
    #[arg(long, default_value_t = 32)]
    max_concurrency: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests sent (one at a time) before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Ask the server to ignore EOS so outputs have the requested length.
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 256)]
    random_input_len: usize,
    #[arg(long, default_value_t = 64)]
    random_output_len: usize,
    /// Lengths are drawn from [ratio * len, len].
    #[arg(long, default_value_t = 1.0)]
    random_range_ratio: f64,
    #[arg(long, default_value_t = 4)]
    gsp_num_groups: usize,
    #[arg(long, default_value_t = 8)]
    gsp_prompts_per_group: usize,
    #[arg(long, default_value_t = 768)]
    gsp_system_prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    gsp_question_len: usize,
    #[arg(long, default_value_t = 16)]
    gsp_output_len: usize,
    /// Folder of MaskBench files for `json-schema`.
    #[arg(long, default_value = "../shared/maskbench/dev")]
    schema_dir: PathBuf,
    /// How `json-schema` requests carry the schema: `openai` (`response_format` json_schema) or `json-object`
    /// (`{"type": "json_object", "schema": ...}`, the only form llama-cpp-python's server accepts).
    #[arg(long, default_value = "openai")]
    schema_style: String,
    /// `json-schema` prompts show the schema when its JSON text is at most this long.
    #[arg(long, default_value_t = 12000)]
    schema_prompt_max_chars: usize,
    /// max_tokens of structured requests.
    #[arg(long, default_value_t = 384)]
    structured_output_len: usize,
    /// A GGUF (or tokenizer.json) whose tokenizer builds prompts of the requested token lengths.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    tokenizer: PathBuf,
    /// Append the summary as one JSON line here.
    #[arg(long)]
    output_jsonl: Option<PathBuf>,
    /// Write every request's output here, one JSON line each (what was asked, finish reason, whether it validated
    /// and why not, the text).
    #[arg(long)]
    outputs_jsonl: Option<PathBuf>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// A JSON object whose fields are added to (or replace) every request's body, as SGLang's bench_serving
    /// does: sampling settings such as `{"temperature": 0.7, "seed": 1}` or `{"frequency_penalty": 0.5}`.
    #[arg(long, value_parser = parse_object)]
    extra_request_body: Option<serde_json::Map<String, Value>>,
}

fn parse_object(s: &str) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_str(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What a request checks its output against.
#[derive(Clone)]
enum Check {
    None,
    Schema(Value),
    Tools(Value),
}

#[derive(Clone)]
struct Job {
    /// Where the request came from (the schema file of `json-schema` requests), for the outputs file.
    source: String,
    path: &'static str,
    body: Value,
    prompt_tokens: usize,
    check: Check,
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    error: Option<String>,
    ttft: f64,
    itl: Vec<f64>,
    e2e: f64,
    prompt_tokens: usize,
    output_tokens: usize,
    usage_reported: bool,
    cached_tokens: Option<usize>,
    valid: Option<bool>,
    /// Why a structured output did not validate.
    invalid_reason: Option<String>,
    finish_reason: Option<String>,
    /// The output text (tool calls as `name(arguments)`).
    text: String,
}

fn load_tokenizer(path: &PathBuf) -> anyhow::Result<tokenizers::Tokenizer> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let g = kernels::gguf::GgufFile::open(path)?;
        Ok(kernels::tokenizer::from_gguf(&g)?.0)
    } else {
        tokenizers::Tokenizer::from_file(path).map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// Text of about `n` tokens of random ordinary words (decoded random token ids, like SGLang's random dataset).
fn random_text(tok: &tokenizers::Tokenizer, rng: &mut StdRng, n: usize) -> String {
    let vocab = tok.get_vocab_size(false) as u32;
    let ids: Vec<u32> = (0..n).map(|_| rng.random_range(vocab / 50..vocab * 4 / 5)).collect();
    tok.decode(&ids, true).unwrap_or_default()
}

fn count(tok: &tokenizers::Tokenizer, text: &str) -> usize {
    tok.encode(text, false).map(|e| e.len()).unwrap_or(0)
}

fn build_jobs(a: &Args, model: &str, tok: &tokenizers::Tokenizer) -> anyhow::Result<Vec<Job>> {
    let mut rng = StdRng::seed_from_u64(a.seed);
    let completion = |prompt: String, max_tokens: usize, tok: &tokenizers::Tokenizer| Job {
        source: String::new(),
        path: "/v1/completions",
        prompt_tokens: count(tok, &prompt),
        body: json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": a.ignore_eos}),
        check: Check::None,
    };
    let mut jobs = Vec::new();
    match a.dataset {
        Dataset::Random => {
            for _ in 0..a.num_prompts {
                let lo = |n: usize| ((n as f64 * a.random_range_ratio) as usize).clamp(1, n);
                let inp = rng.random_range(lo(a.random_input_len)..=a.random_input_len);
                let out = rng.random_range(lo(a.random_output_len)..=a.random_output_len);
                let p = random_text(tok, &mut rng, inp);
                jobs.push(completion(p, out, tok));
            }
        }
        Dataset::GeneratedSharedPrefix => {
            let systems: Vec<String> =
                (0..a.gsp_num_groups).map(|_| random_text(tok, &mut rng, a.gsp_system_prompt_len)).collect();
            for _ in 0..a.gsp_prompts_per_group {
                for sys in &systems {
                    let q = random_text(tok, &mut rng, a.gsp_question_len);
                    jobs.push(completion(format!("{sys}\n{q}"), a.gsp_output_len, tok));
                }
            }
            jobs.shuffle(&mut rng);
        }
        Dataset::JsonSchema => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&a.schema_dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            files.shuffle(&mut rng);
            for f in files.into_iter().take(a.num_prompts) {
                let doc: Value = serde_json::from_str(&std::fs::read_to_string(&f)?)?;
                let schema = doc["schema"].clone();
                // The schema goes in the prompt as well, as in vLLM's structured-output benchmark (MaskBench's
                // descriptions only name the file); past the size limit the model only gets the constraint.
                let text = schema.to_string();
                let ask = if text.len() <= a.schema_prompt_max_chars {
                    format!("Generate a JSON document that follows this JSON schema:\n{text}")
                } else {
                    "Generate a JSON document for the schema you are given.".to_string()
                };
                let messages = json!([
                    {"role": "system", "content": "You answer with JSON only."},
                    {"role": "user", "content": ask}
                ]);
                let response_format = if a.schema_style == "json-object" {
                    json!({"type": "json_object", "schema": schema})
                } else {
                    json!({"type": "json_schema", "json_schema": {"name": "out", "schema": schema}})
                };
                jobs.push(Job {
                    source: f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string(),
                    path: "/v1/chat/completions",
                    prompt_tokens: 0,
                    body: json!({"model": model, "messages": messages, "max_tokens": a.structured_output_len, "temperature": 0.0,
                        "response_format": response_format}),
                    check: Check::Schema(schema),
                });
            }
        }
        Dataset::Tools => {
            let cities = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Perth", "Quito", "Seoul"];
            let tools = json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
                {"type": "function", "function": {"name": "search_flights", "description": "Flights between two cities on a date",
                    "parameters": {"type": "object", "properties": {"from": {"type": "string", "maxLength": 40}, "to": {"type": "string", "maxLength": 40},
                        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}, "required": ["from", "to", "date"], "additionalProperties": false}}}
            ]);
            for i in 0..a.num_prompts {
                let (c1, c2) = (cities[i % cities.len()], cities[(i * 3 + 1) % cities.len()]);
                let q = if i % 2 == 0 {
                    format!("What's the weather in {c1}?")
                } else {
                    format!("Find flights from {c1} to {c2} on 2026-12-0{}.", 1 + i % 9)
                };
                jobs.push(Job {
                    source: q.clone(),
                    path: "/v1/chat/completions",
                    prompt_tokens: 0,
                    body: json!({"model": model, "messages": [{"role": "user", "content": q}], "tools": tools,
                        "tool_choice": "required", "max_tokens": a.structured_output_len, "temperature": 0.0}),
                    check: Check::Tools(tools.clone()),
                });
            }
        }
    }
    Ok(jobs)
}

fn agent(timeout: u64) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(timeout)))
        .build()
        .into()
}

/// Sends one streaming request and measures it.
fn run_one(a: &Args, job: &Job) -> Outcome {
    let mut out = Outcome { prompt_tokens: job.prompt_tokens, ..Default::default() };
    let mut body = job.body.clone();
    for (k, v) in a.extra_request_body.iter().flatten() {
        body[k] = v.clone();
    }
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let t0 = Instant::now();
    let mut req =
        agent(a.timeout).post(format!("{}{}", a.base_url, job.path)).header("content-type", "application/json");
    if let Some(k) = &a.api_key {
        req = req.header("authorization", &format!("Bearer {k}"));
    }
    let resp = match req.send(body.to_string()) {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(format!("connection: {e}"));
            return out;
        }
    };
    let status = resp.status().as_u16();
    if status != 200 {
        let text = resp.into_body().read_to_string().unwrap_or_default();
        let msg: String = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or(text)
            .chars()
            .take(120)
            .collect();
        out.error = Some(format!("HTTP {status}: {msg}"));
        return out;
    }
    let mut text = String::new();
    let mut args: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut last = t0;
    let mut chunks = 0usize;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let Ok(line) = line else {
            out.error = Some("stream cut".into());
            return out;
        };
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
        if data == "[DONE]" {
            break;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
        if let Some(e) = v.get("error") {
            out.error = Some(format!("stream error: {e}"));
            return out;
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            out.usage_reported = true;
            out.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            out.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
            out.cached_tokens = u["prompt_tokens_details"]["cached_tokens"].as_u64().map(|c| c as usize);
        }
        let Some(c) = v["choices"].get(0) else { continue };
        if let Some(f) = c["finish_reason"].as_str() {
            out.finish_reason = Some(f.to_string());
        }
        let piece = c["text"].as_str().or_else(|| c["delta"]["content"].as_str()).unwrap_or("");
        let mut got = !piece.is_empty();
        text.push_str(piece);
        if let Some(calls) = c["delta"]["tool_calls"].as_array() {
            for d in calls {
                let k = d["index"].as_u64().unwrap_or(0) as usize;
                while args.len() <= k {
                    args.push(String::new());
                    names.push(String::new());
                }
                if let Some(n) = d["function"]["name"].as_str() {
                    names[k] = n.to_string();
                }
                if let Some(x) = d["function"]["arguments"].as_str() {
                    args[k].push_str(x);
                    got |= !x.is_empty();
                }
            }
        }
        if got {
            let now = Instant::now();
            if chunks == 0 {
                out.ttft = (now - t0).as_secs_f64();
            } else {
                out.itl.push((now - last).as_secs_f64());
            }
            last = now;
            chunks += 1;
        }
    }
    out.e2e = t0.elapsed().as_secs_f64();
    out.text = text.clone();
    for (n, x) in names.iter().zip(&args) {
        out.text.push_str(&format!("{n}({x})"));
    }
    if !out.usage_reported {
        out.output_tokens = chunks;
    }
    out.valid = match &job.check {
        Check::None => None,
        Check::Schema(s) => Some(match serde_json::from_str::<Value>(&text) {
            Err(e) => {
                out.invalid_reason = Some(format!("does not parse ({e}), finish_reason {:?}", out.finish_reason));
                false
            }
            Ok(doc) => match jsonschema::validator_for(s) {
                Err(e) => {
                    out.invalid_reason = Some(format!("validator cannot compile the schema: {e}"));
                    false
                }
                Ok(v) => {
                    let errs: Vec<String> = v.iter_errors(&doc).take(1).map(|e| e.to_string()).collect();
                    if let Some(e) = errs.first() {
                        out.invalid_reason =
                            Some(format!("does not validate: {}", e.chars().take(150).collect::<String>()));
                    }
                    errs.is_empty()
                }
            },
        }),
        Check::Tools(tools) => Some(
            !args.is_empty()
                && args.iter().zip(&names).all(|(a, n)| {
                    let params = tools
                        .as_array()
                        .and_then(|ts| ts.iter().find(|t| t["function"]["name"] == n.as_str()))
                        .map(|t| t["function"]["parameters"].clone());
                    match (params, serde_json::from_str::<Value>(a)) {
                        (Some(p), Ok(doc)) => jsonschema::validator_for(&p).is_ok_and(|v| v.is_valid(&doc)),
                        _ => false,
                    }
                }),
        ),
    };
    out
}

fn stats(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!({"mean": null, "median": null, "p99": null});
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] * 1e3;
    json!({"mean": v.iter().sum::<f64>() / v.len() as f64 * 1e3, "median": q(0.5), "p99": q(0.99)})
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let (st, models) = {
        let mut req = agent(30).get(format!("{}/v1/models", a.base_url));
        if let Some(k) = &a.api_key {
            req = req.header("authorization", &format!("Bearer {k}"));
        }
        let mut r = req.call()?;
        (r.status().as_u16(), r.body_mut().read_to_string()?)
    };
    anyhow::ensure!(st == 200, "GET /v1/models answered {st}: {models}");
    let models: Value = serde_json::from_str(&models)?;
    let model = models["data"][0]["id"].as_str().ok_or_else(|| anyhow::anyhow!("no model in /v1/models"))?.to_string();
    let tok = load_tokenizer(&a.tokenizer)?;
    let jobs = build_jobs(&a, &model, &tok)?;
    let ds = format!("{:?}", a.dataset).to_lowercase();
    eprintln!("{}: {} requests of {ds} to {} ({model})", a.label, jobs.len(), a.base_url);
    // Warm-up with prompts of its own, so it neither pre-fills the cache for measured requests nor skews hits.
    for (i, j) in jobs.iter().take(a.warmup).enumerate() {
        let mut w = j.clone();
        w.body["max_tokens"] = json!(4);
        let text = format!("Warm-up request {i}: say hello.");
        if w.body.get("prompt").is_some() {
            w.body["prompt"] = json!(text);
        } else {
            w.body["messages"] = json!([{"role": "user", "content": text}]);
        }
        run_one(&a, &w);
    }
    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(a.label.clone());
    let mut rng = StdRng::seed_from_u64(a.seed ^ 0xA11CE);
    let mut at = 0.0f64;
    let arrivals: Vec<f64> = jobs
        .iter()
        .map(|_| {
            let t = at;
            if let Some(r) = a.request_rate {
                at += -rng.random::<f64>().max(1e-12).ln() / r;
            }
            t
        })
        .collect();
    let slots = Arc::new((Mutex::new(a.max_concurrency.max(1)), Condvar::new()));
    let t0 = Instant::now();
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .zip(&arrivals)
            .map(|(job, &t)| {
                let (slots, bar, a) = (slots.clone(), bar.clone(), &a);
                s.spawn(move || {
                    let wait = t - t0.elapsed().as_secs_f64();
                    if wait > 0.0 {
                        std::thread::sleep(Duration::from_secs_f64(wait));
                    }
                    {
                        let (m, cv) = &*slots;
                        let mut free = cv.wait_while(m.lock().unwrap(), |f| *f == 0).unwrap();
                        *free -= 1;
                    }
                    let o = run_one(a, job);
                    let (m, cv) = &*slots;
                    *m.lock().unwrap() += 1;
                    cv.notify_one();
                    bar.inc(1);
                    o
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let dur = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_none()).collect();
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for o in outcomes.iter().filter_map(|o| o.error.as_ref()) {
        *reasons.entry(o.clone()).or_default() += 1;
    }
    let mut invalid: std::collections::BTreeMap<String, usize> = Default::default();
    for o in outcomes.iter().filter_map(|o| o.invalid_reason.as_ref()) {
        *invalid.entry(o.clone()).or_default() += 1;
    }
    let input: usize = ok.iter().map(|o| o.prompt_tokens).sum();
    let output: usize = ok.iter().map(|o| o.output_tokens).sum();
    let cached: Option<usize> = ok.iter().map(|o| o.cached_tokens).sum();
    let tpot: Vec<f64> =
        ok.iter().filter(|o| o.output_tokens > 1).map(|o| (o.e2e - o.ttft) / (o.output_tokens - 1) as f64).collect();
    let checked: Vec<bool> =
        outcomes.iter().filter_map(|o| if o.error.is_some() && o.valid.is_none() { None } else { o.valid }).collect();
    let structured = matches!(a.dataset, Dataset::JsonSchema | Dataset::Tools);
    let summary = json!({
        "label": a.label, "dataset": ds, "model": model, "base_url": a.base_url,
        "num_prompts": jobs.len(), "completed": ok.len(), "failed": outcomes.len() - ok.len(), "failures": reasons, "invalid": invalid,
        "max_concurrency": a.max_concurrency, "request_rate": a.request_rate,
        "extra_request_body": a.extra_request_body,
        "duration_s": dur,
        "request_throughput": ok.len() as f64 / dur,
        "input_throughput": input as f64 / dur,
        "output_throughput": output as f64 / dur,
        "total_token_throughput": (input + output) as f64 / dur,
        "total_input_tokens": input, "total_output_tokens": output,
        "usage_reported": ok.iter().all(|o| o.usage_reported),
        "cache_hit_rate": cached.map(|c| c as f64 / input.max(1) as f64),
        "ttft_ms": stats(ok.iter().filter(|o| o.output_tokens > 0 && o.ttft > 0.0).map(|o| o.ttft).collect()),
        "tpot_ms": stats(tpot),
        "itl_ms": stats(ok.iter().flat_map(|o| o.itl.iter().copied()).collect()),
        "e2e_ms": stats(ok.iter().map(|o| o.e2e).collect()),
        "valid_share": if structured { json!(checked.iter().filter(|&&v| v).count() as f64 / outcomes.len().max(1) as f64) } else { Value::Null },
        "valid_of_stopped": if structured {
            let stopped: Vec<&&Outcome> = ok.iter().filter(|o| o.finish_reason.as_deref() != Some("length")).collect();
            json!(stopped.iter().filter(|o| o.valid == Some(true)).count() as f64 / stopped.len().max(1) as f64)
        } else { Value::Null },
        "valid_of_completed": if structured { json!(ok.iter().filter(|o| o.valid == Some(true)).count() as f64 / ok.len().max(1) as f64) } else { Value::Null },
    });
    print_table(&summary);
    if let Some(p) = &a.outputs_jsonl {
        let mut f = std::io::BufWriter::new(std::fs::File::create(p)?);
        for (job, o) in jobs.iter().zip(&outcomes) {
            let line = json!({"label": a.label, "source": job.source, "error": o.error, "finish_reason": o.finish_reason,
                "output_tokens": o.output_tokens, "valid": o.valid, "invalid_reason": o.invalid_reason, "text": o.text});
            writeln!(f, "{line}")?;
        }
    }
    if let Some(p) = &a.output_jsonl {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
        writeln!(f, "{summary}")?;
    }
    Ok(())
}

fn print_table(s: &Value) {
    let f = |v: &Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.2}"));
    println!(
        "============ Serving Benchmark Result: {} / {} ============",
        s["label"].as_str().unwrap_or(""),
        s["dataset"].as_str().unwrap_or("")
    );
    println!("{:<40}{}", "Successful requests:", s["completed"]);
    println!("{:<40}{}", "Failed requests:", s["failed"]);
    if let Some(m) = s["failures"].as_object() {
        for (k, v) in m {
            println!("  {v} x {k}");
        }
    }
    if let Some(m) = s["invalid"].as_object() {
        for (k, v) in m {
            println!("  invalid: {v} x {k}");
        }
    }
    println!("{:<40}{}", "Benchmark duration (s):", f(&s["duration_s"]));
    println!("{:<40}{}", "Total input tokens:", s["total_input_tokens"]);
    println!(
        "{:<40}{}{}",
        "Total generated tokens:",
        s["total_output_tokens"],
        if s["usage_reported"] == true { "" } else { " (counted as streamed chunks)" }
    );
    println!("{:<40}{}", "Request throughput (req/s):", f(&s["request_throughput"]));
    println!("{:<40}{}", "Input token throughput (tok/s):", f(&s["input_throughput"]));
    println!("{:<40}{}", "Output token throughput (tok/s):", f(&s["output_throughput"]));
    println!("{:<40}{}", "Total token throughput (tok/s):", f(&s["total_token_throughput"]));
    println!(
        "{:<40}{}",
        "Cache hit rate:",
        s["cache_hit_rate"].as_f64().map_or("n/a (not reported)".into(), |x| format!("{:.1}%", x * 100.0))
    );
    for (name, key) in [("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E latency", "e2e_ms")] {
        println!(
            "{:<40}{} / {} / {}",
            format!("{name} mean/median/p99 (ms):"),
            f(&s[key]["mean"]),
            f(&s[key]["median"]),
            f(&s[key]["p99"])
        );
    }
    if !s["valid_share"].is_null() {
        println!(
            "{:<40}{:.1}% of all, {:.1}% of completed, {:.1}% of those not cut by max_tokens",
            "Outputs that parse and validate:",
            s["valid_share"].as_f64().unwrap_or(0.0) * 100.0,
            s["valid_of_completed"].as_f64().unwrap_or(0.0) * 100.0,
            s["valid_of_stopped"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
}
