//! Loading the model for a command, with a progress bar on stderr.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use kernels::{LoadOptions, Model};

use crate::chat_template::{ChatTemplate, CHATML};

/// Device, dtype and threads as given on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: `f32`, `f16`, `bf16` (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
    /// libtorch intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// How a GGUF file's quantized matrices are held on the CPU: `quantized` (as their blocks, about the file's
    /// size in memory; `quantized-exact` where the CPU has AVX-512 VNNI, `quantized-f32-prefill` elsewhere),
    /// `quantized-exact` (every step computed as llama.cpp's CPU backend computes it, to the bit),
    /// `quantized-f32-prefill` (prompts through an f32 GEMM: close to llama.cpp's results, not equal; faster
    /// prompts on CPUs with AVX2 alone) or `f32` (dequantized at load, the numerics reference).
    #[arg(long, default_value = "quantized")]
    pub weights: kernels::WeightFormat,
}

impl DeviceArgs {
    pub fn options(&self) -> anyhow::Result<LoadOptions> {
        let device = kernels::torch::parse_device(&self.device)?;
        kernels::torch::check_device(device)?;
        let kind = match &self.dtype {
            Some(d) => kernels::torch::parse_kind(d)?,
            None => kernels::torch::default_kind(device),
        };
        Ok(LoadOptions { device, kind, threads: self.threads, weights: self.weights })
    }
}

/// Loads `path` showing a progress bar.
pub fn load_model(path: &Path, opts: LoadOptions) -> anyhow::Result<Model> {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("loading {}", path.display()));
    // Load errors name the file themselves.
    let model = Model::load(path, opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let model = model?;
    tracing::info!(
        model = %path.display(),
        weights_mb = model.net.weight_bytes() as f64 / 1e6,
        quantized = model.net.quantized(),
        llama_cpp_numerics = model.net.ggml_numerics(),
        resident_mb = kernels::resident_bytes().map(|b| b as f64 / 1e6),
        "loaded"
    );
    Ok(model)
}

/// The model's chat template, or ChatML when it has none.
pub fn chat_template(model: &Model) -> anyhow::Result<ChatTemplate> {
    let token = |id: Option<u32>| id.and_then(|i| model.tokenizer.id_to_token(i)).unwrap_or_default();
    let bos = token(model.special.bos);
    let eos = token(model.special.eos.first().copied());
    Ok(ChatTemplate::new(model.chat_template.as_deref().unwrap_or(CHATML), &bos, &eos)?)
}
