//! CPU row-wise and elementwise ops: embedding, RMSNorm, RoPE, SwiGLU, log-softmax gather and
//! AdamW. Each splits its rows (or elements) into chunks that rayon runs in parallel and hands
//! every chunk to the reference kernel, whose per-row arithmetic never looks at other rows; so
//! row invariance holds by construction and results equal the reference bit for bit. Reductions
//! over rows (RMSNorm `dw`) are done per segment, then added in segment order.

use rayon::prelude::*;

use crate::reference::{adamw, embedding, logsoftmax, rmsnorm, rope, swiglu};
use crate::segments::assert_segments;
use crate::AdamStep;

/// Rows per rayon task for row-wise ops (small enough to balance two to a few dozen cores).
const ROWS_PER_TASK: usize = 16;
/// Elements per rayon task for elementwise ops.
const ELEMS_PER_TASK: usize = 16 * 1024;

pub fn embedding_forward(out: &mut [f32], table: &[f32], ids: &[u32], vocab: usize, dim: usize) {
    assert_eq!(out.len(), ids.len() * dim, "embedding_forward: out must be (ids.len(), dim)");
    if dim == 0 {
        return;
    }
    out.par_chunks_mut(ROWS_PER_TASK * dim)
        .zip(ids.par_chunks(ROWS_PER_TASK))
        .for_each(|(o, i)| embedding::embedding_forward(o, table, i, vocab, dim));
}

/// Each task owns a range of vocabulary rows and adds the tokens that hit it in token order.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], vocab: usize, dim: usize) {
    assert_eq!(dtable.len(), vocab * dim, "embedding_backward: dtable must be (vocab, dim)");
    assert_eq!(dout.len(), ids.len() * dim, "embedding_backward: dout must be (ids.len(), dim)");
    for &id in ids {
        assert!((id as usize) < vocab, "embedding_backward: token id {id} is not below vocab {vocab}");
    }
    if dim == 0 {
        return;
    }
    let vocab_per_task = vocab.div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
    dtable.par_chunks_mut(vocab_per_task * dim).enumerate().for_each(|(task, rows)| {
        let first = task * vocab_per_task;
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= first && id < first + rows.len() / dim {
                let row = &mut rows[(id - first) * dim..][..dim];
                for (d, s) in row.iter_mut().zip(&dout[t * dim..][..dim]) {
                    *d += *s;
                }
            }
        }
    });
}

pub fn rmsnorm_forward(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], rows: usize, dim: usize, eps: f32) {
    assert!(dim > 0, "rmsnorm_forward: dim must be positive");
    assert!(y.len() == rows * dim && x.len() == rows * dim, "rmsnorm_forward: x, y must be (rows, dim)");
    assert_eq!(rstd.len(), rows, "rmsnorm_forward: rstd must be (rows)");
    y.par_chunks_mut(ROWS_PER_TASK * dim)
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(ROWS_PER_TASK * dim))
        .for_each(|((y, r), x)| rmsnorm::rmsnorm_forward(y, r, x, w, r.len(), dim, eps));
}

pub fn rmsnorm_backward(
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
    assert!(dim > 0, "rmsnorm_backward: dim must be positive");
    assert!(dx.len() == rows * dim && dy.len() == rows * dim && x.len() == rows * dim, "rmsnorm_backward: shapes");
    assert_eq!(rstd.len(), rows, "rmsnorm_backward: rstd must be (rows)");
    let chunk = ROWS_PER_TASK * dim;
    dx.par_chunks_mut(chunk).enumerate().for_each(|(task, dx)| {
        let (r0, n) = (task * ROWS_PER_TASK, dx.len() / dim);
        let (dy, x) = (&dy[r0 * dim..][..n * dim], &x[r0 * dim..][..n * dim]);
        rmsnorm::rmsnorm_backward(dx, None, dy, x, w, &rstd[r0..r0 + n], n, dim, &[0, n]);
    });
    let Some(dw) = dw else { return };
    assert_eq!(dw.len(), dim, "rmsnorm_backward: dw must be (dim)");
    assert_segments(segments, rows);
    let mut partial = vec![0.0f32; dim]; // (dim), one segment's sum
    for seg in segments.windows(2) {
        // Each column sums its segment's rows in row order, like the reference.
        partial.par_chunks_mut(ELEMS_PER_TASK / 16).enumerate().for_each(|(task, part)| {
            let c0 = task * (ELEMS_PER_TASK / 16);
            part.fill(0.0);
            for r in seg[0]..seg[1] {
                for (c, p) in part.iter_mut().enumerate() {
                    *p += dy[r * dim + c0 + c] * (x[r * dim + c0 + c] * rstd[r]);
                }
            }
        });
        for (out, add) in dw.iter_mut().zip(&partial) {
            *out += *add;
        }
    }
}

