//! The Tinker HTTP API (tinker-protocol.md §2) and lathe's own `/lathe/v1` endpoints: the router,
//! authentication (X-API-Key → tenant, put into request extensions), and the helpers every handler
//! shares. Handlers only parse: each turns its request into an [`ApiRequest`], asks the
//! coordinator actor, and renders the answer. No decision is taken here.

mod bootstrap;
mod files;
mod memory;
mod rest;
mod retrieve;
mod sampling;
mod training;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ractor::ActorRef;
use runtime::clock::Clock;
use runtime::control::BaseModelInfo;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::actor::{ask, CoordinatorMsg};
use crate::core::api::{Answer, ApiRequest};
use crate::core::ids::TenantId;
use crate::core::tenants::Tenants;
use crate::error::ApiError;
use crate::state::Tuning;

/// What handlers share: the fixed facts of this server and the coordinator actor.
pub struct Http {
    pub tenants: Tenants,
    pub models: BTreeMap<String, BaseModelInfo>,
    pub clock: Arc<dyn Clock>,
    /// Base of download URLs (`http://host:port`, no trailing slash).
    pub public_url: String,
    pub url_secret: Vec<u8>,
    pub tuning: Tuning,
    pub data_dir: PathBuf,
    pub actor: ActorRef<CoordinatorMsg>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where workers connect (`lathe coordinator`, `serve --workers N`); None with an in-process worker.
    pub control_addr: Option<std::net::SocketAddr>,
}

impl Http {
    /// Asks the core and maps its error to HTTP.
    pub async fn ask(&self, tenant: &TenantId, request: ApiRequest) -> Result<Answer, ApiError> {
        ask(&self.actor, tenant.clone(), request).await.map_err(ApiError::from)
    }

    /// Asks the core for a JSON answer.
    pub async fn ask_json(&self, tenant: &TenantId, request: ApiRequest) -> Result<Json<Value>, ApiError> {
        match self.ask(tenant, request).await? {
            Answer::Json(v) => Ok(Json(v)),
            other => Err(ApiError::internal(format!("the coordinator answered {other:?}; a lathe bug"))),
        }
    }
}

/// The caller's tenant, set by the auth layer.
#[derive(Clone, Debug)]
pub struct Tenant(pub TenantId);

/// Builds the whole API.
pub fn router(app: Arc<Http>) -> Router {
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
        // Workers discover the control address here; Prometheus scrapes /metrics.
        .route("/lathe/v1/control", get(control_address))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<Http>>) -> Response {
    let text = app.metrics.render();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn control_address(State(app): State<Arc<Http>>) -> Result<Json<serde_json::Value>, ApiError> {
    match app.control_addr {
        Some(addr) => Ok(Json(serde_json::json!({ "control": addr.to_string() }))),
        None => Err(ApiError::not_found(
            "this lathe runs its worker in-process and takes no worker processes; start `lathe coordinator` \
             (or `lathe serve --workers N`) to add workers",
        )),
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {} {}", req.method(), req.uri().path()))
}

async fn authenticate(State(app): State<Arc<Http>>, mut req: Request, next: Next) -> Response {
    let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    match app.tenants.tenant_of(key).map(TenantId::new) {
        Ok(Ok(tenant)) => {
            req.extensions_mut().insert(Tenant(tenant));
            next.run(req).await
        }
        Ok(Err(e)) => {
            ApiError::unauthorized(format!("the tenant of this API key is not a valid id: {e}")).into_response()
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
