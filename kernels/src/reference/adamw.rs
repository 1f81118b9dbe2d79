//! Reference AdamW, the `torch.optim.AdamW` single-tensor path step by step in f32 (bias
//! corrections in f64 as Python computes them), and the f64 sum of squares behind the global
//! gradient norm. Not generic: the optimizer state is f32 by contract.

use crate::AdamStep;

/// One AdamW update of `param`, `m`, `v` (all `(n)`) from `grad (n)`, in place.
pub fn adamw_step(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep) {
    let n = param.len();
    assert!(grad.len() == n && m.len() == n && v.len() == n, "adamw_step: param, grad, m, v must be (n)");
    assert!(s.step >= 1, "adamw_step: step is 1-based, got 0");
    let (lr, wd) = (f64::from(s.learning_rate), f64::from(s.weight_decay));
    let decay = (1.0 - lr * wd) as f32;
    let bias_correction1 = 1.0 - f64::from(s.beta1).powf(s.step as f64);
    let bias_correction2 = 1.0 - f64::from(s.beta2).powf(s.step as f64);
    let step_size = (lr / bias_correction1) as f32;
    let bias_correction2_sqrt = bias_correction2.sqrt() as f32;
    // Python computes `1 - beta` in f64; torch then rounds the scalar to the tensor's f32.
    let one_minus_beta1 = (1.0 - f64::from(s.beta1)) as f32;
    let one_minus_beta2 = (1.0 - f64::from(s.beta2)) as f32;
    for i in 0..n {
        let g = grad[i] * s.grad_scale;
        param[i] *= decay;
        m[i] += (g - m[i]) * one_minus_beta1;
        v[i] = v[i] * s.beta2 + one_minus_beta2 * g * g; // addcmul: self + value·t1·t2
        let denom = v[i].sqrt() / bias_correction2_sqrt + s.eps;
        param[i] += -step_size * m[i] / denom; // addcdiv: self + value·t1/t2
    }
}

/// `Σ x²` accumulated in f64 in index order.
pub fn sum_squares(x: &[f32]) -> f64 {
    x.iter().fold(0.0f64, |acc, &v| acc + f64::from(v) * f64::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_match_a_hand_computed_example() {
        // lr 0.1, β (0.9, 0.99), eps 1e-8, wd 0.1, grad_scale 0.5; raw grads 2, then -1 (so g = 1, -0.5).
        // Step 1: p = 1·0.99 = 0.99; m = 0.1; v = 0.01; bc1 = 0.1, bc2 = 0.01; step_size = 1;
        //         denom = √0.01/√0.01 + 1e-8; p = 0.99 - 0.1/(1 + 1e-8) = 0.890000001.
        // Step 2: p = 0.890000001·0.99; m = 0.1 + (-0.5 - 0.1)·0.1 = 0.04; v = 0.0099 + 0.0025 = 0.0124;
        //         bc1 = 0.19, bc2 = 0.0199; p -= (0.1/0.19)·0.04/(√0.0124/√0.0199 + 1e-8) → 0.85443005842.
        // Bounds are f32 rounding (β itself is rounded to f32: 0.99f32 = 0.99000001).
        // The second element has zero gradient: only decay acts, -2·0.99² = -1.9602, and m = v = 0.
        let s1 = AdamStep {
            learning_rate: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 1,
            grad_scale: 0.5,
        };
        let (mut param, mut m, mut v) = ([1.0f32, -2.0], [0.0f32; 2], [0.0f32; 2]);
        adamw_step(&mut param, &[2.0, 0.0], &mut m, &mut v, s1);
        assert!((f64::from(param[0]) - 0.890_000_001).abs() <= 1e-6 * 0.89, "step 1 param {}", param[0]);
        assert!((m[0] - 0.1).abs() <= 2e-6 * 0.1 && (v[0] - 0.01).abs() <= 2e-6 * 0.01, "step 1 state {m:?} {v:?}");
        adamw_step(&mut param, &[-1.0, 0.0], &mut m, &mut v, AdamStep { step: 2, ..s1 });
        assert!((f64::from(param[0]) - 0.854_430_058_42).abs() <= 1e-6 * 0.85, "step 2 param {}", param[0]);
        assert!(
            (m[0] - 0.04).abs() <= 2e-6 * 0.04 && (v[0] - 0.0124).abs() <= 2e-6 * 0.0124,
            "step 2 state {m:?} {v:?}"
        );
        assert!((param[1] + 1.9602).abs() <= 1e-6 * 1.9602, "decay-only param {}", param[1]);
        assert_eq!((m[1], v[1]), (0.0, 0.0));
    }

    #[test]
    fn sum_squares_adds_in_f64() {
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
        assert_eq!(sum_squares(&[]), 0.0);
    }
}
