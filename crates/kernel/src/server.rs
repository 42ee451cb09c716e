//! Start-up and shutdown: `Application::build → local_addr → run_until_stopped(shutdown)`.
//!
//! `build` does everything that can fail before anything listens: module checks, database
//! connection (with retries), migrations (or their verification), Redis, the job types, the
//! router and the listening socket (so tests can bind port 0 and learn the port).
//! `run_until_stopped` starts the job workers and the scheduler (as configured) and serves
//! until the shutdown future resolves. Then, at the same time, the HTTP server stops
//! accepting and drains in-flight requests within `http.shutdown_grace_secs`, and the job
//! runtime stops claiming, hands scheduler leadership on and lets running jobs finish within
//! `jobs.shutdown_grace_ms` (releasing the rest). Both graces run concurrently because an
//! orchestrator gives a node one termination period, not one per subsystem. Then the pools
//! close and the report says whether everything finished in time.
//!
//! [`run_worker`] is `keel worker`: the same start-up without HTTP, running only jobs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt as _;

use crate::config::Config;
use crate::http;
use crate::jobs::{Jobs, Runtime, RuntimeOptions};
use crate::module::{Module, Registry};
use crate::ops::{KernelModule, ensure_installation};
use crate::state::{AppInner, AppState};
use crate::store::Db;
use crate::store::migrate;

/// A built, bound, not yet serving Keel.
pub struct Application {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    /// `metrics.listen`: a listener that serves only `GET /metrics`.
    metrics_listener: Option<(std::net::TcpListener, SocketAddr)>,
    router: Router,
    state: AppState,
    tls: Option<RustlsConfig>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// How the server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Every in-flight request and every running job finished within its grace period.
    pub clean: bool,
    /// Jobs still running when `jobs.shutdown_grace_ms` ran out, released back to their
    /// queue (their attempt not counted).
    pub jobs_released: u64,
}

/// The kernel module followed by `modules`, less those switched off, checked.
pub fn registry(
    config: &Config,
    modules: Vec<Arc<dyn Module>>,
) -> Result<Registry, crate::config::ConfigError> {
    let mut all: Vec<Arc<dyn Module>> = vec![Arc::new(KernelModule)];
    all.extend(modules);
    let mut problems = Vec::new();
    for name in config.modules.keys() {
        if !all.iter().any(|m| m.name() == name) {
            problems.push(format!(
                "modules.{name}: no module of this build is called `{name}`"
            ));
        }
    }
    let empty = serde_json::Value::Object(Default::default());
    for m in &all {
        let settings = config.modules.get(m.name()).unwrap_or(&empty);
        problems.extend(
            m.settings_problems(settings)
                .into_iter()
                .map(|p| format!("modules.{}.{p}", m.name())),
        );
    }
    let registry = Registry::new(all, &config.disabled_modules);
    match registry {
        Err(mut e) => {
            e.problems.extend(problems);
            Err(e)
        }
        Ok(_) if !problems.is_empty() => Err(crate::config::ConfigError { problems }),
        Ok(r) => Ok(r),
    }
}

