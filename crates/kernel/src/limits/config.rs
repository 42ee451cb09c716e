//! `[rate_limits]`: switching limits off and overriding policies by name.
//!
//! Policies themselves are code ([`default_policies`](super::default_policies) plus what
//! apps add); configuration only adjusts them, so a typo cannot invent a policy no route
//! uses. Names contain dots, so in TOML they are quoted keys:
//!
//! ```toml
//! [rate_limits.policies."auth.login"]
//! limit = 10
//! period_secs = 60
//! ```
//!
//! From the environment: `KEEL_RATE_LIMITS__ENABLED=false`, and for names without dots
//! `KEEL_RATE_LIMITS__POLICIES__OCR__LIMIT=40`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FailMode, KeyKind, Policy};

/// How long one Redis decision may take before it counts as a backend failure.
pub const DEFAULT_BACKEND_TIMEOUT_MS: u64 = 250;

/// The `[rate_limits]` section. The backend is implicit: Redis when the app has Redis
/// (`KEEL_REDIS_URL`), else in process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// `KEEL_RATE_LIMITS__ENABLED`: `false` lets every request through (headers still
    /// show each policy's full allowance). Meant for load tests, not production.
    pub enabled: bool,
    /// Longest wait for Redis on one decision before the policy's failure mode applies.
    pub backend_timeout_ms: u64,
    /// Overrides by policy name, e.g. `[rate_limits.policies."auth.login"]`.
    pub policies: BTreeMap<String, PolicyOverride>,
    /// Prefix for every limit key, so deployments (or test runs) sharing one Redis keep
    /// separate allowances. Empty by default.
    pub namespace: String,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            backend_timeout_ms: DEFAULT_BACKEND_TIMEOUT_MS,
            policies: BTreeMap::new(),
            namespace: String::new(),
        }
    }
}

/// Changes to one policy; what is absent keeps the policy's own value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyOverride {
    /// Requests per period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_secs: Option<u64>,
    /// Requests that may pass at once. When absent and the policy's burst equalled its
    /// limit, the burst follows a new limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_backend_failure: Option<FailMode>,
}

impl RateLimitConfig {
    /// Problems visible without knowing which policies exist (zero values), one message per
    /// problem. [`Config::validate`](crate::config::Config::validate) reports these; names
    /// are checked by [`RateLimitConfig::problems`] once every module's policies are known.
    pub fn value_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.backend_timeout_ms == 0 {
            problems.push("rate_limits.backend_timeout_ms: must be greater than 0".into());
        }
        for (name, o) in &self.policies {
            let zero = [
                ("limit", o.limit.map(u64::from)),
                ("period_secs", o.period_secs),
                ("burst", o.burst.map(u64::from)),
            ];
            for (field, value) in zero {
                if value == Some(0) {
                    problems.push(format!(
                        "rate_limits.policies.\"{name}\".{field}: must be greater than 0"
                    ));
                }
            }
        }
        problems
    }

    /// Every problem, given the names of the policies that exist: the value problems plus
    /// overrides naming no known policy.
    pub fn problems<'a>(&self, known: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let known: Vec<&str> = known.into_iter().collect();
        let mut problems = Vec::new();
        for name in self.policies.keys() {
            if !known.contains(&name.as_str()) {
                let mut sorted = known.clone();
                sorted.sort_unstable();
                problems.push(format!(
                    "rate_limits.policies.\"{name}\": no such policy (known: {})",
                    sorted.join(", ")
                ));
            }
        }
        problems.extend(self.value_problems());
        problems
    }

    /// The policies with their overrides applied. Overrides naming no policy are ignored
    /// here; [`RateLimitConfig::problems`] reports them.
    pub fn apply(&self, mut policies: Vec<Policy>) -> Vec<Policy> {
        for policy in &mut policies {
            let Some(o) = self.policies.get(policy.name.as_ref()) else {
                continue;
            };
            let burst_follows_limit = policy.burst == policy.limit;
            if let Some(limit) = o.limit {
                policy.limit = limit;
            }
            if let Some(secs) = o.period_secs {
                policy.period = Duration::from_secs(secs);
            }
            match o.burst {
                Some(burst) => policy.burst = burst,
                None if burst_follows_limit => policy.burst = policy.limit,
                None => {}
            }
            if let Some(key) = o.key {
                policy.key = key;
            }
            if let Some(mode) = o.on_backend_failure {
                policy.on_backend_failure = mode;
            }
        }
        policies
    }

    /// `backend_timeout_ms` as a duration.
    pub fn backend_timeout(&self) -> Duration {
        Duration::from_millis(self.backend_timeout_ms)
    }
}
