//! `POST /api/v1/retrieve_future`: the long poll. A pending request is held until it completes
//! or `Tuning::long_poll` passes (then `try_again`, which the SDK re-polls at once). Results of
//! forward(_backward) and sampling go out as protobuf, the rest as JSON; a failed request is
//! HTTP 200 `{"error", "category"}` (tinker-protocol.md §3.2-3.3).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use runtime::control::ErrorCategory;
use runtime::wire::{encode_forward_backward_output, encode_sample_response};
use serde::Deserialize;
use serde_json::json;

use super::{parse_json, Tenant};
use crate::core::futures::{Outcome, Poll};
use crate::error::ApiError;
use crate::state::App;

#[derive(Deserialize)]
struct RetrieveRequest {
    request_id: String,
}

const PROTOBUF: &str = "application/x-protobuf";

fn respond(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Json(v) => Json(v).into_response(),
        Outcome::ForwardBackward(r) => ([(CONTENT_TYPE, PROTOBUF)], encode_forward_backward_output(&r)).into_response(),
        Outcome::Sample(r) => ([(CONTENT_TYPE, PROTOBUF)], encode_sample_response(&r)).into_response(),
        Outcome::Failed { category, message } => {
            let category = match category {
                ErrorCategory::User => "user",
                ErrorCategory::Server => "server",
            };
            Json(json!({"error": message, "category": category})).into_response()
        }
    }
}

pub async fn retrieve_future(
    State(app): State<Arc<App>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RetrieveRequest = parse_json(&body, "retrieve_future")?;
    let deadline = tokio::time::Instant::now() + app.tuning.long_poll;
    loop {
        // Register for wake-ups before looking, so a completion in between is not missed.
        let notified = app.completed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = app.now_ms();
        match app.lock().futures.poll(&tenant, &req.request_id, now) {
            Poll::Ready(outcome) => return Ok(respond(outcome)),
            Poll::Unknown => {
                return Err(ApiError::not_found(format!(
                    "request {} not found (unknown, someone else's, or its result expired)",
                    req.request_id
                )))
            }
            Poll::Pending => {}
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let body = json!({"type": "try_again", "request_id": req.request_id, "queue_state": "active"});
            return Ok(Json(body).into_response());
        }
    }
}
