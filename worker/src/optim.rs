//! The training state of one LoRA adapter (parameters, accumulated gradients, AdamW moments, step
//! count) and the optimizer step: global-norm clipping exactly like
//! `torch.nn.utils.clip_grad_norm_`, then `torch.optim.AdamW` per tensor through the backend, then
//! the gradients are zeroed. `forward_backward` (in `train.rs`) only ever adds to the gradients.
//!
//! Everything here is f32 by contract (design §3), with the norm reduced in f64.

use std::collections::BTreeMap;

use kernels::{AdamStep, Backend};
use runtime::LoraConfig;
use thiserror::Error;

use crate::adapter::{LoraSite, LoraWeights};
use crate::init::init_lora;

/// Tinker's `AdamParams` defaults.
pub const LEARNING_RATE_DEFAULT: f64 = 1e-4;
pub const BETA1_DEFAULT: f64 = 0.9;
pub const BETA2_DEFAULT: f64 = 0.95;
pub const EPS_DEFAULT: f64 = 1e-12;
pub const WEIGHT_DECAY_DEFAULT: f64 = 0.0;
/// 0 turns clipping off.
pub const GRAD_CLIP_NORM_DEFAULT: f64 = 0.0;

/// The `+ 1e-6` in `clip_grad_norm_`'s `max_norm / (total_norm + 1e-6)`.
const CLIP_NORM_EPS: f64 = 1e-6;

/// One `optim_step`'s hyperparameters, as Tinker's `AdamParams` sends them. Built only through
/// [`AdamParams::new`], so every instance is valid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    learning_rate: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    grad_clip_norm: f64,
}

/// An `AdamParams` value lathe cannot use, or a step that cannot be taken.
#[derive(Debug, Error, PartialEq)]
pub enum OptimError {
    #[error("adam_params.{field} = {value} is invalid: {why}")]
    InvalidParam { field: &'static str, value: f64, why: &'static str },
    #[error(
        "the accumulated gradient has a non-finite global norm ({grad_norm}); the step was skipped and the \
         gradients discarded. Check the loss inputs of the forward_backward calls since the last optim_step \
         (e.g. sampler logprobs far below the learner's make exp(lp - q) overflow)"
    )]
    NonFiniteGradient { grad_norm: f64 },
}

impl AdamParams {
    /// # Errors
    /// [`OptimError::InvalidParam`] naming the first field that is not finite or out of range:
    /// `learning_rate ≥ 0`, `beta1`, `beta2` in `[0, 1)`, `eps > 0` (0 would divide zero moments by
    /// zero), `weight_decay ≥ 0`, `grad_clip_norm ≥ 0` (0 = no clipping).
    pub fn new(
        learning_rate: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        grad_clip_norm: f64,
    ) -> Result<Self, OptimError> {
        let check = |field: &'static str, value: f64, ok: bool, why: &'static str| {
            if value.is_finite() && ok {
                Ok(())
            } else {
                Err(OptimError::InvalidParam { field, value, why })
            }
        };
        check("learning_rate", learning_rate, learning_rate >= 0.0, "must be a finite number ≥ 0")?;
        check("beta1", beta1, (0.0..1.0).contains(&beta1), "must be in [0, 1)")?;
        check("beta2", beta2, (0.0..1.0).contains(&beta2), "must be in [0, 1)")?;
        check("eps", eps, eps > 0.0, "must be a finite number > 0")?;
        check("weight_decay", weight_decay, weight_decay >= 0.0, "must be a finite number ≥ 0")?;
        check("grad_clip_norm", grad_clip_norm, grad_clip_norm >= 0.0, "must be a finite number ≥ 0 (0 = off)")?;
        Ok(AdamParams { learning_rate, beta1, beta2, eps, weight_decay, grad_clip_norm })
    }

