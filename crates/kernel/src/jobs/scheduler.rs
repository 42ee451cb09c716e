//! The scheduler: periodic tasks declared by modules, run once per tick across all nodes.
//!
//! One node leads. Leadership is a row in `keel_leases` that the leader renews every third of
//! `scheduler.lease_ms`; a plain table works the same on SQLite, PostgreSQL and Citus, where
//! advisory locks or LISTEN/NOTIFY would not. When the leader dies its lease runs out and
//! another node (each checks every `tick_resolution_ms`) takes over within one lease period.
//! A leader stops acting when it has not renewed for two thirds of the lease, before anyone
//! else may take over.
//!
//! Each tick enqueues one job of the schedule's job type, so its execution gets the job
//! system's retries, time limit and dead letter for free. The tick is recorded in
//! `keel_schedule_runs`, unique per (schedule, tick time), in the same transaction as the job:
//! even two nodes that both believe they lead cannot run a tick twice. Ticks that passed
//! while nobody led are not replayed one by one: the next leader runs the latest of them once
//! and records how many it skipped (`missed_ticks`). A run's start, end and outcome are its
//! job's, read through [`runs`].
//!
//! Tick times are computed, not remembered: `Every(d)` ticks on multiples of `d` since the
//! Unix epoch and cron schedules in UTC, so every node agrees on them. Node clocks must be
//! synchronised (NTP) to well within a lease.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use sea_query::{Expr, ExprTrait, OnConflict, Order, Query};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::store::JOBS;
use super::{Cadence, EnqueueOptions, JobState, ScheduleDefinition, ScheduledTick};
use crate::state::AppState;
use crate::store::{Db, StoreError, now};

const LEASES: &str = "keel_leases";
const SCHEDULES: &str = "keel_schedules";
const RUNS: &str = "keel_schedule_runs";
/// The name of the scheduler's row in `keel_leases`.
const LEASE_NAME: &str = "scheduler";

/// Counting skipped cron ticks stops here (a schedule every second, down for days).
const MAX_COUNTED_MISSES: u32 = 100_000;

/// A cadence ready to compute tick times.
#[derive(Debug, Clone)]
pub(crate) enum Ticker {
    Every { millis: i64 },
    Cron(Box<cron::Schedule>),
}

impl Ticker {
    /// Checks a cadence; the error says what is wrong with it.
    pub(crate) fn new(cadence: &Cadence) -> Result<Self, String> {
        match cadence {
            Cadence::Every(interval) => {
                let millis = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
                if millis < 1 || interval.subsec_nanos() % 1_000_000 != 0 {
                    return Err(format!(
                        "interval {interval:?} must be a positive whole number of milliseconds"
                    ));
                }
                Ok(Ticker::Every { millis })
            }
            Cadence::Cron(expression) => {
                let trimmed = expression.trim();
                // Five fields is the common crontab form; the parser wants seconds first.
                let full = if !trimmed.starts_with('@') && trimmed.split_whitespace().count() == 5 {
                    format!("0 {trimmed}")
                } else {
                    trimmed.to_string()
                };
                cron::Schedule::from_str(&full)
                    .map(|s| Ticker::Cron(Box::new(s)))
                    .map_err(|e| format!("`{expression}` is not a cron expression: {e}"))
            }
        }
    }

