//! The worker-side primitives of a data-parallel chain (`GetGrads` / `SetGrads`) give exactly
//! what one worker gives.
//!
//! Goal: a run that exists on R workers with identical state, whose forward_backward of N datums
//! is split into R contiguous parts run one replica after another (each continuing the previous
//! replica's gradient buffer, the last one's buffer copied back to all), is bit for bit the run on
//! one worker: per-datum outputs, the accumulated gradients, and after `OptimStep` on every replica
//! the saved state, over several steps with gradient accumulation between them.
//! Method: R + 1 in-process services on the same tiny model, each with the same run (same
//! `CreateRun`, same warm-up step so B is non-zero and A gets gradients); the same requests to the
//! single service and, split, to the chain; everything compared as bits, the saved state as the
//! bytes of each `SaveState` file.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod service_common;

use std::collections::BTreeMap;
use std::path::Path;

use runtime::control::{Datum, DatumOutput, ErrorCategory, FromWorker, GradBuffer, TensorValues, ToWorker};
use runtime::LoraConfig;
use service_common::{adam, call, ce_datum, f32s, failure, ids, served, temp_dir};
use worker::service::WorkerService;

const RUN: &str = "r";

/// A service on `base` holding run `RUN` after one warm-up forward_backward and optimizer step.
fn replica(base: &str) -> WorkerService {
    let mut svc = WorkerService::new(1, vec![served(base, false)]);
    let lora = LoraConfig::new(4, 8.0, 3, true, true, true).unwrap();
    let reply = call(&mut svc, ToWorker::CreateRun { run: RUN.into(), base_model: base.into(), lora });
    assert_eq!(reply, FromWorker::Done);
    forward_backward(&mut svc, &datums(2, 70));
    optim_step(&mut svc);
    svc
}

/// `n` cross-entropy datums of uneven lengths (3 to 15 input tokens) whose per-token weights mix
/// 1, 0.5, 0 and 2, so weighting and masked tokens both reach the gradients.
fn datums(n: usize, seed: u64) -> Vec<Datum> {
    (0..n)
        .map(|i| {
            let mut d = ce_datum(&ids(4 + (i * 5) % 13, seed + i as u64));
            let w = (0..d.tokens.len()).map(|t| [1.0, 0.5, 0.0, 2.0][(t + i) % 4]).collect();
            d.loss_fn_inputs.insert("weights".into(), f32s(w));
            d
        })
        .collect()
}

fn forward_backward(svc: &mut WorkerService, data: &[Datum]) -> Vec<DatumOutput> {
    let body = ToWorker::ForwardBackward {
        run: RUN.into(),
        data: data.to_vec(),
        loss_fn: "cross_entropy".into(),
        loss_config: BTreeMap::new(),
        forward_only: false,
    };
    match call(svc, body) {
        FromWorker::ForwardBackward(r) => r.outputs,
        other => panic!("forward_backward failed: {other:?}"),
    }
}

fn optim_step(svc: &mut WorkerService) -> BTreeMap<String, u64> {
    match call(svc, ToWorker::OptimStep { run: RUN.into(), adam: adam(1e-2) }) {
        FromWorker::Optim { metrics } => metrics.into_iter().map(|(k, v)| (k, v.to_bits())).collect(),
        other => panic!("optim_step failed: {other:?}"),
    }
}

fn get_grads(svc: &mut WorkerService) -> GradBuffer {
    match call(svc, ToWorker::GetGrads { run: RUN.into() }) {
        FromWorker::Grads(g) => g,
        other => panic!("get_grads failed: {other:?}"),
    }
}

fn set_grads(svc: &mut WorkerService, grads: &GradBuffer) {
    assert_eq!(call(svc, ToWorker::SetGrads { run: RUN.into(), grads: grads.clone() }), FromWorker::Done);
}

