//! The store: one handle over SQLite (embedded) or PostgreSQL (scale-out).
//!
//! Every query is written once with `sea-query` and rendered for the backend in use, so
//! nothing above this module knows which engine it runs on. PostgreSQL runs through sqlx;
//! SQLite through rusqlite, each statement executed where it is awaited (see [`sqlite`] for
//! why). A row type decodes on both: it derives `sqlx::FromRow` (PostgreSQL) and
//! `serde::Deserialize` (SQLite), its fields named as its columns.
//!
//! Conventions every table follows so both engines agree:
//! - ids are UUIDs (a 16-byte BLOB on SQLite, `uuid` on PostgreSQL);
//! - timestamps are `DateTime<Utc>` truncated to microseconds ([`now`]); SQLite stores them
//!   as RFC 3339 text whose lexical order is their time order;
//! - JSON is `jsonb` on PostgreSQL and text on SQLite (a `serde_json::Value` field decodes
//!   with [`json_column`]);
//! - text comparisons that must ignore case use `lower()` on both sides.
//!
//! Units of work: [`Db::transaction`] runs a closure in a transaction and runs it again when
//! the engine reports contention (PostgreSQL serialization failures and deadlocks, SQLite
//! busy/locked), with bounded, jittered backoff; [`Tx::savepoint`] nests a unit of work that
//! can fail on its own without aborting the outer one; [`Tx::after_commit`] runs a hook only
//! once the transaction is durable (the audit outbox uses it to wake its relay).

pub mod migrate;
pub mod planner;
pub mod sqlite;
pub mod stats;
mod unit;

pub use sqlite::SqliteDb;
pub use unit::{RetryPolicy, Savepoint, UnitOfWork};

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, SubsecRound, Utc};
use sea_query::{PostgresQueryBuilder, SqliteQueryBuilder};
use sea_query_sqlx::SqlxBinder;
use serde::de::DeserializeOwned;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, FromRow, PgPool};

use crate::config::{Config, DatabaseKind};

/// The cause of an unavailable or contended database, whichever engine reported it.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Applies a list's page request to its query: in cursor mode the keyset condition; the
/// order (the sort field, then the id, in one direction); one row more than a page (so the
/// page knows whether another follows); and the offset of a numbered page.
pub fn paginate(
    select: &mut sea_query::SelectStatement,
    page: &crate::http::pagination::PageRequest,
) {
    if let Some(keyset) = page.keyset() {
        select.cond_where(keyset);
    }
    let order = page.order();
    select
        .order_by(sea_query::Alias::new(page.sort.clone()), order.clone())
        .order_by("id", order)
        .limit(page.fetch_limit())
        .offset(page.offset());
}

/// The current time, at the precision both engines store (microseconds).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Errors from the store, in terms callers act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique or foreign-key constraint refused the write; the name says which.
    #[error("constraint violated: {constraint}")]
    Conflict { constraint: String },
    /// The database is unreachable or the pool is exhausted: retryable by the caller.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// Another transaction got in the way (PostgreSQL serialization failure or deadlock,
    /// SQLite busy or locked): running the whole transaction again is expected to succeed.
    /// [`Db::transaction`] does that by itself.
    #[error("transaction conflict; retry: {0}")]
    Contention(#[source] Cause),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db)
                if db.is_unique_violation() || db.is_foreign_key_violation() =>
            {
                StoreError::Conflict {
                    constraint: db.constraint().unwrap_or("unknown").to_string(),
                }
            }
            sqlx::Error::Database(db) if is_contention_code(db.code().as_deref()) => {
                StoreError::Contention(e.into())
            }
            sqlx::Error::Database(db) if is_unavailable_code(db.code().as_deref()) => {
                StoreError::Unavailable(e.into())
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e.into()),
            _ => StoreError::Other(anyhow::Error::new(e)),
        }
    }
}

impl StoreError {
    /// Whether running the transaction again may succeed.
    pub fn is_contention(&self) -> bool {
        matches!(self, StoreError::Contention(_))
    }
}

/// PostgreSQL SQLSTATE 40001 (serialization failure) and 40P01 (deadlock).
fn is_contention_code(code: Option<&str>) -> bool {
    matches!(code, Some("40001" | "40P01"))
}

