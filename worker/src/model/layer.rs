//! The decoder layer's forward pieces, shared by training (`forward`, all tokens at once) and
//! decoding (one new token per sequence against a KV cache), so the two cannot drift apart.
//! Attention itself is the one step that differs and stays with the callers.
//!
//! Every piece is row-invariant (design §3): row `i` of each output depends only on row `i` of
//! its inputs, which is what makes a decoded token's logits equal the full pass's bit for bit.

use kernels::{Backend, LoraDims, MatmulDims};

use super::acts::{FinalActs, LayerActs};
use super::lora::{DOWN, GATE, K, O, Q, UP, V};
use super::tenants::{Adapters, Site, SitePart};
use super::weights::LayerWeights;
use super::Model;

/// The batch's adapters and the index of the layer being run.
pub(crate) type LayerLora<'a, 'b> = (&'a Adapters<'b>, usize);

impl<B: Backend> Model<B> {
    /// `y (rows, d_out) = x (rows, d_in) · wᵀ (+ bias)` over every row, then each adapter part
    /// adds `scale·(x·Aᵀ)·Bᵀ` on its own rows, saving `x·Aᵀ` in its slice of `lora_h` — PEFT's
    /// order: base layer (with bias) first, adapter added.
    pub(crate) fn linear(
        &self,
        y: &mut [f32],
        lora_h: &mut [f32],
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        parts: &[SitePart<'_>],
        rows: usize,
    ) {
        assert!(rows > 0, "linear: no rows (batches are never empty)");
        let (d_in, d_out) = (x.len() / rows, y.len() / rows);
        assert_eq!(x.len(), rows * d_in, "linear: input is not (rows, d_in)");
        assert_eq!(y.len(), rows * d_out, "linear: output is not (rows, d_out)");
        assert_eq!(w.len(), d_out * d_in, "linear: weight is not (d_out, d_in)");
        self.backend.matmul_nt(y, x, w, MatmulDims { m: rows, k: d_in, n: d_out }, false);
        if let Some(b) = bias {
            assert_eq!(b.len(), d_out, "linear: bias is not (d_out)");
            for row in y.chunks_exact_mut(d_out) {
                for (v, bv) in row.iter_mut().zip(b) {
                    *v += bv;
                }
            }
        }
        for part in parts {
            let p = part.pair;
            assert_eq!((p.d_in, p.d_out), (d_in, d_out), "linear: adapter geometry differs from the weight's");
            let r = &part.rows;
            let dims = LoraDims { rows: r.len(), d_in, d_out, rank: p.rank };
            let (ys, xs) = (&mut y[r.start * d_out..r.end * d_out], &x[r.start * d_in..r.end * d_in]);
            self.backend.lora_forward(ys, &mut lora_h[part.h.clone()], xs, &p.a, &p.b, dims, part.scale);
        }
    }

    /// input_layernorm → q/k/v projections (+ bias, + adapter) → per-head q/k norms (Qwen3) →
    /// RoPE at `positions`. Reads `acts.x`; writes `a` through `v`.
    pub(crate) fn attn_in(&self, w: &LayerWeights, lora: LayerLora<'_, '_>, acts: &mut LayerActs, positions: &[u32]) {
        let (ad, layer) = lora;
        let parts = |proj| ad.parts(Site::Proj { layer, proj });
        let d = self.dims;
        let rows = positions.len();
        let eps = self.config.rms_norm_eps;
        assert_eq!(acts.x.len(), rows * d.hidden, "attn_in: residual is not (rows, H)");
        let be = &self.backend;
        be.rmsnorm_forward(&mut acts.a, &mut acts.rstd_a, &acts.x, &w.input_layernorm, rows, d.hidden, eps);
        let [hq, hk, hv, ..] = &mut acts.lora_h;
        match (&w.q_norm, &w.k_norm) {
            (Some(qn), Some(kn)) => {
                self.linear(&mut acts.q_pre, hq, &acts.a, &w.q_proj, w.q_bias.as_deref(), &parts(Q), rows);
                self.linear(&mut acts.k_pre, hk, &acts.a, &w.k_proj, w.k_bias.as_deref(), &parts(K), rows);
                // "only on the head dim": each (token, head) row of head_dim values is normalised.
                be.rmsnorm_forward(&mut acts.q, &mut acts.rstd_q, &acts.q_pre, qn, rows * d.heads, d.head_dim, eps);
                be.rmsnorm_forward(&mut acts.k, &mut acts.rstd_k, &acts.k_pre, kn, rows * d.kv_heads, d.head_dim, eps);
            }
            _ => {
                self.linear(&mut acts.q, hq, &acts.a, &w.q_proj, w.q_bias.as_deref(), &parts(Q), rows);
                self.linear(&mut acts.k, hk, &acts.a, &w.k_proj, w.k_bias.as_deref(), &parts(K), rows);
            }
        }
        self.linear(&mut acts.v, hv, &acts.a, &w.v_proj, w.v_bias.as_deref(), &parts(V), rows);
        let (cos, sin) = (&self.rope.cos, &self.rope.sin);
        be.rope_forward(&mut acts.q, positions, d.heads, d.head_dim, cos, sin);
        be.rope_forward(&mut acts.k, positions, d.kv_heads, d.head_dim, cos, sin);
    }

    /// o_proj + residual → post_attention_layernorm → gated MLP (or the sparse MoE block) +
    /// residual. Reads `acts.x` and `acts.attn`; writes the rest of `acts` and the layer's output
    /// residual `out (rows, H)`. `tmp (rows, H)` is scratch.
    pub(crate) fn attn_out_mlp(
        &self,
        w: &LayerWeights,
        lora: LayerLora<'_, '_>,
        acts: &mut LayerActs,
        out: &mut [f32],
        tmp: &mut [f32],
    ) {
        let (ad, layer) = lora;
        let parts = |proj| ad.parts(Site::Proj { layer, proj });
        let d = self.dims;
        let rows = acts.rstd_a.len();
        assert_eq!(out.len(), rows * d.hidden, "attn_out_mlp: output is not (rows, H)");
        assert_eq!(tmp.len(), rows * d.hidden, "attn_out_mlp: scratch is not (rows, H)");
        let be = &self.backend;
        let [_, _, _, ho, hg, hu, hd] = &mut acts.lora_h;
        self.linear(tmp, ho, &acts.attn, &w.o_proj, None, &parts(O), rows);
        add(&mut acts.x_mid, &acts.x, tmp);
        let eps = self.config.rms_norm_eps;
        be.rmsnorm_forward(
            &mut acts.m,
            &mut acts.rstd_m,
            &acts.x_mid,
            &w.post_attention_layernorm,
            rows,
            d.hidden,
            eps,
        );
        if let Some(moe) = &w.moe {
            acts.moe = Some(self.moe_forward(moe, ad, layer, &acts.m, tmp));
            add(out, &acts.x_mid, tmp);
            return;
        }
        self.linear(&mut acts.gate, hg, &acts.m, &w.gate_proj, None, &parts(GATE), rows);
        self.linear(&mut acts.up, hu, &acts.m, &w.up_proj, None, &parts(UP), rows);
        be.swiglu_forward(&mut acts.act, &acts.gate, &acts.up);
        self.linear(tmp, hd, &acts.act, &w.down_proj, None, &parts(DOWN), rows);
        add(out, &acts.x_mid, tmp);
    }

    /// Final norm → unembedding (+ adapters). Reads `fin.x`; writes `fin.hf` and `logits (rows, V)`.
    pub(crate) fn final_forward(&self, fin: &mut FinalActs, logits: &mut [f32], ad: &Adapters<'_>) {
        let d = self.dims;
        let rows = fin.rstd.len();
        assert_eq!(logits.len(), rows * d.vocab, "final_forward: logits are not (rows, V)");
        let eps = self.config.rms_norm_eps;
        self.backend.rmsnorm_forward(&mut fin.hf, &mut fin.rstd, &fin.x, &self.weights.norm, rows, d.hidden, eps);
        self.linear(logits, &mut fin.lora_h, &fin.hf, self.weights.unembed(), None, &ad.parts(Site::LmHead), rows);
    }
}

/// `out = a + b`, elementwise (the residual adds).
pub(crate) fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    assert!(out.len() == a.len() && a.len() == b.len(), "add: operands differ in length");
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// `out += a`, elementwise (gradient accumulation into the residual stream).
pub(crate) fn add_assign(out: &mut [f32], a: &[f32]) {
    assert_eq!(out.len(), a.len(), "add_assign: operands differ in length");
    for (o, x) in out.iter_mut().zip(a) {
        *o += x;
    }
}
