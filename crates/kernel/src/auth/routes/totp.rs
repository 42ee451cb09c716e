//! Enrolling in and leaving two-factor sign-in.

use axum::extract::State;
use axum::http::StatusCode;
use sea_query::SimpleExpr;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::AuditContext;
use crate::auth::SignedIn;
use crate::auth::access::{ADMIN, SUPER_ADMIN};
use crate::auth::service;
use crate::auth::store::{self, SecurityEventKind};
use crate::auth::totp::{self, new_recovery_codes, recovery_hash, secret_context};
use crate::http::{ApiError, ApiResult, Json};
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TotpSetup {
    /// The shared secret, base32 (type it into an authenticator app)…
    pub secret: String,
    /// …or scan this `otpauth://` URL as a QR code.
    pub otpauth_url: String,
}

/// Starts enrolment: a new secret, not active until confirmed with a code.
#[utoipa::path(post, path = "/api/v1/auth/totp/setup", tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = TotpSetup), (status = 409, description = "Already enabled")))]
pub async fn setup_totp(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
) -> ApiResult<Json<TotpSetup>> {
    let user = store::user_by_id(&state.db, me.user_id).await?;
    if user.totp_enabled {
        return Err(ApiError::conflict(
            "two-factor sign-in is already enabled; disable it first to re-enrol",
        ));
    }
    let secret = totp::new_secret();
    let t = totp::totp(&secret, &user.email)?;
    let encrypted = state
        .auth
        .keyring
        .encrypt(&secret, &secret_context(user.id))
        .map_err(|e| ApiError::internal(anyhow::anyhow!("{e}")))?;
    let mut tx = state.db.begin().await?;
    store::update_user(
        &mut tx,
        user.org_id,
        user.id,
        vec![
            ("totp_secret", encrypted.into()),
            (
                "totp_last_step",
                SimpleExpr::Keyword(sea_query::Keyword::Null),
            ),
        ],
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(TotpSetup {
        secret: t.secret().to_base32(),
        otpauth_url: t
            .to_url()
            .map_err(|e| ApiError::internal(anyhow::anyhow!("{e:?}")))?,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TotpCode {
    /// The current 6-digit code.
    pub code: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecoveryCodes {
    /// Single-use codes for when the authenticator is lost. Shown once: store them safely.
    pub recovery_codes: Vec<String>,
}

/// Confirms enrolment with a current code; returns recovery codes (shown once). Refresh the
/// session afterwards to lift an enrolment requirement from the access token.
#[utoipa::path(post, path = "/api/v1/auth/totp/enable", tag = "auth",
    security(("bearer" = [])),
    request_body = TotpCode,
    responses((status = 200, body = RecoveryCodes), (status = 422, description = "Wrong code or no enrolment started")))]
pub async fn enable_totp(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
    ctx: AuditContext,
    Json(body): Json<TotpCode>,
) -> ApiResult<Json<RecoveryCodes>> {
    let mut tx = state.db.begin().await?;
    let user = store::user_by_id_tx(&mut tx, me.user_id).await?;
    if user.totp_enabled {
        return Err(ApiError::conflict("two-factor sign-in is already enabled"));
    }
    if user.totp_secret.is_none() {
        return Err(ApiError::invalid_field(
            "code",
            "start with POST /api/v1/auth/totp/setup",
        ));
    }
    if !totp::check_code(&state, &mut tx, &user, &body.code).await? {
        return Err(ApiError::invalid_field("code", "is wrong or already used"));
    }
    let codes = new_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| recovery_hash(c)).collect();
    store::replace_recovery_codes(&mut tx, user.id, &hashes).await?;
    store::update_user(
        &mut tx,
        user.org_id,
        user.id,
        vec![("totp_enabled", true.into())],
        None,
    )
    .await?;
    store::security_event_tx(
        &mut tx,
        Some(user.org_id),
        Some(user.id),
        SecurityEventKind::TotpEnabled,
        &ctx,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TotpDisable {
    pub password: String,
    /// A current code or a recovery code.
    pub code: String,
}

/// Turns two-factor sign-in off (password and a code required). Refused for admins of an
/// organization that requires it.
#[utoipa::path(post, path = "/api/v1/auth/totp/disable", tag = "auth",
    security(("bearer" = [])),
    request_body = TotpDisable,
    responses((status = 204, description = "Disabled"), (status = 403, description = "Required by the organization"), (status = 409, description = "Two-factor sign-in is not enabled"), (status = 422, description = "Wrong password or code")))]
pub async fn disable_totp(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
    ctx: AuditContext,
    Json(body): Json<TotpDisable>,
) -> ApiResult<StatusCode> {
    let user = store::user_by_id(&state.db, me.user_id).await?;
    if !user.totp_enabled {
        return Err(ApiError::conflict("two-factor sign-in is not enabled"));
    }
    if !state
        .auth
        .hasher
        .verify(&body.password, Some(&user.password_hash))
        .await?
    {
        return Err(ApiError::invalid_field("password", "is wrong"));
    }
    let mut tx = state.db.begin().await?;
    let org = store::get_org_tx(&mut tx, user.org_id).await?;
    if org.require_admin_2fa && (user.role == ADMIN || user.role == SUPER_ADMIN) {
        return Err(ApiError::forbidden(
            "your organization requires administrators to use two-factor sign-in",
        ));
    }
    if !totp::verify_login_code(&state, &mut tx, &user, &body.code, &ctx).await? {
        return Err(ApiError::invalid_field("code", "is wrong or already used"));
    }
    let null = || SimpleExpr::Keyword(sea_query::Keyword::Null);
    store::update_user(
        &mut tx,
        user.org_id,
        user.id,
        vec![
            ("totp_enabled", false.into()),
            ("totp_secret", null()),
            ("totp_last_step", null()),
        ],
        None,
    )
    .await?;
    store::replace_recovery_codes(&mut tx, user.id, &[]).await?;
    store::security_event_tx(
        &mut tx,
        Some(user.org_id),
        Some(user.id),
        SecurityEventKind::TotpDisabled,
        &ctx,
        serde_json::json!({}),
    )
    .await?;
    // Other sessions were signed in with a second factor this account no longer has.
    let list = service::revoke_sessions(
        &state,
        &mut tx,
        user.id,
        None,
        me.session_id(),
        "totp_disabled",
    )
    .await?;
    tx.commit().await?;
    service::broadcast(&state, &list).await;
    Ok(StatusCode::NO_CONTENT)
}
