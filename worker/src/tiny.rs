//! Built-in tiny models (`tiny/llama3`, `tiny/qwen3`, `tiny/qwen2`, `tiny/qwen3-moe`): small configs and weights
//! generated in-process from a seed, with exact HF tensor names and shapes, for tests and instant
//! demos. Every tensor draws from its own `Rng::derive(seed, name)` stream, so adding a tensor
//! never shifts another's values. Never loads anything from disk.

use runtime::{Family, ModelConfig, MoeConfig, RopeScaling};

use crate::model::ModelError;
use crate::rng::Rng;
use crate::tensor::{HostTensor, WeightMap};

/// Standard deviation of every matrix and bias ("normal × 0.1").
const WEIGHT_STD: f32 = 0.1;
/// RMSNorm weights are `1 + NORM_STD·normal`: near one, but off it so a missing `* weight` shows.
const NORM_STD: f32 = 0.1;

/// The names [`tiny_model`] accepts.
pub fn tiny_names() -> &'static [&'static str] {
    &["tiny/llama3", "tiny/qwen3", "tiny/qwen2", "tiny/qwen3-moe"]
}

/// A tiny model's config and seeded weights.
///
/// # Errors
/// `ModelError::UnknownTinyModel` for a name not in [`tiny_names`].
pub fn tiny_model(name: &str, seed: u64) -> Result<(ModelConfig, WeightMap), ModelError> {
    let config = match name {
        "tiny/llama3" => tiny_llama3(),
        "tiny/qwen3" => tiny_qwen3(),
        "tiny/qwen2" => tiny_qwen2(),
        "tiny/qwen3-moe" => tiny_qwen3_moe(),
        _ => return Err(ModelError::UnknownTinyModel { name: name.to_string(), known: tiny_names().join(", ") }),
    };
    config.validate()?;
    let weights = dense_weights(&config, seed);
    Ok((config, weights))
}

/// The shared skeleton: vocab 512, hidden 64, 2 layers, 4 query heads over 2 kv heads.
fn base(family: Family) -> ModelConfig {
    ModelConfig {
        family,
        vocab_size: 512,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        moe: None,
    }
}

/// Llama 3 with rope_scaling, untied. head_dim 16, θ = 5e5 and original_max_position_embeddings
/// 64 put the RoPE wavelengths in all three llama3 branches (kept, smoothed, scaled).
fn tiny_llama3() -> ModelConfig {
    ModelConfig {
        rms_norm_eps: 1e-5,
        rope_theta: 5e5,
        rope_scaling: Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        }),
        ..base(Family::Llama)
    }
}

/// Qwen3 with head_dim 24 ≠ hidden / heads = 16 (the Qwen3-0.6B pitfall), tied unembedding.
fn tiny_qwen3() -> ModelConfig {
    ModelConfig { head_dim: 24, intermediate_size: 96, tie_word_embeddings: true, ..base(Family::Qwen3) }
}

/// Qwen2: biases on q/k/v, untied.
fn tiny_qwen2() -> ModelConfig {
    ModelConfig { attention_bias: true, ..base(Family::Qwen2) }
}

/// Qwen3-MoE: 3 layers, layer 1 dense (`mlp_only_layers`), layers 0 and 2 sparse with 4 experts,
/// top-2, renormalised. The dense MLP width (96) differs from the experts' (32) so a mix-up shows.
fn tiny_qwen3_moe() -> ModelConfig {
    ModelConfig {
        num_hidden_layers: 3,
        intermediate_size: 96,
        moe: Some(MoeConfig {
            num_experts: 4,
            num_experts_per_tok: 2,
            moe_intermediate_size: 32,
            norm_topk_prob: true,
            decoder_sparse_step: 1,
            mlp_only_layers: vec![1],
        }),
        ..base(Family::Qwen3Moe)
    }
}

