//! Forex rates through HTTP: validation per field, exact storage, alerts at the thresholds
//! (stored, notified to admins, audited), the cached latest rates refreshed by a create,
//! admins only, half-open history ranges, and the create rate limit.

mod common;

use common::{create_rate, spawn};
use keel_testkit::problem;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn fields(p: &Value) -> Vec<String> {
    let mut f: Vec<String> = p["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    f.sort_unstable();
    f
}

async fn get(app: &keel_testkit::TestApp, token: &str, path: &str) -> Value {
    let r = app.get_as(path, token).await;
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

#[tokio::test]
async fn every_bad_field_is_named_and_nothing_is_stored() {
    // Refused creates count against the limit too (it is checked first): raise it here.
    let app = common::builder()
        .configure(|c| {
            c.rate_limits.policies.insert(
                "trade.forex.create".into(),
                keel_kernel::limits::PolicyOverride {
                    limit: Some(1_000),
                    ..Default::default()
                },
            );
        })
        .spawn()
        .await
        .expect("server starts");
    let admin = app.register_org("fx-bad@acme.example", "Acme").await;
    let post = |body: Value| {
        let app = &app;
        let token = admin.access_token.clone();
        async move {
            app.post_as("/api/v1/trade/forex/rates", &token, &body)
                .await
        }
    };
    // Every field wrong at once.
    let r = post(json!({
        "currency": "XYZ", "rate": "0", "buy": "abc", "sell": 83.5, "effective_at": "yesterday"
    }))
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        fields(&problem(r).await),
        ["buy", "currency", "effective_at", "rate", "sell"]
    );
    // Each rule on its own.
    let cases = [
        (json!({"currency": "INR", "rate": "1"}), "currency"),
        (json!({"currency": "BRL", "rate": "1"}), "currency"),
        (json!({"currency": "USD"}), "rate"),
        (json!({"currency": "USD", "rate": 83.25}), "rate"),
        (json!({"currency": "USD", "rate": "-83.25"}), "rate"),
        (json!({"currency": "USD", "rate": "1000000"}), "rate"),
        (json!({"currency": "USD", "rate": "83.1234567"}), "rate"),
        (json!({"currency": "USD", "rate": "8.3e1"}), "rate"),
        (
            json!({"currency": "USD", "rate": "83", "buy": "83.5"}),
            "buy",
        ),
        (
            json!({"currency": "USD", "rate": "83", "sell": "82.5"}),
            "sell",
        ),
        (
            json!({"currency": "USD", "rate": "83", "effective_at": "2999-01-01T00:00:00Z"}),
            "effective_at",
        ),
        (
            json!({"currency": "USD", "rate": "83", "effective_at": "1999-12-31T00:00:00Z"}),
            "effective_at",
        ),
    ];
    for (body, field) in cases {
        let r = post(body.clone()).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let p = problem(r).await;
        assert_eq!(fields(&p), [field], "{body}: {p}");
    }
    let r = post(json!({"currency": "USD", "rate": "83.1234567"})).await;
    assert!(
        problem(r)
            .await
            .to_string()
            .contains("at most 6 decimal places")
    );
    let history = get(&app, &admin.access_token, "/api/v1/trade/forex/history").await;
    assert_eq!(history["pagination"]["total"], 0);
}

#[tokio::test]
async fn rates_are_normalised_and_stored_exactly() {
    let app = spawn().await;
    let admin = app.register_org("fx-exact@acme.example", "Acme").await;
    let r = create_rate(
        &app,
        &admin,
        json!({"currency": " usd ", "rate": "83.2512", "buy": "83.1", "sell": "83.400001",
               "effective_at": "2025-03-31T22:00:00-05:00"}),
    )
    .await;
    assert_eq!(r["currency"], "USD");
    assert_eq!(r["rate"], "83.2512");
    assert_eq!(r["rate_micros"], 83_251_200);
    assert_eq!(r["buy"], "83.10");
    assert_eq!(r["sell"], "83.400001");
    assert_eq!(r["spread"], "0.300001");
    assert_eq!(r["alert"], Value::Null);
    assert_eq!(r["version"], 1);
    assert_eq!(r["updated_at"], r["created_at"]);
    let at = chrono::DateTime::parse_from_rfc3339(r["effective_at"].as_str().expect("time"))
        .expect("rfc 3339");
    assert_eq!(at.to_rfc3339(), "2025-04-01T03:00:00+00:00");
    // The smallest step is stored too, and shown back exactly.
    let tiny = create_rate(&app, &admin, json!({"currency": "JPY", "rate": "0.000001"})).await;
    assert_eq!(tiny["rate"], "0.000001");
    assert_eq!(tiny["spread"], Value::Null);
    let history = get(
        &app,
        &admin.access_token,
        "/api/v1/trade/forex/history?currency=usd",
    )
    .await;
    assert_eq!(history["pagination"]["total"], 1);
    assert_eq!(history["data"][0]["rate"], "83.2512");
}

#[tokio::test]
async fn changes_above_three_percent_raise_alerts_for_admins() {
    let app = spawn().await;
    let admin = app.register_org("fx-alert@acme.example", "Acme").await;
    app.invite_and_register(&admin, "fx-alert-member@acme.example", "member", None)
        .await;
    let member = app
        .sign_in("fx-alert-member@acme.example", keel_testkit::PASSWORD)
        .await;
    // (currency, first, second, expected severity, anomaly)
    let cases = [
        ("USD", "100", "102.9", None, false),
        ("EUR", "100", "103.5", Some("medium"), false),
        ("GBP", "100", "106", Some("high"), false),
        ("AED", "100", "112", Some("high"), true),
    ];
    for (currency, first, second, severity, anomaly) in cases {
        let a = create_rate(
            &app,
            &admin,
            json!({"currency": currency, "rate": first, "effective_at": "2025-01-01T00:00:00Z"}),
        )
        .await;
        assert_eq!(
            a["alert"],
            Value::Null,
            "the first rate has nothing to compare"
        );
        let b = create_rate(&app, &admin, json!({"currency": currency, "rate": second})).await;
        match severity {
            None => assert_eq!(b["alert"], Value::Null, "{currency}: {b}"),
            Some(s) => {
                assert_eq!(b["alert"]["severity"], s, "{currency}: {b}");
                assert_eq!(b["alert"]["anomaly"], anomaly, "{currency}: {b}");
                assert_eq!(b["alert"]["direction"], "up");
                assert_eq!(b["alert"]["previous_rate_id"], a["id"]);
                assert_eq!(b["alert"]["version"], 1);
                assert!(b["alert"]["updated_at"].is_string(), "{b}");
            }
        }
    }
    let alerts = get(&app, &member.access_token, "/api/v1/trade/forex/alerts").await;
    assert_eq!(alerts["pagination"]["total"], 3, "{alerts}");
    let by_currency = |c: &str| {
        alerts["data"]
            .as_array()
            .expect("data")
            .iter()
            .find(|a| a["currency"] == c)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(by_currency("EUR")["change_percent"], "3.5000");
    assert_eq!(by_currency("EUR")["severity"], "medium");
    assert_eq!(by_currency("GBP")["change_percent"], "6.0000");
    assert_eq!(by_currency("GBP")["severity"], "high");
    assert_eq!(by_currency("GBP")["anomaly"], false);
    assert_eq!(by_currency("AED")["change_percent"], "12.0000");
    assert_eq!(by_currency("AED")["anomaly"], true);
    assert_eq!(by_currency("USD"), Value::Null);
    let high = get(
        &app,
        &admin.access_token,
        "/api/v1/trade/forex/alerts?severity=high",
    )
    .await;
    assert_eq!(high["pagination"]["total"], 2);
    let r = app
        .get_as(
            "/api/v1/trade/forex/alerts?severity=low&currency=XXX",
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem(r).await), ["currency", "severity"]);

    // The admin is notified in-app of each alert; the member is not.
    let notes = get(&app, &admin.access_token, "/api/v1/notifications").await;
    let forex: Vec<&Value> = notes["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|n| n["type"] == "trade.forex_alert" || n["kind"] == "trade.forex_alert")
        .collect();
    assert_eq!(forex.len(), 3, "{notes}");
    assert!(
        forex.iter().any(|n| n.to_string().contains("AED/INR")),
        "{notes}"
    );
    let member_notes = get(&app, &member.access_token, "/api/v1/notifications").await;
    assert!(
        !member_notes.to_string().contains("trade.forex_alert"),
        "{member_notes}"
    );

    // Each alert is in the audit trail (and so on the organization's channel).
    let events = get(
        &app,
        &admin.access_token,
        "/api/v1/audit/events?action=trade.forex.alert",
    )
    .await;
    assert_eq!(events["pagination"]["total"], 3, "{events}");

    // ... and reaches the organization's realtime channel.
    let mut after = "0".to_string();
    let mut seen = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while seen < 3 && std::time::Instant::now() < deadline {
        let page = get(
            &app,
            &member.access_token,
            &format!(
                "/api/v1/realtime/poll?channels=org:{}&after={after}&timeout=2",
                admin.org_id
            ),
        )
        .await;
        seen += page["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter(|m| m["type"] == "trade.forex.alert")
                    .count()
            })
            .unwrap_or(0);
        after = page["last_id"].as_str().unwrap_or(&after).to_string();
    }
    assert_eq!(seen, 3, "three alerts published on org:<id>");

    // Another organization has no alerts.
    let other = app.register_org("fx-alert@other.example", "Other").await;
    let theirs = get(&app, &other.access_token, "/api/v1/trade/forex/alerts").await;
    assert_eq!(theirs["pagination"]["total"], 0);
}

#[tokio::test]
async fn latest_is_cached_and_a_create_refreshes_it_at_once() {
    let app = spawn().await;
    let admin = app.register_org("fx-latest@acme.example", "Acme").await;
    let other = app.register_org("fx-latest@other.example", "Other").await;
    create_rate(
        &app,
        &admin,
        json!({"currency": "USD", "rate": "83.00", "effective_at": "2025-01-01"}),
    )
    .await;
    create_rate(&app, &admin, json!({"currency": "EUR", "rate": "90.10"})).await;
    // A back-dated rate does not replace the newer one.
    create_rate(
        &app,
        &admin,
        json!({"currency": "EUR", "rate": "89.00", "effective_at": "2024-06-01"}),
    )
    .await;
    let latest = get(&app, &admin.access_token, "/api/v1/trade/forex/latest").await;
    assert_eq!(latest["base"], "INR");
    let rates: Vec<(String, String)> = latest["rates"]
        .as_array()
        .expect("rates")
        .iter()
        .map(|r| {
            (
                r["currency"].as_str().unwrap_or("").to_string(),
                r["rate"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        rates,
        [
            ("EUR".to_string(), "90.10".to_string()),
            ("USD".to_string(), "83.00".to_string())
        ]
    );
    // Served from the cache the second time.
    let again = get(&app, &admin.access_token, "/api/v1/trade/forex/latest").await;
    assert_eq!(again["as_of"], latest["as_of"], "cached");
    // A create shows at once.
    create_rate(&app, &admin, json!({"currency": "USD", "rate": "83.50"})).await;
    let after = get(&app, &admin.access_token, "/api/v1/trade/forex/latest").await;
    let usd = after["rates"]
        .as_array()
        .expect("rates")
        .iter()
        .find(|r| r["currency"] == "USD")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(usd["rate"], "83.50", "{after}");
    // Rates belong to their organization.
    let theirs = get(&app, &other.access_token, "/api/v1/trade/forex/latest").await;
    assert_eq!(theirs["rates"], json!([]));
}

#[tokio::test]
async fn only_admins_record_rates_and_members_read_them() {
    let app = spawn().await;
    let admin = app.register_org("fx-perm@acme.example", "Acme").await;
    app.invite_and_register(&admin, "fx-perm-member@acme.example", "member", None)
        .await;
    let member = app
        .sign_in("fx-perm-member@acme.example", keel_testkit::PASSWORD)
        .await;
    let r = app
        .post_as(
            "/api/v1/trade/forex/rates",
            &member.access_token,
            &json!({"currency": "USD", "rate": "83"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    create_rate(&app, &admin, json!({"currency": "USD", "rate": "83"})).await;
    let latest = get(&app, &member.access_token, "/api/v1/trade/forex/latest").await;
    assert_eq!(latest["rates"][0]["rate"], "83.00");
    let history = get(&app, &member.access_token, "/api/v1/trade/forex/history").await;
    assert_eq!(
        history["pagination"]["total"], 1,
        "the refused create stored nothing"
    );
    let r = app.get("/api/v1/trade/forex/latest").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn history_ranges_are_half_open() {
    let app = spawn().await;
    let admin = app.register_org("fx-history@acme.example", "Acme").await;
    for (rate, at) in [
        ("80", "2025-03-01T00:00:00Z"),
        ("81", "2025-03-15T12:00:00+05:30"),
        // 2025-04-01T03:00:00Z: April in UTC although March 31st where it was set.
        ("82", "2025-03-31T22:00:00-05:00"),
        ("83", "2025-04-01T00:00:00Z"),
    ] {
        create_rate(
            &app,
            &admin,
            json!({"currency": "USD", "rate": rate, "effective_at": at}),
        )
        .await;
    }
    create_rate(
        &app,
        &admin,
        json!({"currency": "EUR", "rate": "90", "effective_at": "2025-03-10"}),
    )
    .await;
    let rates = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|r| r["rate"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let march = get(
        &app,
        &admin.access_token,
        "/api/v1/trade/forex/history?currency=USD&from=2025-03-01&to=2025-04-01&sort=effective_at",
    )
    .await;
    assert_eq!(rates(&march), ["80.00", "81.00"], "{march}");
    assert_eq!(march["pagination"]["total"], 2);
    let april = get(
        &app,
        &admin.access_token,
        "/api/v1/trade/forex/history?currency=USD&from=2025-04-01T00:00:00Z&to=2025-05-01",
    )
    .await;
    assert_eq!(rates(&april), ["82.00", "83.00"], "newest first: {april}");
    // An offset in the bounds is honoured: 2025-03-31T23:00-05:00 is 04:00 UTC on April 1st.
    let r = app
        .get_as(
            "/api/v1/trade/forex/history?currency=USD&from=2025-03-31T23:00:00-05:00",
            &admin.access_token,
        )
        .await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(rates(&body), Vec::<String>::new(), "{body}");
    let all = get(
        &app,
        &admin.access_token,
        "/api/v1/trade/forex/history?page_size=2",
    )
    .await;
    assert_eq!(all["pagination"]["total"], 5);
    assert_eq!(all["data"].as_array().map(Vec::len), Some(2));
    let r = app
        .get_as(
            "/api/v1/trade/forex/history?from=2025-04-01&to=2025-04-01&currency=EURO",
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem(r).await), ["currency", "to"]);
}

#[tokio::test]
async fn the_eleventh_create_in_a_minute_is_refused() {
    let app = spawn().await;
    let admin = app.register_org("fx-limit@acme.example", "Acme").await;
    for i in 0..10 {
        create_rate(
            &app,
            &admin,
            json!({"currency": "USD", "rate": format!("83.{i:02}")}),
        )
        .await;
    }
    let r = app
        .post_as(
            "/api/v1/trade/forex/rates",
            &admin.access_token,
            &json!({"currency": "USD", "rate": "84"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(problem(r).await.to_string().contains("trade.forex.create"));
    // Reads have their own allowance.
    let history = get(&app, &admin.access_token, "/api/v1/trade/forex/history").await;
    assert_eq!(history["pagination"]["total"], 10);
}

#[tokio::test]
async fn the_api_document_names_permissions_and_limits() {
    let app = spawn().await;
    let doc: Value = app
        .get("/api/openapi.json")
        .await
        .json()
        .await
        .expect("json");
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    for (path, method, policy, permission) in [
        (
            "/api/v1/trade/forex/rates",
            "post",
            Some("trade.forex.create"),
            "trade.forex.manage",
        ),
        (
            "/api/v1/trade/forex/latest",
            "get",
            Some("trade.forex.latest"),
            "trade.forex.read",
        ),
        (
            "/api/v1/trade/forex/history",
            "get",
            Some("trade.forex.history"),
            "trade.forex.read",
        ),
        (
            "/api/v1/trade/forex/alerts",
            "get",
            None,
            "trade.forex.read",
        ),
        (
            "/api/v1/trade/gst/summary",
            "get",
            None,
            "trade.reports.read",
        ),
        ("/api/v1/trade/dashboard", "get", None, "trade.reports.read"),
    ] {
        let o = op(path, method);
        assert!(o.is_object(), "{path} is documented");
        assert_eq!(
            o["x-rate-limit-policy"].as_str(),
            policy,
            "{path}: {}",
            o["x-rate-limit-policy"]
        );
        assert!(o["security"].to_string().contains(permission), "{path}");
    }
}

#[tokio::test]
async fn a_rate_answers_201_with_its_location_and_is_readable_in_its_organization_only() {
    let app = spawn().await;
    let admin = app.register_org("fx-one@acme.example", "Acme").await;
    app.invite_and_register(&admin, "fx-one-member@acme.example", "member", None)
        .await;
    let member = app
        .sign_in("fx-one-member@acme.example", keel_testkit::PASSWORD)
        .await;
    let other = app.register_org("fx-one@other.example", "Other").await;
    let r = app
        .post_as(
            "/api/v1/trade/forex/rates",
            &admin.access_token,
            &json!({"currency": "USD", "rate": "83.25"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let created: Value = r.json().await.expect("json");
    assert_eq!(
        location,
        format!(
            "/api/v1/trade/forex/rates/{}",
            created["id"].as_str().expect("id")
        )
    );
    let read = get(&app, &member.access_token, &location).await;
    assert_eq!(read["id"], created["id"]);
    assert_eq!(read["rate"], "83.25");
    assert_eq!(read["effective_at"], created["effective_at"]);
    assert_eq!(read["version"], 1);
    // Another organization gets what a missing rate gets.
    let theirs = app.get_as(&location, &other.access_token).await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    let missing = app
        .get_as(
            &format!("/api/v1/trade/forex/rates/{}", uuid::Uuid::now_v7()),
            &admin.access_token,
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        problem(theirs).await["type"],
        problem(missing).await["type"]
    );
}

#[tokio::test]
async fn a_back_dated_rate_is_compared_with_the_rate_in_force_before_its_date() {
    let app = spawn().await;
    let admin = app.register_org("fx-back@acme.example", "Acme").await;
    let january = create_rate(
        &app,
        &admin,
        json!({"currency": "USD", "rate": "80", "effective_at": "2025-01-01"}),
    )
    .await;
    create_rate(
        &app,
        &admin,
        json!({"currency": "USD", "rate": "100", "effective_at": "2025-06-01"}),
    )
    .await;
    // March: 82 against January's 80 (+2.5 %), not against June's 100.
    let march = create_rate(
        &app,
        &admin,
        json!({"currency": "USD", "rate": "82", "effective_at": "2025-03-01"}),
    )
    .await;
    assert_eq!(march["alert"], Value::Null, "{march}");
    // April: 90 against March's 82 (+9.7561 %).
    let april = create_rate(
        &app,
        &admin,
        json!({"currency": "USD", "rate": "90", "effective_at": "2025-04-01"}),
    )
    .await;
    assert_eq!(april["alert"]["previous_rate_id"], march["id"], "{april}");
    assert_eq!(april["alert"]["change_percent"], "9.7560");
    assert_ne!(april["alert"]["previous_rate_id"], january["id"]);
}

/// Two rates of one currency recorded at once: each is compared with the rates committed
/// before it, so the second is compared with the first, never both with the same previous
/// rate (PostgreSQL runs the two transactions in parallel; the series row queues them).
#[tokio::test]
async fn rates_of_one_currency_recorded_at_once_are_compared_one_after_the_other() {
    let app = common::builder()
        .configure(|c| {
            c.rate_limits.policies.insert(
                "trade.forex.create".into(),
                keel_kernel::limits::PolicyOverride {
                    limit: Some(1_000),
                    ..Default::default()
                },
            );
        })
        .spawn()
        .await
        .expect("server starts");
    let admin = app.register_org("fx-race@acme.example", "Acme").await;
    for currency in ["USD", "EUR", "GBP", "AED"] {
        let base = create_rate(
            &app,
            &admin,
            json!({"currency": currency, "rate": "100", "effective_at": "2025-01-01"}),
        )
        .await;
        let (a, b) = tokio::join!(
            create_rate(&app, &admin, json!({"currency": currency, "rate": "110"})),
            create_rate(&app, &admin, json!({"currency": currency, "rate": "121"})),
        );
        // Both moved 10 % from what they were compared with, so both raised an alert.
        let (first, second) = if a["effective_at"].as_str() < b["effective_at"].as_str()
            || (a["effective_at"] == b["effective_at"] && a["id"].as_str() < b["id"].as_str())
        {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(first["alert"]["previous_rate_id"], base["id"], "{first}");
        assert_eq!(
            second["alert"]["previous_rate_id"], first["id"],
            "{currency}: the later rate is compared with the earlier one: {second}"
        );
    }
}

#[tokio::test]
async fn latest_allows_60_and_history_30_requests_a_minute_per_user() {
    let app = spawn().await;
    let admin = app.register_org("fx-reads@acme.example", "Acme").await;
    app.invite_and_register(&admin, "fx-reads-member@acme.example", "member", None)
        .await;
    let member = app
        .sign_in("fx-reads-member@acme.example", keel_testkit::PASSWORD)
        .await;
    for (path, policy, limit) in [
        ("/api/v1/trade/forex/latest", "trade.forex.latest", 60),
        ("/api/v1/trade/forex/history", "trade.forex.history", 30),
    ] {
        for i in 0..limit {
            let r = app.get_as(path, &admin.access_token).await;
            assert_eq!(r.status(), StatusCode::OK, "{path} #{i}");
            assert_eq!(r.headers()["ratelimit-limit"], limit.to_string().as_str());
        }
        let r = app.get_as(path, &admin.access_token).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert!(r.headers().contains_key("retry-after"));
        assert!(problem(r).await.to_string().contains(policy));
        // The allowance is per user: another user of the organization still reads.
        let r = app.get_as(path, &member.access_token).await;
        assert_eq!(r.status(), StatusCode::OK, "{path} for another user");
    }
}
