//! Conformance: every op of a candidate backend against `ReferenceBackend` on random inputs.
//! Each op has one generic check taking `&impl Backend` and a tolerance, so a future CUDA backend
//! reuses the suite by adding one `#[test]` per op with its own tolerance row.
//!
//! Tolerance table (absolute error bound = tol · max(1, max |reference value| of that output)):
//!
//! | op family                                   | cpu    | why                                         |
//! |---------------------------------------------|--------|---------------------------------------------|
//! | matmul nt/nn/tn, lora fwd/bwd               | 1e-5   | gemm blocks and FMAs the k-sum differently  |
//! | attention fwd/bwd                           | 1e-5   | 8-lane dot products vs sequential sums      |
//! | embedding, rmsnorm, rope, swiglu, logsoftmax | 1e-6  | cpu runs the reference per row: ~exact      |
//! | adamw (param, m, v), sum_squares            | 1e-6   | same elementwise code, chunked              |

mod common;

use common::Rng;
use kernels::rope::RopeTable;
use kernels::{
    ActivationOps, AdamStep, AttentionOps, AttnDims, Backend, CpuBackend, EmbeddingOps, LinearOps, LoraDims, LoraOps,
    MatmulDims, NormOps, OptimOps, ReferenceBackend, RopeOps, VocabOps,
};

const TOL_LINEAR: f32 = 1e-5;
const TOL_ATTENTION: f32 = 1e-5;
const TOL_ROWWISE: f32 = 1e-6;

/// Asserts `|got - want| ≤ tol · max(1, max |want|)` element by element.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1.0f32, |s, v| s.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}[{i}]: got {g}, reference {w} (scale {scale}, tol {tol})");
    }
}

pub fn conform_matmul(b: &impl Backend, tol: f32) {
    let mut rng = Rng::seeded(100);
    let r = ReferenceBackend;
    for &(m, k, n) in &[(1, 64, 300), (70, 33, 513), (130, 300, 17)] {
        let d = MatmulDims { m, k, n };
        let (x, w, dy) = (rng.vec_f32(m * k, 1.0), rng.vec_f32(n * k, 1.0), rng.vec_f32(m * n, 1.0));
        for accumulate in [false, true] {
            let y0 = rng.vec_f32(m * n, 1.0);
            let (mut got, mut want) = (y0.clone(), y0);
            b.matmul_nt(&mut got, &x, &w, d, accumulate);
            r.matmul_nt(&mut want, &x, &w, d, accumulate);
            assert_close(&format!("{} matmul_nt {d:?} acc={accumulate}", b.name()), &got, &want, tol);
            let dx0 = rng.vec_f32(m * k, 1.0);
            let (mut got, mut want) = (dx0.clone(), dx0);
            b.matmul_nn(&mut got, &dy, &w, d, accumulate);
            r.matmul_nn(&mut want, &dy, &w, d, accumulate);
            assert_close(&format!("{} matmul_nn {d:?} acc={accumulate}", b.name()), &got, &want, tol);
        }
        let segments = [0, m / 3, m / 3, m];
        let dw0 = rng.vec_f32(n * k, 1.0);
        let (mut got, mut want) = (dw0.clone(), dw0);
        b.matmul_tn(&mut got, &dy, &x, d, &segments);
        r.matmul_tn(&mut want, &dy, &x, d, &segments);
        assert_close(&format!("{} matmul_tn {d:?}", b.name()), &got, &want, tol);
    }
}

pub fn conform_embedding(b: &impl Backend, tol: f32) {
    let mut rng = Rng::seeded(101);
    let (vocab, dim) = (50, 24);
    let (table, ids) = (rng.vec_f32(vocab * dim, 1.0), rng.ids(40, vocab as u32));
    let (mut got, mut want) = (vec![0.0; 40 * dim], vec![0.0; 40 * dim]);
    b.embedding_forward(&mut got, &table, &ids, vocab, dim);
    ReferenceBackend.embedding_forward(&mut want, &table, &ids, vocab, dim);
    assert_close("embedding_forward", &got, &want, tol);
    let (dout, dt0) = (rng.vec_f32(40 * dim, 1.0), rng.vec_f32(vocab * dim, 1.0));
    let (mut got, mut want) = (dt0.clone(), dt0);
    b.embedding_backward(&mut got, &dout, &ids, vocab, dim);
    ReferenceBackend.embedding_backward(&mut want, &dout, &ids, vocab, dim);
    assert_close("embedding_backward", &got, &want, tol);
}

