//! Test harness: spawns a real Keel server on a random port with a fresh database and talks
//! HTTP to it.
//!
//! The backend comes from the environment: `TEST_DATABASE_URL=postgres://…` runs on
//! PostgreSQL (each test gets its own schema, dropped afterwards), unset runs on a temporary
//! SQLite file. `TEST_REDIS_URL=redis://…` adds Redis. `TEST_LOG=debug` shows server logs.

pub mod auth;
pub mod fake;
pub mod isolation;
pub mod probe;
pub mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use keel_kernel::config::{Config, DatabaseKind, Secret};
use keel_kernel::module::Module;
use keel_kernel::server::{Application, ShutdownReport};
use keel_kernel::state::AppState;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use auth::{PASSWORD, Session};
pub use fake::FakeServer;
pub use proxy::TcpProxy;

/// The PostgreSQL server tests use, if any.
pub fn postgres_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
}

pub fn redis_url() -> Option<String> {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A fresh database for one test: a temporary SQLite file, or a PostgreSQL schema of its
/// own (dropped when this value is dropped). Several apps may share one (multi-node tests).
pub struct TestDb {
    dir: tempfile::TempDir,
    /// Unique per database: keeps shared state (Redis keys) of parallel tests apart.
    pub namespace: String,
    postgres: Option<(String, String)>,
    proxy: Option<TcpProxy>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("dir", &self.dir.path())
            .field("postgres_schema", &self.postgres.as_ref().map(|p| &p.1))
            .finish()
    }
}

impl TestDb {
    pub async fn new() -> anyhow::Result<Self> {
        Self::create(false).await
    }

    /// On PostgreSQL, routes connections through a [`TcpProxy`] that a test can take down.
    pub async fn with_proxy() -> anyhow::Result<Self> {
        Self::create(true).await
    }

    async fn create(proxied: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (postgres, proxy) = match postgres_url() {
            Some(url) => {
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let proxy = if proxied {
                    let target = pg_addr(&url)?;
                    Some(TcpProxy::start(target).await?)
                } else {
                    None
                };
                (Some((url, schema)), proxy)
            }
            None => (None, None),
        };
        Ok(Self {
            dir,
            namespace: format!("t{}", uuid::Uuid::new_v4().simple()),
            postgres,
            proxy,
        })
    }

    pub fn kind(&self) -> DatabaseKind {
        if self.postgres.is_some() {
            DatabaseKind::Postgres
        } else {
            DatabaseKind::Sqlite
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite file (SQLite only).
    pub fn sqlite_file(&self) -> PathBuf {
        self.dir.path().join("keel.db")
    }

    pub fn proxy(&self) -> Option<&TcpProxy> {
        self.proxy.as_ref()
    }

    /// A configuration for a server on this database: random port, fast retries, small pool.
    pub fn config(&self) -> Config {
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: self.dir.path().to_path_buf(),
            jwt_secret: Some(Secret::new("test-signing-secret-0123456789abcdef-xyz")),
            encryption_key: Some(Secret::new(
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            )),
            ..Config::default()
        };
        config.database.connect_attempts = 3;
        config.database.connect_backoff_initial_ms = 50;
        config.database.connect_backoff_max_ms = 200;
        config.database.acquire_timeout_ms = 2_000;
        config.http.shutdown_grace_secs = 5;
        // Password hashing strength is not under test here; keep sign-ins fast.
        config.auth.argon2_memory_kib = 256;
        config.auth.argon2_iterations = 1;
        config.auth.revocation_poll_ms = 100;
        // Limits stay on (their code runs in every test), keyed apart from other test
        // databases sharing the same Redis, and generous on sign-in routes so tests that
        // sign in often are not throttled; the rate-limit tests set their own numbers.
        config.rate_limits.namespace = format!("{}:", self.namespace);
        for policy in [
            "auth.login",
            "auth.register",
            "auth.recovery",
            "auth.refresh",
            "auth.change_password",
            "anonymous",
            "authenticated",
        ] {
            config.rate_limits.policies.insert(
                policy.to_string(),
                keel_kernel::limits::PolicyOverride {
                    limit: Some(100_000),
                    ..Default::default()
                },
            );
        }
        // Short job and scheduler knobs, so failures and take-overs happen within a test. The
        // job lease stays above the stalls a loaded CI machine shows (SQLite's write lock,
        // disk flushes): a live worker that cannot renew in time loses its job by design.
        // Tests about lease expiry shorten it.
        config.jobs.poll_interval_ms = 50;
        config.jobs.lease_ms = 2_000;
        config.jobs.heartbeat_interval_ms = 500;
        config.jobs.backoff_base_ms = 10;
        config.jobs.backoff_cap_ms = 50;
        config.jobs.shutdown_grace_ms = 3_000;
        config.scheduler.lease_ms = 500;
        config.scheduler.tick_resolution_ms = 50;
        if let Some((url, schema)) = &self.postgres {
            let url = match &self.proxy {
                Some(proxy) => replace_host_port(url, proxy.addr()),
                None => url.clone(),
            };
            // Tags this database's sessions, so dropping it can end any a finished test left
            // behind (a task cut off mid-transaction when the test's runtime shut down).
            let sep = if url.contains('?') { '&' } else { '?' };
            let url = format!("{url}{sep}application_name={schema}");
            config.database_url = Some(Secret::new(url));
            config.database.schema = Some(schema.clone());
            config.database.max_connections = 5;
        }
        if let Some(redis) = redis_url() {
            config.redis_url = Some(Secret::new(redis));
        }
        config
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((url, schema)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside any runtime we can block on: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    // A session of this test still open (its runtime is gone, so nobody will
                    // ever finish its transaction) would hold locks the DROP waits on forever.
                    let end = format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = '{schema}' AND pid <> pg_backend_pid()"
                    );
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(end))
                        .execute(&mut conn)
                        .await;
                    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

fn pg_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split("://").nth(1).context("bad url")?;
    let authority = rest.split('/').next().context("bad url")?;
    let hostport = authority.rsplit('@').next().context("bad url")?;
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    };
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .context("TEST_DATABASE_URL host must be an IP address and port")
}

