//! The audit trail: one append-only, hash-chained record of who did what, for the kernel and
//! every app.
//!
//! # Writing
//!
//! A change and its event commit together or not at all: [`record`] takes the transaction
//! that makes the change, the tenant scope (which names the organization and the actor), the
//! request's [`AuditContext`] and a [`NewEvent`]:
//!
//! ```ignore
//! async fn update_thing(State(state): State<AppState>, auth: Authorized<perms::ThingsWrite>,
//!                       ctx: AuditContext, …) -> ApiResult<Json<Thing>> {
//!     let (scope, ctx, input) = (&auth.scope(), &ctx, &input);
//!     let thing = state.db.transaction(|tx| Box::pin(async move {
//!         let before = store::get(tx, scope, id).await?;
//!         let after = store::update(tx, scope, id, input).await?;
//!         audit::record(tx, scope, ctx, NewEvent::new("thing.updated", "thing", Some(id))
//!             .changes(Changes::diff(&before, &after, &["bank_account"]))).await?;
//!         Ok::<_, ApiError>(after)
//!     })).await?;
//! ```
//!
//! The same call writes the event's outbox message; after commit the relay
//! ([`outbox`]) hands the event to in-process subscribers ([`EventBus`] on
//! `AppState::audit`), at least once.
//!
//! # What an event holds
//!
//! Organization, per-organization sequence number, actor (user, system actor or anonymous),
//! action, resource type and id, field changes (encrypted fields only as `"changed"`),
//! details, request context (request id, masked IP, user agent, method, route template),
//! outcome and error code, duration, time, and the hashes that chain it.
//!
//! Events with no organization (a failed sign-in for an unknown address, a blocked IP) go to
//! the **platform chain**, whose organization id is the nil UUID ([`PLATFORM_ORG`]).
//!
//! # Tamper evidence and retention
//!
//! See [`chain`] (append under a per-organization lock, in the change's transaction on
//! SQLite and right after it commits on PostgreSQL; [`verify`]) and [`retention`]
//! ([`prune`] behind recorded checkpoints). The store offers no update or delete of events;
//! database triggers refuse them on both engines, except the pruner's deletes behind a
//! checkpoint.

pub mod chain;
mod context;
mod event;
pub mod outbox;
pub mod retention;
pub mod routes;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use chain::{BrokenLink, Checkpoint, VerifyReport, chains, verify};
pub use context::AuditContext;
pub use event::{
    ActorKind, AuditEvent, CHANGED, Changes, EventActor, EventContext, GENESIS_HASH, NewEvent,
    Outcome,
};
pub use outbox::{EventBus, Subscriber};
pub use retention::{PruneReport, prune};

use crate::store::{StoreError, Tx};
use crate::tenancy::TenantScope;

/// The organization id of the platform chain (events that belong to no organization).
pub const PLATFORM_ORG: Uuid = Uuid::nil();

/// Records an event in the scope's organization, in `tx` — the transaction that makes the
/// change, so both commit or neither does. The actor is the scope's (the signed-in user, or
/// the system actor of a job). Returns the event's id.
///
/// On SQLite, record late in the transaction: from this call until commit, other writers of
/// the same organization's chain wait. On PostgreSQL the event takes its place in the chain
/// right after the commit, before [`crate::store::Tx::commit`] returns ([`chain`]).
pub async fn record(
    tx: &mut Tx,
    scope: &TenantScope,
    ctx: &AuditContext,
    event: NewEvent,
) -> Result<Uuid, StoreError> {
    chain::append(
        tx,
        scope.org_id(),
        &EventActor::from(scope.actor()),
        ctx,
        event,
    )
    .await
}

/// Records an event with an explicit organization (or [`PLATFORM_ORG`]) and actor: for the
/// kernel's own events that happen before there is a scope (sign-in, token refresh).
pub(crate) async fn record_as(
    tx: &mut Tx,
    org_id: Option<Uuid>,
    actor: &EventActor,
    ctx: &AuditContext,
    event: NewEvent,
) -> Result<Uuid, StoreError> {
    chain::append(tx, org_id.unwrap_or(PLATFORM_ORG), actor, ctx, event).await
}

/// `[audit]`: retention, the outbox relay and exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Days of audit events to keep (`KEEL_AUDIT__RETENTION_DAYS`); unset keeps them forever.
    /// Pruning (`keel audit prune`) keeps a checkpoint so what remains still verifies.
    pub retention_days: Option<u32>,
    /// How often the outbox relay looks for undelivered events when nothing woke it.
    pub relay_poll_ms: u64,
    /// Events the relay claims per pass.
    pub relay_batch: u32,
    /// The most events one export streams; a larger export is refused (narrow the filters).
    pub export_max_rows: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: None,
            relay_poll_ms: 1000,
            relay_batch: 100,
            export_max_rows: 100_000,
        }
    }
}

impl AuditConfig {
    /// Problems with the values, one message each.
    pub fn value_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.retention_days == Some(0) {
            problems.push(
                "audit.retention_days: must be at least 1 (leave it unset to keep events forever)"
                    .into(),
            );
        }
        if self.relay_poll_ms == 0 {
            problems.push("audit.relay_poll_ms: must be greater than 0".into());
        }
        if !(1..=10_000).contains(&self.relay_batch) {
            problems.push("audit.relay_batch: must be between 1 and 10000".into());
        }
        if self.export_max_rows == 0 {
            problems.push("audit.export_max_rows: must be greater than 0".into());
        }
        problems
    }

    pub fn relay_poll(&self) -> Duration {
        Duration::from_millis(self.relay_poll_ms)
    }
}

/// The audit trail's shared parts on `AppState`.
#[derive(Debug, Default)]
pub struct AuditRuntime {
    /// Where committed events are delivered.
    pub bus: Arc<EventBus>,
}
