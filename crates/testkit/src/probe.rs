//! A small module for kernel tests: routes that echo, sleep, panic and store rows, so the
//! HTTP stack, the store and the module seam can be exercised through real requests. The
//! audited item route is a complete example of an app write: a retried transaction, an
//! encrypted field, and its audit event committing with it.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use keel_kernel::audit::{self, AuditContext, Changes, NewEvent};
use keel_kernel::auth::Authorized;
use keel_kernel::auth::access::perms;
use keel_kernel::http::{ApiError, ApiResult, ClientIp, Json, Path, Query, RequestId};
use keel_kernel::module::{Module, ModuleRouter};
use keel_kernel::state::AppState;
use keel_kernel::store::migrate::Migration;
use keel_kernel::store::{StoreError, now};
use sea_query::{Expr, ExprTrait, Query as Sql};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct ProbeModule;

impl Module for ProbeModule {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn migrations(&self) -> Vec<Migration> {
        vec![keel_kernel::migration!(1, "0001_test_items", "migrations")]
    }

    fn routes(&self) -> ModuleRouter {
        ModuleRouter::new()
            .routes(routes!(echo))
            .routes(routes!(slow))
            .routes(routes!(panics))
            .routes(routes!(whoami))
            .routes(routes!(create_item))
            .routes(routes!(get_item))
            .routes(routes!(create_audited_item))
            .routes(routes!(ask_llm))
            .routes(routes!(incoming_webhook))
    }
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct EchoBody {
    pub name: String,
    pub count: u32,
}

/// Echoes a JSON body.
#[utoipa::path(post, path = "/api/v1/test/echo", tag = "test",
    request_body = EchoBody,
    responses((status = 200, body = EchoBody)))]
async fn echo(Json(body): Json<EchoBody>) -> Json<EchoBody> {
    Json(body)
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
pub struct SlowQuery {
    /// How long to sleep.
    pub ms: u64,
}

/// Sleeps, then answers.
#[utoipa::path(get, path = "/api/v1/test/slow", tag = "test", params(SlowQuery),
    responses((status = 200, description = "slept")))]
async fn slow(Query(q): Query<SlowQuery>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(Ord::min(q.ms, 60_000))).await;
    "slept"
}

/// Panics.
#[utoipa::path(get, path = "/api/v1/test/panic", tag = "test",
    responses((status = 500, description = "always")))]
async fn panics() -> &'static str {
    panic!("deliberate panic in the probe module")
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub client_ip: String,
    pub request_id: String,
}

/// The client address and request id as the server sees them.
#[utoipa::path(get, path = "/api/v1/test/whoami", tag = "test",
    responses((status = 200, body = WhoAmI)))]
async fn whoami(
    axum::Extension(ip): axum::Extension<ClientIp>,
    axum::Extension(id): axum::Extension<RequestId>,
) -> Json<WhoAmI> {
    Json(WhoAmI {
        client_ip: ip.0.to_string(),
        request_id: id.0.to_string(),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewItem {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Item {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Stores an item.
#[utoipa::path(post, path = "/api/v1/test/items", tag = "test", request_body = NewItem,
    responses((status = 201, body = Item), (status = 409, description = "name taken")))]
async fn create_item(
    State(state): State<AppState>,
    Json(body): Json<NewItem>,
) -> ApiResult<impl IntoResponse> {
    if body.name.trim().is_empty() {
        return Err(ApiError::invalid_field("name", "must not be empty"));
    }
    let item = Item {
        id: Uuid::now_v7(),
        name: body.name,
        created_at: now(),
    };
    let insert = Sql::insert()
        .into_table("test_items")
        .columns(["id", "name", "created_at"])
        .values_panic([
            item.id.into(),
            item.name.clone().into(),
            item.created_at.into(),
        ])
        .to_owned();
    state.db.execute(&insert).await.map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::conflict("an item with this name exists"),
        other => other.into(),
    })?;
    let location = format!("/api/v1/test/items/{}", item.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(item),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewAuditedItem {
    pub name: String,
    /// Stored encrypted; the audit trail only learns that it was set.
    pub secret: Option<String>,
    /// Fail after writing the item and its event (both must then be gone).
    #[serde(default)]
    pub fail_after_write: bool,
}

/// What the audit trail is told about an item (the secret as its ciphertext).
#[derive(Debug, Serialize)]
struct AuditedItem<'a> {
    id: Uuid,
    name: &'a str,
    secret: Option<&'a str>,
}

/// Stores an item with an audit event in one transaction (a test-only path: it can fail
/// after both writes).
#[utoipa::path(post, path = "/api/v1/test/audited-items", tag = "test",
    request_body = NewAuditedItem,
    security(("bearer" = ["org.manage"])),
    responses((status = 201, body = Item), (status = 409, description = "failed after the write, as asked")))]
