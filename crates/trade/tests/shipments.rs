//! Shipments through HTTP: validation per field, the lifecycle and its 409s, soft delete,
//! optimistic concurrency, list filters, sorts, pages and cursors with exact totals, and the
//! tallies that make those totals cheap staying equal to the rows.

mod common;

use common::{act, create_shipment, id_of, shipment_body, spawn};
use keel_testkit::problem;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn every_bad_field_is_named_and_nothing_is_stored() {
    let app = spawn().await;
    let admin = app.register_org("bad@acme.example", "Acme").await;
    let body = shipment_body(
        "bad ref!",
        json!({
            "buyer_country": "XX",
            "destination_country": "DEU",
            "incoterm": "DAT",
            "hs_codes": ["8504", "850440", "85a440"],
            "invoice_value_minor": 0,
            "currency": "EURO",
            "shipping_bill_date": "2025-02-30",
            "export_type": "free",
            "port_of_loading": "Nhava Sheva",
            "port_of_discharge": "XXHAM",
            "shipping_bill_number": "SB/2025/1",
        }),
    );
    let r = app
        .post_as("/api/v1/trade/shipments", &admin.access_token, &body)
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = problem(r).await;
    let mut fields: Vec<&str> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "buyer_country",
            "currency",
            "destination_country",
            "export_type",
            "hs_codes[0]",
            "hs_codes[2]",
            "incoterm",
            "invoice_value_minor",
            "port_of_discharge",
            "port_of_loading",
            "reference",
            "shipping_bill_date",
            "shipping_bill_number",
        ]
    );
    // More than 20 HS codes, each valid.
    let many: Vec<String> = (0..21).map(|i| format!("8504{i:02}")).collect();
    let r = app
        .post_as(
            "/api/v1/trade/shipments",
            &admin.access_token,
            &shipment_body("OK-0", json!({"hs_codes": many})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = problem(r).await;
    assert_eq!(p["errors"][0]["field"], "hs_codes", "{p}");
    assert!(p.to_string().contains("at most 20"), "{p}");
    // A wrong type is named too.
    let r = app
        .post_as(
            "/api/v1/trade/shipments",
            &admin.access_token,
            &shipment_body("OK-1", json!({"invoice_value_minor": "lots"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(problem(r).await.to_string().contains("invoice_value_minor"));
    // No buyer at all: without a business partner, name and country are both required.
    let mut no_buyer = shipment_body("OK-2", json!({}));
    if let Some(o) = no_buyer.as_object_mut() {
        o.remove("buyer_name");
        o.remove("buyer_country");
    }
    let r = app
        .post_as("/api/v1/trade/shipments", &admin.access_token, &no_buyer)
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = problem(r).await;
    let mut named: Vec<&str> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    named.sort_unstable();
    assert_eq!(named, ["buyer_country", "buyer_name"], "{p}");
    // A name without a country is not enough either.
    let r = app
        .post_as(
            "/api/v1/trade/shipments",
            &admin.access_token,
            &shipment_body("OK-3", json!({"buyer_country": null})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem(r).await["errors"][0]["field"], "buyer_country");

    let list: Value = app
        .get_as("/api/v1/trade/shipments", &admin.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["pagination"]["total"], 0);
}

#[tokio::test]
async fn input_is_normalised_and_references_are_unique_per_organization() {
    let app = spawn().await;
    let admin = app.register_org("norm@acme.example", "Acme").await;
    let s = create_shipment(
        &app,
        &admin,
        "EXP-2025-001",
        json!({"destination_country": "de", "incoterm": "cif", "currency": "usd",
               "hs_codes": ["8504.40", "85044010", "850440"], "shipping_bill_date": "2025-03-01",
               "export_type": "with_payment"}),
    )
    .await;
    assert_eq!(s["destination_country"], "DE");
    assert_eq!(s["incoterm"], "CIF");
    assert_eq!(s["currency"], "USD");
    assert_eq!(s["hs_codes"], json!(["850440", "85044010"]));
    assert_eq!(s["status"], "draft");
    assert_eq!(s["ebrc_status"], "pending");
    assert_eq!(s["version"], 1);

    let r = app
        .post_as(
            "/api/v1/trade/shipments",
            &admin.access_token,
            &shipment_body("exp-2025-001", json!({})),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "case-insensitive uniqueness"
    );
    // Another organization may use the same reference.
    let other = app.register_org("norm@other.example", "Other").await;
    create_shipment(&app, &other, "EXP-2025-001", json!({})).await;

    // A linked buyer partner is the buyer: its name is used (a name given beside it is
    // not), and no country is required; another organization's partner is refused.
    let partner = app.create_partner(&admin, "Rotterdam Foods BV").await;
    let linked = create_shipment(
        &app,
        &admin,
        "EXP-2025-002",
        json!({"buyer_partner_id": partner, "buyer_name": "Someone Else", "buyer_country": null}),
    )
    .await;
    assert_eq!(linked["buyer_name"], "Rotterdam Foods BV");
    assert_eq!(linked["buyer_partner_id"], json!(partner));
    assert_eq!(linked["buyer_country"], Value::Null);
    // Ports are UN/LOCODEs, normalised to upper case (the printed space dropped).
    let ported = create_shipment(
        &app,
        &admin,
        "EXP-2025-004",
        json!({"port_of_loading": "in nsa", "port_of_discharge": "nlrtm"}),
    )
    .await;
    assert_eq!(ported["port_of_loading"], "INNSA");
    assert_eq!(ported["port_of_discharge"], "NLRTM");
    let foreign = app.create_partner(&other, "Foreign Partner").await;
    let r = app
        .post_as(
            "/api/v1/trade/shipments",
            &admin.access_token,
            &shipment_body("EXP-2025-003", json!({"buyer_partner_id": foreign})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(problem(r).await.to_string().contains("buyer_partner_id"));
}

#[tokio::test]
async fn the_lifecycle_moves_only_forward_and_409_names_the_allowed_moves() {
    let app = spawn().await;
    let admin = app.register_org("life@acme.example", "Acme").await;
    let s = create_shipment(&app, &admin, "LIFE-1", json!({})).await;
    let id = id_of(&s);

    let r = act(&app, &admin, &id, "deliver").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let p = problem(r).await;
    assert_eq!(p["allowed"], json!(["booked", "cancelled"]));
    assert_eq!(p["current_status"], "draft");

    for (action, status) in [
        ("book", "booked"),
        ("dispatch", "in_transit"),
        ("deliver", "delivered"),
    ] {
        let r = act(&app, &admin, &id, action).await;
        assert_eq!(r.status(), StatusCode::OK, "{action}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["status"], status);
    }
    let r = act(&app, &admin, &id, "cancel").await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "delivered cannot be cancelled"
    );
    assert_eq!(problem(r).await["allowed"], json!([]));
    // Closed: no edits either; and a draft has no e-BRC to file.
    let fresh = create_shipment(&app, &admin, "LIFE-3", json!({})).await;
    let r = app
        .post_as(
            &format!("/api/v1/trade/shipments/{}/ebrc", id_of(&fresh)),
            &admin.access_token,
            &json!({"status": "filed"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/trade/shipments/{id}"),
            Some(&admin.access_token),
            Some(&shipment_body("LIFE-1", json!({}))),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // A stale version on a transition is refused; a reason lands in the audit trail.
    let other = create_shipment(&app, &admin, "LIFE-2", json!({})).await;
    let oid = id_of(&other);
    let r = app
        .post_as(
            &format!("/api/v1/trade/shipments/{oid}/cancel"),
            &admin.access_token,
            &json!({"version": 7}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = app
        .post_as(
            &format!("/api/v1/trade/shipments/{oid}/cancel"),
            &admin.access_token,
            &json!({"version": 1, "reason": "buyer withdrew"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let trail: Value = app
        .get_as(
            &format!("/api/v1/audit/events?resource_type=trade.shipment&resource_id={oid}"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    let text = trail.to_string();
    assert!(text.contains("trade.shipment.status_changed"), "{text}");
    assert!(text.contains("buyer withdrew"), "{text}");
}

#[tokio::test]
async fn the_transitions_route_moves_as_the_actions_do_and_names_what_is_allowed() {
    let app = spawn().await;
    let admin = app.register_org("moves@acme.example", "Acme").await;
    let s = create_shipment(&app, &admin, "MOVE-1", json!({})).await;
    let id = id_of(&s);
    let path = format!("/api/v1/trade/shipments/{id}/transitions");
    let to = |body: Value| {
        let (app, token, path) = (&app, admin.access_token.clone(), path.clone());
        async move { app.post_as(&path, &token, &body).await }
    };

    // A move the lifecycle does not allow: 409 with where it is and where it may go.
    let r = to(json!({"to": "delivered"})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let p = problem(r).await;
    assert_eq!(p["current_status"], "draft");
    assert_eq!(p["allowed"], json!(["booked", "cancelled"]));
    // Back to draft is a status, but never a move.
    let r = to(json!({"to": "draft"})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // Not a status at all, or a reason too long: 422 naming the field, nothing changes.
    let r = to(json!({"to": "shipped"})).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = problem(r).await;
    assert_eq!(p["errors"][0]["field"], "to", "{p}");
    assert!(p.to_string().contains("in_transit"), "{p}");
    let r = to(json!({"to": "booked", "reason": "x".repeat(501)})).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem(r).await["errors"][0]["field"], "reason");
    let r = to(json!({"status": "booked"})).await;
    assert_eq!(
        r.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "`to` is required"
    );
    let unchanged: Value = app
        .get_as(
            &format!("/api/v1/trade/shipments/{id}"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(unchanged["status"], "draft");
    assert_eq!(unchanged["version"], 1);

    // A stale version is refused; the current one moves it, with the reason audited.
    let r = to(json!({"to": "booked", "version": 5})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = to(json!({"to": "booked", "version": 1, "reason": "buyer confirmed"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let booked: Value = r.json().await.expect("json");
    assert_eq!(booked["status"], "booked");
    assert_eq!(booked["version"], 2);
    for (target, status) in [("in_transit", "in_transit"), ("delivered", "delivered")] {
        let r = to(json!({"to": target})).await;
        assert_eq!(r.status(), StatusCode::OK, "{target}");
        assert_eq!(r.json::<Value>().await.expect("json")["status"], status);
    }
    let r = to(json!({"to": "cancelled"})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(problem(r).await["allowed"], json!([]));
    let actions = common::audit_actions(&app, &admin, "trade.shipment", &id).await;
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "trade.shipment.status_changed")
            .count(),
        3,
        "{actions:?}"
    );
    let events = common::audit_events(&app, &admin, "trade.shipment.status_changed").await;
    assert!(
        events
            .iter()
            .any(|e| e.to_string().contains("buyer confirmed")),
        "the reason is audited"
    );

    // The per-action routes and /transitions are the same move.
    let other = id_of(&create_shipment(&app, &admin, "MOVE-2", json!({})).await);
    assert_eq!(
        act(&app, &admin, &other, "book").await.status(),
        StatusCode::OK
    );
    let r = app
        .post_as(
            &format!("/api/v1/trade/shipments/{other}/transitions"),
            &admin.access_token,
            &json!({"to": "booked"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(problem(r).await["current_status"], "booked");
    let counts: Value = app
        .get_as("/api/v1/trade/shipments?status=booked", &admin.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        counts["pagination"]["total"], 1,
        "the tallies moved with it"
    );
}

#[tokio::test]
async fn only_drafts_are_deleted_and_updates_need_the_current_version() {
    let app = spawn().await;
    let admin = app.register_org("del@acme.example", "Acme").await;
    let draft = create_shipment(&app, &admin, "DEL-1", json!({})).await;
    let booked = create_shipment(&app, &admin, "DEL-2", json!({})).await;
    assert_eq!(
        act(&app, &admin, &id_of(&booked), "book").await.status(),
        StatusCode::OK
    );

    let r = app
        .delete_as(
            &format!("/api/v1/trade/shipments/{}", id_of(&booked)),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = app
        .delete_as(
            &format!("/api/v1/trade/shipments/{}", id_of(&draft)),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .get_as(
            &format!("/api/v1/trade/shipments/{}", id_of(&draft)),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The reference of a deleted draft is free again.
    create_shipment(&app, &admin, "DEL-1", json!({})).await;

    // Lost updates: version 1 after the booking (version 2) is stale.
    let id = id_of(&booked);
    let r = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/trade/shipments/{id}"),
            Some(&admin.access_token),
            Some(&shipment_body(
                "DEL-2",
                json!({"version": 1, "buyer_name": "Changed"}),
            )),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/trade/shipments/{id}"),
            Some(&admin.access_token),
            Some(&shipment_body(
                "DEL-2",
                json!({"version": 2, "buyer_name": "Changed"}),
            )),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["buyer_name"], "Changed");
    assert_eq!(body["version"], 3);
    assert_eq!(body["status"], "booked", "an edit keeps the status");
}

async fn list(app: &keel_testkit::TestApp, token: &str, query: &str) -> Value {
    let r = app
        .get_as(&format!("/api/v1/trade/shipments?{query}"), token)
        .await;
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

fn references(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|s| s["reference"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn filters_totals_and_cursors_agree_with_the_rows() {
    let app = spawn().await;
    let admin = app.register_org("list@acme.example", "Acme").await;
    let other = app.register_org("list@other.example", "Other").await;
    create_shipment(&app, &other, "OTHER-1", json!({})).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let country = if i % 3 == 0 { "US" } else { "DE" };
        let buyer = if i % 4 == 0 {
            "Acme Importers 50%_off"
        } else {
            "Nordic Trade AB"
        };
        let s = create_shipment(
            &app,
            &admin,
            &format!("REF-{i:02}"),
            json!({"destination_country": country, "buyer_name": buyer}),
        )
        .await;
        ids.push(id_of(&s));
    }
    // 0..4 booked, 4..6 cancelled, 6..12 draft; 11 deleted.
    for id in &ids[0..4] {
        assert_eq!(act(&app, &admin, id, "book").await.status(), StatusCode::OK);
    }
    for id in &ids[4..6] {
        assert_eq!(
            act(&app, &admin, id, "cancel").await.status(),
            StatusCode::OK
        );
    }
    let r = app
        .post_as(
            &format!("/api/v1/trade/shipments/{}/ebrc", ids[0]),
            &admin.access_token,
            &json!({"status": "filed"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        app.delete_as(
            &format!("/api/v1/trade/shipments/{}", ids[11]),
            &admin.access_token
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );

    let t = &admin.access_token;
    let all = list(&app, t, "page_size=5").await;
    assert_eq!(all["pagination"]["total"], 11);
    assert_eq!(all["pagination"]["total_pages"], 3);
    assert_eq!(references(&all)[0], "REF-10", "newest first");
    let beyond = list(&app, t, "page=9&page_size=5").await;
    assert_eq!(references(&beyond).len(), 0);
    assert_eq!(
        beyond["pagination"]["total"], 11,
        "a page past the end still has the total"
    );
    assert_eq!(
        list(&app, t, "status=booked").await["pagination"]["total"],
        4
    );
    assert_eq!(
        list(&app, t, "status=draft").await["pagination"]["total"],
        5
    );
    assert_eq!(
        list(&app, t, "ebrc_status=filed").await["pagination"]["total"],
        1
    );
    assert_eq!(
        list(&app, t, "ebrc_status=pending&status=booked").await["pagination"]["total"],
        3
    );
    assert_eq!(
        list(&app, t, "destination_country=us").await["pagination"]["total"],
        4
    );
    // `%` and `_` in q are literal characters, not wildcards.
    let found = list(&app, t, "q=50%25_off").await;
    assert_eq!(found["pagination"]["total"], 3, "{found}");
    assert_eq!(found["pagination"]["total_exact"], true);
    assert_eq!(list(&app, t, "q=ref-0").await["pagination"]["total"], 10);
    assert_eq!(
        list(&app, t, "q=nothing-like-it").await["pagination"]["total"],
        0
    );

    let sorted = list(&app, t, "sort=reference&page_size=3").await;
    assert_eq!(references(&sorted), ["REF-00", "REF-01", "REF-02"]);
    // Cursors walk every row once.
    let mut seen = references(&sorted);
    let mut cursor = sorted["pagination"]["next_cursor"]
        .as_str()
        .map(str::to_string);
    while let Some(c) = cursor {
        let next = list(&app, t, &format!("sort=reference&page_size=3&cursor={c}")).await;
        assert!(next["pagination"]["total"].is_null());
        seen.extend(references(&next));
        cursor = next["pagination"]["next_cursor"]
            .as_str()
            .map(str::to_string);
    }
    let expected: Vec<String> = (0..11).map(|i| format!("REF-{i:02}")).collect();
    assert_eq!(seen, expected);

    // Created ranges are half-open on the timestamp.
    let everything = list(&app, t, "created_from=2000-01-01&created_to=2100-01-01").await;
    assert_eq!(everything["pagination"]["total"], 11);
    assert_eq!(
        list(&app, t, "created_to=2000-01-01").await["pagination"]["total"],
        0
    );

    // Bad filters are named.
    let r = app
        .get_as("/api/v1/trade/shipments?status=shipped&ebrc_status=x&destination_country=ZZ&q=a&created_from=yesterday&sort=buyer_name", t)
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = problem(r).await.to_string();
    for field in [
        "status",
        "ebrc_status",
        "destination_country",
        "\"q\"",
        "created_from",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
    // The other organization sees only its own.
    let theirs = list(&app, &other.access_token, "").await;
    assert_eq!(references(&theirs), ["OTHER-1"]);
}

/// Concurrent writes moving shipments between cells in every direction: afterwards every
/// total the tallies give equals a count of the rows (PostgreSQL runs these in parallel;
/// the fixed update order means no deadlock surfaces as an error).
#[tokio::test]
async fn tallies_equal_the_rows_after_concurrent_moves() {
    let app = std::sync::Arc::new(spawn().await);
    let admin = app.register_org("race@acme.example", "Acme").await;
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(id_of(
            &create_shipment(&app, &admin, &format!("RACE-{i}"), json!({})).await,
        ));
    }
    let mut tasks = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let (app, token, id) = (app.clone(), admin.access_token.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let plan: &[&str] = match n % 4 {
                0 => &["book", "dispatch", "deliver", "cancel"],
                1 => &["cancel", "book"],
                2 => &["book", "ebrc:filed", "dispatch", "ebrc:pending", "cancel"],
                _ => &["delete", "book"],
            };
            for step in plan {
                let r = match *step {
                    "delete" => {
                        app.delete_as(&format!("/api/v1/trade/shipments/{id}"), &token)
                            .await
                    }
                    s if s.starts_with("ebrc:") => {
                        app.post_as(
                            &format!("/api/v1/trade/shipments/{id}/ebrc"),
                            &token,
                            &json!({"status": &s[5..]}),
                        )
                        .await
                    }
                    s => {
                        app.post_as(
                            &format!("/api/v1/trade/shipments/{id}/{s}"),
                            &token,
                            &json!({}),
                        )
                        .await
                    }
                };
                assert!(
                    matches!(r.status().as_u16(), 200 | 204 | 404 | 409),
                    "{step}: {}",
                    r.status()
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let t = &admin.access_token;
    let rows = list(&app, t, "page_size=100").await;
    let data = rows["data"].as_array().expect("data");
    assert_eq!(
        rows["pagination"]["total"].as_u64(),
        Some(data.len() as u64)
    );
    assert_eq!(data.len(), 18, "6 drafts deleted");
    for status in ["draft", "booked", "in_transit", "delivered", "cancelled"] {
        let expected = data.iter().filter(|s| s["status"] == status).count() as u64;
        let got = list(&app, t, &format!("status={status}")).await["pagination"]["total"].as_u64();
        assert_eq!(got, Some(expected), "{status}");
    }
    for ebrc in ["pending", "filed"] {
        let expected = data.iter().filter(|s| s["ebrc_status"] == ebrc).count() as u64;
        let got =
            list(&app, t, &format!("ebrc_status={ebrc}")).await["pagination"]["total"].as_u64();
        assert_eq!(got, Some(expected), "{ebrc}");
    }
}

/// Free-text search gives the same rows whichever way it reads them: through the trigram
/// index (a term with few matches), or by testing the organization's rows (a term under 3
/// characters, or one that another organization's rows make common). The index follows
/// creates, edits and deletes, and never shows another organization's rows.
#[tokio::test]
async fn search_finds_the_rows_containing_the_term_through_edits_and_deletes() {
    let app = spawn().await;
    let acme = app.register_org("search@acme.example", "Acme").await;
    let other = app.register_org("search@other.example", "Other").await;
    let t = &acme.access_token;
    let found = |body: &Value| {
        let mut r = references(body);
        r.sort();
        (r, body["pagination"]["total"].as_u64())
    };

    create_shipment(
        &app,
        &acme,
        "SRCH-1",
        json!({"buyer_name": "Quayside \"Blue\" Traders"}),
    )
    .await;
    let two = create_shipment(
        &app,
        &acme,
        "SRCH-2",
        json!({"buyer_name": "Northwind Bulk Ltd"}),
    )
    .await;
    let draft = create_shipment(
        &app,
        &acme,
        "SRCH-3",
        json!({"buyer_name": "Bulkhead Marine"}),
    )
    .await;
    create_shipment(&app, &acme, "SRCH-4", json!({})).await;
    // Another organization where "bulk" is in more rows than Acme has shipments: Acme's
    // search for it reads Acme's rows instead of the index, and sees only Acme's.
    for i in 0..8 {
        create_shipment(
            &app,
            &other,
            &format!("OTH-{i}"),
            json!({"buyer_name": "Bulk Carriers"}),
        )
        .await;
    }

    let bulk = list(&app, t, "q=bulk").await;
    assert_eq!(
        found(&bulk),
        (vec!["SRCH-2".into(), "SRCH-3".into()], Some(2)),
        "{bulk}"
    );
    assert_eq!(
        found(&list(&app, t, "q=BLUE%22%20TR").await),
        (vec!["SRCH-1".into()], Some(1))
    );
    assert_eq!(
        found(&list(&app, t, "q=%22blue%22").await).1,
        Some(1),
        "quotes are literal"
    );
    assert_eq!(found(&list(&app, t, "q=srch-").await).1, Some(4));
    assert_eq!(
        found(&list(&app, t, "q=-3").await),
        (vec!["SRCH-3".into()], Some(1)),
        "2 characters"
    );
    assert_eq!(
        found(&list(&app, t, "q=oth-").await).1,
        Some(0),
        "another organization's rows"
    );
    let partial = list(&app, t, "q=northwind&page_size=1").await;
    assert_eq!(found(&partial), (vec!["SRCH-2".into()], Some(1)));

    // An edit moves the row from the old text to the new.
    let id = id_of(&two);
    let r = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/trade/shipments/{id}"),
            Some(t),
            Some(&shipment_body(
                "SRCH-2",
                json!({"version": 1, "buyer_name": "Southwind Grain"}),
            )),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(found(&list(&app, t, "q=northwind").await).1, Some(0));
    assert_eq!(
        found(&list(&app, t, "q=southwind").await),
        (vec!["SRCH-2".into()], Some(1))
    );
    assert_eq!(
        found(&list(&app, t, "q=bulk").await),
        (vec!["SRCH-3".into()], Some(1))
    );

    // A deleted draft is no longer found; a new shipment is.
    let r = app
        .delete_as(&format!("/api/v1/trade/shipments/{}", id_of(&draft)), t)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(found(&list(&app, t, "q=bulkhead").await).1, Some(0));
    create_shipment(
        &app,
        &acme,
        "SRCH-5",
        json!({"buyer_name": "Bulkhead Marine"}),
    )
    .await;
    assert_eq!(
        found(&list(&app, t, "q=bulkhead").await),
        (vec!["SRCH-5".into()], Some(1))
    );
    // The other organization still sees its own.
    assert_eq!(
        found(&list(&app, &other.access_token, "q=bulk").await).1,
        Some(8)
    );
}
