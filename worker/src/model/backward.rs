//! The backward pass: the forward's op sequence reversed (llm.c style), carrying `d(loss)/d(h)`
//! through every layer while only the LoRA factors collect gradients (the base is frozen).
//!
//! Batch invariance (design §3) rests on two facts kept here: every input-gradient op is
//! row-invariant, and every weight-gradient reduction is a backend segmented op over
//! `cu_seqlens`, so a sequence's gradient contribution never depends on its neighbours.

use kernels::{Backend, LoraDims, MatmulDims};
use runtime::LoraConfig;

use super::acts::{Forward, LayerActs};
use super::layer::add_assign;
use super::lora::{check_shapes, DOWN, GATE, K, O, Q, UP, V};
use super::tenants::{site_path, Adapters, Site, Tenant};
use super::weights::LayerWeights;
use super::{Model, ModelError, PackedBatch};
use crate::adapter::LoraWeights;

/// Input-gradient scratch shared by every layer of one backward.
struct Scratch {
    dres: Vec<f32>,   // (T, H) d(loss)/d(residual stream)
    dnorm: Vec<f32>,  // (T, H) gradient at a norm's output
    dtmp: Vec<f32>,   // (T, H) gradient at a norm's input
    dact: Vec<f32>,   // (T, I)
    dgate: Vec<f32>,  // (T, I)
    dup: Vec<f32>,    // (T, I)
    dattn: Vec<f32>,  // (T, nh·hd)
    dq: Vec<f32>,     // (T, nh·hd) at attention's q (after RoPE)
    dq_pre: Vec<f32>, // (T, nh·hd) at q_proj's output (before q_norm); empty without qk-norm
    dk: Vec<f32>,     // (T, nkv·hd)
    dk_pre: Vec<f32>, // (T, nkv·hd); empty without qk-norm
    dv: Vec<f32>,     // (T, nkv·hd)
}

/// The row segments of the batch, the same segments scaled to per-head rows, and each tenant's
/// own segments rebased to its first row (what its LoRA reductions see, alone or shared).
pub(crate) struct Segments<'a> {
    tokens: &'a [usize],
    q_heads: Vec<usize>,
    kv_heads: Vec<usize>,
    pub tenants: Vec<Vec<usize>>,
    /// Each tenant's first token row.
    pub tenant_rows: Vec<usize>,
}

/// The adapters of a backward and where each tenant's gradients go (`None`: not accumulated).
pub(crate) struct GradTargets<'a, 'w> {
    pub ad: &'a Adapters<'w>,
    pub grads: &'a mut [Option<&'w mut LoraWeights>],
}

impl<B: Backend> Model<B> {
    /// `d(loss)/d(logprobs) (T, k)` → accumulates (`+=`) `d(loss)/d(A, B)` into `grads` (the same
    /// sites as the adapter). `fwd` must be this batch's forward, computed with this adapter.
    ///
    /// # Errors
    /// `ModelError` when `fwd` came from another batch or ran without the adapter, `dlogprobs`
    /// is not `(T, k)`, or the adapter or `grads` do not fit this model.
    pub fn backward(
        &self,
        fwd: &Forward,
        batch: &PackedBatch,
        dlogprobs: &[f32],
        lora: (&LoraConfig, &LoraWeights),
        grads: &mut LoraWeights,
    ) -> Result<(), ModelError> {
        let tenant = Tenant { seqs: batch.num_seqs(), lora: Some(lora) };
        self.backward_tenants(fwd, batch, dlogprobs, &[tenant], &mut [Some(grads)])
    }

