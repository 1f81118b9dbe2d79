//! The training glue on the built-in tiny models: packing datums into one batch, slicing each
//! datum's logprobs, scattering the loss gradients back (with `(N, K)` soft targets padded next to
//! 1-D ones), accumulating, and the optimizer loop. Gradients are checked against f64 central
//! differences of the summed loss computed through `forward`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

use std::collections::BTreeMap;

use kernels::ReferenceBackend;
use runtime::LoraConfig;
use worker::adapter::lora_sites;
use worker::loss::{LossFn, LossInput, LossInputError, LossInputs, LossValues};
use worker::model::Model;
use worker::optim::{AdamParams, TrainState};
use worker::rng::Rng;
use worker::tiny::tiny_model;
use worker::train::{Datum, TrainError};

/// A tiny model and a fresh adapter whose B factors are made non-zero, so that A gets gradients too.
fn setup(name: &str) -> (Model<ReferenceBackend>, TrainState) {
    let (config, weights) = tiny_model(name, 0).unwrap();
    let lora = LoraConfig::new(4, 8.0, 1, true, true, true).unwrap();
    let mut state = TrainState::new(&lora_sites(&config, &lora), &lora);
    let mut rng = Rng::new(42);
    for pair in state.params.sites.values_mut() {
        pair.b.iter_mut().for_each(|x| *x = 0.05 * rng.normal_f32());
    }
    (Model::new(config, weights, ReferenceBackend).unwrap(), state)
}