/// One forward_backward as a chain: replica `i` runs the `i`th contiguous part of `data`
/// (`parts` are the part lengths), continuing replica `i - 1`'s gradient buffer; then the last
/// replica's buffer goes back to every other. The outputs of the parts, in datum order.
fn chain_forward_backward(chain: &mut [WorkerService], data: &[Datum], parts: &[usize]) -> Vec<DatumOutput> {
    assert_eq!((chain.len(), parts.iter().sum::<usize>()), (parts.len(), data.len()), "one part per replica");
    let mut outputs = Vec::new();
    let (mut start, mut carried) = (0, None);
    for (svc, &len) in chain.iter_mut().zip(parts) {
        if let Some(grads) = &carried {
            set_grads(svc, grads);
        }
        outputs.extend(forward_backward(svc, &data[start..start + len]));
        carried = Some(get_grads(svc));
        start += len;
    }
    let total = carried.unwrap();
    let (last, others) = chain.split_last_mut().unwrap();
    for svc in others {
        set_grads(svc, &total);
    }
    assert_eq!(bits(&get_grads(last).values), bits(&total.values));
    outputs
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Each datum's logprobs and per-token losses as bits.
fn output_bits(outputs: &[DatumOutput]) -> Vec<Vec<u32>> {
    let f32_bits = |v: &TensorValues| match v {
        TensorValues::F32(v) => bits(v),
        TensorValues::I64(_) => panic!("outputs are float32"),
    };
    outputs.iter().flat_map(|o| [f32_bits(&o.logprobs.values), f32_bits(&o.elementwise_loss.values)]).collect()
}

/// Every file of a `SaveState` (optimizer included) of the run, by name.
fn saved_state(svc: &mut WorkerService, dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let reply = call(svc, ToWorker::SaveState { run: RUN.into(), dir: dir.to_path_buf(), optimizer: true });
    assert!(matches!(reply, FromWorker::Saved { .. }), "{reply:?}");
    let files: BTreeMap<String, Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
        .collect();
    assert!(files.contains_key("optimizer.safetensors") && files.contains_key("adapter_model.safetensors"));
    files
}

/// Two optimizer steps of two accumulated forward_backwards each, on one worker and on a chain
/// split as `parts` (the second call of each step split in reverse order), compared after every
/// call and every step.
fn chain_against_single(base: &str, parts: &[usize]) {
    let mut single = replica(base);
    let mut chain: Vec<WorkerService> = parts.iter().map(|_| replica(base)).collect();
    let reversed: Vec<usize> = parts.iter().rev().copied().collect();
    let dir = temp_dir(&format!("dp-chain-{}-{parts:?}", base.replace('/', "-")));
    for step in 0..2u64 {
        for (call, split) in [parts, &reversed[..]].into_iter().enumerate() {
            let data = datums(parts.iter().sum(), 1000 + 100 * step + 10 * call as u64);
            let one = forward_backward(&mut single, &data);
            let many = chain_forward_backward(&mut chain, &data, split);
            let at = format!("{base} {split:?}: step {step} call {call}");
            assert_eq!(output_bits(&one), output_bits(&many), "{at}: outputs");
            let want = get_grads(&mut single);
            assert!(want.values.iter().any(|&g| g != 0.0), "the requests produced gradients");
            for (i, svc) in chain.iter_mut().enumerate() {
                assert_eq!(bits(&get_grads(svc).values), bits(&want.values), "{at}: replica {i} gradients");
            }
        }
        let metrics = optim_step(&mut single);
        let state = saved_state(&mut single, &dir.join(format!("single-{step}")));
        for (i, svc) in chain.iter_mut().enumerate() {
            assert_eq!(optim_step(svc), metrics, "{base} {parts:?}: step {step} replica {i} optimizer metrics");
            let got = saved_state(svc, &dir.join(format!("replica{i}-{step}")));
            assert!(got == state, "{base} {parts:?}: step {step} replica {i} saved state differs from single's");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The splits every model runs: two and four replicas, even and uneven, a one-datum part too.
const SPLITS: [&[usize]; 4] = [&[4, 4], &[3, 5], &[2, 2, 2, 2], &[1, 3, 1, 3]];

#[test]
fn a_dense_llama_chain_equals_one_worker_bit_for_bit() {
    for parts in SPLITS {
        chain_against_single("tiny/llama3", parts);
    }
}

#[test]
fn a_dense_qwen3_chain_equals_one_worker_bit_for_bit() {
    for parts in SPLITS {
        chain_against_single("tiny/qwen3", parts);
    }
}

/// Exact too, because a sparse layer's shared expert factors (gate/up's A, down's B) are reduced
/// per sequence and added in sequence order like every other site (`model/moe_shared.rs`). They
/// used to take each expert's reduction over all of a pass's sequences straight into the buffer,
/// an expert-major order that a split changes (about 2.6e-5 relative on this model).
#[test]
fn a_moe_chain_equals_one_worker_bit_for_bit() {
    for parts in SPLITS {
        chain_against_single("tiny/qwen3-moe", parts);
    }
}

#[test]
fn a_gradient_buffer_of_the_wrong_length_is_refused_and_changes_nothing() {
    let mut svc = replica("tiny/llama3");
    forward_backward(&mut svc, &datums(3, 40));
    let before = svc.train_state(RUN).unwrap().clone();
    let good = get_grads(&mut svc);
    assert_eq!(good.values.len(), before.grads.numel());
    for len in [0, good.values.len() - 1, good.values.len() + 1] {
        let grads = GradBuffer { values: vec![1.0; len] };
        let (category, message) = failure(call(&mut svc, ToWorker::SetGrads { run: RUN.into(), grads }));
        assert_eq!(category, ErrorCategory::Server, "{message}");
        let want = format!("holds {len} values but the run's gradients hold {}", good.values.len());
        assert!(message.contains(&want) && message.contains("`r`"), "{message}");
        assert!(svc.train_state(RUN).unwrap() == &before, "a refused buffer changed the run");
    }
    assert_eq!(bits(&get_grads(&mut svc).values), bits(&good.values));

    let (category, message) = failure(call(&mut svc, ToWorker::GetGrads { run: "nope".into() }));
    assert!(category == ErrorCategory::User && message.contains("unknown training run `nope`"), "{message}");
    let grads = good.clone();
    let (category, message) = failure(call(&mut svc, ToWorker::SetGrads { run: "nope".into(), grads }));
    assert!(category == ErrorCategory::User && message.contains("unknown training run `nope`"), "{message}");
}

#[test]
fn set_grads_replaces_the_accumulated_gradients_value_for_value() {
    let mut svc = replica("tiny/qwen3");
    forward_backward(&mut svc, &datums(2, 50));
    let n = get_grads(&mut svc).values.len();
    // A distinct value at every position (so the layout shows), and bits a copy must keep: a
    // negative zero, a subnormal, a NaN payload.
    let mut values: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 3.0).collect();
    values[..3].copy_from_slice(&[-0.0, 1.0e-40, f32::from_bits(0x7fc0_1234)]);
    set_grads(&mut svc, &GradBuffer { values: values.clone() });
    assert_eq!(bits(&get_grads(&mut svc).values), bits(&values));
    // The layout is the service's own: sites in path order, A then B.
    let state = svc.train_state(RUN).unwrap();
    let flat: Vec<f32> = state.grads.sites.values().flat_map(|p| p.a.iter().chain(&p.b)).copied().collect();
    assert_eq!(bits(&flat), bits(&values));
}
