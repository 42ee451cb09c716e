//! Background jobs and the scheduler against the real database (SQLite, or PostgreSQL when
//! `TEST_DATABASE_URL` is set): transactional enqueue, crash recovery through leases,
//! retries into the dead letter, time limits, per-queue concurrency, several nodes sharing
//! one database (jobs and ticks run once, leadership fails over, missed ticks coalesce) and
//! graceful shutdown.
//!
//! The test module's handlers record what they do in tables, so effects can be counted.
//! Timing is never asserted with a sleep: tests poll for a condition with a generous timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keel_kernel::config::DatabaseKind;
use keel_kernel::jobs::scheduler::{self, RunOutcome};
use keel_kernel::jobs::{
    Cadence, EnqueueOptions, Job, JobAccess, JobActionError, JobContext, JobDefinition, JobError,
    JobFilter, JobPage, JobPayload, JobState, Runtime, RuntimeOptions, ScheduleDefinition,
    ScheduledTick, store,
};
use keel_kernel::module::Module;
use keel_kernel::state::AppState;
use keel_kernel::store::migrate::Migration;
use keel_kernel::store::{Db, now};
use keel_kernel::tenancy::TenantScope;
use keel_testkit::{TestApp, TestAppBuilder, TestDb};
use sea_query::{Expr, ExprTrait, OnConflict, Query};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// The test module: job types whose handlers record their effects.
// ---------------------------------------------------------------------------------------

