//! SQLite, embedded: rusqlite connections in a small pool, statements executed on the calling
//! task's thread.
//!
//! Why not a connection thread (as sqlx's SQLite driver has): a SQLite statement is a function
//! call that reads pages from memory, typically tens of microseconds. Handing each statement
//! to another thread and each row back through a channel cost more than the statement
//! itself — thread wake-ups, a copy of every value, a decode by column name — and, worse,
//! every statement of a write transaction waited for the runtime to schedule its task again
//! while it held SQLite's only write lock, so under load writes queued behind reads (see
//! PERFORMANCE.md). Here a statement runs where it is awaited, start to finish, and its rows
//! are decoded straight from SQLite's buffers.
//!
//! What may take long runs where blocking is allowed: a commit (an fsync, and now and then a
//! WAL checkpoint) and a wait for another *process's* write lock go through
//! [`tokio::task::block_in_place`], so the runtime moves this worker's other tasks away
//! first. Writers of this process never wait inside SQLite: they queue for the node's write
//! turn ([`SqliteDb::write_turn`]), an async fair mutex, before they touch the write lock.
//!
//! Values are bound as sqlx bound them before (timestamps as RFC 3339 text with `+00:00`,
//! UUIDs as 16-byte BLOBs, JSON as text, booleans as 0/1), so databases written by earlier
//! versions read the same. Rows decode through `serde` by column name
//! ([`RowDeserializer`]): a row type derives `Deserialize` with its fields named as its
//! columns (a `serde_json::Value` column adds `#[serde(deserialize_with =
//! "keel_kernel::store::json_column")]`, since SQLite keeps JSON as text).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::SecondsFormat;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, ErrorCode, ToSql};
use serde::de::{self, DeserializeOwned, IntoDeserializer as _, Visitor};

use super::{StoreError, stats};

/// SQLite: the connection pool and the node's write turn.
///
/// SQLite lets one writer in at a time. Left to itself, a connection that finds the write
/// lock taken sleeps in its busy handler (1, 2, 5 … 100 ms) and tries again, so under
/// concurrent writes the lock sits idle while writers sleep and latecomers overtake. Instead
/// every write of this node first queues for the write turn, a fair (FIFO) async mutex, and
/// takes SQLite's write lock only when it is its turn: writers follow each other with no
/// sleep in between, and readers (WAL) are never held up. Another process writing to the
/// same file is still waited for by the busy handler (`database.sqlite_busy_timeout_ms`).
#[derive(Clone)]
pub struct SqliteDb {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    busy_timeout: Duration,
    acquire_timeout: Duration,
    mmap_bytes: u64,
    max: u32,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<tokio::sync::Semaphore>,
    open: AtomicU32,
    closed: AtomicBool,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDb")
            .field("path", &self.inner.path)
            .field("open", &self.inner.open.load(Ordering::Relaxed))
            .field("max", &self.inner.max)
            .finish()
    }
}

/// The database file named by a `sqlite:` URL (`sqlite://data/keel.db`,
/// `sqlite:///var/lib/keel/keel.db`, `sqlite:keel.db`; a `?…` query is ignored). An
/// in-memory database is refused: every pooled connection would see its own.
pub fn path_of(url: &str) -> anyhow::Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| anyhow::anyhow!("database_url is not a sqlite: URL"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" || rest.contains("mode=memory") {
        anyhow::bail!(
            "database_url: an in-memory SQLite database is not supported (each pooled \
             connection would see its own); name a file"
        );
    }
    Ok(PathBuf::from(path))
}

