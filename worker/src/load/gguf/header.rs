//! The GGUF container (v2/v3): header, metadata key/values, tensor infos and the aligned data
//! section, parsed from bytes with a bounds check on every read.
//!
//! Hostile input is expected: every count is checked against the bytes that remain before
//! anything is allocated, arrays nest at most [`MAX_ARRAY_DEPTH`] deep, and every tensor's byte
//! range is checked (with overflow-safe arithmetic) against the end of the file.

use std::collections::BTreeSet;

use super::super::error::LoadError;
use super::super::quant::{ggml_type_name, GgmlType};
use super::value::{GgufMetadata, GgufValue};

const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal GGUF; nothing real nests deeper than this.
pub const MAX_ARRAY_DEPTH: usize = 3;

/// One tensor as the GGUF header describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (ne0) is the fastest-varying (for a linear weight, in_features).
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// The element count (overflow-checked when the header was parsed).
    pub fn n_elems(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header; tensor data stays in the caller's byte buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: GgufMetadata,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_start: usize,
}

/// Parses the header of the GGUF file in `bytes` and checks every tensor's byte range.
///
/// # Errors
/// `LoadError::Gguf*` naming what is malformed: magic, version, a truncated field, an
/// implausible count, a bad value type, duplicate tensor names, bad alignment or offsets.
pub fn parse(bytes: &[u8]) -> Result<GgufFile, LoadError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.take(4, "magic")?;
    if magic != MAGIC {
        return Err(LoadError::GgufMagic { found: [magic[0], magic[1], magic[2], magic[3]] });
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(LoadError::GgufVersion(version));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    // Minimum encoded sizes: a KV is key length (8) + type (4) + a 1-byte value; a tensor info is
    // name length (8) + n_dims (4) + type (4) + offset (8).
    c.check_count(n_kv, 13, "metadata key/values")?;
    let mut metadata = GgufMetadata::default();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let value_type = c.u32("metadata value type")?;
        let value = c.value(value_type, 0)?;
        if metadata.values.insert(key.clone(), value).is_some() {
            return Err(LoadError::GgufCorrupt(format!("metadata key `{key}` appears twice")));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => v
            .as_u64()
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| LoadError::GgufCorrupt(format!("general.alignment {v:?} is not a power of two")))?,
    };
    c.check_count(n_tensors, 24, "tensor infos")?;
    let mut tensors = Vec::new();
    let mut names = BTreeSet::new();
    for _ in 0..n_tensors {
        let info = c.tensor_info()?;
        if !names.insert(info.name.clone()) {
            return Err(LoadError::GgufCorrupt(format!("tensor `{}` appears twice", info.name)));
        }
        if info.offset % alignment != 0 {
            return Err(tensor_err(&info.name, format!("offset {} is not a multiple of {alignment}", info.offset)));
        }
        tensors.push(info);
    }
    // A file without tensors may end right after its header; tensors' ranges are checked below.
    let data_start = align_up(c.pos as u64, alignment)
        .and_then(|p| usize::try_from(p).ok())
        .ok_or_else(|| LoadError::GgufCorrupt(format!("alignment {alignment} overflows the data section offset")))?;
    let file = GgufFile { version, metadata, tensors, alignment, data_start };
    for info in &file.tensors {
        if let Some(ty) = GgmlType::from_id(info.type_id) {
            file.data_range(info, ty, bytes.len())?;
        }
    }
    Ok(file)
}

