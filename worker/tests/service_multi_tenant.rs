//! `ToWorker::ForwardBackwardMany` on the worker service: runs on two base models (one of them
//! Qwen3-MoE), with two ranks, forward-only and failing items mixed in, answered item by item
//! exactly as the same requests sent one at a time — replies, and the adapters after an
//! `optim_step`, compared through a later forward.
#![allow(clippy::unwrap_used)]

mod service_common;

use std::collections::BTreeMap;

use runtime::control::{Datum, ErrorCategory, FbRequest, FromWorker, ToWorker};
use runtime::LoraConfig;
use service_common::{batch, bits, call, ce_datum, failure, fb, ids, logprobs, served, step};
use worker::service::WorkerService;

const DENSE: &str = "tiny/qwen3";
const MOE: &str = "tiny/qwen3-moe";

/// Runs "a".."e": a, b, e on the dense model at ranks 4, 8, 4; c, d on the MoE model at ranks 8, 4.
fn service_with_runs() -> WorkerService {
    let mut svc = WorkerService::new(1, vec![served(DENSE, false), served(MOE, false)]);
    for (run, base, rank) in [("a", DENSE, 4), ("b", DENSE, 8), ("c", MOE, 8), ("d", MOE, 4), ("e", DENSE, 4)] {
        let lora = LoraConfig::new(rank, 16.0, rank as u64, true, true, true).unwrap();
        let reply = call(&mut svc, ToWorker::CreateRun { run: run.into(), base_model: base.into(), lora });
        assert_eq!(reply, FromWorker::Done);
    }
    svc
}

fn data(seed: u64, n: usize) -> Vec<Datum> {
    (0..n).map(|i| ce_datum(&ids(6 + 3 * i, seed + i as u64))).collect()
}

fn item(run: &str, data: Vec<Datum>, forward_only: bool) -> FbRequest {
    FbRequest { run: run.into(), data, loss_fn: "cross_entropy".into(), loss_config: BTreeMap::new(), forward_only }
}

fn single(svc: &mut WorkerService, it: &FbRequest) -> FromWorker {
    let FbRequest { run, data, loss_fn, loss_config, forward_only } = it.clone();
    call(svc, ToWorker::ForwardBackward { run, data, loss_fn, loss_config, forward_only })
}

#[test]
fn a_batched_step_answers_each_item_as_if_it_came_alone() {
    let (mut shared, mut alone) = (service_with_runs(), service_with_runs());
    for round in 0..2u64 {
        let mut bad = data(90 + round, 1);
        bad[0].tokens[0] = 1 << 30; // out of any vocabulary
        let items = vec![
            item("a", data(10 + round, 2), false),
            item("c", data(20 + round, 1), false),
            item("b", data(30 + round, 3), true),
            item("nope", data(40, 1), false),
            item("d", data(50 + round, 2), false),
            item("a", data(60, 1), false),
            item("e", bad, false),
        ];
        let FromWorker::Each(replies) = call(&mut shared, ToWorker::ForwardBackwardMany { items: items.clone() })
        else {
            panic!("ForwardBackwardMany is answered by Each");
        };
        assert_eq!(replies.len(), items.len());
        // Alone, in order, skipping the repeated run (which the coordinator never sends).
        for i in [0, 1, 2, 3, 4, 6] {
            assert_eq!(replies[i], single(&mut alone, &items[i]), "round {round} item {i}");
        }
        let (category, message) = failure(replies[3].clone());
        assert!(category == ErrorCategory::User && message.contains("nope"), "{message}");
        let (category, message) = failure(replies[5].clone());
        assert!(category == ErrorCategory::Server && message.contains("twice"), "{message}");
        let (category, message) = failure(replies[6].clone());
        assert!(category == ErrorCategory::User && message.contains("vocab"), "{message}");
        for run in ["a", "b", "c", "d"] {
            assert_eq!(step(&mut shared, run, 1e-2), step(&mut alone, run, 1e-2), "round {round} run {run}");
        }
    }
    for run in ["a", "b", "c", "d", "e"] {
        let x = fb(&mut shared, run, batch(), "cross_entropy", true);
        let y = fb(&mut alone, run, batch(), "cross_entropy", true);
        assert_eq!(bits(&logprobs(&x)), bits(&logprobs(&y)), "run {run}: adapters differ after the steps");
    }
}

