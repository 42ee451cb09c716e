//! Rate limiting in the HTTP stack: a route layer that runs before any handler or
//! extractor (so a sign-in storm is answered 429 before the account lockout's 423).
//!
//! The route's policy is the one its module named ([`crate::module::ModuleRouter::limited`]),
//! else `authenticated` (keyed by organization) for a caller with valid credentials, else
//! `anonymous` (keyed by client IP). Operational routes (`/health*`, `/metrics`, the API
//! document) are not limited. A policy keyed by session (`auth.refresh`) is decided by its
//! handler, which knows the session once it has looked the token up.
//!
//! Every limited response carries `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset`; a refusal is a 429 problem naming the policy, with `Retry-After`.

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Decision, KeyKind, LimitError};
use crate::auth::Principal;
use crate::http::{ApiError, ClientIp};
use crate::state::AppState;

pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

fn exempt(path: &str) -> bool {
    !path.starts_with("/api/v1/")
}

/// Adds the `RateLimit-*` headers of a decision to a response.
pub fn add_headers(response: &mut Response, d: &Decision) {
    let h = response.headers_mut();
    h.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(d.limit));
    h.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(d.remaining));
    h.insert(
        RATELIMIT_RESET.clone(),
        HeaderValue::from(d.reset_after_secs()),
    );
}

/// The answer for a refused or undecidable request.
pub fn refusal(policy: &str, result: &Result<Decision, LimitError>) -> Response {
    match result {
        Ok(d) => {
            let retry = d.retry_after_secs().unwrap_or(1);
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/rate-limited",
                "Too many requests",
            )
            .detail(format!(
                "the `{policy}` rate limit is exhausted; retry in {retry} s"
            ))
            .with_extra("policy", policy)
            .with_header(header::RETRY_AFTER, retry)
            .into_response();
            add_headers(&mut r, d);
            r
        }
        Err(LimitError::Unavailable) => ApiError::service_unavailable(
            "rate limiting is temporarily unavailable for this route; retry shortly",
        )
        .with_extra("policy", policy)
        .with_header(header::RETRY_AFTER, 1)
        .into_response(),
        Err(LimitError::UnknownPolicy(name)) => ApiError::internal(anyhow::anyhow!(
            "route names unknown rate-limit policy `{name}`"
        ))
        .into_response(),
    }
}

/// Checks `policy` for `key`; `Ok(decision)` when allowed, else the refusal response.
pub async fn check(state: &AppState, policy: &str, key: &str) -> Result<Decision, Response> {
    let result = state.limits.check(policy, key).await;
    let outcome = match &result {
        Ok(d) if d.allowed => "allowed",
        Ok(_) => "refused",
        Err(_) => "unavailable",
    };
    metrics::counter!("keel_rate_limit_decisions_total", "policy" => policy.to_string(), "outcome" => outcome)
        .increment(1);
    match &result {
        Ok(d) if d.allowed => Ok(*d),
        _ => Err(refusal(policy, &result)),
    }
}

/// The route's rate-limit policy (part of the kernel's per-route middleware, see
/// [`crate::server`]): `next` runs the rest of the request when the call is allowed.
pub async fn limit_requests<F, Fut>(state: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let Some(path) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
    else {
        return next(req).await;
    };
    if exempt(&path) {
        return next(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let has_credentials = parts.headers.contains_key(header::AUTHORIZATION)
        || parts.headers.contains_key(header::COOKIE);
    // Resolving the caller here also serves the handler: the principal is kept in the
    // request extensions, so the token is verified once.
    let principal = if has_credentials {
        Principal::from_request_parts(&mut parts, state).await.ok()
    } else {
        None
    };
    let policy = state
        .route_policies
        .get(&(parts.method.clone(), path))
        .copied()
        .unwrap_or(if principal.is_some() {
            "authenticated"
        } else {
            "anonymous"
        });
    let Some(kind) = state.limits.policy(policy).map(|p| p.key) else {
        return refusal(policy, &Err(LimitError::UnknownPolicy(policy.to_string())));
    };
    let ip = parts
        .extensions
        .get::<ClientIp>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let ns = &state.config.rate_limits.namespace;
    let key = match (kind, &principal) {
        (KeyKind::Session, _) => {
            // Decided by the handler once the session is known.
            return next(Request::from_parts(parts, body)).await;
        }
        (KeyKind::Ip, _) | (_, None) => format!("{ns}ip:{ip}"),
        (KeyKind::User | KeyKind::UserOrIp, Some(p)) => format!("{ns}user:{}", p.user_id),
        (KeyKind::Org, Some(p)) => format!("{ns}org:{}", p.org_id),
    };
    match check(state, policy, &key).await {
        Ok(decision) => {
            let mut response = next(Request::from_parts(parts, body)).await;
            add_headers(&mut response, &decision);
            response
        }
        Err(refused) => refused,
    }
}
