//! Training endpoints: create_model, get_info, forward_backward (protobuf), optim_step,
//! save_weights, load_weights (both addressing modes), save_weights_for_sampler and
//! save_weights_external. Everything but get_info and create-from-state is a future whose job
//! goes through the run's `Sequencer`; a request that fails validation still consumes its
//! `seq_id` and fails its future with category `user` (design §4).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use runtime::control::{AdamConfig, BaseModelInfo};
use runtime::lora::LORA_ALPHA_DEFAULT;
use runtime::wire::{decode_forward_backward, maybe_decompress, FbRequest};
use runtime::LoraConfig;
use serde::Deserialize;
use serde_json::{json, Value};

use super::bootstrap::session_error;
use super::{idem_slot, idempotency_key, parse_json, Tenant};
use crate::core::catalog::RunRecord;
use crate::core::ids::{validate_name, CheckpointKind, TinkerPath};
use crate::core::sequencer::{Sequencer, Submitted};
use crate::error::ApiError;
use crate::exec::{spawn_executor, Action, Job};
use crate::state::{App, LiveRun, Shared};
use crate::store::Event;

/// Shortest and longest checkpoint TTL the SDK documents.
const TTL_SECONDS_MIN: i64 = 3600;
const TTL_SECONDS_MAX: i64 = 10 * 365 * 24 * 3600;

type Reply = Result<Json<Value>, ApiError>;

fn ttl_ms(ttl_seconds: Option<i64>) -> Result<Option<u64>, String> {
    match ttl_seconds {
        None => Ok(None),
        Some(s) if (TTL_SECONDS_MIN..=TTL_SECONDS_MAX).contains(&s) => Ok(Some(s as u64 * 1000)),
        Some(s) => {
            Err(format!("ttl_seconds: {s} is not in {TTL_SECONDS_MIN}..={TTL_SECONDS_MAX} (or null for no expiry)"))
        }
    }
}

fn model_info<'a>(app: &'a App, name: &str) -> Result<&'a BaseModelInfo, ApiError> {
    app.models.get(name).ok_or_else(|| {
        let known: Vec<&str> = app.models.keys().map(String::as_str).collect();
        ApiError::bad_request(format!("base model {name:?} is not served here; choose one of {known:?}"))
    })
}

/// Submits a request of a live run in `seq_id` order. `build` validates it against the run;
/// its error still consumes the `seq_id` and fails the future as a user error.
fn submit_sequenced(
    app: &Arc<App>,
    tenant: &str,
    headers: &HeaderMap,
    model_id: &str,
    seq_id: i64,
    build: impl FnOnce(&Shared, &RunRecord) -> Result<Action, String>,
) -> Reply {
    let idem = idempotency_key(headers).map(|k| idem_slot(tenant, &k));
    let mut shared = app.lock();
    if let Some(reply) = idem.as_ref().and_then(|k| shared.replies.get(k)) {
        return Ok(Json(reply.clone()));
    }
    let run = shared
        .catalog
        .run(tenant, model_id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("training run {model_id} not found")))?;
    shared.sessions.check_active(tenant, &run.session_id).map_err(|r| {
        ApiError::bad_request(format!("training run {model_id}: {}", session_error(&run.session_id, r).detail))
    })?;
    let seq_id = u64::try_from(seq_id).map_err(|_| ApiError::bad_request(format!("seq_id {seq_id} is negative")))?;
    let not_loaded = || {
        ApiError::bad_request(format!(
            "training run {model_id} is not loaded (its session ended or lathe restarted); \
             create a training client from one of its checkpoints"
        ))
    };
    let live = shared.live.get(model_id).ok_or_else(not_loaded)?;
    if let Some(original) = live.sequencer.seen(seq_id) {
        return Ok(Json(json!({"request_id": original, "model_id": model_id})));
    }
    if seq_id < live.sequencer.first_seq_id() {
        let first = live.sequencer.first_seq_id();
        return Err(ApiError::bad_request(format!("seq_id {seq_id} is below this run's first seq_id {first}")));
    }
    let action = build(&shared, &run).unwrap_or_else(Action::Reject);
    let request_id = shared.futures.create(tenant, None);
    let live = shared.live.get_mut(model_id).expect("checked live above, under the same lock");
    let job = Job { request_id: request_id.clone(), action };
    let mut lost = Vec::new();
    match live.sequencer.submit(seq_id, &request_id, job) {
        Submitted::Accepted(jobs) => {
            for job in jobs {
                if let Err(e) = live.queue.send(job) {
                    lost.push(e.0.request_id);
                }
            }
        }
        Submitted::Duplicate(_) | Submitted::TooOld { .. } => unreachable!("seen and first_seq_id were checked"),
    }
    let reply = json!({"request_id": request_id, "model_id": model_id});
    if let Some(k) = idem {
        shared.remember(&request_id, k, &reply);
    }
    drop(shared);
    for id in lost {
        let message = format!("training run {model_id} stopped executing; create a new training client");
        app.complete(
            &id,
            crate::core::futures::Outcome::Failed { category: runtime::control::ErrorCategory::Server, message },
        );
    }
    Ok(Json(reply))
}

