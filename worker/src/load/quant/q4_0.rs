//! Q4_0: blocks of 32 weights, one f16 scale `d` and 16 bytes of 4-bit quants;
//! `x = d * (q - 8)`. Byte j holds element j (low nibble) and element j + 16 (high nibble).

use super::f16_at;

pub(super) const BLOCK_BYTES: usize = 2 + 16;

/// Layout: d (f16) | qs (16 bytes, two nibbles each).
pub(super) fn dequantize_block(b: &[u8; BLOCK_BYTES], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..].iter().enumerate() {
        out[j] = d * (i32::from(q & 0x0f) - 8) as f32;
        out[j + 16] = d * (i32::from(q >> 4) - 8) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};

    #[test]
    fn q4_0_nibbles_are_offset_by_eight_and_split_across_halves() {
        // d = 2.0 (0x4000). qs[0] = 0x0f: x0 = (15-8)*2 = 14, x16 = (0-8)*2 = -16.
        // qs[1] = 0x81: x1 = (1-8)*2 = -14, x17 = (8-8)*2 = 0. Every other byte 0x88 → 0.
        let mut block = vec![0x00, 0x40, 0x0f, 0x81];
        block.resize(18, 0x88);
        let out = dequantize(GgmlType::Q4_0, &block);
        let mut want = vec![0.0f32; 32];
        want[0] = 14.0;
        want[16] = -16.0;
        want[1] = -14.0;
        assert_eq!(out, want);
    }
}
