//! Recent-window latency statistics for the admin JSON summaries.
//!
//! Prometheus histograms are cumulative since start-up and need a Prometheus server to turn
//! into percentiles; an operator asking one node "how are you doing right now?" wants p50,
//! p95 and p99 over the last few minutes. Each series (an HTTP route, a database operation)
//! keeps one small log-bucketed histogram per minute for the last [`SLOTS`] minutes.
//!
//! Buckets grow geometrically by [`RATIO`] from [`MIN_MICROS`], so a reported percentile is
//! the upper bound of its bucket: never below the true value and at most 12 % above it, and a series costs a few kilobytes whatever the
//! traffic. Recording takes one uncontended mutex and no allocation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Minutes of history kept (and summarised).
pub const SLOTS: usize = 5;
const BUCKETS: usize = 160;
const MIN_MICROS: f64 = 10.0;
/// Growth factor between bucket bounds: 10 µs · 1.12^159 ≈ 680 s.
const RATIO: f64 = 1.12;

#[derive(Clone)]
struct Slot {
    minute: u64,
    count: u64,
    errors: u64,
    sum_micros: u64,
    max_micros: u64,
    buckets: [u32; BUCKETS],
}

impl Slot {
    fn empty(minute: u64) -> Self {
        Self {
            minute,
            count: 0,
            errors: 0,
            sum_micros: 0,
            max_micros: 0,
            buckets: [0; BUCKETS],
        }
    }
}

/// One series: a ring of per-minute histograms.
struct Series {
    slots: Vec<Slot>,
}

fn bucket_of(micros: u64) -> usize {
    if (micros as f64) <= MIN_MICROS {
        return 0;
    }
    let idx = ((micros as f64) / MIN_MICROS).ln() / RATIO.ln();
    (idx.ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in microseconds.
fn bucket_bound(idx: usize) -> f64 {
    MIN_MICROS * RATIO.powi(idx as i32)
}

impl Series {
    fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Slot::empty(u64::MAX)).collect(),
        }
    }

    fn record(&mut self, minute: u64, micros: u64, error: bool) {
        let slot = &mut self.slots[(minute % SLOTS as u64) as usize];
        if slot.minute != minute {
            *slot = Slot::empty(minute);
        }
        slot.count += 1;
        slot.errors += u64::from(error);
        slot.sum_micros = slot.sum_micros.saturating_add(micros);
        slot.max_micros = slot.max_micros.max(micros);
        let b = &mut slot.buckets[bucket_of(micros)];
        *b = b.saturating_add(1);
    }

    fn summary(&self, now_minute: u64) -> Option<LatencySummary> {
        let oldest = now_minute.saturating_sub(SLOTS as u64 - 1);
        let live: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.minute != u64::MAX && s.minute >= oldest && s.minute <= now_minute)
            .collect();
        let count: u64 = live.iter().map(|s| s.count).sum();
        if count == 0 {
            return None;
        }
        let mut merged = [0u64; BUCKETS];
        for s in &live {
            for (m, b) in merged.iter_mut().zip(s.buckets.iter()) {
                *m += u64::from(*b);
            }
        }
        let max = live.iter().map(|s| s.max_micros).max().unwrap_or(0);
        let quantile = |q: f64| -> f64 {
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in merged.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    // Never report more than the largest value actually seen.
                    return bucket_bound(i).min(max as f64);
                }
            }
            max as f64
        };
        let errors: u64 = live.iter().map(|s| s.errors).sum();
        let sum: u64 = live.iter().map(|s| s.sum_micros).sum();
        Some(LatencySummary {
            count,
            errors,
            error_rate: errors as f64 / count as f64,
            mean_ms: ms(sum as f64 / count as f64),
            p50_ms: ms(quantile(0.50)),
            p95_ms: ms(quantile(0.95)),
            p99_ms: ms(quantile(0.99)),
            max_ms: ms(max as f64),
        })
    }
}

fn ms(micros: f64) -> f64 {
    (micros / 10.0).round() / 100.0
}

/// Count, errors and latency percentiles of one series over the window.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LatencySummary {
    pub count: u64,
    /// Failures: 5xx responses for HTTP, errors for database operations.
    pub errors: u64,
    pub error_rate: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A set of series keyed by a bounded label (route template, operation name).
pub struct Windows<K> {
    epoch: Instant,
    series: RwLock<HashMap<K, Arc<Mutex<Series>>>>,
}

impl<K> std::fmt::Debug for Windows<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Windows").finish_non_exhaustive()
    }
}

