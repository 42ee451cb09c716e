//! `/api/v1/trade/shipments`. Every change commits with its audit event
//! (`trade.shipment.created|updated|deleted|status_changed|ebrc_changed`); status changes
//! reach the organization's realtime channel through the audit outbox.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use keel_kernel::audit::{self, AuditContext, Changes, NewEvent};
use keel_kernel::auth::Authorized;
use keel_kernel::http::concurrency::{expected_version, stale_for, version_of};
use keel_kernel::http::pagination::{CreatedRangeParams, PageParams, Paged};
use keel_kernel::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use keel_kernel::module::ModuleRouter;
use keel_kernel::state::AppState;
use keel_kernel::store::{StoreError, Tx};
use keel_kernel::tenancy::TenantScope;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::store::{self, Fields, Filter, HsCodes, Shipment};
use super::tally::Tally;
use super::{EXPORT_TYPES, EbrcStatus, Status};
use crate::codes;
use crate::perms::{ShipmentsRead, ShipmentsWrite};

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(utoipa_axum::routes!(list_shipments, create_shipment))
        .routes(utoipa_axum::routes!(
            get_shipment,
            update_shipment,
            delete_shipment
        ))
        .routes(utoipa_axum::routes!(transition_shipment))
        .routes(utoipa_axum::routes!(book))
        .routes(utoipa_axum::routes!(dispatch))
        .routes(utoipa_axum::routes!(deliver))
        .routes(utoipa_axum::routes!(cancel))
        .routes(utoipa_axum::routes!(set_ebrc))
}

pub use super::store::SORTS;

#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShipmentQuery {
    /// `draft`, `booked`, `in_transit`, `delivered` or `cancelled`.
    pub status: Option<String>,
    /// `pending`, `filed`, `realized` or `overdue`.
    pub ebrc_status: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub destination_country: Option<String>,
    /// Search in reference and buyer name (at least 2 characters). Totals above 10,000 are
    /// reported as 10,000 with `total_exact: false`.
    pub q: Option<String>,
}

impl ShipmentQuery {
    /// Validates every filter, naming each bad one.
    pub fn filter(&self, range: &CreatedRangeParams) -> Result<Filter, ApiError> {
        let mut errors = Vec::new();
        let status = self.status.as_deref().and_then(|s| {
            Status::parse(s).or_else(|| {
                errors.push(FieldError::new(
                    "status",
                    "must be one of draft, booked, in_transit, delivered, cancelled",
                ));
                None
            })
        });
        let ebrc_status = self.ebrc_status.as_deref().and_then(|s| {
            EbrcStatus::parse(s).or_else(|| {
                errors.push(FieldError::new(
                    "ebrc_status",
                    "must be one of pending, filed, realized, overdue",
                ));
                None
            })
        });
        let destination_country = self.destination_country.as_deref().and_then(|c| {
            codes::country(c).or_else(|| {
                errors.push(FieldError::new(
                    "destination_country",
                    "must be an ISO 3166-1 alpha-2 country code (e.g. DE)",
                ));
                None
            })
        });
        let q = match self.q.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(q) if q.chars().count() < 2 || q.chars().count() > 100 => {
                errors.push(FieldError::new("q", "must be 2 to 100 characters"));
                None
            }
            Some(q) => Some(q.to_lowercase()),
        };
        let created = match range.resolve() {
            Ok(r) => Some(r),
            Err(e) => {
                errors.extend(e.problem.errors.iter().cloned());
                None
            }
        };
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        let created = created.unwrap_or_default();
        Ok(Filter {
            status,
            ebrc_status,
            destination_country,
            created_from: created.from,
            created_to: created.to,
            q,
        })
    }
}

/// Lists shipments, newest first by default (a partner user sees those of their partner).
/// The total is exact; under `q` it may be capped at 10,000 (`total_exact: false`).
#[utoipa::path(get, path = "/api/v1/trade/shipments", tag = "trade",
    security(("bearer" = ["trade.shipments.read"])),
    params(ShipmentQuery, CreatedRangeParams, PageParams),
    responses((status = 200, body = Paged<Shipment>), (status = 422, description = "Invalid filter or page")))]
