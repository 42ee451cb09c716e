//! The kernel's own module: operational routes (liveness, readiness, the OpenAPI document),
//! the kernel's migrations (installation, identity, jobs, idempotency, audit) and the fixtures
//! the isolation probe uses.

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
            crate::migration!(2, "0002_identity", "migrations"),
            crate::migration!(3, "0003_jobs", "migrations"),
            crate::migration!(4, "0004_idempotency", "migrations"),
            crate::migration!(5, "0005_audit", "migrations"),
            crate::migration!(6, "0006_realtime", "migrations"),
            crate::migration!(7, "0007_integrations", "migrations"),
            crate::migration!(8, "0008_extraction", "migrations"),
            crate::migration!(9, "0009_keys", "migrations"),
            crate::migration!(10, "0010_job_stats", "migrations"),
            crate::migration!(11, "0011_audit_pending", "migrations"),
        ]
    }

    fn encrypted_columns(&self) -> Vec<crate::crypto::keys::EncryptedTable> {
        crate::crypto::keys::kernel_encrypted_columns()
    }

    fn routes(&self) -> ModuleRouter {
        ModuleRouter::new()
            .routes(routes!(liveness))
            .routes(routes!(readiness))
            .routes(routes!(openapi_document))
            .routes(routes!(crate::metrics::prometheus))
            .merge(crate::auth::routes::router())
            .merge(crate::partners::routes::router())
            .merge(crate::audit::routes::router())
            .merge(crate::jobs::routes::router())
            .merge(crate::metrics::routes::router())
            .merge(crate::integrations::router())
            .merge(crate::storage::routes::router())
            .merge(crate::extract::routes::router())
            .merge(crate::realtime::routes::router())
            .merge(crate::notify::routes::router())
    }

    fn jobs(&self) -> Vec<crate::jobs::JobDefinition> {
        let mut jobs = vec![crate::housekeeping::job(), crate::extract::job()];
        jobs.extend(crate::integrations::jobs());
        jobs.extend(crate::notify::delivery::jobs());
        jobs
    }

    fn realtime_channels(&self) -> Vec<crate::realtime::ChannelDefinition> {
        // `partners:<id>`: a business partner's changes, for whoever may read it.
        vec![
            crate::realtime::ChannelDefinition::new(
                "partners",
                |state: AppState, scope, id: String| async move {
                    let Ok(id) = Uuid::try_parse(&id) else {
                        return Ok(false);
                    };
                    match crate::partners::store::get_db(&state.db, &scope, id).await {
                        Ok(_) => Ok(true),
                        Err(StoreError::NotFound) => Ok(false),
                        Err(e) => Err(e.into()),
                    }
                },
            )
            .permission("partners.read"),
        ]
    }

    fn realtime_channels_for(
        &self,
        event: &crate::audit::AuditEvent,
    ) -> Vec<crate::realtime::Channel> {
        match (event.resource_type.as_str(), &event.resource_id) {
            ("partner", Some(id)) => crate::realtime::Channel::resource("partners", id)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    fn schedules(&self) -> Vec<crate::jobs::ScheduleDefinition> {
        vec![
            crate::housekeeping::schedule(),
            crate::integrations::schedule(),
        ]
    }

    fn rate_limit_policies(&self) -> Vec<crate::limits::Policy> {
        use crate::limits::{FailMode, KeyKind, Policy};
        // One-time-token and second-factor endpoints: few legitimate calls, each worth
        // guessing for an attacker.
        vec![Policy::new(
            "auth.recovery",
            5,
            std::time::Duration::from_secs(60),
            KeyKind::Ip,
            FailMode::FailClosed,
        )]
    }

    fn fixtures(&self) -> Vec<crate::module::Fixture> {
        kernel_fixtures()
    }
}

/// Records this installation's identity on first start; returns it.
pub async fn ensure_installation(db: &Db) -> Result<Uuid, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
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
    /// Each dependency: `database`, `migrations`, `redis`, `llm` (`disabled` without a key),
    /// `extraction` (the OCR engines' tools; informational, never `down`).
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
    checks.insert("llm", check_llm(&state));
    checks.insert("extraction", check_extraction(&state));
    checks.insert(
        "email",
        channel_check(
            state.notify.email.as_ref().map(|_| {
                let s = &state.config.smtp;
                format!(
                    "smtp {}:{} (not probed)",
                    s.host.as_deref().unwrap_or(""),
                    s.port
                )
            }),
            "no SMTP host configured (KEEL_SMTP__HOST); email notifications are skipped",
        ),
    );
    checks.insert(
        "sms",
        channel_check(
            state
                .notify
                .sms
                .as_ref()
                .map(|_| "provider configured (not probed)".to_string()),
            "no SMS provider configured (KEEL_SMS__BASE_URL); SMS notifications are skipped",
        ),
    );
    checks.insert(
        "realtime",
        Check {
            status: "up",
            latency_ms: None,
            detail: Some(format!(
                "fan-out {}, {} connection(s)",
                state.realtime.fanout_name(),
                state.realtime.connection_count()
            )),
        },
    );
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

/// A notification channel: `up` when a provider is configured, else `disabled` (which does
/// not make the node unready: those deliveries are recorded as skipped).
fn channel_check(configured: Option<String>, disabled: &str) -> Check {
    match configured {
        Some(detail) => Check {
            status: "up",
            latency_ms: None,
            detail: Some(detail),
        },
        None => Check {
            status: "disabled",
            latency_ms: None,
            detail: Some(disabled.to_string()),
        },
    }
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

/// The LLM is not called (that costs money and says little): readiness shows whether AI
/// features are configured, and the circuit breaker's state when one has opened.
fn check_llm(state: &AppState) -> Check {
    let llm = &state.integrations.llm;
    let Some(which) = llm.describe() else {
        return Check {
            status: "disabled",
            latency_ms: None,
            detail: Some("KEEL_LLM__API_KEY not set: AI features are disabled".into()),
        };
    };
    let open = state
        .integrations
        .outbound
        .breakers()
        .into_iter()
        .find(|b| {
            b.service.starts_with("llm.") && b.state != crate::integrations::BreakerState::Closed
        });
    Check {
        status: "up",
        latency_ms: None,
        detail: Some(match open {
            Some(b) => format!("{which}; circuit breaker {:?}", b.state),
            None => which,
        }),
    }
}

/// The extraction engines' tools. Informational: a node without OCR still serves
/// everything else, so a missing engine never makes it unready (`disabled` when none runs).
fn check_extraction(state: &AppState) -> Check {
    let engines = state.extractor.availability();
    let missing: Vec<String> = engines
        .iter()
        .filter_map(|(name, a)| a.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    let names: Vec<&str> = engines.iter().map(|(n, _)| *n).collect();
    Check {
        status: if missing.len() == engines.len() {
            "disabled"
        } else {
            "up"
        },
        latency_ms: None,
        detail: Some(if missing.is_empty() {
            format!("engines: {}", names.join(", "))
        } else {
            format!("engines: {}; {}", names.join(", "), missing.join("; "))
        }),
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

/// Sample rows of the kernel's tenant-owned resources, for the isolation probe.
pub fn kernel_fixtures() -> Vec<crate::module::Fixture> {
    use crate::module::{Fixture, FixtureResource};
    use std::sync::Arc;
    vec![
        Fixture {
            resource: "organization",
            create: Arc::new(|_state, scope| {
                Box::pin(async move {
                    Ok(FixtureResource {
                        paths: vec![format!("/api/v1/orgs/{}", scope.org_id())],
                    })
                })
            }),
        },
        Fixture {
            resource: "partner",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(async move {
                    let mut tx = state.db.begin().await?;
                    let p =
                        crate::partners::store::insert(&mut tx, &scope, "Fixture Partner", "buyer")
                            .await?;
                    tx.commit().await?;
                    Ok(FixtureResource {
                        paths: vec![format!("/api/v1/partners/{}", p.id)],
                    })
                })
            }),
        },
        Fixture {
            resource: "user",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(async move { fixture_user(&state, &scope).await })
            }),
        },
        Fixture {
            resource: "invitation",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(async move {
                    use crate::auth::store;
                    let mut tx = state.db.begin().await?;
                    let inviter = fixture_user_row(&mut tx, &scope).await?;
                    let at = now();
                    let inv = store::Invitation {
                        id: Uuid::now_v7(),
                        org_id: scope.org_id(),
                        email: format!("invited-{}@fixture.example", Uuid::now_v7().simple()),
                        role: "member".into(),
                        partner_id: None,
                        invited_by: inviter.id,
                        expires_at: at + chrono::TimeDelta::days(7),
                        accepted_at: None,
                        revoked_at: None,
                        created_at: at,
                    };
                    store::insert_invitation(&mut tx, &inv, &crate::crypto::random_token(16))
                        .await?;
                    tx.commit().await?;
                    Ok(FixtureResource {
                        paths: vec![format!(
                            "/api/v1/orgs/{}/invitations/{}",
                            scope.org_id(),
                            inv.id
                        )],
                    })
                })
            }),
        },
        Fixture {
            resource: "api_key",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(async move {
                    let mut tx = state.db.begin().await?;
                    let owner = fixture_user_row(&mut tx, &scope).await?;
                    let id = Uuid::now_v7();
                    let secret = crate::crypto::random_token(32);
                    crate::auth::store::insert_api_key(
                        &mut tx,
                        &scope,
                        id,
                        owner.id,
                        "fixture key",
                        "keel_fixture",
                        &crate::crypto::token_hash(&secret),
                        &["partners.read".to_string()],
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(FixtureResource {
                        paths: vec![format!("/api/v1/api-keys/{id}")],
                    })
                })
            }),
        },
        Fixture {
            resource: "job",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(async move {
                    let mut tx = state.db.begin().await?;
                    // Due in a year: the probe must find it queued, not run.
                    let id = state
                        .jobs
                        .enqueue_with(
                            &mut tx,
                            Some(&scope),
                            &crate::housekeeping::Housekeeping(crate::jobs::ScheduledTick {
                                schedule: "fixture".into(),
                                tick_at: now(),
                                missed_ticks: 0,
                            }),
                            crate::jobs::EnqueueOptions::default()
                                .run_at(now() + chrono::TimeDelta::days(365)),
                        )
                        .await?;
                    tx.commit().await?;
                    Ok(FixtureResource {
                        paths: vec![format!("/api/v1/jobs/{id}")],
                    })
                })
            }),
        },
        Fixture {
            resource: "audit_event",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(async move {
                    use crate::audit::{self, AuditContext, NewEvent};
                    let ctx = AuditContext::system("fixture");
                    let (scope, ctx) = (&scope, &ctx);
                    let event_id = state
                        .db
                        .transaction(|tx| {
                            Box::pin(async move {
                                audit::record(
                                    tx,
                                    scope,
                                    ctx,
                                    NewEvent::new("fixture.created", "fixture", None::<Uuid>),
                                )
                                .await
                            })
                        })
                        .await?;
                    Ok(FixtureResource {
                        paths: vec![format!("/api/v1/audit/events/{}", event_id)],
                    })
                })
            }),
        },
        Fixture {
            resource: "webhook_endpoint",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(
                    async move { crate::integrations::webhooks::fixture(&state, &scope).await },
                )
            }),
        },
        Fixture {
            resource: "file",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(async move {
                    let (file, _) = state
                        .files
                        .put(
                            &state.db,
                            &scope,
                            Some("fixture.png"),
                            Some("image/png"),
                            fixture_png(),
                        )
                        .await?;
                    Ok(FixtureResource {
                        paths: vec![format!("/api/v1/files/{}", file.sha256)],
                    })
                })
            }),
        },
        Fixture {
            resource: "extraction",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(async move {
                    let (file, _) = state
                        .files
                        .put(&state.db, &scope, None, None, fixture_png())
                        .await?;
                    // Recorded without its job: the probe must find it as it was.
                    let id = Uuid::now_v7();
                    let mut tx = state.db.begin().await?;
                    crate::extract::store::insert(&mut tx, &scope, id, &file.sha256, "invoice")
                        .await?;
                    tx.commit().await?;
                    Ok(FixtureResource {
                        paths: vec![format!("/api/v1/extractions/{id}")],
                    })
                })
            }),
        },
        Fixture {
            resource: "notification",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(async move {
                    let mut tx = state.db.begin().await?;
                    let owner = fixture_user_row(&mut tx, &scope).await?;
                    let id = Uuid::now_v7();
                    let rendered = crate::notify::Rendered {
                        title: "Fixture".into(),
                        text: "A fixture notification".into(),
                        html: None,
                    };
                    crate::notify::store::insert_notification(
                        &mut tx,
                        &scope,
                        id,
                        owner.id,
                        "fixture.notice",
                        &rendered,
                        &serde_json::json!({}),
                        true,
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(FixtureResource {
                        paths: vec![format!("/api/v1/notifications/{id}")],
                    })
                })
            }),
        },
        Fixture {
            resource: "session",
            create: Arc::new(|state: AppState, scope| {
                Box::pin(async move {
                    let mut tx = state.db.begin().await?;
                    let owner = fixture_user_row(&mut tx, &scope).await?;
                    let issued = crate::auth::service::start_session(
                        &state,
                        &mut tx,
                        &owner,
                        &crate::auth::service::Origin::default(),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                    tx.commit().await?;
                    Ok(FixtureResource {
                        paths: vec![format!("/api/v1/auth/sessions/{}", issued.session_id)],
                    })
                })
            }),
        },
    ]
}

