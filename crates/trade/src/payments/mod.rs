//! Payments received against shipments.
//!
//! A payment is in the shipment's invoice currency; its bank reference and account number are
//! sealed with the kernel key ring (registered in [`encrypted_columns`], so `keel keys
//! rotate/status` cover them), shown in full only on the payment itself and masked
//! (`****1234`) in lists, in `Debug` output and — by field name, through the kernel's log
//! redaction — in log lines. Recording one locks its shipment, adds it to the shipment's
//! `realized_minor` and — when the payments reach the invoice value — moves the shipment's
//! e-BRC status to `realized` (`trade.shipment.ebrc_realized`), all in one transaction.

pub mod routes;
pub mod store;

use keel_kernel::crypto::keys::{EncryptedColumn, EncryptedTable};
use keel_kernel::module::{Fixture, FixtureResource};

/// Payment fields no log line may show in clear, registered with the kernel's log redaction
/// (`account_number` is on its built-in list already, masked to its last four characters).
/// The payment types' `Debug` masks both as lists do, so `?payment` in a log is safe too.
pub const LOG_REDACTED_FIELDS: [&str; 1] = ["bank_reference"];

/// `Debug` for a bank field: its last 4 characters, as lists show it.
pub(crate) struct Masked<'a>(pub &'a str);

impl std::fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}",
            keel_kernel::crypto::field::mask_tail(self.0, store::MASK_KEEP)
        )
    }
}

/// The sealed columns of `trade_payments`.
pub fn encrypted_columns() -> Vec<EncryptedTable> {
    vec![EncryptedTable::new(
        store::TABLE,
        vec![
            EncryptedColumn::new("bank_reference"),
            EncryptedColumn::new("account_number"),
        ],
    )]
}

pub fn fixtures() -> Vec<Fixture> {
    vec![Fixture {
        resource: "trade.payment",
        create: std::sync::Arc::new(|state, scope| {
            Box::pin(async move {
                let shipment = crate::documents::fixture_shipment(&state, &scope).await?;
                let input = store::NewPayment {
                    amount_minor: 1_000,
                    currency: "EUR".into(),
                    received_on: chrono::NaiveDate::from_ymd_opt(2025, 1, 15)
                        .ok_or_else(|| anyhow::anyhow!("a fixed date"))?,
                    remitter: "Fixture Buyer GmbH".into(),
                    bank_reference: "FIXREF0001".into(),
                    account_number: "DE89370400440532013000".into(),
                };
                let mut tx = state.db.begin().await?;
                let p = store::insert(
                    &mut tx,
                    &state,
                    &scope,
                    uuid::Uuid::now_v7(),
                    shipment,
                    &input,
                    None,
                )
                .await
                .map_err(|e| anyhow::anyhow!("cannot store the fixture payment: {e}"))?;
                tx.commit().await?;
                Ok(FixtureResource {
                    paths: vec![
                        format!("/api/v1/trade/payments/{p}"),
                        format!("/api/v1/trade/shipments/{shipment}/payments"),
                    ],
                })
            })
        }),
    }]
}
