//! The GST monthly summary through HTTP: half-open months by shipping bill date, conversion
//! at the rate in force on each date (rate times given with offsets count in UTC), only
//! shipments that went ahead (drafts and cancelled ones left out), the splits by export type
//! and e-BRC, and shipments without a rate listed instead of failing.

mod common;

use common::{act, create_rate, create_shipment, id_of, spawn};
use keel_testkit::problem;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn summary(app: &keel_testkit::TestApp, token: &str, year: i32, month: u32) -> Value {
    let r = app
        .get_as(
            &format!("/api/v1/trade/gst/summary?year={year}&month={month}"),
            token,
        )
        .await;
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn currency<'a>(bucket: &'a Value, code: &str) -> &'a Value {
    bucket["by_currency"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["currency"] == code))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn months_are_half_open_and_rates_apply_from_their_utc_day() {
    let app = spawn().await;
    let admin = app.register_org("gst-month@acme.example", "Acme").await;
    // USD: 80 from February; 90 from 2025-03-31T22:00-05:00 = April 1st 03:00 UTC.
    create_rate(
        &app,
        &admin,
        json!({"currency": "USD", "rate": "80", "effective_at": "2025-02-01T00:00:00Z"}),
    )
    .await;
    create_rate(
        &app,
        &admin,
        json!({"currency": "USD", "rate": "90", "effective_at": "2025-03-31T22:00:00-05:00"}),
    )
    .await;
    // GBP: 100 from 2025-03-31T23:30+05:30 = March 31st 18:00 UTC.
    create_rate(
        &app,
        &admin,
        json!({"currency": "GBP", "rate": "100", "effective_at": "2025-03-31T23:30:00+05:30"}),
    )
    .await;
    // Each shipment is booked: only shipments that went ahead are exports.
    let ship = |reference: &'static str, overrides: Value| {
        let (app, admin) = (&app, &admin);
        async move {
            let s = create_shipment(app, admin, reference, overrides).await;
            assert_eq!(
                act(app, admin, &id_of(&s), "book").await.status(),
                StatusCode::OK
            );
            s
        }
    };
    // March 31st, USD 100.00 with payment: 80 → ₹8,000.00.
    ship(
        "A",
        json!({"currency": "USD", "invoice_value_minor": 10_000,
        "shipping_bill_date": "2025-03-31", "export_type": "with_payment"}),
    )
    .await;
    // April 1st, USD 200.00 under LUT: 90 → ₹18,000.00 (next month only).
    ship(
        "B",
        json!({"currency": "USD", "invoice_value_minor": 20_000,
        "shipping_bill_date": "2025-04-01", "export_type": "lut"}),
    )
    .await;
    // March 1st, EUR 50.00: no EUR rate → unconverted.
    let c = ship(
        "C",
        json!({"currency": "EUR", "invoice_value_minor": 5_000,
        "shipping_bill_date": "2025-03-01", "export_type": "lut"}),
    )
    .await;
    // March 15th, INR 1,000.00: no rate needed.
    ship(
        "D",
        json!({"currency": "INR", "invoice_value_minor": 100_000,
        "shipping_bill_date": "2025-03-15"}),
    )
    .await;
    // Cancelled in March: left out.
    let e = ship(
        "E",
        json!({"currency": "USD", "invoice_value_minor": 99_999,
        "shipping_bill_date": "2025-03-20"}),
    )
    .await;
    assert_eq!(
        act(&app, &admin, &id_of(&e), "cancel").await.status(),
        StatusCode::OK
    );
    // February 28th: the month before.
    ship(
        "F",
        json!({"currency": "USD", "invoice_value_minor": 77_777,
        "shipping_bill_date": "2025-02-28"}),
    )
    .await;
    // March 31st, GBP 10.00: the GBP rate set that evening (IST) is in force → ₹1,000.00.
    ship(
        "G",
        json!({"currency": "GBP", "invoice_value_minor": 1_000,
        "shipping_bill_date": "2025-03-31", "export_type": "with_payment"}),
    )
    .await;
    // March 30th, GBP 10.00: before the first GBP rate → unconverted.
    let h = ship(
        "H",
        json!({"currency": "GBP", "invoice_value_minor": 1_000,
        "shipping_bill_date": "2025-03-30"}),
    )
    .await;
    // A shipment with no shipping bill date is in no month.
    ship("I", json!({"currency": "USD"})).await;
    // A draft dated in March is not an export (yet).
    create_shipment(
        &app,
        &admin,
        "J",
        json!({"currency": "INR", "invoice_value_minor": 55_555,
        "shipping_bill_date": "2025-03-10"}),
    )
    .await;

    let march = summary(&app, &admin.access_token, 2025, 3).await;
    assert_eq!(march["from"], "2025-03-01");
    assert_eq!(march["to"], "2025-04-01");
    let total = &march["total"];
    assert_eq!(total["shipments"], 5, "A, C, D, G, H: {march}");
    assert_eq!(total["converted_shipments"], 3);
    assert_eq!(total["unconverted_shipments"], 2);
    assert_eq!(total["inr_minor"], 800_000 + 100_000 + 100_000, "{march}");
    assert_eq!(currency(total, "USD")["shipments"], 1);
    assert_eq!(currency(total, "USD")["value_minor"], 10_000);
    assert_eq!(currency(total, "USD")["inr_minor"], 800_000);
    assert_eq!(currency(total, "GBP")["shipments"], 2);
    assert_eq!(currency(total, "GBP")["value_minor"], 2_000);
    assert_eq!(currency(total, "GBP")["inr_minor"], 100_000);
    assert_eq!(currency(total, "GBP")["unconverted_shipments"], 1);
    assert_eq!(currency(total, "EUR")["inr_minor"], 0);
    let with_payment = &march["by_export_type"]["with_payment"];
    assert_eq!(with_payment["shipments"], 2, "A and G");
    assert_eq!(with_payment["inr_minor"], 900_000);
    let lut = &march["by_export_type"]["lut"];
    assert_eq!(lut["shipments"], 3, "C, D and H (lut is the default)");
    assert_eq!(lut["inr_minor"], 100_000);
    assert_eq!(march["by_ebrc"]["realized"]["shipments"], 0);
    assert_eq!(march["by_ebrc"]["pending"]["shipments"], 5);
    let unconverted: Vec<&str> = march["unconverted"]
        .as_array()
        .expect("unconverted")
        .iter()
        .map(|u| u["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(unconverted, [id_of(&c), id_of(&h)], "by shipping bill date");

    let april = summary(&app, &admin.access_token, 2025, 4).await;
    assert_eq!(april["total"]["shipments"], 1);
    assert_eq!(
        april["total"]["inr_minor"], 1_800_000,
        "the April rate: {april}"
    );
    assert_eq!(april["by_export_type"]["lut"]["inr_minor"], 1_800_000);

    let february = summary(&app, &admin.access_token, 2025, 2).await;
    assert_eq!(february["total"]["shipments"], 1);
    assert_eq!(february["total"]["inr_minor"], 6_222_160);

    // The e-BRC filing keeps a shipment pending (realised only by payments).
    let r = app
        .post_as(
            &format!("/api/v1/trade/shipments/{}/ebrc", id_of(&c)),
            &admin.access_token,
            &json!({"status": "filed"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let march = summary(&app, &admin.access_token, 2025, 3).await;
    assert_eq!(march["by_ebrc"]["pending"]["shipments"], 5);

    // Another organization sees none of it.
    let other = app.register_org("gst-month@other.example", "Other").await;
    let theirs = summary(&app, &other.access_token, 2025, 3).await;
    assert_eq!(theirs["total"]["shipments"], 0);
}

#[tokio::test]
async fn december_ends_at_new_year() {
    let app = spawn().await;
    let admin = app.register_org("gst-dec@acme.example", "Acme").await;
    create_rate(
        &app,
        &admin,
        json!({"currency": "EUR", "rate": "90.5", "effective_at": "2025-12-01"}),
    )
    .await;
    for (reference, date) in [("DEC-31", "2025-12-31"), ("JAN-01", "2026-01-01")] {
        let s = create_shipment(
            &app,
            &admin,
            reference,
            json!({"invoice_value_minor": 1_001, "shipping_bill_date": date}),
        )
        .await;
        assert_eq!(
            act(&app, &admin, &id_of(&s), "book").await.status(),
            StatusCode::OK
        );
    }
    let december = summary(&app, &admin.access_token, 2025, 12).await;
    assert_eq!(december["to"], "2026-01-01");
    assert_eq!(december["total"]["shipments"], 1);
    // EUR 10.01 at 90.5 = ₹905.905 → ₹905.91 (half up).
    assert_eq!(december["total"]["inr_minor"], 90_591);
    let january = summary(&app, &admin.access_token, 2026, 1).await;
    assert_eq!(january["total"]["shipments"], 1);
    assert_eq!(january["total"]["converted_shipments"], 1);
}

#[tokio::test]
async fn year_and_month_are_required_and_checked() {
    let app = spawn().await;
    let admin = app.register_org("gst-bad@acme.example", "Acme").await;
    for (query, fields) in [
        ("", vec!["month", "year"]),
        ("?year=1999&month=13", vec!["month", "year"]),
        ("?year=2025&month=x", vec!["month"]),
        ("?year=abc&month=3", vec!["year"]),
    ] {
        let r = app
            .get_as(
                &format!("/api/v1/trade/gst/summary{query}"),
                &admin.access_token,
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let p = problem(r).await;
        let mut named: Vec<&str> = p["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        named.sort_unstable();
        assert_eq!(named, fields, "{query}: {p}");
    }
}
