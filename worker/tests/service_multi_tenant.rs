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
