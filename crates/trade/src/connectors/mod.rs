//! Connectors: an organization's links to outside systems — its bank through an Account
//! Aggregator (`bank_aa`), the GST portal (`gst`) and ICEGATE (`icegate`) — each with the
//! organization's IEC code, a status and, for `bank_aa`, the Account Aggregator consent id.
//!
//! Status: `pending` when created (or when its consent id changes), then as the Account
//! Aggregator reports on the consent (`POST /api/v1/trade/webhooks/account-aggregator`):
//! `active` (consent approved), `rejected`, `revoked`; `data_ready` events stamp
//! `data_ready_at` on an active connector.

pub mod routes;
pub mod store;
pub mod webhook;

use keel_kernel::module::{Fixture, FixtureResource};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a connector connects to.
pub const KINDS: [&str; 3] = ["bank_aa", "gst", "icegate"];

/// A connector's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorStatus {
    Pending,
    Active,
    Rejected,
    Revoked,
}

impl ConnectorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorStatus::Pending => "pending",
            ConnectorStatus::Active => "active",
            ConnectorStatus::Rejected => "rejected",
            ConnectorStatus::Revoked => "revoked",
        }
    }
}

/// Whether `code` is an IEC (Importer-Exporter Code) as DGFT issues them now: the holder's
/// PAN, 10 characters — 5 letters, 4 digits, 1 letter (upper case; callers upper-case input
/// first). Only the shape is checked: no checksum exists, and whether DGFT issued the code is
/// for ICEGATE to say.
pub fn is_iec(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 10
        && b[..5].iter().all(u8::is_ascii_uppercase)
        && b[5..9].iter().all(u8::is_ascii_digit)
        && b[9].is_ascii_uppercase()
}

/// Whether `id` may be a consent id: 8–128 characters of letters, digits and `-_.:`
/// (Account Aggregator consent handles are UUIDs; other shapes are allowed within these).
pub fn is_consent_id(id: &str) -> bool {
    (8..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

pub fn fixtures() -> Vec<Fixture> {
    vec![Fixture {
        resource: "trade.connector",
        create: std::sync::Arc::new(|state, scope| {
            Box::pin(async move {
                let fields = store::Fields {
                    kind: "gst".into(),
                    iec_code: "ABCDE1234F".into(),
                    consent_id: None,
                };
                let mut tx = state.db.begin().await?;
                let c = store::insert(&mut tx, &scope, &fields).await?;
                tx.commit().await?;
                Ok(FixtureResource {
                    paths: vec![format!("/api/v1/trade/connectors/{}", c.id)],
                })
            })
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iec_codes_have_the_pan_shape() {
        assert!(is_iec("ABCDE1234F"));
        for bad in [
            "ABCDE1234",
            "ABCDE12345",
            "abcde1234f",
            "ABCD11234F",
            "ABCDE12A4F",
            "0123456789",
            "ABCDE1234FG",
            "ÄBCDE1234F",
        ] {
            assert!(!is_iec(bad), "{bad}");
        }
    }

    #[test]
    fn consent_ids_are_plain_tokens() {
        assert!(is_consent_id("654024c8-29c8-11e8-8868-0289437bf331"));
        assert!(!is_consent_id("short"));
        assert!(!is_consent_id("has space in it"));
        assert!(!is_consent_id(&"x".repeat(129)));
    }
}
