//! Demo data for `keel demo seed`: realistic shipments across two years (statuses, e-BRC
//! states, buyers, ports, HS codes and currencies as an Indian exporter sees them), the
//! payments that realised them, weekly forex rates of every supported currency over the
//! period, and a few documents.
//!
//! Built for millions: shipments and their payments are inserted in batches of 500 shipments
//! per statement (their payments in one statement beside them) and 20,000 per transaction,
//! then the tallies are rebuilt once. Payments go through the payment store's
//! [`sealed_values`](crate::payments::store::sealed_values), so their bank reference and
//! account number are sealed under the key ring exactly as a recorded payment's are. Every
//! realised shipment's payments add up to its invoice value; some other delivered shipments
//! have a part paid (their `realized_minor` is that part). Rates are seeded once per
//! organization and currency (a second run leaves currencies that have rates alone), so the
//! GST summary and the dashboard convert every seeded month. Documents — a commercial invoice
//! and a shipping bill as PDFs — go through the kernel's file storage for a bounded number of
//! each batch's shipments.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use keel_kernel::audit::{self, AuditContext, NewEvent};
use keel_kernel::demo::DemoContext;
use keel_kernel::store::now;
use rand::{Rng, SeedableRng};
use sea_query::{Expr, Query};
use uuid::Uuid;

use crate::documents::DocType;
use crate::forex::store::{RATES, SERIES};
use crate::payments::store::{self as payments, NewPayment};
use crate::shipments::store::{TABLE, search_text};
use crate::shipments::tally;

const ROWS_PER_STATEMENT: u64 = 500;
const ROWS_PER_TRANSACTION: u64 = 20_000;
/// Shipments per run that get documents (each a commercial invoice and a shipping bill).
const SHIPMENTS_WITH_DOCUMENTS: usize = 3;
/// Days of rates before today: the shipments' two years, and their bills up to 10 days later,
/// all fall after the first rate.
const RATE_DAYS: i64 = 742;

/// (name, country, currency, port of discharge, account the buyer pays from)
const BUYERS: [(&str, &str, &str, &str, &str); 12] = [
    (
        "Hamburg Imports GmbH",
        "DE",
        "EUR",
        "DEHAM",
        "DE89370400440532013000",
    ),
    (
        "Rotterdam Foods BV",
        "NL",
        "EUR",
        "NLRTM",
        "NL91ABNA0417164300",
    ),
    (
        "Lyon Textiles SARL",
        "FR",
        "EUR",
        "FRFOS",
        "FR1420041010050500013M02606",
    ),
    (
        "Brooklyn Apparel LLC",
        "US",
        "USD",
        "USNYC",
        "021000021004417782",
    ),
    (
        "Pacific Auto Parts Inc",
        "US",
        "USD",
        "USLAX",
        "121000358009955120",
    ),
    (
        "Thames Pharma Ltd",
        "GB",
        "GBP",
        "GBFXT",
        "GB29NWBK60161331926819",
    ),
    (
        "Gulf Trading FZE",
        "AE",
        "AED",
        "AEJEA",
        "AE070331234567890123456",
    ),
    ("Osaka Components KK", "JP", "JPY", "JPOSA", "0005012345678"),
    (
        "Singapore Spice Pte Ltd",
        "SG",
        "USD",
        "SGSIN",
        "7161234567",
    ),
    (
        "Sydney Homewares Pty Ltd",
        "AU",
        "USD",
        "AUSYD",
        "062000123456789",
    ),
    ("Nairobi Agro Ltd", "KE", "USD", "KEMBA", "1100223344556"),
    (
        "Toronto Steel Corp",
        "CA",
        "USD",
        "CAVAN",
        "000312345678901",
    ),
];
const LOADING_PORTS: [&str; 5] = ["INNSA", "INMUN", "INMAA", "INCCU", "INCOK"];
const INCOTERMS: [&str; 6] = ["FOB", "CIF", "CFR", "EXW", "DAP", "FCA"];
const HS_CODES: [&str; 10] = [
    "850440", "610910", "30049099", "870899", "100630", "090111", "720851", "940360", "620342",
    "39269099",
];
/// The exporter's banks, as the first letters of their credit references.
const BANKS: [&str; 5] = ["HDFC", "ICIC", "SBIN", "UTIB", "KKBK"];

