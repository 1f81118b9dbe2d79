//! Helpers shared by the `service_*` integration tests: a `WorkerService` serving the tiny models
//! (tiny/llama3 with a word-level tokenizer, tiny/qwen3 without one), message builders, and
//! unwrapping of replies. Everything goes through `WorkerService::handle`.
#![allow(dead_code, clippy::unwrap_used)] // each test crate uses a subset; test helpers may unwrap

use std::collections::BTreeMap;
use std::path::PathBuf;

use kernels::CpuBackend;
use runtime::control::{
    AdamConfig, BaseModelInfo, Datum, Envelope, ErrorCategory, ForwardBackwardResult, FromWorker, SampleRequest,
    SampleResult, SamplingConfig, StopConditions, Tensor, TensorValues, ToWorker,
};
use runtime::LoraConfig;
use worker::load::tokenizer_from_json;
use worker::model::Model;
use worker::rng::Rng;
use worker::service::{ServedModel, WorkerService};
use worker::tiny::tiny_model;

pub const LLAMA: &str = "tiny/llama3";
pub const QWEN: &str = "tiny/qwen3";
pub const VOCAB: usize = 512;

/// A word-level tokenizer over the tiny vocabulary: id i is the word `w{i}`, joined by spaces.
pub fn word_tokenizer() -> tokenizers::Tokenizer {
    let vocab: Vec<String> = (0..VOCAB).map(|i| format!("\"w{i}\": {i}")).collect();
    let json = format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":{{"type":"WhitespaceSplit"}},"post_processor":null,"decoder":null,
        "model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"w0"}}}}"#,
        vocab.join(",")
    );
    tokenizer_from_json(&json).unwrap()
}

pub fn served(name: &str, tokenizer: bool) -> ServedModel {
    let (config, weights) = tiny_model(name, 7).unwrap();
    let info = BaseModelInfo {
        name: name.into(),
        arch: config.model_type().into(),
        max_context_length: config.max_position_embeddings,
        vocab_size: config.vocab_size,
        tokenizer_dir: None,
    };
    let model = Model::new(config, weights, CpuBackend).unwrap();
    ServedModel { info, model, tokenizer: tokenizer.then(word_tokenizer) }
}

/// tiny/llama3 (with tokenizer) and tiny/qwen3 (without), at generation 1.
pub fn service() -> WorkerService {
    WorkerService::new(1, vec![served(LLAMA, true), served(QWEN, false)])
}

pub fn call(svc: &mut WorkerService, body: ToWorker) -> FromWorker {
    svc.handle(Envelope { generation: 1, body })
}

/// Rank 4 on every target, alpha 8.
pub fn lora() -> LoraConfig {
    LoraConfig::new(4, 8.0, 1, true, true, true).unwrap()
}

pub fn create_run(svc: &mut WorkerService, run: &str, base: &str) {
    let reply = call(svc, ToWorker::CreateRun { run: run.into(), base_model: base.into(), lora: lora() });
    assert_eq!(reply, FromWorker::Done);
}

pub fn ids(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % VOCAB as u64) as u32).collect()
}

pub fn f32s(values: Vec<f32>) -> Tensor {
    Tensor { shape: vec![values.len()], values: TensorValues::F32(values) }
}

pub fn i64s(values: &[u32]) -> Tensor {
    Tensor { shape: vec![values.len()], values: TensorValues::I64(values.iter().map(|&t| i64::from(t)).collect()) }
}

/// A next-token cross-entropy datum over `full` (input `full[..-1]`, targets `full[1..]`), weight 1.
pub fn ce_datum(full: &[u32]) -> Datum {
    let n = full.len() - 1;
    let inputs = BTreeMap::from([("target_tokens".into(), i64s(&full[1..])), ("weights".into(), f32s(vec![1.0; n]))]);
    Datum { tokens: full[..n].to_vec(), loss_fn_inputs: inputs, provenance: None }
}

/// Four seeded sequences of 12 tokens.
pub fn batch() -> Vec<Datum> {
    (0..4).map(|i| ce_datum(&ids(12, 100 + i))).collect()
}

pub fn fb(
    svc: &mut WorkerService,
    run: &str,
    data: Vec<Datum>,
    loss: &str,
    forward_only: bool,
) -> ForwardBackwardResult {
    let body = ToWorker::ForwardBackward {
        run: run.into(),
        data,
        loss_fn: loss.into(),
        loss_config: BTreeMap::new(),
        forward_only,
    };
    match call(svc, body) {
        FromWorker::ForwardBackward(r) => r,
        other => panic!("forward_backward failed: {other:?}"),
    }
}

pub fn adam(learning_rate: f64) -> AdamConfig {
    AdamConfig { learning_rate, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.01, grad_clip_norm: 1.0 }
}

pub fn step(svc: &mut WorkerService, run: &str, learning_rate: f64) -> BTreeMap<String, f64> {
    match call(svc, ToWorker::OptimStep { run: run.into(), adam: adam(learning_rate) }) {
        FromWorker::Optim { metrics } => metrics,
        other => panic!("optim_step failed: {other:?}"),
    }
}

/// Every datum's logprobs, concatenated.
pub fn logprobs(r: &ForwardBackwardResult) -> Vec<f32> {
    r.outputs
        .iter()
        .flat_map(|o| match &o.logprobs.values {
            TensorValues::F32(v) => v.clone(),
            TensorValues::I64(_) => panic!("logprobs are float32"),
        })
        .collect()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A sampling config: greedy unless `temperature` > 0, EOS off, no stops.
pub fn sampling(max_tokens: usize, temperature: f32, seed: u64) -> SamplingConfig {
    SamplingConfig { max_tokens, temperature, top_k: -1, top_p: 1.0, seed, stop: StopConditions::default() }
}

pub fn request(sampler: &str, prompt: Vec<u32>, num_samples: usize, params: SamplingConfig) -> SampleRequest {
    SampleRequest {
        sampler: sampler.into(),
        prompt,
        num_samples,
        params,
        prompt_logprobs: false,
        prompt_logprobs_last_n: None,
        topk_prompt_logprobs: 0,
        topk_sample_logprobs: 0,
    }
}

pub fn sample(svc: &mut WorkerService, req: SampleRequest) -> SampleResult {
    match call(svc, ToWorker::Sample(req)) {
        FromWorker::Sampled(r) => r,
        other => panic!("sample failed: {other:?}"),
    }
}

/// The failure's category and message; panics on success.
pub fn failure(reply: FromWorker) -> (ErrorCategory, String) {
    match reply {
        FromWorker::Failed { category, message } => (category, message),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A fresh, empty directory for one test.
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lathe-service-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
