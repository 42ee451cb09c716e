//! Notification queries; every one takes the tenant scope and, for a user's own data, the
//! user.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_query::{Cond, Expr, ExprTrait, OnConflict, Order, Query};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{DeliveryChannel, Rendered};
use crate::crypto::KeyRing;
use crate::http::pagination::PageRequest;
use crate::store::{Db, StoreError, Tx, now};
use crate::tenancy::TenantScope;

/// One delivery of a notification by email or SMS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Delivery {
    /// `email` or `sms`.
    pub channel: String,
    /// `queued`, `retrying`, `sent`, `failed` (not worth retrying), `dead` (attempts used
    /// up) or `skipped` (channel disabled, no address).
    pub status: String,
    pub attempts: i32,
    /// Why it failed or was skipped.
    pub detail: Option<String>,
    /// The job that delivers it (see `/api/v1/jobs/{id}`).
    pub job_id: Option<Uuid>,
    pub updated_at: DateTime<Utc>,
}

/// A notification as its recipient sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    pub id: Uuid,
    /// The notification type, e.g. `trade.shipment_booked`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub body: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub read: bool,
    pub read_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub(crate) struct Row {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: String,
    pub title: String,
    pub body: String,
    pub html: Option<String>,
    pub data: String,
    pub read_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

const COLUMNS: [&str; 11] = [
    "id",
    "user_id",
    "kind",
    "title",
    "body",
    "html",
    "data",
    "read_at",
    "created_at",
    "updated_at",
    "version",
];

impl Row {
    fn into_notification(self, deliveries: Vec<Delivery>) -> Notification {
        Notification {
            id: self.id,
            kind: self.kind,
            title: self.title,
            body: self.body,
            data: serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null),
            read: self.read_at.is_some(),
            read_at: self.read_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
            deliveries,
        }
    }
}

/// A user's own in-app notifications.
fn mine(scope: &TenantScope, user_id: Uuid) -> Cond {
    Cond::all()
        .add(Expr::col("org_id").eq(scope.org_id()))
        .add(Expr::col("user_id").eq(user_id))
        .add(Expr::col("in_app").eq(true))
}

