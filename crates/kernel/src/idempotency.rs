//! `Idempotency-Key` on POST: a retry gets the first response again instead of repeating
//! the effect.
//!
//! Keys are scoped to the caller (organization and user). The first request with a key
//! claims it (a row `in_progress`, inserted atomically: a concurrent duplicate finds the row
//! and answers 409 — the handler never runs twice); its response (status, the headers that
//! matter, body) is stored encrypted under the kernel key ring and replayed for 24 hours to
//! a retry with the same body; the same key with another body answers 422. Only successful
//! responses are stored: after an error nothing changed, so the key is released and a retry
//! runs again. A claim whose request
//! died (process crash) lapses after the request timeout, so the key is not stuck.
//!
//! Not offered on `/api/v1/auth/*` and `/api/v1/setup` (their responses hold secrets), nor
//! for anonymous callers. Expired keys are swept as new ones are written.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use sea_query::{Expr, ExprTrait, OnConflict, Query};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::Principal;
use crate::http::ApiError;
use crate::state::AppState;
use crate::store::{StoreError, now};

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

const TTL_HOURS: i64 = 24;
/// Headers a replay reproduces.
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, header::ETAG];

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
struct Row {
    request_hash: String,
    state: String,
    locked_until: DateTime<Utc>,
    response: Option<String>,
    expires_at: DateTime<Utc>,
}

fn exempt(path: &str) -> bool {
    path.starts_with("/api/v1/auth/") || path == "/api/v1/setup"
}

fn context(org: Uuid, user: Uuid, key: &str) -> String {
    format!("idempotency_keys|response|{org}|{user}|{key}")
}

pub async fn idempotency<F, Fut>(state: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if req.method() != Method::POST || exempt(req.uri().path()) {
        return next(req).await;
    }
    let Some(raw_key) = req.headers().get(&IDEMPOTENCY_KEY).cloned() else {
        return next(req).await;
    };
    let key = match raw_key.to_str() {
        Ok(k)
            if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            k.to_string()
        }
        _ => {
            return ApiError::invalid_field(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
            .into_response();
        }
    };
    let (mut parts, body) = req.into_parts();
    let principal = match parts.extensions.get::<Principal>().cloned() {
        Some(p) => p,
        None => match Principal::from_request_parts(&mut parts, state).await {
            Ok(p) => p,
            // Anonymous or refused: the handler answers as it would without the key.
            Err(_) => return next(Request::from_parts(parts, body)).await,
        },
    };
    let limit = state.config.http.body_limit_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::payload_too_large("the request body exceeds the configured limit")
                .into_response();
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(b" ");
    hasher.update(parts.uri.to_string().as_bytes());
    hasher.update(b"\n");
    hasher.update(&bytes);
    let request_hash = hex::encode(hasher.finalize());

    let (org, user) = (principal.org_id, principal.user_id);
    let lock_for = state.config.request_timeout() + Duration::from_secs(5);
    match claim(state, org, user, &key, &request_hash, lock_for).await {
        Ok(Claim::Run) => {}
        Ok(Claim::Replay(stored)) => return replay(&stored),
        Ok(Claim::Conflict) => {
            return ApiError::conflict("a request with this Idempotency-Key is still in progress")
                .with_header(header::RETRY_AFTER, 1)
                .into_response();
        }
        Ok(Claim::Mismatch) => {
            return ApiError::invalid_field(
                "Idempotency-Key",
                "was already used with a different request; use a new key",
            )
            .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    }

    let response = next(Request::from_parts(parts, Body::from(bytes))).await;
    let status = response.status();
    // Only successes are kept: a refused request changed nothing, so running it again (or a
    // corrected one with the same key) is safe, and an error's body is rendered later.
    if !(status.is_success() || status.is_redirection()) {
        if let Err(e) = release(state, org, user, &key).await {
            tracing::warn!(error = %e, "could not release an idempotency key");
        }
        return response;
    }
    let (resp_parts, resp_body) = response.into_parts();
    let body = match axum::body::to_bytes(resp_body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "could not read a response to store it");
            let _ = release(state, org, user, &key).await;
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let stored = Stored {
        status: status.as_u16(),
        headers: KEPT_HEADERS
            .iter()
            .filter_map(|h| {
                resp_parts
                    .headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (h.as_str().to_string(), v.to_string()))
            })
            .collect(),
        body: STANDARD.encode(&body),
    };
    if let Err(e) = complete(state, org, user, &key, &stored).await {
        // The effect happened and the response stands; a retry will re-run the request.
        tracing::error!(error = %e, "could not store an idempotent response");
        let _ = release(state, org, user, &key).await;
    }
    Response::from_parts(resp_parts, Body::from(body))
}

enum Claim {
    Run,
    Replay(Stored),
    Conflict,
    Mismatch,
}

