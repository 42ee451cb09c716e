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
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod routes;
pub mod window;

use crate::http::ApiError;
use crate::state::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process allocator's own account of its memory, in bytes. The binary owns the global
/// allocator, so it hands the kernel a probe ([`set_allocator_probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes the program (Rust code and the C libraries linked in, SQLite included) holds.
    pub allocated: u64,
    /// Bytes in pages the allocator uses for those allocations (`allocated` plus
    /// fragmentation inside them).
    pub active: u64,
    /// Bytes the allocator keeps resident: active pages, its metadata, and freed pages not
    /// yet returned to the OS.
    pub resident: u64,
    /// Address space unmapped from memory but kept for reuse (costs no RAM).
    pub retained: u64,
}

static ALLOCATOR_PROBE: OnceLock<fn() -> Option<AllocatorStats>> = OnceLock::new();

/// Registers how to read the process allocator's figures, exported at `/metrics` as
/// `keel_allocator_bytes{state}`. The first registration wins.
pub fn set_allocator_probe(probe: fn() -> Option<AllocatorStats>) {
    let _ = ALLOCATOR_PROBE.set(probe);
}

fn record_allocator() {
    let Some(stats) = ALLOCATOR_PROBE.get().and_then(|probe| probe()) else {
        return;
    };
    for (state, bytes) in [
        ("allocated", stats.allocated),
        ("active", stats.active),
        ("resident", stats.resident),
        ("retained", stats.retained),
    ] {
        metrics::gauge!("keel_allocator_bytes", "state" => state).set(bytes as f64);
    }
}

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
    metrics::describe_gauge!(
        "keel_db_pool_connections",
        "Database pool connections by state"
    );
    metrics::describe_histogram!(
        "keel_db_query_duration_seconds",
        metrics::Unit::Seconds,
        "Database query latency by operation (verb and table)"
    );
    metrics::describe_counter!(
        "keel_db_query_errors_total",
        "Database queries that failed, by operation"
    );
    metrics::describe_counter!(
        "keel_db_slow_queries_total",
        "Queries slower than database.slow_query_ms, by operation"
    );
    metrics::describe_histogram!(
        "keel_db_pool_acquire_seconds",
        metrics::Unit::Seconds,
        "Time to get a pooled connection (query) or begin a transaction"
    );
    metrics::describe_counter!(
        "keel_db_pool_waits_total",
        "Connection requests that found no idle connection"
    );
    metrics::describe_histogram!(
        "keel_db_write_wait_seconds",
        metrics::Unit::Seconds,
        "Time a transaction waited for this node's write turn (SQLite) or a writer slot (PostgreSQL)"
    );
    metrics::describe_counter!(
        "keel_db_write_waits_total",
        "Transactions that had to wait for the write turn (SQLite) or a writer slot (PostgreSQL)"
    );
    metrics::describe_gauge!(
        "keel_circuit_breaker_state",
        "Outbound circuit breaker state by service: 0 closed, 1 open, 2 half-open"
    );
    metrics::describe_counter!(
        "keel_outbound_requests_total",
        "Outbound call attempts by service and outcome (ok, error_status, timeout, error, rejected)"
    );
    metrics::describe_histogram!(
        "keel_outbound_request_duration_seconds",
        metrics::Unit::Seconds,
        "Outbound call attempt latency by service"
    );
    metrics::describe_counter!(
        "keel_webhook_attempts_total",
        "Outgoing webhook delivery attempts by resulting delivery status"
    );
    metrics::describe_counter!(
        "keel_cache_requests_total",
        "Shared cache lookups by cache and result (hit, remote_hit, miss)"
    );
    metrics::describe_counter!(
        "keel_llm_cache_requests_total",
        "LLM response cache lookups by provider and result (hit, miss, bypass)"
    );
    metrics::describe_gauge!(
        "keel_allocator_bytes",
        metrics::Unit::Bytes,
        "Process allocator memory by state: allocated (held by the program), active, resident, retained"
    );
    metrics::describe_gauge!("keel_jobs", "Jobs by queue and state (deployment-wide)");
    metrics::describe_gauge!(
        "keel_jobs_oldest_due_age_seconds",
        metrics::Unit::Seconds,
        "How long the oldest due job of a queue has waited"
    );
    metrics::describe_counter!(
        "keel_job_attempts_total",
        "Finished job attempts by queue, job type and outcome"
    );
    metrics::describe_histogram!(
        "keel_job_duration_seconds",
        metrics::Unit::Seconds,
        "Job attempt duration by queue and job type"
    );
    metrics::describe_counter!(
        "keel_scheduler_ticks_total",
        "Scheduled ticks enqueued (or failed to enqueue) by the leader, by schedule"
    );
    metrics::describe_counter!(
        "keel_scheduler_missed_ticks_total",
        "Ticks a schedule missed (no leader at the time), reported with the next tick"
    );
    metrics::describe_counter!(
        "keel_slow_operations_total",
        "Operations slower than log.slow_operation_ms, by kind"
    );
    metrics::describe_counter!(
        "keel_auth_events_total",
        "Sign-ins, failures, lockouts, blocked IPs and refresh-token reuse"
    );
}

