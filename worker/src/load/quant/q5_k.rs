//! Q5_K: super-blocks of 256 weights in 8 sub-blocks of 32. Like Q4_K plus 32 bytes `qh` of
//! fifth bits: sub-block s takes its fifth bit from bit s of `qh[l]`;
//! `x = d * scale * (nibble + 16 * bit) - dmin * min`.

use super::f16_at;
use super::kscale::scale_min_k4;

pub(super) const BLOCK_BYTES: usize = 2 + 2 + 12 + 32 + 128;

/// Layout: d (f16) | dmin (f16) | scales (12) | qh (32) | qs (128).
pub(super) fn dequantize_block(b: &[u8; BLOCK_BYTES], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let ql = &qs[32 * c..32 * c + 32];
        let y = &mut out[64 * c..64 * c + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * f32::from((ql[l] & 0x0f) + h1) - min1;
            y[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - min2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};

    #[test]
    fn q5_k_fifth_bits_come_from_qh_bit_by_sub_block() {
        // d = 0.5 (0x3800), dmin = 1.0 (0x3c00).
        let mut block = vec![0x00, 0x38, 0x00, 0x3c];
        let mut scales = [0u8; 12];
        scales[0] = 1; // pair 0 scale 1
        scales[4] = 2; // pair 0 min 2
        scales[1] = 3; // pair 1 scale 3, min 0
        scales[11] = 0x12; // pair 7: scale 2, min 1
        block.extend(scales);
        let mut qh = [0u8; 32];
        qh[0] = 0x83; // bit 0 → sub-block 0, bit 1 → sub-block 1, bit 7 → sub-block 7 (element 0 of each)
        block.extend(qh);
        let mut qs = [0u8; 128];
        qs[0] = 0x21; // x0 = 0.5*1*(1+16) - 2 = 6.5; x32 = 0.5*3*(2+16) - 0 = 27
        qs[96] = 0x40; // x192 = 0.5*0*0 - 0 = 0 (pair 6 is zero); x224 = 0.5*2*(4+16) - 1 = 19
        block.extend(qs);
        let out = dequantize(GgmlType::Q5K, &block);

        let mut want = vec![0.0f32; 256];
        want[..32].fill(-2.0); // pair 0, q = 0
        want[224..256].fill(-1.0); // pair 7, q = 0
        want[0] = 6.5;
        want[32] = 27.0;
        want[224] = 19.0;
        assert_eq!(out, want);
    }
}
