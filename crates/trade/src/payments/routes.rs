//! `/api/v1/trade/shipments/{id}/payments` and `/api/v1/trade/payments`: record payments
//! received against a shipment (`Idempotency-Key` honoured by the kernel), list them (bank
//! details masked) and read one. A payment commits with `trade.payment.received` and, when
//! it realises the invoice value, with `trade.shipment.ebrc_realized`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, Utc};
use keel_kernel::audit::{self, AuditContext, Changes, NewEvent};
use keel_kernel::auth::Authorized;
use keel_kernel::http::pagination::{PageParams, Paged};
use keel_kernel::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use keel_kernel::module::ModuleRouter;
use keel_kernel::state::AppState;
use keel_kernel::store::{StoreError, Tx};
use keel_kernel::tenancy::TenantScope;
use sea_query::{Expr, ExprTrait};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::store::{self, NewPayment, Payment};
use crate::perms::{PaymentsRead, PaymentsWrite};
use crate::shipments::store as shipments;
use crate::shipments::tally::Tally;
use crate::shipments::{EbrcStatus, Status};

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(utoipa_axum::routes!(record_payment, list_shipment_payments))
        .routes(utoipa_axum::routes!(list_payments))
        .routes(utoipa_axum::routes!(get_payment))
}

/// The sortable fields of the lists; the first is the default (newest first).
pub const SORTS: [&str; 2] = ["created_at", "amount_minor"];

/// The largest payment accepted, in minor units (as for invoice values).
const MAX_MINOR: i64 = 1_000_000_000_000_000;

/// A payment received (its `Debug` masks the bank fields).
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentInput {
    /// In minor units of `currency`, greater than 0.
    pub amount_minor: i64,
    /// ISO 4217; must be the shipment's invoice currency.
    pub currency: String,
    /// `YYYY-MM-DD`, not in the future.
    pub received_on: String,
    /// Who sent it, 1–200 characters.
    pub remitter: String,
    /// The bank's reference for the credit, 1–64 characters (stored encrypted).
    pub bank_reference: String,
    /// The account credited: 4–34 letters and digits, spaces ignored (stored encrypted).
    pub account_number: String,
}

impl std::fmt::Debug for PaymentInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentInput")
            .field("amount_minor", &self.amount_minor)
            .field("currency", &self.currency)
            .field("received_on", &self.received_on)
            .field("remitter", &self.remitter)
            .field("bank_reference", &super::Masked(&self.bank_reference))
            .field("account_number", &super::Masked(&self.account_number))
            .finish()
    }
}

fn required_text(errors: &mut Vec<FieldError>, field: &str, raw: &str, max: usize) -> String {
    let v = raw.trim();
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            format!("must be 1–{max} characters, without control characters"),
        ));
    }
    v.to_string()
}

/// The latest calendar day anywhere (UTC+14): a payment dated today in any time zone is
/// accepted, a later one is in the future.
fn latest_today() -> NaiveDate {
    (Utc::now() + chrono::Duration::hours(14)).date_naive()
}

impl PaymentInput {
    /// Validates every field against the shipment, naming each bad one.
    fn validate(&self, invoice_currency: &str) -> Result<NewPayment, ApiError> {
        let mut errors = Vec::new();
        if self.amount_minor <= 0 || self.amount_minor > MAX_MINOR {
            errors.push(FieldError::new(
                "amount_minor",
                "must be greater than 0 and at most 10^15 minor units",
            ));
        }
        let currency = match keel_kernel::money::parse_currency(&self.currency) {
            None => {
                errors.push(FieldError::new(
                    "currency",
                    "must be an ISO 4217 currency code",
                ));
                String::new()
            }
            Some(c) if c != invoice_currency => {
                errors.push(FieldError::new(
                    "currency",
                    format!("must be the shipment's invoice currency, {invoice_currency}"),
                ));
                String::new()
            }
            Some(c) => c.to_string(),
        };
        let received_on = match NaiveDate::parse_from_str(self.received_on.trim(), "%Y-%m-%d") {
            Ok(d) if d > latest_today() => {
                errors.push(FieldError::new("received_on", "must not be in the future"));
                None
            }
            Ok(d) if chrono::Datelike::year(&d) < 2000 => {
                errors.push(FieldError::new("received_on", "must be in 2000 or later"));
                None
            }
            Ok(d) => Some(d),
            Err(_) => {
                errors.push(FieldError::new("received_on", "must be a date YYYY-MM-DD"));
                None
            }
        };
        let remitter = required_text(&mut errors, "remitter", &self.remitter, 200);
        let bank_reference = required_text(&mut errors, "bank_reference", &self.bank_reference, 64);
        let account_number: String = self
            .account_number
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if !(4..=34).contains(&account_number.len())
            || !account_number.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            errors.push(FieldError::new(
                "account_number",
                "must be 4–34 letters and digits",
            ));
        }
        match received_on {
            Some(received_on) if errors.is_empty() => Ok(NewPayment {
                amount_minor: self.amount_minor,
                currency,
                received_on,
                remitter,
                bank_reference,
                account_number,
            }),
            _ => Err(ApiError::validation(errors)),
        }
    }
}

