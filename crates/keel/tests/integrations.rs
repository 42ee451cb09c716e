//! The resilient outbound client against local fake services: a breaker opens after N
//! failures, fails fast without calling, half-opens after its open period and closes on a
//! successful probe (and the super-admin endpoint and Prometheus show it); retries honour
//! `Retry-After`; non-idempotent calls are retried only when marked retry-safe; timeouts
//! bound each attempt; the bulkhead caps calls in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode as AxumStatus;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use keel_kernel::integrations::config::{OutboundConfig, ServiceOverride};
use keel_kernel::integrations::{BreakerState, Outbound, OutboundError};
use keel_testkit::{FakeServer, TestApp, problem};
use reqwest::StatusCode;
use serde_json::Value;

fn quick(config: OutboundConfig) -> OutboundConfig {
    OutboundConfig {
        connect_timeout_ms: 2_000,
        timeout_ms: 5_000,
        retry_base_ms: 1,
        retry_cap_ms: 5_000,
        ..config
    }
}

/// A service that fails (500) while `failing` is set, counting calls.
async fn flaky(failing: Arc<AtomicBool>, hits: Arc<AtomicU32>) -> FakeServer {
    FakeServer::start(Router::new().route(
        "/thing",
        get(move || {
            let (failing, hits) = (failing.clone(), hits.clone());
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                if failing.load(Ordering::SeqCst) {
                    AxumStatus::INTERNAL_SERVER_ERROR.into_response()
                } else {
                    "fine".into_response()
                }
            }
        }),
    ))
    .await
}

async fn call(outbound: &Outbound, service: &str, url: &str) -> Result<StatusCode, OutboundError> {
    let request = outbound.client().get(url).build().expect("request");
    outbound
        .execute(service, request, false)
        .await
        .map(|r| r.status())
}