pub async fn list_shipments(
    State(state): State<AppState>,
    auth: Authorized<ShipmentsRead>,
    Query(query): Query<ShipmentQuery>,
    Query(range): Query<CreatedRangeParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Shipment>>> {
    let (page, filter) = both(page.resolve(&SORTS, "-created_at"), query.filter(&range))?;
    let (rows, total) = store::list(&state.db, &auth.scope(), &filter, &page).await?;
    let mut paged = Paged::from_rows(rows, &page, total.map(|t| t.0));
    if let Some((_, exact)) = total {
        paged.pagination.total_exact = exact;
    }
    Ok(Json(paged))
}

/// Both results, or one validation problem naming the bad fields of both.
pub fn both<A, B>(a: Result<A, ApiError>, b: Result<B, ApiError>) -> Result<(A, B), ApiError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(mut e), Err(other)) if e.status == StatusCode::UNPROCESSABLE_ENTITY => {
            e.problem
                .errors
                .extend(other.problem.errors.iter().cloned());
            Err(e)
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// A shipment's editable fields.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipmentInput {
    /// Unique in the organization (case-insensitive): letters, digits, `-_/.`, 1–64.
    pub reference: String,
    /// The buyer as a business partner of the organization: the shipment takes the
    /// partner's name (`buyer_name` is then not used).
    pub buyer_partner_id: Option<Uuid>,
    /// Required without `buyer_partner_id`, 1–200 characters.
    pub buyer_name: Option<String>,
    /// ISO 3166-1 alpha-2. Required without `buyer_partner_id` (a partner record keeps no
    /// country, so it may be given with one too).
    pub buyer_country: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub destination_country: String,
    /// A UN/LOCODE: 2-letter country and 3 letters or digits (`INNSA`), any case.
    pub port_of_loading: Option<String>,
    /// A UN/LOCODE (`DEHAM`), any case.
    pub port_of_discharge: Option<String>,
    /// Incoterms 2020: EXW, FCA, CPT, CIP, DAP, DPU, DDP, FAS, FOB, CFR, CIF.
    pub incoterm: Option<String>,
    /// HS codes, 6–8 digits each (up to 20).
    #[serde(default)]
    pub hs_codes: Vec<String>,
    /// In minor units of `currency` (e.g. cents), greater than 0.
    pub invoice_value_minor: i64,
    /// ISO 4217.
    pub currency: String,
    pub shipping_bill_number: Option<String>,
    /// `YYYY-MM-DD`.
    pub shipping_bill_date: Option<String>,
    /// `lut` (default) or `with_payment`.
    pub export_type: Option<String>,
    /// The version you read (or send `If-Match`); a stale one answers 409.
    pub version: Option<i64>,
}

/// The largest invoice value accepted, in minor units (10^15: ten trillion in a 2-digit
/// currency), far below what i64 sums overflow at.
const MAX_MINOR: i64 = 1_000_000_000_000_000;

fn text(
    errors: &mut Vec<FieldError>,
    field: &str,
    raw: Option<&str>,
    max: usize,
) -> Option<String> {
    let v = raw.map(str::trim).filter(|v| !v.is_empty())?;
    if v.chars().count() > max || v.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max} characters, without control characters"),
        ));
        return None;
    }
    Some(v.to_string())
}

