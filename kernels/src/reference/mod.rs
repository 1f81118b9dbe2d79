//! The reference backend: naive, obviously-correct kernels in the llm.c style, one file per op
//! family, each op a `*_forward` / `*_backward` pair generic over [`Real`](crate::real::Real) so
//! the gradchecks run the very same code in f64. [`ReferenceBackend`] instantiates them at f32.
//! This is the oracle: it must never be optimised at the cost of being obviously right.

pub mod adamw;
pub mod attention;
pub mod embedding;
pub mod logsoftmax;
pub mod lora;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use crate::{
    ActivationOps, AdamStep, AttentionOps, AttnDims, Backend, EmbeddingOps, LinearOps, LoraDims, LoraOps, MatmulDims,
    NormOps, OptimOps, RopeOps, VocabOps,
};

/// The naive f32 backend (name `"reference"`): every op a plain loop with one fixed order.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReferenceBackend;

impl LinearOps for ReferenceBackend {
    fn matmul_nt(&self, y: &mut [f32], x: &[f32], w: &[f32], d: MatmulDims, accumulate: bool) {
        matmul::matmul_forward(y, x, w, d, accumulate);
    }
    fn matmul_nn(&self, dx: &mut [f32], dy: &[f32], w: &[f32], d: MatmulDims, accumulate: bool) {
        matmul::matmul_backward_input(dx, dy, w, d, accumulate);
    }
    fn matmul_tn(&self, dw: &mut [f32], dy: &[f32], x: &[f32], d: MatmulDims, segments: &[usize]) {
        matmul::matmul_backward_weight(dw, dy, x, d, segments);
    }
}

impl EmbeddingOps for ReferenceBackend {
    fn embedding_forward(&self, out: &mut [f32], table: &[f32], ids: &[u32], vocab: usize, dim: usize) {
        embedding::embedding_forward(out, table, ids, vocab, dim);
    }
    fn embedding_backward(&self, dtable: &mut [f32], dout: &[f32], ids: &[u32], vocab: usize, dim: usize) {
        embedding::embedding_backward(dtable, dout, ids, vocab, dim);
    }
}

impl NormOps for ReferenceBackend {
    fn rmsnorm_forward(
        &self,
        y: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
        w: &[f32],
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        rmsnorm::rmsnorm_forward(y, rstd, x, w, rows, dim, eps);
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut [f32],
        dw: Option<&mut [f32]>,
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        rows: usize,
        dim: usize,
        segments: &[usize],
    ) {
        rmsnorm::rmsnorm_backward(dx, dw, dy, x, w, rstd, rows, dim, segments);
    }
}

impl RopeOps for ReferenceBackend {
    fn rope_forward(&self, x: &mut [f32], positions: &[u32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
        rope::rope_forward(x, positions, heads, head_dim, cos, sin);
    }
    fn rope_backward(
        &self,
        dx: &mut [f32],
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) {
        rope::rope_backward(dx, positions, heads, head_dim, cos, sin);
    }
}

impl AttentionOps for ReferenceBackend {
    fn attention_forward(
        &self,
        out: &mut [f32],
        lse: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        cu_q: &[usize],
        cu_k: &[usize],
        d: AttnDims,
        scale: f32,
    ) {
        attention::attention_forward(out, lse, q, k, v, cu_q, cu_k, d, scale);
    }
    fn attention_backward(
        &self,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dout: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &[f32],
        lse: &[f32],
        cu_q: &[usize],
        cu_k: &[usize],
        d: AttnDims,
        scale: f32,
    ) {
        attention::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, cu_q, cu_k, d, scale);
    }
}

impl ActivationOps for ReferenceBackend {
    fn swiglu_forward(&self, out: &mut [f32], gate: &[f32], up: &[f32]) {
        swiglu::swiglu_forward(out, gate, up);
    }
    fn swiglu_backward(&self, dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
        swiglu::swiglu_backward(dgate, dup, dout, gate, up);
    }
}

impl VocabOps for ReferenceBackend {
    fn logsoftmax_gather_forward(
        &self,
        logprobs: &mut [f32],
        lse: &mut [f32],
        logits: &[f32],
        targets: &[u32],
        rows: usize,
        vocab: usize,
        k: usize,
    ) {
        logsoftmax::logsoftmax_gather_forward(logprobs, lse, logits, targets, rows, vocab, k);
    }
    fn logsoftmax_gather_backward(
        &self,
        dlogits: &mut [f32],
        dlogprobs: &[f32],
        logits: &[f32],
        lse: &[f32],
        targets: &[u32],
        rows: usize,
        vocab: usize,
        k: usize,
    ) {
        logsoftmax::logsoftmax_gather_backward(dlogits, dlogprobs, logits, lse, targets, rows, vocab, k);
    }
}

impl LoraOps for ReferenceBackend {
    fn lora_forward(&self, y: &mut [f32], h: &mut [f32], x: &[f32], a: &[f32], b: &[f32], d: LoraDims, scale: f32) {
        lora::lora_forward(y, h, x, a, b, d, scale);
    }
    fn lora_backward(
        &self,
        dx: &mut [f32],
        da: &mut [f32],
        db: &mut [f32],
        dy: &[f32],
        x: &[f32],
        h: &[f32],
        a: &[f32],
        b: &[f32],
        d: LoraDims,
        scale: f32,
        segments: &[usize],
    ) {
        lora::lora_backward(dx, da, db, dy, x, h, a, b, d, scale, segments);
    }
}

impl OptimOps for ReferenceBackend {
    fn adamw_step(&self, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep) {
        adamw::adamw_step(param, grad, m, v, s);
    }
    fn sum_squares(&self, x: &[f32]) -> f64 {
        adamw::sum_squares(x)
    }
}

impl Backend for ReferenceBackend {
    fn name(&self) -> &'static str {
        "reference"
    }
}
