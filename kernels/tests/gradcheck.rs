//! f64 finite-difference gradchecks of every reference backward except attention (its own file):
//! each op's forward runs in f64 under a random linear loss `Σ c·y`, and the analytic gradient
//! from the matching backward (upstream gradient `c`) must agree with central differences to
//! 1e-6 relative on every input that has a gradient.

mod common;

use common::{assert_gradient, dot, max_rel_error, Rng};
use kernels::reference::{embedding, logsoftmax, lora, matmul, rmsnorm, rope, swiglu};
use kernels::rope::{Llama3Scaling, RopeTable};
use kernels::{LoraDims, MatmulDims};

#[test]
fn the_checker_rejects_a_wrong_gradient() {
    // Guards the harness itself: a gradient off by 1% must fail the bound.
    let mut x = vec![0.3, -0.7];
    let wrong = [2.0 * 0.3 * 1.01, 2.0 * -0.7];
    let err = max_rel_error(&wrong, &mut x, |x| x[0] * x[0] + x[1] * x[1]);
    assert!(err > 1e-3, "a 1% error was reported as {err:e}");
}

#[test]
fn matmul_nt_gradients_match_finite_differences() {
    let mut rng = Rng::seeded(1);
    let d = MatmulDims { m: 5, k: 4, n: 3 };
    let (mut x, mut w, c) = (rng.vec_f64(5 * 4, 1.0), rng.vec_f64(3 * 4, 1.0), rng.vec_f64(5 * 3, 1.0));
    let forward = |x: &[f64], w: &[f64]| {
        let mut y = vec![0.0; 5 * 3];
        matmul::matmul_forward(&mut y, x, w, d, false);
        dot(&c, &y)
    };
    let mut dx = vec![0.0; 5 * 4];
    matmul::matmul_backward_input(&mut dx, &c, &w, d, false);
    let mut dw = vec![0.0; 3 * 4];
    matmul::matmul_backward_weight(&mut dw, &c, &x, d, &[0, 2, 2, 5]);
    let w0 = w.clone();
    assert_gradient("matmul_nt dx", &dx, &mut x, |x| forward(x, &w0));
    let x0 = x.clone();
    assert_gradient("matmul_nt dw", &dw, &mut w, |w| forward(&x0, w));
}

#[test]
fn matmul_nn_gradients_match_finite_differences() {
    // f(dy, w) = dy·w (m, k); with upstream g (m, k): ∂dy = g·wᵀ (nt form), ∂w = dyᵀ·g (tn form).
    let mut rng = Rng::seeded(2);
    let d = MatmulDims { m: 4, k: 3, n: 5 };
    let (mut dy, mut w, g) = (rng.vec_f64(4 * 5, 1.0), rng.vec_f64(5 * 3, 1.0), rng.vec_f64(4 * 3, 1.0));
    let forward = |dy: &[f64], w: &[f64]| {
        let mut dx = vec![0.0; 4 * 3];
        matmul::matmul_backward_input(&mut dx, dy, w, d, false);
        dot(&g, &dx)
    };
    let mut d_dy = vec![0.0; 4 * 5];
    matmul::matmul_forward(&mut d_dy, &g, &w, d, false);
    let mut d_w = vec![0.0; 5 * 3];
    matmul::matmul_backward_weight(&mut d_w, &dy, &g, d, &[0, 4]);
    let w0 = w.clone();
    assert_gradient("matmul_nn d(dy)", &d_dy, &mut dy, |dy| forward(dy, &w0));
    let dy0 = dy.clone();
    assert_gradient("matmul_nn d(w)", &d_w, &mut w, |w| forward(&dy0, w));
}

