//! The `Backend` trait: every numerical op the models need, grouped by op family.
//!
//! Buffers are host slices of f32, row-major, with shapes stated per argument. A shape mismatch is
//! a programmer error, so every op asserts its preconditions instead of returning an error.
//!
//! Two contracts every implementation must keep, because replay and sampler/trainer consistency
//! stand on them (design §3, "batch invariance"):
//! - **Row invariance.** Where an op maps rows to rows (matmul_nt/nn, norms, rope, activations,
//!   attention per query, log-softmax), row `i` of the output depends only on row `i` of the
//!   inputs (for attention: on that query and its causal prefix in its own sequence), bit for bit,
//!   whatever the number of rows or the row's position in the buffer.
//! - **Segmented reductions.** Where an op reduces over rows (weight gradients), it reduces each
//!   segment of `segments` (cumulative row offsets, `[0, .., rows]`) on its own and adds the
//!   segment results into the output in segment order. A segment's contribution therefore never
//!   depends on its neighbours, and a segment whose upstream gradient is zero adds exactly zero.
//!
//! Accumulating outputs (`+=`) are marked so; every other output is overwritten.

/// `y (m, n) = x (m, k) · w (n, k)ᵀ`, the shape of an `nn.Linear` forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// Grouped-query attention geometry: `heads` query heads share `kv_heads` key/value heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// LoRA geometry: `x (rows, d_in)`, `a (rank, d_in)`, `b (d_out, rank)`, `y (rows, d_out)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraDims {
    pub rows: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub rank: usize,
}

/// One AdamW update's hyperparameters, exactly as `torch.optim.AdamW` takes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub learning_rate: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based count of updates including this one (bias correction uses it).
    pub step: u64,
    /// Multiplies the gradient before the update: the global-norm clip coefficient (1.0 = none).
    pub grad_scale: f32,
}

/// Dense linear algebra.
pub trait LinearOps {
    /// `y (m, n) = x (m, k) · w (n, k)ᵀ`, or `+=` when `accumulate`. Row-invariant.
    fn matmul_nt(&self, y: &mut [f32], x: &[f32], w: &[f32], d: MatmulDims, accumulate: bool);
    /// `dx (m, k) = dy (m, n) · w (n, k)`, or `+=` when `accumulate`. Row-invariant.
    /// (The input gradient of `matmul_nt`.)
    fn matmul_nn(&self, dx: &mut [f32], dy: &[f32], w: &[f32], d: MatmulDims, accumulate: bool);
    /// `dw (n, k) += dy (m, n)ᵀ · x (m, k)`, reduced per segment of rows (see module doc).
    /// (The weight gradient of `matmul_nt`.)
    fn matmul_tn(&self, dw: &mut [f32], dy: &[f32], x: &[f32], d: MatmulDims, segments: &[usize]);
}

/// Token embedding lookup.
pub trait EmbeddingOps {
    /// `out (ids.len(), dim) = table (vocab, dim)[ids]`. Panics on an id ≥ vocab.
    fn embedding_forward(&self, out: &mut [f32], table: &[f32], ids: &[u32], vocab: usize, dim: usize);
    /// `dtable (vocab, dim) += scatter(dout (ids.len(), dim))`, adding rows in token order.
    fn embedding_backward(&self, dtable: &mut [f32], dout: &[f32], ids: &[u32], vocab: usize, dim: usize);
}

/// RMSNorm, as transformers computes it in f32: `y = w * (x * rsqrt(mean(x²) + eps))`.
pub trait NormOps {
    /// `y (rows, dim)`, `rstd (rows)` saved for backward, `x (rows, dim)`, `w (dim)`.
    fn rmsnorm_forward(&self, y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], rows: usize, dim: usize, eps: f32);
    /// `dx (rows, dim)` overwritten; `dw (dim) +=` when given, reduced per segment of rows.
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
    );
}

