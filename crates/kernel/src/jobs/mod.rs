//! Durable background jobs and the scheduler.
//!
//! This module owns the job model (the `keel_jobs` table), the Rust API apps use to declare
//! and enqueue jobs, the workers that run them ([`runtime`]), the store functions the job API
//! calls ([`store`]) and the scheduler that turns periodic schedules into jobs
//! ([`scheduler`]). It is a table of our own on the application's pool, not a broker, because
//! a job must be enqueued **inside the caller's transaction**: it exists if and only if the
//! business write that asked for it committed.
//!
//! # The life of a job
//!
//! `queued` → a worker claims it atomically (`FOR UPDATE SKIP LOCKED` on PostgreSQL, an
//! `UPDATE … RETURNING` under SQLite's write lock) and holds a **lease** that its heartbeat
//! extends → `running` → `succeeded`, or on failure back to `queued` with exponential backoff
//! and full jitter until `max_attempts`, then `dead` (the dead letter, re-runnable by an
//! admin). A handler that asks not to be retried ([`JobError::Permanent`]) ends `failed`; an
//! admin may `cancel` a queued or running job (`cancelled`). An attempt that outlives its job
//! type's time limit is stopped and counts as a failed attempt.
//!
//! # Handlers must be idempotent
//!
//! A crash never loses a job: when a worker dies (or loses the database long enough), its
//! lease expires and another worker runs the job **again**. So a job may run more than once,
//! and even partly: its handler future may be dropped at any `.await` (time limit,
//! cancellation, shutdown). Write handlers so that running them twice has the effect of
//! running them once: check-then-act inside one transaction, upsert instead of insert, use
//! the job id as an idempotency key towards outside services.
//!
//! # Writing one
//!
//! ```text
//! use keel_kernel::jobs::{JobContext, JobDefinition, JobError, JobPayload};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct ExtractDocument { document_id: uuid::Uuid }
//!
//! impl JobPayload for ExtractDocument {
//!     const JOB_TYPE: &'static str = "trade.extract_document";
//! }
//!
//! async fn extract(ctx: JobContext, job: ExtractDocument) -> Result<serde_json::Value, JobError> {
//!     let scope = ctx.scope.as_ref().ok_or_else(|| JobError::permanent("no organization"))?;
//!     // … idempotent work inside `scope` …
//!     Ok(serde_json::json!({ "pages": 3 }))
//! }
//!
//! // In the app's `Module`:
//! fn jobs(&self) -> Vec<JobDefinition> {
//!     vec![JobDefinition::new(extract) // the payload type comes from `extract`'s signature
//!         .queue("ocr")
//!         .max_attempts(5)
//!         .time_limit(std::time::Duration::from_secs(120))]
//! }
//!
//! // In a handler or store function, inside the business transaction:
//! let job_id = state.jobs.enqueue(&mut tx, Some(&scope), &ExtractDocument { document_id }).await?;
//! tx.commit().await?;
//! ```
//!
//! A job carries the organization it was enqueued for; its handler receives a system
//! [`TenantScope`] for it (or none for platform jobs), so tenant isolation holds in background
//! work as it does in requests.

pub mod routes;
pub mod runtime;
pub mod scheduler;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::JobsConfig;
use crate::module::Registry;
use crate::state::AppState;
use crate::store::{StoreError, Tx, now};
use crate::tenancy::TenantScope;

pub use runtime::{Runtime, RuntimeOptions, RuntimeReport};
pub use store::{Job, JobAccess, JobActionError, JobCursor, JobFilter, JobList, JobPage, JobState};

/// A job's payload type: what a handler receives and what [`Jobs::enqueue`] takes.
///
/// The payload is stored as JSON, so it must stay readable by the next release of Keel while
/// jobs of the previous one are still queued: add fields with `#[serde(default)]`.
pub trait JobPayload: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Globally unique, `<module>.<verb_noun>`, e.g. `trade.extract_document`.
    const JOB_TYPE: &'static str;
}