/// Installs the process-wide TLS crypto provider (ring) once; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Everything but the listener: configuration checks, database, migrations, Redis, the job
/// types and the (unlayered) router.
async fn prepare(
    config: Config,
    modules: Vec<Arc<dyn Module>>,
) -> anyhow::Result<(AppState, axum::Router<AppState>)> {
    install_crypto_provider();
    let config = Arc::new(config);
    crate::observe::set_slow_operation_threshold(std::time::Duration::from_millis(
        config.log.slow_operation_ms,
    ));
    let registry = registry(&config, modules)?;

    let db = Db::connect(&config).await?;
    let migrations = registry.migrations();
    if config.database.migrate_on_start {
        migrate::run(&db, &migrations).await?;
    } else {
        migrate::verify(&db, &migrations).await?;
        let pending = migrate::pending_count(&db, &migrations).await?;
        if pending > 0 {
            anyhow::bail!(
                "{pending} migration(s) are not applied and database.migrate_on_start is false; run `keel migrate run`"
            );
        }
    }
    let installation_id = ensure_installation(&db).await?;
    let redis = match &config.redis_url {
        Some(url) => Some(connect_redis(url.expose(), &config).await?),
        None => None,
    };

    let notify = Arc::new(crate::notify::Notifier::new(&config, &registry)?);
    // Account mails go over SMTP when it is configured, else into files for a developer.
    let mailer: Arc<dyn crate::mail::Mailer> = match &notify.email {
        Some(smtp) => crate::notify::delivery::as_mailer(smtp),
        None => Arc::new(crate::mail::FileMailer::new(config.data_dir.join("mail"))),
    };
    let auth = Arc::new(crate::auth::AuthRuntime::new(&config, &registry, mailer)?);
    auth.revocations.load(&db).await?;

    let mut policies = crate::limits::default_policies();
    policies.extend(registry.rate_limit_policies());
    let limits =
        crate::limits::RateLimiter::from_config(&config.rate_limits, policies, redis.clone())?;
    let (router, route_policies) = registry.router();
    let mut unknown = Vec::new();
    for rp in &route_policies {
        if limits.policy(rp.policy).is_none() {
            unknown.push(format!(
                "route {} {} names unknown rate-limit policy `{}`",
                rp.method, rp.path, rp.policy
            ));
        }
    }
    if !unknown.is_empty() {
        return Err(crate::config::ConfigError { problems: unknown }.into());
    }
    let route_policies = route_policies
        .into_iter()
        .map(|rp| ((rp.method, rp.path), rp.policy))
        .collect();
    let (router, mut openapi) = router.split_for_parts();
    describe_api(&mut openapi);
    let openapi_json = bytes::Bytes::from(
        serde_json::to_vec(&openapi).context("cannot render the OpenAPI document")?,
    );
    let jobs = Jobs::new(&registry, &config.jobs);
    let files = crate::storage::Files::from_config(&config)?;
    let integrations = Arc::new(crate::integrations::Integrations::new(&config)?);
    let vision: Arc<dyn crate::extract::engine::Engine> =
        Arc::new(crate::extract::vision::VisionLlm {
            db: db.clone(),
            integrations: integrations.clone(),
            tools: config.extraction.tools(),
        });
    let extractor = Arc::new(crate::extract::Extractor::new(
        &config.extraction,
        &registry,
        vec![vision],
    )?);
    let realtime = Arc::new(crate::realtime::Realtime::new(
        &config,
        &db,
        &registry,
        redis.clone(),
        installation_id,
    ));
    let audit = Arc::new(crate::audit::AuditRuntime::default());
    audit
        .bus
        .register(Arc::new(crate::realtime::AuditToRealtime {
            db: db.clone(),
            registry: registry.clone(),
            realtime: realtime.clone(),
        }));

    let node_id = uuid::Uuid::now_v7();
    let cache = crate::cache::Caches::new(&config.cache, redis.clone(), node_id);
    let state = AppState::new(AppInner {
        config: config.clone(),
        db,
        redis,
        registry,
        limits,
        route_policies,
        crypto: auth.keyring.clone(),
        cache,
        auth,
        integrations,
        audit,
        realtime,
        notify,
        jobs,
        files,
        extractor,
        openapi_json,
        installation_id,
        node_id,
        started_at: Instant::now(),
        http_stats: Arc::new(crate::metrics::window::Windows::new()),
    });
    // Committed events that organizations' webhook endpoints asked for become deliveries.
    state.audit.bus.register(Arc::new(
        crate::integrations::webhooks::WebhookSubscriber::new(&state),
    ));
    Ok((state, router))
}

/// What a `keel worker` process runs.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// The queues to work; empty means `jobs.queues`, or every queue a job type uses.
    pub queues: Vec<String>,
}