/// Rupees per unit around which each default currency's demo rates move (in millionths).
const BASE_RATES: [(&str, i64); 21] = [
    ("USD", 83_200_000),
    ("EUR", 90_400_000),
    ("GBP", 105_600_000),
    ("JPY", 560_000),
    ("AED", 22_650_000),
    ("SAR", 22_180_000),
    ("SGD", 62_100_000),
    ("AUD", 55_300_000),
    ("CAD", 61_400_000),
    ("CHF", 94_700_000),
    ("CNY", 11_520_000),
    ("HKD", 10_650_000),
    ("NZD", 50_800_000),
    ("SEK", 7_920_000),
    ("DKK", 12_120_000),
    ("NOK", 7_810_000),
    ("ZAR", 4_520_000),
    ("MYR", 17_850_000),
    ("THB", 2_310_000),
    ("KWD", 270_400_000),
    ("QAR", 22_850_000),
];

/// What a run created.
#[derive(Debug, Default)]
struct Seeded {
    payments: u64,
    rates: u64,
    documents: u64,
}

/// A shipment of this run that gets documents.
struct ForDocuments {
    id: Uuid,
    reference: String,
    buyer: &'static str,
    currency: &'static str,
    value: i64,
    bill_number: String,
    bill_date: NaiveDate,
    loading: &'static str,
    discharge: &'static str,
}

