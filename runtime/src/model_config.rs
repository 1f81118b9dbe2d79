//! `ModelConfig`: the architecture of a base model, parsed from a HF `config.json`.
//!
//! Accepts both transformers-4 spellings (`rope_theta`, `rope_scaling`, `num_experts`) and
//! transformers-5 ones (`rope_parameters`, `num_local_experts`). `head_dim` is read, never
//! derived, unless the config omits it (then `hidden_size / num_attention_heads`, as HF does).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ConfigError;

/// The model families lathe implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Llama 3 (and SmolLM2, which is the same architecture).
    Llama,
    /// Qwen2: biases on q/k/v.
    Qwen2,
    /// Qwen3 dense: per-head q_norm/k_norm before RoPE.
    Qwen3,
    /// Qwen3 mixture-of-experts.
    Qwen3Moe,
}

impl Family {
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Qwen3Moe => "qwen3_moe",
        }
    }

    /// Whether attention has per-head RMSNorms on q and k (the Qwen3 families).
    pub fn has_qk_norm(self) -> bool {
        matches!(self, Family::Qwen3 | Family::Qwen3Moe)
    }
}

/// RoPE frequency scaling. Only what the supported checkpoints use.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: u32 },
}

/// Mixture-of-experts fields (Qwen3-MoE).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub norm_topk_prob: bool,
    pub decoder_sparse_step: usize,
    pub mlp_only_layers: Vec<usize>,
}

impl MoeConfig {
    /// Whether `layer` has a sparse MoE block (else a dense MLP), by transformers' rule.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        !self.mlp_only_layers.contains(&layer)
            && self.num_experts > 0
            && (layer + 1).is_multiple_of(self.decoder_sparse_step)
    }
}

/// The architecture of one base model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2 always; others when `attention_bias`).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    /// Every token id that ends generation.
    pub eos_token_ids: Vec<u32>,
    pub moe: Option<MoeConfig>,
}

impl ModelConfig {
    /// Parses a HF `config.json` text.
    ///
    /// # Errors
    /// `ConfigError` naming the field that is missing, malformed or unsupported.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let obj = value.as_object().ok_or_else(|| ConfigError::Json("top level is not an object".into()))?;
        Self::from_json_object(obj)
    }

    /// Parses an already-decoded `config.json` object.
    ///
    /// # Errors
    /// As [`ModelConfig::from_json_str`].
    pub fn from_json_object(obj: &Map<String, Value>) -> Result<Self, ConfigError> {
        let model_type = get_str(obj, "model_type")?;
        let family = match model_type {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "qwen3_moe" => Family::Qwen3Moe,
            other => return Err(ConfigError::UnsupportedFamily { found: other.to_string() }),
        };
        let hidden_size = get_usize(obj, "hidden_size")?;
        let num_attention_heads = get_usize(obj, "num_attention_heads")?;
        let num_key_value_heads = opt_usize(obj, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match opt_usize(obj, "head_dim")? {
            Some(d) => d,
            None => hidden_size / num_attention_heads.max(1),
        };
        // transformers 5 moves rope_theta and rope_scaling into one `rope_parameters` dict.
        let rope_params = obj.get("rope_parameters").and_then(Value::as_object);
        let rope_theta = match (opt_f64(obj, "rope_theta")?, rope_params) {
            (Some(t), _) => t,
            (None, Some(p)) => opt_f64(p, "rope_theta")?.unwrap_or(10_000.0),
            (None, None) => 10_000.0,
        } as f32;
        let scaling_obj = match obj.get("rope_scaling") {
            Some(Value::Object(m)) => Some(m),
            _ => rope_params,
        };
        let rope_scaling = match scaling_obj {
            Some(m) => parse_rope_scaling(m)?,
            None => None,
        };
        let default_eps = if family == Family::Llama { 1e-5 } else { 1e-6 };
        let moe = if family == Family::Qwen3Moe { Some(parse_moe(obj)?) } else { None };
        let config = ModelConfig {
            family,
            vocab_size: get_usize(obj, "vocab_size")?,
            hidden_size,
            intermediate_size: get_usize(obj, "intermediate_size")?,
            num_hidden_layers: get_usize(obj, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: opt_f64(obj, "rms_norm_eps")?.unwrap_or(default_eps) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: opt_usize(obj, "max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: opt_bool(obj, "tie_word_embeddings")?.unwrap_or(false),
            attention_bias: family == Family::Qwen2 || opt_bool(obj, "attention_bias")?.unwrap_or(false),
            bos_token_id: opt_token_ids(obj, "bos_token_id")?.and_then(|ids| ids.first().copied()),
            eos_token_ids: opt_token_ids(obj, "eos_token_id")?.unwrap_or_default(),
            moe,
        };
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(ConfigError::Invalid {
                    field: "hidden_act",
                    why: format!("`{act}`; only `silu` is supported"),
                });
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between fields that the model math relies on.
    ///
    /// # Errors
    /// `ConfigError::Invalid` naming the first field that breaks a relation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, why: String| Err(ConfigError::Invalid { field, why });
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
        ] {
            if v == 0 {
                return invalid(field, "must be positive".into());
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return invalid(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return invalid("head_dim", format!("{} is odd; RoPE rotates pairs", self.head_dim));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return invalid("rms_norm_eps", format!("{} is not a positive finite number", self.rms_norm_eps));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return invalid("rope_theta", format!("{} is not a positive finite number", self.rope_theta));
        }
        if let Some(moe) = &self.moe {
            if moe.num_experts_per_tok == 0 || moe.num_experts_per_tok > moe.num_experts {
                return invalid(
                    "num_experts_per_tok",
                    format!("{} must be in 1..={} (num_experts)", moe.num_experts_per_tok, moe.num_experts),
                );
            }
            if moe.decoder_sparse_step == 0 {
                return invalid("decoder_sparse_step", "must be positive".into());
            }
        }
        Ok(())
    }

    /// The HF `model_type` string.
    pub fn model_type(&self) -> &'static str {
        self.family.model_type()
    }

    /// Query heads per kv head.
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Writes the config back as a HF-style `config.json` object (transformers-4 spellings).
    pub fn to_hf_json(&self) -> Value {
        let arch = match self.family {
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Qwen3Moe => "Qwen3MoeForCausalLM",
        };
        let mut obj = serde_json::json!({
            "architectures": [arch],
            "model_type": self.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
            "torch_dtype": "float32",
        });
        if let (
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }),
            Some(m),
        ) = (self.rope_scaling, obj.as_object_mut())
        {
            m.insert(
                "rope_scaling".into(),
                serde_json::json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings}),
            );
        }
        if let (Some(moe), Some(m)) = (&self.moe, obj.as_object_mut()) {
            m.insert("num_experts".into(), moe.num_experts.into());
            m.insert("num_experts_per_tok".into(), moe.num_experts_per_tok.into());
            m.insert("moe_intermediate_size".into(), moe.moe_intermediate_size.into());
            m.insert("norm_topk_prob".into(), moe.norm_topk_prob.into());
            m.insert("decoder_sparse_step".into(), moe.decoder_sparse_step.into());
            m.insert("mlp_only_layers".into(), serde_json::json!(moe.mlp_only_layers));
        }
        obj
    }
}

