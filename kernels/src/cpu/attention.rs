//! CPU causal grouped-query attention over packed sequences. The forward and the `dq` pass run
//! in parallel over query rows, the `dk`/`dv` pass over key rows; every (query, head) pair sees
//! its keys in ascending order and every key sums its queries in ascending order (heads of its
//! group first, as the reference does), so results never depend on how rows are scheduled or how
//! many queries share the call: a decode step (`lq = 1`) reproduces its row of the full pass.

use rayon::prelude::*;

use crate::reference::attention::assert_attention_shapes;
use crate::AttnDims;

use super::attention_avx::Avx;

/// `Σ a_i b_i` in a fixed order: eight interleaved partial sums (vectorisable), combined
/// pairwise, then the tail. Depends only on the two vectors.
#[inline(always)]
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

/// `[dot(a, b_0), …, dot(a, b_3)]` with four independent accumulator sets, so the chains overlap
/// instead of waiting on one another; each result is computed exactly as `dot` computes it (same
/// lanes, same combine, same tail; Rust never fuses the multiply-add), so the bits are `dot`'s.
#[inline(always)]
fn dot4(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    let n = a.len();
    assert!(b.iter().all(|bk| bk.len() == n), "dot4: lengths differ");
    let body = n - n % 8;
    let acc = lanes4(a, b);
    let mut out = [0.0f32; 4];
    for ((o, acc_k), bk) in out.iter_mut().zip(&acc).zip(&b) {
        let mut sum = ((acc_k[0] + acc_k[4]) + (acc_k[1] + acc_k[5])) + ((acc_k[2] + acc_k[6]) + (acc_k[3] + acc_k[7]));
        for (x, y) in a[body..].iter().zip(&bk[body..]) {
            sum += x * y;
        }
        *o = sum;
    }
    out
}

/// The eight lane sums of `dot` for four vectors: AVX when the CPU has it, else the scalar lanes.
fn lanes4(a: &[f32], b: [&[f32]; 4]) -> [[f32; 8]; 4] {
    if let Some(avx) = Avx::detect() {
        return avx.lanes4(a, b);
    }
    let body = a.len() - a.len() % 8;
    let mut acc = [[0.0f32; 8]; 4];
    for c in (0..body).step_by(8) {
        let x = &a[c..c + 8];
        for (acc_k, bk) in acc.iter_mut().zip(&b) {
            let y = &bk[c..c + 8];
            for l in 0..8 {
                acc_k[l] += x[l] * y[l];
            }
        }
    }
    acc
}

/// `dot(a, b_j)` for every `b_j` yielded by `rows` (in order) into `out`, four at a time.
#[inline(always)]
fn dots_into(out: &mut [f32], a: &[f32], row: impl Fn(usize) -> usize, data: &[f32]) {
    let n = a.len();
    let at = |j: usize| &data[row(j)..][..n];
    let quads = out.len() / 4;
    for g in 0..quads {
        let j = 4 * g;
        let d = dot4(a, [at(j), at(j + 1), at(j + 2), at(j + 3)]);
        out[j..j + 4].copy_from_slice(&d);
    }
    for j in 4 * quads..out.len() {
        out[j] = dot(a, at(j));
    }
}

/// `y += alpha · x`, elementwise.
#[inline(always)]
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
    let x = Fwd { q, k, v, cu_q, cu_k, d, scale };
    let avx = Avx::detect();
    out.par_chunks_mut(heads * hd).zip(lse.par_chunks_mut(heads)).enumerate().for_each(|(row, (out_row, lse_row))| {
        match avx {
            Some(avx) => avx.forward_row(&x, row, out_row, lse_row),
            None => forward_row(&x, row, out_row, lse_row),
        }
    });
}

/// What every forward row reads.
pub(super) struct Fwd<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    cu_q: &'a [usize],
    cu_k: &'a [usize],
    d: AttnDims,
    scale: f32,
}

