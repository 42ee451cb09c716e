//! The kernel's own module: operational routes (liveness, readiness, the OpenAPI document)
//! and the kernel's migrations (the installation record; jobs and the scheduler).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sea_query::Query;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::Json;
use crate::module::{Module, ModuleRouter};
use crate::state::AppState;
use crate::store::migrate::{self, Migration};
use crate::store::{Db, StoreError, now};

/// The kernel module; always enabled and always first.
#[derive(Debug, Default)]
pub struct KernelModule;

impl Module for KernelModule {
    fn name(&self) -> &'static str {
        crate::KERNEL_MODULE
    }

    fn migrations(&self) -> Vec<Migration> {
        vec![
            crate::migration!(1, "0001_instance", "migrations"),
            crate::migration!(3, "0003_jobs", "migrations"),
        ]
    }

    fn routes(&self) -> ModuleRouter {
        ModuleRouter::new()
            .routes(routes!(liveness))
            .routes(routes!(readiness))
            .routes(routes!(openapi_document))
    }
}

/// Records this installation's identity on first start; returns it.
pub async fn ensure_installation(db: &Db) -> Result<Uuid, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
    }
    let select = Query::select()
        .column("id")
        .from("keel_instance")
        .limit(1)
        .to_owned();
    if let Some(row) = db.fetch_optional::<Row>(&select).await? {
        return Ok(row.id);
    }
    let id = Uuid::now_v7();
    let insert = Query::insert()
        .into_table("keel_instance")
        .columns(["id", "created_at", "created_by_version"])
        .values_panic([id.into(), now().into(), env!("CARGO_PKG_VERSION").into()])
        .to_owned();
    let mut tx = db.begin().await?;
    // Two nodes starting together: the second sees the first's row and keeps it.
    if let Some(row) = tx.fetch_optional::<Row>(&select).await? {
        return Ok(row.id);
    }
    tx.execute(&insert).await?;
    tx.commit().await?;
    Ok(id)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok` while the process serves requests.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process is up. Touches no dependency.
#[utoipa::path(
    get,
    path = "/health",
    tag = "ops",
    responses((status = 200, description = "The process is alive", body = Liveness))
)]
pub async fn liveness() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

/// One dependency's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    /// `up`, `down` or `disabled` (not configured).
    #[schema(example = "up")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Check {
    fn up(latency: Duration) -> Self {
        Self {
            status: "up",
            latency_ms: Some(round_ms(latency)),
            detail: None,
        }
    }

    fn down(detail: impl Into<String>) -> Self {
        Self {
            status: "down",
            latency_ms: None,
            detail: Some(detail.into()),
        }
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    #[schema(example = "ready")]
    pub status: &'static str,
    pub version: &'static str,
    /// This node (process).
    pub node_id: Uuid,
    /// The deployment (shared by every node on the same database).
    pub installation_id: Uuid,
    /// `sqlite` or `postgres`.
    pub database_engine: &'static str,
    /// Each dependency: `database`, `migrations`, `redis`.
    pub checks: BTreeMap<&'static str, Check>,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness: every dependency answers. 503 while one is down, so a load balancer stops
/// sending traffic here.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "ops",
    responses(
        (status = 200, description = "Ready to serve", body = Readiness),
        (status = 503, description = "A dependency is down", body = Readiness)
    )
)]
pub async fn readiness(State(state): State<AppState>) -> Response {
    let mut checks = BTreeMap::new();
    checks.insert("database", check_database(&state).await);
    let database_up = checks.get("database").is_some_and(|c| c.status == "up");
    checks.insert(
        "migrations",
        if database_up {
            check_migrations(&state).await
        } else {
            Check::down("database unreachable")
        },
    );
    checks.insert("redis", check_redis(&state).await);
    let ready = checks.values().all(|c| c.status != "down");
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        version: env!("CARGO_PKG_VERSION"),
        node_id: state.node_id,
        installation_id: state.installation_id,
        database_engine: match state.db.kind() {
            crate::config::DatabaseKind::Sqlite => "sqlite",
            crate::config::DatabaseKind::Postgres => "postgres",
        },
        checks,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
    response
        .extensions_mut()
        .insert(crate::http::error::DeliberateBody);
    response
}

async fn check_database(state: &AppState) -> Check {
    // On SQLite, a database file that vanished (volume unmounted, file moved) still answers
    // queries through open handles while every write goes nowhere durable: not ready.
    if let Some(path) = state.db.sqlite_file()
        && !path.exists()
    {
        return Check::down("the database file is missing");
    }
    match tokio::time::timeout(CHECK_TIMEOUT, state.db.ping()).await {
        Ok(Ok(latency)) => Check::up(latency),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            Check::down("database unreachable")
        }
        Err(_) => Check::down("database did not answer within 2 s"),
    }
}

async fn check_migrations(state: &AppState) -> Check {
    let started = std::time::Instant::now();
    let modules = state.registry.migrations();
    match tokio::time::timeout(CHECK_TIMEOUT, migrate::pending_count(&state.db, &modules)).await {
        Ok(Ok(0)) => Check::up(started.elapsed()),
        Ok(Ok(n)) => Check::down(format!("{n} migration(s) not applied")),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: migration check failed");
            Check::down("migration state unreadable")
        }
        Err(_) => Check::down("migration check timed out"),
    }
}

async fn check_redis(state: &AppState) -> Check {
    let Some(redis) = &state.redis else {
        return Check {
            status: "disabled",
            latency_ms: None,
            detail: Some("KEEL_REDIS_URL not set".into()),
        };
    };
    let mut conn = redis.clone();
    let started = std::time::Instant::now();
    let ping = async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
    match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
        Ok(Ok(_)) => Check::up(started.elapsed()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: redis check failed");
            Check::down("redis unreachable")
        }
        Err(_) => Check::down("redis did not answer within 2 s"),
    }
}

/// The OpenAPI 3.1 document of every enabled route.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "ops",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
pub async fn openapi_document(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi_json.clone(),
    )
        .into_response()
}
