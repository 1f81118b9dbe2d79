//! [`LossFn`]: a loss name plus its `loss_fn_config`, parsed and validated once per request so
//! that computing the loss can never fail on configuration.

use std::collections::BTreeMap;

use thiserror::Error;

/// PPO's default lower ratio bound (`1 - ε`, ε = 0.2).
pub const CLIP_LOW_DEFAULT: f64 = 0.8;
/// PPO's default upper ratio bound (`1 + ε`).
pub const CLIP_HIGH_DEFAULT: f64 = 1.2;

/// The ratio bounds of a clipped objective. `0 ≤ low ≤ high`, both finite.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clip {
    pub low: f64,
    pub high: f64,
}

/// A loss with its configuration. Semantics: `reference/tinker-protocol.md` §5; the loss is a plain
/// sum over tokens (and, by the caller, over datums).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossFn {
    /// `Σ -w·lp`, 1-D or `(N, K)` targets; weights any real numbers, all ones when absent.
    CrossEntropy,
    /// `Σ -exp(lp - q)·A`.
    ImportanceSampling,
    /// `Σ -min(r·A, clip(r)·A)`, `r = exp(lp - q)`.
    Ppo(Clip),
    /// `Σ -sg(clip(r))·lp·A`.
    Cispo(Clip),
    /// `Σ -(lp·A - ½·β·(lp - q)²)`.
    Dro { beta: f64 },
    /// GSPO-token: PPO's clipped objective on the sequence ratio.
    Gspo(Clip),
}

/// Loss names the Tinker SDK knows but lathe does not implement.
const UNSUPPORTED: [&str; 2] = ["stable_reinforce", "custom"];
/// Loss names lathe implements, for error messages.
const SUPPORTED: &str = "cross_entropy, importance_sampling, ppo, cispo, dro, gspo";

/// A `loss_fn` / `loss_fn_config` the server cannot use.
#[derive(Debug, Error, PartialEq)]
pub enum LossConfigError {
    #[error("unknown loss_fn `{name}`; lathe supports {SUPPORTED}")]
    UnknownLoss { name: String },
    #[error("loss_fn `{name}` is not supported by lathe; use one of {SUPPORTED}")]
    UnsupportedLoss { name: String },
    #[error("loss_fn `{loss}` does not take loss_fn_config key `{key}` (it accepts: {accepted})")]
    UnknownKey { loss: &'static str, key: String, accepted: &'static str },
    #[error("loss_fn `{loss}` requires loss_fn_config key `{key}`")]
    MissingKey { loss: &'static str, key: &'static str },
    #[error("loss_fn `{loss}` loss_fn_config[`{key}`] = {value} is invalid: {why}")]
    InvalidValue { loss: &'static str, key: &'static str, value: f64, why: String },
}

impl LossFn {
    /// Parses a loss name and its numeric config.
    ///
    /// # Errors
    /// [`LossConfigError`] for an unknown or unsupported name, a config key the loss does not
    /// take, a missing required key (`beta` for `dro`), or an out-of-range value.
    pub fn parse(name: &str, config: &BTreeMap<String, f64>) -> Result<LossFn, LossConfigError> {
        let clip_text = "clip_low_threshold, clip_high_threshold";
        let (loss, accepted, accepted_text): (&'static str, &'static [&'static str], &'static str) = match name {
            "cross_entropy" => ("cross_entropy", &[], "no keys"),
            "importance_sampling" => ("importance_sampling", &[], "no keys"),
            "ppo" => ("ppo", &CLIP_KEYS, clip_text),
            "cispo" => ("cispo", &CLIP_KEYS, clip_text),
            "gspo" => ("gspo", &CLIP_KEYS, clip_text),
            "dro" => ("dro", &["beta"], "beta"),
            _ if UNSUPPORTED.contains(&name) => return Err(LossConfigError::UnsupportedLoss { name: name.into() }),
            _ => return Err(LossConfigError::UnknownLoss { name: name.into() }),
        };
        if let Some(key) = config.keys().find(|k| !accepted.contains(&k.as_str())) {
            return Err(LossConfigError::UnknownKey { loss, key: key.clone(), accepted: accepted_text });
        }
        Ok(match loss {
            "cross_entropy" => LossFn::CrossEntropy,
            "importance_sampling" => LossFn::ImportanceSampling,
            "ppo" => LossFn::Ppo(parse_clip(loss, config)?),
            "cispo" => LossFn::Cispo(parse_clip(loss, config)?),
            "gspo" => LossFn::Gspo(parse_clip(loss, config)?),
            _ => LossFn::Dro { beta: parse_beta(config)? },
        })
    }

    /// The wire name (`cross_entropy`, `ppo`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            LossFn::CrossEntropy => "cross_entropy",
            LossFn::ImportanceSampling => "importance_sampling",
            LossFn::Ppo(_) => "ppo",
            LossFn::Cispo(_) => "cispo",
            LossFn::Dro { .. } => "dro",
            LossFn::Gspo(_) => "gspo",
        }
    }
}

