//! Configuration: typed, layered (defaults < `keel.toml` < `KEEL_*` environment variables),
//! and validated before anything listens.
//!
//! Top-level keys are the names operators script against (`KEEL_LISTEN`, `KEEL_DATA_DIR`,
//! `KEEL_DATABASE_URL`, `KEEL_REDIS_URL`, `KEEL_ENV`, `KEEL_JWT_SECRET`,
//! `KEEL_ENCRYPTION_KEY`, `KEEL_CORS_ORIGINS`); sections mirror `keel.toml` tables and are
//! reached with a double underscore (`KEEL_DATABASE__MAX_CONNECTIONS=32`,
//! `KEEL_HTTP__REQUEST_TIMEOUT_SECS=10`). `KEEL_CONFIG` names another configuration file.
//!
//! Every secret is a [`Secret`]: its `Debug`, `Display` and `Serialize` never show the value,
//! so `keel config check` and logs cannot leak it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret value: redacted wherever it is printed or serialised.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call sites that need it are few and easy to audit with grep.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

/// Development (the default) or production. Production refuses unsafe settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Development,
    Production,
}

/// Log line format; `auto` means JSON in production and readable lines in development.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Json,
    Pretty,
}

/// The whole configuration. Field names are the `keel.toml` keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `KEEL_ENV`: `development` | `production`.
    pub env: Environment,
    /// `KEEL_LISTEN`: the address the HTTP server binds.
    pub listen: String,
    /// `KEEL_DATA_DIR`: where the embedded database, generated secrets and files live.
    pub data_dir: PathBuf,
    /// `KEEL_DATABASE_URL`: `sqlite://…` or `postgres://…`; unset means SQLite in the data dir.
    pub database_url: Option<Secret>,
    /// `KEEL_REDIS_URL`: unset means no Redis (shared state stays in process).
    pub redis_url: Option<Secret>,
    /// `KEEL_JWT_SECRET`: the access-token signing secret (≥ 32 bytes).
    pub jwt_secret: Option<Secret>,
    /// `KEEL_ENCRYPTION_KEY`: the field-encryption key, 64 hex characters (32 bytes).
    pub encryption_key: Option<Secret>,
    /// `KEEL_PREVIOUS_ENCRYPTION_KEYS`: older field-encryption keys, kept only to decrypt what
    /// they encrypted until `keel keys rotate` has re-encrypted it (comma separated or a list).
    #[serde(deserialize_with = "secret_list")]
    pub previous_encryption_keys: Vec<Secret>,
    /// `KEEL_CORS_ORIGINS`: allowed browser origins, comma separated; empty = same-origin only.
    #[serde(deserialize_with = "string_or_list")]
    pub cors_origins: Vec<String>,
    /// Modules to switch off (e.g. `["trade"]`).
    #[serde(deserialize_with = "string_or_list")]
    pub disabled_modules: Vec<String>,
    /// `[modules.<name>]`: each app's own settings (e.g. `[modules.trade]`), checked by the
    /// module at start-up (`KEEL_MODULES__TRADE__OVERDUE_DAYS=300`).
    pub modules: std::collections::BTreeMap<String, serde_json::Value>,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub metrics: MetricsConfig,
    /// `[rate_limits]`: switch and per-policy overrides (`KEEL_RATE_LIMITS__ENABLED=false`).
    pub rate_limits: crate::limits::RateLimitConfig,
    pub jobs: JobsConfig,
    pub scheduler: SchedulerConfig,
    /// `[audit]`: retention, the outbox relay and exports.
    pub audit: crate::audit::AuditConfig,
    /// `[outbound]`: timeouts, retries, circuit breakers and bulkheads of outbound calls.
    pub outbound: crate::integrations::config::OutboundConfig,
    /// `[llm]`: the LLM provider and its response cache (`KEEL_LLM__API_KEY`).
    pub llm: crate::integrations::config::LlmConfig,
    /// `[webhooks]`: incoming verification and outgoing deliveries.
    pub webhooks: crate::integrations::config::WebhooksConfig,
    /// `[files]`: where uploaded files are stored, and their size limit.
    pub files: crate::storage::FilesConfig,
    /// `[extraction]`: document extraction engines, limits and the confidence threshold.
    pub extraction: crate::extract::ExtractionConfig,
    /// `[realtime]`: connections, buffers, heartbeats and the resume window.
    pub realtime: crate::realtime::RealtimeConfig,
    /// `[smtp]`: the email transport for notifications (unset host = email disabled).
    pub smtp: crate::notify::SmtpConfig,
    /// `[sms]`: a Twilio-compatible SMS API (unset base_url = SMS disabled).
    pub sms: crate::notify::SmsConfig,
    /// `[cache]`: the shared cache (`KEEL_CACHE__MAX_ENTRIES`, `KEEL_CACHE__REDIS`).
    pub cache: crate::cache::CacheConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            env: Environment::Development,
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            redis_url: None,
            jwt_secret: None,
            encryption_key: None,
            previous_encryption_keys: Vec::new(),
            cors_origins: Vec::new(),
            disabled_modules: Vec::new(),
            modules: Default::default(),
            database: DatabaseConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            metrics: MetricsConfig::default(),
            rate_limits: crate::limits::RateLimitConfig::default(),
            jobs: JobsConfig::default(),
            scheduler: SchedulerConfig::default(),
            audit: crate::audit::AuditConfig::default(),
            outbound: Default::default(),
            llm: Default::default(),
            webhooks: Default::default(),
            files: crate::storage::FilesConfig::default(),
            extraction: crate::extract::ExtractionConfig::default(),
            realtime: crate::realtime::RealtimeConfig::default(),
            smtp: crate::notify::SmtpConfig::default(),
            sms: crate::notify::SmsConfig::default(),
            cache: crate::cache::CacheConfig::default(),
        }
    }
}