impl ShipmentInput {
    /// Validates every field (naming each bad one) and resolves the buyer partner.
    async fn fields(&self, tx: &mut Tx, scope: &TenantScope) -> Result<Fields, ApiError> {
        let mut errors = Vec::new();
        let reference = self.reference.trim();
        if reference.is_empty()
            || reference.len() > 64
            || !reference
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_/.".contains(&b))
        {
            errors.push(FieldError::new(
                "reference",
                "must be 1–64 letters, digits or -_/.",
            ));
        }
        let country_of = |errors: &mut Vec<FieldError>, field: &str, raw: &str| {
            codes::country(raw).or_else(|| {
                errors.push(FieldError::new(
                    field,
                    "must be an ISO 3166-1 alpha-2 country code (e.g. DE)",
                ));
                None
            })
        };
        let given_country = self
            .buyer_country
            .as_deref()
            .filter(|c| !c.trim().is_empty());
        let buyer_country = given_country.and_then(|c| country_of(&mut errors, "buyer_country", c));
        // The buyer is a business partner of the organization (its record is the buyer's
        // name; the kernel's partner keeps no country, so one may be given), or a name and a
        // country given here.
        let buyer_name = match self.buyer_partner_id {
            Some(p) => match keel_kernel::partners::store::get(tx, scope, p).await {
                Ok(partner) => Some(partner.name),
                Err(StoreError::NotFound) => {
                    errors.push(FieldError::new(
                        "buyer_partner_id",
                        "no such business partner in this organization",
                    ));
                    None
                }
                Err(e) => return Err(e.into()),
            },
            None => {
                let name = text(&mut errors, "buyer_name", self.buyer_name.as_deref(), 200);
                if self
                    .buyer_name
                    .as_deref()
                    .is_none_or(|n| n.trim().is_empty())
                {
                    errors.push(FieldError::new(
                        "buyer_name",
                        "is required without buyer_partner_id",
                    ));
                }
                if given_country.is_none() {
                    errors.push(FieldError::new(
                        "buyer_country",
                        "is required without buyer_partner_id",
                    ));
                }
                name
            }
        };
        let destination_country = country_of(
            &mut errors,
            "destination_country",
            &self.destination_country,
        );
        let port = |errors: &mut Vec<FieldError>, field: &str, raw: Option<&str>| {
            let raw = raw.map(str::trim).filter(|p| !p.is_empty())?;
            codes::locode(raw).or_else(|| {
                errors.push(FieldError::new(
                    field,
                    "must be a UN/LOCODE: a 2-letter country and 3 letters or digits (e.g. INNSA)",
                ));
                None
            })
        };
        let port_of_loading = port(
            &mut errors,
            "port_of_loading",
            self.port_of_loading.as_deref(),
        );
        let port_of_discharge = port(
            &mut errors,
            "port_of_discharge",
            self.port_of_discharge.as_deref(),
        );
        let incoterm = self.incoterm.as_deref().and_then(|i| {
            codes::incoterm(i).map(str::to_string).or_else(|| {
                errors.push(FieldError::new(
                    "incoterm",
                    format!(
                        "must be an Incoterms 2020 rule: {}",
                        codes::INCOTERMS.join(", ")
                    ),
                ));
                None
            })
        });
        let mut hs = Vec::new();
        if self.hs_codes.len() > 20 {
            errors.push(FieldError::new("hs_codes", "at most 20 codes"));
        }
        for (i, c) in self.hs_codes.iter().enumerate().take(20) {
            match codes::hs_code(c) {
                Some(c) if !hs.contains(&c) => hs.push(c),
                Some(_) => {}
                None => errors.push(FieldError::new(
                    format!("hs_codes[{i}]"),
                    "must be an HS code of 6 to 8 digits",
                )),
            }
        }
        if self.invoice_value_minor <= 0 || self.invoice_value_minor > MAX_MINOR {
            errors.push(FieldError::new(
                "invoice_value_minor",
                "must be greater than 0 and at most 10^15 minor units",
            ));
        }
        let currency = keel_kernel::money::parse_currency(&self.currency).or_else(|| {
            errors.push(FieldError::new(
                "currency",
                "must be an ISO 4217 currency code",
            ));
            None
        });
        let shipping_bill_number = self.shipping_bill_number.as_deref().and_then(|n| {
            let n = n.trim();
            if n.is_empty() {
                return None;
            }
            if n.len() > 20 || !n.bytes().all(|b| b.is_ascii_alphanumeric()) {
                errors.push(FieldError::new(
                    "shipping_bill_number",
                    "must be 1–20 letters or digits",
                ));
                return None;
            }
            Some(n.to_string())
        });
        let shipping_bill_date = self.shipping_bill_date.as_deref().and_then(|d| {
            NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d")
                .ok()
                .filter(|d| (2000..=2100).contains(&chrono::Datelike::year(d)))
                .or_else(|| {
                    errors.push(FieldError::new(
                        "shipping_bill_date",
                        "must be a date YYYY-MM-DD between 2000 and 2100",
                    ));
                    None
                })
        });
        let export_type = match self.export_type.as_deref().map(str::trim) {
            None | Some("") => "lut".to_string(),
            Some(t) if EXPORT_TYPES.contains(&t) => t.to_string(),
            Some(_) => {
                errors.push(FieldError::new(
                    "export_type",
                    "must be lut or with_payment",
                ));
                String::new()
            }
        };
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        match (buyer_name, destination_country, currency) {
            (Some(buyer_name), Some(destination_country), Some(currency)) => Ok(Fields {
                reference: reference.to_string(),
                buyer_partner_id: self.buyer_partner_id,
                buyer_name,
                buyer_country,
                destination_country,
                port_of_loading,
                port_of_discharge,
                incoterm,
                hs_codes: HsCodes(hs),
                invoice_value_minor: self.invoice_value_minor,
                currency: currency.to_string(),
                shipping_bill_number,
                shipping_bill_date,
                export_type,
            }),
            _ => Err(ApiError::validation(vec![FieldError::new(
                "buyer_name",
                "is required without buyer_partner_id",
            )])),
        }
    }
}

