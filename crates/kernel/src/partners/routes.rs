//! `/api/v1/partners`. Every change commits with its audit event (`partner.created`,
//! `partner.updated`, `partner.deleted`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::store::{self, KINDS, Partner};
use crate::audit::{self, AuditContext, Changes, NewEvent};
use crate::auth::Authorized;
use crate::auth::access::perms;
use crate::auth::domain::parse_name;
use crate::http::concurrency::{expected_version, stale_for, version_of};
use crate::http::pagination::{PageParams, Paged};
use crate::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::module::ModuleRouter;
use crate::state::AppState;
use crate::store::StoreError;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(utoipa_axum::routes!(list_partners, create_partner))
        .routes(utoipa_axum::routes!(
            get_partner,
            update_partner,
            delete_partner
        ))
}

fn parse_kind(kind: &str) -> Result<&'static str, FieldError> {
    KINDS
        .iter()
        .copied()
        .find(|k| *k == kind)
        .ok_or_else(|| FieldError::new("kind", format!("must be one of {}", KINDS.join(", "))))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PartnerQuery {
    pub kind: Option<String>,
}

/// Lists business partners (a partner user sees only their own).
#[utoipa::path(get, path = "/api/v1/partners", tag = "partners",
    security(("bearer" = ["partners.read"])),
    params(PartnerQuery, PageParams),
    responses((status = 200, body = Paged<Partner>)))]
pub async fn list_partners(
    State(state): State<AppState>,
    auth: Authorized<perms::PartnersRead>,
    Query(query): Query<PartnerQuery>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Partner>>> {
    let page = page.resolve(&["created_at", "name"], "name")?;
    if let Some(k) = &query.kind {
        parse_kind(k).map_err(|e| ApiError::validation(vec![e]))?;
    }
    let (rows, total) = store::list(&state.db, &auth.scope(), query.kind.as_deref(), &page).await?;
    Ok(Json(Paged::from_rows(rows, &page, total)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PartnerInput {
    pub name: String,
    pub kind: String,
    pub version: Option<i64>,
}

/// Creates a business partner.
#[utoipa::path(post, path = "/api/v1/partners", tag = "partners",
    security(("bearer" = ["partners.manage"])),
    request_body = PartnerInput,
    responses((status = 201, body = Partner), (status = 422, description = "Invalid fields")))]
pub async fn create_partner(
    State(state): State<AppState>,
    auth: Authorized<perms::PartnersManage>,
    ctx: AuditContext,
    Json(body): Json<PartnerInput>,
) -> ApiResult<Response> {
    let (name, kind) = validate(&body)?;
    let (scope, ctx, name) = (&auth.scope(), &ctx, &name);
    let partner = state
        .db
        .transaction(|tx| {
            Box::pin(async move {
                let partner = store::insert(tx, scope, name, kind).await?;
                audit::record(
                    tx,
                    scope,
                    ctx,
                    NewEvent::new("partner.created", "partner", Some(partner.id))
                        .changes(Changes::created(&partner, &[])),
                )
                .await?;
                Ok::<_, ApiError>(partner)
            })
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/partners/{}", partner.id))],
        Json(partner),
    )
        .into_response())
}

fn validate(body: &PartnerInput) -> Result<(String, &'static str), ApiError> {
    let mut errors = Vec::new();
    let name = parse_name("name", &body.name)
        .map_err(|e| errors.push(e))
        .ok();
    let kind = parse_kind(&body.kind).map_err(|e| errors.push(e)).ok();
    match (name, kind) {
        (Some(n), Some(k)) => Ok((n, k)),
        _ => Err(ApiError::validation(errors)),
    }
}

/// Reads a business partner.
#[utoipa::path(get, path = "/api/v1/partners/{id}", tag = "partners",
    security(("bearer" = ["partners.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Partner), (status = 404, description = "No such partner")))]
pub async fn get_partner(
    State(state): State<AppState>,
    auth: Authorized<perms::PartnersRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Partner>> {
    Ok(Json(store::get_db(&state.db, &auth.scope(), id).await?))
}

/// Changes a business partner (`If-Match` or `version` for optimistic concurrency).
#[utoipa::path(put, path = "/api/v1/partners/{id}", tag = "partners",
    security(("bearer" = ["partners.manage"])),
    params(("id" = Uuid, Path)),
    request_body = PartnerInput,
    responses((status = 200, body = Partner), (status = 404, description = "No such partner"), (status = 409, description = "Stale version"), (status = 412, description = "Stale If-Match")))]
pub async fn update_partner(
    State(state): State<AppState>,
    auth: Authorized<perms::PartnersManage>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<PartnerInput>,
) -> ApiResult<Json<Partner>> {
    let expected = expected_version(&headers, body.version)?;
    let (name, kind) = validate(&body)?;
    let (scope, ctx, name) = (&auth.scope(), &ctx, &name);
    let partner = state
        .db
        .transaction(|tx| {
            Box::pin(async move {
                let before = store::get(tx, scope, id).await?;
                if !store::update(tx, scope, id, name, kind, version_of(expected)).await? {
                    return Err(stale_for(expected));
                }
                let after = store::get(tx, scope, id).await?;
                let diff = Changes::diff(&before, &after, &[]);
                if !diff.is_empty() {
                    audit::record(
                        tx,
                        scope,
                        ctx,
                        NewEvent::new("partner.updated", "partner", Some(id)).changes(diff),
                    )
                    .await?;
                }
                Ok(after)
            })
        })
        .await?;
    Ok(Json(partner))
}

/// Deletes a business partner nothing refers to.
#[utoipa::path(delete, path = "/api/v1/partners/{id}", tag = "partners",
    security(("bearer" = ["partners.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such partner"), (status = 409, description = "Still referred to (e.g. by partner users)")))]
pub async fn delete_partner(
    State(state): State<AppState>,
    auth: Authorized<perms::PartnersManage>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let scope = auth.scope();
    let mut tx = state.db.begin().await?;
    let before = store::get(&mut tx, &scope, id).await?;
    let deleted = store::delete(&mut tx, &scope, id)
        .await
        .map_err(|e| match e {
            StoreError::Conflict { .. } => {
                ApiError::conflict("the partner is still referred to (users or records)")
            }
            other => other.into(),
        })?;
    if !deleted {
        return Err(ApiError::not_found());
    }
    audit::record(
        &mut tx,
        &scope,
        &ctx,
        NewEvent::new("partner.deleted", "partner", Some(id))
            .changes(Changes::deleted(&before, &[])),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
