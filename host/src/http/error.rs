//! Errors as HTTP answers: a status and a JSON body
//! `{"error":"<code>","message":"<text>"[,"instance":"<name>"][,"types":[...]]}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::GetAllError;
use crate::scheduler::CollectError;

/// An error answer of the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a query parameter or header is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 401: the bearer token is missing or wrong.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 404: no such path.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// A fresh snapshot could not be made.
    #[error(transparent)]
    GetAll(#[from] GetAllError),
    /// The host is shutting down.
    #[error("the synchronizer is shutting down")]
    ShuttingDown,
    /// 500: the host failed answering (a bug, logged).
    #[error("{0}")]
    Internal(String),
    /// 413: the request body is larger than `max_body_bytes`.
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// 503: the connection is one of the reserve, which answers only `/healthz` and
    /// `/readyz`.
    #[error("too many connections: this one answers only /healthz and /readyz")]
    TooManyConnections,
}

impl ApiError {
    /// The HTTP status and the error code of the JSON body.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::TooManyConnections => {
                (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections")
            }
            ApiError::GetAll(GetAllError::NoCollector(_)) => {
                (StatusCode::NOT_FOUND, "no_collector")
            }
            ApiError::GetAll(GetAllError::Collect(c)) => match c {
                CollectError::Failed { .. } => (StatusCode::BAD_GATEWAY, "snapshot_failed"),
                CollectError::TooLarge { .. } => (StatusCode::BAD_GATEWAY, "snapshot_too_large"),
                CollectError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "snapshot_timeout"),
                CollectError::Stuck { .. } => (StatusCode::SERVICE_UNAVAILABLE, "instance_stuck"),
                CollectError::ShuttingDown { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
                }
            },
        }
    }

    /// The instance the error is about, if any.
    pub fn instance(&self) -> Option<&str> {
        match self {
            ApiError::GetAll(GetAllError::Collect(c)) => Some(match c {
                CollectError::Failed { instance, .. }
                | CollectError::TooLarge { instance, .. }
                | CollectError::Timeout { instance, .. }
                | CollectError::Stuck { instance }
                | CollectError::ShuttingDown { instance } => instance,
            }),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(message) = &self {
            tracing::error!(%message, "HTTP API request failed inside the host");
        }
        let mut body = json!({ "error": code, "message": self.to_string() });
        if let Some(instance) = self.instance() {
            body["instance"] = json!(instance);
        }
        if let ApiError::GetAll(GetAllError::NoCollector(types)) = &self {
            body["types"] = json!(types);
        }
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"synchronizer\""),
            );
        }
        response
    }
}
