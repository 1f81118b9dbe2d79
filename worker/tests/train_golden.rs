//! Ten training steps against PyTorch + PEFT (`ops/golden/fixtures/tiny-*`): the fixture's base
//! model and initial adapter, `forward_backward(cross_entropy)` with the case's real-valued weights
//! on its three sequences, then `optim_step` with its AdamW hyperparameters (clipping active).
//! Every loss before each update must be within 1e-4 relative of PyTorch's, and so must the
//! pre-clip gradient norm that `clip_grad_norm_` returned; the adapter after the ten updates must
//! match PyTorch's to 1e-4 of each tensor's largest value.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod model_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kernels::ReferenceBackend;
use model_common::{golden_fixture_dir, read_f32_safetensors, read_json};
use runtime::{LoraConfig, ModelConfig};
use serde_json::Value;
use worker::adapter::{lora_sites, peft_keys};
use worker::loss::{LossFn, LossInput, LossInputs};
use worker::model::Model;
use worker::optim::{AdamParams, TrainState};
use worker::tensor::WeightMap;
use worker::train::Datum;

fn fixture(name: &str) -> PathBuf {
    golden_fixture_dir(name)
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn datums(case: &Value) -> Vec<Datum> {
    let seqs = case["sequences"].as_array().unwrap();
    seqs.iter()
        .map(|s| {
            let ints = |k: &str| s[k].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<i64>>();
            let mut inputs = LossInputs::new();
            inputs.insert("target_tokens".into(), LossInput::vector_i64(ints("targets")));
            inputs.insert(
                "weights".into(),
                LossInput::vector_f32(f64s(&s["weights"]).iter().map(|&w| w as f32).collect()),
            );
            Datum {
                tokens: ints("tokens").into_iter().map(|t| u32::try_from(t).unwrap()).collect(),
                loss_fn_inputs: inputs,
            }
        })
        .collect()
}

/// The fixture's model, and a training state holding its initial PEFT adapter.
fn load(dir: &Path, case: &Value) -> (Model<ReferenceBackend>, TrainState) {
    let config = ModelConfig::from_json_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut weights = WeightMap::default();
    for (name, t) in read_f32_safetensors(&dir.join("model.safetensors")) {
        weights.insert(name, t);
    }
    let l = &case["lora"];
    let flag = |k: &str| l[k].as_bool().unwrap();
    let rank = usize::try_from(l["rank"].as_u64().unwrap()).unwrap();
    let lora = LoraConfig::new(
        rank,
        l["alpha"].as_f64().unwrap() as f32,
        0,
        flag("train_attn"),
        flag("train_mlp"),
        flag("train_unembed"),
    )
    .unwrap();
    let sites = lora_sites(&config, &lora);
    let mut state = TrainState::new(&sites, &lora);
    let mut adapter = read_f32_safetensors(&dir.join("adapter_model.safetensors"));
    for site in &sites {
        let (ka, kb) = peft_keys(&site.path);
        let (a, b) = (adapter.remove(&ka).expect("lora_A in adapter"), adapter.remove(&kb).expect("lora_B in adapter"));
        assert_eq!(
            (a.shape.as_slice(), b.shape.as_slice()),
            ([rank, site.d_in].as_slice(), [site.d_out, rank].as_slice())
        );
        let pair = state.params.get_mut(&site.path).unwrap();
        pair.a.copy_from_slice(&a.data);
        pair.b.copy_from_slice(&b.data);
    }
    assert!(adapter.is_empty(), "adapter tensors with no site: {:?}", adapter.keys().collect::<Vec<_>>());
    (Model::new(config, weights, ReferenceBackend).unwrap(), state)
}

fn run_trajectory(name: &str) {
    let dir = fixture(name);
    let case = read_json(&dir.join("case.json"));
    let trajectory = read_json(&dir.join("trajectory.json"));
    let (model, mut state) = load(&dir, &case);
    let data = datums(&case);
    let a = &case["adam"];
    let p = |k: &str| a[k].as_f64().unwrap();
    let adam =
        AdamParams::new(p("learning_rate"), p("beta1"), p("beta2"), p("eps"), p("weight_decay"), p("grad_clip_norm"))
            .unwrap();
    let ce = LossFn::parse("cross_entropy", &BTreeMap::new()).unwrap();
    let (want_losses, want_norms) = (f64s(&trajectory["losses"]), f64s(&trajectory["grad_norms"]));
    assert_eq!(want_losses.len(), 10);
    for step in 0..want_losses.len() {
        let loss = state.forward_backward(&model, &data, &ce).unwrap().metrics["loss:sum"];
        let metrics = state.optim_step(model.backend(), &adam).unwrap();
        let (want, norm) = (want_losses[step], want_norms[step]);
        println!(
            "{name} step {}: loss {loss} (torch {want}), grad_norm {} (torch {norm})",
            step + 1,
            metrics.grad_norm
        );
        assert!((loss - want).abs() <= 1e-4 * want.abs(), "{name} step {}: loss {loss}, torch {want}", step + 1);
        assert!(
            (metrics.grad_norm - norm).abs() <= 1e-4 * norm,
            "{name} step {}: grad_norm {}, torch {norm}",
            step + 1,
            metrics.grad_norm
        );
    }
    // The final adapter: every tensor within 1e-4 of PyTorch's, relative to the tensor's largest value.
    let mut want = read_f32_safetensors(&dir.join("final_adapter.safetensors"));
    for (path, pair) in &state.params.sites {
        let (ka, kb) = peft_keys(path);
        for (key, got) in [(ka, &pair.a), (kb, &pair.b)] {
            let w = want.remove(&key).expect("final adapter has every site");
            let scale = w.data.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let diff = got.iter().zip(&w.data).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-4 * scale, "{name} final {key}: max |diff| {diff} vs max |value| {scale}");
        }
    }
}

#[test]
fn tiny_llama3_ten_step_losses_match_pytorch() {
    run_trajectory("tiny-llama3");
}

#[test]
fn tiny_qwen3_ten_step_losses_match_pytorch() {
    run_trajectory("tiny-qwen3");
}