/// `keel worker`: runs job queues (and takes part in scheduler leadership when
/// `scheduler.enabled`) without an HTTP listener, until `shutdown` resolves; then stops as
/// `run_until_stopped` does. A worker takes no traffic, so it needs no readiness endpoint: an
/// orchestrator watches the process, and the job API shows what it works on.
pub async fn run_worker(
    config: Config,
    modules: Vec<Arc<dyn Module>>,
    options: WorkerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ShutdownReport> {
    let (state, _router) = prepare(config, modules).await?;
    // Jobs may use the shared cache: other nodes' invalidations must reach this one too.
    let _cache_listener = state.config.redis_url.as_ref().map(|url| {
        AbortOnDrop(tokio::spawn(
            state.cache.clone().listen(url.expose().to_string()),
        ))
    });
    let runtime = Runtime::start(
        &state,
        RuntimeOptions {
            id: state.node_id,
            workers: true,
            queues: Some(options.queues),
            scheduler: state.config.scheduler.enabled,
        },
    );
    if runtime.queues().is_empty() {
        tracing::warn!("no queue to work: no job type is registered and none was named");
    }
    let mut shutdown = std::pin::pin!(shutdown);
    // Polled once before announcing: a signal handler is installed on the first poll, and a
    // supervisor may signal as soon as it reads the announcement.
    if (&mut shutdown).now_or_never().is_none() {
        tracing::info!(node = %state.node_id, queues = ?runtime.queues(), "keel worker running");
        shutdown.await;
    }
    tracing::info!("shutdown requested: no longer claiming jobs; letting running ones finish");
    let report = runtime.shutdown(state.config.jobs.shutdown_grace()).await;
    state.db.close().await;
    Ok(ShutdownReport {
        clean: report.released == 0,
        jobs_released: report.released,
    })
}

/// Everything that needs the matched route, in one route layer, outermost first: the route
/// template into the request span, request metrics, the route's rate-limit policy, then
/// `Idempotency-Key` replay around the handler.
///
/// One layer rather than one per concern: axum wraps every route in each route layer, and a
/// request clones the wrapped stack once per level it passes, so the cost of a layer grows
/// with the number of layers inside it.
async fn per_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
        tracing::Span::current().record("route", m.as_str());
    }
    crate::metrics::track(&state, req, |req| {
        crate::limits::http::limit_requests(&state, req, |req| {
            crate::idempotency::idempotency(&state, req, |req| next.run(req))
        })
    })
    .await
}