fn ids(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// A cross-entropy datum with 1-D targets and the given weights.
fn ce_datum(n: usize, seed: u64, weights: Vec<f32>) -> Datum {
    let mut inputs = LossInputs::new();
    let targets = ids(n, seed + 1000, 512).into_iter().map(i64::from).collect();
    inputs.insert("target_tokens".into(), LossInput::vector_i64(targets));
    inputs.insert("weights".into(), LossInput::vector_f32(weights));
    Datum { tokens: ids(n, seed, 512), loss_fn_inputs: inputs }
}

/// A cross-entropy datum with `(n, 2)` soft targets.
fn soft_datum(n: usize, seed: u64, weights: Vec<f32>) -> Datum {
    let mut inputs = LossInputs::new();
    let targets = ids(2 * n, seed + 1000, 512).into_iter().map(i64::from).collect();
    inputs.insert("target_tokens".into(), LossInput::new(vec![n, 2], LossValues::I64(targets)).unwrap());
    inputs.insert("weights".into(), LossInput::new(vec![n, 2], LossValues::F32(weights)).unwrap());
    Datum { tokens: ids(n, seed, 512), loss_fn_inputs: inputs }
}

fn ce() -> LossFn {
    LossFn::parse("cross_entropy", &BTreeMap::new()).unwrap()
}

fn request() -> Vec<Datum> {
    vec![
        ce_datum(5, 1, vec![1.0, -0.5, 0.0, 2.0, 0.75]),
        soft_datum(4, 2, vec![0.7, 0.3, -1.0, 0.5, 0.0, 1.0, 0.25, 0.25]),
        ce_datum(3, 3, vec![0.5, 1.5, -2.0]),
    ]
}

#[test]
fn each_datum_gets_the_logprobs_it_would_get_alone_and_its_cross_entropy() {
    let (model, state) = setup("tiny/llama3");
    let data = request();
    let out = state.forward(&model, &data, &ce()).unwrap();
    assert_eq!(out.logprobs.iter().map(Vec::len).collect::<Vec<_>>(), vec![5, 8, 3]);
    assert_eq!(out.elementwise_loss.iter().map(Vec::len).collect::<Vec<_>>(), vec![5, 4, 3]);
    let mut total = 0.0f64;
    for (i, d) in data.iter().enumerate() {
        let alone = state.forward(&model, std::slice::from_ref(d), &ce()).unwrap();
        assert_eq!(alone.logprobs[0], out.logprobs[i], "datum {i}: packed and padded logprobs differ from alone");
        let LossValues::F32(w) = d.loss_fn_inputs["weights"].values() else { panic!("weights are float32") };
        let k = w.len() / d.tokens.len();
        for row in 0..d.tokens.len() {
            let want: f64 = (0..k).map(|j| -f64::from(w[row * k + j]) * f64::from(out.logprobs[i][row * k + j])).sum();
            assert!((f64::from(out.elementwise_loss[i][row]) - want).abs() <= 1e-5 * (1.0 + want.abs()));
            total += want;
        }
    }
    let loss_sum = out.metrics["loss:sum"];
    assert!((loss_sum - total).abs() <= 1e-9 * (1.0 + total.abs()), "loss:sum {loss_sum} vs {total}");
    assert_eq!(out.metrics["tokens:sum"], 12.0);
}

#[test]
fn lora_gradients_match_finite_differences_of_the_summed_loss() {
    let (model, mut state) = setup("tiny/qwen3");
    let data = request();
    state.forward_backward(&model, &data, &ce()).unwrap();
    // The two largest-magnitude gradients of a few sites, A and B alike.
    let mut probes = Vec::new();
    for path in ["lm_head", "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"] {
        let g = state.grads.get(path).unwrap();
        for (is_a, values) in [(true, &g.a), (false, &g.b)] {
            let i = (0..values.len()).max_by(|&x, &y| values[x].abs().total_cmp(&values[y].abs())).unwrap();
            probes.push((path, is_a, i, values[i]));
        }
    }
    let loss_at = |state: &TrainState| state.forward(&model, &data, &ce()).unwrap().metrics["loss:sum"];
    for (path, is_a, i, grad) in probes {
        let h = 1e-2f32;
        let mut shifted = [0.0f64; 2];
        for (slot, sign) in [(0, 1.0f32), (1, -1.0f32)] {
            let mut probe = state.clone();
            let pair = probe.params.get_mut(path).unwrap();
            let x = if is_a { &mut pair.a[i] } else { &mut pair.b[i] };
            *x += sign * h;
            shifted[slot] = loss_at(&probe);
        }
        let fd = (shifted[0] - shifted[1]) / (2.0 * f64::from(h));
        let grad = f64::from(grad);
        assert!(
            (fd - grad).abs() <= 2e-2 * grad.abs() + 2e-3,
            "{path} {} [{i}]: backward {grad}, finite difference {fd}",
            if is_a { "A" } else { "B" }
        );
    }
}

#[test]
fn gradients_accumulate_across_calls_and_forward_adds_none() {
    let (model, state) = setup("tiny/llama3");
    let data = request();
    state.forward(&model, &data, &ce()).unwrap();
    assert!(state.grads.sites.values().all(|p| p.a.iter().chain(&p.b).all(|&x| x == 0.0)), "forward adds nothing");

    let mut together = state.clone();
    together.forward_backward(&model, &data, &ce()).unwrap();
    let mut apart = state.clone();
    for d in &data {
        apart.forward_backward(&model, std::slice::from_ref(d), &ce()).unwrap();
    }
    for (path, g) in &together.grads.sites {
        let h = &apart.grads.sites[path];
        for (x, y) in g.a.iter().chain(&g.b).zip(h.a.iter().chain(&h.b)) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{path}: one call {x}, three calls {y}");
        }
    }
    assert!(together.grads.sites["lm_head"].b.iter().any(|&x| x != 0.0));
}

#[test]
fn a_few_optimizer_steps_lower_a_supervised_loss() {
    let (model, mut state) = setup("tiny/qwen2");
    let data = vec![ce_datum(8, 7, vec![1.0; 8]), ce_datum(6, 8, vec![1.0; 6])];
    let params = AdamParams::new(1e-2, 0.9, 0.95, 1e-12, 0.0, 1.0).unwrap();
    let mut losses = Vec::new();
    for step in 1..=5u64 {
        let out = state.forward_backward(&model, &data, &ce()).unwrap();
        losses.push(out.metrics["loss:sum"]);
        let m = state.optim_step(model.backend(), &params).unwrap();
        assert_eq!(m.step, step);
        assert!(m.grad_norm > 0.0 && m.clip_coef <= 1.0);
    }
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "loss did not fall at every step: {losses:?}");
}

