//! The portable dot-product block for CPUs without AVX2 + FMA: the same structure as the AVX2
//! block (8 lane-wise partial sums over whole chunks of 8, the same reduction tree, then the
//! scalar tail in order) with an unfused multiply-add, so its results differ from the AVX2 path
//! in the last bits but are just as independent of the block shape and of `m`.

use super::{DotKernel, LANES};

/// The scalar kernel; always available.
#[derive(Clone, Copy, Debug)]
pub struct Portable;

impl DotKernel for Portable {
    fn rows_against_panel<const R: usize>(self, xs: &[&[f32]; R], panel: &[f32], sums: &mut [f32]) {
        assert!(R > 0, "rows_against_panel: no rows");
        let k = xs[0].len();
        let cols = sums.len() / R;
        assert!(
            sums.len() == R * cols && panel.len() == cols * k,
            "rows_against_panel: sums (R, cols), panel (cols, k)"
        );
        assert!(xs.iter().all(|x| x.len() == k), "rows_against_panel: every x row must have length k");
        for r in 0..R {
            for j in 0..cols {
                sums[r * cols + j] = dot(xs[r], &panel[j * k..][..k]);
            }
        }
    }
}

/// One output's chain. Lane `l` sums the products at indices `≡ l (mod 8)` of the whole chunks.
fn dot(x: &[f32], w: &[f32]) -> f32 {
    let whole = x.len() / LANES * LANES;
    let mut lanes = [0.0f32; LANES];
    for (xc, wc) in x[..whole].chunks_exact(LANES).zip(w[..whole].chunks_exact(LANES)) {
        for l in 0..LANES {
            lanes[l] += xc[l] * wc[l];
        }
    }
    let p = lanes;
    let mut s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    for t in whole..x.len() {
        s += x[t] * w[t];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_portable_chain_is_exact_on_small_integers_with_a_tail() {
        // k = 13: one whole chunk and a 5-element tail; small integers make every step exact.
        let x: Vec<f32> = (0..13).map(|i| (i % 5) as f32 - 2.0).collect();
        let w: Vec<f32> = (0..13).map(|i| (i % 3) as f32 + 1.0).collect();
        let want: f32 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
        let mut got = [f32::NAN];
        Portable.rows_against_panel::<1>(&[&x], &w, &mut got);
        assert_eq!(got[0], want);
        assert_ne!(want, 0.0);
    }
}
