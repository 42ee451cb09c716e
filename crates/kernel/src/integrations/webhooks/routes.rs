//! `/api/v1/webhooks/endpoints`: organization admins register the endpoints that receive the
//! organization's events, see each delivery with its attempt log, and send a test delivery.
//! Every change commits with its audit event (`webhook.endpoint.created`, `…updated`,
//! `…deleted`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::ssrf;
use super::store::{self, DeliveryWithAttempts, WebhookEndpoint};
use crate::audit::{self, AuditContext, Changes, NewEvent};
use crate::auth::Authorized;
use crate::auth::access::perms;
use crate::http::concurrency::{expected_version, stale_for, version_of};
use crate::http::pagination::{PageParams, Paged};
use crate::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::module::ModuleRouter;
use crate::state::AppState;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(utoipa_axum::routes!(list_endpoints, create_endpoint))
        .routes(utoipa_axum::routes!(
            get_endpoint,
            update_endpoint,
            delete_endpoint
        ))
        .routes(utoipa_axum::routes!(test_endpoint))
        .routes(utoipa_axum::routes!(list_deliveries))
}

const MAX_EVENT_TYPES: usize = 50;

fn parse_event_types(field: &str, types: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    if types.is_empty() {
        errors.push(FieldError::new(field, "must name at least one event type"));
    }
    if types.len() > MAX_EVENT_TYPES {
        errors.push(FieldError::new(
            field,
            format!("must name at most {MAX_EVENT_TYPES} event types"),
        ));
    }
    let mut out = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let t = t.trim();
        let body = t.strip_suffix(".*").unwrap_or(t);
        let ok = t == "*"
            || (!body.is_empty()
                && body.len() <= 100
                && body.split('.').all(|seg| {
                    !seg.is_empty()
                        && seg
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                }));
        if ok {
            if !out.iter().any(|o: &String| o == t) {
                out.push(t.to_string());
            }
        } else {
            errors.push(FieldError::new(
                format!("{field}[{i}]"),
                "must be an event type such as `partner.created`, a prefix such as `partner.*`, or `*`",
            ));
        }
    }
    out
}

fn parse_description(description: Option<&str>, errors: &mut Vec<FieldError>) -> Option<String> {
    let d = description.map(str::trim).filter(|d| !d.is_empty())?;
    if d.chars().count() > 500 {
        errors.push(FieldError::new(
            "description",
            "must be at most 500 characters",
        ));
    }
    Some(d.to_string())
}

async fn parse_url(state: &AppState, url: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match ssrf::check_url(url, &state.integrations.webhook_allow).await {
        Ok(u) => Some(u.to_string()),
        Err(message) => {
            errors.push(FieldError::new("url", message));
            None
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointInput {
    /// Where deliveries are POSTed; must resolve to a public address.
    pub url: String,
    /// Audit actions: exact (`partner.created`), a prefix (`partner.*`) or `*`.
    pub event_types: Vec<String>,
    pub description: Option<String>,
}

/// A new endpoint, with its signing secret (shown this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_…`: verify deliveries' `webhook-signature` with it. Not shown again.
    pub secret: String,
}

/// Lists the organization's webhook endpoints.
#[utoipa::path(get, path = "/api/v1/webhooks/endpoints", tag = "webhooks",
    security(("bearer" = ["webhooks.manage"])),
    params(PageParams),
    responses((status = 200, body = Paged<WebhookEndpoint>)))]
pub async fn list_endpoints(
    State(state): State<AppState>,
    auth: Authorized<perms::WebhooksManage>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<WebhookEndpoint>>> {
    let page = page.resolve(&["created_at", "url"], "created_at")?;
    let (rows, total) = store::list_endpoints(&state.db, &auth.scope(), &page).await?;
    Ok(Json(Paged::new(
        rows.iter().map(store::EndpointRow::view).collect(),
        &page,
        total,
    )))
}

/// Registers an endpoint. The answer holds its signing secret, shown only this once.
#[utoipa::path(post, path = "/api/v1/webhooks/endpoints", tag = "webhooks",
    security(("bearer" = ["webhooks.manage"])),
    request_body = EndpointInput,
    responses((status = 201, body = CreatedEndpoint),
        (status = 422, description = "Invalid fields (including a URL to a non-public address)")))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    auth: Authorized<perms::WebhooksManage>,
    ctx: AuditContext,
    Json(body): Json<EndpointInput>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    let url = parse_url(&state, &body.url, &mut errors).await;
    let types = parse_event_types("event_types", &body.event_types, &mut errors);
    let description = parse_description(body.description.as_deref(), &mut errors);
    let (Some(url), true) = (url, errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let scope = auth.scope();
    let id = Uuid::now_v7();
    let secret = super::generate_secret();
    let encrypted = state
        .auth
        .keyring
        .encrypt_str(&secret, &store::secret_context(scope.org_id(), id))
        .map_err(|e| ApiError::internal(anyhow::anyhow!("cannot encrypt the secret: {e}")))?;
    let mut tx = state.db.begin().await?;
    let row = store::insert_endpoint(
        &mut tx,
        &scope,
        id,
        &url,
        description.as_deref(),
        &types,
        &encrypted,
    )
    .await?;
    let endpoint = row.view();
    audit::record(
        &mut tx,
        &scope,
        &ctx,
        NewEvent::new("webhook.endpoint.created", "webhook_endpoint", Some(id))
            .changes(Changes::created(&endpoint, &[])),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/webhooks/endpoints/{id}"))],
        Json(CreatedEndpoint { endpoint, secret }),
    )
        .into_response())
}

