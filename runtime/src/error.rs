//! Typed errors of the runtime crate.

use thiserror::Error;

/// A model or LoRA configuration that lathe cannot use. Messages name the offending field.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("config.json is not valid JSON: {0}")]
    Json(String),
    #[error("config.json field `{field}` is missing")]
    Missing { field: &'static str },
    #[error("config.json field `{field}` has an unusable value: {why}")]
    Invalid { field: &'static str, why: String },
    #[error(
        "config.json field `model_type` is `{found}`, which lathe does not support (supported: llama, qwen2, qwen3, qwen3_moe)"
    )]
    UnsupportedFamily { found: String },
    #[error("LoRA config field `{field}` is invalid: {why}")]
    Lora { field: &'static str, why: String },
}
