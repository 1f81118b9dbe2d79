//! Qwen3-MoE against the PyTorch golden fixture `ops/golden/fixtures/tiny-qwen3-moe` (transformers'
//! `Qwen3MoeForCausalLM` math with shared-outer expert LoRA): logits and logprobs within 1e-4,
//! the summed loss, and every LoRA gradient (62 stored tensors, shared factors summed over experts)
//! within 1e-4 relative norm, with the fixture's three sequences packed in one batch. Also checks
//! the routing load against the fixture's assignment counts, and the 10-step AdamW trajectory
//! (losses, pre-clip gradient norms, final adapter) within 1e-4 relative. Skips with a notice when absent.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod model_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kernels::{Backend, CpuBackend, ReferenceBackend};
use model_common::{golden_fixture_dir, read_f32_safetensors, read_json};
use runtime::{LoraConfig, ModelConfig};
use serde_json::Value;
use worker::adapter::{lora_sites, site_tensors, LoraWeights};
use worker::loss::{LossFn, LossInput, LossInputs};
use worker::model::{Model, PackedBatch};
use worker::optim::{AdamParams, TrainState};
use worker::tensor::{HostTensor, WeightMap};
use worker::train::Datum;

/// `(tokens, targets, weights)` of one fixture sequence.
type Seq = model_common::GoldenSeq;

const NAME: &str = "tiny-qwen3-moe";

fn fixture_dir() -> PathBuf {
    golden_fixture_dir(NAME)
}

fn read_case(dir: &Path) -> (LoraConfig, Vec<Seq>) {
    model_common::read_golden_case(dir)
}

