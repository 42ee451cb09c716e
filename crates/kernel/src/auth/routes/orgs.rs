//! The caller's organization: settings, invitations, security events. Changes to settings
//! and invitations are audited in their transactions (`organization.updated`,
//! `invitation.created`, `invitation.revoked`); security events are the organization's
//! `auth.*` audit events.
//!
//! The organization in the path must be the one the caller acts in (their own, or the one a
//! super admin names with `X-Keel-Org`); any other id answers 404.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::audit::{self, AuditContext, Changes, NewEvent};
use crate::auth::access::{PARTNER, perms};
use crate::auth::domain::{Email, parse_name};
use crate::auth::service;
use crate::auth::store::{self, Invitation, Organization, SecurityEvent};
use crate::auth::{Authorized, Principal};
use crate::crypto::{random_token, token_hash};
use crate::http::concurrency::{expected_version, stale_for, version_of};
use crate::http::pagination::{PageParams, Paged};
use crate::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::mail::Mail;
use crate::state::AppState;
use crate::store::now;

fn same_org(principal: &Principal, org_id: Uuid) -> Result<(), ApiError> {
    if principal.org_id == org_id {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

/// Reads the organization and its settings.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}", tag = "organizations",
    security(("bearer" = ["org.read"])),
    params(("org_id" = Uuid, Path)),
    responses((status = 200, body = Organization), (status = 404, description = "Not the caller's organization")))]
pub async fn get_org(
    State(state): State<AppState>,
    auth: Authorized<perms::OrgRead>,
    Path(org_id): Path<Uuid>,
) -> ApiResult<Json<Organization>> {
    same_org(&auth, org_id)?;
    Ok(Json(store::get_org(&state.db, &auth.scope()).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct UpdateOrg {
    pub name: Option<String>,
    /// IANA time zone, e.g. `Asia/Kolkata`.
    pub time_zone: Option<String>,
    /// BCP 47 locale, e.g. `ar-SA`.
    pub locale: Option<String>,
    /// ISO 4217 code.
    pub default_currency: Option<String>,
    pub require_approval: Option<bool>,
    pub require_admin_2fa: Option<bool>,
    pub version: Option<i64>,
}

fn valid_time_zone(tz: &str) -> bool {
    tz == "UTC"
        || (tz.len() <= 64
            && tz.split('/').count() >= 2
            && tz.split('/').all(|part| {
                !part.is_empty()
                    && part.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
            }))
}

fn valid_locale(l: &str) -> bool {
    let mut parts = l.split('-');
    let lang_ok = parts
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_lowercase()));
    lang_ok
        && parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Changes settings (admins).
#[utoipa::path(patch, path = "/api/v1/orgs/{org_id}", tag = "organizations",
    security(("bearer" = ["org.manage"])),
    params(("org_id" = Uuid, Path)),
    request_body = UpdateOrg,
    responses((status = 200, body = Organization), (status = 409, description = "Stale version"), (status = 412, description = "Stale If-Match"), (status = 422, description = "Invalid settings")))]