/// A cross_entropy request without `weights` (as the SDK's docstring example sends it) trains
/// exactly like one with all-ones weights: same logprobs, loss and gradients, bit for bit.
#[test]
fn cross_entropy_without_weights_trains_exactly_like_all_ones_weights() {
    let (model, fresh) = setup("tiny/llama3");
    let with = vec![ce_datum(8, 7, vec![1.0; 8]), soft_datum(5, 9, vec![1.0; 10])];
    let mut without = with.clone();
    without.iter_mut().for_each(|d| assert!(d.loss_fn_inputs.remove("weights").is_some()));
    let (mut a, mut b) = (fresh.clone(), fresh);
    let (out_a, out_b) =
        (a.forward_backward(&model, &with, &ce()).unwrap(), b.forward_backward(&model, &without, &ce()).unwrap());
    assert_eq!(out_a, out_b);
    assert_eq!(out_a.metrics["loss:sum"].to_bits(), out_b.metrics["loss:sum"].to_bits());
    let bits = |s: &TrainState| {
        s.grads.sites.values().flat_map(|p| p.a.iter().chain(&p.b)).map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    assert!(bits(&a).iter().any(|&x| x != 0), "the request produced gradients");
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn rl_losses_run_through_the_same_glue() {
    let (model, mut state) = setup("tiny/llama3");
    let mut d = ce_datum(6, 4, vec![1.0; 6]);
    d.loss_fn_inputs.remove("weights");
    // Sampler logprobs = the learner's own: every ratio is 1, so ppo's loss is -ΣA.
    let own = state.forward(&model, std::slice::from_ref(&ce_datum(6, 4, vec![0.0; 6])), &ce()).unwrap();
    d.loss_fn_inputs.insert("logprobs".into(), LossInput::vector_f32(own.logprobs[0].clone()));
    d.loss_fn_inputs.insert("advantages".into(), LossInput::vector_f32(vec![0.0, 0.0, 1.0, 1.0, -0.5, 2.0]));
    let ppo = LossFn::parse("ppo", &BTreeMap::new()).unwrap();
    let out = state.forward_backward(&model, &[d], &ppo).unwrap();
    assert!((out.metrics["loss:sum"] + 3.5).abs() < 1e-9, "loss:sum {}", out.metrics["loss:sum"]);
    assert_eq!(out.metrics["clip_fraction:mean"], 0.0);
    assert_eq!(out.metrics["active_tokens:sum"], 4.0);
    assert!(state.grads.sites["lm_head"].b.iter().any(|&x| x != 0.0));
}

#[test]
fn bad_requests_name_the_datum_and_leave_the_state_untouched() {
    let (model, mut state) = setup("tiny/llama3");
    let before = state.clone();
    let mut data = request();
    data[1]
        .loss_fn_inputs
        .insert("target_tokens".into(), LossInput::new(vec![4, 2], LossValues::I64(vec![600; 8])).unwrap());
    let err = state.forward_backward(&model, &data, &ce()).unwrap_err();
    assert!(matches!(err, TrainError::TargetOutOfVocab { datum: 1, index: 0, token: 600, vocab: 512 }), "{err}");

    let mut data = request();
    data[2].loss_fn_inputs.insert("weights".into(), LossInput::vector_f32(vec![1.0]));
    let err = state.forward_backward(&model, &data, &ce()).unwrap_err();
    assert!(matches!(&err, TrainError::Input(LossInputError::Shape { datum: 2, .. })), "{err}");

    let mut data = request();
    data[0].tokens.push(3);
    let err = state.forward_backward(&model, &data, &ce()).unwrap_err().to_string();
    assert!(err.contains("datum 0") && err.contains("target_tokens"), "{err}");

    assert_eq!(state.forward_backward(&model, &[], &ce()).unwrap_err(), TrainError::NoData);
    assert_eq!(state, before);
}