const EFFECTS_SQLITE: &str = "
CREATE TABLE job_effects (
    id BLOB PRIMARY KEY NOT NULL,
    job_id BLOB NOT NULL,
    label TEXT NOT NULL,
    kind TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE job_done (label TEXT PRIMARY KEY NOT NULL, job_id BLOB NOT NULL);
";

const EFFECTS_POSTGRES: &str = "
CREATE TABLE job_effects (
    id UUID PRIMARY KEY,
    job_id UUID NOT NULL,
    label TEXT NOT NULL,
    kind TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE job_done (label TEXT PRIMARY KEY, job_id UUID NOT NULL);
";

/// Records an effect row (not idempotent on purpose: it counts executions).
async fn effect(ctx: &JobContext, label: &str, kind: &str) -> Result<(), JobError> {
    let insert = Query::insert()
        .into_table("job_effects")
        .columns(["id", "job_id", "label", "kind", "attempt", "created_at"])
        .values_panic([
            Uuid::now_v7().into(),
            ctx.job_id.into(),
            label.into(),
            kind.into(),
            (ctx.attempt as i32).into(),
            now().into(),
        ])
        .to_owned();
    ctx.state.db.execute(&insert).await?;
    Ok(())
}

/// The idempotent effect of a job: done once per label however often it runs.
async fn done(ctx: &JobContext, label: &str) -> Result<(), JobError> {
    let insert = Query::insert()
        .into_table("job_done")
        .columns(["label", "job_id"])
        .values_panic([label.into(), ctx.job_id.into()])
        .on_conflict(OnConflict::column("label").do_nothing().to_owned())
        .to_owned();
    ctx.state.db.execute(&insert).await?;
    Ok(())
}

/// Runs once and records it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    label: String,
}
impl JobPayload for Record {
    const JOB_TYPE: &'static str = "test.record";
}
async fn record(ctx: JobContext, job: Record) -> Result<serde_json::Value, JobError> {
    effect(&ctx, &job.label, "ran").await?;
    done(&ctx, &job.label).await?;
    Ok(serde_json::json!({ "label": job.label, "attempt": ctx.attempt }))
}

/// Fails its first `fail_times` runs (counted across retries), then succeeds.
#[derive(Debug, Serialize, Deserialize)]
struct Flaky {
    label: String,
    fail_times: u32,
}
impl JobPayload for Flaky {
    const JOB_TYPE: &'static str = "test.flaky";
}
async fn flaky(ctx: JobContext, job: Flaky) -> Result<(), JobError> {
    effect(&ctx, &job.label, "attempt").await?;
    let runs = count_effects(&ctx.state.db, &job.label, "attempt").await;
    if runs <= u64::from(job.fail_times) {
        return Err(JobError::retry(format!("boom {runs}")));
    }
    done(&ctx, &job.label).await
}

/// Refuses its input for good.
#[derive(Debug, Serialize, Deserialize)]
struct Refuse {
    label: String,
}
impl JobPayload for Refuse {
    const JOB_TYPE: &'static str = "test.refuse";
}
async fn refuse(ctx: JobContext, job: Refuse) -> Result<(), JobError> {
    effect(&ctx, &job.label, "attempt").await?;
    Err(JobError::permanent("this input can never work"))
}

/// Hangs on its first attempt (so that its worker can be killed mid-job), completes after.
#[derive(Debug, Serialize, Deserialize)]
struct Hang {
    label: String,
}
impl JobPayload for Hang {
    const JOB_TYPE: &'static str = "test.hang";
}
async fn hang(ctx: JobContext, job: Hang) -> Result<(), JobError> {
    effect(&ctx, &job.label, "attempt").await?;
    if ctx.attempt == 1 {
        std::future::pending::<()>().await;
    }
    done(&ctx, &job.label).await
}

/// Sleeps on the `slow` queue.
#[derive(Debug, Serialize, Deserialize)]
struct Sleepy {
    label: String,
    ms: u64,
}
impl JobPayload for Sleepy {
    const JOB_TYPE: &'static str = "test.sleepy";
}
async fn sleepy(ctx: JobContext, job: Sleepy) -> Result<(), JobError> {
    effect(&ctx, &job.label, "started").await?;
    tokio::time::sleep(Duration::from_millis(job.ms)).await;
    effect(&ctx, &job.label, "finished").await?;
    done(&ctx, &job.label).await
}

/// Always outlives its time limit.
#[derive(Debug, Serialize, Deserialize)]
struct Overrun {
    label: String,
}
impl JobPayload for Overrun {
    const JOB_TYPE: &'static str = "test.overrun";
}
async fn overrun(ctx: JobContext, job: Overrun) -> Result<(), JobError> {
    effect(&ctx, &job.label, "attempt").await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    done(&ctx, &job.label).await
}

/// The job of a scheduled tick: records the tick (idempotently, as handlers must).
#[derive(Debug, Serialize, Deserialize)]
struct Tick {
    tick_at: DateTime<Utc>,
}
impl JobPayload for Tick {
    const JOB_TYPE: &'static str = "test.tick";
}
async fn tick(ctx: JobContext, job: Tick) -> Result<(), JobError> {
    let label = format!("tick {}", job.tick_at.to_rfc3339());
    effect(&ctx, &label, "tick").await?;
    done(&ctx, &label).await
}

/// Does nothing (throughput).
#[derive(Debug, Serialize, Deserialize)]
struct Noop {}
impl JobPayload for Noop {
    const JOB_TYPE: &'static str = "test.noop";
}
async fn noop(_ctx: JobContext, _job: Noop) -> Result<(), JobError> {
    Ok(())
}

/// The module under test; `every` adds a schedule enqueuing [`Tick`] jobs.
#[derive(Default)]
struct JobsUnderTest {
    every: Option<Duration>,
}

const TICKS: &str = "test.ticks";

impl Module for JobsUnderTest {
    fn name(&self) -> &'static str {
        "jobs_under_test"
    }

    fn migrations(&self) -> Vec<Migration> {
        vec![Migration {
            version: 1,
            name: "0001_effects",
            sqlite: EFFECTS_SQLITE,
            postgres: EFFECTS_POSTGRES,
        }]
    }

    fn jobs(&self) -> Vec<JobDefinition> {
        vec![
            JobDefinition::new(record),
            JobDefinition::new(flaky).max_attempts(3),
            JobDefinition::new(refuse),
            JobDefinition::new(hang),
            JobDefinition::new(sleepy).queue("slow"),
            JobDefinition::new(overrun)
                .max_attempts(2)
                .time_limit(Duration::from_millis(200)),
            JobDefinition::new(tick),
            JobDefinition::new(noop).queue("bench"),
        ]
    }

    fn schedules(&self) -> Vec<ScheduleDefinition> {
        self.every
            .map(|every| vec![ScheduleDefinition::of::<Tick>(TICKS, Cadence::Every(every))])
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------

fn builder(module: JobsUnderTest) -> TestAppBuilder {
    TestApp::builder().module(Arc::new(module))
}

async fn spawn() -> TestApp {
    builder(JobsUnderTest::default())
        .spawn()
        .await
        .expect("spawn")
}

/// Polls `check` until it answers `Some`, or fails the test after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const LIMIT: Duration = Duration::from_secs(20);

async fn enqueue<P: JobPayload>(state: &AppState, payload: &P) -> Uuid {
    enqueue_with(state, None, payload, EnqueueOptions::default()).await
}

async fn enqueue_with<P: JobPayload>(
    state: &AppState,
    scope: Option<&TenantScope>,
    payload: &P,
    options: EnqueueOptions,
) -> Uuid {
    let mut tx = state.db.begin().await.expect("begin");
    let id = state
        .jobs
        .enqueue_with(&mut tx, scope, payload, options)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    id
}

async fn job(db: &Db, id: Uuid) -> Job {
    store::get(db, JobAccess::Platform, id)
        .await
        .expect("get")
        .expect("the job exists")
}

async fn wait_for_state(db: &Db, id: Uuid, state: JobState) -> Job {
    eventually(&format!("job {id} to be {state}"), LIMIT, || async {
        let j = job(db, id).await;
        (j.state == state).then_some(j)
    })
    .await
}

async fn count_effects(db: &Db, label: &str, kind: &str) -> u64 {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Count {
        n: i64,
    }
    let select = Query::select()
        .expr_as(Expr::col(sea_query::Asterisk).count(), "n")
        .from("job_effects")
        .and_where(Expr::col("label").eq(label))
        .and_where(Expr::col("kind").eq(kind))
        .to_owned();
    let Count { n } = db.fetch_one(&select).await.expect("count effects");
    n as u64
}

async fn count_done(db: &Db, label: &str) -> u64 {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Count {
        n: i64,
    }
    let select = Query::select()
        .expr_as(Expr::col(sea_query::Asterisk).count(), "n")
        .from("job_done")
        .and_where(Expr::col("label").eq(label))
        .to_owned();
    let Count { n } = db.fetch_one(&select).await.expect("count done");
    n as u64
}

async fn jobs_of(db: &Db, job_type: &str) -> Vec<Job> {
    store::list(
        db,
        JobAccess::Platform,
        &JobFilter {
            job_type: Some(job_type.into()),
            ..JobFilter::default()
        },
        JobPage::Number {
            page: 1,
            page_size: 100,
        },
    )
    .await
    .expect("list")
    .jobs
}

/// A second handle on a test database (the app's own closes when it stops).
async fn open(db: &TestDb) -> Db {
    Db::connect(&db.config()).await.expect("connect")
}

fn runtime_options() -> RuntimeOptions {
    RuntimeOptions {
        id: Uuid::now_v7(),
        workers: true,
        queues: None,
        scheduler: false,
    }
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_job_enqueued_in_a_rolled_back_transaction_never_runs_and_a_committed_one_does() {
    let app = spawn().await;
    let state = &app.state;

    let mut tx = state.db.begin().await.expect("begin");
    let rolled_back = state
        .jobs
        .enqueue(
            &mut tx,
            None,
            &Record {
                label: "rolled back".into(),
            },
        )
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");

    let committed = enqueue(
        state,
        &Record {
            label: "committed".into(),
        },
    )
    .await;
    let ran = wait_for_state(&state.db, committed, JobState::Succeeded).await;
    assert_eq!(ran.attempts, 1);
    assert_eq!(
        ran.result,
        Some(serde_json::json!({ "label": "committed", "attempt": 1 }))
    );
    assert!(ran.finished_at.is_some() && ran.started_at.is_some());
    assert_eq!(ran.locked_by, None, "a finished job holds no lease");

    assert!(
        store::get(&state.db, JobAccess::Platform, rolled_back)
            .await
            .expect("get")
            .is_none(),
        "the rolled-back job does not exist"
    );
    assert_eq!(jobs_of(&state.db, Record::JOB_TYPE).await.len(), 1);
    assert_eq!(count_effects(&state.db, "rolled back", "ran").await, 0);
    assert_eq!(count_effects(&state.db, "committed", "ran").await, 1);
}

#[tokio::test]
async fn enqueueing_a_type_no_module_handles_is_refused() {
    #[derive(Serialize, Deserialize)]
    struct Orphan {}
    impl JobPayload for Orphan {
        const JOB_TYPE: &'static str = "test.orphan";
    }
    let app = spawn().await;
    let mut tx = app.state.db.begin().await.expect("begin");
    let err = app
        .state
        .jobs
        .enqueue(&mut tx, None, &Orphan {})
        .await
        .expect_err("nothing would run it");
    assert!(err.to_string().contains("test.orphan"), "{err}");
}

#[tokio::test]
async fn a_job_whose_worker_died_runs_again_after_its_lease_and_takes_effect_once() {
    let app = builder(JobsUnderTest::default())
        .configure(|c| {
            c.jobs.enabled = false;
            c.jobs.lease_ms = 500;
            c.jobs.heartbeat_interval_ms = 100;
        })
        .spawn()
        .await
        .expect("spawn");
    let state = &app.state;
    let first = Runtime::start(state, runtime_options());
    let id = enqueue(
        state,
        &Hang {
            label: "crash".into(),
        },
    )
    .await;
    eventually("the first attempt to start", LIMIT, || async {
        (count_effects(&state.db, "crash", "attempt").await == 1).then_some(())
    })
    .await;
    let running = job(&state.db, id).await;
    assert_eq!(running.state, JobState::Running);
    assert_eq!(running.locked_by, Some(first.id()));

    // The worker dies mid-job: its tasks are dropped, nothing is released.
    drop(first);
    let second = Runtime::start(state, runtime_options());
    let finished = wait_for_state(&state.db, id, JobState::Succeeded).await;

    assert_eq!(finished.attempts, 2, "the lost run counts as an attempt");
    assert!(
        finished
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("lease expired")),
        "{:?}",
        finished.last_error
    );
    assert_eq!(count_effects(&state.db, "crash", "attempt").await, 2);
    assert_eq!(count_done(&state.db, "crash").await, 1, "one effect");
    let report = second.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.released, 0);
}

#[tokio::test]
async fn failing_attempts_are_retried_then_dead_lettered_and_a_retried_dead_job_runs_again() {
    let app = spawn().await;
    let db = &app.state.db;

    // Fails twice, succeeds on its third and last attempt.
    let recovers = enqueue(
        &app.state,
        &Flaky {
            label: "recovers".into(),
            fail_times: 2,
        },
    )
    .await;
    let ok = wait_for_state(db, recovers, JobState::Succeeded).await;
    assert_eq!((ok.attempts, ok.max_attempts), (3, 3));
    assert_eq!(ok.last_error.as_deref(), Some("boom 2"));
    assert_eq!(count_done(db, "recovers").await, 1);

    // Fails three times: dead after its third attempt.
    let dies = enqueue(
        &app.state,
        &Flaky {
            label: "dies".into(),
            fail_times: 3,
        },
    )
    .await;
    let dead = wait_for_state(db, dies, JobState::Dead).await;
    assert_eq!((dead.attempts, dead.max_attempts), (3, 3));
    assert_eq!(dead.last_error.as_deref(), Some("boom 3"));
    assert!(dead.finished_at.is_some());
    assert_eq!(count_effects(db, "dies", "attempt").await, 3);
    assert_eq!(count_done(db, "dies").await, 0);

    // An admin retries it: a fresh set of attempts; the fourth run overall succeeds.
    let retried = store::retry(db, JobAccess::Platform, dies)
        .await
        .expect("retry");
    assert_eq!(retried.state, JobState::Queued);
    assert_eq!(retried.attempts, 0);
    app.state.jobs.wake("default");
    let revived = wait_for_state(db, dies, JobState::Succeeded).await;
    assert_eq!(revived.attempts, 1);
    assert_eq!(count_effects(db, "dies", "attempt").await, 4);
    assert_eq!(count_done(db, "dies").await, 1);

    // A retry of a job that did not fail is refused.
    match store::retry(db, JobAccess::Platform, dies).await {
        Err(JobActionError::InvalidState { state, .. }) => assert_eq!(state, JobState::Succeeded),
        other => panic!("expected InvalidState, got {other:?}"),
    }
}

#[tokio::test]
async fn a_permanent_failure_ends_the_job_at_once_as_failed_and_can_be_retried() {
    let app = spawn().await;
    let db = &app.state.db;
    let id = enqueue(
        &app.state,
        &Refuse {
            label: "refuse".into(),
        },
    )
    .await;
    let failed = wait_for_state(db, id, JobState::Failed).await;
    assert_eq!(failed.attempts, 1, "no retry after a permanent failure");
    assert_eq!(
        failed.last_error.as_deref(),
        Some("this input can never work")
    );
    store::retry(db, JobAccess::Platform, id)
        .await
        .expect("a failed job may be retried");
    eventually("the retried job to run", LIMIT, || async {
        (count_effects(db, "refuse", "attempt").await == 2).then_some(())
    })
    .await;
    wait_for_state(db, id, JobState::Failed).await;
}

#[tokio::test]
async fn an_attempt_past_its_time_limit_is_stopped_and_counts_as_a_failed_attempt() {
    let app = spawn().await;
    let db = &app.state.db;
    let id = enqueue(
        &app.state,
        &Overrun {
            label: "slowpoke".into(),
        },
    )
    .await;
    let dead = wait_for_state(db, id, JobState::Dead).await;
    assert_eq!((dead.attempts, dead.max_attempts), (2, 2));
    let error = dead.last_error.unwrap_or_default();
    assert!(error.contains("time limit of 200ms"), "{error}");
    assert_eq!(count_effects(db, "slowpoke", "attempt").await, 2);
    assert_eq!(
        count_done(db, "slowpoke").await,
        0,
        "stopped before its effect"
    );
}

#[tokio::test]
async fn a_slow_queue_does_not_block_another_queue_and_keeps_its_own_concurrency() {
    let app = builder(JobsUnderTest::default())
        .configure(|c| {
            c.jobs.concurrency.insert("slow".into(), 1);
            c.jobs.concurrency.insert("default".into(), 4);
        })
        .spawn()
        .await
        .expect("spawn");
    let db = &app.state.db;
    let mut slow = Vec::new();
    for i in 0..3 {
        let payload = Sleepy {
            label: format!("slow {i}"),
            ms: 2_000,
        };
        slow.push(enqueue(&app.state, &payload).await);
    }
    wait_for_state(db, slow[0], JobState::Running).await;
    let mut fast = Vec::new();
    for i in 0..10 {
        fast.push(
            enqueue(
                &app.state,
                &Record {
                    label: format!("fast {i}"),
                },
            )
            .await,
        );
    }
    let mut fast_done = Vec::new();
    for id in &fast {
        fast_done.push(wait_for_state(db, *id, JobState::Succeeded).await);
    }
    let mut slow_done = Vec::new();
    for id in &slow {
        slow_done.push(wait_for_state(db, *id, JobState::Succeeded).await);
    }
    slow_done.sort_by_key(|j| j.started_at);

    // The default queue did not wait for the slow one: all of it finished before the slow
    // queue's first job did.
    let first_slow_finished = slow_done[0].finished_at.expect("finished");
    for job in &fast_done {
        assert!(
            job.finished_at.expect("finished") < first_slow_finished,
            "a default job waited for the slow queue: {job:?}"
        );
    }
    // The slow queue ran one job at a time.
    for pair in slow_done.windows(2) {
        let (Some(finished), Some(next_started)) = (pair[0].finished_at, pair[1].started_at) else {
            panic!("finished jobs have times");
        };
        assert!(next_started >= finished, "slow jobs overlapped: {pair:?}");
    }
}

#[tokio::test]
async fn jobs_are_scoped_to_their_organization_listed_with_filters_and_cancellable() {
    let app = builder(JobsUnderTest::default())
        .configure(|c| c.jobs.enabled = false)
        .spawn()
        .await
        .expect("spawn");
    let db = &app.state.db;
    let org_a = TenantScope::for_tests(Uuid::now_v7());
    let org_b = TenantScope::for_tests(Uuid::now_v7());
    let later = EnqueueOptions::default().delay(Duration::from_secs(3600));
    let mut a_jobs = Vec::new();
    for i in 0..5 {
        let payload = Record {
            label: format!("a {i}"),
        };
        a_jobs.push(enqueue_with(&app.state, Some(&org_a), &payload, later.clone()).await);
    }
    let payload = Flaky {
        label: "a flaky".into(),
        fail_times: 0,
    };
    let a_flaky = enqueue_with(&app.state, Some(&org_a), &payload, later.clone()).await;
    let b_job = enqueue_with(
        &app.state,
        Some(&org_b),
        &Record { label: "b".into() },
        later.clone(),
    )
    .await;

    // Another organization's job is invisible, exactly like a missing one.
    let a = JobAccess::Org(&org_a);
    assert!(store::get(db, a, b_job).await.expect("get").is_none());
    assert_eq!(
        store::get(db, a, a_jobs[0])
            .await
            .expect("get")
            .map(|j| j.org_id),
        Some(Some(org_a.org_id()))
    );
    assert!(matches!(
        store::cancel(db, a, b_job).await,
        Err(JobActionError::NotFound)
    ));

    // Filters and pagination, newest first, with totals and cursors.
    let records = JobFilter {
        job_type: Some(Record::JOB_TYPE.into()),
        ..JobFilter::default()
    };
    let page1 = store::list(
        db,
        a,
        &records,
        JobPage::Number {
            page: 1,
            page_size: 2,
        },
    )
    .await
    .expect("page 1");
    assert_eq!(page1.total, Some(5));
    assert_eq!(
        page1.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a_jobs[4], a_jobs[3]]
    );
    let cursor = page1.next_cursor.expect("more pages");
    let page2 = store::list(
        db,
        a,
        &records,
        JobPage::After {
            cursor,
            page_size: 2,
        },
    )
    .await
    .expect("page 2");
    assert_eq!(page2.total, None);
    assert_eq!(
        page2.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a_jobs[2], a_jobs[1]]
    );
    let page3 = store::list(
        db,
        a,
        &records,
        JobPage::Number {
            page: 3,
            page_size: 2,
        },
    )
    .await
    .expect("page 3");
    assert_eq!(
        page3.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a_jobs[0]]
    );
    assert_eq!(page3.next_cursor, None, "the last page has no next");
    let every_a = store::list(
        db,
        a,
        &JobFilter::default(),
        JobPage::Number {
            page: 1,
            page_size: 100,
        },
    )
    .await
    .expect("all of a");
    assert_eq!(every_a.total, Some(6));
    let platform = store::list(
        db,
        JobAccess::Platform,
        &JobFilter {
            queue: Some("default".into()),
            state: Some(JobState::Queued),
            ..JobFilter::default()
        },
        JobPage::Number {
            page: 1,
            page_size: 100,
        },
    )
    .await
    .expect("platform");
    assert_eq!(platform.total, Some(7));

    // Cancel a queued job; cancelling it again is refused.
    let cancelled = store::cancel(db, a, a_flaky).await.expect("cancel");
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(cancelled.finished_at.is_some());
    match store::cancel(db, a, a_flaky).await {
        Err(JobActionError::InvalidState { state, action }) => {
            assert_eq!((state, action), (JobState::Cancelled, "cancelled"));
        }
        other => panic!("expected InvalidState, got {other:?}"),
    }
    let cancelled_list = store::list(
        db,
        a,
        &JobFilter {
            state: Some(JobState::Cancelled),
            ..JobFilter::default()
        },
        JobPage::Number {
            page: 1,
            page_size: 10,
        },
    )
    .await
    .expect("cancelled");
    assert_eq!(cancelled_list.jobs.len(), 1);

    // The API shape: `status` and `error`, as clients expect.
    let json = serde_json::to_value(&cancelled).expect("json");
    assert_eq!(json["status"], "cancelled");
    assert!(json.get("error").is_some() && json.get("state").is_none());
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_handler() {
    let app = spawn().await;
    let db = &app.state.db;
    let id = enqueue(
        &app.state,
        &Hang {
            label: "cancel me".into(),
        },
    )
    .await;
    wait_for_state(db, id, JobState::Running).await;
    store::cancel(db, JobAccess::Platform, id)
        .await
        .expect("cancel");
    // The heartbeat notices and stops the handler; nothing runs it again.
    eventually("the worker to let go of the job", LIMIT, || async {
        let j = job(db, id).await;
        (j.state == JobState::Cancelled && j.locked_by.is_none()).then_some(())
    })
    .await;
    let report = app.stop().await;
    assert_eq!(report.jobs_released, 0, "the cancelled handler was stopped");
    assert!(report.clean);
}