/// PostgreSQL SQLSTATEs that say the server, not the statement, is the problem: a lost
/// connection (class 08), the server shutting down, restarting or failing over, which ends
/// every session with 57P01–57P03 (`terminating connection due to administrator command`),
/// the database dropped (57P04) or gone (3D000), and no connection slot free (53300). The
/// request may succeed once the server is back: 503, not 500.
fn is_unavailable_code(code: Option<&str>) -> bool {
    match code {
        Some(c) => {
            c.starts_with("08")
                || matches!(c, "57P01" | "57P02" | "57P03" | "57P04" | "3D000" | "53300")
        }
        None => false,
    }
}

/// A row type both engines can decode: `sqlx::FromRow` for PostgreSQL, `serde::Deserialize`
/// by column name for SQLite.
pub trait Row: for<'r> FromRow<'r, PgRow> + DeserializeOwned + Send + Unpin {}
impl<T> Row for T where T: for<'r> FromRow<'r, PgRow> + DeserializeOwned + Send + Unpin {}

/// Decodes a `serde_json::Value` column: `jsonb` on PostgreSQL (through sqlx), text on
/// SQLite. Use as `#[serde(deserialize_with = "keel_kernel::store::json_column")]`.
pub fn json_column<'de, D: serde::Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    d.deserialize_any(JsonText)
}

/// [`json_column`] for an optional column.
pub fn json_column_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    struct Opt;
    impl<'de> serde::de::Visitor<'de> for Opt {
        type Value = Option<serde_json::Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON text or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            json_column(d).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

struct JsonText;

impl<'de> serde::de::Visitor<'de> for JsonText {
    type Value = serde_json::Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON text")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        serde_json::from_str(v).map_err(E::custom)
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        serde_json::from_slice(v).map_err(E::custom)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
}

/// A connection pool on one of the two engines.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqliteDb),
    Postgres(PgDb),
}

/// PostgreSQL: the connection pool and the node's writer slots.
///
/// Writes that touch the same rows (a counter row, a chain head) queue on row locks inside
/// PostgreSQL, each holding a pooled connection while it waits. Without
/// a bound, a burst of writes to one organization takes every connection of the pool and
/// reads — of every organization on the node — wait behind them. A transaction therefore
/// first takes one of the node's writer slots (half the pool, a fair queue, waited for
/// asynchronously and bounded by `database.acquire_timeout_ms`); the other half of the pool
/// stays free for reads. It derefs to the pool for engine-specific code.
#[derive(Debug, Clone)]
pub struct PgDb {
    pool: PgPool,
    writers: Arc<tokio::sync::Semaphore>,
    wait: Duration,
}

impl PgDb {
    pub fn new(pool: PgPool, max_connections: u32, wait: Duration) -> Self {
        let slots = (max_connections as usize / 2).max(1);
        Self {
            pool,
            writers: Arc::new(tokio::sync::Semaphore::new(slots)),
            wait,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn writer_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        let started = Instant::now();
        if let Ok(permit) = self.writers.clone().try_acquire_owned() {
            stats::write_turn_taken(started, false);
            return Ok(permit);
        }
        match tokio::time::timeout(self.wait, self.writers.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                stats::write_turn_taken(started, true);
                Ok(permit)
            }
            Ok(Err(closed)) => Err(StoreError::Unavailable(Box::new(closed))),
            Err(_) => Err(StoreError::Contention(
                format!(
                    "no writer slot became free within {} ms",
                    self.wait.as_millis()
                )
                .into(),
            )),
        }
    }
}

impl std::ops::Deref for PgDb {
    type Target = PgPool;

    fn deref(&self) -> &PgPool {
        &self.pool
    }
}

/// Pool figures for health and metrics.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolStats {
    pub size: u32,
    pub idle: usize,
    pub max: u32,
}

/// Takes a PostgreSQL connection from the pool, recording whether (and how long) it had to
/// wait.
async fn acquire_pg(
    pool: &PgPool,
) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, StoreError> {
    let waited = pool.num_idle() == 0;
    let started = Instant::now();
    let conn = pool.acquire().await?;
    stats::acquired("query", started, waited);
    Ok(conn)
}

