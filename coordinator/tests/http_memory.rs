//! `GET /lathe/v1/memory` in process against the fake worker: the worker's report comes back as
//! JSON with base models, totals and budget intact, each tenant sees only its own runs and
//! samplers, a key is required, and a worker failure is a 500 that says so.
#![allow(clippy::unwrap_used)]

mod http_common;

use std::collections::BTreeMap;

use http_common::*;
use runtime::control::{MemoryReport, RunMemory, SamplerMemory, ToWorker};
use serde_json::json;

fn run(total: u64) -> RunMemory {
    RunMemory {
        base_model: "tiny/llama3".into(),
        adapter_bytes: total / 4,
        gradient_bytes: total / 4,
        adam_bytes: total / 2,
        total_bytes: total,
    }
}

/// A worker report holding `alice_run`, `bob_run` and `sampler`, plus a run and a sampler the
/// coordinator does not know.
fn report(alice_run: &str, bob_run: &str, sampler: &str) -> MemoryReport {
    let runs = BTreeMap::from([
        (alice_run.to_string(), run(400)),
        (bob_run.to_string(), run(800)),
        ("stray".to_string(), run(4)),
    ]);
    let adapter = |bytes| SamplerMemory { base_model: "tiny/llama3".into(), adapter_bytes: bytes };
    let samplers = BTreeMap::from([(sampler.to_string(), adapter(100)), ("stray-sampler".to_string(), adapter(1))]);
    MemoryReport {
        base_models: BTreeMap::from([("tiny/llama3".to_string(), 10_000)]),
        runs,
        samplers,
        base_bytes: 10_000,
        runs_bytes: 1204,
        samplers_bytes: 101,
        used_bytes: 11_305,
        budget_bytes: Some(20_000),
        free_bytes: Some(8695),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_report_is_served_as_json_with_each_tenant_seeing_its_own_runs_and_samplers() {
    let dir = fresh_dir("memory");
    let keys = dir.join("keys.txt");
    std::fs::write(&keys, "tml-test alice\ntml-bob bob\n").unwrap();
    let s = Server::start(dir.join("data"), Some(keys), T0_MS).await;

    let alice_session = s.session().await;
    let alice_run = s.model(&alice_session, 0).await;
    let r = s
        .post(
            "/api/v1/create_sampling_session",
            json!({"session_id": alice_session, "sampling_session_seq_id": 1, "base_model": "tiny/llama3"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sampler = r.json()["sampling_session_id"].as_str().unwrap().to_string();

    let bob = |path: &str, body: serde_json::Value| {
        let (path, body) = (path.to_string(), body.to_string());
        let s = &s;
        async move { s.send("POST", &path, Some("tml-bob"), &[], body.as_bytes()).await }
    };
    let bob_session = bob("/api/v1/create_session", json!({})).await.json()["session_id"].as_str().unwrap().to_string();
    let created = bob(
        "/api/v1/create_model",
        json!({"session_id": bob_session, "model_seq_id": 0, "base_model": "tiny/llama3",
            "lora_config": {"rank": 8}, "type": "create_model"}),
    )
    .await;
    assert_eq!(created.status, 200, "{}", String::from_utf8_lossy(&created.body));
    let request_id = created.json()["request_id"].clone();
    let bob_run = loop {
        let r = bob("/api/v1/retrieve_future", json!({"request_id": request_id})).await.json();
        if r["type"] != "try_again" {
            break r["model_id"].as_str().unwrap().to_string();
        }
    };

    let failed = s.get("/lathe/v1/memory").await;
    assert_eq!(failed.status, 500, "no report set: the worker fails");
    assert!(failed.json()["detail"].as_str().unwrap().contains("could not report its memory"));

    *s.worker.memory.lock().unwrap() = Some(report(&alice_run, &bob_run, &sampler));
    let got = s.get("/lathe/v1/memory").await;
    assert_eq!(got.status, 200);
    assert!(got.content_type.contains("json"), "{}", got.content_type);
    let alice: MemoryReport = serde_json::from_slice(&got.body).unwrap();
    let mut want = report(&alice_run, &bob_run, &sampler);
    want.runs.retain(|id, _| *id == alice_run);
    want.samplers.retain(|id, _| *id == sampler);
    assert_eq!(alice, want, "alice sees her run and sampler; totals, base models and budget are the worker's");
    let raw = got.json();
    assert_eq!(raw["runs"][&alice_run]["adam_bytes"], 200);
    assert_eq!(raw["budget_bytes"], 20_000);

    let as_bob = s.send("GET", "/lathe/v1/memory", Some("tml-bob"), &[], b"").await;
    let bob_view: MemoryReport = serde_json::from_slice(&as_bob.body).unwrap();
    assert_eq!(bob_view.runs.keys().collect::<Vec<_>>(), [&bob_run]);
    assert!(bob_view.samplers.is_empty());
    assert_eq!(bob_view.used_bytes, 11_305);

    assert_eq!(s.send("GET", "/lathe/v1/memory", None, &[], b"").await.status, 401);
    assert!(s.worker.calls().iter().any(|c| matches!(c, ToWorker::Memory)));
    s.stop();
}
