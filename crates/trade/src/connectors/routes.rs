//! `/api/v1/trade/connectors` (admins: `trade.connectors.manage`) and the Account Aggregator
//! webhook. Every change commits with its audit event (`trade.connector.created|updated|
//! deleted`, and `trade.connector.<event>` for webhook events).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_kernel::audit::{self, AuditContext, Changes, NewEvent};
use keel_kernel::auth::Authorized;
use keel_kernel::http::concurrency::{expected_version, stale_for, version_of};
use keel_kernel::http::pagination::{PageParams, Paged};
use keel_kernel::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use keel_kernel::module::ModuleRouter;
use keel_kernel::state::AppState;
use keel_kernel::store::{StoreError, Tx};
use keel_kernel::tenancy::TenantScope;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::store::{self, Connector, Fields};
use super::{KINDS, is_consent_id, is_iec};
use crate::perms::ConnectorsManage;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(utoipa_axum::routes!(list_connectors, create_connector))
        .routes(utoipa_axum::routes!(
            get_connector,
            update_connector,
            delete_connector
        ))
        .routes(utoipa_axum::routes!(super::webhook::account_aggregator))
}

/// The sortable fields of the list; the first is the default (newest first).
pub const SORTS: [&str; 2] = ["created_at", "kind"];

/// A connector's editable fields.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorInput {
    /// `bank_aa`, `gst` or `icegate`.
    pub kind: String,
    /// The Importer-Exporter Code: 10 characters in PAN form (5 letters, 4 digits, 1 letter),
    /// case-insensitive.
    pub iec_code: String,
    /// The Account Aggregator consent id (`bank_aa` only): 8–128 letters, digits or `-_.:`.
    /// One connector per consent: another connector of the organization with it answers 409;
    /// an id that cannot be used (held elsewhere) answers 422 without saying more. Changing
    /// it puts the connector back to `pending`.
    pub consent_id: Option<String>,
    /// The version you read (or send `If-Match`); a stale one answers 409.
    pub version: Option<i64>,
}

impl ConnectorInput {
    /// Validates every field, naming each bad one.
    fn fields(&self) -> Result<Fields, ApiError> {
        let mut errors = Vec::new();
        let kind = self.kind.trim().to_ascii_lowercase();
        if !KINDS.contains(&kind.as_str()) {
            errors.push(FieldError::new(
                "kind",
                "must be one of bank_aa, gst, icegate",
            ));
        }
        let iec_code = self.iec_code.trim().to_ascii_uppercase();
        if !is_iec(&iec_code) {
            errors.push(FieldError::new(
                "iec_code",
                "must be 10 characters in PAN form: 5 letters, 4 digits, 1 letter (e.g. ABCDE1234F)",
            ));
        }
        let consent_id = match self.consent_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(c) if !is_consent_id(c) => {
                errors.push(FieldError::new(
                    "consent_id",
                    "must be 8–128 letters, digits or -_.:",
                ));
                None
            }
            Some(_) if kind != "bank_aa" && KINDS.contains(&kind.as_str()) => {
                errors.push(FieldError::new(
                    "consent_id",
                    "only bank_aa connectors have an Account Aggregator consent",
                ));
                None
            }
            Some(c) => Some(c.to_string()),
        };
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        Ok(Fields {
            kind,
            iec_code,
            consent_id,
        })
    }
}

/// A consent id held outside the caller's organization: refused without saying so (see
/// [`super::store`] for why consent ids are unique across organizations).
fn consent_unusable() -> ApiError {
    ApiError::validation(vec![FieldError::new(
        "consent_id",
        "cannot be used; check it with the Account Aggregator",
    )])
}

/// Refuses a consent id another connector holds: 409 naming the connector when it is one of
/// the organization's own, the same 422 as for any unusable id otherwise. `current`: the
/// connector being changed (keeping its own consent id is fine).
async fn check_consent(
    tx: &mut Tx,
    scope: &TenantScope,
    fields: &Fields,
    current: Option<Uuid>,
) -> Result<(), ApiError> {
    let Some(consent_id) = &fields.consent_id else {
        return Ok(());
    };
    match store::consent_holder(tx, consent_id).await? {
        Some((_, id)) if Some(id) == current => Ok(()),
        Some((org, id)) if org == scope.org_id() => Err(ApiError::conflict(
            "another connector of this organization has this consent id",
        )
        .with_errors(vec![FieldError::new("consent_id", "is already used")])
        .with_extra("connector_id", id.to_string())),
        Some(_) => Err(consent_unusable()),
        None => Ok(()),
    }
}

/// A unique-index conflict on write: a consent id taken by a concurrent write, whose holder
/// is not looked up again.
fn consent_taken(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { .. } => consent_unusable(),
        other => other.into(),
    }
}

/// Lists the organization's connectors, newest first by default.
#[utoipa::path(get, path = "/api/v1/trade/connectors", tag = "trade",
    security(("bearer" = ["trade.connectors.manage"])),
    params(PageParams),
    responses((status = 200, body = Paged<Connector>), (status = 422, description = "Invalid page")))]
