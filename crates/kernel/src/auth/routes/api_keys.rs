//! API keys for machine clients: organization-scoped, named, limited to a subset of the
//! creator's permissions, shown once, stored hashed, revocable. Creation and revocation are
//! audited (`api_key.created`, `api_key.revoked`); the key itself never is.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{self, AuditContext, Changes, NewEvent};
use crate::auth::access::perms;
use crate::auth::domain::parse_name;
use crate::auth::revocation::{self, Revocation, RevocationKind};
use crate::auth::service;
use crate::auth::store::{self, ApiKey};
use crate::auth::{API_KEY_PREFIX, Authorized};
use crate::crypto::{random_token, token_hash};
use crate::http::pagination::{PageParams, Paged};
use crate::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::state::AppState;
use crate::store::now;

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewApiKey {
    pub name: String,
    /// Permissions the key carries; each must be one the creator holds.
    pub permissions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The key itself: `Authorization: Bearer keel_…`. Shown once; only a hash is kept.
    pub key: String,
}

/// Creates an API key.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys",
    security(("bearer" = ["api_keys.manage"])),
    request_body = NewApiKey,
    responses((status = 201, body = ApiKeyCreated), (status = 422, description = "Invalid name or a permission the creator lacks")))]
pub async fn create_api_key(
    State(state): State<AppState>,
    auth: Authorized<perms::ApiKeysManage>,
    ctx: AuditContext,
    Json(body): Json<NewApiKey>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    let name = parse_name("name", &body.name)
        .map_err(|e| errors.push(e))
        .ok();
    if body.permissions.is_empty() {
        errors.push(FieldError::new(
            "permissions",
            "must name at least one permission",
        ));
    }
    let mut permissions = BTreeSet::new();
    for (i, p) in body.permissions.iter().enumerate() {
        if !state.auth.access.is_permission(p) {
            errors.push(FieldError::new(
                format!("permissions[{i}]"),
                format!("`{p}` is not a permission"),
            ));
        } else if !auth.has(p) {
            errors.push(FieldError::new(
                format!("permissions[{i}]"),
                format!("you do not hold `{p}`"),
            ));
        } else {
            permissions.insert(p.clone());
        }
    }
    let Some(name) = name.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    if matches!(auth.credential, crate::auth::Credential::ApiKey { .. }) {
        return Err(ApiError::forbidden("an API key cannot create API keys"));
    }
    let prefix = random_token(6).replace(['-', '_'], "x");
    let key = format!("{API_KEY_PREFIX}{prefix}_{}", random_token(32));
    let id = Uuid::now_v7();
    let perms: Vec<String> = permissions.into_iter().collect();
    let scope = auth.scope();
    let mut tx = state.db.begin().await?;
    let created = store::insert_api_key(
        &mut tx,
        &scope,
        id,
        auth.user_id,
        &name,
        &format!("{API_KEY_PREFIX}{prefix}"),
        &token_hash(&key),
        &perms,
    )
    .await?;
    audit::record(
        &mut tx,
        &scope,
        &ctx,
        NewEvent::new("api_key.created", "api_key", Some(id))
            .changes(Changes::created(&created, &[])),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/api-keys/{id}"))],
        Json(ApiKeyCreated {
            api_key: created,
            key,
        }),
    )
        .into_response())
}

/// Lists the organization's API keys (never the keys themselves).
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys",
    security(("bearer" = ["api_keys.manage"])),
    params(PageParams),
    responses((status = 200, body = Paged<ApiKey>)))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    auth: Authorized<perms::ApiKeysManage>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<ApiKey>>> {
    let page = page.resolve(&["created_at"], "-created_at")?;
    let (rows, total) = store::list_api_keys(&state.db, &auth.scope(), &page).await?;
    Ok(Json(Paged::from_rows(rows, &page, total)))
}

/// Reads one API key.
#[utoipa::path(get, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    security(("bearer" = ["api_keys.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ApiKey), (status = 404, description = "No such key")))]
pub async fn get_api_key(
    State(state): State<AppState>,
    auth: Authorized<perms::ApiKeysManage>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(
        store::get_api_key(&state.db, &auth.scope(), id).await?,
    ))
}

/// Revokes an API key: refused on every node at once.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    security(("bearer" = ["api_keys.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No such live key")))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    auth: Authorized<perms::ApiKeysManage>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let scope = auth.scope();
    let mut tx = state.db.begin().await?;
    let Some(hash) = store::revoke_api_key(&mut tx, &scope, id).await? else {
        return Err(ApiError::not_found());
    };
    audit::record(
        &mut tx,
        &scope,
        &ctx,
        NewEvent::new("api_key.revoked", "api_key", Some(id)),
    )
    .await?;
    let until: DateTime<Utc> =
        now() + TimeDelta::seconds(state.auth.revocations.api_key_cache_ttl.as_secs() as i64 + 60);
    let list = vec![Revocation {
        kind: RevocationKind::ApiKey,
        subject: id,
        not_before: None,
        until,
    }];
    revocation::record(&mut tx, &list).await?;
    tx.commit().await?;
    state.auth.forget_api_key(&hash).await;
    service::broadcast(&state, &list).await;
    Ok(StatusCode::NO_CONTENT)
}
