//! The job runtime of one process: a worker loop per queue, the heartbeat that keeps their
//! leases, the reaper that re-queues jobs of dead workers, and the scheduler.
//!
//! Each queue has one dispatcher that claims up to its free slots in one query and runs each
//! job in a task of its own, so a queue's concurrency is exactly its number of slots and a
//! slow queue never holds another's. A dispatcher sleeps until a job of its queue is enqueued
//! in this process, a slot frees up, or its poll interval passes. On SQLite, outcomes go
//! through one recorder task that writes whatever has queued up in one transaction (group
//! commit: one disk flush for many jobs, and no fight among writers for the database's one
//! write lock); on PostgreSQL, where writers do not exclude each other, each job writes its
//! own. Either way a job waits until its own outcome is stored.
//!
//! Shutdown ([`Runtime::shutdown`]): stop claiming, let running jobs finish within
//! `jobs.shutdown_grace_ms`, then stop the rest and release them (back to `queued`, lease
//! cleared, the attempt not counted). Dropping a [`Runtime`] instead aborts everything on the
//! spot, as a crash would: its jobs run again once their leases expire.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt as _;
use rand::Rng as _;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument as _;
use uuid::Uuid;

use super::store::{self, Claimed, Outcome};
use super::{JobContext, JobError, Jobs, scheduler};
use crate::config::DatabaseKind;
use crate::state::AppState;
use crate::store::{Db, now};
use crate::tenancy::TenantScope;

/// What a runtime runs.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Identifies this runtime in job leases and in the scheduler's lease. `keel serve` uses
    /// its node id.
    pub id: Uuid,
    /// Run workers.
    pub workers: bool,
    /// The queues to work; `None` means `jobs.queues`, or every queue a job type uses when
    /// that is empty.
    pub queues: Option<Vec<String>>,
    /// Take part in scheduler leadership (when any schedule is declared).
    pub scheduler: bool,
}

impl RuntimeOptions {
    /// What `keel serve` runs: workers and scheduler as configured.
    pub fn from_config(state: &AppState) -> Self {
        Self {
            id: state.node_id,
            workers: state.config.jobs.enabled,
            queues: None,
            scheduler: state.config.scheduler.enabled,
        }
    }
}

/// How a graceful shutdown went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeReport {
    /// Jobs still running when the grace period ran out, put back in their queue.
    pub released: u64,
}

/// The running job machinery of one process. See the module documentation.
pub struct Runtime {
    id: Uuid,
    stop: watch::Sender<Option<Instant>>,
    /// Ends the heartbeat once no job runs any more.
    finished: watch::Sender<bool>,
    dispatchers: JoinSet<u64>,
    background: JoinSet<()>,
    queues: Vec<String>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("id", &self.id)
            .field("queues", &self.queues)
            .finish()
    }
}

/// A job a dispatcher runs, as the heartbeat sees it.
struct Running {
    token: Uuid,
    abort: Option<AbortHandle>,
    /// Writing its outcome: the heartbeat still extends its lease (until the outcome is
    /// written) but no longer stops it.
    finishing: bool,
}

type RunningJobs = Arc<Mutex<HashMap<Uuid, Running>>>;