pub async fn update_org(
    State(state): State<AppState>,
    auth: Authorized<perms::OrgManage>,
    ctx: AuditContext,
    Path(org_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<UpdateOrg>,
) -> ApiResult<Json<Organization>> {
    same_org(&auth, org_id)?;
    let expected = expected_version(&headers, body.version)?;
    let scope = auth.scope();
    let mut org = store::get_org(&state.db, &scope).await?;
    let mut errors = Vec::new();
    if let Some(n) = &body.name {
        match parse_name("name", n) {
            Ok(n) => org.name = n,
            Err(e) => errors.push(e),
        }
    }
    if let Some(tz) = &body.time_zone {
        if valid_time_zone(tz) {
            org.time_zone = tz.clone();
        } else {
            errors.push(FieldError::new(
                "time_zone",
                "must be an IANA time zone like Asia/Kolkata or UTC",
            ));
        }
    }
    if let Some(l) = &body.locale {
        if valid_locale(l) {
            org.locale = l.clone();
        } else {
            errors.push(FieldError::new(
                "locale",
                "must be a locale like en, en-IN or ar-SA",
            ));
        }
    }
    if let Some(c) = &body.default_currency {
        match crate::money::parse_currency(c) {
            Some(code) => org.default_currency = code.to_string(),
            None => errors.push(FieldError::new(
                "default_currency",
                "must be an ISO 4217 code like INR",
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if let Some(v) = body.require_approval {
        org.require_approval = v;
    }
    if let Some(v) = body.require_admin_2fa {
        org.require_admin_2fa = v;
    }
    let mut tx = state.db.begin().await?;
    let before = store::get_org_tx(&mut tx, scope.org_id()).await?;
    let Some(updated) = store::update_org(&mut tx, &scope, &org, version_of(expected)).await?
    else {
        return Err(stale_for(expected));
    };
    let diff = Changes::diff(&before, &updated, &[]);
    if !diff.is_empty() {
        audit::record(
            &mut tx,
            &scope,
            &ctx,
            NewEvent::new("organization.updated", "organization", Some(scope.org_id()))
                .changes(diff),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(updated))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewInvitation {
    pub email: String,
    /// The role the invited user gets.
    pub role: String,
    /// Required for the `partner` role: the business partner the user will be tied to.
    pub partner_id: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvitationCreated {
    pub id: Uuid,
    /// The one-time token (also mailed); shown once.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Invites someone to join the organization.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/invitations", tag = "organizations",
    security(("bearer" = ["org.manage"])),
    params(("org_id" = Uuid, Path)),
    request_body = NewInvitation,
    responses((status = 201, body = InvitationCreated), (status = 409, description = "Already a user"), (status = 422, description = "Invalid email or role")))]
pub async fn create_invitation(
    State(state): State<AppState>,
    auth: Authorized<perms::OrgManage>,
    ctx: AuditContext,
    Path(org_id): Path<Uuid>,
    Json(body): Json<NewInvitation>,
) -> ApiResult<Response> {
    same_org(&auth, org_id)?;
    let scope = auth.scope();
    let access = &state.auth.access;
    let mut errors = Vec::new();
    let email = Email::parse("email", &body.email)
        .map_err(|e| errors.push(e))
        .ok();
    if !access.is_org_role(&body.role) {
        errors.push(FieldError::new(
            "role",
            format!("must be one of {}", access.org_roles().join(", ")),
        ));
    }
    let external = access.is_external(&body.role) || body.role == PARTNER;
    if external && body.partner_id.is_none() {
        errors.push(FieldError::new(
            "partner_id",
            "is required for an external role",
        ));
    }
    let Some(email) = email.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let mut tx = state.db.begin().await?;
    if let Some(p) = body.partner_id.filter(|_| external) {
        crate::partners::store::get(&mut tx, &scope, p)
            .await
            .map_err(|_| {
                ApiError::invalid_field("partner_id", "is not a partner of this organization")
            })?;
    }
    if store::user_by_email_tx(&mut tx, email.as_str())
        .await?
        .is_some()
    {
        return Err(ApiError::conflict("this address already has an account")
            .with_errors(vec![FieldError::new("email", "is already registered")]));
    }
    let token = random_token(32);
    let at = now();
    let invitation = Invitation {
        id: Uuid::now_v7(),
        org_id: scope.org_id(),
        email: email.as_str().to_string(),
        role: body.role.clone(),
        partner_id: body.partner_id.filter(|_| external),
        invited_by: auth.user_id,
        expires_at: at + TimeDelta::seconds(state.config.auth.invitation_ttl_secs as i64),
        accepted_at: None,
        revoked_at: None,
        created_at: at,
    };
    store::insert_invitation(&mut tx, &invitation, &token_hash(&token)).await?;
    audit::record(
        &mut tx,
        &scope,
        &ctx,
        NewEvent::new("invitation.created", "invitation", Some(invitation.id))
            .changes(Changes::created(&invitation, &[])),
    )
    .await?;
    let org = store::get_org_tx(&mut tx, scope.org_id()).await?;
    tx.commit().await?;
    service::send_mail(
        &state,
        Mail {
            to: invitation.email.clone(),
            subject: format!("You are invited to join {}", org.name),
            text: format!(
                "You are invited to join {} on Keel as {}. Register with this invitation code (valid until {}):\n\n{token}",
                org.name, invitation.role, invitation.expires_at
            ),
            kind: "invitation".into(),
            token: Some(token.clone()),
        },
    )
    .await;
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/api/v1/orgs/{}/invitations/{}", org_id, invitation.id),
        )],
        Json(InvitationCreated {
            id: invitation.id,
            token,
            expires_at: invitation.expires_at,
        }),
    )
        .into_response())
}

/// Lists the organization's invitations.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/invitations", tag = "organizations",
    security(("bearer" = ["org.manage"])),
    params(("org_id" = Uuid, Path), PageParams),
    responses((status = 200, body = Paged<Invitation>)))]
pub async fn list_invitations(
    State(state): State<AppState>,
    auth: Authorized<perms::OrgManage>,
    Path(org_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Invitation>>> {
    same_org(&auth, org_id)?;
    let page = page.resolve(&["created_at"], "-created_at")?;
    let (rows, total) = store::list_invitations(&state.db, &auth.scope(), &page).await?;
    Ok(Json(Paged::from_rows(rows, &page, total)))
}

/// Withdraws an open invitation.
#[utoipa::path(delete, path = "/api/v1/orgs/{org_id}/invitations/{id}", tag = "organizations",
    security(("bearer" = ["org.manage"])),
    params(("org_id" = Uuid, Path), ("id" = Uuid, Path)),
    responses((status = 204, description = "Withdrawn"), (status = 404, description = "No open invitation with that id")))]
pub async fn revoke_invitation(
    State(state): State<AppState>,
    auth: Authorized<perms::OrgManage>,
    ctx: AuditContext,
    Path((org_id, id)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    same_org(&auth, org_id)?;
    let mut tx = state.db.begin().await?;
    let scope = auth.scope();
    if !store::revoke_invitation(&mut tx, &scope, id).await? {
        return Err(ApiError::not_found());
    }
    audit::record(
        &mut tx,
        &scope,
        &ctx,
        NewEvent::new("invitation.revoked", "invitation", Some(id)),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SecurityEventQuery {
    /// e.g. `login_failed`, `account_locked`, `refresh_reuse`, `org_override`.
    pub kind: Option<String>,
}

/// Security events of the organization: failed sign-ins, lockouts, refresh-token reuse,
/// super-admin access.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/security-events", tag = "organizations",
    security(("bearer" = ["security.read"])),
    params(("org_id" = Uuid, Path), SecurityEventQuery, PageParams),
    responses((status = 200, body = Paged<SecurityEvent>)))]
pub async fn list_security_events(
    State(state): State<AppState>,
    auth: Authorized<perms::SecurityRead>,
    Path(org_id): Path<Uuid>,
    Query(query): Query<SecurityEventQuery>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<SecurityEvent>>> {
    same_org(&auth, org_id)?;
    let page = page.resolve(&["created_at"], "-created_at")?;
    let (rows, total) =
        store::list_security_events(&state.db, &auth.scope(), query.kind.as_deref(), &page).await?;
    Ok(Json(Paged::from_rows(rows, &page, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_formats() {
        assert!(valid_time_zone("Asia/Kolkata"));
        assert!(valid_time_zone("America/Argentina/Buenos_Aires"));
        assert!(valid_time_zone("UTC"));
        assert!(!valid_time_zone("kolkata"));
        assert!(!valid_time_zone("Asia/"));
        assert!(valid_locale("en") && valid_locale("en-IN") && valid_locale("ar-SA"));
        assert!(!valid_locale("EN") && !valid_locale("english"));
    }
}
