//! `keel-load`: load scenarios against a running Keel server.
//!
//! - `mix`: the trade mix (list, get, create, update, search) with paced virtual users;
//! - `login`: a sign-in storm;
//! - `fanout`: N WebSocket subscribers, M shipment status changes a second, end-to-end
//!   delivery latency;
//! - `max`: closed-loop maximum throughput of one endpoint at C connections.
//!
//! Each prints a summary table, writes a JSON report (`--report`) and exits 1 when the
//! scenario's pass criteria fail (2 when it could not run). See `crates/loadtest/README.md`.

mod client;
mod data;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "keel-load",
    about = "Load scenarios against a running Keel server"
)]
pub struct Cli {
    /// The server, `http://host:port`.
    #[arg(
        long,
        global = true,
        env = "KEEL_LOAD_HOST",
        default_value = "http://127.0.0.1:8080"
    )]
    pub host: String,
    /// Sign in as this user (an organization member with trade write access).
    #[arg(long, global = true, env = "KEEL_LOAD_EMAIL")]
    pub email: Option<String>,
    /// Password for `--email`.
    #[arg(long, global = true, env = "KEEL_LOAD_PASSWORD")]
    pub password: Option<String>,
    /// Register a fresh organization and create `--shipments` shipments before the run
    /// (instead of signing in with `--email`/`--password` and using shipments already there).
    #[arg(long, global = true)]
    pub prepare: bool,
    /// Shipments to create with `--prepare` (or to read ids of, without it).
    #[arg(long, global = true, default_value_t = 100)]
    pub shipments: usize,
    /// Write the JSON report here.
    #[arg(long, global = true)]
    pub report: Option<PathBuf>,
    /// The server's process id: its resident memory (VmRSS) is read before and after the
    /// run (and per idle WebSocket in `fanout`). Same machine only.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// The trade mix: paced virtual users listing, reading, creating, updating and searching
    /// shipments.
    Mix(MixArgs),
    /// A sign-in storm: paced virtual users signing in again and again.
    Login(LoginArgs),
    /// WebSocket fan-out: N subscribers to the organization channel, M shipment bookings a
    /// second, each delivery timed from the publishing request.
    Fanout(FanoutArgs),
    /// Closed-loop maximum throughput of one GET endpoint at C connections.
    Max(MaxArgs),
}

/// How virtual users arrive and pace themselves.
#[derive(Args, Debug, Clone)]
pub struct Load {
    /// Virtual users.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Users started per second.
    #[arg(long, default_value_t = 100.0)]
    pub spawn_rate: f64,
    /// Total run time, ramp-up included (`300`, `20s`, `5m`).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Each user's request interval: one request is due every interval, whatever the
    /// previous one took (latency counts from the due time).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Fail when more than this fraction of requests fail (0 = any failure fails the run).
    #[arg(long, default_value_t = 0.0)]
    pub max_failure_rate: f64,
    /// Fail when the p95 latency of all requests is at or above this (milliseconds).
    #[arg(long)]
    pub p95_ms: Option<f64>,
    /// Judge correctness only: no latency criterion.
    #[arg(long)]
    pub no_latency_criteria: bool,
}

#[derive(Args, Debug, Clone)]
pub struct MixArgs {
    #[command(flatten)]
    pub load: Load,
    /// Weights of the operations.
    #[arg(long, default_value = "list=25,get=25,create=15,update=15,search=20")]
    pub mix: String,
}

#[derive(Args, Debug, Clone)]
pub struct LoginArgs {
    #[command(flatten)]
    pub load: Load,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// WebSocket subscribers to the organization's channel.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Publishes (shipment bookings) a second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to publish.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to wait for late deliveries after the last publish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Connections publishing in parallel.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Fail when the p95 delivery latency (from the publishing request) is at or above this.
    #[arg(long, default_value_t = 50.0)]
    pub p95_ms: f64,
}

#[derive(Args, Debug, Clone)]
pub struct MaxArgs {
    /// The path to GET (with its query).
    #[arg(long, default_value = "/health")]
    pub path: String,
    /// Send the access token (needs an account: `--prepare` or `--email`/`--password`).
    #[arg(long)]
    pub auth: bool,
    /// Connections, each with one request in flight.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub connections: usize,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Fail below this many requests a second.
    #[arg(long)]
    pub min_rps: Option<f64>,
    /// Fail when p99 is at or above this (milliseconds).
    #[arg(long)]
    pub p99_ms: Option<f64>,
}

/// `300`, `300s`, `5m`, `1h`, `250ms`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (num, unit) = match raw.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {raw} (e.g. 20s, 5m, 250ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {raw} (ms, s, m, h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{raw} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel-load: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(scenarios::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("keel-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
    }
}
