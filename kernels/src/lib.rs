//! lathe's numerics. Every op exists twice: `reference` (naive f32, written to be obviously right,
//! the oracle) and `cpu` (fast: gemm + rayon). Both implement [`Backend`]; the conformance suite
//! runs every backend against `reference`, and f64 finite differences check every backward.
//!
//! This crate knows nothing of models, actors or networks. `unsafe` is allowed here and only here,
//! each block with a `// SAFETY:` comment.
#![allow(unsafe_code)]

pub mod backend;
pub mod cpu;
pub mod real;
pub mod reference;
pub mod rope;
pub mod segments;

pub use backend::{
    ActivationOps, AdamStep, AttentionOps, AttnDims, Backend, EmbeddingOps, LinearOps, LoraDims, LoraOps, MatmulDims,
    NormOps, OptimOps, RopeOps, VocabOps,
};
pub use cpu::CpuBackend;
pub use real::Real;
pub use reference::ReferenceBackend;
