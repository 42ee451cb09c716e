//! First run, registration, email verification and passwords.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sea_query::{Expr, ExprTrait, Query};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{AuditContext, EventActor, NewEvent};
use crate::auth::SignedIn;
use crate::auth::access::{ADMIN, SUPER_ADMIN};
use crate::auth::domain::{Email, parse_name};
use crate::auth::password::check_policy;
use crate::auth::service;
use crate::auth::store::{self, Organization, SecurityEventKind, User, UserRow, UserStatus};
use crate::crypto::token_hash;
use crate::http::{ApiError, ApiResult, FieldError, Json};
use crate::mail::Mail;
use crate::state::AppState;
use crate::store::{StoreError, now};

pub const VERIFY_EMAIL: &str = "verify_email";
pub const PASSWORD_RESET: &str = "password_reset";

#[derive(Debug, Deserialize, ToSchema)]
pub struct SetupRequest {
    pub email: String,
    pub password: String,
    pub name: String,
    pub organization_name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountCreated {
    pub user: User,
    pub organization: Organization,
    /// A verification link was sent to the email address.
    pub verification_sent: bool,
}

struct NewAccount {
    email: Email,
    password: String,
    name: String,
}

fn validate_account(
    state: &AppState,
    email: &str,
    password: &str,
    name: &str,
    errors: &mut Vec<FieldError>,
) -> Option<NewAccount> {
    let email = Email::parse("email", email)
        .map_err(|e| errors.push(e))
        .ok();
    let name = parse_name("name", name).map_err(|e| errors.push(e)).ok();
    if let Err(m) = check_policy(
        password,
        email.as_ref().map_or("", |e| e.as_str()),
        state.config.auth.password_min_length,
    ) {
        errors.push(FieldError::new("password", m));
    }
    match (email, name) {
        (Some(email), Some(name)) if errors.is_empty() => Some(NewAccount {
            email,
            password: password.to_string(),
            name,
        }),
        _ => None,
    }
}

fn new_user(
    org_id: Uuid,
    account: &NewAccount,
    hash: String,
    role: &str,
    status: UserStatus,
) -> UserRow {
    let at = now();
    UserRow {
        id: Uuid::now_v7(),
        org_id,
        email: account.email.as_str().to_string(),
        name: account.name.clone(),
        password_hash: hash,
        role: role.to_string(),
        status: status.as_str().to_string(),
        partner_id: None,
        email_verified_at: None,
        totp_secret: None,
        totp_enabled: false,
        totp_last_step: None,
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

fn email_taken(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { .. } => {
            ApiError::conflict("an account with this email already exists")
                .with_errors(vec![FieldError::new("email", "is already registered")])
        }
        other => other.into(),
    }
}

async fn send_verification(state: &AppState, email: &str, token: String) {
    service::send_mail(
        state,
        Mail {
            to: email.to_string(),
            subject: "Confirm your email address".into(),
            text: format!(
                "Confirm your email address with this code (valid 24 hours):\n\n{token}\n\nPOST /api/v1/auth/verify-email {{\"token\": \"{token}\"}}"
            ),
            kind: VERIFY_EMAIL.into(),
            token: Some(token),
        },
    )
    .await;
}

/// Records a new account in its organization's audit trail, the new user as the actor.
async fn account_created(
    tx: &mut crate::store::Tx,
    user: &UserRow,
    ctx: &AuditContext,
    event: NewEvent,
) -> Result<(), StoreError> {
    crate::audit::record_as(
        tx,
        Some(user.org_id),
        &EventActor::user(user.id),
        ctx,
        event,
    )
    .await
    .map(|_| ())
}

/// First run: creates the first organization and its platform super admin. Only while no
/// user exists; afterwards it answers 409 and changes nothing.
#[utoipa::path(post, path = "/api/v1/setup", tag = "auth",
    request_body = SetupRequest,
    responses(
        (status = 201, description = "Created", body = AccountCreated),
        (status = 409, description = "Setup has already been done"),
        (status = 422, description = "Invalid fields"),
    ))]
