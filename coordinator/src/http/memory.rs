//! `GET /lathe/v1/memory`: the worker's memory report (lathe's own endpoint, not Tinker's). Base
//! models and the totals cover the whole worker; the per-run and per-sampler entries list only the
//! caller's own (the core filters them), so one tenant never sees another's ids.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use runtime::control::MemoryReport;

use super::{Http, Tenant};
use crate::core::api::{Answer, ApiRequest};
use crate::error::ApiError;

pub async fn memory(
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> Result<Json<MemoryReport>, ApiError> {
    match app.ask(&tenant, ApiRequest::Memory).await? {
        Answer::Memory(report) => Ok(Json(report)),
        other => {
            Err(ApiError::internal(format!("the coordinator answered {other:?} to a memory request; a lathe bug")))
        }
    }
}