#[tokio::test]
async fn a_graceful_shutdown_lets_running_jobs_finish_and_leaves_the_rest_queued() {
    let mut app = builder(JobsUnderTest::default())
        .configure(|c| {
            c.jobs.concurrency.insert("slow".into(), 1);
        })
        .spawn()
        .await
        .expect("spawn");
    let test_db = app.db.clone();
    let first = enqueue(
        &app.state,
        &Sleepy {
            label: "finishes".into(),
            ms: 700,
        },
    )
    .await;
    let second = enqueue(
        &app.state,
        &Sleepy {
            label: "waits".into(),
            ms: 700,
        },
    )
    .await;
    wait_for_state(&app.state.db, first, JobState::Running).await;
    app.begin_shutdown();
    let report = app.join().await;
    assert!(report.clean, "{report:?}");
    assert_eq!(report.jobs_released, 0);

    let db = open(&test_db).await;
    let finished = job(&db, first).await;
    assert_eq!(
        finished.state,
        JobState::Succeeded,
        "the running job finished"
    );
    let waiting = job(&db, second).await;
    assert_eq!(
        waiting.state,
        JobState::Queued,
        "no new claim after shutdown"
    );
    assert_eq!(waiting.attempts, 0);
    assert_eq!(count_effects(&db, "waits", "started").await, 0);
}

