//! REST endpoints of `RestClient`: training runs (list, get), checkpoints (per run, per user),
//! weights_info, signed download URLs of exported adapters, checkpoint TTL and delete.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, Tenant};
use crate::core::catalog::{CheckpointRecord, RunRecord};
use crate::core::ids::{CheckpointKind, TinkerPath};
use crate::core::signing::sign;
use crate::core::time::iso8601_ms;
use crate::error::ApiError;
use crate::exec;
use crate::state::{App, Shared};
use crate::store::Event;

type Reply = Result<Json<Value>, ApiError>;

#[derive(Deserialize)]
pub struct Page {
    limit: Option<usize>,
    offset: Option<usize>,
}

impl Page {
    fn apply<T>(&self, items: Vec<T>, limit_default: usize) -> (Vec<T>, Value) {
        let total = items.len();
        let limit = self.limit.unwrap_or(limit_default);
        let offset = self.offset.unwrap_or(0);
        let page = items.into_iter().skip(offset).take(limit).collect();
        (page, json!({"offset": offset, "limit": limit, "total_count": total}))
    }
}

fn checkpoint_json(c: &CheckpointRecord) -> Value {
    let path = c.path();
    json!({
        "checkpoint_id": path.checkpoint_id(), "checkpoint_type": c.kind.checkpoint_type(),
        "time": iso8601_ms(c.created_ms), "tinker_path": path.to_string(), "size_bytes": c.size_bytes,
        "public": false, "expires_at": c.expires_ms.map(iso8601_ms), "user_metadata": c.user_metadata,
    })
}

fn run_json(shared: &Shared, r: &RunRecord) -> Value {
    let last = |kind| shared.catalog.last_checkpoint(&r.tenant, &r.id, kind).map(checkpoint_json);
    json!({
        "training_run_id": r.id, "base_model": r.base_model, "model_owner": r.tenant, "is_lora": true,
        "corrupted": false, "lora_rank": r.lora.rank, "last_request_time": iso8601_ms(r.last_request_ms),
        "last_checkpoint": last(CheckpointKind::Weights),
        "last_sampler_checkpoint": last(CheckpointKind::SamplerWeights),
        "user_metadata": r.user_metadata,
    })
}

pub async fn list_runs(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Query(page): Query<Page>,
) -> Reply {
    let shared = app.lock();
    let (runs, cursor) = page.apply(shared.catalog.runs_of(&tenant), 20);
    let runs: Vec<Value> = runs.into_iter().map(|r| run_json(&shared, r)).collect();
    Ok(Json(json!({"training_runs": runs, "cursor": cursor})))
}

pub async fn get_run(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(run): Path<String>,
) -> Reply {
    let shared = app.lock();
    let r = shared
        .catalog
        .run(&tenant, &run)
        .ok_or_else(|| ApiError::not_found(format!("training run {run} not found")))?;
    Ok(Json(run_json(&shared, r)))
}

pub async fn list_run_checkpoints(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(run): Path<String>,
) -> Reply {
    let shared = app.lock();
    shared.catalog.run(&tenant, &run).ok_or_else(|| ApiError::not_found(format!("training run {run} not found")))?;
    let list: Vec<Value> = shared.catalog.checkpoints_of_run(&tenant, &run).into_iter().map(checkpoint_json).collect();
    Ok(Json(json!({ "checkpoints": list })))
}

pub async fn list_user_checkpoints(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Query(page): Query<Page>,
) -> Reply {
    let shared = app.lock();
    let (list, cursor) = page.apply(shared.catalog.checkpoints_of(&tenant), 100);
    let list: Vec<Value> = list.into_iter().map(checkpoint_json).collect();
    Ok(Json(json!({"checkpoints": list, "cursor": cursor})))
}

#[derive(Deserialize)]
struct WeightsInfoRequest {
    tinker_path: String,
}

