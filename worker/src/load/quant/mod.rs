//! ggml tensor types and their dequantization to f32.
//!
//! Each block format lives in its own file with a `dequantize_block(&[u8; BYTES], &mut [f32])`
//! that follows ggml's reference C code; this file maps type ids to formats and runs a format
//! over a whole tensor. Byte counts are checked by the caller-facing [`dequantize`], so the
//! per-block functions only see whole blocks.

mod float;
mod kscale;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_k;
mod q6_k;
mod q8_0;

use rayon::prelude::*;

/// The ggml tensor types lathe can dequantize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// The name ggml gives a type id, for error messages ("unknown" for ids ggml does not define).
pub fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16..=23 | 29 => "IQ (importance-matrix quant)",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

impl GgmlType {
    /// The type for a ggml type id, `None` when lathe cannot dequantize it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => q4_0::BLOCK_BYTES,
            GgmlType::Q4_1 => q4_1::BLOCK_BYTES,
            GgmlType::Q5_0 => q5_0::BLOCK_BYTES,
            GgmlType::Q8_0 => q8_0::BLOCK_BYTES,
            GgmlType::Q4K => q4_k::BLOCK_BYTES,
            GgmlType::Q5K => q5_k::BLOCK_BYTES,
            GgmlType::Q6K => q6_k::BLOCK_BYTES,
        }
    }

    /// Bytes that `n_elems` elements take, `None` when `n_elems` is not a whole number of blocks
    /// or the count overflows.
    pub fn bytes_for(self, n_elems: u64) -> Option<u64> {
        let per = self.block_elems() as u64;
        if !n_elems.is_multiple_of(per) {
            return None;
        }
        (n_elems / per).checked_mul(self.block_bytes() as u64)
    }
}

/// Dequantizes `bytes` (whole blocks of `ty`) into f32, one block per output chunk.
///
/// # Panics
/// When `bytes.len()` is not a whole number of blocks: callers size the slice with
/// [`GgmlType::bytes_for`], so a mismatch is a programmer error.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let (elems, nbytes) = (ty.block_elems(), ty.block_bytes());
    assert_eq!(bytes.len() % nbytes, 0, "{ty:?} data of {} bytes is not whole blocks of {nbytes}", bytes.len());
    let n_blocks = bytes.len() / nbytes;
    let mut out = vec![0.0f32; n_blocks * elems]; // (n_blocks * block_elems,)
    match ty {
        GgmlType::F32 => run::<4>(bytes, &mut out, 1, float::f32_block),
        GgmlType::F16 => run::<2>(bytes, &mut out, 1, float::f16_block),
        GgmlType::BF16 => run::<2>(bytes, &mut out, 1, float::bf16_block),
        GgmlType::Q4_0 => run::<{ q4_0::BLOCK_BYTES }>(bytes, &mut out, 32, q4_0::dequantize_block),
        GgmlType::Q4_1 => run::<{ q4_1::BLOCK_BYTES }>(bytes, &mut out, 32, q4_1::dequantize_block),
        GgmlType::Q5_0 => run::<{ q5_0::BLOCK_BYTES }>(bytes, &mut out, 32, q5_0::dequantize_block),
        GgmlType::Q8_0 => run::<{ q8_0::BLOCK_BYTES }>(bytes, &mut out, 32, q8_0::dequantize_block),
        GgmlType::Q4K => run::<{ q4_k::BLOCK_BYTES }>(bytes, &mut out, 256, q4_k::dequantize_block),
        GgmlType::Q5K => run::<{ q5_k::BLOCK_BYTES }>(bytes, &mut out, 256, q5_k::dequantize_block),
        GgmlType::Q6K => run::<{ q6_k::BLOCK_BYTES }>(bytes, &mut out, 256, q6_k::dequantize_block),
    }
    out
}

/// Runs `block_fn` over every (block bytes, output chunk) pair, in parallel over groups of blocks.
fn run<const B: usize>(bytes: &[u8], out: &mut [f32], elems: usize, block_fn: fn(&[u8; B], &mut [f32])) {
    const BLOCKS_PER_TASK: usize = 1024;
    out.par_chunks_mut(elems * BLOCKS_PER_TASK).zip(bytes.par_chunks(B * BLOCKS_PER_TASK)).for_each(|(o, b)| {
        for (ob, bb) in o.chunks_exact_mut(elems).zip(b.chunks_exact(B)) {
            let block: &[u8; B] = bb.try_into().expect("chunks_exact yields B-byte chunks");
            block_fn(block, ob);
        }
    });
}

/// Reads the little-endian f16 at `bytes[at..at + 2]` as f32.
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_require_whole_blocks() {
        assert_eq!(GgmlType::Q4_0.bytes_for(64), Some(36));
        assert_eq!(GgmlType::Q4_0.bytes_for(33), None);
        assert_eq!(GgmlType::Q6K.bytes_for(512), Some(420));
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
    }

    #[test]
    fn only_the_listed_type_ids_are_supported() {
        let supported: Vec<u32> = (0..64).filter(|&id| GgmlType::from_id(id).is_some()).collect();
        assert_eq!(supported, vec![0, 1, 2, 3, 6, 8, 12, 13, 14, 30]);
        assert_eq!(ggml_type_name(7), "Q5_1");
    }

    #[test]
    fn dequantize_keeps_blocks_in_order_across_parallel_tasks() {
        // 3000 Q8_0 blocks (more than one task), block i has scale 1 and every quant = i % 100.
        let mut bytes = Vec::new();
        for i in 0..3000u32 {
            bytes.extend(half::f16::from_f32(1.0).to_le_bytes());
            bytes.extend([(i % 100) as u8; 32]);
        }
        let out = dequantize(GgmlType::Q8_0, &bytes);
        assert_eq!(out.len(), 3000 * 32);
        for i in [0usize, 1023, 1024, 2999] {
            assert_eq!(out[i * 32], (i % 100) as f32);
            assert_eq!(out[i * 32 + 31], (i % 100) as f32);
        }
    }
}