#[tokio::test]
async fn a_shutdown_whose_grace_runs_out_releases_running_jobs_without_counting_the_attempt() {
    let mut app = builder(JobsUnderTest::default())
        .configure(|c| c.jobs.shutdown_grace_ms = 300)
        .spawn()
        .await
        .expect("spawn");
    let test_db = app.db.clone();
    let id = enqueue(
        &app.state,
        &Sleepy {
            label: "too long".into(),
            ms: 20_000,
        },
    )
    .await;
    wait_for_state(&app.state.db, id, JobState::Running).await;
    app.begin_shutdown();
    let report = app.join().await;
    assert_eq!(report.jobs_released, 1);
    assert!(!report.clean, "the grace ran out");

    let db = open(&test_db).await;
    let released = job(&db, id).await;
    assert_eq!(released.state, JobState::Queued);
    assert_eq!(
        released.attempts, 0,
        "the interrupted attempt is not counted"
    );
    assert_eq!(released.locked_by, None);
    assert_eq!(released.lease_expires_at, None);

    // The next node picks it up at once (no lease to wait for).
    let next = builder(JobsUnderTest::default())
        .database(test_db.clone())
        .spawn()
        .await
        .expect("restart");
    wait_for_state(&next.state.db, id, JobState::Running).await;
}