impl Db {
    /// Connects to the configured database, retrying with exponential backoff (the database
    /// may still be starting), and applies engine settings (WAL, foreign keys, schema).
    pub async fn connect(config: &Config) -> anyhow::Result<Db> {
        let db = config.database.clone();
        let attempts = db.connect_attempts.max(1);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(db.connect_backoff_initial_ms))
            .with_max_delay(Duration::from_millis(db.connect_backoff_max_ms))
            .with_factor(2.0)
            .with_max_times(attempts.saturating_sub(1) as usize);
        let connect = || async { Self::connect_once(config).await };
        connect
            .retry(backoff)
            .notify(|err, delay| {
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "database not reachable yet; retrying");
            })
            .await
            .with_context(|| format!("could not connect to the database after {attempts} attempts"))
    }

    async fn connect_once(config: &Config) -> anyhow::Result<Db> {
        stats::set_slow_query_threshold(Duration::from_millis(config.database.slow_query_ms));
        let url = config.database_url();
        let db = &config.database;
        let acquire = Duration::from_millis(db.acquire_timeout_ms);
        match config.database_kind() {
            DatabaseKind::Sqlite => {
                let path = sqlite::path_of(&url)?;
                let busy = Duration::from_millis(db.sqlite_busy_timeout_ms);
                let (max, min) = (db.max_connections, db.min_connections);
                let mmap = db.sqlite_mmap_mib.saturating_mul(1 << 20);
                let sqlite = tokio::task::spawn_blocking(move || {
                    SqliteDb::open(&path, max, min, busy, acquire, mmap)
                })
                .await
                .context("opening the SQLite database")??;
                Ok(Db::Sqlite(sqlite))
            }
            DatabaseKind::Postgres => {
                let mut options = PgConnectOptions::from_str(&url)
                    .context("database_url is not a valid PostgreSQL URL")?;
                if let Some(schema) = &db.schema {
                    // Sent in the start-up packet: no extra round trip per connection.
                    options = options.options([("search_path", schema.as_str())]);
                }
                let pool = PgPoolOptions::new()
                    .max_connections(db.max_connections)
                    .min_connections(db.min_connections)
                    .acquire_timeout(acquire)
                    .connect_with(options)
                    .await?;
                if let Some(schema) = &db.schema {
                    let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
                    sqlx::raw_sql(AssertSqlSafe(create)).execute(&pool).await?;
                }
                Ok(Db::Postgres(PgDb::new(pool, db.max_connections, acquire)))
            }
        }
    }

    pub fn kind(&self) -> DatabaseKind {
        match self {
            Db::Sqlite(_) => DatabaseKind::Sqlite,
            Db::Postgres(_) => DatabaseKind::Postgres,
        }
    }

    /// The SQLite database file, when on SQLite.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        match self {
            Db::Sqlite(db) => Some(db.path().to_path_buf()),
            Db::Postgres(_) => None,
        }
    }

    /// One round trip; returns its latency.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        match self {
            Db::Sqlite(db) => {
                let conn = db.acquire("query").await?;
                conn.query_row("SELECT 1", [], |_| Ok(()))?;
            }
            Db::Postgres(pool) => {
                Box::pin(sqlx::raw_sql("SELECT 1").execute(pool.pool())).await?;
            }
        }
        Ok(started.elapsed())
    }

    pub fn pool_stats(&self) -> PoolStats {
        match self {
            Db::Sqlite(db) => {
                let (size, idle, max) = db.counts();
                PoolStats { size, idle, max }
            }
            Db::Postgres(pool) => PoolStats {
                size: pool.size(),
                idle: pool.num_idle(),
                max: pool.options().get_max_connections(),
            },
        }
    }

    /// Starts a transaction. On SQLite it first waits for the node's write turn (see
    /// [`SqliteDb`]), then takes the write lock at once (`BEGIN IMMEDIATE`), so a transaction
    /// that reads and then writes cannot fail half-way on a lock upgrade.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let started = Instant::now();
        let conn = match self {
            Db::Sqlite(db) => {
                let turn = db.write_turn().await?;
                let mut conn = db.acquire("transaction").await?;
                let busy = conn.busy_timeout();
                if let Err(e) = sqlite::begin_immediate(&conn, busy) {
                    conn.discard();
                    return Err(e);
                }
                TxConn::Sqlite(SqliteTx {
                    conn,
                    open: true,
                    _turn: turn,
                })
            }
            Db::Postgres(pg) => {
                let slot = pg.writer_slot().await?;
                let waited = pg.num_idle() == 0;
                let tx = Box::pin(pg.pool().begin()).await?;
                stats::acquired("transaction", started, waited);
                TxConn::Postgres(tx, slot)
            }
        };
        Ok(Tx {
            conn,
            db: self.clone(),
            contention: false,
            after_commit: Vec::new(),
            after_commit_work: Vec::new(),
            savepoints: 0,
        })
    }

    pub async fn fetch_all<T: Row>(&self, stmt: &impl SqlxBinder) -> Result<Vec<T>, StoreError> {
        match self {
            Db::Sqlite(db) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                let op = stats::operation_name(&sql);
                tokio::task::consume_budget().await;
                run_sqlite(db, op, |conn| sqlite::fetch_all(conn, &sql, &values.0)).await
            }
            Db::Postgres(pool) => {
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                let op = stats::operation_name(&sql);
                // Boxed here and below: sqlx's futures are large, and every future awaiting
                // the store (handlers, middleware) would otherwise carry their size on SQLite
                // too, and copy it each time it is moved or boxed.
                Box::pin(async {
                    let mut conn = acquire_pg(pool).await?;
                    let started = Instant::now();
                    let result = sqlx::query_as_with(AssertSqlSafe(sql), values)
                        .fetch_all(&mut *conn)
                        .await;
                    stats::query_finished(op, started, result.is_ok());
                    Ok(result?)
                })
                .await
            }
        }
    }

    /// Decodes each row twice, as `A` and as `B` (each by column name, ignoring the other's
    /// columns): a row type plus columns computed beside it (a page and its total), without
    /// `#[serde(flatten)]`, which buffers every value of every row before decoding it.
    pub async fn fetch_all_pairs<A: Row, B: Row>(
        &self,
        stmt: &impl SqlxBinder,
    ) -> Result<Vec<(A, B)>, StoreError> {
        match self {
            Db::Sqlite(db) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                let op = stats::operation_name(&sql);
                tokio::task::consume_budget().await;
                run_sqlite(db, op, |conn| {
                    sqlite::fetch_all_pairs(conn, &sql, &values.0)
                })
                .await
            }
            Db::Postgres(pool) => {
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                let op = stats::operation_name(&sql);
                Box::pin(async {
                    let mut conn = acquire_pg(pool).await?;
                    let started = Instant::now();
                    let result = sqlx::query_with(AssertSqlSafe(sql), values)
                        .fetch_all(&mut *conn)
                        .await;
                    stats::query_finished(op, started, result.is_ok());
                    result?
                        .iter()
                        .map(|row| Ok((A::from_row(row)?, B::from_row(row)?)))
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                        .map_err(StoreError::from)
                })
                .await
            }
        }
    }

    pub async fn fetch_optional<T: Row>(
        &self,
        stmt: &impl SqlxBinder,
    ) -> Result<Option<T>, StoreError> {
        match self {
            Db::Sqlite(db) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                let op = stats::operation_name(&sql);
                tokio::task::consume_budget().await;
                run_sqlite(db, op, |conn| sqlite::fetch_optional(conn, &sql, &values.0)).await
            }
            Db::Postgres(pool) => {
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                let op = stats::operation_name(&sql);
                Box::pin(async {
                    let mut conn = acquire_pg(pool).await?;
                    let started = Instant::now();
                    let result = sqlx::query_as_with(AssertSqlSafe(sql), values)
                        .fetch_optional(&mut *conn)
                        .await;
                    stats::query_finished(op, started, result.is_ok());
                    Ok(result?)
                })
                .await
            }
        }
    }

    pub async fn fetch_one<T: Row>(&self, stmt: &impl SqlxBinder) -> Result<T, StoreError> {
        self.fetch_optional(stmt).await?.ok_or(StoreError::NotFound)
    }

    /// Runs a write; returns the number of rows it touched.
    pub async fn execute(&self, stmt: &impl SqlxBinder) -> Result<u64, StoreError> {
        match self {
            Db::Sqlite(db) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                let op = stats::operation_name(&sql);
                tokio::task::consume_budget().await;
                run_sqlite(db, op, |conn| sqlite::execute(conn, &sql, &values.0)).await
            }
            Db::Postgres(pool) => {
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                let op = stats::operation_name(&sql);
                Box::pin(async {
                    let mut conn = acquire_pg(pool).await?;
                    let started = Instant::now();
                    let result = sqlx::query_with(AssertSqlSafe(sql), values)
                        .execute(&mut *conn)
                        .await
                        .map(|r| r.rows_affected());
                    stats::query_finished(op, started, result.is_ok());
                    Ok(result?)
                })
                .await
            }
        }
    }

    /// The engine's plan for a statement (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on
    /// PostgreSQL), one line per step: for checking that a query reads the index it should.
    pub async fn query_plan(&self, stmt: &impl SqlxBinder) -> Result<String, StoreError> {
        match self {
            Db::Sqlite(db) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                let conn = db.acquire("query").await?;
                Ok(sqlite::query_plan(&conn, &sql, &values.0)?.join("\n"))
            }
            Db::Postgres(pool) => {
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                let rows: Vec<(String,)> =
                    sqlx::query_as_with(AssertSqlSafe(format!("EXPLAIN {sql}")), values)
                        .fetch_all(pool.pool())
                        .await?;
                Ok(rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("\n"))
            }
        }
    }

    /// Refreshes the query planner's statistics of `tables` after a bulk load. On PostgreSQL
    /// this is `ANALYZE`: autovacuum gets there on its own within minutes (and a serving node
    /// within seconds, see [`planner`]), but until then the
    /// planner believes freshly filled tables are empty and may read a whole organization
    /// and sort it instead of walking an index (155 ms against 0.1 ms for a page of the
    /// 100,000-shipment demo). SQLite's planner picks Keel's indexes without statistics
    /// (the plan tests check it), so this does nothing there. `tables` are names from code,
    /// never input: anything but letters, digits and `_` is refused.
    pub async fn analyze(&self, tables: &[&str]) -> Result<(), StoreError> {
        let Db::Postgres(pool) = self else {
            return Ok(());
        };
        for t in tables {
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(StoreError::Other(anyhow::anyhow!(
                    "analyze: not a table name: {t:?}"
                )));
            }
            sqlx::query(AssertSqlSafe(format!("ANALYZE \"{t}\"")))
                .execute(pool.pool())
                .await?;
        }
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(db) => db.close(),
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// Runs one statement outside a transaction on SQLite: a read on any free connection, where
/// it is awaited; a write (anything but a query) in this node's write turn, and where
/// blocking is allowed, since its implicit commit syncs to disk.
async fn run_sqlite<R>(
    db: &SqliteDb,
    op: &'static str,
    run: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let turn = if stats::is_read(op) {
        None
    } else {
        Some(db.write_turn().await?)
    };
    let conn = db.acquire("query").await?;
    let started = Instant::now();
    let result = match turn {
        None => run(&conn),
        Some(_turn) => sqlite::blocking(|| run(&conn)),
    };
    stats::query_finished(op, started, result.is_ok());
    result
}

