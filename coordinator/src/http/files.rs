//! `GET /api/v1/download/{run}/{name}/{file}?expires=&sig=`: the files of an exported adapter,
//! served without an API key to whoever holds a valid signed URL (the SDK's download helpers
//! fetch with plain urllib). The signature, not the caller, authorises the read.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Http;
use crate::core::ids::{validate_name, validate_run_id, CheckpointKind, TinkerPath};
use crate::core::signing::{verify, SignatureError};
use crate::error::ApiError;

#[derive(Deserialize)]
pub struct Signed {
    expires: u64,
    sig: String,
}

pub async fn download(
    State(app): State<Arc<Http>>,
    Path((run, name, file)): Path<(String, String, String)>,
    Query(q): Query<Signed>,
) -> Result<Response, ApiError> {
    let signed = format!("{run}/{name}/{file}");
    verify(&app.url_secret, &signed, q.expires, &q.sig, app.clock.now_ms()).map_err(|e| match e {
        SignatureError::Expired => {
            ApiError { status: StatusCode::FORBIDDEN, detail: e.to_string(), retry_after_s: None }
        }
        SignatureError::Invalid => {
            ApiError { status: StatusCode::FORBIDDEN, detail: e.to_string(), retry_after_s: None }
        }
    })?;
    // Signed names were valid when signed; check again before they touch the file system.
    let valid = validate_run_id(&run).is_ok() && validate_name(&name).is_ok() && validate_name(&file).is_ok();
    if !valid {
        return Err(ApiError::bad_request("malformed download path"));
    }
    let path = TinkerPath { run, kind: CheckpointKind::ExternalWeights, name };
    let bytes =
        std::fs::read(app.data_dir.join("runs").join(&path.run).join(path.kind.segment()).join(&path.name).join(&file))
            .map_err(|_| ApiError::not_found(format!("{file} of {path} no longer exists (deleted or expired)")))?;
    Ok(([(CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
