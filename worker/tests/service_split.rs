//! A forward(_backward) too big for the worker's free memory runs split: consecutive pieces of its
//! datums as consecutive passes into the same gradients. Method: the same runs on two services,
//! one without a budget (every request one pass) and one whose budget leaves room for a few
//! datums' activations only, then the same requests on both. On the dense model the replies
//! (per-datum outputs, every metric, sums, means and maxima alike) and the accumulated gradients
//! must agree bit for bit, on the MoE model too (its shared expert factors are reduced per
//! sequence like every other site). A piece failing after earlier pieces added theirs leaves the
//! run exactly as it was.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod service_common;

use std::collections::BTreeMap;

use runtime::control::{Datum, ErrorCategory, FbRequest, FromWorker, TensorValues, ToWorker};
use runtime::LoraConfig;
use service_common::{call, ce_datum, f32s, failure, ids, served, step};
use worker::adapter::LoraWeights;
use worker::rng::Rng;
use worker::service::WorkerService;

const DENSE: &str = "tiny/llama3";
const MOE: &str = "tiny/qwen3-moe";
const RANK: usize = 4;

/// A service on `base` with run "r", its adapter's B made non-zero by one optimizer step (so
/// that A gets gradients too), and the same on a second service with `budget_tokens` tokens of
/// activations free beside what is held and a copy of the run's gradients.
fn pair(base: &str, budget_tokens: u64) -> (WorkerService, WorkerService) {
    let make = || {
        let mut svc = WorkerService::new(1, vec![served(base, false)]);
        let lora = LoraConfig::new(RANK, 8.0, 3, true, true, true).unwrap();
        let reply = call(&mut svc, ToWorker::CreateRun { run: "r".into(), base_model: base.into(), lora });
        assert_eq!(reply, FromWorker::Done);
        let warm = (0..2).map(|i| ce_datum(&ids(9, 70 + i))).collect();
        assert!(matches!(send(&mut svc, fb("r", warm, "cross_entropy", false)), FromWorker::ForwardBackward(_)));
        step(&mut svc, "r", 1e-2);
        svc
    };
    let per_token = served(base, false).model.step_bytes_per_token(RANK);
    let unlimited = make();
    let report = unlimited.memory_report();
    let budget = report.used_bytes + report.runs["r"].gradient_bytes + budget_tokens * per_token;
    (unlimited, make().with_memory_budget(Some(budget)))
}

fn fb(run: &str, data: Vec<Datum>, loss_fn: &str, forward_only: bool) -> ToWorker {
    let item = FbRequest { run: run.into(), data, loss_fn: loss_fn.into(), loss_config: BTreeMap::new(), forward_only };
    ToWorker::ForwardBackwardMany { items: vec![item] }
}

/// The lone item's reply.
fn send(svc: &mut WorkerService, body: ToWorker) -> FromWorker {
    match call(svc, body) {
        FromWorker::Each(mut replies) if replies.len() == 1 => replies.remove(0),
        other => panic!("one reply per item: {other:?}"),
    }
}

/// Datums of uneven lengths (4 to 15 input tokens), next-token cross-entropy, weights 1.
fn datums(n: usize, seed: u64) -> Vec<Datum> {
    (0..n).map(|i| ce_datum(&ids(5 + (i * 7) % 12, seed + i as u64))).collect()
}

/// A reply as bits: each datum's logprobs and per-token losses, and every metric.
fn reply_bits(reply: &FromWorker) -> (Vec<Vec<u32>>, BTreeMap<String, u64>) {
    let FromWorker::ForwardBackward(r) = reply else { panic!("forward_backward failed: {reply:?}") };
    let f32_bits = |v: &TensorValues| match v {
        TensorValues::F32(v) => v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        TensorValues::I64(_) => panic!("outputs are float32"),
    };
    let outputs =
        r.outputs.iter().flat_map(|o| [f32_bits(&o.logprobs.values), f32_bits(&o.elementwise_loss.values)]).collect();
    (outputs, r.metrics.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect())
}

fn grads(svc: &WorkerService) -> LoraWeights {
    svc.train_state("r").unwrap().grads.clone()
}

fn grad_bits(w: &LoraWeights) -> Vec<u32> {
    w.sites.values().flat_map(|p| p.a.iter().chain(&p.b)).map(|x| x.to_bits()).collect()
}

/// The request's activations exceed what `svc` leaves free, so it cannot run as one pass.
fn assert_too_big_for_one_pass(svc: &WorkerService, base: &str, data: &[Datum]) {
    let tokens: usize = data.iter().map(|d| d.tokens.len()).sum();
    let bytes = tokens as u64 * served(base, false).model.step_bytes_per_token(RANK);
    let free = svc.memory_report().free_bytes.unwrap();
    assert!(bytes > 3 * free, "{tokens} tokens ({bytes} B) should need several passes of {free} B");
}

