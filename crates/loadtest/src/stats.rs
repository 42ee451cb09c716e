//! Per-operation samples (every latency kept, in microseconds; percentiles are exact), the
//! summary table and the JSON report.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Default, Clone)]
pub struct Op {
    /// Latency of each completed request, µs. In paced scenarios this is measured from
    /// the moment the request was *due* (see `late`), not from when it was sent.
    pub latency_us: Vec<u64>,
    /// Time from sending to the whole response, µs (service time).
    pub service_us: Vec<u64>,
    pub failures: u64,
    pub server_errors: u64,
    /// Requests sent later than their due time because the previous one had not returned.
    pub late: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
}

/// Samples of every operation, keyed by name. Each worker keeps its own; they are merged
/// at the end (no lock on the hot path).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub ops: BTreeMap<String, Op>,
}

impl Stats {
    pub fn op(&mut self, name: &str) -> &mut Op {
        self.ops.entry(name.to_string()).or_default()
    }

    /// Records a request answered with `status`; `ok` says whether it was the expected one.
    pub fn record(
        &mut self,
        name: &str,
        status: u16,
        ok: bool,
        latency: Duration,
        service: Duration,
    ) {
        let op = self.op(name);
        op.latency_us.push(latency.as_micros() as u64);
        op.service_us.push(service.as_micros() as u64);
        *op.statuses.entry(status).or_default() += 1;
        if !ok {
            op.failures += 1;
        }
        if status >= 500 {
            op.server_errors += 1;
        }
    }

    /// Records a request that got no response (connection refused, reset, timeout).
    pub fn record_error(&mut self, name: &str, error: &str, latency: Duration) {
        let op = self.op(name);
        op.latency_us.push(latency.as_micros() as u64);
        op.service_us.push(latency.as_micros() as u64);
        op.failures += 1;
        let key: String = error.chars().take(120).collect();
        *op.errors.entry(key).or_default() += 1;
    }

    pub fn merge(&mut self, other: Stats) {
        for (name, o) in other.ops {
            let op = self.op(&name);
            op.latency_us.extend(o.latency_us);
            op.service_us.extend(o.service_us);
            op.failures += o.failures;
            op.server_errors += o.server_errors;
            op.late += o.late;
            for (s, n) in o.statuses {
                *op.statuses.entry(s).or_default() += n;
            }
            for (e, n) in o.errors {
                *op.errors.entry(e).or_default() += n;
            }
        }
    }

    /// The summary of each operation and of all of them together ("total").
    pub fn summarize(&mut self, elapsed: Duration) -> Vec<Summary> {
        let mut all = Op::default();
        let mut out = Vec::new();
        for (name, op) in self.ops.iter_mut() {
            out.push(Summary::of(name, op, elapsed));
            all.latency_us.extend(&op.latency_us);
            all.service_us.extend(&op.service_us);
            all.failures += op.failures;
            all.server_errors += op.server_errors;
            all.late += op.late;
            for (s, n) in &op.statuses {
                *all.statuses.entry(*s).or_default() += n;
            }
            for (e, n) in &op.errors {
                *all.errors.entry(e.clone()).or_default() += n;
            }
        }
        if out.len() > 1 {
            out.push(Summary::of("total", &mut all, elapsed));
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub operation: String,
    pub requests: u64,
    pub failures: u64,
    pub server_errors: u64,
    pub failure_rate: f64,
    pub late: u64,
    pub requests_per_sec: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub service_p95_ms: f64,
    pub service_p99_ms: f64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

impl Summary {
    fn of(name: &str, op: &mut Op, elapsed: Duration) -> Summary {
        op.latency_us.sort_unstable();
        op.service_us.sort_unstable();
        let n = op.latency_us.len() as u64;
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mean = if n == 0 {
            0.0
        } else {
            op.latency_us.iter().sum::<u64>() as f64 / n as f64 / 1000.0
        };
        Summary {
            operation: name.to_string(),
            requests: n,
            failures: op.failures,
            server_errors: op.server_errors,
            failure_rate: if n == 0 {
                0.0
            } else {
                op.failures as f64 / n as f64
            },
            late: op.late,
            requests_per_sec: n as f64 / secs,
            mean_ms: mean,
            p50_ms: pct(&op.latency_us, 50.0),
            p95_ms: pct(&op.latency_us, 95.0),
            p99_ms: pct(&op.latency_us, 99.0),
            max_ms: op.latency_us.last().map_or(0.0, |v| *v as f64 / 1000.0),
            service_p95_ms: pct(&op.service_us, 95.0),
            service_p99_ms: pct(&op.service_us, 99.0),
            statuses: op.statuses.clone(),
            errors: op.errors.clone(),
        }
    }
}

pub fn table(rows: &[Summary]) -> String {
    let mut s = format!(
        "{:<14} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "operation",
        "requests",
        "failed",
        "req/s",
        "mean ms",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<14} {:>9} {:>8} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
            r.operation,
            r.requests,
            r.failures,
            r.requests_per_sec,
            r.mean_ms,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.max_ms
        ));
        for (e, n) in &r.errors {
            s.push_str(&format!("    {n} × {e}\n"));
        }
        let odd: Vec<String> = r
            .statuses
            .iter()
            .filter(|(code, _)| **code >= 300)
            .map(|(code, n)| format!("{n} × {code}"))
            .collect();
        if !odd.is_empty() {
            s.push_str(&format!("    statuses: {}\n", odd.join(", ")));
        }
    }
    s
}

/// One pass criterion and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub criterion: String,
    pub measured: Value,
    pub passed: bool,
}

impl Check {
    pub fn new(criterion: impl Into<String>, measured: Value, passed: bool) -> Check {
        Check {
            criterion: criterion.into(),
            measured,
            passed,
        }
    }
}

/// Prints the table and the criteria, writes the JSON report, and says whether all passed.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    scenario: &str,
    options: Value,
    notes: &[String],
    rows: &[Summary],
    extra: Value,
    checks: &[Check],
    elapsed: Duration,
    report: Option<&std::path::Path>,
) -> anyhow::Result<bool> {
    println!("\n== {scenario} ({:.1} s measured)", elapsed.as_secs_f64());
    for n in notes {
        println!("note: {n}");
    }
    print!("{}", table(rows));
    if !extra.is_null() {
        println!("{}", serde_json::to_string_pretty(&extra)?);
    }
    let passed = checks.iter().all(|c| c.passed);
    for c in checks {
        println!(
            "{} {}  (measured {})",
            if c.passed { "PASS" } else { "FAIL" },
            c.criterion,
            c.measured
        );
    }
    println!("result: {}", if passed { "PASS" } else { "FAIL" });
    if let Some(path) = report {
        let doc = json!({
            "scenario": scenario,
            "finished_at": chrono::Utc::now().to_rfc3339(),
            "measured_secs": elapsed.as_secs_f64(),
            "options": options,
            "notes": notes,
            "operations": rows,
            "extra": extra,
            "criteria": checks,
            "passed": passed,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
        println!("report: {}", path.display());
    }
    Ok(passed)
}