fn replace_host_port(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{addr}/{path}", userinfo.unwrap_or_default())
}

type ConfigEdit = Box<dyn FnOnce(&mut Config) + Send>;

/// Builds a test server.
pub struct TestAppBuilder {
    modules: Vec<Arc<dyn Module>>,
    configure: Vec<ConfigEdit>,
    db: Option<Arc<TestDb>>,
}

impl Default for TestAppBuilder {
    fn default() -> Self {
        Self {
            modules: vec![Arc::new(probe::ProbeModule)],
            configure: Vec::new(),
            db: None,
        }
    }
}

impl TestAppBuilder {
    pub fn module(mut self, module: Arc<dyn Module>) -> Self {
        self.modules.push(module);
        self
    }

    /// Drops the default test module (for tests that count routes exactly).
    pub fn without_probe_module(mut self) -> Self {
        self.modules.clear();
        self
    }

    pub fn configure(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Runs on an existing database (several nodes, or a restart).
    pub fn database(mut self, db: Arc<TestDb>) -> Self {
        self.db = Some(db);
        self
    }

    /// Builds the application without serving it (to test start-up failures).
    pub async fn build(self) -> anyhow::Result<(Application, Arc<TestDb>)> {
        init_test_logging(&self.modules);
        let db = match self.db {
            Some(db) => db,
            None => Arc::new(TestDb::new().await?),
        };
        let mut config = db.config();
        for f in self.configure {
            f(&mut config);
        }
        let app = Application::build(config, self.modules).await?;
        Ok((app, db))
    }

    pub async fn spawn(self) -> anyhow::Result<TestApp> {
        let (app, db) = self.build().await?;
        Ok(TestApp::serve(app, db))
    }
}

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>` (or `https://localhost:<port>` with TLS).
    pub base_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub db: Arc<TestDb>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<ShutdownReport>>>,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp").field("addr", &self.addr).finish()
    }
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    /// A server with the default test module on a fresh database.
    pub async fn spawn() -> TestApp {
        match Self::builder().spawn().await {
            Ok(app) => app,
            Err(e) => panic!("test server did not start: {e:#}"),
        }
    }

    /// Serves an application built with [`TestAppBuilder::build`] (a test may prepare its
    /// state first, e.g. subscribe to events before the server's background tasks start).
    pub fn serve(app: Application, db: Arc<TestDb>) -> TestApp {
        let addr = app.local_addr();
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            base_url: format!("http://{addr}"),
            client: client(),
            state,
            db,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// Stops the server as SIGTERM would and returns how it went.
    pub async fn stop(mut self) -> ShutdownReport {
        self.stop_inner().await
    }

    async fn stop_inner(&mut self) -> ShutdownReport {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Ok(report)) => report,
                Ok(Err(e)) => panic!("server failed: {e:#}"),
                Err(e) => panic!("server task panicked: {e}"),
            },
            None => ShutdownReport {
                clean: true,
                jobs_released: 0,
            },
        }
    }

    /// Requests shutdown without waiting (for drain tests); `join` waits.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn join(mut self) -> ShutdownReport {
        self.stop_inner().await
    }

    /// Stops the server as a crash would: its tasks (HTTP, job workers, scheduler) are
    /// dropped mid-flight, nothing is released or handed on. Its database handle stays open
    /// in `state` until the `TestApp` is dropped.
    pub async fn kill(&mut self) {
        // Abort before dropping the shutdown sender: a dropped sender would start a graceful
        // shutdown.
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.shutdown.take();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A client that keeps no cookies and follows no redirects (tests see exactly what the server says).
pub fn client() -> reqwest::Client {
    keel_kernel::server::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("http client: {e}"))
}

fn init_test_logging(modules: &[Arc<dyn Module>]) {
    if let Ok(level) = std::env::var("TEST_LOG") {
        let mut config = Config {
            log: keel_kernel::config::LogConfig {
                level,
                format: keel_kernel::config::LogFormat::Pretty,
                ..Default::default()
            },
            ..Config::default()
        };
        config.log.redaction.module_fields = keel_kernel::module::log_redacted_fields(modules);
        keel_kernel::observe::init_logging(&config);
    }
}

/// Reads a response as a problem document, asserting its content type.
pub async fn problem(response: reqwest::Response) -> serde_json::Value {
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(
        content_type, "application/problem+json",
        "an error must be a problem document"
    );
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("problem body is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_keep_credentials_and_path() {
        let addr: SocketAddr = "127.0.0.1:6000".parse().expect("addr");
        assert_eq!(
            replace_host_port("postgres://u:p@127.0.0.1:5432/test", addr),
            "postgres://u:p@127.0.0.1:6000/test"
        );
        assert_eq!(
            replace_host_port("postgres://127.0.0.1/test", addr),
            "postgres://127.0.0.1:6000/test"
        );
        assert_eq!(
            pg_addr("postgres://localhost/test").expect("addr"),
            "127.0.0.1:5432".parse::<SocketAddr>().expect("addr")
        );
    }
}
