//! `ModelError`: every way a caller can hand the model something it cannot run. Each message says
//! what was wrong and what to do about it. Broken internal invariants are asserts, never these.

use thiserror::Error;

use runtime::ConfigError;

use crate::tensor::WeightError;

/// A request or checkpoint the model cannot use.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum ModelError {
    #[error("config.json is unusable: {0}")]
    Config(#[from] ConfigError),
    #[error("checkpoint does not match config.json: {0}")]
    Weight(#[from] WeightError),
    #[error(
        "model family `{family}` needs its MoE settings (num_experts, num_experts_per_tok, \
         moe_intermediate_size) in config.json; none were given"
    )]
    UnsupportedFamily { family: &'static str },
    #[error("the batch has no sequences; pass at least one non-empty sequence")]
    EmptyBatch,
    #[error("sequence {seq} is empty; every sequence needs at least one token")]
    EmptySequence { seq: usize },
    #[error("targets per token k = 0; pass k ≥ 1 (1 for ordinary next-token targets)")]
    ZeroTargetsPerToken,
    #[error("sequence {seq} has {tokens} tokens but {targets} targets; expected tokens × k = {expected}")]
    TargetLength { seq: usize, tokens: usize, targets: usize, expected: usize },
    #[error("token id {token} at position {index} is out of range for vocab_size {vocab}")]
    TokenOutOfVocab { index: usize, token: u32, vocab: usize },
    #[error("target id {target} at index {index} is out of range for vocab_size {vocab}")]
    TargetOutOfVocab { index: usize, target: u32, vocab: usize },
    #[error("sequence {seq} has {len} tokens, more than max_position_embeddings {max}; shorten it")]
    SequenceTooLong { seq: usize, len: usize, max: usize },
    #[error("LoRA adapter does not fit this model: {why}")]
    LoraMismatch { why: String },
    #[error("dlogprobs has {got} values, expected tokens × k = {expected}")]
    GradientLength { got: usize, expected: usize },
    #[error(
        "backward got a Forward of sequences at cu_seqlens {forward:?} for a batch at {batch:?}; pass the batch the forward ran on"
    )]
    ForwardMismatch { forward: Vec<usize>, batch: Vec<usize> },
    #[error("backward needs a Forward computed with the same LoRA adapter; call forward with `Some(lora)`")]
    ForwardWithoutLora,
    #[error(
        "tenants claim {counts:?} sequences but the batch has {seqs}; give every tenant ≥ 1 sequence and cover \
         the batch's sequences exactly, in order"
    )]
    Tenants { counts: Vec<usize>, seqs: usize },
    #[error(
        "backward got {got} tenants (or gradient buffers) for a forward over {expected}; pass the forward's tenants"
    )]
    TenantMismatch { got: usize, expected: usize },
    #[error("unknown tiny model `{name}`; known: {known}")]
    UnknownTinyModel { name: String, known: String },
    #[error("sampling parameter `{field}` is invalid: {why}")]
    SampleParams { field: &'static str, why: String },
}
