//! Payments through HTTP: validation naming every bad field, drafts and cancelled shipments
//! refusing payments, bank details encrypted at rest
//! and masked in lists, `Idempotency-Key` replays, e-BRC realisation exactly at the invoice
//! value, and two concurrent payments realising a shipment once with the tallies right.

mod common;

use common::{act, audit_events, create_shipment, id_of, payment_body, spawn};
use keel_testkit::problem;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn pay(
    app: &keel_testkit::TestApp,
    who: &keel_testkit::Session,
    shipment: &str,
    body: &Value,
) -> reqwest::Response {
    app.post_as(
        &format!("/api/v1/trade/shipments/{shipment}/payments"),
        &who.access_token,
        body,
    )
    .await
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("json")
}

/// A booked shipment's id: payments are for shipments that went ahead.
async fn booked(
    app: &keel_testkit::TestApp,
    who: &keel_testkit::Session,
    reference: &str,
) -> String {
    let s = id_of(&create_shipment(app, who, reference, json!({})).await);
    assert_eq!(act(app, who, &s, "book").await.status(), StatusCode::OK);
    s
}

fn fields_of(p: &Value) -> Vec<String> {
    let mut f: Vec<String> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str().map(str::to_string))
        .collect();
    f.sort();
    f
}

#[tokio::test]
async fn every_bad_field_is_named_and_closed_or_foreign_shipments_refuse() {
    let app = spawn().await;
    let admin = app.register_org("pay-bad@acme.example", "Acme").await;
    let s = booked(&app, &admin, "PAY-BAD-1").await;
    let future = (chrono::Utc::now() + chrono::Duration::days(3))
        .date_naive()
        .to_string();
    let r = pay(
        &app,
        &admin,
        &s,
        &payment_body(
            0,
            json!({
                "currency": "USD",
                "received_on": future,
                "remitter": " ",
                "bank_reference": "",
                "account_number": "12",
            }),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = problem(r).await;
    assert_eq!(
        fields_of(&p),
        [
            "account_number",
            "amount_minor",
            "bank_reference",
            "currency",
            "received_on",
            "remitter"
        ]
    );
    assert!(
        p.to_string().contains("EUR"),
        "names the invoice currency: {p}"
    );
    // A currency that is not one at all, and a date that is not one.
    let r = pay(
        &app,
        &admin,
        &s,
        &payment_body(
            100,
            json!({"currency": "EURO", "received_on": "2025-02-30"}),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields_of(&problem(r).await), ["currency", "received_on"]);

    // Nothing was stored.
    let list = json_of(
        app.get_as("/api/v1/trade/payments", &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(list["pagination"]["total"], 0);
    let shipment = json_of(
        app.get_as(&format!("/api/v1/trade/shipments/{s}"), &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(shipment["realized_minor"], 0);

    // A draft takes no payments (it is no export yet), nor does a cancelled shipment.
    let draft = id_of(&create_shipment(&app, &admin, "PAY-DRAFT-1", json!({})).await);
    let r = pay(&app, &admin, &draft, &payment_body(100, json!({}))).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(problem(r).await.to_string().contains("draft"));
    assert_eq!(
        act(&app, &admin, &s, "cancel").await.status(),
        StatusCode::OK
    );
    let r = pay(&app, &admin, &s, &payment_body(100, json!({}))).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let list = json_of(
        app.get_as("/api/v1/trade/payments", &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(list["pagination"]["total"], 0, "neither was recorded");

    // Another organization's shipment does not exist for this one.
    let other = app.register_org("pay-other@globex.example", "Globex").await;
    let theirs = id_of(&create_shipment(&app, &other, "GLX-1", json!({})).await);
    let r = pay(&app, &admin, &theirs, &payment_body(100, json!({}))).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .get_as(
            &format!("/api/v1/trade/shipments/{theirs}/payments"),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bank_details_are_encrypted_at_rest_and_masked_in_lists() {
    let app = spawn().await;
    let admin = app.register_org("pay-enc@acme.example", "Acme").await;
    let s = booked(&app, &admin, "PAY-ENC-1").await;
    let r = pay(&app, &admin, &s, &payment_body(400_000, json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created = json_of(r).await;
    assert_eq!(created["account_number"], "50100234567890");
    assert_eq!(created["bank_reference"], "HDFCR52025032012345");
    // A single resource like any other: id, created_at, updated_at, version.
    assert_eq!(created["version"], 1);
    assert_eq!(created["updated_at"], created["created_at"]);
    let id = id_of(&created);

    // The columns hold ciphertext only.
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Raw {
        bank_reference: String,
        account_number: String,
    }
    let raw: Raw = app
        .state
        .db
        .fetch_one(
            &sea_query::Query::select()
                .columns(["bank_reference", "account_number"])
                .from("trade_payments")
                .to_owned(),
        )
        .await
        .expect("row");
    for v in [&raw.bank_reference, &raw.account_number] {
        assert!(v.starts_with("v1."), "sealed: {v}");
        assert!(!v.contains("50100234567890") && !v.contains("HDFCR52025032012345"));
    }

    // `keel keys status` (and rotation) cover the columns.
    let tables = app.state.registry.encrypted_tables();
    let status = keel_kernel::crypto::keys::status(&app.state.db, &app.state.crypto, &tables)
        .await
        .expect("key status");
    for column in ["bank_reference", "account_number"] {
        let c = status
            .columns
            .iter()
            .find(|c| c.table == "trade_payments" && c.column == column)
            .expect("a registered column");
        let total: i64 = c.by_key.iter().map(|(_, n)| *n).sum();
        assert_eq!(total, 1, "{column}");
        assert!(
            c.by_key.iter().all(|(kid, _)| kid != "plaintext"),
            "{column}"
        );
    }

    // Lists mask them; the payment itself shows them.
    for path in [
        "/api/v1/trade/payments".to_string(),
        format!("/api/v1/trade/shipments/{s}/payments"),
    ] {
        let list = json_of(app.get_as(&path, &admin.access_token).await).await;
        assert_eq!(list["pagination"]["total"], 1, "{path}");
        let item = &list["data"][0];
        assert_eq!(item["account_number"], "**********7890", "{list}");
        assert_eq!(item["bank_reference"], "***************2345");
        assert!(!list.to_string().contains("50100234567890"));
    }
    let one = json_of(
        app.get_as(&format!("/api/v1/trade/payments/{id}"), &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(one["account_number"], "50100234567890");

    // The audit trail records that they were set, not their values.
    let events = audit_events(&app, &admin, "trade.payment.received").await;
    assert_eq!(events.len(), 1);
    let text = events[0].to_string();
    assert!(!text.contains("50100234567890"), "{text}");
    assert!(!text.contains("HDFCR52025032012345"), "{text}");

    // Another organization cannot read it.
    let other = app.register_org("pay-enc-o@globex.example", "Globex").await;
    let r = app
        .get_as(&format!("/api/v1/trade/payments/{id}"), &other.access_token)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let list = json_of(
        app.get_as("/api/v1/trade/payments", &other.access_token)
            .await,
    )
    .await;
    assert_eq!(list["pagination"]["total"], 0);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_payment_and_refuses_another_body() {
    let app = spawn().await;
    let admin = app.register_org("pay-idem@acme.example", "Acme").await;
    let s = booked(&app, &admin, "PAY-IDEM-1").await;
    let send = |body: Value| {
        let url = app.url(&format!("/api/v1/trade/shipments/{s}/payments"));
        let token = admin.access_token.clone();
        let client = app.client.clone();
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", "pay-2025-03-20-001")
                .json(&body)
                .send()
                .await
                .expect("send")
        }
    };
    let first = send(payment_body(100_000, json!({}))).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json_of(first).await;
    let again = send(payment_body(100_000, json!({}))).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(again).await["id"], first["id"]);
    let other = send(payment_body(200_000, json!({}))).await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let list = json_of(
        app.get_as("/api/v1/trade/payments", &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(list["pagination"]["total"], 1);
    let shipment = json_of(
        app.get_as(&format!("/api/v1/trade/shipments/{s}"), &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(shipment["realized_minor"], 100_000);
}

#[tokio::test]
async fn the_ebrc_is_realized_exactly_at_the_invoice_value() {
    let app = spawn().await;
    let admin = app.register_org("pay-real@acme.example", "Acme").await;
    // Invoice 12,500.00 EUR.
    let s = booked(&app, &admin, "PAY-REAL-1").await;
    let r = pay(&app, &admin, &s, &payment_body(1_000_000, json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // One minor unit short of the invoice value.
    let r = pay(&app, &admin, &s, &payment_body(249_999, json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let shipment = json_of(
        app.get_as(&format!("/api/v1/trade/shipments/{s}"), &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(shipment["realized_minor"], 1_249_999);
    assert_eq!(shipment["ebrc_status"], "pending");
    assert!(
        audit_events(&app, &admin, "trade.shipment.ebrc_realized")
            .await
            .is_empty()
    );

    // The last unit realises it.
    let r = pay(&app, &admin, &s, &payment_body(1, json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let shipment = json_of(
        app.get_as(&format!("/api/v1/trade/shipments/{s}"), &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(shipment["realized_minor"], 1_250_000);
    assert_eq!(shipment["ebrc_status"], "realized");
    let events = audit_events(&app, &admin, "trade.shipment.ebrc_realized").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["resource_id"], s.as_str());

    // A later payment adds to the realised amount without realising it again.
    let r = pay(&app, &admin, &s, &payment_body(500, json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let shipment = json_of(
        app.get_as(&format!("/api/v1/trade/shipments/{s}"), &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(shipment["realized_minor"], 1_250_500);
    assert_eq!(
        audit_events(&app, &admin, "trade.shipment.ebrc_realized")
            .await
            .len(),
        1
    );
    let realized = json_of(
        app.get_as(
            "/api/v1/trade/shipments?ebrc_status=realized",
            &admin.access_token,
        )
        .await,
    )
    .await;
    assert_eq!(realized["pagination"]["total"], 1);
}

#[tokio::test]
async fn two_concurrent_payments_realize_the_shipment_once() {
    let app = spawn().await;
    let admin = app.register_org("pay-race@acme.example", "Acme").await;
    for round in 0..3 {
        let s = booked(&app, &admin, &format!("PAY-RACE-{round}")).await;
        let (first, second) = (
            payment_body(600_000, json!({})),
            payment_body(650_000, json!({})),
        );
        let (a, b) = tokio::join!(
            pay(&app, &admin, &s, &first),
            pay(&app, &admin, &s, &second),
        );
        assert_eq!(
            a.status(),
            StatusCode::CREATED,
            "{}",
            a.text().await.unwrap_or_default()
        );
        assert_eq!(
            b.status(),
            StatusCode::CREATED,
            "{}",
            b.text().await.unwrap_or_default()
        );
        let shipment = json_of(
            app.get_as(&format!("/api/v1/trade/shipments/{s}"), &admin.access_token)
                .await,
        )
        .await;
        assert_eq!(shipment["realized_minor"], 1_250_000);
        assert_eq!(shipment["ebrc_status"], "realized");
    }
    assert_eq!(
        audit_events(&app, &admin, "trade.shipment.ebrc_realized")
            .await
            .len(),
        3
    );
    let realized = json_of(
        app.get_as(
            "/api/v1/trade/shipments?ebrc_status=realized",
            &admin.access_token,
        )
        .await,
    )
    .await;
    assert_eq!(realized["pagination"]["total"], 3);
    let pending = json_of(
        app.get_as(
            "/api/v1/trade/shipments?ebrc_status=pending",
            &admin.access_token,
        )
        .await,
    )
    .await;
    assert_eq!(pending["pagination"]["total"], 0);
    let all = json_of(
        app.get_as("/api/v1/trade/shipments", &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(all["pagination"]["total"], 3);
}

/// Every list the API offers (trade and kernel alike: payments, shipments, audit events,
/// notifications, jobs, …) is read after payments were recorded: none shows a bank reference
/// or an account number in clear. Only the payment itself does.
#[tokio::test]
async fn bank_details_never_appear_in_clear_in_any_list() {
    let app = spawn().await;
    let admin = app.register_org("pay-lists@acme.example", "Acme").await;
    let s = booked(&app, &admin, "PAY-LISTS-1").await;
    let (reference, account) = ("ICICR7702503XYZ88421", "DE44500105175407324931");
    for amount in [400_000, 850_000] {
        let r = pay(
            &app,
            &admin,
            &s,
            &payment_body(
                amount,
                json!({"bank_reference": reference, "account_number": account}),
            ),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let doc: Value = app
        .get("/api/openapi.json")
        .await
        .json()
        .await
        .expect("json");
    let mut lists = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        // Realtime reads are streams and long polls, not lists.
        if item.get("get").is_none() || path.contains("/realtime/") {
            continue;
        }
        let concrete = if path.starts_with("/api/v1/trade/shipments/{id}/") {
            path.replace("{id}", &s)
        } else if path.contains('{') {
            continue;
        } else {
            path.clone()
        };
        let r = app.get_as(&concrete, &admin.access_token).await;
        if r.status() != StatusCode::OK {
            continue;
        }
        let Ok(body) = r.json::<Value>().await else {
            continue; // a file (the export), not a list
        };
        if body.get("pagination").is_none() {
            continue;
        }
        let text = body.to_string();
        assert!(!text.contains(reference), "{concrete}: {text}");
        assert!(!text.contains(account), "{concrete}: {text}");
        lists.push(concrete);
    }
    for expected in [
        "/api/v1/trade/payments".to_string(),
        format!("/api/v1/trade/shipments/{s}/payments"),
        "/api/v1/trade/shipments".to_string(),
        "/api/v1/audit/events".to_string(),
    ] {
        assert!(lists.contains(&expected), "{expected} read among {lists:?}");
    }
    // The payment lists did show the payments, masked.
    let list = json_of(
        app.get_as("/api/v1/trade/payments", &admin.access_token)
            .await,
    )
    .await;
    assert_eq!(list["pagination"]["total"], 2);
    assert_eq!(list["data"][0]["account_number"], "******************4931");
}
