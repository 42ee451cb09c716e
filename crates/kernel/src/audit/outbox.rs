//! The transactional outbox: every audit event writes an outbox message in the same
//! transaction, and a relay hands committed messages to in-process subscribers.
//!
//! Why an outbox and not a publish after commit: a process that dies between the commit and
//! the publish would lose the announcement. Here the message is durable with the change; the
//! relay delivers it after commit, and a crash before delivery only delays it (the next relay
//! — this node after a restart, or another node — delivers it). Delivery is at least once:
//! a subscriber can see an event twice and dedupes by the event id.
//!
//! The relay claims a batch by leasing it (`available_at` moves `LEASE` ahead: on PostgreSQL
//! one `UPDATE … WHERE id IN (… FOR UPDATE SKIP LOCKED) RETURNING`, so nodes share the work
//! in one round trip; on SQLite a read and the lease in one transaction, its write lock
//! serialising the claim), delivers outside any transaction, then marks what was delivered.
//! A claim whose node died expires with its lease. A subscriber that fails gets the message
//! again later, with backoff. The relay is woken right after a commit that wrote messages
//! ([`Tx::after_commit`]) and otherwise polls.

use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use chrono::TimeDelta;
use sea_query::{Expr, ExprTrait, InsertStatement, LockBehavior, LockType, Order, Query};
use tokio::sync::{Notify, broadcast, watch};
use uuid::Uuid;

use super::event::AuditEvent;
use crate::store::{Db, StoreError, Tx, now};

/// How long a claimed batch is reserved for the node that claimed it.
const LEASE: TimeDelta = TimeDelta::seconds(30);
/// Longest wait before a failed delivery is tried again.
const MAX_BACKOFF_SECS: i64 = 300;
/// Messages a slow broadcast receiver may fall behind before it misses some.
const BROADCAST_CAPACITY: usize = 1024;

/// Signals relays that a transaction with outbox messages committed. Process-wide: waking a
/// relay that has nothing to do costs one indexed read.
static WAKE: LazyLock<Notify> = LazyLock::new(Notify::new);

fn wake() {
    WAKE.notify_waiters();
}

/// A consumer of committed events (the realtime hub, the job queue, webhooks).
#[async_trait::async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// A name for logs.
    fn name(&self) -> &'static str;

    /// Takes one event. Return quickly (hand the work to a queue); an error means "give it
    /// to me again later" — and every subscriber then sees the event again, so each must
    /// dedupe by [`AuditEvent::id`].
    async fn deliver(&self, event: &AuditEvent) -> anyhow::Result<()>;
}

/// Where the relay delivers: registered [`Subscriber`]s (at least once, retried on error)
/// and a broadcast channel for listeners that can tolerate missing events when they lag.
pub struct EventBus {
    sender: broadcast::Sender<Arc<AuditEvent>>,
    subscribers: RwLock<Vec<Arc<dyn Subscriber>>>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("receivers", &self.sender.receiver_count())
            .field("subscribers", &self.subscribers().len())
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BROADCAST_CAPACITY).0,
            subscribers: RwLock::new(Vec::new()),
        }
    }
}