    /// The latest tick at or before `at`.
    pub(crate) fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Ticker::Every { millis } => {
                let t = at.timestamp_millis().div_euclid(*millis) * millis;
                Utc.timestamp_millis_opt(t).single()
            }
            Ticker::Cron(schedule) => {
                // `next_back` walks to the tick strictly before its start: start just after `at`.
                let start = at + chrono::Duration::microseconds(1);
                schedule.after(&start).next_back()
            }
        }
    }

    /// How many ticks fall strictly between `after` and `before`.
    pub(crate) fn count_between(&self, after: DateTime<Utc>, before: DateTime<Utc>) -> u32 {
        match self {
            Ticker::Every { millis } => {
                let first = (after.timestamp_millis().div_euclid(*millis) + 1) * millis;
                let end = before.timestamp_millis();
                if end <= first {
                    return 0;
                }
                // Ticks in [first, end): the tick at `end` itself is excluded.
                let n = (end - first + millis - 1) / millis;
                u32::try_from(n).unwrap_or(u32::MAX)
            }
            Ticker::Cron(schedule) => {
                let n = schedule
                    .after(&after)
                    .take_while(|t| *t < before)
                    .take(MAX_COUNTED_MISSES as usize)
                    .count();
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }
}

/// Who leads the scheduler now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, serde::Deserialize)]
pub struct SchedulerLeader {
    /// The runtime id of the leading node (its node id for `keel serve`).
    pub holder: Uuid,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The current leader, if its lease is valid.
pub async fn leader(db: &Db) -> Result<Option<SchedulerLeader>, StoreError> {
    let select = Query::select()
        .columns(["holder", "acquired_at", "expires_at"])
        .from(LEASES)
        .and_where(Expr::col("name").eq(LEASE_NAME))
        .and_where(Expr::col("holder").is_not_null())
        .and_where(Expr::col("acquired_at").is_not_null())
        .and_where(Expr::col("expires_at").gt(now()))
        .to_owned();
    db.fetch_optional(&select).await
}

/// What became of a scheduled run, from its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Enqueued, not started yet (or waiting for a retry).
    Pending,
    Running,
    Succeeded,
    /// Failed for good (`failed` or `dead` job).
    Failed,
    Cancelled,
    /// The job is gone (pruned).
    Unknown,
}

/// One tick of one schedule, as run.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRun {
    pub id: Uuid,
    pub schedule: String,
    /// The tick this run is for.
    pub tick_at: DateTime<Utc>,
    /// Earlier ticks skipped because nobody led at the time (they are not run separately).
    pub missed_ticks: i32,
    /// When the leader enqueued the run's job.
    pub enqueued_at: DateTime<Utc>,
    /// The leader that enqueued it.
    pub leader: Uuid,
    pub job_id: Uuid,
    pub outcome: RunOutcome,
    /// The start of the job's latest attempt.
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct RunRow {
    id: Uuid,
    schedule: String,
    tick_at: DateTime<Utc>,
    missed_ticks: i32,
    enqueued_at: DateTime<Utc>,
    leader: Uuid,
    job_id: Uuid,
    job_state: Option<String>,
    job_started_at: Option<DateTime<Utc>>,
    job_finished_at: Option<DateTime<Utc>>,
    job_error: Option<String>,
}

impl From<RunRow> for ScheduleRun {
    fn from(r: RunRow) -> Self {
        let state = r
            .job_state
            .as_deref()
            .and_then(|s| s.parse::<JobState>().ok());
        let outcome = match state {
            None => RunOutcome::Unknown,
            Some(JobState::Queued) => RunOutcome::Pending,
            Some(JobState::Running) => RunOutcome::Running,
            Some(JobState::Succeeded) => RunOutcome::Succeeded,
            Some(JobState::Failed | JobState::Dead) => RunOutcome::Failed,
            Some(JobState::Cancelled) => RunOutcome::Cancelled,
        };
        Self {
            id: r.id,
            schedule: r.schedule,
            tick_at: r.tick_at,
            missed_ticks: r.missed_ticks,
            enqueued_at: r.enqueued_at,
            leader: r.leader,
            job_id: r.job_id,
            outcome,
            started_at: r.job_started_at,
            finished_at: r.job_finished_at,
            error: r.job_error,
        }
    }
}

/// Recorded runs, newest tick first: of one schedule, or of all. At most `limit` (1–1000).
/// Platform data: for the platform's admins.
pub async fn runs(
    db: &Db,
    schedule: Option<&str>,
    limit: u32,
) -> Result<Vec<ScheduleRun>, StoreError> {
    let mut select = Query::select()
        .columns([
            (RUNS, "id"),
            (RUNS, "schedule"),
            (RUNS, "tick_at"),
            (RUNS, "missed_ticks"),
            (RUNS, "enqueued_at"),
            (RUNS, "leader"),
            (RUNS, "job_id"),
        ])
        .expr_as(Expr::col((JOBS, "state")), "job_state")
        .expr_as(Expr::col((JOBS, "started_at")), "job_started_at")
        .expr_as(Expr::col((JOBS, "finished_at")), "job_finished_at")
        .expr_as(Expr::col((JOBS, "last_error")), "job_error")
        .from(RUNS)
        .left_join(JOBS, Expr::col((JOBS, "id")).equals((RUNS, "job_id")))
        .order_by((RUNS, "tick_at"), Order::Desc)
        .order_by((RUNS, "schedule"), Order::Asc)
        .limit(u64::from(limit.clamp(1, 1000)))
        .to_owned();
    if let Some(name) = schedule {
        select.and_where(Expr::col((RUNS, "schedule")).eq(name));
    }
    let rows: Vec<RunRow> = db.fetch_all(&select).await?;
    Ok(rows.into_iter().map(ScheduleRun::from).collect())
}

/// Takes or renews the scheduler lease for `me`; true when `me` holds it.
async fn try_lead(
    db: &Db,
    me: Uuid,
    lease: Duration,
    row_exists: &mut bool,
) -> Result<bool, StoreError> {
    let at = now();
    let expires_at = chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if *row_exists {
        // Followers look before they write: a held lease needs no write lock to be refused.
        #[derive(sqlx::FromRow, serde::Deserialize)]
        struct Held {
            holder: Option<Uuid>,
            expires_at: DateTime<Utc>,
        }
        let select = Query::select()
            .columns(["holder", "expires_at"])
            .from(LEASES)
            .and_where(Expr::col("name").eq(LEASE_NAME))
            .to_owned();
        if let Some(held) = db.fetch_optional::<Held>(&select).await?
            && held.holder.is_some_and(|h| h != me)
            && held.expires_at >= at
        {
            return Ok(false);
        }
    } else {
        let insert = Query::insert()
            .into_table(LEASES)
            .columns(["name", "holder", "acquired_at", "expires_at", "updated_at"])
            .values_panic([
                LEASE_NAME.into(),
                me.into(),
                at.into(),
                expires_at.into(),
                at.into(),
            ])
            .on_conflict(OnConflict::column("name").do_nothing().to_owned())
            .to_owned();
        let inserted = db.execute(&insert).await?;
        *row_exists = true;
        if inserted == 1 {
            return Ok(true);
        }
    }
    let update = Query::update()
        .table(LEASES)
        .values([
            ("holder", me.into()),
            ("expires_at", expires_at.into()),
            ("updated_at", at.into()),
            (
                "acquired_at",
                Expr::case(Expr::col("holder").eq(me), Expr::col("acquired_at"))
                    .finally(at)
                    .into(),
            ),
        ])
        .and_where(Expr::col("name").eq(LEASE_NAME))
        .and_where(
            Expr::col("holder")
                .eq(me)
                .or(Expr::col("holder").is_null())
                .or(Expr::col("expires_at").lt(at)),
        )
        .to_owned();
    Ok(db.execute(&update).await? == 1)
}

/// Gives the lease up so that another node takes over at once (graceful shutdown).
async fn resign(db: &Db, me: Uuid) -> Result<(), StoreError> {
    let at = now();
    let update = Query::update()
        .table(LEASES)
        .values([
            ("holder", Option::<Uuid>::None.into()),
            ("acquired_at", Option::<DateTime<Utc>>::None.into()),
            ("expires_at", at.into()),
            ("updated_at", at.into()),
        ])
        .and_where(Expr::col("name").eq(LEASE_NAME))
        .and_where(Expr::col("holder").eq(me))
        .to_owned();
    db.execute(&update).await?;
    Ok(())
}

/// The instant after which each schedule's ticks are due: its last tick, or when a leader
/// first saw it (recorded once, so a new schedule does not run for ticks before it existed).
async fn baselines(
    db: &Db,
    schedules: &[(ScheduleDefinition, Ticker)],
) -> Result<HashMap<&'static str, DateTime<Utc>>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Row {
        name: String,
        first_seen_at: DateTime<Utc>,
        last_tick_at: Option<DateTime<Utc>>,
    }
    if schedules.is_empty() {
        return Ok(HashMap::new());
    }
    let at = now();
    let mut insert = Query::insert()
        .into_table(SCHEDULES)
        .columns(["name", "first_seen_at"])
        .on_conflict(OnConflict::column("name").do_nothing().to_owned())
        .to_owned();
    for (s, _) in schedules {
        insert.values_panic([s.name.into(), at.into()]);
    }
    db.execute(&insert).await?;
    let select = Query::select()
        .columns(["name", "first_seen_at", "last_tick_at"])
        .from(SCHEDULES)
        .and_where(Expr::col("name").is_in(schedules.iter().map(|(s, _)| s.name)))
        .to_owned();
    let rows: Vec<Row> = db.fetch_all(&select).await?;
    let mut out = HashMap::new();
    for (s, _) in schedules {
        if let Some(row) = rows.iter().find(|r| r.name == s.name) {
            out.insert(s.name, row.last_tick_at.unwrap_or(row.first_seen_at));
        }
    }
    Ok(out)
}

