//! Reference causal grouped-query attention over packed variable-length sequences (layout and
//! masking rules in `AttentionOps`' doc). Softmax with the max subtracted; `lse` saved for the
//! backward, which recomputes the probabilities from it. Loops run sequence, head, query, key,
//! each in ascending order, so every reduction has one fixed order.

use crate::real::Real;
use crate::AttnDims;

/// Checks the packed layout and returns the number of sequences.
pub(crate) fn assert_attention_shapes(tq: usize, tk: usize, cu_q: &[usize], cu_k: &[usize], d: AttnDims) -> usize {
    assert!(d.heads > 0 && d.kv_heads > 0 && d.head_dim > 0, "attention: dims must be positive, got {d:?}");
    assert_eq!(d.heads % d.kv_heads, 0, "attention: heads must be a multiple of kv_heads, got {d:?}");
    assert_eq!(cu_q.len(), cu_k.len(), "attention: cu_q and cu_k must both be (seqs + 1)");
    assert!(cu_q.len() >= 2, "attention: cu_q must hold at least one sequence");
    assert_eq!((cu_q[0], cu_k[0]), (0, 0), "attention: offsets must start at 0");
    assert_eq!(cu_q[cu_q.len() - 1], tq, "attention: cu_q must end at the number of query rows");
    assert_eq!(cu_k[cu_k.len() - 1], tk, "attention: cu_k must end at the number of key rows");
    for s in 0..cu_q.len() - 1 {
        assert!(cu_q[s] <= cu_q[s + 1] && cu_k[s] <= cu_k[s + 1], "attention: offsets must be non-decreasing");
        let (lq, lk) = (cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]);
        assert!(lk >= lq, "attention: sequence {s} has {lq} queries but only {lk} keys");
    }
    cu_q.len() - 1
}

/// `out (tq, heads, head_dim)` and `lse (tq, heads)` from `q (tq, heads, head_dim)` and
/// `k`, `v (tk, kv_heads, head_dim)`.
pub fn attention_forward<R: Real>(
    out: &mut [R],
    lse: &mut [R],
    q: &[R],
    k: &[R],
    v: &[R],
    cu_q: &[usize],
    cu_k: &[usize],
    d: AttnDims,
    scale: R,
) {
    let AttnDims { heads, kv_heads, head_dim: hd } = d;
    let (tq, tk) = (q.len() / (heads * hd), k.len() / (kv_heads * hd));
    assert_eq!(q.len(), tq * heads * hd, "attention_forward: q must be (tq, heads, head_dim)");
    assert_eq!(k.len(), v.len(), "attention_forward: k and v must both be (tk, kv_heads, head_dim)");
    assert_eq!(out.len(), q.len(), "attention_forward: out must be (tq, heads, head_dim)");
    assert_eq!(lse.len(), tq * heads, "attention_forward: lse must be (tq, heads)");
    let seqs = assert_attention_shapes(tq, tk, cu_q, cu_k, d);
    let group = heads / kv_heads;
    for s in 0..seqs {
        let (lq, lk) = (cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]);
        for h in 0..heads {
            let kvh = h / group;
            for i in 0..lq {
                let row = cu_q[s] + i;
                let q_vec = &q[(row * heads + h) * hd..][..hd];
                let visible = lk - lq + i + 1; // keys 0..visible of this sequence
                let mut scores = vec![R::ZERO; visible]; // (visible)
                for (j, score) in scores.iter_mut().enumerate() {
                    let k_vec = &k[((cu_k[s] + j) * kv_heads + kvh) * hd..][..hd];
                    let mut dot = R::ZERO;
                    for c in 0..hd {
                        dot += q_vec[c] * k_vec[c];
                    }
                    *score = dot * scale;
                }
                let max = scores.iter().fold(scores[0], |a, &b| a.max(b));
                let mut sum = R::ZERO;
                for score in scores.iter_mut() {
                    *score = (*score - max).exp();
                    sum += *score;
                }
                let o = &mut out[(row * heads + h) * hd..][..hd];
                o.fill(R::ZERO);
                for (j, &e) in scores.iter().enumerate() {
                    let p = e / sum;
                    let v_vec = &v[((cu_k[s] + j) * kv_heads + kvh) * hd..][..hd];
                    for c in 0..hd {
                        o[c] += p * v_vec[c];
                    }
                }
                lse[row * heads + h] = max + sum.ln();
            }
        }
    }
}

