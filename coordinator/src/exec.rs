//! Execution: each live training run has one executor task that takes the run's jobs (already
//! released in `seq_id` order by its `Sequencer`) one at a time, calls the worker, updates the
//! catalogue and completes the job's future. Runs execute concurrently with each other; one run
//! never has two requests in flight. Sampling requests are independent and run on their own.

use std::sync::Arc;

use runtime::control::{AdamConfig, Datum, ErrorCategory, FromWorker, SampleRequest, SamplerAdapter, ToWorker};
use runtime::LoraConfig;
use serde_json::json;
use tokio::sync::mpsc;

use crate::core::catalog::CheckpointRecord;
use crate::core::futures::Outcome;
use crate::core::ids::{CheckpointKind, TinkerPath};
use crate::state::{App, SamplerRecord};
use crate::store::Event;

/// One request of a training run, ready to execute.
#[derive(Debug)]
pub struct Job {
    pub request_id: String,
    pub action: Action,
}

/// What a job does.
#[derive(Debug)]
pub enum Action {
    /// Failed validation; it still consumed its `seq_id`. Completes as a user error.
    Reject(String),
    Create {
        base_model: String,
        lora: LoraConfig,
    },
    /// Create-from-state: the run's implicit seq 0.
    CreateFromState {
        source: TinkerPath,
        optimizer: bool,
    },
    ForwardBackward {
        data: Vec<Datum>,
        loss_fn: String,
        loss_config: std::collections::BTreeMap<String, f64>,
        forward_only: bool,
    },
    Optim(AdamConfig),
    Save {
        kind: CheckpointKind,
        name: String,
        overwrite: bool,
        ttl_ms: Option<u64>,
        user_metadata: Option<serde_json::Value>,
    },
    Load {
        source: TinkerPath,
        optimizer: bool,
    },
    /// `save_weights_and_get_sampling_client`: a sampler on a copy of the current adapter.
    EphemeralSampler {
        sampler: String,
        session_id: String,
        tenant: String,
        base_model: String,
    },
    /// Frees the run's worker memory; the executor stops after it.
    Drop,
}

/// Starts the executor of a live run; returns the queue feeding it.
pub fn spawn_executor(app: &Arc<App>, run: &str) -> mpsc::UnboundedSender<Job> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    let app = Arc::clone(app);
    let run = run.to_string();
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let stop = matches!(job.action, Action::Drop);
            let outcome = execute(&app, &run, job.action).await;
            if !job.request_id.is_empty() {
                app.complete(&job.request_id, outcome);
            }
            if stop {
                break;
            }
        }
    });
    tx
}

fn user(message: impl Into<String>) -> Outcome {
    Outcome::Failed { category: ErrorCategory::User, message: message.into() }
}

fn server(message: impl Into<String>) -> Outcome {
    Outcome::Failed { category: ErrorCategory::Server, message: message.into() }
}

/// A worker reply that is neither the expected one nor a failure.
fn unexpected(what: &str, reply: &FromWorker) -> Outcome {
    server(format!("worker answered {} to {what}; this is a lathe bug, please report it", reply.kind()))
}

fn failed(reply: FromWorker) -> Outcome {
    match reply {
        FromWorker::Failed { category, message } => Outcome::Failed { category, message },
        other => unexpected("a request", &other),
    }
}

async fn execute(app: &Arc<App>, run: &str, action: Action) -> Outcome {
    let now = app.now_ms();
    app.lock().catalog.touch_run(run, now);
    match action {
        Action::Reject(message) => user(message),
        Action::Create { base_model, lora } => {
            match app.call(ToWorker::CreateRun { run: run.to_string(), base_model, lora }).await {
                FromWorker::Done => Outcome::Json(json!({"model_id": run, "type": "create_model"})),
                other => failed(other),
            }
        }
        Action::CreateFromState { source, optimizer } | Action::Load { source, optimizer } => {
            let dir = app.checkpoint_dir(&source);
            match app.call(ToWorker::LoadState { run: run.to_string(), dir, optimizer }).await {
                FromWorker::Done => {
                    Outcome::Json(json!({"path": source.to_string(), "model_id": run, "type": "load_weights"}))
                }
                other => failed(other),
            }
        }
        Action::ForwardBackward { data, loss_fn, loss_config, forward_only } => {
            let n = data.len();
            let msg = ToWorker::ForwardBackward { run: run.to_string(), data, loss_fn, loss_config, forward_only };
            match app.call(msg).await {
                FromWorker::ForwardBackward(r) if r.outputs.len() == n => Outcome::ForwardBackward(r),
                FromWorker::ForwardBackward(r) => {
                    server(format!("worker returned {} outputs for {n} datums; this is a lathe bug", r.outputs.len()))
                }
                other => failed(other),
            }
        }
        Action::Optim(adam) => match app.call(ToWorker::OptimStep { run: run.to_string(), adam }).await {
            FromWorker::Optim { metrics } => Outcome::Json(json!({ "metrics": metrics })),
            other => failed(other),
        },
        Action::Save { kind, name, overwrite, ttl_ms, user_metadata } => {
            save(app, run, kind, name, overwrite, ttl_ms, user_metadata).await
        }
        Action::EphemeralSampler { sampler, session_id, tenant, base_model } => {
            let msg = ToWorker::CreateSampler {
                sampler: sampler.clone(),
                base_model: base_model.clone(),
                adapter: SamplerAdapter::LiveRun(run.to_string()),
            };
            match app.call(msg).await {
                FromWorker::Done => {
                    let mut shared = app.lock();
                    let record = SamplerRecord { tenant, session_id: session_id.clone(), base_model, model_path: None };
                    shared.samplers.insert(sampler.clone(), record);
                    shared.sessions.add_sampler(&session_id, &sampler);
                    Outcome::Json(
                        json!({"path": null, "sampling_session_id": sampler, "type": "save_weights_for_sampler"}),
                    )
                }
                other => failed(other),
            }
        }
        Action::Drop => match app.call(ToWorker::DropRun { run: run.to_string() }).await {
            FromWorker::Done => Outcome::Json(json!({})),
            other => failed(other),
        },
    }
}

