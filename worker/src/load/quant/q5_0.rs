//! Q5_0: blocks of 32 weights, f16 scale `d`, 32 high bits `qh` (u32 LE) and 16 bytes of low
//! nibbles; `x = d * (q - 16)` with q = nibble | high bit << 4. Bit j of `qh` belongs to element j.

use super::f16_at;

pub(super) const BLOCK_BYTES: usize = 2 + 4 + 16;

/// Layout: d (f16) | qh (u32 LE) | qs (16 bytes, two nibbles each).
pub(super) fn dequantize_block(b: &[u8; BLOCK_BYTES], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..].iter().enumerate() {
        let hi0 = ((qh >> j) & 1) << 4;
        let hi1 = ((qh >> (j + 16)) & 1) << 4;
        out[j] = d * ((u32::from(q & 0x0f) | hi0) as i32 - 16) as f32;
        out[j + 16] = d * ((u32::from(q >> 4) | hi1) as i32 - 16) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};

    #[test]
    fn q5_0_high_bits_come_from_qh_by_element_index() {
        // d = 1.0 (0x3c00); qh = bit 0 | bit 17 = 0x00020001.
        // qs[0] = 0x3f: x0 = (15|16)-16 = 15, x16 = 3-16 = -13 (bit 16 clear).
        // qs[1] = 0x52: x1 = 2-16 = -14 (bit 1 clear), x17 = (5|16)-16 = 5.
        // Every other quant 0 with no high bit → -16.
        let mut block = vec![0x00, 0x3c, 0x01, 0x00, 0x02, 0x00, 0x3f, 0x52];
        block.resize(22, 0);
        let out = dequantize(GgmlType::Q5_0, &block);
        let mut want = vec![-16.0f32; 32];
        want[0] = 15.0;
        want[16] = -13.0;
        want[1] = -14.0;
        want[17] = 5.0;
        assert_eq!(out, want);
    }
}