/// Aborts a spawned task when dropped, so that dropping `run_until_stopped` (a crash, in
/// tests) takes the HTTP server down with it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Application {
    /// Builds Keel with the kernel module plus `modules` (in order).
    pub async fn build(config: Config, modules: Vec<Arc<dyn Module>>) -> anyhow::Result<Self> {
        let (state, router) = prepare(config, modules).await?;
        let config = state.config.clone();
        let router = router
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                per_route,
            ))
            .with_state(state.clone())
            .merge(docs_router());
        let router = http::with_layers(router, &config);

        let addr = config.listen_addr()?;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr}"))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let metrics_listener = match config.metrics_addr()? {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen for metrics on {addr}"))?;
                l.set_nonblocking(true)?;
                let bound = l.local_addr()?;
                Some((l, bound))
            }
            None => None,
        };
        let tls = match (&config.http.tls_cert_path, &config.http.tls_key_path) {
            (Some(cert), Some(key)) => Some(
                RustlsConfig::from_pem_file(cert, key)
                    .await
                    .context("cannot load the TLS certificate or key")?,
            ),
            _ => None,
        };
        Ok(Self {
            listener,
            local_addr,
            metrics_listener,
            router,
            state,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Where `GET /metrics` is served when `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, a)| *a)
    }

    /// The complete router with every layer, as `run_until_stopped` serves it: lets
    /// benchmarks and in-process callers drive requests without a socket
    /// (`tower::ServiceExt::oneshot`). Without a connection the client IP is unspecified.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves, then drains and closes.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<ShutdownReport> {
        let grace = Duration::from_secs(self.state.config.http.shutdown_grace_secs);
        let handle: axum_server::Handle<SocketAddr> = axum_server::Handle::new();
        let make_service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let max_head = self.state.config.http.max_header_bytes;
        let mut shutdown = std::pin::pin!(shutdown);
        // Polled once before announcing: a signal handler is installed on the first poll, and
        // a supervisor may signal as soon as it reads the announcement.
        let stop_at_once = (&mut shutdown).now_or_never().is_some();
        tracing::info!(
            address = %self.local_addr,
            "keel listening on {scheme}://{}",
            self.local_addr
        );
        let runtime = Runtime::start(&self.state, RuntimeOptions::from_config(&self.state));
        let server = match self.tls {
            Some(tls) => {
                let mut server = axum_server::from_tcp_rustls(self.listener, tls)?;
                server.http_builder().http1().max_buf_size(max_head);
                tokio::spawn(server.handle(handle.clone()).serve(make_service))
            }
            None => {
                let mut server = axum_server::from_tcp(self.listener)?;
                server.http_builder().http1().max_buf_size(max_head);
                tokio::spawn(server.handle(handle.clone()).serve(make_service))
            }
        };
        let mut server = AbortOnDrop(server);
        let _metrics_server = match self.metrics_listener {
            Some((listener, addr)) => {
                tracing::info!(address = %addr, "metrics on http://{addr}/metrics");
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let router = crate::metrics::listener_router(self.state.clone());
                Some(AbortOnDrop(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, router).await {
                        tracing::error!(error = %e, "the metrics listener failed");
                    }
                })))
            }
            None => None,
        };
        crate::metrics::handle();
        let upkeep = AbortOnDrop(tokio::spawn(crate::metrics::upkeep_forever()));
        let realtime: Vec<AbortOnDrop<()>> = self
            .state
            .realtime
            .start()
            .into_iter()
            .map(AbortOnDrop)
            .collect();
        let (relay_stop, relay_stopped) = tokio::sync::watch::channel(false);
        let relay = AbortOnDrop(tokio::spawn(crate::audit::outbox::run_relay(
            self.state.db.clone(),
            self.state.audit.bus.clone(),
            self.state.config.audit.relay_poll(),
            u64::from(self.state.config.audit.relay_batch),
            relay_stopped,
        )));
        let _statistics = AbortOnDrop(tokio::spawn(
            crate::store::planner::first_statistics_forever(self.state.db.clone()),
        ));
        let sync = AbortOnDrop(tokio::spawn(crate::auth::revocation::sync_forever(
            self.state.auth.revocations.clone(),
            self.state.db.clone(),
            self.state
                .config
                .redis_url
                .as_ref()
                .map(|u| u.expose().to_string()),
            crate::auth::revocation_poll(&self.state.config),
        )));
        let _cache_listener = self.state.config.redis_url.as_ref().map(|url| {
            AbortOnDrop(tokio::spawn(
                self.state.cache.clone().listen(url.expose().to_string()),
            ))
        });
        let stopped_at = tokio::select! {
            result = &mut server.0 => {
                result.context("server task failed")?.context("server failed")?;
                None
            }
            () = async {
                if !stop_at_once {
                    (&mut shutdown).await;
                }
            } => Some(Instant::now()),
        };
        let mut clean = true;
        let jobs_grace = self.state.config.jobs.shutdown_grace();
        let jobs = if let Some(stopped_at) = stopped_at {
            tracing::info!(
                in_flight_connections = handle.connection_count(),
                grace_secs = grace.as_secs(),
                "shutdown requested: no longer accepting; draining requests and running jobs"
            );
            // Long-lived realtime streams would hold the drain to its end: close them now
            // (clients reconnect to another node and resume from their last id).
            self.state.realtime.close_all();
            handle.graceful_shutdown(Some(grace));
            let http = async {
                (&mut server.0)
                    .await
                    .context("server task failed")?
                    .context("server failed")?;
                anyhow::Ok(stopped_at.elapsed() < grace)
            };
            let (http, jobs) = tokio::join!(http, runtime.shutdown(jobs_grace));
            clean = http?;
            jobs
        } else {
            runtime.shutdown(jobs_grace).await
        };
        drop(sync);
        drop(upkeep);
        drop(realtime);
        // The relay makes a last pass for what committed before shutdown; a bounded wait,
        // since whatever it leaves is delivered by the next node to run.
        let _ = relay_stop.send(true);
        let mut relay = relay;
        if tokio::time::timeout(Duration::from_secs(5), &mut relay.0)
            .await
            .is_err()
        {
            tracing::warn!(
                "the audit outbox relay did not stop in time; undelivered events stay queued"
            );
        }
        drop(relay);
        self.state.db.close().await;
        if jobs.released > 0 {
            clean = false;
            tracing::warn!(
                released = jobs.released,
                "jobs still running at the end of the grace period were released to the queue"
            );
        }
        if clean {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!("shutdown grace period ran out; remaining connections were closed");
        }
        Ok(ShutdownReport {
            clean,
            jobs_released: jobs.released,
        })
    }
}

async fn connect_redis(
    url: &str,
    config: &Config,
) -> anyhow::Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url).context("redis_url is not a valid Redis URL")?;
    let db = &config.database;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(db.connect_backoff_initial_ms))
        .with_max_delay(Duration::from_millis(db.connect_backoff_max_ms))
        .with_max_times(db.connect_attempts.saturating_sub(1) as usize);
    let connect = || {
        let client = client.clone();
        async move { redis::aio::ConnectionManager::new(client).await }
    };
    connect
        .retry(backoff)
        .notify(|err, delay| {
            tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "redis not reachable yet; retrying");
        })
        .await
        .context("could not connect to Redis")
}

/// The interactive API documentation at `/api/docs` (Swagger UI, served from the binary —
/// nothing is fetched at build or view time). It reads `/api/openapi.json` and keeps the
/// bearer token across reloads.
fn docs_router() -> Router {
    use utoipa_swagger_ui::{Config as UiConfig, SwaggerUi};
    let ui = SwaggerUi::new("/api/docs").config(
        UiConfig::new(["/api/openapi.json"])
            .persist_authorization(true)
            .try_it_out_enabled(true),
    );
    Router::from(ui).layer(axum::middleware::map_response(
        |mut r: axum::response::Response| async move {
            // The UI needs its own scripts and styles; everything else keeps `default-src 'none'`.
            r.headers_mut().insert(
                axum::http::header::CONTENT_SECURITY_POLICY,
                axum::http::HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
                ),
            );
            r
        },
    ))
}

fn describe_api(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let components = openapi.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT or keel_ API key")
                .description(Some(
                    "An access token from POST /api/v1/auth/login, or an API key. Scopes name the permission an operation needs.",
                ))
                .build(),
        ),
    );
    openapi.info.title = "Keel API".into();
    openapi.info.version = env!("CARGO_PKG_VERSION").into();
    openapi.info.contact = None;
    openapi.info.license = Some(utoipa::openapi::License::new("Apache-2.0"));
    openapi.info.description = Some(API_DESCRIPTION.into());
    let mut schemas = vec![(
        "Problem".to_string(),
        <crate::http::Problem as utoipa::PartialSchema>::schema(),
    )];
    <crate::http::Problem as utoipa::ToSchema>::schemas(&mut schemas);
    for (name, schema) in schemas {
        components.schemas.entry(name).or_insert(schema);
    }
    document_problems(openapi);
}

const API_DESCRIPTION: &str = "Keel: a multi-tenant business backend.

**Authentication** — send `Authorization: Bearer <token>`: an access token from `POST /api/v1/auth/login` (short-lived; renew it with `POST /api/v1/auth/refresh`) or an API key (`keel_…`). An operation's security scope names the permission it needs.

**Data isolation** — your organization comes from your credentials, never from the request. Another organization's resource answers 404, exactly like a missing one.

**Rate limits** — operations that name an `x-rate-limit-policy` are limited per IP, user or organization; responses carry `RateLimit-*` headers and a refusal is 429 with `Retry-After`.

**Errors** — every error is an RFC 9457 `application/problem+json` document with `instance` and `request_id`; a 422 lists each invalid field in `errors`.";

/// Adds the problem responses the kernel's own layers can give to every operation that does
/// not describe them itself, so the document lists every status a client can see: 401/403
/// where credentials are required, 400/413/415/422 where a body is read, 400/422 for
/// parameters, 404 for path parameters, 429 under a rate-limit policy, and 500/503 anywhere.
fn document_problems(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    crate::http::PROBLEM_CONTENT_TYPE,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build(),
        )
    };
    for item in openapi.paths.paths.values_mut() {
        let shared_params = item.parameters.clone().unwrap_or_default();
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let params: Vec<ParameterIn> = op
                .parameters
                .iter()
                .flatten()
                .chain(shared_params.iter())
                .filter_map(|p| match p {
                    RefOr::T(p) => Some(p.parameter_in.clone()),
                    RefOr::Ref(_) => None,
                })
                .collect();
            let mut wanted: Vec<(&str, &str)> = Vec::new();
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                wanted.push(("401", "Credentials missing, invalid, expired or revoked"));
                wanted.push(("403", "The credentials do not grant this operation"));
            }
            if op.request_body.is_some() {
                wanted.push(("400", "The body is not well-formed"));
                wanted.push(("413", "The body is larger than the limit"));
                wanted.push(("415", "The body's content type is not accepted"));
                wanted.push((
                    "422",
                    "The request is well-formed but invalid: `errors` names each field",
                ));
            }
            if params.iter().any(|p| matches!(p, ParameterIn::Query)) {
                wanted.push(("414", "The request URI is longer than the limit"));
            }
            if !params.is_empty() {
                wanted.push(("400", "A parameter is not well-formed"));
                wanted.push(("422", "A parameter is invalid: `errors` names it"));
            }
            if params.iter().any(|p| matches!(p, ParameterIn::Path)) {
                wanted.push(("404", "No such resource in your organization"));
            }
            if op
                .extensions
                .as_ref()
                .is_some_and(|e| e.contains_key("x-rate-limit-policy"))
            {
                wanted.push((
                    "429",
                    "Rate limit exceeded: retry after `Retry-After` seconds",
                ));
            }
            wanted.push((
                "500",
                "An unexpected error (its cause is logged, never shown)",
            ));
            wanted.push((
                "503",
                "Overloaded, timed out, or a dependency is unavailable",
            ));
            for (status, description) in wanted {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| problem(description));
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