pub(crate) async fn user_in_org(
    tx: &mut Tx,
    scope: &TenantScope,
    user_id: Uuid,
) -> Result<bool, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Rec {
        #[allow(dead_code)]
        id: Uuid,
    }
    Ok(tx
        .fetch_optional::<Rec>(
            &Query::select()
                .column("id")
                .from("users")
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("id").eq(user_id))
                .to_owned(),
        )
        .await?
        .is_some())
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_notification(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    user_id: Uuid,
    kind: &str,
    rendered: &Rendered,
    data: &serde_json::Value,
    in_app: bool,
) -> Result<(), StoreError> {
    let at = now();
    tx.execute(
        &Query::insert()
            .into_table("notifications")
            .columns([
                "id",
                "org_id",
                "user_id",
                "kind",
                "title",
                "body",
                "html",
                "data",
                "in_app",
                "created_at",
                "updated_at",
                "version",
            ])
            .values_panic([
                id.into(),
                scope.org_id().into(),
                user_id.into(),
                kind.into(),
                rendered.title.clone().into(),
                rendered.text.clone().into(),
                rendered.html.clone().into(),
                data.to_string().into(),
                in_app.into(),
                at.into(),
                at.into(),
                1i64.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

pub(crate) async fn insert_delivery(
    tx: &mut Tx,
    scope: &TenantScope,
    notification_id: Uuid,
    channel: DeliveryChannel,
    status: &str,
    detail: Option<&str>,
    job_id: Option<Uuid>,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::insert()
            .into_table("notification_deliveries")
            .columns([
                "org_id",
                "notification_id",
                "channel",
                "status",
                "attempts",
                "detail",
                "job_id",
                "updated_at",
            ])
            .values_panic([
                scope.org_id().into(),
                notification_id.into(),
                channel.as_str().into(),
                status.into(),
                0i32.into(),
                detail.map(str::to_string).into(),
                job_id.into(),
                now().into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// Records a delivery attempt's outcome.
pub(crate) async fn set_delivery(
    db: &Db,
    scope: &TenantScope,
    notification_id: Uuid,
    channel: DeliveryChannel,
    status: &str,
    attempts: u32,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    db.execute(
        &Query::update()
            .table("notification_deliveries")
            .values([
                ("status", status.into()),
                (
                    "attempts",
                    i32::try_from(attempts).unwrap_or(i32::MAX).into(),
                ),
                ("detail", detail.map(str::to_string).into()),
                ("updated_at", now().into()),
            ])
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("notification_id").eq(notification_id))
            .and_where(Expr::col("channel").eq(channel.as_str()))
            .to_owned(),
    )
    .await?;
    Ok(())
}

pub(crate) async fn delivery(
    db: &Db,
    scope: &TenantScope,
    notification_id: Uuid,
    channel: DeliveryChannel,
) -> Result<Option<Delivery>, StoreError> {
    db.fetch_optional(
        &Query::select()
            .columns([
                "channel",
                "status",
                "attempts",
                "detail",
                "job_id",
                "updated_at",
            ])
            .from("notification_deliveries")
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("notification_id").eq(notification_id))
            .and_where(Expr::col("channel").eq(channel.as_str()))
            .to_owned(),
    )
    .await
}

async fn deliveries_of(
    db: &Db,
    scope: &TenantScope,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Delivery>>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Rec {
        notification_id: Uuid,
        #[sqlx(flatten)]
        #[serde(flatten)]
        d: Delivery,
    }
    let mut out: HashMap<Uuid, Vec<Delivery>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let rows: Vec<Rec> = db
        .fetch_all(
            &Query::select()
                .columns([
                    "notification_id",
                    "channel",
                    "status",
                    "attempts",
                    "detail",
                    "job_id",
                    "updated_at",
                ])
                .from("notification_deliveries")
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("notification_id").is_in(ids.iter().copied()))
                .order_by("channel", Order::Asc)
                .to_owned(),
        )
        .await?;
    for r in rows {
        out.entry(r.notification_id).or_default().push(r.d);
    }
    Ok(out)
}

/// The row behind a notification (any recipient in the scope; for delivery jobs).
pub(crate) async fn row(db: &Db, scope: &TenantScope, id: Uuid) -> Result<Row, StoreError> {
    db.fetch_one(
        &Query::select()
            .columns(COLUMNS)
            .from("notifications")
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("id").eq(id))
            .to_owned(),
    )
    .await
}

/// One of the user's notifications, inside a transaction (in-app or not).
pub(crate) async fn get(
    tx: &mut Tx,
    scope: &TenantScope,
    user_id: Uuid,
    id: Uuid,
) -> Result<Notification, StoreError> {
    let row: Row = tx
        .fetch_one(
            &Query::select()
                .columns(COLUMNS)
                .from("notifications")
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("user_id").eq(user_id))
                .and_where(Expr::col("id").eq(id))
                .to_owned(),
        )
        .await?;
    let deliveries: Vec<Delivery> = tx
        .fetch_all(
            &Query::select()
                .columns([
                    "channel",
                    "status",
                    "attempts",
                    "detail",
                    "job_id",
                    "updated_at",
                ])
                .from("notification_deliveries")
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("notification_id").eq(id))
                .order_by("channel", Order::Asc)
                .to_owned(),
        )
        .await?;
    Ok(row.into_notification(deliveries))
}

/// One of the user's in-app notifications.
pub async fn get_mine(
    db: &Db,
    scope: &TenantScope,
    user_id: Uuid,
    id: Uuid,
) -> Result<Notification, StoreError> {
    let row: Row = db
        .fetch_one(
            &Query::select()
                .columns(COLUMNS)
                .from("notifications")
                .cond_where(mine(scope, user_id).add(Expr::col("id").eq(id)))
                .to_owned(),
        )
        .await?;
    let mut d = deliveries_of(db, scope, &[id]).await?;
    Ok(row.into_notification(d.remove(&id).unwrap_or_default()))
}

/// A page of the user's in-app notifications (only unread ones if asked), and the total.
pub async fn list(
    db: &Db,
    scope: &TenantScope,
    user_id: Uuid,
    unread: Option<bool>,
    page: &PageRequest,
) -> Result<(Vec<Notification>, u64), StoreError> {
    let mut cond = mine(scope, user_id);
    match unread {
        Some(true) => cond = cond.add(Expr::col("read_at").is_null()),
        Some(false) => cond = cond.add(Expr::col("read_at").is_not_null()),
        None => {}
    }
    let order = if page.descending {
        Order::Desc
    } else {
        Order::Asc
    };
    let rows: Vec<Row> = db
        .fetch_all(
            &Query::select()
                .columns(COLUMNS)
                .from("notifications")
                .cond_where(cond.clone())
                .order_by(sea_query::Alias::new(page.sort.clone()), order.clone())
                .order_by("id", order)
                .limit(page.page_size)
                .offset(page.offset())
                .to_owned(),
        )
        .await?;
    let total = crate::auth::store::count_where(db, "notifications", cond).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut deliveries = deliveries_of(db, scope, &ids).await?;
    Ok((
        rows.into_iter()
            .map(|r| {
                let d = deliveries.remove(&r.id).unwrap_or_default();
                r.into_notification(d)
            })
            .collect(),
        total,
    ))
}

pub async fn unread_count(db: &Db, scope: &TenantScope, user_id: Uuid) -> Result<u64, StoreError> {
    crate::auth::store::count_where(
        db,
        "notifications",
        mine(scope, user_id).add(Expr::col("read_at").is_null()),
    )
    .await
}

/// Marks one (`Some(id)`) or all of the user's unread notifications read; returns how many
/// changed.
pub async fn mark_read(
    db: &Db,
    scope: &TenantScope,
    user_id: Uuid,
    id: Option<Uuid>,
) -> Result<u64, StoreError> {
    let mut cond = mine(scope, user_id).add(Expr::col("read_at").is_null());
    if let Some(id) = id {
        cond = cond.add(Expr::col("id").eq(id));
    }
    let at = now();
    db.execute(
        &Query::update()
            .table("notifications")
            .values([
                ("read_at", at.into()),
                ("updated_at", at.into()),
                ("version", Expr::col("version").add(1)),
            ])
            .cond_where(cond)
            .to_owned(),
    )
    .await
}

/// The user's choices: `(type, channel) → enabled` (only `kind` when given).
pub(crate) async fn preferences_of(
    tx: &mut Tx,
    scope: &TenantScope,
    user_id: Uuid,
    kind: Option<&str>,
) -> Result<HashMap<(String, DeliveryChannel), bool>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Rec {
        kind: String,
        channel: String,
        enabled: bool,
    }
    let mut q = Query::select()
        .columns(["kind", "channel", "enabled"])
        .from("notification_preferences")
        .and_where(Expr::col("org_id").eq(scope.org_id()))
        .and_where(Expr::col("user_id").eq(user_id))
        .to_owned();
    if let Some(k) = kind {
        q.and_where(Expr::col("kind").eq(k));
    }
    let rows: Vec<Rec> = tx.fetch_all(&q).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| DeliveryChannel::parse(&r.channel).map(|c| ((r.kind, c), r.enabled)))
        .collect())
}

