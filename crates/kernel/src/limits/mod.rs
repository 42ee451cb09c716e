//! Rate limiting: policies as data, and one engine that decides whether a request under a
//! policy and key may pass.
//!
//! The algorithm is GCRA everywhere: each request costs `period / limit`, and up to `burst`
//! requests may pass at once from a full allowance. Decisions are atomic per key, so
//! concurrent requests can never pass more than the limit:
//!
//! - with Redis (the app has `KEEL_REDIS_URL`), one Lua script per decision, keyed
//!   `keel:rl:<policy>:<key>` and timed by the Redis server's clock, so every node of a
//!   deployment shares one allowance per key (`redis.rs`, `gcra.lua`);
//! - without Redis, an in-process keyed `governor` limiter per policy (`memory.rs`), whose
//!   state the scheduler trims every minute with [`RateLimiter::prune`].
//!
//! When Redis fails, each policy's [`FailMode`] decides: refuse ([`LimitError::Unavailable`],
//! for the auth routes, where a per-node allowance would multiply an attacker's guesses) or
//! decide in process (per node, so an N-node deployment briefly allows up to N times the
//! limit). Limits are never silently lifted.
//!
//! This module owns the decision only. The HTTP layer supplies each route's policy name and
//! key (client IP, user, organization or session) and turns a [`Decision`] into the
//! `RateLimit-*` and `Retry-After` headers.

mod config;
pub mod http;
mod memory;
mod redis;

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

pub use self::config::{DEFAULT_BACKEND_TIMEOUT_MS, PolicyOverride, RateLimitConfig};
use self::memory::LocalLimiter;
use self::redis::{BackendFailure, RedisLimiter};
use crate::config::ConfigError;

/// What a policy counts requests by. The HTTP layer turns it into the key it passes to
/// [`RateLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The client IP (after trusted-proxy resolution).
    Ip,
    /// The authenticated user.
    User,
    /// The caller's organization (tenant).
    Org,
    /// The user when authenticated, else the client IP.
    UserOrIp,
    /// The session a refresh token belongs to.
    Session,
}

impl KeyKind {
    /// The configuration spelling (`ip`, `user`, `org`, `user_or_ip`, `session`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Ip => "ip",
            KeyKind::User => "user",
            KeyKind::Org => "org",
            KeyKind::UserOrIp => "user_or_ip",
            KeyKind::Session => "session",
        }
    }
}

/// What a policy does when Redis cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Refuse with [`LimitError::Unavailable`] (the HTTP layer answers 503).
    FailClosed,
    /// Decide with this node's in-process limiter.
    Local,
}

/// A rate-limit policy: `limit` requests per `period` per key, `burst` of them at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// What routes reference, e.g. `auth.login`.
    pub name: Cow<'static, str>,
    /// Requests per period.
    pub limit: u32,
    /// The window `limit` applies to; the allowance refills steadily across it.
    pub period: Duration,
    /// Requests that may pass at once from a full allowance; usually `limit`.
    pub burst: u32,
    /// What requests are counted by.
    pub key: KeyKind,
    /// What happens when Redis cannot decide.
    pub on_backend_failure: FailMode,
}

impl Policy {
    /// A policy whose burst is its limit (a full allowance may be spent at once).
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        limit: u32,
        period: Duration,
        key: KeyKind,
        on_backend_failure: FailMode,
    ) -> Self {
        Self {
            name: name.into(),
            limit,
            period,
            burst: limit,
            key,
            on_backend_failure,
        }
    }

    /// The same policy with another burst (below the limit spreads requests out).
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The cost of one request: `period / limit`.
    pub fn interval(&self) -> Duration {
        self.period.checked_div(self.limit).unwrap_or_default()
    }

    /// What makes this policy unusable, one message per problem.
    pub fn problems(&self) -> Vec<String> {
        let name = &self.name;
        let mut problems = Vec::new();
        if name.is_empty() {
            problems.push("rate limit policy: the name must not be empty".into());
        }
        if self.limit == 0 {
            problems.push(format!(
                "rate limit policy `{name}`: limit must be greater than 0"
            ));
        }
        if self.period.is_zero() {
            problems.push(format!(
                "rate limit policy `{name}`: period must be greater than 0"
            ));
        }
        if self.burst == 0 {
            problems.push(format!(
                "rate limit policy `{name}`: burst must be greater than 0"
            ));
        }
        if self.limit > 0 && !self.period.is_zero() {
            if self.interval() < Duration::from_micros(1) {
                problems.push(format!(
                    "rate limit policy `{name}`: more than one request per microsecond is not a limit"
                ));
            }
            if self
                .interval()
                .checked_mul(self.burst)
                .is_none_or(|d| d > MAX_ALLOWANCE)
            {
                problems.push(format!(
                    "rate limit policy `{name}`: a full allowance would take more than a year to refill"
                ));
            }
        }
        problems
    }
}

