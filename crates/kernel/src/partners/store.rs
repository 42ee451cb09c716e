//! Partner queries; every one takes the tenant scope.

use chrono::{DateTime, Utc};
use sea_query::{Cond, Expr, ExprTrait, Query};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::pagination::PageRequest;
use crate::store::{Db, StoreError, Tx, now};
use crate::tenancy::TenantScope;

pub const KINDS: &[&str] = &["buyer", "seller", "broker", "customer", "supplier", "other"];

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Partner {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    /// `buyer`, `seller`, `broker`, `customer`, `supplier` or `other`.
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

const COLUMNS: [&str; 7] = [
    "id",
    "org_id",
    "name",
    "kind",
    "created_at",
    "updated_at",
    "version",
];

/// The rows a scope may see: its organization, and for partner users only their partner.
pub fn visible(scope: &TenantScope) -> Cond {
    let mut cond = Cond::all().add(Expr::col("org_id").eq(scope.org_id()));
    if let Some(p) = scope.partner_id() {
        cond = cond.add(Expr::col("id").eq(p));
    }
    cond
}

pub async fn insert(
    tx: &mut Tx,
    scope: &TenantScope,
    name: &str,
    kind: &str,
) -> Result<Partner, StoreError> {
    let at = now();
    let p = Partner {
        id: Uuid::now_v7(),
        org_id: scope.org_id(),
        name: name.to_string(),
        kind: kind.to_string(),
        created_at: at,
        updated_at: at,
        version: 1,
    };
    tx.execute(
        &Query::insert()
            .into_table("partners")
            .columns(COLUMNS)
            .values_panic([
                p.id.into(),
                p.org_id.into(),
                p.name.clone().into(),
                p.kind.clone().into(),
                p.created_at.into(),
                p.updated_at.into(),
                p.version.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(p)
}

pub async fn get(tx: &mut Tx, scope: &TenantScope, id: Uuid) -> Result<Partner, StoreError> {
    tx.fetch_one(
        &Query::select()
            .columns(COLUMNS)
            .from("partners")
            .cond_where(visible(scope).add(Expr::col("id").eq(id)))
            .to_owned(),
    )
    .await
}

pub async fn get_db(db: &Db, scope: &TenantScope, id: Uuid) -> Result<Partner, StoreError> {
    db.fetch_one(
        &Query::select()
            .columns(COLUMNS)
            .from("partners")
            .cond_where(visible(scope).add(Expr::col("id").eq(id)))
            .to_owned(),
    )
    .await
}

pub async fn list(
    db: &Db,
    scope: &TenantScope,
    kind: Option<&str>,
    page: &PageRequest,
) -> Result<(Vec<Partner>, Option<u64>), StoreError> {
    let mut cond = visible(scope);
    if let Some(k) = kind {
        cond = cond.add(Expr::col("kind").eq(k));
    }
    let mut select = Query::select()
        .columns(COLUMNS)
        .from("partners")
        .cond_where(cond.clone())
        .to_owned();
    crate::store::paginate(&mut select, page);
    let rows = db.fetch_all(&select).await?;
    let total = match page.wants_total() {
        true => Some(crate::auth::store::count_where(db, "partners", cond).await?),
        false => None,
    };
    Ok((rows, total))
}

crate::keyed!(Partner { "created_at" => Time(created_at), "name" => Text(name) });

/// Writes name and kind if the version matches (when given); false when nothing matched.
pub async fn update(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    name: &str,
    kind: &str,
    expected_version: Option<i64>,
) -> Result<bool, StoreError> {
    let mut cond = visible(scope).add(Expr::col("id").eq(id));
    if let Some(v) = expected_version {
        cond = cond.add(Expr::col("version").eq(v));
    }
    Ok(tx
        .execute(
            &Query::update()
                .table("partners")
                .values([
                    ("name", name.into()),
                    ("kind", kind.into()),
                    ("updated_at", now().into()),
                    ("version", Expr::col("version").add(1)),
                ])
                .cond_where(cond)
                .to_owned(),
        )
        .await?
        > 0)
}

pub async fn delete(tx: &mut Tx, scope: &TenantScope, id: Uuid) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &Query::delete()
                .from_table("partners")
                .cond_where(visible(scope).add(Expr::col("id").eq(id)))
                .to_owned(),
        )
        .await?
        > 0)
}
