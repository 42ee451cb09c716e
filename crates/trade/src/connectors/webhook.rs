//! `POST /api/v1/trade/webhooks/account-aggregator`: consent and data events from the
//! Account Aggregator, signed the Standard Webhooks way with a secret from
//! `[modules.trade] aa_webhook_secrets` (none configured: 503, "not configured").
//!
//! Order of checks: signature and timestamp (401; nothing else is said to an unsigned
//! caller), then the event id — one already accepted is acknowledged as `duplicate` (200)
//! before anything else is read, even if its consent has been removed since — then the body
//! (422), then the consent id (404 like any missing resource). The organization is the one
//! whose connector holds the consent (consent ids are unique across organizations, see
//! [`super::store`]); the event is then applied in that organization as a system actor, and
//! its id (`webhook-id`) is recorded in the same transaction through the kernel's
//! `webhooks::accept`, which also refuses a repeat racing the first delivery. An event that
//! does not apply to the connector as it is (`data_ready` for a connector that is not active)
//! is acknowledged as `ignored` and audited as `trade.connector.event_ignored`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::Utc;
use keel_kernel::audit::{self, AuditContext, Changes, NewEvent};
use keel_kernel::http::{ApiError, ApiResult, FieldError, Json};
use keel_kernel::integrations::webhooks::{self, WebhookError, WebhookVerifier};
use keel_kernel::state::AppState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::store;
use super::{ConnectorStatus, is_consent_id};
use crate::TradeSettings;

/// The `source` webhook receipts are recorded under.
pub const SOURCE: &str = "account-aggregator";

/// The events understood.
pub const EVENTS: [&str; 4] = [
    "consent_approved",
    "consent_rejected",
    "consent_revoked",
    "data_ready",
];

/// An Account Aggregator event.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AaEvent {
    /// `consent_approved`, `consent_rejected`, `consent_revoked` or `data_ready`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The consent the event is about.
    pub consent_id: String,
}

/// What became of an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AaReceipt {
    /// The event id (`webhook-id`).
    pub event_id: String,
    /// `applied`, `duplicate` (this event id was received before: nothing changed) or
    /// `ignored` (the event does not apply to the connector as it is, e.g. `data_ready` for
    /// a connector that is not active).
    pub outcome: String,
    /// The connector's status after the event.
    pub status: Option<String>,
}

fn parse(body: &[u8]) -> Result<AaEvent, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| ApiError::bad_request("the body is not JSON"))?;
    let mut errors = Vec::new();
    let event_type = value.get("type").and_then(|v| v.as_str()).unwrap_or("");
    if !EVENTS.contains(&event_type) {
        errors.push(FieldError::new(
            "type",
            "must be one of consent_approved, consent_rejected, consent_revoked, data_ready",
        ));
    }
    let consent_id = value
        .get("consent_id")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if !is_consent_id(consent_id) {
        errors.push(FieldError::new(
            "consent_id",
            "must be 8–128 letters, digits or -_.:",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    Ok(AaEvent {
        event_type: event_type.to_string(),
        consent_id: consent_id.to_string(),
    })
}

enum Outcome {
    Applied(String),
    Ignored(String),
    Duplicate,
}

/// Receives an Account Aggregator event (consent approved, rejected or revoked; data ready).
#[utoipa::path(post, path = "/api/v1/trade/webhooks/account-aggregator", tag = "trade",
    request_body = AaEvent,
    params(
        ("webhook-id" = String, Header, description = "The event id; repeats are acknowledged and ignored"),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds; at most `webhooks.timestamp_tolerance_secs` from now"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256 of \"{id}.{timestamp}.{body}\">`")),
    responses((status = 200, body = AaReceipt),
        (status = 400, description = "A webhook header is missing, or the body is not JSON"),
        (status = 401, description = "Bad signature or a timestamp outside the window"),
        (status = 404, description = "No connector has this consent"),
        (status = 422, description = "Unknown event type or invalid consent id"),
        (status = 503, description = "The webhook is not configured on this installation (no `aa_webhook_secrets`), or a dependency is unavailable")))]
