//! Turns `lathe serve --model` specs into loaded models: a catalogue name (fetched into the cache
//! when missing), a built-in tiny model, a path to a `.gguf` file or an HF directory, or
//! `NAME=PATH` to serve a path under a chosen name. For a GGUF the HF-style tokenizer directory
//! (`config.json`, `tokenizer.json`, `tokenizer_config.json`) is written into the cache so clients
//! can be pointed at it through `get_info`'s `tokenizer_id`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use runtime::control::BaseModelInfo;
use runtime::ModelConfig;
use worker::tensor::WeightMap;

use crate::cli::catalog::{self, Source};
use crate::cli::fetch;

/// Seed of the built-in tiny models' weights (the same one `lathe bench` uses).
pub const TINY_SEED: u64 = 0;

/// The models `lathe serve` serves when no `--model` is given.
pub fn default_specs() -> Vec<String> {
    vec![
        catalog::SMOLLM2.to_string(),
        "tiny/llama3".to_string(),
        "tiny/qwen3".to_string(),
        "tiny/qwen3-moe".to_string(),
    ]
}

/// Where a spec's weights come from, before anything is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// A catalogue or built-in name (`HuggingFaceTB/SmolLM2-135M-Instruct`, `tiny/llama3`).
    Named(String),
    /// A `.gguf` file or an HF directory, served under `name`.
    Path { name: String, path: PathBuf },
}

/// A model read into memory, ready to be handed to the worker.
pub struct Resolved {
    pub info: BaseModelInfo,
    pub config: ModelConfig,
    pub weights: WeightMap,
    /// `tokenizer.json` text, when the model has a tokenizer.
    pub tokenizer_json: Option<String>,
}

/// Parses one `--model` value without touching the file system beyond checking that a path exists.
///
/// # Errors
/// When the value is neither a known name nor an existing path, or `NAME=` / `=PATH` is empty.
pub fn parse_spec(spec: &str) -> Result<Spec> {
    if catalog::find(spec).is_some() || worker::tiny::tiny_names().contains(&spec) {
        return Ok(Spec::Named(spec.to_string()));
    }
    if let Some((name, path)) = spec.split_once('=') {
        if name.is_empty() || path.is_empty() {
            bail!("`--model {spec}`: both NAME and PATH must be non-empty in NAME=PATH");
        }
        let path = PathBuf::from(path);
        if !path.exists() {
            bail!("`--model {spec}`: {} does not exist", path.display());
        }
        return Ok(Spec::Path { name: name.to_string(), path });
    }
    let path = PathBuf::from(spec);
    if path.exists() {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .with_context(|| format!("`--model {spec}`: cannot take a model name from this path; use NAME=PATH"))?
            .to_string();
        return Ok(Spec::Path { name, path });
    }
    let known: Vec<&str> =
        catalog::CATALOG.iter().map(|e| e.name).chain(worker::tiny::tiny_names().iter().copied()).collect();
    bail!(
        "unknown model `{spec}`: not a known name ({}), an existing .gguf file or HF directory, or NAME=PATH",
        known.join(", ")
    )
}

/// Reads a spec's model. `hf_cache` is where GGUF tokenizer directories are written
/// (`<hf_cache>/<name with '/' as "--">/`). A catalogue model missing from the cache is fetched.
///
/// # Errors
/// Fetch failures (with the `lathe models fetch NAME` hint), unreadable or invalid model files.
pub fn load(spec: &Spec, hf_cache: &Path) -> Result<Resolved> {
    match spec {
        Spec::Named(name) if name.starts_with("tiny/") => {
            let (config, weights) = worker::tiny::tiny_model(name, TINY_SEED)?;
            Ok(Resolved { info: info(name, &config, None), config, weights, tokenizer_json: None })
        }
        Spec::Named(name) => {
            let entry = catalog::find(name).with_context(|| format!("`{name}` is not in the catalogue"))?;
            if matches!(entry.source, Source::BuiltIn) {
                bail!("`{name}` is built in but not a tiny model this build knows");
            }
            if !catalog::is_cached(entry) {
                eprintln!("{name} is not in the model cache yet; fetching it now");
            }
            let path = fetch::fetch(entry).with_context(|| {
                format!("could not fetch `{name}`; fetch it first with `lathe models fetch {name}`, or pass --model")
            })?;
            load_path(name, &path, hf_cache)
        }
        Spec::Path { name, path } => load_path(name, path, hf_cache),
    }
}

