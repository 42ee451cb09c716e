//! Shipment queries. Every one takes the tenant scope; every write that adds, removes or
//! moves a live shipment between (status, e-BRC status) also moves its tally, in the same
//! transaction (see [`super::tally`]).

use chrono::{DateTime, NaiveDate, Utc};
use keel_kernel::config::DatabaseKind;
use keel_kernel::http::pagination::PageRequest;
use keel_kernel::store::{Db, KeptPlan, StoreError, Tx, now};
use keel_kernel::tenancy::TenantScope;
use sea_query::{Cond, Expr, ExprTrait, Func, LikeExpr, Query, SelectStatement};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::tally::{self, Tally};
use super::{EbrcStatus, Status};

pub const TABLE: &str = "trade_shipments";

/// A shipment as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Shipment {
    pub id: Uuid,
    /// The exporter's own reference, unique in the organization (case-insensitive).
    pub reference: String,
    /// The buyer as a business partner of the organization, when linked.
    pub buyer_partner_id: Option<Uuid>,
    pub buyer_name: String,
    /// ISO 3166-1 alpha-2.
    pub buyer_country: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub destination_country: String,
    /// UN/LOCODE, upper case (`INNSA`).
    pub port_of_loading: Option<String>,
    /// UN/LOCODE, upper case (`DEHAM`).
    pub port_of_discharge: Option<String>,
    /// An Incoterms 2020 rule (`FOB`, `CIF`, …).
    pub incoterm: Option<String>,
    /// HS codes, 6–8 digits each.
    #[sqlx(try_from = "String")]
    #[schema(value_type = Vec<String>)]
    pub hs_codes: HsCodes,
    /// The invoice value in minor units of `currency` (cents for USD).
    pub invoice_value_minor: i64,
    /// ISO 4217.
    pub currency: String,
    pub shipping_bill_number: Option<String>,
    #[serde(default, with = "keel_kernel::time::date::option")]
    pub shipping_bill_date: Option<NaiveDate>,
    /// `lut` (export under letter of undertaking, no IGST) or `with_payment` (IGST paid).
    pub export_type: String,
    /// `draft`, `booked`, `in_transit`, `delivered` or `cancelled`.
    pub status: String,
    /// `pending`, `filed`, `realized` or `overdue`.
    pub ebrc_status: String,
    /// Payments received so far, in minor units of `currency`.
    pub realized_minor: i64,
    // Written and read without chrono's general formatter and parser: a page of 20 carries
    // 40 timestamps each way (see `keel_kernel::time`).
    #[serde(with = "keel_kernel::time::utc")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "keel_kernel::time::utc")]
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

keel_kernel::keyed!(Shipment { "created_at" => Time(created_at), "reference" => Text(reference) });

/// The sortable fields of the list (and the export); the first is the default (newest first).
pub const SORTS: [&str; 2] = ["created_at", "reference"];

/// HS codes, stored comma separated (they are digits only); a JSON array in the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HsCodes(pub Vec<String>);

