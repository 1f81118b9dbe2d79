//! Reference token embedding: a row gather forward and a row scatter-add backward, in token order.

use crate::real::Real;

/// `out (ids.len(), dim) = table (vocab, dim)[ids]`. Panics on an id ≥ vocab.
pub fn embedding_forward<R: Real>(out: &mut [R], table: &[R], ids: &[u32], vocab: usize, dim: usize) {
    assert_eq!(table.len(), vocab * dim, "embedding_forward: table must be (vocab, dim)");
    assert_eq!(out.len(), ids.len() * dim, "embedding_forward: out must be (ids.len(), dim)");
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert!(id < vocab, "embedding_forward: token id {id} is not below vocab {vocab}");
        out[t * dim..(t + 1) * dim].copy_from_slice(&table[id * dim..(id + 1) * dim]);
    }
}

/// `dtable (vocab, dim) +=` each row of `dout (ids.len(), dim)` at its id, in token order.
pub fn embedding_backward<R: Real>(dtable: &mut [R], dout: &[R], ids: &[u32], vocab: usize, dim: usize) {
    assert_eq!(dtable.len(), vocab * dim, "embedding_backward: dtable must be (vocab, dim)");
    assert_eq!(dout.len(), ids.len() * dim, "embedding_backward: dout must be (ids.len(), dim)");
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert!(id < vocab, "embedding_backward: token id {id} is not below vocab {vocab}");
        for c in 0..dim {
            dtable[id * dim + c] += dout[t * dim + c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_adds_repeated_ids_into_the_same_row() {
        let mut dtable = [0.0f32; 6]; // (3, 2)
        embedding_backward(&mut dtable, &[1.0, 2.0, 3.0, 4.0], &[2, 2], 3, 2);
        assert_eq!(dtable, [0.0, 0.0, 0.0, 0.0, 4.0, 6.0]);
    }

    #[test]
    #[should_panic(expected = "not below vocab")]
    fn forward_panics_on_an_out_of_range_id() {
        let mut out = [0.0f32; 2];
        embedding_forward(&mut out, &[0.0; 4], &[2], 2, 2);
    }
}
