//! Webhooks on SQLite or PostgreSQL. Incoming: a valid signature is accepted once, a replay,
//! a wrong secret, a stale timestamp and missing headers are refused. Outgoing: an admin
//! registers an endpoint (secret shown once, stored encrypted), a committed audit event of a
//! chosen type is delivered signed, retried after failures with every attempt logged; test
//! deliveries; the SSRF guard refuses private addresses unless allowed; another
//! organization's endpoint answers 404.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use axum::routing::post;
use chrono::Utc;
use keel_kernel::integrations::webhooks::{self, WebhookVerifier};
use keel_testkit::probe::PROBE_WEBHOOK_SECRET;
use keel_testkit::{FakeServer, Session, TestApp, problem};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn app() -> TestApp {
    TestApp::builder()
        .configure(|c| c.webhooks.allow_private_networks = vec!["127.0.0.1/32".into()])
        .spawn()
        .await
        .expect("server starts")
}

async fn send_incoming(
    app: &TestApp,
    id: &str,
    timestamp: i64,
    secret: &str,
    body: &str,
) -> reqwest::Response {
    let signature = webhooks::sign(
        &webhooks::secret_key(secret),
        id,
        timestamp,
        body.as_bytes(),
    );
    app.client
        .post(app.url("/api/v1/test/webhooks/incoming"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn incoming_webhooks_are_verified_and_accepted_once() {
    let app = app().await;
    let now = Utc::now().timestamp();
    let body = r#"{"consent":"granted"}"#;

    let r = send_incoming(&app, "evt_1", now, PROBE_WEBHOOK_SECRET, body).await;
    assert_eq!(r.status(), StatusCode::OK);
    let accepted: Value = r.json().await.expect("json");
    assert_eq!(accepted["id"], "evt_1");

    // The same event again (a replay, even with a fresh valid signature).
    let r = send_incoming(&app, "evt_1", now, PROBE_WEBHOOK_SECRET, body).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    problem(r).await;

    // Signed with another secret.
    let r = send_incoming(&app, "evt_2", now, &webhooks::generate_secret(), body).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        problem(r).await["type"],
        "/problems/invalid-webhook-signature"
    );

    // Validly signed, but six minutes old (the tolerance is five).
    let r = send_incoming(&app, "evt_3", now - 360, PROBE_WEBHOOK_SECRET, body).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    problem(r).await;

    // A refused attempt did not burn the event id: the genuine one still goes through.
    let r = send_incoming(&app, "evt_2", now, PROBE_WEBHOOK_SECRET, body).await;
    assert_eq!(r.status(), StatusCode::OK);

    // No signature headers at all.
    let r = app
        .client
        .post(app.url("/api/v1/test/webhooks/incoming"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem(r).await["header"], "webhook-id");
}

/// A receiver that answers 500 to the first `failures` calls, then 200, keeping every
/// request.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn receiver(failures: usize) -> (FakeServer, Received) {
    let received: Received = Arc::default();
    let r = received.clone();
    let server = FakeServer::start(Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let r = r.clone();
            async move {
                let n = {
                    let mut all = r.lock().expect("lock");
                    all.push((headers, body));
                    all.len()
                };
                if n <= failures {
                    (AxumStatus::INTERNAL_SERVER_ERROR, "receiver is down").into_response()
                } else {
                    (AxumStatus::OK, "thanks").into_response()
                }
            }
        }),
    ))
    .await;
    (server, received)
}

async fn register(app: &TestApp, admin: &Session, url: &str, types: Value) -> reqwest::Response {
    app.post_as(
        "/api/v1/webhooks/endpoints",
        &admin.access_token,
        &json!({ "url": url, "event_types": types, "description": "ERP" }),
    )
    .await
}