fn reference_taken(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { .. } => {
            ApiError::conflict("another shipment of this organization already has this reference")
                .with_errors(vec![FieldError::new("reference", "is already used")])
        }
        other => other.into(),
    }
}

fn location(s: &Shipment) -> [(header::HeaderName, String); 1] {
    [(
        header::LOCATION,
        format!("/api/v1/trade/shipments/{}", s.id),
    )]
}

/// Creates a draft shipment.
#[utoipa::path(post, path = "/api/v1/trade/shipments", tag = "trade",
    security(("bearer" = ["trade.shipments.write"])),
    request_body = ShipmentInput,
    responses((status = 201, body = Shipment), (status = 409, description = "Reference already used"), (status = 422, description = "Invalid fields")))]
pub async fn create_shipment(
    State(state): State<AppState>,
    auth: Authorized<ShipmentsWrite>,
    ctx: AuditContext,
    Json(body): Json<ShipmentInput>,
) -> ApiResult<Response> {
    let (scope, ctx, body) = (&auth.scope(), &ctx, &body);
    let shipment = crate::dashboard::write(&state, scope, |tx| {
        Box::pin(async move {
            let fields = body.fields(tx, scope).await?;
            let s = store::insert(tx, scope, &fields, crate::actor_id(scope))
                .await
                .map_err(reference_taken)?;
            audit::record(
                tx,
                scope,
                ctx,
                NewEvent::new("trade.shipment.created", "trade.shipment", Some(s.id))
                    .changes(Changes::created(&s, &[])),
            )
            .await?;
            Ok::<_, ApiError>(s)
        })
    })
    .await?;
    Ok((StatusCode::CREATED, location(&shipment), Json(shipment)).into_response())
}

