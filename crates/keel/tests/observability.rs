//! Observability as an operator uses it: the Prometheus families after real traffic (with
//! bounded labels), the admin JSON summaries and who may read them, slow-operation counting,
//! and — through the real binary — W3C trace context in log lines and OTLP span export.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use keel_kernel::housekeeping::Housekeeping;
use keel_kernel::jobs::{EnqueueOptions, ScheduledTick};
use keel_kernel::tenancy::TenantScope;
use keel_testkit::TestApp;
use reqwest::StatusCode;
use serde_json::Value;

/// Every test of this file uses the same threshold: it is per process.
const SLOW_MS: u64 = 150;

async fn spawn() -> TestApp {
    TestApp::builder()
        .configure(|c| c.log.slow_operation_ms = SLOW_MS)
        .spawn()
        .await
        .expect("spawn")
}

async fn json_of(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), StatusCode::OK, "unexpected status");
    r.json().await.expect("json")
}

#[tokio::test]
async fn the_admin_summaries_report_this_nodes_traffic_to_platform_admins_only() {
    let app = spawn().await;
    let root = app.setup_super_admin().await;
    let other = app.register_org("ops@acme.example", "Acme").await;
    for _ in 0..3 {
        let r = app.get("/api/v1/test/slow?ms=20").await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = app.get("/api/v1/test/panic").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);

    // Who may read: the platform super admin only.
    for path in [
        "/api/v1/metrics",
        "/api/v1/metrics/database",
        "/api/v1/metrics/jobs",
    ] {
        assert_eq!(app.get(path).await.status(), StatusCode::UNAUTHORIZED);
        let denied = app.get_as(path, &other.access_token).await;
        assert_eq!(denied.status(), StatusCode::FORBIDDEN, "{path}");
    }

    let summary = json_of(app.get_as("/api/v1/metrics", &root.access_token).await).await;
    assert_eq!(summary["window_secs"], 300);
    let route = |method: &str, path: &str| {
        summary["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["method"] == method && r["route"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("{method} {path} missing from {summary}"))
    };
    let slow = route("GET", "/api/v1/test/slow");
    assert_eq!(slow["count"], 3);
    assert_eq!(slow["errors"], 0);
    let p50 = slow["p50_ms"].as_f64().expect("p50");
    assert!(
        p50 >= 20.0,
        "p50 {p50} ms is below the 20 ms each request slept"
    );
    assert!(slow["p99_ms"].as_f64().expect("p99") >= p50);
    let panic = route("GET", "/api/v1/test/panic");
    assert_eq!(panic["errors"], 1, "a 500 is an error");
    assert_eq!(panic["error_rate"], 1.0);
    // Route templates, never concrete paths.
    assert!(
        summary["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .all(|r| !r["route"].as_str().unwrap_or("").contains("?"))
    );
    assert!(summary["total"]["count"].as_u64().expect("total") >= 4);
    assert!(
        summary["process"]["resident_memory_bytes"]
            .as_u64()
            .expect("rss")
            > 1_000_000
    );

    let db = json_of(
        app.get_as("/api/v1/metrics/database", &root.access_token)
            .await,
    )
    .await;
    let config = app.db.config();
    assert_eq!(db["pool"]["max"], config.database.max_connections);
    assert!(db["pool"]["acquires"].as_u64().expect("acquires") > 0);
    assert!(db["ping_ms"].as_f64().is_some());
    let ops = db["operations"].as_array().expect("operations");
    assert!(
        ops.iter().any(|o| o["op"] == "insert users"),
        "sign-up inserted a user: {ops:?}"
    );
    for o in ops {
        let name = o["op"].as_str().expect("op");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ' '),
            "an operation name carries only a verb and a table: {name:?}"
        );
        assert!(o["count"].as_u64().expect("count") >= 1);
    }
}

