//! Identity use cases shared by several routes: starting a session, issuing tokens,
//! counting failed sign-ins, sending one-time tokens, revoking a user's access.

use chrono::{DateTime, TimeDelta, Utc};
use sea_query::{OnConflict, Query};
use uuid::Uuid;

use super::revocation::{self, Revocation, RevocationKind};
use super::store::{self, FailureRow, SessionRow, UserRow};
use super::tokens::AccessClaims;
use crate::crypto::{random_token, token_hash};
use crate::http::ApiError;
use crate::mail::Mail;
use crate::state::AppState;
use crate::store::{StoreError, Tx, now};

/// What a successful sign-in or refresh hands the client.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub session_id: Uuid,
    pub csrf_token: String,
    pub enrolment_pending: bool,
}

/// Where a request came from, recorded on sessions and security events.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

fn secs(n: u64) -> TimeDelta {
    TimeDelta::seconds(i64::try_from(n).unwrap_or(i64::MAX / 1000))
}

/// Whether the user must enrol in two-factor sign-in before doing anything else.
pub async fn enrolment_pending(tx: &mut Tx, user: &UserRow) -> Result<bool, StoreError> {
    if user.totp_enabled
        || !(user.role == super::access::ADMIN || user.role == super::access::SUPER_ADMIN)
    {
        return Ok(false);
    }
    Ok(store::get_org_tx(tx, user.org_id).await?.require_admin_2fa)
}

pub fn access_token(
    state: &AppState,
    user: &UserRow,
    session_id: Uuid,
    enrolment_pending: bool,
) -> Result<(String, u64), ApiError> {
    let ttl = state.config.auth.access_token_ttl_secs;
    let issued = Utc::now();
    let iat = issued.timestamp();
    let claims = AccessClaims {
        sub: user.id,
        org: user.org_id,
        role: user.role.clone(),
        sid: session_id,
        jti: Uuid::now_v7(),
        iat,
        ims: Some(issued.timestamp_millis()),
        exp: iat + i64::try_from(ttl).unwrap_or(900),
        iss: state.config.auth.issuer.clone(),
        aud: state.config.auth.audience.clone(),
        pid: user.partner_id,
        enr: enrolment_pending,
    };
    Ok((state.auth.keys.sign(&claims)?, ttl))
}

/// Opens a session for a user who has proven who they are.
pub async fn start_session(
    state: &AppState,
    tx: &mut Tx,
    user: &UserRow,
    origin: &Origin,
) -> Result<IssuedTokens, ApiError> {
    let auth = &state.config.auth;
    let refresh = random_token(32);
    let at = now();
    let session = SessionRow {
        id: Uuid::now_v7(),
        org_id: user.org_id,
        user_id: user.id,
        refresh_hash: token_hash(&refresh),
        previous_refresh_hash: None,
        rotated_at: None,
        ip: origin.ip.clone(),
        user_agent: origin.user_agent.clone(),
        created_at: at,
        last_used_at: at,
        expires_at: at + secs(auth.refresh_token_ttl_secs),
        absolute_expires_at: at + secs(auth.session_max_age_secs),
        revoked_at: None,
        revoked_reason: None,
    };
    store::insert_session(tx, &session).await?;
    let pending = enrolment_pending(tx, user).await?;
    let (access, expires_in) = access_token(state, user, session.id, pending)?;
    Ok(IssuedTokens {
        access_token: access,
        refresh_token: refresh,
        expires_in,
        session_id: session.id,
        csrf_token: state.auth.keys.csrf_token(session.id),
        enrolment_pending: pending,
    })
}

/// Tokens for an existing session after a refresh: a new access token (with the user's
/// current role) and the given refresh token.
pub async fn reissue(
    state: &AppState,
    tx: &mut Tx,
    user: &UserRow,
    session_id: Uuid,
    refresh_token: String,
) -> Result<IssuedTokens, ApiError> {
    let pending = enrolment_pending(tx, user).await?;
    let (access, expires_in) = access_token(state, user, session_id, pending)?;
    Ok(IssuedTokens {
        access_token: access,
        refresh_token,
        expires_in,
        session_id,
        csrf_token: state.auth.keys.csrf_token(session_id),
        enrolment_pending: pending,
    })
}

/// Ends sessions (and their access tokens) inside `tx`; returns the revocations to broadcast
/// after commit.
pub async fn revoke_sessions(
    state: &AppState,
    tx: &mut Tx,
    user_id: Uuid,
    only: Option<Uuid>,
    keep: Option<Uuid>,
    reason: &str,
) -> Result<Vec<Revocation>, StoreError> {
    let ids = store::revoke_sessions(tx, user_id, only, keep, reason).await?;
    let until = now() + secs(state.config.auth.access_token_ttl_secs) + TimeDelta::seconds(60);
    let list: Vec<Revocation> = ids
        .into_iter()
        .map(|sid| Revocation {
            kind: RevocationKind::Session,
            subject: sid,
            not_before: None,
            until,
        })
        .collect();
    revocation::record(tx, &list).await?;
    Ok(list)
}

