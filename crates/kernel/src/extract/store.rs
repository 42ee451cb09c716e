//! `keel_extractions` queries; every one takes the tenant scope.

use chrono::{DateTime, Utc};
use sea_query::{Expr, ExprTrait, Query};
use uuid::Uuid;

use crate::store::{Db, StoreError, Tx, now};
use crate::tenancy::TenantScope;

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct Row {
    pub id: Uuid,
    pub org_id: Uuid,
    pub file_sha256: String,
    pub document_type: String,
    pub status: String,
    pub job_id: Option<Uuid>,
    pub engine: Option<String>,
    pub confidence: Option<f64>,
    #[serde(deserialize_with = "crate::store::json_column_opt")]
    pub result: Option<serde_json::Value>,
    #[serde(deserialize_with = "crate::store::json_column_opt")]
    pub corrected: Option<serde_json::Value>,
    pub failure_reason: Option<String>,
    pub reviewed_by: Option<Uuid>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

const COLUMNS: [&str; 16] = [
    "id",
    "org_id",
    "file_sha256",
    "document_type",
    "status",
    "job_id",
    "engine",
    "confidence",
    "result",
    "corrected",
    "failure_reason",
    "reviewed_by",
    "reviewed_at",
    "created_at",
    "updated_at",
    "version",
];

pub async fn insert(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    file_sha256: &str,
    document_type: &str,
) -> Result<(), StoreError> {
    let at = now();
    tx.execute(
        &Query::insert()
            .into_table("keel_extractions")
            .columns([
                "id",
                "org_id",
                "file_sha256",
                "document_type",
                "status",
                "created_at",
                "updated_at",
                "version",
            ])
            .values_panic([
                id.into(),
                scope.org_id().into(),
                file_sha256.into(),
                document_type.into(),
                "queued".into(),
                at.into(),
                at.into(),
                1i64.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

pub async fn set_job(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    job_id: Uuid,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::update()
            .table("keel_extractions")
            .values([("job_id", job_id.into())])
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("id").eq(id))
            .to_owned(),
    )
    .await?;
    Ok(())
}

pub async fn get(db: &Db, scope: &TenantScope, id: Uuid) -> Result<Option<Row>, StoreError> {
    db.fetch_optional(
        &Query::select()
            .columns(COLUMNS)
            .from("keel_extractions")
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("id").eq(id))
            .to_owned(),
    )
    .await
}

/// Marks a queued extraction running; false when it is already finished.
pub async fn mark_running(db: &Db, scope: &TenantScope, id: Uuid) -> Result<bool, StoreError> {
    Ok(db
        .execute(
            &Query::update()
                .table("keel_extractions")
                .values([("status", "running".into()), ("updated_at", now().into())])
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("id").eq(id))
                .and_where(Expr::col("status").is_in(["queued", "running"]))
                .to_owned(),
        )
        .await?
        > 0)
}

/// What a finished run writes.
#[derive(Debug)]
pub struct Finish {
    pub status: &'static str,
    pub engine: Option<String>,
    pub confidence: Option<f64>,
    pub result: Option<serde_json::Value>,
    pub failure_reason: Option<String>,
}

/// Records a run's outcome, unless the extraction already finished (a job run twice).
pub async fn finish(db: &Db, scope: &TenantScope, id: Uuid, f: Finish) -> Result<bool, StoreError> {
    Ok(db
        .execute(
            &Query::update()
                .table("keel_extractions")
                .values([
                    ("status", f.status.into()),
                    ("engine", f.engine.into()),
                    ("confidence", f.confidence.into()),
                    ("result", f.result.into()),
                    ("failure_reason", f.failure_reason.into()),
                    ("updated_at", now().into()),
                    ("version", Expr::col("version").add(1)),
                ])
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("id").eq(id))
                .and_where(Expr::col("status").is_in(["queued", "running"]))
                .to_owned(),
        )
        .await?
        > 0)
}

/// Stores a reviewer's corrected result (if the version matches, when given).
#[allow(clippy::too_many_arguments)]
pub async fn correct(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    status: &str,
    confidence: f64,
    corrected: serde_json::Value,
    reviewed_by: Option<Uuid>,
    expected_version: Option<i64>,
) -> Result<bool, StoreError> {
    let mut q = Query::update();
    q.table("keel_extractions")
        .values([
            ("status", status.into()),
            ("confidence", confidence.into()),
            ("corrected", corrected.into()),
            ("reviewed_by", reviewed_by.into()),
            ("reviewed_at", now().into()),
            ("updated_at", now().into()),
            ("version", Expr::col("version").add(1)),
        ])
        .and_where(Expr::col("org_id").eq(scope.org_id()))
        .and_where(Expr::col("id").eq(id));
    if let Some(v) = expected_version {
        q.and_where(Expr::col("version").eq(v));
    }
    Ok(tx.execute(&q.to_owned()).await? > 0)
}
