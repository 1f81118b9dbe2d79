//! `TrainState::optim_step` against `torch.optim.AdamW` + `clip_grad_norm_`, with the torch
//! formulas written out here in f64 and the first step's values worked by hand.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

use kernels::ReferenceBackend;
use runtime::LoraConfig;
use worker::adapter::LoraSite;
use worker::optim::{AdamParams, OptimError, TrainState};

/// One site `(d_in 2, d_out 1)` at rank 1: A is `(1, 2)`, B is `(1, 1)`; three values in all.
fn state() -> TrainState {
    let lora = LoraConfig::new(1, 32.0, 0, true, false, false).unwrap();
    let mut s = TrainState::new(&[LoraSite { path: "p".into(), d_in: 2, d_out: 1 }], &lora);
    let pair = s.params.get_mut("p").unwrap();
    pair.a.copy_from_slice(&[1.0, -0.5]);
    pair.b.copy_from_slice(&[0.25]);
    s
}

fn set_grads(s: &mut TrainState, a: [f32; 2], b: f32) {
    let g = s.grads.get_mut("p").unwrap();
    g.a.copy_from_slice(&a);
    g.b[0] = b;
}

fn values(s: &TrainState) -> Vec<f32> {
    let p = s.params.get("p").unwrap();
    vec![p.a[0], p.a[1], p.b[0]]
}

/// torch: clip_grad_norm_ then AdamW (single-tensor), all in f64, on flat `p`, `m`, `v`.
fn torch_step(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], step: i32, lr: f64, wd: f64, max_norm: f64) {
    let (beta1, beta2, eps) = (0.9, 0.99, 1e-8);
    let total = g.iter().map(|x| x * x).sum::<f64>().sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    for i in 0..p.len() {
        let gi = g[i] * coef;
        p[i] *= 1.0 - lr * wd;
        m[i] = beta1 * m[i] + (1.0 - beta1) * gi;
        v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi;
        let (bc1, bc2) = (1.0 - beta1.powi(step), 1.0 - beta2.powi(step));
        p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
    }
}

fn assert_close(got: &[f32], want: &[f64], rel: f64, what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((f64::from(g) - w).abs() <= rel * w.abs().max(1e-3), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn adamw_matches_hand_computed_torch_steps() {
    let be = ReferenceBackend;
    let params = AdamParams::new(0.1, 0.9, 0.99, 1e-8, 0.01, 1.0).unwrap();
    let mut s = state();

    // Step 1: g = (3, 4, 0), norm 5 > 1 → coef 1/(5 + 1e-6), g ≈ (0.6, 0.8, 0). Decay 1 - 0.1·0.01.
    // m = 0.1·g, v = 0.01·g², bc1 = 0.1, bc2 = 0.01: the update is lr·m̂/√v̂ = 0.1·sign(g) (eps aside).
    // A: 1·0.999 - 0.1 = 0.899, -0.5·0.999 - 0.1 = -0.5995; B has no gradient: 0.25·0.999 = 0.24975.
    set_grads(&mut s, [3.0, 4.0], 0.0);
    let m1 = s.optim_step(&be, &params).unwrap();
    assert_eq!(m1.step, 1);
    assert!((m1.grad_norm - 5.0).abs() < 1e-12);
    assert!((m1.clip_coef - 1.0 / (5.0 + 1e-6)).abs() < 1e-15);
    assert_close(&values(&s), &[0.899, -0.5995, 0.24975], 1e-6, "step 1 (by hand)");

    let (mut p, mut m, mut v) = (vec![1.0, -0.5, 0.25], vec![0.0; 3], vec![0.0; 3]);
    torch_step(&mut p, &[3.0, 4.0, 0.0], &mut m, &mut v, 1, 0.1, 0.01, 1.0);
    assert_close(&values(&s), &p, 1e-6, "step 1 (torch formula)");
    assert!(s.grads.get("p").unwrap().a.iter().all(|&x| x == 0.0), "optim_step zeroes the gradients");

    // Step 2: g = (-1, 0, 2), norm √5 > 1: clipped again; bias corrections now use step 2.
    set_grads(&mut s, [-1.0, 0.0], 2.0);
    let m2 = s.optim_step(&be, &params).unwrap();
    assert_eq!(m2.step, 2);
    torch_step(&mut p, &[-1.0, 0.0, 2.0], &mut m, &mut v, 2, 0.1, 0.01, 1.0);
    assert_close(&values(&s), &p, 1e-6, "step 2 (torch formula)");
    let moments = s.adam_m.get("p").unwrap();
    assert_close(&[moments.a[0], moments.a[1], moments.b[0]], &m, 1e-6, "step 2 first moment");
}

#[test]
fn without_a_clip_norm_the_gradient_is_used_as_is() {
    let be = ReferenceBackend;
    let params = AdamParams::new(0.1, 0.9, 0.99, 1e-8, 0.0, 0.0).unwrap();
    let mut s = state();
    set_grads(&mut s, [3.0, 4.0], 0.0);
    let metrics = s.optim_step(&be, &params).unwrap();
    assert_eq!(metrics.clip_coef, 1.0);
    let (mut p, mut m, mut v) = (vec![1.0, -0.5, 0.25], vec![0.0; 3], vec![0.0; 3]);
    torch_step(&mut p, &[3.0, 4.0, 0.0], &mut m, &mut v, 1, 0.1, 0.0, f64::INFINITY);
    assert_close(&values(&s), &p, 1e-6, "unclipped step");
    let second = s.adam_v.get("p").unwrap().a[1];
    assert!(
        (f64::from(second) - 0.01 * 16.0).abs() < 2e-6 * 0.16,
        "v = (1 - β2)·g² with the raw gradient, got {second}"
    );
}

#[test]
fn a_non_finite_gradient_skips_the_step_and_discards_the_gradient() {
    let be = ReferenceBackend;
    let mut s = state();
    let before = s.clone();
    set_grads(&mut s, [f32::INFINITY, 1.0], 0.0);
    let err = s.optim_step(&be, &AdamParams::tinker_defaults()).unwrap_err();
    assert!(matches!(err, OptimError::NonFiniteGradient { .. }), "{err}");
    assert_eq!(s, before, "params, moments and step unchanged; gradients zeroed");
}
