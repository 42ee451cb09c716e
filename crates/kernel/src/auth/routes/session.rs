//! Sign-in, two-factor completion, refresh, sign-out and the caller's sessions.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{clear_cookies, cookies_for, origin};
use crate::audit::{AuditContext, EventActor, NewEvent};
use crate::auth::domain::Email;
use crate::auth::revocation::{self, Revocation, RevocationKind};
use crate::auth::service::{self, IssuedTokens};
use crate::auth::store::{self, SecurityEventKind, User, UserStatus};
use crate::auth::totp;
use crate::auth::{REFRESH_COOKIE, SignedIn, cookie_value};
use crate::crypto::{random_token, token_hash};
use crate::http::{ApiError, ApiResult, ClientIp, FieldError, Json, Path};
use crate::state::AppState;
use crate::store::now;

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(example = "admin@example.com")]
    pub email: String,
    #[schema(example = "a-long-passphrase")]
    pub password: String,
}

/// Tokens for a signed-in session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub session_id: Uuid,
    /// Send as `X-CSRF-Token` on state-changing requests authenticated by cookie.
    pub csrf_token: String,
    /// The organization requires two-factor sign-in and the user has not enrolled: only
    /// `/api/v1/auth/totp/*`, `/auth/me` and sign-out are open until they do.
    pub mfa_enrolment_required: bool,
    pub user: User,
}

/// A sign-in that needs a second factor: complete it at `POST /api/v1/auth/login/totp`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MfaChallengeResponse {
    /// Always true.
    pub mfa_required: bool,
    pub challenge_token: String,
    pub expires_in: u64,
}

