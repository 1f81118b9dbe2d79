//! Sampling endpoints: create_sampling_session (base model or a checkpoint path),
//! `GET /samplers/{id}`, and asample (JSON in, future out with one `sample_sequence_id` per
//! sample; the result is a protobuf SampleResponse). Parsing only; the core decides.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;

use super::{idempotency_key, parse_json, Http, Tenant};
use crate::core::api::ApiRequest;
use crate::core::sampling::SampleRequestJson;
use crate::error::ApiError;

type Reply = Result<Json<Value>, ApiError>;

#[derive(Deserialize)]
struct CreateSamplingSessionRequest {
    session_id: String,
    sampling_session_seq_id: u64,
    model_path: Option<String>,
    base_model: Option<String>,
}

pub async fn create_sampling_session(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Bytes,
) -> Reply {
    let req: CreateSamplingSessionRequest = parse_json(&body, "create_sampling_session")?;
    let request = ApiRequest::CreateSampler {
        session: req.session_id,
        sampling_session_seq_id: req.sampling_session_seq_id,
        model_path: req.model_path,
        base_model: req.base_model,
    };
    app.ask_json(&tenant, request).await
}

pub async fn get_sampler(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(sampler_id): Path<String>,
) -> Reply {
    app.ask_json(&tenant, ApiRequest::GetSampler { sampler: sampler_id }).await
}

pub async fn asample(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req: SampleRequestJson = parse_json(&body, "asample")?;
    let request = ApiRequest::Sample { request: Box::new(req), idempotency_key: idempotency_key(&headers) };
    app.ask_json(&tenant, request).await
}
