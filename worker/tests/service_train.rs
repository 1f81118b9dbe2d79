//! Training through `WorkerService::handle` only: create a run, forward_backward and optim_step
//! lower the loss, forward neither accumulates nor changes anything, (N, K) targets come back
//! shaped like themselves, and the RL losses at ratio 1 give `loss:sum = −ΣA`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod service_common;

use std::collections::BTreeMap;

use runtime::control::{Datum, FromWorker, Tensor, TensorValues, ToWorker};
use service_common::*;

#[test]
fn three_forward_backwards_and_steps_lower_the_loss_on_the_trained_batch() {
    let mut svc = service();
    create_run(&mut svc, "r", LLAMA);
    let before = fb(&mut svc, "r", batch(), "cross_entropy", true).metrics["loss:sum"];
    for i in 0..3 {
        let r = fb(&mut svc, "r", batch(), "cross_entropy", false);
        assert!(r.metrics["loss:sum"].is_finite());
        assert_eq!(r.outputs.len(), 4, "one output per datum");
        let m = step(&mut svc, "r", 1e-2);
        assert_eq!(m["step:max"], f64::from(i + 1));
        assert!(m["grad_norm:mean"] > 0.0, "{m:?}");
        assert!(m.keys().all(|k| k.matches(':').count() == 1), "{m:?}");
    }
    let after = fb(&mut svc, "r", batch(), "cross_entropy", true).metrics["loss:sum"];
    assert!(after < 0.9 * before, "loss {before} -> {after}");
}

#[test]
fn forward_twice_gives_identical_logprobs_and_accumulates_no_gradient() {
    let mut svc = service();
    create_run(&mut svc, "r", LLAMA);
    // Make B non-zero first, so a forward's gradient would be visible.
    fb(&mut svc, "r", batch(), "cross_entropy", false);
    step(&mut svc, "r", 1e-2);
    let a = fb(&mut svc, "r", batch(), "cross_entropy", true);
    let b = fb(&mut svc, "r", batch(), "cross_entropy", true);
    assert_eq!(bits(&logprobs(&a)), bits(&logprobs(&b)));
    assert_eq!(a.metrics, b.metrics);
    let m = step(&mut svc, "r", 1e-2);
    assert_eq!(m["grad_norm:mean"], 0.0, "forward-only calls left gradients behind: {m:?}");
}

#[test]
fn two_dimensional_targets_come_back_as_two_dimensional_logprobs() {
    let mut svc = service();
    create_run(&mut svc, "r", LLAMA);
    let tokens = ids(5, 3);
    let targets: Vec<i64> = ids(10, 4).into_iter().map(i64::from).collect();
    let inputs = BTreeMap::from([
        ("target_tokens".to_string(), Tensor { shape: vec![5, 2], values: TensorValues::I64(targets) }),
        ("weights".to_string(), Tensor { shape: vec![5, 2], values: TensorValues::F32(vec![0.5; 10]) }),
    ]);
    let r = fb(&mut svc, "r", vec![Datum { tokens, loss_fn_inputs: inputs, provenance: None }], "cross_entropy", false);
    assert_eq!(r.outputs[0].logprobs.shape, vec![5, 2]);
    assert_eq!(r.outputs[0].elementwise_loss.shape, vec![5]);
    let TensorValues::F32(lp) = &r.outputs[0].logprobs.values else { panic!("float32 logprobs") };
    let expected: f64 = -0.5 * lp.iter().map(|&x| f64::from(x)).sum::<f64>();
    assert!((r.metrics["loss:sum"] - expected).abs() < 1e-4, "{} vs {expected}", r.metrics["loss:sum"]);
}

#[test]
fn rl_losses_with_the_models_own_logprobs_give_minus_the_sum_of_advantages() {
    let mut svc = service();
    create_run(&mut svc, "r", LLAMA);
    let data = batch();
    let own = fb(&mut svc, "r", data.clone(), "cross_entropy", true);
    for loss in ["importance_sampling", "ppo"] {
        let mut sum_a = 0.0f64;
        let rl: Vec<Datum> = data
            .iter()
            .zip(&own.outputs)
            .enumerate()
            .map(|(i, (d, o))| {
                let n = d.tokens.len();
                let adv: Vec<f32> = (0..n).map(|t| ((i * n + t) % 5) as f32 * 0.5 - 0.75).collect();
                sum_a += adv.iter().map(|&a| f64::from(a)).sum::<f64>();
                let inputs = BTreeMap::from([
                    ("target_tokens".to_string(), d.loss_fn_inputs["target_tokens"].clone()),
                    ("logprobs".to_string(), o.logprobs.clone()),
                    ("advantages".to_string(), f32s(adv)),
                ]);
                Datum { tokens: d.tokens.clone(), loss_fn_inputs: inputs, provenance: None }
            })
            .collect();
        let r = fb(&mut svc, "r", rl, loss, false);
        assert!(sum_a.abs() > 1.0, "the advantages must not cancel out for the check to mean anything");
        assert!(
            (r.metrics["loss:sum"] + sum_a).abs() < 1e-9,
            "{loss}: loss:sum {} vs -ΣA {}",
            r.metrics["loss:sum"],
            -sum_a
        );
        assert_eq!(r.metrics["ratio:mean"], 1.0, "{loss}: {:?}", r.metrics);
    }
}

#[test]
fn dropping_a_run_frees_it_and_later_requests_name_it_unknown() {
    let mut svc = service();
    create_run(&mut svc, "r", LLAMA);
    assert_eq!(call(&mut svc, ToWorker::DropRun { run: "r".into() }), FromWorker::Done);
    let (cat, msg) = failure(call(&mut svc, ToWorker::OptimStep { run: "r".into(), adam: adam(1e-3) }));
    assert_eq!(cat, runtime::control::ErrorCategory::User);
    assert!(msg.contains("unknown training run `r`"), "{msg}");
    assert_eq!(call(&mut svc, ToWorker::DropRun { run: "r".into() }), FromWorker::Done, "dropping twice is harmless");
}
