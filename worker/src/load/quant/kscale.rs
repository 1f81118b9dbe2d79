//! The packed 6-bit (scale, min) pairs shared by Q4_K and Q5_K: 12 bytes hold 8 pairs.
//! Pairs 0..4 are the low 6 bits of bytes j and j + 4; pairs 4..8 take their low 4 bits from
//! byte j + 4 and their top 2 bits from the spare high bits of bytes j - 4 and j.

/// The (scale, min) pair `j` (0..8) of a 12-byte K-quant scale block.
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let scale = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        let min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (scale, min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_pairs_borrow_the_spare_top_bits_of_the_lower_bytes() {
        let mut q = [0u8; 12];
        q[0] = 0b1100_0010; // scale 0 = 2, top bits 3 → scale 4 gets 48
        q[4] = 0b0100_0011; // min 0 = 3, top bits 1 → min 4 gets 16
        q[8] = 0x75; // scale 4 low = 5, min 4 low = 7
        assert_eq!(scale_min_k4(0, &q), (2, 3));
        assert_eq!(scale_min_k4(4, &q), (5 | 48, 7 | 16));
        assert_eq!(scale_min_k4(1, &q), (0, 0));
    }
}
