//! The Qwen3-MoE sparse block (`Qwen3MoeSparseMoeBlock`): its frozen weights, the router (f32
//! softmax over all experts → top-k, ties to the lower expert index → optional renormalisation),
//! dropless dispatch and the combine, saving what `moe_backward` needs.
//!
//! Batch invariance (design §3): the router and every expert matmul are row-invariant kernel ops;
//! each expert runs on its tokens gathered in token order; a token's output sums its `k` expert
//! contributions in top-k rank order. So a token's output depends on that token alone, whatever
//! else shares the batch. Expert LoRA uses the shared-outer layout described in `crate::adapter`.

use kernels::{Backend, LoraDims, MatmulDims};
use runtime::MoeConfig;

use super::lora::{DOWN, GATE, UP};
use super::tenants::{gather_parts, Adapters, Site, SitePart};
use super::{Model, ModelError};
use crate::tensor::WeightMap;

/// One sparse block's frozen weights, experts stacked expert-major.
#[derive(Clone, Debug)]
pub(crate) struct MoeWeights {
    pub experts: usize, // E
    pub top_k: usize,   // k
    pub inter: usize,   // I_moe
    pub norm_topk_prob: bool,
    pub router: Vec<f32>,    // (E, H) mlp.gate.weight
    pub gate_proj: Vec<f32>, // (E, I_moe, H)
    pub up_proj: Vec<f32>,   // (E, I_moe, H)
    pub down_proj: Vec<f32>, // (E, H, I_moe)
}

impl MoeWeights {
    /// Takes layer `prefix`'s router and per-expert tensors (the Hub's names) out of `map`.
    ///
    /// # Errors
    /// `ModelError::Weight` naming the first missing or misshapen tensor.
    pub fn take(moe: &MoeConfig, hidden: usize, prefix: &str, map: &mut WeightMap) -> Result<Self, ModelError> {
        let (experts, inter, h) = (moe.num_experts, moe.moe_intermediate_size, hidden);
        let router = map.take(&format!("{prefix}.mlp.gate.weight"), &[experts, h])?.data;
        let mut gate_proj = Vec::with_capacity(experts * inter * h);
        let mut up_proj = Vec::with_capacity(experts * inter * h);
        let mut down_proj = Vec::with_capacity(experts * h * inter);
        for e in 0..experts {
            let p = format!("{prefix}.mlp.experts.{e}");
            gate_proj.extend(map.take(&format!("{p}.gate_proj.weight"), &[inter, h])?.data);
            up_proj.extend(map.take(&format!("{p}.up_proj.weight"), &[inter, h])?.data);
            down_proj.extend(map.take(&format!("{p}.down_proj.weight"), &[h, inter])?.data);
        }
        Ok(MoeWeights {
            experts,
            top_k: moe.num_experts_per_tok,
            inter,
            norm_topk_prob: moe.norm_topk_prob,
            router,
            gate_proj,
            up_proj,
            down_proj,
        })
    }

    /// Expert `e`'s slice of a stacked weight of `per` values per expert.
    pub fn expert<'a>(&self, stacked: &'a [f32], e: usize) -> &'a [f32] {
        let per = stacked.len() / self.experts;
        &stacked[e * per..(e + 1) * per]
    }
}

/// One expert's saved intermediates over the `n` tokens routed to it.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExpertActs {
    pub rows: Vec<usize>,      // (n) the batch rows routed here, ascending
    pub x: Vec<f32>,           // (n, H) the block's input at those rows
    pub gate: Vec<f32>,        // (n, I_moe)
    pub up: Vec<f32>,          // (n, I_moe)
    pub act: Vec<f32>,         // (n, I_moe) silu(gate)·up
    pub y: Vec<f32>,           // (n, H) the expert's output, before the routing weight
    pub lora_h: [Vec<f32>; 3], // x·Aᵀ for gate, up, down: each adapting span's (rows here, rank), end to end
}

/// One sparse block's saved routing and expert intermediates.
#[derive(Clone, Debug, Default)]
pub(crate) struct MoeActs {
    pub probs: Vec<f32>,     // (T, E) softmax of the router logits
    pub top_idx: Vec<usize>, // (T, k) the chosen experts, by descending probability
    pub top_w: Vec<f32>,     // (T, k) their combine weights (renormalised when norm_topk_prob)
    pub experts: Vec<ExpertActs>,
}

