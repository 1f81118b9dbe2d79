//! Multi-tenant steps (issue 4): four training runs on one base model — two LoRA ranks, two loss
//! functions, different trained modules and sequence lengths — stepped together in one packed
//! `step_many` give every run exactly what it gets stepped alone: logprobs, per-token losses,
//! metrics, accumulated gradients and the weights after `optim_step`, bit for bit, over several
//! steps (so B ≠ 0 and every factor gets gradients), on the CPU backend and the reference one,
//! for the dense families and Qwen3-MoE.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod model_common;

use std::collections::BTreeMap;

use kernels::{Backend, CpuBackend, ReferenceBackend};
use model_common::{model, tokens, ALL_FAMILIES};
use runtime::LoraConfig;
use worker::adapter::{lora_sites, LoraWeights};
use worker::loss::{LossFn, LossInput, LossInputs, LossValues};
use worker::model::Model;
use worker::optim::{AdamParams, TrainState};
use worker::rng::Rng;
use worker::train::{step_many, Datum, FbOutput, StepItem};

/// One run: its adapter shape and its loss.
struct RunSpec {
    lora: LoraConfig,
    loss: &'static str,
}

/// Ranks 4 and 8, cross-entropy and importance sampling, crossed; the runs also differ in which
/// modules they adapt so their site sets differ too.
fn specs() -> Vec<RunSpec> {
    vec![
        RunSpec { lora: LoraConfig::new(4, 8.0, 1, true, true, false).unwrap(), loss: "cross_entropy" },
        RunSpec { lora: LoraConfig::new(8, 16.0, 2, true, true, true).unwrap(), loss: "importance_sampling" },
        RunSpec { lora: LoraConfig::new(8, 32.0, 3, true, false, false).unwrap(), loss: "cross_entropy" },
        RunSpec { lora: LoraConfig::new(4, 4.0, 4, false, true, true).unwrap(), loss: "importance_sampling" },
    ]
}

fn floats(n: usize, rng: &mut Rng, scale: f32) -> Vec<f32> {
    (0..n).map(|_| scale * rng.normal_f32()).collect()
}

/// A datum of `n` tokens for `loss`. Run 0's second datum has `(n, 2)` soft targets, so the shared
/// batch is wider (k = 2) than the importance-sampling runs' own batches (k = 1).
fn datum(loss: &str, n: usize, vocab: usize, seed: u64, soft: bool) -> Datum {
    let mut rng = Rng::new(seed);
    let mut inputs = LossInputs::new();
    let k = if soft { 2 } else { 1 };
    let targets: Vec<i64> = tokens(n * k, vocab, seed + 500).into_iter().map(i64::from).collect();
    let shape = if soft { vec![n, 2] } else { vec![n] };
    inputs.insert("target_tokens".into(), LossInput::new(shape.clone(), LossValues::I64(targets)).unwrap());
    if loss == "cross_entropy" {
        let weights = floats(n * k, &mut rng, 1.0).into_iter().map(f32::abs).collect();
        inputs.insert("weights".into(), LossInput::new(shape, LossValues::F32(weights)).unwrap());
    } else {
        // Sampler logprobs near the learner's (around -log V), so exp(lp − q) stays moderate.
        let q = floats(n, &mut rng, 0.1).into_iter().map(|x| x - (vocab as f32).ln()).collect();
        inputs.insert("logprobs".into(), LossInput::vector_f32(q));
        inputs.insert("advantages".into(), LossInput::vector_f32(floats(n, &mut rng, 1.0)));
    }
    Datum { tokens: tokens(n, vocab, seed), loss_fn_inputs: inputs }
}

/// Run `r`'s request at step `step`: one to three datums of varied lengths.
fn request(r: usize, step: u64, loss: &str, vocab: usize) -> Vec<Datum> {
    let lens: &[usize] = match r {
        0 => &[5, 9],
        1 => &[7],
        2 => &[3, 11, 4],
        _ => &[13, 2],
    };
    let seed = 1000 * step + 100 * r as u64;
    lens.iter().enumerate().map(|(i, &n)| datum(loss, n, vocab, seed + i as u64, r == 0 && i == 1)).collect()
}

/// One step item per run, run `r` accumulating gradients when `backward(r)`.
fn step_items<'a>(
    states: &'a mut [TrainState],
    requests: &'a [Vec<Datum>],
    losses: &'a [LossFn],
    backward: impl Fn(usize) -> bool,
) -> Vec<StepItem<'a>> {
    let runs = states.iter_mut().zip(requests).zip(losses).enumerate();
    runs.map(|(r, ((state, data), loss))| StepItem { state, data, loss, backward: backward(r) }).collect()
}

fn states(m: &Model<impl Backend>) -> Vec<TrainState> {
    specs().iter().map(|s| TrainState::new(&lora_sites(m.config(), &s.lora), &s.lora)).collect()
}

fn assert_weights_bits_eq(a: &LoraWeights, b: &LoraWeights, what: &str) {
    assert_eq!(a.sites.keys().collect::<Vec<_>>(), b.sites.keys().collect::<Vec<_>>(), "{what}: sites");
    for (path, pa) in &a.sites {
        let pb = &b.sites[path];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&pa.a) == bits(&pb.a), "{what}: {path}.A differs");
        assert!(bits(&pa.b) == bits(&pb.b), "{what}: {path}.B differs");
    }
}

