//! Memory accounting through `WorkerService::handle`: the report's figures against byte counts
//! worked out by hand from the tiny configs, and the budget: a run or sampler that would not fit is
//! refused as a user error that gives the figures and changes nothing, one that fits exactly is
//! accepted, and dropping frees room.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod service_common;

use runtime::control::{ErrorCategory, FromWorker, MemoryReport, SamplerAdapter, ToWorker};
use service_common::*;
use worker::service::WorkerService;

/// tiny/llama3 (V 512, H 64, I 128, 2 layers, q 4·16 = 64, kv 2·16 = 32, untied), in f32 values:
/// embed 512·64 = 32768; per layer 2 norms 128 + q 4096 + k 2048 + v 2048 + o 4096 + gate, up,
/// down 3·8192 = 36992, so 73984 for two; final norm 64; lm_head 32768. Total 139584 values.
const LLAMA_BASE_BYTES: u64 = 139_584 * 4;
/// tiny/qwen3 (head_dim 24, I 96, tied, q/k norms): embed 32768; per layer 2 norms 128 + q 6144 +
/// k 3072 + v 3072 + o 6144 + q/k norms 48 + MLP 3·6144 = 37040, so 74080 for two; final norm 64.
const QWEN_BASE_BYTES: u64 = 106_912 * 4;
/// `lora()` (rank 4, every target) on tiny/llama3, per layer: q 4·(64+64) 512, k 4·(64+32) 384,
/// v 384, o 512, gate 4·(64+128) 768, up 768, down 768 = 4096, two layers 8192, lm_head
/// 4·(64+512) 2304. Total 10496 values.
const RUN_ADAPTER_BYTES: u64 = 10_496 * 4;
/// Adapter, gradients, and Adam's two moments.
const RUN_TOTAL_BYTES: u64 = 4 * RUN_ADAPTER_BYTES;
const BASE_BYTES: u64 = LLAMA_BASE_BYTES + QWEN_BASE_BYTES;

fn memory(svc: &mut WorkerService) -> MemoryReport {
    match call(svc, ToWorker::Memory) {
        FromWorker::Memory(r) => r,
        other => panic!("memory failed: {other:?}"),
    }
}

fn budgeted(bytes: u64) -> WorkerService {
    service().with_memory_budget(Some(bytes))
}

fn create(svc: &mut WorkerService, run: &str) -> FromWorker {
    call(svc, ToWorker::CreateRun { run: run.into(), base_model: LLAMA.into(), lora: lora() })
}

fn user_error(reply: FromWorker, needles: &[&str]) {
    let (cat, msg) = failure(reply);
    assert_eq!(cat, ErrorCategory::User, "{msg}");
    for n in needles {
        assert!(msg.contains(n), "`{msg}` does not mention `{n}`");
    }
}

/// A training checkpoint and a PEFT export of a fresh `lora()` run on tiny/llama3.
fn saved_adapters(label: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut svc = service();
    create_run(&mut svc, "src", LLAMA);
    let root = temp_dir(label);
    let (state, peft) = (root.join("state"), root.join("peft"));
    let reply = call(&mut svc, ToWorker::SaveState { run: "src".into(), dir: state.clone(), optimizer: true });
    assert!(matches!(reply, FromWorker::Saved { .. }), "{reply:?}");
    let reply = call(&mut svc, ToWorker::ExportPeft { run: "src".into(), dir: peft.clone() });
    assert!(matches!(reply, FromWorker::Saved { .. }), "{reply:?}");
    (state, peft)
}

#[test]
fn the_report_counts_base_weights_runs_and_samplers_as_worked_out_by_hand() {
    let mut svc = service();
    let empty = memory(&mut svc);
    assert_eq!(empty.base_models[LLAMA], LLAMA_BASE_BYTES);
    assert_eq!(empty.base_models[QWEN], QWEN_BASE_BYTES);
    assert_eq!((empty.base_bytes, empty.used_bytes), (BASE_BYTES, BASE_BYTES));
    assert_eq!((empty.budget_bytes, empty.free_bytes), (None, None));
    assert!(empty.runs.is_empty() && empty.samplers.is_empty());

    create_run(&mut svc, "a", LLAMA);
    let adapter = SamplerAdapter::LiveRun("a".into());
    let reply = call(&mut svc, ToWorker::CreateSampler { sampler: "s".into(), base_model: LLAMA.into(), adapter });
    assert_eq!(reply, FromWorker::Done);
    let reply = call(
        &mut svc,
        ToWorker::CreateSampler { sampler: "b".into(), base_model: QWEN.into(), adapter: SamplerAdapter::None },
    );
    assert_eq!(reply, FromWorker::Done);
    let r = memory(&mut svc);
    let run = &r.runs["a"];
    assert_eq!(run.base_model, LLAMA);
    assert_eq!((run.adapter_bytes, run.gradient_bytes, run.adam_bytes), (41_984, 41_984, 83_968));
    assert_eq!(run.total_bytes, RUN_TOTAL_BYTES);
    assert_eq!((r.samplers["s"].adapter_bytes, r.samplers["b"].adapter_bytes), (RUN_ADAPTER_BYTES, 0));
    assert_eq!(r.runs_bytes, RUN_TOTAL_BYTES);
    assert_eq!(r.samplers_bytes, RUN_ADAPTER_BYTES);
    assert_eq!(r.used_bytes, BASE_BYTES + RUN_TOTAL_BYTES + RUN_ADAPTER_BYTES);
}

