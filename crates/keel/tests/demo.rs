//! `keel demo seed`: the real binary creates the demo organization, its users and a batch of
//! shipments with their payments, forex rates and a few documents; the printed credentials
//! sign in, the totals the API reports equal the rows, every realised shipment's payments add
//! up to its value (bank fields sealed), the GST summary and the dashboard convert with the
//! seeded rates, the documents download, the partner user sees only their partner's
//! shipments, and a second run adds a batch.

use std::sync::Arc;

use keel_testkit::TestApp;
use reqwest::StatusCode;
use serde_json::Value;

fn keel_demo(app: &TestApp, args: &[&str]) -> std::process::Output {
    let config = &app.state.config;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.current_dir(app.db.data_dir()).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("KEEL_DATA_DIR", app.db.data_dir())
        .env("KEEL_DATABASE_URL", config.database_url())
        .env("KEEL_LOG__LEVEL", "error");
    if let Some(schema) = &config.database.schema {
        cmd.env("KEEL_DATABASE__SCHEMA", schema);
    }
    // The server under test must open what the seed seals (payments' bank fields).
    if let Some(key) = &config.encryption_key {
        cmd.env("KEEL_ENCRYPTION_KEY", key.expose());
    }
    cmd.args(["demo", "seed"])
        .args(args)
        .output()
        .expect("run keel")
}

async fn total(app: &TestApp, token: &str, query: &str) -> u64 {
    let r = app
        .get_as(&format!("/api/v1/trade/shipments?{query}"), token)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    body["pagination"]["total"].as_u64().expect("a total")
}

async fn count(app: &TestApp, filter: &str) -> u64 {
    scalar(
        app,
        &format!("SELECT COUNT(*) AS n FROM trade_shipments WHERE deleted_at IS NULL {filter}"),
    )
    .await
}

/// A query's one `n` (a count).
async fn scalar(app: &TestApp, sql: &str) -> u64 {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct N {
        n: i64,
    }
    let n: N = match &app.state.db {
        keel_kernel::store::Db::Sqlite(sqlite) => N {
            n: sqlite
                .with_connection(|c| c.query_row(sql, [], |r| r.get(0)))
                .await
                .expect("count"),
        },
        keel_kernel::store::Db::Postgres(pool) => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_one(pool.pool())
                .await
                .expect("count")
        }
    };
    u64::try_from(n.n).unwrap_or(0)
}

