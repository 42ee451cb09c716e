//! Identity and access: who is calling, and what they may do.
//!
//! - [`Principal`] is the authenticated caller, extracted from `Authorization: Bearer …` (an
//!   access token or an API key `keel_…`) or from the `keel_access` cookie (then unsafe
//!   methods need `X-CSRF-Token`). An access token costs no database round trip: a signature
//!   check and an in-memory revocation lookup.
//! - [`Authorized<P>`] additionally requires permission `P`: every route names its
//!   permission in its signature.
//! - [`Principal::scope`] gives the [`TenantScope`] tenant-owned queries need: the caller's
//!   organization (a super admin may act in another with `X-Keel-Org`, audited), narrowed to
//!   the business partner for partner users.

pub mod access;
pub mod domain;
pub mod password;
pub mod revocation;
pub mod routes;
pub mod service;
pub mod store;
pub mod tokens;
pub mod totp;

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use uuid::Uuid;

use crate::config::Config;
use crate::crypto::KeyRing;
use crate::http::ApiError;
use crate::mail::Mailer;
use crate::module::Registry;
use crate::state::AppState;
use crate::tenancy::TenantScope;
use access::{AccessControl, PermissionName, SUPER_ADMIN};
use password::PasswordHasherPool;
use revocation::Revocations;
use tokens::{AccessClaims, TokenError, TokenKeys};

pub use store::SecurityEventKind;

pub const ACCESS_COOKIE: &str = "keel_access";
pub const REFRESH_COOKIE: &str = "keel_refresh";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const ORG_HEADER: &str = "x-keel-org";
pub const API_KEY_PREFIX: &str = "keel_";

/// An API key as authentication needs it (cached briefly).
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub created_by: Uuid,
    pub creator_role: String,
    pub creator_active: bool,
    pub creator_partner: Option<Uuid>,
    pub permissions: Arc<BTreeSet<String>>,
    pub revoked: bool,
    pub(crate) last_touched: Arc<AtomicI64>,
}

/// Authentication services shared by every request.
pub struct AuthRuntime {
    pub keys: TokenKeys,
    pub hasher: PasswordHasherPool,
    pub revocations: Arc<Revocations>,
    /// Shared: every principal refers to it, so building one copies a pointer.
    pub access: Arc<AccessControl>,
    pub mailer: Arc<dyn Mailer>,
    pub keyring: Arc<KeyRing>,
    api_keys: moka::future::Cache<String, Option<ApiKeyRecord>>,
}

impl std::fmt::Debug for AuthRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthRuntime")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl AuthRuntime {
    pub fn new(
        config: &Config,
        registry: &Registry,
        mailer: Arc<dyn Mailer>,
    ) -> anyhow::Result<Self> {
        let revocations = Arc::new(Revocations::default());
        Ok(Self {
            keys: TokenKeys::from_config(config)?,
            hasher: PasswordHasherPool::new(&config.auth)?,
            api_keys: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(revocations.api_key_cache_ttl)
                .build(),
            revocations,
            access: Arc::new(AccessControl::new(registry)),
            mailer,
            keyring: Arc::new(KeyRing::from_config(config)?),
        })
    }

    /// Forgets a cached API key (after revocation here; other nodes learn via revocations).
    pub async fn forget_api_key(&self, hash: &str) {
        self.api_keys.invalidate(hash).await;
    }
}

/// How the caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An access token (session `sid`, token `jti`).
    Session {
        session_id: Uuid,
        jti: Uuid,
        exp: i64,
    },
    ApiKey {
        id: Uuid,
    },
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: Uuid,
    /// The caller's own organization.
    pub home_org: Uuid,
    /// The organization the request acts in (`X-Keel-Org` for a super admin, else home).
    pub org_id: Uuid,
    pub role: String,
    pub partner_id: Option<Uuid>,
    pub credential: Credential,
    /// For API keys: the subset of permissions the key was given.
    key_permissions: Option<Arc<BTreeSet<String>>>,
    /// The organization requires two-factor sign-in and the user has not enrolled yet: only
    /// enrolment, the profile and sign-out are open.
    pub enrolment_pending: bool,
    access: Arc<AccessControl>,
}

