//! `/api/v1/trade/forex`: rates (admins record them; each readable at its own URL), the
//! latest per currency (cached five minutes per organization, dropped when a rate is
//! recorded), history and alerts.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use keel_kernel::audit::{self, AuditContext, Changes, NewEvent};
use keel_kernel::auth::Authorized;
use keel_kernel::cache::{CacheKey, Tag, TenantCache};
use keel_kernel::http::pagination::{PageParams, Paged, parse_instant};
use keel_kernel::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use keel_kernel::module::ModuleRouter;
use keel_kernel::state::AppState;
use keel_kernel::store::now;
use keel_kernel::tenancy::TenantScope;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::store::{self, Alert, AlertFilter, HistoryFilter, NewRate, Rate};
use super::{Severity, cache_error, classify, micros_problem, parse_micros};
use crate::TradeSettings;
use crate::perms::{ForexManage, ForexRead};
use crate::shipments::routes::both;

/// Rate-limit policies of these routes.
pub const CREATE_POLICY: &str = "trade.forex.create";
pub const LATEST_POLICY: &str = "trade.forex.latest";
pub const HISTORY_POLICY: &str = "trade.forex.history";

/// The notification type that tells admins of an alert.
pub const ALERT_NOTIFICATION: &str = "trade.forex_alert";

/// How long `latest` is cached.
pub const LATEST_TTL: Duration = Duration::from_secs(300);

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .limited(CREATE_POLICY, utoipa_axum::routes!(create_rate))
        .routes(utoipa_axum::routes!(get_rate))
        .limited(LATEST_POLICY, utoipa_axum::routes!(latest))
        .limited(HISTORY_POLICY, utoipa_axum::routes!(history))
        .routes(utoipa_axum::routes!(alerts))
}

/// The rate-limit policies: create 10, latest 60, history 30 per minute.
pub fn policies() -> Vec<keel_kernel::limits::Policy> {
    use keel_kernel::limits::{FailMode, KeyKind, Policy};
    let minute = Duration::from_secs(60);
    vec![
        Policy::new(CREATE_POLICY, 10, minute, KeyKind::Org, FailMode::Local),
        Policy::new(LATEST_POLICY, 60, minute, KeyKind::User, FailMode::Local),
        Policy::new(HISTORY_POLICY, 30, minute, KeyKind::User, FailMode::Local),
    ]
}

/// The notification sent to every admin when a rate change raises an alert.
pub fn notification_types() -> Vec<keel_kernel::notify::NotificationType> {
    vec![
        keel_kernel::notify::NotificationType::new(
            ALERT_NOTIFICATION,
            "{{ currency }}/INR moved {{ change_percent }} %{% if anomaly %} (anomaly){% endif %}",
            "The {{ currency }} rate changed from {{ previous_rate }} to {{ rate }} INR ({{ change_percent }} %, {{ severity }}).{% if anomaly %} A change above 10 % is flagged as an anomaly: check the rate before using it.{% endif %}",
        )
        .description("A forex rate changed by more than 3 % from the previous rate"),
    ]
}

/// The latest rates as cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Latest {
    /// Always `INR`: every rate is rupees per unit of its currency.
    pub base: String,
    /// The newest rate (by effective time) of each currency with a rate, by currency.
    pub rates: Vec<Rate>,
    /// When these figures were read.
    pub as_of: DateTime<Utc>,
}

fn latest_cache(state: &AppState) -> Result<TenantCache<Latest>, ApiError> {
    state
        .cache
        .tenant::<Latest>("trade.forex.latest", LATEST_TTL)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("{e}")))
}

fn latest_key(scope: &TenantScope) -> CacheKey {
    CacheKey::org(scope, &["latest"])
}

/// Normalises a currency code and checks it is one of the configured currencies.
pub fn supported_currency(
    settings: &TradeSettings,
    errors: &mut Vec<FieldError>,
    field: &str,
    raw: &str,
) -> Option<String> {
    let code = raw.trim().to_ascii_uppercase();
    if settings.currencies.contains(&code) {
        Some(code)
    } else {
        errors.push(FieldError::new(
            field,
            format!(
                "must be one of the supported currencies: {}",
                settings.currencies.join(", ")
            ),
        ));
        None
    }
}

