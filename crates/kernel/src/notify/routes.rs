//! `/api/v1/notifications`: the caller's own notification center and preferences.

use std::collections::BTreeMap;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{DeliveryChannel, Notification, store};
use crate::auth::SignedIn;
use crate::http::pagination::{PageParams, Paged};
use crate::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::module::ModuleRouter;
use crate::state::AppState;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(utoipa_axum::routes!(list_notifications))
        .routes(utoipa_axum::routes!(unread_count))
        .routes(utoipa_axum::routes!(mark_read))
        .routes(utoipa_axum::routes!(mark_all_read))
        .routes(utoipa_axum::routes!(get_preferences, put_preferences))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// `true`: only unread; `false`: only read.
    pub unread: Option<bool>,
}

/// Lists the caller's notifications, newest first by default.
#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications",
    security(("bearer" = [])),
    params(NotificationQuery, PageParams),
    responses((status = 200, body = Paged<Notification>), (status = 422, description = "Invalid parameters")))]
pub async fn list_notifications(
    State(state): State<AppState>,
    SignedIn(p): SignedIn,
    Query(q): Query<NotificationQuery>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Notification>>> {
    let page = page.resolve(&["created_at"], "-created_at")?;
    let (rows, total) = store::list(&state.db, &p.scope(), p.user_id, q.unread, &page).await?;
    Ok(Json(Paged::new(rows, &page, total)))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UnreadCount {
    pub unread: u64,
}

/// How many of the caller's notifications are unread.
#[utoipa::path(get, path = "/api/v1/notifications/unread-count", tag = "notifications",
    security(("bearer" = [])),
    responses((status = 200, body = UnreadCount)))]
pub async fn unread_count(
    State(state): State<AppState>,
    SignedIn(p): SignedIn,
) -> ApiResult<Json<UnreadCount>> {
    Ok(Json(UnreadCount {
        unread: store::unread_count(&state.db, &p.scope(), p.user_id).await?,
    }))
}

/// Marks one of the caller's notifications read (idempotent).
#[utoipa::path(post, path = "/api/v1/notifications/{id}/read", tag = "notifications",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Notification), (status = 404, description = "No such notification")))]
pub async fn mark_read(
    State(state): State<AppState>,
    SignedIn(p): SignedIn,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Notification>> {
    let scope = p.scope();
    // Not found (or another user's) answers 404 before anything changes.
    store::get_mine(&state.db, &scope, p.user_id, id).await?;
    store::mark_read(&state.db, &scope, p.user_id, Some(id)).await?;
    Ok(Json(
        store::get_mine(&state.db, &scope, p.user_id, id).await?,
    ))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MarkedRead {
    /// How many notifications changed from unread to read.
    pub updated: u64,
}

/// Marks all the caller's notifications read.
#[utoipa::path(post, path = "/api/v1/notifications/read-all", tag = "notifications",
    security(("bearer" = [])),
    responses((status = 200, body = MarkedRead)))]
pub async fn mark_all_read(
    State(state): State<AppState>,
    SignedIn(p): SignedIn,
) -> ApiResult<Json<MarkedRead>> {
    Ok(Json(MarkedRead {
        updated: store::mark_read(&state.db, &p.scope(), p.user_id, None).await?,
    }))
}

/// One notification type and where it goes for the caller.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TypePreference {
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// `in_app`, `email`, `sms` → on or off.
    pub channels: BTreeMap<DeliveryChannel, bool>,
}

/// The caller's notification preferences.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Preferences {
    /// Where SMS notifications go (E.164, e.g. `+15551234567`); null when none.
    pub sms_number: Option<String>,
    /// Channels that have no provider on this deployment (their deliveries are skipped).
    pub disabled_channels: Vec<DeliveryChannel>,
    pub types: Vec<TypePreference>,
}