pub(crate) async fn set_preference(
    tx: &mut Tx,
    scope: &TenantScope,
    user_id: Uuid,
    kind: &str,
    channel: DeliveryChannel,
    enabled: bool,
) -> Result<(), StoreError> {
    let at = now();
    tx.execute(
        &Query::insert()
            .into_table("notification_preferences")
            .columns([
                "org_id",
                "user_id",
                "kind",
                "channel",
                "enabled",
                "updated_at",
            ])
            .values_panic([
                scope.org_id().into(),
                user_id.into(),
                kind.into(),
                channel.as_str().into(),
                enabled.into(),
                at.into(),
            ])
            .on_conflict(
                OnConflict::columns(["org_id", "user_id", "kind", "channel"])
                    .update_columns(["enabled", "updated_at"])
                    .to_owned(),
            )
            .to_owned(),
    )
    .await?;
    Ok(())
}

fn sms_context(scope: &TenantScope, user_id: Uuid) -> String {
    format!(
        "{}|notification_contacts|sms_number|{user_id}",
        scope.org_id()
    )
}

/// The user's SMS number, decrypted.
pub(crate) async fn sms_number(
    tx: &mut Tx,
    scope: &TenantScope,
    user_id: Uuid,
    keys: &KeyRing,
) -> Result<Option<String>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Rec {
        sms_number: Option<String>,
    }
    let row: Option<Rec> = tx
        .fetch_optional(
            &Query::select()
                .column("sms_number")
                .from("notification_contacts")
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("user_id").eq(user_id))
                .to_owned(),
        )
        .await?;
    match row.and_then(|r| r.sms_number) {
        None => Ok(None),
        Some(enc) => keys
            .decrypt_str(&enc, &sms_context(scope, user_id))
            .map(Some)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("sms number: {e}"))),
    }
}

/// Sets (or clears, with `None`) the user's SMS number, encrypted at rest.
pub(crate) async fn set_sms_number(
    tx: &mut Tx,
    scope: &TenantScope,
    user_id: Uuid,
    number: Option<&str>,
    keys: &KeyRing,
) -> Result<(), StoreError> {
    let enc = number
        .map(|n| keys.encrypt_str(n, &sms_context(scope, user_id)))
        .transpose()
        .map_err(|e| StoreError::Other(anyhow::anyhow!("sms number: {e}")))?;
    tx.execute(
        &Query::insert()
            .into_table("notification_contacts")
            .columns(["org_id", "user_id", "sms_number", "updated_at"])
            .values_panic([
                scope.org_id().into(),
                user_id.into(),
                enc.into(),
                now().into(),
            ])
            .on_conflict(
                OnConflict::columns(["org_id", "user_id"])
                    .update_columns(["sms_number", "updated_at"])
                    .to_owned(),
            )
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// The recipient's email address.
pub(crate) async fn user_email(
    db: &Db,
    scope: &TenantScope,
    user_id: Uuid,
) -> Result<String, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Rec {
        email: String,
    }
    let r: Rec = db
        .fetch_one(
            &Query::select()
                .column("email")
                .from("users")
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("id").eq(user_id))
                .to_owned(),
        )
        .await?;
    Ok(r.email)
}