/// Seeds `ctx.size` shipments, their payments, the rates and a few documents into the demo
/// organization.
pub async fn seed(ctx: DemoContext) -> anyhow::Result<String> {
    let org = ctx.scope.org_id();
    let state = &ctx.state;
    let overdue_days = i64::from(crate::TradeSettings::of(state).overdue_days);
    let today = Utc::now().date_naive();
    let start = now();
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let mut seeded = Seeded::default();
    let mut for_documents: Vec<ForDocuments> = Vec::new();
    let mut done = 0u64;
    while done < ctx.size {
        let mut tx = state.db.begin().await?;
        let end = (done + ROWS_PER_TRANSACTION).min(ctx.size);
        while done < end {
            let n = (end - done).min(ROWS_PER_STATEMENT);
            let mut insert = Query::insert()
                .into_table(TABLE)
                .columns([
                    "id",
                    "org_id",
                    "reference",
                    "reference_key",
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
                    "search",
                    "created_by",
                    "created_at",
                    "updated_at",
                    "version",
                ])
                .to_owned();
            let mut payment_rows = Query::insert()
                .into_table(payments::TABLE)
                .columns(payments::INSERT_COLUMNS)
                .to_owned();
            let mut payments_here = 0u64;
            for i in 0..n {
                let seq = done + i + 1;
                let id = Uuid::now_v7();
                let reference = format!("DEMO-{}-{seq:07}", ctx.batch);
                let (buyer, country, currency, discharge, account) =
                    BUYERS[rng.random_range(0..BUYERS.len())];
                let partner = (buyer == BUYERS[0].0).then_some(ctx.partner_id);
                let created = start - Duration::seconds(rng.random_range(0..730 * 86_400));
                let digits = keel_kernel::money::minor_digits(currency);
                let major: i64 = rng.random_range(5_000..250_000);
                let value = major * 10i64.pow(digits);
                let roll: u32 = rng.random_range(0..100);
                let status = match roll {
                    0..10 => "draft",
                    10..25 => "booked",
                    25..45 => "in_transit",
                    45..95 => "delivered",
                    _ => "cancelled",
                };
                let bill_date = (status != "draft")
                    .then(|| created.date_naive() + Duration::days(rng.random_range(1..10)));
                let ebrc = match (status, bill_date) {
                    ("delivered", Some(d)) => match rng.random_range(0..100) {
                        0..55 => "realized",
                        55..75 => "filed",
                        _ if (today - d).num_days() > overdue_days => "overdue",
                        _ => "pending",
                    },
                    _ => "pending",
                };
                // Realised: payments add up to the invoice value. Some other delivered
                // shipments have a part paid.
                let paid: Vec<i64> = match (status, ebrc) {
                    (_, "realized") => split(&mut rng, value),
                    ("delivered", _) if rng.random_range(0..5) == 0 => {
                        vec![value * rng.random_range(30..70) / 100]
                    }
                    _ => Vec::new(),
                };
                let realized: i64 = paid.iter().sum();
                let loading = LOADING_PORTS[rng.random_range(0..LOADING_PORTS.len())];
                let bill_number = format!("{}", rng.random_range(1_000_000..9_999_999));
                if let Some(bill) = bill_date {
                    for (k, amount) in paid.iter().enumerate() {
                        let received_on = (bill
                            + Duration::days(rng.random_range(20..120) + 30 * k as i64))
                        .min(today);
                        let bank = BANKS[rng.random_range(0..BANKS.len())];
                        let payment = NewPayment {
                            amount_minor: *amount,
                            currency: currency.to_string(),
                            received_on,
                            remitter: buyer.to_string(),
                            bank_reference: format!(
                                "{bank}R{}{:06}",
                                received_on.format("%Y%m%d"),
                                rng.random_range(0..1_000_000)
                            ),
                            account_number: account.to_string(),
                        };
                        // Recorded the day it was received (never later than now).
                        let recorded = received_on
                            .and_time(chrono::NaiveTime::from_hms_opt(12, 0, 0).unwrap_or_default())
                            .and_utc()
                            .min(start);
                        payment_rows.values_panic(payments::sealed_values(
                            state,
                            &ctx.scope,
                            Uuid::now_v7(),
                            id,
                            &payment,
                            Some("demo".to_string()),
                            recorded,
                        )?);
                        payments_here += 1;
                    }
                    if for_documents.len() < SHIPMENTS_WITH_DOCUMENTS {
                        for_documents.push(ForDocuments {
                            id,
                            reference: reference.clone(),
                            buyer,
                            currency,
                            value,
                            bill_number: bill_number.clone(),
                            bill_date: bill,
                            loading,
                            discharge,
                        });
                    }
                }
                let codes: Vec<&str> = (0..rng.random_range(1..=3))
                    .map(|_| HS_CODES[rng.random_range(0..HS_CODES.len())])
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                insert.values_panic([
                    id.into(),
                    org.into(),
                    reference.clone().into(),
                    reference.to_lowercase().into(),
                    partner.into(),
                    buyer.into(),
                    country.into(),
                    country.into(),
                    loading.into(),
                    discharge.into(),
                    INCOTERMS[rng.random_range(0..INCOTERMS.len())].into(),
                    codes.join(",").into(),
                    value.into(),
                    currency.into(),
                    bill_date.map(|_| bill_number).into(),
                    bill_date.into(),
                    if rng.random_range(0..10) < 7 {
                        "lut"
                    } else {
                        "with_payment"
                    }
                    .into(),
                    status.into(),
                    ebrc.into(),
                    realized.into(),
                    search_text(&reference, buyer).into(),
                    Some("demo".to_string()).into(),
                    created.into(),
                    created.into(),
                    1i64.into(),
                ]);
            }
            tx.execute(&insert).await?;
            if payments_here > 0 {
                tx.execute(&payment_rows).await?;
                seeded.payments += payments_here;
            }
            done += n;
        }
        tx.commit().await?;
    }
    seeded.rates = seed_rates(&ctx, today, &mut rng).await?;
    seeded.documents = seed_documents(&ctx, &for_documents).await?;
    let mut tx = state.db.begin().await?;
    tally::rebuild(&mut tx, org).await?;
    audit::record(
        &mut tx,
        &ctx.scope,
        &AuditContext::system("demo"),
        NewEvent::new("trade.demo.seeded", "trade.shipment", None::<Uuid>)
            .detail("shipments", ctx.size)
            .detail("payments", seeded.payments)
            .detail("rates", seeded.rates)
            .detail("documents", seeded.documents)
            .detail("batch", &ctx.batch),
    )
    .await?;
    tx.commit().await?;
    crate::dashboard::invalidate(state, &ctx.scope).await;
    // The planner's statistics still describe the tables before this load.
    state
        .db
        .analyze(&[
            "trade_shipments",
            "trade_shipment_tallies",
            "trade_payments",
            "trade_forex_rates",
        ])
        .await?;
    Ok(format!(
        "{} shipments (references DEMO-{}-…), {} payments, {} forex rates, {} documents",
        ctx.size, ctx.batch, seeded.payments, seeded.rates, seeded.documents
    ))
}