/// `[database]`: pool and start-up behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Largest pool size (`KEEL_DATABASE__MAX_CONNECTIONS`).
    pub max_connections: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// How long a request waits for a pooled connection before failing.
    pub acquire_timeout_ms: u64,
    /// Connection attempts at start-up before giving up.
    pub connect_attempts: u32,
    /// First delay between connection attempts; it doubles up to `connect_backoff_max_ms`.
    pub connect_backoff_initial_ms: u64,
    pub connect_backoff_max_ms: u64,
    /// Apply pending migrations when `keel serve` starts.
    pub migrate_on_start: bool,
    /// PostgreSQL schema to use (default `public`); lets several deployments share a database.
    pub schema: Option<String>,
    /// SQLite busy timeout: how long a writer waits for the write lock.
    pub sqlite_busy_timeout_ms: u64,
    /// SQLite reads up to this many MiB of the database file through a memory map (the OS
    /// page cache, no copy into each connection's own cache); 0 (the default) reads pages
    /// into each connection's cache. Helps read-heavy nodes; under steady writes commits
    /// stalled (most likely every connection remapping the growing file; PERFORMANCE.md).
    pub sqlite_mmap_mib: u64,
    /// A query slower than this is logged (by operation name, never its values) and counted.
    pub slow_query_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            min_connections: 1,
            acquire_timeout_ms: 5_000,
            connect_attempts: 10,
            connect_backoff_initial_ms: 2_000,
            connect_backoff_max_ms: 30_000,
            migrate_on_start: true,
            schema: None,
            sqlite_busy_timeout_ms: 5_000,
            sqlite_mmap_mib: 0,
            slow_query_ms: 250,
        }
    }
}

/// `[http]`: the server and its protective limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Longest a request may take before it is answered with 503.
    pub request_timeout_secs: u64,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Bound on draining in-flight requests at shutdown.
    pub shutdown_grace_secs: u64,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs, e.g. `10.0.0.0/8`).
    #[serde(deserialize_with = "string_or_list")]
    pub trusted_proxies: Vec<String>,
    /// Compress responses (gzip, brotli) when the client accepts it.
    pub compression: bool,
    /// Requests handled at once by this node; more are answered 503 at once instead of
    /// queueing without bound (`/health` and `/metrics` are exempt). 0 = no cap.
    pub max_in_flight: usize,
    /// Longest request target (path and query) accepted; longer answers 414.
    pub max_url_bytes: usize,
    /// Largest request head (request line and headers); larger answers 431.
    pub max_header_bytes: usize,
    /// TLS termination in the binary (both paths set = HTTPS).
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            request_timeout_secs: 30,
            body_limit_bytes: 2 * 1024 * 1024,
            shutdown_grace_secs: 30,
            trusted_proxies: Vec::new(),
            compression: true,
            max_in_flight: 4096,
            max_url_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            tls_cert_path: None,
            tls_key_path: None,
        }
    }
}

