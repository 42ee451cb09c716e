//! Shipments: from draft to delivery, with their e-BRC status.
//!
//! Status moves only along `draft → booked → in_transit → delivered`, or to `cancelled` from
//! any state before `delivered`, through `POST …/{id}/transitions` `{"to": "booked"}` or the
//! per-action routes (`/book`, `/dispatch`, `/deliver`, `/cancel`), which share one
//! implementation. The e-BRC status starts
//! `pending`, becomes `filed` by hand, `realized` when payments cover the invoice value, and
//! `overdue` when no realisation arrives within `overdue_days` of the shipping bill date.

pub mod routes;
pub mod store;
pub mod tally;

use keel_kernel::module::{Fixture, FixtureResource};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A shipment's status.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Booked,
    InTransit,
    Delivered,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Draft,
        Status::Booked,
        Status::InTransit,
        Status::Delivered,
        Status::Cancelled,
    ];

    /// The statuses of a shipment that went ahead (booked or further, not cancelled): only
    /// these count as exports (the GST summary, the dashboard's month) and only their e-BRC
    /// can fall overdue.
    pub const EXPORTED: [Status; 3] = [Status::Booked, Status::InTransit, Status::Delivered];

    /// [`Status::EXPORTED`] as stored.
    pub fn exported() -> [&'static str; 3] {
        Self::EXPORTED.map(Status::as_str)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Booked => "booked",
            Status::InTransit => "in_transit",
            Status::Delivered => "delivered",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The states this one may move to.
    pub fn next(self) -> &'static [Status] {
        match self {
            Status::Draft => &[Status::Booked, Status::Cancelled],
            Status::Booked => &[Status::InTransit, Status::Cancelled],
            Status::InTransit => &[Status::Delivered, Status::Cancelled],
            Status::Delivered | Status::Cancelled => &[],
        }
    }

    pub fn can_move_to(self, to: Status) -> bool {
        self.next().contains(&to)
    }
}

/// A shipment's e-BRC (electronic bank realisation certificate) status.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EbrcStatus {
    Pending,
    Filed,
    Realized,
    Overdue,
}

impl EbrcStatus {
    pub const ALL: [EbrcStatus; 4] = [
        EbrcStatus::Pending,
        EbrcStatus::Filed,
        EbrcStatus::Realized,
        EbrcStatus::Overdue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EbrcStatus::Pending => "pending",
            EbrcStatus::Filed => "filed",
            EbrcStatus::Realized => "realized",
            EbrcStatus::Overdue => "overdue",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// `lut` (under a letter of undertaking, no IGST) or `with_payment` (IGST paid).
pub const EXPORT_TYPES: [&str; 2] = ["lut", "with_payment"];

pub fn fixtures() -> Vec<Fixture> {
    vec![Fixture {
        resource: "trade.shipment",
        create: std::sync::Arc::new(|state, scope| {
            Box::pin(async move {
                let fields = store::Fields {
                    reference: format!("FIX-{}", uuid::Uuid::now_v7().simple()),
                    buyer_partner_id: None,
                    buyer_name: "Fixture Buyer GmbH".into(),
                    buyer_country: Some("DE".into()),
                    destination_country: "DE".into(),
                    port_of_loading: Some("INNSA".into()),
                    port_of_discharge: Some("DEHAM".into()),
                    incoterm: Some("FOB".into()),
                    hs_codes: store::HsCodes(vec!["850440".into()]),
                    invoice_value_minor: 1_250_000,
                    currency: "EUR".into(),
                    shipping_bill_number: None,
                    shipping_bill_date: None,
                    export_type: "lut".into(),
                };
                let mut tx = state.db.begin().await?;
                let s = store::insert(&mut tx, &scope, &fields, None).await?;
                tx.commit().await?;
                Ok(FixtureResource {
                    paths: vec![format!("/api/v1/trade/shipments/{}", s.id)],
                })
            })
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_lifecycle() {
        use Status::*;
        assert!(Draft.can_move_to(Booked));
        assert!(Booked.can_move_to(InTransit));
        assert!(InTransit.can_move_to(Delivered));
        for s in [Draft, Booked, InTransit] {
            assert!(s.can_move_to(Cancelled), "{s:?} can be cancelled");
        }
        assert!(!Delivered.can_move_to(Cancelled));
        assert!(!Draft.can_move_to(Delivered));
        assert!(!Booked.can_move_to(Draft));
        assert!(Cancelled.next().is_empty());
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }
}
