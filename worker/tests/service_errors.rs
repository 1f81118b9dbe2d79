//! Error categories through `WorkerService::handle`: stale generations are server failures and a
//! newer generation is adopted; every input mistake is a user failure whose message names the
//! run, sampler, field or datum; a refused request leaves the run untouched.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod service_common;

use std::collections::BTreeMap;

use runtime::control::{AdamConfig, Envelope, ErrorCategory, FromWorker, SamplerAdapter, ToWorker};
use service_common::*;

fn user_error(reply: FromWorker, needles: &[&str]) {
    let (cat, msg) = failure(reply);
    assert_eq!(cat, ErrorCategory::User, "{msg}");
    for n in needles {
        assert!(msg.contains(n), "`{msg}` does not mention `{n}`");
    }
}

#[test]
fn an_older_generation_is_refused_as_stale_and_a_newer_one_is_adopted() {
    let mut svc = service();
    let drop = |generation| Envelope { generation, body: ToWorker::DropRun { run: "x".into() } };
    assert_eq!(svc.handle(drop(1)), FromWorker::Done);
    assert_eq!(svc.handle(drop(5)), FromWorker::Done);
    assert_eq!(svc.generation(), 5);
    let (cat, msg) = failure(svc.handle(drop(4)));
    assert_eq!(cat, ErrorCategory::Server);
    assert!(msg.starts_with("stale generation"), "{msg}");
    assert_eq!(svc.generation(), 5, "a stale envelope does not roll the generation back");
}

#[test]
fn unknown_runs_samplers_and_base_models_are_named() {
    let mut svc = service();
    user_error(
        call(&mut svc, ToWorker::OptimStep { run: "nope".into(), adam: adam(1e-3) }),
        &["unknown training run", "nope"],
    );
    let fwd = ToWorker::ForwardBackward {
        run: "nope".into(),
        data: batch(),
        loss_fn: "cross_entropy".into(),
        loss_config: BTreeMap::new(),
        forward_only: true,
    };
    user_error(call(&mut svc, fwd), &["unknown training run"]);
    user_error(
        call(&mut svc, ToWorker::ExportPeft { run: "nope".into(), dir: "/tmp/x".into() }),
        &["unknown training run"],
    );
    user_error(
        call(&mut svc, ToWorker::Sample(request("nope", vec![1], 1, sampling(1, 0.0, 0)))),
        &["unknown sampler"],
    );
    let create = ToWorker::CreateRun { run: "r".into(), base_model: "gpt-5".into(), lora: lora() };
    user_error(call(&mut svc, create), &["gpt-5", LLAMA, QWEN]);
    create_run(&mut svc, "r", LLAMA);
    let again = ToWorker::CreateRun { run: "r".into(), base_model: LLAMA.into(), lora: lora() };
    user_error(call(&mut svc, again), &["already exists"]);
    let live = ToWorker::CreateSampler {
        sampler: "s".into(),
        base_model: LLAMA.into(),
        adapter: SamplerAdapter::LiveRun("q".into()),
    };
    user_error(call(&mut svc, live), &["unknown training run", "q"]);
}