/// From the API's array, or from the stored comma-separated text (a SQLite row).
impl<'de> Deserialize<'de> for HsCodes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Codes;
        impl<'de> serde::de::Visitor<'de> for Codes {
            type Value = HsCodes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("HS codes, as an array or comma separated")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HsCodes, E> {
                Ok(HsCodes::from(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<HsCodes, A::Error> {
                let mut codes = Vec::new();
                while let Some(c) = seq.next_element::<String>()? {
                    codes.push(c);
                }
                Ok(HsCodes(codes))
            }
        }
        d.deserialize_any(Codes)
    }
}

impl From<String> for HsCodes {
    fn from(s: String) -> Self {
        HsCodes(
            s.split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }
}

impl HsCodes {
    pub fn stored(&self) -> String {
        self.0.join(",")
    }
}

pub const COLUMNS: [&str; 21] = [
    "id",
    "reference",
    "buyer_partner_id",
    "buyer_name",
    "buyer_country",
    "destination_country",
    "port_of_loading",
    "port_of_discharge",
    "incoterm",
    "hs_codes",
    "invoice_value_minor",
    "currency",
    "shipping_bill_number",
    "shipping_bill_date",
    "export_type",
    "status",
    "ebrc_status",
    "realized_minor",
    "created_at",
    "updated_at",
    "version",
];

/// The editable fields, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    pub reference: String,
    pub buyer_partner_id: Option<Uuid>,
    pub buyer_name: String,
    pub buyer_country: Option<String>,
    pub destination_country: String,
    pub port_of_loading: Option<String>,
    pub port_of_discharge: Option<String>,
    pub incoterm: Option<String>,
    pub hs_codes: HsCodes,
    pub invoice_value_minor: i64,
    pub currency: String,
    pub shipping_bill_number: Option<String>,
    pub shipping_bill_date: Option<NaiveDate>,
    pub export_type: String,
}

impl Fields {
    fn search(&self) -> String {
        search_text(&self.reference, &self.buyer_name)
    }

    fn values(&self) -> Vec<(&'static str, sea_query::SimpleExpr)> {
        vec![
            ("reference", self.reference.clone().into()),
            ("reference_key", self.reference.to_lowercase().into()),
            ("buyer_partner_id", self.buyer_partner_id.into()),
            ("buyer_name", self.buyer_name.clone().into()),
            ("buyer_country", self.buyer_country.clone().into()),
            (
                "destination_country",
                self.destination_country.clone().into(),
            ),
            ("port_of_loading", self.port_of_loading.clone().into()),
            ("port_of_discharge", self.port_of_discharge.clone().into()),
            ("incoterm", self.incoterm.clone().into()),
            ("hs_codes", self.hs_codes.stored().into()),
            ("invoice_value_minor", self.invoice_value_minor.into()),
            ("currency", self.currency.clone().into()),
            (
                "shipping_bill_number",
                self.shipping_bill_number.clone().into(),
            ),
            ("shipping_bill_date", self.shipping_bill_date.into()),
            ("export_type", self.export_type.clone().into()),
            ("search", self.search().into()),
        ]
    }
}

/// What `q` searches: reference and buyer name, lower case.
pub fn search_text(reference: &str, buyer: &str) -> String {
    format!("{} {}", reference.to_lowercase(), buyer.to_lowercase())
}

/// The rows a scope may see: its organization's live shipments, and for partner users only
/// those whose buyer is their partner.
pub fn visible(scope: &TenantScope) -> Cond {
    let mut cond = Cond::all()
        .add(Expr::col("org_id").eq(scope.org_id()))
        .add(Expr::col("deleted_at").is_null());
    if let Some(p) = scope.partner_id() {
        cond = cond.add(Expr::col("buyer_partner_id").eq(p));
    }
    cond
}

/// List filters, validated (shared by the list and the export so they cannot disagree).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub status: Option<Status>,
    pub ebrc_status: Option<EbrcStatus>,
    pub destination_country: Option<String>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    /// Lower case, at least 2 characters.
    pub q: Option<String>,
}

impl Filter {
    pub fn condition(&self, scope: &TenantScope) -> Cond {
        let mut cond = visible(scope);
        if let Some(s) = self.status {
            cond = cond.add(Expr::col("status").eq(s.as_str()));
        }
        if let Some(s) = self.ebrc_status {
            cond = cond.add(Expr::col("ebrc_status").eq(s.as_str()));
        }
        if let Some(c) = &self.destination_country {
            cond = cond.add(Expr::col("destination_country").eq(c.as_str()));
        }
        if let Some(t) = self.created_from {
            cond = cond.add(Expr::col("created_at").gte(t));
        }
        if let Some(t) = self.created_to {
            cond = cond.add(Expr::col("created_at").lt(t));
        }
        if let Some(q) = &self.q {
            let escaped = q
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            cond = cond
                .add(Expr::col("search").like(LikeExpr::new(format!("%{escaped}%")).escape('\\')));
        }
        cond
    }

    /// Whether one plan is best for this page query whatever the organization and the
    /// filter's value: no filter but one of the two statuses, in creation order, which one
    /// index (`trade_shipments_org_created`, `_org_status` or `_org_ebrc`) answers exactly.
    /// PostgreSQL may then keep the page query's plan ([`KeptPlan`]). Two filters, or
    /// another order, have plans that depend on how common the values are.
    fn plan_is_stable(&self, scope: &TenantScope, page: &PageRequest) -> bool {
        self.tallied(scope)
            && !(self.status.is_some() && self.ebrc_status.is_some())
            && page.sort == "created_at"
    }

