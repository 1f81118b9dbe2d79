//! The dot-product matmul kernel (`kernels::cpu::dot_gemm`), on every kernel this CPU supports:
//! rows are bit-identical for any row count and offset (k with tails, n with ragged column
//! blocks and several column tasks), and every output equals a scalar replay of the documented
//! per-output chain, which is what makes the invariance hold by construction.

mod common;

use common::Rng;
use kernels::cpu::dot_gemm::{matmul_nt_on, Isa, LANES};
use kernels::MatmulDims;

fn isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2Fma].into_iter().filter(|isa| isa.is_supported()).collect()
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: {g} vs {w}");
    }
}

/// The module doc's chain for one output, replayed in scalar code: 8 lane sums over whole chunks
/// (fused multiply-add on AVX2, multiply then add on the portable kernel), the fixed tree, the
/// tail added in order.
fn chain(isa: Isa, x: &[f32], w: &[f32]) -> f32 {
    let whole = x.len() / LANES * LANES;
    let mut l = [0.0f32; LANES];
    for at in (0..whole).step_by(LANES) {
        for (lane, sum) in l.iter_mut().enumerate() {
            let (a, b) = (x[at + lane], w[at + lane]);
            *sum = if isa == Isa::Avx2Fma { a.mul_add(b, *sum) } else { *sum + a * b };
        }
    }
    let mut s = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    for t in whole..x.len() {
        s += x[t] * w[t];
    }
    s
}

#[test]
fn rows_are_bit_identical_for_every_row_count_and_offset() {
    // Goal: row i of y depends only on row i of x. Method: one call over all rows, then calls on
    // m-row windows at the start, end and a third of the way in; every window must reproduce its
    // rows of the big call bit for bit, overwriting and accumulating.
    let mut rng = Rng::seeded(300);
    let n = 101; // not a multiple of 4 or 8: ragged column blocks; several column tasks at large k
    for isa in isas() {
        for k in [1, 7, 13, 70, 259, 1031] {
            let m_all = 300 + 29;
            let (x, w, y0) = (rng.vec_f32(m_all * k, 1.0), rng.vec_f32(n * k, 1.0), rng.vec_f32(m_all * n, 1.0));
            let all = MatmulDims { m: m_all, k, n };
            let (mut y_all, mut yacc_all) = (vec![0.0; m_all * n], y0.clone());
            matmul_nt_on(isa, &mut y_all, &x, &w, all, false);
            matmul_nt_on(isa, &mut yacc_all, &x, &w, all, true);
            for m in [1, 2, 5, 33, 300] {
                for start in [0, m_all - m, (m_all - m) / 3] {
                    let d = MatmulDims { m, k, n };
                    let rows = start * n..(start + m) * n;
                    let (mut y, mut yacc) = (vec![f32::NAN; m * n], y0[rows.clone()].to_vec());
                    matmul_nt_on(isa, &mut y, &x[start * k..(start + m) * k], &w, d, false);
                    matmul_nt_on(isa, &mut yacc, &x[start * k..(start + m) * k], &w, d, true);
                    let what = format!("{isa:?} k={k} m={m} at {start}");
                    assert_bits(&what, &y, &y_all[rows.clone()]);
                    assert_bits(&format!("{what} +="), &yacc, &yacc_all[rows]);
                }
            }
        }
    }
}

#[test]
fn every_output_equals_the_scalar_replay_of_its_chain() {
    // Goal: the kernel computes exactly the documented chain, whatever the output's place in a
    // register block (3 or 2 rows × 4 columns, 1 row × 8, single columns). Method: shapes whose
    // rows and columns hit every block shape, compared bit for bit with `chain`, plus a check
    // against f64 that the chain is the right product at all.
    let mut rng = Rng::seeded(301);
    for isa in isas() {
        for (m, k, n) in [(1, 13, 19), (2, 8, 7), (7, 70, 23), (11, 33, 300)] {
            let (x, w) = (rng.vec_f32(m * k, 1.0), rng.vec_f32(n * k, 1.0));
            let mut y = vec![f32::NAN; m * n];
            matmul_nt_on(isa, &mut y, &x, &w, MatmulDims { m, k, n }, false);
            for i in 0..m {
                for j in 0..n {
                    let (xi, wj) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                    let got = y[i * n + j];
                    let want = chain(isa, xi, wj);
                    assert_eq!(got.to_bits(), want.to_bits(), "{isa:?} ({m}, {k}, {n}) y[{i}, {j}]: {got} vs {want}");
                    let exact: f64 = xi.iter().zip(wj).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                    assert!((f64::from(got) - exact).abs() <= 1e-5 * (k as f64).sqrt(), "{isa:?} y[{i}, {j}]");
                }
            }
        }
    }
}

#[test]
fn an_empty_inner_dimension_gives_zeros_and_accumulating_adds_nothing() {
    for isa in isas() {
        let (m, n) = (5, 9);
        let mut y = vec![f32::NAN; m * n];
        matmul_nt_on(isa, &mut y, &[], &[], MatmulDims { m, k: 0, n }, false);
        assert!(y.iter().all(|&v| v.to_bits() == 0), "{isa:?}: k = 0 must write +0.0");
        let mut yacc: Vec<f32> = (0..m * n).map(|i| i as f32 - 7.5).collect();
        let before = yacc.clone();
        matmul_nt_on(isa, &mut yacc, &[], &[], MatmulDims { m, k: 0, n }, true);
        assert_bits(&format!("{isa:?} k = 0 +="), &yacc, &before);
    }
}
