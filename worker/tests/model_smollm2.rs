//! The real SmolLM2-135M-Instruct, from its Q4_1 GGUF, against transformers on the same dequantized
//! weights (`ops/golden/fixtures/smollm2/smollm2.json`, written by `ops/golden/generate.py`):
//! mean cross-entropy of a fixed paragraph within 1e-3, and 32 greedy tokens after a chat prompt
//! equal to transformers' greedy tokens (a step whose top-2 logit gap is under 1e-4 is a tie that
//! f32 rounding may break either way, so the comparison ends there).
//!
//! Without the model file the tests print a notice and pass, unless `LATHE_REQUIRE_MODELS=1`
//! (set by CI), in which case a missing model is a failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kernels::CpuBackend;
use serde_json::Value;
use worker::load::{load_gguf, tokenizer_from_json};
use worker::model::{Model, PackedBatch};
use worker::sample::{sample, SampleParams};

/// A tie in the reference's greedy choice: below this top-2 gap the comparison stops.
const GAP_MIN: f64 = 1e-4;

fn gguf_path() -> Option<PathBuf> {
    let path = match std::env::var_os("LATHE_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = match std::env::var_os("LATHE_CACHE") {
                Some(c) => PathBuf::from(c),
                None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/lathe"),
            };
            cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("LATHE_REQUIRE_MODELS").as_deref() != Ok("1"),
        "LATHE_REQUIRE_MODELS=1 but {} is missing; run ops/fetch-models.sh",
        path.display()
    );
    eprintln!("NOTICE: skipping SmolLM2 model test: {} not found (run ops/fetch-models.sh)", path.display());
    None
}

struct Fixture {
    model: Model<CpuBackend>,
    tokenizer_json: String,
    golden: Value,
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let path = gguf_path()?;
        let m = load_gguf(&path).expect("the SmolLM2 GGUF loads");
        let model = Model::new(m.config, m.weights, CpuBackend).expect("SmolLM2 builds as a llama model");
        let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/golden/fixtures/smollm2/smollm2.json");
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(golden_path).unwrap()).unwrap();
        Some(Fixture { model, tokenizer_json: m.tokenizer_json, golden })
    })
    .as_ref()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn paragraph_cross_entropy_matches_transformers() {
    let Some(f) = fixture() else { return };
    let paragraph_ids = ids(&f.golden["paragraph_ids"]);
    // Our tokenizer (rebuilt from the GGUF metadata) must produce the ids transformers used.
    let tok = tokenizer_from_json(&f.tokenizer_json).unwrap();
    let enc = tok.encode(f.golden["paragraph"].as_str().unwrap(), false).unwrap();
    assert_eq!(enc.get_ids(), &paragraph_ids[..], "tokenizer ids differ from transformers'");

    let n = paragraph_ids.len();
    let batch = PackedBatch::new(&[(&paragraph_ids[..n - 1], &paragraph_ids[1..])], 1).unwrap();
    let fwd = f.model.forward(&batch, None).unwrap();
    let mean_ce = -fwd.logprobs.iter().map(|&x| x as f64).sum::<f64>() / (n - 1) as f64;
    let want = f.golden["mean_cross_entropy"].as_f64().unwrap();
    eprintln!("SmolLM2 mean cross-entropy: lathe {mean_ce:.7}, transformers {want:.7}");
    assert!((mean_ce - want).abs() <= 1e-3, "mean CE {mean_ce} vs transformers {want}");

    // Per-token logprobs too (looser than bit-exact: different summation orders over 576..1536).
    let want_lp: Vec<f64> =
        f.golden["token_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let max_diff = fwd.logprobs.iter().zip(&want_lp).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
    eprintln!("SmolLM2 per-token logprob max |diff|: {max_diff:.2e}");
    assert!(max_diff <= 1e-2, "a token logprob differs from transformers by {max_diff}");
}

#[test]
fn greedy_tokens_after_a_chat_prompt_match_transformers() {
    let Some(f) = fixture() else { return };
    let prompt = ids(&f.golden["chat_prompt_ids"]);
    let want = ids(&f.golden["greedy_ids"]);
    let gaps: Vec<f64> = f.golden["greedy_top2_gap"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    // `stop_token_ids` empty: like the fixture, generation runs through EOS.
    let params = SampleParams {
        max_tokens: want.len(),
        temperature: 0.0,
        top_k: -1,
        top_p: 1.0,
        seed: 0,
        stop_token_ids: vec![],
    };
    let got = sample(&f.model, None, &prompt, &params, 1).unwrap().remove(0).tokens;
    let compared = gaps.iter().position(|&g| g < GAP_MIN).unwrap_or(want.len());
    assert!(compared >= 8, "the fixture has a near-tie too early to be a useful check");
    assert_eq!(&got[..compared], &want[..compared], "greedy tokens differ from transformers' (compared {compared})");
    let tok = tokenizer_from_json(&f.tokenizer_json).unwrap();
    let text = tok.decode(&got[..8], false).unwrap();
    assert!(text.starts_with("The capital of France is Paris."), "decoded: {text:?}");
}
