//! The Qwen3-MoE sparse block's backward: each expert's projections reversed on its gathered rows
//! (expert LoRA gradients in the shared-outer layout), scattered back to the tokens, plus the
//! gradient through the routing weights into the block's input via the frozen router (top-k
//! selection itself has none), as autograd gives for `Qwen3MoeSparseMoeBlock`.
//!
//! Batch invariance: input gradients are per-row; expert LoRA weight gradients go through the
//! backend's segmented reductions with one segment per sequence within the expert's rows.

use kernels::{Backend, LoraDims, MatmulDims};

use super::backward::{GradTargets, Segments};
use super::moe::{expert_sites, ExpertActs, MoeActs, MoeWeights};
use super::tenants::{gather_parts, site_path, SitePart};
use super::Model;

/// One expert's adapter parts (gate, up, down, on its gathered rows), their gradient paths, and
/// the batch's segments.
struct ExpertGrad<'a> {
    parts: &'a [Vec<SitePart<'a>>; 3],
    paths: [&'a str; 3],
    seg: &'a Segments<'a>,
}

impl ExpertGrad<'_> {
    /// One segment per sequence of `part`'s tenant: its rows within this expert's gathered rows,
    /// rebased to the part's first — exactly what the tenant's batch alone would give.
    fn segments(&self, part: &SitePart<'_>, ex: &ExpertActs) -> Vec<usize> {
        let (tenant, start) = (&self.seg.tenants[part.span], part.rows.start);
        let first_row = self.seg.tenant_rows[part.span];
        tenant.iter().map(|&c| ex.rows.partition_point(|&r| r < first_row + c) - start).collect()
    }
}

impl<B: Backend> Model<B> {
    /// `dout (T, H)` = d(block output) → `dx (T, H)` = d(block input), overwritten; layer
    /// `layer`'s expert LoRA gradients accumulated (`+=`) per tenant into `gt`.
    pub(crate) fn moe_backward(
        &self,
        w: &MoeWeights,
        acts: &MoeActs,
        layer: usize,
        gt: &mut GradTargets<'_, '_>,
        seg: &Segments<'_>,
        dout: &[f32],
        dx: &mut [f32],
    ) {
        let (h, ne, k) = (self.dims.hidden, w.experts, w.top_k);
        let rows = dout.len() / h;
        assert_eq!(dx.len(), rows * h, "moe_backward: dx is not (T, H)");
        assert_eq!(acts.top_w.len(), rows * k, "moe_backward: activations are from another batch");
        dx.fill(0.0);
        let mut dw = vec![0.0f32; rows * k]; // (T, k) d(loss)/d(combine weight)
        let sites = expert_sites(layer);
        let parts = sites.map(|site| gt.ad.parts(site));
        for (e, ex) in acts.experts.iter().enumerate() {
            if !ex.rows.is_empty() {
                let gathered = [0, 1, 2].map(|slot| gather_parts(&parts[slot], &ex.rows));
                let paths = sites.map(|site| site_path(&self.paths, site));
                let g = ExpertGrad { parts: &gathered, paths, seg };
                self.expert_backward(w, e, ex, acts, &g, gt, dout, dx, &mut dw);
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
        g: &ExpertGrad<'_>,
        gt: &mut GradTargets<'_, '_>,
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
        let mut dact = vec![0.0f32; n * im]; // (n, I_moe)
        be.matmul_nn(&mut dact, &dy, w.expert(&w.down_proj, e), MatmulDims { m: n, k: im, n: h }, false);
        for part in &g.parts[2] {
            let Some(grads) = gt.grads[part.span].as_deref_mut() else { continue };
            let (p, rows, r) = (part.pair, &part.rows, part.pair.rank);
            let gp = grads.get_mut(g.paths[2]).expect("gradient sites were checked against the adapter's");
            let (a_e, da_e) = (&p.a[e * r * im..(e + 1) * r * im], &mut gp.a[e * r * im..(e + 1) * r * im]);
            let dims = LoraDims { rows: rows.len(), d_in: im, d_out: h, rank: r };
            let segs = g.segments(part, ex);
            let (dacts, dys) = (&mut dact[rows.start * im..rows.end * im], &dy[rows.start * h..rows.end * h]);
            let (acts_x, hl) = (&ex.act[rows.start * im..rows.end * im], &ex.lora_h[2][part.h.clone()]);
            be.lora_backward(dacts, da_e, &mut gp.b, dys, acts_x, hl, a_e, &p.b, dims, part.scale, &segs);
        }
        let (mut dgate, mut dup) = (vec![0.0f32; n * im], vec![0.0f32; n * im]); // (n, I_moe) each
        be.swiglu_backward(&mut dgate, &mut dup, &dact, &ex.gate, &ex.up);

        let mut dxe = vec![0.0f32; n * h]; // (n, H)
        let dims_in = MatmulDims { m: n, k: h, n: im };
        for (slot, dproj, weight) in [(0, &dgate, &w.gate_proj), (1, &dup, &w.up_proj)] {
            be.matmul_nn(&mut dxe, dproj, w.expert(weight, e), dims_in, slot > 0);
            for part in &g.parts[slot] {
                let Some(grads) = gt.grads[part.span].as_deref_mut() else { continue };
                let (p, rows, r) = (part.pair, &part.rows, part.pair.rank);
                let gp = grads.get_mut(g.paths[slot]).expect("gradient sites were checked against the adapter's");
                let (b_e, db_e) = (&p.b[e * im * r..(e + 1) * im * r], &mut gp.b[e * im * r..(e + 1) * im * r]);
                let dims = LoraDims { rows: rows.len(), d_in: h, d_out: im, rank: r };
                let segs = g.segments(part, ex);
                let (dxs, dps) = (&mut dxe[rows.start * h..rows.end * h], &dproj[rows.start * im..rows.end * im]);
                let (xs, hl) = (&ex.x[rows.start * h..rows.end * h], &ex.lora_h[slot][part.h.clone()]);
                be.lora_backward(dxs, &mut gp.a, db_e, dps, xs, hl, &p.a, b_e, dims, part.scale, &segs);
            }
        }
        for (i, &t) in ex.rows.iter().enumerate() {
            for (o, v) in dx[t * h..(t + 1) * h].iter_mut().zip(&dxe[i * h..(i + 1) * h]) {
                *o += v;
            }
        }
    }
}
