//! CPU dense and low-rank linear algebra: matmul_nt through the dot-product kernel (row-invariant
//! by construction, m = 1 costs one matvec), matmul_nn through row-tiled gemm (row-invariant by
//! fixed tile shapes; only training calls it, at large m, where gemm is fast), matmul_tn and the LoRA weight gradients one segment at a time (each segment's product computed
//! alone into scratch, then added into the gradient in segment order).

use rayon::prelude::*;

use super::dot_gemm;
use super::tiled_gemm::{gemm_tn, row_tiled_gemm, Rhs};
use crate::segments::assert_segments;
use crate::{LoraDims, MatmulDims};

/// Elements per rayon task when adding a segment's scratch into a gradient.
const ADD_PER_TASK: usize = 64 * 1024;

/// `y (m, n) = x (m, k) · w (n, k)ᵀ`, or `+=`.
pub fn matmul_nt(y: &mut [f32], x: &[f32], w: &[f32], d: MatmulDims, accumulate: bool) {
    let MatmulDims { m, k, n } = d;
    assert!(y.len() == m * n && x.len() == m * k && w.len() == n * k, "matmul_nt: y (m, n), x (m, k), w (n, k)");
    dot_gemm::matmul_nt(y, x, w, MatmulDims { m, k, n }, accumulate);
}

/// `dx (m, k) = dy (m, n) · w (n, k)`, or `+=`.
pub fn matmul_nn(dx: &mut [f32], dy: &[f32], w: &[f32], d: MatmulDims, accumulate: bool) {
    let MatmulDims { m, k, n } = d;
    assert!(dx.len() == m * k && dy.len() == m * n && w.len() == n * k, "matmul_nn: dx (m, k), dy (m, n), w (n, k)");
    row_tiled_gemm(dx, dy, Rhs { data: w, row_stride: k, col_stride: 1 }, m, n, k, accumulate);
}

/// `dw (n, k) += Σ_segments dy_sᵀ · x_s`, segment by segment in order.
pub fn matmul_tn(dw: &mut [f32], dy: &[f32], x: &[f32], d: MatmulDims, segments: &[usize]) {
    let MatmulDims { m, k, n } = d;
    assert!(dw.len() == n * k && dy.len() == m * n && x.len() == m * k, "matmul_tn: dw (n, k), dy (m, n), x (m, k)");
    assert_segments(segments, m);
    let mut scratch = vec![0.0f32; n * k]; // (n, k), one segment's product
    for seg in segments.windows(2) {
        let (r0, r1) = (seg[0], seg[1]);
        if r0 == r1 {
            continue; // an empty segment contributes exactly nothing
        }
        gemm_tn(&mut scratch, &dy[r0 * n..r1 * n], &x[r0 * k..r1 * k], r1 - r0, n, k);
        add_into(dw, &scratch);
    }
}

/// `dst += src`, elementwise (order-free: one addition per element).
fn add_into(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "add_into: lengths differ");
    dst.par_chunks_mut(ADD_PER_TASK).zip(src.par_chunks(ADD_PER_TASK)).for_each(|(d, s)| {
        for (d, s) in d.iter_mut().zip(s) {
            *d += *s;
        }
    });
}

/// `h (rows, rank) = x · aᵀ`; `y (rows, d_out) += (h · bᵀ) · scale`.
pub fn lora_forward(y: &mut [f32], h: &mut [f32], x: &[f32], a: &[f32], b: &[f32], d: LoraDims, scale: f32) {
    let LoraDims { rows, d_in, d_out, rank } = d;
    assert!(
        rank > 0 && a.len() == rank * d_in && b.len() == d_out * rank,
        "lora_forward: a (rank, d_in), b (d_out, rank)"
    );
    assert!(y.len() == rows * d_out && h.len() == rows * rank && x.len() == rows * d_in, "lora_forward: row shapes");
    matmul_nt(h, x, a, MatmulDims { m: rows, k: d_in, n: rank }, false);
    let mut t = vec![0.0f32; rows * d_out]; // (rows, d_out) = h · bᵀ
    matmul_nt(&mut t, h, b, MatmulDims { m: rows, k: rank, n: d_out }, false);
    y.par_chunks_mut(ADD_PER_TASK).zip(t.par_chunks(ADD_PER_TASK)).for_each(|(y, t)| {
        for (y, t) in y.iter_mut().zip(t) {
            *y += *t * scale;
        }
    });
}

/// With `g = dy · scale` and `dh = g · b`: `dx += dh · a`, `da += dhᵀ · x`, `db += gᵀ · h`,
/// the last two per segment.
pub fn lora_backward(
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
    let LoraDims { rows, d_in, d_out, rank } = d;
    assert!(
        rank > 0 && a.len() == rank * d_in && b.len() == d_out * rank,
        "lora_backward: a (rank, d_in), b (d_out, rank)"
    );
    assert!(da.len() == a.len() && db.len() == b.len(), "lora_backward: da, db must match a, b");
    assert!(dx.len() == rows * d_in && x.len() == rows * d_in, "lora_backward: dx, x must be (rows, d_in)");
    assert!(dy.len() == rows * d_out && h.len() == rows * rank, "lora_backward: dy (rows, d_out), h (rows, rank)");
    assert_segments(segments, rows);
    let g: Vec<f32> = dy.par_iter().map(|&v| v * scale).collect(); // (rows, d_out)
    let mut dh = vec![0.0f32; rows * rank]; // (rows, rank)
    matmul_nn(&mut dh, &g, b, MatmulDims { m: rows, k: rank, n: d_out }, false);
    matmul_nn(dx, &dh, a, MatmulDims { m: rows, k: d_in, n: rank }, true);
    matmul_tn(da, &dh, x, MatmulDims { m: rows, k: d_in, n: rank }, segments);
    matmul_tn(db, &g, h, MatmulDims { m: rows, k: rank, n: d_out }, segments);
}
