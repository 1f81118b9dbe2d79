//! Writes a PEFT-export check case for `ops/golden/check_peft_export.py`: for each tiny model, the
//! base model as a HF directory (`base/config.json`, `base/model.safetensors`), a LoRA run trained
//! a few steps through `WorkerService` and exported as a PEFT adapter (`peft/`), and `case.json`
//! with token ids, targets and lathe's forward logprobs for them.
//!
//! Usage: `cargo run -p worker --example peft_export_case -- OUT_DIR [MODEL...]`
//! where a MODEL is a tiny model name or a path to a `.gguf` file (e.g. the SmolLM2 GGUF, served
//! as `HuggingFaceTB/SmolLM2-135M-Instruct`); models default to every tiny model. Each case goes to
//! `OUT_DIR/<name with / as ->`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kernels::CpuBackend;
use runtime::control::{AdamConfig, BaseModelInfo, Datum, Envelope, FromWorker, Tensor, TensorValues, ToWorker};
use runtime::LoraConfig;
use runtime::ModelConfig;
use worker::load::{load_gguf, save_safetensors};
use worker::model::Model;
use worker::rng::Rng;
use worker::service::{ServedModel, WorkerService};
use worker::tensor::WeightMap;
use worker::tiny::{tiny_model, tiny_names};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Returns early with an error built from a format string.
macro_rules! bail {
    ($($arg:tt)*) => { return Err(format!($($arg)*).into()) };
}

/// Seeds of the base weights and of the data.
const MODEL_SEED: u64 = 11;
const DATA_SEED: u64 = 2024;
/// The name a `.gguf` argument is served under.
const SMOLLM2: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, names)) = args.split_first() else {
        bail!("usage: peft_export_case OUT_DIR [MODEL...]  (models: {})", tiny_names().join(", "));
    };
    let names: Vec<String> =
        if names.is_empty() { tiny_names().iter().map(|s| s.to_string()).collect() } else { names.to_vec() };
    for arg in &names {
        let (name, config, weights) = if arg.ends_with(".gguf") {
            let gguf = load_gguf(Path::new(arg))?;
            (SMOLLM2.to_string(), gguf.config, gguf.weights)
        } else {
            let (config, weights) = tiny_model(arg, MODEL_SEED)?;
            (arg.clone(), config, weights)
        };
        let dir = PathBuf::from(out).join(name.replace('/', "-"));
        let base = dir.join("base");
        std::fs::create_dir_all(&base)?;
        std::fs::write(base.join("config.json"), serde_json::to_vec_pretty(&config.to_hf_json())?)?;
        save_safetensors(&base.join("model.safetensors"), &weights)?;
        write_case(&name, config, weights, &dir).map_err(|e| format!("writing the case for {name}: {e}"))?;
        println!("{}", dir.display());
    }
    Ok(())
}

/// Trains, exports and scores `name` through a `WorkerService`, writing `peft/` and `case.json`.
fn write_case(name: &str, config: ModelConfig, weights: WeightMap, dir: &Path) -> Result<()> {
    let info = BaseModelInfo {
        name: name.to_string(),
        arch: config.model_type().to_string(),
        max_context_length: config.max_position_embeddings,
        vocab_size: config.vocab_size,
        tokenizer_dir: None,
    };
    let vocab = config.vocab_size;
    let model = Model::new(config, weights, CpuBackend)?;
    let mut svc = WorkerService::new(1, vec![ServedModel { info, model, tokenizer: None }]);
    let mut call = |body| svc.handle(Envelope { generation: 1, body });

    let lora = LoraConfig::new(4, 8.0, 3, true, true, true)?;
    expect_done(call(ToWorker::CreateRun { run: "r".into(), base_model: name.into(), lora }))?;
    let mut rng = Rng::new(DATA_SEED);
    let train: Vec<Vec<u32>> = (0..4).map(|_| ids(&mut rng, 16, vocab)).collect();
    let adam =
        AdamConfig { learning_rate: 2e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0, grad_clip_norm: 0.0 };
    for _ in 0..4 {
        forward(&mut call, &train, false)?;
        if let FromWorker::Failed { message, .. } = call(ToWorker::OptimStep { run: "r".into(), adam }) {
            bail!("optim_step: {message}");
        }
    }
    let peft = dir.join("peft");
    if let FromWorker::Failed { message, .. } = call(ToWorker::ExportPeft { run: "r".into(), dir: peft }) {
        bail!("export: {message}");
    }

    let held_out: Vec<Vec<u32>> = (0..3).map(|i| ids(&mut rng, 10 + 7 * i, vocab)).collect();
    let logprobs = forward(&mut call, &held_out, true)?;
    let sequences: Vec<serde_json::Value> = held_out
        .iter()
        .zip(logprobs)
        .map(|(full, lp)| serde_json::json!({"tokens": full[..full.len() - 1], "targets": full[1..], "logprobs": lp}))
        .collect();
    let case = serde_json::json!({"model": name, "model_seed": MODEL_SEED, "sequences": sequences});
    std::fs::write(dir.join("case.json"), serde_json::to_vec_pretty(&case)?)?;
    Ok(())
}

/// Next-token cross-entropy over each sequence; returns each datum's target logprobs.
fn forward(
    call: &mut impl FnMut(ToWorker) -> FromWorker,
    seqs: &[Vec<u32>],
    forward_only: bool,
) -> Result<Vec<Vec<f32>>> {
    let data = seqs
        .iter()
        .map(|full| {
            let n = full.len() - 1;
            let targets =
                Tensor { shape: vec![n], values: TensorValues::I64(full[1..].iter().map(|&t| i64::from(t)).collect()) };
            let weights = Tensor { shape: vec![n], values: TensorValues::F32(vec![1.0; n]) };
            let inputs = BTreeMap::from([("target_tokens".to_string(), targets), ("weights".to_string(), weights)]);
            Datum { tokens: full[..n].to_vec(), loss_fn_inputs: inputs, provenance: None }
        })
        .collect();
    let body = ToWorker::ForwardBackward {
        run: "r".into(),
        data,
        loss_fn: "cross_entropy".into(),
        loss_config: BTreeMap::new(),
        forward_only,
    };
    match call(body) {
        FromWorker::ForwardBackward(r) => r
            .outputs
            .into_iter()
            .map(|o| match o.logprobs.values {
                TensorValues::F32(v) => Ok(v),
                TensorValues::I64(_) => bail!("logprobs came back as int64"),
            })
            .collect(),
        other => bail!("forward_backward: {other:?}"),
    }
}

fn expect_done(reply: FromWorker) -> Result<()> {
    match reply {
        FromWorker::Done => Ok(()),
        other => bail!("{other:?}"),
    }
}

fn ids(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}