/// A rate to record.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateInput {
    /// ISO 4217, one of the supported currencies (case-insensitive; INR is the base).
    #[serde(default)]
    pub currency: String,
    /// Rupees per unit as a decimal string, greater than 0, below 1,000,000, at most 6
    /// decimals: `"83.2512"`.
    #[serde(default)]
    #[schema(value_type = String)]
    pub rate: Value,
    /// Optional buying rate (decimal string), at most `rate`.
    #[schema(value_type = Option<String>)]
    pub buy: Option<Value>,
    /// Optional selling rate (decimal string), at least `rate`.
    #[schema(value_type = Option<String>)]
    pub sell: Option<Value>,
    /// When it takes effect: RFC 3339 with an offset (`2025-03-31T22:00:00-05:00`) or a date
    /// (midnight UTC); default now. Not in the future.
    pub effective_at: Option<String>,
}

fn decimal(errors: &mut Vec<FieldError>, field: &str, raw: Option<&Value>) -> Option<i64> {
    match raw? {
        Value::Null => None,
        Value::String(s) => parse_micros(s).or_else(|| {
            errors.push(FieldError::new(field, micros_problem(s)));
            None
        }),
        _ => {
            errors.push(FieldError::new(
                field,
                "must be a decimal string such as \"83.2512\" (numbers are refused: they may not be exact)",
            ));
            None
        }
    }
}

impl RateInput {
    /// Validates every field, naming each bad one.
    fn validate(&self, settings: &TradeSettings) -> Result<NewRate, ApiError> {
        let mut errors = Vec::new();
        let currency = supported_currency(settings, &mut errors, "currency", &self.currency);
        let rate = match &self.rate {
            Value::Null => {
                errors.push(FieldError::new("rate", "is required"));
                None
            }
            v => decimal(&mut errors, "rate", Some(v)),
        };
        let buy = decimal(&mut errors, "buy", self.buy.as_ref());
        let sell = decimal(&mut errors, "sell", self.sell.as_ref());
        if let Some(r) = rate {
            if buy.is_some_and(|b| b > r) {
                errors.push(FieldError::new("buy", "must not exceed rate"));
            }
            if sell.is_some_and(|s| s < r) {
                errors.push(FieldError::new("sell", "must not be below rate"));
            }
        }
        let current = now();
        // `Some(None)`: valid, and effective when recorded.
        let effective_at = match self.effective_at.as_deref().map(str::trim) {
            None | Some("") => Some(None),
            Some(raw) => match parse_instant(raw) {
                Some(t) if t > current + chrono::Duration::seconds(60) => {
                    errors.push(FieldError::new("effective_at", "must not be in the future"));
                    None
                }
                Some(t) if chrono::Datelike::year(&t) < 2000 => {
                    errors.push(FieldError::new("effective_at", "must be in 2000 or later"));
                    None
                }
                Some(t) => Some(Some(t.trunc_subsecs_micros())),
                None => {
                    errors.push(FieldError::new(
                        "effective_at",
                        "must be an RFC 3339 time with an offset (2025-03-31T22:00:00-05:00) or a date YYYY-MM-DD",
                    ));
                    None
                }
            },
        };
        match (currency, rate, effective_at) {
            (Some(currency), Some(rate_micros), Some(effective_at)) if errors.is_empty() => {
                Ok(NewRate {
                    currency,
                    rate_micros,
                    buy_micros: buy,
                    sell_micros: sell,
                    effective_at,
                })
            }
            _ => Err(ApiError::validation(errors)),
        }
    }
}

trait TruncMicros {
    fn trunc_subsecs_micros(self) -> Self;
}

impl TruncMicros for DateTime<Utc> {
    fn trunc_subsecs_micros(self) -> Self {
        chrono::SubsecRound::trunc_subsecs(self, 6)
    }
}

/// A recorded rate and the alert it raised, if any.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RateCreated {
    #[serde(flatten)]
    pub rate: Rate,
    /// Set when the change from the previous rate is above 3 %.
    pub alert: Option<Alert>,
}