impl MoeActs {
    /// The fraction of the `T·k` token-to-expert assignments of the token rows `rows` that each
    /// expert received `(E)`.
    pub fn expert_fractions(&self, rows: std::ops::Range<usize>) -> Vec<f32> {
        let (counts, assignments) = self.expert_counts(rows);
        expert_fractions(&counts, assignments)
    }

    /// How many of the token rows `rows`' assignments each expert received `(E)`, and how many
    /// assignments those rows made (`rows · k`). Counts add across batches, so a request run as
    /// several passes can still report the fractions of one pass exactly.
    pub fn expert_counts(&self, rows: std::ops::Range<usize>) -> (Vec<usize>, usize) {
        let tokens = self.probs.len() / self.experts.len().max(1);
        let k = self.top_idx.len() / tokens.max(1);
        let count =
            |e: &ExpertActs| e.rows.partition_point(|&r| r < rows.end) - e.rows.partition_point(|&r| r < rows.start);
        (self.experts.iter().map(count).collect(), rows.len() * k)
    }
}

/// Each expert's share of `assignments` token-to-expert assignments, given its `counts (E)`.
pub(crate) fn expert_fractions(counts: &[usize], assignments: usize) -> Vec<f32> {
    let total = assignments.max(1) as f32;
    counts.iter().map(|&c| c as f32 / total).collect()
}

/// The expert sites of layer `layer`, in slot order: gate, up, down.
pub(crate) fn expert_sites(layer: usize) -> [Site; 3] {
    [GATE, UP, DOWN].map(|proj| Site::Proj { layer, proj })
}

/// In-place softmax of one row in f32, max subtracted, summed in index order.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// The `k` largest entries of `p`, descending; an equal value keeps the lower index first.
fn top_k(p: &[f32], k: usize, idx: &mut [usize]) {
    for j in 0..k {
        let mut best: Option<usize> = None;
        for (e, &v) in p.iter().enumerate() {
            if idx[..j].contains(&e) {
                continue;
            }
            if best.is_none_or(|b| v > p[b]) {
                best = Some(e);
            }
        }
        idx[j] = best.expect("k ≤ E (validated config), so an unchosen expert remains");
    }
}

impl<B: Backend> Model<B> {
    /// `out (T, H) = Σ_j w_tj · Expert_{e_tj}(x_t)` over `x (T, H)`, the expert projections of
    /// layer `layer` adapted per span by `ad` (shared-outer layout). Returns the saved routing and
    /// expert activations.
    pub(crate) fn moe_forward(
        &self,
        w: &MoeWeights,
        ad: &Adapters<'_>,
        layer: usize,
        x: &[f32],
        out: &mut [f32],
    ) -> MoeActs {
        let (h, ne, k) = (self.dims.hidden, w.experts, w.top_k);
        let rows = x.len() / h;
        assert_eq!(x.len(), rows * h, "moe_forward: input is not (T, H)");
        assert_eq!(out.len(), rows * h, "moe_forward: output is not (T, H)");
        let be = &self.backend;

        let mut probs = vec![0.0f32; rows * ne]; // (T, E)
        be.matmul_nt(&mut probs, x, &w.router, MatmulDims { m: rows, k: h, n: ne }, false);
        probs.chunks_exact_mut(ne).for_each(softmax);
        let mut top_idx = vec![0usize; rows * k]; // (T, k)
        let mut top_w = vec![0.0f32; rows * k]; // (T, k)
        for t in 0..rows {
            let (p, idx, wt) = (&probs[t * ne..(t + 1) * ne], &mut top_idx[t * k..(t + 1) * k], &mut top_w[t * k..]);
            top_k(p, k, idx);
            for j in 0..k {
                wt[j] = p[idx[j]];
            }
            if w.norm_topk_prob {
                let sum: f32 = wt[..k].iter().sum();
                wt[..k].iter_mut().for_each(|v| *v /= sum);
            }
        }

        // Dropless dispatch: every expert takes its tokens in token order.
        let mut experts = vec![ExpertActs::default(); ne];
        let mut top_pos = vec![0usize; rows * k]; // (T, k)
        for t in 0..rows {
            for j in 0..k {
                let e = top_idx[t * k + j];
                top_pos[t * k + j] = experts[e].rows.len();
                experts[e].rows.push(t);
            }
        }
        let parts = expert_sites(layer).map(|site| ad.parts(site));
        for (e, ex) in experts.iter_mut().enumerate() {
            if !ex.rows.is_empty() {
                let gathered = [0, 1, 2].map(|slot| gather_parts(&parts[slot], &ex.rows));
                self.expert_forward(w, e, &gathered, x, ex);
            }
        }

        // Combine, each token's contributions in top-k rank order.
        out.fill(0.0);
        for t in 0..rows {
            let o = &mut out[t * h..(t + 1) * h];
            for j in 0..k {
                let (ex, pos, wt) = (&experts[top_idx[t * k + j]], top_pos[t * k + j], top_w[t * k + j]);
                for (ov, yv) in o.iter_mut().zip(&ex.y[pos * h..(pos + 1) * h]) {
                    *ov += wt * yv;
                }
            }
        }
        assert_eq!(experts.iter().map(|e| e.rows.len()).sum::<usize>(), rows * k, "every choice dispatched once");
        MoeActs { probs, top_idx, top_w, experts }
    }

