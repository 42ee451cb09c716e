//! Webhooks, both ways, signed the Standard Webhooks way: headers `webhook-id`,
//! `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, several space-separated during a secret rotation), with
//! secrets written `whsec_<base64>`.
//!
//! **Incoming** ([`WebhookVerifier`], [`accept`]): an app's webhook route verifies the
//! signature in constant time, refuses a timestamp outside `webhooks.timestamp_tolerance_secs`
//! (default 5 minutes) and a replayed event id (recorded in `webhook_receipts` in the app's
//! own transaction, so a delivery whose processing failed can be sent again), and gets a
//! system [`TenantScope`] for the organization the webhook belongs to.
//!
//! **Outgoing**: organization admins register endpoints with the audit actions they want
//! (`/api/v1/webhooks/endpoints`); Keel generates each endpoint's secret, stores it
//! encrypted under the key ring and shows it once. Committed audit events reach
//! [`WebhookSubscriber`] through the outbox; each matching endpoint gets one delivery,
//! sent by a `kernel.webhook_deliver` job (retried with the job queue's backoff up to
//! `webhooks.delivery_max_attempts`), every attempt logged with status, latency and the
//! start of the response. Endpoint URLs pass the SSRF guard ([`ssrf`]) at registration and
//! at every delivery.

pub mod routes;
pub mod ssrf;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use crate::audit::{AuditEvent, PLATFORM_ORG, Subscriber};
use crate::http::ApiError;
use crate::jobs::{EnqueueOptions, JobContext, JobDefinition, JobError, JobPayload, Jobs};
use crate::state::AppState;
use crate::store::{Db, StoreError, Tx, now};
use crate::tenancy::TenantScope;
use store::Attempt;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
const SECRET_PREFIX: &str = "whsec_";

/// A new endpoint secret: `whsec_` and 32 random bytes in base64.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The HMAC key of a secret: the bytes after `whsec_` (base64), or the text itself for
/// secrets in another format (what some providers hand out).
pub fn secret_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|b| STANDARD.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `v1,<base64 signature>` of a message.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(key, id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Why an incoming webhook was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("the `{0}` header is missing or not valid")]
    MissingHeader(&'static str),
    #[error("the timestamp is outside the accepted window")]
    Stale,
    #[error("no signature matches")]
    BadSignature,
    #[error("this event was already received")]
    Replayed,
    #[error("the receipt could not be stored")]
    Store(String),
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::MissingHeader(h) => {
                ApiError::bad_request(e.to_string()).with_extra("header", h)
            }
            WebhookError::Stale | WebhookError::BadSignature => ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "/problems/invalid-webhook-signature",
                "Invalid webhook signature",
            )
            .detail(e.to_string()),
            WebhookError::Replayed => ApiError::conflict(e.to_string()),
            WebhookError::Store(cause) => ApiError::internal(anyhow::anyhow!(cause)),
        }
    }
}

/// A webhook whose signature and timestamp checked out.
#[derive(Debug, Clone)]
pub struct VerifiedWebhook {
    /// The sender's event id (`webhook-id`).
    pub id: String,
    pub timestamp: DateTime<Utc>,
}

/// Verifies incoming webhooks signed with one of its secrets.
#[derive(Clone)]
pub struct WebhookVerifier {
    keys: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("keys", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl WebhookVerifier {
    /// `secrets`: the current secret, and the previous one during a rotation.
    pub fn new<S: AsRef<str>>(secrets: &[S], tolerance: Duration) -> Self {
        Self {
            keys: secrets.iter().map(|s| secret_key(s.as_ref())).collect(),
            tolerance,
        }
    }

    /// With the configured tolerance (`webhooks.timestamp_tolerance_secs`).
    pub fn from_config<S: AsRef<str>>(state: &AppState, secrets: &[S]) -> Self {
        Self::new(
            secrets,
            Duration::from_secs(state.config.webhooks.timestamp_tolerance_secs),
        )
    }

    /// Checks headers and signature (no replay check: see [`accept`]).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        at: DateTime<Utc>,
    ) -> Result<VerifiedWebhook, WebhookError> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or(WebhookError::MissingHeader(name))
        };
        let id = header(ID_HEADER)?;
        if id.len() > 256 {
            return Err(WebhookError::MissingHeader(ID_HEADER));
        }
        let timestamp: i64 = header(TIMESTAMP_HEADER)?
            .parse()
            .map_err(|_| WebhookError::MissingHeader(TIMESTAMP_HEADER))?;
        let signatures = header(SIGNATURE_HEADER)?;
        let sent_at = DateTime::<Utc>::from_timestamp(timestamp, 0)
            .ok_or(WebhookError::MissingHeader(TIMESTAMP_HEADER))?;
        let skew = (at - sent_at).num_seconds().unsigned_abs();
        if skew > self.tolerance.as_secs() {
            return Err(WebhookError::Stale);
        }
        let candidates: Vec<Vec<u8>> = signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b| STANDARD.decode(b).ok())
            .collect();
        let ok = self.keys.iter().any(|key| {
            candidates
                .iter()
                .any(|sig| mac(key, id, timestamp, body).verify_slice(sig).is_ok())
        });
        if !ok {
            return Err(WebhookError::BadSignature);
        }
        Ok(VerifiedWebhook {
            id: id.to_string(),
            timestamp: sent_at,
        })
    }
}