impl EventBus {
    /// Receives every event delivered from now on (best effort: a receiver that falls more
    /// than 1024 events behind misses some; use [`EventBus::register`] when that matters).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AuditEvent>> {
        self.sender.subscribe()
    }

    /// Adds a subscriber that gets every event at least once.
    pub fn register(&self, subscriber: Arc<dyn Subscriber>) {
        match self.subscribers.write() {
            Ok(mut list) => list.push(subscriber),
            Err(poisoned) => poisoned.into_inner().push(subscriber),
        }
    }

    fn subscribers(&self) -> Vec<Arc<dyn Subscriber>> {
        match self.subscribers.read() {
            Ok(list) => list.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Hands one event to everyone; an error names the first subscriber that failed.
    async fn deliver(&self, event: Arc<AuditEvent>) -> Result<(), String> {
        let mut failed = None;
        for s in self.subscribers() {
            if let Err(e) = s.deliver(&event).await {
                tracing::warn!(subscriber = s.name(), event_id = %event.id, error = %e, "event delivery failed; it will be retried");
                failed.get_or_insert_with(|| format!("{}: {e}", s.name()));
            }
        }
        // Broadcast last and only once everyone took it, so a retried event is not
        // broadcast once per attempt.
        if let Some(f) = failed {
            return Err(f);
        }
        let _ = self.sender.send(event);
        Ok(())
    }
}

/// The statement that writes the outbox messages of events (run it in the events'
/// transaction, then [`wake_after_commit`]).
pub(crate) fn messages(events: &[AuditEvent]) -> Result<InsertStatement, StoreError> {
    let mut insert = Query::insert()
        .into_table("audit_outbox")
        .columns([
            "id",
            "org_id",
            "event_id",
            "action",
            "payload",
            "created_at",
            "available_at",
            "attempts",
        ])
        .to_owned();
    for event in events {
        let payload = serde_json::to_string(event).map_err(|e| StoreError::Other(e.into()))?;
        insert.values_panic([
            Uuid::now_v7().into(),
            event.org_id.into(),
            event.id.into(),
            event.action.clone().into(),
            payload.into(),
            event.created_at.into(),
            event.created_at.into(),
            0i64.into(),
        ]);
    }
    Ok(insert)
}

/// Wakes the relay once `tx` (which wrote outbox messages) commits.
pub(crate) fn wake_after_commit(tx: &mut Tx) {
    tx.after_commit(wake);
}

#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
struct Message {
    id: Uuid,
    payload: String,
    attempts: i64,
}

/// What one relay pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayPass {
    pub claimed: usize,
    pub delivered: usize,
}

/// Claims up to `batch` due messages, delivers them and marks them.
pub async fn relay_once(db: &Db, bus: &EventBus, batch: u64) -> Result<RelayPass, StoreError> {
    let due = || {
        Query::select()
            .columns(["id", "payload", "attempts"])
            .from("audit_outbox")
            .and_where(Expr::col("delivered_at").is_null())
            .and_where(Expr::col("available_at").lte(now()))
            .order_by("available_at", Order::Asc)
            .order_by("id", Order::Asc)
            .limit(batch)
            .to_owned()
    };
    let claimed: Vec<Message> = if db.kind() == crate::config::DatabaseKind::Postgres {
        // One statement, one round trip: lease the due rows no other relay holds and return
        // them. `RETURNING` gives the counted attempt; the backoff counts from the one
        // before, as on SQLite.
        let mut rows: Vec<Message> = db
            .fetch_all(
                &Query::update()
                    .table("audit_outbox")
                    .values(lease())
                    .and_where(
                        Expr::col("id").in_subquery(
                            due()
                                .clear_selects()
                                .column("id")
                                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                                .to_owned(),
                        ),
                    )
                    .returning(Query::returning().columns(["id", "payload", "attempts"]))
                    .to_owned(),
            )
            .await?;
        for m in &mut rows {
            m.attempts -= 1;
        }
        // Uuid v7 ids: creation order, as the claim's ORDER BY for messages not retried.
        rows.sort_by_key(|m| m.id);
        rows
    } else {
        // A plain read first: an idle relay must not take SQLite's write lock every poll.
        if db
            .fetch_optional::<Message>(&due().limit(1).to_owned())
            .await?
            .is_none()
        {
            return Ok(RelayPass::default());
        }
        claim_in_transaction(db, due).await?
    };
    let mut pass = RelayPass {
        claimed: claimed.len(),
        delivered: 0,
    };
    let mut delivered = Vec::new();
    for m in claimed {
        let result = match serde_json::from_str::<AuditEvent>(&m.payload) {
            Ok(event) => bus.deliver(Arc::new(event)).await,
            Err(e) => Err(format!("unreadable payload: {e}")),
        };
        match result {
            Ok(()) => delivered.push(m.id),
            Err(error) => {
                let backoff = Ord::min(
                    2i64.saturating_pow(u32::try_from(m.attempts.clamp(0, 16)).unwrap_or(16)),
                    MAX_BACKOFF_SECS,
                );
                db.execute(
                    &Query::update()
                        .table("audit_outbox")
                        .values([
                            ("available_at", (now() + TimeDelta::seconds(backoff)).into()),
                            (
                                "last_error",
                                error.chars().take(500).collect::<String>().into(),
                            ),
                        ])
                        .and_where(Expr::col("id").eq(m.id))
                        .to_owned(),
                )
                .await?;
            }
        }
    }
    if !delivered.is_empty() {
        pass.delivered = delivered.len();
        db.execute(
            &Query::update()
                .table("audit_outbox")
                .value("delivered_at", now())
                .and_where(Expr::col("id").is_in(delivered))
                .to_owned(),
        )
        .await?;
    }
    Ok(pass)
}

