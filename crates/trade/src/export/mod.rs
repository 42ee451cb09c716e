//! Shipment exports: `GET /api/v1/trade/shipments/export?format=csv|xlsx` with the list's
//! filters and `sort` (the same [`crate::shipments::routes::ShipmentQuery::filter`],
//! [`crate::shipments::store::Filter`] and sort whitelist, the same visibility and order),
//! read in keyset batches of [`rows::BATCH`].
//!
//! Up to `[modules.trade] export_async_rows` rows (default 100,000) the answer is the file:
//! CSV streamed batch by batch (never all rows in memory), XLSX written to a constant-memory
//! sheet then sent. Above it the request answers 202 (`Location: /api/v1/jobs/<job id>`,
//! `{"job_id", "status": "queued", …}`) and a job on the `export` queue writes the file into
//! the kernel's storage for the organization; the job's result links it (`download_url`),
//! `GET /api/v1/trade/exports/{id}` tells the export's state and
//! `GET /api/v1/trade/exports/{id}/download` serves it, to the same organization only (and
//! to a partner user only their own partner's exports).

pub mod job;
pub mod routes;
pub mod rows;
pub mod store;

use keel_kernel::module::{Fixture, FixtureResource};

pub use job::job;

/// `csv` or `xlsx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Xlsx,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "xlsx" => Some(Format::Xlsx),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }
}

pub fn fixtures() -> Vec<Fixture> {
    vec![Fixture {
        resource: "trade.export",
        create: std::sync::Arc::new(|state, scope| {
            Box::pin(async move {
                let mut tx = state.db.begin().await?;
                let e = store::insert(
                    &mut tx,
                    &scope,
                    Format::Csv,
                    &store::StoredFilter::default(),
                    None,
                )
                .await?;
                tx.commit().await?;
                Ok(FixtureResource {
                    paths: vec![format!("/api/v1/trade/exports/{}", e.id)],
                })
            })
        }),
    }]
}
