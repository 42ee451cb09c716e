//! The in-process backend: one keyed `governor` limiter (GCRA on a `DashMap` of atomics) per
//! policy.
//!
//! It decides alone when the app has no Redis, and stands in for Redis under
//! [`FailMode::Local`](super::FailMode::Local). Each key's state is one `AtomicU64` updated by
//! compare-and-swap, so concurrent requests for a key can never pass more than the limit.

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::Verdict;

type Keyed =
    RateLimiter<String, DashMapStateStore<String>, MonotonicClock, StateInformationMiddleware>;

/// Keys longer than this do not keep the per-thread lookup buffer grown.
const KEY_BUFFER_KEEP: usize = 1024;

thread_local! {
    /// governor looks keys up by `&String`; copying the caller's `&str` into a reused buffer
    /// keeps the hot path free of allocation (a key is allocated once, when first seen).
    static KEY_BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

/// One policy's in-process limiter.
pub(crate) struct LocalLimiter {
    limiter: Keyed,
    burst: u32,
    /// The cost of one request (period / limit).
    interval: Duration,
}

impl LocalLimiter {
    /// `None` when the parameters make no limiter (zero burst or interval); policies are
    /// validated before this is reached.
    pub(crate) fn new(interval: Duration, burst: u32) -> Option<Self> {
        let quota = Quota::with_period(interval)?.allow_burst(NonZeroU32::new(burst)?);
        let limiter: Keyed = RateLimiter::new(quota, DashMapStateStore::default(), MonotonicClock);
        Some(Self {
            limiter,
            burst,
            interval,
        })
    }

    pub(crate) fn check(&self, key: &str) -> Verdict {
        let outcome = KEY_BUFFER.with_borrow_mut(|buffer| {
            buffer.clear();
            buffer.push_str(key);
            let outcome = self.limiter.check_key(buffer);
            if buffer.capacity() > KEY_BUFFER_KEEP {
                *buffer = String::new();
            }
            outcome
        });
        match outcome {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.burst);
                // The snapshot hides the exact TAT; whole used intervals bound it from above
                // (by less than one interval), so the allowance is surely full by then.
                let used = self.burst - remaining;
                Verdict {
                    allowed: true,
                    remaining,
                    reset_after: self.interval.saturating_mul(used),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.limiter.clock().now());
                // Refused means the TAT is `tolerance` past the earliest conforming time.
                let tolerance = self.interval.saturating_mul(self.burst - 1);
                Verdict {
                    allowed: false,
                    remaining: 0,
                    reset_after: retry_after.saturating_add(tolerance),
                    retry_after: Some(retry_after),
                }
            }
        }
    }

    /// Drops keys whose state equals a fresh one (their allowance is full again), then gives
    /// the memory back.
    pub(crate) fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys currently held.
    pub(crate) fn len(&self) -> usize {
        self.limiter.len()
    }
}