fn token_response(state: &AppState, issued: IssuedTokens, user: User) -> Response {
    let cookies = cookies_for(state, &issued);
    let body = TokenResponse {
        access_token: issued.access_token,
        refresh_token: issued.refresh_token,
        token_type: "Bearer".into(),
        expires_in: issued.expires_in,
        session_id: issued.session_id,
        csrf_token: issued.csrf_token,
        mfa_enrolment_required: issued.enrolment_pending,
        user,
    };
    let mut response = (StatusCode::OK, Json(body)).into_response();
    for c in cookies {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// Signs in with email and password.
///
/// Five consecutive failures lock the account for 15 minutes (423); ten failures from one
/// address within 15 minutes block the address (429). Unknown emails answer exactly like
/// wrong passwords.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in, or a second factor is needed", body = TokenResponse),
        (status = 401, description = "Wrong email or password; `remaining_attempts` says how many remain"),
        (status = 403, description = "The account is pending approval or deactivated"),
        (status = 423, description = "The account is locked; see Retry-After"),
        (status = 429, description = "Too many failures from this address; see Retry-After"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ip: axum::Extension<ClientIp>,
    headers: HeaderMap,
    ctx: AuditContext,
    Json(body): Json<LoginRequest>,
) -> ApiResult<Response> {
    let origin = origin(&ip, &headers);
    let ip_text = ip.0.0.to_string();
    let mut errors = Vec::new();
    let email = Email::parse("email", &body.email)
        .map_err(|e| errors.push(e))
        .ok();
    if body.password.is_empty() || body.password.len() > 1024 {
        errors.push(FieldError::new("password", "must be 1 to 1024 characters"));
    }
    let Some(email) = email.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let cfg = &state.config.auth;
    let ip_subject = service::ip_subject(&ip_text);
    let account_subject = service::account_subject(email.as_str());
    let at = now();
    if let Some(row) = store::failures(&state.db, &ip_subject).await?
        && let Some(until) = row.locked_until.filter(|t| *t > at)
    {
        return Err(ip_blocked(until));
    }
    if let Some(row) = store::failures(&state.db, &account_subject).await?
        && let Some(until) = row.locked_until.filter(|t| *t > at)
    {
        return Err(account_locked(until));
    }

    let user = store::user_by_email(&state.db, email.as_str()).await?;
    let ok = state
        .auth
        .hasher
        .verify(
            &body.password,
            user.as_ref().map(|u| u.password_hash.as_str()),
        )
        .await?;
    let Some(user) = user.filter(|_| ok) else {
        return Err(failed_login(&state, &email, &ctx, &account_subject, &ip_subject).await?);
    };

    let mut tx = state.db.begin().await?;
    store::clear_failures(&mut tx, &account_subject).await?;
    match UserStatus::parse(&user.status) {
        Some(UserStatus::Active) => {}
        Some(UserStatus::PendingApproval) => {
            tx.commit().await?;
            return Err(ApiError::forbidden(
                "the account is waiting for an administrator's approval",
            )
            .with_extra("account_status", "pending_approval"));
        }
        _ => {
            tx.commit().await?;
            return Err(ApiError::forbidden("the account has been deactivated")
                .with_extra("account_status", "deactivated"));
        }
    }
    if user.totp_enabled {
        let challenge = random_token(32);
        let ttl = cfg.mfa_challenge_ttl_secs;
        store::insert_mfa_challenge(
            &mut tx,
            user.id,
            &token_hash(&challenge),
            at + TimeDelta::seconds(i64::try_from(ttl).unwrap_or(300)),
            origin.ip.as_deref(),
            origin.user_agent.as_deref(),
        )
        .await?;
        tx.commit().await?;
        return Ok((
            StatusCode::OK,
            Json(MfaChallengeResponse {
                mfa_required: true,
                challenge_token: challenge,
                expires_in: ttl,
            }),
        )
            .into_response());
    }
    let issued = service::start_session(&state, &mut tx, &user, &origin).await?;
    signed_in(&mut tx, &user, &issued, &ctx, "password").await?;
    metrics::counter!("keel_auth_events_total", "event" => "login").increment(1);
    tx.commit().await?;
    Ok(token_response(&state, issued, user.into()))
}

/// A successful sign-in, in the user's organization's audit trail.
async fn signed_in(
    tx: &mut crate::store::Tx,
    user: &store::UserRow,
    issued: &IssuedTokens,
    ctx: &AuditContext,
    method: &'static str,
) -> Result<(), crate::store::StoreError> {
    crate::audit::record_as(
        tx,
        Some(user.org_id),
        &EventActor::user(user.id),
        ctx,
        NewEvent::new("auth.login", "session", Some(issued.session_id)).detail("method", method),
    )
    .await
    .map(|_| ())
}

/// A sign-out or session revocation, in the user's organization's audit trail.
async fn signed_out(
    tx: &mut crate::store::Tx,
    me: &crate::auth::Principal,
    ctx: &AuditContext,
    action: &'static str,
    session: Option<Uuid>,
    ended: usize,
) -> Result<(), crate::store::StoreError> {
    crate::audit::record_as(
        tx,
        Some(me.home_org),
        &EventActor::user(me.user_id),
        ctx,
        NewEvent::new(action, "session", session).detail("sessions_ended", ended),
    )
    .await
    .map(|_| ())
}

fn ip_blocked(until: DateTime<Utc>) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "/problems/ip-blocked",
        "Too many failed sign-ins",
    )
    .detail("too many failed sign-ins from this address; try again later")
    .with_header(header::RETRY_AFTER, service::retry_after(until))
}

fn account_locked(until: DateTime<Utc>) -> ApiError {
    ApiError::new(
        StatusCode::LOCKED,
        "/problems/account-locked",
        "Account locked",
    )
    .detail("too many failed sign-ins; the account is locked for a while")
    .with_header(header::RETRY_AFTER, service::retry_after(until))
    .with_extra("remaining_attempts", 0)
}