#[tokio::test]
async fn the_job_summary_shows_each_queues_backlog() {
    let app = spawn().await;
    let root = app.setup_super_admin().await;
    let org = app.register_org("jobs@acme.example", "Acme").await;
    let scope = TenantScope::for_tests(org.org_id);
    let mut tx = app.state.db.begin().await.expect("tx");
    for _ in 0..2 {
        app.state
            .jobs
            .enqueue_with(
                &mut tx,
                Some(&scope),
                &Housekeeping(ScheduledTick {
                    schedule: "test".into(),
                    tick_at: keel_kernel::store::now(),
                    missed_ticks: 0,
                }),
                EnqueueOptions::default().delay(Duration::from_secs(3600)),
            )
            .await
            .expect("enqueue");
    }
    tx.commit().await.expect("commit");

    let jobs = json_of(app.get_as("/api/v1/metrics/jobs", &root.access_token).await).await;
    let queue = jobs["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["queued"].as_i64().unwrap_or(0) >= 2)
        .cloned()
        .unwrap_or_else(|| panic!("no queue holds the two jobs: {jobs}"));
    assert_eq!(queue["due"], 0, "both jobs wait an hour");
    assert!(jobs["totals"]["queued"].as_i64().expect("total") >= 2);

    // The same backlog in Prometheus.
    let text = app.get("/metrics").await.text().await.expect("text");
    let name = queue["queue"].as_str().expect("queue name");
    let line = format!("keel_jobs{{queue=\"{name}\",state=\"queued\"}} ");
    let value: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .unwrap_or_else(|| panic!("{line} missing"))
        .trim()
        .parse()
        .expect("number");
    assert!(value >= 2.0);
}

#[tokio::test]
async fn prometheus_shows_every_family_with_bounded_labels() {
    let app = spawn().await;
    let admin = app.register_org("prom@acme.example", "Acme").await;
    let me = app.get_as("/api/v1/auth/me", &admin.access_token).await;
    assert_eq!(me.status(), StatusCode::OK);
    let r = app
        .get(&format!("/api/v1/test/slow?ms={}", SLOW_MS + 50))
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    let text = app.get("/metrics").await.text().await.expect("text");
    for family in [
        "keel_http_requests_total{method=\"GET\",route=\"/api/v1/auth/me\",status=\"2xx\"}",
        "keel_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/auth/me\"",
        "keel_http_requests_in_flight",
        "keel_db_query_duration_seconds_bucket{op=\"insert users\"",
        "keel_db_pool_connections{state=\"max\"}",
        "keel_db_pool_acquire_seconds_bucket{kind=\"transaction\"",
        "keel_auth_events_total{event=\"login\"}",
        "keel_rate_limit_decisions_total{",
        "keel_slow_operations_total{kind=\"request\"}",
        "keel_jobs{queue=",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
    ] {
        assert!(text.contains(family), "{family} missing from /metrics");
    }
    // No label carries an id, an email or a concrete path.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let labels = line.split('}').next().unwrap_or("");
        assert!(!labels.contains('@'), "an email in a label: {line}");
        let hexish = labels
            .split(|c: char| !c.is_ascii_hexdigit() && c != '-')
            .any(|w| w.len() >= 32 && w.matches('-').count() == 4);
        assert!(!hexish, "a UUID in a label: {line}");
        assert!(
            !labels.contains("?ms="),
            "a query string in a label: {line}"
        );
    }
}

// ---- the real binary: trace context in logs, OTLP export --------------------------------

/// A stand-in OpenTelemetry collector: records the bodies POSTed to `/v1/traces`.
async fn fake_collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = bodies.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                if let Ok(mut b) = seen.lock() {
                    b.push(body.to_vec());
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}"), bodies)
}

/// A `keel serve` child process, killed if a test ends (or panics) before stopping it.
struct Server {
    child: std::process::Child,
    /// Its working directory, removed once the server is gone.
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `keel serve` in a fresh directory on a free port, JSON log lines on its stdout
    /// (returned, piped), jobs and the scheduler off, with `env` added.
    fn start(env: &[(&str, &str)]) -> (Server, std::process::ChildStdout) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        cmd.current_dir(dir.path()).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.arg("serve")
            .env("KEEL_LISTEN", "127.0.0.1:0")
            .env("KEEL_LOG__FORMAT", "json")
            .env("KEEL_JOBS__ENABLED", "false")
            .env("KEEL_SCHEDULER__ENABLED", "false")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn keel serve");
        let stdout = child.stdout.take().expect("stdout");
        (Server { child, _dir: dir }, stdout)
    }

    /// Asks the server to stop (SIGTERM) without waiting for it.
    fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

/// The address of a "listening on http://…" log line.
fn listening_address(line: &str) -> Option<String> {
    let rest = line.split("listening on http://").nth(1)?;
    Some(
        rest.chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect(),
    )
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn a_callers_trace_id_reaches_the_log_lines_and_the_exported_spans() {
    // This test drives a separate `keel serve` process; its own HTTP client needs the TLS
    // crypto provider the server installs for itself.
    keel_kernel::server::install_crypto_provider();
    let (endpoint, bodies) = fake_collector().await;
    let (mut server, stdout) = Server::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_SERVICE_NAME", "keel-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = listening_address(&line) {
                    let _ = addr_tx.send(addr);
                }
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        });
    }
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("keel serve did not report its address");

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/api/openapi.json"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);

    // Spans reach the collector within a few batch intervals.
    let raw_id = {
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&trace_id[i * 2..i * 2 + 2], 16).expect("hex");
        }
        b
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let exported = loop {
        let found = bodies
            .lock()
            .map(|b| b.iter().any(|body| body.windows(16).any(|w| w == raw_id)))
            .unwrap_or(false);
        if found || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.terminate();
    let _ = server.child.wait();
    assert!(
        exported,
        "no span with the caller's trace id reached the collector"
    );

    let logged = lines.lock().map(|l| l.clone()).unwrap_or_default();
    let line = logged
        .iter()
        .find(|l| l.contains("request completed") && l.contains("/api/openapi.json"))
        .unwrap_or_else(|| panic!("no access-log line for the request: {logged:?}"));
    let json: Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(
        json["span"]["trace_id"], trace_id,
        "the log line carries the caller's trace id: {line}"
    );
}

