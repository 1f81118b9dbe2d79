//! The Qwen3-MoE sparse block's backward: each expert's projections reversed on its gathered rows
//! (expert LoRA gradients in the shared-outer layout), scattered back to the tokens, plus the
//! gradient through the routing weights into the block's input via the frozen router (top-k
//! selection itself has none), as autograd gives for `Qwen3MoeSparseMoeBlock`.
//!
//! Batch invariance: input gradients are per-row; expert LoRA weight gradients go through the
//! backend's segmented reductions with one segment per sequence within the expert's rows.

use kernels::{Backend, LoraDims, MatmulDims};

use super::lora::{DOWN, GATE, PROJS, UP};
use super::moe::{ExpertActs, MoeActs, MoeWeights};
use super::Model;
use crate::adapter::{LoraPair, LoraWeights};

/// What one sparse block's backward reads besides its activations.
pub(crate) struct MoeGrad<'a> {
    pub pairs: [Option<&'a LoraPair>; 3], // gate, up, down expert sites
    pub paths: &'a [String; PROJS],
    pub scale: f32,
    pub segments: &'a [usize], // (S + 1) the batch's cu_seqlens
}

impl<B: Backend> Model<B> {
    /// `dout (T, H)` = d(block output) → `dx (T, H)` = d(block input), overwritten; expert LoRA
    /// gradients accumulated (`+=`) into `grads`.
    pub(crate) fn moe_backward(
        &self,
        w: &MoeWeights,
        acts: &MoeActs,
        g: &MoeGrad<'_>,
        grads: &mut LoraWeights,
        dout: &[f32],
        dx: &mut [f32],
    ) {
        let (h, ne, k) = (self.dims.hidden, w.experts, w.top_k);
        let rows = dout.len() / h;
        assert_eq!(dx.len(), rows * h, "moe_backward: dx is not (T, H)");
        assert_eq!(acts.top_w.len(), rows * k, "moe_backward: activations are from another batch");
        dx.fill(0.0);
        let mut dw = vec![0.0f32; rows * k]; // (T, k) d(loss)/d(combine weight)
        for (e, ex) in acts.experts.iter().enumerate() {
            if !ex.rows.is_empty() {
                self.expert_backward(w, e, ex, acts, g, grads, dout, dx, &mut dw);
            }
        }

        // Through the renormalisation and the f32 softmax to the router logits.
        let mut dlogits = vec![0.0f32; rows * ne]; // (T, E)
        for t in 0..rows {
            let p = &acts.probs[t * ne..(t + 1) * ne];
            let (idx, wt, dwt) = (&acts.top_idx[t * k..(t + 1) * k], &acts.top_w[t * k..], &dw[t * k..]);
            let mut dp = vec![0.0f32; ne]; // (E)
            if w.norm_topk_prob {
                // w_j = p_j / S with S = Σ_i p_i: dp_j = (dw_j − Σ_i dw_i·w_i) / S.
                let sum: f32 = idx.iter().map(|&e| p[e]).sum();
                let dot: f32 = (0..k).map(|j| dwt[j] * wt[j]).sum();
                for j in 0..k {
                    dp[idx[j]] = (dwt[j] - dot) / sum;
                }
            } else {
                for j in 0..k {
                    dp[idx[j]] = dwt[j];
                }
            }
            let dot: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for ((dl, pe), dpe) in dlogits[t * ne..(t + 1) * ne].iter_mut().zip(p).zip(&dp) {
                *dl = pe * (dpe - dot);
            }
        }
        self.backend.matmul_nn(dx, &dlogits, &w.router, MatmulDims { m: rows, k: h, n: ne }, true);
    }

    /// Expert `e`: `dy = w·dout` on its rows, down/SwiGLU/gate/up reversed, `dx +=` scattered back,
    /// and `dw` (the combine weights' gradient) filled at the token's slots for this expert.
    fn expert_backward(
        &self,
        w: &MoeWeights,
        e: usize,
        ex: &ExpertActs,
        acts: &MoeActs,
        g: &MoeGrad<'_>,
        grads: &mut LoraWeights,
        dout: &[f32],
        dx: &mut [f32],
        dw: &mut [f32],
    ) {
        let (h, im, k) = (self.dims.hidden, w.inter, w.top_k);
        let n = ex.rows.len();
        let be = &self.backend;
        let mut dy = vec![0.0f32; n * h]; // (n, H)
        for (i, &t) in ex.rows.iter().enumerate() {
            let j = (0..k).find(|&j| acts.top_idx[t * k + j] == e).expect("a routed row chose this expert");
            let (d, y) = (&dout[t * h..(t + 1) * h], &ex.y[i * h..(i + 1) * h]);
            dw[t * k + j] = d.iter().zip(y).map(|(a, b)| a * b).sum();
            let wt = acts.top_w[t * k + j];
            for (dv, v) in dy[i * h..(i + 1) * h].iter_mut().zip(d) {
                *dv = wt * v;
            }
        }
        // One segment per sequence: its rows within this expert's gathered batch.
        let segs: Vec<usize> = g.segments.iter().map(|&c| ex.rows.partition_point(|&r| r < c)).collect();

        let mut dact = vec![0.0f32; n * im]; // (n, I_moe)
        be.matmul_nn(&mut dact, &dy, w.expert(&w.down_proj, e), MatmulDims { m: n, k: im, n: h }, false);
        if let Some(p) = g.pairs[2] {
            let r = p.rank;
            let gp = grads.get_mut(&g.paths[DOWN]).expect("gradient sites were checked against the adapter's");
            let (a_e, da_e) = (&p.a[e * r * im..(e + 1) * r * im], &mut gp.a[e * r * im..(e + 1) * r * im]);
            let dims = LoraDims { rows: n, d_in: im, d_out: h, rank: r };
            be.lora_backward(&mut dact, da_e, &mut gp.b, &dy, &ex.act, &ex.lora_h[2], a_e, &p.b, dims, g.scale, &segs);
        }
        let (mut dgate, mut dup) = (vec![0.0f32; n * im], vec![0.0f32; n * im]); // (n, I_moe) each
        be.swiglu_backward(&mut dgate, &mut dup, &dact, &ex.gate, &ex.up);

        let mut dxe = vec![0.0f32; n * h]; // (n, H)
        let dims_in = MatmulDims { m: n, k: h, n: im };
        for (slot, path, dproj, weight) in [(0, GATE, &dgate, &w.gate_proj), (1, UP, &dup, &w.up_proj)] {
            be.matmul_nn(&mut dxe, dproj, w.expert(weight, e), dims_in, slot > 0);
            if let Some(p) = g.pairs[slot] {
                let r = p.rank;
                let gp = grads.get_mut(&g.paths[path]).expect("gradient sites were checked against the adapter's");
                let (b_e, db_e) = (&p.b[e * im * r..(e + 1) * im * r], &mut gp.b[e * im * r..(e + 1) * im * r]);
                let dims = LoraDims { rows: n, d_in: h, d_out: im, rank: r };
                let hl = &ex.lora_h[slot];
                be.lora_backward(&mut dxe, &mut gp.a, db_e, dproj, &ex.x, hl, &p.a, b_e, dims, g.scale, &segs);
            }
        }
        for (i, &t) in ex.rows.iter().enumerate() {
            for (o, v) in dx[t * h..(t + 1) * h].iter_mut().zip(&dxe[i * h..(i + 1) * h]) {
                *o += v;
            }
        }
    }
}
