//! Reading shipments for an export in keyset batches, and writing them as CSV or XLSX.

use keel_kernel::http::ApiError;
use keel_kernel::http::pagination::{Cursor, Keyed, PageParams, PageRequest};
use keel_kernel::store::{Db, StoreError};
use keel_kernel::tenancy::TenantScope;
use sea_query::{Expr, ExprTrait, Func, Query};
use uuid::Uuid;

use crate::shipments::store::{self as shipments, Filter, Shipment};

/// Rows read per query.
pub const BATCH: u64 = 500;

/// The columns of an export, in order.
pub const HEADER: [&str; 20] = [
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
];

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(i64),
    Empty,
}

fn text(v: &Option<String>) -> Cell {
    v.as_ref().map_or(Cell::Empty, |s| Cell::Text(s.clone()))
}

/// A shipment's cells, in [`HEADER`] order. Money is in minor units with its currency
/// (exact integers, never floats); HS codes are separated by spaces.
pub fn cells(s: &Shipment) -> Vec<Cell> {
    vec![
        Cell::Text(s.id.to_string()),
        Cell::Text(s.reference.clone()),
        s.buyer_partner_id
            .map_or(Cell::Empty, |p| Cell::Text(p.to_string())),
        Cell::Text(s.buyer_name.clone()),
        text(&s.buyer_country),
        Cell::Text(s.destination_country.clone()),
        text(&s.port_of_loading),
        text(&s.port_of_discharge),
        text(&s.incoterm),
        Cell::Text(s.hs_codes.0.join(" ")),
        Cell::Int(s.invoice_value_minor),
        Cell::Text(s.currency.clone()),
        text(&s.shipping_bill_number),
        s.shipping_bill_date
            .map_or(Cell::Empty, |d| Cell::Text(d.to_string())),
        Cell::Text(s.export_type.clone()),
        Cell::Text(s.status.clone()),
        Cell::Text(s.ebrc_status.clone()),
        Cell::Int(s.realized_minor),
        Cell::Text(s.created_at.to_rfc3339()),
        Cell::Text(s.updated_at.to_rfc3339()),
    ]
}

/// The order of an export: the list's `sort` (a field of [`shipments::SORTS`], then the id,
/// in one direction), so the file has the rows in the order the list pages show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    pub field: String,
    pub descending: bool,
}

impl Default for Sort {
    /// The list's default: newest first.
    fn default() -> Self {
        Self {
            field: "created_at".into(),
            descending: true,
        }
    }
}

impl Sort {
    /// Validates a `sort` parameter exactly as the list does (the same whitelist and
    /// default); a bad one is named (`sort`).
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let page = PageParams {
            sort: raw.map(str::to_string),
            ..PageParams::default()
        }
        .resolve(&shipments::SORTS, DEFAULT_SORT)?;
        Ok(Self {
            field: page.sort,
            descending: page.descending,
        })
    }

    /// As a `sort` parameter (`-created_at`, `reference`).
    pub fn as_param(&self) -> String {
        format!("{}{}", if self.descending { "-" } else { "" }, self.field)
    }
}

/// The list's default sort.
pub const DEFAULT_SORT: &str = "-created_at";

/// Where a batch starts: after this row, in the export's order.
pub type After = Option<Cursor>;

/// One batch of the filter's rows after `after`, in `sort` order, and where the next one
/// starts (`None` after the last). `partner` restricts to a partner's shipments (a partner
/// user's export, run by a job's system scope).
pub async fn batch(
    db: &Db,
    scope: &TenantScope,
    filter: &Filter,
    partner: Option<Uuid>,
    sort: &Sort,
    after: After,
) -> Result<(Vec<Shipment>, After), StoreError> {
    let page = PageRequest {
        page: 1,
        page_size: BATCH,
        sort: sort.field.clone(),
        descending: sort.descending,
        after,
    };
    // The list's query (`shipments::page_query`): its filter condition and its keyset order,
    // narrowed to a partner when a job exports for a partner user.
    let mut cond = filter.condition(scope);
    if let Some(p) = partner {
        cond = cond.add(Expr::col("buyer_partner_id").eq(p));
    }
    let mut select = Query::select()
        .columns(shipments::COLUMNS)
        .from(shipments::TABLE)
        .cond_where(cond)
        .to_owned();
    keel_kernel::store::paginate(&mut select, &page);
    let mut rows: Vec<Shipment> = db.fetch_all(&select).await?;
    let more = rows.len() as u64 > BATCH;
    rows.truncate(BATCH as usize);
    let next = match rows.last() {
        Some(last) if more => {
            let value = last.sort_value(&sort.field).ok_or_else(|| {
                StoreError::Other(anyhow::anyhow!(
                    "shipments cannot be sorted by {}",
                    sort.field
                ))
            })?;
            Some(Cursor {
                sort: sort.field.clone(),
                descending: sort.descending,
                value,
                id: last.key_id(),
            })
        }
        _ => None,
    };
    Ok((rows, next))
}

