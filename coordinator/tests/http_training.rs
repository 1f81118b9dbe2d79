//! In-process HTTP tests of the coordinator against a fake worker: bootstrap, sessions,
//! create_model/get_info, forward_backward ordering and dedup, optim_step, failed futures,
//! save/load/create-from-state, sampling, REST listings, signed downloads, TTLs, tenants, expiry
//! and restart. The fake worker records every control message, so ordering is checked on what
//! actually reached it.
#![allow(clippy::unwrap_used)]

mod http_common;

use http_common::*;
use prost::Message;
use runtime::control::ToWorker;
use runtime::wire::proto;
use serde_json::json;

fn fb_seq_order(worker: &FakeWorker) -> Vec<i64> {
    worker
        .calls()
        .iter()
        .filter_map(|c| match c {
            ToWorker::ForwardBackward { data, .. } => match &data[0].loss_fn_inputs["target_tokens"].values {
                runtime::control::TensorValues::I64(t) => Some(t[0]),
                _ => None,
            },
            ToWorker::OptimStep { .. } => Some(-1),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_endpoints_answer_what_the_sdk_validates() {
    let s = Server::start(fresh_dir("bootstrap"), None, T0_MS).await;
    let config = s.post("/api/v1/client/config", json!({"sdk_version": "0.38.0"})).await.json();
    assert_eq!(config["pjwt_auth_enabled"], false);
    assert_eq!(config["fwdbwd_max_chunk_len"], 1024);
    assert_eq!(s.post("/api/v1/telemetry", json!({"events": []})).await.json(), json!({"status": "accepted"}));
    let caps = s.get("/api/v1/get_server_capabilities").await.json();
    assert_eq!(caps["supported_models"][0]["model_name"], "tiny/llama3");
    assert_eq!(s.send("GET", "/api/v1/healthz", None, &[], b"").await.json()["status"], "ok");
    // Keys: missing or without the tml- prefix → 401 with a JSON body.
    let r = s.send("POST", "/api/v1/create_session", None, &[], b"{}").await;
    assert_eq!((r.status, r.json()["detail"].as_str().unwrap().contains("X-API-Key")), (401, true));
    assert_eq!(s.send("POST", "/api/v1/create_session", Some("sk-x"), &[], b"{}").await.status, 401);
    let r = s.get("/api/v1/no_such_thing").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["detail"].as_str().unwrap().contains("no_such_thing"));
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_flow_runs_chunks_in_seq_order_and_dedups_retries() {
    let s = Server::start(fresh_dir("train"), None, T0_MS).await;
    let session = s.session().await;
    let model = s.model(&session, 0).await;
    assert_eq!(model, format!("{session}:train:0"));
    let info = s.post("/api/v1/get_info", json!({"model_id": model, "type": "get_info"})).await.json();
    assert_eq!(info["model_data"]["model_name"], "tiny/llama3");
    assert_eq!(info["model_data"]["tokenizer_id"], "/models/tiny-tokenizer");
    assert_eq!((info["lora_rank"].clone(), info["is_lora"].clone()), (json!(8), json!(true)));

    // Chunks 2 and 3 first, then the optim_step (4), then chunk 1: the worker must see 1, 2, 3, optim.
    let r3 = s.forward_backward(&model, 3, &[(vec![1, 2], vec![30, 31])], false, None).await.json();
    let r2 = s.forward_backward(&model, 2, &[(vec![1, 2], vec![20, 21])], false, Some("key-2")).await.json();
    let lr = json!({"learning_rate": 1e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0,
        "grad_clip_norm": 0.0});
    let opt = s
        .post("/api/v1/optim_step", json!({"model_id": model, "seq_id": 4, "adam_params": lr, "type": "optim_step"}))
        .await
        .json();
    let pending = s.post("/api/v1/retrieve_future", json!({"request_id": r2["request_id"]})).await.json();
    assert_eq!(pending["type"], "try_again", "seq 2 waits for seq 1");
    assert_eq!(pending["queue_state"], "active");
    assert!(fb_seq_order(&s.worker).is_empty());
    let r1 = s.forward_backward(&model, 1, &[(vec![1, 2], vec![10, 11])], false, None).await.json();

    // Retries: same seq_id, or same idempotency key, answer the original request id.
    assert_eq!(
        s.forward_backward(&model, 3, &[(vec![1, 2], vec![30, 31])], false, None).await.json()["request_id"],
        r3["request_id"]
    );
    assert_eq!(
        s.forward_backward(&model, 9, &[(vec![1], vec![1])], false, Some("key-2")).await.json()["request_id"],
        r2["request_id"]
    );

    let out = s.retrieve(r1["request_id"].as_str().unwrap()).await;
    assert_eq!(out.content_type, "application/x-protobuf");
    let out = proto::ForwardBackwardOutput::decode(out.body.as_slice()).unwrap();
    assert!((out.metrics["loss:sum"] - 0.21).abs() < 1e-6, "{:?}", out.metrics);
    assert_eq!(out.loss_fn_outputs[0].num_datums, 1);
    for r in [&r2, &r3] {
        assert_eq!(s.retrieve(r["request_id"].as_str().unwrap()).await.content_type, "application/x-protobuf");
    }
    assert_eq!(s.retrieve(opt["request_id"].as_str().unwrap()).await.json()["metrics"], json!({}));
    assert_eq!(fb_seq_order(&s.worker), vec![10, 20, 30, -1]);

    // A request that fails on the worker is HTTP 200 {error, category: user}; the run goes on.
    let bad = s.forward_backward(&model, 5, &[(vec![1], vec![1, 2, 3])], false, None).await.json();
    let failed = s.retrieve(bad["request_id"].as_str().unwrap()).await.json();
    assert_eq!(failed["category"], "user");
    assert!(failed["error"].as_str().unwrap().contains("longer"));
    // A request failing coordinator validation still consumes its seq_id (6), so seq 7 runs.
    let too_big = s.forward_backward(&model, 6, &[(vec![1, 200], vec![1, 2])], false, None).await.json();
    let f = s.retrieve(too_big["request_id"].as_str().unwrap()).await.json();
    assert!(f["error"].as_str().unwrap().contains("vocabulary"), "{f}");
    let ok = s.forward_backward(&model, 7, &[(vec![1, 2], vec![70, 71])], true, None).await.json();
    assert_eq!(s.retrieve(ok["request_id"].as_str().unwrap()).await.status, 200);
    assert!(matches!(s.worker.calls().last(), Some(ToWorker::ForwardBackward { forward_only: true, .. })));
    let bad_adam = json!({"learning_rate": 1e-4, "beta1": 1.5});
    let r = s.post("/api/v1/optim_step", json!({"model_id": model, "seq_id": 8, "adam_params": bad_adam})).await.json();
    assert!(s.retrieve(r["request_id"].as_str().unwrap()).await.json()["error"].as_str().unwrap().contains("beta1"));

    // Unknown ids are 404 with a JSON body.
    assert_eq!(s.post("/api/v1/get_info", json!({"model_id": "nope:train:0"})).await.status, 404);
    assert_eq!(s.post("/api/v1/retrieve_future", json!({"request_id": "req-x"})).await.status, 404);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_save_load_sample_list_download_and_expire() {
    let s = Server::start(fresh_dir("ckpt"), None, T0_MS).await;
    let session = s.session().await;
    let model = s.model(&session, 0).await;
    let r = s
        .post("/api/v1/save_weights", json!({"model_id": model, "path": "acc-1", "seq_id": 1, "overwrite": false}))
        .await
        .json();
    let path = s.retrieve(r["request_id"].as_str().unwrap()).await.json()["path"].as_str().unwrap().to_string();
    assert_eq!(path, format!("tinker://{model}/weights/acc-1"));
    assert!(s.data_dir.join("runs").join(&model).join("weights/acc-1/adapter_config.json").exists());
    // Saving the same name again without overwrite fails as a user error.
    let r = s.post("/api/v1/save_weights", json!({"model_id": model, "path": "acc-1", "seq_id": 2})).await.json();
    assert_eq!(s.retrieve(r["request_id"].as_str().unwrap()).await.json()["category"], "user");

    // Create-from-state: run {session}:train:1, loaded from the checkpoint as its seq 0.
    let r = s
        .post(
            "/api/v1/load_weights",
            json!({"session_id": session, "model_seq_id": 1, "path": path, "optimizer": true}),
        )
        .await
        .json();
    assert_eq!(r["model_id"], format!("{session}:train:1"));
    assert_eq!(s.retrieve(r["request_id"].as_str().unwrap()).await.json()["model_id"], format!("{session}:train:1"));
    assert!(matches!(s.worker.calls().last(), Some(ToWorker::LoadState { optimizer: true, .. })));
    // Legacy load_state on the first run.
    let r = s
        .post("/api/v1/load_weights", json!({"model_id": model, "seq_id": 3, "path": path, "optimizer": false}))
        .await
        .json();
    assert_eq!(s.retrieve(r["request_id"].as_str().unwrap()).await.json()["path"], path);

    // Named sampler weights, a sampling session on them, GET /samplers, asample.
    let r = s
        .post(
            "/api/v1/save_weights_for_sampler",
            json!({"model_id": model, "path": "acc-s", "seq_id": 4, "kind": "snapshot"}),
        )
        .await
        .json();
    let sp = s.retrieve(r["request_id"].as_str().unwrap()).await.json()["path"].as_str().unwrap().to_string();
    assert_eq!(sp, format!("tinker://{model}/sampler_weights/acc-s"));
    let r = s
        .post(
            "/api/v1/create_sampling_session",
            json!({"session_id": session, "sampling_session_seq_id": 0, "model_path": sp}),
        )
        .await
        .json();
    let sampler = r["sampling_session_id"].as_str().unwrap().to_string();
    assert_eq!(sampler, format!("{session}:sample:0"));
    let info = s.get(&format!("/api/v1/samplers/{sampler}")).await.json();
    assert_eq!((info["base_model"].clone(), info["model_path"].clone()), (json!("tiny/llama3"), json!(sp)));
    let req = json!({"num_samples": 2, "prompt": {"chunks": [{"tokens": [1, 2, 3], "type": "encoded_text"}]},
        "sampling_params": {"max_tokens": 4, "seed": 1, "temperature": 0.7, "top_k": 50, "top_p": 0.9},
        "sampling_session_id": sampler, "seq_id": 0, "prompt_logprobs": true, "topk_sample_logprobs": 2,
        "type": "sample"});
    let r = s.post("/api/v1/asample", req.clone()).await.json();
    let ids = r["sample_sequence_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    assert_eq!(
        s.post("/api/v1/asample", req.clone()).await.json(),
        r,
        "a retried (sampler, seq_id) is the same request"
    );
    let out = s.retrieve(r["request_id"].as_str().unwrap()).await;
    assert_eq!(out.content_type, "application/x-protobuf");
    assert_eq!(proto::SampleResponse::decode(out.body.as_slice()).unwrap().sequences.len(), 2);
    let mut unsupported = req.clone();
    unsupported["seq_id"] = json!(1);
    unsupported["prompt_alt_tokens_k"] = json!(3);
    let r = s.post("/api/v1/asample", unsupported).await.json();
    let failed = s.retrieve(r["request_id"].as_str().unwrap()).await.json();
    assert_eq!(failed["category"], "user");
    assert!(failed["error"].as_str().unwrap().contains("prompt_alt_tokens_k"));
    // Ephemeral sampler from the live run.
    let r = s
        .post(
            "/api/v1/save_weights_for_sampler",
            json!({"model_id": model, "sampling_session_seq_id": 1, "seq_id": 5, "kind": "snapshot"}),
        )
        .await
        .json();
    let done = s.retrieve(r["request_id"].as_str().unwrap()).await.json();
    assert_eq!(done["sampling_session_id"], format!("{session}:sample:1"));
    assert_eq!(s.get(&format!("/api/v1/samplers/{session}:sample:1")).await.status, 200);

    // REST listings.
    let runs = s.get("/api/v1/training_runs?limit=20&offset=0&access_scope=owned").await.json();
    assert_eq!(runs["cursor"]["total_count"], 2);
    let run = s.get(&format!("/api/v1/training_runs/{model}?access_scope=owned")).await.json();
    assert_eq!(
        (run["model_owner"].clone(), run["last_checkpoint"]["checkpoint_id"].clone()),
        (json!("local"), json!("weights/acc-1"))
    );
    assert!(run["last_request_time"].as_str().unwrap().ends_with('Z'));
    let list = s.get(&format!("/api/v1/training_runs/{model}/checkpoints")).await.json();
    let ids: Vec<&str> =
        list["checkpoints"].as_array().unwrap().iter().map(|c| c["checkpoint_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["weights/acc-1", "sampler_weights/acc-s"]);
    assert_eq!(s.get("/api/v1/checkpoints?limit=100&offset=0").await.json()["cursor"]["total_count"], 2);
    let wi = s.post("/api/v1/weights_info", json!({"tinker_path": path})).await.json();
    assert_eq!((wi["lora_rank"].clone(), wi["train_unembed"].clone()), (json!(8), json!(true)));

    // Export, signed URLs fetched without a key, TTL, delete.
    let r =
        s.post("/api/v1/save_weights_external", json!({"model_id": model, "path": "acc-x", "seq_id": 6})).await.json();
    let done = s.retrieve(r["request_id"].as_str().unwrap()).await.json();
    assert_eq!(
        (done["path"].clone(), done["size_bytes"].clone()),
        (json!(format!("tinker://{model}/external_weights/acc-x")), json!(20))
    );
    let urls = s
        .get(&format!("/api/v1/training_runs/{model}/checkpoints/external_weights/acc-x/external_weights_urls"))
        .await
        .json();
    let url = urls["urls"]["adapter_config.json"].as_str().unwrap();
    let local = url.strip_prefix(&format!("http://{}", s.addr)).unwrap();
    let file = s.send("GET", local, None, &[], b"").await;
    assert_eq!((file.status, file.body.as_slice()), (200, br#"{"r": 8}"#.as_slice()));
    assert_eq!(s.send("GET", &local.replace("sig=", "sig=x"), None, &[], b"").await.status, 403);
    s.clock.advance_ms(600_001);
    assert_eq!(s.send("GET", local, None, &[], b"").await.status, 403, "expired URL");
    let ckpt = format!("/api/v1/training_runs/{model}/checkpoints/external_weights/acc-x");
    assert_eq!(
        s.send("PUT", &format!("{ckpt}/ttl"), Some("tml-test"), &[], br#"{"ttl_seconds": 3600}"#).await.status,
        200
    );
    let listed = s.get("/api/v1/checkpoints").await.json();
    let exported =
        listed["checkpoints"].as_array().unwrap().iter().find(|c| c["checkpoint_id"] == "external_weights/acc-x");
    assert!(exported.unwrap()["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s.send("DELETE", &ckpt, Some("tml-test"), &[], b"").await.status, 200);
    assert_eq!(s.send("DELETE", &ckpt, Some("tml-test"), &[], b"").await.status, 404);
    assert!(!s.data_dir.join("runs").join(&model).join("external_weights/acc-x").exists());

    // TTL expiry really deletes: an hour later the housekeeping tick removes the sampler checkpoint.
    let sampler_ckpt = format!("/api/v1/training_runs/{model}/checkpoints/sampler_weights/acc-s");
    assert_eq!(
        s.send("PUT", &format!("{sampler_ckpt}/ttl"), Some("tml-test"), &[], br#"{"ttl_seconds": 3600}"#).await.status,
        200
    );
    s.clock.advance_ms(3_600_000);
    s.settle().await;
    let list = s.get(&format!("/api/v1/training_runs/{model}/checkpoints")).await.json();
    assert_eq!(list["checkpoints"].as_array().unwrap().len(), 1);
    assert!(!s.data_dir.join("runs").join(&model).join("sampler_weights/acc-s").exists());
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_after_300_s_and_finished_sessions_refuse_work() {
    let s = Server::start(fresh_dir("sessions"), None, T0_MS).await;
    let a = s.session().await;
    let model = s.model(&a, 0).await;
    s.clock.advance_ms(200_000);
    assert_eq!(
        s.post("/api/v1/session_heartbeat", json!({"session_id": a, "type": "session_heartbeat"})).await.json(),
        json!({})
    );
    s.clock.advance_ms(299_000);
    s.settle().await;
    assert_eq!(
        s.post("/api/v1/session_heartbeat", json!({"session_id": a})).await.status,
        200,
        "the heartbeat kept it alive"
    );
    s.clock.advance_ms(300_000);
    s.settle().await;
    assert_eq!(s.post("/api/v1/session_heartbeat", json!({"session_id": a})).await.status, 410);
    assert!(s.worker.calls().iter().any(|c| matches!(c, ToWorker::DropRun { run } if *run == model)));
    assert_eq!(s.forward_backward(&model, 1, &[(vec![1], vec![1])], false, None).await.status, 400);

    let b = s.session().await;
    let model_b = s.model(&b, 0).await;
    let r =
        s.post(&format!("/api/v1/sessions/{b}/finish"), json!({"reason": {"type": "success"}, "detail": null})).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.post("/api/v1/session_heartbeat", json!({"session_id": b})).await.status, 410);
    let r = s.forward_backward(&model_b, 1, &[(vec![1], vec![1])], false, None).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().unwrap().contains("Finished"));
    assert_eq!(s.post("/api/v1/sessions/nope/finish", json!({})).await.status, 404);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_sessions_runs_futures_and_checkpoints() {
    let dir = fresh_dir("restart");
    let s = Server::start(dir.clone(), None, T0_MS).await;
    let session = s.session().await;
    let model = s.model(&session, 0).await;
    let r = s.post("/api/v1/save_weights", json!({"model_id": model, "path": "keep", "seq_id": 1})).await.json();
    let save_id = r["request_id"].as_str().unwrap().to_string();
    let path = s.retrieve(&save_id).await.json()["path"].as_str().unwrap().to_string();
    let fb = s.forward_backward(&model, 2, &[(vec![1, 2], vec![2, 3])], false, None).await.json();
    let fb_id = fb["request_id"].as_str().unwrap().to_string();
    let before = s.retrieve(&fb_id).await;
    s.stop();

    let s = Server::start(dir, None, T0_MS + 10_000).await;
    let runs = s.get("/api/v1/training_runs").await.json();
    assert_eq!(runs["training_runs"][0]["training_run_id"], model);
    assert_eq!(
        s.get(&format!("/api/v1/training_runs/{model}/checkpoints")).await.json()["checkpoints"][0]["tinker_path"],
        path
    );
    // The session survived: its heartbeats resume, and its run takes the next seq_id.
    assert_eq!(s.post("/api/v1/session_heartbeat", json!({"session_id": session})).await.status, 200);
    assert_eq!(s.retrieve(&save_id).await.json()["path"], path, "a finished future is still retrievable");
    assert_eq!(s.retrieve(&fb_id).await.body, before.body, "the same result, byte for byte");
    // The run was rebuilt in worker memory: its create, then the replayed forward_backward (the
    // save already finished and has no effect on the run's state, so it is not redone).
    let calls = s.worker.calls();
    assert!(matches!(&calls[0], ToWorker::CreateRun { run, .. } if *run == model), "{calls:?}");
    assert!(matches!(&calls[1], ToWorker::ForwardBackward { run, .. } if *run == model), "{calls:?}");
    assert!(!calls.iter().any(|c| matches!(c, ToWorker::SaveState { .. })), "{calls:?}");
    let r = s.post("/api/v1/optim_step", json!({"model_id": model, "seq_id": 3, "adam_params": {}})).await.json();
    assert!(s.retrieve(r["request_id"].as_str().unwrap()).await.json()["metrics"].is_object());
    let fresh = s.session().await;
    assert_ne!(fresh, session, "session ids are not reused after a restart");
    let r = s
        .post("/api/v1/load_weights", json!({"session_id": fresh, "model_seq_id": 0, "path": path, "optimizer": true}))
        .await
        .json();
    assert_eq!(s.retrieve(r["request_id"].as_str().unwrap()).await.json()["model_id"], format!("{fresh}:train:0"));
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_keys_file_every_lookup_is_tenant_scoped() {
    let dir = fresh_dir("tenants");
    let keys = dir.join("keys.txt");
    std::fs::write(&keys, "# two tenants\ntml-test alice\ntml-bob bob\n").unwrap();
    let s = Server::start(dir.join("data"), Some(keys), T0_MS).await;
    let session = s.session().await;
    let model = s.model(&session, 0).await;
    let bob = |path: &str, body: serde_json::Value| {
        let body = body.to_string();
        let path = path.to_string();
        let s = &s;
        async move { s.send("POST", &path, Some("tml-bob"), &[], body.as_bytes()).await }
    };
    assert_eq!(s.send("POST", "/api/v1/create_session", Some("tml-unknown"), &[], b"{}").await.status, 401);
    assert_eq!(bob("/api/v1/get_info", json!({"model_id": model})).await.status, 404);
    assert_eq!(bob("/api/v1/session_heartbeat", json!({"session_id": session})).await.status, 404);
    assert_eq!(bob("/api/v1/optim_step", json!({"model_id": model, "seq_id": 1, "adam_params": {}})).await.status, 404);
    let r = s.post("/api/v1/save_weights", json!({"model_id": model, "path": "mine", "seq_id": 1})).await.json();
    assert_eq!(bob("/api/v1/retrieve_future", json!({"request_id": r["request_id"]})).await.status, 404);
    let path = s.retrieve(r["request_id"].as_str().unwrap()).await.json()["path"].as_str().unwrap().to_string();
    assert_eq!(bob("/api/v1/weights_info", json!({"tinker_path": path})).await.status, 404);
    let bob_runs = s.send("GET", "/api/v1/training_runs", Some("tml-bob"), &[], b"").await.json();
    assert_eq!(bob_runs["cursor"]["total_count"], 0);
    assert_eq!(s.send("GET", &format!("/api/v1/training_runs/{model}"), Some("tml-bob"), &[], b"").await.status, 404);
    let bob_session = bob("/api/v1/create_session", json!({})).await.json()["session_id"].as_str().unwrap().to_string();
    let r = bob("/api/v1/load_weights", json!({"session_id": bob_session, "model_seq_id": 0, "path": path})).await;
    assert_eq!(r.status, 404, "bob cannot load alice's checkpoint");
    assert_eq!(s.get("/api/v1/training_runs").await.json()["cursor"]["total_count"], 1);
    s.stop();
}