/// The server writes its log lines from a thread of its own. A reader of its stdout that
/// stops reading must not hold up requests; and every request's access-log line must still
/// come out whole, once, and before the process exits, though the process is told to stop
/// while its lines are still waiting for that reader.
#[tokio::test]
async fn every_requests_log_line_is_written_whole_and_before_the_server_exits() {
    keel_kernel::server::install_crypto_provider();
    let (mut server, stdout) = Server::start(&[]);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = listening_address(&line) {
                let _ = addr_tx.send(addr);
                // Stop reading until the server is told to stop: the pipe fills (the
                // requests' lines are far more than it holds) and the lines queue.
                let _ = resume_rx.recv();
            }
            lines.push(line);
        }
        lines
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("keel serve did not report its address");

    // Many requests at once, each answered with its request id (some may be refused by the
    // anonymous rate limit: those are logged too).
    let client = reqwest::Client::new();
    let mut ids = std::collections::BTreeSet::new();
    let mut pending = futures::stream::iter(0..1_000)
        .map(|i| {
            let client = client.clone();
            let url = format!("http://{addr}/api/v1/no-such-route/{i}");
            async move { client.get(url).send().await.expect("request") }
        })
        .buffer_unordered(32);
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(response) = pending.next().await {
            let id = response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .expect("a request id")
                .to_string();
            ids.insert(id);
        }
    })
    .await;
    server.terminate();
    // The server shuts down while its last lines still wait for the reader; the lines queued
    // must be written before it exits, which it can do only once the reader reads again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = resume_tx.send(());
    assert!(
        answered.is_ok(),
        "requests waited for the log's reader: {} of 1000 answered in 60 s",
        ids.len()
    );
    assert_eq!(ids.len(), 1_000);
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "keel serve exited with {status}");
    let lines = reader.join().expect("reader");

    let mut logged = std::collections::BTreeMap::<String, usize>::new();
    for line in &lines {
        let json: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not one JSON document ({e}): {line}"));
        if json["message"] == "request completed"
            && let Some(id) = json["span"]["request_id"].as_str()
        {
            *logged.entry(id.to_string()).or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(
            logged.get(id),
            Some(&1),
            "request {id} has {} access-log lines",
            logged.get(id).copied().unwrap_or(0)
        );
    }
    assert_eq!(
        lines.last().map(|l| l.contains("shutdown complete")),
        Some(true),
        "the last line written is the shutdown's: {:?}",
        lines.last()
    );
}

/// Every family the shipped dashboard and alert rules query is one Keel exports: recorded in
/// the kernel's source (`keel_*`), or exported by the process collector (`process_*`, checked
/// against a live scrape).
#[tokio::test]
async fn the_dashboard_and_alert_rules_query_only_families_keel_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut referenced = std::collections::BTreeSet::new();
    for file in [
        "deploy/grafana-dashboard.json",
        "deploy/prometheus-alerts.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("deploy file");
        for (i, _) in text
            .match_indices("keel_")
            .chain(text.match_indices("process_"))
        {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = name.strip_suffix("_bucket").unwrap_or(&name).to_string();
            referenced.insert(family);
        }
    }
    assert!(
        referenced.len() > 10,
        "the deploy files query Keel's families"
    );

    let mut source = String::new();
    let mut dirs = vec![root.join("crates/kernel/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(path).expect("source"));
            }
        }
    }
    let app = spawn().await;
    let scrape = app.get("/metrics").await.text().await.expect("text");
    for family in referenced {
        if family.starts_with("process_") {
            assert!(scrape.contains(&family), "{family} is not exported");
        } else {
            assert!(
                source.contains(&format!("\"{family}\"")),
                "{family} is queried by deploy/ but recorded nowhere in the kernel"
            );
        }
    }
}

#[tokio::test]
async fn metrics_can_move_to_a_private_listener() {
    let (application, db) = TestApp::builder()
        .configure(|c| {
            c.log.slow_operation_ms = SLOW_MS;
            c.metrics.listen = Some("127.0.0.1:0".into());
        })
        .build()
        .await
        .expect("build");
    let metrics_addr = application.metrics_addr().expect("a metrics listener");
    let app = TestApp::serve(application, db);
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);

    let on_api = app.get("/metrics").await;
    assert_eq!(
        on_api.status(),
        StatusCode::NOT_FOUND,
        "not on the API listener"
    );
    let scrape = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(scrape.status(), StatusCode::OK);
    let text = scrape.text().await.expect("text");
    assert!(text.contains("keel_http_requests_total"), "{text}");
    // The private listener serves metrics and nothing else.
    let other = reqwest::get(format!("http://{metrics_addr}/health"))
        .await
        .expect("get");
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}