/// What a handler returns on failure: retry later, or give up now.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (a timeout, an unavailable service): retried with backoff until
    /// the job's attempts run out, then the job is `dead`.
    #[error("{0:#}")]
    Retry(#[source] anyhow::Error),
    /// No attempt can succeed (invalid input): the job ends `failed` at once.
    #[error("{0:#}")]
    Permanent(#[source] anyhow::Error),
}

impl JobError {
    pub fn retry(message: impl std::fmt::Display) -> Self {
        Self::Retry(anyhow::anyhow!("{message}"))
    }

    pub fn permanent(message: impl std::fmt::Display) -> Self {
        Self::Permanent(anyhow::anyhow!("{message}"))
    }
}

/// `?` on infrastructure errors inside handlers: they are transient until proven otherwise.
impl From<anyhow::Error> for JobError {
    fn from(e: anyhow::Error) -> Self {
        Self::Retry(e)
    }
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        Self::Retry(e.into())
    }
}

/// What a handler knows about the job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub state: AppState,
    /// The organization the job was enqueued for, as a system actor; `None` for platform jobs
    /// (scheduled maintenance, for instance).
    pub scope: Option<TenantScope>,
    pub job_id: Uuid,
    pub job_type: &'static str,
    pub queue: &'static str,
    /// 1 on the first run; a job whose worker died counts that run too.
    pub attempt: u32,
    pub max_attempts: u32,
}

impl JobContext {
    /// A system actor's scope inside `org_id` (the actor is the job type), for a platform job
    /// that visits organizations one by one — a scheduled task that marks every
    /// organization's overdue items, say — having found their ids in its own tables. `None`
    /// for a job enqueued for an organization: that one acts only inside [`Self::scope`].
    pub fn org_scope(&self, org_id: Uuid) -> Option<TenantScope> {
        match self.scope {
            None => Some(TenantScope::system(org_id, self.job_type)),
            Some(_) => None,
        }
    }
}

/// Runs one job of a type. Usually made from an async function by [`JobDefinition::new`];
/// implement it directly for handlers that work on the raw JSON payload.
///
/// Handlers must be idempotent (see the module documentation): a job may run more than once.
#[async_trait::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Runs the job; the value returned is stored as the job's `result` (`null` for none).
    async fn run(
        &self,
        ctx: JobContext,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, JobError>;
}

/// Adapts an async function taking a typed payload into a [`JobHandler`].
struct FnHandler<P, F> {
    f: F,
    payload: PhantomData<fn() -> P>,
}

#[async_trait::async_trait]
impl<P, F, Fut, R> JobHandler for FnHandler<P, F>
where
    P: JobPayload,
    F: Fn(JobContext, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, JobError>> + Send + 'static,
    R: Serialize + Send + 'static,
{
    async fn run(
        &self,
        ctx: JobContext,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, JobError> {
        // A payload that does not decode will not decode on the next attempt either.
        let payload: P = serde_json::from_value(payload).map_err(|e| {
            JobError::permanent(format!("the payload is not a valid `{}`: {e}", P::JOB_TYPE))
        })?;
        let result = (self.f)(ctx, payload).await?;
        serde_json::to_value(result)
            .map_err(|e| JobError::permanent(format!("the result cannot be stored: {e}")))
    }
}

/// A job type a module handles: its handler, its queue and its limits.
#[derive(Clone)]
pub struct JobDefinition {
    /// Globally unique, e.g. `trade.extract_document`.
    pub job_type: &'static str,
    /// The queue it runs on (queues have their own concurrency), e.g. `ocr`.
    pub queue: &'static str,
    /// Attempts before the job is dead; `None` means `jobs.default_max_attempts`.
    pub max_attempts: Option<u32>,
    /// Longest one attempt may run; `None` means `jobs.default_time_limit_ms`.
    pub time_limit: Option<Duration>,
    pub handler: Arc<dyn JobHandler>,
}

impl std::fmt::Debug for JobDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobDefinition")
            .field("job_type", &self.job_type)
            .field("queue", &self.queue)
            .field("max_attempts", &self.max_attempts)
            .field("time_limit", &self.time_limit)
            .finish()
    }
}

/// The queue of job types that do not name one.
pub const DEFAULT_QUEUE: &str = "default";