impl SqliteDb {
    /// Opens the database file (creating it and its directory), switches it to WAL and keeps
    /// `min` connections ready.
    pub fn open(
        path: &Path,
        max: u32,
        min: u32,
        busy_timeout: Duration,
        acquire_timeout: Duration,
        mmap_bytes: u64,
    ) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).with_context(|| {
                format!("cannot create the data directory {}", parent.display())
            })?;
        }
        let max = max.max(1);
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            busy_timeout,
            acquire_timeout,
            mmap_bytes,
            max,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(max as usize)),
            open: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            gate: Arc::default(),
        });
        let db = Self { inner };
        let mut ready = Vec::new();
        for _ in 0..min.clamp(1, max) {
            ready.push(db.connect()?);
        }
        if let Ok(mut idle) = db.inner.idle.lock() {
            idle.extend(ready);
        }
        Ok(db)
    }

    fn connect(&self) -> anyhow::Result<Connection> {
        let inner = &self.inner;
        let conn = Connection::open(&inner.path)
            .with_context(|| format!("cannot open the database {}", inner.path.display()))?;
        conn.busy_timeout(inner.busy_timeout)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            anyhow::bail!("the database could not switch to WAL (journal_mode is {mode})");
        }
        // FULL: an acknowledged commit survives power loss, not only a crash. The WAL grows
        // while readers keep a checkpoint from restarting it; once one does, the file is cut
        // back to 16 MiB instead of keeping its high-water size.
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; \
             PRAGMA journal_size_limit = 16777216;",
        )?;
        // With `database.sqlite_mmap_mib`, reads come from the OS page cache through a memory
        // map instead of a copy into each connection's own 2 MiB cache (off by default: a
        // file that grows under steady writes is remapped by every connection).
        conn.execute_batch(&format!("PRAGMA mmap_size = {};", inner.mmap_bytes))?;
        conn.set_prepared_statement_cache_capacity(256);
        inner.open.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Connections open, idle, and the most there may be.
    pub(crate) fn counts(&self) -> (u32, usize, u32) {
        let idle = self.inner.idle.lock().map(|i| i.len()).unwrap_or(0);
        (
            self.inner.open.load(Ordering::Relaxed),
            idle,
            self.inner.max,
        )
    }

    /// Takes a connection from the pool (opening one if none is idle and the pool is not
    /// full), waiting at most `database.acquire_timeout_ms`.
    pub(crate) async fn acquire(&self, kind: &'static str) -> Result<Conn, StoreError> {
        let started = Instant::now();
        let (permit, waited) = match self.inner.permits.clone().try_acquire_owned() {
            Ok(p) => (p, false),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(closed()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let wait = self.inner.permits.clone().acquire_owned();
                match tokio::time::timeout(self.inner.acquire_timeout, wait).await {
                    Ok(Ok(p)) => (p, true),
                    Ok(Err(_)) => return Err(closed()),
                    Err(_) => {
                        return Err(StoreError::Unavailable(
                            format!(
                                "no SQLite connection was free within {} ms",
                                self.inner.acquire_timeout.as_millis()
                            )
                            .into(),
                        ));
                    }
                }
            }
        };
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(closed());
        }
        let idle = self.inner.idle.lock().ok().and_then(|mut i| i.pop());
        let conn = match idle {
            Some(c) => c,
            None => self
                .connect()
                .map_err(|e| StoreError::Unavailable(e.into()))?,
        };
        stats::acquired(kind, started, waited);
        Ok(Conn {
            conn: Some(conn),
            inner: self.inner.clone(),
            _permit: permit,
            broken: false,
        })
    }

    /// Waits for this node's turn to write, as long as the busy timeout allows; a wait that
    /// runs out is contention, as SQLite's own `SQLITE_BUSY` would be.
    pub(crate) async fn write_turn(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, StoreError> {
        let started = Instant::now();
        if let Ok(guard) = self.inner.gate.clone().try_lock_owned() {
            stats::write_turn_taken(started, false);
            return Ok(guard);
        }
        let wait = self.inner.gate.clone().lock_owned();
        match tokio::time::timeout(self.inner.busy_timeout, wait).await {
            Ok(guard) => {
                stats::write_turn_taken(started, true);
                Ok(guard)
            }
            Err(_) => Err(StoreError::Contention(
                format!(
                    "waited {} ms for this node's turn to write to SQLite",
                    self.inner.busy_timeout.as_millis()
                )
                .into(),
            )),
        }
    }

    /// Runs `f` on a pooled connection, outside the store's statements: for tools and tests
    /// that need SQLite itself (raw SQL, `EXPLAIN`, tampering probes). It takes no write turn.
    pub async fn with_connection<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        let conn = self.acquire("query").await?;
        let result = blocking(|| f(&conn));
        result.map_err(StoreError::from)
    }

    /// Closes idle connections and refuses new ones; connections in use close when returned.
    pub(crate) fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.permits.close();
        let idle = self
            .inner
            .idle
            .lock()
            .map(|mut i| std::mem::take(&mut *i))
            .unwrap_or_default();
        for conn in idle {
            self.inner.open.fetch_sub(1, Ordering::Relaxed);
            drop(conn);
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the database is closed".into())
}

