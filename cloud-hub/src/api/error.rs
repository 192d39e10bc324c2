//! API errors and how they look on the wire: a status code and an RFC 9457 body
//! (`application/problem+json`): `{"type": "urn:flotilla:problem:<code>", "title",
//! "status", "detail", "instance", "errors": [{"field", "message"}]}`.
//! "Your request was wrong" (4xx) stays apart from "this hub is broken" (5xx).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
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

/// Media type of every error body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error as RFC 9457 problem details. `type` names the kind of problem
/// (`urn:flotilla:problem:<code>`, the code also used by the CLI and in watch ERROR
/// events), `detail` says what to do, `instance` is the request path, and `errors`
/// (an extension member) lists the fields at fault, by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"type": "urn:flotilla:problem:invalid", "title": "Unprocessable Entity",
    "status": 422, "detail": "invalid object: spec.containers[0].image: must not be empty",
    "instance": "/api/v1/apps/web",
    "errors": [{"field": "spec.containers[0].image", "message": "must not be empty"}]}))]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:flotilla:problem:[a-z_]+$")]
    pub problem_type: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    pub detail: String,
    /// The path of the request that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The fields at fault (422), each with what is wrong with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: String, errors: Vec<FieldError>) -> Problem {
        Problem {
            problem_type: format!("urn:flotilla:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            instance: None,
            errors,
        }
    }

    /// The code at the end of `type` (`invalid`, `not_found`, `expired`…).
    pub fn code(&self) -> &str {
        self.problem_type.rsplit(':').next().unwrap_or_default()
    }

    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).expect("a problem serialises");
        (status, [(axum::http::header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body)
            .into_response()
    }
}

impl ApiError {
    /// The problem this error is answered with (also sent as a watch's last event).
    pub fn problem(&self) -> Problem {
        let (status, code) = self.status_and_code();
        let errors = match self {
            ApiError::Invalid(errs) => errs.0.clone(),
            _ => Vec::new(),
        };
        Problem::new(status, code, self.to_string(), errors)
    }

    /// The JSON body of [`ApiError::problem`].
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(self.problem()).expect("a problem serialises")
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
        let (status, _) = self.status_and_code();
        if status.is_server_error() && !matches!(self, ApiError::NotLeader { .. } | ApiError::Unavailable(_))
        {
            tracing::error!(error = %self, "api request failed");
        }
        let mut resp = self.problem().into_response();
        if let ApiError::Unauthorized(_) = self {
            resp.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Largest error body the middleware reads back (to convert it or add `instance`).
const MAX_ERROR_BODY: usize = 64 << 10;

/// Middleware: every error leaves as problem details with its request path as
/// `instance`. An error the framework raised itself (a body over the limit, a
/// malformed path or query, a request that took too long) is converted, with its
/// status kept and its text as the detail.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let instance = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let problem_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY).await.unwrap_or_default();
    let mut problem = match problem_json {
        true => serde_json::from_slice::<Problem>(&bytes).ok(),
        false => None,
    }
    .unwrap_or_else(|| {
        let text = match String::from_utf8_lossy(&bytes).trim() {
            "" => status.canonical_reason().unwrap_or("error").to_string(),
            t => t.to_string(),
        };
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::REQUEST_TIMEOUT => "timeout",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        };
        Problem::new(status, code, text, Vec::new())
    });
    problem.instance = Some(instance);
    let mut out = problem.into_response();
    *out.status_mut() = status;
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_are_problem_details_with_the_fields_named() {
        let resp = ApiError::invalid("spec.site", "must be a DNS label").into_response();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(resp.headers()[axum::http::header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let problem: Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem.code(), "invalid");
        assert_eq!((problem.status, problem.title.as_str()), (422, "Unprocessable Entity"));
        assert_eq!(problem.errors[0].field, "spec.site");
        assert!(problem.detail.contains("must be a DNS label"), "{}", problem.detail);
        let v = ApiError::NotFound("gone".into()).body();
        assert_eq!(v["type"], "urn:flotilla:problem:not_found");
        assert!(v.get("errors").is_none(), "{v}");
    }
}
