//! Loaders: HF model directories (config.json + safetensors), GGUF files (parsed, dequantized,
//! renamed to HF names, Llama Q/K un-permuted, tokenizer rebuilt) and `tokenizer.json`.
//! Everything comes out as a `ModelConfig` plus a `WeightMap` in HF names and shapes, so models
//! never see the file format.

pub mod error;
pub mod gguf;
pub mod quant;
pub mod safetensors;
pub mod tokenizer;

use std::path::Path;

use runtime::ModelConfig;

pub use error::LoadError;
pub use gguf::{load_gguf, write_hf_dir, GgufModel};
pub use safetensors::{load_safetensors_dir, load_safetensors_file, save_safetensors};
pub use tokenizer::{load_tokenizer, tokenizer_from_json};

use crate::tensor::WeightMap;

/// Loads a HF model directory: `config.json` and its safetensors weights (single or sharded).
///
/// # Errors
/// `LoadError` naming the file: unreadable or invalid `config.json`, missing or malformed weights.
pub fn load_model_dir(dir: &Path) -> Result<(ModelConfig, WeightMap), LoadError> {
    let config = load_config(dir)?;
    let weights = load_safetensors_dir(dir)?;
    Ok((config, weights))
}

/// Reads `dir/config.json`.
///
/// # Errors
/// `LoadError::Io` when unreadable, `LoadError::Config` when invalid.
pub fn load_config(dir: &Path) -> Result<ModelConfig, LoadError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| LoadError::io("read", &path, e))?;
    ModelConfig::from_json_str(&text).map_err(|source| LoadError::Config { path, source })
}
