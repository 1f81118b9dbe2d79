//! `GET /lathe/v1/memory`: the worker's memory report (lathe's own endpoint, not Tinker's). Base
//! models and the totals cover the whole worker; the per-run and per-sampler entries list only the
//! caller's own, so one tenant never sees another's ids.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use runtime::control::{FromWorker, MemoryReport, ToWorker};

use super::Tenant;
use crate::error::ApiError;
use crate::state::{App, Shared};

pub async fn memory(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> Result<Json<MemoryReport>, ApiError> {
    let mut report = match app.call(ToWorker::Memory).await {
        FromWorker::Memory(report) => report,
        FromWorker::Failed { message, .. } => {
            return Err(ApiError::internal(format!("the worker could not report its memory: {message}")))
        }
        _ => {
            return Err(ApiError::internal(
                "the worker answered the memory request with another reply; this is a lathe bug",
            ))
        }
    };
    keep_tenant(&mut report, &app.lock(), &tenant);
    Ok(Json(report))
}

/// Drops the runs and samplers that are not `tenant`'s from the per-object entries (totals stay).
fn keep_tenant(report: &mut MemoryReport, shared: &Shared, tenant: &str) {
    report.runs.retain(|run, _| shared.catalog.run(tenant, run).is_some());
    report.samplers.retain(|sampler, _| shared.samplers.get(sampler).is_some_and(|s| s.tenant == tenant));
}
