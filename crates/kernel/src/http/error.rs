//! Errors as RFC 9457 problem+json, from one place.
//!
//! Handlers return [`ApiError`] (usually through `?`). Its response carries a [`Problem`] in
//! the response extensions; the request-context middleware renders it with the request path
//! (`instance`) and the request id, and turns any other error response (the framework's own
//! 405, a body-limit 413, a caught panic) into a problem too. Internal errors are logged
//! with their cause and answered with a generic 500: no SQL, path or secret leaves.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    /// The field, as a dotted path (`items[2].quantity`).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The problem document (RFC 9457) every error answers with.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A relative URI naming the kind of problem, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    pub title: Cow<'static, str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extra members for some problems (e.g. `remaining_attempts`, `allowed`).
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The error type of every handler.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: errors travel through `Result`s on every path, so they stay small.
    pub problem: Box<Problem>,
    pub headers: Option<Box<HeaderMap>>,
    /// The real cause of a 5xx; logged, never sent.
    pub source: Option<anyhow::Error>,
}

/// The cause of a 5xx, handed to the request-context middleware for logging.
#[derive(Debug, Clone)]
pub struct InternalCause(pub std::sync::Arc<String>);

/// Marks an error-status response whose body is deliberate and not a problem (readiness
/// answers 503 with its checks): the request-context middleware leaves it as it is.
#[derive(Debug, Clone, Copy)]
pub struct DeliberateBody;

pub type ApiResult<T, E = ApiError> = Result<T, E>;

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str) -> Self {
        Self {
            status,
            problem: Box::new(Problem {
                kind: Cow::Borrowed(kind),
                title: Cow::Borrowed(title),
                status: status.as_u16(),
                detail: None,
                instance: None,
                request_id: None,
                errors: Vec::new(),
                extra: serde_json::Map::new(),
            }),
            headers: None,
            source: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.problem.detail = Some(detail.into());
        self
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.problem.errors = errors;
        self
    }

    pub fn with_extra(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.problem.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: impl ToString) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.get_or_insert_default().insert(name, v);
        }
        self
    }

    /// 400: the request cannot be parsed (e.g. malformed JSON).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "/problems/bad-request",
            "Bad request",
        )
        .detail(detail)
    }

    /// 422: well-formed but invalid; each field named.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{} {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
            "Invalid request",
        )
        .detail(detail)
        .with_errors(errors)
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "/problems/unauthorized",
            "Authentication required",
        )
        .detail(detail)
        .with_header(header::WWW_AUTHENTICATE, "Bearer")
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "/problems/forbidden", "Forbidden").detail(detail)
    }

    /// 404 for a missing resource, and for another tenant's (indistinguishable on purpose).
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "/problems/not-found", "Not found")
            .detail("the resource does not exist")
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "/problems/conflict", "Conflict").detail(detail)
    }

    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "/problems/precondition-failed",
            "Precondition failed",
        )
        .detail(detail)
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "/problems/unsupported-media-type",
            "Unsupported media type",
        )
        .detail(detail)
    }

    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "/problems/payload-too-large",
            "Payload too large",
        )
        .detail(detail)
    }

    pub fn service_unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "/problems/unavailable",
            "Service unavailable",
        )
        .detail(detail)
    }

    /// 500: logged with its cause; the client sees nothing of it.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "/problems/internal",
            "Internal server error",
        )
        .detail("an unexpected error occurred; it has been logged");
        e.source = Some(source.into());
        e
    }

    /// The generic problem for a bare status produced outside a handler.
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::new(status, "/problems/no-route", "Not found")
                .detail("no route matches this path"),
            StatusCode::METHOD_NOT_ALLOWED => {
                Self::new(status, "/problems/method-not-allowed", "Method not allowed")
                    .detail("this path does not accept that method")
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                Self::payload_too_large("the request body exceeds the configured limit")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::unsupported_media_type("the request content type is not accepted here")
            }
            StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => {
                Self::service_unavailable("the request could not be completed in time")
            }
            StatusCode::INTERNAL_SERVER_ERROR => {
                Self::new(status, "/problems/internal", "Internal server error")
                    .detail("an unexpected error occurred; it has been logged")
            }
            s if s.is_client_error() => Self::new(status, "/problems/client-error", "Client error"),
            s => Self::new(s, "/problems/server-error", "Server error"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found(),
            StoreError::Conflict { constraint } => {
                ApiError::conflict("the request conflicts with existing data")
                    .with_extra("constraint", constraint)
            }
            StoreError::Unavailable(source) => {
                let mut err =
                    ApiError::service_unavailable("the database is unavailable; retry shortly")
                        .with_header(header::RETRY_AFTER, 1);
                err.source = Some(anyhow::Error::from_boxed(source));
                err
            }
            StoreError::Contention(source) => {
                let mut err = ApiError::service_unavailable(
                    "the database is busy with conflicting changes; retry shortly",
                )
                .with_header(header::RETRY_AFTER, 1);
                err.source = Some(anyhow::Error::from_boxed(source));
                err
            }
            StoreError::Other(source) => ApiError::internal(source),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(e)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.problem.title)?;
        if let Some(d) = &self.problem.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(headers) = self.headers {
            response.headers_mut().extend(*headers);
        }
        if let Some(source) = self.source {
            response
                .extensions_mut()
                .insert(InternalCause(std::sync::Arc::new(format!("{source:#}"))));
        }
        response.extensions_mut().insert(*self.problem);
        response
    }
}

/// Serialises a problem (with its instance and request id filled in) into a response body.
pub fn render_problem(problem: &Problem) -> (HeaderValue, bytes::Bytes) {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| {
        br#"{"type":"/problems/internal","title":"Internal server error","status":500}"#.to_vec()
    });
    (
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        bytes::Bytes::from(body),
    )
}
