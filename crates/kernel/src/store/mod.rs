//! The store: one handle over SQLite (embedded) or PostgreSQL (scale-out).
//!
//! Every query is written once with `sea-query` and rendered for the backend in use, so
//! nothing above this module knows which engine it runs on. Rows decode into types that
//! implement `sqlx::FromRow` for both engines (`#[derive(sqlx::FromRow)]` does that when
//! every field type decodes on both).
//!
//! Conventions every table follows so both engines agree:
//! - ids are UUIDs (a 16-byte BLOB on SQLite, `uuid` on PostgreSQL);
//! - timestamps are `DateTime<Utc>` truncated to microseconds ([`now`]); SQLite stores them
//!   as RFC 3339 text whose lexical order is their time order;
//! - text comparisons that must ignore case use `lower()` on both sides.
//!
//! Units of work: [`Db::transaction`] runs a closure in a transaction and runs it again when
//! the engine reports contention (PostgreSQL serialization failures and deadlocks, SQLite
//! busy/locked), with bounded, jittered backoff; [`Tx::savepoint`] nests a unit of work that
//! can fail on its own without aborting the outer one; [`Tx::after_commit`] runs a hook only
//! once the transaction is durable (the audit outbox uses it to wake its relay).

pub mod migrate;
pub mod stats;
mod unit;

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
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, FromRow, PgPool, SqlitePool};

use crate::config::{Config, DatabaseKind};

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
    Unavailable(#[source] sqlx::Error),
    /// Another transaction got in the way (PostgreSQL serialization failure or deadlock,
    /// SQLite busy or locked): running the whole transaction again is expected to succeed.
    /// [`Db::transaction`] does that by itself.
    #[error("transaction conflict; retry: {0}")]
    Contention(#[source] sqlx::Error),
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
            sqlx::Error::Database(db) if is_contention(db.as_ref()) => StoreError::Contention(e),
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e),
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

fn is_contention(db: &dyn sqlx::error::DatabaseError) -> bool {
    let engine = if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        DatabaseKind::Sqlite
    } else {
        DatabaseKind::Postgres
    };
    is_contention_code(engine, db.code().as_deref())
}

/// PostgreSQL SQLSTATE 40001 (serialization failure) and 40P01 (deadlock); SQLite result
/// codes whose primary code is SQLITE_BUSY (5) or SQLITE_LOCKED (6), extended codes included.
fn is_contention_code(engine: DatabaseKind, code: Option<&str>) -> bool {
    match (engine, code) {
        (DatabaseKind::Postgres, Some(c)) => c == "40001" || c == "40P01",
        (DatabaseKind::Sqlite, Some(c)) => {
            c.parse::<i64>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
        }
        (_, None) => false,
    }
}

/// A row type both engines can decode.
pub trait Row: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}
impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

/// A connection pool on one of the two engines.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqliteDb),
    Postgres(PgPool),
}

/// SQLite: the pool, and the node's write gate.
///
/// SQLite lets one writer in at a time. Left to itself, a connection that finds the write
/// lock taken sleeps in its busy handler (1, 2, 5 … 100 ms) and tries again, so under
/// concurrent writes the lock sits idle while writers sleep, latecomers overtake, and
/// latency grows into seconds (a 1,000-user mix with 30 % writes measured a p95 of 15 s).
/// Instead, every write on this node first queues for the gate, a fair (FIFO) async mutex,
/// and takes SQLite's write lock only when it is its turn: writers follow each other with
/// no sleep in between, and readers (WAL) are never held up. Another process writing to
/// the same file is still waited for by the busy handler (`database.sqlite_busy_timeout_ms`).
#[derive(Clone, Debug)]
pub struct SqliteDb {
    pool: SqlitePool,
    gate: Arc<tokio::sync::Mutex<()>>,
    gate_timeout: Duration,
}