async fn create_audited_item(
    State(state): State<AppState>,
    auth: Authorized<perms::OrgManage>,
    ctx: AuditContext,
    Json(body): Json<NewAuditedItem>,
) -> ApiResult<impl IntoResponse> {
    let item = Item {
        id: Uuid::now_v7(),
        name: body.name.clone(),
        created_at: now(),
    };
    let secret = body
        .secret
        .as_deref()
        .map(|s| {
            state
                .auth
                .keyring
                .encrypt_str(s, &format!("test_items|secret|{}", item.id))
        })
        .transpose()
        .map_err(|e| ApiError::internal(anyhow::anyhow!("{e}")))?;
    let (scope, ctx, item_ref, secret) = (&auth.scope(), &ctx, &item, &secret);
    let fail = body.fail_after_write;
    state
        .db
        .transaction(|tx| {
            Box::pin(async move {
                tx.execute(
                    &Sql::insert()
                        .into_table("test_items")
                        .columns(["id", "name", "created_at"])
                        .values_panic([
                            item_ref.id.into(),
                            item_ref.name.clone().into(),
                            item_ref.created_at.into(),
                        ])
                        .to_owned(),
                )
                .await?;
                let view = AuditedItem {
                    id: item_ref.id,
                    name: &item_ref.name,
                    secret: secret.as_deref(),
                };
                audit::record(
                    tx,
                    scope,
                    ctx,
                    NewEvent::new("test_item.created", "test_item", Some(item_ref.id))
                        .changes(Changes::created(&view, &["secret"])),
                )
                .await?;
                if fail {
                    return Err(ApiError::conflict("failing after the write, as asked"));
                }
                Ok(())
            })
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/test/items/{}", item.id))],
        Json(item),
    ))
}

/// Reads an item.
#[utoipa::path(get, path = "/api/v1/test/items/{id}", tag = "test",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Item), (status = 404, description = "no such item")))]
async fn get_item(State(state): State<AppState>, Path(id): Path<Uuid>) -> ApiResult<Json<Item>> {
    let select = Sql::select()
        .columns(["id", "name", "created_at"])
        .from("test_items")
        .and_where(Expr::col("id").eq(id))
        .to_owned();
    Ok(Json(state.db.fetch_one(&select).await?))
}

/// The secret the probe's incoming webhook route verifies with (the Standard Webhooks
/// specification's example secret).
pub const PROBE_WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Deserialize, ToSchema)]
pub struct LlmPrompt {
    pub prompt: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LlmReply {
    pub text: String,
    pub cached: bool,
}

/// Asks the configured LLM inside the caller's organization (an AI endpoint as an app
/// would write one: `LlmError` becomes a problem with `?`).
#[utoipa::path(post, path = "/api/v1/test/llm", tag = "test", request_body = LlmPrompt,
    security(("bearer" = ["org.read"])),
    responses((status = 200, body = LlmReply),
        (status = 503, description = "AI disabled, or the provider's circuit breaker is open")))]
async fn ask_llm(
    State(state): State<AppState>,
    auth: Authorized<perms::OrgRead>,
    Json(body): Json<LlmPrompt>,
) -> ApiResult<Json<LlmReply>> {
    let answer = state
        .integrations
        .llm
        .complete(
            &state.db,
            &auth.scope(),
            keel_kernel::integrations::LlmRequest::new(body.prompt),
        )
        .await?;
    Ok(Json(LlmReply {
        text: answer.text,
        cached: answer.cached,
    }))
}

/// Receives a webhook signed with [`PROBE_WEBHOOK_SECRET`] (Standard Webhooks headers), as
/// an app mounts the kernel's verifier: signature, timestamp window, replay guard.
#[utoipa::path(post, path = "/api/v1/test/webhooks/incoming", tag = "test",
    request_body(content = String, content_type = "application/json"),
    responses((status = 200, description = "verified and recorded"),
        (status = 400, description = "a webhook header is missing"),
        (status = 401, description = "bad signature or stale timestamp"),
        (status = 409, description = "replayed event id")))]
async fn incoming_webhook(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    use keel_kernel::integrations::webhooks;
    let verifier = webhooks::WebhookVerifier::from_config(&state, &[PROBE_WEBHOOK_SECRET]);
    let mut tx = state.db.begin().await?;
    let (verified, _scope) =
        webhooks::accept(&mut tx, &verifier, "probe", None, &headers, &body).await?;
    tx.commit().await?;
    Ok(Json(serde_json::json!({ "id": verified.id })))
}
