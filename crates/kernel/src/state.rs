//! The one application state every handler receives: configuration, the store, Redis when
//! configured, the enabled modules and the job queue. Cheap to clone (one `Arc`).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use crate::config::Config;
use crate::jobs::Jobs;
use crate::module::Registry;
use crate::store::Db;

#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub config: Arc<Config>,
    pub db: Db,
    pub redis: Option<redis::aio::ConnectionManager>,
    pub registry: Registry,
    /// Rate limits (in process, or shared through Redis).
    pub limits: crate::limits::RateLimiter,
    /// The rate-limit policy each route named, by method and route template.
    pub route_policies: std::collections::HashMap<(http::Method, String), &'static str>,
    /// Tokens, password hashing, revocations, roles, the mailer and the key ring.
    pub auth: Arc<crate::auth::AuthRuntime>,
    /// Field encryption: `state.crypto.seal(&FieldRef::new(&scope, …), value)` / `open`,
    /// blind indexes, under the key ring (the same ring as `auth.keyring`).
    pub crypto: Arc<crate::crypto::KeyRing>,
    /// The shared cache: `state.cache.tenant::<V>(name, ttl)?.get_or_load(…)`.
    pub cache: crate::cache::Caches,
    /// Enqueues background jobs inside a transaction (`state.jobs.enqueue(&mut tx, …)`).
    pub jobs: Jobs,
    /// The audit trail's event bus (where the outbox relay delivers committed events).
    pub audit: Arc<crate::audit::AuditRuntime>,
    /// The outbound client, the LLM client and the webhook sender.
    pub integrations: Arc<crate::integrations::Integrations>,
    /// Uploaded files (local directory or S3), addressed by organization and checksum.
    pub files: crate::storage::Files,
    /// Document extraction: the engines in order and the known document types.
    pub extractor: Arc<crate::extract::Extractor>,
    /// The realtime hub: publish live messages (`state.realtime.publish(&mut tx, …)`).
    pub realtime: Arc<crate::realtime::Realtime>,
    /// Notification types, templates and the email/SMS transports.
    pub notify: Arc<crate::notify::Notifier>,
    /// The OpenAPI document of every enabled route, rendered once at start-up.
    pub openapi_json: bytes::Bytes,
    /// The deployment's identity, recorded in the database at first start.
    pub installation_id: Uuid,
    /// This process (a node of a deployment); shown in readiness to tell nodes apart.
    pub node_id: Uuid,
    pub started_at: Instant,
    /// Requests of this node over the last minutes, per route (`GET /api/v1/metrics`).
    pub http_stats: Arc<crate::metrics::window::Windows<String>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("db", &self.0.db.kind())
            .field("redis", &self.0.redis.is_some())
            .field("modules", &self.0.registry)
            .field("node_id", &self.0.node_id)
            .finish()
    }
}

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }

    /// A module's settings (`[modules.<name>]`), already checked at start-up by its
    /// [`Module::settings_problems`](crate::module::Module::settings_problems); defaults when
    /// absent. Deserialized on each call: read them where they are needed, not per row.
    pub fn module_settings<T: serde::de::DeserializeOwned + Default>(&self, module: &str) -> T {
        self.config
            .modules
            .get(module)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }
}

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}
