//! Activation buffers: what a forward saves for its backward (llm.c style, one named buffer per
//! intermediate), and `Forward`, the result a caller holds between `forward` and `backward`.
//! The decode path reuses one `LayerActs` as scratch across layers.

use super::lora::PROJS;
use super::moe::MoeActs;
use super::weights::Dims;

/// One decoder layer's saved intermediates over `T` rows.
#[derive(Clone, Debug, Default)]
pub(crate) struct LayerActs {
    pub x: Vec<f32>,               // (T, H) residual entering the layer
    pub a: Vec<f32>,               // (T, H) input_layernorm(x)
    pub rstd_a: Vec<f32>,          // (T)
    pub q_pre: Vec<f32>,           // (T, nh·hd) q_proj output before q_norm; empty without qk-norm
    pub k_pre: Vec<f32>,           // (T, nkv·hd) k_proj output before k_norm; empty without qk-norm
    pub rstd_q: Vec<f32>,          // (T·nh); empty without qk-norm
    pub rstd_k: Vec<f32>,          // (T·nkv); empty without qk-norm
    pub q: Vec<f32>,               // (T, nh·hd) after q_norm and RoPE: what attention reads
    pub k: Vec<f32>,               // (T, nkv·hd) after k_norm and RoPE
    pub v: Vec<f32>,               // (T, nkv·hd)
    pub attn: Vec<f32>,            // (T, nh·hd) attention output, o_proj's input
    pub lse: Vec<f32>,             // (T, nh) log-sum-exp of the scaled scores
    pub x_mid: Vec<f32>,           // (T, H) residual after attention
    pub m: Vec<f32>,               // (T, H) post_attention_layernorm(x_mid)
    pub rstd_m: Vec<f32>,          // (T)
    pub gate: Vec<f32>,            // (T, I) gate_proj(m)
    pub up: Vec<f32>,              // (T, I) up_proj(m)
    pub act: Vec<f32>,             // (T, I) silu(gate)·up, down_proj's input
    pub lora_h: [Vec<f32>; PROJS], // x·Aᵀ per projection: each adapting span's (rows, rank), end to end
    /// A sparse layer's routing and expert intermediates (its gate/up/act above stay unused).
    pub moe: Option<MoeActs>,
}

impl LayerActs {
    /// Zeroed buffers for `rows` tokens; `h_lens` sizes each projection's `x·Aᵀ` buffer.
    pub fn new(rows: usize, d: Dims, qk_norm: bool, h_lens: [usize; PROJS]) -> Self {
        let n = |width: usize| vec![0.0f32; rows * width];
        let qk = |width: usize| if qk_norm { n(width) } else { Vec::new() };
        LayerActs {
            x: n(d.hidden),
            a: n(d.hidden),
            rstd_a: n(1),
            q_pre: qk(d.q_dim),
            k_pre: qk(d.kv_dim),
            rstd_q: qk(d.heads),
            rstd_k: qk(d.kv_heads),
            q: n(d.q_dim),
            k: n(d.kv_dim),
            v: n(d.kv_dim),
            attn: n(d.q_dim),
            lse: n(d.heads),
            x_mid: n(d.hidden),
            m: n(d.hidden),
            rstd_m: n(1),
            gate: n(d.intermediate),
            up: n(d.intermediate),
            act: n(d.intermediate),
            lora_h: h_lens.map(|len| vec![0.0f32; len]),
            moe: None,
        }
    }
}

/// The final norm and unembedding's saved intermediates.
#[derive(Clone, Debug, Default)]
pub(crate) struct FinalActs {
    pub x: Vec<f32>,      // (T, H) residual after the last layer
    pub hf: Vec<f32>,     // (T, H) norm(x), the unembedding's input
    pub rstd: Vec<f32>,   // (T)
    pub lse: Vec<f32>,    // (T) log-sum-exp of each logits row
    pub lora_h: Vec<f32>, // x·Aᵀ of each span adapting lm_head, (rows, rank) end to end
}

impl FinalActs {
    pub fn new(rows: usize, d: Dims, h_len: usize) -> Self {
        FinalActs {
            x: vec![0.0; rows * d.hidden],
            hf: vec![0.0; rows * d.hidden],
            rstd: vec![0.0; rows],
            lse: vec![0.0; rows],
            lora_h: vec![0.0; h_len],
        }
    }
}

/// The result of `Model::forward`: per-token logprobs and logits, plus everything `backward`
/// needs. Hold it until backward; drop it to free the activations.
#[derive(Clone, Debug)]
pub struct Forward {
    pub logprobs: Vec<f32>, // (T, k) log-softmax of the logits gathered at the targets
    pub logits: Vec<f32>,   // (T, V)
    pub(crate) layers: Vec<LayerActs>,
    pub(crate) fin: FinalActs,
    /// The batch geometry this forward ran on, so backward can refuse a different batch.
    pub(crate) cu_seqlens: Vec<usize>,
    /// Each tenant's sequences and whether an adapter was applied to them (its `x·Aᵀ` saved in
    /// the acts), so backward can refuse other tenants.
    pub(crate) tenants: Vec<(std::ops::Range<usize>, bool)>,
}

impl Forward {
    /// Load balance of every sparse MoE layer: `(layer, fractions (E))`, each expert's share of
    /// the batch's `T·k` token-to-expert assignments (they sum to 1). Empty for dense models.
    pub fn moe_expert_fractions(&self) -> Vec<(usize, Vec<f32>)> {
        let rows = 0..self.cu_seqlens.last().copied().unwrap_or(0);
        self.moe_expert_fractions_of(rows)
    }

    /// As [`Self::moe_expert_fractions`] over the token rows `rows` only (one tenant's share of a
    /// multi-tenant batch), equal to what that tenant's batch alone reports.
    pub fn moe_expert_fractions_of(&self, rows: std::ops::Range<usize>) -> Vec<(usize, Vec<f32>)> {
        let moe = self.layers.iter().enumerate();
        moe.filter_map(|(l, a)| a.moe.as_ref().map(|m| (l, m.expert_fractions(rows.clone())))).collect()
    }
}