pub fn conform_rmsnorm(b: &impl Backend, tol: f32) {
    let mut rng = Rng::seeded(102);
    let (rows, dim, eps) = (37, 200, 1e-6);
    let (x, w, dy) = (rng.vec_f32(rows * dim, 2.0), rng.vec_f32(dim, 1.0), rng.vec_f32(rows * dim, 1.0));
    let (mut y_b, mut rs_b, mut y_r, mut rs_r) =
        (vec![0.0; rows * dim], vec![0.0; rows], vec![0.0; rows * dim], vec![0.0; rows]);
    b.rmsnorm_forward(&mut y_b, &mut rs_b, &x, &w, rows, dim, eps);
    ReferenceBackend.rmsnorm_forward(&mut y_r, &mut rs_r, &x, &w, rows, dim, eps);
    assert_close("rmsnorm y", &y_b, &y_r, tol);
    assert_close("rmsnorm rstd", &rs_b, &rs_r, tol);
    let dw0 = rng.vec_f32(dim, 1.0);
    let (mut dx_b, mut dw_b, mut dx_r, mut dw_r) = (vec![0.0; rows * dim], dw0.clone(), vec![0.0; rows * dim], dw0);
    let segments = [0, 5, 20, rows];
    b.rmsnorm_backward(&mut dx_b, Some(&mut dw_b), &dy, &x, &w, &rs_r, rows, dim, &segments);
    ReferenceBackend.rmsnorm_backward(&mut dx_r, Some(&mut dw_r), &dy, &x, &w, &rs_r, rows, dim, &segments);
    assert_close("rmsnorm dx", &dx_b, &dx_r, tol);
    assert_close("rmsnorm dw", &dw_b, &dw_r, tol);
}

pub fn conform_rope(b: &impl Backend, tol: f32) {
    let mut rng = Rng::seeded(103);
    let (heads, head_dim, table) = (3, 64, RopeTable::new(64, 1e6, None, 4096));
    let positions: Vec<u32> = rng.ids(45, 4096);
    let x = rng.vec_f32(45 * heads * head_dim, 1.0);
    for forward in [true, false] {
        let (mut got, mut want) = (x.clone(), x.clone());
        if forward {
            b.rope_forward(&mut got, &positions, heads, head_dim, &table.cos, &table.sin);
            ReferenceBackend.rope_forward(&mut want, &positions, heads, head_dim, &table.cos, &table.sin);
        } else {
            b.rope_backward(&mut got, &positions, heads, head_dim, &table.cos, &table.sin);
            ReferenceBackend.rope_backward(&mut want, &positions, heads, head_dim, &table.cos, &table.sin);
        }
        assert_close(&format!("rope forward={forward}"), &got, &want, tol);
    }
}

pub fn conform_attention(b: &impl Backend, tol: f32) {
    let mut rng = Rng::seeded(104);
    let d = AttnDims { heads: 6, kv_heads: 2, head_dim: 20 };
    // Training-shaped (lq == lk) and cache-shaped (lq < lk, one decode row) sequences mixed.
    let (cu_q, cu_k) = ([0usize, 17, 18, 18 + 9, 18 + 9 + 40], [0usize, 17, 17 + 30, 17 + 30 + 12, 17 + 30 + 12 + 40]);
    let (tq, tk) = (cu_q[4], cu_k[4]);
    let scale = 1.0 / (d.head_dim as f32).sqrt();
    let q = rng.vec_f32(tq * d.heads * d.head_dim, 2.0);
    let (k, v) = (rng.vec_f32(tk * d.kv_heads * d.head_dim, 2.0), rng.vec_f32(tk * d.kv_heads * d.head_dim, 1.0));
    let dout = rng.vec_f32(q.len(), 1.0);
    let (mut o_b, mut l_b, mut o_r, mut l_r) =
        (vec![0.0; q.len()], vec![0.0; tq * d.heads], vec![0.0; q.len()], vec![0.0; tq * d.heads]);
    b.attention_forward(&mut o_b, &mut l_b, &q, &k, &v, &cu_q, &cu_k, d, scale);
    ReferenceBackend.attention_forward(&mut o_r, &mut l_r, &q, &k, &v, &cu_q, &cu_k, d, scale);
    assert_close("attention out", &o_b, &o_r, tol);
    assert_close("attention lse", &l_b, &l_r, tol);
    let mut grads_b = (vec![1.0; q.len()], vec![1.0; k.len()], vec![1.0; k.len()]);
    let mut grads_r = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; k.len()]);
    let (dq, dk, dv) = (&mut grads_b.0, &mut grads_b.1, &mut grads_b.2);
    b.attention_backward(dq, dk, dv, &dout, &q, &k, &v, &o_r, &l_r, &cu_q, &cu_k, d, scale);
    let (dq, dk, dv) = (&mut grads_r.0, &mut grads_r.1, &mut grads_r.2);
    ReferenceBackend.attention_backward(dq, dk, dv, &dout, &q, &k, &v, &o_r, &l_r, &cu_q, &cu_k, d, scale);
    assert_close("attention dq", &grads_b.0, &grads_r.0, tol);
    assert_close("attention dk", &grads_b.1, &grads_r.1, tol);
    assert_close("attention dv", &grads_b.2, &grads_r.2, tol);
}

