//! A linear layer `y = x @ w.T + b` and the choice of kernel for it.

use tch::{Device, Kind, Tensor};

use crate::cpu_gemm::PackedWeights;
use crate::error::Result;

/// Weights `[out, in]`, an optional bias, and (f32 on CPU) a copy packed for [`crate::cpu_gemm`].
pub(crate) struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
    packed: Option<PackedWeights>,
}

impl Linear {
    pub fn new(w: Tensor, b: Option<Tensor>) -> Self {
        let packed = if w.device() == Device::Cpu && w.kind() == Kind::Float { PackedWeights::pack(&w) } else { None };
        Self { w, b, packed }
    }

    /// Decode-sized inputs (up to [`crate::cpu_gemm::MAX_ROWS`] rows) with packed weights use the packed GEMM;
    /// everything else is libtorch's.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.size().first().copied().unwrap_or(0) as usize;
        let ours = match &self.packed {
            Some(p) if rows <= crate::cpu_gemm::MAX_ROWS => p.matmul_t(x),
            _ => None,
        };
        match ours {
            Some(y) => Ok(match &self.b {
                Some(b) => y + b,
                None => y,
            }),
            None => Ok(x.f_linear(&self.w, self.b.as_ref())?),
        }
    }
}
