//! The Qwen3-MoE sparse block's backward: each expert's projections reversed on its gathered rows
//! (expert LoRA gradients in the shared-outer layout), scattered back to the tokens, plus the
//! gradient through the routing weights into the block's input via the frozen router (top-k
//! selection itself has none), as autograd gives for `Qwen3MoeSparseMoeBlock`.
//!
//! Batch invariance: input gradients are per-row; expert LoRA weight gradients are reduced one
//! sequence at a time within the expert's rows (one backend call per sequence segment). An
//! expert's own factor (gate/up's B slice, down's A slice) takes them straight, in sequence order;
//! the factor all experts share takes them through per-sequence sums (`moe_shared`, which says why).

use kernels::{Backend, LoraDims, MatmulDims};

use super::backward::{GradTargets, Segments};
use super::moe::{expert_sites, ExpertActs, MoeActs, MoeWeights};
use super::moe_shared::{SharedSums, SHARED_B_SLOT};
use super::tenants::{gather_parts, site_path, SitePart};
use super::Model;

/// One expert's adapter parts (gate, up, down, on its gathered rows), their gradient paths, and
/// the batch's segments.
struct ExpertGrad<'a> {
    parts: &'a [Vec<SitePart<'a>>; 3],
    paths: [&'a str; 3],
    seg: &'a Segments<'a>,
}

/// One sequence's rows within an expert part: `rows` in the expert's gathered rows, `local` the
/// same rows counted from the part's first (for its `x·Aᵀ` slice), and the sequence's number
/// within its tenant.
struct SeqRows {
    seq: usize,
    rows: std::ops::Range<usize>,
    local: std::ops::Range<usize>,
}

impl ExpertGrad<'_> {
    /// One segment per sequence of `part`'s tenant: its rows within this expert's gathered rows,
    /// rebased to the part's first — exactly what the tenant's batch alone would give.
    fn segments(&self, part: &SitePart<'_>, ex: &ExpertActs) -> Vec<usize> {
        let (tenant, start) = (&self.seg.tenants[part.span], part.rows.start);
        let first_row = self.seg.tenant_rows[part.span];
        tenant.iter().map(|&c| ex.rows.partition_point(|&r| r < first_row + c) - start).collect()
    }

    /// The non-empty sequences of `part` among this expert's rows, in order.
    fn seq_rows(&self, part: &SitePart<'_>, ex: &ExpertActs) -> Vec<SeqRows> {
        let segs = self.segments(part, ex);
        let start = part.rows.start;
        (segs.windows(2).enumerate())
            .filter(|(_, w)| w[0] < w[1])
            .map(|(seq, w)| SeqRows { seq, rows: start + w[0]..start + w[1], local: w[0]..w[1] })
            .collect()
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
        let paths = sites.map(|site| site_path(&self.paths, site));
        let mut shared = SharedSums::new(&parts, gt, seg);
        for (e, ex) in acts.experts.iter().enumerate() {
            if !ex.rows.is_empty() {
                let gathered = [0, 1, 2].map(|slot| gather_parts(&parts[slot], &ex.rows));
                let g = ExpertGrad { parts: &gathered, paths, seg };
                self.expert_backward(w, e, ex, acts, &g, gt, &mut shared, dout, dx, &mut dw);
            }
        }
        shared.add_into(gt, paths);

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
    /// and `dw` (the combine weights' gradient) filled at the token's slots for this expert. Its
    /// own LoRA factors' gradients go into `gt`, the shared factors' into `shared`.
    fn expert_backward(
        &self,
        w: &MoeWeights,
        e: usize,
        ex: &ExpertActs,
        acts: &MoeActs,
        g: &ExpertGrad<'_>,
        gt: &mut GradTargets<'_, '_>,
        shared: &mut SharedSums,
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
        for part in &g.parts[SHARED_B_SLOT] {
            let Some(grads) = gt.grads[part.span].as_deref_mut() else { continue };
            let (p, r) = (part.pair, part.pair.rank);
            let gp = grads.get_mut(g.paths[SHARED_B_SLOT]).expect("gradient sites were checked against the adapter's");
            let (a_e, da_e) = (&p.a[e * r * im..(e + 1) * r * im], &mut gp.a[e * r * im..(e + 1) * r * im]);
            let part_h = &ex.lora_h[SHARED_B_SLOT][part.h.clone()]; // (part rows, rank)
            for SeqRows { seq, rows, local } in g.seq_rows(part, ex) {
                let dims = LoraDims { rows: rows.len(), d_in: im, d_out: h, rank: r };
                let (dacts, dys) = (&mut dact[rows.start * im..rows.end * im], &dy[rows.start * h..rows.end * h]);
                let (acts_x, hl) = (&ex.act[rows.start * im..rows.end * im], &part_h[local.start * r..local.end * r]);
                let db = shared.seq_mut(SHARED_B_SLOT, part.span, seq);
                be.lora_backward(dacts, da_e, db, dys, acts_x, hl, a_e, &p.b, dims, part.scale, &[0, rows.len()]);
            }
        }
        let (mut dgate, mut dup) = (vec![0.0f32; n * im], vec![0.0f32; n * im]); // (n, I_moe) each
        be.swiglu_backward(&mut dgate, &mut dup, &dact, &ex.gate, &ex.up);

        let mut dxe = vec![0.0f32; n * h]; // (n, H)
        let dims_in = MatmulDims { m: n, k: h, n: im };
        for (slot, dproj, weight) in [(0, &dgate, &w.gate_proj), (1, &dup, &w.up_proj)] {
            be.matmul_nn(&mut dxe, dproj, w.expert(weight, e), dims_in, slot > 0);
            for part in &g.parts[slot] {
                let Some(grads) = gt.grads[part.span].as_deref_mut() else { continue };
                let (p, r) = (part.pair, part.pair.rank);
                let gp = grads.get_mut(g.paths[slot]).expect("gradient sites were checked against the adapter's");
                let (b_e, db_e) = (&p.b[e * im * r..(e + 1) * im * r], &mut gp.b[e * im * r..(e + 1) * im * r]);
                let part_h = &ex.lora_h[slot][part.h.clone()]; // (part rows, rank)
                for SeqRows { seq, rows, local } in g.seq_rows(part, ex) {
                    let dims = LoraDims { rows: rows.len(), d_in: h, d_out: im, rank: r };
                    let (dxs, dps) = (&mut dxe[rows.start * h..rows.end * h], &dproj[rows.start * im..rows.end * im]);
                    let (xs, hl) = (&ex.x[rows.start * h..rows.end * h], &part_h[local.start * r..local.end * r]);
                    let da = shared.seq_mut(slot, part.span, seq);
                    be.lora_backward(dxs, da, db_e, dps, xs, hl, &p.a, b_e, dims, part.scale, &[0, rows.len()]);
                }
            }
        }
        for (i, &t) in ex.rows.iter().enumerate() {
            for (o, v) in dx[t * h..(t + 1) * h].iter_mut().zip(&dxe[i * h..(i + 1) * h]) {
                *o += v;
            }
        }
    }
}
