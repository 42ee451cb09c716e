//! The outermost middleware: one per request, it
//! - keeps a sane client `X-Request-Id` (≤ 128 visible ASCII characters) or makes one, and
//!   returns it on the response;
//! - works out the client IP (`X-Forwarded-For` is believed only from trusted proxies);
//! - opens the request span (request id, method, route template, status, latency) and writes
//!   one access-log line per request;
//! - sheds load: above `http.max_in_flight` requests in flight, answers 503 at once;
//! - renders every error response as problem+json with `instance` and `request_id`,
//!   including error responses the framework produced without a body;
//! - adds the security headers to every response.
//!
//! Health checks and metrics scrapes (`/health*`, `/metrics`) are quiet: load balancers and
//! scrapers call them every few seconds, so they write no access-log line, are never shed
//! (operators must see why the node is overloaded), and open their span at `debug` level
//! only, so that at the usual `info` they cost no span at all. A quiet request that fails
//! still logs its error, with its request id, method and path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use tracing::Instrument;

use super::error::{
    ApiError, DeliberateBody, InternalCause, PROBLEM_CONTENT_TYPE, Problem, render_problem,
};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The request's id, as sent back in `X-Request-Id` and in problem bodies.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// When the request arrived (for durations recorded by handlers, e.g. in audit events).
#[derive(Debug, Clone, Copy)]
pub struct RequestStart(pub Instant);

/// The client's address, after trusted-proxy resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Settings the middleware needs.
#[derive(Debug, Clone)]
pub struct ContextSettings {
    pub trusted_proxies: Arc<Vec<IpNet>>,
    pub max_url_bytes: usize,
    /// The cap on requests in flight.
    pub shed: super::LoadShed,
    /// Adds `Strict-Transport-Security`.
    pub production: bool,
}

/// A fresh request id: a UUIDv7 (time-ordered, so log lines sort by arrival), its random
/// bits from the thread's userspace generator rather than a `getrandom` system call per
/// request.
fn new_request_id() -> Arc<str> {
    use rand::Rng as _;
    let mut random = [0u8; 10];
    rand::rng().fill(&mut random);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    Arc::from(&*id.simple().encode_lower(&mut uuid::Uuid::encode_buffer()))
}

fn sane_request_id(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 128 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return None;
    }
    value.to_str().ok()
}

/// The client IP: the peer, unless the peer is a trusted proxy, in which case the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn resolve_client_ip(
    peer: IpAddr,
    forwarded_for: Option<&HeaderValue>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for.and_then(|h| h.to_str().ok()) else {
        return peer;
    };
    let mut candidate = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                candidate = ip;
                if !is_trusted(&ip) {
                    return ip;
                }
            }
            // A malformed hop: stop believing anything to its left.
            Err(_) => return candidate,
        }
    }
    candidate
}

fn is_quiet_path(path: &str) -> bool {
    path == "/health" || path.starts_with("/health/") || path == "/metrics"
}

pub async fn request_context(
    State(settings): State<ContextSettings>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id: Arc<str> = match req.headers().get(&X_REQUEST_ID).and_then(sane_request_id) {
        Some(id) => Arc::from(id),
        None => new_request_id(),
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let client_ip = resolve_client_ip(
        peer,
        req.headers().get(&X_FORWARDED_FOR),
        &settings.trusted_proxies,
    );
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    req.extensions_mut().insert(RequestId(request_id.clone()));
    req.extensions_mut().insert(ClientIp(client_ip));
    req.extensions_mut().insert(RequestStart(started));

    let trace = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::observe::trace::TraceContext::parse)
        .unwrap_or_else(crate::observe::trace::TraceContext::new_root);
    let quiet = is_quiet_path(&path);
    let span = request_span(quiet, &request_id, &trace, &method);
    let url_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let mut response = if url_len > settings.max_url_bytes {
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            "/problems/uri-too-long",
            "URI too long",
        )
        .detail(format!(
            "the request target is {url_len} bytes; at most {} are accepted",
            settings.max_url_bytes
        ))
        .into_response()
    } else {
        // Quiet requests are never shed: operators must see why the node is overloaded.
        let admitted = if quiet {
            Ok(None)
        } else {
            settings.shed.admit()
        };
        match admitted {
            Err(shed) => shed.into_response(),
            Ok(_in_flight) => {
                crate::observe::trace::link_span(&span, &trace);
                crate::observe::trace::in_trace(trace, next.run(req).instrument(span.clone())).await
            }
        }
    };

    let status = response.status();
    let deliberate = response.extensions().get::<DeliberateBody>().is_some();
    if (status.is_client_error() || status.is_server_error()) && !deliberate {
        let mut problem = match response.extensions_mut().remove::<Problem>() {
            Some(p) => Some(p),
            None if !is_problem(&response) => Some(*ApiError::from_status(status).problem),
            None => None,
        };
        if let Some(problem) = problem.as_mut() {
            problem.instance = Some(path.clone());
            problem.request_id = Some(request_id.to_string());
            let (content_type, body) = render_problem(problem);
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, content_type);
            headers.remove(CONTENT_LENGTH);
            *response.body_mut() = axum::body::Body::from(body);
        }
    }
    let headers = response.headers_mut();
    super::security_headers(headers, settings.production);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }

    let latency_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let cause = response.extensions().get::<InternalCause>();
    let failed = cause.is_some() || status.is_server_error();
    if quiet && !failed {
        return response;
    }
    // A quiet request's span is off at `info`: its failure gets one after the fact, so that
    // its error line still says which request it was.
    let span = if span.is_disabled() {
        let span = request_span(false, &request_id, &trace, &method);
        span.record("route", path.as_str());
        span
    } else {
        span
    };
    let _enter = span.enter();
    if let Some(cause) = cause {
        tracing::error!(status = status.as_u16(), latency_ms, cause = %cause.0, "request failed");
    } else if failed {
        tracing::error!(status = status.as_u16(), latency_ms, "request failed");
    } else {
        tracing::info!(status = status.as_u16(), latency_ms, "request completed");
    }
    response
}