fn parse_rope_scaling(m: &Map<String, Value>) -> Result<Option<RopeScaling>, ConfigError> {
    let kind = m.get("rope_type").or_else(|| m.get("type")).and_then(Value::as_str).unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: get_f64(m, "factor")? as f32,
            low_freq_factor: get_f64(m, "low_freq_factor")? as f32,
            high_freq_factor: get_f64(m, "high_freq_factor")? as f32,
            original_max_position_embeddings: get_usize(m, "original_max_position_embeddings")? as u32,
        })),
        other => Err(ConfigError::Invalid {
            field: "rope_scaling",
            why: format!("rope_type `{other}` is not supported (supported: default, llama3)"),
        }),
    }
}

fn parse_moe(obj: &Map<String, Value>) -> Result<MoeConfig, ConfigError> {
    let num_experts = match opt_usize(obj, "num_experts")? {
        Some(n) => n,
        None => opt_usize(obj, "num_local_experts")?.ok_or(ConfigError::Missing { field: "num_experts" })?,
    };
    let mlp_only_layers = match obj.get("mlp_only_layers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            a.iter().map(|v| v.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>().ok_or_else(|| {
                ConfigError::Invalid { field: "mlp_only_layers", why: "must be a list of layer indices".into() }
            })?
        }
        Some(_) => {
            return Err(ConfigError::Invalid {
                field: "mlp_only_layers",
                why: "must be a list of layer indices".into(),
            })
        }
    };
    Ok(MoeConfig {
        num_experts,
        num_experts_per_tok: get_usize(obj, "num_experts_per_tok")?,
        moe_intermediate_size: get_usize(obj, "moe_intermediate_size")?,
        norm_topk_prob: opt_bool(obj, "norm_topk_prob")?.unwrap_or(false),
        decoder_sparse_step: opt_usize(obj, "decoder_sparse_step")?.unwrap_or(1),
        mlp_only_layers,
    })
}

fn get_str<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(ConfigError::Missing { field }),
        Some(v) => v.as_str().ok_or_else(|| ConfigError::Invalid { field, why: format!("expected a string, got {v}") }),
    }
}