/// Process memory, CPU, threads and file descriptors (`process_*`), read at each scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        c
    })
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

/// Route layer: counts and times each matched request under its route template, feeds the
/// recent window of `GET /api/v1/metrics`, and warns about slow requests. A handler that
/// panics is recorded as a 5xx (the panic guard outside answers 500).
pub async fn track<F, Fut>(state: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let mut guard = Tracked {
        state: state.clone(),
        method: req.method().as_str().to_string(),
        route,
        started: std::time::Instant::now(),
        status: None,
    };
    metrics::gauge!("keel_http_requests_in_flight").increment(1.0);
    let response = next(req).await;
    guard.status = Some(response.status());
    response
}

/// Records a request when it ends, however it ends: answered, panicked (a 5xx: the panic guard
/// answers 500) or cancelled — the client went away or the request timeout fired — which is
/// counted under the status `cancelled`.
struct Tracked {
    state: AppState,
    method: String,
    route: String,
    started: std::time::Instant,
    status: Option<StatusCode>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        metrics::gauge!("keel_http_requests_in_flight").decrement(1.0);
        let duration = self.started.elapsed();
        let (class, error) = match self.status {
            Some(status) => (status_class(status), status.is_server_error()),
            None if std::thread::panicking() => ("5xx", true),
            None => ("cancelled", false),
        };
        let series = format!("{} {}", self.method, self.route);
        self.state
            .http_stats
            .record(series.as_str(), str::to_string, duration, error);
        crate::observe::warn_if_slow("request", &series, duration);
        let method = std::mem::take(&mut self.method);
        let route = std::mem::take(&mut self.route);
        metrics::counter!("keel_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => class)
            .increment(1);
        metrics::histogram!("keel_http_request_duration_seconds", "method" => method, "route" => route)
            .record(duration.as_secs_f64());
    }
}

/// Marks requests that came in on the `metrics.listen` listener.
#[derive(Debug, Clone, Copy)]
pub struct MetricsListener;

/// The router of the `metrics.listen` listener: `GET /metrics` and nothing else.
pub fn listener_router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(prometheus))
        .layer(axum::Extension(MetricsListener))
        .with_state(state)
}

/// Prometheus text format. When `metrics.token` is set, a scraper must send it as a bearer
/// token.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
        (status = 401, description = "metrics.token is set and was not sent"),
        (status = 404, description = "metrics.listen is set: scrape that address instead"),
    ))]
pub async fn prometheus(
    State(state): State<AppState>,
    on_metrics_listener: Option<axum::Extension<MetricsListener>>,
    headers: axum::http::HeaderMap,
) -> Response {
    if state.config.metrics.listen.is_some() && on_metrics_listener.is_none() {
        return ApiError::not_found().into_response();
    }
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
    process_collector().collect();
    record_allocator();
    match crate::jobs::store::queue_stats(&state.db).await {
        Ok(queues) => {
            let mut names: std::collections::BTreeSet<String> = state
                .jobs
                .queues()
                .into_iter()
                .map(str::to_string)
                .collect();
            names.extend(queues.iter().map(|q| q.queue.clone()));
            for name in names {
                let q = queues.iter().find(|q| q.queue == name);
                for (label, n) in [
                    ("queued", q.map_or(0, |q| q.queued)),
                    ("due", q.map_or(0, |q| q.due)),
                    ("running", q.map_or(0, |q| q.running)),
                    ("failed", q.map_or(0, |q| q.failed)),
                    ("dead", q.map_or(0, |q| q.dead)),
                ] {
                    metrics::gauge!("keel_jobs", "queue" => name.clone(), "state" => label)
                        .set(n as f64);
                }
                metrics::gauge!("keel_jobs_oldest_due_age_seconds", "queue" => name.clone())
                    .set(q.map_or(0.0, |q| q.oldest_due_age_secs));
            }
        }
        Err(e) => tracing::warn!(error = %e, "job figures for /metrics could not be read"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
