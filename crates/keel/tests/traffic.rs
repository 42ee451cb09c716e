//! Idempotency keys, load shedding and request-size limits through HTTP.

use std::time::Duration;

use keel_testkit::{Session, TestApp, problem};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post_keyed(app: &TestApp, s: &Session, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/partners"))
        .bearer_auth(&s.access_token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("send")
}

async fn partner_count(app: &TestApp, s: &Session) -> u64 {
    let list: Value = app
        .get_as("/api/v1/partners", &s.access_token)
        .await
        .json()
        .await
        .expect("json");
    list["pagination"]["total"].as_u64().expect("total")
}

#[tokio::test]
async fn a_retry_with_the_same_key_replays_the_first_response_without_a_second_effect() {
    let app = TestApp::spawn().await;
    let s = app.register_org("idem@acme.example", "Acme").await;
    let body = json!({"name": "Globex", "kind": "buyer"});
    let first = post_keyed(&app, &s, "order-42", &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let location = first.headers().get("location").cloned();
    let first_body: Value = first.json().await.expect("json");
    let again = post_keyed(&app, &s, "order-42", &body).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(again.headers().get("location").cloned(), location);
    assert_eq!(again.json::<Value>().await.expect("json"), first_body);
    assert_eq!(partner_count(&app, &s).await, 1);

    let other = post_keyed(
        &app,
        &s,
        "order-42",
        &json!({"name": "Initech", "kind": "buyer"}),
    )
    .await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        problem(other).await["errors"][0]["field"],
        "Idempotency-Key"
    );
    assert_eq!(partner_count(&app, &s).await, 1);
}

#[tokio::test]
async fn concurrent_duplicates_have_one_effect() {
    let app = TestApp::spawn().await;
    let s = app.register_org("dup@acme.example", "Acme").await;
    let body = json!({"name": "Umbrella", "kind": "supplier"});
    let calls = (0..10).map(|_| post_keyed(&app, &s, "same-key", &body));
    let responses = futures::future::join_all(calls).await;
    let statuses: Vec<StatusCode> = responses.iter().map(|r| r.status()).collect();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    let fresh = responses
        .iter()
        .filter(|r| {
            r.status() == StatusCode::CREATED && r.headers().get("idempotent-replayed").is_none()
        })
        .count();
    assert_eq!(fresh, 1, "{statuses:?}");
    assert_eq!(partner_count(&app, &s).await, 1);
}

#[tokio::test]
async fn keys_are_scoped_to_the_caller_and_failures_are_not_kept() {
    let app = TestApp::spawn().await;
    let a = app.register_org("ka@acme.example", "Acme").await;
    app.invite_and_register(&a, "kb@acme.example", "admin", None)
        .await;
    let b = app.sign_in("kb@acme.example", keel_testkit::PASSWORD).await;
    let body = json!({"name": "Hooli", "kind": "buyer"});
    assert_eq!(
        post_keyed(&app, &a, "k1", &body).await.status(),
        StatusCode::CREATED
    );
    let by_b = post_keyed(&app, &b, "k1", &body).await;
    assert_eq!(by_b.status(), StatusCode::CREATED);
    assert!(
        by_b.headers().get("idempotent-replayed").is_none(),
        "another caller's key is their own"
    );
    assert_eq!(partner_count(&app, &a).await, 2);

    let invalid = post_keyed(&app, &a, "k2", &json!({"name": "", "kind": "buyer"})).await;
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let corrected = post_keyed(&app, &a, "k2", &json!({"name": "Fixed", "kind": "buyer"})).await;
    assert_eq!(
        corrected.status(),
        StatusCode::CREATED,
        "a refused request keeps no claim on its key"
    );

    let bad_key = post_keyed(&app, &a, "has space", &body).await;
    assert_eq!(bad_key.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// The answers the outermost layer gives itself (load shed, URI too long) carry the same
/// security headers and request id as any other.
fn assert_secured(response: &reqwest::Response) {
    let h = response.headers();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(
            h.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name} on a {} answer",
            response.status()
        );
    }
    assert!(h.get("content-security-policy").is_some());
    assert!(h.get("x-request-id").is_some());
}

#[tokio::test]
async fn above_the_in_flight_cap_requests_are_shed_at_once_and_health_still_answers() {
    let app = TestApp::builder()
        .configure(|c| c.http.max_in_flight = 2)
        .spawn()
        .await
        .expect("spawn");
    let slow = |ms: u64| {
        let client = app.client.clone();
        let url = app.url(&format!("/api/v1/test/slow?ms={ms}"));
        async move { client.get(url).send().await.expect("send") }
    };
    let held = tokio::spawn(futures::future::join(slow(1500), slow(1500)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shed = slow(10).await;
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(shed.headers().get("retry-after").is_some());
    assert_secured(&shed);
    problem(shed).await;
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
    let (a, b) = held.await.expect("join");
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(slow(10).await.status(), StatusCode::OK, "capacity is back");
}

#[tokio::test]
async fn an_overlong_url_answers_414_and_an_oversized_head_431() {
    let app = TestApp::spawn().await;
    let long = format!("/api/v1/test/slow?ms=1&pad={}", "x".repeat(10_000));
    let r = app.get(&long).await;
    assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
    assert_secured(&r);
    problem(r).await;
    let r = app
        .client
        .get(app.url("/health"))
        .header("x-padding", "y".repeat(40_000))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

/// A burst of writes cannot take every database connection: transactions queue for the
/// node's write turn (SQLite) or one of its writer slots (PostgreSQL: half the pool), reads
/// keep running meanwhile, a waiting writer goes in when a slot frees, and one that waits
/// longer than the configured bound gives up with a contention error (503), not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_queue_for_their_slots_and_reads_still_get_connections() {
    use keel_kernel::config::DatabaseKind;
    use keel_kernel::store::Db;
    use sea_query::{Expr, Query};

    let test_db = keel_testkit::TestDb::new().await.expect("test database");
    let mut config = test_db.config();
    config.database.max_connections = 4;
    config.database.acquire_timeout_ms = 1500;
    config.database.sqlite_busy_timeout_ms = 1500;
    let db = Db::connect(&config).await.expect("connect");
    let slots = match db.kind() {
        DatabaseKind::Sqlite => 1,
        DatabaseKind::Postgres => 2,
    };
    let read = Query::select()
        .expr(Expr::cust("CAST(1 AS BIGINT)"))
        .to_owned();

    let mut held = Vec::new();
    for _ in 0..slots {
        held.push(db.begin().await.expect("a free writer slot"));
    }
    let waiting = {
        let db = db.clone();
        tokio::spawn(async move { db.begin().await?.commit().await })
    };
    // More reads than the pool has connections, while every writer slot is taken.
    for _ in 0..12 {
        let rows: Vec<(i64,)> = db
            .fetch_all(&read)
            .await
            .expect("a read while writers wait");
        assert_eq!(rows, vec![(1,)]);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "a writer went in while every slot was taken"
    );
    held.pop();
    waiting
        .await
        .expect("join")
        .expect("the waiting writer goes in once a slot is free");

    // Every slot taken again: a writer that waits past the bound gives up.
    held.push(db.begin().await.expect("the freed slot"));
    let err = db.begin().await.expect_err("no slot within the bound");
    assert!(err.is_contention(), "{err}");
    drop(held);
    db.begin()
        .await
        .expect("slots are free again")
        .commit()
        .await
        .expect("commit");
    db.close().await;
}
