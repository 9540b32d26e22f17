//! `radixserve generate`: one prompt through the engine (the same scheduler, sampler and detokenizer that serve
//! requests), its text printed as it is generated, then the prefill and decode speeds.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use runtime::{Event, MaxTokens, ModelExecutor, Request, SamplingParams, SchedulerConfig};
use serde_json::json;

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
    /// Most tokens to generate (fewer when the context has less room).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let sampling = SamplingParams { temperature: args.temperature, seed: Some(args.seed), ..SamplingParams::default() };
    // Checked before the model loads: a bad flag should not cost a load.
    sampling.validate().map_err(|e| anyhow::anyhow!("--{}: {}", e.param.replace('_', "-"), e.message))?;
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
    let slots = (prompt.len() + args.max_tokens + 1).min(model.net.max_positions()).max(64);
    let tokenizer = Arc::new(model.tokenizer);
    let exec = ModelExecutor::new(model.net, slots)?;
    let engine = runtime::start(exec, SchedulerConfig::default(), tokenizer, model.special.eos.clone())?;
    let mut req = Request::new(prompt);
    req.sampling = sampling;
    req.stop.max_tokens = MaxTokens::UpTo(args.max_tokens.max(1));
    let valid = engine.validate(req).map_err(|e| anyhow::anyhow!("{e}"))?;
    let prompt_len = valid.request().prompt.len();
    let t0 = Instant::now();
    let mut stream = engine.submit(valid).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut first_token_at = None;
    let stdout = std::io::stdout();
    let fin = loop {
        match stream.blocking_recv() {
            Some(Event::Delta { text, tokens }) => {
                if first_token_at.is_none() && !tokens.is_empty() {
                    first_token_at = Some(t0.elapsed().as_secs_f64());
                }
                let mut lock = stdout.lock();
                write!(lock, "{text}").context("stdout")?;
                lock.flush().ok();
            }
            Some(Event::PromptLogprobs(_)) => {}
            Some(Event::Finished(fin)) => break fin,
            None => anyhow::bail!("the engine stopped before the answer finished"),
        }
    };
    if let runtime::FinishReason::Error(m) = &fin.reason {
        anyhow::bail!("generation failed: {m}");
    }
    let total_s = t0.elapsed().as_secs_f64();
    println!();
    let prefill_s = first_token_at.unwrap_or(total_s);
    let decoded = fin.completion_tokens.saturating_sub(1);
    let decode_s = total_s - prefill_s;
    eprintln!(
        "prompt {prompt_len} tokens in {prefill_s:.3}s ({:.1} tok/s); generated {} tokens, decode {:.1} tok/s",
        prompt_len as f64 / prefill_s,
        fin.completion_tokens,
        if decode_s > 0.0 { decoded as f64 / decode_s } else { 0.0 }
    );
    Ok(())
}
