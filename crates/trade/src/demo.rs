//! Demo data for `keel demo seed`: realistic shipments across two years (statuses, e-BRC
//! states, buyers, ports, HS codes and currencies as an Indian exporter sees them), inserted
//! in batches of 500 rows per statement and 20,000 per transaction, then the tallies are
//! rebuilt once.

use chrono::{Duration, Utc};
use keel_kernel::audit::{self, AuditContext, NewEvent};
use keel_kernel::demo::DemoContext;
use keel_kernel::store::now;
use rand::{Rng, SeedableRng};
use sea_query::Query;
use uuid::Uuid;

use crate::shipments::store::{TABLE, search_text};
use crate::shipments::tally;

const ROWS_PER_STATEMENT: u64 = 500;
const ROWS_PER_TRANSACTION: u64 = 20_000;

/// (name, country, currency, port of discharge)
const BUYERS: [(&str, &str, &str, &str); 12] = [
    ("Hamburg Imports GmbH", "DE", "EUR", "DEHAM"),
    ("Rotterdam Foods BV", "NL", "EUR", "NLRTM"),
    ("Lyon Textiles SARL", "FR", "EUR", "FRFOS"),
    ("Brooklyn Apparel LLC", "US", "USD", "USNYC"),
    ("Pacific Auto Parts Inc", "US", "USD", "USLAX"),
    ("Thames Pharma Ltd", "GB", "GBP", "GBFXT"),
    ("Gulf Trading FZE", "AE", "AED", "AEJEA"),
    ("Osaka Components KK", "JP", "JPY", "JPOSA"),
    ("Singapore Spice Pte Ltd", "SG", "USD", "SGSIN"),
    ("Sydney Homewares Pty Ltd", "AU", "USD", "AUSYD"),
    ("Nairobi Agro Ltd", "KE", "USD", "KEMBA"),
    ("Toronto Steel Corp", "CA", "USD", "CAVAN"),
];
const LOADING_PORTS: [&str; 5] = ["INNSA", "INMUN", "INMAA", "INCCU", "INCOK"];
const INCOTERMS: [&str; 6] = ["FOB", "CIF", "CFR", "EXW", "DAP", "FCA"];
const HS_CODES: [&str; 10] = [
    "850440", "610910", "30049099", "870899", "100630", "090111", "720851", "940360", "620342",
    "39269099",
];

/// Seeds `ctx.size` shipments into the demo organization.
pub async fn seed(ctx: DemoContext) -> anyhow::Result<String> {
    let org = ctx.scope.org_id();
    let overdue_days = i64::from(crate::TradeSettings::of(&ctx.state).overdue_days);
    let today = Utc::now().date_naive();
    let start = now();
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let mut done = 0u64;
    while done < ctx.size {
        let mut tx = ctx.state.db.begin().await?;
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
            for i in 0..n {
                let seq = done + i + 1;
                let reference = format!("DEMO-{}-{seq:07}", ctx.batch);
                let (buyer, country, currency, discharge) =
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
                let realized = if ebrc == "realized" { value } else { 0 };
                let codes: Vec<&str> = (0..rng.random_range(1..=3))
                    .map(|_| HS_CODES[rng.random_range(0..HS_CODES.len())])
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                insert.values_panic([
                    Uuid::now_v7().into(),
                    org.into(),
                    reference.clone().into(),
                    reference.to_lowercase().into(),
                    partner.into(),
                    buyer.into(),
                    country.into(),
                    country.into(),
                    LOADING_PORTS[rng.random_range(0..LOADING_PORTS.len())].into(),
                    discharge.into(),
                    INCOTERMS[rng.random_range(0..INCOTERMS.len())].into(),
                    codes.join(",").into(),
                    value.into(),
                    currency.into(),
                    bill_date
                        .map(|_| format!("{}", rng.random_range(1_000_000..9_999_999)))
                        .into(),
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
            done += n;
        }
        tx.commit().await?;
    }
    let mut tx = ctx.state.db.begin().await?;
    tally::rebuild(&mut tx, org).await?;
    audit::record(
        &mut tx,
        &ctx.scope,
        &AuditContext::system("demo"),
        NewEvent::new("trade.demo.seeded", "trade.shipment", None::<Uuid>)
            .detail("shipments", ctx.size)
            .detail("batch", &ctx.batch),
    )
    .await?;
    tx.commit().await?;
    // The planner's statistics still describe the tables before this load.
    ctx.state
        .db
        .analyze(&["trade_shipments", "trade_shipment_tallies"])
        .await?;
    Ok(format!(
        "{} shipments (references DEMO-{}-…)",
        ctx.size, ctx.batch
    ))
}