/// Registers a new live run whose first job (seq 0) is `first`; returns the future's reply.
fn create_live_run(app: &Arc<App>, shared: &mut Shared, record: RunRecord, first: Action) -> Result<Value, ApiError> {
    let id = record.id.clone();
    assert!(!shared.live.contains_key(&id), "run {id} is created once");
    shared.record(&Event::Run(record.clone())).map_err(ApiError::internal)?;
    shared.sessions.add_run(&record.session_id, &id);
    shared.catalog.add_run(record);
    let request_id = shared.futures.create(&shared.catalog.run_tenant(&id).expect("just added"), None);
    let queue = spawn_executor(app, &id);
    queue.send(Job { request_id: request_id.clone(), action: first }).map_err(|_| {
        ApiError::internal("the executor of a new run stopped at once; lathe is shutting down, retry later")
    })?;
    shared.live.insert(id.clone(), LiveRun { sequencer: Sequencer::new(1), queue });
    let reply = json!({"request_id": request_id, "model_id": id});
    shared.remember(&request_id, format!("create:{id}"), &reply);
    Ok(reply)
}

#[derive(Deserialize)]
struct LoraConfigJson {
    rank: usize,
    seed: Option<u64>,
    alpha: Option<f32>,
    train_unembed: Option<bool>,
    train_mlp: Option<bool>,
    train_attn: Option<bool>,
}

#[derive(Deserialize)]
struct CreateModelRequest {
    session_id: String,
    model_seq_id: u64,
    base_model: String,
    lora_config: Option<LoraConfigJson>,
    optimizer_config: Option<Value>,
    user_metadata: Option<Value>,
}

fn check_optimizer_config(config: &Option<Value>) -> Result<(), ApiError> {
    match config.as_ref().and_then(|c| c.get("type")).and_then(Value::as_str) {
        None | Some("adamw") => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "optimizer_config.type {other:?} is not supported; lathe trains with adamw"
        ))),
    }
}

pub async fn create_model(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Bytes,
) -> Reply {
    let req: CreateModelRequest = parse_json(&body, "create_model")?;
    let info = model_info(&app, &req.base_model)?;
    check_optimizer_config(&req.optimizer_config)?;
    let lora =
        req.lora_config.ok_or_else(|| ApiError::bad_request("lora_config is required (lathe trains LoRA adapters)"))?;
    let lora = LoraConfig::new(
        lora.rank,
        lora.alpha.unwrap_or(LORA_ALPHA_DEFAULT),
        lora.seed.unwrap_or(0),
        lora.train_attn.unwrap_or(true),
        lora.train_mlp.unwrap_or(true),
        lora.train_unembed.unwrap_or(true),
    )
    .map_err(|e| ApiError::bad_request(format!("lora_config: {e}")))?;
    let run_id = format!("{}:train:{}", req.session_id, req.model_seq_id);
    let now = app.now_ms();
    let mut shared = app.lock();
    shared.sessions.check_active(&tenant, &req.session_id).map_err(|r| session_error(&req.session_id, r))?;
    if shared.catalog.run_exists(&run_id) {
        return match shared.replies.get(&format!("create:{run_id}")) {
            Some(reply) => Ok(Json(reply.clone())),
            None => {
                Err(ApiError::bad_request(format!("model_seq_id {} of this session is already used", req.model_seq_id)))
            }
        };
    }
    let record = RunRecord {
        id: run_id,
        tenant,
        session_id: req.session_id,
        base_model: info.name.clone(),
        lora: lora.clone(),
        created_ms: now,
        last_request_ms: now,
        user_metadata: req.user_metadata,
    };
    let first = Action::Create { base_model: info.name.clone(), lora };
    Ok(Json(create_live_run(&app, &mut shared, record, first)?))
}

