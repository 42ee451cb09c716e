//! Rate limits through HTTP: exactness under concurrency (in process, or on Redis when
//! `TEST_REDIS_URL` is set), one limit shared by nodes on one Redis, honest headers and
//! `Retry-After`, 429 before the account lockout, and Redis failing mid-run.

use std::sync::Arc;
use std::time::Duration;

use keel_kernel::config::{Config, Secret};
use keel_kernel::limits::{FailMode, PolicyOverride};
use keel_testkit::{PASSWORD, TcpProxy, TestApp, TestDb, problem};
use reqwest::StatusCode;

fn set(config: &mut Config, policy: &str, limit: u32, period_secs: u64) {
    config.rate_limits.policies.insert(
        policy.to_string(),
        PolicyOverride {
            limit: Some(limit),
            period_secs: Some(period_secs),
            ..Default::default()
        },
    );
}

async fn concurrent_me(app: &TestApp, token: &str, n: usize) -> Vec<StatusCode> {
    let calls = (0..n).map(|_| {
        let client = app.client.clone();
        let url = app.url("/api/v1/auth/me");
        let token = token.to_string();
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("send")
                .status()
        }
    });
    futures::future::join_all(calls).await
}

#[tokio::test]
async fn two_hundred_concurrent_requests_against_fifty_per_hour_let_exactly_fifty_through() {
    let app = TestApp::builder()
        .without_probe_module()
        .configure(|c| set(c, "authenticated", 50, 3600))
        .spawn()
        .await
        .expect("spawn");
    let s = app.register_org("burst@acme.example", "Acme").await;
    // Registration and sign-in spent none of the organization's allowance (anonymous routes).
    let statuses = concurrent_me(&app, &s.access_token, 200).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, refused), (50, 150), "{statuses:?}");
}

#[tokio::test]
async fn limited_responses_carry_honest_headers_and_retry_after_is_true() {
    let app = TestApp::builder()
        .without_probe_module()
        .configure(|c| set(c, "authenticated", 2, 2))
        .spawn()
        .await
        .expect("spawn");
    let s = app.register_org("hdr@acme.example", "Acme").await;
    let first = app.get_as("/api/v1/auth/me", &s.access_token).await;
    assert_eq!(first.status(), StatusCode::OK);
    let h = first.headers();
    assert_eq!(
        h.get("ratelimit-limit").and_then(|v| v.to_str().ok()),
        Some("2")
    );
    assert_eq!(
        h.get("ratelimit-remaining").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(h.get("ratelimit-reset").is_some());
    assert_eq!(
        app.get_as("/api/v1/auth/me", &s.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    let refused = app.get_as("/api/v1/auth/me", &s.access_token).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert_eq!(
        refused
            .headers()
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok()),
        Some("0")
    );
    let body = problem(refused).await;
    assert_eq!(body["policy"], "authenticated");
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(
        app.get_as("/api/v1/auth/me", &s.access_token)
            .await
            .status(),
        StatusCode::OK,
        "Retry-After was honest"
    );
}

#[tokio::test]
async fn a_login_storm_is_refused_with_429_before_the_lockout_answers_423() {
    let app = TestApp::builder()
        .without_probe_module()
        .configure(|c| {
            // One sign-in is spent by registering; three failures remain.
            set(c, "auth.login", 4, 60);
            c.auth.lockout_threshold = 5;
        })
        .spawn()
        .await
        .expect("spawn");
    app.register_org("storm@acme.example", "Acme").await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            app.login("storm@acme.example", "wrong-password-123")
                .await
                .status(),
        );
    }
    assert_eq!(&statuses[..3], &[StatusCode::UNAUTHORIZED; 3]);
    assert!(
        statuses[3..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn nodes_share_one_limit_through_redis_and_keep_their_own_without_it() {
    let db = Arc::new(TestDb::new().await.expect("db"));
    let node = || {
        TestApp::builder()
            .without_probe_module()
            .database(db.clone())
            .configure(|c| set(c, "authenticated", 10, 3600))
            .spawn()
    };
    let a = node().await.expect("a");
    let b = node().await.expect("b");
    let s = a.register_org("shared@acme.example", "Acme").await;
    let mut ok = 0;
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        if app
            .get_as("/api/v1/auth/me", &s.access_token)
            .await
            .status()
            == StatusCode::OK
        {
            ok += 1;
        }
    }
    if keel_testkit::redis_url().is_some() {
        assert_eq!(ok, 10, "one allowance across both nodes");
    } else {
        assert_eq!(ok, 20, "without Redis each node keeps its own allowance");
    }
}

#[tokio::test]
async fn redis_failing_mid_run_refuses_fail_closed_routes_and_degrades_local_ones() {
    let redis = keel_testkit::redis_url().unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let target = redis
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .replace("localhost", "127.0.0.1");
    let proxy = TcpProxy::start(target.parse().expect("addr"))
        .await
        .expect("proxy");
    let url = format!("redis://{}/", proxy.addr());
    let app = TestApp::builder()
        .without_probe_module()
        .configure(move |c| {
            c.redis_url = Some(Secret::new(url));
            c.rate_limits.policies.insert(
                "auth.login".into(),
                PolicyOverride {
                    limit: Some(1000),
                    on_backend_failure: Some(FailMode::FailClosed),
                    ..Default::default()
                },
            );
        })
        .spawn()
        .await
        .expect("spawn");
    let s = app.register_org("cut@acme.example", "Acme").await;
    assert_eq!(
        app.get_as("/api/v1/auth/me", &s.access_token)
            .await
            .status(),
        StatusCode::OK
    );

    proxy.take_down().await;
    let login = app.login("cut@acme.example", PASSWORD).await;
    assert_eq!(
        login.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "fail-closed: no unlimited sign-ins"
    );
    assert!(login.headers().get("retry-after").is_some());
    assert_eq!(problem(login).await["policy"], "auth.login");
    for _ in 0..5 {
        let r = app.get_as("/api/v1/auth/me", &s.access_token).await;
        assert_eq!(r.status(), StatusCode::OK, "local fallback keeps serving");
    }
    assert!(app.state.limits.fallbacks() >= 1);

    proxy.bring_up();
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = app.login("cut@acme.example", PASSWORD).await.status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK);
}
