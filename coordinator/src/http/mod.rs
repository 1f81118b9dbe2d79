//! The Tinker HTTP API (tinker-protocol.md §2) and lathe's own `/lathe/v1` endpoints: the router,
//! authentication (X-API-Key → tenant, put into request extensions), and the small helpers every
//! handler shares. Handlers live in one file per area; they validate, update the shared state and
//! hand work to executors.

mod bootstrap;
mod files;
mod memory;
mod rest;
mod retrieve;
mod sampling;
mod training;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::App;

/// The caller's tenant, set by the auth layer.
#[derive(Clone, Debug)]
pub struct Tenant(pub String);

/// Builds the whole API.
pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.tuning.body_bytes_max;
    let v1 = Router::new()
        .route("/client/config", post(bootstrap::client_config))
        .route("/client/dynamic_config", post(bootstrap::dynamic_config))
        .route("/create_session", post(bootstrap::create_session))
        .route("/session_heartbeat", post(bootstrap::heartbeat))
        .route("/sessions/{session_id}/finish", post(bootstrap::finish))
        .route("/telemetry", post(bootstrap::telemetry))
        .route("/get_server_capabilities", get(bootstrap::capabilities))
        .route("/create_model", post(training::create_model))
        .route("/get_info", post(training::get_info))
        .route("/forward_backward", post(training::forward_backward))
        .route("/optim_step", post(training::optim_step))
        .route("/save_weights", post(training::save_weights))
        .route("/load_weights", post(training::load_weights))
        .route("/save_weights_for_sampler", post(training::save_weights_for_sampler))
        .route("/save_weights_external", post(training::save_weights_external))
        .route("/retrieve_future", post(retrieve::retrieve_future))
        .route("/create_sampling_session", post(sampling::create_sampling_session))
        .route("/samplers/{sampler_id}", get(sampling::get_sampler))
        .route("/asample", post(sampling::asample))
        .route("/training_runs", get(rest::list_runs))
        .route("/training_runs/{run}", get(rest::get_run))
        .route("/training_runs/{run}/checkpoints", get(rest::list_run_checkpoints))
        .route("/training_runs/{run}/checkpoints/{kind}/{name}", axum::routing::delete(rest::delete_checkpoint))
        .route("/training_runs/{run}/checkpoints/{kind}/{name}/ttl", put(rest::set_ttl))
        .route("/training_runs/{run}/checkpoints/{kind}/{name}/external_weights_urls", get(rest::external_urls))
        .route("/checkpoints", get(rest::list_user_checkpoints))
        .route("/weights_info", post(rest::weights_info))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&app), authenticate));
    // lathe's own endpoints, outside the Tinker API.
    let lathe = Router::new()
        .route("/memory", get(memory::memory))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&app), authenticate));
    let open = Router::new()
        .route("/healthz", get(bootstrap::healthz))
        .route("/download/{run}/{name}/{file}", get(files::download));
    Router::new()
        .nest("/api/v1", v1.merge(open))
        .nest("/lathe/v1", lathe)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {} {}", req.method(), req.uri().path()))
}

async fn authenticate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    match app.tenants.tenant_of(key) {
        Ok(tenant) => {
            req.extensions_mut().insert(Tenant(tenant));
            next.run(req).await
        }
        Err(e) => ApiError::unauthorized(e.to_string()).into_response(),
    }
}

/// Parses a JSON body, answering 400 with serde's reason (which names the field).
pub fn parse_json<T: DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid {what} request body: {e}")))
}

/// The `X-Idempotency-Key` header, when sent.
pub fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers.get("x-idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The reply-cache key of an idempotency key.
pub fn idem_slot(tenant: &str, key: &str) -> String {
    format!("idem:{tenant}:{key}")
}
