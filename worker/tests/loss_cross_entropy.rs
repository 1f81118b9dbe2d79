//! Cross-entropy against its formula `Σ -w·lp`, written independently here: hand-computed cases
//! (1-D and `(N, K)` soft targets, negative weights) and f64 central differences of the loss value
//! with respect to every logprob.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

use std::collections::BTreeMap;

use worker::loss::{LossFn, LossInput, LossInputError, LossInputs, LossValues};

fn inputs(entries: Vec<(&str, LossInput)>) -> LossInputs {
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn ce() -> LossFn {
    LossFn::parse("cross_entropy", &BTreeMap::new()).unwrap()
}

/// Central difference of the library's loss value in f64, using the steps actually representable
/// in f32 around each logprob.
fn finite_difference(loss: &LossFn, lp: &[f32], inputs: &LossInputs) -> Vec<f64> {
    let value = |lp: &[f32]| loss.compute(0, lp, inputs).unwrap().loss;
    (0..lp.len())
        .map(|i| {
            let (mut plus, mut minus) = (lp.to_vec(), lp.to_vec());
            plus[i] += 1e-2;
            minus[i] -= 1e-2;
            let step = f64::from(plus[i]) - f64::from(minus[i]);
            (value(&plus) - value(&minus)) / step
        })
        .collect()
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!((got - want).abs() <= tol * (1.0 + want.abs()), "{what}: got {got}, want {want}");
}

#[test]
fn one_dimensional_weights_give_the_weighted_negative_logprob_sum_including_negative_weights() {
    let lp = [-0.5f32, -1.25, -2.0];
    let data = inputs(vec![
        ("target_tokens", LossInput::vector_i64(vec![4, 5, 6])),
        ("weights", LossInput::vector_f32(vec![1.0, -0.5, 0.0])),
    ]);
    let out = ce().compute(0, &lp, &data).unwrap();
    // -(1)(-0.5) = 0.5; -(-0.5)(-1.25) = -0.625; -(0)(-2) = 0.
    assert_eq!(out.loss, -0.125);
    assert_eq!(out.elementwise, vec![0.5, -0.625, 0.0]);
    assert_eq!(out.dlogprobs, vec![-1.0, 0.5, -0.0]);
    let metrics = out.metrics.finish();
    assert_eq!(metrics["loss:sum"], -0.125);
    assert_eq!(metrics["tokens:sum"], 3.0);
    assert_eq!(metrics["weights:sum"], 0.5);
}

#[test]
fn soft_targets_sum_each_row_over_its_k_weighted_logprobs() {
    let lp = [-0.1f32, -2.3, -0.7, -1.5]; // (2, 2)
    let w = [0.9f32, 0.1, -0.4, 0.6];
    let data = inputs(vec![
        ("target_tokens", LossInput::new(vec![2, 2], LossValues::I64(vec![1, 2, 3, 4])).unwrap()),
        ("weights", LossInput::new(vec![2, 2], LossValues::F32(w.to_vec())).unwrap()),
    ]);
    let out = ce().compute(3, &lp, &data).unwrap();
    let row = |r: usize| -(0..2).map(|k| f64::from(w[2 * r + k]) * f64::from(lp[2 * r + k])).sum::<f64>();
    assert_close(out.loss, row(0) + row(1), 1e-12, "loss");
    assert_close(out.loss, 0.94, 1e-6, "hand-computed loss"); // 0.32 + 0.62
    assert_close(f64::from(out.elementwise[0]), 0.32, 1e-6, "row 0");
    assert_close(f64::from(out.elementwise[1]), 0.62, 1e-6, "row 1");
    assert_eq!(out.dlogprobs, w.iter().map(|x| -x).collect::<Vec<_>>());
}

#[test]
fn gradient_matches_finite_differences_of_the_loss_value() {
    let lp = [-0.3f32, -4.0, -1.1, -0.05, -2.5, -0.9]; // (3, 2)
    let w = vec![1.5f32, -2.0, 0.25, 0.0, -0.75, 3.0];
    let data = inputs(vec![
        ("target_tokens", LossInput::new(vec![3, 2], LossValues::I64(vec![0, 1, 2, 3, 4, 5])).unwrap()),
        ("weights", LossInput::new(vec![3, 2], LossValues::F32(w)).unwrap()),
    ]);
    let out = ce().compute(0, &lp, &data).unwrap();
    for (i, fd) in finite_difference(&ce(), &lp, &data).into_iter().enumerate() {
        assert_close(f64::from(out.dlogprobs[i]), fd, 1e-6, &format!("d loss / d lp[{i}]"));
    }
}

/// The SDK's own `forward_backward` example sends `target_tokens` alone: absent weights must mean
/// a weight of 1 on every target cell, so the result must equal, bit for bit, the one for
/// explicit all-ones weights, for 1-D and `(N, K)` targets alike.
#[test]
fn absent_weights_give_exactly_what_all_ones_weights_give() {
    let lp = [-0.5f32, -1.25, -2.0, -0.125, -3.5, -0.75];
    let cases = [
        (LossInput::vector_i64(vec![1, 2, 3, 4, 5, 6]), LossInput::vector_f32(vec![1.0; 6])),
        (
            LossInput::new(vec![3, 2], LossValues::I64(vec![1, 2, 3, 4, 5, 6])).unwrap(),
            LossInput::new(vec![3, 2], LossValues::F32(vec![1.0; 6])).unwrap(),
        ),
    ];
    for (targets, ones) in cases {
        let without = inputs(vec![("target_tokens", targets.clone())]);
        let with = inputs(vec![("target_tokens", targets), ("weights", ones)]);
        let (a, b) = (ce().compute(3, &lp, &without).unwrap(), ce().compute(3, &lp, &with).unwrap());
        assert_eq!(a.loss.to_bits(), b.loss.to_bits());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.elementwise), bits(&b.elementwise));
        assert_eq!(bits(&a.dlogprobs), bits(&b.dlogprobs));
        assert_eq!(a.metrics, b.metrics, "weights:sum counts the implied ones too");
    }
}

#[test]
fn misshapen_or_non_finite_weights_name_the_key_and_datum() {
    let lp = [-0.5f32, -1.0];
    let short = inputs(vec![
        ("target_tokens", LossInput::vector_i64(vec![1, 2])),
        ("weights", LossInput::vector_f32(vec![1.0])),
    ]);
    let err = ce().compute(2, &lp, &short).unwrap_err().to_string();
    assert!(err.contains("datum 2") && err.contains("`weights`"), "{err}");

    let rl_key = inputs(vec![
        ("target_tokens", LossInput::vector_i64(vec![1, 2])),
        ("weights", LossInput::vector_f32(vec![1.0, 1.0])),
        ("advantages", LossInput::vector_f32(vec![1.0, 1.0])),
    ]);
    let err = ce().compute(0, &lp, &rl_key).unwrap_err();
    assert!(matches!(&err, LossInputError::Unexpected { key, .. } if key == "advantages"), "{err}");

    let infinite = inputs(vec![
        ("target_tokens", LossInput::vector_i64(vec![1, 2])),
        ("weights", LossInput::vector_f32(vec![1.0, f32::INFINITY])),
    ]);
    assert!(matches!(ce().compute(0, &lp, &infinite), Err(LossInputError::NotFinite { index: 1, .. })));
}