pub fn conform_swiglu(b: &impl Backend, tol: f32) {
    let mut rng = Rng::seeded(105);
    let n = 40_000;
    let (gate, up, dout) = (rng.vec_f32(n, 6.0), rng.vec_f32(n, 1.0), rng.vec_f32(n, 1.0));
    let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
    b.swiglu_forward(&mut got, &gate, &up);
    ReferenceBackend.swiglu_forward(&mut want, &gate, &up);
    assert_close("swiglu out", &got, &want, tol);
    let (mut dg_b, mut du_b, mut dg_r, mut du_r) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    b.swiglu_backward(&mut dg_b, &mut du_b, &dout, &gate, &up);
    ReferenceBackend.swiglu_backward(&mut dg_r, &mut du_r, &dout, &gate, &up);
    assert_close("swiglu dgate", &dg_b, &dg_r, tol);
    assert_close("swiglu dup", &du_b, &du_r, tol);
}

pub fn conform_logsoftmax(b: &impl Backend, tol: f32) {
    let mut rng = Rng::seeded(106);
    let (rows, vocab) = (23, 1000);
    let logits = rng.vec_f32(rows * vocab, 8.0);
    for k in [1usize, 3] {
        let (targets, dlp) = (rng.ids(rows * k, vocab as u32), rng.vec_f32(rows * k, 1.0));
        let (mut lp_b, mut lse_b, mut lp_r, mut lse_r) =
            (vec![0.0; rows * k], vec![0.0; rows], vec![0.0; rows * k], vec![0.0; rows]);
        b.logsoftmax_gather_forward(&mut lp_b, &mut lse_b, &logits, &targets, rows, vocab, k);
        ReferenceBackend.logsoftmax_gather_forward(&mut lp_r, &mut lse_r, &logits, &targets, rows, vocab, k);
        assert_close(&format!("logsoftmax k={k} logprobs"), &lp_b, &lp_r, tol);
        assert_close(&format!("logsoftmax k={k} lse"), &lse_b, &lse_r, tol);
        let (mut dl_b, mut dl_r) = (vec![0.0; rows * vocab], vec![0.0; rows * vocab]);
        b.logsoftmax_gather_backward(&mut dl_b, &dlp, &logits, &lse_r, &targets, rows, vocab, k);
        ReferenceBackend.logsoftmax_gather_backward(&mut dl_r, &dlp, &logits, &lse_r, &targets, rows, vocab, k);
        assert_close(&format!("logsoftmax k={k} dlogits"), &dl_b, &dl_r, tol);
    }
}

