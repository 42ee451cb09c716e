//! [`AuditContext`]: where an action came from, taken from the request (request id, client
//! IP — masked before it is stored —, user agent, method, route template, the credential
//! used) or naming a system actor for work that has no request (jobs, the scheduler).

use std::convert::Infallible;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::header;
use axum::http::request::Parts;
use uuid::Uuid;

use super::event::EventContext;
use crate::auth::{Credential, Principal};
use crate::http::{ClientIp, RequestId, RequestStart};
use crate::state::AppState;

const MAX_USER_AGENT: usize = 256;

/// The request context of an audit event. Take it as a handler argument (it never rejects a
/// request), or make one with [`AuditContext::system`] outside requests.
#[derive(Debug, Clone, Default)]
pub struct AuditContext {
    pub(crate) context: EventContext,
    /// The API key the caller used, if any.
    pub(crate) api_key_id: Option<Uuid>,
    /// A super admin acting in another organization: their own organization.
    pub(crate) acting_from_org: Option<Uuid>,
    /// The system actor's name for work outside requests.
    pub(crate) system: Option<&'static str>,
    started: Option<Instant>,
}

impl AuditContext {
    /// The context of work done by a system actor (a job, the scheduler, retention).
    pub fn system(name: &'static str) -> Self {
        Self {
            system: Some(name),
            started: Some(Instant::now()),
            ..Self::default()
        }
    }

    /// Reads what the request carries; a principal already extracted is taken into account.
    pub fn from_parts(parts: &Parts) -> Self {
        let mut ctx = Self {
            context: EventContext {
                request_id: parts.extensions.get::<RequestId>().map(|r| r.0.to_string()),
                ip: parts
                    .extensions
                    .get::<ClientIp>()
                    .map(|ip| crate::redact::mask_ip(ip.0)),
                user_agent: parts
                    .headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.chars().take(MAX_USER_AGENT).collect()),
                method: Some(parts.method.as_str().to_string()),
                route: parts
                    .extensions
                    .get::<MatchedPath>()
                    .map(|m| m.as_str().to_string()),
            },
            started: parts.extensions.get::<RequestStart>().map(|s| s.0),
            ..Self::default()
        };
        if let Some(p) = parts.extensions.get::<Principal>() {
            ctx = ctx.with_principal(p);
        }
        ctx
    }

    /// Notes how the principal authenticated (API key) and whether a super admin acts in
    /// another organization.
    pub fn with_principal(mut self, principal: &Principal) -> Self {
        if let Credential::ApiKey { id } = principal.credential {
            self.api_key_id = Some(id);
        }
        if principal.org_id != principal.home_org {
            self.acting_from_org = Some(principal.home_org);
        }
        self
    }

    /// The masked client IP.
    pub fn ip(&self) -> Option<&str> {
        self.context.ip.as_deref()
    }

    pub fn request_id(&self) -> Option<&str> {
        self.context.request_id.as_deref()
    }

    /// Milliseconds since the request arrived (or the system context was made).
    pub(crate) fn elapsed_ms(&self) -> Option<i64> {
        self.started
            .map(|s| i64::try_from(s.elapsed().as_millis()).unwrap_or(i64::MAX))
    }
}

impl FromRequestParts<AppState> for AuditContext {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        // Usually the handler's `Authorized<P>` ran first and left the principal in the
        // extensions. If this extractor runs first, authenticate now (the result is cached
        // for the later extractor; a failure is left for it to report).
        if parts.extensions.get::<Principal>().is_none() && has_credential(parts) {
            let _ = Principal::from_request_parts(parts, state).await;
        }
        Ok(Self::from_parts(parts))
    }
}

fn has_credential(parts: &Parts) -> bool {
    parts.headers.contains_key(header::AUTHORIZATION)
        || crate::auth::cookie(parts, crate::auth::ACCESS_COOKIE).is_some()
}
