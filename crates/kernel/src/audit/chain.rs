//! The hash chain: appending an event, and walking a chain to find the first broken link.
//!
//! Each organization's events form one chain: event `n` stores `seq = n`, the hash of event
//! `n - 1` (`prev_hash`, [`GENESIS_HASH`] for the first) and its own hash over that and its
//! canonical content. `audit_heads` holds each chain's last `seq` and hash.
//!
//! Appends are serialised per organization by locking the head row (`SELECT … FOR UPDATE` on
//! PostgreSQL; on SQLite the transaction already holds the database's write lock from
//! `BEGIN IMMEDIATE`), so two concurrent appends can never both take `seq = n`. A row lock is
//! held until its transaction commits, so where the append happens differs per engine:
//! - SQLite: in the business transaction (it holds the only write lock anyway).
//! - PostgreSQL: the business transaction writes the event to `audit_pending`; after it
//!   commits, a chaining pass locks the head, chains every pending event of the organization
//!   and commits, before the writer's [`Tx::commit`] returns. Writers that commit together
//!   share one pass ([`chain_after_commit`]), so an organization's writes no longer queue on
//!   its head one transaction after the other (measured in PERFORMANCE.md, fourth round).
//!   What a stopped node left pending, the outbox relay chains ([`chain_stale`]).
//!
//! What verification catches: an edited event (its hash no longer matches its content), a
//! deleted or inserted event (a gap in `seq`, or a `prev_hash` that does not match), deleted
//! events at the end (the head records more than remain), and pruning that was not announced
//! (the checkpoint it starts from is not named by an `audit.pruned` event in the chain).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_query::{
    CommonTableExpression, Expr, ExprTrait, LockType, OnConflict, Order, Query, WithClause,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::context::AuditContext;
use super::event::{AuditEvent, EVENT_COLUMNS, EventActor, EventRow, GENESIS_HASH, NewEvent};
use crate::config::DatabaseKind;
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

/// Records an event of `org_id` in `tx`; returns its id.
///
/// On SQLite the transaction already holds the database's write lock, so the event is
/// appended to the chain at once (with its outbox message). On PostgreSQL it is written to
/// `audit_pending`, and once `tx` commits a chaining pass moves it into the chain before
/// [`Tx::commit`] returns (see [`chain_after_commit`]): the organization's head row is then
/// locked only by that short pass, never for the rest of a business transaction.
pub(crate) async fn append(
    tx: &mut Tx,
    org_id: Uuid,
    actor: &EventActor,
    ctx: &AuditContext,
    event: NewEvent,
) -> Result<Uuid, StoreError> {
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
    let row = EventRow {
        id: Uuid::now_v7(),
        org_id,
        // Its place in the chain is given when it is chained.
        seq: 0,
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
        // Set again when it is chained (under the head lock, so time order follows chain
        // order); until then, when it was recorded.
        created_at: now(),
        prev_hash: String::new(),
        hash: String::new(),
    };
    let id = row.id;
    match tx.kind() {
        DatabaseKind::Sqlite => {
            let head = lock_head(tx, org_id).await?;
            write_chained(tx, head, vec![row], false).await?;
        }
        DatabaseKind::Postgres => {
            let payload = serde_json::to_string(&row).map_err(|e| StoreError::Other(e.into()))?;
            tx.execute(
                &Query::insert()
                    .into_table("audit_pending")
                    .columns(["id", "org_id", "payload", "created_at"])
                    .values_panic([
                        id.into(),
                        org_id.into(),
                        payload.into(),
                        row.created_at.into(),
                    ])
                    .to_owned(),
            )
            .await?;
            tx.after_commit_work(
                format!("audit.chain:{org_id}"),
                Box::new(move |db| Box::pin(chain_after_commit(db, org_id))),
            );
        }
    }
    Ok(id)
}

/// Events chained per transaction of a chaining pass.
const CHAIN_BATCH: u64 = 500;

