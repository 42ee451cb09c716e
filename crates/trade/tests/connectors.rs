//! Connectors through HTTP: validation per field, CRUD for admins only, consent ids that
//! clash without revealing another organization's, and the Account Aggregator webhook — each
//! event's effect, signatures, stale timestamps, replayed event ids (checked first), unknown
//! consents, ignored events, the 503 without a secret, and the audit trail.

mod common;

use chrono::Utc;
use common::{AA_SECRET, audit_actions, post_aa_event, spawn_with_settings};
use keel_testkit::{TestApp, problem};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CONSENT: &str = "654024c8-29c8-11e8-8868-0289437bf331";

async fn app() -> TestApp {
    spawn_with_settings(json!({ "aa_webhook_secrets": [AA_SECRET] })).await
}

async fn create(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.post_as("/api/v1/trade/connectors", token, &body).await
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
async fn every_bad_field_is_named_and_admins_manage_connectors() {
    let app = app().await;
    let admin = app.register_org("conn@acme.example", "Acme").await;

    let r = create(
        &app,
        &admin.access_token,
        json!({"kind": "bank", "iec_code": "ABCD1234FF", "consent_id": "no spaces allowed"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        fields_of(&problem(r).await),
        ["consent_id", "iec_code", "kind"]
    );
    // IEC: 10 characters in PAN form, nothing else.
    for bad in [
        "ABCDE1234",
        "ABCDE12345",
        "1234567890",
        "ABCDE1234FX",
        "ABCDE-234F",
    ] {
        let r = create(
            &app,
            &admin.access_token,
            json!({"kind": "gst", "iec_code": bad}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(fields_of(&problem(r).await), ["iec_code"], "{bad}");
    }
    // A consent belongs to bank_aa connectors only.
    let r = create(
        &app,
        &admin.access_token,
        json!({"kind": "gst", "iec_code": "ABCDE1234F", "consent_id": CONSENT}),
    )
    .await;
    assert_eq!(fields_of(&problem(r).await), ["consent_id"]);
    // Unknown fields and wrong types are named too.
    let r = create(
        &app,
        &admin.access_token,
        json!({"kind": "gst", "iec_code": 5}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let list: Value = app
        .get_as("/api/v1/trade/connectors", &admin.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["pagination"]["total"], 0, "nothing was stored");

    // Input is normalised; a new connector is pending.
    let r = create(
        &app,
        &admin.access_token,
        json!({"kind": "BANK_AA", "iec_code": " abcde1234f ", "consent_id": CONSENT}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let c: Value = r.json().await.expect("json");
    assert_eq!(c["kind"], "bank_aa");
    assert_eq!(c["iec_code"], "ABCDE1234F");
    assert_eq!(c["status"], "pending");
    assert_eq!(c["data_ready_at"], Value::Null);
    let id = c["id"].as_str().expect("id").to_string();

    // One connector per consent id. Inside the organization the clash is named...
    let r = create(
        &app,
        &admin.access_token,
        json!({"kind": "bank_aa", "iec_code": "ABCDE1234F", "consent_id": CONSENT}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let p = problem(r).await;
    assert_eq!(fields_of(&p), ["consent_id"]);
    assert_eq!(p["connector_id"], id.as_str());
    // ...while another organization learns nothing about who holds it: the same 422 as for
    // any id it cannot use, naming no organization, connector or holder.
    let other = app.register_org("conn@other.example", "Other").await;
    let r = create(
        &app,
        &other.access_token,
        json!({"kind": "bank_aa", "iec_code": "ZZZZZ9999Z", "consent_id": CONSENT}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = problem(r).await;
    assert_eq!(fields_of(&p), ["consent_id"]);
    let text = p.to_string();
    for secret in [id.as_str(), &admin.org_id.to_string(), "already", "another"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    // Its own connectors are untouched by the refusal, and an update is refused alike.
    let theirs: Value = create(
        &app,
        &other.access_token,
        json!({"kind": "bank_aa", "iec_code": "ZZZZZ9999Z"}),
    )
    .await
    .json()
    .await
    .expect("json");
    let r = app
        .call(
            reqwest::Method::PUT,
            &format!(
                "/api/v1/trade/connectors/{}",
                theirs["id"].as_str().expect("id")
            ),
            Some(&other.access_token),
            Some(&json!({"kind": "bank_aa", "iec_code": "ZZZZZ9999Z", "consent_id": CONSENT})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!problem(r).await.to_string().contains(id.as_str()));
    // ...and another organization cannot see or touch this one.
    let path = format!("/api/v1/trade/connectors/{id}");
    assert_eq!(
        app.get_as(&path, &other.access_token).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete_as(&path, &other.access_token).await.status(),
        StatusCode::NOT_FOUND
    );

    // Members may not manage connectors.
    app.invite_and_register(&admin, "member@acme.example", "member", None)
        .await;
    let member = app
        .sign_in("member@acme.example", keel_testkit::PASSWORD)
        .await;
    assert_eq!(
        app.get_as("/api/v1/trade/connectors", &member.access_token)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );

    // Update with the version; a stale one is refused.
    let r = app
        .call(
            reqwest::Method::PUT,
            &path,
            Some(&admin.access_token),
            Some(&json!({"kind": "bank_aa", "iec_code": "ABCDE1234F", "consent_id": CONSENT, "version": 9})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = app
        .call(
            reqwest::Method::PUT,
            &path,
            Some(&admin.access_token),
            Some(&json!({"kind": "bank_aa", "iec_code": "PQRST6789U", "consent_id": CONSENT, "version": 1})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let c: Value = r.json().await.expect("json");
    assert_eq!(c["iec_code"], "PQRST6789U");
    assert_eq!(c["version"], 2);

    let list: Value = app
        .get_as("/api/v1/trade/connectors", &admin.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["pagination"]["total"], 1);
    assert_eq!(list["data"][0]["id"], id.as_str());

    assert_eq!(
        app.delete_as(&path, &admin.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get_as(&path, &admin.access_token).await.status(),
        StatusCode::NOT_FOUND
    );
    let actions = audit_actions(&app, &admin, "trade.connector", &id).await;
    for a in [
        "trade.connector.created",
        "trade.connector.updated",
        "trade.connector.deleted",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
}

async fn connector(app: &TestApp, token: &str, id: &str) -> Value {
    app.get_as(&format!("/api/v1/trade/connectors/{id}"), token)
        .await
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn account_aggregator_events_move_the_connector_and_are_audited() {
    let app = app().await;
    let admin = app.register_org("aa@acme.example", "Acme").await;
    let r = create(
        &app,
        &admin.access_token,
        json!({"kind": "bank_aa", "iec_code": "ABCDE1234F", "consent_id": CONSENT}),
    )
    .await;
    let c: Value = r.json().await.expect("json");
    let id = c["id"].as_str().expect("id").to_string();
    let now = Utc::now().timestamp();
    let event = |t: &str| json!({"type": t, "consent_id": CONSENT});

    // data_ready before the consent is approved changes nothing, but is audited as ignored.
    let r = post_aa_event(&app, AA_SECRET, "evt-0", now, &event("data_ready")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let receipt: Value = r.json().await.expect("json");
    assert_eq!(receipt["outcome"], "ignored");
    assert_eq!(
        connector(&app, &admin.access_token, &id).await["data_ready_at"],
        Value::Null
    );
    let ignored = common::audit_events(&app, &admin, "trade.connector.event_ignored").await;
    assert_eq!(ignored.len(), 1, "{ignored:?}");
    let text = ignored[0].to_string();
    for needle in ["evt-0", "\"ignored\"", "data_ready", "pending"] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert_eq!(ignored[0]["resource_id"], id.as_str());

    let r = post_aa_event(&app, AA_SECRET, "evt-1", now, &event("consent_approved")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let receipt: Value = r.json().await.expect("json");
    assert_eq!(receipt["outcome"], "applied");
    assert_eq!(receipt["status"], "active");
    let c = connector(&app, &admin.access_token, &id).await;
    assert_eq!(c["status"], "active");
    assert!(c["last_event_at"].is_string());

    let r = post_aa_event(&app, AA_SECRET, "evt-2", now, &event("data_ready")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let c = connector(&app, &admin.access_token, &id).await;
    assert_eq!(c["status"], "active");
    assert!(c["data_ready_at"].is_string(), "{c}");

    let r = post_aa_event(&app, AA_SECRET, "evt-3", now, &event("consent_revoked")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        connector(&app, &admin.access_token, &id).await["status"],
        "revoked"
    );

    let r = post_aa_event(&app, AA_SECRET, "evt-4", now, &event("consent_rejected")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let c = connector(&app, &admin.access_token, &id).await;
    assert_eq!(c["status"], "rejected");
    let version = c["version"].clone();

    // A replayed event id is acknowledged and ignored: the approval does not come back.
    let r = post_aa_event(&app, AA_SECRET, "evt-1", now, &event("consent_approved")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let receipt: Value = r.json().await.expect("json");
    assert_eq!(receipt["outcome"], "duplicate");
    let c = connector(&app, &admin.access_token, &id).await;
    assert_eq!(c["status"], "rejected");
    assert_eq!(c["version"], version);

    // Each applied event is in the audit trail, by the system actor.
    let actions = audit_actions(&app, &admin, "trade.connector", &id).await;
    for a in [
        "trade.connector.consent_approved",
        "trade.connector.data_ready",
        "trade.connector.consent_revoked",
        "trade.connector.consent_rejected",
    ] {
        assert_eq!(
            actions.iter().filter(|x| *x == a).count(),
            1,
            "{a} once in {actions:?}"
        );
    }
    let trail: Value = app
        .get_as(
            &format!("/api/v1/audit/events?resource_type=trade.connector&resource_id={id}&action=trade.connector.consent_approved"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    let text = trail.to_string();
    assert!(text.contains("evt-1"), "{text}");
    assert!(text.contains("system"), "{text}");

    // The event id is checked first: once the connector is gone, a repeat of an accepted
    // event is still a duplicate, while a new event about its consent is unknown (404).
    assert_eq!(
        app.delete_as(
            &format!("/api/v1/trade/connectors/{id}"),
            &admin.access_token
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );
    let r = post_aa_event(&app, AA_SECRET, "evt-3", now, &event("consent_revoked")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let receipt: Value = r.json().await.expect("json");
    assert_eq!(receipt["outcome"], "duplicate", "{receipt}");
    assert_eq!(receipt["event_id"], "evt-3");
    let r = post_aa_event(&app, AA_SECRET, "evt-5", now, &event("consent_revoked")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_and_unknown_consents_change_nothing() {
    let app = app().await;
    let admin = app.register_org("sig@acme.example", "Acme").await;
    let r = create(
        &app,
        &admin.access_token,
        json!({"kind": "bank_aa", "iec_code": "ABCDE1234F", "consent_id": CONSENT}),
    )
    .await;
    let c: Value = r.json().await.expect("json");
    let id = c["id"].as_str().expect("id").to_string();
    let now = Utc::now().timestamp();
    let approve = json!({"type": "consent_approved", "consent_id": CONSENT});

    // Signed with another secret.
    let wrong = "whsec_ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    let r = post_aa_event(&app, wrong, "bad-1", now, &approve).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A correct signature sent too long ago.
    let r = post_aa_event(&app, AA_SECRET, "old-1", now - 3600, &approve).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // No signature headers at all.
    let r = app
        .client
        .post(app.url("/api/v1/trade/webhooks/account-aggregator"))
        .json(&approve)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A body signed properly but for a consent no connector has: 404, nothing said.
    let r = post_aa_event(
        &app,
        AA_SECRET,
        "unknown-1",
        now,
        &json!({"type": "consent_approved", "consent_id": "00000000-0000-0000-0000-000000000000"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body = r.text().await.expect("text");
    assert!(
        !body.contains("consent_id") && !body.contains(&admin.org_id.to_string()),
        "{body}"
    );
    // An unknown event type is named.
    let r = post_aa_event(
        &app,
        AA_SECRET,
        "odd-1",
        now,
        &json!({"type": "consent_paused", "consent_id": CONSENT}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields_of(&problem(r).await), ["type"]);

    let c = connector(&app, &admin.access_token, &id).await;
    assert_eq!(c["status"], "pending");
    assert_eq!(c["version"], 1);
    let actions = audit_actions(&app, &admin, "trade.connector", &id).await;
    assert_eq!(actions, ["trade.connector.created"]);

    // The refused event ids were not recorded: the genuine delivery still goes through.
    let r = post_aa_event(&app, AA_SECRET, "bad-1", now, &approve).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        connector(&app, &admin.access_token, &id).await["status"],
        "active"
    );
}

#[tokio::test]
async fn without_a_secret_the_webhook_is_unavailable() {
    let app = common::spawn().await;
    let r = post_aa_event(
        &app,
        AA_SECRET,
        "evt-1",
        Utc::now().timestamp(),
        &json!({"type": "consent_approved", "consent_id": CONSENT}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let p = problem(r).await;
    assert_eq!(p["status"], 503);
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not configured")),
        "{p}"
    );
    // As the API document says.
    let doc: Value = app
        .get("/api/openapi.json")
        .await
        .json()
        .await
        .expect("json");
    let responses = &doc["paths"]["/api/v1/trade/webhooks/account-aggregator"]["post"]["responses"];
    assert!(
        responses["503"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("not configured")),
        "{responses}"
    );
}

#[tokio::test]
async fn the_isolation_probe_finds_no_trade_route_that_leaks() {
    let app = TestApp::builder()
        .without_probe_module()
        .module(std::sync::Arc::new(keel_trade::TradeModule))
        .spawn()
        .await
        .expect("server starts");
    let a = app.register_org("a@tenant-a.example", "Tenant A").await;
    let b = app.register_org("b@tenant-b.example", "Tenant B").await;
    let own = app.create_partner(&a, "Partner of the probing user").await;
    app.invite_and_register(&a, "p@tenant-a.example", "partner", Some(own))
        .await;
    let partner_user = app
        .sign_in("p@tenant-a.example", keel_testkit::PASSWORD)
        .await;
    let report = keel_testkit::isolation::probe(&app, &a, &b, &partner_user).await;
    assert!(
        report.uncovered.is_empty(),
        "routes without fixtures: {:?}",
        report.uncovered
    );
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.attempts > 0);
}
