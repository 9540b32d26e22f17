//! Where weights come from: a GGUF file or a Hugging Face folder of safetensors.
//!
//! Both sources answer by the GGUF tensor names (`token_embd.weight`, `blk.3.attn_q.weight`...), which is the
//! model code's one vocabulary; the safetensors source translates to Hugging Face names. Tensors come back as f32
//! on the CPU in PyTorch order (outermost dimension first) and *in Hugging Face layout*: the GGUF source undoes
//! llama.cpp's row permutation of the Q and K projections for Llama-architecture files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::Tensor;

use crate::config::Arch;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::quant::GgmlType;

/// A source of named f32 tensors.
pub enum WeightSource {
    Gguf(GgufFile),
    SafeTensors(SafeTensorFiles),
}

impl WeightSource {
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Self::Gguf(g) => g.tensor(name).is_some(),
            Self::SafeTensors(s) => s.index.contains_key(&hf_name(name)),
        }
    }

    /// A GGUF matrix kept as its quantized blocks: `(type, rows, cols, bytes)`, the bytes row-major ggml blocks
    /// (as the file stores them, before any Q/K unpermutation). `None` for other sources, missing names and
    /// tensors that are not 2-D.
    pub fn blocks(&self, name: &str) -> Option<(GgmlType, usize, usize, &[u8])> {
        match self {
            Self::Gguf(g) => {
                let info = g.tensor(name)?;
                (info.dims.len() == 2)
                    .then(|| (info.ty, info.dims[1] as usize, info.dims[0] as usize, g.tensor_bytes(info)))
            }
            Self::SafeTensors(_) => None,
        }
    }

    /// Loads `name` as an f32 CPU tensor. `permute_heads` undoes llama.cpp's Q/K permutation for GGUF files
    /// (pass the projection's head count); it is ignored for safetensors, which are already in HF layout.
    pub fn load(&self, name: &str, permute_heads: Option<usize>) -> Result<Tensor> {
        match self {
            Self::Gguf(g) => {
                let info = g.tensor(name).ok_or_else(|| Error::format(format!("missing tensor {name}")))?;
                let data = g.dequantize(info)?;
                let t = Tensor::from_slice(&data).view(info.torch_shape().as_slice());
                Ok(match permute_heads {
                    Some(n_head) => unpermute_qk(&t, n_head)?,
                    None => t,
                })
            }
            Self::SafeTensors(s) => s.load(&hf_name(name)),
        }
    }
}

/// Reverses llama.cpp's `permute(w, n_head)`: rows were reordered from HF's rotate-half layout
/// (`[x0..x(d/2), x(d/2)..xd]` per head) to interleaved pairs. Works for weights `[out, in]` and biases `[out]`.
pub fn unpermute_qk(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let shape = t.size();
    let out = shape[0];
    let n_head = n_head as i64;
    if n_head == 0 || out % (2 * n_head) != 0 {
        return Err(Error::format(format!("cannot unpermute {shape:?} over {n_head} heads")));
    }
    let half = out / n_head / 2;
    let rest: Vec<i64> = shape[1..].to_vec();
    let mut v = vec![n_head, half, 2];
    v.extend(&rest);
    Ok(t.reshape(v.as_slice()).transpose(1, 2).contiguous().reshape(shape.as_slice()))
}

/// Whether a GGUF file of this architecture stores Q/K permuted (llama.cpp does it for Llama-style rope only).
pub fn gguf_qk_permuted(arch: Arch) -> bool {
    matches!(arch, Arch::Llama | Arch::Mistral)
}

/// GGUF tensor name to Hugging Face name.
pub fn hf_name(gguf: &str) -> String {
    if let Some(rest) = gguf.strip_prefix("blk.") {
        if let Some((layer, tail)) = rest.split_once('.') {
            let mapped = match tail {
                "attn_norm.weight" => "input_layernorm.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_q.bias" => "self_attn.q_proj.bias",
                "attn_k.bias" => "self_attn.k_proj.bias",
                "attn_v.bias" => "self_attn.v_proj.bias",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                other => other,
            };
            return format!("model.layers.{layer}.{mapped}");
        }
    }
    match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        other => other.into(),
    }
}

/// One or more memory-mapped `*.safetensors` files with an index from tensor name to file.
pub struct SafeTensorFiles {
    maps: Vec<memmap2::Mmap>,
    index: HashMap<String, usize>,
}

impl SafeTensorFiles {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn open_folder(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(index_path.display(), e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(format!("{}: {e}", index_path.display())))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(format!("{}: no weight_map", index_path.display())))?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_owned)).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            return Err(Error::format(format!("{}: no model.safetensors or its index", dir.display())));
        };
        let mut maps = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
            // SAFETY: read-only private map of a model file that is not modified while we run.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path.display(), e))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| Error::format(format!("{}: {e}", path.display())))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            maps.push(map);
        }
        Ok(Self { maps, index })
    }

    /// Whether a tensor of that (Hugging Face) name is in the files.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Loads the tensor of that (Hugging Face) name as f32 on the CPU.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let &i = self.index.get(name).ok_or_else(|| Error::format(format!("missing tensor {name}")))?;
        let st = SafeTensors::deserialize(&self.maps[i]).map_err(|e| Error::format(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| Error::format(format!("{name}: {e}")))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => return Err(Error::unsupported(format!("{name}: safetensors dtype {other:?}"))),
        };
        Ok(Tensor::from_slice(&data).view(shape.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names() {
        assert_eq!(hf_name("blk.12.attn_q.weight"), "model.layers.12.self_attn.q_proj.weight");
        assert_eq!(hf_name("blk.0.ffn_norm.weight"), "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(hf_name("token_embd.weight"), "model.embed_tokens.weight");
        assert_eq!(hf_name("output.weight"), "lm_head.weight");
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(w.shape)
        let (n_head, head_dim, cols) = (3i64, 8i64, 5i64);
        let w = Tensor::arange(n_head * head_dim * cols, (tch::Kind::Float, tch::Device::Cpu))
            .view([n_head * head_dim, cols]);
        let permuted =
            w.reshape([n_head, 2, head_dim / 2, cols]).transpose(1, 2).contiguous().reshape([n_head * head_dim, cols]);
        let back = unpermute_qk(&permuted, n_head as usize).unwrap();
        assert!(back.equal(&w));
        let b = Tensor::arange(n_head * head_dim, (tch::Kind::Float, tch::Device::Cpu));
        let bp = b.reshape([n_head, 2, head_dim / 2]).transpose(1, 2).contiguous().reshape([n_head * head_dim]);
        assert!(unpermute_qk(&bp, n_head as usize).unwrap().equal(&b));
    }
}
