//! `LoadError`: every way reading a checkpoint (HF directory, safetensors, GGUF) or a tokenizer
//! can fail. Messages say what was wrong and, where there is one, what to do about it.

use std::path::PathBuf;

use runtime::ConfigError;
use thiserror::Error;

/// A checkpoint, GGUF or tokenizer file that lathe cannot load.
#[derive(Debug, Error)]
pub enum LoadError {
    /// Context wrapper: `source` happened while reading `path`.
    #[error("{}: {source}", path.display())]
    InFile { path: PathBuf, source: Box<LoadError> },
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Config { path: PathBuf, source: ConfigError },
    #[error("GGUF metadata does not make a usable model config: {0}")]
    GgufConfig(ConfigError),
    #[error(
        "directory {} has neither model.safetensors nor model.safetensors.index.json; \
         point lathe at a HF model directory",
        dir.display()
    )]
    NoWeights { dir: PathBuf },
    #[error("malformed safetensors data: {0}")]
    Safetensors(String),
    #[error("tensor `{tensor}` has dtype {dtype}; only F32, F16 and BF16 checkpoints are supported")]
    UnsupportedDtype { tensor: String, dtype: String },
    #[error("malformed model.safetensors.index.json: {0}")]
    Index(String),
    #[error("tensor `{tensor}` appears more than once in the checkpoint")]
    DuplicateTensor { tensor: String },
    #[error("cannot write safetensors: {0}")]
    SafetensorsWrite(String),
    #[error("not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")")]
    GgufMagic { found: [u8; 4] },
    #[error("GGUF version {0} is not supported (supported: 2, 3); re-convert the model with a recent llama.cpp")]
    GgufVersion(u32),
    #[error("GGUF is truncated or corrupt: {what} needs {needed} bytes at offset {offset}, but the file has {len}")]
    GgufTruncated { what: &'static str, offset: usize, needed: u64, len: usize },
    #[error("GGUF is corrupt: {0}")]
    GgufCorrupt(String),
    #[error("GGUF metadata key `{key}` is missing")]
    GgufMissingKey { key: String },
    #[error("GGUF metadata key `{key}` has the wrong type: expected {expected}")]
    GgufKeyType { key: String, expected: &'static str },
    #[error(
        "GGUF tensor `{tensor}` has ggml type {type_name} (id {type_id}), which lathe cannot dequantize \
         (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K)"
    )]
    GgufTensorType { tensor: String, type_id: u32, type_name: &'static str },
    #[error("GGUF tensor `{tensor}` is invalid: {why}")]
    GgufTensor { tensor: String, why: String },
    #[error("GGUF architecture `{0}` is not supported (supported: llama, qwen2, qwen3)")]
    GgufArchitecture(String),
    #[error("GGUF tensor `{tensor}` has no HF equivalent lathe knows: {why}")]
    GgufTensorName { tensor: String, why: String },
    #[error("cannot build a tokenizer from GGUF metadata: {0}")]
    GgufTokenizer(String),
    #[error("tokenizer is unusable: {0}")]
    Tokenizer(String),
}

impl LoadError {
    /// Wraps `self` with the file it came from.
    pub fn in_file(self, path: impl Into<PathBuf>) -> LoadError {
        LoadError::InFile { path: path.into(), source: Box::new(self) }
    }

    /// An I/O error with what was being done and to which path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> LoadError {
        LoadError::Io { action, path: path.into(), source }
    }
}