pub async fn list_connectors(
    State(state): State<AppState>,
    auth: Authorized<ConnectorsManage>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Connector>>> {
    let page = page.resolve(&SORTS, "-created_at")?;
    let (rows, total) = store::list(&state.db, &auth.scope(), &page).await?;
    Ok(Json(Paged::from_rows(rows, &page, total)))
}

/// Creates a connector (`pending`).
#[utoipa::path(post, path = "/api/v1/trade/connectors", tag = "trade",
    security(("bearer" = ["trade.connectors.manage"])),
    request_body = ConnectorInput,
    responses((status = 201, body = Connector), (status = 409, description = "Another connector of the organization has this consent id"),
        (status = 422, description = "Invalid fields, or a consent id that cannot be used")))]
pub async fn create_connector(
    State(state): State<AppState>,
    auth: Authorized<ConnectorsManage>,
    ctx: AuditContext,
    Json(body): Json<ConnectorInput>,
) -> ApiResult<Response> {
    let fields = body.fields()?;
    let (scope, ctx, fields) = (&auth.scope(), &ctx, &fields);
    let connector = crate::dashboard::write(&state, scope, |tx| {
        Box::pin(async move {
            check_consent(tx, scope, fields, None).await?;
            let c = store::insert(tx, scope, fields)
                .await
                .map_err(consent_taken)?;
            audit::record(
                tx,
                scope,
                ctx,
                NewEvent::new("trade.connector.created", "trade.connector", Some(c.id))
                    .changes(Changes::created(&c, &[])),
            )
            .await?;
            Ok::<_, ApiError>(c)
        })
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/api/v1/trade/connectors/{}", connector.id),
        )],
        Json(connector),
    )
        .into_response())
}

/// Reads a connector.
#[utoipa::path(get, path = "/api/v1/trade/connectors/{id}", tag = "trade",
    security(("bearer" = ["trade.connectors.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Connector), (status = 404, description = "No such connector")))]
pub async fn get_connector(
    State(state): State<AppState>,
    auth: Authorized<ConnectorsManage>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let c = store::get_db(&state.db, &auth.scope(), id).await?;
    Ok(([(header::ETAG, format!("\"{}\"", c.version))], Json(c)).into_response())
}

/// Changes a connector's fields (`If-Match` or `version`). A new consent id puts it back to
/// `pending`.
#[utoipa::path(put, path = "/api/v1/trade/connectors/{id}", tag = "trade",
    security(("bearer" = ["trade.connectors.manage"])),
    params(("id" = Uuid, Path)),
    request_body = ConnectorInput,
    responses((status = 200, body = Connector), (status = 404, description = "No such connector"),
        (status = 409, description = "Stale version, or another connector of the organization has this consent id"),
        (status = 412, description = "Stale If-Match"), (status = 422, description = "Invalid fields, or a consent id that cannot be used")))]
pub async fn update_connector(
    State(state): State<AppState>,
    auth: Authorized<ConnectorsManage>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<ConnectorInput>,
) -> ApiResult<Json<Connector>> {
    let expected = expected_version(&headers, body.version)?;
    let fields = body.fields()?;
    let (scope, ctx, fields, expected) = (&auth.scope(), &ctx, &fields, &expected);
    let connector = crate::dashboard::write(&state, scope, |tx| {
        Box::pin(async move {
            let before = store::get(tx, scope, id).await?;
            if let Some(v) = version_of(*expected)
                && v != before.version
            {
                return Err(stale_for(*expected));
            }
            check_consent(tx, scope, fields, Some(before.id)).await?;
            if !store::update(tx, scope, &before, fields)
                .await
                .map_err(consent_taken)?
            {
                return Err(stale_for(*expected));
            }
            let after = store::get(tx, scope, id).await?;
            let diff = Changes::diff(&before, &after, &[]);
            if !diff.is_empty() {
                audit::record(
                    tx,
                    scope,
                    ctx,
                    NewEvent::new("trade.connector.updated", "trade.connector", Some(id))
                        .changes(diff),
                )
                .await?;
            }
            Ok(after)
        })
    })
    .await?;
    Ok(Json(connector))
}

/// Deletes a connector (it stays in the audit trail).
#[utoipa::path(delete, path = "/api/v1/trade/connectors/{id}", tag = "trade",
    security(("bearer" = ["trade.connectors.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such connector")))]
pub async fn delete_connector(
    State(state): State<AppState>,
    auth: Authorized<ConnectorsManage>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let (scope, ctx) = (&auth.scope(), &ctx);
    crate::dashboard::write(&state, scope, |tx| {
        Box::pin(async move {
            let before = store::get(tx, scope, id).await?;
            if !store::delete(tx, scope, id).await? {
                return Err(ApiError::from(StoreError::NotFound));
            }
            audit::record(
                tx,
                scope,
                ctx,
                NewEvent::new("trade.connector.deleted", "trade.connector", Some(id))
                    .changes(Changes::deleted(&before, &[])),
            )
            .await?;
            Ok::<_, ApiError>(())
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