    /// Tinker's defaults: lr 1e-4, β (0.9, 0.95), eps 1e-12, no weight decay, no clipping.
    pub fn tinker_defaults() -> Self {
        AdamParams {
            learning_rate: LEARNING_RATE_DEFAULT,
            beta1: BETA1_DEFAULT,
            beta2: BETA2_DEFAULT,
            eps: EPS_DEFAULT,
            weight_decay: WEIGHT_DECAY_DEFAULT,
            grad_clip_norm: GRAD_CLIP_NORM_DEFAULT,
        }
    }

    pub fn learning_rate(&self) -> f64 {
        self.learning_rate
    }
    pub fn beta1(&self) -> f64 {
        self.beta1
    }
    pub fn beta2(&self) -> f64 {
        self.beta2
    }
    pub fn eps(&self) -> f64 {
        self.eps
    }
    pub fn weight_decay(&self) -> f64 {
        self.weight_decay
    }
    pub fn grad_clip_norm(&self) -> f64 {
        self.grad_clip_norm
    }
}

/// What one `optim_step` did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepMetrics {
    /// Global L2 norm of the accumulated gradient over every LoRA tensor, before clipping.
    pub grad_norm: f64,
    /// The factor the gradient was multiplied by (1 when clipping is off or not needed).
    pub clip_coef: f64,
    pub learning_rate: f64,
    /// The 1-based number of this update.
    pub step: u64,
}

