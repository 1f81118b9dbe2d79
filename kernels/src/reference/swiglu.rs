//! Reference gated MLP activation `out = silu(gate) * up`, with `silu(g) = g / (1 + exp(-g))` as
//! PyTorch computes it, elementwise.

use crate::real::Real;

/// The logistic function `1 / (1 + exp(-g))`.
pub fn sigmoid<R: Real>(g: R) -> R {
    R::ONE / (R::ONE + (-g).exp())
}

/// `out (n) = silu(gate (n)) * up (n)`.
pub fn swiglu_forward<R: Real>(out: &mut [R], gate: &[R], up: &[R]) {
    assert!(out.len() == gate.len() && gate.len() == up.len(), "swiglu_forward: out, gate, up must be (n)");
    for i in 0..out.len() {
        let g = gate[i];
        out[i] = g / (R::ONE + (-g).exp()) * up[i];
    }
}

/// `dgate (n)`, `dup (n)` overwritten: `dup = dout·silu(g)`,
/// `dgate = dout·up·σ(g)·(1 + g·(1 - σ(g)))`.
pub fn swiglu_backward<R: Real>(dgate: &mut [R], dup: &mut [R], dout: &[R], gate: &[R], up: &[R]) {
    let n = dout.len();
    assert!(dgate.len() == n && dup.len() == n, "swiglu_backward: dgate, dup must be (n)");
    assert!(gate.len() == n && up.len() == n, "swiglu_backward: gate, up must be (n)");
    for i in 0..n {
        let g = gate[i];
        let sig = sigmoid(g);
        dup[i] = dout[i] * (g * sig);
        dgate[i] = dout[i] * up[i] * (sig * (R::ONE + g * (R::ONE - sig)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_of_zero_is_zero_and_its_slope_is_one_half() {
        let mut out = [1.0f64];
        swiglu_forward(&mut out, &[0.0], &[3.0]);
        assert_eq!(out, [0.0]);
        let (mut dgate, mut dup) = ([0.0f64], [0.0f64]);
        swiglu_backward(&mut dgate, &mut dup, &[2.0], &[0.0], &[3.0]);
        assert_eq!((dgate[0], dup[0]), (2.0 * 3.0 * 0.5, 0.0));
    }
}
