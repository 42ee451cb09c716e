//! The `keel_jobs` table: every query on jobs, written once with the query builder.
//!
//! Public functions ([`get`], [`list`], [`retry`], [`cancel`]) are what the job API calls;
//! each takes a [`JobAccess`] so an organization only ever sees its own jobs. The rest is
//! the workers' side: claim, heartbeat, finish, release and the reaper of expired leases.
//!
//! Every state change a worker makes is fenced by its lease (`lease_token` and
//! `state = 'running'`): a worker that lost its job (cancelled, or re-claimed after its lease
//! ran out) cannot overwrite what happened since.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_query::{Expr, ExprTrait, Order, Query, SelectStatement, UpdateStatement};
use serde::Serialize;
use uuid::Uuid;

use crate::config::DatabaseKind;
use crate::store::{Db, StoreError, Tx, now};
use crate::tenancy::TenantScope;

pub(crate) const JOBS: &str = "keel_jobs";

/// Every column of a job, in [`Job`]'s order.
const COLUMNS: [&str; 18] = [
    "id",
    "org_id",
    "queue",
    "job_type",
    "payload",
    "priority",
    "state",
    "attempts",
    "max_attempts",
    "run_at",
    "last_error",
    "result",
    "locked_by",
    "lease_expires_at",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
];

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at` and a free worker (new, or waiting to be retried).
    Queued,
    /// Claimed by a worker that holds its lease.
    Running,
    Succeeded,
    /// Gave up without using every attempt: the handler called the failure permanent.
    Failed,
    /// Every attempt failed: the dead letter. An admin may retry it.
    Dead,
    /// Cancelled by an admin.
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// No worker will touch the job again (unless an admin retries it).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Dead | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`JobState::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a job state")]
pub struct UnknownJobState(pub String);

impl std::str::FromStr for JobState {
    type Err = UnknownJobState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownJobState(s.to_string()))
    }
}

impl TryFrom<String> for JobState {
    type Error = UnknownJobState;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A job as the API shows it. Serialised with the API's names: `status` for the state and
/// `error` for the last error.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, serde::Deserialize)]
pub struct Job {
    pub id: Uuid,
    /// The organization it works for; `None` for platform jobs.
    pub org_id: Option<Uuid>,
    pub queue: String,
    pub job_type: String,
    #[serde(deserialize_with = "crate::store::json_column")]
    pub payload: serde_json::Value,
    pub priority: i32,
    #[serde(rename(serialize = "status"))]
    #[sqlx(try_from = "String")]
    pub state: JobState,
    /// Attempts started so far (a worker that died mid-job counts).
    pub attempts: i32,
    pub max_attempts: i32,
    /// Not before this time (for a queued job: its first run, or its next retry).
    pub run_at: DateTime<Utc>,
    #[serde(rename(serialize = "error"))]
    pub last_error: Option<String>,
    #[serde(deserialize_with = "crate::store::json_column_opt")]
    pub result: Option<serde_json::Value>,
    /// The worker (node or `keel worker` process) holding the job while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_by: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Whose jobs a caller may see and act on.
#[derive(Debug, Clone, Copy)]
pub enum JobAccess<'a> {
    /// One organization's jobs (an organization admin).
    Org(&'a TenantScope),
    /// Every job, platform jobs included. Only for the platform's super admin: the caller
    /// must have checked that role.
    Platform,
}

impl JobAccess<'_> {
    fn apply<S: Filterable>(self, stmt: &mut S) {
        if let JobAccess::Org(scope) = self {
            stmt.filter(Expr::col("org_id").eq(scope.org_id()));
        }
    }
}

/// `and_where` on both selects and updates.
trait Filterable {
    fn filter(&mut self, cond: Expr);
}

impl Filterable for SelectStatement {
    fn filter(&mut self, cond: Expr) {
        self.and_where(cond);
    }
}

impl Filterable for UpdateStatement {
    fn filter(&mut self, cond: Expr) {
        self.and_where(cond);
    }
}

/// Narrows a job listing; unset fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub queue: Option<String>,
    pub state: Option<JobState>,
    pub job_type: Option<String>,
}

