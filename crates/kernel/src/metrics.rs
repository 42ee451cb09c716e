//! Prometheus metrics: one process-wide recorder, rendered at `GET /metrics`.
//!
//! HTTP requests are counted and timed by method, route template (never the raw path, so
//! label cardinality stays bounded) and status class; requests in flight and requests shed
//! are gauges and counters. Kernel parts record their own families through the `metrics`
//! macros (rate-limit decisions, sign-in outcomes, …).

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::http::ApiError;
use crate::state::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets (seconds): fine below 100 ms, where a healthy API lives.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the recorder once per process (several test servers share it).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(
        "keel_http_requests_total",
        "HTTP requests by method, route and status class"
    );
    metrics::describe_histogram!(
        "keel_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by method and route"
    );
    metrics::describe_gauge!(
        "keel_http_requests_in_flight",
        "HTTP requests being handled"
    );
    metrics::describe_counter!(
        "keel_http_requests_shed_total",
        "Requests refused at the in-flight cap"
    );
    metrics::describe_counter!(
        "keel_rate_limit_decisions_total",
        "Rate-limit decisions by policy and outcome"
    );
    metrics::describe_counter!(
        "keel_cache_requests_total",
        "Shared cache lookups by cache and result (hit, remote_hit, miss)"
    );
    metrics::describe_gauge!(
        "keel_db_pool_connections",
        "Database pool connections by state"
    );
}

/// Keeps histogram buckets drained; call every few seconds.
pub async fn upkeep_forever() {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        if let Some(h) = handle() {
            h.run_upkeep();
        }
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Route layer: counts and times each matched request under its route template.
pub async fn track(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    metrics::gauge!("keel_http_requests_in_flight").increment(1.0);
    let response = next.run(req).await;
    metrics::gauge!("keel_http_requests_in_flight").decrement(1.0);
    let elapsed = started.elapsed().as_secs_f64();
    let class = status_class(response.status());
    metrics::counter!("keel_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => class)
        .increment(1);
    metrics::histogram!("keel_http_request_duration_seconds", "method" => method, "route" => route)
        .record(elapsed);
    response
}

/// Prometheus text format. When `metrics.token` is set, a scraper must send it as a bearer
/// token.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
        (status = 401, description = "metrics.token is set and was not sent"),
    ))]
pub async fn prometheus(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(expected) = &state.config.metrics.token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            sent.as_bytes(),
            expected.expose().as_bytes(),
        )) {
            return ApiError::unauthorized("send the metrics token as a bearer token")
                .into_response();
        }
    }
    let Some(handle) = handle() else {
        return ApiError::service_unavailable("metrics are not available in this process")
            .into_response();
    };
    let pool = state.db.pool_stats();
    metrics::gauge!("keel_db_pool_connections", "state" => "idle").set(pool.idle as f64);
    metrics::gauge!("keel_db_pool_connections", "state" => "in_use")
        .set(f64::from(pool.size) - pool.idle as f64);
    metrics::gauge!("keel_db_pool_connections", "state" => "max").set(f64::from(pool.max));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
