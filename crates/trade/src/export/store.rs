//! `trade_exports` queries; every one takes the tenant scope (a partner user sees only the
//! exports made for their partner).

use chrono::{DateTime, Utc};
use keel_kernel::store::{Db, StoreError, Tx, now};
use keel_kernel::tenancy::TenantScope;
use sea_query::{Cond, Expr, ExprTrait, Query};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Format;
use crate::shipments::store::Filter;
use crate::shipments::{EbrcStatus, Status};

pub const TABLE: &str = "trade_exports";

/// An export made by a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Export {
    pub id: Uuid,
    /// `csv` or `xlsx`.
    pub format: String,
    /// `queued` (the job has not finished), `ready` or `failed` (the job's `error` says why).
    pub status: String,
    /// The job writing it (`GET /api/v1/jobs/{id}`).
    pub job_id: Option<Uuid>,
    /// Rows written, once ready.
    pub row_count: Option<i64>,
    /// The file's size in bytes, once ready.
    pub size_bytes: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When its state last changed.
    pub updated_at: DateTime<Utc>,
    /// Moves up with every change of state.
    pub version: i64,
}

/// An export's row with what only the server needs.
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct ExportRow {
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub export: Export,
    pub filter: String,
    pub partner_id: Option<Uuid>,
    pub sha256: Option<String>,
}

const COLUMNS: [&str; 13] = [
    "id",
    "format",
    "status",
    "job_id",
    "row_count",
    "size_bytes",
    "created_at",
    "completed_at",
    "updated_at",
    "version",
    "filter",
    "partner_id",
    "sha256",
];

/// A validated list filter as an export keeps it (the job re-reads it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredFilter {
    pub status: Option<String>,
    pub ebrc_status: Option<String>,
    pub destination_country: Option<String>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    pub q: Option<String>,
    /// The list's `sort` (`-created_at`, `reference`, …); absent in exports recorded before
    /// exports took a sort, which had the default.
    #[serde(default)]
    pub sort: Option<String>,
}

impl StoredFilter {
    pub fn of(f: &Filter, sort: &super::rows::Sort) -> Self {
        Self {
            sort: Some(sort.as_param()),
            status: f.status.map(|s| s.as_str().to_string()),
            ebrc_status: f.ebrc_status.map(|s| s.as_str().to_string()),
            destination_country: f.destination_country.clone(),
            created_from: f.created_from,
            created_to: f.created_to,
            q: f.q.clone(),
        }
    }

    /// The export's order (the default when none was recorded).
    pub fn sort(&self) -> Result<super::rows::Sort, keel_kernel::http::ApiError> {
        super::rows::Sort::parse(self.sort.as_deref())
    }

    pub fn filter(&self) -> Filter {
        Filter {
            status: self.status.as_deref().and_then(Status::parse),
            ebrc_status: self.ebrc_status.as_deref().and_then(EbrcStatus::parse),
            destination_country: self.destination_country.clone(),
            created_from: self.created_from,
            created_to: self.created_to,
            q: self.q.clone(),
        }
    }
}

fn visible(scope: &TenantScope) -> Cond {
    let mut cond = Cond::all().add(Expr::col("org_id").eq(scope.org_id()));
    if let Some(p) = scope.partner_id() {
        cond = cond.add(Expr::col("partner_id").eq(p));
    }
    cond
}

/// Records a `queued` export of the scope's filter (and the scope's partner, if any).
pub async fn insert(
    tx: &mut Tx,
    scope: &TenantScope,
    format: Format,
    filter: &StoredFilter,
    created_by: Option<String>,
) -> Result<Export, StoreError> {
    let id = Uuid::now_v7();
    let at = now();
    let filter = serde_json::to_string(filter).map_err(|e| StoreError::Other(e.into()))?;
    tx.execute(
        &Query::insert()
            .into_table(TABLE)
            .columns([
                "id",
                "org_id",
                "partner_id",
                "format",
                "filter",
                "status",
                "created_by",
                "created_at",
                "updated_at",
                "version",
            ])
            .values_panic([
                id.into(),
                scope.org_id().into(),
                scope.partner_id().into(),
                format.as_str().into(),
                filter.into(),
                "queued".into(),
                created_by.into(),
                at.into(),
                at.into(),
                1i64.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(get(tx, scope, id).await?.export)
}

pub async fn set_job(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    job: Uuid,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::update()
            .table(TABLE)
            .values([
                ("job_id", job.into()),
                ("updated_at", now().into()),
                ("version", Expr::col("version").add(1)),
            ])
            .cond_where(visible(scope).add(Expr::col("id").eq(id)))
            .to_owned(),
    )
    .await?;
    Ok(())
}

fn by_id(scope: &TenantScope, id: Uuid) -> sea_query::SelectStatement {
    Query::select()
        .columns(COLUMNS)
        .from(TABLE)
        .cond_where(visible(scope).add(Expr::col("id").eq(id)))
        .to_owned()
}

pub async fn get(tx: &mut Tx, scope: &TenantScope, id: Uuid) -> Result<ExportRow, StoreError> {
    tx.fetch_one(&by_id(scope, id)).await
}

pub async fn get_db(db: &Db, scope: &TenantScope, id: Uuid) -> Result<ExportRow, StoreError> {
    db.fetch_one(&by_id(scope, id)).await
}

/// Marks an export ready with its stored file (once: a second call changes nothing).
pub async fn complete(
    db: &Db,
    scope: &TenantScope,
    id: Uuid,
    sha256: &str,
    rows: u64,
    size: u64,
) -> Result<bool, StoreError> {
    let at = now();
    Ok(db
        .execute(
            &Query::update()
                .table(TABLE)
                .values([
                    ("status", "ready".into()),
                    ("sha256", sha256.into()),
                    ("row_count", i64::try_from(rows).unwrap_or(i64::MAX).into()),
                    ("size_bytes", i64::try_from(size).unwrap_or(i64::MAX).into()),
                    ("completed_at", at.into()),
                    ("updated_at", at.into()),
                    ("version", Expr::col("version").add(1)),
                ])
                .cond_where(
                    visible(scope)
                        .add(Expr::col("id").eq(id))
                        .add(Expr::col("status").eq("queued")),
                )
                .to_owned(),
        )
        .await?
        > 0)
}

/// Marks a queued export failed.
pub async fn fail(db: &Db, scope: &TenantScope, id: Uuid) -> Result<bool, StoreError> {
    let at = now();
    Ok(db
        .execute(
            &Query::update()
                .table(TABLE)
                .values([
                    ("status", "failed".into()),
                    ("completed_at", at.into()),
                    ("updated_at", at.into()),
                    ("version", Expr::col("version").add(1)),
                ])
                .cond_where(
                    visible(scope)
                        .add(Expr::col("id").eq(id))
                        .add(Expr::col("status").eq("queued")),
                )
                .to_owned(),
        )
        .await?
        > 0)
}
