//! `GET /api/v1/trade/gst/summary?year=&month=`: the month's exports for the GST return.
//!
//! The month is the half-open range of shipping bill dates `[first day, first day of the next
//! month)`, compared as dates (never a string prefix). Only shipments that went ahead count
//! as exports (`booked`, `in_transit`, `delivered`): drafts, cancelled and deleted shipments
//! are left out. Each shipment is converted to INR at the rate in force on its shipping bill
//! date: the latest rate of its currency effective before the end of that day (UTC), so a
//! rate effective `2025-03-31T22:00:00-05:00` (April 1st, 03:00 UTC) applies from April 1st.
//! Each conversion is rounded half up to the paisa. Shipments whose currency has no rate in
//! force then are counted but listed as `unconverted` and left out of the INR figures.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use keel_kernel::auth::Authorized;
use keel_kernel::http::{ApiError, ApiResult, FieldError, Json, Query};
use keel_kernel::module::ModuleRouter;
use keel_kernel::state::AppState;
use keel_kernel::tenancy::TenantScope;
use sea_query::{Expr, ExprTrait, Order};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::forex::store::{RateRow, in_force_during};
use crate::perms::ReportsRead;
use crate::shipments::Status;
use crate::shipments::store::{TABLE as SHIPMENTS, visible};

pub fn router() -> ModuleRouter {
    ModuleRouter::new().routes(utoipa_axum::routes!(summary))
}

/// Totals of a set of shipments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Bucket {
    pub shipments: u64,
    /// Shipments converted to INR (those with a rate in force).
    pub converted_shipments: u64,
    /// Shipments without a rate in force (listed in `unconverted`).
    pub unconverted_shipments: u64,
    /// The converted shipments' value in paise.
    pub inr_minor: i64,
    /// Per invoice currency, by currency code.
    pub by_currency: Vec<CurrencyTotal>,
}

/// One currency's share of a bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CurrencyTotal {
    /// ISO 4217.
    pub currency: String,
    pub shipments: u64,
    /// Invoice values in minor units of `currency` (all shipments, converted or not).
    pub value_minor: i64,
    /// The converted shipments' value in paise.
    pub inr_minor: i64,
    pub unconverted_shipments: u64,
}

/// Split by export type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ByExportType {
    /// Exports with payment of IGST.
    pub with_payment: Bucket,
    /// Exports under a letter of undertaking (no IGST).
    pub lut: Bucket,
}

/// Split by e-BRC realisation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ByEbrc {
    /// e-BRC status `realized`.
    pub realized: Bucket,
    /// Any other e-BRC status (`pending`, `filed`, `overdue`).
    pub pending: Bucket,
}

/// A shipment with no rate in force on its shipping bill date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Unconverted {
    pub id: Uuid,
    pub reference: String,
    pub currency: String,
    pub invoice_value_minor: i64,
    pub shipping_bill_date: NaiveDate,
    pub export_type: String,
    pub ebrc_status: String,
}

/// A month's exports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    pub year: i32,
    pub month: u32,
    /// First shipping bill date included.
    pub from: NaiveDate,
    /// First shipping bill date after the month (excluded).
    pub to: NaiveDate,
    pub total: Bucket,
    pub by_export_type: ByExportType,
    pub by_ebrc: ByEbrc,
    /// Shipments left out of the INR figures, by shipping bill date.
    pub unconverted: Vec<Unconverted>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
struct Row {
    id: Uuid,
    reference: String,
    currency: String,
    invoice_value_minor: i64,
    shipping_bill_date: NaiveDate,
    export_type: String,
    ebrc_status: String,
}

/// `[first day, first day of next month)` of a month.
pub fn month_range(year: i32, month: u32) -> Option<(NaiveDate, NaiveDate)> {
    let from = NaiveDate::from_ymd_opt(year, month, 1)?;
    let to = if month == 12 {
        NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)?
    };
    Some((from, to))
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// `value_minor` (in minor units of a currency with `digits` decimals) at `rate_micros`
/// rupees per unit, in paise, rounded half up.
pub fn to_paise(value_minor: i64, rate_micros: i64, digits: u32) -> i128 {
    let num = i128::from(value_minor) * i128::from(rate_micros) * 100;
    let den = 1_000_000i128 * 10i128.pow(digits);
    (num * 2 + den) / (den * 2)
}