    /// Whether the tallies answer this filter's total (status and e-BRC status only).
    fn tallied(&self, scope: &TenantScope) -> bool {
        scope.partner_id().is_none()
            && self.destination_country.is_none()
            && self.created_from.is_none()
            && self.created_to.is_none()
            && self.q.is_none()
    }
}

/// Totals above this under free-text search are reported as this, not exact.
pub const SEARCH_TOTAL_CAP: u64 = 10_000;

/// The SQLite FTS5 table indexing `trade_shipments.search` by trigrams (migration 0008).
const SEARCH_INDEX: &str = "trade_shipments_search";

/// The rowids (`match_rowid`) of every shipment, of any organization, whose search text
/// contains `q`: a phrase of the trigram tokenizer matches exactly the texts containing it.
fn index_matches(q: &str) -> SelectStatement {
    let phrase = format!("\"{}\"", q.replace('"', "\"\""));
    Query::select()
        .expr_as(Expr::col("rowid"), "match_rowid")
        .from(SEARCH_INDEX)
        .and_where(Expr::cust_with_values(
            format!("{SEARCH_INDEX} MATCH ?"),
            [phrase],
        ))
        .to_owned()
}

/// A select of the filter's rows: `FROM trade_shipments WHERE …`, or through the trigram
/// index, `FROM (index matches) AS m CROSS JOIN trade_shipments WHERE rowid = m.match_rowid
/// AND …`. SQLite keeps a CROSS JOIN's left side as the outer loop, so the rows are read
/// by rowid, one per match, whatever index the filter's other terms could use (without
/// statistics the planner would otherwise walk the organization's index and test every
/// entry against the matches). The filter's own `search LIKE` still decides each row.
fn filtered(scope: &TenantScope, filter: &Filter, indexed: bool) -> SelectStatement {
    let mut select = Query::select();
    match filter.q.as_deref() {
        Some(q) if indexed => {
            select
                .from_subquery(index_matches(q), "m")
                .cross_join(TABLE)
                .cond_where(
                    filter
                        .condition(scope)
                        .add(Expr::col((TABLE, "rowid")).equals(("m", "match_rowid"))),
                );
        }
        _ => {
            select.from(TABLE).cond_where(filter.condition(scope));
        }
    }
    select
}

/// A search page reads its rows through the trigram index (and sorts them) only when the
/// term has at most this many matches; a commoner term is found sooner by reading the
/// organization's rows in the page's order and testing each.
const INDEXED_PAGE_MAX: u64 = 1_000;

/// The trigram index is asked how many rows contain the term, counting at most this many.
const SEARCH_PROBE_MAX: u64 = 50_000;

/// How a search reads its rows. PostgreSQL's planner makes this choice itself from the
/// term's estimated matches (its trigram index is a GIN index the `LIKE` can use); on
/// SQLite it is made here, from what the index says the term matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchPlan {
    /// The page's rows come through the trigram index.
    pub page: bool,
    /// The total's rows come through the trigram index.
    pub total: bool,
}

impl SearchPlan {
    /// Asks the trigram index how many shipments (of every organization) contain `q`,
    /// counting no further than the organization's live shipments, and reads through the
    /// index whatever it makes cheaper than reading the organization's rows: a term under 3
    /// characters has no trigram and is always a scan.
    pub async fn choose(
        db: &Db,
        scope: &TenantScope,
        filter: &Filter,
    ) -> Result<SearchPlan, StoreError> {
        let Some(q) = filter.q.as_deref() else {
            return Ok(SearchPlan::default());
        };
        if db.kind() != DatabaseKind::Sqlite || q.chars().count() < 3 {
            return Ok(SearchPlan::default());
        }
        // A term in more rows than the organization has would cost more through the index
        // than reading the organization's rows; the probe stops counting there.
        let bound = Ord::min(
            tally::sum(db, scope.org_id(), None, None).await?,
            SEARCH_PROBE_MAX,
        );
        #[derive(sqlx::FromRow, serde::Deserialize)]
        struct Count {
            n: i64,
        }
        let probe = Query::select()
            .expr_as(Func::count(Expr::col(sea_query::Asterisk)), "n")
            .from_subquery(index_matches(q).limit(bound + 1).to_owned(), "matches")
            .to_owned();
        let matches = u64::try_from(db.fetch_one::<Count>(&probe).await?.n).unwrap_or(u64::MAX);
        let total = matches <= bound;
        Ok(SearchPlan {
            page: total && matches <= INDEXED_PAGE_MAX,
            total,
        })
    }
}

