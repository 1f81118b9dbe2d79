//! `PackedBatch`: variable-length sequences laid end to end (no padding), with the cumulative
//! offsets (`cu_seqlens`) that attention and every segmented gradient reduction use. Building one
//! checks only what needs no model (lengths, k); vocab and position limits are checked by
//! `Model::forward`, which knows the config.

use super::ModelError;

/// Sequences packed into one token axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedBatch {
    pub tokens: Vec<u32>,       // (T)
    pub positions: Vec<u32>,    // (T) position of each token within its sequence, from 0
    pub cu_seqlens: Vec<usize>, // (S + 1) cumulative token offsets, [0, .., T]
    pub targets: Vec<u32>,      // (T, k) the ids whose logprobs are gathered at each token
    pub k: usize,
}

impl PackedBatch {
    /// Packs `seqs`, each `(tokens (len), targets (len × k))`.
    ///
    /// # Errors
    /// `ModelError` when there are no sequences, a sequence is empty, `k` is 0, or a sequence's
    /// target count is not `len × k`.
    pub fn new(seqs: &[(&[u32], &[u32])], k: usize) -> Result<Self, ModelError> {
        if k == 0 {
            return Err(ModelError::ZeroTargetsPerToken);
        }
        if seqs.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        let total: usize = seqs.iter().map(|(t, _)| t.len()).sum();
        let mut batch = PackedBatch {
            tokens: Vec::with_capacity(total),
            positions: Vec::with_capacity(total),
            cu_seqlens: Vec::with_capacity(seqs.len() + 1),
            targets: Vec::with_capacity(total * k),
            k,
        };
        batch.cu_seqlens.push(0);
        for (seq, (tokens, targets)) in seqs.iter().enumerate() {
            if tokens.is_empty() {
                return Err(ModelError::EmptySequence { seq });
            }
            if targets.len() != tokens.len() * k {
                return Err(ModelError::TargetLength {
                    seq,
                    tokens: tokens.len(),
                    targets: targets.len(),
                    expected: tokens.len() * k,
                });
            }
            batch.tokens.extend_from_slice(tokens);
            // A sequence longer than u32::MAX positions cannot pass the max_position_embeddings
            // check later, so saturating here only defers that error to `forward`.
            batch.positions.extend((0..tokens.len()).map(|p| u32::try_from(p).unwrap_or(u32::MAX)));
            batch.targets.extend_from_slice(targets);
            batch.cu_seqlens.push(batch.tokens.len());
        }
        assert_eq!(batch.cu_seqlens.last().copied(), Some(batch.tokens.len()), "cu_seqlens must end at T");
        assert_eq!(batch.targets.len(), batch.tokens.len() * k, "targets must be (T, k)");
        Ok(batch)
    }

    /// Number of packed tokens `T`.
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Number of sequences `S`.
    pub fn num_seqs(&self) -> usize {
        self.cu_seqlens.len() - 1
    }

    /// The token range of sequence `s`.
    pub fn seq_range(&self, s: usize) -> std::ops::Range<usize> {
        self.cu_seqlens[s]..self.cu_seqlens[s + 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_two_sequences_restarts_positions_and_offsets_rows() {
        let b = PackedBatch::new(&[(&[5, 6, 7], &[6, 7, 8]), (&[9, 10], &[10, 11])], 1).unwrap();
        assert_eq!(b.tokens, vec![5, 6, 7, 9, 10]);
        assert_eq!(b.positions, vec![0, 1, 2, 0, 1]);
        assert_eq!(b.cu_seqlens, vec![0, 3, 5]);
        assert_eq!(b.targets, vec![6, 7, 8, 10, 11]);
        assert_eq!(b.num_seqs(), 2);
        assert_eq!(b.seq_range(1), 3..5);
    }

    #[test]
    fn malformed_batches_are_typed_errors() {
        assert_eq!(PackedBatch::new(&[], 1).unwrap_err(), ModelError::EmptyBatch);
        assert_eq!(PackedBatch::new(&[(&[1], &[2]), (&[], &[])], 1).unwrap_err(), ModelError::EmptySequence { seq: 1 });
        assert_eq!(PackedBatch::new(&[(&[1], &[2])], 0).unwrap_err(), ModelError::ZeroTargetsPerToken);
        assert_eq!(
            PackedBatch::new(&[(&[1, 2], &[2, 3, 4])], 2).unwrap_err(),
            ModelError::TargetLength { seq: 0, tokens: 2, targets: 3, expected: 4 }
        );
    }
}
