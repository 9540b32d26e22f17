//! A linear layer `y = x @ w.T + b` and the choice of kernel for it.

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::cpu_gemm::PackedWeights;
use crate::error::Result;
use crate::qmatmul::QuantMatrix;

/// The weights of a linear layer: a tensor (with, for f32 on CPU, a copy packed for [`crate::cpu_gemm`]), or
/// quantized blocks ([`crate::qmatmul`], no other copy).
pub(crate) enum Linear {
    Dense { w: Tensor, b: Option<Tensor>, packed: Option<PackedWeights> },
    Quant { q: Arc<QuantMatrix>, b: Option<Tensor> },
}

impl Linear {
    pub fn new(w: Tensor, b: Option<Tensor>) -> Self {
        let packed = if w.device() == Device::Cpu && w.kind() == Kind::Float { PackedWeights::pack(&w) } else { None };
        Self::Dense { w, b, packed }
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
