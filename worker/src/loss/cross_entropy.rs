//! Cross-entropy with real-valued weights: `Σ_t Σ_k -w[t,k]·lp[t,k]`. 1-D targets are the `K = 1`
//! case. Weights may be any finite number, negative included: `forward_backward_custom` sends
//! `weights = -dL/dlp` and relies on this loss's gradient being exactly `-w`.
//!
//! `weights` may be left out: then every target cell weighs 1 (the SDK's own `forward_backward`
//! docstring example sends only `target_tokens`), exactly as if all-ones weights had been sent.

use super::input::{InputReader, LossInputError, Targets};
use super::metrics::{Metrics, Stat};
use super::DatumLoss;

/// `target_tokens` (N) or (N, K), and optionally `weights` of the same shape (absent: all ones).
pub(super) fn cross_entropy(r: &InputReader, lp: &[f32], t: &Targets) -> Result<DatumLoss, LossInputError> {
    r.check_keys(&["target_tokens", "weights"])?;
    let shape = r.inputs.get("target_tokens").map(|x| x.shape().to_vec()).unwrap_or_default();
    let w = r.floats_opt("weights", &shape)?.unwrap_or_else(|| vec![1.0; t.n * t.k]); // (n, k)
    assert_eq!(w.len(), lp.len());

    let mut elementwise = vec![0.0f32; t.n]; // (n)
    let mut dlogprobs = vec![0.0f32; lp.len()]; // (n, k)
    let mut loss = 0.0f64;
    for row in 0..t.n {
        let mut row_loss = 0.0f64;
        for cell in row * t.k..(row + 1) * t.k {
            row_loss -= w[cell] * f64::from(lp[cell]);
            dlogprobs[cell] = -w[cell] as f32;
        }
        elementwise[row] = row_loss as f32;
        loss += row_loss;
    }

    let mut metrics = Metrics::default();
    metrics.add("loss:sum", Stat::Sum(loss));
    metrics.add("tokens:sum", Stat::Sum(t.n as f64));
    metrics.add("weights:sum", Stat::Sum(w.iter().sum()));
    Ok(DatumLoss { loss, elementwise, dlogprobs, metrics })
}
