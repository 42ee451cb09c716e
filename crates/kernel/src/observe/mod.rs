//! Logging: JSON lines in production, readable lines in development (configurable), filtered
//! by `log.level` or `RUST_LOG`. Each request's span carries its request id, method and route
//! template, so every line a request writes can be correlated.
//!
//! Every line passes through the [`redact`](crate::redact) layer before it is written, so
//! personal data and secrets never reach the output; `log.redaction` configures it.
//!
//! A server's lines are written by a thread of their own ([`LOG_QUEUE_LINES`]): a request
//! formats and redacts its line, queues it and goes on, and the writer thread writes whatever
//! has queued in one call, so a busy server makes one `write` for many lines instead of one
//! per line, and a slow reader of standard output (a full pipe, a stalled log shipper) delays
//! no request until the queue is full. No line is dropped: when the queue is full, the
//! requests that log wait for room. [`flush_logs`] writes what is queued before the process
//! exits.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat, parse_encryption_key};
use crate::redact::{
    LineFormat, RedactError, RedactingMakeWriter, Redactor, hash_key_from_encryption_key,
};

/// Installs the global subscriber. Returns false if one was already installed (tests), or if
/// the redactor cannot be built — logging then stays off rather than write unmasked data
/// (a validated configuration always builds one).
pub fn init_logging(config: &Config) -> bool {
    init(config, false)
}

/// [`init_logging`] for one-shot commands whose results go to stdout (`keel demo seed`,
/// `keel keys status`, …): the log goes to stderr, so stdout stays machine-readable.
pub fn init_cli_logging(config: &Config) -> bool {
    init(config, true)
}

fn init(config: &Config, to_stderr: bool) -> bool {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = if to_stderr {
        log_layer(config, std::io::stderr, std::io::stderr().is_terminal())
    } else {
        let ansi = std::io::stdout().is_terminal();
        let (writer, guard) = NonBlockingBuilder::default()
            .buffered_lines_limit(LOG_QUEUE_LINES)
            .lossy(false)
            .thread_name("keel-log")
            .finish(std::io::BufWriter::with_capacity(
                LOG_WRITE_BYTES,
                std::io::stdout(),
            ));
        let layer = log_layer(config, writer, ansi);
        if layer.is_ok() {
            *LOG_WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
        }
        layer
    };
    let layer = match layer {
        Ok(layer) => layer,
        Err(e) => {
            eprintln!("keel: logging is off: {e}");
            return false;
        }
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .with(trace::otel_layer())
        .try_init()
        .is_ok();
    if installed {
        if let Some(endpoint) = trace::otlp_endpoint().filter(|_| trace::exporting()) {
            tracing::info!(endpoint, "exporting traces over OTLP");
        }
        let redaction = &config.log.redaction;
        if !redaction.enabled {
            tracing::warn!(
                "log redaction is off (log.redaction.enabled = false): personal data and secrets are written as they are"
            );
        } else if redaction.hash_identifiers && config.encryption_key.is_none() {
            tracing::warn!(
                "log.redaction.hash_identifiers needs an encryption_key; identifiers are masked instead"
            );
        }
    }
    installed
}

/// How many lines a server's log queue holds before the requests that log wait for room:
/// about a second of lines at the highest request rates measured (PERFORMANCE.md), and a few
/// tens of megabytes at most.
pub const LOG_QUEUE_LINES: usize = 65_536;

/// The writer thread's buffer: lines queued together are written in calls of up to this size.
const LOG_WRITE_BYTES: usize = 64 * 1024;

/// The writer thread of a server's log, while it runs ([`flush_logs`] ends it).
static LOG_WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Writes every queued log line and ends the writer thread (waiting at most a second, should
/// standard output be stuck). Call it last, before the process exits: lines logged after it
/// are not written. Does nothing when the log is written directly (the one-shot commands).
pub fn flush_logs() {
    let guard = LOG_WRITER.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(guard);
}

/// The formatting layer `init_logging` installs — JSON or development format per
/// `log.format` — writing through the redactor into `make_writer`. Public so tests can run
/// the exact stack into a buffer.
pub fn log_layer<S, W>(
    config: &Config,
    make_writer: W,
    ansi: bool,
) -> Result<Box<dyn Layer<S> + Send + Sync + 'static>, RedactError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let redactor = redactor(config)?;
    let json = match config.log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => config.is_production(),
    };
    Ok(if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(true)
            .with_writer(RedactingMakeWriter::new(
                make_writer,
                redactor,
                LineFormat::Json,
            ))
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(RedactingMakeWriter::new(
                make_writer,
                redactor,
                LineFormat::Text,
            ))
            .boxed()
    })
}

/// The redactor for this configuration. Its hash-mode key is derived from
/// `encryption_key`; without one, identifiers are masked rather than hashed.
pub fn redactor(config: &Config) -> Result<Redactor, RedactError> {
    let hash_key = config
        .encryption_key
        .as_ref()
        .and_then(|k| parse_encryption_key(k.expose()))
        .map(|k| hash_key_from_encryption_key(&k));
    Redactor::new(&config.log.redaction, hash_key)
}

/// A log output kept in memory, for tests: a subscriber's `MakeWriter` whose every line
/// stays readable through [`LogCapture::text`]. Only in tests and builds with the
/// `testing` feature (enabled by the test kit).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct LogCapture(std::sync::Arc<Mutex<Vec<u8>>>);

#[cfg(any(test, feature = "testing"))]
impl LogCapture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).expect("log output is UTF-8")
    }
}

#[cfg(any(test, feature = "testing"))]
impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("log capture poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

pub mod trace;

static SLOW_OPERATION_MICROS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(1_000_000);

/// Sets the slow-operation threshold (from `log.slow_operation_ms`).
pub fn set_slow_operation_threshold(threshold: std::time::Duration) {
    SLOW_OPERATION_MICROS.store(
        u64::try_from(threshold.as_micros()).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Logs a warning when an operation took longer than `log.slow_operation_ms`: `kind` is what
/// it was (`request`, `job`, `outbound`, `schedule`), `name` which one (a route template, a
/// job type, a service) — never an id or a value. Returns whether it was slow.
pub fn warn_if_slow(kind: &'static str, name: &str, elapsed: std::time::Duration) -> bool {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    if micros < SLOW_OPERATION_MICROS.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    metrics::counter!("keel_slow_operations_total", "kind" => kind).increment(1);
    tracing::warn!(
        kind,
        operation = name,
        duration_ms = elapsed.as_millis() as u64,
        "slow operation"
    );
    true
}