/// Query row `row`: every head's softmax over its visible keys, `out_row (heads, hd)` and
/// `lse_row (heads)`. Inlined into the AVX copy too, so both run the same arithmetic.
#[inline(always)]
pub(super) fn forward_row(x: &Fwd<'_>, row: usize, out_row: &mut [f32], lse_row: &mut [f32]) {
    let Fwd { q, k, v, cu_q, cu_k, d, scale } = *x;
    let AttnDims { heads, kv_heads, head_dim: hd } = d;
    let group = heads / kv_heads;
    let s = seq_of(cu_q, row);
    let (lq, lk) = (cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]);
    let visible = lk - lq + (row - cu_q[s]) + 1;
    let mut scores = vec![0.0f32; visible]; // (visible)
    for h in 0..heads {
        let (kvh, q_vec) = (h / group, &q[(row * heads + h) * hd..][..hd]);
        dots_into(&mut scores, q_vec, |j| ((cu_k[s] + j) * kv_heads + kvh) * hd, k);
        for score in scores.iter_mut() {
            *score *= scale;
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
    // delta (tq, heads) = dout · out per query head.
    let delta: Vec<f32> =
        (0..tq * heads).into_par_iter().map(|i| dot(&dout[i * hd..][..hd], &out[i * hd..][..hd])).collect();
    let x = Bwd { q, k, v, dout, lse, delta: &delta, cu_q, cu_k, d, scale };
    let avx = Avx::detect();
    dq.par_chunks_mut(heads * hd).enumerate().for_each(|(row, dq_row)| match avx {
        Some(avx) => avx.dq_row(&x, row, dq_row),
        None => dq_row_of(&x, row, dq_row),
    });
    dk.par_chunks_mut(kv_heads * hd).zip(dv.par_chunks_mut(kv_heads * hd)).enumerate().for_each(
        |(key, (dk_row, dv_row))| match avx {
            Some(avx) => avx.dkdv_row(&x, key, dk_row, dv_row),
            None => dkdv_row_of(&x, key, dk_row, dv_row),
        },
    );
}

/// What every backward row reads; `delta (tq, heads)` is dout · out per query head.
pub(super) struct Bwd<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    dout: &'a [f32],
    lse: &'a [f32],
    delta: &'a [f32],
    cu_q: &'a [usize],
    cu_k: &'a [usize],
    d: AttnDims,
    scale: f32,
}

/// The softmax weight p and the score gradient ds of one (query, head, key), from dot(q, k),
/// dot(dout, v), the query head's lse and delta.
#[inline(always)]
fn grad_score(qk: f32, dov: f32, lse: f32, delta: f32, scale: f32) -> (f32, f32) {
    let p = (qk * scale - lse).exp();
    (p, p * (dov - delta) * scale)
}

/// `dq_row (heads, hd)` of query row `row`, its keys in ascending order.
#[inline(always)]
pub(super) fn dq_row_of(x: &Bwd<'_>, row: usize, dq_row: &mut [f32]) {
    let Bwd { q, k, v, dout, lse, delta, cu_q, cu_k, d, scale } = *x;
    let AttnDims { heads, kv_heads, head_dim: hd } = d;
    let group = heads / kv_heads;
    dq_row.fill(0.0);
    let s = seq_of(cu_q, row);
    let (lq, lk) = (cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]);
    let visible = lk - lq + (row - cu_q[s]) + 1;
    let (mut qk, mut dov) = (vec![0.0f32; visible], vec![0.0f32; visible]); // (visible) each
    for h in 0..heads {
        let (at, kvh) = ((row * heads + h) * hd, h / group);
        let kv_row = |j: usize| ((cu_k[s] + j) * kv_heads + kvh) * hd;
        dots_into(&mut qk, &q[at..][..hd], kv_row, k);
        dots_into(&mut dov, &dout[at..][..hd], kv_row, v);
        let (l, dl) = (lse[row * heads + h], delta[row * heads + h]);
        for j in 0..visible {
            let (_, ds) = grad_score(qk[j], dov[j], l, dl, scale);
            axpy(&mut dq_row[h * hd..][..hd], ds, &k[kv_row(j)..][..hd]);
        }
    }
}