/// The request's span: at `info`, or at `debug` for a quiet request.
fn request_span(
    quiet: bool,
    request_id: &str,
    trace: &crate::observe::trace::TraceContext,
    method: &axum::http::Method,
) -> tracing::Span {
    macro_rules! span {
        ($level:expr) => {
            tracing::span!(
                $level,
                "request",
                request_id = %request_id,
                trace_id = %trace.trace_id_hex(),
                method = %method,
                route = tracing::field::Empty,
                org = tracing::field::Empty,
                user = tracing::field::Empty,
            )
        };
    }
    if quiet {
        span!(tracing::Level::DEBUG)
    } else {
        span!(tracing::Level::INFO)
    }
}

fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_CONTENT_TYPE.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("cidr")).collect()
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address() {
        let peer: IpAddr = "203.0.113.9".parse().expect("ip");
        let xff = HeaderValue::from_static("1.2.3.4");
        assert_eq!(
            resolve_client_ip(peer, Some(&xff), &nets(&["10.0.0.0/8"])),
            peer
        );
    }

    #[test]
    fn a_trusted_proxy_chain_yields_the_rightmost_untrusted_hop() {
        let peer: IpAddr = "10.0.0.2".parse().expect("ip");
        let xff = HeaderValue::from_static("6.6.6.6, 198.51.100.7, 10.0.0.5");
        let ip = resolve_client_ip(peer, Some(&xff), &nets(&["10.0.0.0/8"]));
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn request_ids_must_be_short_visible_ascii() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-123")).is_some());
        assert!(sane_request_id(&HeaderValue::from_static("has space")).is_none());
        let long = "x".repeat(129);
        assert!(sane_request_id(&HeaderValue::from_str(&long).expect("hv")).is_none());
    }

    #[test]
    fn made_request_ids_are_distinct_time_ordered_uuids() {
        let a = new_request_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 32);
            let parsed = uuid::Uuid::parse_str(id).expect("a uuid");
            assert_eq!(parsed.get_version_num(), 7);
            assert!(sane_request_id(&HeaderValue::from_str(id).expect("hv")).is_some());
        }
        assert!(a < b, "later ids sort after earlier ones");
    }

    /// Health checks and scrapes write nothing while they succeed; a failing one still logs
    /// its error with the request's id, method and path, like any other request.
    #[tokio::test]
    async fn quiet_paths_log_only_their_failures_and_say_which_request_failed() {
        use axum::routing::get;
        use tower::ServiceExt as _;

        let log = crate::observe::LogCapture::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(log.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let router = axum::Router::new()
            .route("/health", get(|| async { "ok" }))
            .route(
                "/health/ready",
                get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .route("/api/v1/thing", get(|| async { "thing" }));
        let app = super::super::with_layers(router, &crate::config::Config::default());
        let mut ids = Vec::new();
        for path in ["/health", "/health/ready", "/api/v1/thing"] {
            let response = app
                .clone()
                .oneshot(
                    axum::http::Request::get(path)
                        .body(axum::body::Body::empty())
                        .expect("request"),
                )
                .await
                .expect("response");
            let id = response
                .headers()
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .expect("a request id")
                .to_string();
            ids.push((path, response.status(), id));
        }
        assert_eq!(ids[0].1, StatusCode::OK);
        assert_eq!(ids[1].1, StatusCode::INTERNAL_SERVER_ERROR);
        let lines: Vec<serde_json::Value> = log
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON log line"))
            .collect();
        let of = |id: &str| {
            lines
                .iter()
                .filter(|l| l["span"]["request_id"] == id)
                .collect::<Vec<_>>()
        };
        assert!(of(&ids[0].2).is_empty(), "a healthy check is not logged");
        let failed = of(&ids[1].2);
        assert_eq!(failed.len(), 1, "{lines:?}");
        assert_eq!(failed[0]["message"], "request failed");
        assert_eq!(failed[0]["level"], "ERROR");
        assert_eq!(failed[0]["status"], 500);
        assert_eq!(failed[0]["span"]["method"], "GET");
        assert_eq!(failed[0]["span"]["route"], "/health/ready");
        let other = of(&ids[2].2);
        assert_eq!(other.len(), 1, "{lines:?}");
        assert_eq!(other[0]["message"], "request completed");
        assert_eq!(lines.len(), 2, "nothing else is logged: {lines:?}");
    }
}
