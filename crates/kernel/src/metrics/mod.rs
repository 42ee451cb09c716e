//! Prometheus metrics: one process-wide recorder, rendered at `GET /metrics`.
//!
//! HTTP requests are counted and timed by method, route template (never the raw path, so
//! label cardinality stays bounded) and status class; requests in flight and requests shed
//! are gauges and counters. Kernel parts record their own families through the `metrics`
//! macros (rate-limit decisions, sign-in outcomes, …).

use std::sync::{Arc, OnceLock, RwLock};
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

fn status_class(status: StatusCode) -> Class {
    match status.as_u16() {
        100..=199 => Class::Informational,
        200..=299 => Class::Success,
        300..=399 => Class::Redirect,
        400..=499 => Class::Client,
        _ => Class::Server,
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
        .map_or("unmatched", MatchedPath::as_str);
    let mut guard = Tracked {
        state: state.clone(),
        series: RouteSeries::of(req.method(), route),
        started: std::time::Instant::now(),
        status: None,
    };
    if let Some(in_flight) = in_flight() {
        in_flight.increment(1.0);
    }
    let response = next(req).await;
    guard.status = Some(response.status());
    response
}

/// Records a request when it ends, however it ends: answered, panicked (a 5xx: the panic guard
/// answers 500) or cancelled — the client went away or the request timeout fired — which is
/// counted under the status `cancelled`.
struct Tracked {
    state: AppState,
    series: Arc<RouteSeries>,
    started: std::time::Instant,
    status: Option<StatusCode>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(in_flight) = in_flight() {
            in_flight.decrement(1.0);
        }
        let duration = self.started.elapsed();
        let (class, error) = match self.status {
            Some(status) => (status_class(status), status.is_server_error()),
            None if std::thread::panicking() => (Class::Server, true),
            None => (Class::Cancelled, false),
        };
        let series = &self.series;
        self.state
            .http_stats
            .record(&*series.name, str::to_string, duration, error);
        crate::observe::warn_if_slow("request", &series.name, duration);
        series.requests[class as usize]
            .get_or_init(|| {
                metrics::counter!("keel_http_requests_total", "method" => series.method, "route" => series.route.clone(), "status" => class.label())
            })
            .increment(1);
        series.duration.record(duration.as_secs_f64());
    }
}

/// The requests in flight, as one handle (none until the recorder is installed).
fn in_flight() -> Option<&'static metrics::Gauge> {
    static GAUGE: OnceLock<metrics::Gauge> = OnceLock::new();
    handle()?;
    Some(GAUGE.get_or_init(|| metrics::gauge!("keel_http_requests_in_flight")))
}

/// A response's status class, as the `status` label says it.
#[derive(Debug, Clone, Copy)]
enum Class {
    Informational,
    Success,
    Redirect,
    Client,
    Server,
    Cancelled,
}

impl Class {
    const COUNT: usize = 6;

    fn label(self) -> &'static str {
        match self {
            Class::Informational => "1xx",
            Class::Success => "2xx",
            Class::Redirect => "3xx",
            Class::Client => "4xx",
            Class::Server => "5xx",
            Class::Cancelled => "cancelled",
        }
    }
}

/// The metric handles of one method and route template, made once per process: looking a
/// metric up by name and labels hashes them all and takes the registry's lock, which cost
/// more per request than the rest of this layer.
struct RouteSeries {
    /// `GET /api/v1/…`: the series of the recent-latency window.
    name: Box<str>,
    method: &'static str,
    route: String,
    /// `keel_http_requests_total`, by [`Class`].
    requests: [OnceLock<metrics::Counter>; Class::COUNT],
    duration: metrics::Histogram,
}

type SeriesByRoute = std::collections::HashMap<Box<str>, Vec<Arc<RouteSeries>>>;

impl RouteSeries {
    fn of(method: &axum::http::Method, route: &str) -> Arc<RouteSeries> {
        static ALL: OnceLock<RwLock<SeriesByRoute>> = OnceLock::new();
        let method = method_label(method);
        let all = ALL.get_or_init(RwLock::default);
        let found = |map: &SeriesByRoute| {
            map.get(route)
                .and_then(|list| list.iter().find(|s| s.method == method).cloned())
        };
        if let Some(series) = all.read().ok().as_deref().and_then(found) {
            return series;
        }
        // The recorder must exist before a handle is made, or the handle records nothing.
        handle();
        let make = || {
            Arc::new(RouteSeries {
                name: format!("{method} {route}").into_boxed_str(),
                method,
                route: route.to_string(),
                requests: Default::default(),
                duration: metrics::histogram!("keel_http_request_duration_seconds", "method" => method, "route" => route.to_string()),
            })
        };
        let Ok(mut map) = all.write() else {
            return make();
        };
        if let Some(series) = found(&map) {
            return series;
        }
        let series = make();
        map.entry(route.into()).or_default().push(series.clone());
        series
    }
}

/// The method as a label: one of the standard methods, or `OTHER`, so a client inventing
/// methods cannot add series without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
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

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    #[test]
    fn methods_a_client_invents_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        for invented in ["BREW", "PROPFIND", "X-ANYTHING"] {
            let method = Method::from_bytes(invented.as_bytes()).expect("token");
            assert_eq!(method_label(&method), "OTHER", "{invented}");
        }
    }

    #[test]
    fn a_route_and_method_keep_one_series() {
        let first = RouteSeries::of(&Method::GET, "/api/v1/things/{id}");
        let again = RouteSeries::of(&Method::GET, "/api/v1/things/{id}");
        let other = RouteSeries::of(&Method::POST, "/api/v1/things/{id}");
        assert!(Arc::ptr_eq(&first, &again));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(&*first.name, "GET /api/v1/things/{id}");
        assert_eq!(&*other.name, "POST /api/v1/things/{id}");
    }
}