async fn failed_login(
    state: &AppState,
    email: &Email,
    ctx: &AuditContext,
    account_subject: &str,
    ip_subject: &str,
) -> Result<ApiError, ApiError> {
    let cfg = &state.config.auth;
    let mut tx = state.db.begin().await?;
    let account = service::count_failure(
        &mut tx,
        account_subject,
        None,
        cfg.lockout_threshold,
        TimeDelta::seconds(cfg.lockout_secs as i64),
    )
    .await?;
    let by_ip = service::count_failure(
        &mut tx,
        ip_subject,
        Some(TimeDelta::seconds(cfg.ip_block_window_secs as i64)),
        cfg.ip_block_threshold,
        TimeDelta::seconds(cfg.ip_block_secs as i64),
    )
    .await?;
    // Security events name the user when the email belongs to one, never the password.
    let user = store::user_by_email_tx(&mut tx, email.as_str()).await?;
    let (org, uid) = user
        .as_ref()
        .map_or((None, None), |u| (Some(u.org_id), Some(u.id)));
    store::security_event_tx(
        &mut tx,
        org,
        uid,
        SecurityEventKind::LoginFailed,
        ctx,
        serde_json::json!({ "failures": account.failures }),
    )
    .await?;
    metrics::counter!("keel_auth_events_total", "event" => "login_failed").increment(1);
    if account.just_locked {
        metrics::counter!("keel_auth_events_total", "event" => "account_locked").increment(1);
    }
    if by_ip.just_locked {
        metrics::counter!("keel_auth_events_total", "event" => "ip_blocked").increment(1);
    }
    if account.just_locked {
        store::security_event_tx(
            &mut tx,
            org,
            uid,
            SecurityEventKind::AccountLocked,
            ctx,
            serde_json::json!({}),
        )
        .await?;
    }
    if by_ip.just_locked {
        store::security_event_tx(
            &mut tx,
            None,
            None,
            SecurityEventKind::IpBlocked,
            ctx,
            serde_json::json!({}),
        )
        .await?;
    }
    tx.commit().await?;
    if let Some(until) = by_ip.locked_until {
        return Ok(ip_blocked(until));
    }
    if let Some(until) = account.locked_until {
        return Ok(account_locked(until));
    }
    let remaining = i64::from(cfg.lockout_threshold) - account.failures;
    Ok(ApiError::unauthorized("the email or password is wrong")
        .with_extra("remaining_attempts", remaining.max(0)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TotpLoginRequest {
    pub challenge_token: String,
    /// A 6-digit code from the authenticator app, or a recovery code.
    pub code: String,
}

/// Completes a sign-in that needs a second factor.
#[utoipa::path(post, path = "/api/v1/auth/login/totp", tag = "auth",
    request_body = TotpLoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 401, description = "Wrong code, or the challenge expired or was used"),
    ))]
pub async fn login_totp(
    State(state): State<AppState>,
    ip: axum::Extension<ClientIp>,
    headers: HeaderMap,
    ctx: AuditContext,
    Json(body): Json<TotpLoginRequest>,
) -> ApiResult<Response> {
    const MAX_ATTEMPTS: i64 = 5;
    let origin = origin(&ip, &headers);
    let mut tx = state.db.begin().await?;
    let Some(challenge) =
        store::open_mfa_challenge(&mut tx, &token_hash(&body.challenge_token)).await?
    else {
        return Err(ApiError::unauthorized(
            "the challenge is unknown, used or expired; sign in again",
        ));
    };
    if challenge.attempts >= MAX_ATTEMPTS {
        return Err(ApiError::unauthorized(
            "too many wrong codes; sign in again",
        ));
    }
    let user = store::user_by_id_tx(&mut tx, challenge.user_id).await?;
    let verified = totp::verify_login_code(&state, &mut tx, &user, &body.code, &ctx).await?;
    store::mfa_attempt(&mut tx, challenge.id, verified).await?;
    if !verified {
        tx.commit().await?;
        return Err(ApiError::unauthorized("the code is wrong").with_extra(
            "remaining_attempts",
            (MAX_ATTEMPTS - challenge.attempts - 1).max(0),
        ));
    }
    if user.status != "active" {
        tx.commit().await?;
        return Err(ApiError::forbidden("the account is not active"));
    }
    let issued = service::start_session(&state, &mut tx, &user, &origin).await?;
    signed_in(&mut tx, &user, &issued, &ctx, "totp").await?;
    metrics::counter!("keel_auth_events_total", "event" => "login").increment(1);
    tx.commit().await?;
    Ok(token_response(&state, issued, user.into()))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The refresh token (or the `keel_refresh` cookie).
    pub refresh_token: Option<String>,
}