    /// Expert `e` on its gathered rows: gate/up (+ shared A, B_e), SwiGLU, down (+ A_e, shared B),
    /// each adapter part (`parts`: gate, up, down, on the gathered rows) on its own rows.
    fn expert_forward(&self, w: &MoeWeights, e: usize, parts: &[Vec<SitePart<'_>>; 3], x: &[f32], ex: &mut ExpertActs) {
        let (h, im) = (self.dims.hidden, w.inter);
        let n = ex.rows.len();
        let be = &self.backend;
        ex.x = ex.rows.iter().flat_map(|&t| x[t * h..(t + 1) * h].iter().copied()).collect(); // (n, H)
        ex.gate = vec![0.0f32; n * im];
        ex.up = vec![0.0f32; n * im];
        ex.act = vec![0.0f32; n * im];
        ex.y = vec![0.0f32; n * h];
        let up_dims = MatmulDims { m: n, k: h, n: im };
        be.matmul_nt(&mut ex.gate, &ex.x, w.expert(&w.gate_proj, e), up_dims, false);
        be.matmul_nt(&mut ex.up, &ex.x, w.expert(&w.up_proj, e), up_dims, false);
        for (slot, out) in [(0, &mut ex.gate), (1, &mut ex.up)] {
            ex.lora_h[slot] = vec![0.0f32; parts[slot].last().map_or(0, |p| p.h.end)];
            for part in &parts[slot] {
                let (p, rows) = (part.pair, &part.rows);
                assert_eq!((p.d_in, p.d_out), (h, w.experts * im), "moe: gate/up adapter is not (H → E·I_moe)");
                let r = p.rank;
                let b_e = &p.b[e * im * r..(e + 1) * im * r]; // (I_moe, r)
                let dims = LoraDims { rows: rows.len(), d_in: h, d_out: im, rank: r };
                let (ys, xs) = (&mut out[rows.start * im..rows.end * im], &ex.x[rows.start * h..rows.end * h]);
                be.lora_forward(ys, &mut ex.lora_h[slot][part.h.clone()], xs, &p.a, b_e, dims, part.scale);
            }
        }
        be.swiglu_forward(&mut ex.act, &ex.gate, &ex.up);
        be.matmul_nt(&mut ex.y, &ex.act, w.expert(&w.down_proj, e), MatmulDims { m: n, k: im, n: h }, false);
        ex.lora_h[2] = vec![0.0f32; parts[2].last().map_or(0, |p| p.h.end)];
        for part in &parts[2] {
            let (p, rows) = (part.pair, &part.rows);
            assert_eq!((p.d_in, p.d_out), (w.experts * im, h), "moe: down adapter is not (E·I_moe → H)");
            let r = p.rank;
            let a_e = &p.a[e * r * im..(e + 1) * r * im]; // (r, I_moe)
            let dims = LoraDims { rows: rows.len(), d_in: im, d_out: h, rank: r };
            let (ys, xs) = (&mut ex.y[rows.start * h..rows.end * h], &ex.act[rows.start * im..rows.end * im]);
            be.lora_forward(ys, &mut ex.lora_h[2][part.h.clone()], xs, a_e, &p.b, dims, part.scale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let mut row = [1.0f32, 3.0, 2.0, -1.0];
        softmax(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[1] > row[2] && row[2] > row[0] && row[0] > row[3]);
    }

    #[test]
    fn top_k_is_descending_and_ties_go_to_the_lower_expert() {
        let mut idx = [0usize; 3];
        top_k(&[0.1, 0.3, 0.2, 0.3, 0.1], 3, &mut idx);
        assert_eq!(idx, [1, 3, 2]);
        top_k(&[0.25, 0.25, 0.25, 0.25], 3, &mut idx);
        assert_eq!(idx, [0, 1, 2]);
    }
}