impl SqliteDb {
    pub fn new(pool: SqlitePool, gate_timeout: Duration) -> Self {
        Self {
            pool,
            gate: Arc::default(),
            gate_timeout,
        }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Waits for this node's turn to write, as long as the busy timeout allows; a wait that
    /// runs out is contention, as SQLite's own `SQLITE_BUSY` would be.
    async fn write_turn(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, StoreError> {
        let started = Instant::now();
        let waited = self.gate.try_lock().is_err();
        match tokio::time::timeout(self.gate_timeout, self.gate.clone().lock_owned()).await {
            Ok(guard) => {
                stats::write_turn_taken(started, waited);
                Ok(guard)
            }
            Err(_) => Err(StoreError::Contention(sqlx::Error::Protocol(format!(
                "waited {} ms for this node's turn to write to SQLite",
                self.gate_timeout.as_millis()
            )))),
        }
    }
}

impl std::ops::Deref for SqliteDb {
    type Target = SqlitePool;

    fn deref(&self) -> &SqlitePool {
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

/// Dispatches one statement to whichever engine the handle is on, on a connection taken from
/// the pool (the wait is measured), and records the query's latency under its operation name.
macro_rules! dispatch {
    ($self:expr, $stmt:expr, |$sql:ident, $values:ident, $ex:ident| $body:expr) => {{
        let (op, started, result) = match $self {
            Db::Sqlite(db) => {
                let ($sql, $values) = $stmt.build_sqlx(SqliteQueryBuilder);
                let op = stats::operation_name(&$sql);
                // A statement outside a transaction that writes (`UPDATE … RETURNING` through
                // a fetch too) waits for the write gate; reads go straight to the pool.
                let _turn = if stats::is_read(op) {
                    None
                } else {
                    Some(db.write_turn().await?)
                };
                let mut conn = acquire(db.pool()).await?;
                let started = Instant::now();
                let $ex = &mut *conn;
                (op, started, $body)
            }
            Db::Postgres(pool) => {
                let ($sql, $values) = $stmt.build_sqlx(PostgresQueryBuilder);
                let op = stats::operation_name(&$sql);
                let mut conn = acquire(pool).await?;
                let started = Instant::now();
                let $ex = &mut *conn;
                (op, started, $body)
            }
        };
        stats::query_finished(op, started, result.is_ok());
        result
    }};
}

macro_rules! dispatch_tx {
    ($self:expr, $stmt:expr, |$sql:ident, $values:ident, $ex:ident| $body:expr) => {{
        let (op, started, result) = match &mut $self.conn {
            TxConn::Sqlite(tx) => {
                let ($sql, $values) = $stmt.build_sqlx(SqliteQueryBuilder);
                let op = stats::operation_name(&$sql);
                let started = Instant::now();
                let $ex = &mut **tx;
                (op, started, $body)
            }
            TxConn::Postgres(tx) => {
                let ($sql, $values) = $stmt.build_sqlx(PostgresQueryBuilder);
                let op = stats::operation_name(&$sql);
                let started = Instant::now();
                let $ex = &mut **tx;
                (op, started, $body)
            }
        };
        stats::query_finished(op, started, result.is_ok());
        result
    }};
}

/// Takes a connection from the pool, recording whether (and how long) it had to wait.
async fn acquire<D: sqlx::Database>(
    pool: &sqlx::Pool<D>,
) -> Result<sqlx::pool::PoolConnection<D>, StoreError> {
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
                let options = SqliteConnectOptions::from_str(&url)
                    .context("database_url is not a valid SQLite URL")?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: an acknowledged commit survives power loss, not only a crash.
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_millis(db.sqlite_busy_timeout_ms))
                    .pragma("temp_store", "memory");
                if let Some(parent) = options.get_filename().parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).with_context(|| {
                        format!("cannot create the data directory {}", parent.display())
                    })?;
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(db.max_connections)
                    .min_connections(db.min_connections)
                    .acquire_timeout(acquire)
                    .connect_with(options)
                    .await?;
                Ok(Db::Sqlite(SqliteDb::new(
                    pool,
                    Duration::from_millis(db.sqlite_busy_timeout_ms),
                )))
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
                Ok(Db::Postgres(pool))
            }
        }
    }

    pub fn kind(&self) -> DatabaseKind {
        match self {
            Db::Sqlite(_) => DatabaseKind::Sqlite,
            Db::Postgres(_) => DatabaseKind::Postgres,
        }
    }

    /// The SQLite database file, when on SQLite with a file.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        match self {
            Db::Sqlite(db) => {
                let path = db.connect_options().get_filename().to_path_buf();
                (!path.as_os_str().is_empty() && path.as_os_str() != ":memory:").then_some(path)
            }
            Db::Postgres(_) => None,
        }
    }

    /// One round trip; returns its latency.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        match self {
            Db::Sqlite(db) => {
                sqlx::raw_sql("SELECT 1").execute(db.pool()).await?;
            }
            Db::Postgres(pool) => {
                sqlx::raw_sql("SELECT 1").execute(pool).await?;
            }
        }
        Ok(started.elapsed())
    }

    pub fn pool_stats(&self) -> PoolStats {
        match self {
            Db::Sqlite(pool) => PoolStats {
                size: pool.size(),
                idle: pool.num_idle(),
                max: pool.options().get_max_connections(),
            },
            Db::Postgres(pool) => PoolStats {
                size: pool.size(),
                idle: pool.num_idle(),
                max: pool.options().get_max_connections(),
            },
        }
    }

    /// Starts a transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`), so
    /// a transaction that reads and then writes cannot fail half-way on a lock upgrade.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        // On SQLite the node's write turn comes first (see [`SqliteDb`]), then a connection.
        let turn = match self {
            Db::Sqlite(db) => Some(db.write_turn().await?),
            Db::Postgres(_) => None,
        };
        let waited = match self {
            Db::Sqlite(db) => db.num_idle() == 0,
            Db::Postgres(pool) => pool.num_idle() == 0,
        };
        let started = Instant::now();
        let conn = match self {
            Db::Sqlite(db) => TxConn::Sqlite(db.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(pool) => TxConn::Postgres(pool.begin().await?),
        };
        stats::acquired("transaction", started, waited);
        Ok(Tx {
            conn,
            contention: false,
            after_commit: Vec::new(),
            savepoints: 0,
            _turn: turn,
        })
    }

    pub async fn fetch_all<T: Row>(&self, stmt: &impl SqlxBinder) -> Result<Vec<T>, StoreError> {
        Ok(dispatch!(self, stmt, |sql, values, ex| {
            sqlx::query_as_with(AssertSqlSafe(sql), values)
                .fetch_all(ex)
                .await
        })?)
    }

    pub async fn fetch_optional<T: Row>(
        &self,
        stmt: &impl SqlxBinder,
    ) -> Result<Option<T>, StoreError> {
        Ok(dispatch!(self, stmt, |sql, values, ex| {
            sqlx::query_as_with(AssertSqlSafe(sql), values)
                .fetch_optional(ex)
                .await
        })?)
    }

    pub async fn fetch_one<T: Row>(&self, stmt: &impl SqlxBinder) -> Result<T, StoreError> {
        self.fetch_optional(stmt).await?.ok_or(StoreError::NotFound)
    }

    /// Runs a write; returns the number of rows it touched.
    pub async fn execute(&self, stmt: &impl SqlxBinder) -> Result<u64, StoreError> {
        Ok(dispatch!(self, stmt, |sql, values, ex| sqlx::query_with(
            AssertSqlSafe(sql),
            values
        )
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?)
    }

    /// Refreshes the query planner's statistics of `tables` after a bulk load. On PostgreSQL
    /// this is `ANALYZE`: autovacuum gets there on its own within minutes, but until then the
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
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(db) => db.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// An open transaction. Dropped without [`Tx::commit`], it rolls back.
///
/// It remembers whether a statement failed on contention, so [`Db::transaction`] can tell a
/// retryable failure from another whatever error type the unit of work returns.
pub struct Tx {
    conn: TxConn,
    contention: bool,
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
    savepoints: u32,
    /// SQLite: this node's write turn, held until the transaction ends (declared after
    /// `conn`, so a dropped transaction rolls back before the next writer is let in).
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

enum TxConn {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("engine", &self.kind())
            .field("contention", &self.contention)
            .field("savepoints", &self.savepoints)
            .field("after_commit", &self.after_commit.len())
            .finish()
    }
}

impl Tx {
    /// Commits, then runs the [`Tx::after_commit`] hooks (only if the commit succeeded).
    pub async fn commit(self) -> Result<(), StoreError> {
        let Tx {
            conn,
            after_commit,
            _turn,
            ..
        } = self;
        match conn {
            TxConn::Sqlite(tx) => tx.commit().await?,
            TxConn::Postgres(tx) => tx.commit().await?,
        }
        drop(_turn);
        for hook in after_commit {
            hook();
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.conn {
            TxConn::Sqlite(tx) => tx.rollback().await?,
            TxConn::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }

    pub fn kind(&self) -> DatabaseKind {
        match self.conn {
            TxConn::Sqlite(_) => DatabaseKind::Sqlite,
            TxConn::Postgres(_) => DatabaseKind::Postgres,
        }
    }

    /// Runs `hook` once this transaction has committed; never if it rolls back (a hook added
    /// inside a savepoint that rolls back is dropped too). Hooks must be quick and must not
    /// fail: they signal (wake a relay, invalidate a cache), they do not do work.
    pub fn after_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(hook));
    }

    /// Whether a statement of this transaction failed on contention (the transaction is then
    /// worth running again from the start).
    pub fn saw_contention(&self) -> bool {
        self.contention
    }

    fn observe<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        result.map_err(|e| {
            let e = StoreError::from(e);
            if e.is_contention() {
                self.contention = true;
            }
            e
        })
    }

    pub async fn fetch_all<T: Row>(
        &mut self,
        stmt: &impl SqlxBinder,
    ) -> Result<Vec<T>, StoreError> {
        let result = dispatch_tx!(self, stmt, |sql, values, ex| sqlx::query_as_with(
            AssertSqlSafe(sql),
            values
        )
        .fetch_all(ex)
        .await);
        self.observe(result)
    }

    pub async fn fetch_optional<T: Row>(
        &mut self,
        stmt: &impl SqlxBinder,
    ) -> Result<Option<T>, StoreError> {
        let result = dispatch_tx!(self, stmt, |sql, values, ex| sqlx::query_as_with(
            AssertSqlSafe(sql),
            values
        )
        .fetch_optional(ex)
        .await);
        self.observe(result)
    }

    pub async fn fetch_one<T: Row>(&mut self, stmt: &impl SqlxBinder) -> Result<T, StoreError> {
        self.fetch_optional(stmt).await?.ok_or(StoreError::NotFound)
    }

    pub async fn execute(&mut self, stmt: &impl SqlxBinder) -> Result<u64, StoreError> {
        let result = dispatch_tx!(self, stmt, |sql, values, ex| sqlx::query_with(
            AssertSqlSafe(sql),
            values
        )
        .execute(ex)
        .await
        .map(|r| r.rows_affected()));
        self.observe(result)
    }

    /// Runs engine-specific SQL that takes no parameters (DDL in migrations, savepoints).
    /// Application queries go through the query builder instead.
    pub(crate) async fn execute_script(&mut self, sql: &str) -> Result<(), StoreError> {
        let sql = AssertSqlSafe(sql.to_string());
        let result = match &mut self.conn {
            TxConn::Sqlite(tx) => sqlx::raw_sql(sql).execute(&mut **tx).await.map(|_| ()),
            TxConn::Postgres(tx) => sqlx::raw_sql(sql).execute(&mut **tx).await.map(|_| ()),
        };
        self.observe(result)
    }
}