/// Rotary position embedding, non-interleaved ("rotate_half") form.
///
/// `x (tokens, heads, head_dim)` is rotated in place. `cos`, `sin` are tables
/// `(positions_max, head_dim / 2)` from [`crate::rope::RopeTable`]; token `t` uses row `positions[t]`.
/// For pair `j < head_dim/2`: `x1 = x[j]`, `x2 = x[j + head_dim/2]`,
/// `x[j] = x1·cos - x2·sin`, `x[j + head_dim/2] = x2·cos + x1·sin`.
pub trait RopeOps {
    fn rope_forward(&self, x: &mut [f32], positions: &[u32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]);
    /// The transpose of the rotation: turns `d(rotated)` into `d(unrotated)` in place.
    fn rope_backward(&self, dx: &mut [f32], positions: &[u32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]);
}

/// Causal grouped-query attention over packed variable-length sequences.
///
/// `q (tq, heads, head_dim)`, `k`/`v (tk, kv_heads, head_dim)`. `cu_q`, `cu_k` are cumulative
/// offsets `(seqs + 1)` into the rows of q and k. In sequence `s`, with `lq` queries and `lk ≥ lq`
/// keys, query `i` sits at position `lk - lq + i` and attends to keys `0..=lk - lq + i` of its own
/// sequence. Training has `lq == lk`; decoding with a KV cache has `lq == 1`. Query head `h` reads
/// kv head `h / (heads / kv_heads)`. Softmax in f32 with the max subtracted; `scale` multiplies
/// the scores (`head_dim^-0.5`).
pub trait AttentionOps {
    /// `out (tq, heads, head_dim)`; `lse (tq, heads)` = log-sum-exp of the scaled scores, saved.
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
    );
    /// `dq (tq, ..)`, `dk`, `dv (tk, ..)` overwritten. Reductions over queries run in query order
    /// within each sequence.
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
    );
}

/// The gated MLP activation `out = silu(gate) * up`, elementwise over `n` values.
pub trait ActivationOps {
    fn swiglu_forward(&self, out: &mut [f32], gate: &[f32], up: &[f32]);
    /// `dgate`, `dup` overwritten.
    fn swiglu_backward(&self, dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]);
}

/// Log-softmax over the vocabulary, gathered at target ids.
pub trait VocabOps {
    /// `logits (rows, vocab)`, `targets (rows, k)` → `logprobs (rows, k)`, `lse (rows)`.
    /// `logprobs[r, j] = logits[r, targets[r, j]] - lse[r]`. Panics on a target ≥ vocab.
    fn logsoftmax_gather_forward(
        &self,
        logprobs: &mut [f32],
        lse: &mut [f32],
        logits: &[f32],
        targets: &[u32],
        rows: usize,
        vocab: usize,
        k: usize,
    );
    /// `dlogits (rows, vocab) = Σ_j dlogprobs[r, j] · (onehot(targets[r, j]) - softmax(logits[r]))`,
    /// overwritten.
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
    );
}

/// Low-rank adapters: `y += scale · (x · aᵀ) · bᵀ`.
pub trait LoraOps {
    /// `y (rows, d_out) +=` the adapter's output; `h (rows, rank) = x · aᵀ` saved for backward.
    fn lora_forward(&self, y: &mut [f32], h: &mut [f32], x: &[f32], a: &[f32], b: &[f32], d: LoraDims, scale: f32);
    /// `dx (rows, d_in) += scale · (dy · b) · a`;
    /// `da (rank, d_in) += scale · (dy · b)ᵀ · x` and `db (d_out, rank) += scale · dyᵀ · h`,
    /// both reduced per segment of rows.
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
    );
}

/// The optimizer.
pub trait OptimOps {
    /// One `torch.optim.AdamW` update (single-tensor path): decoupled decay, bias correction,
    /// `grad` scaled by `s.grad_scale` first. `param`, `m`, `v` updated in place; `grad` is read only.
    fn adamw_step(&self, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep);
    /// `Σ x²` accumulated in f64 in index order (for the global gradient norm).
    fn sum_squares(&self, x: &[f32]) -> f64;
}

/// A compute backend: every op family. `Sync` because the model shares one backend across threads.
pub trait Backend:
    LinearOps
    + EmbeddingOps
    + NormOps
    + RopeOps
    + AttentionOps
    + ActivationOps
    + VocabOps
    + LoraOps
    + OptimOps
    + Send
    + Sync
{
    /// A short stable name for logs and benchmark lines (`reference`, `cpu`).
    fn name(&self) -> &'static str;
}