fn key_cond(org: Uuid, user: Uuid, key: &str) -> sea_query::Condition {
    sea_query::Cond::all()
        .add(Expr::col("org_id").eq(org))
        .add(Expr::col("user_id").eq(user))
        .add(Expr::col("idem_key").eq(key))
}

async fn claim(
    state: &AppState,
    org: Uuid,
    user: Uuid,
    key: &str,
    request_hash: &str,
    lock_for: Duration,
) -> Result<Claim, StoreError> {
    let at = now();
    let lock_until = at + TimeDelta::from_std(lock_for).unwrap_or(TimeDelta::seconds(60));
    let mut tx = state.db.begin().await?;
    // Now and then, sweep keys past their 24 hours.
    if rand::random::<u8>() < 4 {
        tx.execute(
            &Query::delete()
                .from_table("idempotency_keys")
                .and_where(Expr::col("expires_at").lte(at))
                .to_owned(),
        )
        .await?;
    }
    let inserted = tx
        .execute(
            &Query::insert()
                .into_table("idempotency_keys")
                .columns([
                    "org_id",
                    "user_id",
                    "idem_key",
                    "request_hash",
                    "state",
                    "locked_until",
                    "created_at",
                    "expires_at",
                ])
                .values_panic([
                    org.into(),
                    user.into(),
                    key.into(),
                    request_hash.into(),
                    "in_progress".into(),
                    lock_until.into(),
                    at.into(),
                    (at + TimeDelta::hours(TTL_HOURS)).into(),
                ])
                .on_conflict(
                    OnConflict::columns(["org_id", "user_id", "idem_key"])
                        .do_nothing()
                        .to_owned(),
                )
                .to_owned(),
        )
        .await?;
    if inserted == 1 {
        tx.commit().await?;
        return Ok(Claim::Run);
    }
    let row: Row = tx
        .fetch_one(
            &Query::select()
                .columns([
                    "request_hash",
                    "state",
                    "locked_until",
                    "response",
                    "expires_at",
                ])
                .from("idempotency_keys")
                .cond_where(key_cond(org, user, key))
                .lock(sea_query::LockType::Update)
                .to_owned(),
        )
        .await?;
    let take_over = Query::update()
        .table("idempotency_keys")
        .values([
            ("request_hash", request_hash.into()),
            ("state", "in_progress".into()),
            ("locked_until", lock_until.into()),
            ("response", Option::<String>::None.into()),
            ("created_at", at.into()),
            ("expires_at", (at + TimeDelta::hours(TTL_HOURS)).into()),
        ])
        .cond_where(key_cond(org, user, key))
        .to_owned();
    if row.expires_at <= at {
        tx.execute(&take_over).await?;
        tx.commit().await?;
        return Ok(Claim::Run);
    }
    if row.request_hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    match (row.state.as_str(), row.response) {
        ("done", Some(enc)) => {
            let plain = state
                .auth
                .keyring
                .decrypt_str(&enc, &context(org, user, key))
                .map_err(|e| StoreError::Other(anyhow::anyhow!("stored response: {e}")))?;
            let stored: Stored = serde_json::from_str(&plain)
                .map_err(|e| StoreError::Other(anyhow::anyhow!("stored response: {e}")))?;
            Ok(Claim::Replay(stored))
        }
        _ if row.locked_until <= at => {
            // The first request died without finishing: this retry takes the key over.
            tx.execute(&take_over).await?;
            tx.commit().await?;
            Ok(Claim::Run)
        }
        _ => Ok(Claim::Conflict),
    }
}

async fn complete(
    state: &AppState,
    org: Uuid,
    user: Uuid,
    key: &str,
    stored: &Stored,
) -> Result<(), StoreError> {
    let plain = serde_json::to_string(stored).map_err(|e| StoreError::Other(e.into()))?;
    let enc = state
        .auth
        .keyring
        .encrypt_str(&plain, &context(org, user, key))
        .map_err(|e| StoreError::Other(anyhow::anyhow!("{e}")))?;
    state
        .db
        .execute(
            &Query::update()
                .table("idempotency_keys")
                .values([("state", "done".into()), ("response", enc.into())])
                .cond_where(key_cond(org, user, key))
                .to_owned(),
        )
        .await?;
    Ok(())
}

async fn release(state: &AppState, org: Uuid, user: Uuid, key: &str) -> Result<(), StoreError> {
    state
        .db
        .execute(
            &Query::delete()
                .from_table("idempotency_keys")
                .cond_where(key_cond(org, user, key))
                .to_owned(),
        )
        .await?;
    Ok(())
}

fn replay(stored: &Stored) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let body = STANDARD.decode(&stored.body).unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (name, value) in &stored.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    headers.insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    let mut response = (status, body).into_response();
    response.headers_mut().extend(headers);
    response
}