pub async fn setup(
    State(state): State<AppState>,
    ctx: AuditContext,
    Json(body): Json<SetupRequest>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    let account = validate_account(&state, &body.email, &body.password, &body.name, &mut errors);
    let org_name = parse_name("organization_name", &body.organization_name)
        .map_err(|e| errors.push(e))
        .ok();
    let (Some(account), Some(org_name)) = (account, org_name) else {
        return Err(ApiError::validation(errors));
    };
    let already = || ApiError::conflict("setup has already been done; sign in instead");
    if store::count_users(&state.db).await? > 0 {
        return Err(already());
    }
    let hash = state.auth.hasher.hash(&account.password).await?;
    let mut tx = state.db.begin().await?;
    // The singleton row makes concurrent first runs collide: exactly one wins.
    tx.execute(
        &Query::insert()
            .into_table("platform_setup")
            .columns(["singleton", "done_at"])
            .values_panic([1i64.into(), now().into()])
            .to_owned(),
    )
    .await
    .map_err(|e| match e {
        StoreError::Conflict { .. } => already(),
        other => other.into(),
    })?;
    let org = store::new_org(org_name);
    store::insert_org(&mut tx, &org).await?;
    let user = new_user(org.id, &account, hash, SUPER_ADMIN, UserStatus::Active);
    store::insert_user(&mut tx, &user)
        .await
        .map_err(email_taken)?;
    let token = service::email_token(
        &mut tx,
        user.id,
        VERIFY_EMAIL,
        state.config.auth.email_verification_ttl_secs,
    )
    .await?;
    account_created(
        &mut tx,
        &user,
        &ctx,
        NewEvent::new("auth.setup", "user", Some(user.id)).detail("role", SUPER_ADMIN),
    )
    .await?;
    tx.commit().await?;
    send_verification(&state, &user.email, token).await;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/users/{}", user.id))],
        Json(AccountCreated {
            user: user.into(),
            organization: org,
            verification_sent: true,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    pub email: String,
    pub password: String,
    pub name: String,
    /// Creates a new organization with the user as its admin…
    pub organization_name: Option<String>,
    /// …or joins the organization that sent this invitation.
    pub invitation_token: Option<String>,
}

/// Creates a user: a new organization with the user as admin, or joining an organization
/// with an invitation. An organization that requires approval keeps the new member
/// `pending_approval` until an admin approves.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = AccountCreated),
        (status = 409, description = "The email is already registered"),
        (status = 422, description = "Invalid fields, or an invalid or expired invitation"),
    ))]
