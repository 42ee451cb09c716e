//! Retention: deleting old audit events without breaking what remains.
//!
//! Pruning a chain first records a checkpoint — the sequence number and hash of the last event
//! to go — in `audit_checkpoints` (kept forever) and announces it with an `audit.pruned` event
//! appended to the same chain, in one transaction. Only then are events at or before the
//! checkpoint deleted, in batches. What remains verifies from the checkpoint: the first
//! remaining event's previous-hash is the checkpoint's hash, and the announcement, itself a
//! link of the chain, vouches for the checkpoint.
//!
//! The database enforces the same rule: the append-only triggers refuse every update, and
//! refuse a delete unless the row is at or before its chain's latest checkpoint. So the
//! pruner needs no privilege the application lacks, and a stray `DELETE` cannot cut into
//! the live chain. (A checkpoint row could be forged by someone with direct write access to
//! the database; verification then finds no announcement for it.)
//!
//! The cut is conservative: everything before the first event at or after the cutoff time,
//! so no event younger than the retention period is removed even if clocks disagreed.

use chrono::{DateTime, TimeDelta, Utc};
use sea_query::{Expr, ExprTrait, Func, Query};
use serde::Serialize;
use uuid::Uuid;

use super::AuditConfig;
use super::chain::{self, latest_checkpoint, lock_head};
use super::context::AuditContext;
use super::event::{EventActor, NewEvent};
use crate::store::{Db, StoreError, now};

/// The action that announces a checkpoint.
pub const PRUNED_ACTION: &str = "audit.pruned";
/// Rows deleted per statement.
const DELETE_BATCH: i64 = 1000;
/// Delivered outbox messages are kept this long (for operators), then removed.
const OUTBOX_KEEP: TimeDelta = TimeDelta::days(7);

/// What pruning did to one chain.
#[derive(Debug, Clone, Serialize)]
pub struct ChainPruned {
    pub org_id: Uuid,
    /// The chain's checkpoint after this run (0: never pruned).
    pub checkpoint_seq: i64,
    /// Whether this run recorded a new checkpoint.
    pub new_checkpoint: bool,
    pub events_deleted: u64,
}

