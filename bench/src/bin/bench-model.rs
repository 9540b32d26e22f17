//! `make bench-model`: prefill and batched-decode speed of the forward pass next to this machine's roofline,
//! measured in the same run.
//!
//! Roofline of a step = max(weight bytes / memory bandwidth, matmul FLOPs / matmul rate), where the weights are
//! every matrix the step multiplies by (the LM head included; the embedding table is read a row per token) and
//! FLOPs are 2 x those parameters x tokens. Attention's own reads and FLOPs are not in the roofline, so it is a
//! bound the forward pass cannot reach, and short contexts (below) keep attention's share small.

use std::path::PathBuf;
use std::time::Instant;

use bench::roofline::Roofline;
use clap::Parser;
use kernels::{LoadOptions, LogitsFor, Model, SeqInput};

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
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    kernels::torch::init_process();
    let args = Args::parse();
    kernels::torch::set_threads(args.threads);
    let opts = LoadOptions { threads: args.threads, ..LoadOptions::default() };
    let model = Model::load(&args.model, opts, &mut |_, _| {})?;
    let cfg = model.net.config().clone();
    let params = cfg.matmul_params() as f64;
    let weight_bytes = params * opts.kind.elt_size_in_bytes() as f64;
    println!(
        "model {}: {:.1}M matmul parameters, {:.0} MB of weights per step ({:?})",
        model.name,
        params / 1e6,
        weight_bytes / 1e6,
        opts.kind
    );
    println!("threads {}", tch::get_num_threads());

    let roof = Roofline::measure(opts.device);
    println!(
        "machine: read {:.1} GB/s, f32 matvec {:.1} GB/s, f32 matmul {:.1} GFLOP/s (measured now)",
        roof.read_bw / 1e9,
        roof.matvec_bw / 1e9,
        roof.matmul_flops / 1e9
    );

    // Prefill: one sequence of `prefill_tokens`, best of 3.
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
    let prefill_tps = n / best;
    let prefill_roof = n / roof.time_for(weight_bytes, 2.0 * params * n);
    println!(
        "prefill {n} tokens: {prefill_tps:.0} tok/s, roofline {prefill_roof:.0} tok/s ({:.0}%)",
        100.0 * prefill_tps / prefill_roof
    );

    let mut summary = Vec::new();
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
            "decode batch {b:>2} (context {}..{}): {tps:.1} tok/s, roofline {roof_tps:.1} tok/s ({:.0}%), median step {:.1} ms",
            args.context,
            args.context + args.steps,
            100.0 * tps / roof_tps,
            median * 1e3
        );
        summary.push((b, tps, 100.0 * tps / roof_tps));
    }
    // The closing line names batch 1 and batch 32 (the targets); every batch size is printed above.
    let mut line = format!("prefill {prefill_tps:.0} tok/s ({:.0}% of roofline)", 100.0 * prefill_tps / prefill_roof);
    for (b, tps, pct) in summary.into_iter().filter(|&(b, _, _)| b == 1 || b == 32) {
        line.push_str(&format!(", decode b{b} {tps:.1} tok/s ({pct:.0}% of roofline)"));
    }
    println!("{line}");
    Ok(())
}