/// What claiming a message sets: its lease, and one more attempt.
fn lease() -> [(&'static str, sea_query::SimpleExpr); 2] {
    [
        ("available_at", (now() + LEASE).into()),
        ("attempts", Expr::col("attempts").add(1)),
    ]
}

/// SQLite's claim: the due rows, then their lease, in one transaction (the write lock keeps
/// other relays out).
async fn claim_in_transaction(
    db: &Db,
    due: impl Fn() -> sea_query::SelectStatement + Send + Sync,
) -> Result<Vec<Message>, StoreError> {
    let due = &due;
    db.transaction(|tx| {
        Box::pin(async move {
            let rows: Vec<Message> = tx.fetch_all(&due()).await?;
            if !rows.is_empty() {
                tx.execute(
                    &Query::update()
                        .table("audit_outbox")
                        .values(lease())
                        .and_where(Expr::col("id").is_in(rows.iter().map(|r| r.id)))
                        .to_owned(),
                )
                .await?;
            }
            Ok::<_, StoreError>(rows)
        })
    })
    .await
}

/// Relays until `stop` turns true, then makes one last pass (so what committed before
/// shutdown is delivered by this node when it can be).
pub async fn run_relay(
    db: Db,
    bus: Arc<EventBus>,
    poll: Duration,
    batch: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut swept = std::time::Instant::now();
    loop {
        // Registered before reading, so a commit between the read and the wait still wakes us.
        let notified = WAKE.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if swept.elapsed() >= poll {
            swept = std::time::Instant::now();
            sweep_pending(&db, STALE_PENDING).await;
        }
        match relay_once(&db, &bus, batch).await {
            // A full batch: there may be more; go again at once.
            Ok(p) if p.claimed as u64 >= batch => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit outbox relay pass failed"),
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(poll) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    sweep_pending(&db, Duration::ZERO).await;
    if let Err(e) = relay_once(&db, &bus, batch).await {
        tracing::warn!(error = %e, "audit outbox: last relay pass before shutdown failed");
    }
}

/// How long an event may wait in `audit_pending` before the relay chains it (the writer's
/// own pass normally chains it within milliseconds of its commit).
const STALE_PENDING: Duration = Duration::from_secs(10);

/// Chains events a writer left pending (PostgreSQL; see [`super::chain`]).
async fn sweep_pending(db: &Db, older_than: Duration) {
    match super::chain::chain_stale(db, older_than).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(events = n, "audit: chained events left pending"),
        Err(e) => tracing::warn!(error = %e, "audit: chaining pending events failed"),
    }
}

/// Messages not yet delivered (for tests and operators).
pub async fn pending(db: &Db) -> Result<u64, StoreError> {
    crate::auth::store::count_where(
        db,
        "audit_outbox",
        sea_query::Cond::all().add(Expr::col("delivered_at").is_null()),
    )
    .await
}
