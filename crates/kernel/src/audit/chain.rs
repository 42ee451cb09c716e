//! The hash chain: appending an event, and walking a chain to find the first broken link.
//!
//! Each organization's events form one chain: event `n` stores `seq = n`, the hash of event
//! `n - 1` (`prev_hash`, [`GENESIS_HASH`] for the first) and its own hash over that and its
//! canonical content. `audit_heads` holds each chain's last `seq` and hash.
//!
//! Appends are serialised per organization by locking the head row (`SELECT … FOR UPDATE` on
//! PostgreSQL; on SQLite the transaction already holds the database's write lock from
//! `BEGIN IMMEDIATE`), so two concurrent appends can never both take `seq = n`. The lock is
//! held until the business transaction commits: record the event late in the transaction.
//!
//! What verification catches: an edited event (its hash no longer matches its content), a
//! deleted or inserted event (a gap in `seq`, or a `prev_hash` that does not match), deleted
//! events at the end (the head records more than remain), and pruning that was not announced
//! (the checkpoint it starts from is not named by an `audit.pruned` event in the chain).

use chrono::{DateTime, Utc};
use sea_query::{Expr, ExprTrait, LockType, OnConflict, Order, Query};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::context::AuditContext;
use super::event::{AuditEvent, EVENT_COLUMNS, EventActor, EventRow, GENESIS_HASH, NewEvent};
use crate::store::{Db, StoreError, Tx, now};

/// Rows read per round trip while verifying.
const VERIFY_PAGE: u64 = 500;

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub(crate) struct Head {
    pub seq: i64,
    pub hash: String,
}

/// Locks the organization's chain head for the rest of the transaction, creating it on the
/// first event.
pub(crate) async fn lock_head(tx: &mut Tx, org_id: Uuid) -> Result<Head, StoreError> {
    let select = Query::select()
        .columns(["seq", "hash"])
        .from("audit_heads")
        .and_where(Expr::col("org_id").eq(org_id))
        .lock(LockType::Update)
        .to_owned();
    if let Some(head) = tx.fetch_optional::<Head>(&select).await? {
        return Ok(head);
    }
    // Two first events at once: both insert, one wins, the other does nothing and then waits
    // on the winner's row lock below.
    tx.execute(
        &Query::insert()
            .into_table("audit_heads")
            .columns(["org_id", "seq", "hash", "updated_at"])
            .values_panic([
                org_id.into(),
                0i64.into(),
                GENESIS_HASH.into(),
                now().into(),
            ])
            .on_conflict(OnConflict::column("org_id").do_nothing().to_owned())
            .to_owned(),
    )
    .await?;
    tx.fetch_one::<Head>(&select).await
}

/// Appends an event to `org_id`'s chain and writes its outbox message, in `tx`.
pub(crate) async fn append(
    tx: &mut Tx,
    org_id: Uuid,
    actor: &EventActor,
    ctx: &AuditContext,
    event: NewEvent,
) -> Result<AuditEvent, StoreError> {
    event
        .validate()
        .map_err(|m| StoreError::Other(anyhow::anyhow!(m)))?;
    let mut detail = event.detail;
    if let Some(k) = ctx.api_key_id {
        detail.insert("api_key_id".into(), serde_json::json!(k));
    }
    if let Some(o) = ctx.acting_from_org {
        detail.insert("acting_from_org".into(), serde_json::json!(o));
    }
    // A system context acting for another actor (a job a user enqueued) names itself.
    if let Some(name) = ctx.system
        && actor.id.as_deref() != Some(name)
    {
        detail.insert("via".into(), serde_json::json!(name));
    }
    let json_text = |v: serde_json::Value| serde_json::to_string(&v).ok();
    let head = lock_head(tx, org_id).await?;
    let mut row = EventRow {
        id: Uuid::now_v7(),
        org_id,
        seq: head.seq + 1,
        actor_type: actor.kind.as_str().to_string(),
        actor_id: actor.id.clone(),
        action: event.action.into_owned(),
        resource_type: event.resource_type.into_owned(),
        resource_id: event.resource_id,
        changes: event.changes.and_then(|c| json_text(c.to_json())),
        detail: (!detail.is_empty())
            .then(|| json_text(serde_json::Value::Object(detail)))
            .flatten(),
        request_id: ctx.context.request_id.clone(),
        ip: ctx.context.ip.clone(),
        user_agent: ctx.context.user_agent.clone(),
        method: ctx.context.method.clone(),
        route: ctx.context.route.clone(),
        outcome: event.outcome.as_str().to_string(),
        error_code: event.error_code,
        duration_ms: ctx.elapsed_ms(),
        // Taken under the head lock, so time order follows chain order.
        created_at: now(),
        prev_hash: head.hash,
        hash: String::new(),
    };
    row.hash = row.compute_hash();
    tx.execute(
        &Query::insert()
            .into_table("audit_events")
            .columns(EVENT_COLUMNS)
            .values_panic([
                row.id.into(),
                row.org_id.into(),
                row.seq.into(),
                row.actor_type.clone().into(),
                row.actor_id.clone().into(),
                row.action.clone().into(),
                row.resource_type.clone().into(),
                row.resource_id.clone().into(),
                row.changes.clone().into(),
                row.detail.clone().into(),
                row.request_id.clone().into(),
                row.ip.clone().into(),
                row.user_agent.clone().into(),
                row.method.clone().into(),
                row.route.clone().into(),
                row.outcome.clone().into(),
                row.error_code.clone().into(),
                row.duration_ms.into(),
                row.created_at.into(),
                row.prev_hash.clone().into(),
                row.hash.clone().into(),
            ])
            .to_owned(),
    )
    .await?;
    tx.execute(
        &Query::update()
            .table("audit_heads")
            .values([
                ("seq", row.seq.into()),
                ("hash", row.hash.clone().into()),
                ("updated_at", row.created_at.into()),
            ])
            .and_where(Expr::col("org_id").eq(org_id))
            .to_owned(),
    )
    .await?;
    let event = row.into_event();
    super::outbox::enqueue(tx, &event).await?;
    Ok(event)
}

