//! The dense model against PyTorch (HF transformers + PEFT, f32) golden fixtures from
//! `ops/golden/fixtures/tiny-{llama3,qwen3}`: logits and logprobs within 1e-4, the summed loss, and
//! every LoRA gradient within 1e-4 relative norm. The three fixture sequences run packed in one
//! batch (PyTorch ran each alone), so this also checks packing against an outside oracle.
//! Skips with a notice when the fixtures are absent.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod model_common;

use std::path::Path;

use kernels::{Backend, CpuBackend, ReferenceBackend};
use model_common::{golden_fixture_dir, read_f32_safetensors};
use runtime::{LoraConfig, ModelConfig};
use worker::adapter::{lora_sites, peft_keys, LoraWeights};
use worker::model::{Model, PackedBatch};
use worker::tensor::WeightMap;

struct Case {
    lora: LoraConfig,
    seqs: Vec<(Vec<u32>, Vec<u32>, Vec<f32>)>, // (tokens, targets, weights)
}

fn read_case(dir: &Path) -> Case {
    let (lora, seqs) = model_common::read_golden_case(dir);
    Case { lora, seqs }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn norm(x: impl Iterator<Item = f64>) -> f64 {
    x.map(|v| v * v).sum::<f64>().sqrt()
}

fn check_fixture<B: Backend>(name: &str, backend: B) {
    let dir = golden_fixture_dir(name);
    if !dir.join("expected.safetensors").exists() {
        println!("NOTICE: golden fixture {} is absent; skipping {name}", dir.display());
        return;
    }
    let config = ModelConfig::from_json_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = WeightMap { tensors: read_f32_safetensors(&dir.join("model.safetensors")) };
    let adapter = read_f32_safetensors(&dir.join("adapter_model.safetensors"));
    let expected = read_f32_safetensors(&dir.join("expected.safetensors"));
    let case = read_case(&dir);
    let model = Model::new(config.clone(), weights, backend).unwrap();

    let sites = lora_sites(&config, &case.lora);
    let mut lora = LoraWeights::zeros(&sites, case.lora.rank);
    for site in &sites {
        let (ka, kb) = peft_keys(&site.path);
        let pair = lora.get_mut(&site.path).unwrap();
        pair.a.copy_from_slice(&adapter[&ka].data);
        pair.b.copy_from_slice(&adapter[&kb].data);
    }
    assert_eq!(adapter.len(), 2 * sites.len(), "{name}: every adapter tensor maps to a site");

    let refs: Vec<(&[u32], &[u32])> = case.seqs.iter().map(|(t, g, _)| (&t[..], &g[..])).collect();
    let batch = PackedBatch::new(&refs, 1).unwrap();
    let fwd = model.forward(&batch, Some((&case.lora, &lora))).unwrap();
    let v = config.vocab_size;
    let mut loss = 0.0f64;
    for (i, (_, _, w)) in case.seqs.iter().enumerate() {
        let r = batch.seq_range(i);
        let logits = &fwd.logits[r.start * v..r.end * v];
        let d = max_abs_diff(logits, &expected[&format!("logits.{i}")].data);
        assert!(d <= 1e-4, "{name}: logits of sequence {i} differ from PyTorch by {d}");
        let d = max_abs_diff(&fwd.logprobs[r.clone()], &expected[&format!("logprobs.{i}")].data);
        assert!(d <= 1e-4, "{name}: logprobs of sequence {i} differ from PyTorch by {d}");
        loss -= w.iter().zip(&fwd.logprobs[r]).map(|(&w, &lp)| w as f64 * lp as f64).sum::<f64>();
    }
    let want = expected["loss"].data[0] as f64;
    assert!((loss - want).abs() <= 1e-4 * want.abs().max(1.0), "{name}: loss {loss} vs PyTorch {want}");

    let dlp: Vec<f32> = case.seqs.iter().flat_map(|(_, _, w)| w.iter().map(|x| -x)).collect();
    let mut grads = lora.zeros_like();
    model.backward(&fwd, &batch, &dlp, (&case.lora, &lora), &mut grads).unwrap();
    for site in &sites {
        let g = &grads.sites[&site.path];
        let (ka, kb) = peft_keys(&site.path);
        for (key, got) in [(ka, &g.a), (kb, &g.b)] {
            let want = &expected[&format!("grad.{key}")].data;
            let err = norm(got.iter().zip(want).map(|(&x, &y)| x as f64 - y as f64));
            let size = norm(want.iter().map(|&y| y as f64));
            assert!(size > 0.0, "{name}: reference gradient {key} is zero");
            assert!(err <= 1e-4 * size, "{name}: ‖g − g_ref‖ = {err} > 1e-4 · ‖g_ref‖ = {} for {key}", 1e-4 * size);
        }
    }
}

#[test]
fn reference_backend_matches_pytorch_on_tiny_llama3() {
    check_fixture("tiny-llama3", ReferenceBackend);
}

#[test]
fn reference_backend_matches_pytorch_on_tiny_qwen3() {
    check_fixture("tiny-qwen3", ReferenceBackend);
}

#[test]
fn cpu_backend_matches_pytorch_on_tiny_llama3() {
    check_fixture("tiny-llama3", CpuBackend);
}

#[test]
fn cpu_backend_matches_pytorch_on_tiny_qwen3() {
    check_fixture("tiny-qwen3", CpuBackend);
}