/// How many rows a filter matches (through the trigram index when `indexed`), and whether
/// that is exact.
async fn count(
    db: &Db,
    scope: &TenantScope,
    filter: &Filter,
    indexed: bool,
) -> Result<(u64, bool), StoreError> {
    if filter.tallied(scope) {
        let n = tally::sum(db, scope.org_id(), filter.status, filter.ebrc_status).await?;
        return Ok((n, true));
    }
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Count {
        n: i64,
    }
    let count = count_query(scope, filter, indexed);
    let row: Count = db.fetch_one(&count).await?;
    let n = u64::try_from(row.n).unwrap_or(0);
    Ok(if n > SEARCH_TOTAL_CAP {
        (SEARCH_TOTAL_CAP, false)
    } else {
        (n, true)
    })
}

/// The count of an untallied filter (`n`), capped at one past [`SEARCH_TOTAL_CAP`] under a
/// search; for the list and for the query-plan test.
pub fn count_query(scope: &TenantScope, filter: &Filter, indexed: bool) -> SelectStatement {
    if filter.q.is_some() {
        // Count at most one row past the cap: a broad search never scans everything.
        let inner = filtered(scope, filter, indexed)
            .expr(Expr::val(1))
            .limit(SEARCH_TOTAL_CAP + 1)
            .to_owned();
        Query::select()
            .expr_as(Func::count(Expr::col(sea_query::Asterisk)), "n")
            .from_subquery(inner, "capped")
            .to_owned()
    } else {
        filtered(scope, filter, false)
            .expr_as(Func::count(Expr::col(sea_query::Asterisk)), "n")
            .to_owned()
    }
}

/// The page query (rows only), for the list and for the query-plan test.
pub fn page_query(
    scope: &TenantScope,
    filter: &Filter,
    page: &PageRequest,
    plan: SearchPlan,
) -> SelectStatement {
    let mut select = filtered(scope, filter, plan.page)
        .columns(COLUMNS)
        .to_owned();
    keel_kernel::store::paginate(&mut select, page);
    select
}

/// One page and, for numbered pages, its total (exact unless a search passed the cap).
pub async fn list(
    db: &Db,
    scope: &TenantScope,
    filter: &Filter,
    page: &PageRequest,
) -> Result<(Vec<Shipment>, Option<(u64, bool)>), StoreError> {
    let plan = SearchPlan::choose(db, scope, filter).await?;
    let mut select = page_query(scope, filter, page, plan);
    let stable = filter.plan_is_stable(scope, page);
    if !page.wants_total() {
        let rows = if stable {
            db.fetch_all(&KeptPlan(&select)).await?
        } else {
            db.fetch_all(&select).await?
        };
        return Ok((rows, None));
    }
    if filter.tallied(scope) {
        // One statement: the page and, as a scalar subquery evaluated once, its total from
        // the tallies. Only a page past the end (no row to carry it) asks again.
        #[derive(sqlx::FromRow, serde::Deserialize)]
        struct Total {
            total: i64,
        }
        let sum = tally::sum_query(scope.org_id(), filter.status, filter.ebrc_status);
        select.expr_as(Expr::SubQuery(None, Box::new(sum.into())), "total");
        let rows: Vec<(Shipment, Total)> = if stable {
            db.fetch_all_pairs(&KeptPlan(&select)).await?
        } else {
            db.fetch_all_pairs(&select).await?
        };
        let total = match rows.first() {
            Some((_, t)) => u64::try_from(t.total).unwrap_or(0),
            None => tally::sum(db, scope.org_id(), filter.status, filter.ebrc_status).await?,
        };
        return Ok((
            rows.into_iter().map(|(s, _)| s).collect(),
            Some((total, true)),
        ));
    }
    let (rows, total) =
        futures::try_join!(db.fetch_all(&select), count(db, scope, filter, plan.total))?;
    Ok((rows, Some(total)))
}

pub async fn get(tx: &mut Tx, scope: &TenantScope, id: Uuid) -> Result<Shipment, StoreError> {
    tx.fetch_one(&by_id(scope, id)).await
}

pub async fn get_db(db: &Db, scope: &TenantScope, id: Uuid) -> Result<Shipment, StoreError> {
    db.fetch_one(&by_id(scope, id)).await
}