#[test]
fn bad_training_inputs_name_the_field_or_datum_and_leave_the_run_unchanged() {
    let mut svc = service();
    create_run(&mut svc, "r", LLAMA);
    let before = logprobs(&fb(&mut svc, "r", batch(), "cross_entropy", true));
    let mut bad_lora = lora();
    bad_lora.rank = 0;
    user_error(
        call(&mut svc, ToWorker::CreateRun { run: "z".into(), base_model: LLAMA.into(), lora: bad_lora }),
        &["rank"],
    );

    let fwd = |data, loss: &str, config: BTreeMap<String, f64>| ToWorker::ForwardBackward {
        run: "r".into(),
        data,
        loss_fn: loss.into(),
        loss_config: config,
        forward_only: false,
    };
    user_error(call(&mut svc, fwd(batch(), "ppo2", BTreeMap::new())), &["ppo2"]);
    user_error(call(&mut svc, fwd(batch(), "ppo", BTreeMap::from([("beta".into(), 1.0)]))), &["beta"]);
    user_error(call(&mut svc, fwd(vec![], "cross_entropy", BTreeMap::new())), &["no datums"]);
    let mut data = batch();
    data[2].tokens[1] = 9999;
    user_error(call(&mut svc, fwd(data, "cross_entropy", BTreeMap::new())), &["datum 2", "9999"]);
    let mut data = batch();
    let stray = data[1].loss_fn_inputs["weights"].clone();
    data[1].loss_fn_inputs.insert("advantages".into(), stray);
    user_error(call(&mut svc, fwd(data, "cross_entropy", BTreeMap::new())), &["datum 1", "advantages"]);
    let mut data = batch();
    data[3].loss_fn_inputs.get_mut("weights").unwrap().shape = vec![99];
    user_error(call(&mut svc, fwd(data, "cross_entropy", BTreeMap::new())), &["datum 3", "weights"]);
    user_error(call(&mut svc, fwd(batch(), "importance_sampling", BTreeMap::new())), &["datum 0", "logprobs"]);
    let long = vec![ce_datum(&ids(300, 1))];
    user_error(call(&mut svc, fwd(long, "cross_entropy", BTreeMap::new())), &["datum 0", "256"]);

    let bad_adam = AdamConfig { beta2: 1.5, ..adam(1e-3) };
    user_error(call(&mut svc, ToWorker::OptimStep { run: "r".into(), adam: bad_adam }), &["beta2"]);
    let m = step(&mut svc, "r", 1e-2);
    assert_eq!(m["grad_norm:mean"], 0.0, "refused forward_backwards added no gradient");
    assert_eq!(m["step:max"], 1.0, "the refused optim_step did not count");
    let after = logprobs(&fb(&mut svc, "r", batch(), "cross_entropy", true));
    assert_eq!(
        bits(&before),
        bits(&after),
        "B is still zero after a zero-gradient first step, so the outputs cannot have moved"
    );
}

#[test]
fn bad_sample_requests_name_the_field() {
    let mut svc = service();
    for (name, base) in [("l", LLAMA), ("q", QWEN)] {
        let create =
            ToWorker::CreateSampler { sampler: name.into(), base_model: base.into(), adapter: SamplerAdapter::None };
        assert_eq!(call(&mut svc, create), FromWorker::Done);
    }
    let send = |svc: &mut worker::service::WorkerService, req| call(svc, ToWorker::Sample(req));
    user_error(send(&mut svc, request("l", vec![1, 2], 0, sampling(4, 1.0, 0))), &["num_samples"]);
    user_error(send(&mut svc, request("l", vec![], 1, sampling(4, 1.0, 0))), &["prompt"]);
    user_error(send(&mut svc, request("l", ids(200, 1), 1, sampling(57, 1.0, 0))), &["max_tokens", "256"]);
    user_error(send(&mut svc, request("l", vec![1, 600], 1, sampling(4, 1.0, 0))), &["600"]);
    let mut p = sampling(4, 1.0, 0);
    p.top_p = 0.0;
    user_error(send(&mut svc, request("l", vec![1], 1, p)), &["top_p"]);
    let mut p = sampling(4, 1.0, 0);
    p.stop.strings = vec!["w1".into()];
    user_error(send(&mut svc, request("q", vec![1], 1, p.clone())), &["stop", "tokenizer", QWEN]);
    p.stop.strings = vec![String::new()];
    user_error(send(&mut svc, request("l", vec![1], 1, p)), &["stop", "empty"]);
    let again =
        ToWorker::CreateSampler { sampler: "l".into(), base_model: LLAMA.into(), adapter: SamplerAdapter::None };
    user_error(call(&mut svc, again), &["already exists"]);
}
