//! `GET /api/v1/trade/dashboard`: the organization's shipments at a glance.
//!
//! Counts by status and e-BRC status come from the shipment tallies (at most 20 rows, never a
//! count of shipments); this month's export value in INR is the GST summary's total for the
//! current UTC month (drafts are not exports); overdue e-BRCs are live shipments that went
//! ahead (booked, in transit or delivered — as the overdue job counts them) whose e-BRC is
//! not realised `overdue_days` after the shipping bill date (a range on the
//! `(org_id, shipping_bill_date)` index); recent activity is the organization's latest trade
//! audit events. The whole is cached five minutes per organization and dropped after every
//! trade write ([`write`]: each records a trade audit event, which recent activity shows).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;
use keel_kernel::auth::Authorized;
use keel_kernel::cache::{CacheKey, Tag, TenantCache};
use keel_kernel::http::{ApiError, ApiResult, Json};
use keel_kernel::module::ModuleRouter;
use keel_kernel::state::AppState;
use keel_kernel::store::{StoreError, UnitOfWork, now};
use keel_kernel::tenancy::TenantScope;
use sea_query::{Expr, ExprTrait, Func, LikeExpr, Order, Query};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::TradeSettings;
use crate::perms::ReportsRead;
use crate::shipments::store::{TABLE as SHIPMENTS, visible};
use crate::shipments::{EbrcStatus, Status, tally};

/// How long a dashboard is cached.
pub const TTL: Duration = Duration::from_secs(300);
/// Overdue shipments and activity entries shown.
pub const SHOWN: u64 = 10;

pub fn router() -> ModuleRouter {
    ModuleRouter::new().routes(utoipa_axum::routes!(dashboard))
}

/// Live shipments by status and by e-BRC status (every value present, zeros included).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    pub total: i64,
    pub by_status: BTreeMap<String, i64>,
    pub by_ebrc_status: BTreeMap<String, i64>,
}

/// The current UTC month's exports (as in the GST summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ThisMonth {
    pub year: i32,
    pub month: u32,
    pub shipments: u64,
    /// Converted at the rate in force on each shipping bill date, in paise.
    pub export_value_inr_minor: i64,
    /// Shipments without a rate in force (not in the INR value).
    pub unconverted_shipments: u64,
}

/// A shipment whose e-BRC is overdue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct OverdueShipment {
    pub id: Uuid,
    pub reference: String,
    pub shipping_bill_date: NaiveDate,
    pub currency: String,
    pub invoice_value_minor: i64,
    pub realized_minor: i64,
    pub ebrc_status: String,
}

/// Shipments with no realisation `overdue_days` after their shipping bill date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Overdue {
    pub overdue_days: u32,
    /// Shipping bill dates before this one are overdue unless realised.
    pub cutoff: NaiveDate,
    pub count: u64,
    /// The oldest ten.
    pub oldest: Vec<OverdueShipment>,
}

/// A trade event from the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Activity {
    pub id: Uuid,
    /// E.g. `trade.shipment.created`, `trade.forex.alert`.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    /// `user`, `system` or `anonymous`.
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dashboard {
    pub shipments: Counts,
    pub this_month: ThisMonth,
    pub overdue_ebrc: Overdue,
    /// The latest ten trade events, newest first.
    pub recent_activity: Vec<Activity>,
    /// When these figures were computed (they are cached up to five minutes; writes refresh
    /// them at once).
    pub generated_at: DateTime<Utc>,
}

fn cache(state: &AppState) -> Result<TenantCache<Dashboard>, ApiError> {
    state
        .cache
        .tenant::<Dashboard>("trade.dashboard", TTL)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("{e}")))
}

fn tag(scope: &TenantScope) -> Tag {
    Tag::org(scope, "dashboard")
}

/// Drops the organization's cached dashboard on every node, once a write has committed.
/// Trade writes go through [`write`], which calls it; call it directly only where the scope
/// is known only after the commit (the Account Aggregator webhook) or after bulk loads.
///
/// It takes the scope rather than a bare organization id: the kernel cache forms keys and tags
/// only from a scope, so no code can address another organization's entries.
pub async fn invalidate(state: &AppState, scope: &TenantScope) {
    match cache(state) {
        Ok(c) => c.invalidate_tag(&tag(scope)).await,
        Err(e) => tracing::error!(error = ?e, "dashboard cache unavailable"),
    }
}

/// Runs a trade write as [`keel_kernel::store::Db::transaction`] does and, once it has
/// committed, drops the organization's cached dashboard before returning.
///
/// Why every trade write and not only those that move shipment counts: each one records a
/// `trade.*` audit event, and the dashboard's recent activity lists them — a document upload,
/// a connector change, an export or the overdue job is as visible there as a shipment. One
/// place for all of them means a new writer cannot forget. The invalidation is awaited (not
/// left to a task after commit), so the writer's own next read sees the change.
pub async fn write<'env, T, E, F>(state: &AppState, scope: &TenantScope, work: F) -> Result<T, E>
where
    F: for<'t> FnMut(&'t mut UnitOfWork<'env>) -> BoxFuture<'t, Result<T, E>>,
    E: From<StoreError>,
{
    let value = state.db.transaction(work).await?;
    invalidate(state, scope).await;
    Ok(value)
}

