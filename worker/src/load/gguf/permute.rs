//! Undoing llama.cpp's Q/K row permutation for Llama-architecture GGUFs.
//!
//! llama.cpp's converter reorders each head's rows of `q_proj`/`k_proj` from HF's "rotate half"
//! layout (first half of the head, then second half) to interleaved pairs, so that its RoPE can
//! rotate adjacent elements. Per head of `head_dim` rows: GGUF row `2 * j + t` holds HF row
//! `t * head_dim / 2 + j`. Qwen-family GGUFs are not permuted.

/// Reorders the rows of a `(rows, cols)` row-major weight from GGUF to HF layout, with `n_heads`
/// heads of `rows / n_heads` rows each.
///
/// # Panics
/// When `rows` is not a multiple of `2 * n_heads` or `data` is not `rows * cols` long (the caller
/// checks shapes against the config first).
pub fn unpermute_rows(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
    assert!(n_heads > 0 && rows.is_multiple_of(2 * n_heads), "{rows} rows do not split into {n_heads} heads of pairs");
    assert_eq!(data.len(), rows * cols, "weight data does not match ({rows}, {cols})");
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0.0f32; data.len()]; // (rows, cols)
    for h in 0..n_heads {
        for j in 0..half {
            for t in 0..2 {
                let src = h * head_dim + 2 * j + t;
                let dst = h * head_dim + t * half + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_pairs_become_halves_per_head() {
        // 2 heads of head_dim 4, one column: GGUF rows per head are [a0, b0, a1, b1] where a is the
        // first HF half and b the second; HF wants [a0, a1, b0, b1].
        let gguf = [10.0, 20.0, 11.0, 21.0, 30.0, 40.0, 31.0, 41.0];
        let hf = unpermute_rows(&gguf, 8, 1, 2);
        assert_eq!(hf, vec![10.0, 11.0, 20.0, 21.0, 30.0, 31.0, 40.0, 41.0]);
    }

    #[test]
    fn whole_rows_move_together() {
        let gguf = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]; // (4, 2), one head
        let hf = unpermute_rows(&gguf, 4, 2, 1);
        assert_eq!(hf, vec![1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 7.0, 8.0]);
    }
}