/// PPO datums over `data`: sampler logprobs near the learner's own (so ratios spread around 1 and
/// some clip) and mixed-sign advantages, including zeros (inactive tokens).
fn ppo_datums(svc: &mut WorkerService, data: &[Datum], seed: u64) -> Vec<Datum> {
    let reply = send(svc, fb("r", data.to_vec(), "cross_entropy", true));
    let FromWorker::ForwardBackward(own) = reply else { panic!("forward failed: {reply:?}") };
    let mut rng = Rng::new(seed);
    data.iter()
        .zip(&own.outputs)
        .map(|(d, o)| {
            let TensorValues::F32(lp) = &o.logprobs.values else { panic!("logprobs are float32") };
            let q = lp.iter().map(|&x| x + 0.3 * rng.normal_f32()).collect();
            let a = (0..lp.len()).map(|i| if i % 4 == 0 { 0.0 } else { rng.normal_f32() }).collect();
            let mut inputs = d.loss_fn_inputs.clone();
            inputs.remove("weights");
            inputs.insert("logprobs".into(), f32s(q));
            inputs.insert("advantages".into(), f32s(a));
            Datum { tokens: d.tokens.clone(), loss_fn_inputs: inputs, provenance: None }
        })
        .collect()
}

#[test]
fn a_split_request_gives_the_reply_and_gradients_of_one_pass_bit_for_bit() {
    // 20 tokens free: the 24 datums (about 220 tokens) run as a dozen or more passes.
    let (mut one, mut split) = pair(DENSE, 20);
    let data = datums(24, 500);
    assert_too_big_for_one_pass(&split, DENSE, &data);
    let ppo = ppo_datums(&mut one, &data, 9);
    for (loss, data) in [("cross_entropy", data.clone()), ("ppo", ppo)] {
        for forward_only in [true, false] {
            let a = send(&mut one, fb("r", data.clone(), loss, forward_only));
            let b = send(&mut split, fb("r", data.clone(), loss, forward_only));
            assert_eq!(reply_bits(&a), reply_bits(&b), "{loss}, forward_only {forward_only}");
            assert_eq!(a, b);
            assert_eq!(grad_bits(&grads(&one)), grad_bits(&grads(&split)), "{loss}, forward_only {forward_only}");
        }
    }
    assert!(grad_bits(&grads(&one)).iter().any(|&x| x != 0), "the requests produced gradients");
    assert_eq!(step(&mut one, "r", 1e-2), step(&mut split, "r", 1e-2));
    assert_eq!(one.train_state("r"), split.train_state("r"));
}

#[test]
fn a_split_moe_request_gives_the_reply_and_gradients_of_one_pass_bit_for_bit() {
    let (mut one, mut split) = pair(MOE, 20);
    let data = datums(16, 800);
    assert_too_big_for_one_pass(&split, MOE, &data);
    let a = send(&mut one, fb("r", data.clone(), "cross_entropy", false));
    let b = send(&mut split, fb("r", data, "cross_entropy", false));
    // Outputs and every metric, the MoE load-balance fractions included (kept as counts between
    // passes), bit for bit.
    assert_eq!(reply_bits(&a), reply_bits(&b));
    assert!(reply_bits(&a).1.keys().any(|k| k.starts_with("moe_layer")), "{a:?}");
    // The shared expert factors included: each sequence's sum over experts joins the buffer in
    // sequence order, whichever pass the sequence ran in.
    assert_eq!(grad_bits(&grads(&one)), grad_bits(&grads(&split)));
    assert_eq!(step(&mut one, "r", 1e-2), step(&mut split, "r", 1e-2));
    assert_eq!(one.train_state("r"), split.train_state("r"));
}

#[test]
fn a_piece_failing_after_earlier_pieces_leaves_the_run_exactly_as_it_was() {
    let (mut one, mut split) = pair(DENSE, 20);
    let good = datums(12, 900);
    assert_too_big_for_one_pass(&split, DENSE, &good);
    let before = send(&mut split, fb("r", good.clone(), "cross_entropy", false));
    assert!(matches!(before, FromWorker::ForwardBackward(_)), "{before:?}");
    let state = split.train_state("r").unwrap().clone();

    // The last datum's weights are misshapen (found by its pass's loss, after the forward), and
    // in another request a late datum's token is outside the vocabulary (found when its pass is
    // checked): each error names the datum by its number in the request.
    let mut bad_weights = good.clone();
    bad_weights[11].loss_fn_inputs.insert("weights".into(), f32s(vec![1.0]));
    let mut bad_token = good.clone();
    bad_token[9].tokens[2] = 1 << 20;
    for (data, needle) in [(bad_weights, "datum 11: loss_fn_inputs[`weights`]"), (bad_token, "datum 9: model input")] {
        let (category, message) = failure(send(&mut split, fb("r", data.clone(), "cross_entropy", false)));
        assert_eq!(category, ErrorCategory::User, "{message}");
        assert!(message.contains(needle), "`{message}` does not contain `{needle}`");
        let (_, alone) = failure(send(&mut one, fb("r", data, "cross_entropy", false)));
        assert_eq!(message, alone, "the same error as one pass");
        assert_eq!(split.train_state("r").unwrap(), &state, "the failed request left gradients behind");
        assert_eq!(grad_bits(&split.train_state("r").unwrap().grads), grad_bits(&state.grads));
    }
}
