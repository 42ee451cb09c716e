//! `[outbound]`, `[llm]` and `[webhooks]`: the configuration of calls to other services.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// `[outbound]`: the resilient client every integration calls through. Durations are in
/// milliseconds so tests can run with short knobs. Breaker and bulkhead settings apply to
/// each named service on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Longest wait for a TCP + TLS connection.
    pub connect_timeout_ms: u64,
    /// Longest one attempt may take, from sending to the last byte of the response.
    pub timeout_ms: u64,
    /// Attempts of an idempotent or retry-safe call (1 = no retry).
    pub retry_attempts: u32,
    /// Retry delay before attempt n+1: random between `base × 2^(n-1)` and twice that
    /// (1–2 s, then 2–4 s), capped at `retry_cap_ms`. A `Retry-After` longer than the cap
    /// ends the retries.
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Consecutive failures (connection errors, timeouts, 5xx, 429) that open a service's
    /// circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long an open breaker fails calls fast before letting probes through.
    pub breaker_open_ms: u64,
    /// Successful probe calls (half-open) that close the breaker again; one failure reopens it.
    pub breaker_half_open_probes: u32,
    /// Calls in flight at once per service (bulkhead); more wait for a slot.
    pub max_concurrent: u32,
    /// Per-service overrides, by service name (`[outbound.services."llm.openai"]`).
    pub services: BTreeMap<String, ServiceOverride>,
}

/// `[outbound.services."<name>"]`: settings of one service that differ from `[outbound]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceOverride {
    pub timeout_ms: Option<u64>,
    pub retry_attempts: Option<u32>,
    pub breaker_failure_threshold: Option<u32>,
    pub breaker_open_ms: Option<u64>,
    pub breaker_half_open_probes: Option<u32>,
    pub max_concurrent: Option<u32>,
}

/// One service's settings: `[outbound]` with its overrides applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSettings {
    pub timeout: Duration,
    pub retry_attempts: u32,
    pub breaker_failure_threshold: u32,
    pub breaker_open: Duration,
    pub breaker_half_open_probes: u32,
    pub max_concurrent: u32,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 15_000,
            timeout_ms: 15_000,
            retry_attempts: 3,
            retry_base_ms: 1_000,
            retry_cap_ms: 10_000,
            breaker_failure_threshold: 5,
            breaker_open_ms: 30_000,
            breaker_half_open_probes: 1,
            max_concurrent: 32,
            services: BTreeMap::new(),
        }
    }
}

impl OutboundConfig {
    /// The settings of the service named `name`.
    pub fn service(&self, name: &str) -> ServiceSettings {
        let o = self.services.get(name).cloned().unwrap_or_default();
        ServiceSettings {
            timeout: Duration::from_millis(o.timeout_ms.unwrap_or(self.timeout_ms).max(1)),
            retry_attempts: o.retry_attempts.unwrap_or(self.retry_attempts).max(1),
            breaker_failure_threshold: o
                .breaker_failure_threshold
                .unwrap_or(self.breaker_failure_threshold)
                .max(1),
            breaker_open: Duration::from_millis(o.breaker_open_ms.unwrap_or(self.breaker_open_ms)),
            breaker_half_open_probes: o
                .breaker_half_open_probes
                .unwrap_or(self.breaker_half_open_probes)
                .max(1),
            max_concurrent: o.max_concurrent.unwrap_or(self.max_concurrent).max(1),
        }
    }

    pub fn value_problems(&self) -> Vec<String> {
        let mut problems = self.own_problems("outbound");
        for (name, o) in &self.services {
            let section = format!("outbound.services.\"{name}\"");
            for (key, value) in [
                ("timeout_ms", o.timeout_ms),
                ("breaker_open_ms", o.breaker_open_ms),
            ] {
                if value.is_some_and(|v| v == 0 || v > 3_600_000) {
                    problems.push(format!("{section}.{key}: must be between 1 and 3600000"));
                }
            }
            if o.retry_attempts.is_some_and(|n| !(1..=10).contains(&n)) {
                problems.push(format!(
                    "{section}.retry_attempts: must be between 1 and 10"
                ));
            }
            for (key, value) in [
                ("breaker_failure_threshold", o.breaker_failure_threshold),
                ("breaker_half_open_probes", o.breaker_half_open_probes),
                ("max_concurrent", o.max_concurrent),
            ] {
                if value == Some(0) {
                    problems.push(format!("{section}.{key}: must be at least 1"));
                }
            }
        }
        problems
    }

    fn own_problems(&self, section: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("timeout_ms", self.timeout_ms),
            ("retry_base_ms", self.retry_base_ms),
            ("breaker_open_ms", self.breaker_open_ms),
        ] {
            if value == 0 {
                problems.push(format!("{section}.{key}: must be greater than 0"));
            }
            if value > 3_600_000 {
                problems.push(format!("{section}.{key}: must be at most 3600000 (1 hour)"));
            }
        }
        if self.retry_cap_ms < self.retry_base_ms {
            problems.push(format!(
                "{section}.retry_cap_ms: must not be below retry_base_ms"
            ));
        }
        if !(1..=10).contains(&self.retry_attempts) {
            problems.push(format!(
                "{section}.retry_attempts: must be between 1 and 10"
            ));
        }
        if self.breaker_failure_threshold == 0 {
            problems.push(format!(
                "{section}.breaker_failure_threshold: must be at least 1"
            ));
        }
        if self.breaker_half_open_probes == 0 {
            problems.push(format!(
                "{section}.breaker_half_open_probes: must be at least 1"
            ));
        }
        if self.max_concurrent == 0 {
            problems.push(format!("{section}.max_concurrent: must be at least 1"));
        }
        problems
    }
}

