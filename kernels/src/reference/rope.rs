//! Reference rotary position embedding, non-interleaved ("rotate_half") form, applied in place to
//! `x (tokens, heads, head_dim)` with cos/sin tables `(positions_max, head_dim / 2)`. The backward
//! applies the transposed rotation.

use crate::real::Real;

fn assert_rope_shapes<R: Real>(x: &[R], positions: &[u32], heads: usize, head_dim: usize, cos: &[R], sin: &[R]) {
    assert!(head_dim.is_multiple_of(2) && head_dim > 0, "rope: head_dim {head_dim} must be even and positive");
    assert_eq!(x.len(), positions.len() * heads * head_dim, "rope: x must be (tokens, heads, head_dim)");
    assert_eq!(cos.len(), sin.len(), "rope: cos and sin tables must have the same shape");
    assert_eq!(cos.len() % (head_dim / 2), 0, "rope: tables must be (positions_max, head_dim / 2)");
    let positions_max = cos.len() / (head_dim / 2);
    for &p in positions {
        assert!((p as usize) < positions_max, "rope: position {p} is not below positions_max {positions_max}");
    }
}

/// Rotates each head of each token by its position: `x[j] = x1·cos - x2·sin`,
/// `x[j + half] = x2·cos + x1·sin`, with `x1 = x[j]`, `x2 = x[j + half]`.
pub fn rope_forward<R: Real>(x: &mut [R], positions: &[u32], heads: usize, head_dim: usize, cos: &[R], sin: &[R]) {
    assert_rope_shapes(x, positions, heads, head_dim, cos, sin);
    let half = head_dim / 2;
    for (t, &pos) in positions.iter().enumerate() {
        let (c_row, s_row) = (&cos[pos as usize * half..][..half], &sin[pos as usize * half..][..half]);
        for h in 0..heads {
            let v = &mut x[(t * heads + h) * head_dim..][..head_dim]; // (head_dim)
            for j in 0..half {
                let (x1, x2) = (v[j], v[j + half]);
                v[j] = x1 * c_row[j] - x2 * s_row[j];
                v[j + half] = x2 * c_row[j] + x1 * s_row[j];
            }
        }
    }
}

/// The transpose of [`rope_forward`]'s rotation: `dx[j] = g1·cos + g2·sin`,
/// `dx[j + half] = g2·cos - g1·sin`, in place.
pub fn rope_backward<R: Real>(dx: &mut [R], positions: &[u32], heads: usize, head_dim: usize, cos: &[R], sin: &[R]) {
    assert_rope_shapes(dx, positions, heads, head_dim, cos, sin);
    let half = head_dim / 2;
    for (t, &pos) in positions.iter().enumerate() {
        let (c_row, s_row) = (&cos[pos as usize * half..][..half], &sin[pos as usize * half..][..half]);
        for h in 0..heads {
            let g = &mut dx[(t * heads + h) * head_dim..][..head_dim]; // (head_dim)
            for j in 0..half {
                let (g1, g2) = (g[j], g[j + half]);
                g[j] = g1 * c_row[j] + g2 * s_row[j];
                g[j + half] = g2 * c_row[j] - g1 * s_row[j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_turn_maps_the_first_half_onto_the_second() {
        // One token, one head, head_dim 2, position 1 with cos 0 / sin 1 (a 90° rotation).
        let (cos, sin) = ([1.0f64, 0.0], [0.0f64, 1.0]);
        let mut x = [1.0f64, 0.0];
        rope_forward(&mut x, &[1], 1, 2, &cos, &sin);
        assert_eq!(x, [0.0, 1.0]);
        rope_backward(&mut x, &[1], 1, 2, &cos, &sin);
        assert_eq!(x, [1.0, 0.0]);
    }
}