/// What became of an attempt to fire a tick.
enum Fired {
    /// This call ran the tick, skipping `missed` earlier ones.
    Ran { missed: u32 },
    /// The tick (or a later one) had already run: the schedule's last tick is `last`.
    AlreadyRun { last: DateTime<Utc> },
}

/// Enqueues the job of the tick `due` and records the run, unless it (or a later tick)
/// already ran. The schedule's row is locked first (`FOR UPDATE` on PostgreSQL; SQLite's
/// transaction holds the write lock), so competing leaders serialise and the count of missed
/// ticks is exact; the unique (schedule, tick) index stays as the last guard.
async fn fire(
    state: &AppState,
    me: Uuid,
    schedule: &ScheduleDefinition,
    ticker: &Ticker,
    due: DateTime<Utc>,
) -> Result<Fired, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Progress {
        first_seen_at: DateTime<Utc>,
        last_tick_at: Option<DateTime<Utc>>,
    }
    let mut tx = state.db.begin().await?;
    let select = Query::select()
        .columns(["first_seen_at", "last_tick_at"])
        .from(SCHEDULES)
        .and_where(Expr::col("name").eq(schedule.name))
        .lock(sea_query::LockType::Update)
        .to_owned();
    let progress: Progress = tx.fetch_one(&select).await?;
    if let Some(last) = progress.last_tick_at
        && last >= due
    {
        tx.rollback().await?;
        return Ok(Fired::AlreadyRun { last });
    }
    let baseline = progress.last_tick_at.unwrap_or(progress.first_seen_at);
    let missed = ticker.count_between(baseline, due);
    let payload = ScheduledTick {
        schedule: schedule.name.to_string(),
        tick_at: due,
        missed_ticks: missed,
    };
    let payload = serde_json::to_value(&payload)
        .map_err(|e| StoreError::Other(anyhow::anyhow!("cannot serialise a tick: {e}")))?;
    let job_id = state
        .jobs
        .enqueue_json(
            &mut tx,
            None,
            schedule.job_type,
            payload,
            EnqueueOptions::default(),
        )
        .await?;
    let record = Query::insert()
        .into_table(RUNS)
        .columns([
            "id",
            "schedule",
            "tick_at",
            "missed_ticks",
            "enqueued_at",
            "leader",
            "job_id",
        ])
        .values_panic([
            Uuid::now_v7().into(),
            schedule.name.into(),
            due.into(),
            i32::try_from(missed).unwrap_or(i32::MAX).into(),
            now().into(),
            me.into(),
            job_id.into(),
        ])
        .on_conflict(
            OnConflict::columns(["schedule", "tick_at"])
                .do_nothing()
                .to_owned(),
        )
        .to_owned();
    if tx.execute(&record).await? == 0 {
        // Recorded already (by a leader that did not advance the schedule): drop our job.
        tx.rollback().await?;
        return Ok(Fired::AlreadyRun { last: due });
    }
    let advance = Query::update()
        .table(SCHEDULES)
        .value("last_tick_at", due)
        .and_where(Expr::col("name").eq(schedule.name))
        .to_owned();
    tx.execute(&advance).await?;
    tx.commit().await?;
    Ok(Fired::Ran { missed })
}

