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
    fn sum_squares_adds_in_f64() {
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
        assert_eq!(sum_squares(&[]), 0.0);
    }
}
