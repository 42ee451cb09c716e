//! The e-BRC overdue job: daily (`trade.ebrc_overdue` at 02:30 UTC), shipments whose e-BRC is
//! still `pending` or `filed` more than `overdue_days` (`[modules.trade]`, default 270) after
//! their shipping bill date become `overdue`, each through [`store::set_state`] (so the
//! tallies move with it) and with a `trade.shipment.ebrc_changed` audit event by the system
//! actor `trade.ebrc_overdue`. Drafts and cancelled shipments are left alone: like filing,
//! an e-BRC falls due only for a shipment that went ahead.
//!
//! The job visits only organizations whose tallies hold `pending` or `filed` shipments, and
//! each in batches of [`BATCH`] rows, one transaction per batch (an index range on
//! `(org_id, shipping_bill_date)`). It is idempotent: a shipment already `overdue` no
//! longer matches, so a second run (or a retried one that had done part of its work)
//! changes nothing more.

use chrono::{Days, NaiveDate, Utc};
use keel_kernel::audit::{self, AuditContext, Changes, NewEvent};
use keel_kernel::jobs::{
    Cadence, JobContext, JobDefinition, JobError, JobPayload, ScheduleDefinition,
};
use keel_kernel::state::AppState;
use keel_kernel::store::Db;
use keel_kernel::tenancy::TenantScope;
use sea_query::{Expr, ExprTrait, Order, Query};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::TradeSettings;
use crate::shipments::store::{self, COLUMNS, Shipment, TABLE};
use crate::shipments::tally::Tally;
use crate::shipments::{EbrcStatus, Status};

/// Rows changed per transaction.
pub const BATCH: u64 = 200;

/// The job's payload (a scheduled tick's; its fields are not needed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MarkOverdue {
    /// The day to count from (default: today, UTC). For tests and catch-up runs.
    #[serde(default)]
    pub today: Option<NaiveDate>,
}

impl JobPayload for MarkOverdue {
    const JOB_TYPE: &'static str = "trade.ebrc_overdue";
}

pub fn job() -> JobDefinition {
    JobDefinition::new(mark_overdue)
        .max_attempts(5)
        .time_limit(std::time::Duration::from_secs(3600))
}

pub fn schedule() -> ScheduleDefinition {
    ScheduleDefinition::of::<MarkOverdue>("trade.ebrc_overdue", Cadence::Cron("30 2 * * *"))
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverdueReport {
    pub organizations: u64,
    pub marked: u64,
}

/// The job handler: marks every organization's overdue shipments.
pub async fn mark_overdue(ctx: JobContext, job: MarkOverdue) -> Result<OverdueReport, JobError> {
    let days = TradeSettings::of(&ctx.state).overdue_days;
    let today = job.today.unwrap_or_else(|| Utc::now().date_naive());
    let Some(cutoff) = today.checked_sub_days(Days::new(u64::from(days))) else {
        return Err(JobError::Permanent(anyhow::anyhow!(
            "overdue_days reaches before year 1"
        )));
    };
    // A job enqueued for one organization covers that one; the schedule's covers all.
    let scopes: Vec<TenantScope> = match &ctx.scope {
        Some(scope) => vec![scope.clone()],
        None => organizations_with_open_ebrc(&ctx.state.db)
            .await
            .map_err(|e| JobError::Retry(e.into()))?
            .into_iter()
            .filter_map(|org| ctx.org_scope(org))
            .collect(),
    };
    let audit_ctx = AuditContext::system(MarkOverdue::JOB_TYPE);
    let mut report = OverdueReport::default();
    for scope in &scopes {
        let marked = mark_in(&ctx.state, scope, &audit_ctx, cutoff, days).await?;
        report.organizations += 1;
        report.marked += marked;
    }
    if report.marked > 0 {
        tracing::info!(
            marked = report.marked,
            organizations = report.organizations,
            "e-BRC overdue marked"
        );
    }
    Ok(report)
}

/// Organizations whose tallies count live `pending` or `filed` shipments (a small table:
/// at most 20 cells per organization, each in one to 8 shards).
async fn organizations_with_open_ebrc(
    db: &Db,
) -> Result<Vec<Uuid>, keel_kernel::store::StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Org {
        org_id: Uuid,
    }
    let rows: Vec<Org> = db
        .fetch_all(
            &Query::select()
                .column("org_id")
                .from(crate::shipments::tally::TABLE)
                .and_where(
                    Expr::col("ebrc_status")
                        .is_in([EbrcStatus::Pending.as_str(), EbrcStatus::Filed.as_str()]),
                )
                .and_where(Expr::col("status").is_in(Status::exported()))
                .group_by_col("org_id")
                // A cell's count is the sum of its shards (each cell sums to 0 or more).
                .and_having(Expr::col("n").sum().gt(0))
                .to_owned(),
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.org_id).collect())
}

/// Marks one organization's overdue shipments, a batch per transaction (each, once
/// committed, drops the organization's cached dashboard); how many.
async fn mark_in(
    state: &AppState,
    scope: &TenantScope,
    ctx: &AuditContext,
    cutoff: NaiveDate,
    days: u32,
) -> Result<u64, JobError> {
    let mut total = 0;
    loop {
        let changed = crate::dashboard::write(state, scope, |tx| {
            Box::pin(async move {
                let due: Vec<Shipment> = tx
                    .fetch_all(
                        &Query::select()
                            .columns(COLUMNS)
                            .from(TABLE)
                            .cond_where(
                                store::visible(scope)
                                    .add(Expr::col("shipping_bill_date").lt(cutoff))
                                    .add(Expr::col("ebrc_status").is_in([
                                        EbrcStatus::Pending.as_str(),
                                        EbrcStatus::Filed.as_str(),
                                    ]))
                                    .add(Expr::col("status").is_in(Status::exported())),
                            )
                            .order_by("shipping_bill_date", Order::Asc)
                            .order_by("id", Order::Asc)
                            .limit(BATCH)
                            .to_owned(),
                    )
                    .await?;
                let mut changed = 0u64;
                for before in &due {
                    let from = Tally::of(before)?;
                    let to = Tally::new(from.status, EbrcStatus::Overdue);
                    if !store::set_state(tx, scope, before, to, None).await? {
                        continue;
                    }
                    let after = store::get(tx, scope, before.id).await?;
                    audit::record(
                        tx,
                        scope,
                        ctx,
                        NewEvent::new(
                            "trade.shipment.ebrc_changed",
                            "trade.shipment",
                            Some(before.id),
                        )
                        .changes(Changes::diff(before, &after, &[]))
                        .detail("reference", &after.reference)
                        .detail(
                            "reason",
                            format!("no realisation within {days} days of the shipping bill date"),
                        ),
                    )
                    .await?;
                    changed += 1;
                }
                Ok::<_, keel_kernel::store::StoreError>((changed, due.len() as u64))
            })
        })
        .await
        .map_err(|e| JobError::Retry(e.into()))?;
        total += changed.0;
        // A short batch was the last; a batch where nothing could change (rows moving under
        // us) ends this run, and the next run picks them up.
        if changed.1 < BATCH || changed.0 == 0 {
            return Ok(total);
        }
    }
}
