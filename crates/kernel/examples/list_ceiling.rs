//! The data layer's own ceiling on the hot list query: one organization's newest 20 rows of
//! 100,000 from the `(org_id, created_at, id)` index, through `keel_kernel::store::Db`
//! (sea-query rendering plus sqlx), with N concurrent tasks and no HTTP in the way.
//!
//! ```text
//! cargo run --release -p keel-kernel --example list_ceiling                  # SQLite
//! KEEL_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p keel-kernel --example list_ceiling                # PostgreSQL
//! ```
//!
//! Three ways to answer a page with its exact total:
//! - `page only`: the page query alone (the floor: what any design pays);
//! - `page + COUNT(*)`: the naive total, counting the organization's rows on every request;
//! - `page + counter row`: the total read from a per-organization counter that writes keep
//!   in step in their own transaction (one primary-key lookup).
//!
//! It prints requests per second for each at 16 and 64 connections (pool size = tasks).
//! Figures and their reading are in PERFORMANCE.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keel_kernel::config::Config;
use keel_kernel::store::Db;
use sea_query::{Expr, ExprTrait, Order, Query};
use uuid::Uuid;

const ROWS: usize = 100_000;
const SECONDS: u64 = 5;

#[derive(sqlx::FromRow, serde::Deserialize)]
#[allow(dead_code)]
struct Row {
    id: Uuid,
    reference: String,
    status: String,
    amount_minor: i64,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct Count {
    n: i64,
}

async fn connect(dir: &std::path::Path, connections: u32) -> anyhow::Result<Db> {
    let mut config = Config::default();
    match std::env::var("KEEL_DATABASE_URL") {
        Ok(url) => {
            config.database_url = Some(keel_kernel::config::Secret::new(url));
            config.database.schema = Some("keel_list_ceiling".into());
        }
        Err(_) => config.data_dir = dir.to_path_buf(),
    }
    config.database.max_connections = connections;
    config.database.min_connections = connections;
    Db::connect(&config).await
}

async fn seed(db: &Db, org: Uuid) -> anyhow::Result<()> {
    let (id, time) = match db.kind() {
        keel_kernel::config::DatabaseKind::Sqlite => ("BLOB", "TEXT"),
        keel_kernel::config::DatabaseKind::Postgres => ("UUID", "TIMESTAMPTZ"),
    };
    for sql in [
        "DROP TABLE IF EXISTS bench_rows".to_string(),
        "DROP TABLE IF EXISTS bench_counts".to_string(),
        format!(
            "CREATE TABLE bench_rows (id {id} NOT NULL, org_id {id} NOT NULL, reference TEXT NOT NULL, \
             status TEXT NOT NULL, amount_minor BIGINT NOT NULL, created_at {time} NOT NULL, \
             PRIMARY KEY (org_id, id))"
        ),
        "CREATE INDEX bench_rows_created ON bench_rows (org_id, created_at, id)".to_string(),
        format!(
            "CREATE TABLE bench_counts (org_id {id} NOT NULL, dimension TEXT NOT NULL, \
             n BIGINT NOT NULL, PRIMARY KEY (org_id, dimension))"
        ),
    ] {
        match db {
            Db::Sqlite(sqlite) => sqlite.with_connection(|c| c.execute_batch(&sql)).await?,
            Db::Postgres(pool) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(pool.pool())
                .await
                .map(|_| ())?,
        }
    }
    let base = Utc::now();
    for chunk in 0..(ROWS / 1000) {
        let mut insert = Query::insert()
            .into_table("bench_rows")
            .columns([
                "id",
                "org_id",
                "reference",
                "status",
                "amount_minor",
                "created_at",
            ])
            .to_owned();
        for i in 0..1000 {
            let n = chunk * 1000 + i;
            let at = base - chrono::Duration::seconds(i64::try_from(n).unwrap_or(0));
            insert.values_panic([
                Uuid::now_v7().into(),
                org.into(),
                format!("SHP-{n:06}").into(),
                "booked".into(),
                (125_000i64).into(),
                at.into(),
            ]);
        }
        db.execute(&insert).await?;
    }
    db.execute(
        &Query::insert()
            .into_table("bench_counts")
            .columns(["org_id", "dimension", "n"])
            .values_panic([
                org.into(),
                "all".into(),
                i64::try_from(ROWS).unwrap_or(0).into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Mode {
    Alone,
    WithCount,
    WithCounter,
}

async fn one(db: &Db, org: Uuid, mode: Mode) -> anyhow::Result<()> {
    let page = Query::select()
        .columns(["id", "reference", "status", "amount_minor", "created_at"])
        .from("bench_rows")
        .and_where(Expr::col("org_id").eq(org))
        .order_by("created_at", Order::Desc)
        .order_by("id", Order::Desc)
        .limit(21)
        .to_owned();
    let rows: Vec<Row> = db.fetch_all(&page).await?;
    anyhow::ensure!(rows.len() == 21, "a full page");
    let total = match mode {
        Mode::Alone => 0,
        Mode::WithCount => {
            let c: Count = db
                .fetch_one(
                    &Query::select()
                        .expr_as(Expr::col(sea_query::Asterisk).count(), "n")
                        .from("bench_rows")
                        .and_where(Expr::col("org_id").eq(org))
                        .to_owned(),
                )
                .await?;
            c.n
        }
        Mode::WithCounter => {
            let c: Count = db
                .fetch_one(
                    &Query::select()
                        .column("n")
                        .from("bench_counts")
                        .and_where(Expr::col("org_id").eq(org))
                        .and_where(Expr::col("dimension").eq("all"))
                        .to_owned(),
                )
                .await?;
            c.n
        }
    };
    std::hint::black_box(total);
    Ok(())
}

async fn run(db: &Db, org: Uuid, tasks: u32, mode: Mode) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(SECONDS);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (db, done) = (db.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < stop {
                    if one(&db, org, mode).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.await;
    }
    done.load(Ordering::Relaxed) as f64 / SECONDS as f64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let org = Uuid::now_v7();
    {
        let db = connect(dir.path(), 4).await?;
        seed(&db, org).await?;
        db.close().await;
    }
    for tasks in [16u32, 64] {
        let db = connect(dir.path(), tasks).await?;
        for (name, mode) in [
            ("page only", Mode::Alone),
            ("page + COUNT(*)", Mode::WithCount),
            ("page + counter row", Mode::WithCounter),
        ] {
            let rps = run(&db, org, tasks, mode).await;
            println!(
                "{:?} {tasks:>3} connections  {name:<20} {rps:>8.0} req/s",
                db.kind()
            );
        }
        db.close().await;
    }
    Ok(())
}