// Three nodes in one process: a multi-threaded runtime, as `keel serve` has, so that one
// node's transaction holding SQLite's write lock is not kept waiting behind the other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_database_run_each_job_once_and_each_tick_once_across_a_failover() {
    const EVERY: Duration = Duration::from_millis(250);
    let node = || {
        builder(JobsUnderTest { every: Some(EVERY) }).configure(|c| c.scheduler.lease_ms = 1_000)
    };
    let db = Arc::new(TestDb::new().await.expect("db"));
    let mut apps = Vec::new();
    for _ in 0..3 {
        let app = node().database(db.clone()).spawn().await.expect("node");
        apps.push(app);
    }
    let state = apps[0].state.clone();
    // Queried through a handle of its own: the nodes' pools close as they stop.
    let probe = open(&db).await;

    // Many jobs, enqueued on one node, claimed by all three: each runs exactly once.
    let total = 60;
    let mut tx = state.db.begin().await.expect("begin");
    for i in 0..total {
        let payload = Record {
            label: format!("many {i}"),
        };
        state
            .jobs
            .enqueue(&mut tx, None, &payload)
            .await
            .expect("enqueue");
    }
    tx.commit().await.expect("commit");
    let records = eventually("every job to succeed", LIMIT, || async {
        let jobs = jobs_of(&probe, Record::JOB_TYPE).await;
        (jobs.len() == total && jobs.iter().all(|j| j.state == JobState::Succeeded)).then_some(jobs)
    })
    .await;
    let retried: Vec<&Job> = records.iter().filter(|j| j.attempts != 1).collect();
    assert!(retried.is_empty(), "jobs run more than once: {retried:#?}");
    for i in 0..total {
        assert_eq!(
            count_effects(&probe, &format!("many {i}"), "ran").await,
            1,
            "job {i} ran once"
        );
    }

    // The scheduler: one leader among the three.
    let ids: Vec<Uuid> = apps.iter().map(|a| a.state.node_id).collect();
    let leader = eventually("a scheduler leader and a few ticks", LIMIT, || async {
        let leader = scheduler::leader(&probe).await.expect("leader")?;
        let runs = scheduler::runs(&probe, Some(TICKS), 1000)
            .await
            .expect("runs");
        (runs.len() >= 5).then_some(leader)
    })
    .await;
    let position = ids
        .iter()
        .position(|id| *id == leader.holder)
        .expect("the leader is one of the nodes");

    // The leader dies; another takes over within about one lease period (1 s).
    let mut dead = apps.remove(position);
    dead.kill().await;
    let killed_at = Instant::now();
    let survivors: Vec<Uuid> = apps.iter().map(|a| a.state.node_id).collect();
    let successor = eventually("another node to lead", LIMIT, || async {
        let leader = scheduler::leader(&probe).await.expect("leader")?;
        survivors.contains(&leader.holder).then_some(leader)
    })
    .await;
    let takeover = killed_at.elapsed();
    eprintln!("scheduler leadership taken over {takeover:?} after the leader died");
    assert!(
        takeover < Duration::from_millis(2_500),
        "took over after {takeover:?} with a 1 s lease"
    );

    // Ticks go on under the new leader.
    eventually("ticks under the new leader", LIMIT, || async {
        let runs = scheduler::runs(&probe, Some(TICKS), 1000)
            .await
            .expect("runs");
        (runs.iter().filter(|r| r.leader == successor.holder).count() >= 3).then_some(())
    })
    .await;

    // Stop the new leader gracefully: it hands over at once.
    let position = apps
        .iter()
        .position(|a| a.state.node_id == successor.holder)
        .expect("successor");
    let graceful = apps.remove(position);
    let handed_at = Instant::now();
    assert!(graceful.stop().await.clean);
    let last = apps[0].state.node_id;
    eventually("the last node to lead", LIMIT, || async {
        let leader = scheduler::leader(&probe).await.expect("leader")?;
        (leader.holder == last).then_some(())
    })
    .await;
    assert!(
        handed_at.elapsed() < Duration::from_millis(1_500),
        "a resigning leader is replaced without waiting for its lease"
    );
    eventually("ticks under the last node", LIMIT, || async {
        let runs = scheduler::runs(&probe, Some(TICKS), 1000)
            .await
            .expect("runs");
        (runs.iter().filter(|r| r.leader == last).count() >= 2).then_some(())
    })
    .await;

    // Every node is down for a while: the ticks of that outage run once, when a node leads
    // again, not one by one.
    let mut last_node = apps.remove(0);
    last_node.kill().await;
    tokio::time::sleep(EVERY * 6).await;
    let revived = node().database(db.clone()).spawn().await.expect("node");
    let back = revived.state.node_id;
    let resumed = eventually("ticks after the outage", LIMIT, || async {
        let mut runs = scheduler::runs(&probe, Some(TICKS), 1000)
            .await
            .expect("runs");
        runs.retain(|r| r.leader == back);
        runs.sort_by_key(|r| r.tick_at);
        (runs.len() >= 2).then_some(runs)
    })
    .await;
    assert!(
        resumed[0].missed_ticks >= 4,
        "the outage's ticks are counted as missed and run once: {:?}",
        resumed[0]
    );

    // Every recorded tick ran once: one run and one job per tick time, and the runs account
    // for every tick between the first and the last: a gap left by a failover or the outage
    // was run once (its missed ticks counted), not replayed as a backlog.
    let mut runs = scheduler::runs(&probe, Some(TICKS), 1000)
        .await
        .expect("runs");
    runs.sort_by_key(|r| r.tick_at);
    let tick_jobs = jobs_of(&probe, Tick::JOB_TYPE).await;
    assert_eq!(tick_jobs.len(), runs.len(), "one job per recorded tick");
    let step = chrono::Duration::from_std(EVERY).expect("step");
    for pair in runs.windows(2) {
        assert!(pair[1].tick_at > pair[0].tick_at, "tick times are unique");
        let expected = step * (pair[1].missed_ticks + 1);
        assert_eq!(
            pair[1].tick_at - pair[0].tick_at,
            expected,
            "the ticks between {} and {} are accounted for",
            pair[0].tick_at,
            pair[1].tick_at
        );
    }
    for run in &runs {
        assert_eq!(run.tick_at.timestamp_subsec_millis() % 250, 0);
        let payload: ScheduledTick =
            serde_json::from_value(job(&probe, run.job_id).await.payload).expect("tick payload");
        assert_eq!(payload.tick_at, run.tick_at);
        assert_eq!(payload.missed_ticks as i32, run.missed_ticks);
    }
    // Their jobs ran; each tick's effect happened once.
    let recorded: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    eventually("the tick jobs to finish", LIMIT, || async {
        let now_runs = scheduler::runs(&probe, Some(TICKS), 1000)
            .await
            .expect("runs");
        recorded
            .iter()
            .all(|id| {
                now_runs.iter().any(|r| {
                    r.id == *id && r.outcome == RunOutcome::Succeeded && r.finished_at.is_some()
                })
            })
            .then_some(())
    })
    .await;
    for run in &runs {
        let label = format!("tick {}", run.tick_at.to_rfc3339());
        assert_eq!(count_done(&probe, &label).await, 1);
    }
}

