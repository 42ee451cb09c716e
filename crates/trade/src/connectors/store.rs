//! `trade_connectors` queries. Every one takes the tenant scope except [`org_of_consent`],
//! the Account Aggregator webhook's way to find whose consent an event is about (the
//! signature was verified first; the organization then comes from the row), and
//! [`consent_holder`], which tells a create or an update whether a consent id is free.
//!
//! Why consent ids stay unique across organizations: the Account Aggregator's events carry
//! the consent id and nothing else that says whose it is — no organization, no connector id
//! (ours are unknown to it) — and one secret signs the events of every organization. An id
//! held in two organizations would make an event ambiguous, so the unique index stays global
//! (the one index that does not lead with the organization). What that costs is hidden: an
//! id held by another organization is refused with the same 422 whoever holds it, without
//! saying that it is held, by whom, or by which connector; only a clash inside the caller's
//! own organization is a 409 naming its own connector. Consent ids are handles the Account
//! Aggregator issues (UUIDs), so one organization cannot guess another's.

use chrono::{DateTime, Utc};
use keel_kernel::http::pagination::PageRequest;
use keel_kernel::store::{Db, StoreError, Tx, now};
use keel_kernel::tenancy::TenantScope;
use sea_query::{Expr, ExprTrait, Func, Query, SelectStatement};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::ConnectorStatus;

pub const TABLE: &str = "trade_connectors";

/// A connector as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Connector {
    pub id: Uuid,
    /// `bank_aa` (bank statements through an Account Aggregator), `gst` or `icegate`.
    pub kind: String,
    /// The organization's Importer-Exporter Code (its PAN: 5 letters, 4 digits, 1 letter).
    pub iec_code: String,
    /// The Account Aggregator consent id (`bank_aa` only); one connector per consent.
    pub consent_id: Option<String>,
    /// `pending`, `active`, `rejected` or `revoked`.
    pub status: String,
    /// When the Account Aggregator last said the consented data is ready.
    pub data_ready_at: Option<DateTime<Utc>>,
    /// When the last Account Aggregator event for this connector was applied.
    pub last_event_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

keel_kernel::keyed!(Connector { "created_at" => Time(created_at), "kind" => Text(kind) });

const COLUMNS: [&str; 10] = [
    "id",
    "kind",
    "iec_code",
    "consent_id",
    "status",
    "data_ready_at",
    "last_event_at",
    "created_at",
    "updated_at",
    "version",
];

/// The editable fields, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    pub kind: String,
    pub iec_code: String,
    pub consent_id: Option<String>,
}

fn mine(scope: &TenantScope) -> sea_query::Cond {
    sea_query::Cond::all().add(Expr::col("org_id").eq(scope.org_id()))
}

fn by_id(scope: &TenantScope, id: Uuid) -> SelectStatement {
    Query::select()
        .columns(COLUMNS)
        .from(TABLE)
        .cond_where(mine(scope).add(Expr::col("id").eq(id)))
        .to_owned()
}

pub async fn get(tx: &mut Tx, scope: &TenantScope, id: Uuid) -> Result<Connector, StoreError> {
    tx.fetch_one(&by_id(scope, id)).await
}

pub async fn get_db(db: &Db, scope: &TenantScope, id: Uuid) -> Result<Connector, StoreError> {
    db.fetch_one(&by_id(scope, id)).await
}

/// One page and, for numbered pages, the organization's connector count.
pub async fn list(
    db: &Db,
    scope: &TenantScope,
    page: &PageRequest,
) -> Result<(Vec<Connector>, Option<u64>), StoreError> {
    let mut select = Query::select()
        .columns(COLUMNS)
        .from(TABLE)
        .cond_where(mine(scope))
        .to_owned();
    keel_kernel::store::paginate(&mut select, page);
    let rows = db.fetch_all(&select).await?;
    if !page.wants_total() {
        return Ok((rows, None));
    }
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Count {
        n: i64,
    }
    let count: Count = db
        .fetch_one(
            &Query::select()
                .expr_as(Func::count(Expr::col(sea_query::Asterisk)), "n")
                .from(TABLE)
                .cond_where(mine(scope))
                .to_owned(),
        )
        .await?;
    Ok((rows, Some(u64::try_from(count.n).unwrap_or(0))))
}

