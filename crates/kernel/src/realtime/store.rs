//! Realtime queries: the per-organization message counter, the messages kept for resuming,
//! and browser tickets. Every query names the organization.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use sea_query::{Cond, Expr, ExprTrait, OnConflict, Order, Query};
use uuid::Uuid;

use super::Message;
use crate::store::{Db, StoreError, Tx, now};

/// Takes the organization's next message number. On PostgreSQL the counter row stays
/// locked until `tx` ends, so numbers commit in order and without gaps (a rollback returns
/// its number); SQLite's write lock does the same.
pub(crate) async fn next_seq(tx: &mut Tx, org_id: Uuid) -> Result<i64, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Row {
        last_seq: i64,
    }
    let at = now();
    let row: Row = tx
        .fetch_one(
            &Query::insert()
                .into_table("realtime_sequences")
                .columns(["org_id", "last_seq", "updated_at"])
                .values_panic([org_id.into(), 1i64.into(), at.into()])
                .on_conflict(
                    OnConflict::column("org_id")
                        .value(
                            "last_seq",
                            Expr::col(("realtime_sequences", "last_seq")).add(1),
                        )
                        .value("updated_at", at)
                        .to_owned(),
                )
                .returning(Query::returning().column("last_seq"))
                .to_owned(),
        )
        .await?;
    Ok(row.last_seq)
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_message(
    tx: &mut Tx,
    org_id: Uuid,
    seq: i64,
    channel: &str,
    kind: &str,
    data: &serde_json::Value,
    source: Option<Uuid>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::insert()
            .into_table("realtime_messages")
            .columns([
                "org_id",
                "seq",
                "channel",
                "kind",
                "data",
                "source_id",
                "created_at",
            ])
            .values_panic([
                org_id.into(),
                seq.into(),
                channel.into(),
                kind.into(),
                data.to_string().into(),
                source.into(),
                at.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// Whether an audit event was already published on a channel (the relay redelivers).
pub(crate) async fn published_from(
    tx: &mut Tx,
    org_id: Uuid,
    source: Uuid,
    channel: &str,
) -> Result<bool, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Row {
        #[allow(dead_code)]
        seq: i64,
    }
    Ok(tx
        .fetch_optional::<Row>(
            &Query::select()
                .column("seq")
                .from("realtime_messages")
                .and_where(Expr::col("org_id").eq(org_id))
                .and_where(Expr::col("source_id").eq(source))
                .and_where(Expr::col("channel").eq(channel))
                .to_owned(),
        )
        .await?
        .is_some())
}

/// The organization's last message number (0 before its first).
pub(crate) async fn current_seq(db: &Db, org_id: Uuid) -> Result<i64, StoreError> {
    Ok(current_seqs(db, &[org_id])
        .await?
        .get(&org_id)
        .copied()
        .unwrap_or(0))
}

pub(crate) async fn current_seqs(db: &Db, orgs: &[Uuid]) -> Result<HashMap<Uuid, i64>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Row {
        org_id: Uuid,
        last_seq: i64,
    }
    let mut out = HashMap::new();
    for chunk in orgs.chunks(500) {
        let rows: Vec<Row> = db
            .fetch_all(
                &Query::select()
                    .columns(["org_id", "last_seq"])
                    .from("realtime_sequences")
                    .and_where(Expr::col("org_id").is_in(chunk.iter().copied()))
                    .to_owned(),
            )
            .await?;
        out.extend(rows.into_iter().map(|r| (r.org_id, r.last_seq)));
    }
    Ok(out)
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct MessageRow {
    seq: i64,
    channel: String,
    kind: String,
    data: String,
    created_at: DateTime<Utc>,
}

impl From<MessageRow> for Message {
    fn from(r: MessageRow) -> Self {
        Message {
            id: r.seq.to_string(),
            channel: r.channel,
            kind: r.kind,
            data: serde_json::from_str(&r.data).unwrap_or(serde_json::Value::Null),
            ts: r.created_at,
            seq: r.seq,
            text: Default::default(),
        }
    }
}

/// The organization's messages numbered in `(after, upto]`, oldest first, at most `limit`;
/// only those of `channels` when given.
pub(crate) async fn messages_after(
    db: &Db,
    org_id: Uuid,
    channels: Option<&[String]>,
    after: i64,
    upto: i64,
    limit: u64,
) -> Result<Vec<Message>, StoreError> {
    let mut cond = Cond::all()
        .add(Expr::col("org_id").eq(org_id))
        .add(Expr::col("seq").gt(after))
        .add(Expr::col("seq").lte(upto));
    if let Some(channels) = channels {
        cond = cond.add(Expr::col("channel").is_in(channels.iter().map(String::as_str)));
    }
    let rows: Vec<MessageRow> = db
        .fetch_all(
            &Query::select()
                .columns(["seq", "channel", "kind", "data", "created_at"])
                .from("realtime_messages")
                .cond_where(cond)
                .order_by("seq", Order::Asc)
                .limit(limit)
                .to_owned(),
        )
        .await?;
    Ok(rows.into_iter().map(Message::from).collect())
}

/// A ticket's holder, as recorded when it was issued.
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub(crate) struct TicketRow {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub partner_id: Option<Uuid>,
    pub permissions: String,
    pub session_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    pub token_expires_at: Option<i64>,
    pub api_key_id: Option<Uuid>,
}

pub(crate) async fn insert_ticket(
    db: &Db,
    row: &TicketRow,
    token_hash: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    db.execute(
        &Query::insert()
            .into_table("realtime_tickets")
            .columns([
                "org_id",
                "token_hash",
                "user_id",
                "partner_id",
                "permissions",
                "session_id",
                "token_id",
                "token_expires_at",
                "api_key_id",
                "expires_at",
            ])
            .values_panic([
                row.org_id.into(),
                token_hash.into(),
                row.user_id.into(),
                row.partner_id.into(),
                row.permissions.clone().into(),
                row.session_id.into(),
                row.token_id.into(),
                row.token_expires_at.into(),
                row.api_key_id.into(),
                expires_at.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// Uses a ticket up: returns its holder if it existed and had not expired.
pub(crate) async fn take_ticket(
    db: &Db,
    org_id: Uuid,
    token_hash: &str,
) -> Result<Option<TicketRow>, StoreError> {
    db.fetch_optional(
        &Query::delete()
            .from_table("realtime_tickets")
            .and_where(Expr::col("org_id").eq(org_id))
            .and_where(Expr::col("token_hash").eq(token_hash))
            .and_where(Expr::col("expires_at").gt(now()))
            .returning(Query::returning().columns([
                "org_id",
                "user_id",
                "partner_id",
                "permissions",
                "session_id",
                "token_id",
                "token_expires_at",
                "api_key_id",
            ]))
            .to_owned(),
    )
    .await
}

/// What a prune removed.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Pruned {
    pub messages: u64,
    pub tickets: u64,
}

/// Removes messages older than the retention window and expired tickets.
pub async fn prune(db: &Db, retention_secs: u64) -> Result<Pruned, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Row {
        org_id: Uuid,
    }
    let secs = i64::try_from(retention_secs).unwrap_or(i64::MAX);
    let cutoff = now() - TimeDelta::try_seconds(secs).unwrap_or(TimeDelta::MAX);
    let orgs: Vec<Row> = db
        .fetch_all(
            &Query::select()
                .column("org_id")
                .from("realtime_sequences")
                .to_owned(),
        )
        .await?;
    let mut pruned = Pruned::default();
    for org in orgs {
        pruned.messages += db
            .execute(
                &Query::delete()
                    .from_table("realtime_messages")
                    .and_where(Expr::col("org_id").eq(org.org_id))
                    .and_where(Expr::col("created_at").lt(cutoff))
                    .to_owned(),
            )
            .await?;
    }
    // Tickets are few and short-lived: one sweep over all of them.
    pruned.tickets += db
        .execute(
            &Query::delete()
                .from_table("realtime_tickets")
                .and_where(Expr::col("expires_at").lte(now()))
                .to_owned(),
        )
        .await?;
    Ok(pruned)
}
