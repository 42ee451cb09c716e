//! The job API over HTTP, and the kernel housekeeping the scheduler runs.

use keel_kernel::housekeeping::{self, Housekeeping};
use keel_kernel::jobs::{EnqueueOptions, ScheduledTick};
use keel_kernel::tenancy::TenantScope;
use keel_testkit::{PASSWORD, Session, TestApp};
use reqwest::StatusCode;
use sea_query::{Expr, ExprTrait, Query};
use serde_json::{Value, json};
use uuid::Uuid;

async fn queued_job(app: &TestApp, org: Uuid) -> Uuid {
    let scope = TenantScope::for_tests(org);
    let mut tx = app.state.db.begin().await.expect("tx");
    let id = app
        .state
        .jobs
        .enqueue_with(
            &mut tx,
            Some(&scope),
            &Housekeeping(ScheduledTick {
                schedule: "test".into(),
                tick_at: keel_kernel::store::now(),
                missed_ticks: 0,
            }),
            EnqueueOptions::default().delay(std::time::Duration::from_secs(3600)),
        )
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    id
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("json")
}

#[tokio::test]
async fn a_job_is_readable_in_its_organization_and_managed_by_admins() {
    let app = TestApp::spawn().await;
    let admin: Session = app.register_org("jobs@acme.example", "Acme").await;
    app.invite_and_register(&admin, "staff@acme.example", "member", None)
        .await;
    let member = app.sign_in("staff@acme.example", PASSWORD).await;
    let id = queued_job(&app, admin.org_id).await;

    let job = json_of(
        app.get_as(&format!("/api/v1/jobs/{id}"), &member.access_token)
            .await,
    )
    .await;
    assert_eq!(job["status"], "queued");
    assert_eq!(job["attempts"], 0);

    assert_eq!(
        app.get_as("/api/v1/jobs", &member.access_token)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let list = json_of(
        app.get_as("/api/v1/jobs?status=queued", &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(list["pagination"]["total"], 1, "{list}");
    let bad = app
        .get_as("/api/v1/jobs?status=sleeping", &admin.access_token)
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let retry = app
        .post_as(
            &format!("/api/v1/jobs/{id}/retry"),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(
        retry.status(),
        StatusCode::CONFLICT,
        "a queued job is not retried"
    );
    let cancelled = app
        .post_as(
            &format!("/api/v1/jobs/{id}/cancel"),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(json_of(cancelled).await["status"], "cancelled");

    let other = app.register_org("else@other.example", "Other").await;
    assert_eq!(
        app.get_as(&format!("/api/v1/jobs/{id}"), &other.access_token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn scheduled_runs_are_platform_data_for_the_super_admin() {
    let app = TestApp::spawn().await;
    let root = app.setup_super_admin().await;
    let admin = app.register_org("runs@acme.example", "Acme").await;
    assert_eq!(
        app.get_as("/api/v1/jobs/schedule-runs", &admin.access_token)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    // One node leads the scheduler; the housekeeping schedule's runs are listed (it ticks
    // every 10 minutes, so a fresh server may have none yet).
    let mut runs = Value::Null;
    for _ in 0..100 {
        runs = json_of(
            app.get_as(
                "/api/v1/jobs/schedule-runs?schedule=kernel.housekeeping",
                &root.access_token,
            )
            .await,
        )
        .await;
        if runs["leader"]["holder"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(runs["leader"]["holder"].is_string(), "{runs}");
    assert!(runs["data"].is_array(), "{runs}");
    let bad = app
        .get_as("/api/v1/jobs/schedule-runs?limit=0", &root.access_token)
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn housekeeping_removes_expired_idempotency_keys_and_sessions() {
    let app = TestApp::spawn().await;
    let s = app.register_org("hk@acme.example", "Acme").await;
    let post = |name: &'static str| {
        app.client
            .post(app.url("/api/v1/partners"))
            .bearer_auth(&s.access_token)
            .header("idempotency-key", "nightly")
            .json(&json!({"name": name, "kind": "buyer"}))
            .send()
    };
    assert_eq!(
        post("First").await.expect("send").status(),
        StatusCode::CREATED
    );
    let past = keel_kernel::store::now() - chrono::TimeDelta::days(2);
    app.state
        .db
        .execute(
            &Query::update()
                .table("idempotency_keys")
                .value("expires_at", past)
                .to_owned(),
        )
        .await
        .expect("expire key");
    app.state
        .db
        .execute(
            &Query::update()
                .table("sessions")
                .value("expires_at", past)
                .and_where(Expr::col("id").eq(s.session_id))
                .to_owned(),
        )
        .await
        .expect("expire session");
    let swept = housekeeping::sweep(&app.state).await.expect("sweep");
    assert_eq!(swept.idempotency_keys, 1);
    assert_eq!(swept.sessions, 1);
    // The key is free again: a new request with it runs.
    let again = post("First").await.expect("send");
    assert_eq!(again.status(), StatusCode::CREATED);
    assert!(again.headers().get("idempotent-replayed").is_none());
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": s.refresh_token}),
        )
        .await;
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
}
