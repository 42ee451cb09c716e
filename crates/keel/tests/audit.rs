//! The audit trail on SQLite or PostgreSQL: a write and its event commit together or not at
//! all; the hash chain catches an edited and a deleted event (after the triggers have been
//! shown to refuse both); the outbox delivers after a crash and wakes at once after commit;
//! an event committed but not yet chained when its node died is chained by the next node;
//! concurrent appends keep one valid chain; retention prunes behind a checkpoint and what
//! remains verifies; the API filters, paginates and exports; encrypted fields appear only as
//! "changed"; the platform chain; the transaction helper's retries and savepoints; and a
//! message a subscriber refused comes back after its backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use chrono::TimeDelta;
use keel_kernel::audit::{self, AuditConfig, AuditContext};
use keel_kernel::auth::SecurityEventKind;
use keel_kernel::config::DatabaseKind;
use keel_kernel::store::{Db, RetryPolicy, StoreError};
use keel_testkit::{PASSWORD, Session, TestApp, TestDb, problem};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

async fn app() -> TestApp {
    TestApp::spawn().await
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"))
}

async fn events(app: &TestApp, who: &Session, query: &str) -> Value {
    let r = app
        .get_as(&format!("/api/v1/audit/events?{query}"), &who.access_token)
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    json_of(r).await
}

async fn verify_api(app: &TestApp, who: &Session) -> Value {
    let r = app.get_as("/api/v1/audit/verify", &who.access_token).await;
    assert_eq!(r.status(), StatusCode::OK);
    json_of(r).await
}

/// Runs SQL written for the engine in use, outside the store (as an intruder would).
async fn raw(db: &Db, sql: &str) -> Result<u64, String> {
    match db {
        Db::Sqlite(sqlite) => sqlite
            .with_connection(|c| c.execute_batch(sql).map(|()| c.changes()))
            .await
            .map_err(|e| e.to_string()),
        Db::Postgres(pool) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(pool.pool())
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| e.to_string()),
    }
}

/// A UUID literal for raw SQL on either engine.
fn uuid_sql(db: &Db, id: Uuid) -> String {
    match db.kind() {
        DatabaseKind::Sqlite => format!("X'{}'", id.simple()),
        DatabaseKind::Postgres => format!("'{id}'::uuid"),
    }
}

/// Lets raw SQL update and delete audit events: what someone with direct database access
/// could do. The application never can.
async fn disable_audit_triggers(db: &Db) {
    let sql = match db.kind() {
        DatabaseKind::Sqlite => {
            "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;"
        }
        DatabaseKind::Postgres => {
            "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"
        }
    };
    raw(db, sql).await.expect("disable triggers");
}

async fn create_partner(app: &TestApp, who: &Session, name: &str) -> Uuid {
    app.create_partner(who, name).await
}

/// `keel audit …` against the test's database.
fn keel_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    let config = &app.state.config;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.current_dir(app.db.data_dir()).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("KEEL_DATA_DIR", app.db.data_dir())
        .env("KEEL_DATABASE_URL", config.database_url())
        .env("KEEL_LOG__LEVEL", "error");
    if let Some(schema) = &config.database.schema {
        cmd.env("KEEL_DATABASE__SCHEMA", schema);
    }
    cmd.arg("audit").args(args).output().expect("run keel")
}

