//! `LoraConfig`: what a training run asked for when it created its adapter.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Tinker's default `lora_alpha` (the scale applied is `alpha / rank`).
pub const LORA_ALPHA_DEFAULT: f32 = 32.0;
/// Largest rank lathe accepts; beyond this LoRA stops being low-rank for every supported model.
pub const LORA_RANK_MAX: usize = 1024;

/// A LoRA adapter's hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    /// Seeds the kaiming-uniform init of every A matrix.
    pub seed: u64,
    /// LoRA on q, k, v, o projections.
    pub train_attn: bool,
    /// LoRA on gate, up, down projections.
    pub train_mlp: bool,
    /// LoRA on the unembedding (`lm_head`).
    pub train_unembed: bool,
}

impl LoraConfig {
    /// Validates and builds a config.
    ///
    /// # Errors
    /// `ConfigError::Lora` when the rank is 0 or above [`LORA_RANK_MAX`], alpha is not a positive
    /// finite number, or no target is trained.
    pub fn new(
        rank: usize,
        alpha: f32,
        seed: u64,
        train_attn: bool,
        train_mlp: bool,
        train_unembed: bool,
    ) -> Result<Self, ConfigError> {
        if rank == 0 || rank > LORA_RANK_MAX {
            return Err(ConfigError::Lora { field: "rank", why: format!("{rank} is not in 1..={LORA_RANK_MAX}") });
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(ConfigError::Lora { field: "alpha", why: format!("{alpha} is not a positive finite number") });
        }
        if !(train_attn || train_mlp || train_unembed) {
            return Err(ConfigError::Lora {
                field: "train_attn",
                why: "train_attn, train_mlp and train_unembed are all false; nothing would train".into(),
            });
        }
        Ok(LoraConfig { rank, alpha, seed, train_attn, train_mlp, train_unembed })
    }

    /// The factor applied to the adapter's output: `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_alpha_over_rank() {
        let c = LoraConfig::new(8, LORA_ALPHA_DEFAULT, 0, true, true, false).unwrap();
        assert_eq!(c.scale(), 4.0);
    }

    #[test]
    fn invalid_configs_name_the_field() {
        assert!(LoraConfig::new(0, 32.0, 0, true, true, false).unwrap_err().to_string().contains("rank"));
        assert!(LoraConfig::new(4, f32::NAN, 0, true, true, false).unwrap_err().to_string().contains("alpha"));
        assert!(LoraConfig::new(4, 32.0, 0, false, false, false).is_err());
    }
}
