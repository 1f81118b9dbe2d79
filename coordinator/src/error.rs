//! Errors of the service: `ServeError` for what stops `serve` from starting or running, and
//! `ApiError`, a synchronous HTTP error answered as 4xx/5xx with a JSON `{"detail": …}` body
//! (never an empty body, never 409: the SDK retries both).

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::core::tenants::KeysFileError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}; pick a free address with --listen")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(
        "without --api-keys lathe accepts any tml- key, so it only listens on loopback; {addr} is not \
         loopback (pass --api-keys FILE or listen on 127.0.0.1)"
    )]
    OpenModeNotLoopback { addr: std::net::SocketAddr },
    #[error("cannot read the API keys file {path}: {source}")]
    ReadKeys { path: PathBuf, source: std::io::Error },
    #[error("API keys file {path}: {source}")]
    KeysFile { path: PathBuf, source: KeysFileError },
    #[error("data directory {path}: {source}; check it exists and is writable")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(
        "state journal {path} line {line}: {why}; the file is corrupt (restore it from a backup or move it \
         away to start empty)"
    )]
    Journal { path: PathBuf, line: usize, why: String },
    #[error("state store: {0}")]
    Store(crate::store::StoreError),
    #[error("rebuilding state from the store: {0}")]
    Restore(CoordinatorError),
    #[error("the coordinator actor did not start: {0}")]
    Actor(String),
    #[error("no base models to serve; give at least one --model")]
    NoModels,
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Why the coordinator refused or failed a request: the one error type of its decisions. Each
/// message says what was wrong and what to do; the HTTP layer maps the kind to a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// The caller's input is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such thing for this tenant (404): unknown, someone else's, or expired.
    #[error("{0}")]
    NotFound(String),
    /// The session ended (410): the SDK must start a new one.
    #[error("{0}")]
    Gone(String),
    /// Over a queue limit (429): retry after the given seconds.
    #[error("{message}")]
    Busy { message: String, retry_after_s: u64 },
    /// lathe failed (500).
    #[error("{0}")]
    Internal(String),
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> ApiError {
        match e {
            CoordinatorError::BadRequest(m) => ApiError::bad_request(m),
            CoordinatorError::NotFound(m) => ApiError::not_found(m),
            CoordinatorError::Gone(m) => ApiError::gone(m),
            CoordinatorError::Busy { message, retry_after_s } => {
                ApiError { status: StatusCode::TOO_MANY_REQUESTS, detail: message, retry_after_s: Some(retry_after_s) }
            }
            CoordinatorError::Internal(m) => ApiError::internal(m),
        }
    }
}

/// A synchronous API error: status plus a message saying what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    /// Sent as `retry-after` (429): the SDK waits that long before retrying.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, detail: detail.into(), retry_after_s: None }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, detail: detail.into(), retry_after_s: None }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::UNAUTHORIZED, detail: detail.into(), retry_after_s: None }
    }

    pub fn gone(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::GONE, detail: detail.into(), retry_after_s: None }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, detail: detail.into(), retry_after_s: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        assert!(self.status.is_client_error() || self.status.is_server_error(), "ApiError carries an error status");
        assert_ne!(self.status, StatusCode::CONFLICT, "409 is retried by the SDK for minutes; use 400");
        let mut response = (self.status, axum::Json(serde_json::json!({ "detail": self.detail }))).into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = axum::http::HeaderValue::from_str(&s.to_string()) {
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// A user error (400) with the message saying what was wrong: the shape every validator returns.
pub fn invalid(message: impl Into<String>) -> CoordinatorError {
    CoordinatorError::BadRequest(message.into())
}
