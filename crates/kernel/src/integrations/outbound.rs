//! The one outbound HTTP client every integration calls through.
//!
//! - TLS always verified (rustls with the platform's roots; nothing turns verification off),
//!   connect and total timeouts (`[outbound]`, 15 s each by default).
//! - Retries only for idempotent methods or calls the caller marks retry-safe (e.g. a POST
//!   carrying an idempotency key): exponential backoff with jitter — before attempt n+1 a
//!   random delay between `base × 2^(n-1)` and twice that, capped — and `Retry-After`
//!   honoured when the service sends one (a longer wait than the cap ends the retries).
//! - A circuit breaker per named service ([`super::breaker`]): while open, calls fail at once
//!   with [`OutboundError::CircuitOpen`], which answers 503 naming the service.
//! - A bulkhead per service: at most `max_concurrent` calls in flight, the rest wait.
//! - Prometheus: `keel_circuit_breaker_state{service}` (0 closed, 1 open, 2 half-open),
//!   `keel_outbound_requests_total{service,outcome}` and
//!   `keel_outbound_request_duration_seconds{service}`.
//! - W3C `traceparent` is propagated when a trace context exists ([`traceparent`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::header;
use rand::Rng as _;
use tokio::sync::Semaphore;

use super::breaker::{Admission, Breaker, BreakerSettings, BreakerSnapshot};
use super::config::{OutboundConfig, ServiceSettings};
use crate::http::ApiError;

/// Why an outbound call failed (a response with an error status is not an error here: the
/// caller reads it).
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("the circuit breaker of `{service}` is open; calls fail fast for {}s", retry_in.as_secs())]
    CircuitOpen { service: String, retry_in: Duration },
    #[error("`{service}` did not answer in time")]
    Timeout {
        service: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot reach `{service}`")]
    Connect {
        service: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the call to `{service}` failed")]
    Request {
        service: String,
        #[source]
        source: reqwest::Error,
    },
}

impl OutboundError {
    pub fn service(&self) -> &str {
        match self {
            Self::CircuitOpen { service, .. }
            | Self::Timeout { service, .. }
            | Self::Connect { service, .. }
            | Self::Request { service, .. } => service,
        }
    }

    fn from_reqwest(service: &str, e: reqwest::Error) -> Self {
        let service = service.to_string();
        if e.is_timeout() {
            Self::Timeout { service, source: e }
        } else if e.is_connect() {
            Self::Connect { service, source: e }
        } else {
            Self::Request { service, source: e }
        }
    }
}

/// An open breaker answers 503 naming the service (with `Retry-After`); a timeout 504; any
/// other failure to reach the service 502. The cause is logged, not sent.
impl From<OutboundError> for ApiError {
    fn from(e: OutboundError) -> Self {
        let service = e.service().to_string();
        let mut err = match &e {
            OutboundError::CircuitOpen { retry_in, .. } => ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "/problems/service-unavailable",
                "Service unavailable",
            )
            .detail(format!(
                "`{service}` is failing; calls to it are paused (circuit breaker open)"
            ))
            .with_header(header::RETRY_AFTER, retry_in.as_secs().max(1)),
            OutboundError::Timeout { .. } => ApiError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                "/problems/upstream-timeout",
                "Upstream timeout",
            )
            .detail(format!("`{service}` did not answer in time")),
            _ => ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "/problems/upstream-unavailable",
                "Upstream unavailable",
            )
            .detail(format!("`{service}` could not be reached")),
        }
        .with_extra("service", service);
        if !matches!(e, OutboundError::CircuitOpen { .. }) {
            err.source = Some(anyhow::Error::new(e));
        }
        err
    }
}

/// The W3C `traceparent` of the current trace (a request's, or the exported span's), so the
/// callee's work joins the caller's trace.
pub fn traceparent() -> Option<String> {
    crate::observe::trace::outbound_traceparent()
}

struct Service {
    settings: ServiceSettings,
    breaker: Breaker,
    bulkhead: Arc<Semaphore>,
}

/// The resilient client (`state.integrations.outbound`). Cheap to share behind an `Arc`.
pub struct Outbound {
    client: reqwest::Client,
    config: OutboundConfig,
    services: Mutex<BTreeMap<String, Arc<Service>>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("config", &self.config)
            .finish()
    }
}

/// A client builder with Keel's timeouts and TLS settings (for clients that need more, such
/// as the webhook sender's guarded resolver).
pub fn client_builder(config: &OutboundConfig) -> reqwest::ClientBuilder {
    crate::server::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        .timeout(Duration::from_millis(config.timeout_ms))
        .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
}

/// Marks a call's probe slot free again if the call is dropped before its outcome is known.
struct AdmissionGuard<'a> {
    breaker: &'a Breaker,
    admission: Option<Admission>,
}

impl AdmissionGuard<'_> {
    fn record(mut self, success: bool) {
        if let Some(a) = self.admission.take() {
            self.breaker.record(a, success);
        }
    }
}

impl Drop for AdmissionGuard<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            self.breaker.abandon(a);
        }
    }
}

impl Outbound {
    pub fn new(config: &OutboundConfig) -> anyhow::Result<Self> {
        let client = client_builder(config)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the outbound HTTP client: {e}"))?;
        Ok(Self {
            client,
            config: config.clone(),
            services: Mutex::new(BTreeMap::new()),
        })
    }

    /// The underlying client, to build requests with (`outbound.client().get(url)`); send
    /// them through [`Outbound::execute`].
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn config(&self) -> &OutboundConfig {
        &self.config
    }

