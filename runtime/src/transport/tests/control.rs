//! The control messages of `runtime::control` through frames (bincode 2 is not
//! self-describing, so every serde attribute of theirs must survive it), and their JSON form,
//! which the coordinator's journal keeps.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::control::{
    AdamConfig, Datum, DatumOutput, Envelope, ErrorCategory, FbRequest, ForwardBackwardResult, FromWorker, GradBuffer,
    MemoryReport, Provenance, ProvenanceSpan, RunMemory, SampleRequest, SampleResult, SampledSequence, SamplerAdapter,
    SamplerMemory, SamplingConfig, SpanSource, StopConditions, StopReason, Tensor, TensorValues, ToWorker,
};
use crate::lora::LoraConfig;
use crate::transport::{decode_frame, encode_frame, Frame, Limits};

fn f32s(shape: Vec<usize>, values: Vec<f32>) -> Tensor {
    Tensor { shape, values: TensorValues::F32(values) }
}

fn datum(with_provenance: bool) -> Datum {
    let mut inputs = BTreeMap::new();
    inputs.insert("target_tokens".to_string(), Tensor { shape: vec![3], values: TensorValues::I64(vec![5, -1, 9]) });
    inputs.insert("weights".to_string(), f32s(vec![3], vec![1.0, 0.5, 0.0]));
    let span = |source, length| ProvenanceSpan { source, sequence_id: "seq-1".into(), offset: 2, length };
    let provenance = with_provenance.then(|| Provenance {
        model_input: vec![span(SpanSource::Prompt, 1), span(SpanSource::Sampled, 2)],
        loss_fn_inputs: vec![span(SpanSource::Sampled, 3)],
    });
    Datum { tokens: vec![1, 2, 150_000], loss_fn_inputs: inputs, provenance }
}

fn fb_request() -> FbRequest {
    FbRequest {
        run: "run-1".into(),
        data: vec![datum(true), datum(false)],
        loss_fn: "cross_entropy".into(),
        loss_config: BTreeMap::from([("clip".to_string(), 0.2)]),
        forward_only: false,
    }
}

/// One of every `ToWorker` variant (three `CreateSampler`s, one per adapter source).
fn every_to_worker() -> Vec<ToWorker> {
    let lora = LoraConfig::new(8, 16.0, 42, true, true, false).expect("valid lora");
    let adam =
        AdamConfig { learning_rate: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-12, weight_decay: 0.0, grad_clip_norm: 1.0 };
    let params = SamplingConfig {
        max_tokens: 16,
        temperature: 0.7,
        top_k: -1,
        top_p: 0.95,
        seed: 7,
        stop: StopConditions { token_ids: vec![2], strings: vec!["\n\n".into()], eos: true },
    };
    let fb = fb_request();
    let sampler = |adapter| ToWorker::CreateSampler { sampler: "s".into(), base_model: "tiny/qwen3".into(), adapter };
    vec![
        ToWorker::CreateRun { run: "run-1".into(), base_model: "tiny/llama3".into(), lora },
        ToWorker::DropRun { run: "run-1".into() },
        ToWorker::ForwardBackward {
            run: fb.run.clone(),
            data: fb.data.clone(),
            loss_fn: fb.loss_fn.clone(),
            loss_config: fb.loss_config.clone(),
            forward_only: true,
        },
        ToWorker::OptimStep { run: "run-1".into(), adam },
        ToWorker::SaveState { run: "run-1".into(), dir: PathBuf::from("/data/runs/r/state/0"), optimizer: true },
        ToWorker::LoadState { run: "run-2".into(), dir: PathBuf::from("/data/runs/r/state/0"), optimizer: false },
        ToWorker::ExportPeft { run: "run-1".into(), dir: PathBuf::from("/tmp/peft") },
        sampler(SamplerAdapter::None),
        sampler(SamplerAdapter::Dir(PathBuf::from("/tmp/peft"))),
        sampler(SamplerAdapter::LiveRun("run-1".into())),
        ToWorker::DropSampler { sampler: "s".into() },
        ToWorker::Sample(SampleRequest {
            sampler: "s".into(),
            prompt: vec![1, 2, 3],
            num_samples: 2,
            params,
            prompt_logprobs: true,
            prompt_logprobs_last_n: Some(2),
            topk_prompt_logprobs: 3,
            topk_sample_logprobs: 0,
        }),
        ToWorker::Memory,
        ToWorker::ForwardBackwardMany { items: vec![fb.clone(), FbRequest { run: "run-3".into(), ..fb }] },
        ToWorker::GetGrads { run: "run-1".into() },
        ToWorker::SetGrads { run: "run-1".into(), grads: grad_buffer() },
    ]
}

/// The variant's name; exhaustive, so a new variant fails to compile until it is listed above.
fn to_worker_name(m: &ToWorker) -> &'static str {
    match m {
        ToWorker::CreateRun { .. } => "CreateRun",
        ToWorker::DropRun { .. } => "DropRun",
        ToWorker::ForwardBackward { .. } => "ForwardBackward",
        ToWorker::OptimStep { .. } => "OptimStep",
        ToWorker::SaveState { .. } => "SaveState",
        ToWorker::LoadState { .. } => "LoadState",
        ToWorker::ExportPeft { .. } => "ExportPeft",
        ToWorker::CreateSampler { .. } => "CreateSampler",
        ToWorker::DropSampler { .. } => "DropSampler",
        ToWorker::Sample(_) => "Sample",
        ToWorker::Memory => "Memory",
        ToWorker::ForwardBackwardMany { .. } => "ForwardBackwardMany",
        ToWorker::GetGrads { .. } => "GetGrads",
        ToWorker::SetGrads { .. } => "SetGrads",
    }
}
const TO_WORKER_VARIANTS: usize = 14;