async fn save(
    app: &Arc<App>,
    run: &str,
    kind: CheckpointKind,
    name: String,
    overwrite: bool,
    ttl_ms: Option<u64>,
    user_metadata: Option<serde_json::Value>,
) -> Outcome {
    let path = TinkerPath { run: run.to_string(), kind, name: name.clone() };
    let dir = app.checkpoint_dir(&path);
    let tenant = {
        let shared = app.lock();
        let Some(tenant) = shared.catalog.run_tenant(run) else {
            return server(format!("training run {run} vanished from the catalogue; this is a lathe bug"));
        };
        if shared.catalog.checkpoint(&tenant, &path).is_some() && !overwrite {
            return user(format!("checkpoint {path} already exists; pass overwrite=True or choose another name"));
        }
        tenant
    };
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            return server(format!("could not replace {}: {e}", dir.display()));
        }
    }
    if let Some(parent) = dir.parent() {
        if let Err(e) = std::fs::create_dir_all(parent) {
            return server(format!("could not create {}: {e}", parent.display()));
        }
    }
    let msg = match kind {
        CheckpointKind::Weights => ToWorker::SaveState { run: run.to_string(), dir, optimizer: true },
        CheckpointKind::SamplerWeights | CheckpointKind::ExternalWeights => {
            ToWorker::ExportPeft { run: run.to_string(), dir }
        }
    };
    let size_bytes = match app.call(msg).await {
        FromWorker::Saved { bytes } => bytes,
        other => return failed(other),
    };
    let now = app.now_ms();
    let record = CheckpointRecord {
        run: run.to_string(),
        kind,
        name,
        tenant,
        created_ms: now,
        size_bytes,
        expires_ms: ttl_ms.map(|t| now.saturating_add(t)),
        user_metadata,
    };
    let mut shared = app.lock();
    if let Err(e) = shared.record(&Event::Checkpoint(record.clone())) {
        return server(e);
    }
    shared.catalog.add_checkpoint(record);
    let p = path.to_string();
    match kind {
        CheckpointKind::Weights => Outcome::Json(json!({"path": p, "type": "save_weights"})),
        CheckpointKind::SamplerWeights => Outcome::Json(json!({"path": p, "type": "save_weights_for_sampler"})),
        CheckpointKind::ExternalWeights => Outcome::Json(json!({"path": p, "size_bytes": size_bytes})),
    }
}

/// Runs one sample request and completes its future.
pub fn spawn_sample(app: &Arc<App>, request_id: String, request: SampleRequest) {
    let app = Arc::clone(app);
    tokio::spawn(async move {
        let outcome = match app.call(ToWorker::Sample(request)).await {
            FromWorker::Sampled(result) => Outcome::Sample(result),
            other => failed(other),
        };
        app.complete(&request_id, outcome);
    });
}

/// Periodic housekeeping at `now`: expire sessions (dropping their runs and samplers), delete
/// checkpoints whose TTL ran out, and forget old futures.
pub fn tick(app: &Arc<App>) {
    let now = app.now_ms();
    let (ended, expired) = {
        let mut shared = app.lock();
        let ended = shared.sessions.expire(now);
        let expired = shared.catalog.expired(now);
        for id in shared.futures.purge(now) {
            shared.forget(&id);
        }
        (ended, expired)
    };
    for e in ended {
        end_session(app, &e.runs, &e.samplers);
    }
    for path in expired {
        if let Err(e) = delete_checkpoint(app, &path) {
            eprintln!("lathe: TTL expiry of {path}: {e}");
        }
    }
}

/// Drops an ending session's runs (after their queued work) and samplers from worker memory.
pub fn end_session(app: &Arc<App>, runs: &[String], samplers: &[String]) {
    let mut shared = app.lock();
    for run in runs {
        if let Some(live) = shared.live.remove(run) {
            // A closed queue means the executor already stopped; nothing left to drop.
            let _ = live.queue.send(Job { request_id: String::new(), action: Action::Drop });
        }
    }
    for sampler in samplers {
        if shared.samplers.remove(sampler).is_some() {
            let app = Arc::clone(app);
            let sampler = sampler.clone();
            tokio::spawn(async move {
                if let FromWorker::Failed { message, .. } = app.call(ToWorker::DropSampler { sampler }).await {
                    eprintln!("lathe: dropping a sampler failed: {message}");
                }
            });
        }
    }
}

/// Deletes a checkpoint's files and catalogue entry (journaled).
pub fn delete_checkpoint(app: &Arc<App>, path: &TinkerPath) -> Result<(), String> {
    let dir = app.checkpoint_dir(path);
    let mut shared = app.lock();
    let event = Event::CheckpointDeleted { run: path.run.clone(), kind: path.kind, name: path.name.clone() };
    shared.record(&event)?;
    shared.catalog.remove_checkpoint(path);
    drop(shared);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("could not delete {}: {e}", dir.display())),
    }
}
