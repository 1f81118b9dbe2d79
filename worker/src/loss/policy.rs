//! The policy-gradient losses on per-token ratios `r = exp(lp - q)` against the sampler's logprobs
//! `q`: importance sampling, PPO, CISPO and DRO, plus the inputs and statistics they share.
//! GSPO, which uses one ratio per sequence, lives in `gspo.rs`.
//!
//! Gradients follow what PyTorch autograd gives for the formulas as written: in PPO's `min`, the
//! gradient flows through the smaller branch, and `clamp` passes gradient only inside `[low, high]`,
//! so a token whose clipped branch is strictly smaller gets zero gradient; on a tie both branches
//! equal `r·A` with the same gradient.

use super::config::Clip;
use super::input::{InputReader, LossInputError, Targets};
use super::metrics::{Metrics, Stat};
use super::DatumLoss;

/// Keys every policy loss accepts.
const BASE_KEYS: [&str; 4] = ["target_tokens", "logprobs", "advantages", "weights"];
const CLIP_KEYS: [&str; 2] = ["clip_low_threshold", "clip_high_threshold"];

/// One datum's validated RL inputs, widened to f64, all `(n)`.
pub(super) struct PolicyInputs {
    /// The sampler's logprobs `q`.
    pub q: Vec<f64>,
    pub advantages: Vec<f64>,
    /// `weights`, or ones when absent.
    pub weights: Vec<f64>,
    /// Per-token clip bounds: the `clip_*_threshold` inputs where given, else the config's.
    /// Empty for the unclipped losses.
    pub low: Vec<f64>,
    pub high: Vec<f64>,
}

impl PolicyInputs {
    /// Whether token `t` can move the objective (`A·w ≠ 0`); the metrics count only these.
    pub fn active(&self, t: usize) -> bool {
        self.advantages[t] * self.weights[t] != 0.0
    }
}

/// Reads the inputs of a policy loss. `clip` is `Some` for the clipped losses, which also accept
/// per-token `clip_low_threshold` / `clip_high_threshold`; `extra` names further accepted keys.
pub(super) fn read_policy_inputs(
    r: &InputReader,
    t: &Targets,
    clip: Option<Clip>,
    extra: &[&str],
) -> Result<PolicyInputs, LossInputError> {
    if t.k != 1 {
        let got = vec![t.n, t.k];
        let expected = format!("[{}] (loss_fn `{}` takes one target per token)", t.n, r.loss);
        return Err(LossInputError::Shape { datum: r.datum, key: "target_tokens".into(), expected, got });
    }
    let mut accepted: Vec<&str> = BASE_KEYS.to_vec();
    if clip.is_some() {
        accepted.extend(CLIP_KEYS);
    }
    accepted.extend(extra);
    r.check_keys(&accepted)?;

    let n = [t.n];
    let q = r.floats("logprobs", &n)?;
    let advantages = r.floats("advantages", &n)?;
    let weights = r.floats_opt("weights", &n)?.unwrap_or_else(|| vec![1.0; t.n]);
    let Some(clip) = clip else {
        // Unclipped losses: the bounds are never read (and their keys were rejected above).
        return Ok(PolicyInputs { q, advantages, weights, low: Vec::new(), high: Vec::new() });
    };
    let low = r.floats_opt(CLIP_KEYS[0], &n)?.unwrap_or_else(|| vec![clip.low; t.n]);
    let high = r.floats_opt(CLIP_KEYS[1], &n)?.unwrap_or_else(|| vec![clip.high; t.n]);
    for i in 0..t.n {
        if low[i] < 0.0 {
            return Err(r.invalid(CLIP_KEYS[0], i, format!("{} is negative; ratio bounds must be ≥ 0", low[i])));
        }
        if low[i] > high[i] {
            let why = format!("the lower ratio bound {} exceeds the upper bound {}", low[i], high[i]);
            return Err(r.invalid(CLIP_KEYS[0], i, why));
        }
    }
    Ok(PolicyInputs { q, advantages, weights, low, high })
}

/// Ratio and clipping statistics over active tokens.
#[derive(Default)]
pub(super) struct RatioStats {
    active: usize,
    ratio_sum: f64,
    ratio_max: Option<f64>,
    clipped: usize,
}

impl RatioStats {
    pub fn record(&mut self, ratio: f64, clipped: bool) {
        self.active += 1;
        self.ratio_sum += ratio;
        self.ratio_max = Some(self.ratio_max.map_or(ratio, |m| m.max(ratio)));
        self.clipped += usize::from(clipped);
    }

    /// Adds `active_tokens:sum`, `ratio:mean`, `ratio:max` and, when `with_clip`, `clip_fraction:mean`.
    pub fn report(&self, metrics: &mut Metrics, with_ratio: bool, with_clip: bool) {
        let count = self.active as f64;
        metrics.add("active_tokens:sum", Stat::Sum(count));
        if with_ratio {
            metrics.add("ratio:mean", Stat::Mean { total: self.ratio_sum, count });
            if let Some(max) = self.ratio_max {
                metrics.add("ratio:max", Stat::Max(max));
            }
        }
        if with_clip {
            metrics.add("clip_fraction:mean", Stat::Mean { total: self.clipped as f64, count });
        }
    }
}