/// Reads a shipment.
#[utoipa::path(get, path = "/api/v1/trade/shipments/{id}", tag = "trade",
    security(("bearer" = ["trade.shipments.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Shipment), (status = 404, description = "No such shipment")))]
pub async fn get_shipment(
    State(state): State<AppState>,
    auth: Authorized<ShipmentsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let s = store::get_db(&state.db, &auth.scope(), id).await?;
    Ok(([(header::ETAG, format!("\"{}\"", s.version))], Json(s)).into_response())
}

/// Changes a shipment's fields (`If-Match` or `version`). Cancelled and delivered shipments
/// are closed; the invoice value and currency are fixed once a payment is recorded.
#[utoipa::path(put, path = "/api/v1/trade/shipments/{id}", tag = "trade",
    security(("bearer" = ["trade.shipments.write"])),
    params(("id" = Uuid, Path)),
    request_body = ShipmentInput,
    responses((status = 200, body = Shipment), (status = 404, description = "No such shipment"),
        (status = 409, description = "Stale version, reference taken, or the shipment is closed"),
        (status = 412, description = "Stale If-Match"), (status = 422, description = "Invalid fields")))]
pub async fn update_shipment(
    State(state): State<AppState>,
    auth: Authorized<ShipmentsWrite>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<ShipmentInput>,
) -> ApiResult<Json<Shipment>> {
    let expected = expected_version(&headers, body.version)?;
    let (scope, ctx, body) = (&auth.scope(), &ctx, &body);
    let shipment = crate::dashboard::write(&state, scope, |tx| {
            Box::pin(async move {
                let before = store::get(tx, scope, id).await?;
                let fields = body.fields(tx, scope).await?;
                if matches!(before.status.as_str(), "cancelled" | "delivered") {
                    return Err(ApiError::conflict(format!(
                        "a {} shipment cannot be changed",
                        before.status
                    )));
                }
                if before.realized_minor > 0
                    && (fields.invoice_value_minor != before.invoice_value_minor
                        || fields.currency != before.currency)
                {
                    return Err(ApiError::conflict(
                        "payments are recorded against this shipment: its invoice value and currency are fixed",
                    ));
                }
                if !store::update(tx, scope, id, &fields, version_of(expected))
                    .await
                    .map_err(reference_taken)?
                {
                    return Err(stale_for(expected));
                }
                let after = store::get(tx, scope, id).await?;
                let diff = Changes::diff(&before, &after, &[]);
                if !diff.is_empty() {
                    audit::record(
                        tx,
                        scope,
                        ctx,
                        NewEvent::new("trade.shipment.updated", "trade.shipment", Some(id))
                            .changes(diff),
                    )
                    .await?;
                }
                Ok(after)
            })
        })
        .await?;
    Ok(Json(shipment))
}

/// Deletes a draft shipment (it stays in the audit trail; other states are cancelled instead).
#[utoipa::path(delete, path = "/api/v1/trade/shipments/{id}", tag = "trade",
    security(("bearer" = ["trade.shipments.write"])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such shipment"),
        (status = 409, description = "Not a draft")))]
