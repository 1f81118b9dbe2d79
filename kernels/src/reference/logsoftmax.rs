//! Reference log-softmax over the vocabulary gathered at `k` target ids per row: `lse` is
//! `max + ln Σ exp(x - max)` with a sequential sum, and the backward is
//! `dlogits = Σ_j dlogprobs_j · (onehot(target_j) - softmax)`.

use crate::real::Real;

fn assert_vocab_shapes<R: Real>(logits: &[R], targets: &[u32], rows: usize, vocab: usize, k: usize) {
    assert!(vocab > 0, "logsoftmax_gather: vocab must be positive");
    assert_eq!(logits.len(), rows * vocab, "logsoftmax_gather: logits must be (rows, vocab)");
    assert_eq!(targets.len(), rows * k, "logsoftmax_gather: targets must be (rows, k)");
    for &t in targets {
        assert!((t as usize) < vocab, "logsoftmax_gather: target {t} is not below vocab {vocab}");
    }
}

/// `logprobs (rows, k)`, `lse (rows)` from `logits (rows, vocab)` and `targets (rows, k)`.
pub fn logsoftmax_gather_forward<R: Real>(
    logprobs: &mut [R],
    lse: &mut [R],
    logits: &[R],
    targets: &[u32],
    rows: usize,
    vocab: usize,
    k: usize,
) {
    assert_vocab_shapes(logits, targets, rows, vocab, k);
    assert_eq!(logprobs.len(), rows * k, "logsoftmax_gather_forward: logprobs must be (rows, k)");
    assert_eq!(lse.len(), rows, "logsoftmax_gather_forward: lse must be (rows)");
    for r in 0..rows {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let max = row.iter().fold(row[0], |a, &b| a.max(b));
        let mut sum = R::ZERO;
        for &x in row {
            sum += (x - max).exp();
        }
        let row_lse = max + sum.ln();
        lse[r] = row_lse;
        for j in 0..k {
            logprobs[r * k + j] = row[targets[r * k + j] as usize] - row_lse;
        }
    }
}

/// `dlogits (rows, vocab)` overwritten from `dlogprobs (rows, k)` and the saved `lse (rows)`.
pub fn logsoftmax_gather_backward<R: Real>(
    dlogits: &mut [R],
    dlogprobs: &[R],
    logits: &[R],
    lse: &[R],
    targets: &[u32],
    rows: usize,
    vocab: usize,
    k: usize,
) {
    assert_vocab_shapes(logits, targets, rows, vocab, k);
    assert_eq!(dlogits.len(), rows * vocab, "logsoftmax_gather_backward: dlogits must be (rows, vocab)");
    assert_eq!(dlogprobs.len(), rows * k, "logsoftmax_gather_backward: dlogprobs must be (rows, k)");
    assert_eq!(lse.len(), rows, "logsoftmax_gather_backward: lse must be (rows)");
    for r in 0..rows {
        let mut total = R::ZERO; // Σ_j dlogprobs[r, j]
        for j in 0..k {
            total += dlogprobs[r * k + j];
        }
        for c in 0..vocab {
            dlogits[r * vocab + c] = -((logits[r * vocab + c] - lse[r]).exp() * total);
        }
        for j in 0..k {
            dlogits[r * vocab + targets[r * k + j] as usize] += dlogprobs[r * k + j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_minus_log_vocab() {
        let (mut lp, mut lse) = ([0.0f64; 2], [0.0f64]);
        logsoftmax_gather_forward(&mut lp, &mut lse, &[2.0; 4], &[1, 3], 1, 4, 2);
        assert!((lp[0] + 4.0f64.ln()).abs() < 1e-15 && lp[0] == lp[1]);
        assert!((lse[0] - (2.0 + 4.0f64.ln())).abs() < 1e-15);
    }

    #[test]
    fn backward_rows_sum_to_zero() {
        let logits = [0.3f64, -1.0, 2.0, 0.5];
        let (mut lp, mut lse, mut dl) = ([0.0; 1], [0.0; 1], [0.0; 4]);
        logsoftmax_gather_forward(&mut lp, &mut lse, &logits, &[2], 1, 4, 1);
        logsoftmax_gather_backward(&mut dl, &[1.5], &logits, &lse, &[2], 1, 4, 1);
        assert!(dl.iter().sum::<f64>().abs() < 1e-12);
        assert!(dl[2] > 0.0 && dl[0] < 0.0);
    }
}