/// Polls the endpoint's deliveries until `done` holds for them (or fails after a deadline).
async fn deliveries_until(
    app: &TestApp,
    admin: &Session,
    endpoint: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = app
            .get_as(
                &format!("/api/v1/webhooks/endpoints/{endpoint}/deliveries"),
                &admin.access_token,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.expect("json");
        let data = body["data"].as_array().cloned().unwrap_or_default();
        if done(&data) {
            return data;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries never got there: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_committed_event_is_delivered_signed_and_retried_with_every_attempt_logged() {
    let app = app().await;
    let admin = app.register_org("admin@hooks.example", "Hooks").await;
    let (fake, received) = receiver(2).await;

    let r = register(&app, &admin, &fake.url("/hook"), json!(["partner.*"])).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.expect("json");
    let secret = created["secret"]
        .as_str()
        .expect("secret shown once")
        .to_string();
    assert!(secret.starts_with("whsec_"));
    let endpoint = created["id"].as_str().expect("id").to_string();

    // The secret is never shown again, and is not stored in clear.
    let shown: Value = app
        .get_as(
            &format!("/api/v1/webhooks/endpoints/{endpoint}"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    assert!(shown.get("secret").is_none());
    assert_eq!(shown["event_types"], json!(["partner.*"]));

    let partner = app.create_partner(&admin, "Acme Imports").await;

    let data = deliveries_until(&app, &admin, &endpoint, |d| {
        d.iter()
            .any(|x| x["event_type"] == "partner.created" && x["status"] == "delivered")
    })
    .await;
    let delivery = data
        .iter()
        .find(|x| x["event_type"] == "partner.created")
        .expect("delivery");
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(delivery["last_status_code"], 200);
    let log = delivery["attempt_log"].as_array().expect("log");
    let codes: Vec<i64> = log
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(codes, vec![500, 500, 200]);
    assert_eq!(log[0]["response_snippet"], "receiver is down");
    assert_eq!(log[2]["response_snippet"], "thanks");
    assert!(log.iter().all(|a| a["latency_ms"].is_i64()));

    // Every attempt was signed with the endpoint's secret, under one stable message id.
    let verifier = WebhookVerifier::new(&[secret.as_str()], Duration::from_secs(300));
    let received = received.lock().expect("lock").clone();
    assert_eq!(received.len(), 3);
    let mut ids = Vec::new();
    for (headers, body) in &received {
        let verified = verifier
            .verify(headers, body, Utc::now())
            .expect("a delivery verifies with the endpoint's secret");
        ids.push(verified.id);
        let payload: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(payload["type"], "partner.created");
        assert_eq!(payload["data"]["resource_id"], partner.to_string());
        assert_eq!(payload["data"]["org_id"], admin.org_id.to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "retries keep the webhook-id");
    let other = WebhookVerifier::new(&[webhooks::generate_secret()], Duration::from_secs(300));
    assert!(
        other
            .verify(&received[0].0, &received[0].1, Utc::now())
            .is_err()
    );
}

#[tokio::test]
async fn only_chosen_event_types_are_delivered_and_test_deliveries_arrive() {
    let app = app().await;
    let admin = app.register_org("admin@choose.example", "Choose").await;
    let (fake, received) = receiver(0).await;
    let r = register(&app, &admin, &fake.url("/hook"), json!(["partner.deleted"])).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let endpoint = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();

    // A partner created (not chosen) …
    app.create_partner(&admin, "Not Sent").await;
    // … then a test delivery, which arrives.
    let r = app
        .post_as(
            &format!("/api/v1/webhooks/endpoints/{endpoint}/test"),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let queued: Value = r.json().await.expect("json");
    assert_eq!(queued["status"], "queued");

    let data = deliveries_until(&app, &admin, &endpoint, |d| {
        d.iter().any(|x| x["status"] == "delivered")
    })
    .await;
    // Only the test delivery exists: partner.created was not chosen. (The outbox hands
    // events over in commit order, so the partner's event was matched before the test.)
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(data[0]["event_type"], "webhook.test");
    assert_eq!(data[0]["id"], queued["delivery_id"]);
    let received = received.lock().expect("lock");
    let payload: Value = serde_json::from_slice(&received[0].1).expect("json");
    assert_eq!(payload["type"], "webhook.test");
}

#[tokio::test]
async fn endpoints_to_private_addresses_are_refused_unless_allowed() {
    let app = TestApp::spawn().await;
    let admin = app.register_org("admin@ssrf.example", "Ssrf").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "ftp://93.184.216.34/hook",
    ] {
        let r = register(&app, &admin, url, json!(["*"])).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        let p = problem(r).await;
        assert_eq!(p["errors"][0]["field"], "url", "{p}");
    }
    let r = register(
        &app,
        &admin,
        "https://93.184.216.34/hook",
        json!(["bad type!"]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem(r).await["errors"][0]["field"], "event_types[0]");

    // Allowing 127.0.0.1 lets that address (and only it) through.
    let allowed = app_allowing().await;
    let admin = allowed.register_org("admin@ssrf2.example", "Ssrf2").await;
    let r = register(&allowed, &admin, "http://127.0.0.1:9/hook", json!(["*"])).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = register(&allowed, &admin, "http://10.0.0.7/hook", json!(["*"])).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

async fn app_allowing() -> TestApp {
    app().await
}

#[tokio::test]
async fn another_organizations_endpoint_answers_404_and_admins_manage_their_own() {
    let app = app().await;
    let a = app.register_org("admin@one-hooks.example", "One").await;
    let b = app.register_org("admin@two-hooks.example", "Two").await;
    let r = register(&app, &a, "http://127.0.0.1:9/hook", json!(["*"])).await;
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let path = format!("/api/v1/webhooks/endpoints/{id}");
    assert_eq!(
        app.get_as(&path, &b.access_token).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get_as(&format!("{path}/deliveries"), &b.access_token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete_as(&path, &b.access_token).await.status(),
        StatusCode::NOT_FOUND
    );
    let list: Value = app
        .get_as("/api/v1/webhooks/endpoints", &b.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["pagination"]["total"], 0);

    let r = app
        .patch_as(
            &path,
            &a.access_token,
            &json!({ "active": false, "version": 1 }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json")["active"], false);
    let r = app
        .patch_as(
            &path,
            &a.access_token,
            &json!({ "description": "stale", "version": 1 }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = app
        .post_as(&format!("{path}/test"), &a.access_token, &json!({}))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "a disabled endpoint gets no test"
    );
    assert_eq!(
        app.delete_as(&path, &a.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get_as(&path, &a.access_token).await.status(),
        StatusCode::NOT_FOUND
    );
}

/// Runs SQL outside the store, as someone with database access (or a row from before a
/// configuration change) would.
async fn raw(db: &keel_kernel::store::Db, sql: &str) {
    match db {
        keel_kernel::store::Db::Sqlite(sqlite) => sqlite
            .with_connection(|c| c.execute_batch(sql))
            .await
            .map_err(|e| e.to_string()),
        keel_kernel::store::Db::Postgres(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(pool.pool())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
    .expect("raw sql");
}

#[tokio::test]
async fn the_ssrf_guard_checks_again_at_delivery_time() {
    // No private network allowed: the endpoint is registered with a public address, then
    // (as DNS rebinding or an edited row would) points at this machine.
    let app = TestApp::spawn().await;
    let admin = app.register_org("admin@rebind.example", "Rebind").await;
    let (fake, received) = receiver(0).await;
    let r = register(&app, &admin, "https://93.184.216.34/hook", json!(["*"])).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let endpoint = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();

    for (n, url) in [
        // A name that resolves to loopback only: the sender's resolver refuses it.
        format!("http://localhost:{}/hook", fake.addr.port()),
        // An IP literal, which no resolver sees.
        fake.url("/hook"),
    ]
    .into_iter()
    .enumerate()
    {
        raw(
            &app.state.db,
            &format!("UPDATE webhook_endpoints SET url = '{url}'"),
        )
        .await;
        let r = app
            .post_as(
                &format!("/api/v1/webhooks/endpoints/{endpoint}/test"),
                &admin.access_token,
                &json!({}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let data = deliveries_until(&app, &admin, &endpoint, |d| {
            d.len() > n && d.iter().all(|x| x["attempts"].as_i64().unwrap_or(0) >= 1)
        })
        .await;
        let newest = &data[0];
        let error = newest["attempt_log"][0]["error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            error.contains("public address") || error.contains("SSRF"),
            "{url}: {newest}"
        );
        assert!(newest["attempt_log"][0]["status_code"].is_null());
    }
    assert!(
        received.lock().expect("lock").is_empty(),
        "nothing reached the local receiver"
    );
}
