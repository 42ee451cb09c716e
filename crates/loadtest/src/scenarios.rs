//! The scenarios. Paced ones (`mix`, `login`) give every virtual user a fixed schedule — a
//! request is due every `--interval` — and time each request from its due moment, so a slow
//! answer that delays the next request shows up in the latencies instead of silently
//! lowering the offered load (coordinated omission).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::{RwLock, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

use crate::client::{Conn, Target};
use crate::data::{self, Account};
use crate::stats::{self, Check, Stats};
use crate::{Cli, FanoutArgs, Load, LoginArgs, MaxArgs, MixArgs, Scenario};

pub async fn run(cli: Cli) -> Result<bool> {
    let target = Target::parse(&cli.host).await?;
    let mut conn = Conn::new(&target);
    let health = conn.get("/health", None).await.context("GET /health")?;
    if !health.status.is_success() {
        bail!("{} /health answered {}", cli.host, health.status);
    }
    match cli.scenario.clone() {
        Scenario::Mix(a) => mix(&cli, &target, a).await,
        Scenario::Login(a) => login(&cli, &target, a).await,
        Scenario::Fanout(a) => fanout(&cli, &target, a).await,
        Scenario::Max(a) => max(&cli, &target, a).await,
    }
}

/// Resident memory of a process, KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A finite number above zero.
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

fn status_ok(status: u16, expected: u16) -> bool {
    status == expected
}

/// The criteria every paced scenario shares.
fn load_checks(load: &Load, total: &stats::Summary, default_p95: f64) -> Vec<Check> {
    let mut checks = vec![
        Check::new(
            format!("failure rate <= {}", load.max_failure_rate),
            json!(total.failure_rate),
            total.failure_rate <= load.max_failure_rate,
        ),
        Check::new(
            "no 5xx",
            json!(total.server_errors),
            total.server_errors == 0,
        ),
    ];
    if total.requests == 0 {
        checks.push(Check::new("some requests completed", json!(0), false));
    }
    if !load.no_latency_criteria {
        let p95 = load.p95_ms.unwrap_or(default_p95);
        checks.push(Check::new(
            format!("p95 < {p95} ms (from the due time)"),
            json!(total.p95_ms),
            total.p95_ms < p95,
        ));
    }
    checks
}

fn memory(cli: &Cli, before: Option<u64>) -> Value {
    match (cli.server_pid, before) {
        (Some(pid), Some(b)) => json!({
            "server_rss_before_kib": b,
            "server_rss_after_kib": rss_kib(pid),
        }),
        _ => Value::Null,
    }
}

/// A paced user: one request due every interval from `spawn_at` until `end`.
struct Pace {
    due: Instant,
    interval: Duration,
    end: Instant,
    prev_done: Instant,
}

impl Pace {
    /// Waits for the next due moment; `None` when the run is over. Also says whether the
    /// request is late (the previous one returned after it was due).
    async fn next(&mut self) -> Option<(Instant, bool)> {
        if self.due >= self.end {
            return None;
        }
        let due = self.due;
        tokio::time::sleep_until(due).await;
        self.due += self.interval;
        Some((due, self.prev_done > due))
    }
}

// ---------------------------------------------------------------------------------------
// mix

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MixOp {
    List,
    Get,
    Create,
    Update,
    Search,
}

impl MixOp {
    fn name(self) -> &'static str {
        match self {
            MixOp::List => "list",
            MixOp::Get => "get",
            MixOp::Create => "create",
            MixOp::Update => "update",
            MixOp::Search => "search",
        }
    }
}

fn parse_mix(raw: &str) -> Result<Vec<(MixOp, u32)>> {
    let mut out = Vec::new();
    for part in raw.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .with_context(|| format!("--mix: `{part}` is not name=weight"))?;
        let op = match name.trim() {
            "list" => MixOp::List,
            "get" => MixOp::Get,
            "create" => MixOp::Create,
            "update" => MixOp::Update,
            "search" => MixOp::Search,
            other => {
                bail!("--mix: unknown operation `{other}` (list, get, create, update, search)")
            }
        };
        let weight: u32 = weight
            .trim()
            .parse()
            .with_context(|| format!("--mix: weight of {name} is not a whole number"))?;
        out.push((op, weight));
    }
    if out.iter().map(|(_, w)| *w).sum::<u32>() == 0 {
        bail!("--mix: the weights add up to 0");
    }
    Ok(out)
}