/// Runs every schedule whose latest tick is past what this leader last saw of it.
async fn run_due(
    state: &AppState,
    me: Uuid,
    schedules: &[(ScheduleDefinition, Ticker)],
    baselines: &mut HashMap<&'static str, DateTime<Utc>>,
) {
    let at = now();
    for (schedule, ticker) in schedules {
        let Some(baseline) = baselines.get(schedule.name).copied() else {
            continue;
        };
        let Some(due) = ticker.latest_at_or_before(at) else {
            continue;
        };
        // A cheap filter in memory; `fire` decides on the database's state.
        if due <= baseline {
            continue;
        }
        match fire(state, me, schedule, ticker, due).await {
            Ok(Fired::Ran { missed }) => {
                metrics::counter!("keel_scheduler_ticks_total", "schedule" => schedule.name, "outcome" => "enqueued").increment(1);
                if missed > 0 {
                    metrics::counter!("keel_scheduler_missed_ticks_total", "schedule" => schedule.name)
                        .increment(u64::from(missed));
                }
                tracing::info!(
                    schedule = schedule.name,
                    tick_at = %due,
                    missed_ticks = missed,
                    "scheduled tick enqueued"
                );
                baselines.insert(schedule.name, due);
            }
            Ok(Fired::AlreadyRun { last }) => {
                tracing::info!(schedule = schedule.name, tick_at = %due, "tick already run by another node");
                baselines.insert(schedule.name, Ord::max(last, due));
            }
            Err(e) => {
                metrics::counter!("keel_scheduler_ticks_total", "schedule" => schedule.name, "outcome" => "failed").increment(1);
                tracing::warn!(schedule = schedule.name, error = %e, "enqueueing a scheduled tick failed; retrying");
            }
        }
    }
}