impl JobDefinition {
    /// A job type handled by an async function of its typed payload, on the `default` queue.
    pub fn new<P, F, Fut, R>(handler: F) -> Self
    where
        P: JobPayload,
        F: Fn(JobContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, JobError>> + Send + 'static,
        R: Serialize + Send + 'static,
    {
        Self::with_handler(
            P::JOB_TYPE,
            Arc::new(FnHandler {
                f: handler,
                payload: PhantomData,
            }),
        )
    }

    /// A job type with a handler that reads the raw JSON payload.
    pub fn with_handler(job_type: &'static str, handler: Arc<dyn JobHandler>) -> Self {
        Self {
            job_type,
            queue: DEFAULT_QUEUE,
            max_attempts: None,
            time_limit: None,
            handler,
        }
    }

    pub fn queue(mut self, queue: &'static str) -> Self {
        self.queue = queue;
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }
}

/// When a periodic task runs. Times are UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cadence {
    /// Every interval, on multiples of it since the Unix epoch (so every node agrees on the
    /// tick times): `Every(1h)` ticks on the hour.
    Every(Duration),
    /// A cron expression: the usual five fields (`*/15 * * * *`), or six/seven with seconds
    /// first and an optional year (`0 */15 * * * *`), or `@hourly`, `@daily`, `@weekly`,
    /// `@monthly`, `@yearly`.
    Cron(&'static str),
}

/// A periodic task: each tick enqueues one job of `job_type`, once across all nodes.
///
/// The job's payload is a [`ScheduledTick`]; the job type's payload struct may declare any
/// of its fields (unknown fields are ignored by serde), e.g. `struct Cleanup { tick_at:
/// DateTime<Utc> }`. A schedule's first tick is the first one after a leader first saw it;
/// ticks missed while no node led run once when leadership resumes, not once each.
#[derive(Debug, Clone)]
pub struct ScheduleDefinition {
    /// Unique across modules, e.g. `complaints.escalate_sla`.
    pub name: &'static str,
    pub cadence: Cadence,
    pub job_type: &'static str,
}

impl ScheduleDefinition {
    pub fn new(name: &'static str, cadence: Cadence, job_type: &'static str) -> Self {
        Self {
            name,
            cadence,
            job_type,
        }
    }

    /// A schedule whose ticks enqueue jobs of `P`.
    pub fn of<P: JobPayload>(name: &'static str, cadence: Cadence) -> Self {
        Self::new(name, cadence, P::JOB_TYPE)
    }
}

/// The payload of a job a schedule enqueued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScheduledTick {
    pub schedule: String,
    /// The tick this job is for (not when it runs).
    pub tick_at: DateTime<Utc>,
    /// Ticks skipped before this one because no node led the scheduler at the time.
    pub missed_ticks: u32,
}

/// How to enqueue a job, beyond its payload.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Not before this time (default: now).
    pub run_at: Option<DateTime<Utc>>,
    /// Higher runs first within a queue (default 0).
    pub priority: i32,
    /// Overrides the job type's attempts.
    pub max_attempts: Option<u32>,
}

impl EnqueueOptions {
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Runs no sooner than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        self.run_at = Some(
            now()
                .checked_add_signed(delay)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        );
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }
}

/// A registered job type with its limits resolved against the configuration.
#[derive(Debug, Clone)]
pub(crate) struct JobType {
    pub definition: JobDefinition,
    pub max_attempts: u32,
    pub time_limit: Duration,
}

/// The handle apps enqueue through (`state.jobs`): it knows the registered job types (their
/// queues and limits) and wakes this process's workers when a job is enqueued. Cheap to clone.
#[derive(Clone)]
pub struct Jobs(Arc<JobsInner>);

struct JobsInner {
    types: HashMap<&'static str, JobType>,
    config: JobsConfig,
    /// One per queue: a worker waiting on its queue wakes at once instead of at its next poll.
    wake: HashMap<&'static str, Arc<Notify>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<&str> = self.0.types.keys().copied().collect();
        types.sort_unstable();
        f.debug_struct("Jobs").field("types", &types).finish()
    }
}