fn opt_usize(obj: &Map<String, Value>, field: &'static str) -> Result<Option<usize>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|x| Some(x as usize))
            .ok_or_else(|| ConfigError::Invalid { field, why: format!("expected a non-negative integer, got {v}") }),
    }
}

fn get_usize(obj: &Map<String, Value>, field: &'static str) -> Result<usize, ConfigError> {
    opt_usize(obj, field)?.ok_or(ConfigError::Missing { field })
}

fn opt_f64(obj: &Map<String, Value>, field: &'static str) -> Result<Option<f64>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ConfigError::Invalid { field, why: format!("expected a number, got {v}") }),
    }
}

fn get_f64(obj: &Map<String, Value>, field: &'static str) -> Result<f64, ConfigError> {
    opt_f64(obj, field)?.ok_or(ConfigError::Missing { field })
}

fn opt_bool(obj: &Map<String, Value>, field: &'static str) -> Result<Option<bool>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ConfigError::Invalid { field, why: format!("expected true/false, got {v}") }),
    }
}

/// A token id field that may be one integer or a list (`eos_token_id` often is).
fn opt_token_ids(obj: &Map<String, Value>, field: &'static str) -> Result<Option<Vec<u32>>, ConfigError> {
    let bad = || ConfigError::Invalid { field, why: "expected a token id or a list of token ids".into() };
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            a.iter().map(|v| v.as_u64().map(|x| x as u32)).collect::<Option<Vec<_>>>().map(Some).ok_or_else(bad)
        }
        Some(v) => v.as_u64().map(|x| Some(vec![x as u32])).ok_or_else(bad),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":576,
      "intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,
      "rms_norm_eps":1e-5,"rope_theta":100000,"max_position_embeddings":8192,"vocab_size":49152,
      "tie_word_embeddings":true,"bos_token_id":1,"eos_token_id":2,"hidden_act":"silu"}"#;

    #[test]
    fn llama_config_derives_head_dim_when_absent() {
        let c = ModelConfig::from_json_str(SMOLLM2).unwrap();
        assert_eq!(c.family, Family::Llama);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.gqa_group(), 3);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.rope_scaling, None);
    }

    #[test]
    fn transformers5_spellings_are_accepted() {
        let text = r#"{"model_type":"qwen3_moe","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
          "num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"vocab_size":1024,
          "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"num_local_experts":8,
          "num_experts_per_tok":2,"moe_intermediate_size":32,"norm_topk_prob":true,"mlp_only_layers":[1]}"#;
        let c = ModelConfig::from_json_str(text).unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.head_dim, 16);
        let moe = c.moe.unwrap();
        assert_eq!(moe.num_experts, 8);
        assert!(moe.is_moe_layer(0));
        assert!(!moe.is_moe_layer(1));
    }

    #[test]
    fn llama3_rope_scaling_is_parsed_from_either_spelling() {
        let base = SMOLLM2.trim_end_matches('}');
        let v4 = format!(
            r#"{base},"rope_scaling":{{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}}}}"#
        );
        let want = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        });
        assert_eq!(ModelConfig::from_json_str(&v4).unwrap().rope_scaling, want);
        let v5 = v4.replace("rope_scaling", "rope_parameters");
        assert_eq!(ModelConfig::from_json_str(&v5).unwrap().rope_scaling, want);
    }

    #[test]
    fn unsupported_family_and_bad_fields_are_named() {
        let gpt2 = SMOLLM2.replace(r#""model_type":"llama""#, r#""model_type":"gpt2""#);
        assert_eq!(
            ModelConfig::from_json_str(&gpt2).unwrap_err(),
            ConfigError::UnsupportedFamily { found: "gpt2".into() }
        );
        let no_vocab = SMOLLM2.replace(r#""vocab_size":49152,"#, "");
        assert_eq!(ModelConfig::from_json_str(&no_vocab).unwrap_err(), ConfigError::Missing { field: "vocab_size" });
        let bad_kv = SMOLLM2.replace(r#""num_key_value_heads":3"#, r#""num_key_value_heads":4"#);
        let err = ModelConfig::from_json_str(&bad_kv).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
        let neg = SMOLLM2.replace(r#""hidden_size":576"#, r#""hidden_size":-1"#);
        assert!(ModelConfig::from_json_str(&neg).unwrap_err().to_string().contains("hidden_size"));
    }

    #[test]
    fn hf_json_round_trips() {
        let c = ModelConfig::from_json_str(SMOLLM2).unwrap();
        let back = ModelConfig::from_json_str(&c.to_hf_json().to_string()).unwrap();
        assert_eq!(c, back);
    }
}