/// `[log]`: log level filter, format and redaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info,keel_kernel=debug`. `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
    /// Any operation slower than this (a request, a job, an outbound call, a scheduled run)
    /// logs a warning with its name and duration.
    pub slow_operation_ms: u64,
    /// `[log.redaction]`: masking of personal data and secrets in log lines (on by default).
    pub redaction: crate::redact::RedactionConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
            slow_operation_ms: 1_000,
            redaction: crate::redact::RedactionConfig::default(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// When set, `GET /metrics` requires `Authorization: Bearer <token>`
    /// (`KEEL_METRICS__TOKEN`).
    pub token: Option<Secret>,
    /// When set (e.g. `127.0.0.1:9464`), `GET /metrics` is served on this address only, and
    /// the API listener answers 404 for it: scrapers reach it on a private interface.
    pub listen: Option<String>,
}

/// `[auth]`: tokens, sessions, brute-force protection and password hashing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Access-token (JWT) lifetime.
    pub access_token_ttl_secs: u64,
    /// A refresh token expires when unused this long; each use renews it.
    pub refresh_token_ttl_secs: u64,
    /// A session ends this long after sign-in, however often it is refreshed.
    pub session_max_age_secs: u64,
    /// A just-rotated refresh token replayed within this window yields the same new pair
    /// (two tabs refreshing at once) instead of revoking the session.
    pub refresh_reuse_grace_secs: u64,
    pub issuer: String,
    pub audience: String,
    /// Older signing secrets that still verify tokens until they expire (key rotation).
    #[serde(deserialize_with = "secret_list")]
    pub previous_jwt_secrets: Vec<Secret>,
    /// Consecutive failed sign-ins that lock an account, and for how long.
    pub lockout_threshold: u32,
    pub lockout_secs: u64,
    /// Failed sign-ins from one client IP within the window that block the IP, and for how long.
    pub ip_block_threshold: u32,
    pub ip_block_window_secs: u64,
    pub ip_block_secs: u64,
    pub password_min_length: usize,
    /// argon2id parameters for new hashes (OWASP: 19 MiB, 2 iterations, 1 lane).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Password hashes computed at once (0 = one per CPU): a sign-in storm queues here
    /// instead of starving every other request.
    pub hash_concurrency: usize,
    pub email_verification_ttl_secs: u64,
    pub password_reset_ttl_secs: u64,
    pub invitation_ttl_secs: u64,
    pub mfa_challenge_ttl_secs: u64,
    /// How often each node reads revocations made by other nodes (Redis, when configured,
    /// delivers them at once as well).
    pub revocation_poll_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 7 * 24 * 3600,
            session_max_age_secs: 30 * 24 * 3600,
            refresh_reuse_grace_secs: 10,
            issuer: "keel".into(),
            audience: "keel-api".into(),
            previous_jwt_secrets: Vec::new(),
            lockout_threshold: 5,
            lockout_secs: 15 * 60,
            ip_block_threshold: 10,
            ip_block_window_secs: 15 * 60,
            ip_block_secs: 15 * 60,
            password_min_length: 12,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_concurrency: 0,
            email_verification_ttl_secs: 24 * 3600,
            password_reset_ttl_secs: 3600,
            invitation_ttl_secs: 7 * 24 * 3600,
            mfa_challenge_ttl_secs: 300,
            revocation_poll_ms: 500,
        }
    }
}

/// `[jobs]`: durable background jobs and the workers of this node.
///
/// Durations are in milliseconds so tests can run with short knobs. Queue concurrency is per
/// node: three nodes with `ocr = 2` run up to six OCR jobs at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Run workers inside `keel serve` (`KEEL_JOBS__ENABLED`). `keel worker` always runs them.
    pub enabled: bool,
    /// The queues this node works (`KEEL_JOBS__QUEUES=ocr,export`); empty means every queue a
    /// registered job type uses. `keel worker --queues` overrides it.
    #[serde(deserialize_with = "string_or_list")]
    pub queues: Vec<String>,
    /// Jobs a queue runs at once on this node (`KEEL_JOBS__CONCURRENCY__OCR=2`). A queue not
    /// listed runs one job at a time.
    pub concurrency: BTreeMap<String, u32>,
    /// How often an idle queue looks for due jobs. Jobs enqueued in this process wake their
    /// queue at once; this bounds the delay for jobs enqueued by other nodes and for retries.
    pub poll_interval_ms: u64,
    /// How long a claim holds a job without a heartbeat; a job whose worker died runs again
    /// after this.
    pub lease_ms: u64,
    /// How often a worker extends the leases of the jobs it runs (shorter than `lease_ms`).
    pub heartbeat_interval_ms: u64,
    /// Retry delay: a random duration up to `base × 2^(attempt-1)`, capped (full jitter).
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// Attempts for a job type that does not set its own.
    pub default_max_attempts: u32,
    /// Time limit of one attempt for a job type that does not set its own.
    pub default_time_limit_ms: u64,
    /// At shutdown, how long running jobs may take to finish before they are released back
    /// to the queue (their attempt not counted).
    pub shutdown_grace_ms: u64,
    /// Succeeded and cancelled jobs are removed this many days after they finished.
    pub retention_days: u32,
    /// Failed and dead jobs (which an admin may still retry) are kept longer.
    pub failed_retention_days: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queues: Vec::new(),
            concurrency: BTreeMap::from([
                ("default".to_string(), 4),
                ("email".to_string(), 8),
                ("export".to_string(), 2),
                ("ocr".to_string(), 2),
            ]),
            poll_interval_ms: 1_000,
            lease_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 3_600_000,
            default_max_attempts: 10,
            default_time_limit_ms: 300_000,
            shutdown_grace_ms: 30_000,
            retention_days: 30,
            failed_retention_days: 90,
        }
    }
}

