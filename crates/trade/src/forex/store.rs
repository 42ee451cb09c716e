//! Forex queries. Every one names the scope's organization.

use chrono::{DateTime, Utc};
use keel_kernel::http::pagination::PageRequest;
use keel_kernel::store::{Db, StoreError, Tx, now};
use keel_kernel::tenancy::TenantScope;
use sea_query::{Alias, Cond, Expr, ExprTrait, Func, OnConflict, Order, Query, SelectStatement};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Severity, format_micros, format_percent};

pub const RATES: &str = "trade_forex_rates";
pub const ALERTS: &str = "trade_forex_alerts";
pub const SERIES: &str = "trade_forex_series";

const RATE_COLUMNS: [&str; 10] = [
    "id",
    "currency",
    "rate_micros",
    "buy_micros",
    "sell_micros",
    "effective_at",
    "created_by",
    "created_at",
    "updated_at",
    "version",
];

/// A stored rate.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Deserialize)]
pub struct RateRow {
    pub id: Uuid,
    pub currency: String,
    pub rate_micros: i64,
    pub buy_micros: Option<i64>,
    pub sell_micros: Option<i64>,
    pub effective_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// A rate as the API shows it: rupees per unit of `currency`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rate {
    pub id: Uuid,
    /// ISO 4217, against INR.
    pub currency: String,
    /// Rupees per unit, exact decimal string (up to 6 decimals), e.g. `"83.2512"`.
    pub rate: String,
    /// The same in millionths of a rupee (`83251200`).
    pub rate_micros: i64,
    /// Buying rate, when given.
    pub buy: Option<String>,
    /// Selling rate, when given.
    pub sell: Option<String>,
    /// `sell − buy`, when both are given.
    pub spread: Option<String>,
    /// When the rate takes effect (UTC).
    pub effective_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    /// A rate is not changed once recorded (a correction is a new rate): its creation time.
    pub updated_at: DateTime<Utc>,
    /// Always 1 (a rate is not changed once recorded).
    pub version: i64,
}

keel_kernel::keyed!(Rate { "effective_at" => Time(effective_at) });