/// `value` in one to three positive parts that add up to it.
fn split(rng: &mut impl Rng, value: i64) -> Vec<i64> {
    match rng.random_range(0..10) {
        0..6 => vec![value],
        6..9 => {
            let first = value * rng.random_range(30..70) / 100;
            vec![first, value - first]
        }
        _ => {
            let first = value * rng.random_range(20..40) / 100;
            let second = value * rng.random_range(20..40) / 100;
            vec![first, second, value - first - second]
        }
    }
}

/// Weekly rates of every supported currency the organization has no rates of yet, from
/// [`RATE_DAYS`] ago to today: a walk of at most ±0.8 % a week around the currency's usual
/// rate (never a 3 % change, so no alert would have been raised), with a 0.25 % spread.
async fn seed_rates(
    ctx: &DemoContext,
    today: NaiveDate,
    rng: &mut impl Rng,
) -> anyhow::Result<u64> {
    use sea_query::ExprTrait as _;
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Currency {
        currency: String,
    }
    let have: Vec<Currency> = ctx
        .state
        .db
        .fetch_all(
            &Query::select()
                .distinct()
                .column("currency")
                .from(RATES)
                .and_where(Expr::col("org_id").eq(ctx.scope.org_id()))
                .to_owned(),
        )
        .await?;
    let have: Vec<String> = have.into_iter().map(|c| c.currency).collect();
    let settings = crate::TradeSettings::of(&ctx.state);
    let first = today - Duration::days(RATE_DAYS);
    let at = now();
    let mut rows: Vec<[sea_query::SimpleExpr; 11]> = Vec::new();
    let mut series: Vec<(String, i64)> = Vec::new();
    for currency in settings.currencies.iter().filter(|c| !have.contains(c)) {
        let base = BASE_RATES
            .iter()
            .find(|(c, _)| c == currency)
            .map_or(10_000_000, |(_, r)| *r);
        let mut rate = base;
        let mut day = first;
        let mut count = 0i64;
        while day <= today {
            let step: i64 = rng.random_range(-80..=80);
            // Kept within ±8 % of the usual rate.
            rate = (rate + rate * step / 10_000).clamp(base * 92 / 100, base * 108 / 100);
            let spread = Ord::max(rate / 800, 1);
            let effective_at: DateTime<Utc> = day.and_time(chrono::NaiveTime::MIN).and_utc();
            rows.push([
                Uuid::now_v7().into(),
                ctx.scope.org_id().into(),
                currency.clone().into(),
                rate.into(),
                (rate - spread).into(),
                (rate + spread).into(),
                effective_at.into(),
                Some("demo".to_string()).into(),
                at.into(),
                at.into(),
                1i64.into(),
            ]);
            count += 1;
            day += Duration::days(7);
        }
        series.push((currency.clone(), count));
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let total = rows.len() as u64;
    let mut tx = ctx.state.db.begin().await?;
    for chunk in rows.chunks(ROWS_PER_STATEMENT as usize) {
        let mut insert = Query::insert()
            .into_table(RATES)
            .columns([
                "id",
                "org_id",
                "currency",
                "rate_micros",
                "buy_micros",
                "sell_micros",
                "effective_at",
                "created_by",
                "created_at",
                "updated_at",
                "version",
            ])
            .to_owned();
        for row in chunk {
            insert.values_panic(row.iter().cloned());
        }
        tx.execute(&insert).await?;
    }
    // The series rows later creates take (a currency with rates has one).
    for (currency, count) in series {
        tx.execute(
            &Query::insert()
                .into_table(SERIES)
                .columns(["org_id", "currency", "rates"])
                .values_panic([ctx.scope.org_id().into(), currency.into(), count.into()])
                .on_conflict(
                    sea_query::OnConflict::columns(["org_id", "currency"])
                        .value("rates", Expr::col((SERIES, "rates")).add(count))
                        .to_owned(),
                )
                .to_owned(),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(total)
}

/// A commercial invoice and a shipping bill for each of `shipments`, stored through the
/// kernel's file storage (checksummed, typed by their bytes) as the upload route stores them.
async fn seed_documents(ctx: &DemoContext, shipments: &[ForDocuments]) -> anyhow::Result<u64> {
    let mut n = 0;
    for s in shipments {
        let digits = keel_kernel::money::minor_digits(s.currency);
        let amount = format_minor(s.value, digits);
        let invoice = vec![
            "Demo Exports Pvt Ltd".to_string(),
            String::new(),
            format!("Invoice No: {}", s.reference),
            format!("Invoice Date: {}", s.bill_date),
            "Seller: Demo Exports Pvt Ltd".into(),
            format!("Buyer: {}", s.buyer),
            format!("Currency: {}", s.currency),
            String::new(),
            format!("Total: {amount}"),
        ];
        let bill = vec![
            "SHIPPING BILL FOR EXPORT".to_string(),
            String::new(),
            format!("Shipping Bill No: {}", s.bill_number),
            format!("Shipping Bill Date: {}", s.bill_date),
            format!("Port of Loading: {}", s.loading),
            format!("Port of Discharge: {}", s.discharge),
            format!("Exporter Ref: {}", s.reference),
            format!("FOB Value: {} {amount}", s.currency),
        ];
        for (doc_type, name, lines) in [
            (
                DocType::CommercialInvoice,
                format!("invoice-{}.pdf", s.reference),
                invoice,
            ),
            (
                DocType::ShippingBill,
                format!("shipping-bill-{}.pdf", s.reference),
                bill,
            ),
        ] {
            let (file, _) = ctx
                .state
                .files
                .put(
                    &ctx.state.db,
                    &ctx.scope,
                    Some(&name),
                    Some("application/pdf"),
                    axum::body::Bytes::from(text_pdf(&lines)),
                )
                .await
                .map_err(|e| anyhow::anyhow!("cannot store a demo document: {e}"))?;
            let mut tx = ctx.state.db.begin().await?;
            crate::documents::store::insert(
                &mut tx,
                &ctx.scope,
                s.id,
                doc_type,
                &file,
                Some("demo".to_string()),
            )
            .await?;
            tx.commit().await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Minor units as a decimal amount (`1250000`, 2 digits → `12500.00`).
fn format_minor(value: i64, digits: u32) -> String {
    if digits == 0 {
        return value.to_string();
    }
    let scale = 10i64.pow(digits);
    format!(
        "{}.{:0width$}",
        value / scale,
        value % scale,
        width = digits as usize
    )
}

/// A one-page PDF of text lines (Courier on A4), with a text layer extraction can read.
fn text_pdf(lines: &[String]) -> Vec<u8> {
    let mut ops = String::from("BT /F1 11 Tf 14 TL 60 780 Td\n");
    for l in lines {
        let esc = l
            .replace('\\', "\\\\")
            .replace('(', "\\(")
            .replace(')', "\\)");
        ops.push_str(&format!("({esc}) Tj T*\n"));
    }
    ops.push_str("ET");
    let objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> /Contents 5 0 R >>".to_vec(),
        {
            let mut stream = format!("<< /Length {} >>\nstream\n", ops.len()).into_bytes();
            stream.extend_from_slice(ops.as_bytes());
            stream.extend_from_slice(b"\nendstream");
            stream
        },
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payments_add_up_to_the_value_and_amounts_print_in_minor_digits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for value in [500_000i64, 1_234_567, 24_999_900] {
            for _ in 0..50 {
                let parts = split(&mut rng, value);
                assert!(parts.iter().all(|p| *p > 0), "{parts:?}");
                assert_eq!(parts.iter().sum::<i64>(), value);
            }
        }
        assert_eq!(format_minor(1_250_000, 2), "12500.00");
        assert_eq!(format_minor(1_250_005, 3), "1250.005");
        assert_eq!(format_minor(7_000, 0), "7000");
        assert!(text_pdf(&["x (y)".into()]).starts_with(b"%PDF-1.4"));
    }
}