async fn preferences(state: &AppState, p: &crate::auth::Principal) -> ApiResult<Preferences> {
    let scope = p.scope();
    let mut tx = state.db.begin().await?;
    let chosen = store::preferences_of(&mut tx, &scope, p.user_id, None).await?;
    let sms_number = store::sms_number(&mut tx, &scope, p.user_id, &state.auth.keyring).await?;
    tx.rollback().await?;
    let types = state
        .notify
        .types()
        .into_iter()
        .map(|t| TypePreference {
            kind: t.name.to_string(),
            description: t.description.to_string(),
            channels: DeliveryChannel::ALL
                .into_iter()
                .map(|c| {
                    let on = chosen
                        .get(&(t.name.to_string(), c))
                        .copied()
                        .unwrap_or_else(|| t.default_channels.contains(&c));
                    (c, on)
                })
                .collect(),
        })
        .collect();
    Ok(Preferences {
        sms_number,
        disabled_channels: DeliveryChannel::ALL
            .into_iter()
            .filter(|c| !state.notify.is_enabled(*c))
            .collect(),
        types,
    })
}

/// The caller's preferences: per notification type, which channels it goes to.
#[utoipa::path(get, path = "/api/v1/notifications/preferences", tag = "notifications",
    security(("bearer" = [])),
    responses((status = 200, body = Preferences)))]
pub async fn get_preferences(
    State(state): State<AppState>,
    SignedIn(p): SignedIn,
) -> ApiResult<Json<Preferences>> {
    Ok(Json(preferences(&state, &p).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TypeChoice {
    #[serde(rename = "type")]
    pub kind: String,
    /// Only the channels given change.
    pub channels: BTreeMap<String, bool>,
}

/// A change of preferences; fields left out stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PreferencesInput {
    /// E.164 (`+` and 7–15 digits); `null` removes it.
    #[serde(default, deserialize_with = "some_or_null")]
    pub sms_number: Option<Option<String>>,
    #[serde(default)]
    pub types: Vec<TypeChoice>,
}

/// Tells a missing field (`None`) from an explicit `null` (`Some(None)`).
fn some_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

fn is_e164(n: &str) -> bool {
    let Some(digits) = n.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Changes the caller's preferences (and SMS number).
#[utoipa::path(put, path = "/api/v1/notifications/preferences", tag = "notifications",
    security(("bearer" = [])),
    request_body = PreferencesInput,
    responses((status = 200, body = Preferences), (status = 422, description = "Unknown type or channel, or an invalid number")))]
pub async fn put_preferences(
    State(state): State<AppState>,
    SignedIn(p): SignedIn,
    Json(body): Json<PreferencesInput>,
) -> ApiResult<Json<Preferences>> {
    let mut errors = Vec::new();
    let mut number = None;
    if let Some(n) = &body.sms_number {
        match n.as_deref().map(str::trim) {
            Some(n) if !is_e164(n) => errors.push(FieldError::new(
                "sms_number",
                "must be an E.164 number like +15551234567",
            )),
            Some(n) => number = Some(Some(n.to_string())),
            None => number = Some(None),
        }
    }
    let mut choices = Vec::new();
    for (i, t) in body.types.iter().enumerate() {
        if state.notify.notification_type(&t.kind).is_none() {
            errors.push(FieldError::new(
                format!("types[{i}].type"),
                "is not a notification type of this deployment",
            ));
            continue;
        }
        for (name, on) in &t.channels {
            match DeliveryChannel::parse(name) {
                Some(c) => choices.push((t.kind.clone(), c, *on)),
                None => errors.push(FieldError::new(
                    format!("types[{i}].channels.{name}"),
                    "must be one of in_app, email, sms",
                )),
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let scope = p.scope();
    let (scope_ref, choices, number, keys) = (&scope, &choices, &number, &state.auth.keyring);
    let user = p.user_id;
    state
        .db
        .transaction(|tx| {
            Box::pin(async move {
                for (kind, channel, on) in choices {
                    store::set_preference(tx, scope_ref, user, kind, *channel, *on).await?;
                }
                if let Some(n) = number {
                    store::set_sms_number(tx, scope_ref, user, n.as_deref(), keys).await?;
                }
                Ok::<_, ApiError>(())
            })
        })
        .await?;
    Ok(Json(preferences(&state, &p).await?))
}
