//! REST endpoints of `RestClient`: training runs (list, get), checkpoints (per run, per user),
//! weights_info, signed download URLs of exported adapters, checkpoint TTL and delete. The core
//! answers from its catalogue; this file only lists an export's files and signs their URLs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, Http, Tenant};
use crate::core::api::{Answer, ApiRequest};
use crate::core::signing::sign;
use crate::core::time::iso8601_ms;
use crate::error::ApiError;

type Reply = Result<Json<Value>, ApiError>;

#[derive(Deserialize)]
pub struct Page {
    limit: Option<usize>,
    offset: Option<usize>,
}

pub async fn list_runs(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Query(page): Query<Page>,
) -> Reply {
    app.ask_json(&tenant, ApiRequest::ListRuns { limit: page.limit, offset: page.offset }).await
}

pub async fn get_run(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(run): Path<String>,
) -> Reply {
    app.ask_json(&tenant, ApiRequest::GetRun { run }).await
}

pub async fn list_run_checkpoints(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(run): Path<String>,
) -> Reply {
    app.ask_json(&tenant, ApiRequest::ListRunCheckpoints { run }).await
}

pub async fn list_user_checkpoints(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Query(page): Query<Page>,
) -> Reply {
    app.ask_json(&tenant, ApiRequest::ListCheckpoints { limit: page.limit, offset: page.offset }).await
}

#[derive(Deserialize)]
struct WeightsInfoRequest {
    tinker_path: String,
}

pub async fn weights_info(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Bytes,
) -> Reply {
    let req: WeightsInfoRequest = parse_json(&body, "weights_info")?;
    app.ask_json(&tenant, ApiRequest::WeightsInfo { tinker_path: req.tinker_path }).await
}

pub async fn delete_checkpoint(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((run, kind, name)): Path<(String, String, String)>,
) -> Reply {
    app.ask_json(&tenant, ApiRequest::DeleteCheckpoint { run, kind, name }).await
}

#[derive(Deserialize)]
struct TtlRequest {
    ttl_seconds: Option<i64>,
}

pub async fn set_ttl(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((run, kind, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Reply {
    let req: TtlRequest = parse_json(&body, "checkpoint ttl")?;
    app.ask_json(&tenant, ApiRequest::SetTtl { run, kind, name, ttl_seconds: req.ttl_seconds }).await
}

pub async fn external_urls(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((run, kind, name)): Path<(String, String, String)>,
) -> Reply {
    let (p, dir) = match app.ask(&tenant, ApiRequest::ExternalWeights { run, kind, name }).await? {
        Answer::ExportDir { path, dir } => (path, dir),
        other => return Err(ApiError::internal(format!("the coordinator answered {other:?}; a lathe bug"))),
    };
    let entries =
        std::fs::read_dir(&dir).map_err(|e| ApiError::internal(format!("cannot list {}: {e}", dir.display())))?;
    let expires_ms = app.clock.now_ms() + app.tuning.download_url_ttl_ms;
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