impl GgufFile {
    /// The tensor's type and bytes inside `bytes` (the whole file).
    ///
    /// # Errors
    /// `GgufTensorType` for a type lathe cannot dequantize, `GgufTensor` when its size is not
    /// whole blocks or its data lies outside the file.
    pub fn tensor_data<'a>(&self, bytes: &'a [u8], info: &GgufTensorInfo) -> Result<(GgmlType, &'a [u8]), LoadError> {
        let ty = GgmlType::from_id(info.type_id).ok_or_else(|| LoadError::GgufTensorType {
            tensor: info.name.clone(),
            type_id: info.type_id,
            type_name: ggml_type_name(info.type_id),
        })?;
        let (start, end) = self.data_range(info, ty, bytes.len())?;
        Ok((ty, &bytes[start..end]))
    }

    fn data_range(&self, info: &GgufTensorInfo, ty: GgmlType, file_len: usize) -> Result<(usize, usize), LoadError> {
        let per_block = ty.block_elems() as u64;
        if info.dims.first().is_some_and(|ne0| ne0 % per_block != 0) {
            return Err(tensor_err(
                &info.name,
                format!("row length {} is not a multiple of the {ty:?} block size {per_block}", info.dims[0]),
            ));
        }
        let nbytes = ty
            .bytes_for(info.n_elems())
            .ok_or_else(|| tensor_err(&info.name, format!("{} elements overflow the byte count", info.n_elems())))?;
        let start = (self.data_start as u64).checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(nbytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= file_len as u64 => Ok((s as usize, e as usize)),
            _ => Err(tensor_err(
                &info.name,
                format!(
                    "data at offset {} + {} of {nbytes} bytes runs past the end of the {file_len}-byte file",
                    self.data_start, info.offset
                ),
            )),
        }
    }
}

fn tensor_err(name: &str, why: String) -> LoadError {
    LoadError::GgufTensor { tensor: name.to_string(), why }
}

fn align_up(pos: u64, alignment: u64) -> Option<u64> {
    pos.checked_add(alignment - 1).map(|p| p / alignment * alignment)
}

/// A read position in the file, checking each read against the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], LoadError> {
        let truncated = LoadError::GgufTruncated { what, offset: self.pos, needed: n, len: self.bytes.len() };
        let n = usize::try_from(n).map_err(|_| truncated)?;
        if n > self.remaining() {
            return Err(LoadError::GgufTruncated { what, offset: self.pos, needed: n as u64, len: self.bytes.len() });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], LoadError> {
        let b = self.take(N as u64, what)?;
        Ok(b.try_into().expect("take returned exactly N bytes"))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuses `count` items of at least `min_bytes` each when the file cannot hold them, so a
    /// hostile count never drives an allocation or a long loop.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<(), LoadError> {
        match count.checked_mul(min_bytes) {
            Some(need) if need <= self.remaining() as u64 => Ok(()),
            _ => Err(LoadError::GgufCorrupt(format!(
                "header claims {count} {what} at offset {}, more than the {} remaining bytes can hold",
                self.pos,
                self.remaining()
            ))),
        }
    }

    fn string(&mut self, what: &'static str) -> Result<String, LoadError> {
        let len = self.u64(what)?;
        let at = self.pos;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| LoadError::GgufCorrupt(format!("{what} at offset {at} is not valid UTF-8")))
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<GgufValue, LoadError> {
        const WHAT: &str = "metadata value";
        Ok(match value_type {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(WHAT)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(WHAT)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(WHAT)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(WHAT)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(WHAT)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(WHAT)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(WHAT)?)),
            7 => match self.array::<1>(WHAT)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(LoadError::GgufCorrupt(format!("bool value {b} at offset {}", self.pos - 1))),
            },
            8 => GgufValue::Str(self.string(WHAT)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(LoadError::GgufCorrupt(format!(
                        "arrays nested deeper than {MAX_ARRAY_DEPTH} at offset {}",
                        self.pos
                    )));
                }
                let elem_type = self.u32("array element type")?;
                let count = self.u64("array length")?;
                let min_bytes = match elem_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(bad_type(other, self.pos)),
                };
                self.check_count(count, min_bytes, "array elements")?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_type, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(WHAT)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(WHAT)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(WHAT)?)),
            other => return Err(bad_type(other, self.pos)),
        })
    }

    fn tensor_info(&mut self) -> Result<GgufTensorInfo, LoadError> {
        let name = self.string("tensor name")?;
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(tensor_err(&name, format!("{n_dims} dimensions (ggml allows at most {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64("tensor dimension")?);
        }
        if dims.contains(&0) {
            return Err(tensor_err(&name, format!("dimensions {dims:?} include a zero")));
        }
        if dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).is_none() {
            return Err(tensor_err(&name, format!("dimensions {dims:?} overflow the element count")));
        }
        let type_id = self.u32("tensor type")?;
        let offset = self.u64("tensor offset")?;
        Ok(GgufTensorInfo { name, dims, type_id, offset })
    }
}