#[derive(Deserialize)]
struct ModelIdRequest {
    model_id: String,
}

pub async fn get_info(State(app): State<Arc<App>>, Extension(Tenant(tenant)): Extension<Tenant>, body: Bytes) -> Reply {
    let req: ModelIdRequest = parse_json(&body, "get_info")?;
    let shared = app.lock();
    let run = shared
        .catalog
        .run(&tenant, &req.model_id)
        .ok_or_else(|| ApiError::not_found(format!("training run {} not found", req.model_id)))?;
    let mut model_data = json!({"model_name": run.base_model});
    if let Some(info) = app.models.get(&run.base_model) {
        model_data["arch"] = json!(info.arch);
        if let Some(dir) = &info.tokenizer_dir {
            model_data["tokenizer_id"] = json!(dir.to_string_lossy());
        }
    }
    Ok(Json(json!({
        "model_id": run.id, "model_data": model_data, "is_lora": true, "lora_rank": run.lora.rank,
        "model_name": run.base_model, "optimizer_config": {"type": "adamw"}, "type": "get_info"
    })))
}

/// Checks a decoded forward_backward against the run's base model.
fn check_forward_backward(info: Option<&BaseModelInfo>, req: &FbRequest) -> Result<(), String> {
    let info = info.ok_or("the run's base model is no longer served")?;
    if let Some(key) = req.loss_config_text.keys().next() {
        return Err(format!("loss_fn_config_v2[{key:?}] is text; custom server-side losses are not supported"));
    }
    for (i, d) in req.data.iter().enumerate() {
        if d.tokens.len() > info.max_context_length {
            return Err(format!(
                "data[{i}].model_input has {} tokens, above {}'s context length {}",
                d.tokens.len(),
                info.name,
                info.max_context_length
            ));
        }
        if let Some(t) = d.tokens.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(format!(
                "data[{i}].model_input: token {t} is not below the vocabulary size {}",
                info.vocab_size
            ));
        }
    }
    Ok(())
}

pub async fn forward_backward(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let encoding = headers.get("content-encoding").and_then(|v| v.to_str().ok());
    let raw = maybe_decompress(encoding, &body, app.tuning.body_bytes_max)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    match decode_forward_backward(&raw) {
        Ok(req) => {
            let model_id = req.model_id.clone();
            submit_sequenced(&app, &tenant, &headers, &model_id, i64::from(req.seq_id), |_, run| {
                check_forward_backward(app.models.get(&run.base_model), &req)?;
                Ok(Action::ForwardBackward {
                    data: req.data,
                    loss_fn: req.loss_fn,
                    loss_config: req.loss_config,
                    forward_only: req.forward_only,
                })
            })
        }
        Err(e) => match e.request_seq() {
            Some((model_id, seq_id)) => {
                let message = e.to_string();
                submit_sequenced(&app, &tenant, &headers, model_id, i64::from(seq_id), |_, _| Err(message))
            }
            None => Err(ApiError::bad_request(e.to_string())),
        },
    }
}

#[derive(Deserialize)]
struct AdamParamsJson {
    learning_rate: Option<f64>,
    beta1: Option<f64>,
    beta2: Option<f64>,
    eps: Option<f64>,
    weight_decay: Option<f64>,
    grad_clip_norm: Option<f64>,
}

#[derive(Deserialize)]
struct OptimStepRequest {
    model_id: String,
    seq_id: i64,
    adam_params: Option<AdamParamsJson>,
    optimizer_params: Option<Value>,
}

