//! The frozen base weights of a decoder (Llama 3, Qwen2, Qwen3, Qwen3-MoE), taken out of a `WeightMap`
//! by HF name with every shape checked against the config, plus the derived dimensions the layer
//! code uses. Never mutated after load: the base model is frozen and only LoRA factors train.

use kernels::Backend;
use runtime::{Family, ModelConfig};

use super::dense::Model;
use super::moe::MoeWeights;
use super::ModelError;
use crate::tensor::WeightMap;

/// Sizes derived once from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub hidden: usize,       // H
    pub heads: usize,        // nh
    pub kv_heads: usize,     // nkv
    pub head_dim: usize,     // hd
    pub q_dim: usize,        // nh · hd
    pub kv_dim: usize,       // nkv · hd
    pub intermediate: usize, // I
    pub vocab: usize,        // V
}

impl Dims {
    pub fn new(c: &ModelConfig) -> Self {
        Dims {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            q_dim: c.num_attention_heads * c.head_dim,
            kv_dim: c.num_key_value_heads * c.head_dim,
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
        }
    }
}

/// One decoder layer's weights, HF field names, `nn.Linear` layout `(out, in)`.
#[derive(Clone, Debug)]
pub(crate) struct LayerWeights {
    pub input_layernorm: Vec<f32>,          // (H)
    pub q_proj: Vec<f32>,                   // (nh·hd, H)
    pub k_proj: Vec<f32>,                   // (nkv·hd, H)
    pub v_proj: Vec<f32>,                   // (nkv·hd, H)
    pub o_proj: Vec<f32>,                   // (H, nh·hd)
    pub q_bias: Option<Vec<f32>>,           // (nh·hd) with attention_bias (Qwen2)
    pub k_bias: Option<Vec<f32>>,           // (nkv·hd)
    pub v_bias: Option<Vec<f32>>,           // (nkv·hd)
    pub q_norm: Option<Vec<f32>>,           // (hd) Qwen3 only
    pub k_norm: Option<Vec<f32>>,           // (hd) Qwen3 only
    pub post_attention_layernorm: Vec<f32>, // (H)
    pub gate_proj: Vec<f32>,                // (I, H); empty in a MoE layer
    pub up_proj: Vec<f32>,                  // (I, H); empty in a MoE layer
    pub down_proj: Vec<f32>,                // (H, I); empty in a MoE layer
    /// The sparse MoE block replacing the dense MLP, in a Qwen3-MoE layer that has one.
    pub moe: Option<MoeWeights>,
}

/// All base weights of a dense model.
#[derive(Clone, Debug)]
pub(crate) struct DenseWeights {
    pub embed_tokens: Vec<f32>, // (V, H)
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>, // (H)
    /// `(V, H)`; `None` when the unembedding is tied to `embed_tokens`.
    pub lm_head: Option<Vec<f32>>,
}

impl DenseWeights {
    /// The unembedding matrix `(V, H)`, whichever tensor holds it.
    pub fn unembed(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed_tokens)
    }

    /// Takes every tensor the config calls for out of `map`. Unused extra tensors (such as an
    /// `lm_head.weight` a tied checkpoint still carries) are left behind and ignored.
    ///
    /// # Errors
    /// `ModelError::Weight` naming the first missing or misshapen tensor.
    pub fn take(config: &ModelConfig, map: &mut WeightMap) -> Result<Self, ModelError> {
        if config.family == Family::Qwen3Moe && config.moe.is_none() {
            return Err(ModelError::UnsupportedFamily { family: config.model_type() });
        }
        let d = Dims::new(config);
        let (h, q, kv, i) = (d.hidden, d.q_dim, d.kv_dim, d.intermediate);
        let embed_tokens = map.take("model.embed_tokens.weight", &[d.vocab, h])?.data;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let bias = config.attention_bias;
            let qk_norm = config.family.has_qk_norm();
            let moe = match &config.moe {
                Some(m) if m.is_moe_layer(l) => Some(MoeWeights::take(m, h, &p, map)?),
                _ => None,
            };
            let mut take = |name: &str, shape: &[usize]| map.take(name, shape).map(|t| t.data);
            let (gate_proj, up_proj, down_proj) = if moe.is_none() {
                (
                    take(&format!("{p}.mlp.gate_proj.weight"), &[i, h])?,
                    take(&format!("{p}.mlp.up_proj.weight"), &[i, h])?,
                    take(&format!("{p}.mlp.down_proj.weight"), &[h, i])?,
                )
            } else {
                (Vec::new(), Vec::new(), Vec::new())
            };
            layers.push(LayerWeights {
                input_layernorm: take(&format!("{p}.input_layernorm.weight"), &[h])?,
                q_proj: take(&format!("{p}.self_attn.q_proj.weight"), &[q, h])?,
                k_proj: take(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?,
                v_proj: take(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?,
                o_proj: take(&format!("{p}.self_attn.o_proj.weight"), &[h, q])?,
                q_bias: if bias { Some(take(&format!("{p}.self_attn.q_proj.bias"), &[q])?) } else { None },
                k_bias: if bias { Some(take(&format!("{p}.self_attn.k_proj.bias"), &[kv])?) } else { None },
                v_bias: if bias { Some(take(&format!("{p}.self_attn.v_proj.bias"), &[kv])?) } else { None },
                q_norm: if qk_norm {
                    Some(take(&format!("{p}.self_attn.q_norm.weight"), &[d.head_dim])?)
                } else {
                    None
                },
                k_norm: if qk_norm {
                    Some(take(&format!("{p}.self_attn.k_norm.weight"), &[d.head_dim])?)
                } else {
                    None
                },
                post_attention_layernorm: take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_proj,
                up_proj,
                down_proj,
                moe,
            });
        }
        let norm = map.take("model.norm.weight", &[h])?.data;
        // Tied when the config says so or the checkpoint has no lm_head (candle's rule, §1.2).
        let tied = config.tie_word_embeddings || !map.contains("lm_head.weight");
        let lm_head = if tied { None } else { Some(map.take("lm_head.weight", &[d.vocab, h])?.data) };
        Ok(DenseWeights { embed_tokens, layers, norm, lm_head })
    }
}

impl DenseWeights {
    /// Number of f32 values across every base tensor (a tied unembedding counted once).
    pub fn numel(&self) -> usize {
        let opt = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, Vec::len);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                let moe = l
                    .moe
                    .as_ref()
                    .map_or(0, |m| m.router.len() + m.gate_proj.len() + m.up_proj.len() + m.down_proj.len());
                l.input_layernorm.len()
                    + l.q_proj.len()
                    + l.k_proj.len()
                    + l.v_proj.len()
                    + l.o_proj.len()
                    + opt(&l.q_bias)
                    + opt(&l.k_bias)
                    + opt(&l.v_bias)
                    + opt(&l.q_norm)
                    + opt(&l.k_norm)
                    + l.post_attention_layernorm.len()
                    + l.gate_proj.len()
                    + l.up_proj.len()
                    + l.down_proj.len()
                    + moe
            })
            .sum();
        self.embed_tokens.len() + layers + self.norm.len() + opt(&self.lm_head)
    }
}

impl<B: Backend> Model<B> {
    /// Bytes of the frozen base weights (f32, 4 bytes a value), what the model costs the worker's
    /// memory budget before any adapter.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.numel() as u64 * 4
    }
}