impl JobsConfig {
    /// How many jobs `queue` runs at once on this node.
    pub fn concurrency_of(&self, queue: &str) -> u32 {
        self.concurrency.get(queue).copied().unwrap_or(1).max(1)
    }

    // The getters bound what validation refuses anyway, for configurations built in code.

    pub fn poll_interval(&self) -> Duration {
        bounded_ms(self.poll_interval_ms)
    }

    pub fn lease(&self) -> Duration {
        bounded_ms(self.lease_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        bounded_ms(self.heartbeat_interval_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms.min(MAX_DURATION_MS))
    }
}

/// `[scheduler]`: periodic tasks, run once per tick across all nodes by one leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Take part in leader election on this node (`KEEL_SCHEDULER__ENABLED`).
    pub enabled: bool,
    /// How long leadership lasts without renewal: when the leader dies, another node takes
    /// over within this period.
    pub lease_ms: u64,
    /// How often the leader looks for due ticks (and a follower for a vacant lease).
    pub tick_resolution_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_ms: 10_000,
            tick_resolution_ms: 1_000,
        }
    }
}

impl SchedulerConfig {
    pub fn lease(&self) -> Duration {
        bounded_ms(self.lease_ms)
    }

    pub fn tick_resolution(&self) -> Duration {
        bounded_ms(self.tick_resolution_ms)
    }
}

/// Milliseconds as a duration between 1 ms and [`MAX_DURATION_MS`].
fn bounded_ms(ms: u64) -> Duration {
    Duration::from_millis(ms.clamp(1, MAX_DURATION_MS))
}

/// A queue name: lowercase letters, digits, `_`, `-` and `.`, at most 64 characters.
pub fn is_queue_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

impl JobsConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        for queue in &self.queues {
            if !is_queue_name(queue) {
                problems.push(format!(
                    "jobs.queues: `{queue}` is not a queue name (lowercase letters, digits, _ - .)"
                ));
            }
        }
        for (queue, n) in &self.concurrency {
            if !is_queue_name(queue) {
                problems.push(format!(
                    "jobs.concurrency: `{queue}` is not a queue name (lowercase letters, digits, _ - .)"
                ));
            }
            if *n == 0 {
                problems.push(format!(
                    "jobs.concurrency.{queue}: must be at least 1 (list the node's queues in jobs.queues to leave one out)"
                ));
            }
        }
        for (key, value) in [
            ("poll_interval_ms", self.poll_interval_ms),
            ("lease_ms", self.lease_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("backoff_base_ms", self.backoff_base_ms),
            ("default_time_limit_ms", self.default_time_limit_ms),
        ] {
            if value == 0 {
                problems.push(format!("jobs.{key}: must be greater than 0"));
            }
        }
        for (key, value) in [
            ("poll_interval_ms", self.poll_interval_ms),
            ("lease_ms", self.lease_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("backoff_base_ms", self.backoff_base_ms),
            ("backoff_cap_ms", self.backoff_cap_ms),
            ("default_time_limit_ms", self.default_time_limit_ms),
            ("shutdown_grace_ms", self.shutdown_grace_ms),
        ] {
            if value > MAX_DURATION_MS {
                problems.push(format!(
                    "jobs.{key}: must be at most {MAX_DURATION_MS} (7 days)"
                ));
            }
        }
        if self.heartbeat_interval_ms >= self.lease_ms {
            problems.push(
                "jobs.heartbeat_interval_ms: must be shorter than jobs.lease_ms, or leases run out while jobs still run"
                    .into(),
            );
        }
        if self.backoff_cap_ms < self.backoff_base_ms {
            problems.push("jobs.backoff_cap_ms: must not be below jobs.backoff_base_ms".into());
        }
        if self.default_max_attempts == 0 {
            problems.push("jobs.default_max_attempts: must be at least 1".into());
        }
        for (key, value) in [
            ("retention_days", self.retention_days),
            ("failed_retention_days", self.failed_retention_days),
        ] {
            if value == 0 || value > 36_500 {
                problems.push(format!("jobs.{key}: must be between 1 and 36500"));
            }
        }
    }
}

