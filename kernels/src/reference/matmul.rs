//! Reference dense matmul: the `nn.Linear` forward `y = x·wᵀ` and its two backwards, as plain
//! triple loops with one sequential accumulator per output element. Never optimise this file: it
//! is the oracle the fast backends are measured against.

use crate::real::Real;
use crate::segments::assert_segments;
use crate::MatmulDims;

/// `y (m, n) = x (m, k) · w (n, k)ᵀ`, or `+=` when `accumulate`.
pub fn matmul_forward<R: Real>(y: &mut [R], x: &[R], w: &[R], d: MatmulDims, accumulate: bool) {
    let MatmulDims { m, k, n } = d;
    assert_eq!(y.len(), m * n, "matmul_forward: y must be (m, n)");
    assert_eq!(x.len(), m * k, "matmul_forward: x must be (m, k)");
    assert_eq!(w.len(), n * k, "matmul_forward: w must be (n, k)");
    for i in 0..m {
        let x_row = &x[i * k..(i + 1) * k]; // (k)
        for o in 0..n {
            let w_row = &w[o * k..(o + 1) * k]; // (k)
            let mut acc = R::ZERO;
            for p in 0..k {
                acc += x_row[p] * w_row[p];
            }
            let out = &mut y[i * n + o];
            *out = if accumulate { *out + acc } else { acc };
        }
    }
}

/// `dx (m, k) = dy (m, n) · w (n, k)`, or `+=` when `accumulate`: the input gradient.
pub fn matmul_backward_input<R: Real>(dx: &mut [R], dy: &[R], w: &[R], d: MatmulDims, accumulate: bool) {
    let MatmulDims { m, k, n } = d;
    assert_eq!(dx.len(), m * k, "matmul_backward_input: dx must be (m, k)");
    assert_eq!(dy.len(), m * n, "matmul_backward_input: dy must be (m, n)");
    assert_eq!(w.len(), n * k, "matmul_backward_input: w must be (n, k)");
    for i in 0..m {
        for p in 0..k {
            let mut acc = R::ZERO;
            for o in 0..n {
                acc += dy[i * n + o] * w[o * k + p];
            }
            let out = &mut dx[i * k + p];
            *out = if accumulate { *out + acc } else { acc };
        }
    }
}

/// `dw (n, k) += dy (m, n)ᵀ · x (m, k)`: the weight gradient, each segment of rows reduced on
/// its own (rows in order) and then added into `dw` in segment order.
pub fn matmul_backward_weight<R: Real>(dw: &mut [R], dy: &[R], x: &[R], d: MatmulDims, segments: &[usize]) {
    let MatmulDims { m, k, n } = d;
    assert_eq!(dw.len(), n * k, "matmul_backward_weight: dw must be (n, k)");
    assert_eq!(dy.len(), m * n, "matmul_backward_weight: dy must be (m, n)");
    assert_eq!(x.len(), m * k, "matmul_backward_weight: x must be (m, k)");
    assert_segments(segments, m);
    let mut partial = vec![R::ZERO; n * k]; // (n, k), one segment's sum
    for seg in segments.windows(2) {
        for o in 0..n {
            for p in 0..k {
                let mut acc = R::ZERO;
                for i in seg[0]..seg[1] {
                    acc += dy[i * n + o] * x[i * k + p];
                }
                partial[o * k + p] = acc;
            }
        }
        for (out, add) in dw.iter_mut().zip(&partial) {
            *out += *add;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_matches_a_hand_computed_product() {
        // x (2, 3), w (2, 3): y[i][o] = x_i · w_o.
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0f32, 0.0, -1.0, 0.5, 0.5, 0.5];
        let mut y = [10.0f32; 4];
        matmul_forward(&mut y, &x, &w, MatmulDims { m: 2, k: 3, n: 2 }, false);
        assert_eq!(y, [-2.0, 3.0, -2.0, 7.5]);
        matmul_forward(&mut y, &x, &w, MatmulDims { m: 2, k: 3, n: 2 }, true);
        assert_eq!(y, [-4.0, 6.0, -4.0, 15.0]);
    }

    #[test]
    fn weight_gradient_adds_every_segment_into_dw() {
        let d = MatmulDims { m: 3, k: 1, n: 1 };
        let mut dw = [1.0f64];
        matmul_backward_weight(&mut dw, &[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0], d, &[0, 1, 3]);
        assert_eq!(dw, [1.0 + 4.0 + 10.0 + 18.0]);
    }
}
