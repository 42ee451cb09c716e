//! First planner statistics for tables that have none (PostgreSQL).
//!
//! A table PostgreSQL has never analyzed has no statistics, and the planner guesses. For
//! Keel's tenant-scoped lookups the guess is costly: `WHERE org_id = $1 AND deleted_at IS
//! NULL AND id = $2` can be planned on an organization index (reading every row of the
//! organization, 3.3 ms at 6,600 shipments and growing) instead of the primary key
//! (0.2 ms). Autovacuum takes the first statistics on its own, but only on its next round
//! through the database (`autovacuum_naptime`, a minute by default, shared by every
//! database of the server), so a database that fills quickly after it was created — a new
//! deployment taking its first traffic, an import — runs that long on guesses.
//!
//! Every serving node therefore looks every [`CHECK_EVERY`] for tables of its schema that
//! were never analyzed (by anyone) and have had at least [`FIRST_STATISTICS_CHANGES`] rows
//! written, and analyzes them. Once a table has statistics it is autovacuum's again: this
//! takes the first statistics only. One node at a time does it (a transaction-scoped
//! advisory lock; another node finding it taken skips the round), and a table is tried
//! once per process, so a role that may not analyze it (PostgreSQL then warns and skips
//! it) is not retried every few seconds. SQLite's planner picks Keel's indexes without
//! statistics, so nothing runs there.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::{Db, StoreError};

/// How often a node looks for tables without statistics.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Rows written (inserted, updated or deleted) to a never-analyzed table before its first
/// statistics are taken: below this, guesses cost little.
pub const FIRST_STATISTICS_CHANGES: i64 = 500;

/// The advisory lock one node holds while it takes first statistics.
const LOCK_KEY: i64 = 0x6b65_656c_5354_4154; // "keelSTAT"

/// The tables of the current schema that no one has analyzed and that had at least
/// `min_changes` rows written, minus those in `tried`.
async fn unmeasured(
    db: &Db,
    min_changes: i64,
    tried: &HashSet<String>,
) -> Result<Vec<String>, StoreError> {
    let Db::Postgres(pool) = db else {
        return Ok(Vec::new());
    };
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT relname::text FROM pg_stat_user_tables \
         WHERE schemaname = current_schema() \
           AND last_analyze IS NULL AND last_autoanalyze IS NULL \
           AND n_mod_since_analyze >= $1 \
         ORDER BY relname",
    )
    .bind(min_changes)
    .fetch_all(pool.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t,)| t)
        .filter(|t| !tried.contains(t))
        .collect())
}

/// Analyzes the current schema's never-analyzed tables with at least `min_changes` rows
/// written (skipping `tried`, and adding to it what it analyzes), unless another node is
/// doing the same; returns the tables it analyzed. A no-op on SQLite.
pub async fn take_first_statistics(
    db: &Db,
    min_changes: i64,
    tried: &mut HashSet<String>,
) -> Result<Vec<String>, StoreError> {
    let tables = unmeasured(db, min_changes, tried).await?;
    let Db::Postgres(pool) = db else {
        return Ok(Vec::new());
    };
    if tables.is_empty() {
        return Ok(tables);
    }
    let mut tx = pool.pool().begin().await?;
    let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(Vec::new());
    }
    for t in &tables {
        tried.insert(t.clone());
        // A name read from the catalog, quoted as an identifier.
        let quoted = format!("\"{}\"", t.replace('"', "\"\""));
        sqlx::query(AssertSqlSafe(format!("ANALYZE {quoted}")))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(tables)
}

/// Takes first statistics every [`CHECK_EVERY`] for as long as the node serves.
pub async fn first_statistics_forever(db: Db) {
    if !matches!(db, Db::Postgres(_)) {
        return;
    }
    let mut tried = HashSet::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match take_first_statistics(&db, FIRST_STATISTICS_CHANGES, &mut tried).await {
            Ok(tables) if !tables.is_empty() => {
                tracing::info!(
                    ?tables,
                    "took the first planner statistics of tables that had none"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check tables for planner statistics"),
        }
    }
}
