//! The identity routes (`/api/v1/setup`, `/api/v1/auth/*`, `/api/v1/users/*`,
//! `/api/v1/orgs/*`, `/api/v1/api-keys/*`), one file per resource.

pub mod account;
pub mod api_keys;
pub mod orgs;
pub mod session;
pub mod totp;
pub mod users;

use axum::http::{HeaderMap, HeaderValue, header};
use utoipa_axum::routes;

use super::service::{IssuedTokens, Origin};
use super::{ACCESS_COOKIE, REFRESH_COOKIE};
use crate::http::ClientIp;
use crate::module::ModuleRouter;
use crate::state::AppState;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .limited("auth.register", routes!(account::setup))
        .limited("auth.register", routes!(account::register))
        .limited("auth.recovery", routes!(account::verify_email))
        .routes(routes!(account::resend_verification))
        .limited("auth.change_password", routes!(account::change_password))
        .limited("auth.recovery", routes!(account::password_reset))
        .limited("auth.recovery", routes!(account::password_reset_confirm))
        .limited("auth.login", routes!(session::login))
        .limited("auth.recovery", routes!(session::login_totp))
        .limited("auth.refresh", routes!(session::refresh))
        .routes(routes!(session::logout))
        .routes(routes!(session::logout_all))
        .routes(routes!(session::list_sessions))
        .routes(routes!(session::delete_session))
        .routes(routes!(session::me))
        .routes(routes!(totp::setup_totp))
        .routes(routes!(totp::enable_totp))
        .routes(routes!(totp::disable_totp))
        .routes(routes!(users::list_users))
        .routes(routes!(users::get_user, users::update_user))
        .routes(routes!(users::approve_user))
        .routes(routes!(orgs::get_org, orgs::update_org))
        .routes(routes!(orgs::create_invitation, orgs::list_invitations))
        .routes(routes!(orgs::revoke_invitation))
        .routes(routes!(orgs::list_security_events))
        .routes(routes!(api_keys::create_api_key, api_keys::list_api_keys))
        .routes(routes!(api_keys::get_api_key, api_keys::revoke_api_key))
}

/// Where the request came from.
pub(crate) fn origin(ip: &ClientIp, headers: &HeaderMap) -> Origin {
    Origin {
        ip: Some(ip.0.to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
    }
}

fn cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: u64,
    same_site: &str,
    secure: bool,
) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}"
    ))
    .ok()
}

/// Browser sessions: the tokens as HttpOnly cookies (API clients ignore them).
pub(crate) fn cookies_for(state: &AppState, issued: &IssuedTokens) -> Vec<HeaderValue> {
    let secure = state.config.is_production() || state.config.http.tls_cert_path.is_some();
    let cfg = &state.config.auth;
    [
        cookie(
            ACCESS_COOKIE,
            &issued.access_token,
            "/",
            cfg.access_token_ttl_secs,
            "Lax",
            secure,
        ),
        cookie(
            REFRESH_COOKIE,
            &issued.refresh_token,
            "/api/v1/auth",
            cfg.refresh_token_ttl_secs,
            "Strict",
            secure,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

pub(crate) fn clear_cookies(state: &AppState) -> Vec<HeaderValue> {
    let secure = state.config.is_production() || state.config.http.tls_cert_path.is_some();
    [
        cookie(ACCESS_COOKIE, "", "/", 0, "Lax", secure),
        cookie(REFRESH_COOKIE, "", "/api/v1/auth", 0, "Strict", secure),
    ]
    .into_iter()
    .flatten()
    .collect()
}