pub fn rope_apply(
    x: &mut [f32],
    positions: &[u32],
    heads: usize,
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
    forward: bool,
) {
    assert_eq!(x.len(), positions.len() * heads * head_dim, "rope: x must be (tokens, heads, head_dim)");
    if heads * head_dim == 0 {
        return;
    }
    x.par_chunks_mut(ROWS_PER_TASK * heads * head_dim).zip(positions.par_chunks(ROWS_PER_TASK)).for_each(|(x, p)| {
        if forward {
            rope::rope_forward(x, p, heads, head_dim, cos, sin);
        } else {
            rope::rope_backward(x, p, heads, head_dim, cos, sin);
        }
    });
}

pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(out.len() == gate.len() && gate.len() == up.len(), "swiglu_forward: out, gate, up must be (n)");
    out.par_chunks_mut(ELEMS_PER_TASK)
        .zip(gate.par_chunks(ELEMS_PER_TASK).zip(up.par_chunks(ELEMS_PER_TASK)))
        .for_each(|(o, (g, u))| swiglu::swiglu_forward(o, g, u));
}

pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let n = dout.len();
    assert!(dgate.len() == n && dup.len() == n && gate.len() == n && up.len() == n, "swiglu_backward: all (n)");
    dgate
        .par_chunks_mut(ELEMS_PER_TASK)
        .zip(dup.par_chunks_mut(ELEMS_PER_TASK))
        .zip(dout.par_chunks(ELEMS_PER_TASK).zip(gate.par_chunks(ELEMS_PER_TASK).zip(up.par_chunks(ELEMS_PER_TASK))))
        .for_each(|((dg, du), (d, (g, u)))| swiglu::swiglu_backward(dg, du, d, g, u));
}

pub fn logsoftmax_gather_forward(
    logprobs: &mut [f32],
    lse: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    rows: usize,
    vocab: usize,
    k: usize,
) {
    assert!(vocab > 0 && logits.len() == rows * vocab, "logsoftmax_gather_forward: logits must be (rows, vocab)");
    assert!(logprobs.len() == rows * k && targets.len() == rows * k, "logsoftmax_gather_forward: (rows, k)");
    assert_eq!(lse.len(), rows, "logsoftmax_gather_forward: lse must be (rows)");
    lse.par_iter_mut().enumerate().for_each(|(r, l)| {
        let row = &logits[r * vocab..][..vocab];
        logsoftmax::logsoftmax_gather_forward(&mut [], std::slice::from_mut(l), row, &[], 1, vocab, 0);
    });
    for r in 0..rows {
        for j in 0..k {
            let t = targets[r * k + j] as usize;
            assert!(t < vocab, "logsoftmax_gather_forward: target {t} is not below vocab {vocab}");
            logprobs[r * k + j] = logits[r * vocab + t] - lse[r];
        }
    }
}

pub fn logsoftmax_gather_backward(
    dlogits: &mut [f32],
    dlogprobs: &[f32],
    logits: &[f32],
    lse: &[f32],
    targets: &[u32],
    rows: usize,
    vocab: usize,
    k: usize,
) {
    assert!(vocab > 0 && logits.len() == rows * vocab, "logsoftmax_gather_backward: logits must be (rows, vocab)");
    assert_eq!(dlogits.len(), rows * vocab, "logsoftmax_gather_backward: dlogits must be (rows, vocab)");
    assert!(dlogprobs.len() == rows * k && targets.len() == rows * k, "logsoftmax_gather_backward: (rows, k)");
    assert_eq!(lse.len(), rows, "logsoftmax_gather_backward: lse must be (rows)");
    dlogits.par_chunks_mut(vocab).enumerate().for_each(|(r, dl)| {
        let (row, t, d) = (&logits[r * vocab..][..vocab], &targets[r * k..][..k], &dlogprobs[r * k..][..k]);
        logsoftmax::logsoftmax_gather_backward(dl, d, row, &lse[r..r + 1], t, 1, vocab, k);
    });
}

pub fn adamw_step(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep) {
    let n = param.len();
    assert!(grad.len() == n && m.len() == n && v.len() == n, "adamw_step: param, grad, m, v must be (n)");
    param
        .par_chunks_mut(ELEMS_PER_TASK)
        .zip(m.par_chunks_mut(ELEMS_PER_TASK).zip(v.par_chunks_mut(ELEMS_PER_TASK)))
        .zip(grad.par_chunks(ELEMS_PER_TASK))
        .for_each(|((p, (m, v)), g)| adamw::adamw_step(p, g, m, v, s));
}