#[tokio::test]
async fn a_write_and_its_event_commit_together_or_not_at_all() {
    let app = app().await;
    let admin = app.register_org("atomic@acme.example", "Acme").await;

    let ok = app
        .post_as(
            "/api/v1/test/audited-items",
            &admin.access_token,
            &json!({"name": "kept"}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    let kept = json_of(ok).await["id"].as_str().expect("id").to_string();
    assert_eq!(
        app.get(&format!("/api/v1/test/items/{kept}"))
            .await
            .status(),
        StatusCode::OK
    );
    let found = events(&app, &admin, &format!("resource_id={kept}")).await;
    assert_eq!(found["pagination"]["total"], 1, "{found}");
    assert_eq!(found["data"][0]["action"], "test_item.created");

    let before_outbox = audit::outbox::pending(&app.state.db).await.expect("outbox");
    let failed = app
        .post_as(
            "/api/v1/test/audited-items",
            &admin.access_token,
            &json!({"name": "rolled-back", "fail_after_write": true}),
        )
        .await;
    assert_eq!(failed.status(), StatusCode::CONFLICT);
    problem(failed).await;
    // Neither the item nor its event (nor its outbox message) exists.
    let all = events(&app, &admin, "resource_type=test_item").await;
    assert_eq!(all["pagination"]["total"], 1, "{all}");
    assert!(!all.to_string().contains("rolled-back"));
    let again = app
        .post_as(
            "/api/v1/test/audited-items",
            &admin.access_token,
            &json!({"name": "rolled-back"}),
        )
        .await;
    assert_eq!(
        again.status(),
        StatusCode::CREATED,
        "the name is free: the first write was rolled back"
    );
    assert!(audit::outbox::pending(&app.state.db).await.expect("outbox") <= before_outbox + 1);
    assert_eq!(verify_api(&app, &admin).await["ok"], true);
}

#[tokio::test]
async fn the_chain_catches_an_edited_event_after_the_triggers_refuse_the_edit() {
    let app = app().await;
    let admin = app.register_org("edit@acme.example", "Acme").await;
    for i in 0..5 {
        create_partner(&app, &admin, &format!("Partner {i}")).await;
    }
    let report = verify_api(&app, &admin).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["events_checked"], 7);
    assert_eq!(report["last_seq"], 7);

    let db = &app.state.db;
    let org = uuid_sql(db, admin.org_id);
    let edit =
        format!("UPDATE audit_events SET resource_id = 'forged' WHERE org_id = {org} AND seq = 5");
    let refused = raw(db, &edit).await;
    assert!(
        refused.is_err(),
        "the append-only trigger must refuse an update"
    );
    assert!(
        refused
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("append-only")
    );
    assert!(
        raw(
            db,
            &format!("DELETE FROM audit_events WHERE org_id = {org} AND seq = 5")
        )
        .await
        .is_err(),
        "and a delete of a live event"
    );

    disable_audit_triggers(db).await;
    assert_eq!(raw(db, &edit).await.expect("edit"), 1);
    let report = verify_api(&app, &admin).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["broken"]["seq"], 5, "{report}");
    assert!(
        report["broken"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("altered"),
        "{report}"
    );

    // The operator's tool sees it too, and fails.
    let out = keel_cli(&app, &["verify", "--org", &admin.org_id.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("BROKEN at event 5"), "{stdout}");
}

#[tokio::test]
async fn the_chain_catches_a_deleted_event_in_the_middle_and_at_the_end() {
    let app = app().await;
    let admin = app.register_org("delete@acme.example", "Acme").await;
    let other = app.register_org("tail@acme.example", "Other").await;
    for i in 0..4 {
        create_partner(&app, &admin, &format!("Partner {i}")).await;
        create_partner(&app, &other, &format!("Partner {i}")).await;
    }
    let db = &app.state.db;
    disable_audit_triggers(db).await;
    let a = uuid_sql(db, admin.org_id);
    assert_eq!(
        raw(
            db,
            &format!("DELETE FROM audit_events WHERE org_id = {a} AND seq = 2")
        )
        .await
        .expect("delete"),
        1
    );
    let report = verify_api(&app, &admin).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["broken"]["seq"], 2, "{report}");
    assert!(
        report["broken"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("missing"),
        "{report}"
    );

    // Deleting the newest event leaves no gap in what remains, but the head remembers.
    let b = uuid_sql(db, other.org_id);
    raw(
        db,
        &format!("DELETE FROM audit_events WHERE org_id = {b} AND seq = 4"),
    )
    .await
    .expect("delete");
    let report = verify_api(&app, &other).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["broken"]["seq"], 4, "{report}");
}

/// Starts the next node on a database a stopped node left, with the given relay poll, and
/// waits (at most 10 s) for the first event its relay delivers.
async fn next_node_delivers(
    db: Arc<TestDb>,
    relay_poll_ms: u64,
) -> (
    TestApp,
    tokio::sync::broadcast::Receiver<Arc<audit::AuditEvent>>,
    Arc<audit::AuditEvent>,
) {
    let (node, db) = TestApp::builder()
        .database(db)
        .configure(move |c| c.audit.relay_poll_ms = relay_poll_ms)
        .build()
        .await
        .expect("build");
    let mut events = node.state().audit.bus.subscribe();
    let app = TestApp::serve(node, db);
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("delivered within 10 s")
        .expect("event");
    (app, events, first)
}

#[tokio::test]
async fn an_outbox_message_written_before_a_crash_is_delivered_by_the_next_node() {
    // A node that committed an event but never ran its relay (it died first).
    let (first, db) = TestApp::builder().build().await.expect("build");
    let ctx = AuditContext::system("test");
    keel_kernel::auth::store::security_event(
        &first.state().db,
        None,
        None,
        SecurityEventKind::IpBlocked,
        &ctx,
        json!({}),
    )
    .await
    .expect("record");
    assert_eq!(
        audit::outbox::pending(&first.state().db)
            .await
            .expect("pending"),
        1
    );
    drop(first);

    // The next node delivers it, without anything new happening. Its poll interval is long,
    // so later deliveries in this test can only come from the wake-up after commit.
    let (app, mut events, delivered) = next_node_delivers(db, 60_000).await;
    assert_eq!(delivered.action, "auth.ip_blocked");
    assert_eq!(delivered.org_id, audit::PLATFORM_ORG);
    for _ in 0..50 {
        if audit::outbox::pending(&app.state.db)
            .await
            .expect("pending")
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        audit::outbox::pending(&app.state.db)
            .await
            .expect("pending"),
        0
    );

    // A new change is announced right after its commit, not at the next poll.
    let admin = app.register_org("outbox@acme.example", "Acme").await;
    let partner = create_partner(&app, &admin, "Announced").await;
    let started = std::time::Instant::now();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("announced within 5 s")
            .expect("event");
        if e.action == "partner.created" {
            assert_eq!(e.resource_id.as_deref(), Some(partner.to_string().as_str()));
            assert_eq!(e.org_id, admin.org_id);
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_event_committed_but_not_chained_before_a_crash_is_chained_by_the_next_node() {
    // On PostgreSQL an event commits with its change into `audit_pending` and is chained right
    // after the commit. A node that died in between left this row behind (written here as
    // that node would have written it, a minute ago).
    let (first, db) = TestApp::builder().build().await.expect("build");
    let store = first.state().db.clone();
    let (org, id) = (Uuid::now_v7(), Uuid::now_v7());
    let at = chrono::Utc::now() - TimeDelta::minutes(1);
    let payload = json!({
        "id": id, "org_id": org, "seq": 0, "actor_type": "system", "actor_id": "billing",
        "action": "invoice.issued", "resource_type": "invoice", "resource_id": "INV-7",
        "changes": null, "detail": null, "request_id": "req-1", "ip": null,
        "user_agent": null, "method": "POST", "route": "/api/v1/invoices", "outcome": "success",
        "error_code": null, "duration_ms": 12, "created_at": at, "prev_hash": "", "hash": ""
    });
    let sql = format!(
        "INSERT INTO audit_pending (id, org_id, payload, created_at) VALUES ({}, {}, '{}', '{}')",
        uuid_sql(&store, id),
        uuid_sql(&store, org),
        payload,
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
    );
    raw(&store, &sql).await.expect("insert pending");
    drop(first);

    // The next node's relay chains it (and then delivers it) without anything new happening.
    let (app, _events, delivered) = next_node_delivers(db, 100).await;
    assert_eq!(delivered.id, id);
    assert_eq!(delivered.action, "invoice.issued");
    assert_eq!(delivered.seq, 1);
    assert_eq!(delivered.org_id, org);
    let report = audit::verify(&app.state.db, org).await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 1);
    assert_eq!(
        raw(&app.state.db, "DELETE FROM audit_pending").await,
        Ok(0),
        "nothing is left pending"
    );
}

#[tokio::test]
async fn concurrent_appends_from_many_tasks_keep_one_valid_chain() {
    let app = app().await;
    let a = app.register_org("many-a@acme.example", "A").await;
    let b = app.register_org("many-b@acme.example", "B").await;
    let calls = (0..40).map(|i| {
        let who = if i % 2 == 0 { &a } else { &b };
        let client = app.client.clone();
        let url = app.url("/api/v1/partners");
        let token = who.access_token.clone();
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"name": format!("Concurrent {i}"), "kind": "buyer"}))
                .send()
                .await
                .expect("send")
                .status()
        }
    });
    // And the platform chain from background tasks, at the same time.
    let platform = (0..10).map(|_| {
        let db = app.state.db.clone();
        tokio::spawn(async move {
            keel_kernel::auth::store::security_event(
                &db,
                None,
                None,
                SecurityEventKind::LoginFailed,
                &AuditContext::system("test"),
                json!({}),
            )
            .await
        })
    });
    let (statuses, platform) = tokio::join!(
        futures::future::join_all(calls),
        futures::future::join_all(platform)
    );
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    for p in platform {
        p.expect("task").expect("platform event");
    }
    for who in [&a, &b] {
        let report = verify_api(&app, who).await;
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["events_checked"], 22, "{report}");
        assert_eq!(report["last_seq"], 22, "{report}");
    }
    let report = audit::verify(&app.state.db, audit::PLATFORM_ORG)
        .await
        .expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 10);
}