/// AdamParams with the SDK's defaults for absent fields, range-checked.
fn adam_config(p: &AdamParamsJson) -> Result<AdamConfig, String> {
    let c = AdamConfig {
        learning_rate: p.learning_rate.unwrap_or(1e-4),
        beta1: p.beta1.unwrap_or(0.9),
        beta2: p.beta2.unwrap_or(0.95),
        eps: p.eps.unwrap_or(1e-12),
        weight_decay: p.weight_decay.unwrap_or(0.0),
        grad_clip_norm: p.grad_clip_norm.unwrap_or(0.0),
    };
    let checks = [
        ("learning_rate", c.learning_rate, c.learning_rate >= 0.0, ">= 0"),
        ("beta1", c.beta1, (0.0..1.0).contains(&c.beta1), "in [0, 1)"),
        ("beta2", c.beta2, (0.0..1.0).contains(&c.beta2), "in [0, 1)"),
        ("eps", c.eps, c.eps > 0.0, "> 0"),
        ("weight_decay", c.weight_decay, c.weight_decay >= 0.0, ">= 0"),
        ("grad_clip_norm", c.grad_clip_norm, c.grad_clip_norm >= 0.0, ">= 0 (0 = off)"),
    ];
    for (name, value, ok, want) in checks {
        if !(ok && value.is_finite()) {
            return Err(format!("adam_params.{name}: {value} must be finite and {want}"));
        }
    }
    Ok(c)
}

pub async fn optim_step(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req: OptimStepRequest = parse_json(&body, "optim_step")?;
    submit_sequenced(&app, &tenant, &headers, &req.model_id, req.seq_id, |_, _| {
        if req.optimizer_params.is_some() {
            return Err("optimizer_params (e.g. dimuon) is not supported; send adam_params".into());
        }
        let p = req.adam_params.as_ref().ok_or("adam_params is required")?;
        Ok(Action::Optim(adam_config(p)?))
    })
}

#[derive(Deserialize)]
struct SaveRequest {
    model_id: String,
    seq_id: i64,
    path: Option<String>,
    overwrite: Option<bool>,
    ttl_seconds: Option<i64>,
    user_metadata: Option<Value>,
    sampling_session_seq_id: Option<u64>,
}

fn save_action(req: &SaveRequest, kind: CheckpointKind) -> Result<Action, String> {
    let name = req.path.clone().ok_or("path (the checkpoint name) is required")?;
    validate_name(&name).map_err(|e| format!("path: {e}"))?;
    Ok(Action::Save {
        kind,
        name,
        overwrite: req.overwrite.unwrap_or(false),
        ttl_ms: ttl_ms(req.ttl_seconds)?,
        user_metadata: req.user_metadata.clone(),
    })
}

pub async fn save_weights(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req: SaveRequest = parse_json(&body, "save_weights")?;
    submit_sequenced(&app, &tenant, &headers, &req.model_id, req.seq_id, |_, _| {
        save_action(&req, CheckpointKind::Weights)
    })
}

pub async fn save_weights_external(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req: SaveRequest = parse_json(&body, "save_weights_external")?;
    submit_sequenced(&app, &tenant, &headers, &req.model_id, req.seq_id, |_, _| {
        save_action(&req, CheckpointKind::ExternalWeights)
    })
}

pub async fn save_weights_for_sampler(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req: SaveRequest = parse_json(&body, "save_weights_for_sampler")?;
    let tenant_for_sampler = tenant.clone();
    submit_sequenced(&app, &tenant, &headers, &req.model_id, req.seq_id, |_, run| match req.path {
        Some(_) => save_action(&req, CheckpointKind::SamplerWeights),
        None => {
            let n = req.sampling_session_seq_id.map_or(format!("{}-{}", run.id, req.seq_id), |n| n.to_string());
            Ok(Action::EphemeralSampler {
                sampler: format!("{}:sample:{n}", run.session_id),
                session_id: run.session_id.clone(),
                tenant: tenant_for_sampler,
                base_model: run.base_model.clone(),
            })
        }
    })
}

