//! The GGUF loader against the real SmolLM2-135M-Instruct Q4_1 file (`ops/fetch-models.sh`):
//! config, tokenizer ids, dequantized tensor sanity, the HF directory it writes, and, when the
//! golden fixture from `ops/golden/generate.py` is present, tensor probes from transformers.
//! Every test prints a notice and passes vacuously when the model file is absent.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use runtime::Family;
use worker::load::gguf::{load_gguf_bytes, GgufModel};
use worker::load::{load_config, load_tokenizer, tokenizer_from_json, write_hf_dir, LoadError};

const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SENTENCE: &str = "The quick brown fox jumps over the lazy dog. In 1492, Columbus sailed the ocean blue.";
/// models.md §6, from transformers' tokenizer for this GGUF.
const SENTENCE_IDS: [u32; 23] = [
    504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30, 533, 216, 33, 36, 41, 34, 28, 18176, 23217, 260, 5065,
    4461, 30,
];

fn gguf_path() -> Option<PathBuf> {
    let path = match std::env::var_os("LATHE_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = match std::env::var_os("LATHE_CACHE") {
                Some(c) => PathBuf::from(c),
                None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/lathe"),
            };
            cache.join("models").join(GGUF_NAME)
        }
    };
    if path.is_file() {
        Some(path)
    } else {
        assert!(
            std::env::var("LATHE_REQUIRE_MODELS").as_deref() != Ok("1"),
            "LATHE_REQUIRE_MODELS=1 but {} is missing; run ops/fetch-models.sh",
            path.display()
        );
        eprintln!("NOTICE: skipping SmolLM2 GGUF test: {} not found (run ops/fetch-models.sh)", path.display());
        None
    }
}

fn gguf_bytes() -> Option<&'static [u8]> {
    static BYTES: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    BYTES
        .get_or_init(|| gguf_path().map(|p| std::fs::read(p).expect("the GGUF file exists and is readable")))
        .as_deref()
}

fn model() -> Option<&'static GgufModel> {
    static MODEL: OnceLock<Option<GgufModel>> = OnceLock::new();
    MODEL.get_or_init(|| gguf_bytes().map(|b| load_gguf_bytes(b).expect("the SmolLM2 GGUF loads"))).as_ref()
}

#[test]
fn config_matches_the_published_smollm2_architecture() {
    let Some(m) = model() else { return };
    let c = &m.config;
    assert_eq!(c.family, Family::Llama);
    assert_eq!(c.hidden_size, 576);
    assert_eq!(c.num_hidden_layers, 30);
    assert_eq!(c.num_attention_heads, 9);
    assert_eq!(c.num_key_value_heads, 3);
    assert_eq!(c.head_dim, 64);
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tie_word_embeddings);
    assert!(!c.attention_bias);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_theta, 100_000.0);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2]);
    assert_eq!(m.weights.tensors.len(), 272);
    assert!(!m.weights.contains("lm_head.weight"));
}

#[test]
fn every_weight_has_the_hf_name_and_shape_the_config_implies() {
    let Some(m) = model() else { return };
    let c = &m.config;
    let (h, kv, ff) = (c.hidden_size, c.num_key_value_heads * c.head_dim, c.intermediate_size);
    let mut weights = m.weights.clone();
    weights.take("model.embed_tokens.weight", &[c.vocab_size, h]).unwrap();
    weights.take("model.norm.weight", &[h]).unwrap();
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        weights.take(&format!("{p}.self_attn.q_proj.weight"), &[c.num_attention_heads * c.head_dim, h]).unwrap();
        weights.take(&format!("{p}.self_attn.k_proj.weight"), &[kv, h]).unwrap();
        weights.take(&format!("{p}.self_attn.v_proj.weight"), &[kv, h]).unwrap();
        weights.take(&format!("{p}.self_attn.o_proj.weight"), &[h, h]).unwrap();
        weights.take(&format!("{p}.mlp.gate_proj.weight"), &[ff, h]).unwrap();
        weights.take(&format!("{p}.mlp.up_proj.weight"), &[ff, h]).unwrap();
        weights.take(&format!("{p}.mlp.down_proj.weight"), &[h, ff]).unwrap();
        weights.take(&format!("{p}.input_layernorm.weight"), &[h]).unwrap();
        weights.take(&format!("{p}.post_attention_layernorm.weight"), &[h]).unwrap();
    }
    assert!(weights.tensors.is_empty(), "unexpected tensors: {:?}", weights.tensors.keys().collect::<Vec<_>>());
}