/// Verifies an incoming webhook and records its event id in `tx` (the transaction that
/// processes it, so both commit or neither), refusing one seen before from the same
/// `source` for the same organization. `org_id`: the organization the webhook belongs to
/// (`None` for platform-wide senders); the returned scope is a system actor inside it.
pub async fn accept(
    tx: &mut Tx,
    verifier: &WebhookVerifier,
    source: &str,
    org_id: Option<Uuid>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(VerifiedWebhook, Option<TenantScope>), WebhookError> {
    let verified = verifier.verify(headers, body, Utc::now())?;
    let fresh = store::insert_receipt(tx, org_id.unwrap_or(PLATFORM_ORG), source, &verified.id)
        .await
        .map_err(|e| WebhookError::Store(e.to_string()))?;
    if !fresh {
        return Err(WebhookError::Replayed);
    }
    Ok((verified, org_id.map(|o| TenantScope::system(o, "webhook"))))
}

/// Whether `verified`'s event id from `source` was already accepted, for any organization.
///
/// For a sender that serves every organization with one secret (its event ids are unique
/// across them) and names the organization only inside the body: checking this first lets a
/// repeat be acknowledged as such before the body is read — even when what it was about is
/// gone since. [`accept`] still records the id and refuses a repeat racing the first
/// delivery. Receipts live twice the timestamp tolerance, so the table this reads is small.
pub async fn already_accepted(
    db: &Db,
    source: &str,
    verified: &VerifiedWebhook,
) -> Result<bool, StoreError> {
    store::receipt_exists(db, source, &verified.id).await
}

/// The body every outgoing delivery carries.
fn event_payload(event: &AuditEvent) -> serde_json::Value {
    json!({
        "type": event.action,
        "timestamp": event.created_at,
        "data": {
            "event_id": event.id,
            "org_id": event.org_id,
            "action": event.action,
            "resource_type": event.resource_type,
            "resource_id": event.resource_id,
            "actor": event.actor,
            "changes": event.changes,
            "detail": event.detail,
            "outcome": event.outcome,
            "created_at": event.created_at,
        }
    })
}

/// The job that sends one delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverWebhook {
    pub delivery_id: Uuid,
}

impl JobPayload for DeliverWebhook {
    const JOB_TYPE: &'static str = "kernel.webhook_deliver";
}

/// Records a delivery of `payload` to an endpoint and enqueues its job, in `tx`. Returns
/// the delivery and job ids, or `None` if the endpoint already had this event.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn enqueue_delivery(
    tx: &mut Tx,
    jobs: &Jobs,
    max_attempts: u32,
    scope: &TenantScope,
    endpoint_id: Uuid,
    event_id: Uuid,
    event_type: &str,
    payload: &serde_json::Value,
) -> Result<Option<(Uuid, Uuid)>, StoreError> {
    let id = Uuid::now_v7();
    let body = payload.to_string();
    if !store::insert_delivery(tx, scope, id, endpoint_id, event_id, event_type, &body).await? {
        return Ok(None);
    }
    let job_id = jobs
        .enqueue_with(
            tx,
            Some(scope),
            &DeliverWebhook { delivery_id: id },
            EnqueueOptions::default().max_attempts(max_attempts),
        )
        .await?;
    store::set_delivery_job(tx, scope, id, job_id).await?;
    Ok(Some((id, job_id)))
}

/// A test delivery (`POST /api/v1/webhooks/endpoints/{id}/test`).
pub(crate) fn test_payload(endpoint_id: Uuid, event_id: Uuid) -> serde_json::Value {
    json!({
        "type": "webhook.test",
        "timestamp": now(),
        "data": { "event_id": event_id, "endpoint_id": endpoint_id, "message": "a test delivery from Keel" }
    })
}

/// Turns committed audit events into deliveries for the endpoints that want them.
pub struct WebhookSubscriber {
    db: Db,
    jobs: Jobs,
    max_attempts: u32,
}

impl WebhookSubscriber {
    pub fn new(state: &AppState) -> Self {
        Self {
            db: state.db.clone(),
            jobs: state.jobs.clone(),
            max_attempts: state.config.webhooks.delivery_max_attempts,
        }
    }
}

