//! Trade documents: files attached to a shipment (commercial invoice, packing list, shipping
//! bill, …), stored through the kernel's file storage (checksummed, typed by their magic
//! bytes, size-limited) and read by the kernel's extraction.
//!
//! `POST /api/v1/trade/documents/{id}/extract` records a kernel extraction of the document's
//! file and enqueues [`ExtractTradeDocument`] on the `ocr` queue; the job runs the kernel
//! extraction ([`keel_kernel::extract::execute`]) and then, in one transaction, notes the
//! outcome on the document and records `trade.document.extracted` (published on the
//! organization's realtime channel).

pub mod multipart;
pub mod routes;
pub mod store;

use std::time::Duration;

use keel_kernel::audit::{self, AuditContext, NewEvent};
use keel_kernel::extract::DocumentField;
use keel_kernel::jobs::{JobContext, JobDefinition, JobError, JobPayload};
use keel_kernel::module::{Fixture, FixtureResource};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A trade document's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocType {
    CommercialInvoice,
    PackingList,
    ShippingBill,
    BillOfLading,
    CertificateOfOrigin,
    BankRealisationCertificate,
    Other,
}

impl DocType {
    pub const ALL: [DocType; 7] = [
        DocType::CommercialInvoice,
        DocType::PackingList,
        DocType::ShippingBill,
        DocType::BillOfLading,
        DocType::CertificateOfOrigin,
        DocType::BankRealisationCertificate,
        DocType::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DocType::CommercialInvoice => "commercial_invoice",
            DocType::PackingList => "packing_list",
            DocType::ShippingBill => "shipping_bill",
            DocType::BillOfLading => "bill_of_lading",
            DocType::CertificateOfOrigin => "certificate_of_origin",
            DocType::BankRealisationCertificate => "bank_realisation_certificate",
            DocType::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The kernel extraction document type it is read as (`None`: not extractable).
    pub fn extraction_type(self) -> Option<&'static str> {
        match self {
            DocType::CommercialInvoice => Some(keel_kernel::extract::INVOICE),
            DocType::Other => None,
            t => Some(t.as_str()),
        }
    }

    pub fn names() -> String {
        Self::ALL.map(|t| t.as_str()).join(", ")
    }
}

/// A date as documents print it: `2025-03-14`, `14/03/2025`, `14-Mar-2025`.
macro_rules! date {
    () => {
        r"(\d{4}-\d{2}-\d{2}|\d{1,2}[/.-]\d{1,2}[/.-]\d{4}|\d{1,2}[ -][A-Za-z]{3}[ -]\d{4})"
    };
}

/// The fields extraction looks for in trade documents beyond an invoice's (each pattern's
/// group is the value, matched case-insensitively on a line).
pub fn document_fields() -> Vec<DocumentField> {
    let f = |document_type, name, pattern, required| DocumentField {
        document_type,
        name,
        pattern,
        required,
    };
    vec![
        f(
            "shipping_bill",
            "shipping_bill_number",
            r"shipping\s+bill\s+(?:no|number)\.?\s*[:#]?\s*([A-Z0-9/-]+)",
            true,
        ),
        f(
            "shipping_bill",
            "shipping_bill_date",
            concat!(r"shipping\s+bill\s+date\s*[:#]?\s*", date!()),
            false,
        ),
        f(
            "shipping_bill",
            "port_of_loading",
            r"port\s+of\s+loading\s*[:#]?\s*([A-Z]{2}[A-Z0-9]{3}\d?)",
            false,
        ),
        f(
            "shipping_bill",
            "port_code",
            r"port\s+code\s*[:#]?\s*([A-Z]{2}[A-Z0-9]{3}\d?)",
            false,
        ),
        f(
            "shipping_bill",
            "port_of_discharge",
            r"port\s+of\s+discharge\s*[:#]?\s*([A-Z]{2}[A-Z0-9]{3})",
            false,
        ),
        f(
            "bank_realisation_certificate",
            "brc_number",
            r"(?:e-?brc|brc|realisation\s+certificate)\s+(?:no|number)\.?\s*[:#]?\s*([A-Z0-9/-]+)",
            true,
        ),
        f(
            "bank_realisation_certificate",
            "realised_amount",
            r"reali[sz]ed\s+amount\s*[:#]?\s*([A-Z]{3}\s*[0-9][0-9,]*(?:\.[0-9]+)?|[0-9][0-9,]*(?:\.[0-9]+)?)",
            true,
        ),
        f(
            "bank_realisation_certificate",
            "realisation_date",
            concat!(r"reali[sz]ation\s+date\s*[:#]?\s*", date!()),
            false,
        ),
        f(
            "bill_of_lading",
            "bill_of_lading_number",
            r"(?:b/?l|bill\s+of\s+lading)\s+(?:no|number)\.?\s*[:#]?\s*([A-Z0-9/-]+)",
            true,
        ),
        f(
            "certificate_of_origin",
            "certificate_number",
            r"certificate\s+(?:no|number)\.?\s*[:#]?\s*([A-Z0-9/-]+)",
            true,
        ),
        f(
            "certificate_of_origin",
            "country_of_origin",
            r"country\s+of\s+origin\s*[:#]?\s*([A-Za-z][A-Za-z ]+)",
            false,
        ),
        f(
            "packing_list",
            "packing_list_number",
            r"packing\s+list\s+(?:no|number)\.?\s*[:#]?\s*([A-Z0-9/-]+)",
            false,
        ),
        f(
            "packing_list",
            "gross_weight",
            r"gross\s+weight\s*[:#]?\s*([0-9][0-9,.]*\s*(?:kg|kgs|t|lbs)?)",
            false,
        ),
    ]
}