/// Takes the shipment's row lock for the rest of the transaction (SQLite's writers are
/// serialized already): two payments of one shipment then sum and move its e-BRC status one
/// after the other. False when there is no such live shipment.
async fn lock_shipment(tx: &mut Tx, scope: &TenantScope, id: Uuid) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &sea_query::Query::update()
                .table(shipments::TABLE)
                .value("version", Expr::col("version"))
                .cond_where(shipments::visible(scope).add(Expr::col("id").eq(id)))
                .to_owned(),
        )
        .await?
        > 0)
}

/// Records a payment received against a shipment. Send `Idempotency-Key` to make a retry
/// safe: the same key and body answer the first payment again. When the shipment's payments
/// reach its invoice value, its e-BRC status becomes `realized`.
#[utoipa::path(post, path = "/api/v1/trade/shipments/{id}/payments", tag = "trade",
    security(("bearer" = ["trade.payments.write"])),
    params(("id" = Uuid, Path, description = "The shipment"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry answer the first payment")),
    request_body = PaymentInput,
    responses((status = 201, body = Payment),
        (status = 404, description = "No such shipment"),
        (status = 409, description = "The shipment is a draft or cancelled, or a request with this Idempotency-Key is in progress"),
        (status = 422, description = "Invalid fields (a currency other than the invoice's, a future date, …), or an Idempotency-Key reused with another body")))]
pub async fn record_payment(
    State(state): State<AppState>,
    auth: Authorized<PaymentsWrite>,
    ctx: AuditContext,
    Path(shipment_id): Path<Uuid>,
    Json(body): Json<PaymentInput>,
) -> ApiResult<Response> {
    let (state, scope, ctx, body) = (&state, &auth.scope(), &ctx, &body);
    let id = Uuid::now_v7();
    let payment = crate::dashboard::write(state, scope, |tx| {
        Box::pin(async move {
            if !lock_shipment(tx, scope, shipment_id).await? {
                return Err(ApiError::not_found());
            }
            let shipment = shipments::get(tx, scope, shipment_id).await?;
            let input = body.validate(&shipment.currency)?;
            let cell = Tally::of(&shipment)?;
            match cell.status {
                Status::Draft => {
                    return Err(ApiError::conflict(
                        "the shipment is a draft: it takes payments once booked",
                    )
                    .with_extra("current_status", cell.status.as_str()));
                }
                Status::Cancelled => {
                    return Err(ApiError::conflict(
                        "the shipment is cancelled: it takes no payments",
                    )
                    .with_extra("current_status", cell.status.as_str()));
                }
                Status::Booked | Status::InTransit | Status::Delivered => {}
            }
            store::insert(
                tx,
                state,
                scope,
                id,
                shipment_id,
                &input,
                crate::actor_id(scope),
            )
            .await?;
            let realized = store::sum_for_shipment(tx, scope, shipment_id).await?;
            let ebrc = if realized >= shipment.invoice_value_minor {
                EbrcStatus::Realized
            } else {
                cell.ebrc
            };
            if !shipments::set_state(
                tx,
                scope,
                &shipment,
                Tally::new(cell.status, ebrc),
                Some(realized),
            )
            .await?
            {
                // The row is locked: only a bug gets here.
                return Err(ApiError::internal(anyhow::anyhow!(
                    "shipment {shipment_id} changed under its lock"
                )));
            }
            let payment = store::get(tx, scope, id).await?.open(state, scope, false)?;
            audit::record(
                tx,
                scope,
                ctx,
                NewEvent::new("trade.payment.received", "trade.payment", Some(id))
                    .changes(Changes::created(
                        &payment,
                        &["bank_reference", "account_number"],
                    ))
                    .detail("shipment_id", shipment_id)
                    .detail("realized_minor", realized),
            )
            .await?;
            if ebrc == EbrcStatus::Realized && cell.ebrc != EbrcStatus::Realized {
                audit::record(
                    tx,
                    scope,
                    ctx,
                    NewEvent::new(
                        "trade.shipment.ebrc_realized",
                        "trade.shipment",
                        Some(shipment_id),
                    )
                    .changes(
                        Changes::new()
                            .field("ebrc_status", cell.ebrc.as_str(), ebrc.as_str())
                            .field("realized_minor", shipment.realized_minor, realized),
                    )
                    .detail("reference", &shipment.reference)
                    .detail("invoice_value_minor", shipment.invoice_value_minor)
                    .detail("currency", &shipment.currency)
                    .detail("payment_id", id),
                )
                .await?;
            }
            Ok::<_, ApiError>(payment)
        })
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/api/v1/trade/payments/{}", payment.id),
        )],
        Json(payment),
    )
        .into_response())
}

