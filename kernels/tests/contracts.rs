//! The two `Backend` contracts, bit for bit, written generically (`&impl Backend`) so every
//! backend runs them: row invariance (a row's result is the same whatever the number of rows
//! and wherever the row sits, m = 1 included; attention decode equals its row of the full causal
//! pass) and segmented reductions (a segment's weight-gradient contribution is the same alone
//! as packed among neighbours, and zero-gradient neighbours add exactly nothing).

mod common;

use common::Rng;
use kernels::{AttnDims, Backend, CpuBackend, LoraDims, MatmulDims};

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: {g} vs {w}");
    }
}

const ROW_COUNTS: [usize; 5] = [1, 3, 17, 64, 300];

pub fn matmul_rows_are_invariant(b: &impl Backend) {
    let mut rng = Rng::seeded(200);
    let (m_all, k, n) = (300 + 17, 70, 300);
    let (x, w, dy) = (rng.vec_f32(m_all * k, 1.0), rng.vec_f32(n * k, 1.0), rng.vec_f32(m_all * n, 1.0));
    let y0 = rng.vec_f32(m_all * n, 1.0);
    let all = MatmulDims { m: m_all, k, n };
    let (mut y_all, mut yacc_all, mut dx_all) = (vec![0.0; m_all * n], y0.clone(), vec![0.0; m_all * k]);
    b.matmul_nt(&mut y_all, &x, &w, all, false);
    b.matmul_nt(&mut yacc_all, &x, &w, all, true);
    b.matmul_nn(&mut dx_all, &dy, &w, all, false);
    for m in ROW_COUNTS {
        for start in [0, m_all - m, (m_all - m) / 3] {
            let d = MatmulDims { m, k, n };
            let (mut y, mut yacc, mut dx) =
                (vec![0.0; m * n], y0[start * n..(start + m) * n].to_vec(), vec![0.0; m * k]);
            b.matmul_nt(&mut y, &x[start * k..(start + m) * k], &w, d, false);
            b.matmul_nt(&mut yacc, &x[start * k..(start + m) * k], &w, d, true);
            b.matmul_nn(&mut dx, &dy[start * n..(start + m) * n], &w, d, false);
            assert_bits(&format!("matmul_nt m={m} at {start}"), &y, &y_all[start * n..(start + m) * n]);
            assert_bits(&format!("matmul_nt += m={m} at {start}"), &yacc, &yacc_all[start * n..(start + m) * n]);
            assert_bits(&format!("matmul_nn m={m} at {start}"), &dx, &dx_all[start * k..(start + m) * k]);
        }
    }
}

pub fn attention_decode_equals_its_row_of_the_full_pass(b: &impl Backend) {
    let mut rng = Rng::seeded(201);
    let d = AttnDims { heads: 4, kv_heads: 2, head_dim: 24 };
    let (row, kv_row) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    // Two packed sequences (lengths 9 and 21): the full causal training pass.
    let (cu, lens) = ([0usize, 9, 30], [9usize, 21]);
    let (q, k, v) = (rng.vec_f32(30 * row, 2.0), rng.vec_f32(30 * kv_row, 2.0), rng.vec_f32(30 * kv_row, 1.0));
    let scale = 1.0 / (d.head_dim as f32).sqrt();
    let (mut out, mut lse) = (vec![0.0; 30 * row], vec![0.0; 30 * d.heads]);
    b.attention_forward(&mut out, &mut lse, &q, &k, &v, &cu, &cu, d, scale);
    for s in 0..2 {
        for i in 0..lens[s] {
            // Decode query i of sequence s alone over its cached keys 0..=i.
            let t = cu[s] + i;
            let (kc, vc) = (&k[cu[s] * kv_row..(t + 1) * kv_row], &v[cu[s] * kv_row..(t + 1) * kv_row]);
            let (mut o1, mut l1) = (vec![0.0; row], vec![0.0; d.heads]);
            b.attention_forward(&mut o1, &mut l1, &q[t * row..(t + 1) * row], kc, vc, &[0, 1], &[0, i + 1], d, scale);
            assert_bits(&format!("decode out seq {s} query {i}"), &o1, &out[t * row..(t + 1) * row]);
            assert_bits(&format!("decode lse seq {s} query {i}"), &l1, &lse[t * d.heads..(t + 1) * d.heads]);
        }
    }
    // The last 5 queries of sequence 1 over all its 21 keys, packed behind a 1-query decode of sequence 0.
    let (t0, t1) = (cu[1] + 16, cu[2]);
    let mut qp = q[8 * row..9 * row].to_vec();
    qp.extend_from_slice(&q[t0 * row..t1 * row]);
    let (mut op, mut lp) = (vec![0.0; 6 * row], vec![0.0; 6 * d.heads]);
    b.attention_forward(&mut op, &mut lp, &qp, &k, &v, &[0, 1, 6], &[0, 9, 30], d, scale);
    assert_bits("chunked prefill out", &op[row..], &out[t0 * row..t1 * row]);
    assert_bits("chunked prefill lse", &lp[d.heads..], &lse[t0 * d.heads..t1 * d.heads]);
}