/// What a pruning run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Unset when retention is off (`[audit] retention_days` not set).
    pub cutoff: Option<DateTime<Utc>>,
    pub chains: Vec<ChainPruned>,
    pub outbox_deleted: u64,
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct MinSeq {
    seq: Option<i64>,
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct HashRow {
    hash: String,
}

/// Prunes every chain to `config.retention_days` before `now_at` (no chain when retention is
/// off), and removes outbox messages delivered more than a week ago. Safe to run on several
/// nodes at once: checkpoints are taken under the chain lock and deletes only remove what a
/// checkpoint covers.
pub async fn prune(
    db: &Db,
    config: &AuditConfig,
    now_at: DateTime<Utc>,
) -> Result<PruneReport, StoreError> {
    // Delivered outbox messages are transport, not record: they go whatever the retention.
    let mut report = PruneReport {
        outbox_deleted: db
            .execute(
                &Query::delete()
                    .from_table("audit_outbox")
                    .and_where(Expr::col("delivered_at").lt(now_at - OUTBOX_KEEP))
                    .to_owned(),
            )
            .await?,
        ..PruneReport::default()
    };
    let Some(days) = config.retention_days else {
        return Ok(report);
    };
    let cutoff = now_at - TimeDelta::days(i64::from(days));
    report.cutoff = Some(cutoff);
    for org_id in chain::chains(db).await? {
        report.chains.push(prune_chain(db, org_id, cutoff).await?);
    }
    Ok(report)
}

async fn prune_chain(
    db: &Db,
    org_id: Uuid,
    cutoff: DateTime<Utc>,
) -> Result<ChainPruned, StoreError> {
    let ctx = &AuditContext::system("retention");
    let new_checkpoint = db
        .transaction(|tx| {
            Box::pin(async move {
            let head = lock_head(tx, org_id).await?;
            let current: Option<i64> = tx
                .fetch_one::<MinSeq>(
                    &Query::select()
                        .expr_as(Func::max(Expr::col("seq")), "seq")
                        .from("audit_checkpoints")
                        .and_where(Expr::col("org_id").eq(org_id))
                        .to_owned(),
                )
                .await?
                .seq;
            let current = current.unwrap_or(0);
            let first_young = tx
                .fetch_one::<MinSeq>(
                    &Query::select()
                        .expr_as(Func::min(Expr::col("seq")), "seq")
                        .from("audit_events")
                        .and_where(Expr::col("org_id").eq(org_id))
                        .and_where(Expr::col("created_at").gte(cutoff))
                        .to_owned(),
                )
                .await?
                .seq;
            let cut = first_young.map_or(head.seq, |s| s - 1);
            if cut <= current {
                return Ok::<_, StoreError>(None);
            }
            let Some(last) = tx
                .fetch_optional::<HashRow>(
                    &Query::select()
                        .column("hash")
                        .from("audit_events")
                        .and_where(Expr::col("org_id").eq(org_id))
                        .and_where(Expr::col("seq").eq(cut))
                        .to_owned(),
                )
                .await?
            else {
                // The event to checkpoint is gone: the chain is already broken there, and a
                // checkpoint must never paper over that. Verification reports it.
                tracing::warn!(%org_id, seq = cut, "audit retention: cannot checkpoint a missing event; chain left as is");
                return Ok(None);
            };
            let at = now();
            tx.execute(
                &Query::insert()
                    .into_table("audit_checkpoints")
                    .columns(["org_id", "seq", "hash", "created_at"])
                    .values_panic([
                        org_id.into(),
                        cut.into(),
                        last.hash.clone().into(),
                        at.into(),
                    ])
                    .to_owned(),
            )
            .await?;
            chain::append(
                tx,
                org_id,
                &EventActor::system("retention"),
                ctx,
                NewEvent::new(PRUNED_ACTION, "audit_chain", Some(org_id))
                    .detail("checkpoint_seq", cut)
                    .detail("checkpoint_hash", &last.hash)
                    .detail("cutoff", cutoff)
                    .detail("events_removed", cut - current),
            )
            .await?;
            Ok(Some(cut))
            })
        })
        .await?;
    let checkpoint = latest_checkpoint(db, org_id).await?.map_or(0, |c| c.seq);
    let events_deleted = delete_through(db, org_id, checkpoint).await?;
    Ok(ChainPruned {
        org_id,
        checkpoint_seq: checkpoint,
        new_checkpoint: new_checkpoint.is_some(),
        events_deleted,
    })
}

/// Deletes the chain's events at or before `checkpoint`, a batch per statement (also
/// finishing a run that stopped half-way).
async fn delete_through(db: &Db, org_id: Uuid, checkpoint: i64) -> Result<u64, StoreError> {
    if checkpoint <= 0 {
        return Ok(0);
    }
    let first = db
        .fetch_one::<MinSeq>(
            &Query::select()
                .expr_as(Func::min(Expr::col("seq")), "seq")
                .from("audit_events")
                .and_where(Expr::col("org_id").eq(org_id))
                .to_owned(),
        )
        .await?
        .seq;
    let Some(mut from) = first.filter(|s| *s <= checkpoint) else {
        return Ok(0);
    };
    let mut deleted = 0;
    while from <= checkpoint {
        let to = Ord::min(from + DELETE_BATCH - 1, checkpoint);
        deleted += db
            .execute(
                &Query::delete()
                    .from_table("audit_events")
                    .and_where(Expr::col("org_id").eq(org_id))
                    .and_where(Expr::col("seq").gte(from))
                    .and_where(Expr::col("seq").lte(to))
                    .to_owned(),
            )
            .await?;
        from = to + 1;
    }
    Ok(deleted)
}
