//! Extractors whose rejections are problems: [`Json`], [`Path`], [`Query`].
//!
//! - wrong content type → 415; body over the limit → 413; malformed JSON → 400;
//! - well-formed JSON of the wrong shape → 422 naming the field (`items[1].quantity`);
//! - a path parameter that cannot be an id → 404 (no such resource can exist);
//! - a query string of the wrong shape → 422 naming the parameter.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{ApiError, FieldError};

/// A JSON request body (extractor) or response body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

fn is_json_content_type(parts_headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = parts_headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses JSON, mapping serde's errors to 400 (syntax) or 422 (shape) with the field named.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = match result {
        Ok(v) => v,
        Err(err) => return Err(json_error(err)),
    };
    de.end()
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    Ok(value)
}

fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    let path = err.path().to_string();
    let inner = err.into_inner();
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request(format!("malformed JSON: {inner}"))
        }
        Category::Data => {
            let message = strip_position(&inner.to_string());
            // serde reports a missing field at its parent's path; name the field itself.
            let field = match missing_field(&message) {
                Some(name) if path == "." => name.to_string(),
                Some(name) => format!("{path}.{name}"),
                None if path == "." => "body".to_string(),
                None => path,
            };
            let message = if missing_field(&message).is_some() {
                "is required".to_string()
            } else {
                message
            };
            ApiError::validation(vec![FieldError::new(field, message)])
        }
    }
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Drops serde_json's " at line 1 column 17" suffix: positions mean nothing to an API client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::unsupported_media_type(
                "expected a body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large("the request body exceeds the configured limit")
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// An optional JSON body (`Option<Json<T>>`): an empty body is `None`; anything else must be
/// JSON that parses, as for [`Json`].
impl<T, S> axum::extract::OptionalFromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let json = is_json_content_type(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large("the request body exceeds the configured limit")
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?;
        if bytes.is_empty() {
            return Ok(None);
        }
        if !json {
            return Err(ApiError::unsupported_media_type(
                "expected no body, or a body with Content-Type: application/json",
            ));
        }
        parse_json(&bytes).map(|v| Some(Json(v)))
    }
}

/// What a response body starts with: a page of records is several KiB, and growing from a
/// small buffer copies the page once per doubling.
const RESPONSE_BUFFER: usize = 4096;

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(RESPONSE_BUFFER);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => (
                [(
                    CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(e) => ApiError::internal(anyhow::anyhow!("cannot write the response body: {e}"))
                .into_response(),
        }
    }
}

/// Path parameters. A value that cannot parse answers 404: no resource can have that id.
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rejection) => {
                let detail = match &rejection {
                    axum::extract::rejection::PathRejection::FailedToDeserializePathParams(e) => {
                        match e.kind() {
                            axum::extract::path::ErrorKind::ParseErrorAtKey { key, .. }
                            | axum::extract::path::ErrorKind::InvalidUtf8InPathParam { key } => {
                                format!("`{key}` is not a valid identifier")
                            }
                            _ => "the path does not name a valid resource".to_string(),
                        }
                    }
                    _ => "the path does not name a valid resource".to_string(),
                };
                Err(ApiError::not_found().detail(detail))
            }
        }
    }
}

/// Query-string parameters; a wrong shape answers 422 naming the parameter.
#[derive(Debug, Clone, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|err| {
                let path = err.path().to_string();
                let message = err.into_inner().to_string();
                let field = match missing_field(&message) {
                    Some(name) => name.to_string(),
                    None if path == "." => "query".to_string(),
                    None => path,
                };
                ApiError::validation(vec![FieldError::new(field, message)])
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        quantity: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        email: String,
        items: Vec<Item>,
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let err = parse_json::<Body>(b"{\"email\": ").expect_err("syntax");
        assert_eq!(err.status.as_u16(), 400);
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = parse_json::<Body>(b"{\"items\": []}").expect_err("missing");
        assert_eq!(err.status.as_u16(), 422);
        assert_eq!(err.problem.errors[0].field, "email");
        assert_eq!(err.problem.errors[0].message, "is required");
    }

    #[test]
    fn a_nested_wrong_type_is_named_by_path() {
        let err =
            parse_json::<Body>(br#"{"email":"a@b.c","items":[{"quantity":1},{"quantity":-2}]}"#)
                .expect_err("negative");
        assert_eq!(err.status.as_u16(), 422);
        assert_eq!(err.problem.errors[0].field, "items[1].quantity");
    }

    #[test]
    fn trailing_garbage_is_malformed() {
        let err = parse_json::<Item>(b"{\"quantity\":1} x").expect_err("trailing");
        assert_eq!(err.status.as_u16(), 400);
    }
}