pub fn logsoftmax_and_rmsnorm_rows_are_invariant(b: &impl Backend) {
    let mut rng = Rng::seeded(202);
    let (rows, vocab, k) = (40, 777, 2);
    let (logits, targets) = (rng.vec_f32(rows * vocab, 6.0), rng.ids(rows * k, vocab as u32));
    let (mut lp_all, mut lse_all) = (vec![0.0; rows * k], vec![0.0; rows]);
    b.logsoftmax_gather_forward(&mut lp_all, &mut lse_all, &logits, &targets, rows, vocab, k);
    let w = rng.vec_f32(vocab, 1.0);
    let (mut y_all, mut rs_all) = (vec![0.0; rows * vocab], vec![0.0; rows]);
    b.rmsnorm_forward(&mut y_all, &mut rs_all, &logits, &w, rows, vocab, 1e-6);
    for (start, m) in [(0, 1), (39, 1), (5, 3), (11, 17)] {
        let (mut lp, mut lse) = (vec![0.0; m * k], vec![0.0; m]);
        let (l, t) = (&logits[start * vocab..(start + m) * vocab], &targets[start * k..(start + m) * k]);
        b.logsoftmax_gather_forward(&mut lp, &mut lse, l, t, m, vocab, k);
        assert_bits(&format!("logprobs rows {start}+{m}"), &lp, &lp_all[start * k..(start + m) * k]);
        assert_bits(&format!("lse rows {start}+{m}"), &lse, &lse_all[start..start + m]);
        let (mut y, mut rs) = (vec![0.0; m * vocab], vec![0.0; m]);
        b.rmsnorm_forward(&mut y, &mut rs, l, &w, m, vocab, 1e-6);
        assert_bits(&format!("rmsnorm rows {start}+{m}"), &y, &y_all[start * vocab..(start + m) * vocab]);
    }
}

/// Rows `pre` + segment (`len`) + `post`, the neighbours' upstream gradient zero.
fn packed_with_zero_neighbours(seg: &[f32], width: usize, pre: usize, post: usize) -> Vec<f32> {
    let mut packed = vec![0.0; pre * width];
    packed.extend_from_slice(seg);
    packed.extend(std::iter::repeat_n(0.0, post * width));
    packed
}