/// A retention checkpoint: the chain was pruned up to `seq`, whose hash was `hash`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub created_at: DateTime<Utc>,
}

/// The first link that does not hold.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BrokenLink {
    /// Where the chain breaks: the sequence number expected or found.
    pub seq: i64,
    /// The event found there, if any.
    pub event_id: Option<Uuid>,
    pub reason: String,
}

/// The result of walking one chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    pub org_id: Uuid,
    /// Every link holds.
    pub ok: bool,
    pub events_checked: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The chain head's hash: publish it elsewhere to anchor the chain outside the database.
    pub head_hash: Option<String>,
    /// The retention checkpoint verification started from, if the chain was pruned.
    pub checkpoint: Option<Checkpoint>,
    pub broken: Option<BrokenLink>,
}

pub(crate) async fn latest_checkpoint(
    db: &Db,
    org_id: Uuid,
) -> Result<Option<Checkpoint>, StoreError> {
    db.fetch_optional(
        &Query::select()
            .columns(["seq", "hash", "created_at"])
            .from("audit_checkpoints")
            .and_where(Expr::col("org_id").eq(org_id))
            .order_by("seq", Order::Desc)
            .limit(1)
            .to_owned(),
    )
    .await
}

async fn head(db: &Db, org_id: Uuid) -> Result<Option<Head>, StoreError> {
    db.fetch_optional(
        &Query::select()
            .columns(["seq", "hash"])
            .from("audit_heads")
            .and_where(Expr::col("org_id").eq(org_id))
            .to_owned(),
    )
    .await
}

async fn page(db: &Db, org_id: Uuid, after: i64, upto: i64) -> Result<Vec<EventRow>, StoreError> {
    db.fetch_all(
        &Query::select()
            .columns(EVENT_COLUMNS)
            .from("audit_events")
            .and_where(Expr::col("org_id").eq(org_id))
            .and_where(Expr::col("seq").gt(after))
            .and_where(Expr::col("seq").lte(upto))
            .order_by("seq", Order::Asc)
            .limit(VERIFY_PAGE)
            .to_owned(),
    )
    .await
}

/// The organizations that have a chain (the platform chain included).
pub async fn chains(db: &Db) -> Result<Vec<Uuid>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Org {
        org_id: Uuid,
    }
    let rows: Vec<Org> = db
        .fetch_all(
            &Query::select()
                .column("org_id")
                .from("audit_heads")
                .order_by("org_id", Order::Asc)
                .to_owned(),
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.org_id).collect())
}

