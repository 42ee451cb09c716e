//! Shipment status and e-BRC changes reach the organization's realtime channel (through the
//! audit outbox, after commit); other organizations' channels are refused.

mod common;

use std::time::{Duration, Instant};

use common::{act, create_shipment, id_of, spawn};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn status_changes_are_published_on_the_org_channel() {
    let app = spawn().await;
    let admin = app.register_org("rt@acme.example", "Acme").await;
    let s = create_shipment(&app, &admin, "RT-1", json!({})).await;
    let id = id_of(&s);
    assert_eq!(
        act(&app, &admin, &id, "book").await.status(),
        StatusCode::OK
    );
    let r = app
        .post_as(
            &format!("/api/v1/trade/shipments/{id}/ebrc"),
            &admin.access_token,
            &json!({"status": "filed"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    let channel = format!("org:{}", admin.org_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: Vec<Value> = Vec::new();
    let mut after = "0".to_string();
    while seen.len() < 2 && Instant::now() < deadline {
        let r = app
            .get_as(
                &format!("/api/v1/realtime/poll?channels={channel}&after={after}&timeout=5"),
                &admin.access_token,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.expect("json");
        for m in page["data"].as_array().expect("data") {
            if m["data"]["resource_id"] == json!(id) {
                seen.push(m.clone());
            }
        }
        if let Some(last) = page["last_id"].as_str() {
            after = last.to_string();
        }
    }
    let types: Vec<&str> = seen.iter().filter_map(|m| m["type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "trade.shipment.status_changed",
            "trade.shipment.ebrc_changed"
        ],
        "{seen:?}"
    );
    // Messages name the event and the resource (no field values): clients read the resource.
    assert_eq!(seen[0]["data"]["resource_type"], "trade.shipment");
    assert!(seen[0]["data"]["event_id"].is_string());
    // Creation and edits are not broadcast: only state changes are.
    assert!(seen.iter().all(|m| m["type"] != "trade.shipment.created"));

    let other = app.register_org("rt@other.example", "Other").await;
    let r = app
        .get_as(
            &format!("/api/v1/realtime/poll?channels={channel}&timeout=0"),
            &other.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
