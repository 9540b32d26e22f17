//! `make bench-model`: prefill and batched-decode speed of the forward pass on quantized blocks (the default for
//! GGUF on CPU) and on f32 weights, next to llama.cpp's `llama-bench` on the same GGUF at the same threads and to
//! this machine's roofline, alternating in one run.
//!
//! Roofline of a step = max(weight bytes / memory bandwidth, matmul FLOPs / matmul rate), where the weights are
//! every matrix the step multiplies by (the LM head included; the embedding table is read a row per token) and
//! FLOPs are 2 x those parameters x tokens. Attention's own reads and FLOPs are not in the roofline, so it is a
//! bound the forward pass cannot reach, and short contexts (below) keep attention's share small.
//!
//! llama-bench's `pp512` prefills 512 tokens, `tg128` decodes 128 one at a time from an empty context; ours
//! prefills `--prefill-tokens` and decodes `--steps` steps after `--context` tokens. Each side's best round counts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bench::roofline::Roofline;
use clap::Parser;
use kernels::{LoadOptions, LogitsFor, Model, SeqInput, WeightFormat};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    #[arg(long, default_value_t = 512)]
    prefill_tokens: usize,
    /// Context each decoding sequence has before the measured steps.
    #[arg(long, default_value_t = 64)]
    context: usize,
    /// Decode steps measured per batch size.
    #[arg(long, default_value_t = 24)]
    steps: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batches: Vec<usize>,
    /// Threads for us (libtorch and the kernels' team) and for llama-bench (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Rounds, alternating llama-bench, quantized and f32.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// llama.cpp's `llama-bench` (`tools/setup.sh llamacpp` builds it); without it, llama.cpp is not measured.
    #[arg(long)]
    llama_bench: Option<PathBuf>,
}

/// One round of one of our paths.
#[derive(Debug, Clone, Default)]
struct Speeds {
    prefill: f64,
    /// (batch, tokens/s).
    decode: Vec<(usize, f64)>,
}

impl Speeds {
    fn decode_at(&self, b: usize) -> Option<f64> {
        self.decode.iter().find(|&&(x, _)| x == b).map(|&(_, t)| t)
    }
    /// The better of two rounds, metric by metric.
    fn best(self, other: &Speeds) -> Speeds {
        Speeds {
            prefill: self.prefill.max(other.prefill),
            decode: self.decode.iter().map(|&(b, t)| (b, t.max(other.decode_at(b).unwrap_or(0.0)))).collect(),
        }
    }
}

