//! Start-up, readiness and shutdown against the real database (SQLite, or PostgreSQL when
//! `TEST_DATABASE_URL` is set): readiness follows the database and Redis, edited migrations
//! stop start-up, nodes starting together migrate once, the database may come up late, and
//! a shutdown drains in-flight requests; a node takes the first planner statistics of
//! tables filled after start-up, and a statement the database cut off answers 503.

use std::sync::Arc;
use std::time::Duration;

use keel_kernel::config::DatabaseKind;
use keel_kernel::module::{Module, ModuleRouter};
use keel_kernel::store::migrate::Migration;
use keel_testkit::{TcpProxy, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::Value;

async fn ready(app: &TestApp) -> (StatusCode, Value) {
    let response = app.get("/health/ready").await;
    let status = response.status();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn readiness_is_503_while_the_database_is_unreachable_and_200_when_it_returns() {
    let db = Arc::new(TestDb::with_proxy().await.expect("db"));
    let app = TestApp::builder()
        .database(db.clone())
        .spawn()
        .await
        .expect("spawn");
    let (status, body) = ready(&app).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["database"]["status"], "up");
    assert!(body["checks"]["database"]["latency_ms"].as_f64().is_some());
    assert_eq!(body["checks"]["migrations"]["status"], "up");

    let file = db.sqlite_file();
    let moved = file.with_extension("moved");
    match db.kind() {
        DatabaseKind::Sqlite => std::fs::rename(&file, &moved).expect("move the database away"),
        DatabaseKind::Postgres => db.proxy().expect("proxy").take_down().await,
    }
    let (status, body) = ready(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["database"]["status"], "down");
    // Liveness does not depend on the database.
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);

    match db.kind() {
        DatabaseKind::Sqlite => std::fs::rename(&moved, &file).expect("move it back"),
        DatabaseKind::Postgres => db.proxy().expect("proxy").bring_up(),
    }
    let mut last = (StatusCode::SERVICE_UNAVAILABLE, Value::Null);
    for _ in 0..50 {
        last = ready(&app).await;
        if last.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, StatusCode::OK, "{}", last.1);
}

#[tokio::test]
async fn readiness_follows_redis_when_it_is_configured() {
    let Some(redis) = keel_testkit::redis_url() else {
        // Without Redis configured the check reports itself disabled, not down.
        let app = TestApp::spawn().await;
        let (status, body) = ready(&app).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["checks"]["redis"]["status"], "disabled");
        return;
    };
    let target = redis
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .replace("localhost", "127.0.0.1");
    let proxy = TcpProxy::start(target.parse().expect("redis addr"))
        .await
        .expect("proxy");
    let url = format!("redis://{}/", proxy.addr());
    let app = TestApp::builder()
        .configure(move |c| c.redis_url = Some(keel_kernel::config::Secret::new(url)))
        .spawn()
        .await
        .expect("spawn");
    let (status, body) = ready(&app).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "up");

    proxy.take_down().await;
    let (status, body) = ready(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "down");

    proxy.bring_up();
    let mut last = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        last = ready(&app).await.0;
        if last == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, StatusCode::OK);
}

#[tokio::test]
async fn a_shutdown_finishes_the_request_in_flight_and_accepts_no_new_one() {
    let mut app = TestApp::spawn().await;
    let client = app.client.clone();
    let url = app.url("/api/v1/test/slow?ms=800");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let fresh = reqwest::Client::new().get(app.url("/health")).send().await;
    assert!(
        fresh.is_err(),
        "a new connection must be refused while draining"
    );

    let response = in_flight
        .await
        .expect("task")
        .expect("the in-flight request completes");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), "slept");
    let report = app.join().await;
    assert!(report.clean, "drained within the grace period");
}

#[tokio::test]
async fn a_shutdown_whose_grace_runs_out_reports_itself_unclean() {
    let mut app = TestApp::builder()
        .configure(|c| c.http.shutdown_grace_secs = 1)
        .spawn()
        .await
        .expect("spawn");
    let client = app.client.clone();
    let url = app.url("/api/v1/test/slow?ms=10000");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.begin_shutdown();
    let report = app.join().await;
    assert!(!report.clean);
    assert!(
        in_flight.await.expect("task").is_err(),
        "the cut request fails"
    );
}