/// Bound on `interval × burst`, keeping every time sum far from overflow on both backends.
const MAX_ALLOWANCE: Duration = Duration::from_secs(366 * 24 * 3600);

/// The kernel's policies; routes reference them by name. Apps add their own through the
/// module seam.
pub fn default_policies() -> Vec<Policy> {
    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    use FailMode::{FailClosed, Local};
    vec![
        Policy::new("auth.login", 5, MINUTE, KeyKind::Ip, FailClosed),
        Policy::new("auth.register", 3, MINUTE, KeyKind::Ip, FailClosed),
        Policy::new("auth.refresh", 30, MINUTE, KeyKind::Session, FailClosed),
        Policy::new("auth.change_password", 3, HOUR, KeyKind::User, FailClosed),
        Policy::new("ocr", 20, HOUR, KeyKind::Org, Local),
        Policy::new("ai", 60, HOUR, KeyKind::Org, Local),
        Policy::new("authenticated", 1000, MINUTE, KeyKind::Org, Local),
        Policy::new("anonymous", 100, MINUTE, KeyKind::Ip, Local),
    ]
}

/// Who made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    /// The shared Redis allowance.
    Redis,
    /// This process, because the app has no Redis.
    InProcess,
    /// This process, because Redis failed and the policy is [`FailMode::Local`].
    Fallback,
    /// Nobody: limits are switched off.
    Disabled,
}

/// The answer for one request.
///
/// When limits are switched off, every request is allowed and reports the full allowance:
/// `remaining == limit`, `reset_after` zero, no `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed (else answer 429).
    pub allowed: bool,
    /// The most requests that can pass at once: the policy's burst (its limit unless
    /// configured otherwise). `RateLimit-Limit`.
    pub limit: u32,
    /// Requests that could pass right now after this one. `RateLimit-Remaining`.
    pub remaining: u32,
    /// Until the allowance is full again. `RateLimit-Reset` (see
    /// [`Decision::reset_after_secs`]).
    pub reset_after: Duration,
    /// When refused: a request made after this long passes (unless others spend the
    /// allowance first). `Retry-After` (see [`Decision::retry_after_secs`]).
    pub retry_after: Option<Duration>,
    /// Which backend decided (for metrics and logs).
    pub decided_by: DecidedBy,
}

impl Decision {
    /// `reset_after` in whole seconds, rounded up so the header is never optimistic.
    pub fn reset_after_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }

    /// `retry_after` in whole seconds for `Retry-After`: rounded up and at least 1, so a
    /// client that obeys it is never refused again for being early.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| ceil_secs(d).max(1))
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Why there is no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Redis failed and the policy is [`FailMode::FailClosed`]: answer 503, let nothing
    /// through.
    #[error("the rate-limit backend is unavailable")]
    Unavailable,
    /// No policy has this name: a wiring bug, reported even when limits are switched off.
    #[error("no rate limit policy named `{0}`")]
    UnknownPolicy(String),
}

/// A backend's answer, before the policy's figures are added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    allowed: bool,
    remaining: u32,
    reset_after: Duration,
    retry_after: Option<Duration>,
}

/// Redis is left alone this long after a failure, so an outage costs one timeout, not one
/// per request.
const REDIS_COOLDOWN: Duration = Duration::from_secs(1);
/// At most one warning about Redis per this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);
/// How often the request path prunes in-process state on its own.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Checks a thread makes between looks at the prune clock (keeps the hot path to one
/// thread-local increment).
const PRUNE_SAMPLE: u32 = 4096;
const NEVER: u64 = u64::MAX;