#[test]
fn create_model_beyond_the_budget_is_a_user_error_that_changes_nothing_and_dropping_makes_room() {
    // Room for exactly one run.
    let budget = BASE_BYTES + RUN_TOTAL_BYTES;
    let mut svc = budgeted(budget);
    assert_eq!(memory(&mut svc).free_bytes, Some(RUN_TOTAL_BYTES));
    assert_eq!(create(&mut svc, "a"), FromWorker::Done, "a run that fits exactly is accepted");
    let full = memory(&mut svc);
    assert_eq!((full.used_bytes, full.free_bytes, full.budget_bytes), (budget, Some(0), Some(budget)));

    // 167936 B = 0.16 MiB needed (adapter and gradients 41984 B = 0.04 MiB, Adam 83968 B = 0.08 MiB),
    // 1153920 B = 1.10 MiB in use and budgeted.
    user_error(
        create(&mut svc, "b"),
        &[
            "training run `b` needs 0.16 MiB (adapter 0.04 MiB, gradients 0.04 MiB, Adam state 0.08 MiB)",
            "1.10 MiB in use",
            "of its 1.10 MiB budget",
            "end sessions",
            "smaller rank",
            "--memory-bytes-max",
        ],
    );
    assert_eq!(memory(&mut svc), full, "a refused create_model allocates nothing");
    user_error(call(&mut svc, ToWorker::OptimStep { run: "b".into(), adam: adam(1e-3) }), &["unknown training run"]);

    assert_eq!(call(&mut svc, ToWorker::DropRun { run: "a".into() }), FromWorker::Done);
    assert_eq!(create(&mut svc, "b"), FromWorker::Done, "dropping a run frees its bytes");
    assert_eq!(memory(&mut svc).runs.keys().collect::<Vec<_>>(), ["b"]);
}

#[test]
fn a_sampler_beyond_the_budget_is_refused_and_not_created_but_a_base_model_sampler_costs_nothing() {
    let mut svc = budgeted(BASE_BYTES + RUN_TOTAL_BYTES + RUN_ADAPTER_BYTES - 1);
    assert_eq!(create(&mut svc, "a"), FromWorker::Done);
    let before = memory(&mut svc);
    let adapter = SamplerAdapter::LiveRun("a".into());
    let reply = call(&mut svc, ToWorker::CreateSampler { sampler: "s".into(), base_model: LLAMA.into(), adapter });
    user_error(reply, &["sampler `s` needs 0.04 MiB", "--memory-bytes-max"]);
    assert_eq!(memory(&mut svc), before);
    let reply = call(&mut svc, ToWorker::Sample(request("s", vec![1, 2], 1, sampling(2, 0.0, 1))));
    user_error(reply, &["unknown sampler `s`"]);

    let reply = call(
        &mut svc,
        ToWorker::CreateSampler { sampler: "base".into(), base_model: LLAMA.into(), adapter: SamplerAdapter::None },
    );
    assert_eq!(reply, FromWorker::Done);
}

#[test]
fn a_sampler_read_from_a_directory_is_sized_before_reading_exactly_as_it_turns_out() {
    let (state, peft) = saved_adapters("memory-sampler-dirs");
    for dir in [state, peft] {
        let mut tight = budgeted(BASE_BYTES + RUN_ADAPTER_BYTES - 1);
        let adapter = SamplerAdapter::Dir(dir.clone());
        let reply =
            call(&mut tight, ToWorker::CreateSampler { sampler: "s".into(), base_model: LLAMA.into(), adapter });
        user_error(reply, &["sampler `s` needs"]);
        assert!(memory(&mut tight).samplers.is_empty(), "{}", dir.display());

        let mut exact = budgeted(BASE_BYTES + RUN_ADAPTER_BYTES);
        let adapter = SamplerAdapter::Dir(dir.clone());
        let reply =
            call(&mut exact, ToWorker::CreateSampler { sampler: "s".into(), base_model: LLAMA.into(), adapter });
        assert_eq!(reply, FromWorker::Done, "{}", dir.display());
        let r = memory(&mut exact);
        assert_eq!((r.samplers["s"].adapter_bytes, r.free_bytes), (RUN_ADAPTER_BYTES, Some(0)));
    }
}

#[test]
fn load_state_of_a_new_run_must_fit_but_reloading_an_existing_run_does_not_count_twice() {
    let (state, _) = saved_adapters("memory-load-state");
    let load = |run: &str| ToWorker::LoadState { run: run.into(), dir: state.clone(), optimizer: true };

    let mut tight = budgeted(BASE_BYTES + RUN_TOTAL_BYTES - 1);
    user_error(call(&mut tight, load("r")), &["load_state for training run `r` needs 0.16 MiB"]);
    assert!(memory(&mut tight).runs.is_empty());

    let mut exact = budgeted(BASE_BYTES + RUN_TOTAL_BYTES);
    assert_eq!(call(&mut exact, load("r")), FromWorker::Done);
    assert_eq!(memory(&mut exact).runs["r"].total_bytes, RUN_TOTAL_BYTES);
    assert_eq!(call(&mut exact, load("r")), FromWorker::Done, "the same run reloaded keeps its size");
    user_error(call(&mut exact, load("r2")), &["load_state for training run `r2`"]);
}
