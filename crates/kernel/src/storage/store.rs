//! `keel_files` queries; every one takes the tenant scope.

use chrono::{DateTime, Utc};
use sea_query::{Expr, ExprTrait, OnConflict, Query};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::FileKind;
use crate::store::{Db, StoreError, Tx, now};
use crate::tenancy::TenantScope;

/// A stored file.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow, serde::Deserialize)]
pub struct StoredFile {
    /// The content's SHA-256 (hex): the file's address inside its organization.
    pub sha256: String,
    #[serde(skip_serializing)]
    pub org_id: Uuid,
    pub size: i64,
    /// `pdf`, `png`, `jpeg`, `webp` or `gif`, from the content.
    pub kind: String,
    /// The MIME type of `kind`.
    pub content_type: String,
    /// The name it was first uploaded under.
    pub file_name: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl StoredFile {
    pub fn kind(&self) -> Option<FileKind> {
        FileKind::parse(&self.kind)
    }
}

const COLUMNS: [&str; 7] = [
    "sha256",
    "org_id",
    "size",
    "kind",
    "content_type",
    "file_name",
    "created_at",
];

pub async fn find(
    db: &Db,
    scope: &TenantScope,
    sha256: &str,
) -> Result<Option<StoredFile>, StoreError> {
    db.fetch_optional(
        &Query::select()
            .columns(COLUMNS)
            .from("keel_files")
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("sha256").eq(sha256))
            .to_owned(),
    )
    .await
}

/// Inserts the row unless the organization already has it; returns the row and whether it
/// was new.
pub async fn insert(
    tx: &mut Tx,
    scope: &TenantScope,
    sha256: &str,
    size: u64,
    kind: FileKind,
    file_name: Option<String>,
) -> Result<(StoredFile, bool), StoreError> {
    let row = StoredFile {
        sha256: sha256.to_string(),
        org_id: scope.org_id(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        kind: kind.as_str().to_string(),
        content_type: kind.mime().to_string(),
        file_name,
        created_at: now(),
    };
    let inserted = tx
        .execute(
            &Query::insert()
                .into_table("keel_files")
                .columns(COLUMNS)
                .values_panic([
                    row.sha256.clone().into(),
                    row.org_id.into(),
                    row.size.into(),
                    row.kind.clone().into(),
                    row.content_type.clone().into(),
                    row.file_name.clone().into(),
                    row.created_at.into(),
                ])
                .on_conflict(
                    OnConflict::columns(["org_id", "sha256"])
                        .do_nothing()
                        .to_owned(),
                )
                .to_owned(),
        )
        .await?;
    if inserted > 0 {
        return Ok((row, true));
    }
    let existing = tx
        .fetch_one(
            &Query::select()
                .columns(COLUMNS)
                .from("keel_files")
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("sha256").eq(sha256))
                .to_owned(),
        )
        .await?;
    Ok((existing, false))
}

pub async fn delete(tx: &mut Tx, scope: &TenantScope, sha256: &str) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &Query::delete()
                .from_table("keel_files")
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("sha256").eq(sha256))
                .to_owned(),
        )
        .await?
        > 0)
}