impl<K: std::hash::Hash + Eq + Clone + Ord> Default for Windows<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: std::hash::Hash + Eq + Clone + Ord> Windows<K> {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            series: RwLock::new(HashMap::new()),
        }
    }

    fn minute(&self) -> u64 {
        self.epoch.elapsed().as_secs() / 60
    }

    /// Records one observation of `key` (`own` makes the stored key, only for a new series).
    pub fn record<Q>(&self, key: &Q, own: impl FnOnce(&Q) -> K, elapsed: Duration, error: bool)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let minute = self.minute();
        let existing = self
            .series
            .read()
            .ok()
            .and_then(|map| map.get(key).cloned());
        let series = match existing {
            Some(s) => s,
            None => {
                let Ok(mut map) = self.series.write() else {
                    return;
                };
                map.entry(own(key))
                    .or_insert_with(|| Arc::new(Mutex::new(Series::new())))
                    .clone()
            }
        };
        if let Ok(mut s) = series.lock() {
            s.record(minute, micros, error);
        }
    }

    /// All series together, merged bucket by bucket (exact, not an average of percentiles).
    pub fn total(&self) -> Option<LatencySummary> {
        let minute = self.minute();
        let map = self.series.read().ok()?;
        let mut all = Series::new();
        for series in map.values() {
            let Ok(s) = series.lock() else { continue };
            for slot in &s.slots {
                if slot.minute == u64::MAX || slot.minute + (SLOTS as u64) <= minute {
                    continue;
                }
                let into = &mut all.slots[(slot.minute % SLOTS as u64) as usize];
                if into.minute != slot.minute {
                    *into = Slot::empty(slot.minute);
                }
                into.count += slot.count;
                into.errors += slot.errors;
                into.sum_micros = into.sum_micros.saturating_add(slot.sum_micros);
                into.max_micros = into.max_micros.max(slot.max_micros);
                for (a, b) in into.buckets.iter_mut().zip(slot.buckets.iter()) {
                    *a = a.saturating_add(*b);
                }
            }
        }
        all.summary(minute)
    }

    /// Every series with traffic in the window, sorted by key.
    pub fn summaries(&self) -> Vec<(K, LatencySummary)> {
        let minute = self.minute();
        let Ok(map) = self.series.read() else {
            return Vec::new();
        };
        let mut out: Vec<(K, LatencySummary)> = map
            .iter()
            .filter_map(|(k, s)| {
                let s = s.lock().ok()?;
                Some((k.clone(), s.summary(minute)?))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_the_bucket_resolution() {
        let w: Windows<String> = Windows::new();
        // 1..=1000 ms, one each: p50 ≈ 500 ms, p95 ≈ 950 ms, p99 ≈ 990 ms.
        for i in 1..=1000u64 {
            w.record(
                "GET /x",
                str::to_string,
                Duration::from_millis(i),
                i % 100 == 0,
            );
        }
        let all = w.summaries();
        assert_eq!(all.len(), 1);
        let s = &all[0].1;
        assert_eq!(s.count, 1000);
        assert_eq!(s.errors, 10);
        for (got, want) in [(s.p50_ms, 500.0), (s.p95_ms, 950.0), (s.p99_ms, 990.0)] {
            assert!(
                (got - want).abs() / want < 0.13,
                "percentile {got} ms too far from {want} ms"
            );
            assert!(got >= want * 0.999, "a bucket bound never under-reports");
        }
        assert_eq!(s.max_ms, 1000.0);
        assert!((s.mean_ms - 500.5).abs() < 0.01);
        w.record("GET /y", str::to_string, Duration::from_millis(5000), true);
        let total = w.total().expect("total");
        assert_eq!(total.count, 1001);
        assert_eq!(total.errors, 11);
        assert_eq!(total.max_ms, 5000.0);
        assert!(total.p50_ms >= 500.0 && total.p50_ms < 570.0);
    }

    #[test]
    fn a_percentile_never_exceeds_the_maximum_seen() {
        let w: Windows<&'static str> = Windows::new();
        w.record(&"op", |k| *k, Duration::from_micros(1234), false);
        let s = &w.summaries()[0].1;
        assert_eq!(s.p99_ms, 1.23);
        assert_eq!(s.max_ms, 1.23);
    }

    #[test]
    fn old_minutes_fall_out_of_the_window() {
        let mut series = Series::new();
        series.record(0, 1000, false);
        series.record(7, 2000, true);
        let s = series.summary(7).expect("traffic in the window");
        assert_eq!(s.count, 1, "minute 0 is older than the window");
        assert_eq!(s.errors, 1);
        assert!(series.summary(20).is_none());
    }

    #[test]
    fn extreme_values_land_in_the_edge_buckets() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert!(bucket_bound(BUCKETS - 1) > 600_000_000.0);
    }
}