fn measure(model: &Model, args: &Args, label: &str, roof: &Roofline, weight_bytes: f64) -> anyhow::Result<Speeds> {
    let params = model.net.config().matmul_params() as f64;
    let prompt: Vec<u32> = (0..args.prefill_tokens as u32).map(|i| 1000 + (i * 7919) % 20000).collect();
    let mut kv = model.net.new_kv_pool(
        args.prefill_tokens.max(args.batches.iter().max().copied().unwrap_or(1) * (args.context + args.steps + 2)),
    )?;
    let slots: Vec<u32> = (0..prompt.len() as u32).collect();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        model.net.forward(
            &mut kv,
            &[SeqInput { context_slots: &[], tokens: &prompt, new_slots: &slots, logits: LogitsFor::Last }],
        )?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let n = prompt.len() as f64;
    let prefill = n / best;
    let prefill_roof = n / roof.time_for(weight_bytes, 2.0 * params * n);
    println!(
        "{label}: prefill {n} tokens: {prefill:.0} tok/s, roofline {prefill_roof:.0} tok/s ({:.0}%)",
        100.0 * prefill / prefill_roof
    );
    let mut decode = Vec::new();
    for &b in &args.batches {
        let per = args.context + args.steps + 1;
        // Prefill each sequence's context (not timed).
        let mut seq_slots: Vec<Vec<u32>> = Vec::with_capacity(b);
        for s in 0..b {
            let base = (s * per) as u32;
            let sl: Vec<u32> = (base..base + args.context as u32).collect();
            let toks: Vec<u32> = (0..args.context as u32).map(|i| 2000 + (i * 31 + s as u32 * 17) % 10000).collect();
            model.net.forward(
                &mut kv,
                &[SeqInput { context_slots: &[], tokens: &toks, new_slots: &sl, logits: LogitsFor::None }],
            )?;
            seq_slots.push(sl);
        }
        let mut next: Vec<u32> = vec![42; b];
        let mut times = Vec::with_capacity(args.steps);
        for _ in 0..args.steps {
            let new: Vec<[u32; 1]> =
                seq_slots.iter().enumerate().map(|(s, sl)| [(s * per + sl.len()) as u32]).collect();
            let batch: Vec<SeqInput> = (0..b)
                .map(|s| SeqInput {
                    context_slots: &seq_slots[s],
                    tokens: std::slice::from_ref(&next[s]),
                    new_slots: &new[s],
                    logits: LogitsFor::Last,
                })
                .collect();
            let t = Instant::now();
            let out = model.net.forward(&mut kv, &batch)?;
            next = kernels::sampling::argmax(&out.tensor);
            times.push(t.elapsed().as_secs_f64());
            for (s, nw) in new.iter().enumerate() {
                seq_slots[s].push(nw[0]);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let tps = b as f64 / median;
        let roof_tps = b as f64 / roof.time_for(weight_bytes, 2.0 * params * b as f64);
        println!(
            "{label}: decode batch {b:>2} (context {}..{}): {tps:.1} tok/s, roofline {roof_tps:.1} tok/s ({:.0}%), median step {:.1} ms",
            args.context,
            args.context + args.steps,
            100.0 * tps / roof_tps,
            median * 1e3
        );
        decode.push((b, tps));
    }
    Ok(Speeds { prefill, decode })
}

/// llama-bench's pp512 and tg128 tokens/s (its own mean over its repetitions).
fn llama_bench(bin: &Path, model: &Path, threads: usize) -> anyhow::Result<(f64, f64)> {
    let out = Command::new(bin)
        .args(["-m", &model.to_string_lossy(), "-t", &threads.to_string(), "-p", "512", "-n", "128", "-r", "3"])
        .args(["-o", "json"])
        .output()?;
    anyhow::ensure!(out.status.success(), "llama-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut pp = None;
    let mut tg = None;
    for r in runs.as_array().into_iter().flatten() {
        let ts = r["avg_ts"].as_f64();
        match (r["n_prompt"].as_u64(), r["n_gen"].as_u64()) {
            (Some(p), Some(0)) if p > 0 => pp = ts,
            (Some(0), Some(g)) if g > 0 => tg = ts,
            _ => {}
        }
    }
    match (pp, tg) {
        (Some(pp), Some(tg)) => Ok((pp, tg)),
        _ => anyhow::bail!("llama-bench printed no pp/tg results"),
    }
}

fn resident_mb() -> f64 {
    kernels::resident_bytes().unwrap_or(0) as f64 / 1e6
}

fn main() -> anyhow::Result<()> {
    kernels::torch::init_process();
    let args = Args::parse();
    kernels::torch::set_threads(args.threads);
    let threads =
        if args.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { args.threads };
    let file_mb = std::fs::metadata(&args.model)?.len() as f64 / 1e6;
    let before = resident_mb();
    let opts = |weights| LoadOptions { threads: args.threads, weights, ..LoadOptions::default() };
    let quant = Model::load(&args.model, opts(WeightFormat::Quantized), &mut |_, _| {})?;
    let quant_rss = resident_mb() - before;
    let dense = Model::load(&args.model, opts(WeightFormat::F32), &mut |_, _| {})?;
    // The default computes llama.cpp's numerics where this CPU runs them fast (AVX-512 VNNI), else prompts through
    // the f32 GEMM: the other of the two is measured beside it.
    let exact = quant.net.ggml_numerics();
    let (other_format, other_label) = if exact {
        (WeightFormat::QuantizedF32Prefill, "quantized-f32-prefill")
    } else {
        (WeightFormat::QuantizedExact, "quantized-exact")
    };
    let other = Model::load(&args.model, opts(other_format), &mut |_, _| {})?;
    let cfg = quant.net.config().clone();
    let params = cfg.matmul_params() as f64;
    let (q_bytes, f_bytes) = (quant.net.weight_bytes() as f64, dense.net.weight_bytes() as f64);
    println!(
        "model {}: {:.1}M matmul parameters, file {file_mb:.1} MB; weights held: quantized {:.1} MB ({}), f32 {:.1} MB",
        quant.name,
        params / 1e6,
        q_bytes / 1e6,
        if quant.net.quantized() { "blocks" } else { "this CPU cannot run the block kernels: f32" },
        f_bytes / 1e6
    );
    println!("resident memory added by loading the quantized model: {quant_rss:.1} MB");
    println!(
        "quantized (the default) computes {} here",
        if exact {
            "llama.cpp's numerics (quantized-exact)"
        } else {
            "prompts through the f32 GEMM (quantized-f32-prefill)"
        }
    );
    println!("threads {threads} (ours and llama-bench's)");

    let roof = Roofline::measure(kernels::Device::Cpu);
    println!(
        "machine: read {:.1} GB/s, f32 matvec {:.1} GB/s, f32 matmul {:.1} GFLOP/s (measured now)",
        roof.read_bw / 1e9,
        roof.matvec_bw / 1e9,
        roof.matmul_flops / 1e9
    );

    // Rounds alternate the systems, so a load change on the machine touches them alike.
    let mut llama: Option<(f64, f64)> = None;
    let mut best_q: Option<Speeds> = None;
    let mut best_f: Option<Speeds> = None;
    let mut best_p: Option<Speeds> = None;
    for round in 1..=args.rounds {
        println!("round {round}");
        if let Some(bin) = &args.llama_bench {
            match llama_bench(bin, &args.model, threads) {
                Ok((pp, tg)) => {
                    println!("llama.cpp: pp512 {pp:.1} tok/s, tg128 {tg:.1} tok/s");
                    llama = Some(llama.map_or((pp, tg), |(p, t)| (p.max(pp), t.max(tg))));
                }
                Err(e) => println!("llama.cpp: not measured ({e})"),
            }
        }
        // The quantized path streams its blocks (the embedding table is read a row per token, not streamed).
        let q = measure(&quant, &args, "quantized", &roof, q_bytes)?;
        let f = measure(&dense, &args, "f32", &roof, params * 4.0)?;
        let p = measure(&other, &args, other_label, &roof, q_bytes)?;
        best_p = Some(match best_p {
            Some(b) => b.best(&p),
            None => p,
        });
        best_q = Some(match best_q {
            Some(b) => b.best(&q),
            None => q,
        });
        best_f = Some(match best_f {
            Some(b) => b.best(&f),
            None => f,
        });
    }
    let (q, f, p) = (best_q.unwrap_or_default(), best_f.unwrap_or_default(), best_p.unwrap_or_default());
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".to_string(),
    };
    let (b1, b32) = (q.decode_at(1), q.decode_at(32));
    println!(
        "best of {} rounds: quantized prefill {:.0} tok/s, decode b1 {:.1}, b32 {:.1} tok/s | f32 prefill {:.0}, decode b1 {:.1}, b32 {:.1} | llama.cpp {}",
        args.rounds,
        q.prefill,
        b1.unwrap_or(0.0),
        b32.unwrap_or(0.0),
        f.prefill,
        f.decode_at(1).unwrap_or(0.0),
        f.decode_at(32).unwrap_or(0.0),
        llama.map_or("not measured".into(), |(pp, tg)| format!("pp512 {pp:.1}, tg128 {tg:.1} tok/s")),
    );
    println!(
        "{other_label}: prefill {:.0} tok/s ({} f32), decode b1 {:.1}, b32 {:.1} tok/s",
        p.prefill,
        ratio(Some(p.prefill), Some(f.prefill)),
        p.decode_at(1).unwrap_or(0.0),
        p.decode_at(32).unwrap_or(0.0)
    );
    println!(
        "quantized: decode b1 {} llama.cpp tg128, prefill {} f32, decode b32 {} f32, weights {:.2}x GGUF",
        ratio(b1, llama.map(|l| l.1)),
        ratio(Some(q.prefill), Some(f.prefill)),
        ratio(b32, f.decode_at(32)),
        q_bytes / 1e6 / file_mb
    );
    Ok(())
}