/// Inserts a `pending` connector. A consent id another connector has is a conflict.
pub async fn insert(
    tx: &mut Tx,
    scope: &TenantScope,
    fields: &Fields,
) -> Result<Connector, StoreError> {
    let id = Uuid::now_v7();
    let at = now();
    tx.execute(
        &Query::insert()
            .into_table(TABLE)
            .columns([
                "id",
                "org_id",
                "kind",
                "iec_code",
                "consent_id",
                "status",
                "created_at",
                "updated_at",
                "version",
            ])
            .values_panic([
                id.into(),
                scope.org_id().into(),
                fields.kind.clone().into(),
                fields.iec_code.clone().into(),
                fields.consent_id.clone().into(),
                ConnectorStatus::Pending.as_str().into(),
                at.into(),
                at.into(),
                1i64.into(),
            ])
            .to_owned(),
    )
    .await?;
    get(tx, scope, id).await
}

/// Writes the editable fields at `version`; a changed consent id starts over at `pending`
/// with no `data_ready_at`. False when the row changed meanwhile.
pub async fn update(
    tx: &mut Tx,
    scope: &TenantScope,
    current: &Connector,
    fields: &Fields,
) -> Result<bool, StoreError> {
    let mut values: Vec<(&'static str, sea_query::SimpleExpr)> = vec![
        ("kind", fields.kind.clone().into()),
        ("iec_code", fields.iec_code.clone().into()),
        ("consent_id", fields.consent_id.clone().into()),
        ("updated_at", now().into()),
        ("version", Expr::col("version").add(1)),
    ];
    if fields.consent_id != current.consent_id {
        values.push(("status", ConnectorStatus::Pending.as_str().into()));
        values.push(("data_ready_at", Option::<DateTime<Utc>>::None.into()));
    }
    Ok(tx
        .execute(
            &Query::update()
                .table(TABLE)
                .values(values)
                .cond_where(
                    mine(scope)
                        .add(Expr::col("id").eq(current.id))
                        .add(Expr::col("version").eq(current.version)),
                )
                .to_owned(),
        )
        .await?
        > 0)
}

pub async fn delete(tx: &mut Tx, scope: &TenantScope, id: Uuid) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &Query::delete()
                .from_table(TABLE)
                .cond_where(mine(scope).add(Expr::col("id").eq(id)))
                .to_owned(),
        )
        .await?
        > 0)
}

/// The organization whose connector holds `consent_id`, if any.
pub async fn org_of_consent(db: &Db, consent_id: &str) -> Result<Option<Uuid>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Org {
        org_id: Uuid,
    }
    let row: Option<Org> = db
        .fetch_optional(
            &Query::select()
                .column("org_id")
                .from(TABLE)
                .and_where(Expr::col("consent_id").eq(consent_id))
                .to_owned(),
        )
        .await?;
    Ok(row.map(|r| r.org_id))
}

/// Who holds `consent_id`, if anyone: (organization, connector). Only compared with the
/// caller's own organization; never shown.
pub async fn consent_holder(
    tx: &mut Tx,
    consent_id: &str,
) -> Result<Option<(Uuid, Uuid)>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Holder {
        org_id: Uuid,
        id: Uuid,
    }
    let row: Option<Holder> = tx
        .fetch_optional(
            &Query::select()
                .columns(["org_id", "id"])
                .from(TABLE)
                .and_where(Expr::col("consent_id").eq(consent_id))
                .to_owned(),
        )
        .await?;
    Ok(row.map(|h| (h.org_id, h.id)))
}

/// The scope's connector with `consent_id`.
pub async fn by_consent(
    tx: &mut Tx,
    scope: &TenantScope,
    consent_id: &str,
) -> Result<Connector, StoreError> {
    tx.fetch_one(
        &Query::select()
            .columns(COLUMNS)
            .from(TABLE)
            .cond_where(mine(scope).add(Expr::col("consent_id").eq(consent_id)))
            .to_owned(),
    )
    .await
}

/// Applies an Account Aggregator event: a new status and/or `data_ready_at`, at `version`.
pub async fn apply_event(
    tx: &mut Tx,
    scope: &TenantScope,
    current: &Connector,
    status: ConnectorStatus,
    data_ready_at: Option<DateTime<Utc>>,
) -> Result<bool, StoreError> {
    let at = now();
    let mut values: Vec<(&'static str, sea_query::SimpleExpr)> = vec![
        ("status", status.as_str().into()),
        ("last_event_at", at.into()),
        ("updated_at", at.into()),
        ("version", Expr::col("version").add(1)),
    ];
    if let Some(t) = data_ready_at {
        values.push(("data_ready_at", t.into()));
    }
    Ok(tx
        .execute(
            &Query::update()
                .table(TABLE)
                .values(values)
                .cond_where(
                    mine(scope)
                        .add(Expr::col("id").eq(current.id))
                        .add(Expr::col("version").eq(current.version)),
                )
                .to_owned(),
        )
        .await?
        > 0)
}