#[tokio::test]
async fn the_demo_seed_signs_in_and_its_totals_equal_the_rows() {
    let app = TestApp::builder()
        .module(Arc::new(keel_trade::TradeModule))
        .spawn()
        .await
        .expect("server");
    let out = keel_demo(&app, &["--shipments", "1500"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let accounts = report["accounts"].as_array().expect("accounts");
    assert_eq!(accounts.len(), 3);
    let password = accounts[0]["password"]
        .as_str()
        .expect("a generated password");
    assert!(password.len() >= 20);

    let admin = app
        .sign_in("admin@demo-exports.example.com", password)
        .await;
    assert_eq!(total(&app, &admin.access_token, "").await, 1500);
    for status in ["draft", "booked", "in_transit", "delivered", "cancelled"] {
        assert_eq!(
            total(&app, &admin.access_token, &format!("status={status}")).await,
            count(&app, &format!("AND status = '{status}'")).await,
            "{status}"
        );
    }
    for ebrc in ["pending", "filed", "realized", "overdue"] {
        assert_eq!(
            total(&app, &admin.access_token, &format!("ebrc_status={ebrc}")).await,
            count(&app, &format!("AND ebrc_status = '{ebrc}'")).await,
            "{ebrc}"
        );
    }
    assert!(
        count(&app, "AND status = 'delivered'").await > 500,
        "a realistic mix"
    );
    // On PostgreSQL the planner's statistics describe the loaded rows at once (a table
    // never analyzed says -1), so the first list requests walk the index instead of sorting.
    if let keel_kernel::store::Db::Postgres(pool) = &app.state.db {
        let (tuples,): (f32,) = sqlx::query_as(
            "SELECT reltuples FROM pg_class WHERE oid = 'trade_shipments'::regclass",
        )
        .fetch_one(pool.pool())
        .await
        .expect("reltuples");
        assert!(tuples >= 1500.0, "statistics after the seed: {tuples}");
    }

    // Payments: every realised shipment's add up to its invoice value (and to its
    // realized_minor); no other shipment has more paid than it records.
    let realised = count(&app, "AND ebrc_status = 'realized'").await;
    assert!(realised > 100, "a realistic share is realised: {realised}");
    let unpaid = scalar(
        &app,
        "SELECT COUNT(*) AS n FROM trade_shipments s WHERE s.ebrc_status = 'realized' \
         AND s.invoice_value_minor <> (SELECT COALESCE(SUM(p.amount_minor), 0) \
         FROM trade_payments p WHERE p.shipment_id = s.id)",
    )
    .await;
    assert_eq!(unpaid, 0, "realised shipments whose payments do not add up");
    let mismatched = scalar(
        &app,
        "SELECT COUNT(*) AS n FROM trade_shipments s WHERE s.realized_minor <> \
         (SELECT COALESCE(SUM(p.amount_minor), 0) FROM trade_payments p WHERE p.shipment_id = s.id)",
    )
    .await;
    assert_eq!(
        mismatched, 0,
        "realized_minor is the sum of each shipment's payments"
    );
    let payments: Value = app
        .get_as("/api/v1/trade/payments?page_size=1", &admin.access_token)
        .await
        .json()
        .await
        .expect("json");
    let paid = payments["pagination"]["total"].as_u64().expect("a total");
    assert!(
        paid >= realised,
        "{paid} payments for {realised} realised shipments"
    );
    // Their bank fields are sealed at rest and open through the API.
    let sealed = scalar(
        &app,
        "SELECT COUNT(*) AS n FROM trade_payments WHERE bank_reference NOT LIKE 'v1.%' \
         OR account_number NOT LIKE 'v1.%'",
    )
    .await;
    assert_eq!(sealed, 0, "every bank field is ciphertext");
    let one: Value = app
        .get_as(
            &format!(
                "/api/v1/trade/payments/{}",
                payments["data"][0]["id"].as_str().expect("a payment")
            ),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    assert!(
        one["bank_reference"]
            .as_str()
            .is_some_and(|r| r.len() > 8 && !r.contains('*')),
        "{one}"
    );

    // Rates: every supported currency, weekly over the two years.
    let latest: Value = app
        .get_as("/api/v1/trade/forex/latest", &admin.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        latest["rates"].as_array().map(Vec::len),
        Some(21),
        "{latest}"
    );
    let rates = scalar(&app, "SELECT COUNT(*) AS n FROM trade_forex_rates").await;
    assert!(rates >= 21 * 100, "{rates} rates");
    // ... so the GST summary of every seeded month converts each shipment.
    let month = chrono::Utc::now().date_naive() - chrono::Duration::days(200);
    let gst: Value = app
        .get_as(
            &format!(
                "/api/v1/trade/gst/summary?year={}&month={}",
                chrono::Datelike::year(&month),
                chrono::Datelike::month(&month)
            ),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    assert!(gst["total"]["shipments"].as_u64() > Some(10), "{gst}");
    assert_eq!(gst["total"]["unconverted_shipments"], 0, "{gst}");
    assert!(gst["total"]["inr_minor"].as_i64() > Some(0), "{gst}");
    let dashboard: Value = app
        .get_as("/api/v1/trade/dashboard", &admin.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        dashboard["this_month"]["unconverted_shipments"], 0,
        "{dashboard}"
    );

    // Documents, stored through the kernel's file storage: a few, and they download.
    let documents = scalar(&app, "SELECT COUNT(*) AS n FROM trade_documents").await;
    assert_eq!(
        documents, 6,
        "an invoice and a shipping bill for three shipments"
    );
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Doc {
        id: uuid::Uuid,
    }
    let sql = "SELECT id FROM trade_documents";
    let doc: Doc = match &app.state.db {
        keel_kernel::store::Db::Sqlite(sqlite) => sqlite
            .with_connection(|c| c.query_row(sql, [], |r| r.get::<_, Vec<u8>>(0)))
            .await
            .map(|b| Doc {
                id: uuid::Uuid::from_slice(&b).expect("a uuid"),
            })
            .map_err(|e| e.to_string()),
        keel_kernel::store::Db::Postgres(pool) => sqlx::query_as(sql)
            .fetch_one(pool.pool())
            .await
            .map_err(|e| e.to_string()),
    }
    .expect("a document");
    let r = app
        .get_as(
            &format!("/api/v1/trade/documents/{}/content", doc.id),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert!(r.bytes().await.expect("bytes").starts_with(b"%PDF"));

    // The partner user sees only the shipments of their partner.
    let buyer = app
        .sign_in("buyer@demo-exports.example.com", password)
        .await;
    let seen = total(&app, &buyer.access_token, "").await;
    assert_eq!(seen, count(&app, "AND buyer_partner_id IS NOT NULL").await);
    assert!(seen > 0 && seen < 1500);
    let page: Value = app
        .get_as("/api/v1/trade/shipments?page_size=100", &buyer.access_token)
        .await
        .json()
        .await
        .expect("json");
    for s in page["data"].as_array().expect("data") {
        assert_eq!(s["buyer_name"], "Hamburg Imports GmbH");
    }

    // A second run adds a batch to the same organization and prints no password.
    let again = keel_demo(&app, &["--shipments", "500"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let report: Value = serde_json::from_slice(&again.stdout).expect("a JSON report");
    assert!(report["accounts"][0]["password"].is_null());
    assert_eq!(total(&app, &admin.access_token, "").await, 2000);
    // Rates are seeded once per currency; payments and documents come with the new batch.
    assert_eq!(
        scalar(&app, "SELECT COUNT(*) AS n FROM trade_forex_rates").await,
        rates
    );
    assert_eq!(
        scalar(&app, "SELECT COUNT(*) AS n FROM trade_documents").await,
        12
    );
    let unpaid = scalar(
        &app,
        "SELECT COUNT(*) AS n FROM trade_shipments s WHERE s.ebrc_status = 'realized' \
         AND s.invoice_value_minor <> (SELECT COALESCE(SUM(p.amount_minor), 0) \
         FROM trade_payments p WHERE p.shipment_id = s.id)",
    )
    .await;
    assert_eq!(unpaid, 0);

    // A weak --password is refused before anything is written.
    let weak = keel_demo(&app, &["--shipments", "10", "--password", "short"]);
    assert!(!weak.status.success());
    assert_eq!(total(&app, &admin.access_token, "").await, 2000);
}

/// `keel serve --demo` on an empty data directory: seeds on first start, prints how to sign
/// in, and the printed password works against the running server.
#[tokio::test]
async fn serve_demo_seeds_on_first_start_and_prints_how_to_sign_in() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.current_dir(dir.path()).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    let mut child = cmd
        .args(["serve", "--demo"])
        .env("KEEL_LISTEN", "127.0.0.1:0")
        .env("KEEL_LOG__FORMAT", "json")
        .env("KEEL_AUTH__ARGON2_MEMORY_KIB", "1024")
        .env("KEEL_AUTH__ARGON2_ITERATIONS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel serve --demo");
    let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let tx_out = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                let _ = tx_out.send(("addr".into(), addr));
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("admin@demo-exports.example.com")
                && let Some(p) = line.split("password: ").nth(1)
            {
                let _ = tx.send(("password".into(), p.trim().to_string()));
            }
        }
    });
    let (mut addr, mut password) = (None, None);
    while addr.is_none() || password.is_none() {
        let (k, v) = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("keel serve --demo printed its address and the demo password");
        if k == "addr" {
            addr = Some(v);
        } else {
            password = Some(v);
        }
    }
    let (addr, password) = (addr.unwrap_or_default(), password.unwrap_or_default());
    let client = keel_testkit::client();
    let login: Value = client
        .post(format!("http://{addr}/api/v1/auth/login"))
        .json(&serde_json::json!({"email": "admin@demo-exports.example.com", "password": password}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["access_token"]
        .as_str()
        .expect("signed in")
        .to_string();
    let list: Value = client
        .get(format!("http://{addr}/api/v1/trade/shipments"))
        .bearer_auth(token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["pagination"]["total"], 200);
    let _ = child.kill();
    let _ = child.wait();
}