impl From<RateRow> for Rate {
    fn from(r: RateRow) -> Self {
        let spread = match (r.buy_micros, r.sell_micros) {
            (Some(b), Some(s)) => Some(format_micros(s - b)),
            _ => None,
        };
        Rate {
            id: r.id,
            currency: r.currency,
            rate: format_micros(r.rate_micros),
            rate_micros: r.rate_micros,
            buy: r.buy_micros.map(format_micros),
            sell: r.sell_micros.map(format_micros),
            spread,
            effective_at: r.effective_at,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

/// A rate to store, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRate {
    pub currency: String,
    pub rate_micros: i64,
    pub buy_micros: Option<i64>,
    pub sell_micros: Option<i64>,
    /// When it takes effect; `None`: when it is recorded (see [`lock_series`]).
    pub effective_at: Option<DateTime<Utc>>,
}

/// Takes the (organization, currency) series for the rest of the transaction, creating its
/// row on the first rate: an upsert, whose row lock PostgreSQL holds until commit, so a second
/// transaction recording a rate of the same currency waits here and then reads the first one's
/// rate as committed (SQLite serializes writers already). Call it before reading the clock or
/// the previous rate.
pub async fn lock_series(
    tx: &mut Tx,
    scope: &TenantScope,
    currency: &str,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::insert()
            .into_table(SERIES)
            .columns(["org_id", "currency", "rates"])
            .values_panic([scope.org_id().into(), currency.into(), 1i64.into()])
            .on_conflict(
                OnConflict::columns(["org_id", "currency"])
                    .value("rates", Expr::col((SERIES, "rates")).add(1))
                    .to_owned(),
            )
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// Inserts a rate. A rate without an effective time takes effect now: call [`lock_series`]
/// first, so "now" is read while no other rate of the currency can commit.
pub async fn insert(
    tx: &mut Tx,
    scope: &TenantScope,
    rate: &NewRate,
    created_by: Option<String>,
) -> Result<RateRow, StoreError> {
    let at = now();
    let row = RateRow {
        id: Uuid::now_v7(),
        currency: rate.currency.clone(),
        rate_micros: rate.rate_micros,
        buy_micros: rate.buy_micros,
        sell_micros: rate.sell_micros,
        // Never after the moment it is recorded (a time up to a minute ahead, allowed for
        // clock skew, counts as now).
        effective_at: rate.effective_at.map_or(at, |t| Ord::min(t, at)),
        created_by,
        created_at: at,
        updated_at: at,
        version: 1,
    };
    tx.execute(
        &Query::insert()
            .into_table(RATES)
            .columns([
                "id",
                "org_id",
                "currency",
                "rate_micros",
                "buy_micros",
                "sell_micros",
                "effective_at",
                "created_by",
                "created_at",
                "updated_at",
                "version",
            ])
            .values_panic([
                row.id.into(),
                scope.org_id().into(),
                row.currency.clone().into(),
                row.rate_micros.into(),
                row.buy_micros.into(),
                row.sell_micros.into(),
                row.effective_at.into(),
                row.created_by.clone().into(),
                row.created_at.into(),
                row.updated_at.into(),
                row.version.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(row)
}

/// The rate of `currency` in force just before `rate` (the latest effective at or before its
/// time, other than itself; ties by id). For a back-dated rate that is the rate in force
/// before its date, not the newest one.
pub async fn previous(
    tx: &mut Tx,
    scope: &TenantScope,
    rate: &RateRow,
) -> Result<Option<RateRow>, StoreError> {
    tx.fetch_optional(
        &Query::select()
            .columns(RATE_COLUMNS)
            .from(RATES)
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("currency").eq(rate.currency.as_str()))
            .cond_where(
                Cond::any()
                    .add(Expr::col("effective_at").lt(rate.effective_at))
                    .add(
                        Cond::all()
                            .add(Expr::col("effective_at").eq(rate.effective_at))
                            .add(Expr::col("id").lt(rate.id)),
                    ),
            )
            .order_by("effective_at", Order::Desc)
            .order_by("id", Order::Desc)
            .limit(1)
            .to_owned(),
    )
    .await
}

/// One of the scope's rates.
pub async fn get_rate(db: &Db, scope: &TenantScope, id: Uuid) -> Result<RateRow, StoreError> {
    db.fetch_one(
        &Query::select()
            .columns(RATE_COLUMNS)
            .from(RATES)
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("id").eq(id))
            .to_owned(),
    )
    .await
}

/// The newest rate (by effective time) of each currency the organization has rates for.
pub async fn latest(db: &Db, scope: &TenantScope) -> Result<Vec<RateRow>, StoreError> {
    let newer = Query::select()
        .expr(Expr::val(1))
        .from_as(RATES, Alias::new("n"))
        .and_where(Expr::col((Alias::new("n"), Alias::new("org_id"))).eq(scope.org_id()))
        .and_where(
            Expr::col((Alias::new("n"), Alias::new("currency")))
                .equals((Alias::new("r"), Alias::new("currency"))),
        )
        .cond_where(
            Cond::any()
                .add(
                    Expr::col((Alias::new("n"), Alias::new("effective_at")))
                        .gt(Expr::col((Alias::new("r"), Alias::new("effective_at")))),
                )
                .add(
                    Cond::all()
                        .add(
                            Expr::col((Alias::new("n"), Alias::new("effective_at")))
                                .equals((Alias::new("r"), Alias::new("effective_at"))),
                        )
                        .add(
                            Expr::col((Alias::new("n"), Alias::new("id")))
                                .gt(Expr::col((Alias::new("r"), Alias::new("id")))),
                        ),
                ),
        )
        .to_owned();
    let columns: Vec<(Alias, Alias)> = RATE_COLUMNS
        .iter()
        .map(|c| (Alias::new("r"), Alias::new(*c)))
        .collect();
    db.fetch_all(
        &Query::select()
            .columns(columns)
            .from_as(RATES, Alias::new("r"))
            .and_where(Expr::col((Alias::new("r"), Alias::new("org_id"))).eq(scope.org_id()))
            .and_where(Expr::exists(newer).not())
            .order_by((Alias::new("r"), Alias::new("currency")), Order::Asc)
            .to_owned(),
    )
    .await
}

/// History filters, validated: a currency and a half-open range `[from, to)` of effective
/// times.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryFilter {
    pub currency: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

fn history_cond(scope: &TenantScope, f: &HistoryFilter) -> Cond {
    let mut cond = Cond::all().add(Expr::col("org_id").eq(scope.org_id()));
    if let Some(c) = &f.currency {
        cond = cond.add(Expr::col("currency").eq(c.as_str()));
    }
    if let Some(t) = f.from {
        cond = cond.add(Expr::col("effective_at").gte(t));
    }
    if let Some(t) = f.to {
        cond = cond.add(Expr::col("effective_at").lt(t));
    }
    cond
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct Count {
    n: i64,
}

async fn count(db: &Db, table: &str, cond: Cond) -> Result<u64, StoreError> {
    let row: Count = db
        .fetch_one(
            &Query::select()
                .expr_as(Func::count(Expr::col(sea_query::Asterisk)), "n")
                .from(Alias::new(table))
                .cond_where(cond)
                .to_owned(),
        )
        .await?;
    Ok(u64::try_from(row.n).unwrap_or(0))
}

/// One page of rates and, for numbered pages, the total.
pub async fn history(
    db: &Db,
    scope: &TenantScope,
    filter: &HistoryFilter,
    page: &PageRequest,
) -> Result<(Vec<RateRow>, Option<u64>), StoreError> {
    let cond = history_cond(scope, filter);
    let mut select = Query::select()
        .columns(RATE_COLUMNS)
        .from(RATES)
        .cond_where(cond.clone())
        .to_owned();
    keel_kernel::store::paginate(&mut select, page);
    let rows = db.fetch_all(&select).await?;
    let total = match page.wants_total() {
        true => Some(count(db, RATES, cond).await?),
        false => None,
    };
    Ok((rows, total))
}

/// Every rate of `currency` that can be in force in `[from, to)`: the last one
/// effective before `from` and all effective inside, oldest first (for conversions).
pub async fn in_force_during(
    db: &Db,
    scope: &TenantScope,
    currency: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<RateRow>, StoreError> {
    let base = |q: &mut SelectStatement| {
        q.columns(RATE_COLUMNS)
            .from(RATES)
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("currency").eq(currency));
    };
    let mut before = Query::select();
    base(&mut before);
    before
        .and_where(Expr::col("effective_at").lt(from))
        .order_by("effective_at", Order::Desc)
        .order_by("id", Order::Desc)
        .limit(1);
    let mut inside = Query::select();
    base(&mut inside);
    inside
        .and_where(Expr::col("effective_at").gte(from))
        .and_where(Expr::col("effective_at").lt(to))
        .order_by("effective_at", Order::Asc)
        .order_by("id", Order::Asc);
    let (first, rest): (Option<RateRow>, Vec<RateRow>) =
        futures::try_join!(db.fetch_optional(&before), db.fetch_all(&inside))?;
    Ok(first.into_iter().chain(rest).collect())
}

const ALERT_COLUMNS: [&str; 12] = [
    "id",
    "rate_id",
    "previous_rate_id",
    "currency",
    "previous_micros",
    "rate_micros",
    "change_ppm",
    "severity",
    "anomaly",
    "created_at",
    "updated_at",
    "version",
];

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Deserialize)]
pub struct AlertRow {
    pub id: Uuid,
    pub rate_id: Uuid,
    pub previous_rate_id: Uuid,
    pub currency: String,
    pub previous_micros: i64,
    pub rate_micros: i64,
    pub change_ppm: i64,
    pub severity: String,
    pub anomaly: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// A rate change of more than 3 %.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    pub id: Uuid,
    /// The new rate.
    pub rate_id: Uuid,
    /// The rate in force before it.
    pub previous_rate_id: Uuid,
    pub currency: String,
    pub previous_rate: String,
    pub rate: String,
    /// Signed, four decimals: `"3.5000"`, `"-6.0000"`.
    pub change_percent: String,
    /// `up` or `down`.
    pub direction: String,
    /// `medium` (above 3 %, at most 5 %) or `high` (above 5 %).
    pub severity: String,
    /// A change above 10 %: check the rate before relying on it.
    pub anomaly: bool,
    pub created_at: DateTime<Utc>,
    /// An alert is not changed once raised: its creation time.
    pub updated_at: DateTime<Utc>,
    /// Always 1.
    pub version: i64,
}

keel_kernel::keyed!(Alert { "created_at" => Time(created_at) });

impl From<AlertRow> for Alert {
    fn from(a: AlertRow) -> Self {
        Alert {
            id: a.id,
            rate_id: a.rate_id,
            previous_rate_id: a.previous_rate_id,
            currency: a.currency,
            previous_rate: format_micros(a.previous_micros),
            rate: format_micros(a.rate_micros),
            change_percent: format_percent(a.change_ppm),
            direction: if a.change_ppm < 0 { "down" } else { "up" }.into(),
            severity: a.severity,
            anomaly: a.anomaly,
            created_at: a.created_at,
            updated_at: a.updated_at,
            version: a.version,
        }
    }
}

pub async fn insert_alert(
    tx: &mut Tx,
    scope: &TenantScope,
    previous: &RateRow,
    rate: &RateRow,
    severity: Severity,
    anomaly: bool,
) -> Result<AlertRow, StoreError> {
    let at = now();
    let row = AlertRow {
        id: Uuid::now_v7(),
        rate_id: rate.id,
        previous_rate_id: previous.id,
        currency: rate.currency.clone(),
        previous_micros: previous.rate_micros,
        rate_micros: rate.rate_micros,
        change_ppm: super::change_ppm(previous.rate_micros, rate.rate_micros),
        severity: severity.as_str().into(),
        anomaly,
        created_at: at,
        updated_at: at,
        version: 1,
    };
    let mut columns = vec!["org_id"];
    columns.extend(ALERT_COLUMNS);
    tx.execute(
        &Query::insert()
            .into_table(ALERTS)
            .columns(columns)
            .values_panic([
                scope.org_id().into(),
                row.id.into(),
                row.rate_id.into(),
                row.previous_rate_id.into(),
                row.currency.clone().into(),
                row.previous_micros.into(),
                row.rate_micros.into(),
                row.change_ppm.into(),
                row.severity.clone().into(),
                row.anomaly.into(),
                row.created_at.into(),
                row.updated_at.into(),
                row.version.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(row)
}

/// Alert filters, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFilter {
    pub currency: Option<String>,
    pub severity: Option<Severity>,
}

pub async fn alerts(
    db: &Db,
    scope: &TenantScope,
    filter: &AlertFilter,
    page: &PageRequest,
) -> Result<(Vec<AlertRow>, Option<u64>), StoreError> {
    let mut cond = Cond::all().add(Expr::col("org_id").eq(scope.org_id()));
    if let Some(c) = &filter.currency {
        cond = cond.add(Expr::col("currency").eq(c.as_str()));
    }
    if let Some(s) = filter.severity {
        cond = cond.add(Expr::col("severity").eq(s.as_str()));
    }
    let mut select = Query::select()
        .columns(ALERT_COLUMNS)
        .from(ALERTS)
        .cond_where(cond.clone())
        .to_owned();
    keel_kernel::store::paginate(&mut select, page);
    let rows = db.fetch_all(&select).await?;
    let total = match page.wants_total() {
        true => Some(count(db, ALERTS, cond).await?),
        false => None,
    };
    Ok((rows, total))
}

/// The active admins of the scope's organization (who forex alerts notify).
pub async fn admins(tx: &mut Tx, scope: &TenantScope) -> Result<Vec<Uuid>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Id {
        id: Uuid,
    }
    let rows: Vec<Id> = tx
        .fetch_all(
            &Query::select()
                .column("id")
                .from("users")
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("role").eq(keel_kernel::auth::access::ADMIN))
                .and_where(Expr::col("status").eq("active"))
                .and_where(Expr::col("partner_id").is_null())
                .order_by("id", Order::Asc)
                .to_owned(),
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}
