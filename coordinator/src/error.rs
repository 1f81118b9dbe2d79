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
    #[error("no base models to serve; give at least one --model")]
    NoModels,
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// A synchronous API error: status plus a message saying what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, detail: detail.into() }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, detail: detail.into() }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::UNAUTHORIZED, detail: detail.into() }
    }

    pub fn gone(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::GONE, detail: detail.into() }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, detail: detail.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        assert!(self.status.is_client_error() || self.status.is_server_error(), "ApiError carries an error status");
        assert_ne!(self.status, StatusCode::CONFLICT, "409 is retried by the SDK for minutes; use 400");
        (self.status, axum::Json(serde_json::json!({ "detail": self.detail }))).into_response()
    }
}
