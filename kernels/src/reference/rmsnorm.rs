//! Reference RMSNorm as transformers computes it in f32: `y = w * (x * (1/sqrt(mean(x²) + eps)))`,
//! the mean a sequential sum divided by `dim`. The backward reduces `dw` per segment of rows.

use crate::real::Real;
use crate::segments::assert_segments;

/// `y (rows, dim)`, `rstd (rows)` saved for backward, from `x (rows, dim)` and `w (dim)`.
pub fn rmsnorm_forward<R: Real>(y: &mut [R], rstd: &mut [R], x: &[R], w: &[R], rows: usize, dim: usize, eps: R) {
    assert!(dim > 0, "rmsnorm_forward: dim must be positive");
    assert_eq!(x.len(), rows * dim, "rmsnorm_forward: x must be (rows, dim)");
    assert_eq!(y.len(), rows * dim, "rmsnorm_forward: y must be (rows, dim)");
    assert_eq!(rstd.len(), rows, "rmsnorm_forward: rstd must be (rows)");
    assert_eq!(w.len(), dim, "rmsnorm_forward: w must be (dim)");
    for r in 0..rows {
        let x_row = &x[r * dim..(r + 1) * dim];
        let mut sum_sq = R::ZERO;
        for &v in x_row {
            sum_sq += v * v;
        }
        let mean_sq = sum_sq / R::from_usize(dim);
        let rs = R::ONE / (mean_sq + eps).sqrt();
        rstd[r] = rs;
        for c in 0..dim {
            y[r * dim + c] = w[c] * (x_row[c] * rs);
        }
    }
}

/// `dx (rows, dim)` overwritten; `dw (dim) +=` when given, reduced per segment of rows.
///
/// With `r = rstd`, `y_c = w_c x_c r` and `∂r/∂x_j = -r³ x_j / dim`, so
/// `dx_j = r (w_j dy_j - x_j r² Σ_c dy_c w_c x_c / dim)` and `dw_c = Σ_rows dy_c x_c r`.
pub fn rmsnorm_backward<R: Real>(
    dx: &mut [R],
    dw: Option<&mut [R]>,
    dy: &[R],
    x: &[R],
    w: &[R],
    rstd: &[R],
    rows: usize,
    dim: usize,
    segments: &[usize],
) {
    assert!(dim > 0, "rmsnorm_backward: dim must be positive");
    assert_eq!(dx.len(), rows * dim, "rmsnorm_backward: dx must be (rows, dim)");
    assert_eq!(dy.len(), rows * dim, "rmsnorm_backward: dy must be (rows, dim)");
    assert_eq!(x.len(), rows * dim, "rmsnorm_backward: x must be (rows, dim)");
    assert_eq!(w.len(), dim, "rmsnorm_backward: w must be (dim)");
    assert_eq!(rstd.len(), rows, "rmsnorm_backward: rstd must be (rows)");
    for r in 0..rows {
        let rs = rstd[r];
        let mut dot = R::ZERO; // Σ_c dy_c w_c x_c
        for c in 0..dim {
            dot += dy[r * dim + c] * w[c] * x[r * dim + c];
        }
        let coef = rs * rs * dot / R::from_usize(dim);
        for c in 0..dim {
            dx[r * dim + c] = rs * (w[c] * dy[r * dim + c] - x[r * dim + c] * coef);
        }
    }
    if let Some(dw) = dw {
        assert_eq!(dw.len(), dim, "rmsnorm_backward: dw must be (dim)");
        assert_segments(segments, rows);
        let mut partial = vec![R::ZERO; dim]; // (dim), one segment's sum
        for seg in segments.windows(2) {
            partial.fill(R::ZERO);
            for r in seg[0]..seg[1] {
                for c in 0..dim {
                    partial[c] += dy[r * dim + c] * (x[r * dim + c] * rstd[r]);
                }
            }
            for (out, add) in dw.iter_mut().zip(&partial) {
                *out += *add;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_normalises_a_row_to_unit_root_mean_square() {
        let x = [3.0f64, 4.0]; // mean(x²) = 12.5
        let (mut y, mut rstd) = ([0.0; 2], [0.0; 1]);
        rmsnorm_forward(&mut y, &mut rstd, &x, &[1.0, 2.0], 1, 2, 0.0);
        let r = 1.0 / 12.5f64.sqrt();
        assert_eq!(rstd[0], r);
        assert_eq!(y, [3.0 * r, 2.0 * (4.0 * r)]);
    }
}
