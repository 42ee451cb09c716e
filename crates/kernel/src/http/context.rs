//! The outermost middleware: one per request, it
//! - keeps a sane client `X-Request-Id` (≤ 128 visible ASCII characters) or makes one, and
//!   returns it on the response;
//! - works out the client IP (`X-Forwarded-For` is believed only from trusted proxies);
//! - opens the request span (request id, method, route template, status, latency) and writes
//!   one access-log line per request (not for `/health*` and `/metrics`);
//! - renders every error response as problem+json with `instance` and `request_id`,
//!   including error responses the framework produced without a body.

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
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = %trace.trace_id_hex(),
        method = %method,
        route = tracing::field::Empty,
        org = tracing::field::Empty,
        user = tracing::field::Empty,
    );
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
        crate::observe::trace::link_span(&span, &trace);
        crate::observe::trace::in_trace(trace, next.run(req).instrument(span.clone())).await
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
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }

    let latency_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let _enter = span.enter();
    if let Some(cause) = response.extensions().get::<InternalCause>() {
        tracing::error!(status = status.as_u16(), latency_ms, cause = %cause.0, "request failed");
    } else if status.is_server_error() {
        tracing::error!(status = status.as_u16(), latency_ms, "request failed");
    } else if !is_quiet_path(&path) {
        tracing::info!(status = status.as_u16(), latency_ms, "request completed");
    }
    response
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
}
