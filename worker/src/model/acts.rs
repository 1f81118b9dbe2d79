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
    pub gate: Vec<f32>,            // (T, I) gate_proj(m); empty on a sparse MoE layer
    pub up: Vec<f32>,              // (T, I) up_proj(m); empty on a sparse MoE layer
    pub act: Vec<f32>,             // (T, I) silu(gate)·up, down_proj's input; empty on a sparse MoE layer
    pub lora_h: [Vec<f32>; PROJS], // x·Aᵀ per projection: each adapting span's (rows, rank), end to end
    /// A sparse layer's routing and expert intermediates.
    pub moe: Option<MoeActs>,
}

impl LayerActs {
    /// Zeroed buffers for `rows` tokens; `h_lens` sizes each projection's `x·Aᵀ` buffer. Without
    /// `dense_mlp` (a sparse MoE layer, whose experts keep their own) the MLP buffers stay empty.
    pub fn new(rows: usize, d: Dims, qk_norm: bool, dense_mlp: bool, h_lens: [usize; PROJS]) -> Self {
        let n = |width: usize| vec![0.0f32; rows * width];
        let mlp = |width: usize| if dense_mlp { n(width) } else { Vec::new() };
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
            gate: mlp(d.intermediate),
            up: mlp(d.intermediate),
            act: mlp(d.intermediate),
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

    /// The counts behind [`Self::moe_expert_fractions_of`]: `(layer, assignments per expert (E),
    /// all assignments)` of every sparse MoE layer over the token rows `rows`.
    pub fn moe_expert_counts_of(&self, rows: std::ops::Range<usize>) -> Vec<(usize, Vec<usize>, usize)> {
        let moe = self.layers.iter().enumerate();
        moe.filter_map(|(l, a)| {
            a.moe.as_ref().map(|m| {
                let (counts, assignments) = m.expert_counts(rows.clone());
                (l, counts, assignments)
            })
        })
        .collect()
    }
}

impl<B: kernels::Backend> super::Model<B> {
    /// The bytes a `forward` saves per token, with an adapter of rank `rank` on every site and
    /// `k` targets per token: `LayerActs`, `MoeActs` with its per-assignment expert buffers,
    /// `FinalActs`, the logits and logprobs. Exactly what [`Forward::saved_bytes`] reports for such
    /// a forward (tested); kept next to the buffers it counts so the two change together.
    pub fn forward_bytes_per_token(&self, rank: usize, k: usize) -> u64 {
        let d = self.dims;
        let c = &self.config;
        let (h, i, v) = (d.hidden, d.intermediate, d.vocab);
        let qk = if c.family.has_qk_norm() { d.q_dim + d.kv_dim + d.heads + d.kv_heads } else { 0 };
        let usize_slots = std::mem::size_of::<usize>() / std::mem::size_of::<f32>();
        let attn_side = 4 * h + 2 + 2 * d.q_dim + 2 * d.kv_dim + d.heads + qk + 4 * rank;
        let dense_layer = attn_side + 3 * i + 3 * rank;
        let moe_layer = c.moe.as_ref().map_or(0, |m| {
            let top = m.num_experts_per_tok;
            let per_assignment = usize_slots + 2 * h + 3 * m.moe_intermediate_size + 3 * rank;
            attn_side + m.num_experts + (usize_slots + 1) * top + top * per_assignment
        });
        let layers: usize = (0..c.num_hidden_layers)
            .map(|l| match &c.moe {
                Some(m) if m.is_moe_layer(l) => moe_layer,
                _ => dense_layer,
            })
            .sum();
        let head = 2 * h + 2 + rank + v + k; // FinalActs, logits, logprobs
        ((layers + head) * std::mem::size_of::<f32>()) as u64
    }

    /// An upper bound on the bytes one token costs a forward_backward while it runs, with an
    /// adapter of rank `rank` on every site: what the forward saves (at up to 2 targets per token;
    /// wider `(N, K)` targets add a few floats per token, nothing beside the vocabulary), plus the
    /// packed batch, the residual stream and its scratch, and what `backward` holds next to them
    /// (the logits' gradient, the layer scratch, one expert's temporaries, the per-sequence sums
    /// of a sparse layer's shared expert factors). The memory budget uses it to refuse or split a
    /// step before it runs out of memory.
    pub fn step_bytes_per_token(&self, rank: usize) -> u64 {
        let d = self.dims;
        let (h, i, v) = (d.hidden, d.intermediate, d.vocab);
        // One expert's temporaries, and each sequence's sums of a sparse layer's three shared expert
        // factors (`moe_shared`: `rank·H` each; a sequence has at least one token).
        let moe_scratch = self
            .config
            .moe
            .as_ref()
            .map_or(0, |m| 2 * h + 3 * m.moe_intermediate_size + m.num_experts + 2 + 3 * rank * h);
        let trunk = 2 * h + 3; // residual stream and scratch; tokens, positions, a target
        let backward = v + 3 * h + 3 * i + 3 * d.q_dim + 3 * d.kv_dim + moe_scratch;
        self.forward_bytes_per_token(rank, 2) + ((trunk + backward) * std::mem::size_of::<f32>()) as u64
    }
}

impl Forward {
    /// The bytes this forward's saved activations, logits and logprobs hold (usize buffers at
    /// their real width): [`super::Model::forward_bytes_per_token`] per token.
    pub fn saved_bytes(&self) -> u64 {
        let fwd = self;
        let usize_slots = std::mem::size_of::<usize>() / std::mem::size_of::<f32>();
        let layer = |a: &LayerActs| {
            let own = [
                &a.x, &a.a, &a.rstd_a, &a.q_pre, &a.k_pre, &a.rstd_q, &a.rstd_k, &a.q, &a.k, &a.v, &a.attn, &a.lse,
                &a.x_mid, &a.m, &a.rstd_m, &a.gate, &a.up, &a.act,
            ]
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
                + a.lora_h.iter().map(Vec::len).sum::<usize>();
            let moe = a.moe.as_ref().map_or(0, |m| {
                m.probs.len()
                    + usize_slots * m.top_idx.len()
                    + m.top_w.len()
                    + m.experts
                        .iter()
                        .map(|e| {
                            usize_slots * e.rows.len()
                                + e.x.len()
                                + e.gate.len()
                                + e.up.len()
                                + e.act.len()
                                + e.y.len()
                                + e.lora_h.iter().map(Vec::len).sum::<usize>()
                        })
                        .sum::<usize>()
            });
            own + moe
        };
        let f = &fwd.fin;
        let floats = fwd.layers.iter().map(layer).sum::<usize>()
            + f.x.len()
            + f.hf.len()
            + f.rstd.len()
            + f.lse.len()
            + f.lora_h.len()
            + fwd.logits.len()
            + fwd.logprobs.len();
        (floats * std::mem::size_of::<f32>()) as u64
    }
}
