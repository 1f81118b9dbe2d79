//! Sampling endpoints: create_sampling_session (base model or a checkpoint path),
//! `GET /samplers/{id}`, and asample (JSON in, future out with one `sample_sequence_id` per
//! sample; the result is a protobuf SampleResponse). Samples are not ordered by `seq_id`; a
//! retried `(sampler, seq_id)` or idempotency key answers the original request.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use runtime::control::{FromWorker, SamplerAdapter, ToWorker};
use serde::Deserialize;
use serde_json::{json, Value};

use super::bootstrap::session_error;
use super::{idem_slot, idempotency_key, parse_json, Tenant};
use crate::core::futures::Outcome;
use crate::core::ids::TinkerPath;
use crate::core::sampling::{to_control, ModelLimits, SampleRequestJson};
use crate::error::ApiError;
use crate::exec::spawn_sample;
use crate::state::{App, SamplerRecord};

type Reply = Result<Json<Value>, ApiError>;

#[derive(Deserialize)]
struct CreateSamplingSessionRequest {
    session_id: String,
    sampling_session_seq_id: u64,
    model_path: Option<String>,
    base_model: Option<String>,
}

pub async fn create_sampling_session(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Bytes,
) -> Reply {
    let req: CreateSamplingSessionRequest = parse_json(&body, "create_sampling_session")?;
    let sampler = format!("{}:sample:{}", req.session_id, req.sampling_session_seq_id);
    let (base_model, adapter, model_path) = {
        let shared = app.lock();
        shared.sessions.check_active(&tenant, &req.session_id).map_err(|r| session_error(&req.session_id, r))?;
        if shared.samplers.get(&sampler).is_some_and(|s| s.tenant == tenant) {
            return Ok(Json(json!({ "sampling_session_id": sampler })));
        }
        match &req.model_path {
            Some(path) => {
                let p = TinkerPath::parse(path).map_err(|e| ApiError::bad_request(format!("model_path: {e}")))?;
                shared
                    .catalog
                    .checkpoint(&tenant, &p)
                    .ok_or_else(|| ApiError::not_found(format!("checkpoint {p} not found")))?;
                let run = shared
                    .catalog
                    .run(&tenant, &p.run)
                    .ok_or_else(|| ApiError::not_found(format!("training run {} not found", p.run)))?;
                if let Some(base) = req.base_model.as_ref().filter(|b| **b != run.base_model) {
                    return Err(ApiError::bad_request(format!(
                        "base_model {base:?} differs from the checkpoint's {:?}",
                        run.base_model
                    )));
                }
                (run.base_model.clone(), SamplerAdapter::Dir(app.checkpoint_dir(&p)), Some(p))
            }
            None => {
                let base =
                    req.base_model.clone().ok_or_else(|| ApiError::bad_request("give model_path or base_model"))?;
                if !app.models.contains_key(&base) {
                    let known: Vec<&String> = app.models.keys().collect();
                    return Err(ApiError::bad_request(format!(
                        "base model {base:?} is not served here; choose one of {known:?}"
                    )));
                }
                (base, SamplerAdapter::None, None)
            }
        }
    };
    let msg = ToWorker::CreateSampler { sampler: sampler.clone(), base_model: base_model.clone(), adapter };
    match app.call(msg).await {
        FromWorker::Done => {}
        FromWorker::Failed { category: runtime::control::ErrorCategory::User, message } => {
            return Err(ApiError::bad_request(message))
        }
        FromWorker::Failed { message, .. } => return Err(ApiError::internal(message)),
        other => return Err(ApiError::internal(format!("worker answered {other:?} to CreateSampler; a lathe bug"))),
    }
    let mut shared = app.lock();
    let record = SamplerRecord { tenant, session_id: req.session_id.clone(), base_model, model_path };
    shared.samplers.insert(sampler.clone(), record);
    if shared.sessions.check_active(&shared.samplers[&sampler].tenant, &req.session_id).is_ok() {
        shared.sessions.add_sampler(&req.session_id, &sampler);
    }
    Ok(Json(json!({ "sampling_session_id": sampler })))
}

pub async fn get_sampler(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(sampler_id): Path<String>,
) -> Reply {
    let shared = app.lock();
    let s = shared
        .samplers
        .get(&sampler_id)
        .filter(|s| s.tenant == tenant)
        .ok_or_else(|| ApiError::not_found(format!("sampler {sampler_id} not found")))?;
    let mut reply = json!({"sampler_id": sampler_id, "base_model": s.base_model});
    if let Some(p) = &s.model_path {
        reply["model_path"] = json!(p.to_string());
    }
    Ok(Json(reply))
}

/// A default seed that differs per (sampler, seq_id) but never depends on ambient randomness.
fn default_seed(sampler: &str, seq_id: u64) -> u64 {
    // FNV-1a over the sampler id and seq_id.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sampler.bytes().chain(seq_id.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub async fn asample(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req: SampleRequestJson = parse_json(&body, "asample")?;
    let sampler = req.sampling_session_id.clone().ok_or_else(|| {
        ApiError::bad_request(
            "sampling_session_id is required; create a sampling client first (create_sampling_session)",
        )
    })?;
    let seq_id = req.seq_id.unwrap_or(0);
    let idem = idempotency_key(&headers).map(|k| idem_slot(&tenant, &k));
    let slot = format!("sample:{sampler}:{seq_id}");
    let mut shared = app.lock();
    for key in idem.iter().chain([&slot]) {
        if let Some(reply) = shared.replies.get(key) {
            return Ok(Json(reply.clone()));
        }
    }
    let record =
        shared.samplers.get(&sampler).filter(|s| s.tenant == tenant).cloned().ok_or_else(|| {
            ApiError::not_found(format!("sampler {sampler} not found (unknown, or its session ended)"))
        })?;
    shared.sessions.check_active(&tenant, &record.session_id).map_err(|r| session_error(&record.session_id, r))?;
    let info = app.models.get(&record.base_model).ok_or_else(|| ApiError::internal("sampler's base model is gone"))?;
    let limits = ModelLimits { vocab_size: info.vocab_size, max_context_length: info.max_context_length };
    let request_id = shared.futures.create(&tenant, None);
    let num_samples = req.num_samples.unwrap_or(1);
    let ids: Vec<String> = (0..num_samples).map(|i| format!("{request_id}:{i}")).collect();
    let reply = json!({"request_id": request_id, "sample_sequence_ids": ids});
    for key in idem.into_iter().chain([slot]) {
        shared.remember(&request_id, key, &reply);
    }
    drop(shared);
    match to_control(&req, &sampler, limits, default_seed(&sampler, seq_id)) {
        Ok(control) => spawn_sample(&app, request_id, control),
        Err(message) => {
            app.complete(&request_id, Outcome::Failed { category: runtime::control::ErrorCategory::User, message })
        }
    }
    Ok(Json(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_seeds_differ_per_sampler_and_seq_id_and_repeat_exactly() {
        assert_eq!(default_seed("s:sample:0", 1), default_seed("s:sample:0", 1));
        assert_ne!(default_seed("s:sample:0", 1), default_seed("s:sample:0", 2));
        assert_ne!(default_seed("s:sample:0", 1), default_seed("s:sample:1", 1));
    }
}
