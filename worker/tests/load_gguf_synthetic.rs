//! The GGUF loader end to end on small files built here byte by byte (no model download needed):
//! names, reversed dims, Llama Q/K un-permutation (and its absence for Qwen2), mixed tensor types,
//! config, tokenizer, and the HF directory written from it.

use runtime::Family;
use worker::load::gguf::load_gguf_bytes;
use worker::load::{load_config, load_gguf, load_tokenizer, write_hf_dir, LoadError};

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 4;
const FF: usize = 32;
const TOKENS: [&str; 5] = ["<s>", "</s>", "a", "b", "ab"];

enum Data {
    F32(Vec<f32>),
    F16(Vec<f32>),
    /// Q8_0 blocks: (scale, 32 quants).
    Q8(Vec<(f32, [i8; 32])>),
}

struct Tensor {
    name: String,
    dims: Vec<u64>,
    data: Data,
}

/// GGUF bytes, written field by field as llama.cpp lays them out.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend(v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
    }
    fn pad_to(&mut self, alignment: usize) {
        self.0.resize(self.0.len().div_ceil(alignment) * alignment, 0);
    }
}

enum Kv {
    U32(u32),
    F32(f32),
    Str(String),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

fn encode(kvs: &[(String, Kv)], tensors: &[Tensor]) -> Vec<u8> {
    let mut w = Writer::default();
    w.0.extend(b"GGUF");
    w.u32(3);
    w.u64(tensors.len() as u64);
    w.u64(kvs.len() as u64);
    for (k, v) in kvs {
        w.str(k);
        match v {
            Kv::U32(x) => {
                w.u32(4);
                w.u32(*x);
            }
            Kv::F32(x) => {
                w.u32(6);
                w.0.extend(x.to_le_bytes());
            }
            Kv::Bool(b) => {
                w.u32(7);
                w.0.push(u8::from(*b));
            }
            Kv::Str(s) => {
                w.u32(8);
                w.str(s);
            }
            Kv::Strs(list) => {
                w.u32(9);
                w.u32(8);
                w.u64(list.len() as u64);
                list.iter().for_each(|s| w.str(s));
            }
            Kv::I32s(list) => {
                w.u32(9);
                w.u32(5);
                w.u64(list.len() as u64);
                list.iter().for_each(|x| w.0.extend(x.to_le_bytes()));
            }
        }
    }
    let blobs: Vec<(u32, Vec<u8>)> = tensors
        .iter()
        .map(|t| match &t.data {
            Data::F32(v) => (0, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::F16(v) => (1, v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()),
            Data::Q8(blocks) => (
                8,
                blocks
                    .iter()
                    .flat_map(|(d, q)| {
                        half::f16::from_f32(*d).to_le_bytes().into_iter().chain(q.iter().map(|&x| x as u8))
                    })
                    .collect(),
            ),
        })
        .collect();
    let mut offset = 0u64;
    for (t, (ty, blob)) in tensors.iter().zip(&blobs) {
        w.str(&t.name);
        w.u32(t.dims.len() as u32);
        t.dims.iter().for_each(|&d| w.u64(d));
        w.u32(*ty);
        w.u64(offset);
        offset += (blob.len() as u64).div_ceil(32) * 32;
    }
    w.pad_to(32);
    for (_, blob) in &blobs {
        w.0.extend(blob);
        w.pad_to(32);
    }
    w.0
}

/// Row `r`, column `c` of a GGUF-layout matrix holds `r * 100 + c`.
fn indexed(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|i| ((i / cols) * 100 + i % cols) as f32).collect()
}

fn tensor(name: &str, dims: &[u64], data: Data) -> Tensor {
    Tensor { name: name.to_string(), dims: dims.to_vec(), data }
}

/// A one-layer model of architecture `arch` (llama or qwen2).
fn model_file(arch: &str) -> Vec<u8> {
    let key = |k: &str| format!("{arch}.{k}");
    let kvs = vec![
        ("general.architecture".to_string(), Kv::Str(arch.into())),
        ("general.name".to_string(), Kv::Str("synthetic".into())),
        (key("embedding_length"), Kv::U32(HIDDEN as u32)),
        (key("block_count"), Kv::U32(1)),
        (key("feed_forward_length"), Kv::U32(FF as u32)),
        (key("attention.head_count"), Kv::U32(HEADS as u32)),
        (key("attention.head_count_kv"), Kv::U32(KV_HEADS as u32)),
        (key("attention.layer_norm_rms_epsilon"), Kv::F32(1e-6)),
        (key("rope.freq_base"), Kv::F32(500_000.0)),
        (key("context_length"), Kv::U32(256)),
        ("tokenizer.ggml.model".to_string(), Kv::Str("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Kv::Str("default".into())),
        ("tokenizer.ggml.tokens".to_string(), Kv::Strs(TOKENS.iter().map(|s| s.to_string()).collect())),
        ("tokenizer.ggml.token_type".to_string(), Kv::I32s(vec![3, 3, 1, 1, 1])),
        ("tokenizer.ggml.merges".to_string(), Kv::Strs(vec!["a b".into()])),
        ("tokenizer.ggml.bos_token_id".to_string(), Kv::U32(0)),
        ("tokenizer.ggml.eos_token_id".to_string(), Kv::U32(1)),
        ("tokenizer.ggml.add_bos_token".to_string(), Kv::Bool(false)),
        ("tokenizer.chat_template".to_string(), Kv::Str("{{ bos_token }}".into())),
    ];
    let (h, q, kv, ff, v) = (HIDDEN as u64, (HEADS * HEAD_DIM) as u64, (KV_HEADS * HEAD_DIM) as u64, FF as u64, 5u64);
    let q8_rows: Vec<(f32, [i8; 32])> =
        (0..HIDDEN).map(|r| (0.5, std::array::from_fn(|j| r as i8 * 10 - j as i8))).collect();
    let mut tensors = vec![
        tensor("token_embd.weight", &[h, v], Data::F32(indexed(5, HIDDEN))),
        tensor("output_norm.weight", &[h], Data::F32(vec![1.0; HIDDEN])),
        tensor("blk.0.attn_norm.weight", &[h], Data::F32(vec![2.0; HIDDEN])),
        tensor("blk.0.ffn_norm.weight", &[h], Data::F32(vec![3.0; HIDDEN])),
        tensor("blk.0.attn_q.weight", &[h, q], Data::F32(indexed(q as usize, HIDDEN))),
        tensor("blk.0.attn_k.weight", &[h, kv], Data::F32(indexed(kv as usize, HIDDEN))),
        tensor("blk.0.attn_v.weight", &[h, kv], Data::F32(indexed(kv as usize, HIDDEN))),
        tensor("blk.0.attn_output.weight", &[q, h], Data::F32(indexed(HIDDEN, q as usize))),
        tensor("blk.0.ffn_gate.weight", &[h, ff], Data::F16(indexed(FF, HIDDEN))),
        tensor("blk.0.ffn_up.weight", &[h, ff], Data::F32(indexed(FF, HIDDEN))),
        tensor("blk.0.ffn_down.weight", &[ff, h], Data::Q8(q8_rows)),
    ];
    if arch == "qwen2" {
        tensors.push(tensor("blk.0.attn_q.bias", &[q], Data::F32(indexed(q as usize, 1))));
        tensors.push(tensor("blk.0.attn_k.bias", &[kv], Data::F32(indexed(kv as usize, 1))));
        tensors.push(tensor("blk.0.attn_v.bias", &[kv], Data::F32(indexed(kv as usize, 1))));
        tensors.push(tensor("output.weight", &[h, v], Data::F32(indexed(5, HIDDEN))));
    }
    encode(&kvs, &tensors)
}

/// The first column of each row of a loaded `(rows, HIDDEN)` weight, divided by 100: the GGUF
/// row each HF row came from.
fn source_rows(data: &[f32], cols: usize) -> Vec<f32> {
    data.chunks(cols).map(|row| row[0] / 100.0).collect()
}

#[test]
fn llama_gguf_loads_with_hf_names_reversed_dims_and_unpermuted_qk() {
    let m = load_gguf_bytes(&model_file("llama")).unwrap();
    let c = &m.config;
    assert_eq!(c.family, Family::Llama);
    assert_eq!((c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim), (8, 2, 1, 4));
    assert_eq!((c.intermediate_size, c.vocab_size, c.max_position_embeddings), (32, 5, 256));
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-6, 500_000.0));
    assert!(c.tie_word_embeddings && !c.attention_bias);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(0), vec![1]));
    assert_eq!(m.name.as_deref(), Some("synthetic"));

    let w = &m.weights.tensors;
    assert_eq!(w.len(), 11);
    assert_eq!(w["model.embed_tokens.weight"].shape, vec![5, 8]);
    assert_eq!(w["model.embed_tokens.weight"].data[8..10], [100.0, 101.0]);
    // Per head of 4 rows, GGUF rows [0, 1, 2, 3] hold HF rows [0, 2, 1, 3].
    let q = &w["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(q.shape, vec![8, 8]);
    assert_eq!(source_rows(&q.data, 8), vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    assert_eq!(q.data[8..11], [200.0, 201.0, 202.0]);
    let k = &w["model.layers.0.self_attn.k_proj.weight"];
    assert_eq!(source_rows(&k.data, 8), vec![0.0, 2.0, 1.0, 3.0]);
    let v = &w["model.layers.0.self_attn.v_proj.weight"];
    assert_eq!(source_rows(&v.data, 8), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(w["model.layers.0.self_attn.o_proj.weight"].shape, vec![8, 8]);
    let gate = &w["model.layers.0.mlp.gate_proj.weight"];
    // F16 gate_proj: 3106 is exact in f16.
    assert_eq!((gate.shape.clone(), gate.data[8 * 31 + 6]), (vec![32, 8], 3106.0));
    // Q8_0 down_proj: row r, column j = 0.5 * (10 r - j).
    let down = &w["model.layers.0.mlp.down_proj.weight"];
    assert_eq!(down.shape, vec![8, 32]);
    assert_eq!(down.data[0..3], [0.0, -0.5, -1.0]);
    assert_eq!(down.data[32 * 7 + 31], 0.5 * (70.0 - 31.0));
    assert_eq!(w["model.layers.0.input_layernorm.weight"].data, vec![2.0; 8]);
    assert_eq!(w["model.layers.0.post_attention_layernorm.weight"].data, vec![3.0; 8]);
    assert_eq!(w["model.norm.weight"].data, vec![1.0; 8]);
}

#[test]
fn qwen2_gguf_keeps_qk_rows_in_place_and_loads_biases_and_lm_head() {
    let m = load_gguf_bytes(&model_file("qwen2")).unwrap();
    assert_eq!(m.config.family, Family::Qwen2);
    assert!(m.config.attention_bias && !m.config.tie_word_embeddings);
    let w = &m.weights.tensors;
    let q = &w["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(source_rows(&q.data, 8), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    assert_eq!(
        w["model.layers.0.self_attn.q_proj.bias"].data,
        vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0]
    );
    assert_eq!(w["model.layers.0.self_attn.k_proj.bias"].shape, vec![4]);
    assert_eq!(w["lm_head.weight"].shape, vec![5, 8]);
}

#[test]
fn tokenizer_and_hf_directory_come_from_the_metadata() {
    let m = load_gguf_bytes(&model_file("llama")).unwrap();
    let dir = std::env::temp_dir().join(format!("lathe-load-gguf-synthetic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("model.gguf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&path, model_file("llama")).unwrap();
    let from_file = load_gguf(&path).unwrap();
    assert_eq!(from_file.config, m.config);
    assert_eq!(from_file.weights, m.weights);

    write_hf_dir(&m, &dir.join("hf")).unwrap();
    assert_eq!(load_config(&dir.join("hf")).unwrap(), m.config);
    let tok = load_tokenizer(&dir.join("hf")).unwrap();
    assert_eq!(tok.encode("<s>ab a</s>", false).unwrap().get_ids(), &[0, 4, 2, 1]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hf/tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["chat_template"], "{{ bos_token }}");
    assert_eq!((cfg["bos_token"].as_str(), cfg["eos_token"].as_str()), (Some("<s>"), Some("</s>")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_file_and_a_flipped_type_id_are_clear_errors() {
    let err = load_gguf(std::path::Path::new("/nonexistent/model.gguf")).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    // Rewrite the Q8_0 tensor's type id (8) to Q5_1 (7): a known but unsupported type.
    let mut bytes = model_file("llama");
    let name = b"blk.0.ffn_down.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let type_at = at + 4 + 2 * 8; // n_dims, then two u64 dims
    assert_eq!(bytes[type_at..type_at + 4], 8u32.to_le_bytes());
    bytes[type_at..type_at + 4].copy_from_slice(&7u32.to_le_bytes());
    let err = load_gguf_bytes(&bytes).unwrap_err();
    assert!(matches!(&err, LoadError::GgufTensorType { type_name: "Q5_1", .. }), "{err}");
}