#[tokio::test]
async fn a_schedule_naming_an_unknown_job_type_stops_start_up() {
    struct Broken;
    impl Module for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn schedules(&self) -> Vec<ScheduleDefinition> {
            vec![
                ScheduleDefinition::new(
                    "broken.nothing",
                    Cadence::Every(Duration::from_secs(60)),
                    "nobody.handles",
                ),
                ScheduleDefinition::new(
                    "broken.cron",
                    Cadence::Cron("not a cron"),
                    Record::JOB_TYPE,
                ),
            ]
        }
    }
    let err = builder(JobsUnderTest::default())
        .module(Arc::new(Broken))
        .build()
        .await
        .expect_err("refused");
    let message = format!("{err:#}");
    assert!(message.contains("nobody.handles"), "{message}");
    assert!(message.contains("broken.cron"), "{message}");
}

/// Not a test of behaviour: measures end-to-end throughput of no-op jobs on the configured
/// backend. `cargo test -p keel --test jobs -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_of_no_op_jobs() {
    let total: usize = std::env::var("JOBS_BENCH_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let app = builder(JobsUnderTest::default())
        .configure(|c| {
            c.jobs.concurrency.insert("bench".into(), 16);
            c.database.max_connections = 20;
        })
        .spawn()
        .await
        .expect("spawn");
    let db = &app.state.db;
    let started = Instant::now();
    let mut tx = db.begin().await.expect("begin");
    for _ in 0..total {
        app.state
            .jobs
            .enqueue(&mut tx, None, &Noop {})
            .await
            .expect("enqueue");
    }
    tx.commit().await.expect("commit");
    let enqueued = started.elapsed();
    eventually(
        "every no-op job to finish",
        Duration::from_secs(600),
        || async {
            let left = store::list(
                db,
                JobAccess::Platform,
                &JobFilter {
                    job_type: Some(Noop::JOB_TYPE.into()),
                    state: Some(JobState::Succeeded),
                    ..JobFilter::default()
                },
                JobPage::Number {
                    page: 1,
                    page_size: 1,
                },
            )
            .await
            .expect("count")
            .total
            .unwrap_or(0);
            (left as usize == total).then_some(())
        },
    )
    .await;
    let elapsed = started.elapsed();
    let engine = match app.db.kind() {
        DatabaseKind::Sqlite => "sqlite",
        DatabaseKind::Postgres => "postgres",
    };
    eprintln!(
        "{engine}: {total} no-op jobs enqueued in {enqueued:?}, all done in {elapsed:?}: {:.0} jobs/s end to end, {:.0} jobs/s processing",
        total as f64 / elapsed.as_secs_f64(),
        total as f64 / (elapsed - enqueued).as_secs_f64()
    );
}