#[tokio::test]
async fn a_breaker_opens_after_repeated_failures_fails_fast_then_half_opens_and_closes() {
    let app = TestApp::builder()
        .configure(|c| {
            c.outbound.retry_attempts = 1;
            c.outbound.breaker_failure_threshold = 3;
            c.outbound.breaker_open_ms = 300;
            c.outbound.breaker_half_open_probes = 1;
        })
        .spawn()
        .await
        .expect("server starts");
    let root = app.setup_super_admin().await;
    let failing = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicU32::new(0));
    let fake = flaky(failing.clone(), hits.clone()).await;
    let outbound = &app.state.integrations.outbound;
    let url = fake.url("/thing");

    for _ in 0..3 {
        assert_eq!(
            call(outbound, "fake.flaky", &url).await.expect("answered"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    // Open: the next call fails at once, and the service is not called.
    let err = call(outbound, "fake.flaky", &url).await.expect_err("open");
    assert!(
        matches!(&err, OutboundError::CircuitOpen { service, .. } if service == "fake.flaky"),
        "{err:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    let r = app
        .get_as("/api/v1/metrics/circuit-breakers", &root.access_token)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let breaker = body["breakers"]
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["service"] == "fake.flaky")
        .cloned()
        .expect("the breaker is listed");
    assert_eq!(breaker["state"], "OPEN", "{breaker}");
    assert_eq!(breaker["failures"], 3);
    assert_eq!(breaker["rejected"], 1);
    assert!(breaker["last_transition_at"].is_string());

    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("keel_circuit_breaker_state{service=\"fake.flaky\"} 1"),
        "the breaker's state is exported"
    );
    assert!(metrics.contains("keel_outbound_request_duration_seconds"));

    // The service recovers; once the open period has passed a probe goes through and
    // closes the breaker.
    failing.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call(outbound, "fake.flaky", &url).await {
            Ok(status) => {
                assert_eq!(status, StatusCode::OK);
                break;
            }
            Err(OutboundError::CircuitOpen { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the breaker never let a probe through: {e:?}"),
        }
    }
    let states: Vec<BreakerState> = outbound
        .breakers()
        .into_iter()
        .filter(|b| b.service == "fake.flaky")
        .map(|b| b.state)
        .collect();
    assert_eq!(states, vec![BreakerState::Closed]);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_failed_half_open_probe_opens_the_breaker_again() {
    let outbound = Outbound::new(&quick(OutboundConfig {
        retry_attempts: 1,
        breaker_failure_threshold: 1,
        breaker_open_ms: 100,
        ..OutboundConfig::default()
    }))
    .expect("client");
    let failing = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicU32::new(0));
    let fake = flaky(failing, hits.clone()).await;
    let url = fake.url("/thing");
    call(&outbound, "svc", &url).await.expect("answered");
    let deadline = Instant::now() + Duration::from_secs(10);
    while hits.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no probe was let through");
        let _ = call(&outbound, "svc", &url).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshot = outbound.breakers().pop().expect("breaker");
    assert_eq!(snapshot.opened, 2, "the failed probe reopened it");
    assert!(matches!(
        call(&outbound, "svc", &url).await,
        Err(OutboundError::CircuitOpen { .. })
    ));
}

#[tokio::test]
async fn only_platform_super_admins_see_the_breakers() {
    let app = TestApp::spawn().await;
    let _root = app.setup_super_admin().await;
    let admin = app.register_org("admin@breakers.example", "Breakers").await;
    let r = app
        .get_as("/api/v1/metrics/circuit-breakers", &admin.access_token)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    problem(r).await;
}

#[tokio::test]
async fn a_retry_waits_as_long_as_retry_after_says() {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let fake = FakeServer::start(Router::new().route(
        "/busy",
        get(move || {
            let h = h.clone();
            async move {
                if h.fetch_add(1, Ordering::SeqCst) == 0 {
                    (
                        AxumStatus::SERVICE_UNAVAILABLE,
                        [("retry-after", "1")],
                        "busy",
                    )
                        .into_response()
                } else {
                    "done".into_response()
                }
            }
        }),
    ))
    .await;
    let outbound = Outbound::new(&quick(OutboundConfig::default())).expect("client");
    let started = Instant::now();
    let status = call(&outbound, "busy", &fake.url("/busy"))
        .await
        .expect("ok");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // The backoff alone would have waited a few milliseconds.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
}

#[tokio::test]
async fn a_retry_after_longer_than_the_cap_ends_the_retries() {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let fake = FakeServer::start(Router::new().route(
        "/later",
        get(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                (
                    AxumStatus::TOO_MANY_REQUESTS,
                    [("retry-after", "3600")],
                    "later",
                )
                    .into_response()
            }
        }),
    ))
    .await;
    let outbound = Outbound::new(&quick(OutboundConfig::default())).expect("client");
    let status = call(&outbound, "later", &fake.url("/later"))
        .await
        .expect("ok");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_post_is_retried_only_when_marked_retry_safe() {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let fake = FakeServer::start(Router::new().route(
        "/pay",
        post(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                AxumStatus::BAD_GATEWAY
            }
        }),
    ))
    .await;
    let outbound = Outbound::new(&quick(OutboundConfig {
        breaker_failure_threshold: 100,
        ..OutboundConfig::default()
    }))
    .expect("client");
    let request = outbound
        .client()
        .post(fake.url("/pay"))
        .body("{}")
        .build()
        .expect("request");
    let r = outbound
        .execute("pay", request, false)
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "a POST is not repeated by default"
    );

    let request = outbound
        .client()
        .post(fake.url("/pay"))
        .body("{}")
        .build()
        .expect("request");
    outbound
        .execute("pay", request, true)
        .await
        .expect("answered");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1 + 3,
        "retry-safe: three attempts"
    );
}

#[tokio::test]
async fn a_service_that_does_not_answer_times_out_on_every_attempt() {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let fake = FakeServer::start(Router::new().route(
        "/slow",
        get(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }
        }),
    ))
    .await;
    // The service's own settings override `[outbound]`.
    let outbound = Outbound::new(&OutboundConfig {
        timeout_ms: 10_000,
        retry_attempts: 3,
        retry_base_ms: 1,
        services: [(
            "slow".to_string(),
            ServiceOverride {
                timeout_ms: Some(200),
                retry_attempts: Some(2),
                ..ServiceOverride::default()
            },
        )]
        .into(),
        ..OutboundConfig::default()
    })
    .expect("client");
    let err = call(&outbound, "slow", &fake.url("/slow"))
        .await
        .expect_err("timeout");
    assert!(matches!(err, OutboundError::Timeout { .. }), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let snapshot = outbound.breakers().pop().expect("breaker");
    assert_eq!(snapshot.failures, 2, "timeouts count against the breaker");
}