/// How many rows the filter matches, counting at most `cap + 1`.
pub async fn count_capped(
    db: &Db,
    scope: &TenantScope,
    filter: &Filter,
    cap: u64,
) -> Result<u64, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Count {
        n: i64,
    }
    let inner = Query::select()
        .expr(Expr::val(1))
        .from(shipments::TABLE)
        .cond_where(filter.condition(scope))
        .limit(cap.saturating_add(1))
        .to_owned();
    let row: Count = db
        .fetch_one(
            &Query::select()
                .expr_as(Func::count(Expr::col(sea_query::Asterisk)), "n")
                .from_subquery(inner, "capped")
                .to_owned(),
        )
        .await?;
    Ok(u64::try_from(row.n).unwrap_or(0))
}

/// A text cell made safe for spreadsheets: one starting with `=`, `+`, `-`, `@`, a tab or a
/// carriage return (which a spreadsheet may run as a formula) gets a leading `'`.
pub fn neutralise(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{s}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Appends one CSV record (RFC 4180: fields with a comma, quote or line break are quoted,
/// quotes doubled; CRLF line ends), text cells neutralised.
pub fn csv_record<'a>(out: &mut Vec<u8>, cells: impl IntoIterator<Item = &'a Cell>) {
    for (i, cell) in cells.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match cell {
            Cell::Empty => {}
            Cell::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Cell::Text(s) => {
                let s = neutralise(s);
                if s.contains([',', '"', '\n', '\r']) {
                    out.push(b'"');
                    out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
                    out.push(b'"');
                } else {
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The CSV header line, with a UTF-8 byte order mark so spreadsheets read accents right.
pub fn csv_header() -> Vec<u8> {
    let mut out = "\u{feff}".as_bytes().to_vec();
    let header: Vec<Cell> = HEADER.iter().map(|h| Cell::Text((*h).into())).collect();
    csv_record(&mut out, &header);
    out
}

/// An XLSX workbook being filled: one sheet `Shipments`, a bold header row. The sheet is in
/// `rust_xlsxwriter`'s constant-memory mode: each row goes to a temporary file once the next
/// one starts (rows are written in order), so 100,000 rows peak at about 11 MB where an
/// in-memory sheet took about 630 MB; text is written inline (no shared-string table).
pub struct Xlsx {
    book: rust_xlsxwriter::Workbook,
    row: u32,
}

impl Xlsx {
    pub fn new() -> Result<Self, rust_xlsxwriter::XlsxError> {
        let mut book = rust_xlsxwriter::Workbook::new();
        let bold = rust_xlsxwriter::Format::new().set_bold();
        let sheet = book.add_worksheet_with_constant_memory()?;
        sheet.set_name("Shipments")?;
        for (c, h) in HEADER.iter().enumerate() {
            sheet.write_string_with_format(0, c as u16, *h, &bold)?;
        }
        sheet.set_freeze_panes(1, 0)?;
        Ok(Self { book, row: 1 })
    }

    /// Text is written as text cells (never formulas), so nothing in it runs; integers
    /// as numbers.
    pub fn push(&mut self, cells: &[Cell]) -> Result<(), rust_xlsxwriter::XlsxError> {
        let sheet = self.book.worksheet_from_index(0)?;
        for (c, cell) in cells.iter().enumerate() {
            match cell {
                Cell::Empty => {}
                Cell::Int(n) => {
                    // Minor units stay exact in a spreadsheet's doubles up to 2^53.
                    sheet.write_number(self.row, c as u16, *n as f64)?;
                }
                Cell::Text(s) => {
                    sheet.write_string(self.row, c as u16, s.as_str())?;
                }
            }
        }
        self.row += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
        self.book.save_to_buffer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised_and_fields_quoted() {
        let mut out = Vec::new();
        csv_record(
            &mut out,
            &[
                Cell::Text("=HYPERLINK(\"x\")".into()),
                Cell::Text("+1".into()),
                Cell::Text("-2".into()),
                Cell::Text("@SUM(A1)".into()),
                Cell::Text("a,b".into()),
                Cell::Int(-5),
                Cell::Empty,
                Cell::Text("plain".into()),
            ],
        );
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "\"'=HYPERLINK(\"\"x\"\")\",'+1,'-2,'@SUM(A1),\"a,b\",-5,,plain\r\n"
        );
    }
}
