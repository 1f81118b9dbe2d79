//! safetensors loading end to end on files written in a temp directory: round trips through
//! `save_safetensors`, a HF directory with config.json, a sharded index, and malformed files.

use std::path::PathBuf;

use worker::load::{load_model_dir, load_safetensors_dir, load_safetensors_file, save_safetensors, LoadError};
use worker::tensor::{HostTensor, WeightMap};

const TINY_CONFIG: &str = r#"{"model_type":"llama","hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
  "num_attention_heads":2,"num_key_value_heads":1,"vocab_size":4,"tie_word_embeddings":true,"rms_norm_eps":1e-5}"#;

/// A fresh, empty directory unique to this test process and `name`.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lathe-load-safetensors-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    dir
}

/// A tensor whose values (i * 0.25 - offset) are exactly representable in f32.
fn ramp(shape: &[usize], offset: f32) -> HostTensor {
    let n: usize = shape.iter().product();
    HostTensor::new(shape.to_vec(), (0..n).map(|i| i as f32 * 0.25 - offset).collect())
}

fn sample_weights() -> WeightMap {
    let mut w = WeightMap::default();
    w.insert("model.embed_tokens.weight", ramp(&[4, 8], 3.0));
    w.insert("model.norm.weight", ramp(&[8], -1.0));
    w.insert("model.layers.0.self_attn.q_proj.weight", ramp(&[8, 8], 7.5));
    w.insert("scalar", HostTensor::new(vec![], vec![42.0]));
    w
}

#[test]
fn saved_weights_load_back_bit_for_bit() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("model.safetensors");
    let weights = sample_weights();
    save_safetensors(&path, &weights).unwrap();
    assert_eq!(load_safetensors_file(&path).unwrap(), weights);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_hf_directory_loads_config_and_weights() {
    let dir = temp_dir("hfdir");
    std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
    save_safetensors(&dir.join("model.safetensors"), &sample_weights()).unwrap();
    let (config, weights) = load_model_dir(&dir).unwrap();
    assert_eq!((config.hidden_size, config.head_dim, config.vocab_size), (8, 4, 4));
    assert_eq!(weights, sample_weights());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sharded_index_loads_the_union_of_its_shards() {
    let dir = temp_dir("sharded");
    let all = sample_weights();
    let (mut a, mut b) = (WeightMap::default(), WeightMap::default());
    for (i, (name, t)) in all.tensors.iter().enumerate() {
        if i % 2 == 0 { &mut a } else { &mut b }.insert(name.clone(), t.clone());
    }
    save_safetensors(&dir.join("model-00001-of-00002.safetensors"), &a).unwrap();
    save_safetensors(&dir.join("model-00002-of-00002.safetensors"), &b).unwrap();
    let mut weight_map = serde_json::Map::new();
    for name in a.tensors.keys() {
        weight_map.insert(name.clone(), "model-00001-of-00002.safetensors".into());
    }
    for name in b.tensors.keys() {
        weight_map.insert(name.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(load_safetensors_dir(&dir).unwrap(), all);

    // An index that assigns a tensor to the wrong shard is an error naming the tensor.
    weight_map.insert("model.norm.weight".into(), "model-00002-of-00002.safetensors".into());
    weight_map.insert("scalar".into(), "model-00001-of-00002.safetensors".into());
    let index = serde_json::json!({"weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let err = load_safetensors_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("is listed for this shard but is not in it"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_and_garbage_files_are_errors_naming_the_file() {
    let dir = temp_dir("truncated");
    let path = dir.join("model.safetensors");
    save_safetensors(&path, &sample_weights()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for n in [0, 7, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..n]).unwrap();
        let err = load_safetensors_file(&path).unwrap_err();
        assert!(matches!(&err, LoadError::InFile { .. }), "{n}: {err}");
        assert!(err.to_string().contains("model.safetensors"), "{n}: {err}");
    }
    // A header length of 2^63 and a header that is not JSON.
    let mut huge = (1u64 << 63).to_le_bytes().to_vec();
    huge.extend(b"{}");
    std::fs::write(&path, &huge).unwrap();
    assert!(load_safetensors_file(&path).is_err());
    let mut garbage = 4u64.to_le_bytes().to_vec();
    garbage.extend(b"nope");
    std::fs::write(&path, &garbage).unwrap();
    assert!(load_safetensors_file(&path).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_without_weights_says_what_is_missing() {
    let dir = temp_dir("empty");
    let err = load_safetensors_dir(&dir).unwrap_err();
    assert!(matches!(err, LoadError::NoWeights { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors.index.json"));
    std::fs::remove_dir_all(&dir).unwrap();
}