#[derive(Deserialize)]
struct LoadRequest {
    model_id: Option<String>,
    seq_id: Option<i64>,
    session_id: Option<String>,
    model_seq_id: Option<u64>,
    path: String,
    optimizer: Option<bool>,
    base_model: Option<String>,
    user_metadata: Option<Value>,
}

/// The source of a load: a training checkpoint the tenant owns.
fn load_source(shared: &Shared, tenant: &str, path: &str) -> Result<(TinkerPath, RunRecord), String> {
    let p = TinkerPath::parse(path).map_err(|e| format!("path: {e}"))?;
    if p.kind != CheckpointKind::Weights {
        return Err(format!("path {p}: only tinker://<run>/weights/<name> checkpoints (save_state) can be loaded"));
    }
    shared.catalog.checkpoint(tenant, &p).ok_or_else(|| format!("checkpoint {p} not found"))?;
    let run = shared.catalog.run(tenant, &p.run).cloned().ok_or_else(|| format!("training run {} not found", p.run))?;
    Ok((p, run))
}

pub async fn load_weights(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req: LoadRequest = parse_json(&body, "load_weights")?;
    let optimizer = req.optimizer.unwrap_or(false);
    if let (Some(model_id), Some(seq_id)) = (&req.model_id, req.seq_id) {
        return submit_sequenced(&app, &tenant, &headers, model_id, seq_id, |shared, run| {
            let (source, source_run) = load_source(shared, &tenant, &req.path)?;
            if source_run.base_model != run.base_model || source_run.lora != run.lora {
                return Err(format!("checkpoint {source} has a different base model or LoRA config than {}", run.id));
            }
            Ok(Action::Load { source, optimizer })
        });
    }
    let (Some(session_id), Some(model_seq_id)) = (&req.session_id, req.model_seq_id) else {
        return Err(ApiError::bad_request("load_weights needs model_id + seq_id, or session_id + model_seq_id"));
    };
    let run_id = format!("{session_id}:train:{model_seq_id}");
    let now = app.now_ms();
    let mut shared = app.lock();
    shared.sessions.check_active(&tenant, session_id).map_err(|r| session_error(session_id, r))?;
    if shared.catalog.run_exists(&run_id) {
        return match shared.replies.get(&format!("create:{run_id}")) {
            Some(reply) => Ok(Json(reply.clone())),
            None => Err(ApiError::bad_request(format!("model_seq_id {model_seq_id} of this session is already used"))),
        };
    }
    let (source, source_run) = load_source(&shared, &tenant, &req.path).map_err(ApiError::not_found)?;
    if let Some(base) = &req.base_model {
        if *base != source_run.base_model {
            let have = &source_run.base_model;
            return Err(ApiError::bad_request(format!("base_model {base:?} differs from the checkpoint's {have:?}")));
        }
    }
    let record = RunRecord {
        id: run_id,
        tenant,
        session_id: session_id.clone(),
        base_model: source_run.base_model.clone(),
        lora: source_run.lora.clone(),
        created_ms: now,
        last_request_ms: now,
        user_metadata: req.user_metadata,
    };
    Ok(Json(create_live_run(&app, &mut shared, record, Action::CreateFromState { source, optimizer })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_params_default_like_the_sdk_and_name_bad_fields() {
        let none = AdamParamsJson {
            learning_rate: None,
            beta1: None,
            beta2: None,
            eps: None,
            weight_decay: None,
            grad_clip_norm: None,
        };
        let c = adam_config(&none).unwrap();
        assert_eq!((c.learning_rate, c.beta1, c.beta2, c.eps), (1e-4, 0.9, 0.95, 1e-12));
        let bad = AdamParamsJson { beta2: Some(1.0), ..none };
        assert!(adam_config(&bad).unwrap_err().contains("beta2"));
    }

    #[test]
    fn ttls_outside_the_documented_range_are_refused() {
        assert_eq!(ttl_ms(None), Ok(None));
        assert_eq!(ttl_ms(Some(3600)), Ok(Some(3_600_000)));
        assert!(ttl_ms(Some(60)).unwrap_err().contains("ttl_seconds"));
    }
}