#[tokio::test]
async fn retention_prunes_behind_a_checkpoint_and_what_remains_verifies() {
    let app = app().await;
    let admin = app.register_org("prune@acme.example", "Acme").await;
    for i in 0..5 {
        create_partner(&app, &admin, &format!("Old {i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let boundary = keel_kernel::store::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..3 {
        create_partner(&app, &admin, &format!("New {i}")).await;
    }
    let config = AuditConfig {
        retention_days: Some(1),
        ..AuditConfig::default()
    };
    // Retention off: nothing happens.
    let off = audit::prune(&app.state.db, &AuditConfig::default(), boundary)
        .await
        .expect("prune");
    assert!(off.chains.is_empty());

    // "Now" is a day after the boundary: the five old events are past retention.
    let report = audit::prune(&app.state.db, &config, boundary + TimeDelta::days(1))
        .await
        .expect("prune");
    let chain = report
        .chains
        .iter()
        .find(|c| c.org_id == admin.org_id)
        .expect("the organization's chain");
    assert_eq!(chain.checkpoint_seq, 7);
    assert!(chain.new_checkpoint);
    assert_eq!(chain.events_deleted, 7);

    let verified = verify_api(&app, &admin).await;
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["checkpoint"]["seq"], 7, "{verified}");
    assert_eq!(verified["first_seq"], 8, "{verified}");
    // Three new partners and the announcement of the checkpoint.
    assert_eq!(verified["events_checked"], 4, "{verified}");
    let pruned = events(&app, &admin, "action=audit.pruned").await;
    assert_eq!(pruned["pagination"]["total"], 1, "{pruned}");
    assert_eq!(pruned["data"][0]["detail"]["checkpoint_seq"], 7);
    assert_eq!(pruned["data"][0]["actor"]["type"], "system");
    assert_eq!(pruned["data"][0]["actor"]["id"], "retention");
    let all = events(&app, &admin, "").await;
    assert_eq!(all["pagination"]["total"], 4, "{all}");
    assert!(!all.to_string().contains("Old 0"));

    // Running again changes nothing.
    let again = audit::prune(&app.state.db, &config, boundary + TimeDelta::days(1))
        .await
        .expect("prune");
    let chain = again
        .chains
        .iter()
        .find(|c| c.org_id == admin.org_id)
        .expect("chain");
    assert!(!chain.new_checkpoint);
    assert_eq!(chain.events_deleted, 0);

    // The database still refuses to delete what no checkpoint covers.
    let db = &app.state.db;
    let org = uuid_sql(db, admin.org_id);
    assert!(
        raw(
            db,
            &format!("DELETE FROM audit_events WHERE org_id = {org} AND seq = 8")
        )
        .await
        .is_err()
    );
    assert!(
        raw(
            db,
            &format!("DELETE FROM audit_checkpoints WHERE org_id = {org}")
        )
        .await
        .is_err(),
        "checkpoints are kept forever"
    );
    assert_eq!(verify_api(&app, &admin).await["ok"], true);
}

#[tokio::test]
async fn the_audit_api_filters_paginates_exports_and_keeps_tenants_apart() {
    let app = app().await;
    let admin = app.register_org("api@acme.example", "Acme").await;
    let stranger = app.register_org("api@other.example", "Other").await;
    let a = create_partner(&app, &admin, "Alpha").await;
    let b = create_partner(&app, &admin, "Beta").await;
    let c = create_partner(&app, &admin, "Gamma").await;
    let renamed = app
        .client
        .put(app.url(&format!("/api/v1/partners/{b}")))
        .bearer_auth(&admin.access_token)
        .header("x-request-id", "audit-test-rename")
        .header("user-agent", "audit-test/1.0")
        .json(&json!({"name": "Beta Two", "kind": "seller"}))
        .send()
        .await
        .expect("send");
    assert_eq!(renamed.status(), StatusCode::OK);
    assert_eq!(
        app.delete_as(&format!("/api/v1/partners/{c}"), &admin.access_token)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    app.invite_and_register(&admin, "member@acme.example", "member", None)
        .await;

    let all = events(&app, &admin, "").await;
    let total = all["pagination"]["total"].as_u64().expect("total");
    assert_eq!(total, 9, "{all}");
    // Newest first.
    assert_eq!(all["data"][0]["action"], "auth.registered");
    assert_eq!(all["data"][0]["seq"], 9);

    let count = |v: &Value| v["pagination"]["total"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(
        count(&events(&app, &admin, "action=partner.created").await),
        3
    );
    assert_eq!(count(&events(&app, &admin, "action=partner.*").await), 5);
    assert_eq!(
        count(
            &events(
                &app,
                &admin,
                &format!("resource_type=partner&resource_id={b}")
            )
            .await
        ),
        2
    );
    assert_eq!(
        count(&events(&app, &admin, &format!("actor={}", admin.user_id)).await),
        8
    );
    assert_eq!(count(&events(&app, &admin, "actor=retention").await), 0);
    let tomorrow = (chrono::Utc::now() + TimeDelta::days(1)).format("%Y-%m-%d");
    assert_eq!(
        count(&events(&app, &admin, &format!("created_to={tomorrow}")).await),
        9
    );
    assert_eq!(
        count(&events(&app, &admin, &format!("created_from={tomorrow}")).await),
        0
    );
    let bad = app
        .get_as(
            "/api/v1/audit/events?created_from=last-week",
            &admin.access_token,
        )
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(problem(bad).await.to_string().contains("created_from"));

    let page = events(&app, &admin, "page=2&page_size=4&sort=seq").await;
    assert_eq!(page["pagination"]["total"], 9);
    assert_eq!(page["pagination"]["total_pages"], 3);
    assert_eq!(page["data"].as_array().map(Vec::len), Some(4));
    assert_eq!(page["data"][0]["seq"], 5);

    // The update: what changed, and where it came from.
    let update = &events(&app, &admin, "action=partner.updated").await["data"][0];
    assert_eq!(
        update["changes"],
        json!({"name": {"before": "Beta", "after": "Beta Two"}, "kind": {"before": "buyer", "after": "seller"}})
    );
    assert_eq!(
        update["actor"],
        json!({"type": "user", "id": admin.user_id})
    );
    assert_eq!(update["context"]["request_id"], "audit-test-rename");
    assert_eq!(update["context"]["user_agent"], "audit-test/1.0");
    assert_eq!(update["context"]["method"], "PUT");
    assert_eq!(update["context"]["route"], "/api/v1/partners/{id}");
    assert_eq!(update["context"]["ip"], "127.0.0.1");
    assert_eq!(update["outcome"], "success");
    let deleted = &events(&app, &admin, "action=partner.deleted").await["data"][0];
    assert_eq!(
        deleted["changes"]["name"],
        json!({"before": "Gamma", "after": null})
    );

    // One event; another tenant's admin cannot see it.
    let id = update["id"].as_str().expect("id");
    let one = json_of(
        app.get_as(&format!("/api/v1/audit/events/{id}"), &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(&one, update);
    assert_eq!(
        app.get_as(
            &format!("/api/v1/audit/events/{id}"),
            &stranger.access_token
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
    // The other organization sees only its own sign-up and sign-in.
    assert_eq!(count(&events(&app, &stranger, "").await), 2);
    assert!(
        !events(&app, &stranger, "")
            .await
            .to_string()
            .contains(&a.to_string())
    );

    // Members do not read the audit trail.
    let member = app.sign_in("member@acme.example", PASSWORD).await;
    assert_eq!(
        app.get_as("/api/v1/audit/events", &member.access_token)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get_as("/api/v1/audit/verify", &member.access_token)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );

    // Exports: CSV with a header line, JSON lines, same filters, oldest first.
    let csv = app
        .get_as(
            "/api/v1/audit/events/export?format=csv&action=partner.*",
            &admin.access_token,
        )
        .await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap_or("")
            .starts_with("text/csv")
    );
    let text = csv.text().await.expect("csv");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines[0].starts_with("id,seq,created_at,actor_type"));
    assert!(lines[1].contains("partner.created"));
    assert!(
        lines[4].contains(r#""{""kind"":{""after"":""seller"""#),
        "changes are quoted JSON: {}",
        lines[4]
    );
    let jsonl = app
        .get_as(
            "/api/v1/audit/events/export?format=jsonl",
            &admin.access_token,
        )
        .await
        .text()
        .await
        .expect("jsonl");
    let parsed: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON event per line"))
        .collect();
    // Every event the list counts, oldest first.
    let listed = count(&events(&app, &admin, "").await);
    assert_eq!(parsed.len() as u64, listed);
    assert_eq!(parsed[0]["seq"], 1);
    // A compressed export (browsers and most clients ask for one) ends cleanly.
    let gzipped = app
        .client
        .get(app.url("/api/v1/audit/events/export?format=jsonl"))
        .bearer_auth(&admin.access_token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("send");
    assert_eq!(gzipped.status(), StatusCode::OK);
    assert_eq!(
        gzipped
            .headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    let body = gzipped.bytes().await.expect("the whole compressed body");
    assert!(body.starts_with(&[0x1f, 0x8b]), "a gzip stream");
    let wrong = app
        .get_as(
            "/api/v1/audit/events/export?format=xml",
            &admin.access_token,
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(verify_api(&app, &admin).await["ok"], true);
}

#[tokio::test]
async fn an_export_larger_than_the_limit_is_refused() {
    let app = TestApp::builder()
        .configure(|c| c.audit.export_max_rows = 2)
        .spawn()
        .await
        .expect("spawn");
    let admin = app.register_org("export@acme.example", "Acme").await;
    for i in 0..3 {
        create_partner(&app, &admin, &format!("P{i}")).await;
    }
    let r = app
        .get_as("/api/v1/audit/events/export", &admin.access_token)
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem(r).await["max_rows"], 2);
    let first = events(&app, &admin, "sort=seq&page_size=1").await;
    let id = first["data"][0]["resource_id"]
        .as_str()
        .expect("resource id");
    let narrowed = app
        .get_as(
            &format!("/api/v1/audit/events/export?format=jsonl&resource_id={id}"),
            &admin.access_token,
        )
        .await;
    assert_eq!(narrowed.status(), StatusCode::OK);
    assert_eq!(narrowed.text().await.expect("body").lines().count(), 1);
}

#[tokio::test]
async fn encrypted_and_secret_fields_appear_only_as_changed() {
    let app = app().await;
    let admin = app.register_org("secret@acme.example", "Acme").await;
    let r = app
        .post_as(
            "/api/v1/test/audited-items",
            &admin.access_token,
            &json!({"name": "with a secret", "secret": "s3cr3t-plaintext"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let found = events(&app, &admin, "action=test_item.created").await;
    let event = &found["data"][0];
    assert_eq!(event["changes"]["secret"], "changed", "{event}");
    assert_eq!(
        event["changes"]["name"],
        json!({"before": null, "after": "with a secret"})
    );
    let text = found.to_string();
    assert!(!text.contains("s3cr3t"), "no plaintext: {text}");
    assert!(!text.contains("\"v1."), "no ciphertext either: {text}");

    let changed = app
        .post_as(
            "/api/v1/auth/change-password",
            &admin.access_token,
            &json!({"current_password": PASSWORD, "new_password": "another-long-passphrase-42"}),
        )
        .await;
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    let found = events(&app, &admin, "action=auth.password_changed").await;
    assert_eq!(
        found["data"][0]["changes"],
        json!({"password_hash": "changed"})
    );
    assert!(!found.to_string().contains("argon2"));
    // The same event is a security event.
    let security = json_of(
        app.get_as(
            &format!(
                "/api/v1/orgs/{}/security-events?kind=password_changed",
                admin.org_id
            ),
            &admin.access_token,
        )
        .await,
    )
    .await;
    assert_eq!(security["pagination"]["total"], 1, "{security}");
    assert_eq!(security["data"][0]["user_id"], json!(admin.user_id));
}

#[tokio::test]
async fn failed_sign_ins_without_an_account_go_to_the_platform_chain() {
    let app = app().await;
    let root = app.setup_super_admin().await;
    let tenant = app.register_org("known@acme.example", "Acme").await;
    assert_eq!(
        app.login("nobody@nowhere.example", "wrong-password-123")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("known@acme.example", "wrong-password-123")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // The known account's failure is in its organization's chain, without the password.
    let own = events(&app, &tenant, "action=auth.login_failed").await;
    assert_eq!(own["pagination"]["total"], 1, "{own}");
    let e = &own["data"][0];
    assert_eq!(e["outcome"], "failure");
    assert_eq!(e["error_code"], "invalid_credentials");
    assert_eq!(e["actor"]["type"], "anonymous");
    assert_eq!(e["resource_id"], json!(tenant.user_id.to_string()));
    assert!(!own.to_string().contains("wrong-password"));

    // The unknown address's failure is in the platform chain, for super admins only.
    let platform = events(&app, &root, "platform=true&action=auth.login_failed").await;
    assert_eq!(platform["pagination"]["total"], 1, "{platform}");
    assert_eq!(platform["data"][0]["org_id"], json!(Uuid::nil()));
    assert!(!platform.to_string().contains("nobody@"));
    let refused = app
        .get_as("/api/v1/audit/events?platform=true", &tenant.access_token)
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let report = json_of(
        app.get_as("/api/v1/audit/verify?platform=true", &root.access_token)
            .await,
    )
    .await;
    assert_eq!(report["ok"], true, "{report}");

    let out = keel_cli(&app, &["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("platform: ok"), "{stdout}");
    assert!(
        stdout.contains(&format!("{}: ok", tenant.org_id)),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------
// The transaction helper

async fn insert_item(tx: &mut keel_kernel::store::Tx, name: &str) -> Result<(), StoreError> {
    tx.execute(
        &sea_query::Query::insert()
            .into_table("test_items")
            .columns(["id", "name", "created_at"])
            .values_panic([
                Uuid::now_v7().into(),
                name.into(),
                keel_kernel::store::now().into(),
            ])
            .to_owned(),
    )
    .await
    .map(|_| ())
}

async fn item_exists(db: &Db, name: &str) -> bool {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Row {
        #[allow(dead_code)]
        name: String,
    }
    use sea_query::ExprTrait as _;
    db.fetch_optional::<Row>(
        &sea_query::Query::select()
            .column("name")
            .from("test_items")
            .and_where(sea_query::Expr::col("name").eq(name))
            .to_owned(),
    )
    .await
    .expect("select")
    .is_some()
}

#[tokio::test]
async fn a_savepoint_undoes_only_its_own_writes_and_hooks() {
    let app = app().await;
    let db = &app.state.db;
    let outer_hook = Arc::new(AtomicBool::new(false));
    let inner_hook = Arc::new(AtomicBool::new(false));
    let (o, i) = (&outer_hook, &inner_hook);
    db.transaction(|tx| {
        Box::pin(async move {
            insert_item(tx, "outer").await?;
            let o = o.clone();
            tx.after_commit(move || o.store(true, Ordering::SeqCst));
            let sp = tx.savepoint().await?;
            insert_item(tx, "inner").await?;
            let i = i.clone();
            tx.after_commit(move || i.store(true, Ordering::SeqCst));
            // A duplicate: on PostgreSQL this aborts everything since the savepoint.
            assert!(matches!(
                insert_item(tx, "outer").await,
                Err(StoreError::Conflict { .. })
            ));
            tx.rollback_to(sp).await?;
            let sp = tx.savepoint().await?;
            insert_item(tx, "after").await?;
            tx.release(sp).await?;
            Ok::<_, StoreError>(())
        })
    })
    .await
    .expect("transaction");
    assert!(item_exists(db, "outer").await);
    assert!(item_exists(db, "after").await);
    assert!(!item_exists(db, "inner").await);
    assert!(outer_hook.load(Ordering::SeqCst));
    assert!(
        !inner_hook.load(Ordering::SeqCst),
        "its savepoint was rolled back"
    );

    // An error rolls the whole unit back and runs no hook.
    let hook = Arc::new(AtomicBool::new(false));
    let h = &hook;
    let failed: Result<(), StoreError> = db
        .transaction(|tx| {
            Box::pin(async move {
                insert_item(tx, "never").await?;
                let h = h.clone();
                tx.after_commit(move || h.store(true, Ordering::SeqCst));
                Err(StoreError::NotFound)
            })
        })
        .await;
    assert!(matches!(failed, Err(StoreError::NotFound)));
    assert!(!item_exists(db, "never").await);
    assert!(!hook.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_contended_transaction_runs_again_and_succeeds() {
    let app = TestApp::builder()
        .configure(|c| c.database.sqlite_busy_timeout_ms = 50)
        .spawn()
        .await
        .expect("spawn");
    let db = app.state.db.clone();
    let policy = RetryPolicy {
        max_attempts: 20,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
    };
    match db.kind() {
        DatabaseKind::Sqlite => {
            // Another writer holds the database; the unit's BEGIN IMMEDIATE gives up after
            // the busy timeout (SQLITE_BUSY), and the helper tries again until it is free.
            let blocker = db.begin().await.expect("lock");
            let attempts = Arc::new(AtomicU32::new(0));
            let (db2, n) = (db.clone(), attempts.clone());
            let unit = tokio::spawn(async move {
                let n = &n;
                db2.transaction_with(policy, |tx| {
                    Box::pin(async move {
                        n.fetch_add(1, Ordering::SeqCst);
                        insert_item(tx, "waited").await
                    })
                })
                .await
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            blocker.rollback().await.expect("unlock");
            unit.await.expect("task").expect("eventually committed");
            assert!(item_exists(&db, "waited").await);
            assert_eq!(
                attempts.load(Ordering::SeqCst),
                1,
                "the closure ran once: the retries were of BEGIN, before it"
            );
        }
        DatabaseKind::Postgres => {
            // Two units lock two rows in opposite orders: PostgreSQL kills one (deadlock,
            // 40P01); the helper runs it again and both commit.
            for name in ["left", "right"] {
                db.transaction(|tx| Box::pin(async move { insert_item(tx, name).await }))
                    .await
                    .expect("seed");
            }
            let barrier = Arc::new(tokio::sync::Barrier::new(2));
            let attempts = Arc::new(AtomicU32::new(0));
            let unit = |first: &'static str, second: &'static str| {
                let (db, barrier, attempts) = (db.clone(), barrier.clone(), attempts.clone());
                tokio::spawn(async move {
                    let tries = AtomicU32::new(0);
                    let (barrier, attempts, tries) = (&barrier, &attempts, &tries);
                    db.transaction_with(policy, |tx| {
                        Box::pin(async move {
                            attempts.fetch_add(1, Ordering::SeqCst);
                            let attempt = tries.fetch_add(1, Ordering::SeqCst);
                            touch(tx, first).await?;
                            if attempt == 0 {
                                barrier.wait().await;
                            }
                            touch(tx, second).await
                        })
                    })
                    .await
                })
            };
            let (a, b) = tokio::join!(unit("left", "right"), unit("right", "left"));
            a.expect("task").expect("committed");
            b.expect("task").expect("committed");
            assert!(
                attempts.load(Ordering::SeqCst) >= 3,
                "one unit ran again after the deadlock"
            );
        }
    }
}

async fn touch(tx: &mut keel_kernel::store::Tx, name: &str) -> Result<(), StoreError> {
    use sea_query::ExprTrait as _;
    tx.execute(
        &sea_query::Query::update()
            .table("test_items")
            .value("created_at", keel_kernel::store::now())
            .and_where(sea_query::Expr::col("name").eq(name))
            .to_owned(),
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn sign_up_sign_in_and_sign_out_are_in_the_organizations_trail() {
    let app = TestApp::spawn().await;
    let admin = app.register_org("trail@acme.example", "Acme").await;
    let again = app
        .sign_in("trail@acme.example", keel_testkit::PASSWORD)
        .await;
    let r = app
        .post_as(
            "/api/v1/auth/logout-all-devices",
            &again.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let fresh = app
        .sign_in("trail@acme.example", keel_testkit::PASSWORD)
        .await;

    let events: Value = app
        .get_as(
            "/api/v1/audit/events?sort=seq&page_size=100",
            &fresh.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    let actions: Vec<&str> = events["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for wanted in ["auth.registered", "auth.login", "auth.logout_all"] {
        assert!(
            actions.contains(&wanted),
            "{wanted} missing from {actions:?}"
        );
    }
    let registered = events["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|e| e["action"] == "auth.registered")
        .expect("registered");
    assert_eq!(registered["actor"]["id"], admin.user_id.to_string());
    assert_eq!(registered["detail"]["new_organization"], true);
    assert!(registered["context"]["request_id"].is_string());
    let logout_all = events["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|e| e["action"] == "auth.logout_all")
        .expect("logout_all");
    assert!(
        logout_all["detail"]["sessions_ended"]
            .as_u64()
            .expect("count")
            >= 2
    );
    // The chain still verifies with the new events in it.
    let verify: Value = app
        .get_as("/api/v1/audit/verify", &fresh.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(verify["ok"], true, "{verify}");
}

/// A subscriber that fails gets the message again after a backoff, and only then: the
/// relay's claim leases the message, counts the attempt and records the error; the next
/// claim before the backoff ends takes nothing, the one after it delivers.
#[tokio::test]
async fn a_message_a_subscriber_refused_is_retried_after_its_backoff() {
    struct Flaky(AtomicU32);
    #[async_trait::async_trait]
    impl audit::outbox::Subscriber for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn deliver(&self, _: &audit::AuditEvent) -> anyhow::Result<()> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                anyhow::bail!("downstream refused");
            }
            Ok(())
        }
    }
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Outbox {
        attempts: i64,
        last_error: Option<String>,
        available_at: chrono::DateTime<chrono::Utc>,
    }
    let outbox = || {
        sea_query::Query::select()
            .columns(["attempts", "last_error", "available_at"])
            .from("audit_outbox")
            .to_owned()
    };

    // A node that is built but not serving: no relay of its own runs.
    let (node, _db) = TestApp::builder().build().await.expect("build");
    let db = node.state().db.clone();
    keel_kernel::auth::store::security_event(
        &db,
        None,
        None,
        SecurityEventKind::IpBlocked,
        &AuditContext::system("test"),
        json!({}),
    )
    .await
    .expect("record");
    let bus = audit::outbox::EventBus::default();
    let flaky = Arc::new(Flaky(AtomicU32::new(0)));
    bus.register(flaky.clone());

    let before = chrono::Utc::now();
    let refused = audit::outbox::relay_once(&db, &bus, 10)
        .await
        .expect("pass");
    let after = chrono::Utc::now();
    assert_eq!((refused.claimed, refused.delivered), (1, 0));
    let row: Outbox = db.fetch_one(&outbox()).await.expect("outbox row");
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_error.as_deref(), Some("flaky: downstream refused"));
    // The first retry waits 1 s (2^0), the next ones 2, 4, 8 … s.
    assert!(
        row.available_at >= before + TimeDelta::milliseconds(900)
            && row.available_at <= after + TimeDelta::milliseconds(1100),
        "first retry due at {}, refused between {before} and {after}",
        row.available_at
    );

    let early = audit::outbox::relay_once(&db, &bus, 10)
        .await
        .expect("pass");
    assert_eq!(early.claimed, 0, "claimed again before its backoff ended");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let delivered = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pass = audit::outbox::relay_once(&db, &bus, 10)
            .await
            .expect("pass");
        if pass.claimed > 0 {
            break pass;
        }
        assert!(std::time::Instant::now() < deadline, "never retried");
    };
    assert_eq!((delivered.claimed, delivered.delivered), (1, 1));
    assert_eq!(flaky.0.load(Ordering::SeqCst), 2);
    assert_eq!(audit::outbox::pending(&db).await.expect("pending"), 0);
    let row: Outbox = db.fetch_one(&outbox()).await.expect("outbox row");
    assert_eq!(row.attempts, 2);
}
