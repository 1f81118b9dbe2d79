//! GSPO-token against its formula (`reference/tinker-protocol.md` §5), written independently here:
//! `s = exp(mean_{t∈M}(lp_t - q_t))`, `s_t = sg(s)·exp(lp_t - sg(lp_t))`,
//! loss `Σ -min(s_t·A_t, clip(s_t)·A_t)·w_t`.
//!
//! Because of the stop-gradients the value's slope in `lp_t` is not the autograd gradient, so the
//! finite differences here differentiate the surrogate autograd sees: the token loss as a function
//! of `x` in `s_t = s·exp(x)` at `x = 0`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

use std::collections::BTreeMap;

use worker::loss::{LossFn, LossInput, LossInputError, LossInputs};

fn gspo(low: f64, high: f64) -> LossFn {
    let config: BTreeMap<String, f64> =
        [("clip_low_threshold".to_string(), low), ("clip_high_threshold".to_string(), high)].into();
    LossFn::parse("gspo", &config).unwrap()
}

fn inputs(q: &[f32], advantages: &[f32], mask: &[f32]) -> LossInputs {
    let mut map = LossInputs::new();
    map.insert("target_tokens".into(), LossInput::vector_i64((0..q.len() as i64).collect()));
    map.insert("logprobs".into(), LossInput::vector_f32(q.to_vec()));
    map.insert("advantages".into(), LossInput::vector_f32(advantages.to_vec()));
    map.insert("sequence_ratio_mask".into(), LossInput::vector_f32(mask.to_vec()));
    map
}

/// The token loss autograd differentiates: `-min(s·eˣ·A, clip(s·eˣ)·A)·w`.
fn token_surrogate(s: f64, x: f64, a: f64, w: f64, low: f64, high: f64) -> f64 {
    let st = s * x.exp();
    -(st * a).min(st.clamp(low, high) * a) * w
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!((got - want).abs() <= tol * (1.0 + want.abs()), "{what}: got {got}, want {want}");
}

const LP: [f32; 3] = [-1.0, -2.0, -0.5];
const Q: [f32; 3] = [-1.25, -1.5, -0.5];
const E_MINUS_EIGHTH: f64 = 0.882_496_902_584_595_4; // e^-0.125

#[test]
fn the_sequence_ratio_is_the_masked_mean_log_ratio_and_clipping_zeroes_the_gradient() {
    // Mask {0, 1}: mean(0.25, -0.5) = -0.125, s = e^-0.125 ≈ 0.8825 < 0.9.
    let loss = gspo(0.9, 1.1);
    let a = [1.0f32, -1.0, 2.0];
    let out = loss.compute(0, &LP, &inputs(&Q, &a, &[1.0, 1.0, 0.0])).unwrap();
    // t0 (A = 1): min(s, 0.9) = s, loss -s, grad -s.
    // t1 (A = -1): min(-s, -0.9) = -0.9 → clipped: loss 0.9, grad 0.
    // t2 (A = 2): min(2s, 1.8) = 2s, loss -2s, grad -2s.
    let s = E_MINUS_EIGHTH;
    let want_loss = [-s, 0.9, -2.0 * s];
    let want_grad = [-s, 0.0, -2.0 * s];
    assert_close(out.loss, -3.0 * s + 0.9, 1e-12, "loss");
    for t in 0..3 {
        assert_close(f64::from(out.elementwise[t]), want_loss[t], 1e-7, &format!("loss[{t}]"));
        assert_close(f64::from(out.dlogprobs[t]), want_grad[t], 1e-7, &format!("grad[{t}]"));
        let h = 1e-4;
        let fd = (token_surrogate(s, h, f64::from(a[t]), 1.0, 0.9, 1.1)
            - token_surrogate(s, -h, f64::from(a[t]), 1.0, 0.9, 1.1))
            / (2.0 * h);
        assert_close(f64::from(out.dlogprobs[t]), fd, 1e-6, &format!("surrogate fd[{t}]"));
    }
    let metrics = out.metrics.finish();
    assert_close(metrics["sequence_ratio:mean"], s, 1e-12, "sequence ratio");
    assert_close(metrics["clip_fraction:mean"], 1.0 / 3.0, 1e-12, "clip fraction");
}

#[test]
fn the_mask_selects_which_tokens_enter_the_sequence_ratio() {
    let loss = gspo(0.8, 1.2);
    let a = [0.5f32, 0.5, 0.5];
    // Only token 0 (log-ratio 0.25) counts: s = e^0.25 > 1.2 → clipped for A > 0, loss -1.2·A each.
    let only_first = loss.compute(0, &LP, &inputs(&Q, &a, &[1.0, 0.0, 0.0])).unwrap();
    assert_close(only_first.loss, 3.0 * -1.2 * 0.5, 1e-12, "loss");
    assert_eq!(only_first.dlogprobs, vec![0.0, 0.0, 0.0]);
    // Moving an unmasked token's logprob leaves the value unchanged.
    let moved = loss.compute(0, &[-1.0, -2.0, -0.25], &inputs(&Q, &a, &[1.0, 0.0, 0.0])).unwrap();
    assert_eq!(moved.loss, only_first.loss);
    // Token 2 alone (log-ratio 0) gives s = 1: in range, loss -A·1 per token, grad -A.
    let only_last = loss.compute(0, &LP, &inputs(&Q, &a, &[0.0, 0.0, 1.0])).unwrap();
    assert_close(only_last.loss, -1.5, 1e-12, "loss");
    assert_eq!(only_last.dlogprobs, vec![-0.5, -0.5, -0.5]);
    // An empty mask means s = 1, not NaN.
    let empty = loss.compute(0, &LP, &inputs(&Q, &a, &[0.0, 0.0, 0.0])).unwrap();
    assert_eq!(empty.loss, -1.5);
}

#[test]
fn weights_multiply_each_tokens_loss_and_gradient() {
    let loss = gspo(0.8, 1.2);
    let a = [1.0f32, -2.0, 0.5];
    let mut data = inputs(&Q, &a, &[1.0, 1.0, 1.0]);
    let plain = loss.compute(0, &LP, &data).unwrap();
    data.insert("weights".into(), LossInput::vector_f32(vec![2.0, -1.0, 0.0]));
    let weighted = loss.compute(0, &LP, &data).unwrap();
    for (t, w) in [2.0f32, -1.0, 0.0].into_iter().enumerate() {
        assert_close(f64::from(weighted.elementwise[t]), f64::from(plain.elementwise[t] * w), 1e-7, "loss");
        assert_close(f64::from(weighted.dlogprobs[t]), f64::from(plain.dlogprobs[t] * w), 1e-7, "grad");
    }
}

#[test]
fn a_missing_or_negative_mask_is_rejected_by_name() {
    let loss = gspo(0.8, 1.2);
    let mut data = inputs(&Q, &[1.0; 3], &[1.0, 1.0, 1.0]);
    data.remove("sequence_ratio_mask");
    let err = loss.compute(3, &LP, &data).unwrap_err();
    assert!(matches!(&err, LossInputError::Missing { datum: 3, key, .. } if key == "sequence_ratio_mask"), "{err}");
    let negative = inputs(&Q, &[1.0; 3], &[1.0, -1.0, 1.0]);
    let err = loss.compute(3, &LP, &negative).unwrap_err().to_string();
    assert!(err.contains("sequence_ratio_mask") && err.contains("[1]"), "{err}");
}