/// Every tensor a dense checkpoint of `config` holds, with HF names and shapes, seeded as the
/// tiny models are. Works for any dense config (benchmarks use it for real-sized shapes); no
/// `lm_head.weight` when the config ties the unembedding. MoE layers of a Qwen3-MoE config get
/// the Hub's per-expert tensors (`mlp.gate`, `mlp.experts.E.{gate,up,down}_proj`) instead.
pub fn dense_weights(config: &ModelConfig, seed: u64) -> WeightMap {
    let h = config.hidden_size;
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let i = config.intermediate_size;
    let mut map = WeightMap::default();
    let mut put = |name: String, shape: Vec<usize>| {
        let mut rng = Rng::derive(seed, &name);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            (0..n).map(|_| 1.0 + NORM_STD * rng.normal_f32()).collect()
        } else {
            (0..n).map(|_| WEIGHT_STD * rng.normal_f32()).collect()
        };
        map.insert(name, HostTensor::new(shape, data));
    };
    put("model.embed_tokens.weight".into(), vec![config.vocab_size, h]);
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), vec![h]);
        put(format!("{p}.self_attn.q_proj.weight"), vec![q, h]);
        put(format!("{p}.self_attn.k_proj.weight"), vec![kv, h]);
        put(format!("{p}.self_attn.v_proj.weight"), vec![kv, h]);
        put(format!("{p}.self_attn.o_proj.weight"), vec![h, q]);
        if config.attention_bias {
            put(format!("{p}.self_attn.q_proj.bias"), vec![q]);
            put(format!("{p}.self_attn.k_proj.bias"), vec![kv]);
            put(format!("{p}.self_attn.v_proj.bias"), vec![kv]);
        }
        if config.family.has_qk_norm() {
            put(format!("{p}.self_attn.q_norm.weight"), vec![config.head_dim]);
            put(format!("{p}.self_attn.k_norm.weight"), vec![config.head_dim]);
        }
        put(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        match &config.moe {
            Some(moe) if moe.is_moe_layer(l) => {
                let im = moe.moe_intermediate_size;
                put(format!("{p}.mlp.gate.weight"), vec![moe.num_experts, h]);
                for e in 0..moe.num_experts {
                    put(format!("{p}.mlp.experts.{e}.gate_proj.weight"), vec![im, h]);
                    put(format!("{p}.mlp.experts.{e}.up_proj.weight"), vec![im, h]);
                    put(format!("{p}.mlp.experts.{e}.down_proj.weight"), vec![h, im]);
                }
            }
            _ => {
                put(format!("{p}.mlp.gate_proj.weight"), vec![i, h]);
                put(format!("{p}.mlp.up_proj.weight"), vec![i, h]);
                put(format!("{p}.mlp.down_proj.weight"), vec![h, i]);
            }
        }
    }
    put("model.norm.weight".into(), vec![h]);
    if !config.tie_word_embeddings {
        put("lm_head.weight".into(), vec![config.vocab_size, h]);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tiny_name_builds_and_the_same_seed_gives_the_same_weights() {
        for &name in tiny_names() {
            let (c1, w1) = tiny_model(name, 3).unwrap();
            let (c2, w2) = tiny_model(name, 3).unwrap();
            let (_, w3) = tiny_model(name, 4).unwrap();
            assert_eq!(c1, c2);
            assert_eq!(w1, w2, "{name}");
            assert_ne!(w1, w3, "{name}: seeds 3 and 4 gave the same weights");
        }
    }

    #[test]
    fn tiny_configs_exercise_the_family_pitfalls() {
        let (llama, w) = tiny_model("tiny/llama3", 0).unwrap();
        assert!(llama.rope_scaling.is_some() && !llama.tie_word_embeddings && w.contains("lm_head.weight"));
        let (qwen3, w) = tiny_model("tiny/qwen3", 0).unwrap();
        assert_ne!(qwen3.head_dim, qwen3.hidden_size / qwen3.num_attention_heads);
        assert!(qwen3.tie_word_embeddings && !w.contains("lm_head.weight"));
        assert_eq!(w.tensors["model.layers.1.self_attn.q_proj.weight"].shape, vec![4 * 24, 64]);
        assert_eq!(w.tensors["model.layers.0.self_attn.k_norm.weight"].shape, vec![24]);
        let (qwen2, w) = tiny_model("tiny/qwen2", 0).unwrap();
        assert!(qwen2.attention_bias && w.contains("model.layers.0.self_attn.v_proj.bias"));
        let (moe, w) = tiny_model("tiny/qwen3-moe", 0).unwrap();
        let rule = moe.moe.as_ref().unwrap();
        assert!(rule.is_moe_layer(0) && !rule.is_moe_layer(1) && rule.is_moe_layer(2));
        assert_eq!(w.tensors["model.layers.2.mlp.gate.weight"].shape, vec![4, 64]);
        assert_eq!(w.tensors["model.layers.0.mlp.experts.3.down_proj.weight"].shape, vec![64, 32]);
        assert_eq!(w.tensors["model.layers.1.mlp.down_proj.weight"].shape, vec![64, 96]);
        assert!(!w.contains("model.layers.0.mlp.gate_proj.weight") && !w.contains("model.layers.1.mlp.gate.weight"));
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = tiny_model("tiny/gpt2", 0).unwrap_err().to_string();
        assert!(err.contains("tiny/gpt2") && err.contains("tiny/llama3"), "{err}");
    }

    #[test]
    fn weights_have_the_advertised_scales() {
        let (_, w) = tiny_model("tiny/llama3", 1).unwrap();
        let q = &w.tensors["model.layers.0.self_attn.q_proj.weight"].data;
        let std = (q.iter().map(|x| x * x).sum::<f32>() / q.len() as f32).sqrt();
        assert!((std - WEIGHT_STD).abs() < 0.01, "q_proj std {std}");
        let norm = &w.tensors["model.norm.weight"].data;
        let mean = norm.iter().sum::<f32>() / norm.len() as f32;
        assert!((mean - 1.0).abs() < 0.05 && norm.iter().any(|&x| x != 1.0), "norm mean {mean}");
    }
}