pub async fn account_aggregator(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<AaReceipt>> {
    let secrets = TradeSettings::of(&state).aa_webhook_secrets;
    if secrets.is_empty() {
        return Err(ApiError::service_unavailable(
            "the Account Aggregator webhook is not configured on this installation ([modules.trade] aa_webhook_secrets)",
        ));
    }
    let verifier = WebhookVerifier::from_config(&state, &secrets);
    let verified = verifier.verify(&headers, &body, Utc::now())?;
    if webhooks::already_accepted(&state.db, SOURCE, &verified).await? {
        return Ok(Json(AaReceipt {
            event_id: verified.id,
            outcome: "duplicate".into(),
            status: None,
        }));
    }
    let event = parse(&body)?;
    let Some(org_id) = store::org_of_consent(&state.db, &event.consent_id).await? else {
        return Err(ApiError::not_found());
    };
    let ctx = AuditContext::system("trade.account_aggregator");
    let (verifier, headers, body, event, ctx) = (&verifier, &headers, &body, &event, &ctx);
    let (outcome, scope) = state
        .db
        .transaction(|tx| {
            Box::pin(async move {
                let scope =
                    match webhooks::accept(tx, verifier, SOURCE, Some(org_id), headers, body).await
                    {
                        Ok((_, Some(scope))) => scope,
                        Ok((_, None)) => return Err(ApiError::not_found()),
                        Err(WebhookError::Replayed) => return Ok((Outcome::Duplicate, None)),
                        Err(e) => return Err(e.into()),
                    };
                // The consent may have moved meanwhile; it is looked up again in the scope.
                let before = store::by_consent(tx, &scope, &event.consent_id).await?;
                let (status, data_ready_at) = match event.event_type.as_str() {
                    "consent_approved" => (ConnectorStatus::Active, None),
                    "consent_rejected" => (ConnectorStatus::Rejected, None),
                    "consent_revoked" => (ConnectorStatus::Revoked, None),
                    _ if before.status == ConnectorStatus::Active.as_str() => {
                        (ConnectorStatus::Active, Some(keel_kernel::store::now()))
                    }
                    _ => {
                        audit::record(
                            tx,
                            &scope,
                            ctx,
                            NewEvent::new(
                                "trade.connector.event_ignored",
                                "trade.connector",
                                Some(before.id),
                            )
                            .detail("event_id", headers_id(headers))
                            .detail("type", &event.event_type)
                            .detail("outcome", "ignored")
                            .detail("status", &before.status)
                            .detail("kind", &before.kind),
                        )
                        .await?;
                        return Ok((Outcome::Ignored(before.status), Some(scope)));
                    }
                };
                if !store::apply_event(tx, &scope, &before, status, data_ready_at).await? {
                    return Err(ApiError::conflict("the connector changed meanwhile; retry"));
                }
                let after = store::get(tx, &scope, before.id).await?;
                audit::record(
                    tx,
                    &scope,
                    ctx,
                    NewEvent::new(
                        format!("trade.connector.{}", event.event_type),
                        "trade.connector",
                        Some(after.id),
                    )
                    .changes(Changes::diff(&before, &after, &[]))
                    .detail("event_id", headers_id(headers))
                    .detail("kind", &after.kind),
                )
                .await?;
                Ok::<_, ApiError>((Outcome::Applied(after.status), Some(scope)))
            })
        })
        .await?;
    // The organization is known only inside the transaction (from the verified event), so
    // this writer drops the dashboard itself rather than through `dashboard::write`: the
    // event's audit entry is in its recent activity.
    if let Some(scope) = &scope {
        crate::dashboard::invalidate(&state, scope).await;
    }
    let (outcome, status) = match outcome {
        Outcome::Applied(s) => ("applied", Some(s)),
        Outcome::Ignored(s) => ("ignored", Some(s)),
        Outcome::Duplicate => ("duplicate", None),
    };
    Ok(Json(AaReceipt {
        event_id: verified.id,
        outcome: outcome.to_string(),
        status,
    }))
}

fn headers_id(headers: &HeaderMap) -> String {
    headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_string()
}