pub fn conform_lora(b: &impl Backend, tol: f32) {
    let mut rng = Rng::seeded(107);
    let d = LoraDims { rows: 90, d_in: 130, d_out: 270, rank: 8 };
    let scale = 32.0 / 8.0;
    let (x, a, bw) =
        (rng.vec_f32(d.rows * d.d_in, 1.0), rng.vec_f32(d.rank * d.d_in, 0.1), rng.vec_f32(d.d_out * d.rank, 0.1));
    let (y0, dy) = (rng.vec_f32(d.rows * d.d_out, 1.0), rng.vec_f32(d.rows * d.d_out, 1.0));
    let (mut y_b, mut h_b, mut y_r, mut h_r) = (y0.clone(), vec![0.0; d.rows * d.rank], y0, vec![0.0; d.rows * d.rank]);
    b.lora_forward(&mut y_b, &mut h_b, &x, &a, &bw, d, scale);
    ReferenceBackend.lora_forward(&mut y_r, &mut h_r, &x, &a, &bw, d, scale);
    assert_close("lora y", &y_b, &y_r, tol);
    assert_close("lora h", &h_b, &h_r, tol);
    let (dx0, da0, db0) = (rng.vec_f32(x.len(), 1.0), rng.vec_f32(a.len(), 1.0), rng.vec_f32(bw.len(), 1.0));
    let mut got = (dx0.clone(), da0.clone(), db0.clone());
    let mut want = (dx0, da0, db0);
    let segments = [0, 30, 31, 90];
    b.lora_backward(&mut got.0, &mut got.1, &mut got.2, &dy, &x, &h_r, &a, &bw, d, scale, &segments);
    ReferenceBackend.lora_backward(&mut want.0, &mut want.1, &mut want.2, &dy, &x, &h_r, &a, &bw, d, scale, &segments);
    assert_close("lora dx", &got.0, &want.0, tol);
    assert_close("lora da", &got.1, &want.1, tol);
    assert_close("lora db", &got.2, &want.2, tol);
}

pub fn conform_optim(b: &impl Backend, tol: f32) {
    let mut rng = Rng::seeded(108);
    let n = 50_000;
    let (p0, m0, v0) =
        (rng.vec_f32(n, 1.0), rng.vec_f32(n, 0.1), rng.vec_f32(n, 0.01).iter().map(|v| v.abs()).collect::<Vec<_>>());
    let grad = rng.vec_f32(n, 1.0);
    let s = AdamStep {
        learning_rate: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-12,
        weight_decay: 0.01,
        step: 7,
        grad_scale: 0.8,
    };
    let mut got = (p0.clone(), m0.clone(), v0.clone());
    let mut want = (p0, m0, v0);
    b.adamw_step(&mut got.0, &grad, &mut got.1, &mut got.2, s);
    ReferenceBackend.adamw_step(&mut want.0, &grad, &mut want.1, &mut want.2, s);
    assert_close("adamw param", &got.0, &want.0, tol);
    assert_close("adamw m", &got.1, &want.1, tol);
    assert_close("adamw v", &got.2, &want.2, tol);
    let (ss_b, ss_r) = (b.sum_squares(&grad), ReferenceBackend.sum_squares(&grad));
    assert!((ss_b - ss_r).abs() <= f64::from(tol) * ss_r.max(1.0), "sum_squares {ss_b} vs {ss_r}");
}

#[test]
fn cpu_matmul_matches_reference() {
    conform_matmul(&CpuBackend, TOL_LINEAR);
}

#[test]
fn cpu_embedding_matches_reference() {
    conform_embedding(&CpuBackend, TOL_ROWWISE);
}

#[test]
fn cpu_rmsnorm_matches_reference() {
    conform_rmsnorm(&CpuBackend, TOL_ROWWISE);
}

#[test]
fn cpu_rope_matches_reference() {
    conform_rope(&CpuBackend, TOL_ROWWISE);
}

#[test]
fn cpu_attention_matches_reference() {
    conform_attention(&CpuBackend, TOL_ATTENTION);
}

#[test]
fn cpu_swiglu_matches_reference() {
    conform_swiglu(&CpuBackend, TOL_ROWWISE);
}

#[test]
fn cpu_logsoftmax_gather_matches_reference() {
    conform_logsoftmax(&CpuBackend, TOL_ROWWISE);
}

#[test]
fn cpu_lora_matches_reference() {
    conform_lora(&CpuBackend, TOL_LINEAR);
}

#[test]
fn cpu_optimizer_matches_reference() {
    conform_optim(&CpuBackend, TOL_ROWWISE);
}

#[test]
fn the_tolerance_check_rejects_a_real_difference() {
    // Guards the harness: a relative error of 1e-4 must fail the linear tolerance.
    let result = std::panic::catch_unwind(|| assert_close("probe", &[1.0001], &[1.0], TOL_LINEAR));
    assert!(result.is_err());
}