/// An open transaction. Dropped without [`Tx::commit`], it rolls back.
///
/// It remembers whether a statement failed on contention, so [`Db::transaction`] can tell a
/// retryable failure from another whatever error type the unit of work returns.
pub struct Tx {
    conn: TxConn,
    /// The pool it came from, for work after commit.
    db: Db,
    contention: bool,
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
    after_commit_work: Vec<(String, AfterCommitWork)>,
    savepoints: u32,
}

/// Work [`Tx::commit`] does (and waits for) once the transaction has committed.
pub type AfterCommitWork = Box<dyn FnOnce(Db) -> futures::future::BoxFuture<'static, ()> + Send>;

enum TxConn {
    Sqlite(SqliteTx),
    /// The transaction and the node's writer slot it holds until it ends.
    Postgres(
        sqlx::Transaction<'static, sqlx::Postgres>,
        tokio::sync::OwnedSemaphorePermit,
    ),
}

/// A SQLite transaction: its connection and this node's write turn, held until it ends.
struct SqliteTx {
    conn: sqlite::Conn,
    /// Begun and not yet committed or rolled back.
    open: bool,
    /// Declared after `conn`: a dropped transaction rolls back before the next writer is let
    /// in.
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl SqliteTx {
    fn end(&mut self, sql: &str) -> Result<(), StoreError> {
        // A commit syncs to disk (and may checkpoint the WAL): where blocking is allowed.
        let result = sqlite::blocking(|| self.conn.execute_batch(sql));
        if result.is_ok() || self.conn.is_autocommit() {
            self.open = false;
        }
        Ok(result?)
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open && self.conn.execute_batch("ROLLBACK").is_err() {
            // Its state is unknown: it is closed rather than reused.
            self.conn.discard();
        }
    }
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("engine", &self.kind())
            .field("contention", &self.contention)
            .field("savepoints", &self.savepoints)
            .field("after_commit", &self.after_commit.len())
            .field("after_commit_work", &self.after_commit_work.len())
            .finish()
    }
}

