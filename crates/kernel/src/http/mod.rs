//! The HTTP stack: the tower layers every request passes through, in this order (outermost
//! first):
//!
//! compression → request context (request id, client IP, span, load shedding, problem
//! bodies, security headers, access log) → CORS → panic guard → timeout → body limit →
//! router → (matched routes) route span, metrics, rate limit, idempotency → handler.
//!
//! Routes come from the enabled modules; anything unmatched answers a 404 problem.
//!
//! The layers wrap the router once, as one service, instead of through `Router::layer`:
//! that would wrap every route separately, and axum clones a route's whole wrapped stack at
//! each level a request passes through, so each added layer made every request pay for
//! all the layers inside it again. For the same reason the request context, load shedding
//! and security headers are one middleware: each `from_fn` level clones the stack inside it
//! and boxes it and its future once more per request.

pub mod concurrency;
pub mod context;
pub mod error;
pub mod extract;
pub mod pagination;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::{Layer as _, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub use concurrency::{ExpectedVersion, expected_version, stale};
pub use context::{ClientIp, RequestId, RequestStart};
pub use error::{ApiError, ApiResult, FieldError, PROBLEM_CONTENT_TYPE, Problem};
pub use extract::{Json, Path, Query};

use crate::config::Config;

/// Wraps the application router in the kernel's layers: the result is a router whose only
/// route is its fallback, the whole stack around `router`.
pub fn with_layers(router: Router, config: &Config) -> Router {
    let settings = context::ContextSettings {
        trusted_proxies: Arc::new(config.trusted_proxies()),
        max_url_bytes: config.http.max_url_bytes,
        shed: LoadShed::new(config.http.max_in_flight),
        production: config.is_production(),
    };
    let stack = ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(
            settings,
            context::request_context,
        ))
        .layer(cors(config))
        // tower-http's layers each answer with their own body type; these maps keep every
        // layer's inner response an axum `Response` (whose body the next layer can build).
        .map_response(IntoResponse::into_response)
        .layer(CatchPanicLayer::custom(on_panic))
        .map_response(IntoResponse::into_response)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout(),
        ))
        .map_response(IntoResponse::into_response)
        .layer(RequestBodyLimitLayer::new(config.http.body_limit_bytes))
        .service(router.fallback(no_route));
    if config.http.compression {
        Router::new().fallback_service(CompressionLayer::new().gzip(true).br(true).layer(stack))
    } else {
        Router::new().fallback_service(stack)
    }
}

/// Counts requests in flight on this node.
#[derive(Debug, Clone)]
pub struct LoadShed {
    max: usize,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl LoadShed {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            in_flight: Arc::default(),
        }
    }
}

/// One request counted in flight until dropped.
pub(crate) struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl LoadShed {
    /// Counts a request in flight, or refuses it when the cap is reached: above the cap the
    /// answer is 503 at once, because queueing without bound only turns overload into
    /// timeouts for everyone. No cap (`max_in_flight = 0`) counts nothing.
    pub(crate) fn admit(&self) -> Result<Option<InFlight>, Shed> {
        use std::sync::atomic::Ordering;
        if self.max == 0 {
            return Ok(None);
        }
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = InFlight(self.in_flight.clone());
        if now > self.max {
            drop(guard);
            metrics::counter!("keel_http_requests_shed_total").increment(1);
            return Err(Shed);
        }
        Ok(Some(guard))
    }
}

/// A request refused at the in-flight cap: 503 with `Retry-After`.
pub(crate) struct Shed;

impl IntoResponse for Shed {
    fn into_response(self) -> Response {
        ApiError::service_unavailable("the server is at capacity; retry shortly")
            .with_header(header::RETRY_AFTER, 1)
            .into_response()
    }
}

async fn no_route() -> ApiError {
    ApiError::from_status(StatusCode::NOT_FOUND)
}

fn on_panic(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("(non-string panic payload)");
    let mut response = ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR).into_response();
    response
        .extensions_mut()
        .insert(error::InternalCause(Arc::new(format!(
            "handler panicked: {message}"
        ))));
    response
}

static X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");
static X_FRAME_OPTIONS: HeaderName = HeaderName::from_static("x-frame-options");
static REFERRER_POLICY: HeaderName = HeaderName::from_static("referrer-policy");

/// The headers every response carries, unless the route set its own.
pub(crate) fn security_headers(headers: &mut HeaderMap, production: bool) {
    let defaults = [
        (&X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (&X_FRAME_OPTIONS, "DENY"),
        (&REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(name) {
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
    }
    // Pages that need more (the API docs UI) set their own policy.
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    if production && !headers.contains_key(header::STRICT_TRANSPORT_SECURITY) {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
}

/// CORS from configuration: no origins = no CORS headers (same-origin only); a list =
/// exactly those origins, with credentials; `*` (development only) = any origin, without
/// credentials (browsers forbid the combination, and so do we).
fn cors(config: &Config) -> CorsLayer {
    let origins = &config.cors_origins;
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    let headers = [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        header::IF_MATCH,
        HeaderName::from_static("idempotency-key"),
        HeaderName::from_static("x-csrf-token"),
        HeaderName::from_static("x-request-id"),
        HeaderName::from_static("x-keel-org"),
    ];
    let expose = [
        HeaderName::from_static("x-request-id"),
        HeaderName::from_static("ratelimit-limit"),
        HeaderName::from_static("ratelimit-remaining"),
        HeaderName::from_static("ratelimit-reset"),
        header::RETRY_AFTER,
        header::LOCATION,
        header::ETAG,
    ];
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let base = CorsLayer::new()
        .allow_methods(methods)
        .allow_headers(headers)
        .expose_headers(expose)
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        base.allow_origin(AllowOrigin::any())
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
            .collect();
        base.allow_origin(AllowOrigin::list(list))
            .allow_credentials(true)
    }
}