thread_local! {
    static CHECKS_SINCE_PRUNE_LOOK: Cell<u32> = const { Cell::new(0) };
}

/// The engine. Cheap to clone (one `Arc`); build one at start-up and share it.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    policies: HashMap<Box<str>, Entry>,
    redis: Option<RedisLimiter>,
    /// Decisions made in process because Redis failed.
    fallbacks: AtomicU64,
    /// The clock for the fields below (milliseconds since `epoch`).
    epoch: Instant,
    redis_retry_at_ms: AtomicU64,
    last_warning_ms: AtomicU64,
    next_prune_ms: AtomicU64,
}

struct Entry {
    policy: Policy,
    interval_us: u64,
    local: LocalLimiter,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.inner.policies.keys().map(|k| &**k).collect();
        names.sort_unstable();
        f.debug_struct("RateLimiter")
            .field("enabled", &self.inner.enabled)
            .field("redis", &self.inner.redis.is_some())
            .field("policies", &names)
            .finish()
    }
}

impl RateLimiter {
    /// An enabled limiter over `policies`: shared through Redis when given, else in process.
    /// Refuses invalid or duplicate policies (one message per problem).
    pub fn new(
        policies: Vec<Policy>,
        redis: Option<ConnectionManager>,
    ) -> Result<Self, ConfigError> {
        Self::build(
            policies,
            redis,
            true,
            Duration::from_millis(DEFAULT_BACKEND_TIMEOUT_MS),
        )
    }

    /// The limiter start-up builds: `policies` (kernel defaults plus every module's) with
    /// the configuration's overrides applied, its `enabled` switch and Redis timeout.
    /// Overrides naming no policy are refused here, where every policy is known.
    pub fn from_config(
        config: &RateLimitConfig,
        policies: Vec<Policy>,
        redis: Option<ConnectionManager>,
    ) -> Result<Self, ConfigError> {
        let problems = config.problems(policies.iter().map(|p| p.name.as_ref()));
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Self::build(
            config.apply(policies),
            redis,
            config.enabled,
            config.backend_timeout(),
        )
    }

    fn build(
        policies: Vec<Policy>,
        redis: Option<ConnectionManager>,
        enabled: bool,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut entries = HashMap::with_capacity(policies.len());
        for policy in policies {
            let mut own = policy.problems();
            if entries.contains_key(policy.name.as_ref()) {
                own.push(format!(
                    "rate limit policy `{}` is defined twice",
                    policy.name
                ));
            }
            if !own.is_empty() {
                problems.extend(own);
                continue;
            }
            let interval = policy.interval();
            let Some(local) = LocalLimiter::new(interval, policy.burst) else {
                problems.push(format!("rate limit policy `{}` is not usable", policy.name));
                continue;
            };
            let interval_us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
            let name: Box<str> = policy.name.as_ref().into();
            entries.insert(
                name,
                Entry {
                    policy,
                    interval_us,
                    local,
                },
            );
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let redis = redis.map(|connection| RedisLimiter::new(connection, timeout));
        Ok(Self {
            inner: Arc::new(Inner {
                enabled,
                policies: entries,
                redis,
                fallbacks: AtomicU64::new(0),
                epoch: Instant::now(),
                redis_retry_at_ms: AtomicU64::new(0),
                last_warning_ms: AtomicU64::new(NEVER),
                next_prune_ms: AtomicU64::new(duration_ms(PRUNE_INTERVAL)),
            }),
        })
    }

    /// Decides one request under `policy` for `key` (the client IP, user id, org id or
    /// session id the policy's [`KeyKind`] names), spending one unit of its allowance when
    /// allowed. Refused requests spend nothing.
    pub async fn check(&self, policy: &str, key: &str) -> Result<Decision, LimitError> {
        let inner = &*self.inner;
        let entry = inner
            .policies
            .get(policy)
            .ok_or_else(|| LimitError::UnknownPolicy(policy.to_owned()))?;
        if !inner.enabled {
            return Ok(entry.full_allowance());
        }
        let Some(redis) = &inner.redis else {
            self.prune_if_due();
            return Ok(entry.decision(entry.local.check(key), DecidedBy::InProcess));
        };
        if !inner.redis_cooling_down() {
            // Boxed: a network future is large, and every request's middleware future would
            // otherwise carry its size (and copy it) even when no Redis is configured.
            match Box::pin(redis.check(policy, key, entry.interval_us, entry.policy.burst)).await {
                Ok(verdict) => return Ok(entry.decision(verdict, DecidedBy::Redis)),
                Err(failure) => inner.redis_failed(&failure),
            }
        }
        match entry.policy.on_backend_failure {
            FailMode::FailClosed => Err(LimitError::Unavailable),
            FailMode::Local => {
                inner.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.prune_if_due();
                Ok(entry.decision(entry.local.check(key), DecidedBy::Fallback))
            }
        }
    }

    /// Drops in-process state for keys whose allowance is full again (indistinguishable
    /// from keys never seen) and returns the memory. The scheduler calls it every minute;
    /// the request path also calls it about as often on its own, so state stays bounded by
    /// the keys active within one period even without the scheduler.
    pub fn prune(&self) {
        for entry in self.inner.policies.values() {
            entry.local.prune();
        }
    }

    /// Keys held in process across all policies (an upper bound on live keys).
    pub fn tracked_keys(&self) -> usize {
        self.inner.policies.values().map(|e| e.local.len()).sum()
    }

    /// Decisions made in process because Redis failed, since start.
    pub fn fallbacks(&self) -> u64 {
        self.inner.fallbacks.load(Ordering::Relaxed)
    }

    /// `false` when configuration switched limits off.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled
    }

