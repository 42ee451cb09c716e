//! Shipment exports: the same rows in the same order as the list for the same filters and
//! sort (all pages), CSV that parses with formulas neutralised, XLSX that opens, the job path
//! above the threshold (202 with the job, whose result links the file) with its download,
//! and no download for another organization.

mod common;

use std::io::Read as _;
use std::time::Duration;

use common::{act, create_shipment, id_of, spawn, spawn_with_settings};
use keel_testkit::{Session, TestApp, problem};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Parses RFC 4180 CSV (quoted fields, doubled quotes, CRLF).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

/// Every id the list shows for `query`, walking all pages by cursor.
async fn list_ids(app: &TestApp, who: &Session, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("/api/v1/trade/shipments?page_size=2&{query}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app
            .get_as(&url, &who.access_token)
            .await
            .json()
            .await
            .expect("json");
        for s in page["data"].as_array().expect("data") {
            ids.push(id_of(s));
        }
        match page["pagination"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
}

async fn export_csv(app: &TestApp, who: &Session, query: &str) -> Vec<Vec<String>> {
    let r = app
        .get_as(
            &format!("/api/v1/trade/shipments/export?{query}"),
            &who.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/csv"),
        "{:?}",
        r.headers()
    );
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .expect("cd")
            .starts_with("attachment")
    );
    // The `trade.export` policy counts exports (60 an hour per organization).
    assert_eq!(r.headers()["ratelimit-limit"], "60", "{:?}", r.headers());
    parse_csv(&r.text().await.expect("text"))
}

fn ids_of(rows: &[Vec<String>]) -> Vec<String> {
    rows[1..].iter().map(|r| r[0].clone()).collect()
}

/// The text of every cell in an XLSX's first sheet (shared and inline strings, numbers).
fn xlsx_text(bytes: &[u8]) -> String {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("an xlsx is a zip");
    let mut out = String::new();
    for name in ["xl/worksheets/sheet1.xml", "xl/sharedStrings.xml"] {
        if let Ok(mut f) = zip.by_name(name) {
            f.read_to_string(&mut out).expect("xml");
        }
    }
    assert!(out.contains("<sheetData"), "the sheet is there");
    out
}

async fn seed(app: &TestApp, who: &Session) -> Vec<Value> {
    let mut made = Vec::new();
    for (i, (country, name)) in [
        ("DE", "Hamburg Imports GmbH"),
        ("US", "=HYPERLINK(\"http://evil.example\",\"x\")"),
        ("DE", "Comma, \"Quoted\" & Co"),
        ("FR", "+33 Traders"),
        ("DE", "@Risk Ltd"),
        ("US", "-minus Inc"),
        ("DE", "Plain Buyer"),
    ]
    .iter()
    .enumerate()
    {
        made.push(
            create_shipment(
                app,
                who,
                &format!("EXP-{i}"),
                json!({"destination_country": country, "buyer_name": name}),
            )
            .await,
        );
    }
    assert_eq!(
        act(app, who, &id_of(&made[0]), "book").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        act(app, who, &id_of(&made[2]), "book").await.status(),
        StatusCode::OK
    );
    made
}

#[tokio::test]
async fn exports_have_the_rows_the_list_has_for_the_same_filters() {
    let app = spawn().await;
    let admin = app.register_org("x@acme.example", "Acme").await;
    let made = seed(&app, &admin).await;
    let other = app.register_org("x@other.example", "Other").await;
    create_shipment(&app, &other, "THEIRS", json!({})).await;

    for query in [
        "",
        "destination_country=DE",
        "status=booked",
        "status=draft&destination_country=us",
        "q=inc",
        "ebrc_status=realized",
        "created_from=2000-01-01",
        "created_to=2100-01-01",
        "created_to=2000-01-01",
        "created_from=2000-01-01&created_to=2100-01-01&destination_country=DE",
        "sort=reference",
        "sort=-reference",
        "sort=created_at",
        "sort=-created_at&status=draft",
        "sort=reference&created_to=2100-01-01&q=inc",
    ] {
        let rows = export_csv(&app, &admin, query).await;
        assert_eq!(rows[0][0], "id");
        assert_eq!(rows[0].len(), 20);
        assert!(rows.iter().all(|r| r.len() == 20), "{rows:?}");
        assert_eq!(
            ids_of(&rows),
            list_ids(&app, &admin, query).await,
            "parity for {query:?}"
        );
    }
    let rows = export_csv(&app, &admin, "").await;
    assert_eq!(rows.len(), 1 + made.len(), "only this organization's");

    // Formulas are neutralised; commas and quotes survive quoting.
    let names: Vec<&str> = rows[1..].iter().map(|r| r[3].as_str()).collect();
    for expected in [
        "'=HYPERLINK(\"http://evil.example\",\"x\")",
        "'+33 Traders",
        "'@Risk Ltd",
        "'-minus Inc",
        "Comma, \"Quoted\" & Co",
        "Plain Buyer",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let first = &rows[rows.len() - 1];
    assert_eq!(first[1], "EXP-0");
    assert_eq!(first[10], "1250000");
    assert_eq!(first[11], "EUR");
    assert_eq!(first[15], "booked");

    // The order is the list's: sorted by reference, the file runs EXP-0 … EXP-6.
    let by_reference: Vec<String> = export_csv(&app, &admin, "sort=reference").await[1..]
        .iter()
        .map(|r| r[1].clone())
        .collect();
    let expected: Vec<String> = (0..made.len()).map(|i| format!("EXP-{i}")).collect();
    assert_eq!(by_reference, expected);

    // Bad format, bad filters and a sort the list does not offer are named together.
    let r = app
        .get_as(
            "/api/v1/trade/shipments/export?format=pdf&status=lost&sort=buyer_name",
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = problem(r).await.to_string();
    assert!(
        p.contains("format") && p.contains("status") && p.contains("\"sort\""),
        "{p}"
    );
    // The API document names both file types the export answers with.
    let doc: Value = app
        .get("/api/openapi.json")
        .await
        .json()
        .await
        .expect("json");
    let content =
        &doc["paths"]["/api/v1/trade/shipments/export"]["get"]["responses"]["200"]["content"];
    assert!(content.get("text/csv").is_some(), "{content}");
    assert!(
        content
            .get("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
            .is_some(),
        "{content}"
    );
    // The export route is not taken for a shipment id, and ids still route.
    let r = app
        .get_as(
            &format!("/api/v1/trade/shipments/{}", id_of(&made[0])),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn xlsx_exports_open_with_the_same_rows() {
    let app = spawn().await;
    let admin = app.register_org("xl@acme.example", "Acme").await;
    let made = seed(&app, &admin).await;
    let r = app
        .get_as(
            "/api/v1/trade/shipments/export?format=xlsx&destination_country=DE",
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    let text = xlsx_text(&r.bytes().await.expect("bytes"));
    let de: Vec<String> = list_ids(&app, &admin, "destination_country=DE").await;
    assert_eq!(de.len(), 4);
    for s in &made {
        let id = id_of(s);
        assert_eq!(text.contains(&id), de.contains(&id), "{id}");
    }
    assert!(text.contains("reference") && text.contains("EXP-0"));
    // Text is stored as text, never as a formula.
    assert!(!text.contains("<f>"), "no formula cells");
}

async fn wait_ready(app: &TestApp, who: &Session, export_url: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e: Value = app
            .get_as(export_url, &who.access_token)
            .await
            .json()
            .await
            .expect("json");
        if e["status"] == "ready" {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the export job finishes: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_job(app: &TestApp, who: &Session, job_url: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let job: Value = app
            .get_as(job_url, &who.access_token)
            .await
            .json()
            .await
            .expect("json");
        if job["status"] == "succeeded" {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the export job succeeds: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn large_exports_run_as_a_job_and_only_the_organization_downloads_them() {
    let app = spawn_with_settings(json!({ "export_async_rows": 3 })).await;
    let admin = app.register_org("big@acme.example", "Acme").await;
    let made = seed(&app, &admin).await;
    let other = app.register_org("big@other.example", "Other").await;

    // Up to the threshold the file comes at once.
    let rows = export_csv(&app, &admin, "status=booked").await;
    assert_eq!(rows.len(), 3);

    for format in ["csv", "xlsx"] {
        let r = app
            .get_as(
                &format!("/api/v1/trade/shipments/export?format={format}"),
                &admin.access_token,
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{format}");
        // Async work as everywhere: the job in Location and {"job_id", "status": "queued"}.
        let location = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let queued: Value = r.json().await.expect("json");
        assert_eq!(queued["status"], "queued");
        let job_id = queued["job_id"].as_str().expect("job").to_string();
        assert_eq!(location, format!("/api/v1/jobs/{job_id}"));
        let export_url = queued["export_url"].as_str().expect("url").to_string();
        let download = queued["download_url"].as_str().expect("url").to_string();
        let job: Value = app
            .get_as(&location, &admin.access_token)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(job["queue"], "export", "{job}");

        // The job's result links the file once it succeeded.
        let job = wait_job(&app, &admin, &location).await;
        assert_eq!(job["result"]["download_url"], download.as_str(), "{job}");
        assert_eq!(job["result"]["export_url"], export_url.as_str(), "{job}");
        assert_eq!(job["result"]["rows"], made.len(), "{job}");

        let ready = wait_ready(&app, &admin, &export_url).await;
        assert_eq!(ready["row_count"], made.len());
        // Its state moved on (queued with its job, then ready): so did its version.
        assert!(ready["version"].as_i64().is_some_and(|v| v > 1), "{ready}");
        assert!(
            ready["updated_at"].as_str() >= ready["created_at"].as_str(),
            "{ready}"
        );
        assert_eq!(ready["download_url"], download.as_str());

        // Another organization sees neither the export nor its file.
        assert_eq!(
            app.get_as(&export_url, &other.access_token).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            app.get_as(&download, &other.access_token).await.status(),
            StatusCode::NOT_FOUND
        );

        let r = app.get_as(&download, &admin.access_token).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()["content-disposition"]
                .to_str()
                .expect("cd")
                .contains(&format!(".{format}"))
        );
        let bytes = r.bytes().await.expect("bytes");
        let all = list_ids(&app, &admin, "").await;
        if format == "csv" {
            let rows = parse_csv(std::str::from_utf8(&bytes).expect("utf8"));
            assert_eq!(ids_of(&rows), all);
        } else {
            let text = xlsx_text(&bytes);
            assert!(all.iter().all(|id| text.contains(id)));
        }
    }

    // The job keeps the list's sort too.
    let r = app
        .get_as(
            "/api/v1/trade/shipments/export?sort=-reference",
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let queued: Value = r.json().await.expect("json");
    wait_ready(&app, &admin, queued["export_url"].as_str().expect("url")).await;
    let r = app
        .get_as(
            queued["download_url"].as_str().expect("url"),
            &admin.access_token,
        )
        .await;
    let rows = parse_csv(&r.text().await.expect("text"));
    assert_eq!(
        ids_of(&rows),
        list_ids(&app, &admin, "sort=-reference").await
    );
}

#[tokio::test]
async fn a_streamed_export_joins_its_batches_without_gaps_or_repeats() {
    use keel_kernel::tenancy::TenantScope;
    use keel_trade::shipments::store;
    let app = spawn().await;
    let admin = app.register_org("many@acme.example", "Acme").await;
    // More rows than two read batches, written straight through the store (quicker than
    // 1,201 requests); the tallies move as for any insert.
    let scope = TenantScope::for_tests(admin.org_id);
    let mut tx = app.state.db.begin().await.expect("begin");
    for i in 0..1_201 {
        let fields = store::Fields {
            reference: format!("BULK-{i:05}"),
            buyer_partner_id: None,
            buyer_name: format!("Buyer {i}"),
            buyer_country: None,
            destination_country: if i % 3 == 0 { "US" } else { "DE" }.into(),
            port_of_loading: None,
            port_of_discharge: None,
            incoterm: None,
            hs_codes: store::HsCodes(vec!["850440".into()]),
            invoice_value_minor: 1_000 + i,
            currency: "USD".into(),
            shipping_bill_number: None,
            shipping_bill_date: None,
            export_type: "lut".into(),
        };
        store::insert(&mut tx, &scope, &fields, None)
            .await
            .expect("insert");
    }
    tx.commit().await.expect("commit");

    for query in [
        "",
        "destination_country=US",
        "sort=reference",
        "sort=-reference",
    ] {
        let rows = export_csv(&app, &admin, query).await;
        let ids = ids_of(&rows);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "no row twice");
        let mut listed = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("/api/v1/trade/shipments?page_size=100&{query}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: Value = app
                .get_as(&url, &admin.access_token)
                .await
                .json()
                .await
                .expect("json");
            listed.extend(page["data"].as_array().expect("data").iter().map(id_of));
            match page["pagination"]["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(ids, listed, "parity for {query:?}");
        let expected = if query.contains("US") { 401 } else { 1_201 };
        assert_eq!(ids.len(), expected, "{query}");
    }
}

#[tokio::test]
async fn a_partner_user_exports_and_downloads_only_their_partners_shipments() {
    let app = spawn_with_settings(json!({ "export_async_rows": 1 })).await;
    let admin = app.register_org("pp@acme.example", "Acme").await;
    let p1 = app.create_partner(&admin, "Partner One").await;
    let p2 = app.create_partner(&admin, "Partner Two").await;
    let mut theirs = Vec::new();
    for (i, p) in [Some(p1), Some(p1), Some(p2), None].iter().enumerate() {
        let body = match p {
            Some(p) => json!({"buyer_partner_id": p, "buyer_name": null}),
            None => json!({}),
        };
        let s = create_shipment(&app, &admin, &format!("PP-{i}"), body).await;
        if *p == Some(p1) {
            theirs.push(id_of(&s));
        }
    }
    theirs.reverse(); // newest first
    app.invite_and_register(&admin, "one@partner.example", "partner", Some(p1))
        .await;
    app.invite_and_register(&admin, "two@partner.example", "partner", Some(p2))
        .await;
    let one = app
        .sign_in("one@partner.example", keel_testkit::PASSWORD)
        .await;
    let two = app
        .sign_in("two@partner.example", keel_testkit::PASSWORD)
        .await;

    let r = app
        .get_as("/api/v1/trade/shipments/export", &one.access_token)
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let queued: Value = r.json().await.expect("json");
    let export_url = queued["export_url"].as_str().expect("url").to_string();
    let download = queued["download_url"].as_str().expect("url").to_string();
    wait_ready(&app, &one, &export_url).await;
    let r = app.get_as(&download, &one.access_token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let rows = parse_csv(&r.text().await.expect("text"));
    assert_eq!(
        ids_of(&rows),
        theirs,
        "the job kept the partner's restriction"
    );
    // Another partner's user of the same organization cannot read it.
    assert_eq!(
        app.get_as(&export_url, &two.access_token).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get_as(&download, &two.access_token).await.status(),
        StatusCode::NOT_FOUND
    );
    // The organization's own staff can.
    assert_eq!(
        app.get_as(&download, &admin.access_token).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_export_whose_job_fails_for_good_says_so() {
    use keel_kernel::tenancy::TenantScope;
    use keel_trade::export::job::ExportShipments;
    use keel_trade::export::{Format, store};
    use sea_query::{Expr, ExprTrait, Query};
    let app = spawn().await;
    let admin = app.register_org("fail@acme.example", "Acme").await;
    let scope = TenantScope::for_tests(admin.org_id);
    let mut tx = app.state.db.begin().await.expect("begin");
    let e = store::insert(
        &mut tx,
        &scope,
        Format::Csv,
        &store::StoredFilter::default(),
        None,
    )
    .await
    .expect("insert");
    // A format no code writes: the job cannot succeed.
    tx.execute(
        &Query::update()
            .table(store::TABLE)
            .values([("format", "pdf".into())])
            .and_where(Expr::col("id").eq(e.id))
            .to_owned(),
    )
    .await
    .expect("update");
    app.state
        .jobs
        .enqueue(&mut tx, Some(&scope), &ExportShipments { export_id: e.id })
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    let url = format!("/api/v1/trade/exports/{}", e.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now: Value = app
            .get_as(&url, &admin.access_token)
            .await
            .json()
            .await
            .expect("json");
        if now["status"] == "failed" {
            assert_eq!(now["download_url"], Value::Null);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the export is marked failed: {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = app
        .get_as(&format!("{url}/download"), &admin.access_token)
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(problem(r).await.to_string().contains("failed"));
}