pub async fn register(
    State(state): State<AppState>,
    ctx: AuditContext,
    Json(body): Json<RegisterRequest>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    let account = validate_account(&state, &body.email, &body.password, &body.name, &mut errors);
    let org_name = match (&body.organization_name, &body.invitation_token) {
        (Some(name), None) => parse_name("organization_name", name)
            .map_err(|e| errors.push(e))
            .ok(),
        (None, Some(_)) => None,
        _ => {
            errors.push(FieldError::new(
                "organization_name",
                "give either organization_name (new organization) or invitation_token (join one)",
            ));
            None
        }
    };
    let Some(account) = account.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let hash = state.auth.hasher.hash(&account.password).await?;
    let mut tx = state.db.begin().await?;
    let (org, user, verified) = if let Some(org_name) = org_name {
        let org = store::new_org(org_name);
        store::insert_org(&mut tx, &org).await?;
        let user = new_user(org.id, &account, hash, ADMIN, UserStatus::Active);
        (org, user, false)
    } else {
        let token = body.invitation_token.as_deref().unwrap_or("");
        let Some(inv) = store::open_invitation(&mut tx, &token_hash(token)).await? else {
            return Err(ApiError::invalid_field(
                "invitation_token",
                "is invalid, used or expired",
            ));
        };
        if inv.email != account.email.as_str() {
            return Err(ApiError::invalid_field(
                "email",
                "must be the address the invitation was sent to",
            ));
        }
        let org = store::get_org_tx(&mut tx, inv.org_id).await?;
        let status = if org.require_approval {
            UserStatus::PendingApproval
        } else {
            UserStatus::Active
        };
        let mut user = new_user(org.id, &account, hash, &inv.role, status);
        user.partner_id = inv.partner_id;
        // The invitation reached this address: that proves it.
        user.email_verified_at = Some(now());
        if !store::accept_invitation(&mut tx, inv.id).await? {
            return Err(ApiError::invalid_field(
                "invitation_token",
                "is invalid, used or expired",
            ));
        }
        (org, user, true)
    };
    store::insert_user(&mut tx, &user)
        .await
        .map_err(email_taken)?;
    account_created(
        &mut tx,
        &user,
        &ctx,
        NewEvent::new("auth.registered", "user", Some(user.id))
            .detail("new_organization", body.organization_name.is_some())
            .detail("role", user.role.as_str())
            .detail("status", user.status.as_str()),
    )
    .await?;
    let token = if verified {
        None
    } else {
        Some(
            service::email_token(
                &mut tx,
                user.id,
                VERIFY_EMAIL,
                state.config.auth.email_verification_ttl_secs,
            )
            .await?,
        )
    };
    tx.commit().await?;
    if let Some(token) = token {
        send_verification(&state, &user.email, token).await;
    }
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/users/{}", user.id))],
        Json(AccountCreated {
            user: user.into(),
            organization: org,
            verification_sent: !verified,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    pub token: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Verified {
    pub email_verified: bool,
}

/// Confirms an email address with the token that was mailed (valid 24 hours, once).
#[utoipa::path(post, path = "/api/v1/auth/verify-email", tag = "auth",
    request_body = TokenRequest,
    responses((status = 200, body = Verified), (status = 422, description = "Invalid, used or expired token")))]
pub async fn verify_email(
    State(state): State<AppState>,
    Json(body): Json<TokenRequest>,
) -> ApiResult<Json<Verified>> {
    let mut tx = state.db.begin().await?;
    let Some(user_id) =
        store::consume_email_token(&mut tx, VERIFY_EMAIL, &token_hash(&body.token)).await?
    else {
        return Err(ApiError::invalid_field(
            "token",
            "is invalid, used or expired",
        ));
    };
    tx.execute(
        &Query::update()
            .table("users")
            .value("email_verified_at", now())
            .and_where(Expr::col("id").eq(user_id))
            .to_owned(),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(Verified {
        email_verified: true,
    }))
}

/// Sends a new verification message to the signed-in user.
#[utoipa::path(post, path = "/api/v1/auth/verify-email/resend", tag = "auth",
    security(("bearer" = [])),
    responses((status = 202, description = "Sent"), (status = 409, description = "Already verified")))]