pub fn matmul_tn_segments_are_independent(b: &impl Backend) {
    let mut rng = Rng::seeded(203);
    let (k, n, len, pre, post) = (90, 130, 23, 40, 7);
    let rows = pre + len + post;
    let (x, dy_seg, dw0) = (rng.vec_f32(rows * k, 1.0), rng.vec_f32(len * n, 1.0), rng.vec_f32(n * k, 1.0));
    let mut alone = dw0.clone();
    b.matmul_tn(&mut alone, &dy_seg, &x[pre * k..(pre + len) * k], MatmulDims { m: len, k, n }, &[0, len]);
    let dy_packed = packed_with_zero_neighbours(&dy_seg, n, pre, post);
    let mut packed = dw0.clone();
    let segments = [0, pre, pre + len, rows];
    b.matmul_tn(&mut packed, &dy_packed, &x, MatmulDims { m: rows, k, n }, &segments);
    assert_bits("matmul_tn segment alone vs packed", &packed, &alone);
    assert!(alone != dw0, "the segment must contribute something for the check to mean anything");
    // With non-zero neighbours the packed call equals the three segments applied one by one.
    let dy_full = rng.vec_f32(rows * n, 1.0);
    let mut packed = dw0.clone();
    b.matmul_tn(&mut packed, &dy_full, &x, MatmulDims { m: rows, k, n }, &segments);
    let mut serial = dw0;
    for s in segments.windows(2) {
        let (r0, r1) = (s[0], s[1]);
        let d = MatmulDims { m: r1 - r0, k, n };
        b.matmul_tn(&mut serial, &dy_full[r0 * n..r1 * n], &x[r0 * k..r1 * k], d, &[0, r1 - r0]);
    }
    assert_bits("matmul_tn packed vs segment by segment", &packed, &serial);
}

pub fn lora_backward_segments_are_independent(b: &impl Backend) {
    let mut rng = Rng::seeded(204);
    let (d_in, d_out, rank, len, pre, post) = (70, 90, 4, 19, 33, 12);
    let rows = pre + len + post;
    let scale = 2.0;
    let (x, a, bw) = (rng.vec_f32(rows * d_in, 1.0), rng.vec_f32(rank * d_in, 0.3), rng.vec_f32(d_out * rank, 0.3));
    let (h, dy_seg) = (rng.vec_f32(rows * rank, 1.0), rng.vec_f32(len * d_out, 1.0));
    let (da0, db0) = (rng.vec_f32(a.len(), 1.0), rng.vec_f32(bw.len(), 1.0));
    let d_alone = LoraDims { rows: len, d_in, d_out, rank };
    let (mut dx_a, mut da_a, mut db_a) = (vec![0.0; len * d_in], da0.clone(), db0.clone());
    let (xs, hs) = (&x[pre * d_in..(pre + len) * d_in], &h[pre * rank..(pre + len) * rank]);
    b.lora_backward(&mut dx_a, &mut da_a, &mut db_a, &dy_seg, xs, hs, &a, &bw, d_alone, scale, &[0, len]);
    let dy_packed = packed_with_zero_neighbours(&dy_seg, d_out, pre, post);
    let d_packed = LoraDims { rows, d_in, d_out, rank };
    let (mut dx_p, mut da_p, mut db_p) = (vec![0.0; rows * d_in], da0.clone(), db0.clone());
    let segments = [0, pre, pre + len, rows];
    b.lora_backward(&mut dx_p, &mut da_p, &mut db_p, &dy_packed, &x, &h, &a, &bw, d_packed, scale, &segments);
    assert_bits("lora da alone vs packed", &da_p, &da_a);
    assert_bits("lora db alone vs packed", &db_p, &db_a);
    assert_bits("lora dx rows alone vs packed", &dx_p[pre * d_in..(pre + len) * d_in], &dx_a);
    assert!(da_a != da0 && db_a != db0, "the segment must contribute something for the check to mean anything");
}

#[test]
fn cpu_matmul_rows_are_bit_identical_for_every_row_count_and_offset() {
    matmul_rows_are_invariant(&CpuBackend);
}

#[test]
fn cpu_attention_decode_is_bit_identical_to_the_full_causal_pass() {
    attention_decode_equals_its_row_of_the_full_pass(&CpuBackend);
}

#[test]
fn cpu_logsoftmax_and_rmsnorm_rows_are_bit_identical_whatever_the_batch() {
    logsoftmax_and_rmsnorm_rows_are_invariant(&CpuBackend);
}

#[test]
fn cpu_matmul_tn_segment_contribution_does_not_depend_on_neighbours() {
    matmul_tn_segments_are_independent(&CpuBackend);
}

#[test]
fn cpu_lora_backward_segment_contribution_does_not_depend_on_neighbours() {
    lora_backward_segments_are_independent(&CpuBackend);
}
