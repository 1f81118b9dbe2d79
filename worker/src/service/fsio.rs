//! Writing a checkpoint directory all at once: every file goes into a temporary sibling
//! `<dir>.tmp-<n>`, is synced, and the sibling is renamed onto `<dir>` (an existing `<dir>` is
//! moved aside first and removed after), so a reader never sees a half-written checkpoint. Also
//! the f32 safetensors encoding the checkpoint files use.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use super::error::ServiceError;
use crate::tensor::WeightMap;

/// `dir` with `suffix` appended to its last component (`a/b` + `.tmp-3` → `a/b.tmp-3`).
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = dir.file_name().map(OsString::from).unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Writes `files` (name → bytes) as the whole content of `dir`, replacing what was there.
/// `n` makes the temporary names unique within this process. Returns the bytes written.
///
/// # Errors
/// `ServiceError::Io` naming the path that could not be created, written, synced or renamed;
/// `Checkpoint` when `dir` has no final component to write to.
pub(super) fn write_dir(dir: &Path, n: u64, files: &[(&str, Vec<u8>)]) -> Result<u64, ServiceError> {
    if dir.file_name().is_none() {
        return Err(ServiceError::checkpoint(dir, "the path has no directory name to write to"));
    }
    assert!(files.iter().all(|(name, _)| !name.contains('/')), "checkpoint file names are plain names");
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| ServiceError::io("create directory", parent, e))?;
    let tmp = sibling(dir, &format!(".tmp-{n}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| ServiceError::io("remove stale temporary directory", &tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| ServiceError::io("create directory", &tmp, e))?;
    let mut bytes = 0u64;
    for (name, data) in files {
        let path = tmp.join(name);
        let mut file = File::create(&path).map_err(|e| ServiceError::io("create", &path, e))?;
        file.write_all(data).map_err(|e| ServiceError::io("write", &path, e))?;
        file.sync_all().map_err(|e| ServiceError::io("sync", &path, e))?;
        bytes += data.len() as u64;
    }
    sync_dir(&tmp)?;
    if dir.exists() {
        let old = sibling(dir, &format!(".old-{n}"));
        fs::rename(dir, &old).map_err(|e| ServiceError::io("move aside", dir, e))?;
        fs::rename(&tmp, dir).map_err(|e| ServiceError::io("rename into place", &tmp, e))?;
        fs::remove_dir_all(&old).map_err(|e| ServiceError::io("remove replaced checkpoint", &old, e))?;
    } else {
        fs::rename(&tmp, dir).map_err(|e| ServiceError::io("rename into place", &tmp, e))?;
    }
    sync_dir(parent)?;
    Ok(bytes)
}

/// Makes a directory's entries durable (the renames into it).
fn sync_dir(dir: &Path) -> Result<(), ServiceError> {
    let handle = File::open(dir).map_err(|e| ServiceError::io("open", dir, e))?;
    handle.sync_all().map_err(|e| ServiceError::io("sync", dir, e))
}

/// Encodes every tensor of `map` as little-endian f32 safetensors, with the `{"format": "pt"}`
/// metadata PyTorch-side loaders look for.
///
/// # Errors
/// `ServiceError::Encode` when safetensors refuses a tensor (a shape that does not fit its data).
pub(super) fn safetensors_bytes(map: &WeightMap) -> Result<Vec<u8>, ServiceError> {
    let encode = |why: String| ServiceError::Encode { what: "safetensors", why };
    let raw: Vec<(&str, &[usize], Vec<u8>)> = map
        .tensors
        .iter()
        .map(|(name, t)| (name.as_str(), &t.shape[..], t.data.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let mut views = Vec::with_capacity(raw.len());
    for (name, shape, bytes) in &raw {
        let view = TensorView::new(Dtype::F32, shape.to_vec(), bytes).map_err(|e| encode(format!("{name}: {e}")))?;
        views.push((*name, view));
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize(views, metadata).map_err(|e| encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(label: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("lathe-fsio-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        root
    }

    #[test]
    fn a_written_directory_holds_exactly_the_new_files_and_no_temporaries_remain() {
        let root = temp_root("replace");
        let dir = root.join("runs").join("a:train:0").join("weights").join("c1");
        assert_eq!(write_dir(&dir, 1, &[("x", vec![1, 2, 3]), ("y", vec![4])]).unwrap(), 4);
        assert_eq!(fs::read(dir.join("x")).unwrap(), vec![1, 2, 3]);
        assert_eq!(write_dir(&dir, 2, &[("z", vec![9; 5])]).unwrap(), 5);
        let mut names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, vec!["z".to_string()], "the old content is gone");
        let siblings: Vec<String> = fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(siblings, vec!["c1".to_string()], "no .tmp- or .old- directory is left behind");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn encoded_tensors_read_back_with_their_names_shapes_and_values() {
        let mut map = WeightMap::default();
        map.insert("a.weight", crate::tensor::HostTensor::new(vec![2, 2], vec![1.0, -2.5, 3.0, f32::MIN_POSITIVE]));
        let bytes = safetensors_bytes(&map).unwrap();
        let root = temp_root("encode");
        fs::create_dir_all(&root).unwrap();
        let path = root.join("t.safetensors");
        fs::write(&path, bytes).unwrap();
        assert_eq!(crate::load::load_safetensors_file(&path).unwrap(), map);
        fs::remove_dir_all(root).unwrap();
    }
}