/// The job that extracts a trade document: the kernel extraction, then the document's note
/// of it and `trade.document.extracted`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractTradeDocument {
    pub document_id: Uuid,
    pub extraction_id: Uuid,
}

impl JobPayload for ExtractTradeDocument {
    const JOB_TYPE: &'static str = "trade.extract_document";
}

pub fn extract_job() -> JobDefinition {
    JobDefinition::new(run_extract_job)
        .queue("ocr")
        .max_attempts(3)
        .time_limit(Duration::from_secs(600))
}

async fn run_extract_job(
    ctx: JobContext,
    job: ExtractTradeDocument,
) -> Result<serde_json::Value, JobError> {
    let outcome = keel_kernel::extract::execute(&ctx, job.extraction_id).await?;
    let Some(scope) = ctx.scope.clone() else {
        return Err(JobError::permanent(
            "a document extraction needs an organization",
        ));
    };
    let state = &ctx.state;
    let extraction = match keel_kernel::extract::get(state, &scope, job.extraction_id).await {
        Ok(e) => e,
        Err(keel_kernel::extract::ExtractError::NotFound) => {
            return Err(JobError::permanent("the extraction no longer exists"));
        }
        Err(e) => return Err(JobError::retry(format!("cannot read the extraction: {e}"))),
    };
    if matches!(extraction.status.as_str(), "queued" | "running") {
        return Ok(outcome);
    }
    let (scope, extraction, document_id) = (&scope, &extraction, job.document_id);
    let ctx = &AuditContext::system("extraction");
    crate::dashboard::write(state, scope, |tx| {
        Box::pin(async move {
            // Only the first finish of the document's current extraction is recorded (a
            // job that runs twice, or an older extraction finishing late, changes nothing).
            let noted =
                store::note_extraction(tx, scope, document_id, extraction.id, &extraction.status)
                    .await?;
            if noted {
                let mut event = NewEvent::new(
                    "trade.document.extracted",
                    "trade.document",
                    Some(document_id),
                )
                .detail("extraction_id", extraction.id)
                .detail("status", &extraction.status)
                .detail("document_type", &extraction.document_type);
                if let Some(c) = extraction.confidence {
                    event = event.detail("confidence", c);
                }
                if let Some(e) = &extraction.engine {
                    event = event.detail("engine", e);
                }
                audit::record(tx, scope, ctx, event).await?;
            }
            Ok::<_, keel_kernel::store::StoreError>(())
        })
    })
    .await
    .map_err(|e| JobError::retry(format!("cannot record the extraction: {e}")))?;
    Ok(outcome)
}

/// A shipment for isolation fixtures (documents and payments hang off one).
pub(crate) async fn fixture_shipment(
    state: &keel_kernel::state::AppState,
    scope: &keel_kernel::tenancy::TenantScope,
) -> anyhow::Result<Uuid> {
    use crate::shipments::store as shipments;
    let fields = shipments::Fields {
        reference: format!("FIX-{}", Uuid::now_v7().simple()),
        buyer_partner_id: None,
        buyer_name: "Fixture Buyer GmbH".into(),
        buyer_country: Some("DE".into()),
        destination_country: "DE".into(),
        port_of_loading: Some("INNSA".into()),
        port_of_discharge: Some("DEHAM".into()),
        incoterm: Some("FOB".into()),
        hs_codes: shipments::HsCodes(vec!["850440".into()]),
        invoice_value_minor: 1_250_000,
        currency: "EUR".into(),
        shipping_bill_number: None,
        shipping_bill_date: None,
        export_type: "lut".into(),
    };
    let mut tx = state.db.begin().await?;
    let s = shipments::insert(&mut tx, scope, &fields, None).await?;
    tx.commit().await?;
    Ok(s.id)
}

pub fn fixtures() -> Vec<Fixture> {
    vec![Fixture {
        resource: "trade.document",
        create: std::sync::Arc::new(|state, scope| {
            Box::pin(async move {
                let shipment = fixture_shipment(&state, &scope).await?;
                // A 1×1 PNG.
                let png: &[u8] = &[
                    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49,
                    0x48, 0x44, 0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
                    0x00, 0x00, 0x00, 0x3a, 0x7e, 0x9b, 0x55, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44,
                    0x41, 0x54, 0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x48,
                    0xaf, 0xa4, 0x71, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42,
                    0x60, 0x82,
                ];
                let (file, _) = state
                    .files
                    .put(
                        &state.db,
                        &scope,
                        Some("fixture.png"),
                        Some("image/png"),
                        axum::body::Bytes::from_static(png),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot store the fixture file: {e}"))?;
                let mut tx = state.db.begin().await?;
                let d = store::insert(&mut tx, &scope, shipment, DocType::PackingList, &file, None)
                    .await?;
                tx.commit().await?;
                Ok(FixtureResource {
                    paths: vec![
                        format!("/api/v1/trade/documents/{}", d.id),
                        format!("/api/v1/trade/documents/{}/content", d.id),
                        format!("/api/v1/trade/documents/{}/download", d.id),
                        format!("/api/v1/trade/documents/{}/extraction", d.id),
                        format!("/api/v1/trade/shipments/{shipment}/documents"),
                    ],
                })
            })
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_and_map_to_extraction_types() {
        for t in DocType::ALL {
            assert_eq!(DocType::parse(t.as_str()), Some(t));
        }
        assert_eq!(DocType::Other.extraction_type(), None);
        assert_eq!(
            DocType::CommercialInvoice.extraction_type(),
            Some("invoice")
        );
        for f in document_fields() {
            assert!(DocType::parse(f.document_type).is_some(), "{}", f.name);
        }
    }
}