pub async fn delete_shipment(
    State(state): State<AppState>,
    auth: Authorized<ShipmentsWrite>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let (scope, ctx) = (&auth.scope(), &ctx);
    crate::dashboard::write(&state, scope, |tx| {
        Box::pin(async move {
            let before = store::get(tx, scope, id).await?;
            if before.status != Status::Draft.as_str() {
                return Err(ApiError::conflict(format!(
                    "only draft shipments can be deleted; this one is {} (cancel it instead)",
                    before.status
                )));
            }
            if !store::soft_delete(tx, scope, &before).await? {
                return Err(ApiError::conflict("the shipment changed meanwhile; retry"));
            }
            audit::record(
                tx,
                scope,
                ctx,
                NewEvent::new("trade.shipment.deleted", "trade.shipment", Some(id))
                    .detail("reference", &before.reference),
            )
            .await?;
            Ok::<_, ApiError>(())
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionInput {
    /// The version you read (or send `If-Match`); a stale one answers 409.
    pub version: Option<i64>,
    /// Why (kept in the audit trail), up to 500 characters.
    pub reason: Option<String>,
}

/// The reason of a transition, trimmed (none when blank).
fn transition_reason(raw: Option<&str>) -> Result<Option<String>, FieldError> {
    match raw.map(str::trim) {
        Some(r) if r.chars().count() > 500 => {
            Err(FieldError::new("reason", "must be at most 500 characters"))
        }
        Some(r) if !r.is_empty() => Ok(Some(r.to_string())),
        _ => Ok(None),
    }
}

/// Moves a shipment to `to`; 409 names the moves allowed from where it is. Every route that
/// changes a shipment's status (`/transitions` and the per-action routes) comes here.
async fn transition(
    state: &AppState,
    scope: &TenantScope,
    ctx: &AuditContext,
    id: Uuid,
    headers: &HeaderMap,
    body: Option<TransitionInput>,
    to: Status,
) -> ApiResult<Json<Shipment>> {
    let body = body.unwrap_or_default();
    let expected = expected_version(headers, body.version)?;
    let reason =
        transition_reason(body.reason.as_deref()).map_err(|e| ApiError::validation(vec![e]))?;
    let (reason, expected) = (&reason, &expected);
    let shipment = crate::dashboard::write(state, scope, |tx| {
        Box::pin(async move {
            let before = store::get(tx, scope, id).await?;
            if let Some(v) = version_of(*expected)
                && v != before.version
            {
                return Err(stale_for(*expected));
            }
            let from = Tally::of(&before)?;
            if !from.status.can_move_to(to) {
                let allowed: Vec<&str> = from.status.next().iter().map(|s| s.as_str()).collect();
                return Err(ApiError::conflict(format!(
                    "a {} shipment cannot become {}; allowed: {}",
                    from.status.as_str(),
                    to.as_str(),
                    if allowed.is_empty() {
                        "none (it is closed)".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ))
                .with_extra("current_status", from.status.as_str())
                .with_extra("allowed", allowed));
            }
            if !store::set_state(tx, scope, &before, Tally::new(to, from.ebrc), None).await? {
                return Err(stale_for(*expected));
            }
            let after = store::get(tx, scope, id).await?;
            let mut event =
                NewEvent::new("trade.shipment.status_changed", "trade.shipment", Some(id))
                    .changes(Changes::diff(&before, &after, &[]))
                    .detail("reference", &after.reference)
                    .detail("from", from.status.as_str())
                    .detail("to", to.as_str());
            if let Some(r) = reason {
                event = event.detail("reason", r);
            }
            audit::record(tx, scope, ctx, event).await?;
            Ok::<_, ApiError>(after)
        })
    })
    .await?;
    Ok(Json(shipment))
}

macro_rules! transition_route {
    ($name:ident, $path:literal, $to:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "trade",
            security(("bearer" = ["trade.shipments.write"])),
            params(("id" = Uuid, Path)),
            request_body(content = Option<TransitionInput>, description = "Optional: version and reason"),
            responses((status = 200, body = Shipment), (status = 404, description = "No such shipment"),
                (status = 409, description = "Not allowed from the current status (the problem lists `allowed`), or a stale version"),
                (status = 412, description = "Stale If-Match")))]
        pub async fn $name(
            State(state): State<AppState>,
            auth: Authorized<ShipmentsWrite>,
            ctx: AuditContext,
            Path(id): Path<Uuid>,
            headers: HeaderMap,
            body: Option<Json<TransitionInput>>,
        ) -> ApiResult<Json<Shipment>> {
            transition(&state, &auth.scope(), &ctx, id, &headers, body.map(|b| b.0), $to).await
        }
    };
}

transition_route!(
    book,
    "/api/v1/trade/shipments/{id}/book",
    Status::Booked,
    "Books a draft shipment."
);
transition_route!(
    dispatch,
    "/api/v1/trade/shipments/{id}/dispatch",
    Status::InTransit,
    "Marks a booked shipment as in transit."
);
transition_route!(
    deliver,
    "/api/v1/trade/shipments/{id}/deliver",
    Status::Delivered,
    "Marks a shipment in transit as delivered."
);
transition_route!(
    cancel,
    "/api/v1/trade/shipments/{id}/cancel",
    Status::Cancelled,
    "Cancels a shipment that is not delivered yet."
);

/// A move along the lifecycle.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    /// The status to move to: `booked`, `in_transit`, `delivered` or `cancelled` (from
    /// `draft`, `booked`, `in_transit`, `delivered`, `cancelled`; a move the lifecycle does
    /// not allow answers 409 naming the allowed ones).
    pub to: String,
    /// The version you read (or send `If-Match`); a stale one answers 409.
    pub version: Option<i64>,
    /// Why (kept in the audit trail), up to 500 characters.
    pub reason: Option<String>,
}

/// Moves a shipment along its lifecycle: `draft → booked → in_transit → delivered`, or to
/// `cancelled` from any state before `delivered` (the same move as the per-action routes
/// `/book`, `/dispatch`, `/deliver` and `/cancel`).
#[utoipa::path(post, path = "/api/v1/trade/shipments/{id}/transitions", tag = "trade",
    security(("bearer" = ["trade.shipments.write"])),
    params(("id" = Uuid, Path)),
    request_body = TransitionRequest,
    responses((status = 200, body = Shipment), (status = 404, description = "No such shipment"),
        (status = 409, description = "Not allowed from the current status (the problem lists `current_status` and `allowed`), or a stale version"),
        (status = 412, description = "Stale If-Match"),
        (status = 422, description = "`to` is not a status, or `reason` is too long")))]
pub async fn transition_shipment(
    State(state): State<AppState>,
    auth: Authorized<ShipmentsWrite>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<TransitionRequest>,
) -> ApiResult<Json<Shipment>> {
    let mut errors = Vec::new();
    let to = Status::parse(body.to.trim()).or_else(|| {
        errors.push(FieldError::new(
            "to",
            "must be one of booked, in_transit, delivered, cancelled",
        ));
        None
    });
    if let Err(e) = transition_reason(body.reason.as_deref()) {
        errors.push(e);
    }
    let Some(to) = to.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let input = TransitionInput {
        version: body.version,
        reason: body.reason,
    };
    transition(&state, &auth.scope(), &ctx, id, &headers, Some(input), to).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EbrcInput {
    /// `filed` (the bank filed the e-BRC) or `pending` (undo). `realized` follows from
    /// payments and `overdue` from the shipping bill date.
    pub status: String,
    pub version: Option<i64>,
}

/// Records that the e-BRC was filed (or undoes it).
#[utoipa::path(post, path = "/api/v1/trade/shipments/{id}/ebrc", tag = "trade",
    security(("bearer" = ["trade.shipments.write"])),
    params(("id" = Uuid, Path)),
    request_body = EbrcInput,
    responses((status = 200, body = Shipment), (status = 404, description = "No such shipment"),
        (status = 409, description = "Already realized, a draft or cancelled shipment, or a stale version"), (status = 412, description = "Stale If-Match"),
        (status = 422, description = "Not filed or pending")))]