fn choose(rng: &mut impl Rng, mix: &[(MixOp, u32)]) -> MixOp {
    let total: u32 = mix.iter().map(|(_, w)| *w).sum();
    let mut x = rng.random_range(0..total);
    for (op, w) in mix {
        if x < *w {
            return *op;
        }
        x -= w;
    }
    MixOp::List
}

struct Own {
    id: Uuid,
    version: i64,
    body: Value,
}

async fn mix(cli: &Cli, target: &Target, a: MixArgs) -> Result<bool> {
    let weights = parse_mix(&a.mix)?;
    let load = a.load.clone();
    if load.users == 0 || !positive(load.spawn_rate) {
        bail!("--users and --spawn-rate must be positive");
    }
    let account = Arc::new(data::account(cli, target, true).await?);
    let before = cli.server_pid.and_then(rss_kib);
    let tag = data::run_tag();
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + load.duration;
    let mut tasks = Vec::new();
    for u in 0..load.users {
        let spawn_at = start + Duration::from_secs_f64(u as f64 / load.spawn_rate);
        let (target, account, weights, tag) = (
            target.clone(),
            account.clone(),
            weights.clone(),
            tag.clone(),
        );
        let interval = load.interval;
        tasks.push(tokio::spawn(async move {
            mix_user(u, target, account, weights, tag, spawn_at, interval, end).await
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        all.merge(t.await?);
    }
    let elapsed = end.saturating_duration_since(start);
    let rows = all.summarize(elapsed);
    let total = rows.last().cloned().context("no operations recorded")?;
    let checks = load_checks(&load, &total, 100.0);
    let notes = vec![
        format!(
            "{} virtual users, {} started a second, each with one request due every {:?} (a fixed schedule: latency counts from the due time, so a slow answer cannot hide by delaying the next request)",
            load.users, load.spawn_rate, load.interval
        ),
        "each user's first request creates its own shipment (updated later with its current version); then operations are drawn by weight".to_string(),
        "all virtual users act as one signed-in member of one organization (one access token), each on its own kept-alive connection".to_string(),
    ];
    stats::finish(
        "mix",
        json!({"host": cli.host, "users": load.users, "spawn_rate": load.spawn_rate,
            "duration_secs": load.duration.as_secs_f64(), "interval_secs": load.interval.as_secs_f64(),
            "mix": a.mix, "account": account.email, "prepared_shipments": account.shipments.len()}),
        &notes,
        &rows,
        memory(cli, before),
        &checks,
        elapsed,
        cli.report.as_deref(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn mix_user(
    u: usize,
    target: Target,
    account: Arc<Account>,
    weights: Vec<(MixOp, u32)>,
    tag: String,
    spawn_at: Instant,
    interval: Duration,
    end: Instant,
) -> Stats {
    let mut stats = Stats::default();
    let mut rng = StdRng::from_os_rng();
    let mut conn = Conn::new(&target);
    let mut own: Vec<Own> = Vec::new();
    let mut pace = Pace {
        due: spawn_at,
        interval,
        end,
        prev_done: spawn_at,
    };
    let token = account.token.as_str();
    let mut n = 0usize;
    while let Some((due, late)) = pace.next().await {
        let mut op = if n == 0 {
            MixOp::Create
        } else {
            choose(&mut rng, &weights)
        };
        if op == MixOp::Update && own.is_empty() {
            op = MixOp::Create;
        }
        if op == MixOp::Get && own.is_empty() && account.shipments.is_empty() {
            op = MixOp::List;
        }
        n += 1;
        let sent = Instant::now();
        let (result, expected) = match op {
            MixOp::List => (
                conn.get(&data::list_query(&mut rng), Some(token)).await,
                200,
            ),
            MixOp::Search => {
                let own_ref = own.first().and_then(|o| o.body["reference"].as_str());
                let path = data::search_query(&mut rng, own_ref);
                (conn.get(&path, Some(token)).await, 200)
            }
            MixOp::Get => {
                let pool = account.shipments.len() + own.len();
                let i = rng.random_range(0..pool);
                let id = if i < account.shipments.len() {
                    account.shipments[i]
                } else {
                    own[i - account.shipments.len()].id
                };
                (
                    conn.get(&format!("/api/v1/trade/shipments/{id}"), Some(token))
                        .await,
                    200,
                )
            }
            MixOp::Create => {
                let reference = format!("LT-{tag}-{u:05}-{n:05}");
                let body = data::shipment_body(&mut rng, &reference);
                let r = conn
                    .post_json("/api/v1/trade/shipments", Some(token), &body)
                    .await;
                if let Ok(reply) = &r
                    && reply.status.as_u16() == 201
                    && let Ok(v) = reply.json()
                    && let (Some(id), Some(version)) = (
                        v["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()),
                        v["version"].as_i64(),
                    )
                {
                    own.push(Own { id, version, body });
                }
                (r, 201)
            }
            MixOp::Update => {
                let i = rng.random_range(0..own.len());
                let o = &mut own[i];
                let mut body = o.body.clone();
                body["invoice_value_minor"] = json!(rng.random_range(50_000..25_000_000i64));
                body["incoterm"] = json!(["FOB", "CIF", "DAP"][rng.random_range(0..3)]);
                body["version"] = json!(o.version);
                let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                let r = conn
                    .send(
                        Method::PUT,
                        &format!("/api/v1/trade/shipments/{}", o.id),
                        Some(token),
                        Some(bytes),
                    )
                    .await;
                if let Ok(reply) = &r
                    && reply.status.as_u16() == 200
                    && let Ok(v) = reply.json()
                    && let Some(version) = v["version"].as_i64()
                {
                    o.version = version;
                    body.as_object_mut().map(|b| b.remove("version"));
                    o.body = body;
                }
                (r, 200)
            }
        };
        let done = Instant::now();
        pace.prev_done = done;
        match result {
            Ok(reply) => {
                let s = reply.status.as_u16();
                stats.record(
                    op.name(),
                    s,
                    status_ok(s, expected),
                    done - due,
                    done - sent,
                );
            }
            Err(e) => stats.record_error(op.name(), &e.to_string(), done - due),
        }
        if late {
            stats.op(op.name()).late += 1;
        }
    }
    stats
}

// ---------------------------------------------------------------------------------------
// login

async fn login(cli: &Cli, target: &Target, a: LoginArgs) -> Result<bool> {
    let load = a.load.clone();
    if load.users == 0 || !positive(load.spawn_rate) {
        bail!("--users and --spawn-rate must be positive");
    }
    let account = Arc::new(data::account(cli, target, false).await?);
    let before = cli.server_pid.and_then(rss_kib);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + load.duration;
    let mut tasks = Vec::new();
    for u in 0..load.users {
        let spawn_at = start + Duration::from_secs_f64(u as f64 / load.spawn_rate);
        let (target, account) = (target.clone(), account.clone());
        let interval = load.interval;
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut conn = Conn::new(&target);
            let mut pace = Pace {
                due: spawn_at,
                interval,
                end,
                prev_done: spawn_at,
            };
            let body = json!({ "email": account.email, "password": account.password });
            while let Some((due, late)) = pace.next().await {
                let sent = Instant::now();
                let r = conn.post_json("/api/v1/auth/login", None, &body).await;
                let done = Instant::now();
                pace.prev_done = done;
                match r {
                    Ok(reply) => {
                        let s = reply.status.as_u16();
                        stats.record("login", s, s == 200, done - due, done - sent);
                    }
                    Err(e) => stats.record_error("login", &e.to_string(), done - due),
                }
                if late {
                    stats.op("login").late += 1;
                }
            }
            stats
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        all.merge(t.await?);
    }
    let elapsed = end.saturating_duration_since(start);
    let rows = all.summarize(elapsed);
    let total = rows.last().cloned().context("no sign-ins recorded")?;
    let checks = load_checks(&load, &total, 500.0);
    let notes = vec![
        format!(
            "{} virtual users, {} started a second, each signing in once every {:?} (fixed schedule, latency from the due time)",
            load.users, load.spawn_rate, load.interval
        ),
        "every sign-in is the same account's correct password (each one a full password hash check and a new session)".to_string(),
    ];
    stats::finish(
        "login",
        json!({"host": cli.host, "users": load.users, "spawn_rate": load.spawn_rate,
            "duration_secs": load.duration.as_secs_f64(), "interval_secs": load.interval.as_secs_f64(),
            "account": account.email}),
        &notes,
        &rows,
        memory(cli, before),
        &checks,
        elapsed,
        cli.report.as_deref(),
    )
}

// ---------------------------------------------------------------------------------------
// max

async fn max(cli: &Cli, target: &Target, a: MaxArgs) -> Result<bool> {
    if a.connections == 0 {
        bail!("--connections must be positive");
    }
    let token = if a.auth {
        Some(Arc::new(data::account(cli, target, false).await?.token))
    } else {
        None
    };
    let before = cli.server_pid.and_then(rss_kib);
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let mut tasks = Vec::new();
    for _ in 0..a.connections {
        let (target, token, path) = (target.clone(), token.clone(), a.path.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut conn = Conn::new(&target);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let r = conn.get(&path, token.as_deref().map(String::as_str)).await;
                let done = Instant::now();
                if sent < measure_from {
                    continue;
                }
                match r {
                    Ok(reply) => {
                        let s = reply.status.as_u16();
                        stats.record("get", s, s == 200, done - sent, done - sent);
                    }
                    Err(e) => {
                        stats.record_error("get", &e.to_string(), done - sent);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            stats
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        all.merge(t.await?);
    }
    // Requests sent before `end` may finish a little after it; they are counted over the
    // measured window (a slight overstatement bounded by one request per connection).
    let rows = all.summarize(a.duration);
    let total = rows.last().cloned().context("no requests recorded")?;
    let mut checks = vec![
        Check::new(
            "no failed request",
            json!(total.failures),
            total.failures == 0,
        ),
        Check::new(
            "some requests completed",
            json!(total.requests),
            total.requests > 0,
        ),
    ];
    if let Some(min) = a.min_rps {
        checks.push(Check::new(
            format!("requests/s >= {min}"),
            json!(total.requests_per_sec),
            total.requests_per_sec >= min,
        ));
    }
    if let Some(p99) = a.p99_ms {
        checks.push(Check::new(
            format!("p99 < {p99} ms"),
            json!(total.p99_ms),
            total.p99_ms < p99,
        ));
    }
    let notes = vec![format!(
        "closed loop: {} connections, each sending the next request as soon as the previous answer is read; {:?} warm-up not counted; latency is service time (closed loops cannot show queueing before the send)",
        a.connections, a.warmup
    )];
    stats::finish(
        "max",
        json!({"host": cli.host, "path": a.path, "auth": a.auth, "connections": a.connections,
            "duration_secs": a.duration.as_secs_f64(), "warmup_secs": a.warmup.as_secs_f64()}),
        &notes,
        &rows,
        memory(cli, before),
        &checks,
        a.duration,
        cli.report.as_deref(),
    )
}

// ---------------------------------------------------------------------------------------
// fanout

#[derive(Debug, Clone, Copy)]
struct Sent {
    sent: std::time::Instant,
    answered: Option<std::time::Instant>,
}

type Ledger = Arc<RwLock<HashMap<Uuid, Sent>>>;

async fn fanout(cli: &Cli, target: &Target, a: FanoutArgs) -> Result<bool> {
    if a.subscribers == 0 || !positive(a.rate) || a.publishers == 0 {
        bail!("--subscribers, --rate and --publishers must be positive");
    }
    let account = data::account(cli, target, false).await?;
    let publishes = (a.rate * a.duration.as_secs_f64()).round().max(1.0) as usize;
    println!("creating {publishes} draft shipments to book…");
    let tag = data::run_tag();
    let refs = (0..publishes).map(|i| format!("LF-{tag}-{i:05}")).collect();
    let drafts = data::create_many(target, &account.token, refs, 8).await?;

    let rss_idle_before = cli.server_pid.and_then(rss_kib);
    let ledger: Ledger = Arc::new(RwLock::new(HashMap::with_capacity(publishes)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let connected = Arc::new(AtomicU64::new(0));
    let url = target.ws_url(&format!(
        "/api/v1/realtime/ws?channels=org:{}",
        account.org_id
    ));
    println!("connecting {} WebSocket subscribers…", a.subscribers);
    let mut subs = Vec::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    for _ in 0..a.subscribers {
        let (url, token, ledger, stop, connected, gate) = (
            url.clone(),
            account.token.clone(),
            ledger.clone(),
            stop_rx.clone(),
            connected.clone(),
            gate.clone(),
        );
        subs.push(tokio::spawn(async move {
            subscriber(url, token, ledger, stop, connected, gate).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (connected.load(Ordering::Relaxed) as usize) < a.subscribers {
        if Instant::now() > deadline || subs.iter().all(|s| s.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live = connected.load(Ordering::Relaxed) as usize;
    println!("{live} subscribers connected");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle_after = cli.server_pid.and_then(rss_kib);

    // Publish: `publishers` connections, publish k due at start + k/rate.
    let start = Instant::now() + Duration::from_millis(100);
    let drafts = Arc::new(drafts);
    let mut pubs = Vec::new();
    for p in 0..a.publishers {
        let (target, token, ledger, drafts) = (
            target.clone(),
            account.token.clone(),
            ledger.clone(),
            drafts.clone(),
        );
        let (rate, step) = (a.rate, a.publishers);
        pubs.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut conn = Conn::new(&target);
            let mut k = p;
            while k < drafts.len() {
                let due = start + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due).await;
                let id = drafts[k];
                let sent = Instant::now();
                ledger.write().await.insert(
                    id,
                    Sent {
                        sent: std::time::Instant::now(),
                        answered: None,
                    },
                );
                let r = conn
                    .send(
                        Method::POST,
                        &format!("/api/v1/trade/shipments/{id}/book"),
                        Some(&token),
                        None,
                    )
                    .await;
                let done = Instant::now();
                if let Some(s) = ledger.write().await.get_mut(&id) {
                    s.answered = Some(std::time::Instant::now());
                }
                match r {
                    Ok(reply) => {
                        let s = reply.status.as_u16();
                        stats.record("publish (book)", s, s == 200, done - due, done - sent);
                    }
                    Err(e) => stats.record_error("publish (book)", &e.to_string(), done - due),
                }
                k += step;
            }
            stats
        }));
    }
    let mut all = Stats::default();
    for p in pubs {
        all.merge(p.await?);
    }
    let published_ok = all
        .ops
        .get("publish (book)")
        .map_or(0, |o| o.latency_us.len() as u64 - o.failures);
    tokio::time::sleep(a.grace).await;
    let _ = stop_tx.send(true);
    let mut delivered = 0u64;
    let mut cut_off = 0u64;
    for s in subs {
        match s.await? {
            Ok((st, n)) => {
                delivered += n;
                all.merge(st);
            }
            Err(e) => {
                cut_off += 1;
                eprintln!("subscriber: {e:#}");
            }
        }
    }
    let elapsed = a.duration;
    let rows = all.summarize(elapsed);
    let expected = published_ok * live as u64;
    let from_send = rows
        .iter()
        .find(|r| r.operation == "deliver (from send)")
        .cloned();
    let p95 = from_send.as_ref().map_or(f64::INFINITY, |r| r.p95_ms);
    let publish_failures = rows
        .iter()
        .find(|r| r.operation == "publish (book)")
        .map_or(0, |r| r.failures);
    let checks = vec![
        Check::new(
            "every subscriber connected",
            json!(live),
            live == a.subscribers,
        ),
        Check::new(
            "no failed publish",
            json!(publish_failures),
            publish_failures == 0,
        ),
        Check::new(
            "every subscriber received every message, none cut off",
            json!({"expected": expected, "delivered": delivered, "subscribers_failed": cut_off}),
            delivered == expected && cut_off == 0,
        ),
        Check::new(
            format!(
                "delivery p95 < {} ms (from the publishing request)",
                a.p95_ms
            ),
            json!(p95),
            p95 < a.p95_ms,
        ),
    ];
    let idle = match (rss_idle_before, rss_idle_after) {
        (Some(b), Some(af)) if live > 0 => json!({
            "server_rss_before_connections_kib": b,
            "server_rss_with_idle_connections_kib": af,
            "server_kib_per_idle_connection": (af as f64 - b as f64) / live as f64,
        }),
        _ => Value::Null,
    };
    let notes = vec![
        format!(
            "{} subscribers on one organization channel over WebSocket (bearer token); {} bookings a second over {} publishing connections for {:?}",
            a.subscribers, a.rate, a.publishers, a.duration
        ),
        "a publish is POST /api/v1/trade/shipments/{id}/book on a fresh draft: the status change commits with its audit event and reaches the org channel through the audit outbox relay; subscribers match messages to publishes by resource_id".to_string(),
        "\"deliver (from send)\" times each delivery from the moment the booking request was sent (the whole path: request, commit, outbox relay, hub, socket); \"deliver (from commit)\" from the moment its answer was read (0 when the message arrived first)".to_string(),
    ];
    stats::finish(
        "fanout",
        json!({"host": cli.host, "subscribers": a.subscribers, "rate": a.rate,
            "duration_secs": a.duration.as_secs_f64(), "publishers": a.publishers,
            "account": account.email}),
        &notes,
        &rows,
        json!({"expected_deliveries": expected, "delivered": delivered, "idle_memory": idle,
            "memory": memory(cli, rss_idle_before)}),
        &checks,
        elapsed,
        cli.report.as_deref(),
    )
}

/// What a subscriber reads of a message: the shipment it is about.
#[derive(serde::Deserialize)]
struct Delivered {
    data: DeliveredData,
}

#[derive(serde::Deserialize)]
struct DeliveredData {
    resource_id: Option<Uuid>,
}

/// One WebSocket subscriber; returns its delivery latencies and how many messages of this
/// run it received.
async fn subscriber(
    url: String,
    token: String,
    ledger: Ledger,
    mut stop: watch::Receiver<bool>,
    connected: Arc<AtomicU64>,
    gate: Arc<tokio::sync::Semaphore>,
) -> Result<(Stats, u64)> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let permit = gate.acquire().await?;
    // tungstenite zeroes its free read buffer before each read: at the default 128 KiB,
    // 10,000 subscribers spent more of the machine on that than the server on delivering.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .context("WebSocket connect")?;
    drop(permit);
    connected.fetch_add(1, Ordering::Relaxed);
    let mut stats = Stats::default();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => {
                let now = std::time::Instant::now();
                let Some(msg) = msg else { bail!("the server closed the WebSocket") };
                match msg.context("WebSocket read")? {
                    Message::Text(text) => {
                        let Ok(Delivered { data: DeliveredData { resource_id: Some(id) } }) =
                            serde_json::from_str::<Delivered>(text.as_str()) else { continue };
                        let Some(sent) = ledger.read().await.get(&id).copied() else { continue };
                        n += 1;
                        let from_send = now.saturating_duration_since(sent.sent);
                        let from_commit = sent.answered.map_or(Duration::ZERO, |a| now.saturating_duration_since(a));
                        stats.record("deliver (from send)", 200, true, from_send, from_send);
                        stats.record("deliver (from commit)", 200, true, from_commit, from_commit);
                    }
                    Message::Close(frame) => bail!("the server closed the WebSocket: {frame:?}"),
                    _ => {}
                }
            }
        }
    }
    let _ = ws.close(None).await;
    let _ = ws.flush().await;
    Ok((stats, n))
}
