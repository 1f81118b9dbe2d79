//! Bootstrap and lifecycle endpoints: client config, dynamic config, sessions (create,
//! heartbeat, finish), telemetry, health and server capabilities.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, Http, Tenant};
use crate::core::api::ApiRequest;
use crate::error::ApiError;

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

pub async fn capabilities(State(app): State<Arc<Http>>) -> Json<Value> {
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
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> Result<Json<Value>, ApiError> {
    app.ask_json(&tenant, ApiRequest::CreateSession).await
}

#[derive(Deserialize)]
struct HeartbeatRequest {
    session_id: String,
}

pub async fn heartbeat(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: HeartbeatRequest = parse_json(&body, "session_heartbeat")?;
    app.ask_json(&tenant, ApiRequest::Heartbeat { session: req.session_id }).await
}

pub async fn finish(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(session_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.ask_json(&tenant, ApiRequest::FinishSession { session: session_id }).await
}