/// Exchanges a refresh token for a new pair; the old refresh token dies.
///
/// Presenting a refresh token that was already rotated revokes the whole session (token
/// theft), except within a short grace window after its rotation, when it yields the same
/// new pair (two tabs refreshing at once).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair", body = TokenResponse),
        (status = 401, description = "Unknown, expired or revoked refresh token"),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    ip: axum::Extension<ClientIp>,
    headers: HeaderMap,
    ctx: AuditContext,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    // The body is optional: a browser may rely on the refresh cookie alone.
    let body: RefreshRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RefreshRequest::default()
    } else {
        crate::http::extract::parse_json(&body)?
    };
    let token = body
        .refresh_token
        .or_else(|| cookie_value(&headers, REFRESH_COOKIE).map(str::to_string))
        .filter(|t| !t.is_empty() && t.len() <= 512)
        .ok_or_else(|| ApiError::invalid_field("refresh_token", "is required"))?;
    let hash = token_hash(&token);
    // The `auth.refresh` limit counts per session once the token names one; unknown tokens
    // count against the client address.
    let ns = &state.config.rate_limits.namespace;
    let limit_key = match store::session_of_refresh_hash(&state.db, &hash).await? {
        Some(sid) => format!("{ns}session:{sid}"),
        None => format!("{ns}ip:{}", ip.0.0),
    };
    let decision = match crate::limits::http::check(&state, "auth.refresh", &limit_key).await {
        Ok(d) => d,
        Err(refused) => return Ok(refused),
    };
    let mut response = refresh_session(&state, &token, &hash, &ctx).await?;
    crate::limits::http::add_headers(&mut response, &decision);
    Ok(response)
}

async fn refresh_session(
    state: &AppState,
    token: &str,
    hash: &str,
    ctx: &AuditContext,
) -> ApiResult<Response> {
    let state = state.clone();
    let token = token.to_string();
    let hash = hash.to_string();
    let cfg = &state.config.auth;
    let at = now();
    let mut tx = state.db.begin().await?;
    let unauthorized = || ApiError::unauthorized("the refresh token is not valid; sign in again");

    if let Some(session) = store::session_by_refresh_hash(&mut tx, &hash).await? {
        if session.revoked_at.is_some()
            || session.expires_at <= at
            || session.absolute_expires_at <= at
        {
            return Err(unauthorized());
        }
        let user = store::user_by_id_tx(&mut tx, session.user_id).await?;
        if user.status != "active" {
            return Err(unauthorized());
        }
        let child = state.auth.keys.child_refresh_token(&token);
        let expires = (at + TimeDelta::seconds(cfg.refresh_token_ttl_secs as i64))
            .min(session.absolute_expires_at);
        if !store::rotate_session(&mut tx, session.id, &hash, &token_hash(&child), expires).await? {
            return Err(unauthorized());
        }
        let issued = service::reissue(&state, &mut tx, &user, session.id, child).await?;
        tx.commit().await?;
        return Ok(token_response(&state, issued, user.into()));
    }

    let Some(session) = store::session_by_old_refresh_hash(&mut tx, &hash).await? else {
        return Err(unauthorized());
    };
    if session.revoked_at.is_some() {
        return Err(unauthorized());
    }
    let grace = TimeDelta::seconds(cfg.refresh_reuse_grace_secs as i64);
    let within_grace = session.previous_refresh_hash.as_deref() == Some(hash.as_str())
        && session.rotated_at.is_some_and(|t| at - t <= grace);
    if within_grace {
        // The same successor the first refresh produced: both callers end up with one
        // valid refresh token.
        let child = state.auth.keys.child_refresh_token(&token);
        if token_hash(&child) != session.refresh_hash {
            return Err(unauthorized());
        }
        let user = store::user_by_id_tx(&mut tx, session.user_id).await?;
        if user.status != "active" {
            return Err(unauthorized());
        }
        let issued = service::reissue(&state, &mut tx, &user, session.id, child).await?;
        tx.commit().await?;
        return Ok(token_response(&state, issued, user.into()));
    }
    // Reuse of a rotated token: someone else holds this session's tokens. End it.
    let revoked = service::revoke_sessions(
        &state,
        &mut tx,
        session.user_id,
        Some(session.id),
        None,
        "refresh_reuse",
    )
    .await?;
    store::security_event_tx(
        &mut tx,
        Some(session.org_id),
        Some(session.user_id),
        SecurityEventKind::RefreshReuse,
        ctx,
        serde_json::json!({ "session_id": session.id }),
    )
    .await?;
    tx.commit().await?;
    service::broadcast(&state, &revoked).await;
    tracing::warn!(session_id = %session.id, "refresh token reuse: session revoked");
    metrics::counter!("keel_auth_events_total", "event" => "refresh_reuse").increment(1);
    Err(ApiError::unauthorized(
        "this refresh token was already used; the session has been revoked for safety",
    )
    .with_extra("session_revoked", true))
}

