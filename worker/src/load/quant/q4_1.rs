//! Q4_1: blocks of 32 weights, f16 scale `d` and f16 minimum `m`, 16 bytes of 4-bit quants;
//! `x = d * q + m`. Byte j holds element j (low nibble) and element j + 16 (high nibble).

use super::f16_at;

pub(super) const BLOCK_BYTES: usize = 2 + 2 + 16;

/// Layout: d (f16) | m (f16) | qs (16 bytes, two nibbles each).
pub(super) fn dequantize_block(b: &[u8; BLOCK_BYTES], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for (j, &q) in b[4..].iter().enumerate() {
        out[j] = d * f32::from(q & 0x0f) + m;
        out[j + 16] = d * f32::from(q >> 4) + m;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};

    #[test]
    fn q4_1_is_scale_times_nibble_plus_minimum() {
        // d = 0.5 (0x3800), m = -1.0 (0xbc00).
        // qs[0] = 0xf0: x0 = 0*0.5-1 = -1, x16 = 15*0.5-1 = 6.5.
        // qs[15] = 0x3a: x15 = 10*0.5-1 = 4, x31 = 3*0.5-1 = 0.5. Other bytes 0 → -1.
        let mut block = vec![0x00, 0x38, 0x00, 0xbc, 0xf0];
        block.resize(20, 0);
        block[19] = 0x3a;
        let out = dequantize(GgmlType::Q4_1, &block);
        let mut want = vec![-1.0f32; 32];
        want[16] = 6.5;
        want[15] = 4.0;
        want[31] = 0.5;
        assert_eq!(out, want);
    }
}