fn assert_outputs_bits_eq(a: &FbOutput, b: &FbOutput, what: &str) {
    let bits =
        |v: &Vec<Vec<f32>>| v.iter().map(|r| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
    assert!(bits(&a.logprobs) == bits(&b.logprobs), "{what}: logprobs differ");
    assert!(bits(&a.elementwise_loss) == bits(&b.elementwise_loss), "{what}: elementwise losses differ");
    let m = |o: &FbOutput| o.metrics.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect::<BTreeMap<_, _>>();
    assert_eq!(m(a), m(b), "{what}: metrics differ");
}

fn check<B: Backend>(name: &str, backend: B) {
    let m = model(name, backend);
    let vocab = m.config().vocab_size;
    let specs = specs();
    let losses: Vec<LossFn> = specs.iter().map(|s| LossFn::parse(s.loss, &BTreeMap::new()).unwrap()).collect();
    let adam = AdamParams::new(5e-2, 0.9, 0.95, 1e-8, 0.01, 1.0).unwrap();
    let (mut alone, mut together) = (states(&m), states(&m));
    for step in 0..3u64 {
        let requests: Vec<Vec<Datum>> =
            specs.iter().enumerate().map(|(r, s)| request(r, step, s.loss, vocab)).collect();
        let outs_alone: Vec<FbOutput> = alone
            .iter_mut()
            .zip(&requests)
            .zip(&losses)
            .map(|((st, data), loss)| st.forward_backward(&m, data, loss).unwrap())
            .collect();
        let mut items = step_items(&mut together, &requests, &losses, |_| true);
        let outs_together: Vec<FbOutput> = step_many(&m, &mut items).into_iter().map(Result::unwrap).collect();
        for r in 0..specs.len() {
            let what = format!("{name} step {step} run {r}");
            assert_outputs_bits_eq(&outs_together[r], &outs_alone[r], &what);
            assert_weights_bits_eq(&together[r].grads, &alone[r].grads, &format!("{what} gradients"));
            assert!(alone[r].grads.sites.values().any(|p| p.b.iter().any(|&x| x != 0.0)), "{what}: no gradient");
            alone[r].optim_step(m.backend(), &adam).unwrap();
            together[r].optim_step(m.backend(), &adam).unwrap();
            assert_weights_bits_eq(&together[r].params, &alone[r].params, &format!("{what} post-step weights"));
        }
    }
    // The runs really learned different things: no two adapters ended equal where they share a site.
    let p0 = &alone[0].params.sites["model.layers.0.self_attn.q_proj"];
    let p2 = &alone[2].params.sites["model.layers.0.self_attn.q_proj"];
    assert!(p0.rank != p2.rank || p0.a != p2.a, "{name}: runs 0 and 2 ended with the same adapter");
}

#[test]
fn four_runs_stepped_together_equal_each_stepped_alone_on_cpu() {
    for name in ALL_FAMILIES {
        check(name, CpuBackend);
    }
}

#[test]
fn four_runs_stepped_together_equal_each_stepped_alone_on_the_reference_backend() {
    for name in ["tiny/llama3", "tiny/qwen3-moe"] {
        check(name, ReferenceBackend);
    }
}

/// A malformed request in a shared step fails alone: the other runs get their results, and the
/// failing run's state is untouched.
#[test]
fn a_bad_request_in_a_shared_step_fails_only_its_own_run() {
    let m = model("tiny/qwen3", CpuBackend);
    let vocab = m.config().vocab_size;
    let specs = specs();
    let losses: Vec<LossFn> = specs.iter().map(|s| LossFn::parse(s.loss, &BTreeMap::new()).unwrap()).collect();
    let mut good = states(&m);
    let mut shared = states(&m);
    let mut requests: Vec<Vec<Datum>> = specs.iter().enumerate().map(|(r, s)| request(r, 0, s.loss, vocab)).collect();
    requests[1][0].tokens[2] = vocab as u32; // out of the vocabulary
    let before = shared[1].grads.clone();
    let mut items = step_items(&mut shared, &requests, &losses, |_| true);
    let outs = step_many(&m, &mut items);
    let err = outs[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("datum 0") && err.contains("vocab"), "{err}");
    assert_eq!(shared[1].grads, before, "the failed run's gradients changed");
    for r in [0, 2, 3] {
        let alone = good[r].forward_backward(&m, &requests[r], &losses[r]).unwrap();
        assert_outputs_bits_eq(outs[r].as_ref().unwrap(), &alone, &format!("run {r}"));
        assert_weights_bits_eq(&shared[r].grads, &good[r].grads, &format!("run {r} gradients"));
    }
}

/// A forward-only item shares the pass and reports what `forward` reports, with no gradient.
#[test]
fn forward_only_items_share_the_pass_without_gradients() {
    let m = model("tiny/qwen3-moe", CpuBackend);
    let vocab = m.config().vocab_size;
    let specs = specs();
    let losses: Vec<LossFn> = specs.iter().map(|s| LossFn::parse(s.loss, &BTreeMap::new()).unwrap()).collect();
    let mut shared = states(&m);
    let requests: Vec<Vec<Datum>> = specs.iter().enumerate().map(|(r, s)| request(r, 0, s.loss, vocab)).collect();
    let reference = states(&m);
    let want = reference[2].forward(&m, &requests[2], &losses[2]).unwrap();
    let mut items = step_items(&mut shared, &requests, &losses, |r| r != 2);
    let outs = step_many(&m, &mut items);
    assert_outputs_bits_eq(outs[2].as_ref().unwrap(), &want, "forward-only run");
    assert_eq!(shared[2].grads, reference[2].grads, "a forward-only run accumulated gradients");
    assert!(shared[0].grads != reference[0].grads, "a backward run got no gradients");
}