#[async_trait::async_trait]
impl Subscriber for WebhookSubscriber {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    async fn deliver(&self, event: &AuditEvent) -> anyhow::Result<()> {
        if event.org_id == PLATFORM_ORG {
            return Ok(());
        }
        let scope = TenantScope::system(event.org_id, "webhooks");
        let endpoints = store::active_endpoints(&self.db, &scope).await?;
        let wanted: Vec<_> = endpoints
            .iter()
            .filter(|e| e.wants(&event.action))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let payload = event_payload(event);
        let mut tx = self.db.begin().await?;
        for endpoint in wanted {
            enqueue_delivery(
                &mut tx,
                &self.jobs,
                self.max_attempts,
                &scope,
                endpoint.id,
                event.id,
                &event.action,
                &payload,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The `kernel.webhook_deliver` job type.
pub fn job() -> JobDefinition {
    JobDefinition::new(deliver).time_limit(Duration::from_secs(120))
}

async fn deliver(ctx: JobContext, job: DeliverWebhook) -> Result<serde_json::Value, JobError> {
    let scope = ctx
        .scope
        .clone()
        .ok_or_else(|| JobError::permanent("a webhook delivery needs its organization"))?;
    let state = &ctx.state;
    let Some(work) = store::delivery_work(&state.db, &scope, job.delivery_id).await? else {
        // The endpoint (and its deliveries) were deleted meanwhile.
        return Ok(json!({ "skipped": "the delivery no longer exists" }));
    };
    if work.status == "delivered" {
        return Ok(json!({ "skipped": "already delivered" }));
    }
    let endpoint = match store::get_endpoint_db(&state.db, &scope, work.endpoint_id).await {
        Ok(e) if e.active => e,
        Ok(_) | Err(StoreError::NotFound) => {
            store::set_delivery_status(&state.db, &scope, job.delivery_id, "cancelled").await?;
            return Ok(json!({ "skipped": "the endpoint is disabled or gone" }));
        }
        Err(e) => return Err(e.into()),
    };
    let secret = state
        .auth
        .keyring
        .decrypt_str(
            &endpoint.secret,
            &store::secret_context(scope.org_id(), endpoint.id),
        )
        .map_err(|e| JobError::permanent(format!("the endpoint secret cannot be read: {e}")))?;
    let attempt_no = i64::from(ctx.attempt);
    let started = Instant::now();
    let outcome = send(state, &endpoint.url, &secret, job.delivery_id, &work).await;
    let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let (status_code, snippet, error) = match &outcome {
        Ok((status, snippet)) => (Some(i64::from(*status)), Some(snippet.clone()), None),
        Err(e) => (None, None, Some(e.clone())),
    };
    let success = status_code.is_some_and(|s| (200..300).contains(&s));
    let last = ctx.attempt >= ctx.max_attempts;
    let status = match (success, last) {
        (true, _) => "delivered",
        (false, true) => "failed",
        (false, false) => "retrying",
    };
    store::record_attempt(
        &state.db,
        &scope,
        job.delivery_id,
        &Attempt {
            attempt: attempt_no,
            status_code,
            latency_ms,
            response_snippet: snippet,
            error: error.clone(),
            created_at: now(),
        },
        status,
    )
    .await?;
    metrics::counter!("keel_webhook_attempts_total", "outcome" => status).increment(1);
    if success {
        Ok(json!({ "status_code": status_code, "latency_ms": latency_ms }))
    } else {
        Err(JobError::retry(match (status_code, error) {
            (Some(code), _) => format!("the receiver answered {code}"),
            (None, Some(e)) => e,
            (None, None) => "the delivery failed".to_string(),
        }))
    }
}

/// Sends one signed attempt; the receiver's status and the start of its body, or why no
/// answer came.
async fn send(
    state: &AppState,
    url: &str,
    secret: &str,
    delivery_id: Uuid,
    work: &store::DeliveryWork,
) -> Result<(u16, String), String> {
    let integrations = &state.integrations;
    let parsed =
        reqwest::Url::parse(url).map_err(|_| "the endpoint URL is not valid".to_string())?;
    // IP literals never reach the guarded resolver: check them here.
    if let Some(host) = parsed.host_str() {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<std::net::IpAddr>()
            && !ssrf::check_ip(ip, &integrations.webhook_allow)
        {
            return Err(format!("{ip} is not a public address (SSRF guard)"));
        }
    }
    let id = delivery_id.to_string();
    let timestamp = Utc::now().timestamp();
    let signature = sign(&secret_key(secret), &id, timestamp, work.payload.as_bytes());
    let mut request = integrations
        .webhook_client
        .post(parsed)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .header(ID_HEADER, &id)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(work.payload.clone());
    if let Some(tp) = super::outbound::traceparent() {
        request = request.header("traceparent", tp);
    }
    let response = request.send().await.map_err(|e| {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
        msg.chars().take(500).collect::<String>()
    })?;
    let status = response.status().as_u16();
    let limit = state.config.webhooks.response_snippet_bytes;
    let bytes = response.bytes().await.unwrap_or_default();
    let snippet = String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]).into_owned();
    Ok((status, snippet))
}

/// The webhook sender's client: Keel's timeouts, no redirects (a redirect could lead past
/// the SSRF guard's check of the registered URL), the guarded resolver.
pub fn client(
    config: &super::config::OutboundConfig,
    allow: Arc<Vec<ipnet::IpNet>>,
) -> anyhow::Result<reqwest::Client> {
    super::outbound::client_builder(config)
        .dns_resolver(Arc::new(ssrf::GuardedResolver { allow }))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the webhook client: {e}"))
}

/// A sample endpoint with one delivery, for the isolation probe.
pub(crate) async fn fixture(
    state: &AppState,
    scope: &TenantScope,
) -> anyhow::Result<crate::module::FixtureResource> {
    let id = Uuid::now_v7();
    let secret = state.auth.keyring.encrypt_str(
        &generate_secret(),
        &store::secret_context(scope.org_id(), id),
    )?;
    let mut tx = state.db.begin().await?;
    store::insert_endpoint(
        &mut tx,
        scope,
        id,
        "https://hooks.fixture.example/keel",
        Some("fixture"),
        &["fixture.*".to_string()],
        &secret,
    )
    .await?;
    // Disabled, so the probe's test deliveries are refused rather than sent.
    store::update_endpoint(
        &mut tx,
        scope,
        id,
        "https://hooks.fixture.example/keel",
        Some("fixture"),
        &["fixture.*".to_string()],
        false,
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(crate::module::FixtureResource {
        paths: vec![format!("/api/v1/webhooks/endpoints/{id}")],
    })
}

/// Forgets incoming event ids older than twice the timestamp tolerance.
pub(crate) async fn prune_receipts(state: &AppState) -> Result<u64, StoreError> {
    let keep = TimeDelta::seconds(
        i64::try_from(
            state
                .config
                .webhooks
                .timestamp_tolerance_secs
                .saturating_mul(2),
        )
        .unwrap_or(i64::MAX),
    );
    store::prune_receipts(&state.db, now() - keep).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ID_HEADER, id.parse().expect("header"));
        h.insert(TIMESTAMP_HEADER, ts.to_string().parse().expect("header"));
        h.insert(SIGNATURE_HEADER, sig.parse().expect("header"));
        h
    }