/// The position of a job in a listing (newest first), for keyset pagination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct JobCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// Which page of a listing.
#[derive(Debug, Clone, Copy)]
pub enum JobPage {
    /// Page `page` (from 1) of `page_size` jobs, with the total count.
    Number { page: u32, page_size: u32 },
    /// The `page_size` jobs after `cursor` (deep pages; no total).
    After { cursor: JobCursor, page_size: u32 },
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Jobs matching the filter (numbered pages only).
    pub total: Option<u64>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<JobCursor>,
}

/// Why a job action was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobActionError {
    /// No such job within the caller's access (another organization's job included).
    #[error("job not found")]
    NotFound,
    /// The job's state does not allow the action (e.g. retrying a job that succeeded).
    #[error("a {state} job cannot be {action}")]
    InvalidState {
        state: JobState,
        action: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn select_jobs() -> SelectStatement {
    Query::select().columns(COLUMNS).from(JOBS).to_owned()
}

fn returning_job() -> sea_query::ReturningClause {
    Query::returning().columns(COLUMNS)
}

/// One job, if `access` may see it.
pub async fn get(db: &Db, access: JobAccess<'_>, id: Uuid) -> Result<Option<Job>, StoreError> {
    let mut select = select_jobs().and_where(Expr::col("id").eq(id)).to_owned();
    access.apply(&mut select);
    db.fetch_optional(&select).await
}

/// Jobs `access` may see, newest first, filtered and paginated. Page sizes are clamped to
/// 1–100.
pub async fn list(
    db: &Db,
    access: JobAccess<'_>,
    filter: &JobFilter,
    page: JobPage,
) -> Result<JobList, StoreError> {
    let mut base = Query::select().from(JOBS).to_owned();
    access.apply(&mut base);
    if let Some(queue) = &filter.queue {
        base.and_where(Expr::col("queue").eq(queue.as_str()));
    }
    if let Some(state) = filter.state {
        base.and_where(Expr::col("state").eq(state.as_str()));
    }
    if let Some(job_type) = &filter.job_type {
        base.and_where(Expr::col("job_type").eq(job_type.as_str()));
    }

    let (page_size, offset, after) = match page {
        JobPage::Number { page, page_size } => {
            let size = page_size.clamp(1, 100);
            let offset = u64::from(Ord::max(page, 1) - 1) * u64::from(size);
            (size, Some(offset), None)
        }
        JobPage::After { cursor, page_size } => (page_size.clamp(1, 100), None, Some(cursor)),
    };

    let total = match offset {
        Some(_) => {
            #[derive(sqlx::FromRow, serde::Deserialize)]
            struct Count {
                n: i64,
            }
            let count = base
                .clone()
                .expr_as(Expr::col(sea_query::Asterisk).count(), "n")
                .to_owned();
            let Count { n } = db.fetch_one(&count).await?;
            Some(u64::try_from(n).unwrap_or(0))
        }
        None => None,
    };

    let mut select = base.columns(COLUMNS).to_owned();
    if let Some(cursor) = after {
        select.and_where(
            Expr::col("created_at")
                .lt(cursor.created_at)
                .or(Expr::col("created_at")
                    .eq(cursor.created_at)
                    .and(Expr::col("id").lt(cursor.id))),
        );
    }
    select
        .order_by("created_at", Order::Desc)
        .order_by("id", Order::Desc)
        // One more than a page tells whether there is a next one.
        .limit(u64::from(page_size) + 1);
    if let Some(offset) = offset {
        select.offset(offset);
    }
    let mut jobs: Vec<Job> = db.fetch_all(&select).await?;
    let next_cursor = if jobs.len() > page_size as usize {
        jobs.truncate(page_size as usize);
        jobs.last().map(|j| JobCursor {
            created_at: j.created_at,
            id: j.id,
        })
    } else {
        None
    };
    Ok(JobList {
        jobs,
        total,
        next_cursor,
    })
}

/// Runs a `dead` or `failed` job again, with a fresh set of attempts, as soon as a worker is
/// free. Its last error stays until the next attempt replaces it.
pub async fn retry(db: &Db, access: JobAccess<'_>, id: Uuid) -> Result<Job, JobActionError> {
    let at = now();
    let mut update = Query::update()
        .table(JOBS)
        .values([
            ("state", JobState::Queued.as_str().into()),
            ("attempts", 0.into()),
            ("run_at", at.into()),
            ("result", Option::<serde_json::Value>::None.into()),
            ("started_at", Option::<DateTime<Utc>>::None.into()),
            ("finished_at", Option::<DateTime<Utc>>::None.into()),
            ("updated_at", at.into()),
        ])
        .and_where(Expr::col("id").eq(id))
        .and_where(Expr::col("state").is_in([JobState::Dead.as_str(), JobState::Failed.as_str()]))
        .returning(returning_job())
        .to_owned();
    access.apply(&mut update);
    act(db, access, id, &update, "retried").await
}

/// Cancels a `queued` or `running` job. A running job's worker notices at its next heartbeat
/// and stops the handler (dropping its future), so a handler may be cut at any `.await`.
pub async fn cancel(db: &Db, access: JobAccess<'_>, id: Uuid) -> Result<Job, JobActionError> {
    let at = now();
    let mut update = Query::update()
        .table(JOBS)
        .values([
            ("state", JobState::Cancelled.as_str().into()),
            ("finished_at", at.into()),
            ("locked_by", Option::<Uuid>::None.into()),
            ("lease_token", Option::<Uuid>::None.into()),
            ("lease_expires_at", Option::<DateTime<Utc>>::None.into()),
            ("updated_at", at.into()),
        ])
        .and_where(Expr::col("id").eq(id))
        .and_where(
            Expr::col("state").is_in([JobState::Queued.as_str(), JobState::Running.as_str()]),
        )
        .returning(returning_job())
        .to_owned();
    access.apply(&mut update);
    act(db, access, id, &update, "cancelled").await
}

async fn act(
    db: &Db,
    access: JobAccess<'_>,
    id: Uuid,
    update: &UpdateStatement,
    action: &'static str,
) -> Result<Job, JobActionError> {
    if let Some(job) = db.fetch_optional::<Job>(update).await? {
        return Ok(job);
    }
    match get(db, access, id).await? {
        Some(job) => Err(JobActionError::InvalidState {
            state: job.state,
            action,
        }),
        None => Err(JobActionError::NotFound),
    }
}

/// A job to insert.
pub(crate) struct NewJob<'a> {
    pub id: Uuid,
    pub org_id: Option<Uuid>,
    pub queue: &'a str,
    pub job_type: &'a str,
    pub payload: serde_json::Value,
    pub priority: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

pub(crate) async fn insert(tx: &mut Tx, job: &NewJob<'_>) -> Result<(), StoreError> {
    let insert = Query::insert()
        .into_table(JOBS)
        .columns([
            "id",
            "org_id",
            "queue",
            "job_type",
            "payload",
            "priority",
            "state",
            "attempts",
            "max_attempts",
            "run_at",
            "created_at",
            "updated_at",
        ])
        .values_panic([
            job.id.into(),
            job.org_id.into(),
            job.queue.into(),
            job.job_type.into(),
            job.payload.clone().into(),
            job.priority.into(),
            JobState::Queued.as_str().into(),
            0.into(),
            job.max_attempts.into(),
            job.run_at.into(),
            job.created_at.into(),
            job.created_at.into(),
        ])
        .to_owned();
    tx.execute(&insert).await?;
    Ok(())
}

/// A job a worker claimed.
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub(crate) struct Claimed {
    pub id: Uuid,
    pub org_id: Option<Uuid>,
    pub job_type: String,
    #[serde(deserialize_with = "crate::store::json_column")]
    pub payload: serde_json::Value,
    /// Including this one.
    pub attempts: i32,
    pub max_attempts: i32,
}

/// Claims up to `limit` due jobs of `queue` for `worker`, under a lease of `lease`, counting
/// the attempt. Atomic across workers and nodes: PostgreSQL skips rows another claim has
/// locked; SQLite runs the claim under its single write lock (`BEGIN IMMEDIATE`).
pub(crate) async fn claim(
    db: &Db,
    queue: &str,
    limit: u32,
    worker: Uuid,
    token: Uuid,
    lease: Duration,
) -> Result<Vec<Claimed>, StoreError> {
    match db.kind() {
        DatabaseKind::Postgres => {
            db.fetch_all(&claim_statement(queue, limit, worker, token, lease, now()))
                .await
        }
        DatabaseKind::Sqlite => {
            // An idle queue must not take the database's one write lock at every poll: look
            // first (a read, which never waits for writers in WAL mode).
            let due = Query::select()
                .column("id")
                .from(JOBS)
                .and_where(Expr::col("queue").eq(queue))
                .and_where(Expr::col("state").eq(JobState::Queued.as_str()))
                .and_where(Expr::col("run_at").lte(now()))
                .limit(1)
                .to_owned();
            if db.fetch_optional::<(Uuid,)>(&due).await?.is_none() {
                return Ok(Vec::new());
            }
            let mut tx = db.begin().await?;
            // Timed once the write lock is held: waiting for it must not eat into the lease.
            let update = claim_statement(queue, limit, worker, token, lease, now());
            let claimed = tx.fetch_all(&update).await?;
            tx.commit().await?;
            Ok(claimed)
        }
    }
}

fn claim_statement(
    queue: &str,
    limit: u32,
    worker: Uuid,
    token: Uuid,
    lease: Duration,
    at: DateTime<Utc>,
) -> UpdateStatement {
    let due = Query::select()
        .column("id")
        .from(JOBS)
        .and_where(Expr::col("queue").eq(queue))
        .and_where(Expr::col("state").eq(JobState::Queued.as_str()))
        .and_where(Expr::col("run_at").lte(at))
        .order_by("priority", Order::Desc)
        .order_by("run_at", Order::Asc)
        .limit(u64::from(limit))
        // Rendered on PostgreSQL only; SQLite has no row locks and needs none (one writer).
        .lock_with_behavior(
            sea_query::LockType::Update,
            sea_query::LockBehavior::SkipLocked,
        )
        .to_owned();
    Query::update()
        .table(JOBS)
        .values([
            ("state", JobState::Running.as_str().into()),
            ("attempts", Expr::col("attempts").add(1)),
            ("locked_by", worker.into()),
            ("lease_token", token.into()),
            ("lease_expires_at", expires(at, lease).into()),
            ("started_at", at.into()),
            ("updated_at", at.into()),
        ])
        .and_where(Expr::col("id").in_subquery(due))
        .returning(Query::returning().columns([
            "id",
            "org_id",
            "job_type",
            "payload",
            "attempts",
            "max_attempts",
        ]))
        .to_owned()
}

fn expires(at: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Extends the leases of `ids` held by `worker`; returns the ids it still holds (a job
/// missing from the answer was cancelled or re-claimed elsewhere).
pub(crate) async fn heartbeat(
    db: &Db,
    worker: Uuid,
    ids: &[Uuid],
    lease: Duration,
) -> Result<Vec<Uuid>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Id {
        id: Uuid,
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let statement = |at: DateTime<Utc>| {
        Query::update()
            .table(JOBS)
            .value("lease_expires_at", expires(at, lease))
            .and_where(Expr::col("id").is_in(ids.iter().copied()))
            .and_where(Expr::col("locked_by").eq(worker))
            .and_where(Expr::col("state").eq(JobState::Running.as_str()))
            .returning(Query::returning().column("id"))
            .to_owned()
    };
    let held: Vec<Id> = match db.kind() {
        DatabaseKind::Postgres => db.fetch_all(&statement(now())).await?,
        DatabaseKind::Sqlite => {
            // Timed once the write lock is held, as for the claim.
            let mut tx = db.begin().await?;
            let held = tx.fetch_all(&statement(now())).await?;
            tx.commit().await?;
            held
        }
    };
    Ok(held.into_iter().map(|r| r.id).collect())
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Succeeded(serde_json::Value),
    /// Try again at `retry_at`.
    Retry {
        error: String,
        retry_at: DateTime<Utc>,
    },
    /// The attempts are used up.
    Dead(String),
    /// The handler called it permanent.
    Failed(String),
}

/// Records attempts' outcomes (job id, claim token, outcome), in one transaction when there
/// are several; says for each whether its token still held the job (else it was cancelled or
/// re-claimed meanwhile and the outcome is dropped).
pub(crate) async fn finish_all(
    db: &Db,
    outcomes: &[(Uuid, Uuid, &Outcome)],
) -> Result<Vec<bool>, StoreError> {
    match outcomes {
        [] => Ok(Vec::new()),
        [(id, token, outcome)] => Ok(vec![db.execute(&finish(*id, *token, outcome)).await? == 1]),
        many => {
            let mut tx = db.begin().await?;
            let mut held = Vec::with_capacity(many.len());
            for (id, token, outcome) in many {
                held.push(tx.execute(&finish(*id, *token, outcome)).await? == 1);
            }
            tx.commit().await?;
            Ok(held)
        }
    }
}

/// The update that records one outcome, fenced by the claim's token.
fn finish(id: Uuid, token: Uuid, outcome: &Outcome) -> UpdateStatement {
    let at = now();
    let mut update = Query::update().table(JOBS).to_owned();
    update.values([
        ("locked_by", Option::<Uuid>::None.into()),
        ("lease_token", Option::<Uuid>::None.into()),
        ("lease_expires_at", Option::<DateTime<Utc>>::None.into()),
        ("updated_at", at.into()),
    ]);
    match outcome {
        Outcome::Succeeded(result) => {
            let result = (!result.is_null()).then(|| result.clone());
            update.values([
                ("state", JobState::Succeeded.as_str().into()),
                ("result", result.into()),
                ("finished_at", at.into()),
            ]);
        }
        Outcome::Retry { error, retry_at } => {
            update.values([
                ("state", JobState::Queued.as_str().into()),
                ("last_error", error.as_str().into()),
                ("run_at", (*retry_at).into()),
            ]);
        }
        Outcome::Dead(error) => {
            update.values([
                ("state", JobState::Dead.as_str().into()),
                ("last_error", error.as_str().into()),
                ("finished_at", at.into()),
            ]);
        }
        Outcome::Failed(error) => {
            update.values([
                ("state", JobState::Failed.as_str().into()),
                ("last_error", error.as_str().into()),
                ("finished_at", at.into()),
            ]);
        }
    }
    update
        .and_where(Expr::col("id").eq(id))
        .and_where(Expr::col("lease_token").eq(token))
        .and_where(Expr::col("state").eq(JobState::Running.as_str()))
        .to_owned()
}

/// Puts jobs `worker` holds back in the queue without counting the attempt they were on (a
/// graceful shutdown that ran out of time). Returns how many it released.
pub(crate) async fn release(db: &Db, worker: Uuid, ids: &[Uuid]) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let at = now();
    let update = Query::update()
        .table(JOBS)
        .values([
            ("state", JobState::Queued.as_str().into()),
            ("attempts", Expr::col("attempts").sub(1)),
            ("locked_by", Option::<Uuid>::None.into()),
            ("lease_token", Option::<Uuid>::None.into()),
            ("lease_expires_at", Option::<DateTime<Utc>>::None.into()),
            ("run_at", at.into()),
            ("updated_at", at.into()),
        ])
        .and_where(Expr::col("id").is_in(ids.iter().copied()))
        .and_where(Expr::col("locked_by").eq(worker))
        .and_where(Expr::col("state").eq(JobState::Running.as_str()))
        .to_owned();
    db.execute(&update).await
}

/// The error recorded on a job whose worker stopped heartbeating.
pub(crate) const LEASE_EXPIRED: &str =
    "the worker running this job stopped (its lease expired before it finished)";

/// Puts running jobs whose lease expired back in the queue (their worker died), or makes them
/// `dead` when that was their last attempt. Any node may run it: it only touches expired rows.
pub(crate) async fn requeue_expired(db: &Db) -> Result<u64, StoreError> {
    let at = now();
    // Look before writing: most of the time nothing expired, and on SQLite the update would
    // take the database's one write lock for nothing.
    let expired = Query::select()
        .column("id")
        .from(JOBS)
        .and_where(Expr::col("state").eq(JobState::Running.as_str()))
        .and_where(Expr::col("lease_expires_at").lt(at))
        .limit(1)
        .to_owned();
    if db.fetch_optional::<(Uuid,)>(&expired).await?.is_none() {
        return Ok(0);
    }
    let exhausted = || Expr::col("attempts").gte(Expr::col("max_attempts"));
    let update = Query::update()
        .table(JOBS)
        .values([
            (
                "state",
                Expr::case(exhausted(), JobState::Dead.as_str())
                    .finally(JobState::Queued.as_str())
                    .into(),
            ),
            (
                "finished_at",
                Expr::case(exhausted(), at)
                    .finally(Option::<DateTime<Utc>>::None)
                    .into(),
            ),
            ("last_error", LEASE_EXPIRED.into()),
            ("locked_by", Option::<Uuid>::None.into()),
            ("lease_token", Option::<Uuid>::None.into()),
            ("lease_expires_at", Option::<DateTime<Utc>>::None.into()),
            ("run_at", at.into()),
            ("updated_at", at.into()),
        ])
        .and_where(Expr::col("state").eq(JobState::Running.as_str()))
        .and_where(Expr::col("lease_expires_at").lt(at))
        .to_owned();
    db.execute(&update).await
}

/// One queue's backlog, for `GET /api/v1/metrics/jobs` and the Prometheus gauges.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    pub queue: String,
    /// Waiting, due or not.
    pub queued: i64,
    /// Waiting and due now: the real backlog.
    pub due: i64,
    pub running: i64,
    /// In the dead letter (every attempt failed); an admin may retry them.
    pub dead: i64,
    pub failed: i64,
    /// How long the oldest due job has waited, in seconds (0 when none is due).
    pub oldest_due_age_secs: f64,
}

/// The backlog of every queue that has unfinished, dead or failed jobs.
pub async fn queue_stats(db: &Db) -> Result<Vec<QueueStats>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct ByState {
        queue: String,
        state: String,
        n: i64,
    }
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Due {
        queue: String,
        n: i64,
        oldest: Option<DateTime<Utc>>,
    }
    let by_state = Query::select()
        .columns(["queue", "state"])
        .expr_as(Expr::col(sea_query::Asterisk).count(), "n")
        .from(JOBS)
        .and_where(Expr::col("state").is_in([
            JobState::Queued.as_str(),
            JobState::Running.as_str(),
            JobState::Dead.as_str(),
            JobState::Failed.as_str(),
        ]))
        .group_by_columns(["queue", "state"])
        .to_owned();
    let at = now();
    let due = Query::select()
        .column("queue")
        .expr_as(Expr::col(sea_query::Asterisk).count(), "n")
        .expr_as(Expr::col("run_at").min(), "oldest")
        .from(JOBS)
        .and_where(Expr::col("state").eq(JobState::Queued.as_str()))
        .and_where(Expr::col("run_at").lte(at))
        .group_by_col("queue")
        .to_owned();
    let mut out: std::collections::BTreeMap<String, QueueStats> = Default::default();
    for row in db.fetch_all::<ByState>(&by_state).await? {
        let entry = out.entry(row.queue.clone()).or_insert_with(|| QueueStats {
            queue: row.queue.clone(),
            ..Default::default()
        });
        match row.state.as_str() {
            "queued" => entry.queued = row.n,
            "running" => entry.running = row.n,
            "dead" => entry.dead = row.n,
            "failed" => entry.failed = row.n,
            _ => {}
        }
    }
    for row in db.fetch_all::<Due>(&due).await? {
        let entry = out.entry(row.queue.clone()).or_insert_with(|| QueueStats {
            queue: row.queue.clone(),
            ..Default::default()
        });
        entry.due = row.n;
        entry.oldest_due_age_secs = row
            .oldest
            .map(|t| (std::cmp::max((at - t).num_milliseconds(), 0) as f64) / 1000.0)
            .unwrap_or(0.0);
    }
    Ok(out.into_values().collect())
}