/// `dq (tq, heads, head_dim)`, `dk`, `dv (tk, kv_heads, head_dim)` overwritten. With
/// `p_j = exp(s_j - lse)`: `dv_j += p_j·dout`, `ds_j = p_j (dout·v_j - dout·out)`,
/// `dq += scale Σ_j ds_j k_j`, `dk_j += scale ds_j q`.
pub fn attention_backward<R: Real>(
    dq: &mut [R],
    dk: &mut [R],
    dv: &mut [R],
    dout: &[R],
    q: &[R],
    k: &[R],
    v: &[R],
    out: &[R],
    lse: &[R],
    cu_q: &[usize],
    cu_k: &[usize],
    d: AttnDims,
    scale: R,
) {
    let AttnDims { heads, kv_heads, head_dim: hd } = d;
    let (tq, tk) = (q.len() / (heads * hd), k.len() / (kv_heads * hd));
    assert_eq!(q.len(), tq * heads * hd, "attention_backward: q must be (tq, heads, head_dim)");
    assert_eq!(k.len(), v.len(), "attention_backward: k and v must both be (tk, kv_heads, head_dim)");
    assert!(dq.len() == q.len() && dout.len() == q.len() && out.len() == q.len(), "attention_backward: dq/dout/out");
    assert!(dk.len() == k.len() && dv.len() == k.len(), "attention_backward: dk/dv must be (tk, kv_heads, head_dim)");
    assert_eq!(lse.len(), tq * heads, "attention_backward: lse must be (tq, heads)");
    let seqs = assert_attention_shapes(tq, tk, cu_q, cu_k, d);
    let group = heads / kv_heads;
    dq.fill(R::ZERO);
    dk.fill(R::ZERO);
    dv.fill(R::ZERO);
    for s in 0..seqs {
        let (lq, lk) = (cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]);
        for h in 0..heads {
            let kvh = h / group;
            for i in 0..lq {
                let row = cu_q[s] + i;
                let at = (row * heads + h) * hd;
                let (q_vec, do_vec, o_vec) = (&q[at..][..hd], &dout[at..][..hd], &out[at..][..hd]);
                let mut delta = R::ZERO; // dout · out
                for c in 0..hd {
                    delta += do_vec[c] * o_vec[c];
                }
                for j in 0..lk - lq + i + 1 {
                    let kv_at = ((cu_k[s] + j) * kv_heads + kvh) * hd;
                    let (k_vec, v_vec) = (&k[kv_at..][..hd], &v[kv_at..][..hd]);
                    let (mut dot_qk, mut dot_dv) = (R::ZERO, R::ZERO);
                    for c in 0..hd {
                        dot_qk += q_vec[c] * k_vec[c];
                        dot_dv += do_vec[c] * v_vec[c];
                    }
                    let p = (dot_qk * scale - lse[row * heads + h]).exp();
                    let ds = p * (dot_dv - delta) * scale;
                    for c in 0..hd {
                        dv[kv_at + c] += p * do_vec[c];
                        dk[kv_at + c] += ds * q_vec[c];
                        dq[at + c] += ds * k_vec[c];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_key_passes_its_value_through_with_zero_lse() {
        let d = AttnDims { heads: 2, kv_heads: 1, head_dim: 2 };
        let (q, k, v) = ([1.0f64, 2.0, 3.0, 4.0], [0.0f64, 0.0], [5.0f64, 6.0]);
        let (mut out, mut lse) = ([0.0; 4], [1.0; 2]);
        attention_forward(&mut out, &mut lse, &q, &k, &v, &[0, 1], &[0, 1], d, 0.5);
        assert_eq!(out, [5.0, 6.0, 5.0, 6.0]);
        assert_eq!(lse, [0.0, 0.0]);
    }

    #[test]
    #[should_panic(expected = "only 1 keys")]
    fn more_queries_than_keys_panics() {
        let d = AttnDims { heads: 1, kv_heads: 1, head_dim: 1 };
        let (mut out, mut lse) = ([0.0f32; 2], [0.0f32; 2]);
        attention_forward(&mut out, &mut lse, &[1.0, 1.0], &[1.0], &[1.0], &[0, 2], &[0, 1], d, 1.0);
    }
}