/// A one-pixel PNG, unique per call (a text chunk carries a fresh id) so each fixture is
/// its own file.
fn fixture_png() -> bytes::Bytes {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0".to_vec();
    png.extend_from_slice(Uuid::now_v7().as_bytes());
    bytes::Bytes::from(png)
}

async fn fixture_user_row(
    tx: &mut crate::store::Tx,
    scope: &crate::tenancy::TenantScope,
) -> anyhow::Result<crate::auth::store::UserRow> {
    let at = now();
    let user = crate::auth::store::UserRow {
        id: Uuid::now_v7(),
        org_id: scope.org_id(),
        email: format!("member-{}@fixture.example", Uuid::now_v7().simple()),
        name: "Fixture Member".into(),
        // Not a valid hash: nobody signs in as a fixture.
        password_hash: "!".into(),
        role: "member".into(),
        status: "active".into(),
        partner_id: None,
        email_verified_at: None,
        totp_secret: None,
        totp_enabled: false,
        totp_last_step: None,
        created_at: at,
        updated_at: at,
        version: 1,
    };
    crate::auth::store::insert_user(tx, &user).await?;
    Ok(user)
}

async fn fixture_user(
    state: &AppState,
    scope: &crate::tenancy::TenantScope,
) -> anyhow::Result<crate::module::FixtureResource> {
    let mut tx = state.db.begin().await?;
    let user = fixture_user_row(&mut tx, scope).await?;
    tx.commit().await?;
    Ok(crate::module::FixtureResource {
        paths: vec![format!("/api/v1/users/{}", user.id)],
    })
}