/// The longest duration a `[jobs]` or `[scheduler]` setting accepts: 7 days.
const MAX_DURATION_MS: u64 = 7 * 24 * 3_600_000;

impl SchedulerConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.lease_ms > MAX_DURATION_MS {
            problems.push(format!(
                "scheduler.lease_ms: must be at most {MAX_DURATION_MS} (7 days)"
            ));
        }
        if self.lease_ms == 0 {
            problems.push("scheduler.lease_ms: must be greater than 0".into());
        }
        if self.tick_resolution_ms == 0 {
            problems.push("scheduler.tick_resolution_ms: must be greater than 0".into());
        }
        if self.tick_resolution_ms >= self.lease_ms {
            problems.push(
                "scheduler.tick_resolution_ms: must be shorter than scheduler.lease_ms".into(),
            );
        }
    }
}

/// Accepts either a TOML/JSON list or a comma-separated string (as environment variables are).
pub(crate) fn string_or_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(deserializer)? {
        Raw::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Raw::Many(v) => v.into_iter().map(|s| s.trim().to_string()).collect(),
    })
}

fn secret_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Secret>, D::Error> {
    Ok(string_or_list(deserializer)?
        .into_iter()
        .map(Secret::new)
        .collect())
}

/// Everything wrong with a configuration, one message per problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// An explicit file (`--config` or `KEEL_CONFIG`); absent means `./keel.toml` if it exists.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Loads defaults < file < `KEEL_*` environment, and validates the shape (types, unknown
    /// keys). Semantic checks are [`Config::validate`].
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        let explicit = source
            .file
            .clone()
            .or_else(|| std::env::var_os("KEEL_CONFIG").map(PathBuf::from));
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match &explicit {
            Some(path) if !path.exists() => {
                return Err(ConfigError::one(format!(
                    "configuration file {} does not exist",
                    path.display()
                )));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file("keel.toml")),
        }
        figment = figment.merge(Env::prefixed("KEEL_").split("__").ignore(&["config"]));
        figment.extract::<Config>().map_err(|e| ConfigError {
            problems: e.into_iter().map(describe_figment_error).collect(),
        })
    }

    /// Semantic validation: every problem is reported, not just the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "listen: `{}` is not a socket address like 127.0.0.1:8080",
                self.listen
            ));
        }
        if let Some(addr) = &self.metrics.listen
            && addr.parse::<SocketAddr>().is_err()
        {
            problems.push(format!(
                "metrics.listen: `{addr}` is not a socket address like 127.0.0.1:9464"
            ));
        }
        if let Some(url) = &self.database_url
            && DatabaseKind::of(url.expose()).is_none()
        {
            problems.push(
                "database_url: must start with sqlite:// or postgres:// (postgresql://)".into(),
            );
        }
        if let Some(url) = &self.redis_url {
            let u = url.expose();
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                problems.push("redis_url: must start with redis:// or rediss://".into());
            }
        }
        if let Some(secret) = &self.jwt_secret
            && secret.expose().len() < 32
        {
            problems.push(format!(
                "jwt_secret: must be at least 32 bytes, got {}",
                secret.expose().len()
            ));
        }
        if let Some(key) = &self.encryption_key
            && parse_encryption_key(key.expose()).is_none()
        {
            problems.push("encryption_key: must be exactly 64 hex characters (32 bytes)".into());
        }
        for (i, key) in self.previous_encryption_keys.iter().enumerate() {
            match parse_encryption_key(key.expose()) {
                None => problems.push(format!(
                    "previous_encryption_keys[{i}]: must be exactly 64 hex characters (32 bytes)"
                )),
                Some(k) => {
                    if self
                        .encryption_key
                        .as_ref()
                        .and_then(|a| parse_encryption_key(a.expose()))
                        == Some(k)
                    {
                        problems.push(format!(
                            "previous_encryption_keys[{i}]: is the active encryption_key; list only older keys"
                        ));
                    }
                }
            }
        }
        if !self.previous_encryption_keys.is_empty() && self.encryption_key.is_none() {
            problems
                .push("previous_encryption_keys: set only with an active encryption_key".into());
        }
        for origin in &self.cors_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                problems.push(format!(
                    "cors_origins: `{origin}` is not an origin like https://app.example.com"
                ));
            }
        }
        for proxy in &self.http.trusted_proxies {
            if parse_proxy(proxy).is_none() {
                problems.push(format!(
                    "http.trusted_proxies: `{proxy}` is not an IP address or CIDR"
                ));
            }
        }
        if self.http.body_limit_bytes == 0 {
            problems.push("http.body_limit_bytes: must be greater than 0".into());
        }
        if self.http.max_url_bytes < 256 {
            problems.push("http.max_url_bytes: must be at least 256".into());
        }
        if self.http.max_header_bytes < 8192 {
            problems.push("http.max_header_bytes: must be at least 8192".into());
        }
        if self.http.request_timeout_secs == 0 {
            problems.push("http.request_timeout_secs: must be greater than 0".into());
        }
        match (&self.http.tls_cert_path, &self.http.tls_key_path) {
            (Some(_), None) | (None, Some(_)) => problems.push(
                "http.tls_cert_path and http.tls_key_path: set both to enable TLS, or neither"
                    .into(),
            ),
            (Some(cert), Some(key)) => {
                for (name, path) in [("tls_cert_path", cert), ("tls_key_path", key)] {
                    if !path.is_file() {
                        problems.push(format!("http.{name}: {} is not a file", path.display()));
                    }
                }
            }
            (None, None) => {}
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections: must be greater than 0".into());
        }
        if self.database.min_connections > self.database.max_connections {
            problems.push("database.min_connections: must not exceed max_connections".into());
        }
        if self.database.connect_attempts == 0 {
            problems.push("database.connect_attempts: must be at least 1".into());
        }
        if let Some(schema) = &self.database.schema
            && !is_identifier(schema)
        {
            problems.push(format!(
                "database.schema: `{schema}` must be letters, digits and underscores"
            ));
        }
        let a = &self.auth;
        for (name, value) in [
            ("auth.access_token_ttl_secs", a.access_token_ttl_secs),
            ("auth.refresh_token_ttl_secs", a.refresh_token_ttl_secs),
            ("auth.session_max_age_secs", a.session_max_age_secs),
            ("auth.lockout_secs", a.lockout_secs),
            ("auth.ip_block_window_secs", a.ip_block_window_secs),
            ("auth.ip_block_secs", a.ip_block_secs),
            (
                "auth.email_verification_ttl_secs",
                a.email_verification_ttl_secs,
            ),
            ("auth.password_reset_ttl_secs", a.password_reset_ttl_secs),
            ("auth.invitation_ttl_secs", a.invitation_ttl_secs),
            ("auth.mfa_challenge_ttl_secs", a.mfa_challenge_ttl_secs),
            ("auth.revocation_poll_ms", a.revocation_poll_ms),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be greater than 0"));
            }
        }
        if a.lockout_threshold == 0 || a.ip_block_threshold == 0 {
            problems.push(
                "auth.lockout_threshold and auth.ip_block_threshold: must be at least 1".into(),
            );
        }
        if a.password_min_length < 8 {
            problems.push("auth.password_min_length: must be at least 8".into());
        }
        if a.argon2_memory_kib < 8 * a.argon2_parallelism.max(1)
            || a.argon2_iterations == 0
            || a.argon2_parallelism == 0
        {
            problems.push("auth.argon2_*: memory must be at least 8 KiB per lane, iterations and parallelism at least 1".into());
        }
        if self.is_production() && (a.argon2_memory_kib < 19 * 1024 || a.argon2_iterations < 2) {
            problems.push(
                "auth.argon2_*: production needs at least 19456 KiB and 2 iterations (OWASP)"
                    .into(),
            );
        }
        if a.access_token_ttl_secs > a.refresh_token_ttl_secs {
            problems
                .push("auth.access_token_ttl_secs: must not exceed refresh_token_ttl_secs".into());
        }
        for (i, s) in a.previous_jwt_secrets.iter().enumerate() {
            if s.expose().len() < 32 {
                problems.push(format!(
                    "auth.previous_jwt_secrets[{i}]: must be at least 32 bytes"
                ));
            }
        }
        self.jobs.validate(&mut problems);
        self.scheduler.validate(&mut problems);
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problems.push(format!(
                "log.level: `{}` is not a valid filter",
                self.log.level
            ));
        }
        // Policy names are checked at start-up, once every module's policies are known.
        problems.extend(self.rate_limits.value_problems());
        problems.extend(self.audit.value_problems());
        problems.extend(self.outbound.value_problems());
        problems.extend(self.llm.value_problems());
        problems.extend(self.webhooks.value_problems());
        problems.extend(
            self.files
                .value_problems(self.http.body_limit_bytes, self.is_production()),
        );
        problems.extend(self.extraction.value_problems());
        problems.extend(self.realtime.value_problems());
        problems.extend(self.smtp.value_problems(self.is_production()));
        problems.extend(self.sms.value_problems(self.is_production()));
        problems.extend(self.cache.value_problems());
        // Building the redactor here means logging cannot fail to start for a bad name later.
        if let Err(e) = crate::redact::Redactor::new(&self.log.redaction, None) {
            problems.push(e.to_string());
        }
        if self.env == Environment::Production {
            if self.jwt_secret.is_none() {
                problems.push(
                    "jwt_secret: required in production (KEEL_JWT_SECRET, at least 32 bytes)"
                        .into(),
                );
            }
            if self.encryption_key.is_none() {
                problems.push(
                    "encryption_key: required in production (KEEL_ENCRYPTION_KEY, 64 hex characters; `keel keys generate` makes one)"
                        .into(),
                );
            }
            if self.cors_origins.iter().any(|o| o == "*") {
                problems.push(
                    "cors_origins: a wildcard origin is refused in production; list the origins"
                        .into(),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The database to use: the configured URL, or SQLite in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_string(),
            None => format!(
                "sqlite://{}",
                self.data_dir.join("keel.db").to_string_lossy()
            ),
        }
    }

    pub fn database_kind(&self) -> DatabaseKind {
        DatabaseKind::of(&self.database_url()).unwrap_or(DatabaseKind::Sqlite)
    }

    /// The separate metrics address, when `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.metrics
            .listen
            .as_deref()
            .map(|a| {
                a.parse()
                    .map_err(|_| ConfigError::one(format!("metrics.listen: `{a}` is not valid")))
            })
            .transpose()
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|_| ConfigError::one(format!("listen: `{}` is not valid", self.listen)))
    }

    pub fn is_production(&self) -> bool {
        self.env == Environment::Production
    }

    pub fn trusted_proxies(&self) -> Vec<IpNet> {
        self.http
            .trusted_proxies
            .iter()
            .filter_map(|p| parse_proxy(p))
            .collect()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.http.request_timeout_secs)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl DatabaseKind {
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

pub fn parse_encryption_key(hex_key: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_key.trim()).ok()?;
    bytes.try_into().ok()
}

