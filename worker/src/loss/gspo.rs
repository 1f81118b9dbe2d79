//! GSPO-token: PPO's clipped objective applied to one importance ratio per sequence.
//!
//! `s = exp(mean_{t∈M}(sg(lp_t) - q_t))` over the tokens `M` selected by `sequence_ratio_mask`,
//! `s_t = sg(s)·exp(lp_t - sg(lp_t))` (value `s`, gradient `d s_t / d lp_t = s`), and the loss is
//! `Σ_t -min(s_t·A_t, clip(s_t, low, high)·A_t)·w_t`.
//!
//! The mask is read as non-negative weights of the mean (`Σ m·(lp - q) / Σ m`), which is the plain
//! mean over `M` for a 0/1 mask. A datum whose mask selects nothing has `s = 1` (log-ratio 0)
//! rather than the NaN of an empty mean.

use super::config::Clip;
use super::input::{InputReader, LossInputError, Targets};
use super::metrics::{Metrics, Stat};
use super::policy::{clipped_surrogate, read_policy_inputs, RatioStats, TokenLosses};
use super::DatumLoss;

const MASK_KEY: &str = "sequence_ratio_mask";

pub(super) fn gspo(r: &InputReader, lp: &[f32], t: &Targets, clip: Clip) -> Result<DatumLoss, LossInputError> {
    let p = read_policy_inputs(r, t, Some(clip), &[MASK_KEY])?;
    let mask = r.floats(MASK_KEY, &[t.n])?; // (n)
    if let Some(i) = mask.iter().position(|&m| m < 0.0) {
        return Err(r.invalid(
            MASK_KEY,
            i,
            format!("{} is negative; the mask marks tokens with 1 (or ≥ 0 weights)", mask[i]),
        ));
    }
    let mask_total: f64 = mask.iter().sum();
    let log_ratio_sum: f64 = (0..t.n).map(|i| mask[i] * (f64::from(lp[i]) - p.q[i])).sum();
    let sequence_ratio = if mask_total > 0.0 { (log_ratio_sum / mask_total).exp() } else { 1.0 };

    let (mut out, mut stats) = (TokenLosses::new(t.n), RatioStats::default());
    for i in 0..t.n {
        let (loss, grad, clipped) =
            clipped_surrogate(sequence_ratio, p.advantages[i], p.weights[i], p.low[i], p.high[i]);
        out.set(i, loss, grad);
        if p.active(i) {
            stats.record(sequence_ratio, clipped);
        }
    }
    let mut metrics = Metrics::default();
    stats.report(&mut metrics, false, true);
    metrics.add("sequence_ratio:mean", Stat::Mean { total: sequence_ratio, count: 1.0 });
    Ok(out.finish(metrics))
}