/// A pooled connection; back to the pool when dropped (unless it broke).
pub(crate) struct Conn {
    conn: Option<Connection>,
    inner: Arc<Inner>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    broken: bool,
}

impl std::ops::Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Present from construction until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let keep =
            !self.broken && !self.inner.closed.load(Ordering::Relaxed) && conn.is_autocommit();
        if keep && let Ok(mut idle) = self.inner.idle.lock() {
            idle.push(conn);
            return;
        }
        self.inner.open.fetch_sub(1, Ordering::Relaxed);
        drop(conn);
    }
}

/// Runs something that may block for a while (an fsync, a wait for another process's lock)
/// so that the runtime's other tasks are not held up: on a multi-threaded runtime the worker
/// hands its queue to another thread first; elsewhere it just runs.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Takes SQLite's write lock (`BEGIN IMMEDIATE`), trying first without waiting: only a lock
/// held by another process (this node's writers queue for their turn before they get here)
/// sends it to wait in the busy handler, through [`blocking`].
pub(crate) fn begin_immediate(conn: &Connection, busy_timeout: Duration) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::ZERO)?;
    let first = conn.execute_batch("BEGIN IMMEDIATE");
    conn.busy_timeout(busy_timeout)?;
    match first {
        Err(e) if is_busy(&e) => Ok(blocking(|| conn.execute_batch("BEGIN IMMEDIATE"))?),
        other => Ok(other?),
    }
}

impl Conn {
    pub(crate) fn busy_timeout(&self) -> Duration {
        self.inner.busy_timeout
    }

    /// Marks the connection as not to be reused (its state is unknown after a failure).
    pub(crate) fn discard(&mut self) {
        self.broken = true;
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    StoreError::Contention(e.into())
                }
                ErrorCode::ConstraintViolation
                    if matches!(
                        f.extended_code,
                        rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                            | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                            | rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
                    ) =>
                {
                    // SQLite names the columns, not the index; as before, no name is given.
                    StoreError::Conflict {
                        constraint: "unknown".to_string(),
                    }
                }
                ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::DiskFull => {
                    StoreError::Unavailable(e.into())
                }
                _ => StoreError::Other(anyhow::Error::new(e)),
            },
            _ => StoreError::Other(anyhow::Error::new(e)),
        }
    }
}

/// Runs a statement and decodes every row.
pub(crate) fn fetch_all<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    values: &sea_query::Values,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let names = column_names(&stmt);
    let mut rows = stmt.query(rusqlite::params_from_iter(values.iter().map(Bind)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row, &names)?);
    }
    Ok(out)
}

/// Runs a statement and decodes every row twice, as `A` and as `B`.
pub(crate) fn fetch_all_pairs<A: DeserializeOwned, B: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    values: &sea_query::Values,
) -> Result<Vec<(A, B)>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let names = column_names(&stmt);
    let mut rows = stmt.query(rusqlite::params_from_iter(values.iter().map(Bind)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push((decode(row, &names)?, decode(row, &names)?));
    }
    Ok(out)
}

