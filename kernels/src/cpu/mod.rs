//! The fast CPU backend: `matmul_nt` through our own dot-product kernel (`dot_gemm`, one fixed
//! chain per output), the other dense products through the `gemm` crate on fixed-shape tiles (so
//! rows stay bit-invariant), everything else parallel over rows with rayon, and every reduction over
//! rows done per segment in a fixed order. Results agree with `reference` to the conformance
//! tolerances; row-wise ops agree bit for bit.

mod attention;
mod attention_avx;
pub mod dot_gemm;
mod linear;
mod rowwise;
pub mod tiled_gemm;

use crate::{
    ActivationOps, AdamStep, AttentionOps, AttnDims, Backend, EmbeddingOps, LinearOps, LoraDims, LoraOps, MatmulDims,
    NormOps, OptimOps, RopeOps, VocabOps,
};

/// The fast f32 CPU backend (name `"cpu"`). Uses rayon's global thread pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl LinearOps for CpuBackend {
    fn matmul_nt(&self, y: &mut [f32], x: &[f32], w: &[f32], d: MatmulDims, accumulate: bool) {
        linear::matmul_nt(y, x, w, d, accumulate);
    }
    fn matmul_nn(&self, dx: &mut [f32], dy: &[f32], w: &[f32], d: MatmulDims, accumulate: bool) {
        linear::matmul_nn(dx, dy, w, d, accumulate);
    }
    fn matmul_tn(&self, dw: &mut [f32], dy: &[f32], x: &[f32], d: MatmulDims, segments: &[usize]) {
        linear::matmul_tn(dw, dy, x, d, segments);
    }
}

impl EmbeddingOps for CpuBackend {
    fn embedding_forward(&self, out: &mut [f32], table: &[f32], ids: &[u32], vocab: usize, dim: usize) {
        rowwise::embedding_forward(out, table, ids, vocab, dim);
    }
    fn embedding_backward(&self, dtable: &mut [f32], dout: &[f32], ids: &[u32], vocab: usize, dim: usize) {
        rowwise::embedding_backward(dtable, dout, ids, vocab, dim);
    }
}

impl NormOps for CpuBackend {
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
        rowwise::rmsnorm_forward(y, rstd, x, w, rows, dim, eps);
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
        rowwise::rmsnorm_backward(dx, dw, dy, x, w, rstd, rows, dim, segments);
    }
}

impl RopeOps for CpuBackend {
    fn rope_forward(&self, x: &mut [f32], positions: &[u32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
        rowwise::rope_apply(x, positions, heads, head_dim, cos, sin, true);
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
        rowwise::rope_apply(dx, positions, heads, head_dim, cos, sin, false);
    }
}

impl AttentionOps for CpuBackend {
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

impl ActivationOps for CpuBackend {
    fn swiglu_forward(&self, out: &mut [f32], gate: &[f32], up: &[f32]) {
        rowwise::swiglu_forward(out, gate, up);
    }
    fn swiglu_backward(&self, dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
        rowwise::swiglu_backward(dgate, dup, dout, gate, up);
    }
}

impl VocabOps for CpuBackend {
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
        rowwise::logsoftmax_gather_forward(logprobs, lse, logits, targets, rows, vocab, k);
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
        rowwise::logsoftmax_gather_backward(dlogits, dlogprobs, logits, lse, targets, rows, vocab, k);
    }
}

impl LoraOps for CpuBackend {
    fn lora_forward(&self, y: &mut [f32], h: &mut [f32], x: &[f32], a: &[f32], b: &[f32], d: LoraDims, scale: f32) {
        linear::lora_forward(y, h, x, a, b, d, scale);
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
        linear::lora_backward(dx, da, db, dy, x, h, a, b, d, scale, segments);
    }
}

impl OptimOps for CpuBackend {
    fn adamw_step(&self, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep) {
        rowwise::adamw_step(param, grad, m, v, s);
    }
    /// Sequential on purpose: the contract fixes index order for the f64 sum.
    fn sum_squares(&self, x: &[f32]) -> f64 {
        crate::reference::adamw::sum_squares(x)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
}