fn parse_proxy(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn describe_figment_error(e: figment::Error) -> String {
    let key = e.path.join(".");
    let origin = e
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    let kind = e.kind.to_string();
    if key.is_empty() {
        format!("{kind}{origin}")
    } else {
        format!("{key}: {kind}{origin}")
    }
}

/// Secrets generated for development, stored once in the data directory.
#[derive(Debug, Serialize, Deserialize)]
struct DevSecrets {
    jwt_secret: String,
    encryption_key: String,
}

/// In development, fills missing secrets from `<data_dir>/dev-secrets.toml`, generating that
/// file (mode 0600) on first start so tokens and encrypted data survive restarts. Returns the
/// path when it generated or used the file, so the caller can say so loudly. Production
/// never reaches this: validation has already refused missing secrets.
pub fn ensure_dev_secrets(config: &mut Config) -> std::io::Result<Option<(PathBuf, bool)>> {
    if config.is_production() || (config.jwt_secret.is_some() && config.encryption_key.is_some()) {
        return Ok(None);
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let path = config.data_dir.join("dev-secrets.toml");
    let (secrets, created) = if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        let parsed: DevSecrets = toml::from_str(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        (parsed, false)
    } else {
        let secrets = DevSecrets {
            jwt_secret: random_hex(48),
            encryption_key: random_hex(32),
        };
        let text = toml::to_string(&secrets).map_err(std::io::Error::other)?;
        write_owner_only(&path, text.as_bytes())?;
        (secrets, true)
    };
    if config.jwt_secret.is_none() {
        config.jwt_secret = Some(Secret::new(secrets.jwt_secret));
    }
    if config.encryption_key.is_none() {
        config.encryption_key = Some(Secret::new(secrets.encryption_key));
    }
    Ok(Some((path, created)))
}

/// Random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Writes a file readable and writable by its owner only (created with mode 0600, never
/// briefly world-readable).
pub fn write_owner_only(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_for_development() {
        let config = Config::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert!(config.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn production_without_secrets_reports_each_problem() {
        let config = Config {
            env: Environment::Production,
            cors_origins: vec!["*".into()],
            ..Config::default()
        };
        let err = config.validate().expect_err("must be refused");
        let all = err.problems.join("\n");
        assert!(all.contains("jwt_secret"), "{all}");
        assert!(all.contains("encryption_key"), "{all}");
        assert!(all.contains("wildcard"), "{all}");
        assert_eq!(err.problems.len(), 3);
    }

    #[test]
    fn short_jwt_secret_and_bad_key_are_refused() {
        let config = Config {
            jwt_secret: Some(Secret::new("short")),
            encryption_key: Some(Secret::new("zz")),
            ..Config::default()
        };
        let err = config.validate().expect_err("must be refused");
        assert_eq!(err.problems.len(), 2, "{:?}", err.problems);
    }

    #[test]
    fn secrets_never_print() {
        let config = Config {
            jwt_secret: Some(Secret::new("a-very-secret-value-that-is-long-enough")),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("a-very-secret"));
        assert!(!config.to_redacted_toml().contains("a-very-secret"));
    }

    #[test]
    fn job_and_scheduler_knobs_are_checked() {
        let mut config = Config::default();
        config.jobs.heartbeat_interval_ms = config.jobs.lease_ms;
        config.jobs.concurrency.insert("OCR".into(), 0);
        config.jobs.backoff_cap_ms = 1;
        config.jobs.default_max_attempts = 0;
        config.scheduler.tick_resolution_ms = config.scheduler.lease_ms;
        let err = config.validate().expect_err("must be refused");
        let all = err.problems.join("\n");
        for key in [
            "jobs.heartbeat_interval_ms",
            "jobs.concurrency: `OCR`",
            "jobs.concurrency.OCR",
            "jobs.backoff_cap_ms",
            "jobs.default_max_attempts",
            "scheduler.tick_resolution_ms",
        ] {
            assert!(all.contains(key), "{key} missing from:\n{all}");
        }
    }

    #[test]
    fn queue_concurrency_can_be_set_per_queue_from_the_environment_shape() {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::default("jobs.concurrency.ocr", 5))
            .merge(Serialized::default("jobs.queues", "ocr, export"))
            .extract()
            .expect("extract");
        assert_eq!(config.jobs.concurrency_of("ocr"), 5);
        assert_eq!(
            config.jobs.concurrency_of("email"),
            8,
            "other defaults stay"
        );
        assert_eq!(config.jobs.concurrency_of("unlisted"), 1);
        assert_eq!(config.jobs.queues, vec!["ocr", "export"]);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn lists_accept_comma_separated_strings() {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::default(
                "cors_origins",
                "https://a.example, https://b.example",
            ))
            .extract()
            .expect("extract");
        assert_eq!(
            config.cors_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn log_redaction_settings_load_from_a_list_or_a_comma_separated_string() {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::default(
                "log.redaction.extra_fields",
                "salary, passport_no",
            ))
            .merge(Serialized::default("log.redaction.hash_identifiers", true))
            .extract()
            .expect("extract");
        assert!(config.log.redaction.enabled, "on unless switched off");
        assert!(config.log.redaction.hash_identifiers);
        assert_eq!(
            config.log.redaction.extra_fields,
            vec!["salary", "passport_no"]
        );
        assert!(config.validate().is_ok());

        let unknown = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::default("log.redaction.mask_ips", false))
            .extract::<Config>();
        assert!(unknown.is_err(), "unknown redaction keys are refused");

        let bad = Config {
            log: LogConfig {
                redaction: crate::redact::RedactionConfig {
                    extra_fields: vec!["no spaces".into()],
                    ..Default::default()
                },
                ..LogConfig::default()
            },
            ..Config::default()
        };
        let err = bad.validate().expect_err("refused");
        assert!(
            err.problems[0].starts_with("log.redaction.extra_fields"),
            "{:?}",
            err.problems
        );
    }

    #[test]
    fn dev_secrets_are_generated_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let (path, created) = ensure_dev_secrets(&mut first)
            .expect("generate")
            .expect("generated");
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut second = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let (_, created_again) = ensure_dev_secrets(&mut second)
            .expect("reuse")
            .expect("used");
        assert!(!created_again);
        assert_eq!(first.jwt_secret, second.jwt_secret);
        assert_eq!(first.encryption_key, second.encryption_key);
        assert!(second.validate().is_ok());
    }
}
