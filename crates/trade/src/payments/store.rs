//! `trade_payments` queries; every one takes the tenant scope. The bank reference and
//! account number are sealed here on the way in and opened on the way out.

use chrono::{DateTime, NaiveDate, Utc};
use keel_kernel::crypto::field::{FieldRef, Sealed, mask_tail};
use keel_kernel::http::pagination::PageRequest;
use keel_kernel::state::AppState;
use keel_kernel::store::{Db, StoreError, Tx, now};
use keel_kernel::tenancy::TenantScope;
use sea_query::{Cond, Expr, ExprTrait, Func, Query};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub const TABLE: &str = "trade_payments";

/// A payment as the API shows it. `bank_reference` and `account_number` are in full on the
/// payment itself (`GET /api/v1/trade/payments/{id}`, and the create response) and masked
/// (`****1234`) in lists and in its `Debug` output.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Payment {
    pub id: Uuid,
    pub shipment_id: Uuid,
    /// In minor units of `currency`.
    pub amount_minor: i64,
    /// ISO 4217: the shipment's invoice currency.
    pub currency: String,
    /// The day the bank credited it.
    pub received_on: NaiveDate,
    /// Who sent it.
    pub remitter: String,
    pub bank_reference: String,
    pub account_number: String,
    pub created_at: DateTime<Utc>,
    /// A payment is not changed once recorded: its creation time.
    pub updated_at: DateTime<Utc>,
    /// Always 1 (a payment is not changed once recorded).
    pub version: i64,
}

impl std::fmt::Debug for Payment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payment")
            .field("id", &self.id)
            .field("shipment_id", &self.shipment_id)
            .field("amount_minor", &self.amount_minor)
            .field("currency", &self.currency)
            .field("received_on", &self.received_on)
            .field("remitter", &self.remitter)
            .field("bank_reference", &super::Masked(&self.bank_reference))
            .field("account_number", &super::Masked(&self.account_number))
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("version", &self.version)
            .finish()
    }
}

keel_kernel::keyed!(Payment { "created_at" => Time(created_at), "amount_minor" => Int(amount_minor) });

/// A stored row (sealed columns still sealed).
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct Row {
    pub id: Uuid,
    pub shipment_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub received_on: NaiveDate,
    pub remitter: String,
    pub bank_reference: Sealed,
    pub account_number: Sealed,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

const COLUMNS: [&str; 11] = [
    "id",
    "shipment_id",
    "amount_minor",
    "currency",
    "received_on",
    "remitter",
    "bank_reference",
    "account_number",
    "created_at",
    "updated_at",
    "version",
];

/// How much of a sealed value lists show: its last 4 characters.
pub const MASK_KEEP: usize = 4;

fn open(
    state: &AppState,
    scope: &TenantScope,
    row: &Row,
    column: &'static str,
    sealed: &Sealed,
) -> Result<String, StoreError> {
    state
        .crypto
        .open(&FieldRef::new(scope, TABLE, column, row.id), sealed)
        .map_err(|e| {
            StoreError::Other(anyhow::anyhow!(
                "cannot open {TABLE}.{column} of payment {}: {e}",
                row.id
            ))
        })
}

impl Row {
    /// The payment with its sealed fields opened (`masked`: only their last 4 characters).
    pub fn open(
        &self,
        state: &AppState,
        scope: &TenantScope,
        masked: bool,
    ) -> Result<Payment, StoreError> {
        let mut bank_reference = open(state, scope, self, "bank_reference", &self.bank_reference)?;
        let mut account_number = open(state, scope, self, "account_number", &self.account_number)?;
        if masked {
            bank_reference = mask_tail(&bank_reference, MASK_KEEP);
            account_number = mask_tail(&account_number, MASK_KEEP);
        }
        Ok(Payment {
            id: self.id,
            shipment_id: self.shipment_id,
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            received_on: self.received_on,
            remitter: self.remitter.clone(),
            bank_reference,
            account_number,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        })
    }
}

/// A payment's fields, validated (its `Debug` masks the bank fields).
#[derive(Clone, PartialEq)]
pub struct NewPayment {
    pub amount_minor: i64,
    pub currency: String,
    pub received_on: NaiveDate,
    pub remitter: String,
    pub bank_reference: String,
    pub account_number: String,
}

impl std::fmt::Debug for NewPayment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPayment")
            .field("amount_minor", &self.amount_minor)
            .field("currency", &self.currency)
            .field("received_on", &self.received_on)
            .field("remitter", &self.remitter)
            .field("bank_reference", &super::Masked(&self.bank_reference))
            .field("account_number", &super::Masked(&self.account_number))
            .finish()
    }
}