/// A module whose single migration's SQL is chosen by the test.
struct Versioned(&'static str);

impl Module for Versioned {
    fn name(&self) -> &'static str {
        "versioned"
    }
    fn migrations(&self) -> Vec<Migration> {
        vec![Migration {
            version: 1,
            name: "0001_widgets",
            sqlite: self.0,
            postgres: self.0,
        }]
    }
    fn routes(&self) -> ModuleRouter {
        ModuleRouter::new()
    }
}

#[tokio::test]
async fn a_migration_edited_after_it_was_applied_stops_start_up() {
    let db = Arc::new(TestDb::new().await.expect("db"));
    let original = "CREATE TABLE widgets (id INTEGER PRIMARY KEY)";
    let app = TestApp::builder()
        .database(db.clone())
        .module(Arc::new(Versioned(original)))
        .spawn()
        .await
        .expect("first start");
    assert!(app.stop().await.clean);

    let edited = "CREATE TABLE widgets (id INTEGER PRIMARY KEY, name TEXT)";
    let err = TestApp::builder()
        .database(db.clone())
        .module(Arc::new(Versioned(edited)))
        .build()
        .await
        .expect_err("an edited migration must be refused");
    let message = format!("{err:#}");
    assert!(message.contains("versioned/0001_widgets"), "{message}");
    assert!(message.contains("edited after it was applied"), "{message}");

    // The original still starts: nothing was changed by the refused attempt.
    let app = TestApp::builder()
        .database(db.clone())
        .module(Arc::new(Versioned(original)))
        .spawn()
        .await
        .expect("restart with the original");
    assert_eq!(app.get("/health/ready").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_failing_migration_leaves_no_trace_and_stops_start_up() {
    let db = Arc::new(TestDb::new().await.expect("db"));
    let broken = "CREATE TABLE half (id INTEGER PRIMARY KEY); CREATE TABLE oops (";
    let err = TestApp::builder()
        .database(db.clone())
        .module(Arc::new(Versioned(broken)))
        .build()
        .await
        .expect_err("a broken migration must stop start-up");
    assert!(
        format!("{err:#}").contains("versioned/0001_widgets failed"),
        "{err:#}"
    );
    // Its transaction rolled back: a fixed migration creating the same table applies cleanly.
    let fixed = "CREATE TABLE half (id INTEGER PRIMARY KEY)";
    TestApp::builder()
        .database(db.clone())
        .module(Arc::new(Versioned(fixed)))
        .spawn()
        .await
        .expect("the fixed migration applies");
}

#[tokio::test]
async fn nodes_starting_together_apply_each_migration_once_and_share_the_installation() {
    let db = Arc::new(TestDb::new().await.expect("db"));
    let starts = (0..3).map(|_| {
        let db = db.clone();
        tokio::spawn(async move { TestApp::builder().database(db).spawn().await })
    });
    let mut apps = Vec::new();
    for s in starts {
        apps.push(s.await.expect("task").expect("node starts"));
    }
    let mut installations = Vec::new();
    for app in &apps {
        let (status, body) = ready(app).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        installations.push(body["installation_id"].clone());
    }
    assert!(
        installations.windows(2).all(|w| w[0] == w[1]),
        "{installations:?}"
    );
    let statuses = keel_kernel::store::migrate::status(
        &apps[0].state.db,
        &apps[0].state.registry.migrations(),
    )
    .await
    .expect("status");
    assert!(
        statuses
            .iter()
            .all(|s| s.state == keel_kernel::store::migrate::MigrationState::Applied)
    );
}

#[tokio::test]
async fn start_up_waits_for_a_database_that_comes_up_late() {
    let db = Arc::new(TestDb::with_proxy().await.expect("db"));
    let Some(proxy) = db.proxy() else {
        // SQLite is a file opened in process: there is no server to wait for.
        assert_eq!(db.kind(), DatabaseKind::Sqlite);
        return;
    };
    proxy.take_down().await;
    let starting = tokio::spawn({
        let db = db.clone();
        async move {
            TestApp::builder()
                .database(db)
                .configure(|c| {
                    c.database.connect_attempts = 20;
                    c.database.connect_backoff_initial_ms = 100;
                    c.database.connect_backoff_max_ms = 200;
                })
                .spawn()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !starting.is_finished(),
        "start-up must wait for the database"
    );
    db.proxy().expect("proxy").bring_up();
    let app = starting
        .await
        .expect("task")
        .expect("starts once the database is up");
    assert_eq!(app.get("/health/ready").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn start_up_gives_up_after_the_configured_attempts() {
    let db = Arc::new(TestDb::with_proxy().await.expect("db"));
    let Some(proxy) = db.proxy() else {
        assert_eq!(db.kind(), DatabaseKind::Sqlite);
        return;
    };
    proxy.take_down().await;
    let err = TestApp::builder()
        .database(db.clone())
        .configure(|c| {
            c.database.connect_attempts = 2;
            c.database.connect_backoff_initial_ms = 10;
        })
        .build()
        .await
        .expect_err("no database, no start");
    assert!(format!("{err:#}").contains("after 2 attempts"), "{err:#}");
}

/// PostgreSQL plans on guesses until a table has statistics, and autovacuum takes the
/// first ones only on its next round through the database (a minute by default): a serving
/// node takes them within seconds of a table filling up. A table with few writes is left
/// alone. The tables here have autovacuum off, so only the node can have analyzed them.
#[tokio::test]
async fn a_serving_node_takes_the_first_statistics_of_a_table_filled_after_start_up() {
    use keel_kernel::store::Db;
    use keel_kernel::store::planner::{FIRST_STATISTICS_CHANGES, take_first_statistics};

    let app = TestApp::spawn().await;
    let Db::Postgres(pool) = &app.state.db else {
        // SQLite's planner needs no statistics for Keel's indexes: nothing is taken.
        let mut tried = std::collections::HashSet::new();
        let taken = take_first_statistics(&app.state.db, 1, &mut tried)
            .await
            .expect("check");
        assert!(taken.is_empty());
        return;
    };
    let filled = FIRST_STATISTICS_CHANGES * 4;
    let sparse = FIRST_STATISTICS_CHANGES / 10;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE filled (id BIGINT PRIMARY KEY, v TEXT NOT NULL) \
             WITH (autovacuum_enabled = false); \
         CREATE TABLE sparse (id BIGINT PRIMARY KEY) WITH (autovacuum_enabled = false); \
         INSERT INTO filled SELECT g, 'row ' || g FROM generate_series(1, {filled}) g; \
         INSERT INTO sparse SELECT g FROM generate_series(1, {sparse}) g;"
    )))
    .execute(pool.pool())
    .await
    .expect("fill");

    let analyzed = |table: &'static str| async move {
        let (done,): (bool,) = sqlx::query_as(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname = $1",
        )
        .bind(table)
        .fetch_one(pool.pool())
        .await
        .expect("table stats");
        done
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !analyzed("filled").await {
        assert!(
            std::time::Instant::now() < deadline,
            "no statistics taken for a table with {filled} rows written within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (rows,): (f32,) =
        sqlx::query_as("SELECT reltuples FROM pg_class WHERE oid = 'filled'::regclass")
            .fetch_one(pool.pool())
            .await
            .expect("reltuples");
    assert_eq!(
        rows as i64, filled,
        "the planner now knows the table's size"
    );
    assert!(
        !analyzed("sparse").await,
        "a table with {sparse} rows written is left to autovacuum"
    );
}

/// When PostgreSQL ends a session under a running statement (a fast shutdown, a failover,
/// an operator), the statement fails as "unavailable", which answers 503 with
/// `Retry-After`, not as a server bug (500).
#[tokio::test]
async fn a_statement_cut_off_by_the_server_shutting_its_session_is_unavailable() {
    use keel_kernel::http::error::ApiError;
    use keel_kernel::store::{Db, StoreError};
    use sea_query::{Expr, Query};

    let app = TestApp::spawn().await;
    let Db::Postgres(pool) = &app.state.db else {
        return; // SQLite has no server to end a session.
    };
    let marker = format!("cut-off-{}", uuid::Uuid::now_v7());
    let sleeping = Query::select()
        .expr(Expr::cust(format!("pg_sleep(30), '{marker}'")))
        .to_owned();
    let db = app.state.db.clone();
    let running = tokio::spawn(async move { db.execute(&sleeping).await });
    // Terminate the backend running it, once it runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
        )
        .bind(&marker)
        .fetch_one(pool.pool())
        .await
        .expect("terminate");
        if n > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the statement never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cut-off statement returns at once")
        .expect("task")
        .expect_err("the session was ended");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let api = ApiError::from(err);
    assert_eq!(api.status.as_u16(), 503);
    // The pool replaces the lost connection: the next statement works.
    let (one,): (i32,) = sqlx::query_as("SELECT 1")
        .fetch_one(pool.pool())
        .await
        .expect("a fresh connection");
    assert_eq!(one, 1);
}
