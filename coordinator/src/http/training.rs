//! Training endpoints: create_model, get_info, forward_backward (protobuf), optim_step,
//! save_weights, load_weights (both addressing modes), save_weights_for_sampler and
//! save_weights_external. Each parses its body into an [`ApiRequest`]; a body part that does not
//! parse but names its run and `seq_id` still goes to the core, which fails that `seq_id`'s future
//! as a user error (design §4).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use runtime::control::AdamConfig;
use runtime::wire::{decode_forward_backward, maybe_decompress};
use serde::Deserialize;
use serde_json::Value;

use super::{idempotency_key, parse_json, Http, Tenant};
use crate::core::api::{ApiRequest, LoraRequest, SaveRequest as CoreSave, SequencedBody};
use crate::error::{invalid, ApiError, CoordinatorError};

type Reply = Result<Json<Value>, ApiError>;

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
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req: CreateModelRequest = parse_json(&body, "create_model")?;
    check_optimizer_config(&req.optimizer_config)?;
    let lora = req.lora_config.map(|l| LoraRequest {
        rank: l.rank,
        seed: l.seed,
        alpha: l.alpha,
        train_unembed: l.train_unembed,
        train_mlp: l.train_mlp,
        train_attn: l.train_attn,
    });
    let request = ApiRequest::CreateModel {
        session: req.session_id,
        model_seq_id: req.model_seq_id,
        base_model: req.base_model,
        lora,
        user_metadata: req.user_metadata,
        idempotency_key: idempotency_key(&headers),
    };
    app.ask_json(&tenant, request).await
}

#[derive(Deserialize)]
struct ModelIdRequest {
    model_id: String,
}

pub async fn get_info(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Bytes,
) -> Reply {
    let req: ModelIdRequest = parse_json(&body, "get_info")?;
    app.ask_json(&tenant, ApiRequest::GetInfo { model_id: req.model_id }).await
}

async fn sequenced(
    app: &Http,
    tenant: &Tenant,
    headers: &HeaderMap,
    model_id: String,
    seq_id: i64,
    body: SequencedBody,
) -> Reply {
    let request = ApiRequest::Sequenced { model_id, seq_id, idempotency_key: idempotency_key(headers), body };
    app.ask_json(&tenant.0, request).await
}

pub async fn forward_backward(
    State(app): State<Arc<Http>>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let encoding = headers.get("content-encoding").and_then(|v| v.to_str().ok());
    let raw = maybe_decompress(encoding, &body, app.tuning.body_bytes_max)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    match decode_forward_backward(&raw) {
        Ok(req) => {
            let (model_id, seq_id) = (req.model_id.clone(), i64::from(req.seq_id));
            sequenced(&app, &tenant, &headers, model_id, seq_id, SequencedBody::ForwardBackward(Ok(req))).await
        }
        Err(e) => match e.request_seq() {
            Some((model_id, seq_id)) => {
                let body = SequencedBody::ForwardBackward(Err(invalid(e.to_string())));
                sequenced(&app, &tenant, &headers, model_id.to_string(), i64::from(seq_id), body).await
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
fn adam_config(p: &AdamParamsJson) -> Result<AdamConfig, CoordinatorError> {
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
            return Err(invalid(format!("adam_params.{name}: {value} must be finite and {want}")));
        }
    }
    Ok(c)
}

pub async fn optim_step(
    State(app): State<Arc<Http>>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req: OptimStepRequest = parse_json(&body, "optim_step")?;
    let adam = if req.optimizer_params.is_some() {
        Err(invalid("optimizer_params (e.g. dimuon) is not supported; send adam_params"))
    } else {
        req.adam_params.as_ref().ok_or_else(|| invalid("adam_params is required")).and_then(adam_config)
    };
    sequenced(&app, &tenant, &headers, req.model_id, req.seq_id, SequencedBody::Optim(adam)).await
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
    /// `snapshot` (the default) or `inflight` (save_weights_and_get_sampling_client).
    kind: Option<String>,
    /// save_weights_external: age public keys to encrypt the export to.
    age_encryption_recipients: Option<Value>,
}

fn save_parts(req: SaveRequest) -> (String, i64, CoreSave) {
    let encrypt = match &req.age_encryption_recipients {
        None | Some(Value::Null) => false,
        Some(Value::Array(keys)) => !keys.is_empty(),
        Some(_) => true,
    };
    let save = CoreSave {
        path: req.path,
        overwrite: req.overwrite.unwrap_or(false),
        ttl_seconds: req.ttl_seconds,
        user_metadata: req.user_metadata,
        sampling_session_seq_id: req.sampling_session_seq_id,
        kind: req.kind,
        age_encryption_recipients: encrypt,
    };
    (req.model_id, req.seq_id, save)
}

pub async fn save_weights(
    State(app): State<Arc<Http>>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let (model_id, seq_id, save) = save_parts(parse_json(&body, "save_weights")?);
    sequenced(&app, &tenant, &headers, model_id, seq_id, SequencedBody::SaveState(save)).await
}

pub async fn save_weights_external(
    State(app): State<Arc<Http>>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let (model_id, seq_id, save) = save_parts(parse_json(&body, "save_weights_external")?);
    sequenced(&app, &tenant, &headers, model_id, seq_id, SequencedBody::SaveExternal(save)).await
}

pub async fn save_weights_for_sampler(
    State(app): State<Arc<Http>>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let (model_id, seq_id, save) = save_parts(parse_json(&body, "save_weights_for_sampler")?);
    sequenced(&app, &tenant, &headers, model_id, seq_id, SequencedBody::SaveForSampler(save)).await
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

pub async fn load_weights(
    State(app): State<Arc<Http>>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req: LoadRequest = parse_json(&body, "load_weights")?;
    let optimizer = req.optimizer.unwrap_or(false);
    if let (Some(model_id), Some(seq_id)) = (req.model_id, req.seq_id) {
        let body = SequencedBody::Load { path: req.path, optimizer };
        return sequenced(&app, &tenant, &headers, model_id, seq_id, body).await;
    }
    let (Some(session), Some(model_seq_id)) = (req.session_id, req.model_seq_id) else {
        return Err(ApiError::bad_request("load_weights needs model_id + seq_id, or session_id + model_seq_id"));
    };
    let request = ApiRequest::CreateFromState {
        session,
        model_seq_id,
        path: req.path,
        optimizer,
        base_model: req.base_model,
        user_metadata: req.user_metadata,
        idempotency_key: idempotency_key(&headers),
    };
    app.ask_json(&tenant.0, request).await
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
        assert!(adam_config(&bad).unwrap_err().to_string().contains("beta2"));
    }
}