fn load_path(name: &str, path: &Path, hf_cache: &Path) -> Result<Resolved> {
    eprintln!("loading {name} from {} ...", path.display());
    if path.extension().is_some_and(|e| e == "gguf") {
        let gguf = worker::load::load_gguf(path)?;
        let dir = hf_cache.join(name.replace('/', "--"));
        worker::load::write_hf_dir(&gguf, &dir)
            .with_context(|| format!("writing the tokenizer directory for `{name}` into {}", dir.display()))?;
        let info = info(name, &gguf.config, Some(dir));
        return Ok(Resolved {
            info,
            config: gguf.config,
            weights: gguf.weights,
            tokenizer_json: Some(gguf.tokenizer_json),
        });
    }
    if !path.is_dir() {
        bail!("`{}` is neither a .gguf file nor an HF model directory (config.json + safetensors)", path.display());
    }
    let (config, weights) = worker::load::load_model_dir(path)?;
    let tokenizer_file = path.join("tokenizer.json");
    let (tokenizer_json, tokenizer_dir) = if tokenizer_file.is_file() {
        let text = std::fs::read_to_string(&tokenizer_file)
            .with_context(|| format!("reading {}", tokenizer_file.display()))?;
        (Some(text), Some(path.to_path_buf()))
    } else {
        (None, None)
    };
    Ok(Resolved { info: info(name, &config, tokenizer_dir), config, weights, tokenizer_json })
}

fn info(name: &str, config: &ModelConfig, tokenizer_dir: Option<PathBuf>) -> BaseModelInfo {
    BaseModelInfo {
        name: name.to_string(),
        arch: config.model_type().to_string(),
        max_context_length: config.max_position_embeddings,
        vocab_size: config.vocab_size,
        tokenizer_dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_and_tiny_names_parse_as_names() {
        assert_eq!(parse_spec("tiny/llama3").unwrap(), Spec::Named("tiny/llama3".into()));
        assert_eq!(parse_spec(catalog::SMOLLM2).unwrap(), Spec::Named(catalog::SMOLLM2.into()));
    }

    #[test]
    fn name_equals_path_keeps_the_chosen_name() {
        let dir = std::env::temp_dir();
        let spec = format!("my/model={}", dir.display());
        assert_eq!(parse_spec(&spec).unwrap(), Spec::Path { name: "my/model".into(), path: dir });
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let err = parse_spec("no/such-model").unwrap_err().to_string();
        assert!(err.contains("unknown model `no/such-model`"), "{err}");
        assert!(err.contains("tiny/qwen3"), "{err}");
    }

    #[test]
    fn a_missing_path_after_equals_is_named_in_the_error() {
        let err = parse_spec("m=/definitely/not/here.gguf").unwrap_err().to_string();
        assert!(err.contains("/definitely/not/here.gguf does not exist"), "{err}");
        assert!(parse_spec("=x").is_err());
    }

    #[test]
    fn a_tiny_model_loads_with_its_config_and_no_tokenizer() {
        let r = load(&Spec::Named("tiny/qwen3".into()), &std::env::temp_dir()).unwrap();
        assert_eq!(r.info.name, "tiny/qwen3");
        assert_eq!(r.info.arch, "qwen3");
        assert_eq!(r.info.vocab_size, 512);
        assert_eq!(r.info.max_context_length, 256);
        assert_eq!(r.info.tokenizer_dir, None);
        assert!(r.tokenizer_json.is_none());
        assert!(r.weights.tensors.contains_key("model.embed_tokens.weight"));
    }

    #[test]
    fn a_gguf_writes_a_tokenizer_directory_into_the_cache() {
        // The real SmolLM2 file, when present (ops/test.sh sets LATHE_SMOLLM2_GGUF; CI requires it).
        let Some(gguf) = std::env::var_os("LATHE_SMOLLM2_GGUF").map(PathBuf::from).filter(|p| p.is_file()) else {
            assert!(std::env::var_os("LATHE_REQUIRE_MODELS").is_none(), "LATHE_REQUIRE_MODELS is set but no GGUF");
            eprintln!("skipped: LATHE_SMOLLM2_GGUF not set or missing");
            return;
        };
        let cache = std::env::temp_dir().join(format!("lathe-serve-resolve-{}", std::process::id()));
        let spec = parse_spec(&format!("org/smol={}", gguf.display())).unwrap();
        let r = load(&spec, &cache).unwrap();
        let dir = cache.join("org--smol");
        assert_eq!(r.info.tokenizer_dir.as_deref(), Some(dir.as_path()));
        assert_eq!(r.info.arch, "llama");
        assert_eq!(r.info.vocab_size, 49152);
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            assert!(dir.join(file).is_file(), "{file} missing");
        }
        assert!(worker::load::tokenizer_from_json(r.tokenizer_json.as_deref().unwrap()).is_ok());
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