#[test]
fn matmul_tn_gradients_match_finite_differences() {
    // f(dy, x) = dyᵀ·x (n, k); with upstream g (n, k): ∂dy = x·gᵀ (nt form), ∂x = dy·g (nn form).
    let mut rng = Rng::seeded(3);
    let d = MatmulDims { m: 6, k: 2, n: 3 };
    let (mut dy, mut x, g) = (rng.vec_f64(6 * 3, 1.0), rng.vec_f64(6 * 2, 1.0), rng.vec_f64(3 * 2, 1.0));
    let forward = |dy: &[f64], x: &[f64]| {
        let mut dw = vec![0.0; 3 * 2];
        matmul::matmul_backward_weight(&mut dw, dy, x, d, &[0, 1, 4, 6]);
        dot(&g, &dw)
    };
    let mut d_dy = vec![0.0; 6 * 3];
    matmul::matmul_forward(&mut d_dy, &x, &g, d, false);
    let mut d_x = vec![0.0; 6 * 2];
    matmul::matmul_backward_input(&mut d_x, &dy, &g, d, false);
    let x0 = x.clone();
    assert_gradient("matmul_tn d(dy)", &d_dy, &mut dy, |dy| forward(dy, &x0));
    let dy0 = dy.clone();
    assert_gradient("matmul_tn d(x)", &d_x, &mut x, |x| forward(&dy0, x));
}

#[test]
fn embedding_gradient_matches_finite_differences_with_repeated_ids() {
    let mut rng = Rng::seeded(4);
    let (vocab, dim, ids) = (5, 3, [4u32, 1, 4, 0, 4]);
    let (mut table, c) = (rng.vec_f64(vocab * dim, 1.0), rng.vec_f64(ids.len() * dim, 1.0));
    let mut dtable = vec![0.0; vocab * dim];
    embedding::embedding_backward(&mut dtable, &c, &ids, vocab, dim);
    assert_gradient("embedding dtable", &dtable, &mut table, |t| {
        let mut out = vec![0.0; ids.len() * dim];
        embedding::embedding_forward(&mut out, t, &ids, vocab, dim);
        dot(&c, &out)
    });
}

#[test]
fn rmsnorm_gradients_match_finite_differences() {
    let mut rng = Rng::seeded(5);
    let (rows, dim, eps) = (4, 6, 1e-6);
    let (mut x, mut w, c) = (rng.vec_f64(rows * dim, 1.0), rng.vec_f64(dim, 1.0), rng.vec_f64(rows * dim, 1.0));
    let forward = |x: &[f64], w: &[f64]| {
        let (mut y, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows]);
        rmsnorm::rmsnorm_forward(&mut y, &mut rstd, x, w, rows, dim, eps);
        dot(&c, &y)
    };
    let (mut y, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows]);
    rmsnorm::rmsnorm_forward(&mut y, &mut rstd, &x, &w, rows, dim, eps);
    let (mut dx, mut dw) = (vec![0.0; rows * dim], vec![0.0; dim]);
    rmsnorm::rmsnorm_backward(&mut dx, Some(&mut dw), &c, &x, &w, &rstd, rows, dim, &[0, 1, 4]);
    let w0 = w.clone();
    assert_gradient("rmsnorm dx", &dx, &mut x, |x| forward(x, &w0));
    let x0 = x.clone();
    assert_gradient("rmsnorm dw", &dw, &mut w, |w| forward(&x0, w));
}

#[test]
fn rope_gradient_matches_finite_differences_with_llama3_tables() {
    let mut rng = Rng::seeded(6);
    let (heads, head_dim, positions) = (2, 16, [0u32, 5, 63, 17]);
    let scaling = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    };
    let table = RopeTable::new(head_dim, 5e5, Some(scaling), 64);
    let cos: Vec<f64> = table.cos.iter().map(|&v| f64::from(v)).collect();
    let sin: Vec<f64> = table.sin.iter().map(|&v| f64::from(v)).collect();
    let n = positions.len() * heads * head_dim;
    let (mut x, c) = (rng.vec_f64(n, 1.0), rng.vec_f64(n, 1.0));
    let mut dx = c.clone();
    rope::rope_backward(&mut dx, &positions, heads, head_dim, &cos, &sin);
    assert_gradient("rope dx", &dx, &mut x, |x| {
        let mut y = x.to_vec();
        rope::rope_forward(&mut y, &positions, heads, head_dim, &cos, &sin);
        dot(&c, &y)
    });
}