/// Runs a statement and decodes its first row, if any.
pub(crate) fn fetch_optional<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    values: &sea_query::Values,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let names = column_names(&stmt);
    let mut rows = stmt.query(rusqlite::params_from_iter(values.iter().map(Bind)))?;
    match rows.next()? {
        Some(row) => Ok(Some(decode(row, &names)?)),
        None => Ok(None),
    }
}

/// Runs a statement; the number of rows it changed.
pub(crate) fn execute(
    conn: &Connection,
    sql: &str,
    values: &sea_query::Values,
) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let n = stmt.execute(rusqlite::params_from_iter(values.iter().map(Bind)))?;
    Ok(n as u64)
}

/// The statement's column names, read once per execution: SQLite hands each one out as a C
/// string (length and UTF-8 check per call), and every row decodes its fields by name.
fn column_names(stmt: &rusqlite::Statement<'_>) -> Vec<String> {
    stmt.column_names().into_iter().map(str::to_owned).collect()
}

fn decode<T: DeserializeOwned>(row: &rusqlite::Row<'_>, names: &[String]) -> Result<T, StoreError> {
    T::deserialize(RowDeserializer { row, names }).map_err(|e| {
        StoreError::Other(anyhow::anyhow!(
            "a row did not decode into {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// Binds a query builder value the way the database has always stored it.
struct Bind<'a>(&'a sea_query::Value);

fn text(s: String) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(SqlValue::Text(s))
}

fn int(v: Option<i64>) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(v.map_or(SqlValue::Null, SqlValue::Integer))
}

fn real(v: Option<f64>) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(v.map_or(SqlValue::Null, SqlValue::Real))
}

const NULL: ToSqlOutput<'static> = ToSqlOutput::Borrowed(ValueRef::Null);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use sea_query::Value as V;
        let rfc3339 = SecondsFormat::AutoSi;
        Ok(match self.0 {
            V::Bool(v) => int(v.map(i64::from)),
            V::TinyInt(v) => int(v.map(i64::from)),
            V::SmallInt(v) => int(v.map(i64::from)),
            V::Int(v) => int(v.map(i64::from)),
            V::BigInt(v) => int(*v),
            V::TinyUnsigned(v) => int(v.map(i64::from)),
            V::SmallUnsigned(v) => int(v.map(i64::from)),
            V::Unsigned(v) => int(v.map(i64::from)),
            V::BigUnsigned(v) => match v {
                Some(n) => {
                    int(Some(i64::try_from(*n).map_err(|e| {
                        rusqlite::Error::ToSqlConversionFailure(Box::new(e))
                    })?))
                }
                None => NULL,
            },
            V::Float(v) => real(v.map(f64::from)),
            V::Double(v) => real(*v),
            V::String(v) => match v {
                Some(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
                None => NULL,
            },
            V::Enum(e) => match e {
                sea_query::OptionEnum::Some(v) => {
                    ToSqlOutput::Borrowed(ValueRef::Text(v.value.as_bytes()))
                }
                sea_query::OptionEnum::None(_) => NULL,
            },
            V::Char(v) => match v {
                Some(c) => text(c.to_string()),
                None => NULL,
            },
            V::Bytes(v) => match v {
                Some(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
                None => NULL,
            },
            V::Json(v) => match v {
                Some(j) => text(
                    serde_json::to_string(&**j)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
                ),
                None => NULL,
            },
            V::ChronoDate(v) => match v {
                Some(d) => text(d.format("%F").to_string()),
                None => NULL,
            },
            V::ChronoTime(v) => match v {
                Some(t) => text(t.format("%T%.f").to_string()),
                None => NULL,
            },
            V::ChronoDateTime(v) => match v {
                Some(t) => text(t.format("%F %T%.f").to_string()),
                None => NULL,
            },
            V::ChronoDateTimeUtc(v) => match v {
                Some(t) => text(t.to_rfc3339_opts(rfc3339, false)),
                None => NULL,
            },
            V::ChronoDateTimeLocal(v) => match v {
                Some(t) => text(t.to_rfc3339_opts(rfc3339, false)),
                None => NULL,
            },
            V::ChronoDateTimeWithTimeZone(v) => match v {
                Some(t) => text(t.to_rfc3339_opts(rfc3339, false)),
                None => NULL,
            },
            V::Uuid(v) => match v {
                Some(u) => ToSqlOutput::Borrowed(ValueRef::Blob(u.as_bytes())),
                None => NULL,
            },
            #[allow(unreachable_patterns)]
            other => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    format!("SQLite cannot bind {other:?}").into(),
                ));
            }
        })
    }
}