/// Records a rate against INR (admins): 201 with `Location: /api/v1/trade/forex/rates/{id}`.
/// A change of more than 3 % from the rate in force before its effective time raises an
/// alert, notified to the organization's admins. A back-dated rate is compared with the rate
/// in force before its date (not with the newest one); rates of one currency recorded at once
/// are compared one after the other.
#[utoipa::path(post, path = "/api/v1/trade/forex/rates", tag = "trade",
    security(("bearer" = ["trade.forex.manage"])),
    request_body = RateInput,
    responses((status = 201, body = RateCreated, headers(("Location" = String, description = "The rate's URL"))), (status = 403, description = "Not an admin"),
        (status = 422, description = "Invalid fields"), (status = 429, description = "More than 10 rates a minute")))]
pub async fn create_rate(
    State(state): State<AppState>,
    auth: Authorized<ForexManage>,
    ctx: AuditContext,
    Json(body): Json<RateInput>,
) -> ApiResult<Response> {
    let settings = TradeSettings::of(&state);
    let input = body.validate(&settings)?;
    let scope = &auth.scope();
    let (state_ref, ctx, input) = (&state, &ctx, &input);
    let created = crate::dashboard::write(&state, scope, |tx| {
        Box::pin(async move {
            // Rates of one currency are recorded one after the other: two at once
            // would otherwise both be compared with the same previous rate.
            store::lock_series(tx, scope, &input.currency).await?;
            let rate = store::insert(tx, scope, input, crate::actor_id(scope)).await?;
            let previous = store::previous(tx, scope, &rate).await?;
            let mut alert = None;
            if let Some(prev) = &previous
                && let Some((severity, anomaly)) = classify(prev.rate_micros, rate.rate_micros)
            {
                let row = store::insert_alert(tx, scope, prev, &rate, severity, anomaly).await?;
                alert = Some(Alert::from(row));
            }
            let shown = Rate::from(rate.clone());
            audit::record(
                tx,
                scope,
                ctx,
                NewEvent::new(
                    "trade.forex.rate_created",
                    "trade.forex_rate",
                    Some(rate.id),
                )
                .changes(Changes::created(&shown, &[])),
            )
            .await?;
            if let Some(a) = &alert {
                let data = json!({
                    "alert_id": a.id,
                    "currency": a.currency,
                    "previous_rate": a.previous_rate,
                    "rate": a.rate,
                    "change_percent": a.change_percent,
                    "severity": a.severity,
                    "anomaly": a.anomaly,
                });
                for admin in store::admins(tx, scope).await? {
                    keel_kernel::notify::send(
                        state_ref,
                        tx,
                        scope,
                        admin,
                        ALERT_NOTIFICATION,
                        data.clone(),
                    )
                    .await?;
                }
                audit::record(
                    tx,
                    scope,
                    ctx,
                    NewEvent::new("trade.forex.alert", "trade.forex_alert", Some(a.id))
                        .details(data),
                )
                .await?;
            }
            Ok::<_, ApiError>(RateCreated { rate: shown, alert })
        })
    })
    .await?;
    latest_cache(&state)?.invalidate(&latest_key(scope)).await;
    let location = format!("/api/v1/trade/forex/rates/{}", created.rate.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

/// Reads a recorded rate.
#[utoipa::path(get, path = "/api/v1/trade/forex/rates/{id}", tag = "trade",
    security(("bearer" = ["trade.forex.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Rate), (status = 404, description = "No such rate in this organization")))]
pub async fn get_rate(
    State(state): State<AppState>,
    auth: Authorized<ForexRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Rate>> {
    let row = store::get_rate(&state.db, &auth.scope(), id).await?;
    Ok(Json(Rate::from(row)))
}

/// The newest rate of each currency (cached up to five minutes; recording a rate refreshes
/// it at once).
#[utoipa::path(get, path = "/api/v1/trade/forex/latest", tag = "trade",
    security(("bearer" = ["trade.forex.read"])),
    responses((status = 200, body = Latest), (status = 429, description = "More than 60 requests a minute")))]
pub async fn latest(
    State(state): State<AppState>,
    auth: Authorized<ForexRead>,
) -> ApiResult<Json<Latest>> {
    let scope = auth.scope();
    let cache = latest_cache(&state)?;
    let db = state.db.clone();
    let value = cache
        .get_or_load(
            &latest_key(&scope),
            &[Tag::org(&scope, "forex")],
            || async {
                let rows = store::latest(&db, &scope).await?;
                Ok::<_, keel_kernel::store::StoreError>(Latest {
                    base: "INR".into(),
                    rates: rows.into_iter().map(Rate::from).collect(),
                    as_of: now(),
                })
            },
        )
        .await
        .map_err(cache_error)?;
    Ok(Json(value))
}

#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// One of the supported currencies (case-insensitive); all when absent.
    pub currency: Option<String>,
    /// Effective at or after (RFC 3339 or a date, midnight UTC).
    pub from: Option<String>,
    /// Effective strictly before (RFC 3339 or a date, midnight UTC).
    pub to: Option<String>,
}

/// An optional instant query parameter.
fn instant(errors: &mut Vec<FieldError>, field: &str, raw: Option<&str>) -> Option<DateTime<Utc>> {
    let raw = raw.map(str::trim).filter(|r| !r.is_empty())?;
    parse_instant(raw).or_else(|| {
        errors.push(FieldError::new(
            field,
            "must be an RFC 3339 time with an offset or a date YYYY-MM-DD",
        ));
        None
    })
}

impl HistoryQuery {
    fn filter(&self, settings: &TradeSettings) -> Result<HistoryFilter, ApiError> {
        let mut errors = Vec::new();
        let currency = self
            .currency
            .as_deref()
            .filter(|c| !c.trim().is_empty())
            .and_then(|c| supported_currency(settings, &mut errors, "currency", c));
        let from = instant(&mut errors, "from", self.from.as_deref());
        let to = instant(&mut errors, "to", self.to.as_deref());
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            errors.push(FieldError::new("to", "must be after from"));
        }
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        Ok(HistoryFilter { currency, from, to })
    }
}

/// Recorded rates, newest effective first by default; `from` and `to` bound the effective
/// time as `[from, to)`.
#[utoipa::path(get, path = "/api/v1/trade/forex/history", tag = "trade",
    security(("bearer" = ["trade.forex.read"])),
    params(HistoryQuery, PageParams),
    responses((status = 200, body = Paged<Rate>), (status = 422, description = "Invalid filter or page"),
        (status = 429, description = "More than 30 requests a minute")))]
