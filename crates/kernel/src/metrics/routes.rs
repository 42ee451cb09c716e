//! `/api/v1/metrics/*`: JSON summaries of this node for platform admins.
//!
//! Prometheus (`GET /metrics`) is the fleet view a dashboard aggregates; these answer "how is
//! this node doing right now?" without one: requests and latency percentiles per route over
//! the last [`window::SLOTS`] minutes, the database pool and query latency, the job backlog.
//! Request and query figures are per node (each node answers for itself, and says which it
//! is); the job backlog is read from the shared database, so it is the deployment's.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::window::{self, LatencySummary};
use crate::auth::PlatformAdmin;
use crate::http::{ApiResult, Json};
use crate::module::ModuleRouter;
use crate::state::AppState;
use crate::store::stats;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(utoipa_axum::routes!(summary))
        .routes(utoipa_axum::routes!(database))
        .routes(utoipa_axum::routes!(jobs))
}

/// One route's traffic over the window.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteSummary {
    pub method: String,
    /// The route template (`/api/v1/jobs/{id}`), never a concrete path.
    pub route: String,
    #[serde(flatten)]
    pub latency: LatencySummary,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeSummary {
    /// This process: figures are this node's own.
    pub node_id: Uuid,
    pub uptime_secs: u64,
    pub window_secs: u64,
    /// All routes together.
    pub total: Option<LatencySummary>,
    pub routes: Vec<RouteSummary>,
    pub process: ProcessSummary,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessSummary {
    pub resident_memory_bytes: Option<u64>,
    pub cpu_seconds_total: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub threads: Option<u64>,
}

fn process() -> ProcessSummary {
    let m = metrics_process::collector::collect();
    ProcessSummary {
        resident_memory_bytes: m.resident_memory_bytes,
        cpu_seconds_total: m.cpu_seconds_total,
        open_fds: m.open_fds,
        max_fds: m.max_fds,
        threads: m.threads,
    }
}

/// This node's requests over the last five minutes: count, 5xx errors and latency
/// percentiles per route, and the process's memory, CPU and file descriptors.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "metrics",
    security(("bearer" = [])),
    responses(
        (status = 200, body = NodeSummary),
        (status = 401, description = "Not signed in"),
        (status = 403, description = "Not the platform super admin")))]
pub async fn summary(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> ApiResult<Json<NodeSummary>> {
    let routes: Vec<RouteSummary> = state
        .http_stats
        .summaries()
        .into_iter()
        .map(|(key, latency)| {
            let (method, route) = key.split_once(' ').unwrap_or(("", key.as_str()));
            RouteSummary {
                method: method.to_string(),
                route: route.to_string(),
                latency,
            }
        })
        .collect();
    Ok(Json(NodeSummary {
        node_id: state.node_id,
        uptime_secs: state.started_at.elapsed().as_secs(),
        window_secs: window::SLOTS as u64 * 60,
        total: state.http_stats.total(),
        routes,
        process: process(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolSummary {
    /// `sqlite` or `postgres`.
    pub engine: &'static str,
    pub size: u32,
    pub idle: usize,
    pub in_use: u32,
    pub max: u32,
    /// In use ÷ max.
    pub utilisation: f64,
    #[serde(flatten)]
    pub waits: stats::PoolWaits,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperationSummary {
    /// Verb and main table (`select keel_jobs`): never a value.
    pub op: &'static str,
    #[serde(flatten)]
    pub latency: LatencySummary,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatabaseSummary {
    pub node_id: Uuid,
    pub window_secs: u64,
    pub pool: PoolSummary,
    /// One round trip, now.
    pub ping_ms: Option<f64>,
    pub slow_query_ms: u64,
    pub operations: Vec<OperationSummary>,
}

/// This node's database pool (size, idle, in use, waits) and query latency per operation
/// over the last five minutes.
#[utoipa::path(get, path = "/api/v1/metrics/database", tag = "metrics",
    security(("bearer" = [])),
    responses(
        (status = 200, body = DatabaseSummary),
        (status = 401, description = "Not signed in"),
        (status = 403, description = "Not the platform super admin")))]
pub async fn database(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> ApiResult<Json<DatabaseSummary>> {
    let p = state.db.pool_stats();
    let in_use = p
        .size
        .saturating_sub(u32::try_from(p.idle).unwrap_or(u32::MAX));
    let ping_ms = state
        .db
        .ping()
        .await
        .ok()
        .map(|d| (d.as_secs_f64() * 100_000.0).round() / 100.0);
    Ok(Json(DatabaseSummary {
        node_id: state.node_id,
        window_secs: window::SLOTS as u64 * 60,
        pool: PoolSummary {
            engine: match state.db.kind() {
                crate::config::DatabaseKind::Sqlite => "sqlite",
                crate::config::DatabaseKind::Postgres => "postgres",
            },
            size: p.size,
            idle: p.idle,
            in_use,
            max: p.max,
            utilisation: if p.max == 0 {
                0.0
            } else {
                f64::from(in_use) / f64::from(p.max)
            },
            waits: stats::pool_waits(),
        },
        ping_ms,
        slow_query_ms: state.config.database.slow_query_ms,
        operations: stats::operations()
            .into_iter()
            .map(|(op, latency)| OperationSummary { op, latency })
            .collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobsSummary {
    /// Every queue with unfinished, failed or dead jobs (deployment-wide).
    pub queues: Vec<crate::jobs::store::QueueStats>,
    pub totals: JobTotals,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct JobTotals {
    pub queued: i64,
    pub due: i64,
    pub running: i64,
    pub dead: i64,
    pub failed: i64,
    pub oldest_due_age_secs: f64,
}

/// The job backlog of every queue (deployment-wide, from the database): queued, due,
/// running, failed and dead jobs, and how long the oldest due job has waited.
#[utoipa::path(get, path = "/api/v1/metrics/jobs", tag = "metrics",
    security(("bearer" = [])),
    responses(
        (status = 200, body = JobsSummary),
        (status = 401, description = "Not signed in"),
        (status = 403, description = "Not the platform super admin")))]
pub async fn jobs(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> ApiResult<Json<JobsSummary>> {
    let queues = crate::jobs::store::queue_stats(&state.db).await?;
    let mut totals = JobTotals::default();
    for q in &queues {
        totals.queued += q.queued;
        totals.due += q.due;
        totals.running += q.running;
        totals.dead += q.dead;
        totals.failed += q.failed;
        totals.oldest_due_age_secs = totals.oldest_due_age_secs.max(q.oldest_due_age_secs);
    }
    Ok(Json(JobsSummary { queues, totals }))
}
