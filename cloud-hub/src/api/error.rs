//! API errors and how they look on the wire: a status code and a JSON body
//! `{"error": "<code>", "message": "...", "fields": [{"field", "message"}]}`.
//! "Your request was wrong" (4xx) stays apart from "this hub is broken" (5xx).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared_proto::validate::{FieldError, FieldErrors};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid object: {0}")]
    Invalid(FieldErrors),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The revision a watch or list page asked for is no longer kept: list again.
    #[error("{0}")]
    Gone(String),
    #[error("request body exceeds the {0}-byte limit")]
    TooLarge(u64),
    #[error("this hub is not the leader; send writes to {}", leader.as_deref().unwrap_or("the leader (unknown yet, retry)"))]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
    fields: &'a [FieldError],
}

impl ApiError {
    /// The JSON body this error is answered with (also sent as a watch's last event).
    pub fn body(&self) -> serde_json::Value {
        let (_, code) = self.status_and_code();
        let fields: &[FieldError] = match self {
            ApiError::Invalid(errs) => &errs.0,
            _ => &[],
        };
        serde_json::json!({ "error": code, "message": self.to_string(), "fields": fields,
            "status": self.status_and_code().0.as_u16() })
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid(FieldErrors(vec![FieldError { field: field.to_string(), message: message.into() }]))
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Gone(_) => (StatusCode::GONE, "expired"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_leader"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<hub_store::StoreError> for ApiError {
    fn from(e: hub_store::StoreError) -> Self {
        match e {
            hub_store::StoreError::NotLeader { leader_addr, .. } => {
                ApiError::NotLeader { leader: leader_addr }
            }
            hub_store::StoreError::Unavailable(m) => ApiError::Unavailable(m),
            hub_store::StoreError::Rejected(m) => ApiError::BadRequest(m),
            e @ hub_store::StoreError::Compacted { .. } => ApiError::Gone(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() && !matches!(self, ApiError::NotLeader { .. } | ApiError::Unavailable(_))
        {
            tracing::error!(error = %self, "api request failed");
        }
        let fields: &[FieldError] = match &self {
            ApiError::Invalid(errs) => &errs.0,
            _ => &[],
        };
        let body = ErrorBody { error: code, message: self.to_string(), fields };
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::Unauthorized(_) = self {
            resp.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Middleware: an error the framework raised itself (a body over the limit, a
/// malformed path or query, a request that took too long) comes back in the API's
/// own error format, with its status kept and its text as the message.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 16 << 10).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let body = ErrorBody { error: code, message: text, fields: &[] };
    let mut out = (status, axum::Json(body)).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}
