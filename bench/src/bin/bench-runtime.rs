//! `make bench-runtime`: the engine's three headline ratios, each measured side by side in one run on the real
//! model.
//!
//! 1. Shared prefix (SGLang's generated-shared-prefix workload): `groups` x `prompts` requests, each a long
//!    group system prompt plus a short question, all submitted at once; throughput with the radix cache on vs off.
//! 2. Batched decode: generated tokens/s with 32 concurrent requests vs one.
//! 3. Constrained decoding: tokens/s of JSON-schema-constrained requests vs unconstrained ones at the same batch
//!    size and output length.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use grammar::{Constraint, GrammarCache, Limits, TokenSpace, Vocabulary};
use kernels::{LoadOptions, Model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime::{EngineHandle, ModelExecutor, Request, SamplingParams, SchedulerConfig};
use tokenizers::Tokenizer;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Shared-prefix workload: groups, prompts per group, system prompt / question / output tokens.
    #[arg(long, default_value_t = 4)]
    groups: usize,
    #[arg(long, default_value_t = 8)]
    prompts_per_group: usize,
    #[arg(long, default_value_t = 768)]
    system_len: usize,
    #[arg(long, default_value_t = 32)]
    question_len: usize,
    #[arg(long, default_value_t = 16)]
    output_len: usize,
    /// Decode comparison: output tokens per request.
    #[arg(long, default_value_t = 64)]
    decode_len: usize,
    /// Constrained comparison: batch size and output tokens.
    #[arg(long, default_value_t = 16)]
    constrained_batch: usize,
    #[arg(long, default_value_t = 96)]
    constrained_len: usize,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

struct Setup {
    args: Args,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
}

impl Setup {
    fn engine(&self, cfg: SchedulerConfig) -> anyhow::Result<EngineHandle> {
        let opts = LoadOptions { threads: self.args.threads, ..LoadOptions::default() };
        let model = Model::load(&self.args.model, opts, &mut |_, _| {})?;
        let exec = ModelExecutor::new(model.net, 16384)?;
        Ok(runtime::start(exec, cfg, self.tokenizer.clone(), self.eos.clone())?)
    }
}

/// Runs every request concurrently; returns (seconds, generated tokens, cached prompt tokens, prompt tokens).
fn run(e: &EngineHandle, reqs: Vec<Request>) -> anyhow::Result<(f64, usize, usize, usize)> {
    let t0 = Instant::now();
    let streams = reqs.into_iter().map(|r| Ok(e.submit(e.validate(r)?)?)).collect::<anyhow::Result<Vec<_>>>()?;
    let (mut gen, mut cached, mut prompt) = (0, 0, 0);
    for s in streams {
        let out = s.collect_blocking();
        let fin = out.finished.ok_or_else(|| anyhow::anyhow!("a request did not finish"))?;
        if let runtime::FinishReason::Error(m) = &fin.reason {
            anyhow::bail!("request failed: {m}");
        }
        gen += fin.completion_tokens;
        cached += fin.cached_tokens;
        prompt += fin.prompt_tokens;
    }
    Ok((t0.elapsed().as_secs_f64(), gen, cached, prompt))
}

fn random_tokens(rng: &mut StdRng, n: usize) -> Vec<u32> {
    // Ordinary tokens only (SmolLM2's specials are the first ids).
    (0..n).map(|_| rng.random_range(1000..40000)).collect()
}

fn fixed(prompt: Vec<u32>, max_tokens: usize) -> Request {
    let mut r = Request::new(prompt);
    r.sampling = SamplingParams::greedy();
    r.stop.max_tokens = runtime::MaxTokens::Given(max_tokens);
    r.stop.ignore_eos = true;
    r
}

fn main() -> anyhow::Result<()> {
    kernels::torch::init_process();
    let args = Args::parse();
    kernels::torch::set_threads(args.threads);
    let g = kernels::gguf::GgufFile::open(&args.model)?;
    let (tok, special) = kernels::tokenizer::from_gguf(&g)?;
    drop(g);
    let s = Setup { args, tokenizer: Arc::new(tok), eos: special.eos };
    let a = &s.args;
    println!("threads {}", tch::get_num_threads());

    // 1. Shared prefix, cache on vs off (same requests, same order, fresh engines).
    let mut rng = StdRng::seed_from_u64(0);
    let systems: Vec<Vec<u32>> = (0..a.groups).map(|_| random_tokens(&mut rng, a.system_len)).collect();
    let mut shared = Vec::new();
    for _ in 0..a.prompts_per_group {
        for sys in &systems {
            let mut p = sys.clone();
            p.extend(random_tokens(&mut rng, a.question_len));
            shared.push(fixed(p, a.output_len));
        }
    }
    let n_req = shared.len();
    let mut results = Vec::new();
    for cache in [true, false] {
        let e = s.engine(SchedulerConfig { enable_cache: cache, ..Default::default() })?;
        run(&e, vec![fixed(random_tokens(&mut rng, 8), 2)])?; // warm-up
        let (secs, gen, cached, prompt) = run(&e, shared.clone())?;
        println!(
            "shared-prefix cache {:>3}: {n_req} requests in {secs:.2}s = {:.2} req/s, {:.1} output tok/s, \
             {:.0} prompt tok/s, cache hit rate {:.1}%",
            if cache { "on" } else { "off" },
            n_req as f64 / secs,
            gen as f64 / secs,
            prompt as f64 / secs,
            100.0 * cached as f64 / prompt as f64
        );
        results.push((secs, cached as f64 / prompt as f64));
    }
    let shared_ratio = results[1].0 / results[0].0;
    let hit_rate = results[0].1;

    // 2. Batched decode: 32 concurrent vs 1.
    let e = s.engine(SchedulerConfig::default())?;
    run(&e, vec![fixed(random_tokens(&mut rng, 8), 2)])?;
    let mut rates = Vec::new();
    for batch in [1usize, 32] {
        let reqs = (0..batch).map(|_| fixed(random_tokens(&mut rng, 16), a.decode_len)).collect();
        let (secs, gen, _, _) = run(&e, reqs)?;
        println!("decode batch {batch:>2}: {gen} tokens in {secs:.2}s = {:.1} tok/s", gen as f64 / secs);
        rates.push(gen as f64 / secs);
    }
    let batch_ratio = rates[1] / rates[0];

    // 3. Constrained vs unconstrained at the same batch size. The schema keeps a string open for the whole
    // output (minLength), so both run `constrained_len` tokens and the difference is the cost of the masks.
    let space = TokenSpace::new(Vocabulary::from_tokenizer(&s.tokenizer, &s.eos)?);
    let cache = GrammarCache::new(space, Limits::default(), 4);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string", "minLength": 1200}},
        "required": ["title", "story"]
    });
    let t = Instant::now();
    let grammar = cache.get_or_compile(&Constraint::JsonSchema(schema.to_string()))?;
    println!("schema compiled in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let chat = s
        .tokenizer
        .encode("<|im_start|>user\nWrite a long story as JSON.<|im_end|>\n<|im_start|>assistant\n", false)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .get_ids()
        .to_vec();
    let mk = |constrained: bool, seed: u64| {
        let mut r = fixed(chat.clone(), a.constrained_len);
        r.sampling = SamplingParams { temperature: 0.8, seed: Some(seed), ..Default::default() };
        if constrained {
            r.grammar = Some(grammar.clone());
        }
        r
    };
    // Warm the grammar's mask cache once, as a server that has seen the schema before would have it.
    run(&e, (0..4).map(|i| mk(true, 100 + i)).collect())?;
    let mut tps = Vec::new();
    for constrained in [false, true] {
        let reqs = (0..a.constrained_batch as u64).map(|i| mk(constrained, i)).collect();
        let (secs, gen, _, _) = run(&e, reqs)?;
        println!(
            "{}: batch {}, {gen} tokens in {secs:.2}s = {:.1} tok/s",
            if constrained { "json-schema constrained" } else { "unconstrained         " },
            a.constrained_batch,
            gen as f64 / secs
        );
        tps.push(gen as f64 / secs);
    }
    let stats = e.stats().unwrap_or_default();
    println!("jump-forward tokens so far: {}", stats.scheduler.jump_forward_tokens);
    let constrained_ratio = tps[1] / tps[0];
    println!(
        "shared-prefix cache on/off {shared_ratio:.2}x (hit rate {:.1}%), batch32/batch1 {batch_ratio:.2}x, \
         constrained/unconstrained {constrained_ratio:.2}x",
        100.0 * hit_rate
    );
    Ok(())
}