/// Walks `org_id`'s chain from its latest checkpoint (or its start) to its head and reports
/// the first broken link. Events appended while it runs are not looked at.
pub async fn verify(db: &Db, org_id: Uuid) -> Result<VerifyReport, StoreError> {
    // Read the head first: everything up to it is committed, so the walk has a fixed end.
    let head = head(db, org_id).await?;
    let mut checkpoint = latest_checkpoint(db, org_id).await?;
    let mut report = VerifyReport {
        org_id,
        ok: true,
        events_checked: 0,
        first_seq: None,
        last_seq: None,
        head_hash: head.as_ref().map(|h| h.hash.clone()),
        checkpoint: None,
        broken: None,
    };
    let Some(head) = head else {
        // No head: either no chain, or the head row was deleted.
        let any = page(db, org_id, 0, i64::MAX).await?;
        if let Some(first) = any.first() {
            report.ok = false;
            report.broken = Some(BrokenLink {
                seq: first.seq,
                event_id: Some(first.id),
                reason: "the chain head is missing".into(),
            });
        }
        return Ok(report);
    };
    let mut rows = page(
        db,
        org_id,
        checkpoint.as_ref().map_or(0, |c| c.seq),
        head.seq,
    )
    .await?;
    // A prune may have moved the checkpoint and deleted rows between our two reads.
    let expected_first = checkpoint.as_ref().map_or(0, |c| c.seq) + 1;
    if rows.first().is_some_and(|r| r.seq != expected_first) {
        let again = latest_checkpoint(db, org_id).await?;
        if again.as_ref().map(|c| c.seq) != checkpoint.as_ref().map(|c| c.seq) {
            checkpoint = again;
            rows = page(
                db,
                org_id,
                checkpoint.as_ref().map_or(0, |c| c.seq),
                head.seq,
            )
            .await?;
        }
    }
    report.checkpoint = checkpoint.clone();
    let (mut expected_seq, mut prev) = match &checkpoint {
        Some(c) => (c.seq + 1, c.hash.clone()),
        None => (1, GENESIS_HASH.to_string()),
    };
    let mut announced = checkpoint.is_none();
    let mut broken: Option<BrokenLink> = None;
    'walk: while let Some(last) = rows.last().map(|r| r.seq) {
        for row in &rows {
            report.events_checked += 1;
            report.first_seq.get_or_insert(row.seq);
            report.last_seq = Some(row.seq);
            if row.seq != expected_seq {
                broken = Some(BrokenLink {
                    seq: expected_seq,
                    event_id: None,
                    reason: format!(
                        "event {expected_seq} is missing (the next event found is {})",
                        row.seq
                    ),
                });
                break 'walk;
            }
            if row.prev_hash != prev {
                broken = Some(BrokenLink {
                    seq: row.seq,
                    event_id: Some(row.id),
                    reason: "its previous-hash does not match the event before it".into(),
                });
                break 'walk;
            }
            if row.compute_hash() != row.hash {
                broken = Some(BrokenLink {
                    seq: row.seq,
                    event_id: Some(row.id),
                    reason: "its content does not match its hash (the event was altered)".into(),
                });
                break 'walk;
            }
            if let Some(c) = &checkpoint
                && row.action == super::retention::PRUNED_ACTION
                && announces(row, c)
            {
                announced = true;
            }
            prev = row.hash.clone();
            expected_seq += 1;
        }
        if (rows.len() as u64) < VERIFY_PAGE {
            break;
        }
        rows = page(db, org_id, last, head.seq).await?;
    }
    if broken.is_none() && expected_seq - 1 != head.seq {
        broken = Some(BrokenLink {
            seq: expected_seq,
            event_id: None,
            reason: format!(
                "events {expected_seq} to {} are missing (the chain head records {})",
                head.seq, head.seq
            ),
        });
    }
    if broken.is_none() && prev != head.hash {
        broken = Some(BrokenLink {
            seq: head.seq,
            event_id: None,
            reason: "the chain head's hash does not match the last event".into(),
        });
    }
    if broken.is_none() && !announced {
        let seq = checkpoint.as_ref().map_or(0, |c| c.seq);
        broken = Some(BrokenLink {
            seq,
            event_id: None,
            reason:
                "the retention checkpoint is not announced by an audit.pruned event in the chain"
                    .into(),
        });
    }
    report.ok = broken.is_none();
    report.broken = broken;
    Ok(report)
}

fn announces(row: &EventRow, c: &Checkpoint) -> bool {
    let Some(detail) = row
        .detail
        .as_deref()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
    else {
        return false;
    };
    detail["checkpoint_seq"].as_i64() == Some(c.seq)
        && detail["checkpoint_hash"].as_str() == Some(c.hash.as_str())
}
