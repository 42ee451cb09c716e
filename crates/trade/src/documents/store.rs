//! `trade_documents` queries; every one takes the tenant scope.

use chrono::{DateTime, Utc};
use keel_kernel::http::pagination::PageRequest;
use keel_kernel::storage::StoredFile;
use keel_kernel::store::{Db, StoreError, Tx, now};
use keel_kernel::tenancy::TenantScope;
use sea_query::{Expr, ExprTrait, Func, Query, SelectStatement};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::DocType;

pub const TABLE: &str = "trade_documents";

/// A document of a shipment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Document {
    pub id: Uuid,
    pub shipment_id: Uuid,
    /// `commercial_invoice`, `packing_list`, `shipping_bill`, `bill_of_lading`,
    /// `certificate_of_origin`, `bank_realisation_certificate` or `other`.
    // The API calls it `document_type`; the column is `doc_type`.
    #[serde(rename(serialize = "document_type"), alias = "document_type")]
    pub doc_type: String,
    /// The content's SHA-256 (hex): its address in the organization's file storage.
    pub sha256: String,
    /// The name it was uploaded under.
    pub file_name: Option<String>,
    /// From the content's magic bytes: `application/pdf`, `image/png`, `image/jpeg`, …
    pub content_type: String,
    /// Bytes.
    pub size: i64,
    /// The latest extraction, once one was started.
    pub extraction_id: Option<Uuid>,
    /// `queued`, then `completed`, `review_required` or `failed` (the extraction's own
    /// status is in `GET …/extraction`).
    pub extraction_status: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

keel_kernel::keyed!(Document { "created_at" => Time(created_at) });

const COLUMNS: [&str; 12] = [
    "id",
    "shipment_id",
    "doc_type",
    "sha256",
    "file_name",
    "content_type",
    "size",
    "extraction_id",
    "extraction_status",
    "created_at",
    "updated_at",
    "version",
];

fn by_id(scope: &TenantScope, id: Uuid) -> SelectStatement {
    Query::select()
        .columns(COLUMNS)
        .from(TABLE)
        .and_where(Expr::col("org_id").eq(scope.org_id()))
        .and_where(Expr::col("id").eq(id))
        .to_owned()
}

pub async fn get(tx: &mut Tx, scope: &TenantScope, id: Uuid) -> Result<Document, StoreError> {
    tx.fetch_one(&by_id(scope, id)).await
}

pub async fn get_db(db: &Db, scope: &TenantScope, id: Uuid) -> Result<Document, StoreError> {
    db.fetch_one(&by_id(scope, id)).await
}

/// Records a stored file as a document of a shipment.
pub async fn insert(
    tx: &mut Tx,
    scope: &TenantScope,
    shipment_id: Uuid,
    doc_type: DocType,
    file: &StoredFile,
    created_by: Option<String>,
) -> Result<Document, StoreError> {
    let id = Uuid::now_v7();
    let at = now();
    tx.execute(
        &Query::insert()
            .into_table(TABLE)
            .columns([
                "id",
                "org_id",
                "shipment_id",
                "doc_type",
                "sha256",
                "file_name",
                "content_type",
                "size",
                "created_by",
                "created_at",
                "updated_at",
                "version",
            ])
            .values_panic([
                id.into(),
                scope.org_id().into(),
                shipment_id.into(),
                doc_type.as_str().into(),
                file.sha256.clone().into(),
                file.file_name.clone().into(),
                file.content_type.clone().into(),
                file.size.into(),
                created_by.into(),
                at.into(),
                at.into(),
                1i64.into(),
            ])
            .to_owned(),
    )
    .await?;
    get(tx, scope, id).await
}

/// One page of a shipment's documents and, for numbered pages, their total.
pub async fn list(
    db: &Db,
    scope: &TenantScope,
    shipment_id: Uuid,
    page: &PageRequest,
) -> Result<(Vec<Document>, Option<u64>), StoreError> {
    let mut select = Query::select()
        .columns(COLUMNS)
        .from(TABLE)
        .and_where(Expr::col("org_id").eq(scope.org_id()))
        .and_where(Expr::col("shipment_id").eq(shipment_id))
        .to_owned();
    keel_kernel::store::paginate(&mut select, page);
    let rows: Vec<Document> = db.fetch_all(&select).await?;
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
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("shipment_id").eq(shipment_id))
                .to_owned(),
        )
        .await?;
    Ok((rows, Some(u64::try_from(count.n).unwrap_or(0))))
}

/// Points a document at a new extraction (`queued`) if it is still at `version`.
pub async fn set_extraction(
    tx: &mut Tx,
    scope: &TenantScope,
    current: &Document,
    extraction_id: Uuid,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &Query::update()
                .table(TABLE)
                .values([
                    ("extraction_id", extraction_id.into()),
                    ("extraction_status", "queued".into()),
                    ("updated_at", now().into()),
                    ("version", Expr::col("version").add(1)),
                ])
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("id").eq(current.id))
                .and_where(Expr::col("version").eq(current.version))
                .to_owned(),
        )
        .await?
        > 0)
}

/// Notes how the document's current extraction finished; false when it was noted already,
/// or the document has moved on to another extraction (or is gone).
pub async fn note_extraction(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    extraction_id: Uuid,
    status: &str,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &Query::update()
                .table(TABLE)
                .values([
                    ("extraction_status", status.into()),
                    ("updated_at", now().into()),
                    ("version", Expr::col("version").add(1)),
                ])
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("id").eq(id))
                .and_where(Expr::col("extraction_id").eq(extraction_id))
                .and_where(Expr::col("extraction_status").eq("queued"))
                .to_owned(),
        )
        .await?
        > 0)
}

/// Notes a reviewer's correction of the current extraction (its re-scored status).
pub async fn note_correction(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    extraction_id: Uuid,
    status: &str,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::update()
            .table(TABLE)
            .values([
                ("extraction_status", status.into()),
                ("updated_at", now().into()),
                ("version", Expr::col("version").add(1)),
            ])
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("id").eq(id))
            .and_where(Expr::col("extraction_id").eq(extraction_id))
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// Deletes a document's row; false when there was none.
pub async fn delete(tx: &mut Tx, scope: &TenantScope, id: Uuid) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &Query::delete()
                .from_table(TABLE)
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("id").eq(id))
                .to_owned(),
        )
        .await?
        > 0)
}