/// A row decoding error.
#[derive(Debug)]
pub struct DecodeError(String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DecodeError(msg.to_string())
    }
}

impl From<rusqlite::Error> for DecodeError {
    fn from(e: rusqlite::Error) -> Self {
        DecodeError(e.to_string())
    }
}

/// A row as a map from column name to value, for `#[derive(Deserialize)]` row types.
pub struct RowDeserializer<'a, 'stmt> {
    row: &'a rusqlite::Row<'stmt>,
    /// The statement's column names, by position.
    names: &'a [String],
}

impl<'de> de::Deserializer<'de> for RowDeserializer<'_, '_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_map(Columns {
            row: self.row,
            names: self.names,
            next: 0,
        })
    }

    /// Tuples decode by position, as sqlx decodes them: `(Uuid, i64)` from two columns.
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Columns {
            row: self.row,
            names: self.names,
            next: 0,
        })
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_tuple(0, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> de::SeqAccess<'de> for Columns<'_, '_> {
    type Error = DecodeError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        if self.next >= self.names.len() {
            return Ok(None);
        }
        let column = Column {
            row: self.row,
            index: self.next,
        };
        self.next += 1;
        seed.deserialize(column).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.names.len() - self.next)
    }
}

struct Columns<'a, 'stmt> {
    row: &'a rusqlite::Row<'stmt>,
    /// The statement's column names, by position: their number is the row's width.
    names: &'a [String],
    next: usize,
}

impl<'de> de::MapAccess<'de> for Columns<'_, '_> {
    type Error = DecodeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        if self.next >= self.names.len() {
            return Ok(None);
        }
        let name = self.names[self.next].as_str();
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        let column = Column {
            row: self.row,
            index: self.next,
        };
        self.next += 1;
        seed.deserialize(column)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.names.len() - self.next)
    }
}

/// One column of a row, read only when its value is asked for: a column the row type does
/// not have (the other half of a pair, a column added by a later migration) is skipped
/// without being fetched from SQLite or checked as UTF-8.
struct Column<'a, 'stmt> {
    row: &'a rusqlite::Row<'stmt>,
    index: usize,
}

impl Column<'_, '_> {
    fn value(&self) -> Result<ValueDeserializer<'_>, DecodeError> {
        Ok(ValueDeserializer(self.row.get_ref(self.index)?))
    }
}

/// Forwards each `deserialize_*` method to the column's value.
macro_rules! forward_to_value {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            self.value()?.$method(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Column<'_, '_> {
    type Error = DecodeError;

    forward_to_value! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value()?.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value()?.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value()?.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value()?.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value()?.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value()?.deserialize_enum(name, variants, visitor)
    }
}

/// One column's value.
struct ValueDeserializer<'a>(ValueRef<'a>);

fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|e| DecodeError(format!("text is not UTF-8: {e}")))
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            ValueRef::Null => visitor.visit_unit(),
            ValueRef::Integer(i) => visitor.visit_i64(i),
            ValueRef::Real(f) => visitor.visit_f64(f),
            ValueRef::Text(t) => visitor.visit_str(utf8(t)?),
            ValueRef::Blob(b) => visitor.visit_bytes(b),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            ValueRef::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            ValueRef::Integer(i) => visitor.visit_bool(i != 0),
            ValueRef::Real(f) => visitor.visit_bool(f != 0.0),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            ValueRef::Integer(i) => visitor.visit_string(i.to_string()),
            ValueRef::Real(f) => visitor.visit_string(f.to_string()),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            ValueRef::Text(t) => visitor.visit_bytes(t),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            // `Vec<u8>` from a BLOB.
            ValueRef::Blob(b) => {
                visitor.visit_seq(de::value::SeqDeserializer::new(b.iter().copied()))
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            ValueRef::Integer(i) => visitor.visit_f64(i as f64),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        match self.0 {
            ValueRef::Text(t) => visitor.visit_enum(utf8(t)?.into_deserializer()),
            _ => self.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 char unit unit_struct tuple tuple_struct
        map struct identifier ignored_any
    }
}