fn lock(running: &RunningJobs) -> std::sync::MutexGuard<'_, HashMap<Uuid, Running>> {
    // A panic while holding this lock leaves the map consistent (single inserts/removes).
    running.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Runtime {
    /// Starts the workers and the scheduler `options` ask for, on `state`'s database.
    pub fn start(state: &AppState, options: RuntimeOptions) -> Self {
        let (stop, _) = watch::channel(None);
        let (finished, _) = watch::channel(false);
        let mut dispatchers = JoinSet::new();
        let mut background = JoinSet::new();
        let jobs = state.jobs.clone();
        let config = &state.config.jobs;
        let queues: Vec<String> = if options.workers {
            match &options.queues {
                Some(q) if !q.is_empty() => q.clone(),
                _ if !config.queues.is_empty() => config.queues.clone(),
                _ => jobs.queues().into_iter().map(String::from).collect(),
            }
        } else {
            Vec::new()
        };
        let running: RunningJobs = Arc::default();
        let recorder = match state.db.kind() {
            DatabaseKind::Sqlite if !queues.is_empty() => {
                let (sender, outcomes) = mpsc::channel(RECORDER_QUEUE);
                // Ends when the last dispatcher (and with it the last sender) is gone.
                background.spawn(record_outcomes(state.db.clone(), outcomes));
                Recorder(Some(sender))
            }
            _ => Recorder(None),
        };
        for queue in &queues {
            let concurrency = config.concurrency_of(queue) as usize;
            tracing::info!(
                worker = %options.id,
                queue = queue.as_str(),
                concurrency,
                "job queue started"
            );
            let dispatcher = Dispatcher {
                state: state.clone(),
                jobs: jobs.clone(),
                worker: options.id,
                queue: queue.clone(),
                concurrency,
                wake: jobs.waker(queue),
                running: running.clone(),
                recorder: recorder.clone(),
                stop: stop.subscribe(),
            };
            dispatchers.spawn(dispatcher.run());
        }
        if !queues.is_empty() {
            background.spawn(maintain(
                state.db.clone(),
                jobs.clone(),
                options.id,
                running,
                finished.subscribe(),
            ));
        }
        if options.scheduler {
            let schedules = state.registry.schedules();
            if !schedules.is_empty() {
                background.spawn(scheduler::run(
                    state.clone(),
                    options.id,
                    schedules,
                    stop.subscribe(),
                ));
            }
        }
        Self {
            id: options.id,
            stop,
            finished,
            dispatchers,
            background,
            queues,
        }
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The queues this runtime works.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Stops claiming, waits up to `grace` for running jobs, releases the rest, hands the
    /// scheduler's leadership on, and returns how many jobs it released.
    pub async fn shutdown(mut self, grace: Duration) -> RuntimeReport {
        let deadline = Instant::now()
            .checked_add(grace)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        self.stop.send_replace(Some(deadline));
        let mut report = RuntimeReport::default();
        while let Some(result) = self.dispatchers.join_next().await {
            match result {
                Ok(released) => report.released += released,
                Err(e) => tracing::error!(error = %e, "a job queue's worker task failed"),
            }
        }
        // The heartbeat kept leases alive while jobs finished; nothing runs any more. The
        // scheduler handed its lease on when it saw the stop.
        self.finished.send_replace(true);
        while self.background.join_next().await.is_some() {}
        report
    }
}

struct Dispatcher {
    state: AppState,
    jobs: Jobs,
    worker: Uuid,
    queue: String,
    concurrency: usize,
    wake: Option<Arc<Notify>>,
    running: RunningJobs,
    recorder: Recorder,
    stop: watch::Receiver<Option<Instant>>,
}

/// The first re-check after a wake-up found nothing: the enqueuing transaction may not have
/// committed yet. Doubles up to the poll interval.
const FOLLOW_UP: Duration = Duration::from_millis(5);

impl Dispatcher {
    async fn run(mut self) -> u64 {
        let config = self.jobs.config().clone();
        let poll = config.poll_interval();
        let mut executors: JoinSet<()> = JoinSet::new();
        let mut tasks: HashMap<tokio::task::Id, Uuid> = HashMap::new();
        // After a wake-up, re-check soon rather than at the next poll.
        let mut follow_up: Option<Duration> = None;
        // The last claim filled every free slot: there may be more due jobs.
        let mut backlog = true;
        let mut claim_now = true;
        // A deadline rather than a fresh sleep per loop, so that jobs finishing often cannot
        // postpone the next poll indefinitely.
        let mut next_poll = Instant::now();
        loop {
            if self.stop.borrow().is_some() {
                break;
            }
            // Reap every finished task first: a finished but unjoined task still counts in
            // the set, and claiming for all freed slots at once batches the claims.
            while let Some(joined) = executors.try_join_next_with_id() {
                self.forget(&mut tasks, joined);
            }
            let free = self.concurrency.saturating_sub(executors.len());
            if claim_now && free > 0 {
                let token = Uuid::now_v7();
                let limit = u32::try_from(free).unwrap_or(u32::MAX);
                match store::claim(
                    &self.state.db,
                    &self.queue,
                    limit,
                    self.worker,
                    token,
                    config.lease(),
                )
                .await
                {
                    Ok(claimed) => {
                        backlog = claimed.len() == free;
                        follow_up = if claimed.is_empty() {
                            follow_up.map(|d| d * 2).filter(|d| *d < poll)
                        } else {
                            None
                        };
                        for job in claimed {
                            self.spawn(&mut executors, &mut tasks, job, token);
                        }
                    }
                    Err(e) => {
                        backlog = false;
                        follow_up = None;
                        tracing::warn!(queue = self.queue.as_str(), error = %e, "claiming jobs failed; retrying at the next poll");
                    }
                }
                next_poll = Instant::now() + follow_up.unwrap_or_else(|| jitter(poll));
            }
            claim_now = false;
            let full = executors.len() >= self.concurrency;
            tokio::select! {
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(joined) = executors.join_next_with_id(), if !executors.is_empty() => {
                    self.forget(&mut tasks, joined);
                    claim_now = backlog;
                }
                () = wait(self.wake.as_deref()), if !full => {
                    follow_up = Some(FOLLOW_UP);
                    claim_now = true;
                }
                () = tokio::time::sleep_until(next_poll), if !full => {
                    claim_now = true;
                }
            }
        }
        self.drain(executors, tasks).await
    }

    fn spawn(
        &self,
        executors: &mut JoinSet<()>,
        tasks: &mut HashMap<tokio::task::Id, Uuid>,
        job: Claimed,
        token: Uuid,
    ) {
        let id = job.id;
        // Registered before the task starts so that the task's own removal cannot race ahead.
        lock(&self.running).insert(
            id,
            Running {
                token,
                abort: None,
                finishing: false,
            },
        );
        let span = tracing::info_span!(
            "job",
            job_id = %job.id,
            job_type = job.job_type.as_str(),
            queue = self.queue.as_str(),
            attempt = job.attempts
        );
        let execution = execute(
            self.state.clone(),
            self.jobs.clone(),
            self.running.clone(),
            self.recorder.clone(),
            job,
            token,
        )
        .instrument(span);
        let handle = executors.spawn(execution);
        tasks.insert(handle.id(), id);
        if let Some(entry) = lock(&self.running).get_mut(&id) {
            entry.abort = Some(handle);
        }
    }

    fn forget(
        &self,
        tasks: &mut HashMap<tokio::task::Id, Uuid>,
        joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) {
        let task = match &joined {
            Ok((task, ())) => *task,
            Err(e) => e.id(),
        };
        if let Err(e) = &joined
            && e.is_panic()
        {
            tracing::error!(
                queue = self.queue.as_str(),
                "a job task panicked outside its handler"
            );
        }
        if let Some(job) = tasks.remove(&task) {
            lock(&self.running).remove(&job);
        }
    }

    /// Waits for running jobs until the shutdown deadline, then stops and releases the rest.
    async fn drain(
        self,
        mut executors: JoinSet<()>,
        mut tasks: HashMap<tokio::task::Id, Uuid>,
    ) -> u64 {
        let deadline = (*self.stop.borrow()).unwrap_or_else(Instant::now);
        while !executors.is_empty() {
            match tokio::time::timeout_at(deadline, executors.join_next_with_id()).await {
                Ok(Some(joined)) => self.forget(&mut tasks, joined),
                Ok(None) | Err(_) => break,
            }
        }
        if executors.is_empty() {
            return 0;
        }
        // Out of time: stop the handlers, then hand their jobs back without counting the
        // attempt (the job did nothing wrong; this node is leaving).
        executors.abort_all();
        while executors.join_next().await.is_some() {}
        let ids: Vec<Uuid> = tasks.into_values().collect();
        {
            let mut running = lock(&self.running);
            for id in &ids {
                running.remove(id);
            }
        }
        match store::release(&self.state.db, self.worker, &ids).await {
            Ok(n) => {
                tracing::warn!(
                    queue = self.queue.as_str(),
                    released = n,
                    "shutdown grace ran out: running jobs released back to the queue"
                );
                n
            }
            Err(e) => {
                tracing::error!(queue = self.queue.as_str(), error = %e, "releasing jobs at shutdown failed; they run again when their leases expire");
                0
            }
        }
    }
}

async fn wait(notify: Option<&Notify>) {
    match notify {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// ±10 % so that nodes started together do not poll in step.
fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(0.9..=1.1);
    d.mul_f64(factor)
}

/// The retry delay after failed attempt `attempt` (1-based): exponential, capped, with full
/// jitter (a uniformly random delay up to the exponential bound), which spreads the retries of
/// many jobs that failed together.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(62);
    let bound = base.saturating_mul(1u32.checked_shl(exponent.min(31)).unwrap_or(u32::MAX));
    let bound = if exponent > 31 { cap } else { bound.min(cap) };
    let millis = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// Counts and times one finished attempt, and warns when it was slow. The labels are the
/// queue, the job type and the outcome: bounded sets, never a job id.
fn finished(
    job_type: &str,
    queue: &'static str,
    started: std::time::Instant,
    outcome: &'static str,
) {
    let elapsed = started.elapsed();
    metrics::counter!("keel_job_attempts_total", "queue" => queue, "job_type" => job_type.to_string(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("keel_job_duration_seconds", "queue" => queue, "job_type" => job_type.to_string())
        .record(elapsed.as_secs_f64());
    crate::observe::warn_if_slow("job", job_type, elapsed);
}

/// Runs one claimed job and records its outcome.
async fn execute(
    state: AppState,
    jobs: Jobs,
    running: RunningJobs,
    recorder: Recorder,
    job: Claimed,
    token: Uuid,
) {
    let attempt = u32::try_from(job.attempts).unwrap_or(1).max(1);
    let max_attempts = u32::try_from(job.max_attempts).unwrap_or(1).max(1);
    let config = jobs.config();
    let started = std::time::Instant::now();
    let job_type = job.job_type.clone();
    let queue = jobs
        .job_type(&job.job_type)
        .map_or("unknown", |k| k.definition.queue);
    let outcome = match jobs.job_type(&job.job_type) {
        // A job type this build does not know (a rolling deploy): retry, another node may.
        None => Err(format!(
            "no handler for job type `{}` in this build of Keel",
            job.job_type
        )),
        Some(kind) => {
            let ctx = JobContext {
                state: state.clone(),
                scope: job.org_id.map(|org| TenantScope::system(org, "jobs")),
                job_id: job.id,
                job_type: kind.definition.job_type,
                queue: kind.definition.queue,
                attempt,
                max_attempts,
            };
            let limit = kind.time_limit;
            let run =
                AssertUnwindSafe(kind.definition.handler.run(ctx, job.payload)).catch_unwind();
            match tokio::time::timeout(limit, run).await {
                Ok(Ok(Ok(result))) => Ok(result),
                Ok(Ok(Err(JobError::Permanent(e)))) => {
                    finished(&job_type, queue, started, "failed");
                    let error = format!("{e:#}");
                    tracing::warn!(error = error.as_str(), "job failed permanently");
                    record(
                        &state.db,
                        &recorder,
                        &running,
                        job.id,
                        token,
                        Outcome::Failed(error),
                    )
                    .await;
                    return;
                }
                Ok(Ok(Err(JobError::Retry(e)))) => Err(format!("{e:#}")),
                Ok(Err(panic)) => Err(format!("the handler panicked: {}", panic_message(&panic))),
                Err(_) => Err(format!(
                    "the attempt exceeded its time limit of {} and was stopped",
                    humanize(limit)
                )),
            }
        }
    };
    finished(
        &job_type,
        queue,
        started,
        match &outcome {
            Ok(_) => "succeeded",
            Err(_) if attempt >= max_attempts => "dead",
            Err(_) => "retry",
        },
    );
    let outcome = match outcome {
        Ok(result) => Outcome::Succeeded(result),
        Err(error) if attempt >= max_attempts => {
            tracing::warn!(
                error = error.as_str(),
                "job failed on its last attempt: dead"
            );
            Outcome::Dead(error)
        }
        Err(error) => {
            let delay = backoff(
                attempt,
                Duration::from_millis(config.backoff_base_ms),
                Duration::from_millis(config.backoff_cap_ms),
            );
            tracing::info!(
                error = error.as_str(),
                retry_in_ms = delay.as_millis() as u64,
                "job attempt failed; will retry"
            );
            let retry_at = chrono::Duration::from_std(delay)
                .ok()
                .and_then(|d| now().checked_add_signed(d))
                .unwrap_or_else(Utc::now);
            Outcome::Retry { error, retry_at }
        }
    };
    record(&state.db, &recorder, &running, job.id, token, outcome).await;
}

/// Outcomes waiting for the recorder, at most (executors wait beyond that).
const RECORDER_QUEUE: usize = 1024;
/// Outcomes written in one transaction, at most.
const RECORDER_BATCH: usize = 256;

/// An outcome to store, and where to say whether it was.
struct Pending {
    id: Uuid,
    token: Uuid,
    outcome: Outcome,
    stored: oneshot::Sender<Result<bool, String>>,
}

/// The SQLite recorder's queue; `None` means each job writes its own outcome.
#[derive(Clone)]
struct Recorder(Option<mpsc::Sender<Pending>>);

/// Writes outcomes as they come, everything queued so far in one transaction.
async fn record_outcomes(db: Db, mut queue: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(RECORDER_BATCH);
    while queue.recv_many(&mut batch, RECORDER_BATCH).await > 0 {
        let outcomes: Vec<(Uuid, Uuid, &Outcome)> =
            batch.iter().map(|p| (p.id, p.token, &p.outcome)).collect();
        let result = store::finish_all(&db, &outcomes).await;
        match result {
            Ok(held) => {
                for (pending, held) in batch.drain(..).zip(held) {
                    let _ = pending.stored.send(Ok(held));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for pending in batch.drain(..) {
                    let _ = pending.stored.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Stores an outcome, retrying briefly: losing it would run the job again after its lease.
async fn record(
    db: &Db,
    recorder: &Recorder,
    running: &RunningJobs,
    id: Uuid,
    token: Uuid,
    outcome: Outcome,
) {
    if let Some(entry) = lock(running).get_mut(&id) {
        entry.finishing = true;
    }
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=5 {
        let direct = || async {
            store::finish_all(db, &[(id, token, &outcome)])
                .await
                .map(|held| held.first().copied().unwrap_or(false))
                .map_err(|e| e.to_string())
        };
        let result = match &recorder.0 {
            Some(queue) => {
                let (stored, answer) = oneshot::channel();
                let pending = Pending {
                    id,
                    token,
                    outcome: outcome.clone(),
                    stored,
                };
                match queue.send(pending).await {
                    Ok(()) => answer
                        .await
                        .unwrap_or_else(|_| Err("the outcome recorder stopped".into())),
                    // The recorder is gone (the runtime is being dropped): write it here.
                    Err(_) => direct().await,
                }
            }
            None => direct().await,
        };
        match result {
            Ok(true) => {
                tracing::debug!(?outcome, "job attempt recorded");
                return;
            }
            Ok(false) => {
                tracing::warn!(
                    "job outcome discarded: the job was cancelled or claimed by another worker meanwhile"
                );
                return;
            }
            Err(e) if attempt < 5 => {
                tracing::warn!(
                    error = e.as_str(),
                    "recording a job outcome failed; retrying"
                );
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(
                    error = e.as_str(),
                    "recording a job outcome failed; the job runs again after its lease expires"
                );
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic".to_string()
    }
}

fn humanize(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Heartbeat and reaper: extends the leases of this runtime's running jobs, stops handlers
/// whose job was cancelled or taken over, and re-queues jobs of workers that died.
async fn maintain(
    db: Db,
    jobs: Jobs,
    worker: Uuid,
    running: RunningJobs,
    mut finished: watch::Receiver<bool>,
) {
    let config = jobs.config().clone();
    let lease = config.lease();
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval());
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reap_every = (lease / 2).max(Duration::from_millis(10));
    let mut reap = tokio::time::interval(reap_every);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat = Instant::now();
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                beat(&db, worker, &running, lease, &mut last_beat).await;
            }
            _ = reap.tick() => {
                match store::requeue_expired(&db).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(jobs = n, "re-queued jobs whose worker stopped heartbeating");
                        for queue in jobs.queues() {
                            jobs.wake(queue);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "re-queueing expired jobs failed"),
                }
            }
            changed = finished.changed() => {
                if changed.is_err() || *finished.borrow() {
                    return;
                }
            }
        }
    }
}

async fn beat(db: &Db, worker: Uuid, running: &RunningJobs, lease: Duration, last: &mut Instant) {
    let ids: Vec<Uuid> = lock(running).keys().copied().collect();
    if ids.is_empty() {
        *last = Instant::now();
        return;
    }
    let started = Instant::now();
    match store::heartbeat(db, worker, &ids, lease).await {
        Ok(held) => {
            *last = started;
            let lost: Vec<Uuid> = ids.into_iter().filter(|id| !held.contains(id)).collect();
            stop_handlers(running, &lost, "cancelled, or claimed by another worker");
        }
        Err(e) => {
            tracing::warn!(error = %e, "job heartbeat failed");
            // Past the lease, other workers may already be running these jobs: stop ours.
            if last.elapsed() >= lease {
                stop_handlers(
                    running,
                    &ids,
                    "its lease could not be renewed before it expired",
                );
            }
        }
    }
}

fn stop_handlers(running: &RunningJobs, ids: &[Uuid], why: &str) {
    let running = lock(running);
    for id in ids {
        if let Some(entry) = running.get(id)
            && !entry.finishing
            && let Some(abort) = &entry.abort
        {
            tracing::warn!(job_id = %id, token = %entry.token, "stopping a job's handler: {why}");
            abort.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_the_cap_with_full_jitter() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 1..=80 {
            let bound = if attempt > 6 {
                cap
            } else {
                (base * 2u32.pow(attempt - 1)).min(cap)
            };
            for _ in 0..50 {
                let d = backoff(attempt, base, cap);
                assert!(d <= bound, "attempt {attempt}: {d:?} > {bound:?}");
            }
        }
        // Full jitter: the delays of one attempt spread over the whole range.
        let samples: Vec<Duration> = (0..200).map(|_| backoff(6, base, cap)).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_millis(800)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(2400)));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(900) && d <= Duration::from_millis(1100));
        }
    }
}
