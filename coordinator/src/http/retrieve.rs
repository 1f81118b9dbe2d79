//! `POST /api/v1/retrieve_future`: the long poll. The core holds a pending request until it
//! completes or the long poll passes (then `try_again` with the truthful `queue_state`, which the
//! SDK re-polls at once). Results of forward(_backward) and sampling go out as protobuf, the rest
//! as JSON; a failed request is HTTP 200 `{"error", "category"}` (tinker-protocol.md §3.2-3.3).

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

use super::{parse_json, Http, Tenant};
use crate::core::api::{Answer, ApiRequest};
use crate::core::futures::Outcome;
use crate::error::ApiError;

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
    State(app): State<Arc<Http>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RetrieveRequest = parse_json(&body, "retrieve_future")?;
    match app.ask(&tenant, ApiRequest::RetrieveFuture { request_id: req.request_id }).await? {
        Answer::Outcome(o) => Ok(respond(o)),
        Answer::TryAgain { request_id, queue_state } => {
            Ok(Json(json!({"type": "try_again", "request_id": request_id.as_str(), "queue_state": queue_state.wire()}))
                .into_response())
        }
        other => Err(ApiError::internal(format!("the coordinator answered {other:?} to a poll; a lathe bug"))),
    }
}
