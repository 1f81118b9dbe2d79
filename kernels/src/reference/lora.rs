//! Reference low-rank adapter: `y += scale · (x · aᵀ) · bᵀ`, with the scale applied to the
//! adapter's output as PEFT does (`lora_B(lora_A(x)) * scaling`), so the backward scales `dy`
//! first. Weight gradients reduce per segment of rows.

use crate::real::Real;
use crate::segments::assert_segments;
use crate::LoraDims;

fn assert_lora_shapes<R: Real>(x: &[R], a: &[R], b: &[R], d: LoraDims) {
    assert!(d.rank > 0, "lora: rank must be positive, got {d:?}");
    assert_eq!(x.len(), d.rows * d.d_in, "lora: x must be (rows, d_in)");
    assert_eq!(a.len(), d.rank * d.d_in, "lora: a must be (rank, d_in)");
    assert_eq!(b.len(), d.d_out * d.rank, "lora: b must be (d_out, rank)");
}

/// `h (rows, rank) = x (rows, d_in) · a (rank, d_in)ᵀ`; `y (rows, d_out) += (h · b (d_out, rank)ᵀ) · scale`.
pub fn lora_forward<R: Real>(y: &mut [R], h: &mut [R], x: &[R], a: &[R], b: &[R], d: LoraDims, scale: R) {
    let LoraDims { rows, d_in, d_out, rank } = d;
    assert_lora_shapes(x, a, b, d);
    assert_eq!(y.len(), rows * d_out, "lora_forward: y must be (rows, d_out)");
    assert_eq!(h.len(), rows * rank, "lora_forward: h must be (rows, rank)");
    for i in 0..rows {
        for r in 0..rank {
            let mut acc = R::ZERO;
            for p in 0..d_in {
                acc += x[i * d_in + p] * a[r * d_in + p];
            }
            h[i * rank + r] = acc;
        }
        for o in 0..d_out {
            let mut acc = R::ZERO;
            for r in 0..rank {
                acc += h[i * rank + r] * b[o * rank + r];
            }
            y[i * d_out + o] += acc * scale;
        }
    }
}

/// With `g = dy · scale (rows, d_out)` and `dh = g · b (rows, rank)`: `dx (rows, d_in) += dh · a`,
/// `da (rank, d_in) += dhᵀ · x` and `db (d_out, rank) += gᵀ · h`, the last two per segment.
pub fn lora_backward<R: Real>(
    dx: &mut [R],
    da: &mut [R],
    db: &mut [R],
    dy: &[R],
    x: &[R],
    h: &[R],
    a: &[R],
    b: &[R],
    d: LoraDims,
    scale: R,
    segments: &[usize],
) {
    let LoraDims { rows, d_in, d_out, rank } = d;
    assert_lora_shapes(x, a, b, d);
    assert_eq!(dx.len(), rows * d_in, "lora_backward: dx must be (rows, d_in)");
    assert_eq!(da.len(), rank * d_in, "lora_backward: da must be (rank, d_in)");
    assert_eq!(db.len(), d_out * rank, "lora_backward: db must be (d_out, rank)");
    assert_eq!(dy.len(), rows * d_out, "lora_backward: dy must be (rows, d_out)");
    assert_eq!(h.len(), rows * rank, "lora_backward: h must be (rows, rank)");
    assert_segments(segments, rows);
    let g: Vec<R> = dy.iter().map(|&v| v * scale).collect(); // (rows, d_out)
    let mut dh = vec![R::ZERO; rows * rank]; // (rows, rank)
    for i in 0..rows {
        for r in 0..rank {
            let mut acc = R::ZERO;
            for o in 0..d_out {
                acc += g[i * d_out + o] * b[o * rank + r];
            }
            dh[i * rank + r] = acc;
        }
        for p in 0..d_in {
            let mut acc = R::ZERO;
            for r in 0..rank {
                acc += dh[i * rank + r] * a[r * d_in + p];
            }
            dx[i * d_in + p] += acc;
        }
    }
    let mut da_seg = vec![R::ZERO; rank * d_in]; // (rank, d_in), one segment's sum
    let mut db_seg = vec![R::ZERO; d_out * rank]; // (d_out, rank), one segment's sum
    for seg in segments.windows(2) {
        da_seg.fill(R::ZERO);
        db_seg.fill(R::ZERO);
        for i in seg[0]..seg[1] {
            for r in 0..rank {
                for p in 0..d_in {
                    da_seg[r * d_in + p] += dh[i * rank + r] * x[i * d_in + p];
                }
            }
            for o in 0..d_out {
                for r in 0..rank {
                    db_seg[o * rank + r] += g[i * d_out + o] * h[i * rank + r];
                }
            }
        }
        for (out, add) in da.iter_mut().zip(&da_seg) {
            *out += *add;
        }
        for (out, add) in db.iter_mut().zip(&db_seg) {
            *out += *add;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_b_leaves_y_unchanged_but_saves_h() {
        let d = LoraDims { rows: 1, d_in: 2, d_out: 2, rank: 1 };
        let (mut y, mut h) = ([1.0f64, 2.0], [0.0f64]);
        lora_forward(&mut y, &mut h, &[3.0, 4.0], &[0.5, 0.25], &[0.0, 0.0], d, 2.0);
        assert_eq!((y, h), ([1.0, 2.0], [2.5]));
    }
}
