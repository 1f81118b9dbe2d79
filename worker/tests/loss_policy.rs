//! importance_sampling, ppo, cispo and dro against their formulas (`reference/tinker-protocol.md`
//! §5), written independently here: hand-computed cases with clipping active and inactive, and f64
//! central differences of the loss value with respect to every logprob.
//!
//! The sampler logprobs `q` are chosen so that `lp - q` is a small dyadic number (exact in f32),
//! which makes every ratio an exactly known `exp` value.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

use std::collections::BTreeMap;

use worker::loss::{LossFn, LossInput, LossInputError, LossInputs};

fn loss(name: &str, config: &[(&str, f64)]) -> LossFn {
    LossFn::parse(name, &config.iter().map(|&(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>()).unwrap()
}

/// An RL datum: targets, sampler logprobs, advantages, plus extra keys.
fn rl_inputs(q: &[f32], advantages: &[f32], extra: Vec<(&str, Vec<f32>)>) -> LossInputs {
    let mut map = LossInputs::new();
    map.insert("target_tokens".into(), LossInput::vector_i64((0..q.len() as i64).collect()));
    map.insert("logprobs".into(), LossInput::vector_f32(q.to_vec()));
    map.insert("advantages".into(), LossInput::vector_f32(advantages.to_vec()));
    for (k, v) in extra {
        map.insert(k.into(), LossInput::vector_f32(v));
    }
    map
}

/// Central difference of the library's loss value; `shift_q` moves the sampler logprob with the
/// learner's, holding the ratio fixed (the stop-gradient of CISPO's weight).
fn finite_difference(loss: &LossFn, lp: &[f32], inputs: &LossInputs, shift_q: bool) -> Vec<f64> {
    let value = |lp: &[f32], inputs: &LossInputs| loss.compute(0, lp, inputs).unwrap().loss;
    (0..lp.len())
        .map(|i| {
            let h = 1.0 / 1024.0; // exact in f32, so lp ± h is exact for these lp
            let (mut plus, mut minus) = (lp.to_vec(), lp.to_vec());
            plus[i] += h;
            minus[i] -= h;
            let (mut in_plus, mut in_minus) = (inputs.clone(), inputs.clone());
            if shift_q {
                let q: Vec<f32> = match inputs["logprobs"].values() {
                    worker::loss::LossValues::F32(v) => v.clone(),
                    worker::loss::LossValues::I64(_) => unreachable!("q is float32 here"),
                };
                let (mut qp, mut qm) = (q.clone(), q);
                qp[i] += h;
                qm[i] -= h;
                in_plus.insert("logprobs".into(), LossInput::vector_f32(qp));
                in_minus.insert("logprobs".into(), LossInput::vector_f32(qm));
            }
            (value(&plus, &in_plus) - value(&minus, &in_minus)) / (2.0 * f64::from(h))
        })
        .collect()
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!((got - want).abs() <= tol * (1.0 + want.abs()), "{what}: got {got}, want {want}");
}

fn assert_gradient_matches_fd(loss: &LossFn, lp: &[f32], inputs: &LossInputs, shift_q: bool) {
    let out = loss.compute(0, lp, inputs).unwrap();
    for (i, fd) in finite_difference(loss, lp, inputs, shift_q).into_iter().enumerate() {
        assert_close(f64::from(out.dlogprobs[i]), fd, 1e-5, &format!("{} d loss / d lp[{i}]", loss.name()));
    }
}

// Shared case: lp - q = [0.25, 0.25, -0.5, 0.125], so r = [e^.25, e^.25, e^-.5, e^.125].
const LP: [f32; 4] = [-1.0, -1.0, -2.0, -0.5];
const Q: [f32; 4] = [-1.25, -1.25, -1.5, -0.625];
const A: [f32; 4] = [1.0, -1.0, -2.0, 0.5];
const E_QUARTER: f64 = 1.284_025_416_687_741_4; // e^0.25
const E_MINUS_HALF: f64 = 0.606_530_659_712_633_4; // e^-0.5
const E_EIGHTH: f64 = 1.133_148_453_066_826_3; // e^0.125

#[test]
fn importance_sampling_is_minus_ratio_times_advantage_and_weights_scale_it() {
    let is = loss("importance_sampling", &[]);
    let out = is.compute(0, &[-1.0, -0.5], &rl_inputs(&[-1.25, -0.5], &[2.0, -1.0], vec![])).unwrap();
    // -e^0.25·2 and -1·(-1).
    assert_close(out.loss, -2.0 * E_QUARTER + 1.0, 1e-12, "loss");
    assert_close(f64::from(out.dlogprobs[0]), -2.0 * E_QUARTER, 1e-7, "grad 0");
    assert_close(f64::from(out.dlogprobs[1]), 1.0, 1e-7, "grad 1");

    let weighted = rl_inputs(&[-1.25, -0.5], &[2.0, -1.0], vec![("weights", vec![3.0, 0.0])]);
    let out = is.compute(0, &[-1.0, -0.5], &weighted).unwrap();
    assert_close(out.loss, -6.0 * E_QUARTER, 1e-12, "weighted loss");
    assert_eq!(out.dlogprobs[1], 0.0);
    let metrics = out.metrics.finish();
    assert_eq!(metrics["active_tokens:sum"], 1.0, "a zero weight makes a token inactive");
    assert_close(metrics["ratio:mean"], E_QUARTER, 1e-12, "ratio:mean");
    assert_gradient_matches_fd(&is, &LP, &rl_inputs(&Q, &A, vec![("weights", vec![0.5, 2.0, -1.0, 1.0])]), false);
}

#[test]
fn ppo_clips_the_ratio_only_where_the_clipped_branch_is_the_minimum() {
    let ppo = loss("ppo", &[]);
    let out = ppo.compute(0, &LP, &rl_inputs(&Q, &A, vec![])).unwrap();
    // t0: r = e^.25 > 1.2, A > 0 → clipped: loss -1.2, grad 0.
    // t1: same r, A < 0 → min is r·A: loss e^.25, grad -A·r = e^.25.
    // t2: r = e^-.5 < 0.8, A < 0 → clipped: loss -(0.8·-2) = 1.6, grad 0.
    // t3: r = e^.125 in range: loss -0.5·e^.125, grad the same.
    let want_loss = [-1.2, E_QUARTER, 1.6, -0.5 * E_EIGHTH];
    let want_grad = [0.0, E_QUARTER, 0.0, -0.5 * E_EIGHTH];
    assert_close(out.loss, want_loss.iter().sum(), 1e-12, "loss");
    for t in 0..4 {
        assert_close(f64::from(out.elementwise[t]), want_loss[t], 1e-7, &format!("loss[{t}]"));
        assert_close(f64::from(out.dlogprobs[t]), want_grad[t], 1e-7, &format!("grad[{t}]"));
    }
    let metrics = out.metrics.finish();
    assert_eq!(metrics["clip_fraction:mean"], 0.5);
    assert_close(metrics["ratio:mean"], (2.0 * E_QUARTER + E_MINUS_HALF + E_EIGHTH) / 4.0, 1e-12, "ratio:mean");
    assert_close(metrics["ratio:max"], E_QUARTER, 1e-12, "ratio:max");
    assert_gradient_matches_fd(&ppo, &LP, &rl_inputs(&Q, &A, vec![]), false);
}

#[test]
fn ppo_with_every_ratio_inside_its_bounds_equals_importance_sampling() {
    let wide = loss("ppo", &[("clip_low_threshold", 0.5), ("clip_high_threshold", 1.5)]);
    let data = rl_inputs(&Q, &A, vec![]);
    let ppo = wide.compute(0, &LP, &data).unwrap();
    let is = loss("importance_sampling", &[]).compute(0, &LP, &data).unwrap();
    assert_close(ppo.loss, is.loss, 1e-12, "loss");
    assert_eq!(ppo.dlogprobs, is.dlogprobs);
    assert_eq!(ppo.metrics.finish()["clip_fraction:mean"], 0.0);
    assert_gradient_matches_fd(&wide, &LP, &data, false);
}

#[test]
fn per_token_clip_thresholds_override_the_config() {
    let ppo = loss("ppo", &[]);
    // Token 0 (r = e^.25, A = 1) is clipped at 1.2 by default; a per-token upper bound of 1.5 frees it.
    let data = rl_inputs(&Q, &A, vec![("clip_high_threshold", vec![1.5, 1.2, 1.2, 1.2])]);
    let out = ppo.compute(0, &LP, &data).unwrap();
    assert_close(f64::from(out.elementwise[0]), -E_QUARTER, 1e-7, "loss[0]");
    assert_close(f64::from(out.dlogprobs[0]), -E_QUARTER, 1e-7, "grad[0]");
    assert_eq!(out.dlogprobs[2], 0.0, "token 2 is still clipped below");
    assert_eq!(out.metrics.finish()["clip_fraction:mean"], 0.25);

    let swapped = rl_inputs(&Q, &A, vec![("clip_low_threshold", vec![0.8, 1.3, 0.8, 0.8])]);
    let err = ppo.compute(6, &LP, &swapped).unwrap_err().to_string();
    assert!(err.contains("datum 6") && err.contains("clip_low_threshold") && err.contains("[1]"), "{err}");
}

#[test]
fn cispo_weights_the_logprob_by_the_clipped_ratio_held_constant() {
    let cispo = loss("cispo", &[]);
    let out = cispo.compute(0, &LP, &rl_inputs(&Q, &A, vec![])).unwrap();
    // clip(r) = [1.2, 1.2, 0.8, e^.125]; loss_t = -clip·lp·A, grad_t = -clip·A.
    let clip = [1.2, 1.2, 0.8, E_EIGHTH];
    let want_loss: Vec<f64> = (0..4).map(|t| -clip[t] * f64::from(LP[t]) * f64::from(A[t])).collect();
    let want_grad: Vec<f64> = (0..4).map(|t| -clip[t] * f64::from(A[t])).collect();
    assert_close(out.loss, 1.2 - 1.2 - 3.2 + 0.25 * E_EIGHTH, 1e-12, "hand-computed loss");
    for t in 0..4 {
        assert_close(f64::from(out.elementwise[t]), want_loss[t], 1e-7, &format!("loss[{t}]"));
        assert_close(f64::from(out.dlogprobs[t]), want_grad[t], 1e-7, &format!("grad[{t}]"));
    }
    assert_eq!(out.metrics.finish()["clip_fraction:mean"], 0.75);
    // With the ratio held fixed (q moved along with lp), the value's slope is the gradient.
    assert_gradient_matches_fd(&cispo, &LP, &rl_inputs(&Q, &A, vec![("weights", vec![1.0, 2.0, 0.5, -1.0])]), true);
}

#[test]
fn dro_penalises_the_squared_log_ratio() {
    let dro = loss("dro", &[("beta", 0.5)]);
    let data = rl_inputs(&[-1.25, -1.5], &[1.0, -0.5], vec![]);
    let out = dro.compute(0, &[-1.0, -2.0], &data).unwrap();
    // t0: δ = .25: -(-1·1 - ½·.5·.0625) = 1.015625, grad -(1 - .5·.25) = -0.875.
    // t1: δ = -.5: -((-2)(-.5) - ½·.5·.25) = -0.9375, grad -(-.5 - .5·(-.5)) = 0.25.
    assert_eq!(out.loss, 0.078125);
    assert_eq!(out.elementwise, vec![1.015625, -0.9375]);
    assert_eq!(out.dlogprobs, vec![-0.875, 0.25]);
    assert_eq!(out.metrics.finish()["penalty:sum"], 0.078125);
    assert_gradient_matches_fd(&dro, &LP, &rl_inputs(&Q, &A, vec![("weights", vec![1.0, 0.5, 2.0, -1.0])]), false);
}

#[test]
fn missing_rl_inputs_and_soft_targets_are_rejected_by_name() {
    let ppo = loss("ppo", &[]);
    let mut data = rl_inputs(&Q, &A, vec![]);
    data.remove("advantages");
    let err = ppo.compute(9, &LP, &data).unwrap_err();
    assert!(matches!(&err, LossInputError::Missing { datum: 9, key, .. } if key == "advantages"), "{err}");

    let mut two_d = rl_inputs(&Q, &A, vec![]);
    two_d.insert(
        "target_tokens".into(),
        LossInput::new(vec![2, 2], worker::loss::LossValues::I64(vec![0, 1, 2, 3])).unwrap(),
    );
    assert!(matches!(ppo.compute(0, &LP, &two_d), Err(LossInputError::Shape { .. })));

    let ratio_key_on_is = rl_inputs(&Q, &A, vec![("clip_low_threshold", vec![0.8; 4])]);
    let err = loss("importance_sampling", &[]).compute(0, &LP, &ratio_key_on_is).unwrap_err();
    assert!(matches!(&err, LossInputError::Unexpected { key, .. } if key == "clip_low_threshold"), "{err}");

    let nan_q = rl_inputs(&[-1.0, f32::NAN, -1.0, -1.0], &A, vec![]);
    assert!(matches!(ppo.compute(0, &LP, &nan_q), Err(LossInputError::NotFinite { index: 1, .. })));
}

#[test]
fn a_ratio_that_overflows_is_an_error_not_an_infinite_gradient() {
    // lp - q = 1000: exp overflows even in f64.
    let data = rl_inputs(&[-1.0, -1001.0], &[1.0, 1.0], vec![]);
    let err = loss("importance_sampling", &[]).compute(4, &[-1.0, -1.0], &data).unwrap_err();
    assert_eq!(err, LossInputError::Overflow { datum: 4, loss: "importance_sampling", index: 1 });
    // PPO clips that same ratio: the loss stays finite and the token has no gradient.
    let out = loss("ppo", &[]).compute(4, &[-1.0, -1.0], &data).unwrap();
    assert_eq!(out.dlogprobs[1], 0.0);
}
