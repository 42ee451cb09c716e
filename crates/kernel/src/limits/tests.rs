//! In-process behaviour, policies and configuration. Redis behaviour is tested against a real
//! server in `crates/keel/tests/limits.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;

use super::*;

fn limiter(policies: Vec<Policy>) -> RateLimiter {
    RateLimiter::new(policies, None).expect("valid policies")
}

fn per(name: &'static str, limit: u32, period: Duration) -> Policy {
    Policy::new(name, limit, period, KeyKind::Ip, FailMode::Local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_200_concurrent_requests_against_50_per_hour_let_exactly_50_through() {
    let limiter = limiter(vec![per("reports", 50, Duration::from_secs(3600))]);
    let start = Arc::new(Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (limiter, start) = (limiter.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                limiter.check("reports", "org-1").await.expect("decision")
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        let decision = task.await.expect("task");
        assert_eq!(decision.decided_by, DecidedBy::InProcess);
        if decision.allowed {
            allowed += 1;
        } else {
            let retry = decision.retry_after.expect("refusals say when to retry");
            assert!(retry <= Duration::from_secs(72), "{retry:?}");
        }
    }
    assert_eq!(allowed, 50);
    // The other key has its own allowance.
    assert!(
        limiter
            .check("reports", "org-2")
            .await
            .expect("decision")
            .allowed
    );
}

#[tokio::test]
async fn remaining_counts_down_and_refusals_cost_nothing() {
    let limiter = limiter(vec![per("login", 5, Duration::from_secs(60))]);
    for expected in (0..5).rev() {
        let d = limiter.check("login", "10.0.0.1").await.expect("decision");
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (5, expected));
        assert!(d.retry_after.is_none());
        // Spent allowance comes back at 12 s a request.
        let spent = 5 - expected;
        assert_eq!(d.reset_after, Duration::from_secs(12 * u64::from(spent)));
    }
    let first = limiter.check("login", "10.0.0.1").await.expect("decision");
    assert!(!first.allowed);
    assert_eq!(first.remaining, 0);
    let retry = first.retry_after.expect("retry_after");
    assert!(
        retry > Duration::from_millis(11_500) && retry <= Duration::from_secs(12),
        "{retry:?}"
    );
    assert!(
        first.reset_after > Duration::from_secs(59) && first.reset_after <= Duration::from_secs(60)
    );
    assert_eq!(first.retry_after_secs(), Some(12));
    assert_eq!(first.reset_after_secs(), 60);
    // A refused request did not push the retry time further out.
    let second = limiter.check("login", "10.0.0.1").await.expect("decision");
    assert!(second.retry_after.expect("retry_after") <= retry);
}

#[tokio::test]
async fn a_request_after_retry_after_passes_and_one_before_does_not() {
    let limiter = limiter(vec![per("fast", 2, Duration::from_secs(1))]);
    assert!(limiter.check("fast", "k").await.expect("decision").allowed);
    assert!(limiter.check("fast", "k").await.expect("decision").allowed);
    let refused = limiter.check("fast", "k").await.expect("decision");
    assert!(!refused.allowed);
    let retry = refused.retry_after.expect("retry_after");
    assert!(retry <= Duration::from_millis(500), "{retry:?}");
    assert!(retry > Duration::from_millis(300), "{retry:?}");

    tokio::time::sleep(retry / 2).await;
    let early = limiter.check("fast", "k").await.expect("decision");
    assert!(
        !early.allowed,
        "half-way through retry_after is still too early"
    );
    tokio::time::sleep(early.retry_after.expect("retry_after")).await;
    let on_time = limiter.check("fast", "k").await.expect("decision");
    assert!(on_time.allowed, "{on_time:?}");
    assert_eq!(on_time.remaining, 0);
}

#[tokio::test]
async fn burst_smaller_than_limit_spreads_requests() {
    let policy = per("spread", 60, Duration::from_secs(60)).with_burst(2);
    let limiter = limiter(vec![policy]);
    let a = limiter.check("spread", "k").await.expect("decision");
    let b = limiter.check("spread", "k").await.expect("decision");
    let c = limiter.check("spread", "k").await.expect("decision");
    assert!(a.allowed && b.allowed && !c.allowed);
    assert_eq!((a.limit, a.remaining, b.remaining), (2, 1, 0));
    assert!(c.retry_after.expect("retry_after") <= Duration::from_secs(1));
}

#[tokio::test]
async fn unknown_policies_are_errors_even_when_disabled() {
    let on = limiter(default_policies());
    assert_eq!(
        on.check("auth.logn", "k").await,
        Err(LimitError::UnknownPolicy("auth.logn".into()))
    );
    let config = RateLimitConfig {
        enabled: false,
        ..RateLimitConfig::default()
    };
    let off = RateLimiter::from_config(&config, default_policies(), None).expect("valid");
    assert!(matches!(
        off.check("nope", "k").await,
        Err(LimitError::UnknownPolicy(_))
    ));
}

#[tokio::test]
async fn disabled_limits_allow_everything_and_report_the_full_allowance() {
    let config = RateLimitConfig {
        enabled: false,
        ..RateLimitConfig::default()
    };
    let limiter = RateLimiter::from_config(&config, default_policies(), None).expect("valid");
    assert!(!limiter.is_enabled());
    for _ in 0..20 {
        let d = limiter
            .check("auth.login", "10.0.0.1")
            .await
            .expect("decision");
        assert_eq!(
            d,
            Decision {
                allowed: true,
                limit: 5,
                remaining: 5,
                reset_after: Duration::ZERO,
                retry_after: None,
                decided_by: DecidedBy::Disabled,
            }
        );
    }
    assert_eq!(limiter.tracked_keys(), 0);
}

#[tokio::test]
async fn prune_drops_idle_keys_and_keeps_those_still_limited() {
    // 100 ms a request: an idle key is indistinguishable from a fresh one within 200 ms.
    let limiter = limiter(vec![
        per("fast", 10, Duration::from_secs(1)),
        per("slow", 1, Duration::from_secs(3600)),
    ]);
    for i in 0..100 {
        limiter
            .check("fast", &format!("10.0.0.{i}"))
            .await
            .expect("decision");
    }
    limiter.check("slow", "kept").await.expect("decision");
    assert_eq!(limiter.tracked_keys(), 101);
    tokio::time::sleep(Duration::from_millis(300)).await;
    limiter.prune();
    assert_eq!(limiter.tracked_keys(), 1);
    // Pruning forgot nothing that mattered: the slow key is still spent.
    assert!(
        !limiter
            .check("slow", "kept")
            .await
            .expect("decision")
            .allowed
    );
}

#[test]
fn the_default_table() {
    let table: Vec<_> = default_policies()
        .into_iter()
        .map(|p| {
            assert_eq!(p.burst, p.limit, "{}: burst defaults to the limit", p.name);
            (
                p.name.into_owned(),
                p.limit,
                p.period.as_secs(),
                p.key,
                p.on_backend_failure,
            )
        })
        .collect();
    use FailMode::{FailClosed, Local};
    use KeyKind::*;
    let expected = [
        ("auth.login", 5, 60, Ip, FailClosed),
        ("auth.register", 3, 60, Ip, FailClosed),
        ("auth.refresh", 30, 60, Session, FailClosed),
        ("auth.change_password", 3, 3600, User, FailClosed),
        ("ocr", 20, 3600, Org, Local),
        ("ai", 60, 3600, Org, Local),
        ("authenticated", 1000, 60, Org, Local),
        ("anonymous", 100, 60, Ip, Local),
    ]
    .map(|(n, l, s, k, f)| (n.to_string(), l, s, k, f));
    assert_eq!(table, expected);
    assert!(RateLimiter::new(default_policies(), None).is_ok());
}

#[test]
fn overrides_apply_by_name_and_burst_follows_a_new_limit() {
    let mut config = RateLimitConfig::default();
    config.policies.insert(
        "auth.login".into(),
        PolicyOverride {
            limit: Some(10),
            period_secs: Some(120),
            ..PolicyOverride::default()
        },
    );
    config.policies.insert(
        "ocr".into(),
        PolicyOverride {
            burst: Some(5),
            key: Some(KeyKind::User),
            on_backend_failure: Some(FailMode::FailClosed),
            ..PolicyOverride::default()
        },
    );
    let policies = config.apply(default_policies());
    let find = |name: &str| {
        policies
            .iter()
            .find(|p| p.name == name)
            .expect("policy")
            .clone()
    };
    let login = find("auth.login");
    assert_eq!(
        (login.limit, login.period, login.burst, login.key),
        (10, Duration::from_secs(120), 10, KeyKind::Ip)
    );
    let ocr = find("ocr");
    assert_eq!(
        (ocr.limit, ocr.burst, ocr.key, ocr.on_backend_failure),
        (20, 5, KeyKind::User, FailMode::FailClosed)
    );
    // A policy whose burst differs from its limit keeps its burst when the limit changes.
    let mut custom = RateLimitConfig::default();
    custom.policies.insert(
        "spread".into(),
        PolicyOverride {
            limit: Some(100),
            ..PolicyOverride::default()
        },
    );
    let spread = custom.apply(vec![
        per("spread", 60, Duration::from_secs(60)).with_burst(2),
    ]);
    assert_eq!((spread[0].limit, spread[0].burst), (100, 2));
    assert_eq!(
        find("ai"),
        default_policies()[5],
        "untouched policies stay as they are"
    );
}

#[test]
fn validation_reports_one_message_per_problem() {
    let mut config = RateLimitConfig::default();
    config.policies.insert(
        "auth.logn".into(),
        PolicyOverride {
            limit: Some(3),
            ..PolicyOverride::default()
        },
    );
    config.policies.insert(
        "auth.login".into(),
        PolicyOverride {
            limit: Some(0),
            period_secs: Some(0),
            burst: Some(0),
            ..PolicyOverride::default()
        },
    );
    let names: Vec<_> = default_policies().into_iter().map(|p| p.name).collect();
    let problems = config.problems(names.iter().map(|n| n.as_ref()));
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].starts_with("rate_limits.policies.\"auth.logn\": no such policy (known: ai, anonymous, auth.change_password"), "{}", problems[0]);
    for field in ["limit", "period_secs", "burst"] {
        let message =
            format!("rate_limits.policies.\"auth.login\".{field}: must be greater than 0");
        assert!(problems.contains(&message), "{message} in {problems:#?}");
    }

    // Config::validate cannot know app policies: it reports the values, not the names.
    let whole = crate::config::Config {
        rate_limits: config.clone(),
        ..crate::config::Config::default()
    };
    let err = whole.validate().expect_err("zero values are refused");
    assert_eq!(err.problems.len(), 3, "{:#?}", err.problems);
    // Start-up, which knows every policy, refuses the unknown name too.
    let err = RateLimiter::from_config(&config, default_policies(), None).expect_err("refused");
    assert_eq!(err.problems.len(), 4, "{:#?}", err.problems);

    let timeout = RateLimitConfig {
        backend_timeout_ms: 0,
        ..RateLimitConfig::default()
    };
    assert_eq!(
        timeout.value_problems(),
        vec!["rate_limits.backend_timeout_ms: must be greater than 0".to_string()]
    );
    assert!(
        RateLimitConfig::default()
            .problems(["auth.login"])
            .is_empty()
    );
}