/// `dk_row`, `dv_row (kv_heads, hd)` of key row `key`, its queries in ascending order (heads of
/// its group first).
#[inline(always)]
pub(super) fn dkdv_row_of(x: &Bwd<'_>, key: usize, dk_row: &mut [f32], dv_row: &mut [f32]) {
    let Bwd { q, k, v, dout, lse, delta, cu_q, cu_k, d, scale } = *x;
    let AttnDims { heads, kv_heads, head_dim: hd } = d;
    let group = heads / kv_heads;
    dk_row.fill(0.0);
    dv_row.fill(0.0);
    let s = seq_of(cu_k, key);
    let (lq, lk) = (cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]);
    // Query i sees key j when j ≤ lk - lq + i.
    let first_query = (key - cu_k[s]).saturating_sub(lk - lq);
    let seen = lq - first_query;
    let (mut qk, mut dov) = (vec![0.0f32; seen], vec![0.0f32; seen]); // (seen) each
    for h in 0..heads {
        let kvh = h / group;
        let q_row = |i: usize| ((cu_q[s] + first_query + i) * heads + h) * hd;
        // dot(q, k) and dot(dout, v) with the operands swapped: products commute exactly.
        dots_into(&mut qk, &k[(key * kv_heads + kvh) * hd..][..hd], q_row, q);
        dots_into(&mut dov, &v[(key * kv_heads + kvh) * hd..][..hd], q_row, dout);
        for i in 0..seen {
            let row = cu_q[s] + first_query + i;
            let (p, ds) = grad_score(qk[i], dov[i], lse[row * heads + h], delta[row * heads + h], scale);
            let at = q_row(i);
            axpy(&mut dv_row[kvh * hd..][..hd], p, &dout[at..][..hd]);
            axpy(&mut dk_row[kvh * hd..][..hd], ds, &q[at..][..hd]);
        }
    }
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
    fn dot4_gives_dots_bits_for_every_length() {
        for n in [1usize, 7, 8, 9, 24, 64, 67] {
            let vecs: Vec<Vec<f32>> =
                (0..5).map(|v| (0..n).map(|i| ((i * 7 + v * 13) % 11) as f32 * 0.37 - 1.3).collect()).collect();
            let got = dot4(&vecs[0], [&vecs[1], &vecs[2], &vecs[3], &vecs[4]]);
            for (k, g) in got.iter().enumerate() {
                assert_eq!(g.to_bits(), dot(&vecs[0], &vecs[k + 1]).to_bits(), "n = {n}, vector {k}");
            }
        }
    }

    /// The AVX row kernels give the portable ones' bits (forward, dq and dk/dv rows), on packed
    /// sequences with grouped heads and a head_dim that is not a multiple of 8.
    #[test]
    fn avx_rows_equal_portable_rows_bit_for_bit() {
        let Some(avx) = Avx::detect() else { return };
        let d = AttnDims { heads: 4, kv_heads: 2, head_dim: 20 };
        let (cu_q, cu_k) = (vec![0usize, 5, 6, 13], vec![0usize, 5, 6, 13]);
        let (tq, tk) = (13, 13);
        let val = |n: usize, salt: usize| -> Vec<f32> {
            (0..n).map(|i| (((i * 37 + salt * 101) % 97) as f32 / 97.0 - 0.5) * 1.7).collect()
        };
        let (q, k, v) = (val(tq * 4 * 20, 1), val(tk * 2 * 20, 2), val(tk * 2 * 20, 3));
        let (dout, lse, delta) = (val(tq * 4 * 20, 4), val(tq * 4, 5), val(tq * 4, 6));
        let fwd = Fwd { q: &q, k: &k, v: &v, cu_q: &cu_q, cu_k: &cu_k, d, scale: 0.3 };
        let bwd =
            Bwd { q: &q, k: &k, v: &v, dout: &dout, lse: &lse, delta: &delta, cu_q: &cu_q, cu_k: &cu_k, d, scale: 0.3 };
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for row in 0..tq {
            let (mut o1, mut l1, mut o2, mut l2) = (vec![0.0; 80], vec![0.0; 4], vec![0.0; 80], vec![0.0; 4]);
            forward_row(&fwd, row, &mut o1, &mut l1);
            avx.forward_row(&fwd, row, &mut o2, &mut l2);
            assert_eq!((bits(&o1), bits(&l1)), (bits(&o2), bits(&l2)), "forward row {row}");
            let (mut g1, mut g2) = (vec![0.0; 80], vec![0.0; 80]);
            dq_row_of(&bwd, row, &mut g1);
            avx.dq_row(&bwd, row, &mut g2);
            assert_eq!(bits(&g1), bits(&g2), "dq row {row}");
        }
        for key in 0..tk {
            let (mut k1, mut v1, mut k2, mut v2) = (vec![0.0; 40], vec![0.0; 40], vec![0.0; 40], vec![0.0; 40]);
            dkdv_row_of(&bwd, key, &mut k1, &mut v1);
            avx.dkdv_row(&bwd, key, &mut k2, &mut v2);
            assert_eq!((bits(&k1), bits(&v1)), (bits(&k2), bits(&v2)), "dk/dv row {key}");
        }
    }

    #[test]
    fn rows_map_to_their_sequence_including_empty_ones() {
        let cu = [0, 2, 2, 5];
        assert_eq!([0, 1, 2, 3, 4].map(|r| seq_of(&cu, r)), [0, 0, 2, 2, 2]);
    }
}