/// The columns a payment row is inserted with, in the order of [`sealed_values`].
pub const INSERT_COLUMNS: [&str; 13] = [
    "id",
    "org_id",
    "shipment_id",
    "amount_minor",
    "currency",
    "received_on",
    "remitter",
    "bank_reference",
    "account_number",
    "created_by",
    "created_at",
    "updated_at",
    "version",
];

/// A new payment row's values in [`INSERT_COLUMNS`] order, its bank fields sealed under the
/// key ring (bound to organization, table, column and row). The one way payments are
/// written: [`insert`], and the demo seed's batched inserts.
pub fn sealed_values(
    state: &AppState,
    scope: &TenantScope,
    id: Uuid,
    shipment_id: Uuid,
    p: &NewPayment,
    created_by: Option<String>,
    at: DateTime<Utc>,
) -> Result<[sea_query::SimpleExpr; 13], StoreError> {
    let seal = |column: &'static str, value: &str| {
        state
            .crypto
            .seal(&FieldRef::new(scope, TABLE, column, id), value)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("cannot seal {TABLE}.{column}: {e}")))
    };
    let bank_reference = seal("bank_reference", &p.bank_reference)?;
    let account_number = seal("account_number", &p.account_number)?;
    Ok([
        id.into(),
        scope.org_id().into(),
        shipment_id.into(),
        p.amount_minor.into(),
        p.currency.clone().into(),
        p.received_on.into(),
        p.remitter.clone().into(),
        bank_reference.into(),
        account_number.into(),
        created_by.into(),
        at.into(),
        at.into(),
        1i64.into(),
    ])
}

/// Inserts a payment with its bank fields sealed; returns its id.
pub async fn insert(
    tx: &mut Tx,
    state: &AppState,
    scope: &TenantScope,
    id: Uuid,
    shipment_id: Uuid,
    p: &NewPayment,
    created_by: Option<String>,
) -> Result<Uuid, StoreError> {
    let values = sealed_values(state, scope, id, shipment_id, p, created_by, now())?;
    tx.execute(
        &Query::insert()
            .into_table(TABLE)
            .columns(INSERT_COLUMNS)
            .values_panic(values)
            .to_owned(),
    )
    .await?;
    Ok(id)
}

pub async fn get(tx: &mut Tx, scope: &TenantScope, id: Uuid) -> Result<Row, StoreError> {
    tx.fetch_one(
        &Query::select()
            .columns(COLUMNS)
            .from(TABLE)
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("id").eq(id))
            .to_owned(),
    )
    .await
}

pub async fn get_db(db: &Db, scope: &TenantScope, id: Uuid) -> Result<Row, StoreError> {
    db.fetch_one(
        &Query::select()
            .columns(COLUMNS)
            .from(TABLE)
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .and_where(Expr::col("id").eq(id))
            .to_owned(),
    )
    .await
}

/// The sum of a shipment's payments, in minor units.
pub async fn sum_for_shipment(
    tx: &mut Tx,
    scope: &TenantScope,
    shipment_id: Uuid,
) -> Result<i64, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Sum {
        n: i64,
    }
    let row: Sum = tx
        .fetch_one(
            &Query::select()
                .expr_as(
                    Func::cast_as(
                        Func::coalesce([
                            sea_query::Expr::from(Func::sum(Expr::col("amount_minor"))),
                            Expr::val(0i64),
                        ]),
                        "BIGINT",
                    ),
                    "n",
                )
                .from(TABLE)
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("shipment_id").eq(shipment_id))
                .to_owned(),
        )
        .await?;
    Ok(row.n)
}

/// One page of the organization's payments (of one shipment when given) and, for numbered
/// pages, their total.
pub async fn list(
    db: &Db,
    scope: &TenantScope,
    shipment_id: Option<Uuid>,
    page: &PageRequest,
) -> Result<(Vec<Row>, Option<u64>), StoreError> {
    let mut cond = Cond::all().add(Expr::col("org_id").eq(scope.org_id()));
    if let Some(s) = shipment_id {
        cond = cond.add(Expr::col("shipment_id").eq(s));
    }
    let mut select = Query::select()
        .columns(COLUMNS)
        .from(TABLE)
        .cond_where(cond.clone())
        .to_owned();
    keel_kernel::store::paginate(&mut select, page);
    let rows: Vec<Row> = db.fetch_all(&select).await?;
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
                .cond_where(cond)
                .to_owned(),
        )
        .await?;
    Ok((rows, Some(u64::try_from(count.n).unwrap_or(0))))
}