async fn counts(state: &AppState, scope: &TenantScope) -> Result<Counts, StoreError> {
    let mut c = Counts {
        total: 0,
        by_status: Status::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect(),
        by_ebrc_status: EbrcStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect(),
    };
    for (status, ebrc, n) in tally::cells(&state.db, scope.org_id()).await? {
        c.total += n;
        *c.by_status.entry(status).or_default() += n;
        *c.by_ebrc_status.entry(ebrc).or_default() += n;
    }
    Ok(c)
}

async fn overdue(
    state: &AppState,
    scope: &TenantScope,
    today: NaiveDate,
) -> Result<Overdue, StoreError> {
    let days = TradeSettings::of(state).overdue_days;
    let cutoff = today - chrono::Duration::days(i64::from(days));
    let cond = visible(scope)
        .add(Expr::col("shipping_bill_date").lt(cutoff))
        .add(Expr::col("ebrc_status").ne(EbrcStatus::Realized.as_str()))
        // As the overdue job: drafts and cancelled shipments have no e-BRC falling due.
        .add(Expr::col("status").is_in(Status::exported()));
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Count {
        n: i64,
    }
    let count = Query::select()
        .expr_as(Func::count(Expr::col(sea_query::Asterisk)), "n")
        .from(SHIPMENTS)
        .cond_where(cond.clone())
        .to_owned();
    let oldest = Query::select()
        .columns([
            "id",
            "reference",
            "shipping_bill_date",
            "currency",
            "invoice_value_minor",
            "realized_minor",
            "ebrc_status",
        ])
        .from(SHIPMENTS)
        .cond_where(cond)
        .order_by("shipping_bill_date", Order::Asc)
        .order_by("id", Order::Asc)
        .limit(SHOWN)
        .to_owned();
    let (n, oldest): (Count, Vec<OverdueShipment>) =
        futures::try_join!(state.db.fetch_one(&count), state.db.fetch_all(&oldest))?;
    Ok(Overdue {
        overdue_days: days,
        cutoff,
        count: u64::try_from(n.n).unwrap_or(0),
        oldest,
    })
}

async fn activity(state: &AppState, scope: &TenantScope) -> Result<Vec<Activity>, StoreError> {
    state
        .db
        .fetch_all(
            &Query::select()
                .columns([
                    "id",
                    "action",
                    "resource_type",
                    "resource_id",
                    "actor_type",
                    "actor_id",
                    "created_at",
                ])
                .from("audit_events")
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("action").like(LikeExpr::new("trade.%")))
                .order_by("seq", Order::Desc)
                .limit(SHOWN)
                .to_owned(),
        )
        .await
}

async fn load(state: &AppState, scope: &TenantScope) -> Result<Dashboard, ApiError> {
    let at = now();
    let (year, month) = crate::gst::this_month(at);
    let (shipments, month_summary, overdue_ebrc, recent_activity) = futures::try_join!(
        async { counts(state, scope).await.map_err(ApiError::from) },
        crate::gst::compute(state, scope, year, month),
        async {
            overdue(state, scope, at.date_naive())
                .await
                .map_err(ApiError::from)
        },
        async { activity(state, scope).await.map_err(ApiError::from) },
    )?;
    Ok(Dashboard {
        shipments,
        this_month: ThisMonth {
            year,
            month,
            shipments: month_summary.total.shipments,
            export_value_inr_minor: month_summary.total.inr_minor,
            unconverted_shipments: month_summary.total.unconverted_shipments,
        },
        overdue_ebrc,
        recent_activity,
        generated_at: at,
    })
}

/// Shipment counts by status and e-BRC status, this month's export value in INR, overdue
/// e-BRCs and recent trade activity (cached up to five minutes; writes refresh it at once).
#[utoipa::path(get, path = "/api/v1/trade/dashboard", tag = "trade",
    security(("bearer" = ["trade.reports.read"])),
    responses((status = 200, body = Dashboard)))]
pub async fn dashboard(
    State(state): State<AppState>,
    auth: Authorized<ReportsRead>,
) -> ApiResult<Json<Dashboard>> {
    let scope = auth.scope();
    // The day is part of the key: the month and the overdue cutoff move with it.
    let today = now().date_naive().to_string();
    let value = cache(&state)?
        .get_or_load(
            &CacheKey::org(&scope, &["summary", &today]),
            &[tag(&scope)],
            || load(&state, &scope),
        )
        .await
        .map_err(|e| match std::sync::Arc::try_unwrap(e) {
            Ok(e) => e,
            Err(shared) => ApiError::from_status(shared.status),
        })?;
    Ok(Json(value))
}