/// Reads an endpoint.
#[utoipa::path(get, path = "/api/v1/webhooks/endpoints/{id}", tag = "webhooks",
    security(("bearer" = ["webhooks.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = WebhookEndpoint), (status = 404, description = "No such endpoint")))]
pub async fn get_endpoint(
    State(state): State<AppState>,
    auth: Authorized<perms::WebhooksManage>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<WebhookEndpoint>> {
    Ok(Json(
        store::get_endpoint_db(&state.db, &auth.scope(), id)
            .await?
            .view(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    /// A disabled endpoint gets no new deliveries; pending ones are cancelled.
    pub active: Option<bool>,
    pub version: Option<i64>,
}

/// Changes an endpoint (`If-Match` or `version` for optimistic concurrency).
#[utoipa::path(patch, path = "/api/v1/webhooks/endpoints/{id}", tag = "webhooks",
    security(("bearer" = ["webhooks.manage"])),
    params(("id" = Uuid, Path)),
    request_body = EndpointPatch,
    responses((status = 200, body = WebhookEndpoint), (status = 404, description = "No such endpoint"),
        (status = 409, description = "Stale version"), (status = 412, description = "Stale If-Match"),
        (status = 422, description = "Invalid fields")))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    auth: Authorized<perms::WebhooksManage>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<EndpointPatch>,
) -> ApiResult<Json<WebhookEndpoint>> {
    let expected = expected_version(&headers, body.version)?;
    let scope = auth.scope();
    let before = store::get_endpoint_db(&state.db, &scope, id).await?;
    let mut errors = Vec::new();
    let url = match &body.url {
        Some(u) => parse_url(&state, u, &mut errors).await,
        None => Some(before.url.clone()),
    };
    let types = match &body.event_types {
        Some(t) => parse_event_types("event_types", t, &mut errors),
        None => before.types(),
    };
    let description = match &body.description {
        Some(d) => parse_description(Some(d), &mut errors),
        None => before.description.clone(),
    };
    let (Some(url), true) = (url, errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let active = body.active.unwrap_or(before.active);
    let mut tx = state.db.begin().await?;
    let before = store::get_endpoint(&mut tx, &scope, id).await?.view();
    if !store::update_endpoint(
        &mut tx,
        &scope,
        id,
        &url,
        description.as_deref(),
        &types,
        active,
        version_of(expected),
    )
    .await?
    {
        return Err(stale_for(expected));
    }
    let after = store::get_endpoint(&mut tx, &scope, id).await?.view();
    let diff = Changes::diff(&before, &after, &[]);
    if !diff.is_empty() {
        audit::record(
            &mut tx,
            &scope,
            &ctx,
            NewEvent::new("webhook.endpoint.updated", "webhook_endpoint", Some(id)).changes(diff),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(after))
}

/// Deletes an endpoint with its delivery log.
#[utoipa::path(delete, path = "/api/v1/webhooks/endpoints/{id}", tag = "webhooks",
    security(("bearer" = ["webhooks.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such endpoint")))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    auth: Authorized<perms::WebhooksManage>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let scope = auth.scope();
    let mut tx = state.db.begin().await?;
    let before = store::get_endpoint(&mut tx, &scope, id).await?.view();
    if !store::delete_endpoint(&mut tx, &scope, id).await? {
        return Err(ApiError::not_found());
    }
    audit::record(
        &mut tx,
        &scope,
        &ctx,
        NewEvent::new("webhook.endpoint.deleted", "webhook_endpoint", Some(id))
            .changes(Changes::deleted(&before, &[])),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer to a test delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedDelivery {
    pub job_id: Uuid,
    /// Always `queued`.
    pub status: &'static str,
    pub delivery_id: Uuid,
}

/// Sends a `webhook.test` delivery to the endpoint (signed and logged like any other).
#[utoipa::path(post, path = "/api/v1/webhooks/endpoints/{id}/test", tag = "webhooks",
    security(("bearer" = ["webhooks.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 202, body = QueuedDelivery), (status = 404, description = "No such endpoint"),
        (status = 409, description = "The endpoint is disabled")))]
pub async fn test_endpoint(
    State(state): State<AppState>,
    auth: Authorized<perms::WebhooksManage>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let scope = auth.scope();
    let mut tx = state.db.begin().await?;
    let endpoint = store::get_endpoint(&mut tx, &scope, id).await?;
    if !endpoint.active {
        return Err(ApiError::conflict(
            "the endpoint is disabled; enable it first",
        ));
    }
    let event_id = Uuid::now_v7();
    let Some((delivery_id, job_id)) = super::enqueue_delivery(
        &mut tx,
        &state.jobs,
        state.config.webhooks.delivery_max_attempts,
        &scope,
        id,
        event_id,
        "webhook.test",
        &super::test_payload(id, event_id),
    )
    .await?
    else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "a fresh test event collided with an existing delivery"
        )));
    };
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/v1/jobs/{job_id}"))],
        Json(QueuedDelivery {
            job_id,
            status: "queued",
            delivery_id,
        }),
    )
        .into_response())
}

/// The endpoint's deliveries, newest first by default, each with its attempt log (status,
/// latency, the start of the response).
#[utoipa::path(get, path = "/api/v1/webhooks/endpoints/{id}/deliveries", tag = "webhooks",
    security(("bearer" = ["webhooks.manage"])),
    params(("id" = Uuid, Path), PageParams),
    responses((status = 200, body = Paged<DeliveryWithAttempts>), (status = 404, description = "No such endpoint")))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    auth: Authorized<perms::WebhooksManage>,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<DeliveryWithAttempts>>> {
    let page = page.resolve(&["created_at"], "-created_at")?;
    let scope = auth.scope();
    store::get_endpoint_db(&state.db, &scope, id).await?;
    let (rows, total) = store::list_deliveries(&state.db, &scope, id, &page).await?;
    Ok(Json(Paged::new(rows, &page, total)))
}
