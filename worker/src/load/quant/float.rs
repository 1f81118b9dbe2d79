//! The unquantized ggml types: F32, F16 and BF16, one element per "block".

/// F32: 4 little-endian bytes.
pub(super) fn f32_block(b: &[u8; 4], out: &mut [f32]) {
    out[0] = f32::from_le_bytes(*b);
}

/// F16: IEEE half precision, little-endian.
pub(super) fn f16_block(b: &[u8; 2], out: &mut [f32]) {
    out[0] = half::f16::from_le_bytes(*b).to_f32();
}

/// BF16: the top 16 bits of an f32, little-endian.
pub(super) fn bf16_block(b: &[u8; 2], out: &mut [f32]) {
    out[0] = half::bf16::from_le_bytes(*b).to_f32();
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};

    #[test]
    fn f32_bytes_are_read_little_endian() {
        // 1.0 = 0x3f800000, -2.5 = 0xc0200000.
        let out = dequantize(GgmlType::F32, &[0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0]);
        assert_eq!(out, vec![1.0, -2.5]);
    }

    #[test]
    fn f16_bit_patterns_decode_by_hand() {
        // 0x3c00 = 1.0, 0xc500 = -5.0 (sign, exp 17 → 2^2, mantissa 0.25), 0x0001 = 2^-24 (subnormal).
        let out = dequantize(GgmlType::F16, &[0x00, 0x3c, 0x00, 0xc5, 0x01, 0x00]);
        assert_eq!(out, vec![1.0, -5.0, 2f32.powi(-24)]);
    }

    #[test]
    fn bf16_is_the_high_half_of_an_f32() {
        // 0x3fc0 → f32 0x3fc00000 = 1.5; 0xc2f7 → 0xc2f70000 = -123.5.
        let out = dequantize(GgmlType::BF16, &[0xc0, 0x3f, 0xf7, 0xc2]);
        assert_eq!(out, vec![1.5, -123.5]);
    }
}
