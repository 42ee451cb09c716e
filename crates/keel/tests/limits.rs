//! The rate-limit engine against a real Redis (`TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`; CI always runs one): exact under concurrency, one allowance
//! shared by every limiter on the same Redis, honest retry times, idle keys expiring, and
//! Redis cut mid-run through a proxy — fail-closed policies refuse, local ones decide in
//! process, and Redis decisions resume when it returns.
//!
//! Every key carries a fresh UUID so parallel runs against one Redis never collide.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_kernel::limits::{DecidedBy, FailMode, KeyKind, LimitError, Policy, RateLimiter};
use keel_testkit::TcpProxy;
use redis::aio::ConnectionManager;
use tokio::sync::Barrier;
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into())
}

async fn connect(url: &str) -> ConnectionManager {
    let client = redis::Client::open(url).expect("redis url");
    ConnectionManager::new(client)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} must be running for these tests: {e}"))
}

/// A proxy in front of the test Redis, and the URL that reaches Redis through it.
async fn proxied_redis() -> (TcpProxy, String) {
    let url = redis_url();
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), authority),
    };
    let target = tokio::net::lookup_host(host)
        .await
        .expect("resolve redis host")
        .next()
        .expect("an address");
    let proxy = TcpProxy::start(target).await.expect("proxy");
    let proxied = format!("{scheme}://{userinfo}{}/{path}", proxy.addr());
    (proxy, proxied)
}

fn key(label: &str) -> String {
    format!("{label}-{}", Uuid::new_v4())
}

fn policy(name: &'static str, limit: u32, period: Duration, on_failure: FailMode) -> Policy {
    Policy::new(name, limit, period, KeyKind::Org, on_failure)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_200_concurrent_requests_against_50_per_hour_let_exactly_50_through() {
    let redis = connect(&redis_url()).await;
    let limiter = RateLimiter::new(
        vec![policy(
            "reports",
            50,
            Duration::from_secs(3600),
            FailMode::Local,
        )],
        Some(redis),
    )
    .expect("limiter");
    let org = key("org");
    let start = Arc::new(Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (limiter, start, org) = (limiter.clone(), start.clone(), org.clone());
            tokio::spawn(async move {
                start.wait().await;
                limiter.check("reports", &org).await.expect("decision")
            })
        })
        .collect();
    let mut remaining_seen = BTreeSet::new();
    let mut refused = 0;
    for task in tasks {
        let decision = task.await.expect("task");
        assert_eq!(decision.decided_by, DecidedBy::Redis);
        assert_eq!(decision.limit, 50);
        if decision.allowed {
            // Each allowed request saw a distinct state: no two read the same count.
            assert!(remaining_seen.insert(decision.remaining), "{decision:?}");
        } else {
            refused += 1;
            let retry = decision.retry_after.expect("retry_after");
            assert!(retry <= Duration::from_secs(72), "{retry:?}");
        }
    }
    assert_eq!(remaining_seen.len(), 50);
    assert_eq!(remaining_seen, (0..50).collect());
    assert_eq!(refused, 150);
    assert_eq!(limiter.fallbacks(), 0);
    assert_eq!(limiter.tracked_keys(), 0, "nothing was decided in process");
}

#[tokio::test]
async fn redis_counts_down_refuses_honestly_and_lets_idle_keys_expire() {
    let url = redis_url();
    let limiter = RateLimiter::new(
        vec![
            policy("login", 5, Duration::from_secs(60), FailMode::FailClosed),
            policy("fast", 2, Duration::from_secs(1), FailMode::FailClosed),
        ],
        Some(connect(&url).await),
    )
    .expect("limiter");
    let ip = key("ip");
    for expected in (0..5).rev() {
        let d = limiter.check("login", &ip).await.expect("decision");
        assert!(d.allowed && d.remaining == expected, "{d:?}");
        // Exact on Redis: 12 s per spent request, less the time since the first.
        let full = Duration::from_secs(12 * u64::from(5 - expected));
        assert!(
            d.reset_after <= full && d.reset_after > full - Duration::from_secs(1),
            "{d:?}"
        );
    }
    let refused = limiter.check("login", &ip).await.expect("decision");
    assert!(!refused.allowed);
    let retry = refused.retry_after.expect("retry_after");
    assert!(
        retry > Duration::from_secs(11) && retry <= Duration::from_secs(12),
        "{retry:?}"
    );
    assert!(
        refused.reset_after > Duration::from_secs(59)
            && refused.reset_after <= Duration::from_secs(60)
    );

    // The key lives exactly as long as its state differs from a fresh one.
    let mut direct = connect(&url).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("keel:rl:login:{ip}"))
        .query_async(&mut direct)
        .await
        .expect("pttl");
    assert!(ttl > 58_000 && ttl <= 60_000, "ttl {ttl} ms");

    // Retry-After is honest on Redis too: early is refused, on time passes.
    let fast = key("fast");
    assert!(
        limiter
            .check("fast", &fast)
            .await
            .expect("decision")
            .allowed
    );
    assert!(
        limiter
            .check("fast", &fast)
            .await
            .expect("decision")
            .allowed
    );
    let refused = limiter.check("fast", &fast).await.expect("decision");
    let retry = refused.retry_after.expect("retry_after");
    assert!(
        !refused.allowed && retry <= Duration::from_millis(500),
        "{refused:?}"
    );
    tokio::time::sleep(retry / 2).await;
    let early = limiter.check("fast", &fast).await.expect("decision");
    assert!(!early.allowed, "{early:?}");
    tokio::time::sleep(early.retry_after.expect("retry_after")).await;
    assert!(
        limiter
            .check("fast", &fast)
            .await
            .expect("decision")
            .allowed
    );

    // A key idle for its whole allowance is gone from Redis.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("keel:rl:fast:{fast}"))
        .query_async(&mut direct)
        .await
        .expect("exists");
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn two_limiters_on_one_redis_share_one_limit() {
    let url = redis_url();
    let policies = || {
        vec![policy(
            "exports",
            10,
            Duration::from_secs(3600),
            FailMode::Local,
        )]
    };
    let a = RateLimiter::new(policies(), Some(connect(&url).await)).expect("a");
    let b = RateLimiter::new(policies(), Some(connect(&url).await)).expect("b");
    let org = key("org");
    let mut allowed = 0;
    for i in 0..20 {
        if i == 7 {
            // A restarted Redis has no scripts: EVALSHA's NOSCRIPT must lead to a reload,
            // not an error.
            let mut direct = connect(&url).await;
            let () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut direct)
                .await
                .expect("script flush");
        }
        let node = if i % 2 == 0 { &a } else { &b };
        let d = node.check("exports", &org).await.expect("decision");
        assert_eq!(d.decided_by, DecidedBy::Redis);
        if d.allowed {
            allowed += 1;
            assert_eq!(
                d.remaining,
                10 - allowed,
                "each node sees the other's requests"
            );
        }
    }
    assert_eq!(allowed, 10);
}

