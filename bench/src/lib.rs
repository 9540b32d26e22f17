//! radixserve's benchmarks: the machine's roofline, the model's forward pass, and (later) the MaskBench harness
//! and the serving load generator.

pub mod pyjson;
pub mod roofline;