/// Not a test of behaviour: measures claim latency (enqueue → an attempt starts) with four
/// workers on four nodes competing for one queue on one database. Jobs are enqueued one at a
/// time, 20 ms apart, on the first node (whose workers are woken in process; the others find
/// jobs by polling). `cargo test -p keel --test jobs -- --ignored --nocapture claim_latency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn claim_latency_under_four_competing_workers() {
    let total: usize = std::env::var("JOBS_BENCH_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let db = Arc::new(TestDb::new().await.expect("db"));
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(
            builder(JobsUnderTest::default())
                .database(db.clone())
                .configure(|c| {
                    c.jobs.concurrency.insert("bench".into(), 1);
                })
                .spawn()
                .await
                .expect("node"),
        );
    }
    let state = nodes[0].state.clone();
    let mut ids = Vec::with_capacity(total);
    for _ in 0..total {
        let mut tx = state.db.begin().await.expect("begin");
        ids.push(
            state
                .jobs
                .enqueue(&mut tx, None, &Noop {})
                .await
                .expect("enqueue"),
        );
        tx.commit().await.expect("commit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::with_capacity(total);
    for id in ids {
        let job = eventually("the job to finish", Duration::from_secs(120), || {
            let state = state.clone();
            async move {
                store::get(&state.db, JobAccess::Platform, id)
                    .await
                    .expect("get")
                    .filter(|j| j.state == JobState::Succeeded)
            }
        })
        .await;
        let started = job.started_at.expect("started");
        latencies.push((started - job.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let engine = match db.kind() {
        DatabaseKind::Sqlite => "sqlite",
        DatabaseKind::Postgres => "postgres",
    };
    eprintln!(
        "{engine}: claim latency over {total} jobs, 4 competing workers: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}
