//! Helpers shared by the `model_*` integration tests: tiny models on a chosen backend and
//! adapters with every factor random (B ≠ 0, so gradients reach A and the alpha/r scale matters).
#![allow(dead_code, clippy::unwrap_used)] // each test crate uses a subset; test helpers may unwrap

use kernels::Backend;
use runtime::{LoraConfig, ModelConfig};
use worker::adapter::{lora_sites, LoraWeights};
use worker::model::Model;
use worker::rng::Rng;
use worker::tiny::tiny_model;

pub const FAMILIES: [&str; 3] = ["tiny/llama3", "tiny/qwen3", "tiny/qwen2"];
/// The dense families plus Qwen3-MoE (which the f64 dense reference in `model_gradcheck` does not model).
pub const ALL_FAMILIES: [&str; 4] = ["tiny/llama3", "tiny/qwen3", "tiny/qwen2", "tiny/qwen3-moe"];

pub fn model<B: Backend>(name: &str, backend: B) -> Model<B> {
    let (config, weights) = tiny_model(name, 7).unwrap();
    Model::new(config, weights, backend).unwrap()
}

/// Rank-4 LoRA on every target (attention, MLP, unembedding), alpha 8 → scale 2.
pub fn lora_config() -> LoraConfig {
    LoraConfig::new(4, 8.0, 0, true, true, true).unwrap()
}

/// Every A and B entry normal × `std`, seeded per site.
pub fn random_lora(config: &ModelConfig, lora: &LoraConfig, seed: u64, std: f32) -> LoraWeights {
    let mut w = LoraWeights::zeros(&lora_sites(config, lora), lora.rank);
    for (path, pair) in w.sites.iter_mut() {
        let mut rng = Rng::derive(seed, path);
        for x in pair.a.iter_mut().chain(pair.b.iter_mut()) {
            *x = std * rng.normal_f32();
        }
    }
    w
}

/// `len` token ids in `0..vocab` from `seed`.
pub fn tokens(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// Bitwise equality of two f32 slices, with the first difference in the message.
pub fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!("{what}: index {i} differs: {} vs {}", a[i], b[i]);
    }
}

/// A golden fixture's directory, `ops/golden/fixtures/<name>`.
pub fn golden_fixture_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/golden/fixtures").join(name)
}

/// Every tensor of an f32 safetensors file (fixtures are all f32), by name.
pub fn read_f32_safetensors(path: &std::path::Path) -> std::collections::BTreeMap<String, worker::tensor::HostTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}: fixtures are f32");
            let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (name, worker::tensor::HostTensor::new(view.shape().to_vec(), data))
        })
        .collect()
}

/// A JSON file of a fixture.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One golden sequence: `(tokens, targets, weights)`.
pub type GoldenSeq = (Vec<u32>, Vec<u32>, Vec<f32>);

/// A golden fixture's `case.json` (written by ops/golden/generate.py): its LoRA config and sequences.
pub fn read_golden_case(dir: &std::path::Path) -> (LoraConfig, Vec<GoldenSeq>) {
    use serde_json::Value;
    let v: Value = read_json(&dir.join("case.json"));
    let l = &v["lora"];
    let flag = |k: &str| l[k].as_bool().unwrap();
    let lora = LoraConfig::new(
        l["rank"].as_u64().unwrap() as usize,
        l["alpha"].as_f64().unwrap() as f32,
        0,
        flag("train_attn"),
        flag("train_mlp"),
        flag("train_unembed"),
    )
    .unwrap();
    let ids = |s: &Value, k: &str| s[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let seqs = v["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let w = s["weights"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (ids(s, "tokens"), ids(s, "targets"), w)
        })
        .collect();
    (lora, seqs)
}