pub async fn set_ebrc(
    State(state): State<AppState>,
    auth: Authorized<ShipmentsWrite>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<EbrcInput>,
) -> ApiResult<Json<Shipment>> {
    let to = match EbrcStatus::parse(body.status.trim()) {
        Some(s @ (EbrcStatus::Filed | EbrcStatus::Pending)) => s,
        _ => {
            return Err(ApiError::invalid_field(
                "status",
                "must be filed or pending (realized follows from payments, overdue from the shipping bill date)",
            ));
        }
    };
    let expected = expected_version(&headers, body.version)?;
    let (scope, ctx, expected) = (&auth.scope(), &ctx, &expected);
    let shipment = crate::dashboard::write(&state, scope, |tx| {
        Box::pin(async move {
            let before = store::get(tx, scope, id).await?;
            if let Some(v) = version_of(*expected)
                && v != before.version
            {
                return Err(stale_for(*expected));
            }
            let from = Tally::of(&before)?;
            if matches!(from.status, Status::Draft | Status::Cancelled) {
                return Err(ApiError::conflict(format!(
                    "a {} shipment has no e-BRC to file",
                    from.status.as_str()
                )));
            }
            if from.ebrc == EbrcStatus::Realized {
                return Err(ApiError::conflict(
                    "the e-BRC is realized: payments cover the invoice value",
                ));
            }
            if from.ebrc == to {
                return Ok(before);
            }
            if !store::set_state(tx, scope, &before, Tally::new(from.status, to), None).await? {
                return Err(stale_for(*expected));
            }
            let after = store::get(tx, scope, id).await?;
            audit::record(
                tx,
                scope,
                ctx,
                NewEvent::new("trade.shipment.ebrc_changed", "trade.shipment", Some(id))
                    .changes(Changes::diff(&before, &after, &[]))
                    .detail("reference", &after.reference),
            )
            .await?;
            Ok::<_, ApiError>(after)
        })
    })
    .await?;
    Ok(Json(shipment))
}
