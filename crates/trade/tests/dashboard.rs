//! The dashboard through HTTP: counts from the tallies, this month's value in INR, overdue
//! e-BRCs and recent activity, cached but refreshed at once by every write — shipments,
//! rates, documents, connectors, Account Aggregator events, exports and the overdue job.

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
            let s =
                create_shipment(app, admin, reference, json!({"shipping_bill_date": date})).await;
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

/// Every trade write records a trade audit event, which the dashboard's recent activity
/// shows: documents, connectors, Account Aggregator events, exports and the overdue job
/// refresh the cached dashboard as shipment writes do.
#[tokio::test]
async fn writes_beyond_shipments_refresh_the_dashboard_at_once() {
    let app =
        common::spawn_with_settings(json!({ "aa_webhook_secrets": [common::AA_SECRET] })).await;
    let admin = app.register_org("dash-more@acme.example", "Acme").await;
    let latest = |d: &Value| {
        d["recent_activity"][0]["action"]
            .as_str()
            .map(str::to_string)
    };
    let s = create_shipment(&app, &admin, "MORE-1", json!({})).await;
    let cached = dashboard(&app, &admin.access_token).await;
    assert_eq!(latest(&cached).as_deref(), Some("trade.shipment.created"));
    assert_eq!(
        dashboard(&app, &admin.access_token).await["generated_at"],
        cached["generated_at"],
        "cached"
    );

    // A document upload and its deletion.
    const BOUNDARY: &str = "----keel-dash-boundary";
    let png: &[u8] = &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x3a,
        0x7e, 0x9b, 0x55, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x60,
        0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x48, 0xaf, 0xa4, 0x71, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];
    let mut form = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"document_type\"\r\n\r\npacking_list\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"list.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(png);
    form.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let r = app
        .client
        .post(app.url(&format!("/api/v1/trade/shipments/{}/documents", id_of(&s))))
        .bearer_auth(&admin.access_token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), StatusCode::CREATED);
    let doc: Value = r.json().await.expect("json");
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(
        latest(&d).as_deref(),
        Some("trade.document.uploaded"),
        "{d}"
    );
    let r = app
        .delete_as(
            &format!("/api/v1/trade/documents/{}", id_of(&doc)),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(latest(&d).as_deref(), Some("trade.document.deleted"), "{d}");

    // A connector, then an Account Aggregator event about its consent.
    let consent = "5d7c51e4-29c8-11e8-8868-0289437bf331";
    let r = app
        .post_as(
            "/api/v1/trade/connectors",
            &admin.access_token,
            &json!({"kind": "bank_aa", "iec_code": "ABCDE1234F", "consent_id": consent}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(
        latest(&d).as_deref(),
        Some("trade.connector.created"),
        "{d}"
    );
    let r = common::post_aa_event(
        &app,
        common::AA_SECRET,
        "dash-evt-1",
        Utc::now().timestamp(),
        &json!({"type": "consent_approved", "consent_id": consent}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(
        latest(&d).as_deref(),
        Some("trade.connector.consent_approved"),
        "{d}"
    );

    // An export.
    let r = app
        .get_as("/api/v1/trade/shipments/export", &admin.access_token)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.expect("the file");
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(
        latest(&d).as_deref(),
        Some("trade.shipments.exported"),
        "{d}"
    );

    // The overdue job, a system writer: the shipment's e-BRC becomes overdue.
    let old = create_shipment(
        &app,
        &admin,
        "MORE-OLD",
        json!({"shipping_bill_date": (Utc::now().date_naive() - chrono::Duration::days(400)).to_string()}),
    )
    .await;
    assert_eq!(
        act(&app, &admin, &id_of(&old), "book").await.status(),
        StatusCode::OK
    );
    let before = dashboard(&app, &admin.access_token).await;
    assert_eq!(before["shipments"]["by_ebrc_status"]["overdue"], 0);
    let ctx = keel_kernel::jobs::JobContext {
        state: app.state.clone(),
        scope: None,
        job_id: uuid::Uuid::now_v7(),
        job_type: <keel_trade::overdue::MarkOverdue as keel_kernel::jobs::JobPayload>::JOB_TYPE,
        queue: "default",
        attempt: 1,
        max_attempts: 1,
    };
    let report = keel_trade::overdue::mark_overdue(ctx, Default::default())
        .await
        .expect("the job runs");
    assert_eq!(report.marked, 1);
    let d = dashboard(&app, &admin.access_token).await;
    assert_eq!(d["shipments"]["by_ebrc_status"]["overdue"], 1, "{d}");
    assert_eq!(latest(&d).as_deref(), Some("trade.shipment.ebrc_changed"));
}