fn by_id(scope: &TenantScope, id: Uuid) -> SelectStatement {
    Query::select()
        .columns(COLUMNS)
        .from(TABLE)
        .cond_where(visible(scope).add(Expr::col("id").eq(id)))
        .to_owned()
}

/// Inserts a draft shipment and counts it.
pub async fn insert(
    tx: &mut Tx,
    scope: &TenantScope,
    fields: &Fields,
    created_by: Option<String>,
) -> Result<Shipment, StoreError> {
    let id = Uuid::now_v7();
    let at = now();
    let mut columns: Vec<&'static str> = vec![
        "id",
        "org_id",
        "status",
        "ebrc_status",
        "realized_minor",
        "created_by",
        "created_at",
        "updated_at",
        "version",
    ];
    let mut values: Vec<sea_query::SimpleExpr> = vec![
        id.into(),
        scope.org_id().into(),
        Status::Draft.as_str().into(),
        EbrcStatus::Pending.as_str().into(),
        0i64.into(),
        created_by.into(),
        at.into(),
        at.into(),
        1i64.into(),
    ];
    for (c, v) in fields.values() {
        columns.push(c);
        values.push(v);
    }
    tx.execute(
        &Query::insert()
            .into_table(TABLE)
            .columns(columns)
            .values_panic(values)
            .to_owned(),
    )
    .await?;
    tally::shift(
        tx,
        scope.org_id(),
        None,
        Some(Tally::new(Status::Draft, EbrcStatus::Pending)),
    )
    .await?;
    get(tx, scope, id).await
}

/// Writes the editable fields if the version matches (when given); false when nothing matched.
pub async fn update(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    fields: &Fields,
    expected_version: Option<i64>,
) -> Result<bool, StoreError> {
    let mut cond = visible(scope).add(Expr::col("id").eq(id));
    if let Some(v) = expected_version {
        cond = cond.add(Expr::col("version").eq(v));
    }
    let mut values = fields.values();
    values.push(("updated_at", now().into()));
    values.push(("version", Expr::col("version").add(1)));
    Ok(tx
        .execute(
            &Query::update()
                .table(TABLE)
                .values(values)
                .cond_where(cond)
                .to_owned(),
        )
        .await?
        > 0)
}

/// Moves a shipment from `from` to `to` (status and e-BRC status) if it is still in `from`
/// at `version`, moving its tally with it; false when the row changed meanwhile.
pub async fn set_state(
    tx: &mut Tx,
    scope: &TenantScope,
    current: &Shipment,
    to: Tally,
    realized_minor: Option<i64>,
) -> Result<bool, StoreError> {
    let from = Tally::of(current)?;
    let mut values: Vec<(&'static str, sea_query::SimpleExpr)> = vec![
        ("status", to.status.as_str().into()),
        ("ebrc_status", to.ebrc.as_str().into()),
        ("updated_at", now().into()),
        ("version", Expr::col("version").add(1)),
    ];
    if let Some(r) = realized_minor {
        values.push(("realized_minor", r.into()));
    }
    let changed = tx
        .execute(
            &Query::update()
                .table(TABLE)
                .values(values)
                .cond_where(
                    visible(scope)
                        .add(Expr::col("id").eq(current.id))
                        .add(Expr::col("version").eq(current.version)),
                )
                .to_owned(),
        )
        .await?
        > 0;
    if changed && from != to {
        tally::shift(tx, scope.org_id(), Some(from), Some(to)).await?;
    }
    Ok(changed)
}

/// Soft-deletes a shipment at `version` and uncounts it; false when the row changed.
pub async fn soft_delete(
    tx: &mut Tx,
    scope: &TenantScope,
    current: &Shipment,
) -> Result<bool, StoreError> {
    let changed = tx
        .execute(
            &Query::update()
                .table(TABLE)
                .values([
                    ("deleted_at", now().into()),
                    ("updated_at", now().into()),
                    ("version", Expr::col("version").add(1)),
                ])
                .cond_where(
                    visible(scope)
                        .add(Expr::col("id").eq(current.id))
                        .add(Expr::col("version").eq(current.version)),
                )
                .to_owned(),
        )
        .await?
        > 0;
    if changed {
        tally::shift(tx, scope.org_id(), Some(Tally::of(current)?), None).await?;
    }
    Ok(changed)
}