impl Principal {
    pub fn is_super_admin(&self) -> bool {
        self.role == SUPER_ADMIN
    }

    pub fn session_id(&self) -> Option<Uuid> {
        match self.credential {
            Credential::Session { session_id, .. } => Some(session_id),
            Credential::ApiKey { .. } => None,
        }
    }

    /// Whether the caller holds a permission (an API key: only those it was given, and only
    /// while its creator still holds them).
    pub fn has(&self, permission: &str) -> bool {
        if self.enrolment_pending {
            return false;
        }
        let by_role = self.access.has(&self.role, permission);
        match &self.key_permissions {
            Some(allowed) => by_role && allowed.contains(permission),
            None => by_role,
        }
    }

    pub fn permissions(&self) -> BTreeSet<&'static str> {
        self.access
            .permissions_of(&self.role)
            .into_iter()
            .filter(|p| self.has(p))
            .collect()
    }

    /// The tenant scope of this request.
    pub fn scope(&self) -> TenantScope {
        TenantScope::for_user(self.org_id, self.partner_id, self.user_id)
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    cookie_value(&parts.headers, name)
}

/// A cookie's value from the request headers.
pub fn cookie_value<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Routes a user who must enrol in two-factor sign-in may still use.
fn allowed_before_enrolment(path: &str) -> bool {
    path.starts_with("/api/v1/auth/totp")
        || path == "/api/v1/auth/me"
        || path.starts_with("/api/v1/auth/logout")
        || path.starts_with("/api/v1/auth/sessions")
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let auth = &state.auth;
        let (principal, via_cookie) = match bearer(parts) {
            Some(token) if token.starts_with(API_KEY_PREFIX) => {
                // Boxed: the cache lookup's future is large, and every request's middleware
                // future would otherwise carry (and copy) its size.
                (Box::pin(api_key_principal(state, token)).await?, false)
            }
            Some(token) => (token_principal(auth, token)?, false),
            None => match cookie(parts, ACCESS_COOKIE) {
                Some(token) => (token_principal(auth, token)?, true),
                None => {
                    return Err(ApiError::unauthorized(
                        "send `Authorization: Bearer <access token or API key>`",
                    ));
                }
            },
        };
        let mut principal = principal;
        if via_cookie && !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let expected = principal.session_id().map(|sid| auth.keys.csrf_token(sid));
            let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            let ok = match (expected, sent) {
                (Some(e), Some(s)) => {
                    subtle::ConstantTimeEq::ct_eq(e.as_bytes(), s.as_bytes()).into()
                }
                _ => false,
            };
            if !ok {
                return Err(ApiError::forbidden(
                    "cookie-authenticated requests that change state need a valid X-CSRF-Token",
                ));
            }
        }
        if let Some(org) = parts.headers.get(ORG_HEADER) {
            principal.org_id = acting_org(state, &principal, org, parts).await?;
        }
        tracing::Span::current().record("user", tracing::field::display(principal.user_id));
        tracing::Span::current().record("org", tracing::field::display(principal.org_id));
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

fn token_principal(auth: &AuthRuntime, token: &str) -> Result<Principal, ApiError> {
    let claims: AccessClaims = auth.keys.verify(token).map_err(|e| match e {
        TokenError::Expired => ApiError::unauthorized("the access token has expired; refresh it"),
        TokenError::Invalid => ApiError::unauthorized("the access token is not valid"),
    })?;
    if auth.revocations.refuses(&claims) {
        return Err(ApiError::unauthorized(
            "the access token has been revoked; sign in again",
        ));
    }
    Ok(Principal {
        user_id: claims.sub,
        home_org: claims.org,
        org_id: claims.org,
        role: claims.role,
        partner_id: claims.pid,
        credential: Credential::Session {
            session_id: claims.sid,
            jti: claims.jti,
            exp: claims.exp,
        },
        key_permissions: None,
        enrolment_pending: claims.enr,
        access: auth.access.clone(),
    })
}

