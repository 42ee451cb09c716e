//! The organization's users, for its admins: list, read, change role or name, deactivate,
//! reactivate, approve. Every change is audited in its own transaction (`user.updated`,
//! `user.approved`).

use axum::extract::State;
use axum::http::HeaderMap;
use sea_query::SimpleExpr;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::audit::{self, AuditContext, Changes, NewEvent};
use crate::auth::Authorized;
use crate::auth::access::{PARTNER, SUPER_ADMIN, perms};
use crate::auth::domain::parse_name;
use crate::auth::service;
use crate::auth::store::{self, User, UserFilter, UserStatus};
use crate::http::concurrency::{expected_version, stale_for, version_of};
use crate::http::pagination::{PageParams, Paged};
use crate::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// `active`, `pending_approval` or `deactivated`.
    pub status: Option<String>,
    pub role: Option<String>,
    /// Search in email and name.
    pub q: Option<String>,
}

/// Lists the organization's users.
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    security(("bearer" = ["users.read"])),
    params(UserQuery, PageParams),
    responses((status = 200, body = Paged<User>), (status = 403, description = "Missing users.read")))]
pub async fn list_users(
    State(state): State<AppState>,
    auth: Authorized<perms::UsersRead>,
    Query(query): Query<UserQuery>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<User>>> {
    let page = page.resolve(&["created_at", "email", "name"], "created_at")?;
    if let Some(s) = &query.status
        && UserStatus::parse(s).is_none()
    {
        return Err(ApiError::invalid_field(
            "status",
            "must be active, pending_approval or deactivated",
        ));
    }
    if let Some(q) = &query.q
        && q.chars().count() > 200
    {
        return Err(ApiError::invalid_field(
            "q",
            "must be at most 200 characters",
        ));
    }
    let filter = UserFilter {
        status: query.status,
        role: query.role,
        q: query.q,
    };
    let (rows, total) = store::list_users(&state.db, &auth.scope(), &filter, &page).await?;
    Ok(Json(Paged::from_rows(
        rows.into_iter().map(User::from).collect(),
        &page,
        total,
    )))
}

/// Reads one user of the organization.
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users",
    security(("bearer" = ["users.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404, description = "No such user in this organization")))]
pub async fn get_user(
    State(state): State<AppState>,
    auth: Authorized<perms::UsersRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<User>> {
    let mut tx = state.db.begin().await?;
    let user = store::scoped_user(&mut tx, &auth.scope(), id).await?;
    tx.commit().await?;
    Ok(Json(user.into()))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct UpdateUser {
    pub name: Option<String>,
    /// An organization role (`admin`, `member`, `partner`, or one an app adds).
    pub role: Option<String>,
    /// The business partner a `partner` user is tied to.
    pub partner_id: Option<Uuid>,
    /// `false` deactivates the user (every session ends at once); `true` reactivates.
    pub active: Option<bool>,
    /// The version you read (or send `If-Match`); a stale one changes nothing.
    pub version: Option<i64>,
}

/// Changes a user's name, role or active state.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users",
    security(("bearer" = ["users.manage"])),
    params(("id" = Uuid, Path)),
    request_body = UpdateUser,
    responses(
        (status = 200, body = User),
        (status = 404, description = "No such user in this organization"),
        (status = 409, description = "Stale version"),
        (status = 412, description = "Stale If-Match"),
        (status = 422, description = "Invalid role or change"),
    ))]
pub async fn update_user(
    State(state): State<AppState>,
    auth: Authorized<perms::UsersManage>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<UpdateUser>,
) -> ApiResult<Json<User>> {
    let expected = expected_version(&headers, body.version)?;
    let scope = auth.scope();
    let mut errors = Vec::new();
    let name = body
        .name
        .as_deref()
        .map(|n| parse_name("name", n))
        .transpose()
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    let access = &state.auth.access;
    if let Some(role) = &body.role
        && (!access.is_org_role(role))
    {
        errors.push(FieldError::new(
            "role",
            format!("must be one of {}", access.org_roles().join(", ")),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if id == auth.user_id && (body.role.is_some() || body.active.is_some()) {
        return Err(ApiError::invalid_field(
            "id",
            "you cannot change your own role or deactivate yourself",
        ));
    }

    let mut tx = state.db.begin().await?;
    let user = store::scoped_user(&mut tx, &scope, id).await?;
    if user.role == SUPER_ADMIN && !auth.is_super_admin() {
        return Err(ApiError::forbidden(
            "only a platform super admin can change a super admin",
        ));
    }
    let mut changes: Vec<(&'static str, SimpleExpr)> = Vec::new();
    let mut revocations = Vec::new();
    if let Some(name) = name {
        changes.push(("name", name.into()));
    }
    let new_role = body.role.clone().unwrap_or_else(|| user.role.clone());
    let partner = match (
        access.is_external(&new_role) || new_role == PARTNER,
        body.partner_id.or(user.partner_id),
    ) {
        (true, Some(p)) => {
            crate::partners::store::get(&mut tx, &scope, p)
                .await
                .map_err(|_| {
                    ApiError::invalid_field("partner_id", "is not a partner of this organization")
                })?;
            Some(p)
        }
        (true, None) => {
            return Err(ApiError::invalid_field(
                "partner_id",
                "is required for an external role",
            ));
        }
        (false, _) => None,
    };
    if partner != user.partner_id {
        changes.push(("partner_id", partner.into()));
    }
    if body.role.is_some() && new_role != user.role {
        changes.push(("role", new_role.clone().into()));
    }
    let status_now = user.status.clone();
    match body.active {
        Some(false) if status_now != "deactivated" => {
            changes.push(("status", UserStatus::Deactivated.as_str().into()));
            revocations.extend(
                service::revoke_sessions(&state, &mut tx, user.id, None, None, "deactivated")
                    .await?,
            );
            for key in store::api_keys_of_user(&mut tx, user.id).await? {
                let r = vec![crate::auth::revocation::Revocation {
                    kind: crate::auth::revocation::RevocationKind::ApiKey,
                    subject: key,
                    not_before: None,
                    until: crate::store::now()
                        + chrono::TimeDelta::seconds(
                            state.auth.revocations.api_key_cache_ttl.as_secs() as i64 + 60,
                        ),
                }];
                crate::auth::revocation::record(&mut tx, &r).await?;
                revocations.extend(r);
            }
        }
        Some(true) if status_now == "deactivated" => {
            changes.push(("status", UserStatus::Active.as_str().into()));
        }
        _ => {}
    }
    let role_or_partner_changed = changes
        .iter()
        .any(|(c, _)| *c == "role" || *c == "partner_id");
    if role_or_partner_changed {
        revocations.extend(service::refuse_older_tokens(&state, &mut tx, user.id).await?);
    }
    if !changes.is_empty() || expected.is_some() {
        let updated = store::update_user(
            &mut tx,
            scope.org_id(),
            user.id,
            changes,
            version_of(expected),
        )
        .await?;
        if !updated {
            return Err(stale_for(expected));
        }
    }
    let before = User::from(user);
    let user = store::scoped_user(&mut tx, &scope, id).await?;
    let diff = Changes::diff(&before, &User::from(user.clone()), &[]);
    if !diff.is_empty() {
        audit::record(
            &mut tx,
            &scope,
            &ctx,
            NewEvent::new("user.updated", "user", Some(id)).changes(diff),
        )
        .await?;
    }
    tx.commit().await?;
    service::broadcast(&state, &revocations).await;
    Ok(Json(user.into()))
}

/// Approves a user waiting for approval.
#[utoipa::path(post, path = "/api/v1/users/{id}/approve", tag = "users",
    security(("bearer" = ["users.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404, description = "No such user"), (status = 409, description = "Not pending approval")))]
pub async fn approve_user(
    State(state): State<AppState>,
    auth: Authorized<perms::UsersManage>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<User>> {
    let scope = auth.scope();
    let mut tx = state.db.begin().await?;
    let user = store::scoped_user(&mut tx, &scope, id).await?;
    if user.status != UserStatus::PendingApproval.as_str() {
        return Err(ApiError::conflict(format!(
            "the user is {}, not pending approval",
            user.status
        )));
    }
    store::update_user(
        &mut tx,
        scope.org_id(),
        id,
        vec![("status", UserStatus::Active.as_str().into())],
        None,
    )
    .await?;
    let before = User::from(user);
    let user = store::scoped_user(&mut tx, &scope, id).await?;
    audit::record(
        &mut tx,
        &scope,
        &ctx,
        NewEvent::new("user.approved", "user", Some(id)).changes(Changes::diff(
            &before,
            &User::from(user.clone()),
            &[],
        )),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(user.into()))
}
