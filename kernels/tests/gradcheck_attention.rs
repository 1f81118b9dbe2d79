//! f64 finite-difference gradchecks of reference attention: packed sequences of different
//! lengths with grouped-query heads, in training form (`lq == lk`) and in the cached form
//! (`lq < lk`), each of dq, dk, dv to 1e-6 relative.

mod common;

use common::{assert_gradient, dot, Rng};
use kernels::reference::attention::{attention_backward, attention_forward};
use kernels::AttnDims;

fn check_attention(cu_q: &[usize], cu_k: &[usize], seed: u64) {
    let mut rng = Rng::seeded(seed);
    let d = AttnDims { heads: 4, kv_heads: 2, head_dim: 3 };
    let (tq, tk) = (cu_q[cu_q.len() - 1], cu_k[cu_k.len() - 1]);
    let scale = 1.0 / (d.head_dim as f64).sqrt();
    let mut q = rng.vec_f64(tq * d.heads * d.head_dim, 1.5);
    let mut k = rng.vec_f64(tk * d.kv_heads * d.head_dim, 1.5);
    let mut v = rng.vec_f64(tk * d.kv_heads * d.head_dim, 1.0);
    let c = rng.vec_f64(q.len(), 1.0);
    let forward = |q: &[f64], k: &[f64], v: &[f64]| {
        let (mut out, mut lse) = (vec![0.0; q.len()], vec![0.0; tq * d.heads]);
        attention_forward(&mut out, &mut lse, q, k, v, cu_q, cu_k, d, scale);
        dot(&c, &out)
    };
    let (mut out, mut lse) = (vec![0.0; q.len()], vec![0.0; tq * d.heads]);
    attention_forward(&mut out, &mut lse, &q, &k, &v, cu_q, cu_k, d, scale);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward(&mut dq, &mut dk, &mut dv, &c, &q, &k, &v, &out, &lse, cu_q, cu_k, d, scale);
    let (q0, k0, v0) = (q.clone(), k.clone(), v.clone());
    assert_gradient("attention dq", &dq, &mut q, |q| forward(q, &k0, &v0));
    assert_gradient("attention dk", &dk, &mut k, |k| forward(&q0, k, &v0));
    assert_gradient("attention dv", &dv, &mut v, |v| forward(&q0, &k0, v));
}

#[test]
fn attention_gradients_match_finite_differences_over_packed_gqa_sequences() {
    // Three sequences of lengths 3, 5 and 1, training form.
    check_attention(&[0, 3, 8, 9], &[0, 3, 8, 9], 11);
}

#[test]
fn attention_gradients_match_finite_differences_when_queries_trail_cached_keys() {
    // Sequence 0: 2 queries over 5 keys; sequence 1: 1 query over 4 keys (decode).
    check_attention(&[0, 2, 3], &[0, 5, 9], 12);
}