impl Tx {
    /// Commits, then runs the [`Tx::after_commit`] hooks and does the
    /// [`Tx::after_commit_work`] (only if the commit succeeded).
    pub async fn commit(self) -> Result<(), StoreError> {
        let Tx {
            conn,
            db,
            after_commit,
            after_commit_work,
            ..
        } = self;
        match conn {
            TxConn::Sqlite(mut tx) => {
                tx.end("COMMIT")?;
                // The next writer may go in now.
                drop(tx);
            }
            TxConn::Postgres(tx, _slot) => Box::pin(tx.commit()).await?,
        }
        for hook in after_commit {
            hook();
        }
        for (_, work) in after_commit_work {
            work(db.clone()).await;
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.conn {
            TxConn::Sqlite(mut tx) => tx.end("ROLLBACK")?,
            TxConn::Postgres(tx, _slot) => Box::pin(tx.rollback()).await?,
        }
        Ok(())
    }

    pub fn kind(&self) -> DatabaseKind {
        match self.conn {
            TxConn::Sqlite(_) => DatabaseKind::Sqlite,
            TxConn::Postgres(..) => DatabaseKind::Postgres,
        }
    }

    /// Runs `hook` once this transaction has committed; never if it rolls back (a hook added
    /// inside a savepoint that rolls back is dropped too). Hooks must be quick and must not
    /// fail: they signal (wake a relay, invalidate a cache), they do not do work.
    pub fn after_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(hook));
    }

    /// Does `work` once this transaction has committed, before [`Tx::commit`] returns (so
    /// the caller answers only after it); never if it rolls back. Work registered twice under
    /// one `key` is done once. It must not fail the commit: whatever it cannot do, it leaves
    /// for a background pass to finish (the change has committed by then).
    pub fn after_commit_work(&mut self, key: String, work: AfterCommitWork) {
        if !self.after_commit_work.iter().any(|(k, _)| *k == key) {
            self.after_commit_work.push((key, work));
        }
    }

    /// Whether a statement of this transaction failed on contention (the transaction is then
    /// worth running again from the start).
    pub fn saw_contention(&self) -> bool {
        self.contention
    }

    fn observe<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result
            && e.is_contention()
        {
            self.contention = true;
        }
        result
    }

    pub async fn fetch_all<T: Row>(
        &mut self,
        stmt: &impl SqlxBinder,
    ) -> Result<Vec<T>, StoreError> {
        let result = match &mut self.conn {
            TxConn::Sqlite(tx) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                let op = stats::operation_name(&sql);
                // Statements run without awaiting anything: let the runtime's budget decide
                // when a long run of them gives other tasks a turn.
                tokio::task::consume_budget().await;
                let started = Instant::now();
                let result = sqlite::fetch_all(&tx.conn, &sql, &values.0);
                stats::query_finished(op, started, result.is_ok());
                result
            }
            TxConn::Postgres(tx, _) => {
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                let op = stats::operation_name(&sql);
                let started = Instant::now();
                let result =
                    Box::pin(sqlx::query_as_with(AssertSqlSafe(sql), values).fetch_all(&mut **tx))
                        .await;
                stats::query_finished(op, started, result.is_ok());
                result.map_err(StoreError::from)
            }
        };
        self.observe(result)
    }

    pub async fn fetch_optional<T: Row>(
        &mut self,
        stmt: &impl SqlxBinder,
    ) -> Result<Option<T>, StoreError> {
        let result = match &mut self.conn {
            TxConn::Sqlite(tx) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                let op = stats::operation_name(&sql);
                // Statements run without awaiting anything: let the runtime's budget decide
                // when a long run of them gives other tasks a turn.
                tokio::task::consume_budget().await;
                let started = Instant::now();
                let result = sqlite::fetch_optional(&tx.conn, &sql, &values.0);
                stats::query_finished(op, started, result.is_ok());
                result
            }
            TxConn::Postgres(tx, _) => {
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                let op = stats::operation_name(&sql);
                let started = Instant::now();
                let result = Box::pin(
                    sqlx::query_as_with(AssertSqlSafe(sql), values).fetch_optional(&mut **tx),
                )
                .await;
                stats::query_finished(op, started, result.is_ok());
                result.map_err(StoreError::from)
            }
        };
        self.observe(result)
    }

    pub async fn fetch_one<T: Row>(&mut self, stmt: &impl SqlxBinder) -> Result<T, StoreError> {
        self.fetch_optional(stmt).await?.ok_or(StoreError::NotFound)
    }

    pub async fn execute(&mut self, stmt: &impl SqlxBinder) -> Result<u64, StoreError> {
        let result = match &mut self.conn {
            TxConn::Sqlite(tx) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                let op = stats::operation_name(&sql);
                // Statements run without awaiting anything: let the runtime's budget decide
                // when a long run of them gives other tasks a turn.
                tokio::task::consume_budget().await;
                let started = Instant::now();
                let result = sqlite::execute(&tx.conn, &sql, &values.0);
                stats::query_finished(op, started, result.is_ok());
                result
            }
            TxConn::Postgres(tx, _) => {
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                let op = stats::operation_name(&sql);
                let started = Instant::now();
                let result =
                    Box::pin(sqlx::query_with(AssertSqlSafe(sql), values).execute(&mut **tx))
                        .await
                        .map(|r| r.rows_affected());
                stats::query_finished(op, started, result.is_ok());
                result.map_err(StoreError::from)
            }
        };
        self.observe(result)
    }

    /// Runs engine-specific SQL that takes no parameters (DDL in migrations, savepoints).
    /// Application queries go through the query builder instead.
    pub(crate) async fn execute_script(&mut self, sql: &str) -> Result<(), StoreError> {
        let result = match &mut self.conn {
            TxConn::Sqlite(tx) => tx.conn.execute_batch(sql).map_err(StoreError::from),
            TxConn::Postgres(tx, _) => {
                Box::pin(sqlx::raw_sql(AssertSqlSafe(sql.to_string())).execute(&mut **tx))
                    .await
                    .map(|_| ())
                    .map_err(StoreError::from)
            }
        };
        self.observe(result)
    }
}