async fn api_key_principal(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let auth = &state.auth;
    let hash = crate::crypto::token_hash(token);
    let db = state.db.clone();
    let record = auth
        .api_keys
        .try_get_with(hash.clone(), async move {
            store::api_key_by_hash(&db, &hash).await
        })
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("api key lookup: {e}")))?;
    let Some(record) = record else {
        return Err(ApiError::unauthorized("the API key is not valid"));
    };
    if record.revoked || !record.creator_active || auth.revocations.refuses_api_key(record.id) {
        return Err(ApiError::unauthorized("the API key has been revoked"));
    }
    // Record use at most once a minute per key: a busy integration must not turn every
    // request into a write.
    let now = chrono::Utc::now().timestamp();
    let last = record.last_touched.load(Ordering::Relaxed);
    if now - last >= 60
        && record
            .last_touched
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let db = state.db.clone();
        let id = record.id;
        tokio::spawn(async move {
            if let Err(e) = store::touch_api_key(&db, id).await {
                tracing::warn!(error = %e, "could not record API key use");
            }
        });
    }
    Ok(Principal {
        user_id: record.created_by,
        home_org: record.org_id,
        org_id: record.org_id,
        role: record.creator_role.clone(),
        partner_id: record.creator_partner,
        credential: Credential::ApiKey { id: record.id },
        key_permissions: Some(record.permissions.clone()),
        enrolment_pending: false,
        access: auth.access.clone(),
    })
}

async fn acting_org(
    state: &AppState,
    principal: &Principal,
    header: &HeaderValue,
    parts: &Parts,
) -> Result<Uuid, ApiError> {
    if !principal.is_super_admin() {
        return Err(ApiError::forbidden(
            "X-Keel-Org is only for platform super admins",
        ));
    }
    let org = header
        .to_str()
        .ok()
        .and_then(|s| Uuid::parse_str(s.trim()).ok())
        .ok_or_else(|| ApiError::invalid_field("X-Keel-Org", "must be an organization id"))?;
    if org == principal.home_org {
        return Ok(org);
    }
    if !store::org_exists(&state.db, org).await? {
        return Err(ApiError::not_found().detail("no organization has that id"));
    }
    // Every use of another organization is audited in that organization's chain.
    let ctx = crate::audit::AuditContext::from_parts(parts);
    store::security_event(
        &state.db,
        Some(org),
        Some(principal.user_id),
        SecurityEventKind::OrgOverride,
        &ctx,
        serde_json::json!({ "home_org": principal.home_org }),
    )
    .await?;
    Ok(org)
}

/// The caller, required to hold permission `P`.
#[derive(Debug, Clone)]
pub struct Authorized<P: PermissionName>(pub Principal, PhantomData<P>);

impl<P: PermissionName> std::ops::Deref for Authorized<P> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<P: PermissionName> FromRequestParts<AppState> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        check_enrolment(&principal, parts)?;
        if !principal.has(P::NAME) {
            return Err(
                ApiError::forbidden(format!("this needs the `{}` permission", P::NAME))
                    .with_extra("permission", P::NAME),
            );
        }
        Ok(Self(principal, PhantomData))
    }
}

/// Any signed-in caller (no particular permission): own profile, own sessions, sign-out.
#[derive(Debug, Clone)]
pub struct SignedIn(pub Principal);

impl std::ops::Deref for SignedIn {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        check_enrolment(&principal, parts)?;
        Ok(Self(principal))
    }
}

/// The platform's super admin (platform-wide views: node metrics, circuit breakers, every
/// job). Anyone else signed in gets 403; an anonymous caller 401.
#[derive(Debug, Clone)]
pub struct PlatformAdmin(pub Principal);

impl FromRequestParts<AppState> for PlatformAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let SignedIn(principal) = SignedIn::from_request_parts(parts, state).await?;
        if !principal.is_super_admin() {
            return Err(ApiError::forbidden(
                "platform data: platform super admins only",
            ));
        }
        Ok(Self(principal))
    }
}

fn check_enrolment(principal: &Principal, parts: &Parts) -> Result<(), ApiError> {
    if principal.enrolment_pending && !allowed_before_enrolment(parts.uri.path()) {
        return Err(ApiError::forbidden(
            "your organization requires two-factor sign-in: enrol at /api/v1/auth/totp/setup first",
        )
        .with_extra("mfa_enrolment_required", true));
    }
    Ok(())
}

/// The poll interval for revocations.
pub fn revocation_poll(config: &Config) -> Duration {
    Duration::from_millis(config.auth.revocation_poll_ms)
}