    #[test]
    fn a_signature_verifies_only_with_its_secret_and_within_the_window() {
        let secret = generate_secret();
        let now = Utc::now();
        let ts = now.timestamp();
        let body = br#"{"a":1}"#;
        let sig = sign(&secret_key(&secret), "msg_1", ts, body);
        let verifier = WebhookVerifier::new(&[secret.as_str()], Duration::from_secs(300));
        assert!(
            verifier
                .verify(&headers("msg_1", ts, &sig), body, now)
                .is_ok()
        );
        // Another body, another id, another secret, an old timestamp.
        assert_eq!(
            verifier
                .verify(&headers("msg_1", ts, &sig), b"{}", now)
                .err(),
            Some(WebhookError::BadSignature)
        );
        assert_eq!(
            verifier
                .verify(&headers("msg_2", ts, &sig), body, now)
                .err(),
            Some(WebhookError::BadSignature)
        );
        let other = WebhookVerifier::new(&[generate_secret()], Duration::from_secs(300));
        assert!(
            other
                .verify(&headers("msg_1", ts, &sig), body, now)
                .is_err()
        );
        let old = ts - 301;
        let old_sig = sign(&secret_key(&secret), "msg_1", old, body);
        assert_eq!(
            verifier
                .verify(&headers("msg_1", old, &old_sig), body, now)
                .err(),
            Some(WebhookError::Stale)
        );
        // Several signatures (rotation): one match is enough.
        let both = format!("v1,AAAA {sig}");
        assert!(
            verifier
                .verify(&headers("msg_1", ts, &both), body, now)
                .is_ok()
        );
    }

    #[test]
    fn the_standard_webhooks_test_vector_verifies() {
        // From the Standard Webhooks specification's reference implementations.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(
            &secret_key(secret),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn event_type_patterns() {
        assert!(store::matches_type("*", "partner.created"));
        assert!(store::matches_type("partner.created", "partner.created"));
        assert!(store::matches_type("partner.*", "partner.created"));
        assert!(!store::matches_type("partner.*", "partners.created"));
        assert!(!store::matches_type("partner.created", "partner.deleted"));
    }
}
