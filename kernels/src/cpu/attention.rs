//! CPU causal grouped-query attention over packed sequences. The forward and the `dq` pass run
//! in parallel over query rows, the `dk`/`dv` pass over key rows; every (query, head) pair sees
//! its keys in ascending order and every key sums its queries in ascending order (heads of its
//! group first, as the reference does), so results never depend on how rows are scheduled or how
//! many queries share the call: a decode step (`lq = 1`) reproduces its row of the full pass.

use rayon::prelude::*;

use crate::reference::attention::assert_attention_shapes;
use crate::AttnDims;

/// `Σ a_i b_i` in a fixed order: eight interleaved partial sums (vectorisable), combined
/// pairwise, then the tail. Depends only on the two vectors.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ta.iter().zip(tb) {
        sum += x * y;
    }
    sum
}

/// `y += alpha · x`, elementwise.
fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// The sequence that row `row` belongs to, given cumulative offsets `cu`.
fn seq_of(cu: &[usize], row: usize) -> usize {
    cu.partition_point(|&start| start <= row) - 1
}

pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu_q: &[usize],
    cu_k: &[usize],
    d: AttnDims,
    scale: f32,
) {
    let AttnDims { heads, kv_heads, head_dim: hd } = d;
    let (tq, tk) = (q.len() / (heads * hd), k.len() / (kv_heads * hd));
    assert!(
        q.len() == tq * heads * hd && out.len() == q.len(),
        "attention_forward: q, out must be (tq, heads, head_dim)"
    );
    assert!(k.len() == tk * kv_heads * hd && v.len() == k.len(), "attention_forward: k, v must be (tk, kv_heads, hd)");
    assert_eq!(lse.len(), tq * heads, "attention_forward: lse must be (tq, heads)");
    assert_attention_shapes(tq, tk, cu_q, cu_k, d);
    let group = heads / kv_heads;
    out.par_chunks_mut(heads * hd).zip(lse.par_chunks_mut(heads)).enumerate().for_each(|(row, (out_row, lse_row))| {
        let s = seq_of(cu_q, row);
        let (lq, lk) = (cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]);
        let visible = lk - lq + (row - cu_q[s]) + 1;
        let mut scores = vec![0.0f32; visible]; // (visible)
        for h in 0..heads {
            let (kvh, q_vec) = (h / group, &q[(row * heads + h) * hd..][..hd]);
            for (j, score) in scores.iter_mut().enumerate() {
                *score = dot(q_vec, &k[((cu_k[s] + j) * kv_heads + kvh) * hd..][..hd]) * scale;
            }
            let max = scores.iter().fold(scores[0], |a, &b| if b > a { b } else { a });
            let mut sum = 0.0f32;
            for score in scores.iter_mut() {
                *score = (*score - max).exp();
                sum += *score;
            }
            let o = &mut out_row[h * hd..][..hd];
            o.fill(0.0);
            for (j, &e) in scores.iter().enumerate() {
                axpy(o, e / sum, &v[((cu_k[s] + j) * kv_heads + kvh) * hd..][..hd]);
            }
            lse_row[h] = max + sum.ln();
        }
    });
}

pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    cu_q: &[usize],
    cu_k: &[usize],
    d: AttnDims,
    scale: f32,
) {
    let AttnDims { heads, kv_heads, head_dim: hd } = d;
    let (tq, tk) = (q.len() / (heads * hd), k.len() / (kv_heads * hd));
    assert!(q.len() == tq * heads * hd, "attention_backward: q must be (tq, heads, head_dim)");
    assert!(dq.len() == q.len() && dout.len() == q.len() && out.len() == q.len(), "attention_backward: dq/dout/out");
    assert!(k.len() == tk * kv_heads * hd && v.len() == k.len(), "attention_backward: k, v must be (tk, kv_heads, hd)");
    assert!(dk.len() == k.len() && dv.len() == k.len(), "attention_backward: dk, dv must be (tk, kv_heads, hd)");
    assert_eq!(lse.len(), tq * heads, "attention_backward: lse must be (tq, heads)");
    assert_attention_shapes(tq, tk, cu_q, cu_k, d);
    let group = heads / kv_heads;
    // delta (tq, heads) = dout · out per query head.
    let delta: Vec<f32> =
        (0..tq * heads).into_par_iter().map(|i| dot(&dout[i * hd..][..hd], &out[i * hd..][..hd])).collect();
    // ds for query row `row`, head `h`, key row `key` (absolute), and the softmax weight p.
    let grad_score = |row: usize, h: usize, key: usize| -> (f32, f32) {
        let kv_at = (key * kv_heads + h / group) * hd;
        let at = (row * heads + h) * hd;
        let p = (dot(&q[at..][..hd], &k[kv_at..][..hd]) * scale - lse[row * heads + h]).exp();
        let ds = p * (dot(&dout[at..][..hd], &v[kv_at..][..hd]) - delta[row * heads + h]) * scale;
        (p, ds)
    };
    dq.par_chunks_mut(heads * hd).enumerate().for_each(|(row, dq_row)| {
        dq_row.fill(0.0);
        let s = seq_of(cu_q, row);
        let (lq, lk) = (cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]);
        for h in 0..heads {
            for j in 0..lk - lq + (row - cu_q[s]) + 1 {
                let key = cu_k[s] + j;
                let (_, ds) = grad_score(row, h, key);
                axpy(&mut dq_row[h * hd..][..hd], ds, &k[(key * kv_heads + h / group) * hd..][..hd]);
            }
        }
    });
    dk.par_chunks_mut(kv_heads * hd).zip(dv.par_chunks_mut(kv_heads * hd)).enumerate().for_each(
        |(key, (dk_row, dv_row))| {
            dk_row.fill(0.0);
            dv_row.fill(0.0);
            let s = seq_of(cu_k, key);
            let (lq, lk) = (cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]);
            // Query i sees key j when j ≤ lk - lq + i.
            let first_query = (key - cu_k[s]).saturating_sub(lk - lq);
            for h in 0..heads {
                let kvh = h / group;
                for i in first_query..lq {
                    let row = cu_q[s] + i;
                    let (p, ds) = grad_score(row, h, key);
                    let at = (row * heads + h) * hd;
                    axpy(&mut dv_row[kvh * hd..][..hd], p, &dout[at..][..hd]);
                    axpy(&mut dk_row[kvh * hd..][..hd], ds, &q[at..][..hd]);
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_handles_lengths_that_are_not_multiples_of_eight() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b = vec![2.0f32; 19];
        assert_eq!(dot(&a, &b), 2.0 * (0..19).sum::<i32>() as f32);
    }

    #[test]
    fn rows_map_to_their_sequence_including_empty_ones() {
        let cu = [0, 2, 2, 5];
        assert_eq!([0, 1, 2, 3, 4].map(|r| seq_of(&cu, r)), [0, 0, 2, 2, 2]);
    }
}