fn masked_page(
    state: &AppState,
    scope: &TenantScope,
    rows: Vec<store::Row>,
) -> Result<Vec<Payment>, ApiError> {
    rows.iter()
        .map(|r| r.open(state, scope, true).map_err(ApiError::from))
        .collect()
}

/// Lists a shipment's payments, newest first; bank reference and account number masked.
#[utoipa::path(get, path = "/api/v1/trade/shipments/{id}/payments", tag = "trade",
    security(("bearer" = ["trade.payments.read"])),
    params(("id" = Uuid, Path, description = "The shipment"), PageParams),
    responses((status = 200, body = Paged<Payment>), (status = 404, description = "No such shipment"),
        (status = 422, description = "Invalid page")))]
pub async fn list_shipment_payments(
    State(state): State<AppState>,
    auth: Authorized<PaymentsRead>,
    Path(shipment_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Payment>>> {
    let scope = auth.scope();
    let page = page.resolve(&SORTS, "-created_at")?;
    shipments::get_db(&state.db, &scope, shipment_id).await?;
    let (rows, total) = store::list(&state.db, &scope, Some(shipment_id), &page).await?;
    let payments = masked_page(&state, &scope, rows)?;
    Ok(Json(Paged::from_rows(payments, &page, total)))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PaymentQuery {
    /// Only this shipment's payments.
    pub shipment_id: Option<String>,
}

/// Lists the organization's payments, newest first; bank reference and account number
/// masked.
#[utoipa::path(get, path = "/api/v1/trade/payments", tag = "trade",
    security(("bearer" = ["trade.payments.read"])),
    params(PaymentQuery, PageParams),
    responses((status = 200, body = Paged<Payment>), (status = 422, description = "Invalid filter or page")))]
pub async fn list_payments(
    State(state): State<AppState>,
    auth: Authorized<PaymentsRead>,
    Query(query): Query<PaymentQuery>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Payment>>> {
    let scope = auth.scope();
    let shipment_id = match query.shipment_id.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => Uuid::parse_str(s)
            .map(Some)
            .map_err(|_| ApiError::invalid_field("shipment_id", "must be a UUID")),
    };
    let (page, shipment_id) =
        crate::shipments::routes::both(page.resolve(&SORTS, "-created_at"), shipment_id)?;
    let (rows, total) = store::list(&state.db, &scope, shipment_id, &page).await?;
    let payments = masked_page(&state, &scope, rows)?;
    Ok(Json(Paged::from_rows(payments, &page, total)))
}

/// Reads a payment, with its bank reference and account number in full.
#[utoipa::path(get, path = "/api/v1/trade/payments/{id}", tag = "trade",
    security(("bearer" = ["trade.payments.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Payment), (status = 404, description = "No such payment")))]
pub async fn get_payment(
    State(state): State<AppState>,
    auth: Authorized<PaymentsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Payment>> {
    let scope = auth.scope();
    let row = store::get_db(&state.db, &scope, id).await?;
    Ok(Json(row.open(&state, &scope, false)?))
}