/// Signs out: ends this session and its access token everywhere.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses((status = 204, description = "Signed out")))]
pub async fn logout(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
    ctx: AuditContext,
) -> ApiResult<Response> {
    let mut list = Vec::new();
    let mut tx = state.db.begin().await?;
    if let crate::auth::Credential::Session {
        session_id,
        jti,
        exp,
    } = me.credential
    {
        list.extend(
            service::revoke_sessions(
                &state,
                &mut tx,
                me.user_id,
                Some(session_id),
                None,
                "logout",
            )
            .await?,
        );
        let token = vec![Revocation {
            kind: RevocationKind::Token,
            subject: jti,
            not_before: None,
            until: DateTime::from_timestamp(exp, 0).unwrap_or_else(Utc::now)
                + TimeDelta::seconds(60),
        }];
        revocation::record(&mut tx, &token).await?;
        list.extend(token);
        signed_out(&mut tx, &me, &ctx, "auth.logout", Some(session_id), 1).await?;
    }
    tx.commit().await?;
    service::broadcast(&state, &list).await;
    let mut response = StatusCode::NO_CONTENT.into_response();
    for c in clear_cookies(&state) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(response)
}

/// Signs out everywhere: ends every session of the caller.
#[utoipa::path(post, path = "/api/v1/auth/logout-all-devices", tag = "auth",
    security(("bearer" = [])),
    responses((status = 204, description = "Every session ended")))]
pub async fn logout_all(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
    ctx: AuditContext,
) -> ApiResult<Response> {
    let mut tx = state.db.begin().await?;
    let list =
        service::revoke_sessions(&state, &mut tx, me.user_id, None, None, "logout_all").await?;
    let ended = list
        .iter()
        .filter(|r| r.kind == RevocationKind::Session)
        .count();
    signed_out(&mut tx, &me, &ctx, "auth.logout_all", None, ended).await?;
    tx.commit().await?;
    service::broadcast(&state, &list).await;
    let mut response = StatusCode::NO_CONTENT.into_response();
    for c in clear_cookies(&state) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(response)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The session this request was made with.
    pub current: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub data: Vec<SessionInfo>,
}

/// The caller's active sessions.
#[utoipa::path(get, path = "/api/v1/auth/sessions", tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = SessionList)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
) -> ApiResult<Json<SessionList>> {
    let current = me.session_id();
    let data = store::active_sessions(&state.db, me.user_id)
        .await?
        .into_iter()
        .map(|s| SessionInfo {
            current: Some(s.id) == current,
            id: s.id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            ip: s.ip,
            user_agent: s.user_agent,
        })
        .collect();
    Ok(Json(SessionList { data }))
}

/// Ends one of the caller's sessions (another device).
#[utoipa::path(delete, path = "/api/v1/auth/sessions/{id}", tag = "auth",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Session id")),
    responses((status = 204, description = "Ended"), (status = 404, description = "Not one of the caller's sessions")))]
pub async fn delete_session(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin().await?;
    let list = service::revoke_sessions(
        &state,
        &mut tx,
        me.user_id,
        Some(id),
        None,
        "revoked_by_user",
    )
    .await?;
    if list.is_empty() {
        return Err(ApiError::not_found());
    }
    signed_out(&mut tx, &me, &ctx, "auth.session_revoked", Some(id), 1).await?;
    tx.commit().await?;
    service::broadcast(&state, &list).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    #[serde(flatten)]
    pub user: User,
    /// The permissions the caller holds.
    pub permissions: Vec<String>,
    pub mfa_enrolment_required: bool,
}

/// The signed-in user.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = Me)))]
pub async fn me(State(state): State<AppState>, SignedIn(me): SignedIn) -> ApiResult<Json<Me>> {
    let user = store::user_by_id(&state.db, me.user_id).await?;
    Ok(Json(Me {
        user: user.into(),
        permissions: me.permissions().into_iter().map(String::from).collect(),
        mfa_enrolment_required: me.enrolment_pending,
    }))
}
