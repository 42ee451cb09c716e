//! Shared by the trade tests: a server with the trade module, and typed helpers.
#![allow(dead_code)]

use std::sync::Arc;

use keel_testkit::{Session, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A server with the trade module (not the kernel's test module) on a fresh database.
pub async fn spawn() -> TestApp {
    builder().spawn().await.expect("server starts")
}

pub fn builder() -> keel_testkit::TestAppBuilder {
    TestApp::builder()
        .without_probe_module()
        .module(Arc::new(keel_trade::TradeModule))
}

/// A valid shipment body; `overrides` replaces or adds fields.
pub fn shipment_body(reference: &str, overrides: Value) -> Value {
    let mut body = json!({
        "reference": reference,
        "buyer_name": "Hamburg Imports GmbH",
        "buyer_country": "DE",
        "destination_country": "DE",
        "port_of_loading": "INNSA",
        "port_of_discharge": "DEHAM",
        "incoterm": "FOB",
        "hs_codes": ["850440"],
        "invoice_value_minor": 1_250_000,
        "currency": "EUR",
    });
    if let (Some(b), Some(o)) = (body.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// Creates a shipment and returns it.
pub async fn create_shipment(
    app: &TestApp,
    who: &Session,
    reference: &str,
    overrides: Value,
) -> Value {
    let r = app
        .post_as(
            "/api/v1/trade/shipments",
            &who.access_token,
            &shipment_body(reference, overrides),
        )
        .await;
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Runs an action (`book`, `dispatch`, `deliver`, `cancel`) on a shipment.
pub async fn act(app: &TestApp, who: &Session, id: &str, action: &str) -> reqwest::Response {
    app.call(
        reqwest::Method::POST,
        &format!("/api/v1/trade/shipments/{id}/{action}"),
        Some(&who.access_token),
        None,
    )
    .await
}

pub fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

/// Records a forex rate (as an admin) and returns it.
pub async fn create_rate(app: &TestApp, admin: &Session, body: Value) -> Value {
    let r = app
        .post_as("/api/v1/trade/forex/rates", &admin.access_token, &body)
        .await;
    let status = r.status();
    let created: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::CREATED, "{body}: {created}");
    created
}

/// A valid payment body; `overrides` replaces or adds fields.
pub fn payment_body(amount_minor: i64, overrides: Value) -> Value {
    let mut body = json!({
        "amount_minor": amount_minor,
        "currency": "EUR",
        "received_on": "2025-03-20",
        "remitter": "Hamburg Imports GmbH",
        "bank_reference": "HDFCR52025032012345",
        "account_number": "50100234567890",
    });
    if let (Some(b), Some(o)) = (body.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// Audit events of an organization with `action` (newest first).
pub async fn audit_events(app: &TestApp, who: &Session, action: &str) -> Vec<Value> {
    let body: Value = app
        .get_as(
            &format!("/api/v1/audit/events?action={action}&page_size=100"),
            &who.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    body["data"].as_array().cloned().unwrap_or_default()
}

/// The Account Aggregator webhook secret the connector tests configure.
pub const AA_SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A server with the trade module whose `[modules.trade]` settings are `settings`.
pub async fn spawn_with_settings(settings: Value) -> TestApp {
    builder()
        .configure(move |c| {
            c.modules.insert("trade".into(), settings);
        })
        .spawn()
        .await
        .expect("server starts")
}

/// Posts a body to the Account Aggregator webhook signed with `secret`, as event `event_id`
/// sent at `timestamp` (Unix seconds).
pub async fn post_aa_event(
    app: &TestApp,
    secret: &str,
    event_id: &str,
    timestamp: i64,
    body: &Value,
) -> reqwest::Response {
    use keel_kernel::integrations::webhooks::{secret_key, sign};
    let bytes = serde_json::to_vec(body).expect("json");
    let signature = sign(&secret_key(secret), event_id, timestamp, &bytes);
    app.client
        .post(app.url("/api/v1/trade/webhooks/account-aggregator"))
        .header("content-type", "application/json")
        .header("webhook-id", event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(bytes)
        .send()
        .await
        .expect("request")
}

/// The audit events of a resource, oldest first as the API lists them.
pub async fn audit_actions(
    app: &TestApp,
    who: &Session,
    resource_type: &str,
    id: &str,
) -> Vec<String> {
    let trail: Value = app
        .get_as(
            &format!(
                "/api/v1/audit/events?resource_type={resource_type}&resource_id={id}&page_size=100"
            ),
            &who.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    trail["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["action"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