#[test]
fn invalid_or_duplicate_policies_are_refused() {
    let err = RateLimiter::new(
        vec![
            per("zero", 0, Duration::from_secs(60)).with_burst(1),
            per("instant", 5, Duration::ZERO).with_burst(0),
            per("dup", 1, Duration::from_secs(1)),
            per("dup", 2, Duration::from_secs(1)),
            per("tiny", 2_000_000, Duration::from_secs(1)),
            per("forever", 1, Duration::from_secs(2 * 366 * 24 * 3600)),
        ],
        None,
    )
    .expect_err("refused");
    let all = err.problems.join("\n");
    assert_eq!(err.problems.len(), 6, "{all}");
    assert!(
        all.contains("`zero`: limit must be greater than 0"),
        "{all}"
    );
    assert!(
        all.contains("`instant`: period must be greater than 0"),
        "{all}"
    );
    assert!(
        all.contains("`instant`: burst must be greater than 0"),
        "{all}"
    );
    assert!(all.contains("`dup` is defined twice"), "{all}");
    assert!(
        all.contains("`tiny`: more than one request per microsecond"),
        "{all}"
    );
    assert!(
        all.contains("`forever`: a full allowance would take more than a year"),
        "{all}"
    );
}

#[test]
// figment's Jail fixes the closure's error type.
#[allow(clippy::result_large_err)]
fn toml_quoted_policy_names_and_environment_overrides_load() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "keel.toml",
            r#"
                [rate_limits.policies."auth.login"]
                limit = 10
                period_secs = 120

                [rate_limits.policies.ai]
                on_backend_failure = "fail_closed"
                key = "user_or_ip"
            "#,
        )?;
        jail.set_env("KEEL_RATE_LIMITS__ENABLED", "false");
        jail.set_env("KEEL_RATE_LIMITS__POLICIES__OCR__LIMIT", "40");
        let config = crate::config::Config::load(&crate::config::ConfigSource::default())
            .map_err(|e| e.to_string())?;
        assert!(!config.rate_limits.enabled);
        let login = &config.rate_limits.policies["auth.login"];
        assert_eq!((login.limit, login.period_secs), (Some(10), Some(120)));
        let ai = &config.rate_limits.policies["ai"];
        assert_eq!(ai.on_backend_failure, Some(FailMode::FailClosed));
        assert_eq!(ai.key, Some(KeyKind::UserOrIp));
        assert_eq!(config.rate_limits.policies["ocr"].limit, Some(40));
        assert!(config.validate().is_ok());
        let limiter = RateLimiter::from_config(&config.rate_limits, default_policies(), None)
            .map_err(|e| e.to_string())?;
        assert_eq!(limiter.policy("auth.login").map(|p| p.limit), Some(10));
        assert_eq!(limiter.policy("ocr").map(|p| p.limit), Some(40));
        // The effective configuration still renders (and re-reads) as TOML.
        assert!(
            config
                .to_redacted_toml()
                .contains("[rate_limits.policies.\"auth.login\"]")
        );
        Ok(())
    });
}

#[test]
// figment's Jail fixes the closure's error type.
#[allow(clippy::result_large_err)]
fn misspelt_override_fields_are_refused() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "keel.toml",
            "[rate_limits.policies.\"auth.login\"]\nlimt = 10\n",
        )?;
        let err = crate::config::Config::load(&crate::config::ConfigSource::default())
            .expect_err("unknown field");
        let all = err.problems.join("\n");
        assert!(all.contains("limt"), "{all}");
        Ok(())
    });
}

#[test]
fn header_seconds_round_up() {
    let d = Decision {
        allowed: false,
        limit: 2,
        remaining: 0,
        reset_after: Duration::from_millis(1_001),
        retry_after: Some(Duration::from_millis(1)),
        decided_by: DecidedBy::InProcess,
    };
    assert_eq!(d.reset_after_secs(), 2);
    assert_eq!(d.retry_after_secs(), Some(1));
    let zero = Decision {
        reset_after: Duration::from_secs(3),
        retry_after: Some(Duration::ZERO),
        ..d
    };
    assert_eq!(zero.reset_after_secs(), 3);
    assert_eq!(zero.retry_after_secs(), Some(1), "Retry-After is never 0");
}