/// The scheduler loop of one runtime: competes for leadership and, while leading, fires due
/// ticks. Resigns on stop.
pub(crate) async fn run(
    state: AppState,
    me: Uuid,
    schedules: Vec<ScheduleDefinition>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let schedules: Vec<(ScheduleDefinition, Ticker)> = schedules
        .into_iter()
        .filter_map(|s| match Ticker::new(&s.cadence) {
            Ok(t) => Some((s, t)),
            Err(e) => {
                // The registry refuses these at start-up; nothing to run if one slipped through.
                tracing::error!(schedule = s.name, error = e.as_str(), "invalid schedule");
                None
            }
        })
        .collect();
    let config = state.config.scheduler.clone();
    let lease = config.lease();
    let resolution = config.tick_resolution();
    let mut row_exists = false;
    let mut leading_until: Option<Instant> = None;
    let mut next_check = Instant::now();
    let mut due_from: Option<HashMap<&'static str, DateTime<Utc>>> = None;
    loop {
        if stop.borrow().is_some() {
            break;
        }
        if Instant::now() >= next_check {
            let started = Instant::now();
            match try_lead(&state.db, me, lease, &mut row_exists).await {
                Ok(true) => {
                    if leading_until.is_none() {
                        tracing::info!(node = %me, "this node now leads the scheduler");
                        due_from = None;
                    }
                    // Renewals come every third of the lease; acting for two thirds leaves one
                    // failed renewal of slack and steps back before anyone else may take over.
                    leading_until = Some(started + lease * 2 / 3);
                    next_check = started + lease / 3;
                }
                Ok(false) => {
                    if leading_until.take().is_some() {
                        tracing::warn!(node = %me, "scheduler leadership passed to another node");
                    }
                    due_from = None;
                    next_check = Instant::now() + resolution;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler lease check failed");
                    next_check = Instant::now() + resolution;
                }
            }
        }
        if leading_until.is_some_and(|until| Instant::now() >= until) {
            tracing::warn!(node = %me, "scheduler lease not renewed in time; stepping back");
            leading_until = None;
            due_from = None;
        }
        if leading_until.is_some() {
            if due_from.is_none() {
                match baselines(&state.db, &schedules).await {
                    Ok(b) => due_from = Some(b),
                    Err(e) => tracing::warn!(error = %e, "loading schedule state failed"),
                }
            }
            if let Some(due_from) = due_from.as_mut() {
                run_due(&state, me, &schedules, due_from).await;
            }
        }
        let wake_at = (Instant::now() + resolution).min(next_check.max(Instant::now()));
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(wake_at) => {}
        }
    }
    if leading_until.is_some() {
        match resign(&state.db, me).await {
            Ok(()) => tracing::info!(node = %me, "scheduler leadership handed on"),
            Err(e) => {
                tracing::warn!(error = %e, "could not hand scheduler leadership on; another node takes over when the lease expires")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn intervals_tick_on_multiples_since_the_epoch() {
        let t = Ticker::new(&Cadence::Every(Duration::from_secs(3600))).expect("ticker");
        assert_eq!(
            t.latest_at_or_before(at("2026-03-01T10:59:59.999Z")),
            Some(at("2026-03-01T10:00:00Z"))
        );
        assert_eq!(
            t.latest_at_or_before(at("2026-03-01T11:00:00Z")),
            Some(at("2026-03-01T11:00:00Z"))
        );
        // 08:00 (last run) → 11:00 (due): 09:00 and 10:00 were missed.
        assert_eq!(
            t.count_between(at("2026-03-01T08:00:00Z"), at("2026-03-01T11:00:00Z")),
            2
        );
        assert_eq!(
            t.count_between(at("2026-03-01T10:30:00Z"), at("2026-03-01T11:00:00Z")),
            0
        );
    }

    #[test]
    fn cron_accepts_five_fields_six_fields_and_shorthands() {
        let five = Ticker::new(&Cadence::Cron("*/15 * * * *")).expect("five fields");
        assert_eq!(
            five.latest_at_or_before(at("2026-03-01T10:44:59Z")),
            Some(at("2026-03-01T10:30:00Z"))
        );
        assert_eq!(
            five.latest_at_or_before(at("2026-03-01T10:45:00Z")),
            Some(at("2026-03-01T10:45:00Z")),
            "a tick exactly now is due now"
        );
        assert_eq!(
            five.count_between(at("2026-03-01T09:00:00Z"), at("2026-03-01T10:30:00Z")),
            5
        );
        let six = Ticker::new(&Cadence::Cron("30 0 9 * * Mon")).expect("six fields");
        assert_eq!(
            six.latest_at_or_before(at("2026-03-04T12:00:00Z")),
            Some(at("2026-03-02T09:00:30Z"))
        );
        Ticker::new(&Cadence::Cron("@daily")).expect("shorthand");
    }

    #[test]
    fn bad_cadences_are_refused() {
        assert!(Ticker::new(&Cadence::Cron("every tuesday")).is_err());
        assert!(Ticker::new(&Cadence::Cron("* * *")).is_err());
        assert!(Ticker::new(&Cadence::Every(Duration::ZERO)).is_err());
        assert!(Ticker::new(&Cadence::Every(Duration::from_micros(1500))).is_err());
    }
}