/// A step's activations count against the memory budget while it runs: a request too big for
/// what is free runs split (its datums in several passes, with the answer of one pass, as
/// `service_split` checks in detail), a datum too big on its own is refused as a user error
/// (nothing changes), and items that fit alone but not together run in separate passes with the
/// same results.
#[test]
fn steps_beyond_the_free_budget_are_split_or_refused_before_they_run() {
    let per_token = served(DENSE, false).model.step_bytes_per_token(4);
    let unlimited = || {
        let mut svc = WorkerService::new(1, vec![served(DENSE, false)]);
        for (run, seed) in [("a", 1), ("b", 2)] {
            let lora = LoraConfig::new(4, 8.0, seed, true, true, true).unwrap();
            let reply = call(&mut svc, ToWorker::CreateRun { run: run.into(), base_model: DENSE.into(), lora });
            assert_eq!(reply, FromWorker::Done);
        }
        svc
    };
    let mut reference = unlimited();
    // Room for the activations of 30 tokens next to the base model and the two runs, plus a copy
    // of one run's gradients (what a split forward_backward holds while it runs).
    let used = reference.memory_report().used_bytes;
    let grads = reference.memory_report().runs["a"].gradient_bytes;
    let mut tight = unlimited().with_memory_budget(Some(used + grads + 30 * per_token));
    let before = tight.memory_report();

    // 4 datums × 11 tokens = 44 > 30: run as passes of 2 datums, answered as if in one.
    let big = (0..4).map(|i| ce_datum(&ids(12, 200 + i))).collect::<Vec<_>>();
    let reply = single(&mut tight, &item("a", big.clone(), false));
    assert!(matches!(reply, FromWorker::ForwardBackward(_)), "{reply:?}");
    assert_eq!(reply, single(&mut reference, &item("a", big, false)));

    // A 31-token datum cannot be split: refused, naming it, and run a is untouched.
    let mut data = (0..2).map(|i| ce_datum(&ids(12, 250 + i))).collect::<Vec<_>>();
    data.push(ce_datum(&ids(32, 260)));
    let state = tight.train_state("a").unwrap().clone();
    let (category, message) = failure(single(&mut tight, &item("a", data, false)));
    assert_eq!(category, ErrorCategory::User, "{message}");
    for needle in ["datum 2 ", "31 tokens", "activations", "never split", "shorten the datum"] {
        assert!(message.contains(needle), "`{message}` does not mention `{needle}`");
    }
    assert_eq!(tight.train_state("a").unwrap(), &state, "a refused request changes nothing");
    assert_eq!(tight.memory_report(), before);

    // 2 × 11 tokens each: one run's 22 fit, both together (44) do not: two passes, same answers.
    let eleven = |seed: u64| (0..2).map(|i| ce_datum(&ids(12, seed + i))).collect::<Vec<_>>();
    let items = vec![item("a", eleven(300), false), item("b", eleven(400), false)];
    let FromWorker::Each(replies) = call(&mut tight, ToWorker::ForwardBackwardMany { items: items.clone() }) else {
        panic!("ForwardBackwardMany is answered by Each");
    };
    for (i, it) in items.iter().enumerate() {
        assert!(matches!(replies[i], FromWorker::ForwardBackward(_)), "item {i}: {:?}", replies[i]);
        assert_eq!(replies[i], single(&mut reference, it), "item {i}");
    }
    for run in ["a", "b"] {
        assert_eq!(step(&mut tight, run, 1e-2), step(&mut reference, run, 1e-2), "run {run}");
    }
}
