//! Q6_K: super-blocks of 256 weights in 16 sub-blocks of 16, each with a signed 8-bit scale, and
//! one f16 `d`. A 6-bit quant is 4 low bits from `ql` and 2 high bits from `qh`;
//! `x = d * scale * (q - 32)`. Each 128-element half uses 64 bytes of `ql`, 32 of `qh`, 8 scales.

use super::f16_at;

pub(super) const BLOCK_BYTES: usize = 128 + 64 + 16 + 2;

/// Layout: ql (128) | qh (64) | scales (16 × i8) | d (f16).
pub(super) fn dequantize_block(b: &[u8; BLOCK_BYTES], out: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut out[128 * n..128 * n + 128];
        let scale = |i: usize| d * f32::from(sc[i] as i8);
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = scale(is) * q1 as f32;
            y[l + 32] = scale(is + 2) * q2 as f32;
            y[l + 64] = scale(is + 4) * q3 as f32;
            y[l + 96] = scale(is + 6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};

    #[test]
    fn q6_k_combines_low_nibbles_and_high_bit_pairs_with_signed_scales() {
        let mut block = vec![0u8; 210];
        block[208..].copy_from_slice(&[0x00, 0x34]); // d = 0.25
        let sc = 192;
        block[sc] = 4;
        block[sc + 2] = 0xfe; // -2
        block[sc + 4] = 1;
        block[sc + 6] = 8;
        block[sc + 9] = 3; // second half, sub-block 1 (elements 144..160)
        block[0] = 0x5a; // ql[0]: low 10 (x0), high 5 (x64)
        block[32] = 0x0f; // ql[32]: low 15 (x32), high 0 (x96)
        block[128] = 0xe4; // qh[0]: bits 0-1 = 0 (x0), 2-3 = 1 (x32), 4-5 = 2 (x64), 6-7 = 3 (x96)
        block[64 + 16] = 0x3f; // second half ql[16]: low 15 (x144)
        block[128 + 32 + 16] = 0x03; // second half qh[16]: bits 0-1 = 3 (x144)
        let out = dequantize(GgmlType::Q6K, &block);

        let mut want = vec![0.0f32; 256];
        want[..16].fill(-32.0); // 0.25 * 4 * (0 - 32)
        want[32..48].fill(16.0); // 0.25 * -2 * (0 - 32)
        want[64..80].fill(-8.0); // 0.25 * 1 * (0 - 32)
        want[96..112].fill(-64.0); // 0.25 * 8 * (0 - 32)
        want[144..160].fill(-24.0); // 0.25 * 3 * (0 - 32)
        want[0] = -22.0; // 0.25 * 4 * (10 - 32)
        want[32] = 0.5; // 0.25 * -2 * ((15 | 16) - 32)
        want[64] = 1.25; // 0.25 * 1 * ((5 | 32) - 32)
        want[96] = 32.0; // 0.25 * 8 * ((0 | 48) - 32)
        want[144] = 23.25; // 0.25 * 3 * ((15 | 48) - 32)
        assert_eq!(out, want);
    }
}
