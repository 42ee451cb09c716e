//! The dashboard through HTTP: counts from the tallies, this month's value in INR, overdue
//! e-BRCs and recent activity, cached but refreshed at once by every write.

mod common;

use chrono::Utc;
use common::{act, create_rate, create_shipment, id_of, spawn};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn dashboard(app: &keel_testkit::TestApp, token: &str) -> Value {
    let r = app.get_as("/api/v1/trade/dashboard", token).await;
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn every_write_is_visible_at_once() {
    let app = spawn().await;
    let admin = app.register_org("dash-writes@acme.example", "Acme").await;
    let today = Utc::now().date_naive().to_string();

    let empty = dashboard(&app, &admin.access_token).await;
    assert_eq!(empty["shipments"]["total"], 0);
    assert_eq!(empty["shipments"]["by_status"]["draft"], 0);
    assert_eq!(empty["this_month"]["export_value_inr_minor"], 0);
    // Cached: the same figures again.
    let cached = dashboard(&app, &admin.access_token).await;
    assert_eq!(cached["generated_at"], empty["generated_at"]);

    // Create.
    let s = create_shipment(
        &app,
        &admin,
        "DASH-1",
        json!({"currency": "INR", "invoice_value_minor": 150_000, "shipping_bill_date": today}),
    )
    .await;
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(d["shipments"]["total"], 1, "{d}");
    assert_eq!(d["shipments"]["by_status"]["draft"], 1);
    assert_eq!(d["shipments"]["by_ebrc_status"]["pending"], 1);
    // A draft is not an export yet: the month's value leaves it out.
    assert_eq!(d["this_month"]["shipments"], 0);
    assert_eq!(d["this_month"]["export_value_inr_minor"], 0);
    assert_eq!(d["recent_activity"][0]["action"], "trade.shipment.created");
    assert_eq!(d["recent_activity"][0]["resource_id"], s["id"]);

    // Transition: booked, it is an export of the month.
    assert_eq!(
        act(&app, &admin, &id_of(&s), "book").await.status(),
        StatusCode::OK
    );
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(d["shipments"]["by_status"]["draft"], 0, "{d}");
    assert_eq!(d["shipments"]["by_status"]["booked"], 1);
    assert_eq!(d["this_month"]["shipments"], 1);
    assert_eq!(d["this_month"]["export_value_inr_minor"], 150_000);
    assert_eq!(
        d["recent_activity"][0]["action"],
        "trade.shipment.status_changed"
    );

    // e-BRC.
    let r = app
        .post_as(
            &format!("/api/v1/trade/shipments/{}/ebrc", id_of(&s)),
            &admin.access_token,
            &json!({"status": "filed"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(d["shipments"]["by_ebrc_status"]["filed"], 1, "{d}");
    assert_eq!(d["shipments"]["by_ebrc_status"]["pending"], 0);

    // Update: the value changes.
    let r = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/trade/shipments/{}", id_of(&s)),
            Some(&admin.access_token),
            Some(&common::shipment_body(
                "DASH-1",
                json!({"currency": "INR", "invoice_value_minor": 250_000, "shipping_bill_date": today}),
            )),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(d["this_month"]["export_value_inr_minor"], 250_000, "{d}");

    // A USD shipment is unconverted until a rate is recorded; the rate shows at once.
    let usd = create_shipment(
        &app,
        &admin,
        "DASH-2",
        json!({"currency": "USD", "invoice_value_minor": 10_000, "shipping_bill_date": today}),
    )
    .await;
    assert_eq!(
        act(&app, &admin, &id_of(&usd), "book").await.status(),
        StatusCode::OK
    );
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(d["this_month"]["unconverted_shipments"], 1, "{d}");
    create_rate(
        &app,
        &admin,
        json!({"currency": "USD", "rate": "83.5", "effective_at": format!("{today}T00:00:00Z")}),
    )
    .await;
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(d["this_month"]["unconverted_shipments"], 0, "{d}");
    assert_eq!(d["this_month"]["export_value_inr_minor"], 250_000 + 835_000);
    assert_eq!(
        d["recent_activity"][0]["action"],
        "trade.forex.rate_created"
    );

    // Delete (a draft).
    let draft = create_shipment(&app, &admin, "DASH-3", json!({})).await;
    assert_eq!(
        dashboard(&app, &admin.access_token).await["shipments"]["total"],
        3
    );
    let r = app
        .delete_as(
            &format!("/api/v1/trade/shipments/{}", id_of(&draft)),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(d["shipments"]["total"], 2, "{d}");
    assert_eq!(d["recent_activity"][0]["action"], "trade.shipment.deleted");

    // Another organization's dashboard is its own.
    let other = app.register_org("dash-writes@other.example", "Other").await;
    let theirs = dashboard(&app, &other.access_token).await;
    assert_eq!(theirs["shipments"]["total"], 0);
    assert_eq!(theirs["recent_activity"], json!([]));
}

#[tokio::test]
async fn e_brcs_unrealised_after_overdue_days_are_overdue() {
    let app = spawn().await;
    let admin = app.register_org("dash-overdue@acme.example", "Acme").await;
    let today = Utc::now().date_naive();
    let days_ago = |n: i64| (today - chrono::Duration::days(n)).to_string();
    let booked = |reference: &'static str, days: i64| {
        let (app, admin) = (&app, &admin);
        let date = days_ago(days);
        async move {
            let s = create_shipment(app, admin, reference, json!({"shipping_bill_date": date}))
                .await;
            assert_eq!(
                act(app, admin, &id_of(&s), "book").await.status(),
                StatusCode::OK
            );
            s
        }
    };
    let old = booked("OLD-1", 300).await;
    let older = booked("OLD-2", 400).await;
    // Exactly 270 days: not overdue yet.
    booked("EDGE", 270).await;
    booked("RECENT", 10).await;
    create_shipment(&app, &admin, "UNDATED", json!({})).await;
    // A draft never went ahead: no e-BRC falls due for it (the overdue job agrees).
    create_shipment(
        &app,
        &admin,
        "OLD-DRAFT",
        json!({"shipping_bill_date": days_ago(450)}),
    )
    .await;
    // Cancelled: no e-BRC is expected.
    let cancelled = create_shipment(
        &app,
        &admin,
        "OLD-CANCELLED",
        json!({"shipping_bill_date": days_ago(500)}),
    )
    .await;
    assert_eq!(
        act(&app, &admin, &id_of(&cancelled), "cancel")
            .await
            .status(),
        StatusCode::OK
    );
    let d = dashboard(&app, &admin.access_token).await;
    let overdue = &d["overdue_ebrc"];
    assert_eq!(overdue["overdue_days"], 270);
    assert_eq!(overdue["cutoff"], days_ago(270));
    assert_eq!(overdue["count"], 2, "{d}");
    let ids: Vec<&str> = overdue["oldest"]
        .as_array()
        .expect("oldest")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, [id_of(&older), id_of(&old)], "oldest first");
    assert_eq!(d["shipments"]["total"], 7);
    assert_eq!(d["shipments"]["by_status"]["cancelled"], 1);
    assert_eq!(d["shipments"]["by_status"]["draft"], 2);

}

#[tokio::test]
async fn members_read_the_dashboard_and_partners_do_not() {
    let app = spawn().await;
    let admin = app.register_org("dash-perm@acme.example", "Acme").await;
    app.invite_and_register(&admin, "dash-perm-member@acme.example", "member", None)
        .await;
    let member = app
        .sign_in("dash-perm-member@acme.example", keel_testkit::PASSWORD)
        .await;
    dashboard(&app, &member.access_token).await;
    let partner = app.create_partner(&admin, "Buyer GmbH").await;
    app.invite_and_register(
        &admin,
        "dash-perm-partner@buyer.example",
        "partner",
        Some(partner),
    )
    .await;
    let partner_user = app
        .sign_in("dash-perm-partner@buyer.example", keel_testkit::PASSWORD)
        .await;
    for path in [
        "/api/v1/trade/dashboard",
        "/api/v1/trade/gst/summary?year=2025&month=3",
    ] {
        let r = app.get_as(path, &partner_user.access_token).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
}
