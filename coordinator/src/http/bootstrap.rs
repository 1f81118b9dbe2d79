//! Bootstrap and lifecycle endpoints: client config, dynamic config, sessions (create,
//! heartbeat, finish), telemetry, health and server capabilities.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, Tenant};
use crate::core::sessions::SessionRefusal;
use crate::error::ApiError;
use crate::exec;
use crate::state::App;
use crate::store::Event;

/// The flags of tinker-protocol.md §1.6.
pub async fn client_config() -> Json<Value> {
    Json(json!({
        "pjwt_auth_enabled": false, "use_pyqwest_transport": true, "proto_compress_fwdbwd": false,
        "parallel_fwdbwd_chunks": true, "fwdbwd_max_chunk_len": 1024, "fwdbwd_max_chunk_bytes_count": 5_000_000,
        "sample_use_retrieve_futures": false, "custom_loss_server_side": false,
        "sample_join_sampling_session": false, "sample_no_retries": false
    }))
}

pub async fn dynamic_config() -> Json<Value> {
    Json(json!({"refresh_interval_sec": 300, "sample_cancel_enabled": false, "sample_cancel_max_batch_size": 64}))
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn telemetry() -> Json<Value> {
    Json(json!({"status": "accepted"}))
}

pub async fn capabilities(State(app): State<Arc<App>>) -> Json<Value> {
    let models: Vec<Value> = app
        .models
        .values()
        .map(|m| {
            let context = m.max_context_length;
            json!({"model_name": m.name, "max_context_length": context, "trainable": true, "sampleable": true})
        })
        .collect();
    Json(json!({ "supported_models": models }))
}

pub async fn create_session(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> Result<Json<Value>, ApiError> {
    let now = app.now_ms();
    let mut shared = app.lock();
    let id = shared.sessions.create(&tenant, now);
    shared.record(&Event::Session { id: id.clone(), tenant, created_ms: now }).map_err(ApiError::internal)?;
    Ok(Json(json!({ "session_id": id })))
}

/// Maps a refused session to its HTTP answer.
pub fn session_error(id: &str, refusal: SessionRefusal) -> ApiError {
    match refusal {
        SessionRefusal::Unknown => ApiError::not_found(format!("session {id} not found")),
        SessionRefusal::Gone(state) => {
            ApiError::gone(format!("session {id} is {state:?}; create a new ServiceClient to continue"))
        }
    }
}

#[derive(Deserialize)]
struct HeartbeatRequest {
    session_id: String,
}

pub async fn heartbeat(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: HeartbeatRequest = parse_json(&body, "session_heartbeat")?;
    let now = app.now_ms();
    app.lock().sessions.heartbeat(&tenant, &req.session_id, now).map_err(|r| session_error(&req.session_id, r))?;
    Ok(Json(json!({})))
}

pub async fn finish(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(session_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ended = app.lock().sessions.finish(&tenant, &session_id).map_err(|r| session_error(&session_id, r))?;
    exec::end_session(&app, &ended.runs, &ended.samplers);
    Ok(Json(json!({})))
}
