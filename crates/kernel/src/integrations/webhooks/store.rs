//! Webhook endpoints, deliveries and their attempt log; every query takes the tenant scope.

use chrono::{DateTime, Utc};
use sea_query::{Cond, Expr, ExprTrait, OnConflict, Order, Query};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::pagination::PageRequest;
use crate::store::{Db, StoreError, Tx, now};
use crate::tenancy::TenantScope;

/// A registered endpoint (its secret is never shown again after creation).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// Audit actions delivered: exact (`partner.created`), a prefix (`partner.*`) or `*`.
    pub event_types: Vec<String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub(crate) struct EndpointRow {
    pub id: Uuid,
    pub url: String,
    pub description: Option<String>,
    pub event_types: String,
    pub secret: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl EndpointRow {
    pub fn view(&self) -> WebhookEndpoint {
        WebhookEndpoint {
            id: self.id,
            url: self.url.clone(),
            description: self.description.clone(),
            event_types: self.types(),
            active: self.active,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        }
    }

    pub fn types(&self) -> Vec<String> {
        serde_json::from_str(&self.event_types).unwrap_or_default()
    }

    /// Whether an audit action is one this endpoint asked for.
    pub fn wants(&self, action: &str) -> bool {
        self.types().iter().any(|t| matches_type(t, action))
    }
}

pub fn matches_type(pattern: &str, action: &str) -> bool {
    pattern == "*"
        || pattern == action
        || pattern.strip_suffix(".*").is_some_and(|prefix| {
            action
                .strip_prefix(prefix)
                .is_some_and(|r| r.starts_with('.'))
        })
}

const ENDPOINT_COLUMNS: [&str; 9] = [
    "id",
    "url",
    "description",
    "event_types",
    "secret",
    "active",
    "created_at",
    "updated_at",
    "version",
];

fn scoped(scope: &TenantScope) -> Cond {
    Cond::all().add(Expr::col("org_id").eq(scope.org_id()))
}

/// The encryption context of an endpoint's secret: bound to its row.
pub fn secret_context(org_id: Uuid, id: Uuid) -> String {
    format!("webhook_endpoints|secret|{org_id}|{id}")
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_endpoint(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    url: &str,
    description: Option<&str>,
    event_types: &[String],
    secret_enc: &str,
) -> Result<EndpointRow, StoreError> {
    let at = now();
    let row = EndpointRow {
        id,
        url: url.to_string(),
        description: description.map(str::to_string),
        event_types: serde_json::to_string(event_types).unwrap_or_else(|_| "[]".into()),
        secret: secret_enc.to_string(),
        active: true,
        created_at: at,
        updated_at: at,
        version: 1,
    };
    tx.execute(
        &Query::insert()
            .into_table("webhook_endpoints")
            .columns(std::iter::once("org_id").chain(ENDPOINT_COLUMNS))
            .values_panic([
                scope.org_id().into(),
                row.id.into(),
                row.url.clone().into(),
                row.description.clone().into(),
                row.event_types.clone().into(),
                row.secret.clone().into(),
                row.active.into(),
                row.created_at.into(),
                row.updated_at.into(),
                row.version.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(row)
}

pub(crate) async fn get_endpoint(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
) -> Result<EndpointRow, StoreError> {
    tx.fetch_one(
        &Query::select()
            .columns(ENDPOINT_COLUMNS)
            .from("webhook_endpoints")
            .cond_where(scoped(scope).add(Expr::col("id").eq(id)))
            .to_owned(),
    )
    .await
}

pub(crate) async fn get_endpoint_db(
    db: &Db,
    scope: &TenantScope,
    id: Uuid,
) -> Result<EndpointRow, StoreError> {
    db.fetch_one(
        &Query::select()
            .columns(ENDPOINT_COLUMNS)
            .from("webhook_endpoints")
            .cond_where(scoped(scope).add(Expr::col("id").eq(id)))
            .to_owned(),
    )
    .await
}

/// The organization's active endpoints (for matching committed events).
pub(crate) async fn active_endpoints(
    db: &Db,
    scope: &TenantScope,
) -> Result<Vec<EndpointRow>, StoreError> {
    db.fetch_all(
        &Query::select()
            .columns(ENDPOINT_COLUMNS)
            .from("webhook_endpoints")
            .cond_where(scoped(scope).add(Expr::col("active").eq(true)))
            .to_owned(),
    )
    .await
}

pub(crate) async fn list_endpoints(
    db: &Db,
    scope: &TenantScope,
    page: &PageRequest,
) -> Result<(Vec<EndpointRow>, u64), StoreError> {
    let order = if page.descending {
        Order::Desc
    } else {
        Order::Asc
    };
    let rows = db
        .fetch_all(
            &Query::select()
                .columns(ENDPOINT_COLUMNS)
                .from("webhook_endpoints")
                .cond_where(scoped(scope))
                .order_by(sea_query::Alias::new(page.sort.clone()), order.clone())
                .order_by("id", order)
                .limit(page.page_size)
                .offset(page.offset())
                .to_owned(),
        )
        .await?;
    let total = crate::auth::store::count_where(db, "webhook_endpoints", scoped(scope)).await?;
    Ok((rows, total))
}

/// Writes the changed fields if the version matches (when given); false when nothing matched.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update_endpoint(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    url: &str,
    description: Option<&str>,
    event_types: &[String],
    active: bool,
    expected_version: Option<i64>,
) -> Result<bool, StoreError> {
    let mut cond = scoped(scope).add(Expr::col("id").eq(id));
    if let Some(v) = expected_version {
        cond = cond.add(Expr::col("version").eq(v));
    }
    Ok(tx
        .execute(
            &Query::update()
                .table("webhook_endpoints")
                .values([
                    ("url", url.into()),
                    ("description", description.map(str::to_string).into()),
                    (
                        "event_types",
                        serde_json::to_string(event_types)
                            .unwrap_or_else(|_| "[]".into())
                            .into(),
                    ),
                    ("active", active.into()),
                    ("updated_at", now().into()),
                    ("version", Expr::col("version").add(1)),
                ])
                .cond_where(cond)
                .to_owned(),
        )
        .await?
        > 0)
}

/// Deletes an endpoint with its deliveries and their attempts.
pub(crate) async fn delete_endpoint(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
) -> Result<bool, StoreError> {
    let deliveries = Query::select()
        .column("id")
        .from("webhook_deliveries")
        .cond_where(scoped(scope).add(Expr::col("endpoint_id").eq(id)))
        .to_owned();
    tx.execute(
        &Query::delete()
            .from_table("webhook_attempts")
            .cond_where(scoped(scope).add(Expr::col("delivery_id").in_subquery(deliveries)))
            .to_owned(),
    )
    .await?;
    tx.execute(
        &Query::delete()
            .from_table("webhook_deliveries")
            .cond_where(scoped(scope).add(Expr::col("endpoint_id").eq(id)))
            .to_owned(),
    )
    .await?;
    Ok(tx
        .execute(
            &Query::delete()
                .from_table("webhook_endpoints")
                .cond_where(scoped(scope).add(Expr::col("id").eq(id)))
                .to_owned(),
        )
        .await?
        > 0)
}

/// One delivery of one event to one endpoint.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow, serde::Deserialize)]
pub struct Delivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    /// The audit event delivered (a fresh id for test deliveries).
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending`, `retrying`, `delivered`, `failed` (attempts ran out) or `cancelled`
    /// (the endpoint was disabled).
    pub status: String,
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub job_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

const DELIVERY_COLUMNS: [&str; 11] = [
    "id",
    "endpoint_id",
    "event_id",
    "event_type",
    "status",
    "attempts",
    "last_status_code",
    "job_id",
    "created_at",
    "updated_at",
    "delivered_at",
];

/// Records a delivery unless this endpoint already has one for the event (an event is
/// delivered at least once by the outbox; each endpoint gets it once). Returns whether it
/// was new.
pub(crate) async fn insert_delivery(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    endpoint_id: Uuid,
    event_id: Uuid,
    event_type: &str,
    payload: &str,
) -> Result<bool, StoreError> {
    let at = now();
    Ok(tx
        .execute(
            &Query::insert()
                .into_table("webhook_deliveries")
                .columns([
                    "org_id",
                    "id",
                    "endpoint_id",
                    "event_id",
                    "event_type",
                    "payload",
                    "status",
                    "attempts",
                    "created_at",
                    "updated_at",
                ])
                .values_panic([
                    scope.org_id().into(),
                    id.into(),
                    endpoint_id.into(),
                    event_id.into(),
                    event_type.into(),
                    payload.into(),
                    "pending".into(),
                    0i64.into(),
                    at.into(),
                    at.into(),
                ])
                .on_conflict(
                    OnConflict::columns(["org_id", "endpoint_id", "event_id"])
                        .do_nothing()
                        .to_owned(),
                )
                .to_owned(),
        )
        .await?
        > 0)
}

pub(crate) async fn set_delivery_job(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    job_id: Uuid,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::update()
            .table("webhook_deliveries")
            .values([("job_id", job_id.into())])
            .cond_where(scoped(scope).add(Expr::col("id").eq(id)))
            .to_owned(),
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub(crate) struct DeliveryWork {
    pub endpoint_id: Uuid,
    pub payload: String,
    pub status: String,
}

pub(crate) async fn delivery_work(
    db: &Db,
    scope: &TenantScope,
    id: Uuid,
) -> Result<Option<DeliveryWork>, StoreError> {
    db.fetch_optional(
        &Query::select()
            .columns(["endpoint_id", "payload", "status"])
            .from("webhook_deliveries")
            .cond_where(scoped(scope).add(Expr::col("id").eq(id)))
            .to_owned(),
    )
    .await
}

/// One attempt's record.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow, serde::Deserialize)]
pub struct Attempt {
    pub attempt: i64,
    /// The receiver's HTTP status; none when it could not be reached.
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    /// The start of the receiver's response body.
    pub response_snippet: Option<String>,
    /// Why the attempt failed without a response (connection refused, timeout, refused by
    /// the SSRF guard).
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Logs an attempt and moves the delivery to its new status, in one transaction.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_attempt(
    db: &Db,
    scope: &TenantScope,
    delivery_id: Uuid,
    attempt: &Attempt,
    status: &str,
) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    tx.execute(
        &Query::insert()
            .into_table("webhook_attempts")
            .columns([
                "org_id",
                "delivery_id",
                "attempt",
                "status_code",
                "latency_ms",
                "response_snippet",
                "error",
                "created_at",
            ])
            .values_panic([
                scope.org_id().into(),
                delivery_id.into(),
                attempt.attempt.into(),
                attempt.status_code.into(),
                attempt.latency_ms.into(),
                attempt.response_snippet.clone().into(),
                attempt.error.clone().into(),
                attempt.created_at.into(),
            ])
            // A job re-run after a crash repeats its attempt number: keep the latest record.
            .on_conflict(
                OnConflict::columns(["org_id", "delivery_id", "attempt"])
                    .update_columns([
                        "status_code",
                        "latency_ms",
                        "response_snippet",
                        "error",
                        "created_at",
                    ])
                    .to_owned(),
            )
            .to_owned(),
    )
    .await?;
    let mut values = vec![
        ("status", status.into()),
        ("attempts", attempt.attempt.into()),
        ("last_status_code", attempt.status_code.into()),
        ("updated_at", now().into()),
    ];
    if status == "delivered" {
        values.push(("delivered_at", attempt.created_at.into()));
    }
    tx.execute(
        &Query::update()
            .table("webhook_deliveries")
            .values(values)
            .cond_where(scoped(scope).add(Expr::col("id").eq(delivery_id)))
            .to_owned(),
    )
    .await?;
    tx.commit().await
}

pub(crate) async fn set_delivery_status(
    db: &Db,
    scope: &TenantScope,
    id: Uuid,
    status: &str,
) -> Result<(), StoreError> {
    db.execute(
        &Query::update()
            .table("webhook_deliveries")
            .values([("status", status.into()), ("updated_at", now().into())])
            .cond_where(scoped(scope).add(Expr::col("id").eq(id)))
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// A delivery with its attempts, newest delivery first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryWithAttempts {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub attempt_log: Vec<Attempt>,
}

pub(crate) async fn list_deliveries(
    db: &Db,
    scope: &TenantScope,
    endpoint_id: Uuid,
    page: &PageRequest,
) -> Result<(Vec<DeliveryWithAttempts>, u64), StoreError> {
    let cond = scoped(scope).add(Expr::col("endpoint_id").eq(endpoint_id));
    let order = if page.descending {
        Order::Desc
    } else {
        Order::Asc
    };
    let rows: Vec<Delivery> = db
        .fetch_all(
            &Query::select()
                .columns(DELIVERY_COLUMNS)
                .from("webhook_deliveries")
                .cond_where(cond.clone())
                .order_by(sea_query::Alias::new(page.sort.clone()), order.clone())
                .order_by("id", order)
                .limit(page.page_size)
                .offset(page.offset())
                .to_owned(),
        )
        .await?;
    let total = crate::auth::store::count_where(db, "webhook_deliveries", cond).await?;
    let mut out = Vec::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok((out, total));
    }
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct AttemptRow {
        delivery_id: Uuid,
        attempt: i64,
        status_code: Option<i64>,
        latency_ms: i64,
        response_snippet: Option<String>,
        error: Option<String>,
        created_at: DateTime<Utc>,
    }
    let ids: Vec<Uuid> = rows.iter().map(|d| d.id).collect();
    let attempts: Vec<AttemptRow> = db
        .fetch_all(
            &Query::select()
                .columns([
                    "delivery_id",
                    "attempt",
                    "status_code",
                    "latency_ms",
                    "response_snippet",
                    "error",
                    "created_at",
                ])
                .from("webhook_attempts")
                .cond_where(scoped(scope).add(Expr::col("delivery_id").is_in(ids)))
                .order_by("attempt", Order::Asc)
                .to_owned(),
        )
        .await?;
    for delivery in rows {
        let attempt_log = attempts
            .iter()
            .filter(|a| a.delivery_id == delivery.id)
            .map(|a| Attempt {
                attempt: a.attempt,
                status_code: a.status_code,
                latency_ms: a.latency_ms,
                response_snippet: a.response_snippet.clone(),
                error: a.error.clone(),
                created_at: a.created_at,
            })
            .collect();
        out.push(DeliveryWithAttempts {
            delivery,
            attempt_log,
        });
    }
    Ok((out, total))
}

/// Records an incoming webhook's event id; false if it was seen before (a replay).
pub(crate) async fn insert_receipt(
    tx: &mut Tx,
    org_id: Uuid,
    source: &str,
    event_id: &str,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &Query::insert()
                .into_table("webhook_receipts")
                .columns(["org_id", "source", "event_id", "received_at"])
                .values_panic([org_id.into(), source.into(), event_id.into(), now().into()])
                .on_conflict(
                    OnConflict::columns(["org_id", "source", "event_id"])
                        .do_nothing()
                        .to_owned(),
                )
                .to_owned(),
        )
        .await?
        > 0)
}

/// Whether an event id from `source` was received for any organization.
pub(crate) async fn receipt_exists(
    db: &Db,
    source: &str,
    event_id: &str,
) -> Result<bool, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Receipt {
        event_id: String,
    }
    let row: Option<Receipt> = db
        .fetch_optional(
            &Query::select()
                .column("event_id")
                .from("webhook_receipts")
                .and_where(Expr::col("source").eq(source))
                .and_where(Expr::col("event_id").eq(event_id))
                .limit(1)
                .to_owned(),
        )
        .await?;
    Ok(row.is_some_and(|r| r.event_id == event_id))
}

/// Forgets incoming event ids received before `before` (older timestamps are refused as
/// stale anyway, so their replays cannot get through).
pub(crate) async fn prune_receipts(db: &Db, before: DateTime<Utc>) -> Result<u64, StoreError> {
    db.execute(
        &Query::delete()
            .from_table("webhook_receipts")
            .cond_where(Expr::col("received_at").lt(before))
            .to_owned(),
    )
    .await
}
