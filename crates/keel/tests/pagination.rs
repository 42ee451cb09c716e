//! Lists as the API conventions promise: numbered pages with exact totals, and keyset cursors
//! for deep pages — every page carries the cursor of the next, a client may switch from pages
//! to cursors at any point, and following cursors visits every row once, in order.

use keel_testkit::TestApp;
use reqwest::StatusCode;
use serde_json::Value;

async fn page(app: &TestApp, token: &str, query: &str) -> Value {
    let r = app
        .get_as(&format!("/api/v1/partners?{query}"), token)
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    r.json().await.expect("json")
}

fn names(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn cursors_visit_every_row_once_in_order_and_pages_switch_to_them() {
    let app = TestApp::spawn().await;
    let admin = app.register_org("pages@acme.example", "Acme").await;
    // Two partners share a name: the id breaks the tie, so neither is skipped or repeated.
    let mut expected = Vec::new();
    for name in [
        "Delta", "Alpha", "Echo", "Bravo", "Bravo", "Charlie", "Foxtrot",
    ] {
        app.create_partner(&admin, name).await;
        expected.push(name.to_string());
    }
    expected.sort();
    let other = app.register_org("pages@other.example", "Other").await;
    app.create_partner(&other, "Aardvark").await;

    // Numbered page 1 carries the cursor of page 2.
    let first = page(&app, &admin.access_token, "page_size=3&sort=name").await;
    assert_eq!(names(&first), expected[..3]);
    assert_eq!(first["pagination"]["total"], 7);
    assert_eq!(first["pagination"]["page"], 1);
    let mut cursor = first["pagination"]["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_string();
    let mut seen = names(&first);
    let mut hops = 0;
    loop {
        let next = page(
            &app,
            &admin.access_token,
            &format!("page_size=3&cursor={cursor}"),
        )
        .await;
        assert!(
            next["pagination"]["total"].is_null(),
            "no total in cursor mode"
        );
        assert!(next["pagination"]["page"].is_null());
        seen.extend(names(&next));
        hops += 1;
        match next["pagination"]["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
        assert!(hops < 10, "cursors must end");
    }
    assert_eq!(
        seen, expected,
        "every row once, in order, no other tenant's"
    );

    // Descending by creation, the same way.
    let newest = page(&app, &admin.access_token, "page_size=4&sort=-created_at").await;
    let c = newest["pagination"]["next_cursor"]
        .as_str()
        .expect("cursor");
    let rest = page(
        &app,
        &admin.access_token,
        &format!("page_size=4&cursor={c}"),
    )
    .await;
    assert_eq!(names(&newest).len() + names(&rest).len(), 7);
    assert!(rest["pagination"]["next_cursor"].is_null(), "the last page");

    // The last numbered page has no next cursor.
    let last = page(&app, &admin.access_token, "page_size=7&sort=name").await;
    assert!(last["pagination"]["next_cursor"].is_null());

    // Misuse is a 422 naming the parameter.
    for (query, field) in [
        (format!("cursor={cursor}&page=2"), "page"),
        (format!("cursor={cursor}&sort=-name"), "sort"),
        ("cursor=bm90IGEgY3Vyc29y".to_string(), "cursor"),
    ] {
        let r = app
            .get_as(&format!("/api/v1/partners?{query}"), &admin.access_token)
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let body: Value = r.json().await.expect("problem");
        assert!(
            body["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .any(|e| e["field"] == field),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn the_audit_trail_and_jobs_page_by_cursor_too() {
    let app = TestApp::spawn().await;
    let admin = app.register_org("audit-pages@acme.example", "Acme").await;
    for i in 0..5 {
        app.create_partner(&admin, &format!("P{i}")).await;
    }
    let first: Value = app
        .get_as("/api/v1/audit/events?page_size=2", &admin.access_token)
        .await
        .json()
        .await
        .expect("json");
    let total = first["pagination"]["total"].as_u64().expect("total");
    assert!(total >= 5);
    let mut seqs: Vec<i64> = first["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    let mut cursor = first["pagination"]["next_cursor"]
        .as_str()
        .map(String::from);
    while let Some(c) = cursor {
        let next: Value = app
            .get_as(
                &format!("/api/v1/audit/events?page_size=2&cursor={c}"),
                &admin.access_token,
            )
            .await
            .json()
            .await
            .expect("json");
        seqs.extend(
            next["data"]
                .as_array()
                .expect("data")
                .iter()
                .filter_map(|e| e["seq"].as_i64()),
        );
        cursor = next["pagination"]["next_cursor"].as_str().map(String::from);
    }
    assert_eq!(seqs.len() as u64, total, "every event once");
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );

    let jobs = app
        .get_as("/api/v1/jobs?sort=created_at", &admin.access_token)
        .await;
    assert_eq!(jobs.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
