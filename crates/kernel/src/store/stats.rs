//! What the database is doing: query latency by operation, pool waits and slow queries.
//!
//! Queries are built by the query builder and carry no name of their own, so each is named by
//! its verb and main table (`select keel_jobs`, `insert audit_events`), read off the rendered
//! SQL. That keeps the label set bounded (tables × verbs) and never contains a parameter:
//! values are bound separately and never appear in the SQL text. A query slower than
//! `database.slow_query_ms` is logged with that name and its duration only.
//!
//! The figures are per process (this node): Prometheus families for dashboards, and a
//! five-minute window for `GET /api/v1/metrics/database`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::metrics::window::{LatencySummary, Windows};

static SLOW_QUERY_MICROS: AtomicU64 = AtomicU64::new(250_000);
static ACQUIRES: AtomicU64 = AtomicU64::new(0);
static WAITS: AtomicU64 = AtomicU64::new(0);
static WAIT_MICROS: AtomicU64 = AtomicU64::new(0);
static SLOW_QUERIES: AtomicU64 = AtomicU64::new(0);

fn windows() -> &'static Windows<&'static str> {
    static W: OnceLock<Windows<&'static str>> = OnceLock::new();
    W.get_or_init(Windows::new)
}

/// Sets the slow-query threshold (from `database.slow_query_ms`).
pub(crate) fn set_slow_query_threshold(threshold: Duration) {
    SLOW_QUERY_MICROS.store(
        u64::try_from(threshold.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Interns an operation name: the set is bounded by the schema, and a `&'static str` label
/// costs nothing to pass to the metrics recorder.
fn intern(name: String) -> &'static str {
    static NAMES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(|| RwLock::new(HashSet::new()));
    if let Ok(set) = names.read()
        && let Some(found) = set.get(name.as_str())
    {
        return found;
    }
    match names.write() {
        Ok(mut set) => {
            if let Some(found) = set.get(name.as_str()) {
                return found;
            }
            let leaked: &'static str = Box::leak(name.into_boxed_str());
            set.insert(leaked);
            leaked
        }
        Err(_) => "query",
    }
}

fn unquote(token: &str) -> &str {
    token
        .trim_matches(|c: char| c == '"' || c == '`' || c == '(' || c == ')' || c == ',')
        .rsplit('.')
        .next()
        .unwrap_or(token)
        .trim_matches('"')
}

/// `select keel_jobs` from `SELECT … FROM "keel_jobs" …`.
pub(crate) fn operation_name(sql: &str) -> &'static str {
    let mut words = sql.split_ascii_whitespace();
    let Some(first) = words.next() else {
        return "query";
    };
    let verb = first.to_ascii_lowercase();
    let marker: &[&str] = match verb.as_str() {
        "select" | "delete" | "with" => &["FROM"],
        "insert" | "replace" => &["INTO"],
        "update" => &[],
        _ => return intern(verb),
    };
    let table = if marker.is_empty() {
        words.next()
    } else {
        words
            .by_ref()
            .find(|w| marker.iter().any(|m| w.eq_ignore_ascii_case(m)))
            .and_then(|_| words.next())
    };
    match table
        .filter(|t| !t.starts_with('('))
        .map(unquote)
        .filter(|t| !t.is_empty())
    {
        Some(t) => intern(format!("{verb} {t}")),
        None => intern(verb),
    }
}

/// Whether an operation only reads (it may then run beside SQLite's one writer).
pub(crate) fn is_read(op: &str) -> bool {
    op == "select" || op.starts_with("select ") || op == "with" || op.starts_with("with ")
}

/// Records a transaction's wait for this node's write turn (SQLite) or writer slot
/// (PostgreSQL).
pub(crate) fn write_turn_taken(started: Instant, waited: bool) {
    let elapsed = started.elapsed();
    metrics::histogram!("keel_db_write_wait_seconds").record(elapsed.as_secs_f64());
    if waited {
        metrics::counter!("keel_db_write_waits_total").increment(1);
    }
}

/// Records a finished query.
pub(crate) fn query_finished(op: &'static str, started: Instant, ok: bool) {
    let elapsed = started.elapsed();
    metrics::histogram!("keel_db_query_duration_seconds", "op" => op).record(elapsed.as_secs_f64());
    if !ok {
        metrics::counter!("keel_db_query_errors_total", "op" => op).increment(1);
    }
    windows().record(&op, |o| *o, elapsed, !ok);
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    if micros >= SLOW_QUERY_MICROS.load(Ordering::Relaxed) {
        SLOW_QUERIES.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("keel_db_slow_queries_total", "op" => op).increment(1);
        tracing::warn!(
            op,
            duration_ms = elapsed.as_millis() as u64,
            "slow database query"
        );
    }
}

/// Records a connection taken from the pool: `waited` when none was idle.
pub(crate) fn acquired(kind: &'static str, started: Instant, waited: bool) {
    let elapsed = started.elapsed();
    ACQUIRES.fetch_add(1, Ordering::Relaxed);
    metrics::histogram!("keel_db_pool_acquire_seconds", "kind" => kind)
        .record(elapsed.as_secs_f64());
    if waited {
        WAITS.fetch_add(1, Ordering::Relaxed);
        WAIT_MICROS.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        metrics::counter!("keel_db_pool_waits_total", "kind" => kind).increment(1);
    }
}

/// Pool waits since start-up.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct PoolWaits {
    /// Connections taken from the pool.
    pub acquires: u64,
    /// Of those, how many found no idle connection and had to wait.
    pub waits: u64,
    /// Total time spent waiting, in milliseconds.
    pub wait_time_ms: f64,
    /// Queries over `database.slow_query_ms`.
    pub slow_queries: u64,
}