/// The adapter stored under the fixture's keys, resolved into lathe's stacked sites.
fn read_adapter(config: &ModelConfig, lora: &LoraConfig, tensors: &BTreeMap<String, HostTensor>) -> LoraWeights {
    let sites = lora_sites(config, lora);
    let mut w = LoraWeights::zeros(&sites, lora.rank);
    let mut used = 0;
    for site in &sites {
        for t in site_tensors(config, site, lora.rank) {
            let src = &tensors[&t.key];
            assert_eq!(src.shape, t.shape.to_vec(), "{}", t.key);
            w.get_mut(&site.path).unwrap().factor_mut(t.factor)[t.range].copy_from_slice(&src.data);
            used += 1;
        }
    }
    assert_eq!(used, tensors.len(), "every adapter tensor maps to a site");
    w
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn norm(x: impl Iterator<Item = f64>) -> f64 {
    x.map(|v| v * v).sum::<f64>().sqrt()
}

fn check<B: Backend>(backend: B) {
    let dir = fixture_dir();
    if !dir.join("expected.safetensors").exists() {
        println!("NOTICE: golden fixture {} is absent; skipping {NAME}", dir.display());
        return;
    }
    let config = ModelConfig::from_json_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = WeightMap { tensors: read_f32_safetensors(&dir.join("model.safetensors")) };
    let expected = read_f32_safetensors(&dir.join("expected.safetensors"));
    let (lcfg, seqs) = read_case(&dir);
    let lora = read_adapter(&config, &lcfg, &read_f32_safetensors(&dir.join("adapter_model.safetensors")));
    let model = Model::new(config.clone(), weights, backend).unwrap();

    let refs: Vec<(&[u32], &[u32])> = seqs.iter().map(|(t, g, _)| (&t[..], &g[..])).collect();
    let batch = PackedBatch::new(&refs, 1).unwrap();
    let fwd = model.forward(&batch, Some((&lcfg, &lora))).unwrap();
    let v = config.vocab_size;
    let mut loss = 0.0f64;
    for (i, (_, _, w)) in seqs.iter().enumerate() {
        let r = batch.seq_range(i);
        let d = max_abs_diff(&fwd.logits[r.start * v..r.end * v], &expected[&format!("logits.{i}")].data);
        assert!(d <= 1e-4, "logits of sequence {i} differ from PyTorch by {d}");
        let d = max_abs_diff(&fwd.logprobs[r.clone()], &expected[&format!("logprobs.{i}")].data);
        assert!(d <= 1e-4, "logprobs of sequence {i} differ from PyTorch by {d}");
        loss -= w.iter().zip(&fwd.logprobs[r]).map(|(&w, &lp)| f64::from(w) * f64::from(lp)).sum::<f64>();
    }
    let want = f64::from(expected["loss"].data[0]);
    assert!((loss - want).abs() <= 1e-4 * want.abs().max(1.0), "loss {loss} vs PyTorch {want}");

    // Load balance: assignments per expert, as fractions of the batch's T·k.
    let routing = read_json(&dir.join("routing.json"));
    let slots = (batch.num_tokens() * config.moe.as_ref().unwrap().num_experts_per_tok) as f32;
    for (layer, fr) in fwd.moe_expert_fractions() {
        let counts = routing[format!("layer{layer}")]["assignments_per_expert"].as_array().unwrap();
        let want: Vec<f32> = counts.iter().map(|c| c.as_f64().unwrap() as f32 / slots).collect();
        assert_eq!(fr, want, "layer {layer}: expert fractions differ from PyTorch's routing");
    }

    let dlp: Vec<f32> = seqs.iter().flat_map(|(_, _, w)| w.iter().map(|x| -x)).collect();
    let mut grads = lora.zeros_like();
    model.backward(&fwd, &batch, &dlp, (&lcfg, &lora), &mut grads).unwrap();
    let mut checked = 0;
    for site in &lora_sites(&config, &lcfg) {
        for t in site_tensors(&config, site, lcfg.rank) {
            let got = &grads.sites[&site.path].factor(t.factor)[t.range];
            let want = &expected[&format!("grad.{}", t.key)].data;
            let err = norm(got.iter().zip(want).map(|(&x, &y)| f64::from(x) - f64::from(y)));
            let size = norm(want.iter().map(|&y| f64::from(y)));
            assert!(size > 0.0, "reference gradient {} is zero", t.key);
            assert!(err <= 1e-4 * size, "‖g − g_ref‖ = {err} > 1e-4 · ‖g_ref‖ = {} for {}", 1e-4 * size, t.key);
            checked += 1;
        }
    }
    assert_eq!(checked, 62, "every stored gradient tensor");
}

#[test]
fn reference_backend_matches_pytorch_on_tiny_qwen3_moe() {
    check(ReferenceBackend);
}

#[test]
fn cpu_backend_matches_pytorch_on_tiny_qwen3_moe() {
    check(CpuBackend);
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn ten_adamw_steps_follow_the_pytorch_trajectory() {
    let dir = fixture_dir();
    if !dir.join("trajectory.json").exists() {
        println!("NOTICE: golden fixture {} is absent; skipping the {NAME} trajectory", dir.display());
        return;
    }
    let config = ModelConfig::from_json_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = WeightMap { tensors: read_f32_safetensors(&dir.join("model.safetensors")) };
    let (lcfg, seqs) = read_case(&dir);
    let model = Model::new(config.clone(), weights, ReferenceBackend).unwrap();
    let mut state = TrainState::new(&lora_sites(&config, &lcfg), &lcfg);
    state.params = read_adapter(&config, &lcfg, &read_f32_safetensors(&dir.join("adapter_model.safetensors")));
    let data: Vec<Datum> = seqs
        .iter()
        .map(|(tokens, targets, w)| {
            let mut inputs = LossInputs::new();
            let targets = targets.iter().map(|&t| i64::from(t)).collect();
            inputs.insert("target_tokens".into(), LossInput::vector_i64(targets));
            inputs.insert("weights".into(), LossInput::vector_f32(w.clone()));
            Datum { tokens: tokens.clone(), loss_fn_inputs: inputs }
        })
        .collect();
    let case = read_json(&dir.join("case.json"));
    let p = |k: &str| case["adam"][k].as_f64().unwrap();
    let adam =
        AdamParams::new(p("learning_rate"), p("beta1"), p("beta2"), p("eps"), p("weight_decay"), p("grad_clip_norm"))
            .unwrap();
    let ce = LossFn::parse("cross_entropy", &BTreeMap::new()).unwrap();
    let trajectory = read_json(&dir.join("trajectory.json"));
    let (want_losses, want_norms) = (f64s(&trajectory["losses"]), f64s(&trajectory["grad_norms"]));
    assert_eq!(want_losses.len(), 10);
    for (step, (want, norm)) in want_losses.iter().zip(&want_norms).enumerate() {
        let loss = state.forward_backward(&model, &data, &ce).unwrap().metrics["loss:sum"];
        let got_norm = state.optim_step(model.backend(), &adam).unwrap().grad_norm;
        assert!((loss - want).abs() <= 1e-4 * want.abs(), "step {}: loss {loss}, torch {want}", step + 1);
        assert!((got_norm - norm).abs() <= 1e-4 * norm, "step {}: grad_norm {got_norm}, torch {norm}", step + 1);
    }
    let want = read_f32_safetensors(&dir.join("final_adapter.safetensors"));
    let got = &state.params;
    for site in &lora_sites(&config, &lcfg) {
        for t in site_tensors(&config, site, lcfg.rank) {
            let (g, w) = (&got.sites[&site.path].factor(t.factor)[t.range], &want[&t.key].data);
            let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let diff = g.iter().zip(w).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-4 * scale, "final {}: max |diff| {diff} vs max |value| {scale}", t.key);
        }
    }
}
