//! safetensors checkpoints: reading a single file or a sharded set (via
//! `model.safetensors.index.json`) into a `WeightMap` (F32/F16/BF16 upcast to f32), and writing a
//! `WeightMap` back as one f32 file.
//!
//! Files are read into memory and parsed by the `safetensors` crate, which checks every offset
//! against the buffer: a truncated or malformed file is an error, never a panic. (No mmap: mapping
//! a file is `unsafe`, which this workspace allows only in `kernels`.)

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use serde_json::Value;

use super::error::LoadError;
use crate::tensor::{HostTensor, WeightMap};

/// The single-file checkpoint name inside a HF directory.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index name inside a HF directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Reads every tensor of one safetensors file, upcast to f32.
///
/// # Errors
/// `LoadError` (wrapped with the path) when the file cannot be read, is malformed or truncated,
/// holds a dtype other than F32/F16/BF16, or repeats a tensor name.
pub fn load_safetensors_file(path: &Path) -> Result<WeightMap, LoadError> {
    let mut map = WeightMap::default();
    load_file_into(path, None, &mut map)?;
    Ok(map)
}

/// Reads the weights of a HF directory: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` names (the index wins when both exist, as in transformers).
///
/// # Errors
/// `LoadError::NoWeights` when neither file exists; otherwise as [`load_safetensors_file`], plus
/// `LoadError::Index` for a malformed index (bad JSON, a shard name that is not a plain file name,
/// a listed tensor missing from its shard).
pub fn load_safetensors_dir(dir: &Path) -> Result<WeightMap, LoadError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        return load_sharded(dir, &index);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return load_safetensors_file(&single);
    }
    Err(LoadError::NoWeights { dir: dir.to_path_buf() })
}

fn load_sharded(dir: &Path, index: &Path) -> Result<WeightMap, LoadError> {
    let text = std::fs::read_to_string(index).map_err(|e| LoadError::io("read", index, e))?;
    let shards = parse_index(&text).map_err(|e| e.in_file(index))?;
    let mut map = WeightMap::default();
    for (shard, names) in &shards {
        load_file_into(&dir.join(shard), Some(names), &mut map)?;
    }
    Ok(map)
}

/// Groups the index's `weight_map` by shard file, checking each shard name is a plain file name.
fn parse_index(text: &str) -> Result<BTreeMap<String, BTreeSet<String>>, LoadError> {
    let value: Value = serde_json::from_str(text).map_err(|e| LoadError::Index(format!("not valid JSON: {e}")))?;
    let weight_map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| LoadError::Index("no `weight_map` object".into()))?;
    let mut shards: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tensor, shard) in weight_map {
        let shard =
            shard.as_str().ok_or_else(|| LoadError::Index(format!("shard of `{tensor}` is not a string: {shard}")))?;
        let mut parts = Path::new(shard).components();
        if !matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)) {
            return Err(LoadError::Index(format!("shard name `{shard}` of `{tensor}` is not a plain file name")));
        }
        shards.entry(shard.to_string()).or_default().insert(tensor.clone());
    }
    if shards.is_empty() {
        return Err(LoadError::Index("`weight_map` is empty".into()));
    }
    Ok(shards)
}

/// Adds the tensors of `path` to `map`: all of them, or exactly `only` (each must be present).
fn load_file_into(path: &Path, only: Option<&BTreeSet<String>>, map: &mut WeightMap) -> Result<(), LoadError> {
    let bytes = std::fs::read(path).map_err(|e| LoadError::io("read", path, e))?;
    parse_into(&bytes, only, map).map_err(|e| e.in_file(path))
}

fn parse_into(bytes: &[u8], only: Option<&BTreeSet<String>>, map: &mut WeightMap) -> Result<(), LoadError> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| LoadError::Safetensors(e.to_string()))?;
    if let Some(names) = only {
        for name in names {
            if file.tensor(name).is_err() {
                return Err(LoadError::Index(format!("tensor `{name}` is listed for this shard but is not in it")));
            }
        }
    }
    for (name, view) in file.iter() {
        if only.is_some_and(|names| !names.contains(name)) {
            continue;
        }
        if map.contains(name) {
            return Err(LoadError::DuplicateTensor { tensor: name.to_string() });
        }
        map.insert(name, to_host(name, &view)?);
    }
    Ok(())
}

fn to_host(name: &str, view: &TensorView<'_>) -> Result<HostTensor, LoadError> {
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(LoadError::UnsupportedDtype { tensor: name.to_string(), dtype: format!("{other:?}") }),
    };
    // The safetensors crate has checked that the byte length matches shape × dtype size.
    Ok(HostTensor::new(view.shape().to_vec(), data))
}

/// One f32 tensor as the `safetensors` writer wants it.
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for F32View {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes every tensor of `weights` as f32 into one safetensors file at `path` (replaced
/// atomically when it exists).
///
/// # Errors
/// `LoadError::SafetensorsWrite` when the file cannot be written.
pub fn save_safetensors(path: &Path, weights: &WeightMap) -> Result<(), LoadError> {
    let views = weights.tensors.iter().map(|(name, t)| {
        let bytes = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        (name.as_str(), F32View { shape: t.shape.clone(), bytes })
    });
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| LoadError::SafetensorsWrite(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_groups_tensors_by_shard() {
        let text = r#"{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s1.safetensors"}}"#;
        let shards = parse_index(text).unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards["s1.safetensors"], BTreeSet::from(["a".to_string(), "c".to_string()]));
        assert_eq!(shards["s2.safetensors"], BTreeSet::from(["b".to_string()]));
    }

    #[test]
    fn index_shard_names_that_escape_the_directory_are_rejected() {
        for bad in ["../x.safetensors", "/etc/passwd", "sub/x.safetensors", ""] {
            let text = format!(r#"{{"weight_map":{{"a":"{bad}"}}}}"#);
            let err = parse_index(&text).unwrap_err().to_string();
            assert!(err.contains("not a plain file name"), "{bad}: {err}");
        }
    }

    #[test]
    fn half_precision_tensors_are_upcast_exactly() {
        let f16_bytes: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        let bf16_bytes: Vec<u8> = [0.25f32, 3.0].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        let views = [
            ("h", TensorView::new(Dtype::F16, vec![2], &f16_bytes).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![1, 2], &bf16_bytes).unwrap()),
        ];
        let bytes = safetensors::serialize(views, None).unwrap();
        let mut map = WeightMap::default();
        parse_into(&bytes, None, &mut map).unwrap();
        assert_eq!(map.tensors["h"], HostTensor::new(vec![2], vec![1.5, -2.0]));
        assert_eq!(map.tensors["b"], HostTensor::new(vec![1, 2], vec![0.25, 3.0]));
    }

    #[test]
    fn integer_tensors_are_refused_by_name() {
        let bytes_i32 = [0u8; 8];
        let views = [("ids", TensorView::new(Dtype::I32, vec![2], &bytes_i32).unwrap())];
        let bytes = safetensors::serialize(views, None).unwrap();
        let err = parse_into(&bytes, None, &mut WeightMap::default()).unwrap_err().to_string();
        assert!(err.contains("`ids`") && err.contains("I32"), "{err}");
    }
}