/// Gradient values whose bits matter: a negative zero, a subnormal, extremes.
fn grad_buffer() -> GradBuffer {
    GradBuffer { values: vec![0.0, -0.0, 1.5e-42, -3.25, f32::MAX, f32::MIN_POSITIVE] }
}

/// One of every `FromWorker` variant (no NaN: the comparison is `PartialEq`).
fn every_from_worker() -> Vec<FromWorker> {
    let fb = ForwardBackwardResult {
        outputs: vec![DatumOutput {
            logprobs: f32s(vec![2, 2], vec![-0.1, -2.5, -0.3, -1.0]),
            elementwise_loss: f32s(vec![2], vec![0.1, 0.3]),
        }],
        metrics: BTreeMap::from([("loss:sum".to_string(), 0.4)]),
    };
    let sampled = SampleResult {
        sequences: vec![
            SampledSequence {
                tokens: vec![4, 5],
                logprobs: vec![-0.5, -0.25],
                stop_reason: StopReason::Stop,
                topk_logprobs: Some(vec![vec![(4, -0.5), (9, -1.5)], vec![(5, -0.25)]]),
            },
            SampledSequence { tokens: vec![], logprobs: vec![], stop_reason: StopReason::Length, topk_logprobs: None },
        ],
        prompt_logprobs: Some(vec![0.0, -1.25]),
        topk_prompt_logprobs: None,
    };
    let memory = MemoryReport {
        base_models: BTreeMap::from([("tiny/llama3".to_string(), 1 << 20)]),
        runs: BTreeMap::from([(
            "run-1".to_string(),
            RunMemory {
                base_model: "tiny/llama3".into(),
                adapter_bytes: 10,
                gradient_bytes: 10,
                adam_bytes: 20,
                total_bytes: 40,
            },
        )]),
        samplers: BTreeMap::from([(
            "s".to_string(),
            SamplerMemory { base_model: "tiny/llama3".into(), adapter_bytes: 10 },
        )]),
        base_bytes: 1 << 20,
        runs_bytes: 40,
        samplers_bytes: 10,
        used_bytes: (1 << 20) + 50,
        budget_bytes: None,
        free_bytes: None,
    };
    let failed = |category| FromWorker::Failed { category, message: "no such run `x`".into() };
    vec![
        FromWorker::Done,
        FromWorker::ForwardBackward(fb.clone()),
        FromWorker::Optim { metrics: BTreeMap::from([("grad_norm".to_string(), 1.5)]) },
        FromWorker::Saved { bytes: 123_456 },
        FromWorker::Sampled(sampled),
        failed(ErrorCategory::User),
        failed(ErrorCategory::Server),
        FromWorker::Memory(memory),
        FromWorker::Each(vec![FromWorker::ForwardBackward(fb), failed(ErrorCategory::User), FromWorker::Done]),
        FromWorker::Grads(grad_buffer()),
    ]
}
const FROM_WORKER_VARIANTS: usize = 9;

/// Through a frame and its bytes and back.
fn through_a_frame<T: serde::Serialize + serde::de::DeserializeOwned>(generation: u64, call: u64, msg: &T) -> T {
    let f = Frame::encode(generation, call, msg, Vec::new()).expect("encodes");
    let bytes = encode_frame(&f);
    let (back, used) = decode_frame(&bytes, &Limits::default()).expect("valid").expect("complete");
    assert_eq!((back.generation, back.call, used), (generation, call, bytes.len()));
    back.decode().expect("decodes")
}

/// Goal: every request survives the transport exactly, inside its envelope.
/// Method: one of every variant (the exhaustive name match keeps the list complete).
#[test]
fn every_to_worker_variant_round_trips_through_a_frame() {
    let all = every_to_worker();
    let names: std::collections::BTreeSet<_> = all.iter().map(to_worker_name).collect();
    assert_eq!(names.len(), TO_WORKER_VARIANTS);
    for (call, body) in all.into_iter().enumerate() {
        let env = Envelope { generation: 9, body };
        assert_eq!(through_a_frame(9, call as u64, &env), env);
    }
}

/// Goal: every reply survives the transport exactly.
/// Method: one of every variant, `Failed` in both categories, `Each` nesting others.
#[test]
fn every_from_worker_variant_round_trips_through_a_frame() {
    let all = every_from_worker();
    let kinds: std::collections::BTreeSet<_> = all.iter().map(FromWorker::kind).collect();
    assert_eq!(kinds.len(), FROM_WORKER_VARIANTS);
    for (call, reply) in all.into_iter().enumerate() {
        assert_eq!(through_a_frame(9, call as u64, &reply), reply);
    }
}

/// Goal: `Datum` keeps its JSON form for the journal: rows written before provenance existed
/// (no `provenance` key) still read, and both forms round-trip; and it works in bincode, which
/// fails when a field is left out of the encoding (`skip_serializing_if`).
/// Method: parse an old-style row; round-trip with and without provenance in JSON and bincode.
#[test]
fn datum_round_trips_in_json_and_bincode_and_reads_old_journal_rows() {
    let old_row = r#"{"tokens":[1,2],"loss_fn_inputs":{"weights":{"shape":[2],"values":{"F32":[1.0,1.0]}}}}"#;
    let old: Datum = serde_json::from_str(old_row).expect("an old journal row reads");
    assert_eq!(old.provenance, None);
    for d in [datum(false), datum(true)] {
        let json = serde_json::to_string(&d).expect("to json");
        assert_eq!(serde_json::from_str::<Datum>(&json).expect("from json"), d);
        assert_eq!(through_a_frame(0, 0, &d), d);
    }
}