#[derive(Default)]
struct Acc {
    shipments: u64,
    converted: u64,
    inr: i128,
    currencies: BTreeMap<String, (u64, i128, i128, u64)>,
}

impl Acc {
    fn add(&mut self, row: &Row, paise: Option<i128>) {
        self.shipments += 1;
        let c = self.currencies.entry(row.currency.clone()).or_default();
        c.0 += 1;
        c.1 += i128::from(row.invoice_value_minor);
        match paise {
            Some(p) => {
                self.converted += 1;
                self.inr += p;
                c.2 += p;
            }
            None => c.3 += 1,
        }
    }

    fn bucket(self) -> Result<Bucket, ApiError> {
        let fit = |v: i128| {
            i64::try_from(v).map_err(|_| {
                ApiError::conflict("the month's totals exceed what can be reported in minor units")
            })
        };
        Ok(Bucket {
            shipments: self.shipments,
            converted_shipments: self.converted,
            unconverted_shipments: self.shipments - self.converted,
            inr_minor: fit(self.inr)?,
            by_currency: self
                .currencies
                .into_iter()
                .map(|(currency, (n, value, inr, unconverted))| {
                    Ok(CurrencyTotal {
                        currency,
                        shipments: n,
                        value_minor: fit(value)?,
                        inr_minor: fit(inr)?,
                        unconverted_shipments: unconverted,
                    })
                })
                .collect::<Result<_, ApiError>>()?,
        })
    }
}

/// The rate in force at the end of `date` (UTC) among `rates` (oldest first).
fn rate_on(rates: &[RateRow], date: NaiveDate) -> Option<i64> {
    let end = midnight(date.succ_opt()?);
    let n = rates.partition_point(|r| r.effective_at < end);
    n.checked_sub(1).map(|i| rates[i].rate_micros)
}

/// The summary of a month (also the dashboard's month figures).
pub async fn compute(
    state: &AppState,
    scope: &TenantScope,
    year: i32,
    month: u32,
) -> Result<Summary, ApiError> {
    let (from, to) =
        month_range(year, month).ok_or_else(|| ApiError::invalid_field("month", "not a month"))?;
    let rows: Vec<Row> = state
        .db
        .fetch_all(
            &sea_query::Query::select()
                .columns([
                    "id",
                    "reference",
                    "currency",
                    "invoice_value_minor",
                    "shipping_bill_date",
                    "export_type",
                    "ebrc_status",
                ])
                .from(SHIPMENTS)
                .cond_where(
                    visible(scope)
                        .add(Expr::col("shipping_bill_date").gte(from))
                        .add(Expr::col("shipping_bill_date").lt(to))
                        .add(Expr::col("status").is_in(Status::exported())),
                )
                .order_by("shipping_bill_date", Order::Asc)
                .order_by("id", Order::Asc)
                .to_owned(),
        )
        .await?;
    let mut rates: HashMap<String, Vec<RateRow>> = HashMap::new();
    for row in &rows {
        if row.currency != "INR" && !rates.contains_key(&row.currency) {
            let r = in_force_during(
                &state.db,
                scope,
                &row.currency,
                midnight(from),
                midnight(to),
            )
            .await?;
            rates.insert(row.currency.clone(), r);
        }
    }
    let (mut total, mut with_payment, mut lut, mut realized, mut pending) = (
        Acc::default(),
        Acc::default(),
        Acc::default(),
        Acc::default(),
        Acc::default(),
    );
    let mut unconverted = Vec::new();
    for row in &rows {
        let rate = if row.currency == "INR" {
            Some(1_000_000)
        } else {
            rates
                .get(&row.currency)
                .and_then(|r| rate_on(r, row.shipping_bill_date))
        };
        let paise = rate.map(|r| {
            to_paise(
                row.invoice_value_minor,
                r,
                keel_kernel::money::minor_digits(&row.currency),
            )
        });
        total.add(row, paise);
        match row.export_type.as_str() {
            "with_payment" => with_payment.add(row, paise),
            _ => lut.add(row, paise),
        }
        match row.ebrc_status.as_str() {
            "realized" => realized.add(row, paise),
            _ => pending.add(row, paise),
        }
        if paise.is_none() {
            unconverted.push(Unconverted {
                id: row.id,
                reference: row.reference.clone(),
                currency: row.currency.clone(),
                invoice_value_minor: row.invoice_value_minor,
                shipping_bill_date: row.shipping_bill_date,
                export_type: row.export_type.clone(),
                ebrc_status: row.ebrc_status.clone(),
            });
        }
    }
    Ok(Summary {
        year,
        month,
        from,
        to,
        total: total.bucket()?,
        by_export_type: ByExportType {
            with_payment: with_payment.bucket()?,
            lut: lut.bucket()?,
        },
        by_ebrc: ByEbrc {
            realized: realized.bucket()?,
            pending: pending.bucket()?,
        },
        unconverted,
    })
}

