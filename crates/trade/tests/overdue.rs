//! The e-BRC overdue job: shipments whose e-BRC is still pending or filed more than
//! `overdue_days` after their shipping bill date become overdue (tallies and audit with
//! them), others are left alone, a second run changes nothing, and the schedule's job runs
//! through the queue across organizations.

mod common;

use std::time::Duration;

use chrono::{Days, Utc};
use common::{act, create_shipment, id_of, spawn, spawn_with_settings};
use keel_kernel::jobs::{JobContext, JobPayload};
use keel_kernel::module::Module;
use keel_testkit::{Session, TestApp};
use keel_trade::overdue::{MarkOverdue, OverdueReport, mark_overdue};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn days_ago(n: u64) -> String {
    Utc::now()
        .date_naive()
        .checked_sub_days(Days::new(n))
        .expect("a date")
        .to_string()
}

async fn run_job(app: &TestApp) -> OverdueReport {
    let ctx = JobContext {
        state: app.state.clone(),
        scope: None,
        job_id: uuid::Uuid::now_v7(),
        job_type: MarkOverdue::JOB_TYPE,
        queue: "default",
        attempt: 1,
        max_attempts: 1,
    };
    mark_overdue(ctx, MarkOverdue::default())
        .await
        .expect("the job runs")
}

async fn shipment(app: &TestApp, who: &Session, id: &str) -> Value {
    app.get_as(&format!("/api/v1/trade/shipments/{id}"), &who.access_token)
        .await
        .json()
        .await
        .expect("json")
}

async fn total(app: &TestApp, who: &Session, query: &str) -> Value {
    let list: Value = app
        .get_as(
            &format!("/api/v1/trade/shipments?{query}"),
            &who.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    list["pagination"]["total"].clone()
}

/// Creates a shipment with a shipping bill date `days` ago and books it.
async fn booked(app: &TestApp, who: &Session, reference: &str, days: Option<u64>) -> Value {
    let body = match days {
        Some(d) => json!({"shipping_bill_date": days_ago(d)}),
        None => json!({}),
    };
    let s = create_shipment(app, who, reference, body).await;
    assert_eq!(
        act(app, who, &id_of(&s), "book").await.status(),
        StatusCode::OK
    );
    s
}

#[tokio::test]
async fn old_unrealised_shipments_become_overdue_once() {
    let app = spawn().await;
    let admin = app.register_org("due@acme.example", "Acme").await;
    let old_pending = booked(&app, &admin, "OLD-P", Some(300)).await;
    assert_eq!(
        act(&app, &admin, &id_of(&old_pending), "dispatch")
            .await
            .status(),
        StatusCode::OK
    );
    let old_filed = booked(&app, &admin, "OLD-F", Some(271)).await;
    let r = app
        .post_as(
            &format!("/api/v1/trade/shipments/{}/ebrc", id_of(&old_filed)),
            &admin.access_token,
            &json!({"status": "filed"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Drafts and cancelled shipments have no e-BRC falling due.
    let old_draft = create_shipment(
        &app,
        &admin,
        "OLD-D",
        json!({"shipping_bill_date": days_ago(400)}),
    )
    .await;
    let old_cancelled = booked(&app, &admin, "OLD-C", Some(400)).await;
    assert_eq!(
        act(&app, &admin, &id_of(&old_cancelled), "cancel")
            .await
            .status(),
        StatusCode::OK
    );
    let on_the_day = booked(&app, &admin, "EDGE", Some(270)).await;
    let recent = booked(&app, &admin, "NEW", Some(30)).await;
    let undated = booked(&app, &admin, "NODATE", None).await;

    let report = run_job(&app).await;
    assert_eq!(report.marked, 2, "{report:?}");
    for s in [&old_pending, &old_filed] {
        let now = shipment(&app, &admin, &id_of(s)).await;
        assert_eq!(now["ebrc_status"], "overdue", "{now}");
    }
    assert_eq!(
        shipment(&app, &admin, &id_of(&old_pending)).await["status"],
        "in_transit"
    );
    for s in [&old_draft, &old_cancelled, &on_the_day, &recent, &undated] {
        assert_eq!(
            shipment(&app, &admin, &id_of(s)).await["ebrc_status"],
            "pending"
        );
    }
    // The tallies moved with the rows: totals by e-BRC status stay right.
    assert_eq!(total(&app, &admin, "ebrc_status=overdue").await, 2);
    assert_eq!(total(&app, &admin, "ebrc_status=pending").await, 5);
    assert_eq!(total(&app, &admin, "ebrc_status=filed").await, 0);
    assert_eq!(
        total(&app, &admin, "status=in_transit&ebrc_status=overdue").await,
        1
    );

    // Audited by the system actor, once per shipment.
    let trail: Value = app
        .get_as(
            &format!(
                "/api/v1/audit/events?resource_type=trade.shipment&resource_id={}&action=trade.shipment.ebrc_changed",
                id_of(&old_pending)
            ),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    let events = trail["data"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{trail}");
    assert_eq!(events[0]["actor"]["type"], "system");
    assert_eq!(events[0]["actor"]["id"], "trade.ebrc_overdue");
    assert!(events[0].to_string().contains("overdue"));

    // The dashboard counts as overdue exactly what the job marked: its old draft and its
    // cancelled shipment are in neither.
    let d: Value = app
        .get_as("/api/v1/trade/dashboard", &admin.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(d["overdue_ebrc"]["count"], 2, "{d}");
    let mut listed: Vec<&str> = d["overdue_ebrc"]["oldest"]
        .as_array()
        .expect("oldest")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    listed.sort_unstable();
    let (p, f) = (id_of(&old_pending), id_of(&old_filed));
    let mut marked = vec![p.as_str(), f.as_str()];
    marked.sort_unstable();
    assert_eq!(listed, marked);

    // A second run finds nothing more to do.
    let again = run_job(&app).await;
    assert_eq!(again.marked, 0);
    assert_eq!(total(&app, &admin, "ebrc_status=overdue").await, 2);
}

#[tokio::test]
async fn the_scheduled_job_runs_through_the_queue_with_the_configured_days() {
    assert!(
        keel_trade::TradeModule
            .schedules()
            .iter()
            .any(|s| s.job_type == MarkOverdue::JOB_TYPE),
        "the job is scheduled"
    );
    let app = spawn_with_settings(json!({ "overdue_days": 30 })).await;
    let a = app.register_org("q@acme.example", "Acme").await;
    let b = app.register_org("q@other.example", "Other").await;
    let sa = booked(&app, &a, "Q-A", Some(45)).await;
    let sb = booked(&app, &b, "Q-B", Some(31)).await;
    let keep = booked(&app, &b, "Q-KEEP", Some(29)).await;

    let mut tx = app.state.db.begin().await.expect("begin");
    app.state
        .jobs
        .enqueue(&mut tx, None, &MarkOverdue::default())
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (x, y) = (
            shipment(&app, &a, &id_of(&sa)).await,
            shipment(&app, &b, &id_of(&sb)).await,
        );
        if x["ebrc_status"] == "overdue" && y["ebrc_status"] == "overdue" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queued job marks both: {x} {y}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        shipment(&app, &b, &id_of(&keep)).await["ebrc_status"],
        "pending"
    );
}
