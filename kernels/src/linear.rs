//! A linear layer `y = x @ w.T + b` and the choice of kernel for it.

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::amx::SplitWeights;
use crate::cpu_gemm::PackedWeights;
use crate::error::Result;
use crate::qmatmul::QuantMatrix;

/// The weights of a linear layer: a tensor (with, for f32 on CPU, a copy packed for [`crate::cpu_gemm`]), a
/// tensor with its bf16 halves for AMX tiles ([`crate::amx`], for encoders), or quantized blocks
/// ([`crate::qmatmul`], no other copy).
pub(crate) enum Linear {
    Dense { w: Tensor, b: Option<Tensor>, packed: Option<PackedWeights> },
    Split { w: Tensor, b: Option<Tensor>, split: SplitWeights },
    Quant { q: Arc<QuantMatrix>, b: Option<Tensor> },
}

impl Linear {
    pub fn new(w: Tensor, b: Option<Tensor>) -> Self {
        let packed = if w.device() == Device::Cpu && w.kind() == Kind::Float { PackedWeights::pack(&w) } else { None };
        Self::Dense { w, b, packed }
    }

    /// A layer of an encoder, whose inputs are whole prompts: on AMX tiles where this CPU has them
    /// ([`crate::amx`]), else as [`Self::new`].
    pub fn encoder(w: Tensor, b: Option<Tensor>) -> Self {
        match SplitWeights::pack(&w, b.as_ref()) {
            Some(split) => Self::Split { w, b, split },
            None => Self::new(w, b),
        }
    }

    /// `next(then(self(x)))`, the middle values kept as `next`'s input tiles where both run on AMX tiles
    /// ([`SplitWeights::matmul_t_then_into`]), else through an f32 tensor; `then` must be element-wise.
    pub fn forward_then_into(&self, x: &Tensor, then: &(dyn Fn(&mut [f32]) + Sync), next: &Linear) -> Result<Tensor> {
        if let (Self::Split { split, .. }, Self::Split { split: after, .. }) = (self, next) {
            if let Some(y) = split.matmul_t_then_into(x, then, after) {
                return Ok(y);
            }
        }
        let middle = self.forward(x)?.f_contiguous()?;
        if middle.device() != Device::Cpu || middle.kind() != Kind::Float {
            return Err(crate::error::Error::invalid("an element-wise step over a product needs f32 on the CPU"));
        }
        // SAFETY: a fresh contiguous f32 CPU tensor, borrowed mutably here only.
        then(unsafe { std::slice::from_raw_parts_mut(middle.data_ptr() as *mut f32, middle.numel()) });
        next.forward(&middle)
    }

    /// Whether the products run on AMX tiles.
    pub fn on_tiles(&self) -> bool {
        matches!(self, Self::Split { .. })
    }

    pub fn quantized(q: Arc<QuantMatrix>, b: Option<Tensor>) -> Self {
        Self::Quant { q, b }
    }

    /// Bytes of weights held, packed copy included.
    pub fn bytes(&self) -> usize {
        let t = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        match self {
            Self::Quant { q, b } => q.bytes() + b.as_ref().map_or(0, t),
            Self::Dense { w, b, packed } => t(w) + b.as_ref().map_or(0, t) + packed.as_ref().map_or(0, |p| p.bytes()),
            Self::Split { w, b, split } => t(w) + b.as_ref().map_or(0, t) + split.bytes(),
        }
    }

    /// Decode-sized inputs (up to [`crate::cpu_gemm::MAX_ROWS`] rows) with packed weights use the packed GEMM;
    /// quantized weights use [`QuantMatrix::matmul_t`]; everything else is libtorch's.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, false)
    }

    /// [`Self::forward`], with quantized weights in integers at every size ([`QuantMatrix::matmul_t_int`]).
    pub fn forward_int(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, true)
    }

    fn forward_with(&self, x: &Tensor, int_always: bool) -> Result<Tensor> {
        let (y, b) = match self {
            Self::Quant { q, b } if int_always => (q.matmul_t_int(x)?, b),
            Self::Quant { q, b } => (q.matmul_t(x)?, b),
            // The bias is added by the tiles.
            Self::Split { w, b, split } => {
                return Ok(split.matmul_t(x).map_or_else(|| x.f_linear(w, b.as_ref()), Ok)?)
            }
            Self::Dense { w, b, packed } => {
                let rows = x.size().first().copied().unwrap_or(0) as usize;
                match packed {
                    Some(p) if rows <= crate::cpu_gemm::MAX_ROWS => match p.matmul_t(x) {
                        Some(y) => (y, b),
                        None => return Ok(x.f_linear(w, b.as_ref())?),
                    },
                    _ => return Ok(x.f_linear(w, b.as_ref())?),
                }
            }
        };
        Ok(match b {
            Some(b) => y + b,
            None => y,
        })
    }
}