#[test]
fn swiglu_gradients_match_finite_differences() {
    let mut rng = Rng::seeded(7);
    let n = 12;
    let (mut gate, mut up, c) = (rng.vec_f64(n, 3.0), rng.vec_f64(n, 1.0), rng.vec_f64(n, 1.0));
    let forward = |g: &[f64], u: &[f64]| {
        let mut out = vec![0.0; n];
        swiglu::swiglu_forward(&mut out, g, u);
        dot(&c, &out)
    };
    let (mut dgate, mut dup) = (vec![0.0; n], vec![0.0; n]);
    swiglu::swiglu_backward(&mut dgate, &mut dup, &c, &gate, &up);
    let up0 = up.clone();
    assert_gradient("swiglu dgate", &dgate, &mut gate, |g| forward(g, &up0));
    let gate0 = gate.clone();
    assert_gradient("swiglu dup", &dup, &mut up, |u| forward(&gate0, u));
}

fn check_logsoftmax_gather(k: usize, seed: u64) {
    let mut rng = Rng::seeded(seed);
    let (rows, vocab) = (3, 7);
    let (mut logits, targets, c) =
        (rng.vec_f64(rows * vocab, 2.0), rng.ids(rows * k, vocab as u32), rng.vec_f64(rows * k, 1.0));
    let (mut lp, mut lse) = (vec![0.0; rows * k], vec![0.0; rows]);
    logsoftmax::logsoftmax_gather_forward(&mut lp, &mut lse, &logits, &targets, rows, vocab, k);
    let mut dlogits = vec![0.0; rows * vocab];
    logsoftmax::logsoftmax_gather_backward(&mut dlogits, &c, &logits, &lse, &targets, rows, vocab, k);
    assert_gradient(&format!("logsoftmax_gather k={k} dlogits"), &dlogits, &mut logits, |l| {
        let (mut lp, mut lse) = (vec![0.0; rows * k], vec![0.0; rows]);
        logsoftmax::logsoftmax_gather_forward(&mut lp, &mut lse, l, &targets, rows, vocab, k);
        dot(&c, &lp)
    });
}

#[test]
fn logsoftmax_gather_gradient_matches_finite_differences_for_one_target() {
    check_logsoftmax_gather(1, 8);
}

#[test]
fn logsoftmax_gather_gradient_matches_finite_differences_for_three_targets() {
    check_logsoftmax_gather(3, 9);
}

#[test]
fn lora_gradients_match_finite_differences() {
    let mut rng = Rng::seeded(10);
    let d = LoraDims { rows: 5, d_in: 4, d_out: 3, rank: 2 };
    let scale = 16.0 / 2.0;
    let mut x = rng.vec_f64(d.rows * d.d_in, 1.0);
    let mut a = rng.vec_f64(d.rank * d.d_in, 1.0);
    let mut b = rng.vec_f64(d.d_out * d.rank, 1.0);
    let c = rng.vec_f64(d.rows * d.d_out, 1.0);
    let forward = |x: &[f64], a: &[f64], b: &[f64]| {
        let (mut y, mut h) = (vec![0.0; d.rows * d.d_out], vec![0.0; d.rows * d.rank]);
        lora::lora_forward(&mut y, &mut h, x, a, b, d, scale);
        dot(&c, &y)
    };
    let (mut y, mut h) = (vec![0.0; d.rows * d.d_out], vec![0.0; d.rows * d.rank]);
    lora::lora_forward(&mut y, &mut h, &x, &a, &b, d, scale);
    let (mut dx, mut da, mut db) = (vec![0.0; x.len()], vec![0.0; a.len()], vec![0.0; b.len()]);
    lora::lora_backward(&mut dx, &mut da, &mut db, &c, &x, &h, &a, &b, d, scale, &[0, 2, 5]);
    let (x0, a0, b0) = (x.clone(), a.clone(), b.clone());
    assert_gradient("lora dx", &dx, &mut x, |x| forward(x, &a0, &b0));
    assert_gradient("lora da", &da, &mut a, |a| forward(&x0, a, &b0));
    assert_gradient("lora db", &db, &mut b, |b| forward(&x0, &a0, b));
}