/// Rows of SQLite's `EXPLAIN QUERY PLAN` for a statement, one line per step.
pub(crate) fn query_plan(
    conn: &Connection,
    sql: &str,
    values: &sea_query::Values,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values.iter().map(Bind)), |r| {
        r.get::<_, String>(3)
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Row {
        id: uuid::Uuid,
        name: String,
        n: i64,
        ok: bool,
        at: chrono::DateTime<chrono::Utc>,
        day: Option<chrono::NaiveDate>,
        #[serde(deserialize_with = "crate::store::json_column")]
        doc: serde_json::Value,
        missing: Option<String>,
    }

    #[test]
    fn values_bind_and_rows_decode_as_stored() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(
            "CREATE TABLE t (id BLOB, name TEXT, n INTEGER, ok INTEGER, at TEXT, day TEXT, \
             doc TEXT, missing TEXT)",
        )
        .expect("table");
        let id = uuid::Uuid::now_v7();
        let at = chrono::DateTime::parse_from_rfc3339("2026-03-01T10:20:30.123456Z")
            .expect("ts")
            .with_timezone(&chrono::Utc);
        let values = sea_query::Values(vec![
            id.into(),
            "Ünïcode".into(),
            42i64.into(),
            true.into(),
            at.into(),
            chrono::NaiveDate::from_ymd_opt(2026, 3, 1).into(),
            serde_json::json!({"a": [1, 2]}).into(),
            sea_query::Value::String(None),
        ]);
        let n = execute(
            &conn,
            "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            &values,
        )
        .expect("insert");
        assert_eq!(n, 1);
        // Stored as sqlx stored them: the UUID's 16 bytes, RFC 3339 with +00:00, 0/1.
        let (blob, text, flag): (Vec<u8>, String, i64) = conn
            .query_row("SELECT id, at, ok FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("raw");
        assert_eq!(blob, id.as_bytes().to_vec());
        assert_eq!(text, "2026-03-01T10:20:30.123456+00:00");
        assert_eq!(flag, 1);
        let rows: Vec<Row> =
            fetch_all(&conn, "SELECT * FROM t", &sea_query::Values(vec![])).expect("select");
        assert_eq!(
            rows,
            vec![Row {
                id,
                name: "Ünïcode".into(),
                n: 42,
                ok: true,
                at,
                day: chrono::NaiveDate::from_ymd_opt(2026, 3, 1),
                doc: serde_json::json!({"a": [1, 2]}),
                missing: None,
            }]
        );
        // A column of the wrong kind is an error naming the type, not a panic.
        let bad: Result<Vec<Row>, _> = fetch_all(
            &conn,
            "SELECT id, name, 'x' AS n, ok, at, day, doc, missing FROM t",
            &sea_query::Values(vec![]),
        );
        assert!(matches!(bad, Err(StoreError::Other(_))));
    }

    #[test]
    fn tuples_decode_by_position() {
        let conn = Connection::open_in_memory().expect("db");
        let rows: Vec<(i64, String, Option<i64>)> = fetch_all(
            &conn,
            "SELECT 7 AS a, 'x' AS b, NULL AS c",
            &sea_query::Values(vec![]),
        )
        .expect("select");
        assert_eq!(rows, vec![(7, "x".to_string(), None)]);
    }

    /// The embedded SQLite is built with the options of `.cargo/config.toml`: a cached
    /// statement keeps its plan (QPSG), allocations take no process-wide statistics mutex
    /// (MEMSTATUS=0), and each connection has its own page cache rather than one cache behind
    /// one mutex for all (no MEMORY_MANAGEMENT). A build that loses them still answers
    /// correctly, only serialised; this says so.
    #[test]
    fn the_embedded_sqlite_is_built_with_keels_options() {
        let conn = Connection::open_in_memory().expect("db");
        let mut stmt = conn.prepare("PRAGMA compile_options").expect("pragma");
        let options: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("options");
        for wanted in ["ENABLE_QPSG", "DEFAULT_MEMSTATUS=0"] {
            assert!(options.iter().any(|o| o == wanted), "{wanted}: {options:?}");
        }
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    /// Each half of a pair, and any row type that leaves columns out, reads only its own
    /// columns: a column it does not name is not even checked as text.
    #[test]
    fn columns_a_row_type_does_not_name_are_not_read() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct Count {
            n: i64,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Junk {
            #[allow(dead_code)]
            junk: String,
        }
        let conn = Connection::open_in_memory().expect("db");
        let sql = "SELECT CAST(x'ff' AS TEXT) AS junk, 7 AS n";
        let none = sea_query::Values(vec![]);
        let pairs: Vec<(Count, Count)> = fetch_all_pairs(&conn, sql, &none).expect("pairs");
        assert_eq!(pairs, vec![(Count { n: 7 }, Count { n: 7 })]);
        // The same column, asked for, is read and refused.
        let err = fetch_all::<Junk>(&conn, sql, &none).expect_err("not UTF-8");
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[tokio::test]
    async fn connections_read_through_the_memory_map_and_cap_the_wal() {
        let dir = tempfile::tempdir().expect("dir");
        let pragmas = |db: SqliteDb| async move {
            db.with_connection(|c| {
                let mmap: i64 = c.query_row("PRAGMA mmap_size", [], |r| r.get(0))?;
                let wal: i64 = c.query_row("PRAGMA journal_size_limit", [], |r| r.get(0))?;
                Ok((mmap, wal))
            })
            .await
            .expect("pragmas")
        };
        let second = Duration::from_secs(1);
        let mapped =
            SqliteDb::open(&dir.path().join("a.db"), 2, 1, second, second, 8 << 20).expect("open");
        assert_eq!(pragmas(mapped).await, (8 << 20, 16 << 20));
        let unmapped =
            SqliteDb::open(&dir.path().join("b.db"), 2, 1, second, second, 0).expect("open");
        assert_eq!(pragmas(unmapped).await.0, 0);
    }

    #[test]
    fn sqlite_urls_name_files_and_memory_is_refused() {
        assert_eq!(
            path_of("sqlite://data/keel.db").expect("rel"),
            PathBuf::from("data/keel.db")
        );
        assert_eq!(
            path_of("sqlite:///var/lib/keel/keel.db?mode=rwc").expect("abs"),
            PathBuf::from("/var/lib/keel/keel.db")
        );
        assert_eq!(
            path_of("sqlite:keel.db").expect("bare"),
            PathBuf::from("keel.db")
        );
        assert!(path_of("sqlite::memory:").is_err());
        assert!(path_of("sqlite://file.db?mode=memory").is_err());
        assert!(path_of("postgres://x").is_err());
    }

    #[test]
    fn constraint_and_busy_errors_are_told_apart() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch("CREATE TABLE u (k TEXT UNIQUE)")
            .expect("table");
        conn.execute("INSERT INTO u VALUES ('a')", [])
            .expect("first");
        let err = conn
            .execute("INSERT INTO u VALUES ('a')", [])
            .expect_err("duplicate");
        assert!(matches!(StoreError::from(err), StoreError::Conflict { .. }));
        let none = conn
            .query_row("SELECT k FROM u WHERE k = 'z'", [], |r| {
                r.get::<_, String>(0)
            })
            .expect_err("none");
        assert!(matches!(StoreError::from(none), StoreError::NotFound));
    }
}