/// Which LLM API `[llm]` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LlmProviderKind {
    /// OpenAI-compatible `POST {base_url}/v1/chat/completions` (text and image parts).
    #[default]
    Openai,
    /// Google Gemini `POST {base_url}/v1beta/models/{model}:generateContent`.
    Gemini,
}

/// `[llm]`: the LLM client and its response cache. Without `api_key` the AI features are
/// disabled: readiness says so and AI endpoints answer 503.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    pub provider: LlmProviderKind,
    /// The API's base URL (no trailing path), e.g. `https://api.openai.com`.
    pub base_url: String,
    pub model: String,
    /// `KEEL_LLM__API_KEY`; unset disables the AI features.
    pub api_key: Option<Secret>,
    /// Most tokens one answer may have.
    pub max_tokens: u32,
    /// Keep answers in the database and answer identical requests from there (per
    /// organization).
    pub cache_enabled: bool,
    /// Days a cached answer is reused; a scheduled cleanup removes older ones.
    pub cache_ttl_days: u32,
    /// Also cache requests with temperature > 0 (whose answers vary by design).
    pub cache_nonzero_temperature: bool,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            provider: LlmProviderKind::Openai,
            base_url: "https://api.openai.com".into(),
            model: "gpt-4o-mini".into(),
            api_key: None,
            max_tokens: 2048,
            cache_enabled: true,
            cache_ttl_days: 30,
            cache_nonzero_temperature: false,
        }
    }
}

impl LlmConfig {
    pub fn value_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.base_url.starts_with("https://") || self.base_url.starts_with("http://")) {
            problems.push("llm.base_url: must start with https:// or http://".into());
        }
        if self.model.trim().is_empty() {
            problems.push("llm.model: must not be empty".into());
        }
        if self
            .api_key
            .as_ref()
            .is_some_and(|k| k.expose().trim().is_empty())
        {
            problems.push("llm.api_key: must not be empty (leave it unset to disable AI)".into());
        }
        if self.max_tokens == 0 {
            problems.push("llm.max_tokens: must be at least 1".into());
        }
        if !(1..=3650).contains(&self.cache_ttl_days) {
            problems.push("llm.cache_ttl_days: must be between 1 and 3650".into());
        }
        problems
    }

    pub fn enabled(&self) -> bool {
        self.api_key.is_some()
    }
}

/// `[webhooks]`: incoming verification and outgoing deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Incoming: a signed timestamp further than this from now is refused (replays of old
    /// captures).
    pub timestamp_tolerance_secs: u64,
    /// Outgoing: delivery attempts before a delivery is given up (the job queue's backoff
    /// spaces them).
    pub delivery_max_attempts: u32,
    /// Outgoing: endpoint URLs may resolve into these networks (CIDRs, e.g. `127.0.0.1/32`).
    /// Private, loopback, link-local and other non-public addresses are refused otherwise,
    /// at registration and again at every delivery.
    #[serde(deserialize_with = "crate::config::string_or_list")]
    pub allow_private_networks: Vec<String>,
    /// Outgoing: bytes of a receiver's response kept in the attempt log.
    pub response_snippet_bytes: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            timestamp_tolerance_secs: 300,
            delivery_max_attempts: 8,
            allow_private_networks: Vec::new(),
            response_snippet_bytes: 512,
        }
    }
}

impl WebhooksConfig {
    pub fn value_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=86_400).contains(&self.timestamp_tolerance_secs) {
            problems.push("webhooks.timestamp_tolerance_secs: must be between 1 and 86400".into());
        }
        if !(1..=50).contains(&self.delivery_max_attempts) {
            problems.push("webhooks.delivery_max_attempts: must be between 1 and 50".into());
        }
        if self.response_snippet_bytes > 65_536 {
            problems.push("webhooks.response_snippet_bytes: must be at most 65536".into());
        }
        for net in &self.allow_private_networks {
            if super::webhooks::ssrf::parse_net(net).is_none() {
                problems.push(format!(
                    "webhooks.allow_private_networks: `{net}` is not an IP address or CIDR"
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_override_wins_over_the_defaults_and_is_validated() {
        let mut config = OutboundConfig::default();
        config.services.insert(
            "llm.openai".into(),
            ServiceOverride {
                timeout_ms: Some(60_000),
                max_concurrent: Some(0),
                ..ServiceOverride::default()
            },
        );
        let s = config.service("llm.openai");
        assert_eq!(s.timeout, Duration::from_secs(60));
        assert_eq!(s.retry_attempts, 3);
        assert_eq!(config.service("other").timeout, Duration::from_secs(15));
        assert_eq!(
            config.value_problems(),
            vec!["outbound.services.\"llm.openai\".max_concurrent: must be at least 1".to_string()]
        );
        assert!(OutboundConfig::default().value_problems().is_empty());
        assert!(LlmConfig::default().value_problems().is_empty());
        assert!(WebhooksConfig::default().value_problems().is_empty());
        let bad = WebhooksConfig {
            allow_private_networks: vec!["not-a-net".into()],
            ..WebhooksConfig::default()
        };
        assert_eq!(bad.value_problems().len(), 1);
    }
}