#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// 2000–2100.
    #[param(value_type = i32)]
    pub year: Option<String>,
    /// 1–12.
    #[param(value_type = u32)]
    pub month: Option<String>,
}

impl SummaryQuery {
    fn validate(&self) -> Result<(i32, u32), ApiError> {
        let mut errors = Vec::new();
        let year = match self.year.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push(FieldError::new("year", "is required"));
                None
            }
            Some(y) => y
                .parse::<i32>()
                .ok()
                .filter(|y| (2000..=2100).contains(y))
                .or_else(|| {
                    errors.push(FieldError::new("year", "must be a year from 2000 to 2100"));
                    None
                }),
        };
        let month = match self.month.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push(FieldError::new("month", "is required"));
                None
            }
            Some(m) => m
                .parse::<u32>()
                .ok()
                .filter(|m| (1..=12).contains(m))
                .or_else(|| {
                    errors.push(FieldError::new("month", "must be a month from 1 to 12"));
                    None
                }),
        };
        match (year, month) {
            (Some(y), Some(m)) => Ok((y, m)),
            _ => Err(ApiError::validation(errors)),
        }
    }
}

/// A month's exports by currency and in INR, split by export type (with payment of IGST or
/// under LUT) and by e-BRC realisation; shipments without a rate in force are listed apart.
#[utoipa::path(get, path = "/api/v1/trade/gst/summary", tag = "trade",
    security(("bearer" = ["trade.reports.read"])),
    params(SummaryQuery),
    responses((status = 200, body = Summary), (status = 422, description = "Missing or invalid year or month")))]
pub async fn summary(
    State(state): State<AppState>,
    auth: Authorized<ReportsRead>,
    Query(query): Query<SummaryQuery>,
) -> ApiResult<Json<Summary>> {
    let (year, month) = query.validate()?;
    Ok(Json(compute(&state, &auth.scope(), year, month).await?))
}

/// The current UTC month.
pub fn this_month(now: DateTime<Utc>) -> (i32, u32) {
    (now.year(), now.month())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_half_open() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("date");
        assert_eq!(month_range(2025, 3), Some((d(2025, 3, 1), d(2025, 4, 1))));
        assert_eq!(month_range(2025, 12), Some((d(2025, 12, 1), d(2026, 1, 1))));
        assert_eq!(month_range(2025, 13), None);
    }

    #[test]
    fn conversions_round_half_up_to_the_paisa() {
        // 100.00 USD at 83.2512 = 8325.12 INR.
        assert_eq!(to_paise(10_000, 83_251_200, 2), 832_512);
        // 0.01 USD at 83.255 = 0.83255 INR → 0.83.
        assert_eq!(to_paise(1, 83_255_000, 2), 83);
        // 0.01 USD at 50.5 = 0.505 INR → 0.51 (half up).
        assert_eq!(to_paise(1, 50_500_000, 2), 51);
        // 1 JPY at 0.555 = 0.555 INR → 0.56 (half up).
        assert_eq!(to_paise(1, 555_000, 0), 56);
        // 1.000 KWD at 270.5 = 270.50 INR.
        assert_eq!(to_paise(1_000, 270_500_000, 3), 27_050);
    }
}
