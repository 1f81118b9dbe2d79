//! The AVX2 + FMA dot-product block: `R` rows of `x` against `C` rows of `w`, every output summed
//! by the one chain [`super`] fixes (8-lane FMA over whole chunks of 8, the hadd reduction tree,
//! then the scalar tail in order). Only code here executes AVX2 instructions, and only after
//! [`Avx2Fma::detect`] has proved the CPU has them; it must never change an output's arithmetic
//! with `R`, `C` or the output's position in the block.

use std::arch::x86_64::{
    __m128, __m256, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_hadd_ps, _mm256_loadu_ps,
    _mm256_setzero_ps, _mm_add_ps, _mm_storeu_ps,
};

use super::{DotKernel, LANES};

/// Proof that the running CPU has AVX2 and FMA: only [`Avx2Fma::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct Avx2Fma(());

impl Avx2Fma {
    /// `Some` exactly when the CPU supports both AVX2 and FMA.
    pub fn detect() -> Option<Avx2Fma> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2Fma(()))
    }
}

impl DotKernel for Avx2Fma {
    fn rows_against_panel<const R: usize>(self, xs: &[&[f32]; R], panel: &[f32], sums: &mut [f32]) {
        // SAFETY: `self` exists only if `detect` found AVX2 and FMA on this CPU, which is all
        // `rows_against_panel_avx2` requires of its caller; it checks its slice shapes itself.
        unsafe { rows_against_panel_avx2(xs, panel, sums) }
    }
}

/// `sums (R, cols)` = the chains of rows `xs` against every row of `panel (cols, k)`: blocks of
/// 8 (one x row) or 4 columns while they fit, then single columns.
#[target_feature(enable = "avx2,fma")]
fn rows_against_panel_avx2<const R: usize>(xs: &[&[f32]; R], panel: &[f32], sums: &mut [f32]) {
    assert!(R > 0, "rows_against_panel: no rows");
    let k = xs[0].len();
    let cols = sums.len() / R;
    assert!(sums.len() == R * cols && panel.len() == cols * k, "rows_against_panel: sums (R, cols), panel (cols, k)");
    let mut j = 0;
    if R == 1 {
        j = col_blocks::<R, 8>(xs, panel, sums, cols, j);
    }
    j = col_blocks::<R, 4>(xs, panel, sums, cols, j);
    j = col_blocks::<R, 1>(xs, panel, sums, cols, j);
    assert_eq!(j, cols, "rows_against_panel: single columns finish every column");
}

/// Blocks of `C` columns from `j` while whole ones fit; returns the first column left over.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn col_blocks<const R: usize, const C: usize>(
    xs: &[&[f32]; R],
    panel: &[f32],
    sums: &mut [f32],
    cols: usize,
    mut j: usize,
) -> usize {
    let k = xs[0].len();
    while j + C <= cols {
        let ws: [&[f32]; C] = std::array::from_fn(|c| &panel[(j + c) * k..][..k]);
        let block = block_avx2(xs, &ws);
        for r in 0..R {
            sums[r * cols + j..][..C].copy_from_slice(&block[r]);
        }
        j += C;
    }
    j
}

/// `[[Σ_k xs[r][k] · ws[c][k]; C]; R]` by the fixed chain. Every slice must have the same length.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn block_avx2<const R: usize, const C: usize>(xs: &[&[f32]; R], ws: &[&[f32]; C]) -> [[f32; C]; R] {
    assert!(R > 0 && C > 0, "block_avx2: empty block");
    let k = xs[0].len();
    assert!(xs.iter().chain(ws).all(|s| s.len() == k), "block_avx2: every row must have length k");
    let whole = k / LANES * LANES;
    let mut acc = [[_mm256_setzero_ps(); C]; R]; // (R, C) lane-wise partial sums
    let mut at = 0;
    while at < whole {
        // R x vectors stay in registers while each w vector is loaded once and used R times:
        // R·C accumulators + R + 1 registers (16 for 3 × 4, no spills).
        let mut xv = [_mm256_setzero_ps(); R];
        for r in 0..R {
            // SAFETY: at + LANES <= whole <= k == xs[r].len() (asserted above): 8 readable floats.
            xv[r] = unsafe { _mm256_loadu_ps(xs[r].as_ptr().add(at)) };
        }
        for c in 0..C {
            // SAFETY: as above, with ws[c].len() == k.
            let wv = unsafe { _mm256_loadu_ps(ws[c].as_ptr().add(at)) };
            for r in 0..R {
                acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
            }
        }
        at += LANES;
    }
    let mut out = [[0.0f32; C]; R];
    // Reduce four accumulators at a time (row-major order); a short last group repeats its last
    // accumulator, which changes nothing because lanes never mix between accumulators.
    let total = R * C;
    let mut g = 0;
    while g < total {
        let pick = |t: usize| {
            let i = (g + t).min(total - 1);
            acc[i / C][i % C]
        };
        let mut sums = [0.0f32; 4];
        // SAFETY: `sums` is 4 writable floats, exactly what one 128-bit store writes.
        unsafe { _mm_storeu_ps(sums.as_mut_ptr(), hsum4(pick(0), pick(1), pick(2), pick(3))) };
        for t in 0..4.min(total - g) {
            out[(g + t) / C][(g + t) % C] = sums[t];
        }
        g += 4;
    }
    for r in 0..R {
        for c in 0..C {
            let mut s = out[r][c];
            for t in whole..k {
                s += xs[r][t] * ws[c][t]; // unfused, in order: the portable tail's arithmetic
            }
            out[r][c] = s;
        }
    }
    out
}

/// The horizontal sums of four accumulators, `[Σa, Σb, Σc, Σd]`, each by the tree
/// `((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))` (what two rounds of `hadd` and a
/// high-plus-low half add compute per accumulator).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    // ab = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]
    let (ab, cd) = (_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    // abcd = [(a0+a1)+(a2+a3), b.., c.., d.. | (a4+a5)+(a6+a7), b.., c.., d..]
    let abcd = _mm256_hadd_ps(ab, cd);
    _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps::<1>(abcd))
}