/// Refuses every access token a user holds that was issued before now (role change): they
/// refresh and get one with the new role.
pub async fn refuse_older_tokens(
    state: &AppState,
    tx: &mut Tx,
    user_id: Uuid,
) -> Result<Vec<Revocation>, StoreError> {
    let at = now();
    let list = vec![Revocation {
        kind: RevocationKind::UserBefore,
        subject: user_id,
        not_before: Some(at),
        until: at + secs(state.config.auth.access_token_ttl_secs) + TimeDelta::seconds(60),
    }];
    revocation::record(tx, &list).await?;
    Ok(list)
}

/// After commit: apply and publish revocations.
pub async fn broadcast(state: &AppState, list: &[Revocation]) {
    revocation::broadcast(&state.auth.revocations, state.redis.as_ref(), list).await;
}

/// Creates a one-time email token, returns it (to put in the message).
pub async fn email_token(
    tx: &mut Tx,
    user_id: Uuid,
    purpose: &str,
    ttl_secs: u64,
) -> Result<String, StoreError> {
    let token = random_token(32);
    store::insert_email_token(
        tx,
        user_id,
        purpose,
        &token_hash(&token),
        now() + secs(ttl_secs),
    )
    .await?;
    Ok(token)
}

/// Sends a message; a failure is logged, not shown to the client (the action it follows has
/// committed, and the user can ask again).
pub async fn send_mail(state: &AppState, mail: Mail) {
    let kind = mail.kind.clone();
    if let Err(e) = state.auth.mailer.send(mail).await {
        tracing::error!(error = %e, kind, "could not send a message");
    }
}

/// The outcome of counting one failed sign-in against a subject.
#[derive(Debug, Clone)]
pub struct FailureCount {
    pub failures: i64,
    /// Set when this failure (or an earlier one) locked the subject.
    pub locked_until: Option<DateTime<Utc>>,
    /// True when this very failure crossed the threshold.
    pub just_locked: bool,
}

/// Counts a failure for `subject` atomically: consecutive (no window) when `window` is None,
/// else within a sliding start window. Crossing `threshold` locks the subject for `lock`.
pub async fn count_failure(
    tx: &mut Tx,
    subject: &str,
    window: Option<TimeDelta>,
    threshold: u32,
    lock: TimeDelta,
) -> Result<FailureCount, StoreError> {
    let at = now();
    // Make sure the row exists, then lock it (SQLite: the transaction already holds the
    // write lock; PostgreSQL: FOR UPDATE), so concurrent failures never lose a count.
    tx.execute(
        &Query::insert()
            .into_table("login_failures")
            .columns(["subject", "failures", "window_started_at"])
            .values_panic([subject.into(), 0i64.into(), at.into()])
            .on_conflict(OnConflict::column("subject").do_nothing().to_owned())
            .to_owned(),
    )
    .await?;
    let row: FailureRow = tx
        .fetch_one(
            &Query::select()
                .columns(["subject", "failures", "window_started_at", "locked_until"])
                .from("login_failures")
                .and_where(sea_query::Expr::col("subject").eq(subject))
                .lock(sea_query::LockType::Update)
                .to_owned(),
        )
        .await?;
    let lock_expired = row.locked_until.is_some_and(|t| t <= at);
    let window_expired = window.is_some_and(|w| row.window_started_at + w <= at);
    let (mut failures, started, mut locked_until) = if lock_expired || window_expired {
        (0, at, None)
    } else {
        (row.failures, row.window_started_at, row.locked_until)
    };
    failures += 1;
    let mut just_locked = false;
    if locked_until.is_none() && failures >= i64::from(threshold) {
        locked_until = Some(at + lock);
        just_locked = true;
    }
    store::put_failures(
        tx,
        &FailureRow {
            subject: subject.to_string(),
            failures,
            window_started_at: started,
            locked_until,
        },
    )
    .await?;
    Ok(FailureCount {
        failures,
        locked_until,
        just_locked,
    })
}

use sea_query::ExprTrait as _;

/// The brute-force subject for an account (a hash: the table never holds emails).
pub fn account_subject(email: &str) -> String {
    format!("account:{}", token_hash(email))
}

pub fn ip_subject(ip: &str) -> String {
    format!("ip:{ip}")
}

/// Seconds until `t`, at least 1 (for `Retry-After`).
pub fn retry_after(t: DateTime<Utc>) -> i64 {
    std::cmp::max((t - Utc::now()).num_seconds(), 1)
}
