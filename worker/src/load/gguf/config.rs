//! `ModelConfig` from GGUF metadata (`{arch}.block_count`, `{arch}.attention.head_count`, …).

use runtime::{Family, ModelConfig};

use super::super::error::LoadError;
use super::value::GgufMetadata;

/// What the config needs from the tensor list rather than from metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorFacts {
    /// `output.weight` is present (so embeddings are not tied).
    pub has_output: bool,
    /// `blk.0.attn_q.bias` is present.
    pub has_qkv_bias: bool,
}

/// The model family for `general.architecture`.
///
/// # Errors
/// `GgufArchitecture` for anything but llama, qwen2, qwen3.
pub fn family(meta: &GgufMetadata) -> Result<Family, LoadError> {
    match meta.get_str("general.architecture")? {
        "llama" => Ok(Family::Llama),
        "qwen2" => Ok(Family::Qwen2),
        "qwen3" => Ok(Family::Qwen3),
        other => Err(LoadError::GgufArchitecture(other.to_string())),
    }
}

/// Builds and validates the config.
///
/// # Errors
/// `GgufMissingKey`/`GgufKeyType` for absent or mistyped keys, `GgufConfig` when the values break
/// the relations `ModelConfig::validate` checks.
pub fn model_config(meta: &GgufMetadata, facts: TensorFacts) -> Result<ModelConfig, LoadError> {
    let family = family(meta)?;
    let arch = meta.get_str("general.architecture")?;
    let key = |k: &str| format!("{arch}.{k}");
    if let Some(kind) = meta.opt_str(&key("rope.scaling.type"))? {
        if kind != "none" {
            return Err(LoadError::GgufCorrupt(format!(
                "{arch}.rope.scaling.type is `{kind}`; lathe only reads GGUFs without rope scaling"
            )));
        }
    }
    let hidden_size = meta.get_usize(&key("embedding_length"))?;
    let num_attention_heads = meta.get_usize(&key("attention.head_count"))?;
    let num_key_value_heads = meta.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(num_attention_heads);
    let head_dim = match meta.opt_usize(&key("attention.key_length"))? {
        Some(d) => d,
        None => hidden_size / num_attention_heads.max(1),
    };
    let vocab_size = match meta.opt_str_array("tokenizer.ggml.tokens")? {
        Some(tokens) => tokens.len(),
        None => meta.get_usize(&key("vocab_size"))?,
    };
    let default_eps = if family == Family::Llama { 1e-5 } else { 1e-6 };
    let token_id = |k: &str| -> Result<Option<u32>, LoadError> {
        meta.opt_usize(k)?
            .map(|id| {
                u32::try_from(id).map_err(|_| LoadError::GgufKeyType { key: k.to_string(), expected: "a u32 token id" })
            })
            .transpose()
    };
    let mut eos_token_ids: Vec<u32> = token_id("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    if let Some(eot) = token_id("tokenizer.ggml.eot_token_id")? {
        if !eos_token_ids.contains(&eot) {
            eos_token_ids.push(eot);
        }
    }
    let config = ModelConfig {
        family,
        vocab_size,
        hidden_size,
        intermediate_size: meta.get_usize(&key("feed_forward_length"))?,
        num_hidden_layers: meta.get_usize(&key("block_count"))?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: meta.opt_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(default_eps) as f32,
        rope_theta: meta.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0) as f32,
        rope_scaling: None,
        max_position_embeddings: meta.opt_usize(&key("context_length"))?.unwrap_or(4096),
        tie_word_embeddings: !facts.has_output,
        attention_bias: family == Family::Qwen2 || facts.has_qkv_bias,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
        moe: None,
    };
    config.validate().map_err(LoadError::GgufConfig)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::super::value::GgufValue;
    use super::*;

    fn qwen2_meta() -> GgufMetadata {
        let mut m = GgufMetadata::default();
        let mut set = |k: &str, v: GgufValue| {
            m.values.insert(k.to_string(), v);
        };
        set("general.architecture", GgufValue::Str("qwen2".into()));
        set("qwen2.embedding_length", GgufValue::U32(64));
        set("qwen2.attention.head_count", GgufValue::U32(4));
        set("qwen2.attention.head_count_kv", GgufValue::U32(2));
        set("qwen2.feed_forward_length", GgufValue::U32(128));
        set("qwen2.block_count", GgufValue::U32(2));
        set("qwen2.context_length", GgufValue::U32(32768));
        set("qwen2.rope.freq_base", GgufValue::F32(1e6));
        set("qwen2.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-6));
        set("tokenizer.ggml.tokens", GgufValue::Array(vec![GgufValue::Str("a".into()); 10]));
        set("tokenizer.ggml.eos_token_id", GgufValue::U32(7));
        set("tokenizer.ggml.eot_token_id", GgufValue::U32(8));
        set("tokenizer.ggml.bos_token_id", GgufValue::U32(9));
        m
    }

    #[test]
    fn qwen2_metadata_becomes_a_config_with_biases_and_untied_head() {
        let c = model_config(&qwen2_meta(), TensorFacts { has_output: true, has_qkv_bias: true }).unwrap();
        assert_eq!(c.family, Family::Qwen2);
        assert_eq!((c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim), (64, 4, 2, 16));
        assert_eq!((c.intermediate_size, c.num_hidden_layers, c.vocab_size), (128, 2, 10));
        assert_eq!(c.max_position_embeddings, 32768);
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.attention_bias && !c.tie_word_embeddings);
        assert_eq!(c.bos_token_id, Some(9));
        assert_eq!(c.eos_token_ids, vec![7, 8]);
    }

    #[test]
    fn key_length_overrides_the_derived_head_dim() {
        let mut m = qwen2_meta();
        m.values.insert("general.architecture".into(), GgufValue::Str("qwen3".into()));
        for (k, v) in qwen2_meta().values {
            if let Some(rest) = k.strip_prefix("qwen2.") {
                m.values.insert(format!("qwen3.{rest}"), v);
            }
        }
        m.values.insert("qwen3.attention.key_length".into(), GgufValue::U32(32));
        let c = model_config(&m, TensorFacts { has_output: false, has_qkv_bias: false }).unwrap();
        assert_eq!(c.family, Family::Qwen3);
        assert_eq!(c.head_dim, 32);
        assert!(c.tie_word_embeddings && !c.attention_bias);
    }

    #[test]
    fn missing_keys_and_unknown_architectures_are_named() {
        let mut m = qwen2_meta();
        m.values.remove("qwen2.block_count");
        let err = model_config(&m, TensorFacts { has_output: true, has_qkv_bias: true }).unwrap_err().to_string();
        assert!(err.contains("qwen2.block_count"), "{err}");
        m.values.insert("general.architecture".into(), GgufValue::Str("gemma3".into()));
        assert!(matches!(family(&m), Err(LoadError::GgufArchitecture(a)) if a == "gemma3"));
    }
}