/// A page query whose first-page `LIMIT` is written into its PostgreSQL text, so that the
/// server keeps one plan for it instead of planning it again on every execution.
///
/// Bound as `LIMIT $n`, the limit is unknown to the plan PostgreSQL keeps for a prepared
/// statement, which then assumes a tenth of the rows are wanted. That generic plan looks far
/// costlier than one made for the actual values, so the server plans the statement afresh on
/// every execution: for a page of 20 out of 100,000 rows, the planning costs as much as the
/// query. With the limit in the text, the kept plan is as cheap as a fresh one and is used.
///
/// Opt in only where a kept plan is right for every value the statement's other parameters
/// take: an organization's rows in one index order are; a text search, whose best plan
/// depends on how common the term is, is not. Deeper pages (an offset other than 0) keep
/// their limit bound, so that their texts do not crowd the connection's statement cache.
/// SQLite, which plans a statement once when it is prepared, gets the statement unchanged.
pub struct KeptPlan<'a, S>(pub &'a S);

impl<S: SqlxBinder> SqlxBinder for KeptPlan<'_, S> {
    fn build_sqlx<T: sea_query::QueryBuilder>(
        &self,
        query_builder: T,
    ) -> (String, sea_query_sqlx::SqlxValues) {
        let (sql, mut values) = self.0.build_sqlx(query_builder);
        match first_page_limit(&sql, &values.0.0) {
            Some((sql, bound)) => {
                values.0.0.truncate(bound);
                (sql, values)
            }
            None => (sql, values),
        }
    }
}