pub async fn history(
    State(state): State<AppState>,
    auth: Authorized<ForexRead>,
    Query(query): Query<HistoryQuery>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Rate>>> {
    let settings = TradeSettings::of(&state);
    let (page, filter) = both(
        page.resolve(&["effective_at"], "-effective_at"),
        query.filter(&settings),
    )?;
    let (rows, total) = store::history(&state.db, &auth.scope(), &filter, &page).await?;
    let rows: Vec<Rate> = rows.into_iter().map(Rate::from).collect();
    Ok(Json(Paged::from_rows(rows, &page, total)))
}

#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// One of the supported currencies (case-insensitive).
    pub currency: Option<String>,
    /// `medium` or `high`.
    pub severity: Option<String>,
}

/// Alerts raised by rate changes, newest first by default.
#[utoipa::path(get, path = "/api/v1/trade/forex/alerts", tag = "trade",
    security(("bearer" = ["trade.forex.read"])),
    params(AlertQuery, PageParams),
    responses((status = 200, body = Paged<Alert>), (status = 422, description = "Invalid filter or page")))]
pub async fn alerts(
    State(state): State<AppState>,
    auth: Authorized<ForexRead>,
    Query(query): Query<AlertQuery>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Alert>>> {
    let settings = TradeSettings::of(&state);
    let filter = {
        let mut errors = Vec::new();
        let currency = query
            .currency
            .as_deref()
            .filter(|c| !c.trim().is_empty())
            .and_then(|c| supported_currency(&settings, &mut errors, "currency", c));
        let severity = query.severity.as_deref().and_then(|s| {
            Severity::parse(s.trim()).or_else(|| {
                errors.push(FieldError::new("severity", "must be medium or high"));
                None
            })
        });
        if errors.is_empty() {
            Ok(AlertFilter { currency, severity })
        } else {
            Err(ApiError::validation(errors))
        }
    };
    let (page, filter) = both(page.resolve(&["created_at"], "-created_at"), filter)?;
    let (rows, total) = store::alerts(&state.db, &auth.scope(), &filter, &page).await?;
    let rows: Vec<Alert> = rows.into_iter().map(Alert::from).collect();
    Ok(Json(Paged::from_rows(rows, &page, total)))
}