    /// The backward of [`Self::forward_tenants`]: tenant `i`'s gradients accumulate (`+=`) into
    /// `grads[i]`, or nowhere when it is `None` (a forward-only tenant: its rows never mix with
    /// another tenant's, so skipping its adapter changes nobody else's gradients). Each tenant's
    /// gradients equal, bit for bit, those of a backward over its sequences alone.
    ///
    /// # Errors
    /// As [`Self::backward`], and `ModelError::TenantMismatch` when `tenants` or `grads` differ in
    /// number from the forward's tenants, or a tenant with gradients ran without an adapter.
    pub fn backward_tenants<'w>(
        &self,
        fwd: &Forward,
        batch: &PackedBatch,
        dlogprobs: &[f32],
        tenants: &[Tenant<'w>],
        grads: &mut [Option<&'w mut LoraWeights>],
    ) -> Result<(), ModelError> {
        let t = batch.num_tokens();
        if fwd.cu_seqlens != batch.cu_seqlens {
            return Err(ModelError::ForwardMismatch {
                forward: fwd.cu_seqlens.clone(),
                batch: batch.cu_seqlens.clone(),
            });
        }
        if dlogprobs.len() != t * batch.k {
            return Err(ModelError::GradientLength { got: dlogprobs.len(), expected: t * batch.k });
        }
        let ad = self.adapters(batch, tenants)?;
        if ad.spans.len() != fwd.tenants.len() || grads.len() != ad.spans.len() {
            return Err(ModelError::TenantMismatch {
                got: tenants.len().max(grads.len()),
                expected: fwd.tenants.len(),
            });
        }
        for (i, (span, (seqs, with_lora))) in ad.spans.iter().zip(&fwd.tenants).enumerate() {
            if span.view.present && !with_lora {
                return Err(ModelError::ForwardWithoutLora);
            }
            if span.seqs != *seqs || span.view.present != *with_lora {
                return Err(ModelError::TenantMismatch { got: tenants.len(), expected: fwd.tenants.len() });
            }
            if let Some(g) = &grads[i] {
                let Some((lora, _)) = tenants[i].lora else { return Err(ModelError::ForwardWithoutLora) };
                check_shapes(&self.config, lora, g, "gradient")?;
            }
        }
        let mut targets = GradTargets { ad: &ad, grads };
        self.backward_spans(fwd, batch, dlogprobs, &mut targets);
        Ok(())
    }

    fn backward_spans(&self, fwd: &Forward, batch: &PackedBatch, dlogprobs: &[f32], gt: &mut GradTargets<'_, '_>) {
        let t = batch.num_tokens();
        let d = self.dims;
        let be = &self.backend;
        let qk = self.config.family.has_qk_norm();
        let n = |width: usize| vec![0.0f32; t * width];
        let cu = &batch.cu_seqlens;
        let seg = Segments {
            tokens: cu,
            q_heads: cu.iter().map(|&c| c * d.heads).collect(),
            kv_heads: cu.iter().map(|&c| c * d.kv_heads).collect(),
            tenants: gt
                .ad
                .spans
                .iter()
                .map(|s| cu[s.seqs.start..=s.seqs.end].iter().map(|&c| c - s.rows.start).collect())
                .collect(),
            tenant_rows: gt.ad.spans.iter().map(|s| s.rows.start).collect(),
        };

        // Unembedding and final norm.
        let mut dlogits = n(d.vocab); // (T, V)
        let (fin, unembed) = (&fwd.fin, self.weights.unembed());
        be.logsoftmax_gather_backward(
            &mut dlogits,
            dlogprobs,
            &fwd.logits,
            &fin.lse,
            &batch.targets,
            t,
            d.vocab,
            batch.k,
        );
        let mut dhf = n(d.hidden); // (T, H)
        be.matmul_nn(&mut dhf, &dlogits, unembed, MatmulDims { m: t, k: d.hidden, n: d.vocab }, false);
        self.site_backward(gt, Site::LmHead, &mut dhf, &dlogits, &fin.hf, &fin.lora_h, &seg);
        drop(dlogits);
        let mut s = Scratch {
            dres: n(d.hidden),
            dnorm: dhf,
            dtmp: n(d.hidden),
            dact: n(d.intermediate),
            dgate: n(d.intermediate),
            dup: n(d.intermediate),
            dattn: n(d.q_dim),
            dq: n(d.q_dim),
            dq_pre: if qk { n(d.q_dim) } else { Vec::new() },
            dk: n(d.kv_dim),
            dk_pre: if qk { n(d.kv_dim) } else { Vec::new() },
            dv: n(d.kv_dim),
        };
        be.rmsnorm_backward(
            &mut s.dres,
            None,
            &s.dnorm,
            &fin.x,
            &self.weights.norm,
            &fin.rstd,
            t,
            d.hidden,
            seg.tokens,
        );

        for l in (0..self.weights.layers.len()).rev() {
            let (w, acts) = (&self.weights.layers[l], &fwd.layers[l]);
            self.mlp_backward(l, w, acts, gt, &mut s, batch, &seg);
            self.attn_backward(l, w, acts, gt, &mut s, batch, &seg);
        }
    }

    /// `out = x_mid + down(silu(gate(m))·up(m))` (or `+ moe(m)`), `m = norm(x_mid)`: turns
    /// `s.dres` = d(out) into d(x_mid).
    fn mlp_backward(
        &self,
        l: usize,
        w: &LayerWeights,
        acts: &LayerActs,
        gt: &mut GradTargets<'_, '_>,
        s: &mut Scratch,
        batch: &PackedBatch,
        seg: &Segments<'_>,
    ) {
        let d = self.dims;
        let (be, t) = (&self.backend, batch.num_tokens());
        let site = |proj| Site::Proj { layer: l, proj };
        let ln = &w.post_attention_layernorm;
        if let (Some(mw), Some(ma)) = (&w.moe, &acts.moe) {
            self.moe_backward(mw, ma, l, gt, seg, &s.dres, &mut s.dnorm);
            be.rmsnorm_backward(&mut s.dtmp, None, &s.dnorm, &acts.x_mid, ln, &acts.rstd_m, t, d.hidden, seg.tokens);
            add_assign(&mut s.dres, &s.dtmp);
            return;
        }
        be.matmul_nn(&mut s.dact, &s.dres, &w.down_proj, MatmulDims { m: t, k: d.intermediate, n: d.hidden }, false);
        let h = &acts.lora_h;
        self.site_backward(gt, site(DOWN), &mut s.dact, &s.dres, &acts.act, &h[DOWN], seg);
        be.swiglu_backward(&mut s.dgate, &mut s.dup, &s.dact, &acts.gate, &acts.up);
        let dims_in = MatmulDims { m: t, k: d.hidden, n: d.intermediate };
        be.matmul_nn(&mut s.dnorm, &s.dgate, &w.gate_proj, dims_in, false);
        self.site_backward(gt, site(GATE), &mut s.dnorm, &s.dgate, &acts.m, &h[GATE], seg);
        be.matmul_nn(&mut s.dnorm, &s.dup, &w.up_proj, dims_in, true);
        self.site_backward(gt, site(UP), &mut s.dnorm, &s.dup, &acts.m, &h[UP], seg);
        be.rmsnorm_backward(&mut s.dtmp, None, &s.dnorm, &acts.x_mid, ln, &acts.rstd_m, t, d.hidden, seg.tokens);
        add_assign(&mut s.dres, &s.dtmp);
    }

    /// `x_mid = x + o(attn(rope(qn(q(a))), rope(kn(k(a))), v(a)))`, `a = norm(x)`: turns
    /// `s.dres` = d(x_mid) into d(x).
    fn attn_backward(
        &self,
        l: usize,
        w: &LayerWeights,
        acts: &LayerActs,
        gt: &mut GradTargets<'_, '_>,
        s: &mut Scratch,
        batch: &PackedBatch,
        seg: &Segments<'_>,
    ) {
        let d = self.dims;
        let (be, t) = (&self.backend, batch.num_tokens());
        let site = |proj| Site::Proj { layer: l, proj };
        let h = &acts.lora_h;
        be.matmul_nn(&mut s.dattn, &s.dres, &w.o_proj, MatmulDims { m: t, k: d.q_dim, n: d.hidden }, false);
        self.site_backward(gt, site(O), &mut s.dattn, &s.dres, &acts.attn, &h[O], seg);
        let cu = &batch.cu_seqlens;
        be.attention_backward(
            &mut s.dq,
            &mut s.dk,
            &mut s.dv,
            &s.dattn,
            &acts.q,
            &acts.k,
            &acts.v,
            &acts.attn,
            &acts.lse,
            cu,
            cu,
            self.attn_dims(),
            self.attn_scale(),
        );
        let (cos, sin) = (&self.rope.cos, &self.rope.sin);
        be.rope_backward(&mut s.dq, &batch.positions, d.heads, d.head_dim, cos, sin);
        be.rope_backward(&mut s.dk, &batch.positions, d.kv_heads, d.head_dim, cos, sin);
        let (dq, dk) = match (&w.q_norm, &w.k_norm) {
            (Some(qn), Some(kn)) => {
                let (qr, kr) = (t * d.heads, t * d.kv_heads);
                be.rmsnorm_backward(
                    &mut s.dq_pre,
                    None,
                    &s.dq,
                    &acts.q_pre,
                    qn,
                    &acts.rstd_q,
                    qr,
                    d.head_dim,
                    &seg.q_heads,
                );
                be.rmsnorm_backward(
                    &mut s.dk_pre,
                    None,
                    &s.dk,
                    &acts.k_pre,
                    kn,
                    &acts.rstd_k,
                    kr,
                    d.head_dim,
                    &seg.kv_heads,
                );
                (&s.dq_pre, &s.dk_pre)
            }
            _ => (&s.dq, &s.dk),
        };
        be.matmul_nn(&mut s.dnorm, dq, &w.q_proj, MatmulDims { m: t, k: d.hidden, n: d.q_dim }, false);
        self.site_backward(gt, site(Q), &mut s.dnorm, dq, &acts.a, &h[Q], seg);
        let kv_dims = MatmulDims { m: t, k: d.hidden, n: d.kv_dim };
        be.matmul_nn(&mut s.dnorm, dk, &w.k_proj, kv_dims, true);
        self.site_backward(gt, site(K), &mut s.dnorm, dk, &acts.a, &h[K], seg);
        be.matmul_nn(&mut s.dnorm, &s.dv, &w.v_proj, kv_dims, true);
        self.site_backward(gt, site(V), &mut s.dnorm, &s.dv, &acts.a, &h[V], seg);
        let ln = &w.input_layernorm;
        be.rmsnorm_backward(&mut s.dtmp, None, &s.dnorm, &acts.x, ln, &acts.rstd_a, t, d.hidden, seg.tokens);
        add_assign(&mut s.dres, &s.dtmp);
    }

    /// One site's adapter backward, per tenant adapting it: `dx +=` the adapter's input gradient
    /// on its rows and its `(dA, dB) +=` the weight gradients, reduced over its own sequences.
    /// Tenants without gradient buffers are skipped (their rows' upstream gradient is zero).
    fn site_backward(
        &self,
        gt: &mut GradTargets<'_, '_>,
        site: Site,
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        h: &[f32],
        seg: &Segments<'_>,
    ) {
        let path = site_path(&self.paths, site);
        for part in gt.ad.parts(site) {
            let Some(grads) = gt.grads[part.span].as_deref_mut() else { continue };
            let (p, r) = (part.pair, &part.rows);
            let g = grads.get_mut(path).expect("gradient sites were checked against the adapter's");
            let dims = LoraDims { rows: r.len(), d_in: p.d_in, d_out: p.d_out, rank: p.rank };
            let (din, dout) = (p.d_in, p.d_out);
            let (dxs, dys, xs) = (
                &mut dx[r.start * din..r.end * din],
                &dy[r.start * dout..r.end * dout],
                &x[r.start * din..r.end * din],
            );
            let segments = &seg.tenants[part.span];
            self.backend.lora_backward(
                dxs,
                &mut g.a,
                &mut g.b,
                dys,
                xs,
                &h[part.h.clone()],
                &p.a,
                &p.b,
                dims,
                part.scale,
                segments,
            );
        }
    }
}