/// `sql` with its last placeholders — a `LIMIT`, and an `OFFSET` of 0 if any — written as
/// the number (and the offset dropped); and how many of `values` stay bound. `None` leaves
/// the statement as it is (PostgreSQL's `$n` placeholders only).
fn first_page_limit(sql: &str, values: &[sea_query::Value]) -> Option<(String, usize)> {
    use sea_query::Value;
    fn placeholder(text: &str) -> Option<(usize, &str)> {
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        Some((text.get(..digits)?.parse().ok()?, &text[digits..]))
    }
    let at = sql.rfind(" LIMIT $")?;
    let (limit_at, mut rest) = placeholder(&sql[at + " LIMIT $".len()..])?;
    let mut last = limit_at;
    if let Some(after) = rest.strip_prefix(" OFFSET $") {
        let (offset_at, after) = placeholder(after)?;
        if offset_at != limit_at + 1
            || !matches!(values.get(offset_at - 1)?, Value::BigUnsigned(Some(0)))
        {
            return None;
        }
        (last, rest) = (offset_at, after);
    }
    // The rewritten placeholders must be the statement's last ones, in order.
    if rest.contains('$') || last != values.len() {
        return None;
    }
    let Value::BigUnsigned(Some(limit)) = values.get(limit_at.checked_sub(1)?)? else {
        return None;
    };
    Some((format!("{} LIMIT {limit}{rest}", &sql[..at]), limit_at - 1))
}