impl StepMetrics {
    /// The wire metrics (`name:reduction`): `grad_norm:mean`, `clip_coef:mean`,
    /// `learning_rate:mean`, `step:max` (each is the single value of this step).
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        [
            ("grad_norm:mean", self.grad_norm),
            ("clip_coef:mean", self.clip_coef),
            ("learning_rate:mean", self.learning_rate),
            ("step:max", self.step as f64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// `clip_grad_norm_`'s coefficient: `min(max_norm / (total_norm + 1e-6), 1)`, or 1 when
/// `max_norm` is 0 (clipping off).
pub fn clip_coef(total_norm: f64, max_norm: f64) -> f64 {
    assert!(total_norm >= 0.0 && max_norm >= 0.0, "norms are non-negative");
    if max_norm == 0.0 {
        return 1.0;
    }
    (max_norm / (total_norm + CLIP_NORM_EPS)).min(1.0)
}

/// One adapter's full training state.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    pub lora: LoraConfig,
    pub params: LoraWeights,
    /// Accumulated by `forward_backward`, consumed and zeroed by [`TrainState::optim_step`].
    pub grads: LoraWeights,
    /// AdamW's first and second moments.
    pub adam_m: LoraWeights,
    pub adam_v: LoraWeights,
    /// Updates applied so far (the next update is `step + 1`).
    pub step: u64,
}

impl TrainState {
    /// A fresh adapter ([`init_lora`]) with zero gradients and moments.
    pub fn new(sites: &[LoraSite], lora: &LoraConfig) -> Self {
        let params = init_lora(sites, lora);
        let zeros = params.zeros_like();
        TrainState { lora: lora.clone(), params, grads: zeros.clone(), adam_m: zeros.clone(), adam_v: zeros, step: 0 }
    }

    /// `Σ g²` over every gradient tensor, in site order, A before B (the square of the global
    /// norm; a sharded caller adds its shards' values before taking the root).
    pub fn grad_sum_squares(&self, backend: &impl Backend) -> f64 {
        self.grads.sites.values().map(|g| backend.sum_squares(&g.a) + backend.sum_squares(&g.b)).sum()
    }

    /// Applies the accumulated gradients: clip by global norm when `grad_clip_norm > 0`, one AdamW
    /// update of every tensor with the 1-based step count, then zero the gradients.
    ///
    /// # Errors
    /// [`OptimError::NonFiniteGradient`] when the gradient norm is NaN or infinite: the parameters,
    /// moments and step count stay as they were, and the gradients are zeroed.
    pub fn optim_step(&mut self, backend: &impl Backend, params: &AdamParams) -> Result<StepMetrics, OptimError> {
        self.assert_same_sites();
        let grad_norm = self.grad_sum_squares(backend).sqrt();
        if !grad_norm.is_finite() {
            self.grads.fill_zero();
            return Err(OptimError::NonFiniteGradient { grad_norm });
        }
        let coef = clip_coef(grad_norm, params.grad_clip_norm);
        self.step += 1;
        let s = AdamStep {
            learning_rate: params.learning_rate as f32,
            beta1: params.beta1 as f32,
            beta2: params.beta2 as f32,
            eps: params.eps as f32,
            weight_decay: params.weight_decay as f32,
            step: self.step,
            grad_scale: coef as f32,
        };
        let tensors = self.params.sites.values_mut().zip(self.grads.sites.values());
        for ((p, g), (m, v)) in tensors.zip(self.adam_m.sites.values_mut().zip(self.adam_v.sites.values_mut())) {
            backend.adamw_step(&mut p.a, &g.a, &mut m.a, &mut v.a, s);
            backend.adamw_step(&mut p.b, &g.b, &mut m.b, &mut v.b, s);
        }
        self.grads.fill_zero();
        Ok(StepMetrics { grad_norm, clip_coef: coef, learning_rate: params.learning_rate, step: self.step })
    }

    /// Parameters, gradients and both moments must hold the same sites with the same shapes, or
    /// the zipped walk in `optim_step` would pair the wrong tensors.
    fn assert_same_sites(&self) {
        for other in [&self.grads, &self.adam_m, &self.adam_v] {
            assert!(
                self.params.sites.len() == other.sites.len()
                    && self
                        .params
                        .sites
                        .iter()
                        .zip(&other.sites)
                        .all(|((k, p), (l, q))| { k == l && p.a.len() == q.a.len() && p.b.len() == q.b.len() }),
                "TrainState tensors disagree on sites or shapes"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tinker_defaults_pass_validation_and_bad_values_name_their_field() {
        let d = AdamParams::tinker_defaults();
        assert_eq!(AdamParams::new(1e-4, 0.9, 0.95, 1e-12, 0.0, 0.0).unwrap(), d);
        let err = |r: Result<AdamParams, OptimError>| r.unwrap_err().to_string();
        assert!(err(AdamParams::new(-1.0, 0.9, 0.95, 1e-12, 0.0, 0.0)).contains("learning_rate"));
        assert!(err(AdamParams::new(1e-4, 1.0, 0.95, 1e-12, 0.0, 0.0)).contains("beta1"));
        assert!(err(AdamParams::new(1e-4, 0.9, f64::NAN, 1e-12, 0.0, 0.0)).contains("beta2"));
        assert!(err(AdamParams::new(1e-4, 0.9, 0.95, 0.0, 0.0, 0.0)).contains("eps"));
        assert!(err(AdamParams::new(1e-4, 0.9, 0.95, 1e-12, -0.1, 0.0)).contains("weight_decay"));
        assert!(err(AdamParams::new(1e-4, 0.9, 0.95, 1e-12, 0.0, f64::INFINITY)).contains("grad_clip_norm"));
    }

    #[test]
    fn the_clip_coefficient_is_one_when_off_or_under_the_limit_and_shrinks_to_the_limit_above_it() {
        assert_eq!(clip_coef(100.0, 0.0), 1.0);
        assert_eq!(clip_coef(0.5, 1.0), 1.0);
        assert_eq!(clip_coef(4.0, 1.0), 1.0 / (4.0 + 1e-6));
    }

    #[test]
    fn step_metrics_names_have_exactly_one_colon() {
        let m = StepMetrics { grad_norm: 2.0, clip_coef: 0.5, learning_rate: 1e-4, step: 3 }.to_map();
        assert!(m.keys().all(|k| k.matches(':').count() == 1));
        assert_eq!(m["grad_norm:mean"], 2.0);
        assert_eq!(m["step:max"], 3.0);
    }
}