#[test]
fn tokenizer_encodes_the_reference_sentence_like_transformers() {
    let Some(m) = model() else { return };
    let tok = tokenizer_from_json(&m.tokenizer_json).unwrap();
    let enc = tok.encode(SENTENCE, false).unwrap();
    assert_eq!(enc.get_ids(), &SENTENCE_IDS);
    assert_eq!(tok.decode(&SENTENCE_IDS, false).unwrap(), SENTENCE);
    let chat = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(chat.get_ids()[0], 1);
    assert_eq!(*chat.get_ids().last().unwrap(), 2);
    assert!(m.chat_template.as_deref().unwrap().contains("<|im_start|>"));
}

#[test]
fn dequantized_tensors_are_finite_and_of_plausible_scale() {
    let Some(m) = model() else { return };
    for (name, t) in &m.weights.tensors {
        assert!(t.data.iter().all(|x| x.is_finite()), "{name} has a non-finite value");
        let mean_abs = t.data.iter().map(|x| f64::from(x.abs())).sum::<f64>() / t.data.len() as f64;
        let max_abs = t.data.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        // Bounds a factor of about 3 around what this checkpoint has (norm gains 0.03..1.8 mean |x|,
        // matrices 0.03..0.3); a wrong scale or nibble order moves these by far more.
        let (mean_range, max_bound) =
            if name.ends_with("norm.weight") { (0.01..10.0, 10.0) } else { (0.01..0.5, 20.0) };
        assert!(mean_range.contains(&mean_abs), "{name}: mean |x| {mean_abs}");
        assert!(max_abs < max_bound, "{name}: max |x| {max_abs}");
    }
}

#[test]
fn tensors_match_the_transformers_golden_probes_when_present() {
    let Some(m) = model() else { return };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/golden/fixtures/smollm2/smollm2.json");
    let Ok(text) = std::fs::read_to_string(&fixture) else {
        eprintln!("NOTICE: skipping golden probe comparison: {} not found", fixture.display());
        return;
    };
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let probes = golden["tensor_probes"].as_object().unwrap();
    assert!(probes.len() >= 5, "fixture has only {} probes", probes.len());
    let as_f32s = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    };
    for (name, probe) in probes {
        let t = &m.weights.tensors[name];
        let shape: Vec<usize> =
            probe["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape, shape, "{name}");
        // Dequantization is exact arithmetic on the same f16 scales: element values must match bit for bit.
        assert_eq!(t.data[..8].to_vec(), as_f32s(&probe["first8"]), "{name} first8");
        if t.shape.len() == 2 {
            let cols = t.shape[1];
            assert_eq!(t.data[cols..cols + 8].to_vec(), as_f32s(&probe["row1_first8"]), "{name} row1_first8");
        }
        let sum: f64 = t.data.iter().map(|&x| f64::from(x)).sum();
        let abs_sum: f64 = t.data.iter().map(|&x| f64::from(x.abs())).sum();
        let (want_sum, want_abs) = (probe["sum"].as_f64().unwrap(), probe["abs_sum"].as_f64().unwrap());
        assert!((abs_sum - want_abs).abs() <= 1e-9 * want_abs, "{name}: abs_sum {abs_sum} vs {want_abs}");
        assert!((sum - want_sum).abs() <= 1e-9 * want_abs, "{name}: sum {sum} vs {want_sum}");
    }
    let tok = tokenizer_from_json(&m.tokenizer_json).unwrap();
    let ids = tok.encode(golden["paragraph"].as_str().unwrap(), false).unwrap();
    let want: Vec<u32> =
        golden["paragraph_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    assert_eq!(ids.get_ids(), want.as_slice());
}

#[test]
fn written_hf_directory_reloads_to_the_same_config_and_tokenizer() {
    let Some(m) = model() else { return };
    let dir = std::env::temp_dir().join(format!("lathe-load-smollm2-hfdir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_hf_dir(m, &dir).unwrap();
    assert_eq!(load_config(&dir).unwrap(), m.config);
    let tok = load_tokenizer(&dir).unwrap();
    assert_eq!(tok.encode(SENTENCE, false).unwrap().get_ids(), &SENTENCE_IDS);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["bos_token"], "<|im_start|>");
    assert_eq!(cfg["eos_token"], "<|im_end|>");
    assert_eq!(cfg["pad_token"], "<|im_end|>");
    assert_eq!(cfg["chat_template"].as_str(), m.chat_template.as_deref());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_or_corrupted_copies_are_errors_not_panics() {
    let Some(bytes) = gguf_bytes() else { return };
    for n in [0, 3, 10, 24, 1000, 1_785_000, bytes.len() / 2, bytes.len() - 1] {
        assert!(load_gguf_bytes(&bytes[..n]).is_err(), "prefix of {n} bytes loaded");
    }
    // Tensor count (bytes 8..16) claiming 2^60 tensors.
    let mut hostile = bytes[..4096].to_vec();
    hostile[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let err = load_gguf_bytes(&hostile).unwrap_err();
    assert!(matches!(err, LoadError::GgufCorrupt(_)), "{err}");
}