pub async fn weights_info(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Bytes,
) -> Reply {
    let req: WeightsInfoRequest = parse_json(&body, "weights_info")?;
    let p = TinkerPath::parse(&req.tinker_path).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let shared = app.lock();
    shared.catalog.checkpoint(&tenant, &p).ok_or_else(|| ApiError::not_found(format!("checkpoint {p} not found")))?;
    let r = shared
        .catalog
        .run(&tenant, &p.run)
        .ok_or_else(|| ApiError::not_found(format!("training run {} not found", p.run)))?;
    Ok(Json(json!({
        "base_model": r.base_model, "is_lora": true, "lora_rank": r.lora.rank, "train_mlp": r.lora.train_mlp,
        "train_attn": r.lora.train_attn, "train_unembed": r.lora.train_unembed,
    })))
}

/// The checkpoint a REST path names, if the tenant owns it.
fn owned_checkpoint(app: &App, tenant: &str, run: String, kind: &str, name: String) -> Result<TinkerPath, ApiError> {
    let kind = CheckpointKind::from_segment(kind).ok_or_else(|| {
        ApiError::bad_request(format!("checkpoint kind {kind:?} is not weights, sampler_weights or external_weights"))
    })?;
    let p = TinkerPath { run, kind, name };
    app.lock()
        .catalog
        .checkpoint(tenant, &p)
        .ok_or_else(|| ApiError::not_found(format!("checkpoint {p} not found")))?;
    Ok(p)
}

pub async fn delete_checkpoint(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((run, kind, name)): Path<(String, String, String)>,
) -> Reply {
    let p = owned_checkpoint(&app, &tenant, run, &kind, name)?;
    exec::delete_checkpoint(&app, &p).map_err(ApiError::internal)?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct TtlRequest {
    ttl_seconds: Option<i64>,
}

pub async fn set_ttl(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((run, kind, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Reply {
    let req: TtlRequest = parse_json(&body, "checkpoint ttl")?;
    let p = owned_checkpoint(&app, &tenant, run, &kind, name)?;
    let expires_ms = match req.ttl_seconds {
        None => None,
        Some(s) if s > 0 => Some(app.now_ms().saturating_add(s as u64 * 1000)),
        Some(s) => {
            return Err(ApiError::bad_request(format!("ttl_seconds: {s} must be positive, or null for no expiry")))
        }
    };
    let mut shared = app.lock();
    let event = Event::CheckpointExpiry { run: p.run.clone(), kind: p.kind, name: p.name.clone(), expires_ms };
    shared.record(&event).map_err(ApiError::internal)?;
    shared.catalog.set_expiry(&p, expires_ms);
    Ok(Json(json!({})))
}

pub async fn external_urls(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((run, kind, name)): Path<(String, String, String)>,
) -> Reply {
    if kind != CheckpointKind::ExternalWeights.segment() {
        return Err(ApiError::bad_request("only tinker://<run>/external_weights/<name> exports have download URLs"));
    }
    let p = owned_checkpoint(&app, &tenant, run, &kind, name)?;
    let dir = app.checkpoint_dir(&p);
    let entries =
        std::fs::read_dir(&dir).map_err(|e| ApiError::internal(format!("cannot list {}: {e}", dir.display())))?;
    let expires_ms = app.now_ms() + app.tuning.download_url_ttl_ms;
    let mut urls = serde_json::Map::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        if !entry.file_type().is_ok_and(|t| t.is_file()) || crate::core::ids::validate_name(&file).is_err() {
            continue;
        }
        let signed = format!("{}/{}/{file}", p.run, p.name);
        let sig = sign(&app.url_secret, &signed, expires_ms);
        let url = format!("{}/api/v1/download/{signed}?expires={expires_ms}&sig={sig}", app.public_url);
        urls.insert(file, json!(url));
    }
    Ok(Json(json!({"urls": urls, "expires": iso8601_ms(expires_ms)})))
}