    /// The policy named `name`, as configured.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.inner.policies.get(name).map(|e| &e.policy)
    }

    /// Every minute or so, one request hands pruning to a blocking thread: retaining walks
    /// every key, which must not stall the request that happened to notice.
    fn prune_if_due(&self) {
        let look = CHECKS_SINCE_PRUNE_LOOK.with(|n| {
            let next = n.get().wrapping_add(1);
            n.set(next);
            next % PRUNE_SAMPLE == 0
        });
        if !look {
            return;
        }
        let inner = &self.inner;
        let now = inner.now_ms();
        let due = inner.next_prune_ms.load(Ordering::Relaxed);
        if now < due
            || inner
                .next_prune_ms
                .compare_exchange(
                    due,
                    now + duration_ms(PRUNE_INTERVAL),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let limiter = self.clone();
                drop(runtime.spawn_blocking(move || limiter.prune()));
            }
            Err(_) => self.prune(),
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        duration_ms(self.epoch.elapsed())
    }

    fn redis_cooling_down(&self) -> bool {
        self.now_ms() < self.redis_retry_at_ms.load(Ordering::Relaxed)
    }

    fn redis_failed(&self, failure: &BackendFailure) {
        let now = self.now_ms();
        self.redis_retry_at_ms
            .store(now + duration_ms(REDIS_COOLDOWN), Ordering::Relaxed);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if last != NEVER && now < last.saturating_add(duration_ms(WARNING_INTERVAL)) {
            return;
        }
        if self
            .last_warning_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                error = %failure,
                fallbacks = self.fallbacks.load(Ordering::Relaxed),
                "rate limiting cannot reach Redis: fail-closed policies refuse, the others decide in process (next warning in a minute at the earliest)"
            );
        }
    }
}

impl Entry {
    fn decision(&self, verdict: Verdict, decided_by: DecidedBy) -> Decision {
        Decision {
            allowed: verdict.allowed,
            limit: self.policy.burst,
            remaining: verdict.remaining,
            reset_after: verdict.reset_after,
            retry_after: verdict.retry_after,
            decided_by,
        }
    }

    fn full_allowance(&self) -> Decision {
        Decision {
            allowed: true,
            limit: self.policy.burst,
            remaining: self.policy.burst,
            reset_after: Duration::ZERO,
            retry_after: None,
            decided_by: DecidedBy::Disabled,
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
