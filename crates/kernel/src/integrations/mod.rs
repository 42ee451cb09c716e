//! Integrations: how Keel talks to other services.
//!
//! - [`outbound`] — the one resilient HTTP client: timeouts, retries with backoff and jitter
//!   honouring `Retry-After`, a circuit breaker ([`breaker`]) and a bulkhead per named
//!   service; `GET /api/v1/metrics/circuit-breakers` for platform super admins.
//! - [`llm`] — the LLM client (OpenAI-compatible and Gemini, images included), its response
//!   cache per organization and structured JSON output; `GET /api/v1/llm/cache/stats`.
//! - [`webhooks`] — the incoming verifier apps mount, and outgoing deliveries of the
//!   organization's events to the endpoints its admins register.
//!
//! Everything lives on `AppState::integrations` ([`Integrations`]). A scheduled job
//! (`kernel.integrations_cleanup`, hourly) removes expired cache entries and old incoming
//! event ids.

pub mod breaker;
pub mod config;
pub mod llm;
pub mod outbound;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::access::perms;
use crate::auth::{Authorized, SignedIn};
use crate::config::Config;
use crate::http::{ApiError, ApiResult, Json};
use crate::jobs::{
    Cadence, JobContext, JobDefinition, JobError, JobPayload, ScheduleDefinition, ScheduledTick,
};
use crate::module::ModuleRouter;
use crate::state::AppState;
pub use breaker::{BreakerSnapshot, BreakerState};
pub use llm::{Llm, LlmAnswer, LlmError, LlmImage, LlmProvider, LlmRequest};
pub use outbound::{Outbound, OutboundError};
pub use webhooks::{VerifiedWebhook, WebhookError, WebhookVerifier};

/// The integration clients on `AppState`.
pub struct Integrations {
    pub outbound: Arc<Outbound>,
    pub llm: Llm,
    /// Sends outgoing webhooks (through the SSRF guard's resolver).
    pub webhook_client: reqwest::Client,
    /// Networks outgoing webhooks may reach although not public.
    pub webhook_allow: Arc<Vec<ipnet::IpNet>>,
}

impl std::fmt::Debug for Integrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrations")
            .field("outbound", &self.outbound)
            .field("llm", &self.llm)
            .finish()
    }
}

impl Integrations {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let outbound = Arc::new(Outbound::new(&config.outbound)?);
        let webhook_allow: Arc<Vec<ipnet::IpNet>> = Arc::new(
            config
                .webhooks
                .allow_private_networks
                .iter()
                .filter_map(|n| webhooks::ssrf::parse_net(n))
                .collect(),
        );
        Ok(Self {
            llm: Llm::new(&config.llm, outbound.clone()),
            webhook_client: webhooks::client(&config.outbound, webhook_allow.clone())?,
            webhook_allow,
            outbound,
        })
    }
}

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(utoipa_axum::routes!(circuit_breakers))
        .routes(utoipa_axum::routes!(llm_cache_stats))
        .merge(webhooks::routes::router())
}

/// Every circuit breaker of this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitBreakers {
    /// This node: breakers are per process.
    pub node_id: uuid::Uuid,
    pub breakers: Vec<BreakerSnapshot>,
}

/// The circuit breakers of this node: state (`CLOSED`, `OPEN`, `HALF_OPEN`), counts and last
/// transition per outbound service. Platform super admins only.
#[utoipa::path(get, path = "/api/v1/metrics/circuit-breakers", tag = "integrations",
    security(("bearer" = [])),
    responses((status = 200, body = CircuitBreakers),
        (status = 403, description = "Not a platform super admin")))]
pub async fn circuit_breakers(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
) -> ApiResult<Json<CircuitBreakers>> {
    if !me.is_super_admin() {
        return Err(ApiError::forbidden(
            "circuit breakers are for platform super admins",
        ));
    }
    Ok(Json(CircuitBreakers {
        node_id: state.node_id,
        breakers: state.integrations.outbound.breakers(),
    }))
}

/// The organization's LLM response cache: entries, hits, hit rate and tokens saved.
#[utoipa::path(get, path = "/api/v1/llm/cache/stats", tag = "integrations",
    security(("bearer" = ["llm.read"])),
    responses((status = 200, body = llm::CacheStats)))]
pub async fn llm_cache_stats(
    State(state): State<AppState>,
    auth: Authorized<perms::LlmRead>,
) -> ApiResult<Json<llm::CacheStats>> {
    Ok(Json(
        llm::cache_stats(&state.db, &auth.scope(), state.config.llm.cache_enabled).await?,
    ))
}

/// The scheduled cleanup's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IntegrationsCleanup(pub ScheduledTick);

impl JobPayload for IntegrationsCleanup {
    const JOB_TYPE: &'static str = "kernel.integrations_cleanup";
}

/// What the cleanup removed.
#[derive(Debug, Default, Serialize)]
pub struct Cleaned {
    pub llm_cache_entries: u64,
    pub webhook_receipts: u64,
}

/// Removes expired LLM cache entries and incoming webhook ids too old to matter.
pub async fn cleanup(state: &AppState) -> Result<Cleaned, crate::store::StoreError> {
    Ok(Cleaned {
        llm_cache_entries: llm::cache_cleanup(&state.db).await?,
        webhook_receipts: webhooks::prune_receipts(state).await?,
    })
}

/// The kernel job types of this module.
pub fn jobs() -> Vec<JobDefinition> {
    vec![
        webhooks::job(),
        JobDefinition::new(|ctx: JobContext, _tick: IntegrationsCleanup| async move {
            let cleaned = cleanup(&ctx.state).await?;
            tracing::info!(?cleaned, "integrations cleanup done");
            Ok::<_, JobError>(cleaned)
        }),
    ]
}

pub fn schedule() -> ScheduleDefinition {
    ScheduleDefinition::of::<IntegrationsCleanup>(
        "kernel.integrations_cleanup",
        Cadence::Every(Duration::from_secs(3600)),
    )
}