fn bad_type(value_type: u32, offset: usize) -> LoadError {
    LoadError::GgufCorrupt(format!("unknown metadata value type {value_type} near offset {offset}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds GGUF bytes field by field.
    #[derive(Default)]
    struct Builder(Vec<u8>);

    impl Builder {
        fn u32(mut self, v: u32) -> Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn str(self, s: &str) -> Self {
            let mut b = self.u64(s.len() as u64);
            b.0.extend(s.as_bytes());
            b
        }
        fn header(n_tensors: u64, n_kv: u64) -> Self {
            let mut b = Builder::default();
            b.0.extend(b"GGUF");
            b.u32(3).u64(n_tensors).u64(n_kv)
        }
    }

    #[test]
    fn one_tensor_file_parses_with_aligned_data() {
        // One KV (general.name = "t"), one F32 tensor of dims [2] at offset 0.
        let mut b = Builder::header(1, 1).str("general.name").u32(8).str("t");
        b = b.str("w").u32(1).u64(2).u32(0).u64(0);
        let header_len = b.0.len();
        let data_start = header_len.div_ceil(32) * 32;
        b.0.resize(data_start, 0);
        b.0.extend(1.5f32.to_le_bytes());
        b.0.extend((-2.0f32).to_le_bytes());
        let f = parse(&b.0).unwrap();
        assert_eq!(f.data_start, data_start);
        assert_eq!(f.metadata.get_str("general.name").unwrap(), "t");
        let (ty, data) = f.tensor_data(&b.0, &f.tensors[0]).unwrap();
        assert_eq!(ty, GgmlType::F32);
        assert_eq!(data.len(), 8);
    }

    #[test]
    fn every_metadata_value_type_round_trips() {
        let mut b = Builder::header(0, 13);
        let scalars: [(&str, u32, &[u8]); 11] = [
            ("u8", 0, &[200]),
            ("i8", 1, &[0xff]),
            ("u16", 2, &[0x34, 0x12]),
            ("i16", 3, &[0xfe, 0xff]),
            ("u32", 4, &[1, 0, 0, 0]),
            ("i32", 5, &[0xfd, 0xff, 0xff, 0xff]),
            ("f32", 6, &[0, 0, 0xc0, 0x3f]),
            ("bool", 7, &[1]),
            ("u64", 10, &[5, 0, 0, 0, 0, 0, 0, 0]),
            ("i64", 11, &[0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            ("f64", 12, &[0, 0, 0, 0, 0, 0, 0x04, 0x40]),
        ];
        for (key, ty, raw) in scalars {
            b = b.str(key).u32(ty);
            b.0.extend(raw);
        }
        b = b.str("str").u32(8).str("hé");
        b = b.str("arr").u32(9).u32(9).u64(2); // array of 2 arrays of u8
        b = b.u32(0).u64(1);
        b.0.push(7);
        b = b.u32(0).u64(0);
        let f = parse(&b.0).unwrap();
        let m = &f.metadata;
        assert_eq!(m.get("u8"), Some(&GgufValue::U8(200)));
        assert_eq!(m.get("i8"), Some(&GgufValue::I8(-1)));
        assert_eq!(m.get("u16"), Some(&GgufValue::U16(0x1234)));
        assert_eq!(m.get("i16"), Some(&GgufValue::I16(-2)));
        assert_eq!(m.get("u32"), Some(&GgufValue::U32(1)));
        assert_eq!(m.get("i32"), Some(&GgufValue::I32(-3)));
        assert_eq!(m.get("f32"), Some(&GgufValue::F32(1.5)));
        assert_eq!(m.get("bool"), Some(&GgufValue::Bool(true)));
        assert_eq!(m.get("u64"), Some(&GgufValue::U64(5)));
        assert_eq!(m.get("i64"), Some(&GgufValue::I64(-4)));
        assert_eq!(m.get("f64"), Some(&GgufValue::F64(2.5)));
        assert_eq!(m.get("str"), Some(&GgufValue::Str("hé".into())));
        let want = GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(7)]), GgufValue::Array(vec![])]);
        assert_eq!(m.get("arr"), Some(&want));
    }

    #[test]
    fn absurd_counts_are_refused_before_allocating() {
        let err = parse(&Builder::header(1 << 60, 0).0).unwrap_err().to_string();
        assert!(err.contains("claims 1152921504606846976 tensor infos"), "{err}");
        let err = parse(&Builder::header(0, u64::MAX).0).unwrap_err().to_string();
        assert!(err.contains("metadata key/values"), "{err}");
        let b = Builder::header(0, 1).str("k").u32(9).u32(10).u64(1 << 61);
        let err = parse(&b.0).unwrap_err().to_string();
        assert!(err.contains("array elements"), "{err}");
        let b = Builder::header(0, 1).str("k").u32(8).u64(u64::MAX);
        assert!(matches!(parse(&b.0), Err(LoadError::GgufTruncated { .. })));
    }

    #[test]
    fn deeply_nested_arrays_are_refused() {
        let mut b = Builder::header(0, 1).str("k").u32(9);
        for _ in 0..10 {
            b = b.u32(9).u64(1);
        }
        let err = parse(&b.0).unwrap_err().to_string();
        assert!(err.contains("nested deeper"), "{err}");
    }

    #[test]
    fn tensor_data_past_the_end_of_the_file_is_an_error() {
        let b = Builder::header(1, 0).str("w").u32(2).u64(32).u64(4).u32(0).u64(1 << 40);
        let err = parse(&b.0).unwrap_err().to_string();
        assert!(err.contains("`w`") && err.contains("runs past the end"), "{err}");
        let b = Builder::header(1, 0).str("w").u32(2).u64(u64::MAX).u64(4).u32(0).u64(0);
        assert!(parse(&b.0).unwrap_err().to_string().contains("overflow"));
        let b = Builder::header(1, 0).str("w").u32(3).u64(0).u64(1 << 40).u64(1 << 40).u32(0).u64(0);
        assert!(parse(&b.0).unwrap_err().to_string().contains("include a zero"));
    }

    #[test]
    fn every_prefix_of_a_valid_file_is_an_error_not_a_panic() {
        let mut b = Builder::header(1, 1).str("general.name").u32(8).str("t");
        b = b.str("w").u32(1).u64(32).u32(8).u64(0);
        b.0.resize(b.0.len().div_ceil(32) * 32 + 34, 1);
        assert!(parse(&b.0).is_ok());
        for n in 0..b.0.len() {
            assert!(parse(&b.0[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn wrong_magic_version_and_alignment_are_named() {
        assert!(matches!(parse(b"GGML\x03\x00\x00\x00"), Err(LoadError::GgufMagic { .. })));
        let mut v1 = Builder::header(0, 0);
        v1.0[4] = 1;
        assert!(matches!(parse(&v1.0), Err(LoadError::GgufVersion(1))));
        let b = Builder::header(0, 1).str("general.alignment").u32(4).u32(24);
        assert!(parse(&b.0).unwrap_err().to_string().contains("power of two"));
    }

    #[test]
    fn misaligned_offsets_and_partial_blocks_are_errors() {
        let b = Builder::header(1, 0).str("w").u32(1).u64(4).u32(0).u64(4);
        assert!(parse(&b.0).unwrap_err().to_string().contains("not a multiple of 32"));
        let mut b = Builder::header(1, 0).str("w").u32(1).u64(16).u32(8).u64(0); // Q8_0 needs 32
        b.0.resize(256, 0);
        assert!(parse(&b.0).unwrap_err().to_string().contains("block size 32"));
    }
}