pub fn pool_waits() -> PoolWaits {
    PoolWaits {
        acquires: ACQUIRES.load(Ordering::Relaxed),
        waits: WAITS.load(Ordering::Relaxed),
        wait_time_ms: WAIT_MICROS.load(Ordering::Relaxed) as f64 / 1000.0,
        slow_queries: SLOW_QUERIES.load(Ordering::Relaxed),
    }
}

/// Per operation, over the recent window.
pub fn operations() -> Vec<(&'static str, LatencySummary)> {
    windows().summaries()
}

#[cfg(test)]
mod tests {
    use super::{is_read, operation_name};

    #[test]
    fn queries_are_named_by_verb_and_table_never_by_values() {
        assert_eq!(
            operation_name(r#"SELECT "id", "name" FROM "keel_orgs" WHERE "id" = $1"#),
            "select keel_orgs"
        );
        assert_eq!(
            operation_name(r#"INSERT INTO "audit_events" ("id") VALUES (?)"#),
            "insert audit_events"
        );
        assert_eq!(
            operation_name(r#"UPDATE "keel_jobs" SET "state" = $1"#),
            "update keel_jobs"
        );
        assert_eq!(
            operation_name(r#"DELETE FROM "public"."keel_sessions" WHERE x"#),
            "delete keel_sessions"
        );
        assert_eq!(
            operation_name("SELECT COUNT(*) FROM (SELECT 1) AS t"),
            "select"
        );
        assert_eq!(operation_name(""), "query");
        // The same name twice is the same interned string.
        assert!(std::ptr::eq(
            operation_name("SELECT 1 FROM \"a\""),
            operation_name("SELECT 2 FROM \"a\"")
        ));
    }

    #[test]
    fn reads_are_told_from_writes_by_their_operation() {
        for sql in [
            r#"SELECT "id" FROM "keel_orgs""#,
            "SELECT 1",
            r#"WITH "t" AS (SELECT 1) SELECT * FROM "t""#,
        ] {
            assert!(is_read(operation_name(sql)), "{sql}");
        }
        for sql in [
            r#"INSERT INTO "a" ("id") VALUES (?)"#,
            r#"UPDATE "keel_jobs" SET "state" = ? RETURNING "id""#,
            r#"DELETE FROM "a""#,
            r#"SELECTED"#,
        ] {
            assert!(!is_read(operation_name(sql)), "{sql}");
        }
    }
}