/// Gives `rows` (all of `head`'s organization) the next places after `head`, and writes
/// them, their outbox messages and the new head (and, for `pending` rows, removes them from
/// `audit_pending`). The head must be locked by `tx`.
async fn write_chained(
    tx: &mut Tx,
    head: Head,
    mut rows: Vec<EventRow>,
    pending: bool,
) -> Result<(), StoreError> {
    let Some(org_id) = rows.first().map(|r| r.org_id) else {
        return Ok(());
    };
    let (mut seq, mut hash) = (head.seq, head.hash);
    let mut last_at = None;
    for row in &mut rows {
        seq += 1;
        row.seq = seq;
        row.prev_hash = std::mem::take(&mut hash);
        // Strictly increasing within a batch, so sorting by time follows the chain.
        let at = now();
        row.created_at = match last_at {
            Some(last) if at <= last => last + chrono::TimeDelta::microseconds(1),
            _ => at,
        };
        last_at = Some(row.created_at);
        row.hash = row.compute_hash();
        hash = row.hash.clone();
    }
    let mut insert_events = Query::insert()
        .into_table("audit_events")
        .columns(EVENT_COLUMNS)
        .to_owned();
    for row in &rows {
        insert_events.values_panic([
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
        ]);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut advance_head = Query::update()
        .table("audit_heads")
        .values([
            ("seq", seq.into()),
            ("hash", hash.into()),
            ("updated_at", last_at.unwrap_or_else(now).into()),
        ])
        .and_where(Expr::col("org_id").eq(org_id))
        .to_owned();
    let events: Vec<AuditEvent> = rows.into_iter().map(EventRow::into_event).collect();
    let messages = super::outbox::messages(&events)?;
    let unpend = Query::delete()
        .from_table("audit_pending")
        .and_where(Expr::col("id").is_in(ids))
        .to_owned();
    match tx.kind() {
        // One round trip while the head is locked. (Writes inside `WITH` are PostgreSQL's;
        // they run against one snapshot, and none reads what another writes.)
        DatabaseKind::Postgres => {
            let cte = |name: &str, query: sea_query::SubQueryStatement| {
                CommonTableExpression::new()
                    .query(query)
                    .table_name(name.to_string())
                    .to_owned()
            };
            let mut writes = WithClause::new()
                .cte(cte("new_events", insert_events.into()))
                .cte(cte("new_messages", messages.into()))
                .to_owned();
            if pending {
                writes.cte(cte("chained", unpend.into()));
            }
            tx.execute(advance_head.with_cte(writes)).await?;
        }
        DatabaseKind::Sqlite => {
            tx.execute(&insert_events).await?;
            tx.execute(&advance_head).await?;
            tx.execute(&messages).await?;
            if pending {
                tx.execute(&unpend).await?;
            }
        }
    }
    super::outbox::wake_after_commit(tx);
    Ok(())
}

/// Moves every pending event of `org_id` into its chain, a batch per transaction; how many.
pub(crate) async fn chain_pending(db: &Db, org_id: Uuid) -> Result<usize, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Pending {
        payload: String,
    }
    let mut total = 0;
    loop {
        let chained = db
            .transaction(|tx| {
                Box::pin(async move {
                    let head = lock_head(tx, org_id).await?;
                    // Read after the head lock is granted: every event committed before it.
                    let rows: Vec<Pending> = tx
                        .fetch_all(
                            &Query::select()
                                .column("payload")
                                .from("audit_pending")
                                .and_where(Expr::col("org_id").eq(org_id))
                                .order_by("id", Order::Asc)
                                .limit(CHAIN_BATCH)
                                .to_owned(),
                        )
                        .await?;
                    let events = rows
                        .iter()
                        .map(|p| serde_json::from_str::<EventRow>(&p.payload))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| StoreError::Other(e.into()))?;
                    let n = events.len();
                    write_chained(tx, head, events, true).await?;
                    Ok::<_, StoreError>(n)
                })
            })
            .await?;
        total += chained;
        if (chained as u64) < CHAIN_BATCH {
            return Ok(total);
        }
    }
}

/// One organization's chaining passes on this node: one at a time, and each serves every
/// commit that happened before it began.
#[derive(Default)]
struct ChainTurn {
    lock: tokio::sync::Mutex<()>,
    passes: AtomicU64,
}

static CHAIN_TURNS: LazyLock<moka::future::Cache<Uuid, Arc<ChainTurn>>> = LazyLock::new(|| {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_idle(Duration::from_secs(600))
        .build()
});

/// Chains `org_id`'s pending events after a commit that wrote one (group commit).
///
/// Writers of one organization that commit at the same moment do not each take the head
/// lock in turn: each waits for this node's current pass to end, and if another pass began
/// after its own commit (and so saw its event), that pass did its work. Other nodes' passes
/// queue on the head lock. A pass that fails leaves its events pending for
/// [`chain_stale`] (the outbox relay); the change they belong to has committed either way.
async fn chain_after_commit(db: Db, org_id: Uuid) {
    let turn = CHAIN_TURNS
        .get_with(org_id, async { Arc::new(ChainTurn::default()) })
        .await;
    let seen = turn.passes.load(Ordering::Acquire);
    let _held = turn.lock.lock().await;
    if turn.passes.load(Ordering::Acquire) != seen {
        return;
    }
    turn.passes.fetch_add(1, Ordering::AcqRel);
    if let Err(e) = chain_pending(&db, org_id).await {
        tracing::warn!(%org_id, error = %e, "audit events committed but not chained yet; the outbox relay will chain them");
    }
}

/// Organizations one [`chain_stale`] call serves (the next call serves the rest).
const STALE_ORGS_PER_SWEEP: u64 = 100;

/// Chains the events left pending for longer than `older_than` (their node stopped between
/// commit and chaining, or its pass failed), every organization; how many.
pub async fn chain_stale(db: &Db, older_than: Duration) -> Result<usize, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Org {
        org_id: Uuid,
    }
    let cutoff = now() - chrono::TimeDelta::from_std(older_than).unwrap_or_default();
    let orgs: Vec<Org> = db
        .fetch_all(
            &Query::select()
                .distinct()
                .column("org_id")
                .from("audit_pending")
                .and_where(Expr::col("created_at").lt(cutoff))
                .limit(STALE_ORGS_PER_SWEEP)
                .to_owned(),
        )
        .await?;
    let mut total = 0;
    for o in orgs {
        total += chain_pending(db, o.org_id).await?;
    }
    Ok(total)
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