#[tokio::test]
async fn a_fail_closed_policy_refuses_while_redis_is_cut_and_recovers() {
    let (proxy, url) = proxied_redis().await;
    let limiter = RateLimiter::new(
        vec![policy(
            "auth.login",
            5,
            Duration::from_secs(60),
            FailMode::FailClosed,
        )],
        Some(connect(&url).await),
    )
    .expect("limiter");
    let ip = key("ip");
    let first = limiter.check("auth.login", &ip).await.expect("decision");
    assert_eq!((first.decided_by, first.remaining), (DecidedBy::Redis, 4));

    proxy.take_down().await;
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(
            limiter.check("auth.login", &ip).await,
            Err(LimitError::Unavailable)
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "bounded by the timeout"
        );
    }
    assert_eq!(
        limiter.fallbacks(),
        0,
        "fail-closed never decides in process"
    );
    assert_eq!(limiter.tracked_keys(), 0);

    proxy.bring_up();
    let d = until_redis_decides(&limiter, "auth.login", &ip).await;
    assert_eq!(
        d.remaining, 3,
        "Redis kept the allowance spent before the cut"
    );
}

#[tokio::test]
async fn a_local_policy_decides_in_process_while_redis_is_cut_and_resumes_on_redis() {
    let (proxy, url) = proxied_redis().await;
    let limiter = RateLimiter::new(
        vec![policy("ocr", 3, Duration::from_secs(3600), FailMode::Local)],
        Some(connect(&url).await),
    )
    .expect("limiter");
    let org = key("org");
    let first = limiter.check("ocr", &org).await.expect("decision");
    assert_eq!((first.decided_by, first.remaining), (DecidedBy::Redis, 2));

    proxy.take_down().await;
    let mut allowed = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let d = limiter
            .check("ocr", &org)
            .await
            .expect("a decision, not an error");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "bounded by the timeout"
        );
        assert_eq!(d.decided_by, DecidedBy::Fallback);
        allowed += u32::from(d.allowed);
    }
    assert_eq!(
        allowed, 3,
        "the in-process limiter still limits: never unlimited"
    );
    assert_eq!(limiter.fallbacks(), 5);
    assert_eq!(limiter.tracked_keys(), 1);

    proxy.bring_up();
    let d = until_redis_decides(&limiter, "ocr", &org).await;
    assert!(d.allowed);
    assert_eq!(
        d.remaining, 1,
        "Redis kept the allowance spent before the cut"
    );
    let fallbacks = limiter.fallbacks();
    let next = limiter.check("ocr", &org).await.expect("decision");
    assert_eq!((next.decided_by, next.remaining), (DecidedBy::Redis, 0));
    assert_eq!(
        limiter.fallbacks(),
        fallbacks,
        "no more fallbacks once Redis is back"
    );
}

/// Checks until Redis decides again (the connection reconnects and the limiter's short
/// cool-down after a failure passes), and returns that decision.
async fn until_redis_decides(
    limiter: &RateLimiter,
    policy: &str,
    key: &str,
) -> keel_kernel::limits::Decision {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(d) = limiter.check(policy, key).await
            && d.decided_by == DecidedBy::Redis
        {
            return d;
        }
        assert!(Instant::now() < deadline, "Redis decisions did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
