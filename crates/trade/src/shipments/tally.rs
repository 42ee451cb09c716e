//! Live shipments per (organization, status, e-BRC status).
//!
//! Why: a list page with an exact total must not count the organization's shipments on every
//! request. `COUNT(*)` over 100,000 index entries costs milliseconds on either engine and
//! dominated the naive list (see PERFORMANCE.md); summing at most 5 × 4 = 20 cells (in at
//! most [`PG_SHARDS`] rows each) costs microseconds and answers the unfiltered list and the status and e-BRC status filters (and
//! both together) exactly. Every write that creates, deletes or moves a shipment between
//! cells shifts its tally in the same transaction, so a committed tally always equals the
//! rows; other filters (country, dates, search, partner users) count the matching rows.
//!
//! Concurrency: an upsert holds its row's lock until the transaction commits. SQLite serializes
//! writers anyway, and keeps one row per cell (shard 0). On PostgreSQL a cell is split into
//! [`PG_SHARDS`] rows and each shift picks one at random, so an organization's concurrent
//! creates (all into draft/pending) do not queue on one row; a cell's count is the sum of its
//! shards, and one shard alone may be negative. The cells a transaction touches are updated
//! in a fixed order (sorted by key), so two transactions shifting the same pair of cells in
//! opposite directions queue instead of deadlocking.

use keel_kernel::config::DatabaseKind;
use keel_kernel::store::{Db, StoreError, Tx};
use rand::Rng;
use sea_query::{Expr, ExprTrait, Func, OnConflict, Query, SelectStatement};
use uuid::Uuid;

use super::store::Shipment;
use super::{EbrcStatus, Status};

pub const TABLE: &str = "trade_shipment_tallies";

/// Rows per cell on PostgreSQL: concurrent writes to one cell meet on the same row one time
/// in this many, and a total sums at most 20 × this many rows.
pub const PG_SHARDS: i16 = 8;

/// One cell: a status and an e-BRC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tally {
    pub status: Status,
    pub ebrc: EbrcStatus,
}

impl Tally {
    pub fn new(status: Status, ebrc: EbrcStatus) -> Self {
        Self { status, ebrc }
    }

    /// The cell a stored shipment is counted in.
    pub fn of(s: &Shipment) -> Result<Self, StoreError> {
        let status = Status::parse(&s.status)
            .ok_or_else(|| anyhow::anyhow!("shipment {} has unknown status {}", s.id, s.status))?;
        let ebrc = EbrcStatus::parse(&s.ebrc_status).ok_or_else(|| {
            anyhow::anyhow!(
                "shipment {} has unknown e-BRC status {}",
                s.id,
                s.ebrc_status
            )
        })?;
        Ok(Self { status, ebrc })
    }
}

/// Moves one shipment out of `from` and into `to` (either may be absent: created, deleted).
pub async fn shift(
    tx: &mut Tx,
    org: Uuid,
    from: Option<Tally>,
    to: Option<Tally>,
) -> Result<(), StoreError> {
    let mut steps: Vec<(Tally, i64)> = Vec::with_capacity(2);
    if let Some(f) = from {
        steps.push((f, -1));
    }
    if let Some(t) = to {
        steps.push((t, 1));
    }
    let shard = match tx.kind() {
        DatabaseKind::Sqlite => 0,
        DatabaseKind::Postgres => rand::rng().random_range(0..PG_SHARDS),
    };
    steps.sort();
    for (cell, delta) in steps {
        add(tx, org, cell, shard, delta).await?;
    }
    Ok(())
}

/// Adds `delta` shipments to a shard of a cell (creating it at `delta`).
async fn add(
    tx: &mut Tx,
    org: Uuid,
    cell: Tally,
    shard: i16,
    delta: i64,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::insert()
            .into_table(TABLE)
            .columns(["org_id", "status", "ebrc_status", "shard", "n"])
            .values_panic([
                org.into(),
                cell.status.as_str().into(),
                cell.ebrc.as_str().into(),
                shard.into(),
                delta.into(),
            ])
            .on_conflict(
                OnConflict::columns(["org_id", "status", "ebrc_status", "shard"])
                    .value("n", Expr::col((TABLE, "n")).add(delta))
                    .to_owned(),
            )
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// Live shipments of an organization, optionally of one status and/or e-BRC status.
pub async fn sum(
    db: &Db,
    org: Uuid,
    status: Option<Status>,
    ebrc: Option<EbrcStatus>,
) -> Result<u64, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Sum {
        n: i64,
    }
    let row: Sum = db.fetch_one(&sum_query(org, status, ebrc)).await?;
    Ok(u64::try_from(row.n).unwrap_or(0))
}

/// `SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) AS n …`: also used as a scalar subquery, so a
/// list page and its total are one statement.
pub fn sum_query(org: Uuid, status: Option<Status>, ebrc: Option<EbrcStatus>) -> SelectStatement {
    let mut select = Query::select()
        .expr_as(
            Func::cast_as(
                Func::coalesce([
                    sea_query::Expr::from(Func::sum(Expr::col("n"))),
                    Expr::val(0i64),
                ]),
                "BIGINT",
            ),
            "n",
        )
        .from(TABLE)
        .and_where(Expr::col("org_id").eq(org))
        .to_owned();
    if let Some(s) = status {
        select.and_where(Expr::col("status").eq(s.as_str()));
    }
    if let Some(e) = ebrc {
        select.and_where(Expr::col("ebrc_status").eq(e.as_str()));
    }
    select
}

/// Counts per cell, for the dashboard: `(status, ebrc_status, n)` with n > 0.
pub async fn cells(db: &Db, org: Uuid) -> Result<Vec<(String, String, i64)>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Cell {
        status: String,
        ebrc_status: String,
        n: i64,
    }
    let n = || Func::cast_as(Func::sum(Expr::col("n")), "BIGINT");
    let rows: Vec<Cell> = db
        .fetch_all(
            &Query::select()
                .columns(["status", "ebrc_status"])
                .expr_as(n(), "n")
                .from(TABLE)
                .and_where(Expr::col("org_id").eq(org))
                .group_by_columns(["status", "ebrc_status"])
                .and_having(Expr::expr(n()).gt(0))
                .to_owned(),
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|c| (c.status, c.ebrc_status, c.n))
        .collect())
}

/// Recomputes an organization's tallies from its rows (after bulk loads such as the demo
/// seed, which insert rows without shifting tallies one by one).
pub async fn rebuild(tx: &mut Tx, org: Uuid) -> Result<(), StoreError> {
    tx.execute(
        &Query::delete()
            .from_table(TABLE)
            .and_where(Expr::col("org_id").eq(org))
            .to_owned(),
    )
    .await?;
    let counts = Query::select()
        .columns(["org_id", "status", "ebrc_status"])
        .expr(Func::count(Expr::col(sea_query::Asterisk)))
        .from(super::store::TABLE)
        .and_where(Expr::col("org_id").eq(org))
        .and_where(Expr::col("deleted_at").is_null())
        .group_by_columns(["org_id", "status", "ebrc_status"])
        .to_owned();
    tx.execute(
        &Query::insert()
            .into_table(TABLE)
            .columns(["org_id", "status", "ebrc_status", "n"])
            .select_from(counts)
            .map_err(|e| StoreError::Other(e.into()))?
            .to_owned(),
    )
    .await?;
    Ok(())
}
