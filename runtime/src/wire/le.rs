//! Packed little-endian arrays: the byte layout of every numeric payload in `tinker_public`
//! (tokens as int32, tensors as float32 / int64 / int32 / bfloat16, offsets and CSR indices as
//! int64). Reading checks only that the length is a whole number of elements; what the values
//! mean is the callers' business.

/// A byte string whose length is not a multiple of the element width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Misaligned {
    pub(crate) len_bytes: usize,
    pub(crate) width_bytes: usize,
}

fn chunks<const W: usize>(bytes: &[u8]) -> Result<impl Iterator<Item = [u8; W]> + '_, Misaligned> {
    if !bytes.len().is_multiple_of(W) {
        return Err(Misaligned { len_bytes: bytes.len(), width_bytes: W });
    }
    Ok(bytes.chunks_exact(W).map(|c| <[u8; W]>::try_from(c).expect("chunks_exact yields exactly W bytes")))
}

pub(crate) fn read_i32(bytes: &[u8]) -> Result<Vec<i32>, Misaligned> {
    Ok(chunks::<4>(bytes)?.map(i32::from_le_bytes).collect())
}

pub(crate) fn read_i64(bytes: &[u8]) -> Result<Vec<i64>, Misaligned> {
    Ok(chunks::<8>(bytes)?.map(i64::from_le_bytes).collect())
}

pub(crate) fn read_f32(bytes: &[u8]) -> Result<Vec<f32>, Misaligned> {
    Ok(chunks::<4>(bytes)?.map(f32::from_le_bytes).collect())
}

/// bfloat16 is the upper half of a float32, so widening is exact.
pub(crate) fn read_bf16_as_f32(bytes: &[u8]) -> Result<Vec<f32>, Misaligned> {
    Ok(chunks::<2>(bytes)?.map(|b| f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)).collect())
}

pub(crate) fn write_i32(values: impl IntoIterator<Item = i32>) -> Vec<u8> {
    values.into_iter().flat_map(i32::to_le_bytes).collect()
}

pub(crate) fn write_i64(values: impl IntoIterator<Item = i64>) -> Vec<u8> {
    values.into_iter().flat_map(i64::to_le_bytes).collect()
}

pub(crate) fn write_f32(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int32_tokens_read_back_as_the_sdk_packs_them() {
        // tinker-protocol.md §4.1: [1, 2, 3, 4] packs to base64 AQAAAAIAAAADAAAABAAAAA==.
        let packed = [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0];
        assert_eq!(read_i32(&packed).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(write_i32([1, 2, 3, 4]), packed.to_vec());
    }

    #[test]
    fn every_width_round_trips_including_negative_and_fractional_values() {
        assert_eq!(read_i32(&write_i32([-5, i32::MAX])).unwrap(), vec![-5, i32::MAX]);
        assert_eq!(read_i64(&write_i64([-1, i64::MIN, 1 << 40])).unwrap(), vec![-1, i64::MIN, 1 << 40]);
        assert_eq!(read_f32(&write_f32([-0.25, 3.5e-8])).unwrap(), vec![-0.25, 3.5e-8]);
    }

    #[test]
    fn bfloat16_widens_to_the_float32_with_the_same_upper_bits() {
        // 1.0f32 = 0x3F80_0000, -2.5f32 = 0xC020_0000.
        let packed = [0x80, 0x3F, 0x20, 0xC0];
        assert_eq!(read_bf16_as_f32(&packed).unwrap(), vec![1.0, -2.5]);
    }

    #[test]
    fn a_length_that_is_not_a_whole_number_of_elements_is_misaligned() {
        assert_eq!(read_i32(&[0; 6]), Err(Misaligned { len_bytes: 6, width_bytes: 4 }));
        assert_eq!(read_i64(&[0; 12]), Err(Misaligned { len_bytes: 12, width_bytes: 8 }));
        assert_eq!(read_bf16_as_f32(&[0; 3]), Err(Misaligned { len_bytes: 3, width_bytes: 2 }));
        assert!(read_f32(&[]).unwrap().is_empty());
    }
}
