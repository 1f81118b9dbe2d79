//! GGUF models: parse the container, dequantize every tensor to f32, rename to HF names with HF
//! shapes (ggml lists dims fastest-first, so they are reversed), un-permute Llama Q/K, build the
//! `ModelConfig` and the tokenizer from metadata, and write a HF-style directory for clients.

pub mod config;
pub mod header;
pub mod names;
pub mod permute;
pub mod tokenizer_json;
pub mod value;

use std::path::Path;

use runtime::{Family, ModelConfig};
use serde_json::Value;

use super::error::LoadError;
use super::quant;
use super::tokenizer::tokenizer_from_json;
use crate::tensor::{HostTensor, WeightMap};
pub use header::{GgufFile, GgufTensorInfo};
pub use value::{GgufMetadata, GgufValue};

/// A GGUF model converted to what lathe runs: HF config, HF-named f32 weights, HF tokenizer files.
#[derive(Clone, Debug)]
pub struct GgufModel {
    pub config: ModelConfig,
    pub weights: WeightMap,
    /// `tokenizer.json` text, already checked to load with the `tokenizers` crate.
    pub tokenizer_json: String,
    /// `tokenizer_config.json` content (special tokens, chat template).
    pub tokenizer_config: Value,
    /// `tokenizer.chat_template` (Jinja), when the file has one.
    pub chat_template: Option<String>,
    /// `general.name`, when present.
    pub name: Option<String>,
}

/// Reads and converts the GGUF file at `path`.
///
/// # Errors
/// `LoadError` wrapped with the path: unreadable file, malformed container, unsupported
/// architecture, tensor type or tokenizer, unknown tensor names, shapes that contradict the metadata.
pub fn load_gguf(path: &Path) -> Result<GgufModel, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| LoadError::io("read", path, e))?;
    load_gguf_bytes(&bytes).map_err(|e| e.in_file(path))
}

/// As [`load_gguf`], from the file's bytes.
///
/// # Errors
/// As [`load_gguf`], without the path.
pub fn load_gguf_bytes(bytes: &[u8]) -> Result<GgufModel, LoadError> {
    let file = header::parse(bytes)?;
    let meta = &file.metadata;
    config::family(meta)?;
    let has = |name: &str| file.tensors.iter().any(|t| t.name == name);
    let facts = config::TensorFacts { has_output: has("output.weight"), has_qkv_bias: has("blk.0.attn_q.bias") };
    let config = config::model_config(meta, facts)?;
    let tok = tokenizer_json::build(meta, config.max_position_embeddings)?;
    tokenizer_from_json(&tok.tokenizer_json)?;

    let mut weights = WeightMap::default();
    for info in &file.tensors {
        let hf = names::hf_name(&info.name)?;
        if hf.layer.is_some_and(|l| l >= config.num_hidden_layers) {
            return Err(LoadError::GgufTensor {
                tensor: info.name.clone(),
                why: format!("layer index beyond block_count {}", config.num_hidden_layers),
            });
        }
        let tensor = convert_tensor(&file, bytes, info, &hf.name, &config)?;
        weights.insert(hf.name, tensor);
    }
    let embed = weights.tensors.get("model.embed_tokens.weight").map(|t| t.shape.clone());
    if embed != Some(vec![config.vocab_size, config.hidden_size]) {
        return Err(LoadError::GgufTensor {
            tensor: "token_embd.weight".into(),
            why: format!(
                "HF shape {embed:?}, expected [{}, {}] (vocab from the token list, hidden from embedding_length)",
                config.vocab_size, config.hidden_size
            ),
        });
    }
    Ok(GgufModel {
        config,
        weights,
        tokenizer_json: tok.tokenizer_json,
        tokenizer_config: tok.tokenizer_config,
        chat_template: tok.chat_template,
        name: meta.opt_str("general.name")?.map(str::to_string),
    })
}

/// Dequantizes one tensor into HF shape and layout.
fn convert_tensor(
    file: &GgufFile,
    bytes: &[u8],
    info: &GgufTensorInfo,
    hf_name: &str,
    config: &ModelConfig,
) -> Result<HostTensor, LoadError> {
    let (ty, data) = file.tensor_data(bytes, info)?;
    // The header check made every dim non-zero and their product fit the file, so each fits in usize.
    let values = quant::dequantize(ty, data); // (n_elems,)
    let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
    let heads = match (config.family, hf_name.rsplit('.').nth(1)) {
        (Family::Llama, Some("q_proj")) => Some(config.num_attention_heads),
        (Family::Llama, Some("k_proj")) => Some(config.num_key_value_heads),
        _ => None,
    };
    let values = match heads {
        Some(n_heads) if hf_name.ends_with(".weight") => {
            let rows = n_heads * config.head_dim;
            if shape.len() != 2 || shape[0] != rows {
                return Err(LoadError::GgufTensor {
                    tensor: info.name.clone(),
                    why: format!(
                        "HF shape {shape:?}, expected [{rows}, _] ({n_heads} heads × head_dim {})",
                        config.head_dim
                    ),
                });
            }
            permute::unpermute_rows(&values, rows, shape[1], n_heads)
        }
        _ => values,
    };
    Ok(HostTensor::new(shape, values))
}

/// Writes the HF-style side files for `model` into `dir` (created if needed): `config.json`,
/// `tokenizer.json` and `tokenizer_config.json` (with the chat template). Weights are not written;
/// use [`super::save_safetensors`] for that. Each file is written to a temporary name and renamed,
/// so a concurrent reader never sees half a file.
///
/// # Errors
/// `LoadError::Io` naming the file that could not be written.
pub fn write_hf_dir(model: &GgufModel, dir: &Path) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir).map_err(|e| LoadError::io("create directory", dir, e))?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("a serde_json::Value always serializes");
    write_atomic(&dir.join("config.json"), &pretty(&model.config.to_hf_json()))?;
    write_atomic(&dir.join("tokenizer.json"), &model.tokenizer_json)?;
    write_atomic(&dir.join("tokenizer_config.json"), &pretty(&model.tokenizer_config))
}

fn write_atomic(path: &Path, text: &str) -> Result<(), LoadError> {
    let tmp = path.with_extension("json.partial");
    std::fs::write(&tmp, text).map_err(|e| LoadError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LoadError::io("rename into place", path, e))
}