    fn service(&self, name: &str) -> Arc<Service> {
        let mut services = match self.services.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        services
            .entry(name.to_string())
            .or_insert_with(|| {
                metrics::gauge!("keel_circuit_breaker_state", "service" => name.to_string())
                    .set(0.0);
                let settings = self.config.service(name);
                Arc::new(Service {
                    settings,
                    breaker: Breaker::new(BreakerSettings {
                        threshold: settings.breaker_failure_threshold,
                        open_for: settings.breaker_open,
                        probes: settings.breaker_half_open_probes,
                    }),
                    bulkhead: Arc::new(Semaphore::new(settings.max_concurrent as usize)),
                })
            })
            .clone()
    }

    /// Every breaker this process has used, by service name.
    pub fn breakers(&self) -> Vec<BreakerSnapshot> {
        let services: Vec<(String, Arc<Service>)> = match self.services.lock() {
            Ok(g) => g.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(p) => p
                .into_inner()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        services
            .iter()
            .map(|(name, s)| {
                let max = s.settings.max_concurrent;
                let in_flight = max.saturating_sub(s.bulkhead.available_permits() as u32);
                s.breaker.snapshot(name, in_flight, max)
            })
            .collect()
    }

    /// The delay before attempt `attempt + 1`: between `base × 2^(attempt-1)` and twice
    /// that, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let low = self
            .config
            .retry_base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        let high = low.saturating_mul(2);
        let ms = rand::rng().random_range(low..=high);
        Duration::from_millis(ms.min(self.config.retry_cap_ms))
    }

    /// Sends `request` to the named service through its breaker and bulkhead, retrying as
    /// described in the module documentation. `retry_safe` allows retries of a
    /// non-idempotent method (the caller guarantees a repeat has no second effect).
    ///
    /// A response with any status is `Ok` (after retries, a 5xx or 429 is the last one
    /// received): the caller decides what it means.
    pub async fn execute(
        &self,
        service: &str,
        request: reqwest::Request,
        retry_safe: bool,
    ) -> Result<reqwest::Response, OutboundError> {
        let svc = self.service(service);
        let retryable = retry_safe || request.method().is_idempotent();
        let attempts = if retryable {
            svc.settings.retry_attempts
        } else {
            1
        };
        let mut this = request;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Keep a copy for the next attempt; a streaming body cannot be copied, so such a
            // request gets one attempt.
            let next = if attempt < attempts {
                this.try_clone()
            } else {
                None
            };

            let admission = match svc.breaker.admit() {
                Ok(a) => a,
                Err(retry_in) => {
                    metrics::counter!("keel_outbound_requests_total", "service" => service.to_string(), "outcome" => "rejected").increment(1);
                    self.publish_state(service, &svc);
                    return Err(OutboundError::CircuitOpen {
                        service: service.to_string(),
                        retry_in,
                    });
                }
            };
            let guard = AdmissionGuard {
                breaker: &svc.breaker,
                admission: Some(admission),
            };
            *this.timeout_mut() = Some(svc.settings.timeout);
            if let Some(tp) = traceparent()
                && let Ok(v) = header::HeaderValue::from_str(&tp)
            {
                this.headers_mut().insert("traceparent", v);
            }
            let permit = svc.bulkhead.clone().acquire_owned().await;
            let started = Instant::now();
            let result = self.client.execute(this).await;
            drop(permit);
            let elapsed = started.elapsed();
            metrics::histogram!("keel_outbound_request_duration_seconds", "service" => service.to_string())
                .record(elapsed.as_secs_f64());
            crate::observe::warn_if_slow("outbound", service, elapsed);
            match result {
                Ok(response) => {
                    let status = response.status();
                    let failed = status.is_server_error() || status.as_u16() == 429;
                    guard.record(!failed);
                    metrics::counter!("keel_outbound_requests_total", "service" => service.to_string(), "outcome" => if failed { "error_status" } else { "ok" }).increment(1);
                    self.publish_state(service, &svc);
                    let Some(next) = next.filter(|_| failed) else {
                        return Ok(response);
                    };
                    let delay = match retry_after(&response) {
                        Some(d) if d > Duration::from_millis(self.config.retry_cap_ms) => {
                            return Ok(response);
                        }
                        Some(d) => d,
                        None => self.backoff(attempt),
                    };
                    tracing::debug!(
                        service,
                        attempt,
                        status = status.as_u16(),
                        delay_ms = delay.as_millis() as u64,
                        "outbound call failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    this = next;
                }
                Err(e) => {
                    guard.record(false);
                    let err = OutboundError::from_reqwest(service, e);
                    let outcome = match err {
                        OutboundError::Timeout { .. } => "timeout",
                        _ => "error",
                    };
                    metrics::counter!("keel_outbound_requests_total", "service" => service.to_string(), "outcome" => outcome).increment(1);
                    self.publish_state(service, &svc);
                    let Some(next) = next else {
                        return Err(err);
                    };
                    let delay = self.backoff(attempt);
                    tracing::debug!(service, attempt, error = %err, delay_ms = delay.as_millis() as u64, "outbound call failed; retrying");
                    tokio::time::sleep(delay).await;
                    this = next;
                }
            }
        }
    }

    fn publish_state(&self, service: &str, svc: &Service) {
        metrics::gauge!("keel_circuit_breaker_state", "service" => service.to_string())
            .set(svc.breaker.state().gauge());
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_band_and_is_capped() {
        let outbound = Outbound::new(&OutboundConfig::default()).expect("client");
        for _ in 0..50 {
            let first = outbound.backoff(1);
            assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2));
            let second = outbound.backoff(2);
            assert!(second >= Duration::from_secs(2) && second <= Duration::from_secs(4));
            assert!(outbound.backoff(10) <= Duration::from_secs(10));
        }
    }
}
