//! Kernel housekeeping, run by the scheduler (once per tick across all nodes): removes what
//! has expired — idempotency keys, sessions and their refresh history, revocation entries,
//! one-time tokens, two-factor challenges, stale brute-force counters, audit events past
//! their retention (behind a checkpoint) and delivered outbox messages — and trims the
//! in-process rate-limit state. Each step is idempotent, so a rerun is harmless.

use chrono::TimeDelta;
use sea_query::{Cond, Expr, ExprTrait, Query};
use serde::{Deserialize, Serialize};

use crate::jobs::{
    Cadence, JobContext, JobDefinition, JobError, JobPayload, ScheduleDefinition, ScheduledTick,
};
use crate::store::now;

/// The scheduled housekeeping job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Housekeeping(pub ScheduledTick);

impl JobPayload for Housekeeping {
    const JOB_TYPE: &'static str = "kernel.housekeeping";
}

/// How much each step removed.
#[derive(Debug, Default, Serialize)]
pub struct Swept {
    pub idempotency_keys: u64,
    pub sessions: u64,
    pub revocations: u64,
    pub one_time_tokens: u64,
    pub mfa_challenges: u64,
    pub login_counters: u64,
    pub finished_jobs: u64,
}

pub fn job() -> JobDefinition {
    JobDefinition::new(|ctx: JobContext, _tick: Housekeeping| async move {
        let swept = sweep(&ctx.state).await.map_err(JobError::Retry)?;
        ctx.state.limits.prune();
        // Audit retention (a no-op unless `audit.retention_days` is set) and delivered
        // outbox messages.
        let pruned = crate::audit::prune(&ctx.state.db, &ctx.state.config.audit, now())
            .await
            .map_err(|e| JobError::Retry(e.into()))?;
        let realtime =
            crate::realtime::store::prune(&ctx.state.db, ctx.state.config.realtime.retention_secs)
                .await
                .map_err(|e| JobError::Retry(e.into()))?;
        tracing::info!(?swept, ?pruned, ?realtime, "housekeeping done");
        Ok::<_, JobError>(swept)
    })
}

pub fn schedule() -> ScheduleDefinition {
    ScheduleDefinition::of::<Housekeeping>(
        "kernel.housekeeping",
        Cadence::Every(std::time::Duration::from_secs(600)),
    )
}

/// Removes expired rows. Sessions are kept a day past expiry, so a late refresh still finds
/// its session (and is refused as expired rather than unknown).
pub async fn sweep(state: &crate::state::AppState) -> anyhow::Result<Swept> {
    let db = &state.db;
    let at = now();
    let day_ago = at - TimeDelta::days(1);
    let jobs = &state.config.jobs;
    let finished_jobs = db
        .execute(
            &Query::delete()
                .from_table(crate::jobs::store::JOBS)
                .cond_where(
                    Cond::any()
                        .add(
                            Expr::col("state").is_in(["succeeded", "cancelled"]).and(
                                Expr::col("finished_at")
                                    .lte(at - TimeDelta::days(i64::from(jobs.retention_days))),
                            ),
                        )
                        .add(
                            Expr::col("state").is_in(["failed", "dead"]).and(
                                Expr::col("finished_at").lte(
                                    at - TimeDelta::days(i64::from(jobs.failed_retention_days)),
                                ),
                            ),
                        ),
                )
                .to_owned(),
        )
        .await?;
    let idempotency_keys = db
        .execute(
            &Query::delete()
                .from_table("idempotency_keys")
                .and_where(Expr::col("expires_at").lte(at))
                .to_owned(),
        )
        .await?;
    let expired_sessions = Cond::any()
        .add(Expr::col("expires_at").lte(day_ago))
        .add(Expr::col("absolute_expires_at").lte(day_ago));
    let mut tx = db.begin().await?;
    tx.execute(
        &Query::delete()
            .from_table("refresh_history")
            .and_where(
                Expr::col("session_id").in_subquery(
                    Query::select()
                        .column("id")
                        .from("sessions")
                        .cond_where(expired_sessions.clone())
                        .to_owned(),
                ),
            )
            .to_owned(),
    )
    .await?;
    let sessions = tx
        .execute(
            &Query::delete()
                .from_table("sessions")
                .cond_where(expired_sessions)
                .to_owned(),
        )
        .await?;
    tx.commit().await?;
    let revocations = db
        .execute(
            &Query::delete()
                .from_table("revocation_events")
                .and_where(Expr::col("until").lte(at))
                .to_owned(),
        )
        .await?;
    let one_time_tokens = db
        .execute(
            &Query::delete()
                .from_table("email_tokens")
                .and_where(Expr::col("expires_at").lte(day_ago))
                .to_owned(),
        )
        .await?;
    let mfa_challenges = db
        .execute(
            &Query::delete()
                .from_table("mfa_challenges")
                .and_where(Expr::col("expires_at").lte(day_ago))
                .to_owned(),
        )
        .await?;
    let login_counters = db
        .execute(
            &Query::delete()
                .from_table("login_failures")
                .cond_where(
                    Cond::all()
                        .add(Expr::col("window_started_at").lte(day_ago))
                        .add(
                            Cond::any()
                                .add(Expr::col("locked_until").is_null())
                                .add(Expr::col("locked_until").lte(at)),
                        ),
                )
                .to_owned(),
        )
        .await?;
    Ok(Swept {
        idempotency_keys,
        sessions,
        revocations,
        one_time_tokens,
        mfa_challenges,
        login_counters,
        finished_jobs,
    })
}
