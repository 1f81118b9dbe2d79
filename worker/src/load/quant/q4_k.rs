//! Q4_K: super-blocks of 256 weights in 8 sub-blocks of 32. f16 `d` and `dmin`, 12 bytes of
//! packed 6-bit (scale, min) pairs, 128 bytes of nibbles; `x = d * scale * q - dmin * min`.
//! Each 32-byte run of `qs` feeds 64 outputs: low nibbles to sub-block 2c, high to 2c + 1.

use super::f16_at;
use super::kscale::scale_min_k4;

pub(super) const BLOCK_BYTES: usize = 2 + 2 + 12 + 128;

/// Layout: d (f16) | dmin (f16) | scales (12) | qs (128).
pub(super) fn dequantize_block(b: &[u8; BLOCK_BYTES], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let q = &qs[32 * c..32 * c + 32];
        let y = &mut out[64 * c..64 * c + 64];
        for l in 0..32 {
            y[l] = d1 * f32::from(q[l] & 0x0f) - min1;
            y[l + 32] = d2 * f32::from(q[l] >> 4) - min2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};

    #[test]
    fn q4_k_block_uses_both_scale_encodings() {
        // d = 1.0 (0x3c00), dmin = 0.5 (0x3800).
        let mut block = vec![0x00, 0x3c, 0x00, 0x38];
        let mut scales = [0u8; 12];
        scales[0] = 0xc2; // pair 0 scale 2; top bits → pair 4 scale += 48
        scales[4] = 0x43; // pair 0 min 3; top bits → pair 4 min += 16
        scales[1] = 0x04; // pair 1 scale 4
        scales[5] = 0x01; // pair 1 min 1
        scales[8] = 0x75; // pair 4: scale 5|48 = 53, min 7|16 = 23
        scales[9] = 0x21; // pair 5: scale 1, min 2
        block.extend(scales);
        let mut qs = [0u8; 128];
        qs[0] = 0xa7; // x0 = 1*2*7 - 0.5*3 = 12.5; x32 = 1*4*10 - 0.5*1 = 39.5
        qs[64] = 0xf9; // x128 = 53*9 - 0.5*23 = 465.5; x160 = 1*15 - 0.5*2 = 14
        block.extend(qs);
        let out = dequantize(GgmlType::Q4K, &block);

        let mut want = vec![0.0f32; 256];
        want[..32].fill(-1.5); // pair 0, q = 0
        want[32..64].fill(-0.5); // pair 1, q = 0
        want[128..160].fill(-11.5); // pair 4, q = 0
        want[160..192].fill(-1.0); // pair 5, q = 0
        want[0] = 12.5;
        want[32] = 39.5;
        want[128] = 465.5;
        want[160] = 14.0;
        assert_eq!(out, want);
    }
}
