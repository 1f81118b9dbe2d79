//! Q8_0: blocks of 32 weights, one f16 scale `d` and 32 signed bytes; `x = d * q`.

use super::f16_at;

pub(super) const BLOCK_BYTES: usize = 2 + 32;

/// Layout: d (f16) | qs (32 × i8).
pub(super) fn dequantize_block(b: &[u8; BLOCK_BYTES], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..]) {
        *o = d * f32::from(q as i8);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};

    #[test]
    fn q8_0_block_is_scale_times_signed_bytes() {
        // d = 0.5 (f16 0x3800); quants -128, -1, 0, 1, 127 then zeros.
        let mut block = vec![0x00, 0x38, 0x80, 0xff, 0x00, 0x01, 0x7f];
        block.resize(34, 0);
        let out = dequantize(GgmlType::Q8_0, &block);
        let mut want = vec![0.0f32; 32];
        want[..5].copy_from_slice(&[-64.0, -0.5, 0.0, 0.5, 63.5]);
        assert_eq!(out, want);
    }
}
