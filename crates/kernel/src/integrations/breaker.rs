//! A circuit breaker per named service: CLOSED → OPEN after `threshold` consecutive
//! failures → (after `open_for`) HALF_OPEN, where up to `probes` calls go through → CLOSED
//! once `probes` of them succeeded, OPEN again on any failure.
//!
//! Written here rather than taken from `failsafe` or `tower-resilience`: the kernel needs
//! what those do not expose together — the state, counts and time of the last transition
//! of every breaker for `GET /api/v1/metrics/circuit-breakers` and Prometheus, a bounded
//! number of concurrent half-open probes, and a breaker that wraps reqwest calls with
//! retries (not a tower `Service`). The state machine is ~100 lines behind one mutex,
//! held only to read or flip a few fields, never across an await.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The Prometheus gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

/// What `GET /api/v1/metrics/circuit-breakers` shows of one breaker.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BreakerSnapshot {
    pub service: String,
    pub state: BreakerState,
    /// Failures in a row (reset by a success).
    pub consecutive_failures: u32,
    pub successes: u64,
    pub failures: u64,
    /// Calls refused at once because the breaker was open.
    pub rejected: u64,
    /// Times the breaker opened.
    pub opened: u64,
    pub last_transition_at: Option<DateTime<Utc>>,
    /// Calls in flight right now (the bulkhead's occupancy).
    pub in_flight: u32,
    pub max_concurrent: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub threshold: u32,
    pub open_for: Duration,
    pub probes: u32,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probes_in_flight: u32,
    probe_successes: u32,
    successes: u64,
    failures: u64,
    rejected: u64,
    opened: u64,
    last_transition_at: Option<DateTime<Utc>>,
}

/// One service's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

/// Leave to make one call; report how it went with [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    probe: bool,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                probes_in_flight: 0,
                probe_successes: 0,
                successes: 0,
                failures: 0,
                rejected: 0,
                opened: 0,
                last_transition_at: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn transition(inner: &mut Inner, to: BreakerState) {
        inner.state = to;
        inner.last_transition_at = Some(crate::store::now());
        match to {
            BreakerState::Open => {
                inner.opened_at = Some(Instant::now());
                inner.opened += 1;
                inner.probes_in_flight = 0;
                inner.probe_successes = 0;
            }
            BreakerState::HalfOpen => {
                inner.probes_in_flight = 0;
                inner.probe_successes = 0;
            }
            BreakerState::Closed => {
                inner.consecutive_failures = 0;
                inner.opened_at = None;
            }
        }
    }

    /// Lets a call through, or says how long until the breaker lets probes through.
    pub fn admit(&self) -> Result<Admission, Duration> {
        let mut inner = self.lock();
        if inner.state == BreakerState::Open {
            let elapsed = inner
                .opened_at
                .map_or(self.settings.open_for, |t| t.elapsed());
            if elapsed < self.settings.open_for {
                inner.rejected += 1;
                return Err(self.settings.open_for - elapsed);
            }
            Self::transition(&mut inner, BreakerState::HalfOpen);
        }
        if inner.state == BreakerState::HalfOpen {
            if inner.probes_in_flight + inner.probe_successes >= self.settings.probes {
                inner.rejected += 1;
                return Err(Duration::ZERO);
            }
            inner.probes_in_flight += 1;
            return Ok(Admission { probe: true });
        }
        Ok(Admission { probe: false })
    }

    /// Records the outcome of an admitted call.
    pub fn record(&self, admission: Admission, success: bool) {
        let mut inner = self.lock();
        if success {
            inner.successes += 1;
            inner.consecutive_failures = 0;
        } else {
            inner.failures += 1;
            inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        }
        match inner.state {
            BreakerState::HalfOpen if admission.probe => {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                if success {
                    inner.probe_successes += 1;
                    if inner.probe_successes >= self.settings.probes {
                        Self::transition(&mut inner, BreakerState::Closed);
                    }
                } else {
                    Self::transition(&mut inner, BreakerState::Open);
                }
            }
            BreakerState::Closed
                if !success && inner.consecutive_failures >= self.settings.threshold =>
            {
                Self::transition(&mut inner, BreakerState::Open);
            }
            _ => {}
        }
    }

    /// Releases a probe slot whose call ended without an outcome (cancelled).
    pub fn abandon(&self, admission: Admission) {
        if admission.probe {
            let mut inner = self.lock();
            if inner.state == BreakerState::HalfOpen {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            }
        }
    }

    /// The current state (an open breaker past its open period reads as half-open).
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.state {
            BreakerState::Open
                if inner
                    .opened_at
                    .is_some_and(|t| t.elapsed() >= self.settings.open_for) =>
            {
                BreakerState::HalfOpen
            }
            s => s,
        }
    }

    pub fn snapshot(&self, service: &str, in_flight: u32, max_concurrent: u32) -> BreakerSnapshot {
        let state = self.state();
        let inner = self.lock();
        BreakerSnapshot {
            service: service.to_string(),
            state,
            consecutive_failures: inner.consecutive_failures,
            successes: inner.successes,
            failures: inner.failures,
            rejected: inner.rejected,
            opened: inner.opened,
            last_transition_at: inner.last_transition_at,
            in_flight,
            max_concurrent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_ms: u64) -> Breaker {
        Breaker::new(BreakerSettings {
            threshold: 2,
            open_for: Duration::from_millis(open_ms),
            probes: 1,
        })
    }

    #[test]
    fn opens_after_the_threshold_and_fails_fast() {
        let b = breaker(60_000);
        for _ in 0..2 {
            let a = b.admit().expect("closed");
            b.record(a, false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
        assert_eq!(b.snapshot("x", 0, 1).rejected, 1);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let b = breaker(60_000);
        let a = b.admit().expect("closed");
        b.record(a, false);
        let a = b.admit().expect("closed");
        b.record(a, true);
        let a = b.admit().expect("closed");
        b.record(a, false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_admits_one_probe_and_closes_on_success() {
        let b = breaker(0);
        for _ in 0..2 {
            let a = b.admit().expect("closed");
            b.record(a, false);
        }
        let probe = b.admit().expect("probe");
        assert!(b.admit().is_err(), "only one probe at a time");
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = breaker(0);
        for _ in 0..2 {
            let a = b.admit().expect("closed");
            b.record(a, false);
        }
        let probe = b.admit().expect("probe");
        b.record(probe, false);
        assert_eq!(b.snapshot("x", 0, 1).opened, 2);
    }
}
