//! Rough cost of log redaction per line, to check that it is not the logging bottleneck.
//! Not a benchmark (that is `benches/hot_path.rs`, figures in PERFORMANCE.md): a loop, a
//! clock, one number per case.
//!
//! ```text
//! cargo run --release -p keel-kernel --example redact_cost
//! ```
//!
//! It times the redactor alone on typical production (JSON) and development lines, clean and
//! carrying personal data, then a whole `tracing` event through the installed JSON stack into
//! `io::sink`, with redaction on and off, so the redactor's share of a log call is visible.
//!
//! Measured once (release build, 2-core AMD EPYC VM shared with other builds, load ≈ 5, so
//! best of five rounds; expect less on a quiet machine):
//!
//! ```text
//! redactor only: clean JSON line (330 B)       ≈ 0.7 µs
//! redactor only: JSON line with 4 findings     ≈ 5 µs
//! redactor only: clean text line               ≈ 0.4 µs
//! redactor only: text line with 3 findings     ≈ 2–3 µs
//! JSON stack, clean event: off ≈ 2.8 µs, on ≈ 3.5 µs
//! ```

use std::hint::black_box;
use std::time::Instant;

use keel_kernel::config::{Config, LogConfig, LogFormat};
use keel_kernel::observe::log_layer;
use keel_kernel::redact::{LineFormat, RedactionConfig, Redactor};
use tracing_subscriber::layer::SubscriberExt;

const CLEAN_JSON: &str = r#"{"timestamp":"2025-05-01T12:34:56.123456Z","level":"INFO","status":200,"latency_ms":3.417,"message":"request completed","target":"keel_kernel::http::context","span":{"request_id":"0190f5a2b3c47d8e9f0a1b2c3d4e5f60","method":"GET","route":"/api/v1/trade/shipments/{id}","org":"0190f5a2-b3c4-7d8e-9f0a-1b2c3d4e5f60","name":"request"}}
"#;
const PII_JSON: &str = r#"{"timestamp":"2025-05-01T12:34:56.123456Z","level":"INFO","email":"john.doe@example.com","amount_minor":125000,"message":"payment by card 4111 1111 1111 1111 from 203.0.113.9, phone +91 98765 43210","target":"keel_trade::payments","span":{"request_id":"0190f5a2b3c47d8e9f0a1b2c3d4e5f60","method":"POST","route":"/api/v1/trade/shipments/{id}/payments","name":"request"}}
"#;
const CLEAN_TEXT: &str = "2025-05-01T12:34:56.123456Z  INFO request{request_id=0190f5a2b3c47d8e9f0a1b2c3d4e5f60 method=GET route=/api/v1/trade/shipments/{id}}: request completed status=200 latency_ms=3.417\n";
const PII_TEXT: &str = "2025-05-01T12:34:56.123456Z  INFO request{request_id=0190f5a2b3c47d8e9f0a1b2c3d4e5f60 method=POST}: payment by card 4111 1111 1111 1111 email=\"john.doe@example.com\" password=\"hunter2\" amount_minor=125000\n";

/// Best of five rounds: the machine may be busy with other work, and the minimum is the
/// least disturbed estimate.
fn time<F: FnMut()>(name: &str, iterations: u32, mut f: F) {
    for _ in 0..iterations / 10 {
        f();
    }
    let best = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(iterations)
        })
        .fold(f64::INFINITY, f64::min);
    println!("{name:<48} {best:>7.0} ns/line");
}

fn pipeline(name: &str, enabled: bool) {
    let config = Config {
        log: LogConfig {
            level: "info".into(),
            format: LogFormat::Json,
            redaction: RedactionConfig {
                enabled,
                ..RedactionConfig::default()
            },
            ..LogConfig::default()
        },
        ..Config::default()
    };
    let layer = match log_layer(&config, std::io::sink, false) {
        Ok(layer) => layer,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!(
            "request",
            request_id = "0190f5a2b3c47d8e9f0a1b2c3d4e5f60",
            method = "GET",
            route = "/api/v1/trade/shipments/{id}"
        );
        let _guard = span.enter();
        time(&format!("{name}: clean event"), 100_000, || {
            tracing::info!(status = 200u16, latency_ms = 3.417, "request completed");
        });
        time(&format!("{name}: event with PII"), 100_000, || {
            tracing::info!(
                email = "john.doe@example.com",
                amount_minor = 125000u64,
                "payment by card 4111 1111 1111 1111 from 203.0.113.9"
            );
        });
    });
}

fn main() {
    let redactor = match Redactor::new(&RedactionConfig::default(), None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    println!("{}", redactor.redact_lines(PII_JSON, LineFormat::Json));
    println!("{}", redactor.redact_lines(PII_TEXT, LineFormat::Text));
    let json = |line: &str| {
        let r = redactor.clone();
        let line = line.to_string();
        move || {
            black_box(r.redact_lines(black_box(&line), LineFormat::Json));
        }
    };
    let text = |line: &str| {
        let r = redactor.clone();
        let line = line.to_string();
        move || {
            black_box(r.redact_lines(black_box(&line), LineFormat::Text));
        }
    };
    time("redactor only: clean JSON line", 200_000, json(CLEAN_JSON));
    time("redactor only: JSON line with PII", 100_000, json(PII_JSON));
    time("redactor only: clean text line", 200_000, text(CLEAN_TEXT));
    time("redactor only: text line with PII", 100_000, text(PII_TEXT));
    pipeline("JSON stack, redaction on", true);
    pipeline("JSON stack, redaction off", false);
}