#[tokio::test]
async fn the_bulkhead_caps_calls_in_flight_per_service() {
    let now = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let fake = FakeServer::start(Router::new().route(
        "/one-at-a-time",
        get(move || {
            let (n, p) = (n.clone(), p.clone());
            async move {
                let current = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(current, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                "ok"
            }
        }),
    ))
    .await;
    let outbound = Arc::new(
        Outbound::new(&quick(OutboundConfig {
            max_concurrent: 1,
            ..OutboundConfig::default()
        }))
        .expect("client"),
    );
    let url = fake.url("/one-at-a-time");
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (outbound, url) = (outbound.clone(), url.clone());
            tokio::spawn(async move { call(&outbound, "single", &url).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("task").expect("ok"), StatusCode::OK);
    }
    assert_eq!(peak.load(Ordering::SeqCst), 1);
}

/// Not a pass/fail test: what the breaker, bulkhead and metrics add to a call, against the
/// same reqwest client calling a local fake service directly.
/// `cargo test -p keel --release --test integrations -- --ignored --nocapture overhead`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn overhead_of_the_resilient_client() {
    let fake = FakeServer::start(Router::new().route("/ping", get(|| async { "pong" }))).await;
    let outbound = Outbound::new(&OutboundConfig::default()).expect("client");
    let url = fake.url("/ping");
    let n = 2_000;
    for _ in 0..200 {
        call(&outbound, "bench", &url).await.expect("warm");
    }
    let mut direct = Vec::with_capacity(n);
    let mut guarded = Vec::with_capacity(n);
    for _ in 0..n {
        let request = outbound.client().get(&url).build().expect("request");
        let started = Instant::now();
        let r = outbound.client().execute(request).await.expect("direct");
        assert_eq!(r.status(), StatusCode::OK);
        direct.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(
            call(&outbound, "bench", &url).await.expect("guarded"),
            StatusCode::OK
        );
        guarded.push(started.elapsed());
    }
    direct.sort();
    guarded.sort();
    let us = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "outbound: direct p50 {:.0} µs p99 {:.0} µs; through breaker+bulkhead+metrics p50 {:.0} µs p99 {:.0} µs",
        us(&direct, 0.5),
        us(&direct, 0.99),
        us(&guarded, 0.5),
        us(&guarded, 0.99)
    );
}

#[tokio::test]
async fn outbound_calls_carry_the_callers_trace() {
    let app = TestApp::spawn().await;
    let seen: Arc<std::sync::Mutex<Vec<Option<String>>>> = Arc::default();
    let record = seen.clone();
    let fake = FakeServer::start(Router::new().route(
        "/traced",
        get(move |headers: axum::http::HeaderMap| {
            let record = record.clone();
            async move {
                let tp = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                if let Ok(mut r) = record.lock() {
                    r.push(tp);
                }
                "ok"
            }
        }),
    ))
    .await;
    let outbound = &app.state.integrations.outbound;
    let url = fake.url("/traced");
    let parent = keel_kernel::observe::trace::TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .expect("valid");
    let status = keel_kernel::observe::trace::in_trace(parent, call(outbound, "fake.traced", &url))
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::OK);
    // Outside any trace, nothing is invented.
    call(outbound, "fake.traced", &url).await.expect("answered");

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    let sent = seen[0].as_deref().expect("a traceparent inside the trace");
    let child = keel_kernel::observe::trace::TraceContext::parse(sent).expect("well-formed");
    assert_eq!(child.trace_id, parent.trace_id, "the same trace");
    assert_ne!(child.span_id, parent.span_id, "a new span id for the call");
    assert_eq!(seen[1], None);
}