/// Accumulates per-token losses and gradients into a [`DatumLoss`].
pub(super) struct TokenLosses {
    loss: f64,
    elementwise: Vec<f32>, // (n)
    dlogprobs: Vec<f32>,   // (n)
}

impl TokenLosses {
    pub fn new(n: usize) -> Self {
        TokenLosses { loss: 0.0, elementwise: vec![0.0; n], dlogprobs: vec![0.0; n] }
    }

    pub fn set(&mut self, t: usize, loss: f64, grad: f64) {
        self.loss += loss;
        self.elementwise[t] = loss as f32;
        self.dlogprobs[t] = grad as f32;
    }

    pub fn finish(self, mut metrics: Metrics) -> DatumLoss {
        metrics.add("loss:sum", Stat::Sum(self.loss));
        DatumLoss { loss: self.loss, elementwise: self.elementwise, dlogprobs: self.dlogprobs, metrics }
    }
}

/// `Σ -exp(lp - q)·A·w`; gradient `-r·A·w`.
pub(super) fn importance_sampling(r: &InputReader, lp: &[f32], t: &Targets) -> Result<DatumLoss, LossInputError> {
    let p = read_policy_inputs(r, t, None, &[])?;
    let (mut out, mut stats) = (TokenLosses::new(t.n), RatioStats::default());
    for i in 0..t.n {
        let ratio = (f64::from(lp[i]) - p.q[i]).exp();
        let aw = p.advantages[i] * p.weights[i];
        out.set(i, -ratio * aw, -ratio * aw);
        if p.active(i) {
            stats.record(ratio, false);
        }
    }
    let mut metrics = Metrics::default();
    stats.report(&mut metrics, true, false);
    Ok(out.finish(metrics))
}

/// PPO's clipped surrogate for one token with ratio `ratio` (its own gradient `d ratio / d lp =
/// ratio`): returns `(loss, d loss / d lp, clipped)` for `-min(ratio·A, clamp(ratio)·A)·w`.
pub(super) fn clipped_surrogate(ratio: f64, a: f64, w: f64, low: f64, high: f64) -> (f64, f64, bool) {
    let unclipped = ratio * a;
    let clipped = ratio.clamp(low, high) * a;
    if clipped < unclipped {
        // The clipped branch is the min and the ratio is outside [low, high]: no gradient.
        (-clipped * w, 0.0, true)
    } else {
        (-unclipped * w, -a * ratio * w, false)
    }
}

/// `Σ -min(r·A, clip(r, low, high)·A)·w`.
pub(super) fn ppo(r: &InputReader, lp: &[f32], t: &Targets, clip: Clip) -> Result<DatumLoss, LossInputError> {
    let p = read_policy_inputs(r, t, Some(clip), &[])?;
    let (mut out, mut stats) = (TokenLosses::new(t.n), RatioStats::default());
    for i in 0..t.n {
        let ratio = (f64::from(lp[i]) - p.q[i]).exp();
        let (loss, grad, clipped) = clipped_surrogate(ratio, p.advantages[i], p.weights[i], p.low[i], p.high[i]);
        out.set(i, loss, grad);
        if p.active(i) {
            stats.record(ratio, clipped);
        }
    }
    let mut metrics = Metrics::default();
    stats.report(&mut metrics, true, true);
    Ok(out.finish(metrics))
}

/// `Σ -sg(clip(r, low, high))·lp·A·w`; gradient `-clip(r)·A·w`.
pub(super) fn cispo(r: &InputReader, lp: &[f32], t: &Targets, clip: Clip) -> Result<DatumLoss, LossInputError> {
    let p = read_policy_inputs(r, t, Some(clip), &[])?;
    let (mut out, mut stats) = (TokenLosses::new(t.n), RatioStats::default());
    for i in 0..t.n {
        let logprob = f64::from(lp[i]);
        let ratio = (logprob - p.q[i]).exp();
        let weight = ratio.clamp(p.low[i], p.high[i]);
        let aw = p.advantages[i] * p.weights[i];
        out.set(i, -weight * logprob * aw, -weight * aw);
        if p.active(i) {
            stats.record(ratio, ratio < p.low[i] || ratio > p.high[i]);
        }
    }
    let mut metrics = Metrics::default();
    stats.report(&mut metrics, true, true);
    Ok(out.finish(metrics))
}

/// `Σ -(lp·A - ½·β·(lp - q)²)·w`; gradient `-(A - β·(lp - q))·w`.
pub(super) fn dro(r: &InputReader, lp: &[f32], t: &Targets, beta: f64) -> Result<DatumLoss, LossInputError> {
    let p = read_policy_inputs(r, t, None, &[])?;
    let (mut out, mut stats) = (TokenLosses::new(t.n), RatioStats::default());
    let mut penalty = 0.0f64;
    for i in 0..t.n {
        let logprob = f64::from(lp[i]);
        let (a, w) = (p.advantages[i], p.weights[i]);
        let delta = logprob - p.q[i];
        let token_penalty = 0.5 * beta * delta * delta * w;
        penalty += token_penalty;
        out.set(i, -logprob * a * w + token_penalty, -(a - beta * delta) * w);
        if p.active(i) {
            stats.record(delta.exp(), false);
        }
    }
    let mut metrics = Metrics::default();
    stats.report(&mut metrics, true, false);
    metrics.add("penalty:sum", Stat::Sum(penalty));
    Ok(out.finish(metrics))
}