#[cfg(test)]
mod tests {
    use sea_query::{Expr, ExprTrait as _, LockBehavior, LockType, Query};

    use super::*;

    fn page(offset: Option<u64>) -> sea_query::SelectStatement {
        let mut q = Query::select()
            .column("id")
            .from("things")
            .and_where(Expr::col("org_id").eq(7))
            .order_by("id", sea_query::Order::Desc)
            .limit(21)
            .to_owned();
        if let Some(offset) = offset {
            q.offset(offset);
        }
        q
    }

    #[test]
    fn a_first_page_limit_is_written_into_the_statement() {
        for offset in [None, Some(0)] {
            let (sql, values) = KeptPlan(&page(offset)).build_sqlx(PostgresQueryBuilder);
            assert_eq!(
                sql,
                r#"SELECT "id" FROM "things" WHERE "org_id" = $1 ORDER BY "id" DESC LIMIT 21"#
            );
            assert_eq!(values.0.0.len(), 1, "only the org stays bound");
        }
        // A lock clause after the limit stays where it was.
        let mut locked = page(None);
        locked.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        let (sql, values) = KeptPlan(&locked).build_sqlx(PostgresQueryBuilder);
        assert!(sql.ends_with(" LIMIT 21 FOR UPDATE SKIP LOCKED"), "{sql}");
        assert_eq!(values.0.0.len(), 1);
    }

    #[test]
    fn deeper_pages_other_values_after_the_limit_and_sqlite_stay_bound() {
        let (sql, values) = KeptPlan(&page(Some(40))).build_sqlx(PostgresQueryBuilder);
        assert!(sql.ends_with(" LIMIT $2 OFFSET $3"), "{sql}");
        assert_eq!(values.0.0.len(), 3);
        // A limit inside a subquery that other values follow.
        let outer = Query::select()
            .column("id")
            .from_subquery(page(None), "p")
            .and_where(Expr::col("id").gt(3))
            .to_owned();
        let (sql, values) = KeptPlan(&outer).build_sqlx(PostgresQueryBuilder);
        assert!(sql.contains(" LIMIT $2)"), "{sql}");
        assert_eq!(values.0.0.len(), 3);
        // SQLite's statement is left as the builder wrote it.
        let plain = page(Some(0)).build_sqlx(SqliteQueryBuilder);
        let kept = KeptPlan(&page(Some(0))).build_sqlx(SqliteQueryBuilder);
        assert_eq!((kept.0, kept.1.0.0.len()), (plain.0, plain.1.0.0.len()));
    }
}