const CLIP_KEYS: [&str; 2] = ["clip_low_threshold", "clip_high_threshold"];

fn parse_clip(loss: &'static str, config: &BTreeMap<String, f64>) -> Result<Clip, LossConfigError> {
    let low = config.get(CLIP_KEYS[0]).copied().unwrap_or(CLIP_LOW_DEFAULT);
    let high = config.get(CLIP_KEYS[1]).copied().unwrap_or(CLIP_HIGH_DEFAULT);
    for (key, value) in [(CLIP_KEYS[0], low), (CLIP_KEYS[1], high)] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(LossConfigError::InvalidValue { loss, key, value, why: "must be a finite ratio ≥ 0".into() });
        }
    }
    if low > high {
        let why = format!("it is above clip_high_threshold = {high}; the lower ratio bound must not exceed the upper");
        return Err(LossConfigError::InvalidValue { loss, key: CLIP_KEYS[0], value: low, why });
    }
    Ok(Clip { low, high })
}

fn parse_beta(config: &BTreeMap<String, f64>) -> Result<f64, LossConfigError> {
    let beta = *config.get("beta").ok_or(LossConfigError::MissingKey { loss: "dro", key: "beta" })?;
    if !beta.is_finite() {
        return Err(LossConfigError::InvalidValue {
            loss: "dro",
            key: "beta",
            value: beta,
            why: "must be finite".into(),
        });
    }
    Ok(beta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entries: &[(&str, f64)]) -> BTreeMap<String, f64> {
        entries.iter().map(|&(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn ppo_defaults_to_point_eight_and_one_point_two_and_config_overrides_them() {
        assert_eq!(LossFn::parse("ppo", &config(&[])).unwrap(), LossFn::Ppo(Clip { low: 0.8, high: 1.2 }));
        let custom = config(&[("clip_low_threshold", 0.5), ("clip_high_threshold", 2.0)]);
        assert_eq!(LossFn::parse("gspo", &custom).unwrap(), LossFn::Gspo(Clip { low: 0.5, high: 2.0 }));
        assert_eq!(LossFn::parse("dro", &config(&[("beta", 0.05)])).unwrap(), LossFn::Dro { beta: 0.05 });
    }

    #[test]
    fn unknown_names_and_keys_are_named_in_the_error() {
        let err = LossFn::parse("ppo2", &config(&[])).unwrap_err().to_string();
        assert!(err.contains("`ppo2`"), "{err}");
        let err = LossFn::parse("cross_entropy", &config(&[("beta", 1.0)])).unwrap_err().to_string();
        assert!(err.contains("`beta`") && err.contains("cross_entropy"), "{err}");
        let err = LossFn::parse("ppo", &config(&[("clip_low", 0.9)])).unwrap_err().to_string();
        assert!(err.contains("`clip_low`") && err.contains("clip_low_threshold, clip_high_threshold"), "{err}");
        assert!(matches!(LossFn::parse("custom", &config(&[])), Err(LossConfigError::UnsupportedLoss { .. })));
    }

    #[test]
    fn out_of_range_or_missing_values_are_rejected() {
        let swapped = config(&[("clip_low_threshold", 1.3), ("clip_high_threshold", 1.2)]);
        assert!(matches!(LossFn::parse("cispo", &swapped), Err(LossConfigError::InvalidValue { .. })));
        let nan = config(&[("clip_high_threshold", f64::NAN)]);
        assert!(matches!(LossFn::parse("ppo", &nan), Err(LossConfigError::InvalidValue { .. })));
        assert_eq!(LossFn::parse("dro", &config(&[])), Err(LossConfigError::MissingKey { loss: "dro", key: "beta" }));
    }
}
