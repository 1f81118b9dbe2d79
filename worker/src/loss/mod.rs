//! The Tinker losses (`reference/tinker-protocol.md` §5) on one datum's learner logprobs: each
//! returns the loss value, `d loss / d logprobs` for the backward pass, the per-token loss, and
//! metric contributions. The loss of a request is the plain **sum** over datums of these values
//! (never a mean, never normalised by length).
//!
//! Optional inputs and their defaults: `weights` (every loss) is all ones when absent, which for
//! `cross_entropy` is what the SDK's own example relies on; per-token `clip_low_threshold` /
//! `clip_high_threshold` (ppo, cispo, gspo) fall back to the config's bounds. Everything else a
//! loss reads is required (`gspo`'s `sequence_ratio_mask` and `dro`'s `beta` included: the
//! protocol documents no default for them).
//!
//! Metrics (every loss reports `loss:sum`; "active" tokens are those with `A·w ≠ 0`, i.e. the
//! ones the RL objective can move; means over no active token are omitted):
//! - `cross_entropy`: `tokens:sum` (target positions), `weights:sum` (`Σ w` over all cells).
//! - `importance_sampling`: `active_tokens:sum`, `ratio:mean` and `ratio:max` of `exp(lp - q)`
//!   over active tokens.
//! - `ppo`, `cispo`: the same, plus `clip_fraction:mean`, the fraction of active tokens whose
//!   ratio was clipped (ppo: the clipped branch of the min was taken, so the token's gradient is
//!   zero; cispo: the ratio lay outside `[low, high]`, so its weight was clamped).
//! - `dro`: `active_tokens:sum`, `ratio:mean`, `ratio:max`, and `penalty:sum`, `Σ ½·β·(lp - q)²·w`.
//! - `gspo`: `active_tokens:sum`, `clip_fraction:mean` (over active tokens), and
//!   `sequence_ratio:mean`, the mean over datums of each datum's sequence ratio `s`.
//!
//! A `:mean` here is token-weighted across the datums of one call (`sequence_ratio:mean`:
//! datum-weighted). The SDK re-combines chunks' means weighted by datum count, so a chunked
//! request's token-weighted means are approximate; sums and maxima combine exactly. (A request
//! the worker runs in several passes is not chunked in that sense: its [`Metrics`] keep their
//! partial statistics from pass to pass, so every reduction comes out as in one pass.)
//!
//! Nothing here touches a model or a backend: only f32 logprobs in, f64 arithmetic, f32 out.

mod config;
mod cross_entropy;
mod gspo;
mod input;
mod metrics;
mod policy;

pub use config::{Clip, LossConfigError, LossFn, CLIP_HIGH_DEFAULT, CLIP_LOW_DEFAULT};
pub use input::{target_tokens, LossInput, LossInputError, LossInputs, LossValues, Targets, TensorShapeError};
pub use metrics::{Metrics, Stat};

use input::InputReader;

/// One datum's loss.
#[derive(Clone, Debug, PartialEq)]
pub struct DatumLoss {
    /// The datum's loss: the sum of `elementwise`, accumulated in f64.
    pub loss: f64,
    /// Per-token loss (for `(N, K)` cross-entropy: summed over K).
    pub elementwise: Vec<f32>, // (n)
    /// `d loss / d logprobs`, the upstream gradient of the backward pass.
    pub dlogprobs: Vec<f32>, // (n, k)
    pub metrics: Metrics,
}

impl LossFn {
    /// Computes this loss for datum number `datum` (used only to name it in errors), given the
    /// learner's logprobs of its `target_tokens` and its `loss_fn_inputs`.
    ///
    /// # Errors
    /// [`LossInputError`] when an input is missing, unexpected, misshapen, of the wrong dtype or
    /// not finite, or a per-token clip threshold or `sequence_ratio_mask` value is out of range;
    /// `Overflow` when finite inputs still give a non-finite loss or gradient (e.g. `exp(lp - q)`).
    ///
    /// # Panics
    /// When `logprobs` does not hold one value per cell of `target_tokens` (the caller computed
    /// them from those very targets).
    pub fn compute(&self, datum: usize, logprobs: &[f32], inputs: &LossInputs) -> Result<DatumLoss, LossInputError> {
        let n_tokens = inputs.get("target_tokens").and_then(|t| t.shape().first().copied()).unwrap_or(0);
        let targets = target_tokens(datum, self.name(), inputs, n_tokens)?;
        assert_eq!(logprobs.len(), targets.n * targets.k, "logprobs must be (n, k) for the datum's target_tokens");
        let reader = InputReader { datum, loss: self.name(), inputs };
        let out = match *self {
            LossFn::CrossEntropy => cross_entropy::cross_entropy(&reader, logprobs, &targets)?,
            LossFn::ImportanceSampling => policy::importance_sampling(&reader, logprobs, &targets)?,
            LossFn::Ppo(clip) => policy::ppo(&reader, logprobs, &targets, clip)?,
            LossFn::Cispo(clip) => policy::cispo(&reader, logprobs, &targets, clip)?,
            LossFn::Dro { beta } => policy::dro(&reader, logprobs, &targets, beta)?,
            LossFn::Gspo(clip) => gspo::gspo(&reader, logprobs, &targets, clip)?,
        };
        assert_eq!(out.dlogprobs.len(), logprobs.len());
        assert_eq!(out.elementwise.len(), targets.n);
        let bad_row = (0..targets.n).find(|&row| {
            !out.elementwise[row].is_finite()
                || out.dlogprobs[row * targets.k..(row + 1) * targets.k].iter().any(|g| !g.is_finite())
        });
        if let Some(index) = bad_row {
            return Err(LossInputError::Overflow { datum, loss: self.name(), index });
        }
        Ok(out)
    }
}
