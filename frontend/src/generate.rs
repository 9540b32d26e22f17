//! `radixserve generate`: one prompt, greedy (or sampled) decoding straight on the model, text and speed printed.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use kernels::{LogitsFor, SeqInput};
use serde_json::json;
use tch::Tensor;

use crate::load::{chat_template, load_model, DeviceArgs};

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// A `.gguf` file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    if args.temperature < 0.0 || !args.temperature.is_finite() {
        bail!("--temperature must be a finite number >= 0, got {}", args.temperature);
    }
    let opts = args.device.options()?;
    let model = load_model(&args.model, opts)?;
    let text = if args.chat {
        let tmpl = chat_template(&model)?;
        tmpl.render::<_, ()>(&[json!({"role": "user", "content": args.prompt})], None, true)?
    } else {
        args.prompt.clone()
    };
    // A chat template writes its own special tokens; a raw prompt gets the tokenizer's (BOS for Llama).
    let enc = model.tokenizer.encode(text.as_str(), !args.chat).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
    let prompt: Vec<u32> = enc.get_ids().to_vec();
    if prompt.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    let max_pos = model.net.max_positions();
    let max_new = args.max_tokens.min(max_pos.saturating_sub(prompt.len()));
    if max_new == 0 {
        bail!("the prompt ({} tokens) fills the model's context ({max_pos})", prompt.len());
    }
    tch::manual_seed(args.seed as i64);
    let mut kv = model.net.new_kv_pool(prompt.len() + max_new)?;
    let mut slots: Vec<u32> = (0..prompt.len() as u32).collect();
    let sample = |logits: &Tensor| -> u32 {
        if args.temperature == 0.0 {
            kernels::sampling::argmax(logits)[0]
        } else {
            let probs = (logits / args.temperature).softmax(-1, tch::Kind::Float);
            probs.multinomial(1, true).int64_value(&[0, 0]) as u32
        }
    };
    let t0 = Instant::now();
    let out = model.net.forward(
        &mut kv,
        &[SeqInput { context_slots: &[], tokens: &prompt, new_slots: &slots, logits: LogitsFor::Last }],
    )?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut next = sample(&out.tensor);
    let mut generated = vec![next];
    let mut printed = 0usize;
    let stdout = std::io::stdout();
    let t1 = Instant::now();
    loop {
        // Print what decodes cleanly so far (hold back a trailing partial UTF-8 character).
        let piece = model.tokenizer.decode(&generated, true).map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
        if !piece.ends_with('\u{FFFD}') && piece.len() > printed {
            let mut lock = stdout.lock();
            write!(lock, "{}", &piece[printed..]).context("stdout")?;
            lock.flush().ok();
            printed = piece.len();
        }
        if model.special.eos.contains(&next) || generated.len() >= max_new {
            break;
        }
        let slot = slots.len() as u32;
        let out = model.net.forward(
            &mut kv,
            &[SeqInput { context_slots: &slots, tokens: &[next], new_slots: &[slot], logits: LogitsFor::Last }],
        )?;
        slots.push(slot);
        next = sample(&out.tensor);
        generated.push(next);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    println!();
    let n_dec = generated.len().saturating_sub(1);
    eprintln!(
        "prompt {} tokens in {:.3}s ({:.1} tok/s); generated {} tokens, decode {:.1} tok/s",
        prompt.len(),
        prefill_s,
        prompt.len() as f64 / prefill_s,
        generated.len(),
        if decode_s > 0.0 { n_dec as f64 / decode_s } else { 0.0 }
    );
    Ok(())
}