pub async fn resend_verification(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
) -> ApiResult<StatusCode> {
    let user = store::user_by_id(&state.db, me.user_id).await?;
    if user.email_verified_at.is_some() {
        return Err(ApiError::conflict("the email address is already verified"));
    }
    let mut tx = state.db.begin().await?;
    let token = service::email_token(
        &mut tx,
        user.id,
        VERIFY_EMAIL,
        state.config.auth.email_verification_ttl_secs,
    )
    .await?;
    tx.commit().await?;
    send_verification(&state, &user.email, token).await;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

/// Changes the caller's password and ends their other sessions.
#[utoipa::path(post, path = "/api/v1/auth/change-password", tag = "auth",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses((status = 204, description = "Changed; other sessions ended"), (status = 422, description = "Wrong current password or a weak new one")))]
pub async fn change_password(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
    ctx: AuditContext,
    Json(body): Json<ChangePasswordRequest>,
) -> ApiResult<StatusCode> {
    let user = store::user_by_id(&state.db, me.user_id).await?;
    if !state
        .auth
        .hasher
        .verify(&body.current_password, Some(&user.password_hash))
        .await?
    {
        return Err(ApiError::invalid_field("current_password", "is wrong"));
    }
    if let Err(m) = check_policy(
        &body.new_password,
        &user.email,
        state.config.auth.password_min_length,
    ) {
        return Err(ApiError::invalid_field("new_password", m));
    }
    if body.new_password == body.current_password {
        return Err(ApiError::invalid_field(
            "new_password",
            "must differ from the current password",
        ));
    }
    let hash = state.auth.hasher.hash(&body.new_password).await?;
    let mut tx = state.db.begin().await?;
    store::update_user(
        &mut tx,
        user.org_id,
        user.id,
        vec![("password_hash", hash.into())],
        None,
    )
    .await?;
    let list = service::revoke_sessions(
        &state,
        &mut tx,
        user.id,
        None,
        me.session_id(),
        "password_changed",
    )
    .await?;
    store::security_event_tx(
        &mut tx,
        Some(user.org_id),
        Some(user.id),
        SecurityEventKind::PasswordChanged,
        &ctx,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    service::broadcast(&state, &list).await;
    service::send_mail(
        &state,
        Mail {
            to: user.email.clone(),
            subject: "Your password was changed".into(),
            text: "Your Keel password was just changed and your other sessions were signed out. If this was not you, reset your password now.".into(),
            kind: "password_changed".into(),
            token: None,
        },
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordResetRequest {
    pub email: String,
}

/// Sends a password-reset token (valid 1 hour) if the address belongs to an active account.
/// Always answers 202, so it does not reveal which addresses have accounts.
#[utoipa::path(post, path = "/api/v1/auth/password-reset", tag = "auth",
    request_body = PasswordResetRequest,
    responses((status = 202, description = "If the account exists, a message is on its way")))]
pub async fn password_reset(
    State(state): State<AppState>,
    Json(body): Json<PasswordResetRequest>,
) -> ApiResult<StatusCode> {
    let email = Email::parse("email", &body.email).map_err(|e| ApiError::validation(vec![e]))?;
    if let Some(user) = store::user_by_email(&state.db, email.as_str()).await?
        && user.status == "active"
    {
        let mut tx = state.db.begin().await?;
        let token = service::email_token(
            &mut tx,
            user.id,
            PASSWORD_RESET,
            state.config.auth.password_reset_ttl_secs,
        )
        .await?;
        tx.commit().await?;
        service::send_mail(
            &state,
            Mail {
                to: user.email.clone(),
                subject: "Reset your password".into(),
                text: format!(
                    "Reset your password with this code (valid 1 hour):\n\n{token}\n\nPOST /api/v1/auth/password-reset/confirm {{\"token\": \"{token}\", \"new_password\": \"…\"}}"
                ),
                kind: PASSWORD_RESET.into(),
                token: Some(token),
            },
        )
        .await;
    }
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordResetConfirm {
    pub token: String,
    pub new_password: String,
}

/// Sets a new password with a reset token (once), ends every session and lifts a lockout.
#[utoipa::path(post, path = "/api/v1/auth/password-reset/confirm", tag = "auth",
    request_body = PasswordResetConfirm,
    responses((status = 204, description = "Password set"), (status = 422, description = "Invalid token or weak password")))]
pub async fn password_reset_confirm(
    State(state): State<AppState>,
    ctx: AuditContext,
    Json(body): Json<PasswordResetConfirm>,
) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin().await?;
    let Some(user_id) =
        store::consume_email_token(&mut tx, PASSWORD_RESET, &token_hash(&body.token)).await?
    else {
        return Err(ApiError::invalid_field(
            "token",
            "is invalid, used or expired",
        ));
    };
    let user = store::user_by_id_tx(&mut tx, user_id).await?;
    if let Err(m) = check_policy(
        &body.new_password,
        &user.email,
        state.config.auth.password_min_length,
    ) {
        return Err(ApiError::invalid_field("new_password", m));
    }
    // Hash outside the transaction would hold no lock; the transaction is short either way
    // because hashing happens on the blocking pool.
    let hash = state.auth.hasher.hash(&body.new_password).await?;
    store::update_user(
        &mut tx,
        user.org_id,
        user.id,
        vec![("password_hash", hash.into())],
        None,
    )
    .await?;
    let list =
        service::revoke_sessions(&state, &mut tx, user.id, None, None, "password_reset").await?;
    store::clear_failures(&mut tx, &service::account_subject(&user.email)).await?;
    store::security_event_tx(
        &mut tx,
        Some(user.org_id),
        Some(user.id),
        SecurityEventKind::PasswordReset,
        &ctx,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    service::broadcast(&state, &list).await;
    Ok(StatusCode::NO_CONTENT)
}