impl Jobs {
    /// The job types of the enabled modules, with limits from `config` where they set none.
    pub fn new(registry: &Registry, config: &JobsConfig) -> Self {
        let mut types = HashMap::new();
        let mut wake = HashMap::new();
        for definition in registry.jobs() {
            wake.entry(definition.queue)
                .or_insert_with(|| Arc::new(Notify::new()));
            let resolved = JobType {
                max_attempts: definition
                    .max_attempts
                    .unwrap_or(config.default_max_attempts)
                    .max(1),
                time_limit: definition
                    .time_limit
                    .unwrap_or(Duration::from_millis(config.default_time_limit_ms)),
                definition,
            };
            types.insert(resolved.definition.job_type, resolved);
        }
        Self(Arc::new(JobsInner {
            types,
            config: config.clone(),
            wake,
        }))
    }

    /// Enqueues a job inside `tx`: it exists if and only if `tx` commits. `scope` is the
    /// organization it works for (`None` for platform work). Returns the job's id.
    ///
    /// Fails if no enabled module registered the payload's job type (nothing would run it).
    pub async fn enqueue<P: JobPayload>(
        &self,
        tx: &mut Tx,
        scope: Option<&TenantScope>,
        payload: &P,
    ) -> Result<Uuid, StoreError> {
        self.enqueue_with(tx, scope, payload, EnqueueOptions::default())
            .await
    }

    /// [`Jobs::enqueue`] with a start time, a priority or another number of attempts.
    pub async fn enqueue_with<P: JobPayload>(
        &self,
        tx: &mut Tx,
        scope: Option<&TenantScope>,
        payload: &P,
        options: EnqueueOptions,
    ) -> Result<Uuid, StoreError> {
        let payload = serde_json::to_value(payload).map_err(|e| {
            StoreError::Other(anyhow::anyhow!(
                "the payload of `{}` cannot be serialised: {e}",
                P::JOB_TYPE
            ))
        })?;
        self.enqueue_json(
            tx,
            scope.map(TenantScope::org_id),
            P::JOB_TYPE,
            payload,
            options,
        )
        .await
    }

    /// Enqueues a job of a type known by name, with a JSON payload (the scheduler's way in).
    pub(crate) async fn enqueue_json(
        &self,
        tx: &mut Tx,
        org_id: Option<Uuid>,
        job_type: &str,
        payload: serde_json::Value,
        options: EnqueueOptions,
    ) -> Result<Uuid, StoreError> {
        let Some(kind) = self.0.types.get(job_type) else {
            return Err(StoreError::Other(anyhow::anyhow!(
                "job type `{job_type}` is not registered by any enabled module"
            )));
        };
        let id = Uuid::now_v7();
        let created_at = now();
        let max_attempts = options.max_attempts.unwrap_or(kind.max_attempts).max(1);
        store::insert(
            tx,
            &store::NewJob {
                id,
                org_id,
                queue: kind.definition.queue,
                job_type: kind.definition.job_type,
                payload,
                priority: options.priority,
                max_attempts: i32::try_from(max_attempts).unwrap_or(i32::MAX),
                run_at: options.run_at.unwrap_or(created_at),
                created_at,
            },
        )
        .await?;
        // The row is not visible to workers before `tx` commits; a worker woken now claims as
        // soon as it can (SQLite: its claim waits for this writer) or retries shortly after.
        self.wake(kind.definition.queue);
        Ok(id)
    }

    /// Wakes this process's workers of `queue` (after a retry, for instance).
    pub fn wake(&self, queue: &str) {
        if let Some(notify) = self.0.wake.get(queue) {
            notify.notify_one();
        }
    }

    /// The registered job types.
    pub fn job_types(&self) -> impl Iterator<Item = &JobDefinition> {
        self.0.types.values().map(|t| &t.definition)
    }

    pub(crate) fn job_type(&self, job_type: &str) -> Option<&JobType> {
        self.0.types.get(job_type)
    }

    pub(crate) fn config(&self) -> &JobsConfig {
        &self.0.config
    }

    /// The queues the job types use, sorted.
    pub fn queues(&self) -> Vec<&'static str> {
        let mut queues: Vec<&'static str> = self.0.wake.keys().copied().collect();
        queues.sort_unstable();
        queues
    }

    pub(crate) fn waker(&self, queue: &str) -> Option<Arc<Notify>> {
        self.0.wake.get(queue).cloned()
    }
}
