//! Trade: export operations for Indian exporters (the ExportFlow system).
//!
//! Shipments from draft to delivery with their e-BRC (electronic bank realisation
//! certificate) status, trade documents and their extraction, payments received (bank details
//! encrypted at rest), forex rates against INR with change alerts, the GST monthly summary, a
//! dashboard, connectors with the Account Aggregator webhook, and exports. Everything is under
//! `/api/v1/trade/` and scoped to the caller's organization by the kernel's tenant scope.
//!
//! Each resource lives in its own module (`store` for queries, `routes` for HTTP); this file
//! is the [`Module`] the binary enables.

use keel_kernel::auth::access::{ADMIN, MEMBER, PARTNER};
use keel_kernel::module::{Module, ModuleRouter, Permission};
use keel_kernel::store::migrate::Migration;
use serde::{Deserialize, Serialize};

pub mod codes;
pub mod connectors;
pub mod dashboard;
pub mod demo;
pub mod documents;
pub mod export;
pub mod forex;
pub mod gst;
pub mod overdue;
pub mod payments;
pub mod shipments;

/// The module's name: the `[modules.trade]` settings key and the `disabled_modules` entry.
pub const NAME: &str = "trade";

/// The trade app.
#[derive(Debug, Default)]
pub struct TradeModule;

/// `[modules.trade]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TradeSettings {
    /// Currencies forex rates may be recorded for (against INR), ISO 4217.
    pub currencies: Vec<String>,
    /// Days after the shipping bill date after which an unrealised e-BRC is overdue.
    pub overdue_days: u32,
    /// Secrets of the Account Aggregator webhook (`whsec_…`): the current one, and the
    /// previous one during a rotation. Empty: the webhook answers 503.
    pub aa_webhook_secrets: Vec<String>,
    /// Exports of up to this many rows are answered at once (CSV streamed); larger ones run as
    /// a job on the `export` queue (default 100,000).
    pub export_async_rows: u64,
}

/// The 21 currencies Indian exporters invoice in most, against INR.
pub const DEFAULT_CURRENCIES: [&str; 21] = [
    "USD", "EUR", "GBP", "JPY", "AED", "SAR", "SGD", "AUD", "CAD", "CHF", "CNY", "HKD", "NZD",
    "SEK", "DKK", "NOK", "ZAR", "MYR", "THB", "KWD", "QAR",
];

impl Default for TradeSettings {
    fn default() -> Self {
        Self {
            currencies: DEFAULT_CURRENCIES.iter().map(|c| c.to_string()).collect(),
            overdue_days: 270,
            aa_webhook_secrets: Vec::new(),
            export_async_rows: 100_000,
        }
    }
}

impl TradeSettings {
    fn problems(value: &serde_json::Value) -> Vec<String> {
        let settings: TradeSettings = match serde_json::from_value(value.clone()) {
            Ok(s) => s,
            Err(e) => return vec![e.to_string()],
        };
        let mut problems = Vec::new();
        for c in &settings.currencies {
            if keel_kernel::money::parse_currency(c) != Some(c.as_str()) || c == "INR" {
                problems.push(format!(
                    "currencies: `{c}` is not an ISO 4217 code (upper case) other than INR"
                ));
            }
        }
        if settings.currencies.is_empty() {
            problems.push("currencies: must list at least one currency".into());
        }
        if !(1..=3650).contains(&settings.overdue_days) {
            problems.push("overdue_days: must be between 1 and 3650".into());
        }
        if !(1..=1_000_000).contains(&settings.export_async_rows) {
            problems.push("export_async_rows: must be between 1 and 1000000".into());
        }
        if settings
            .aa_webhook_secrets
            .iter()
            .any(|s| s.trim().len() < 16)
        {
            problems.push("aa_webhook_secrets: each secret must be at least 16 characters".into());
        }
        problems
    }

    /// The settings of a running server.
    pub fn of(state: &keel_kernel::state::AppState) -> Self {
        state.module_settings(NAME)
    }
}

/// Who did it, as the `created_by` columns record it: a user id or a system actor's name.
pub(crate) fn actor_id(scope: &keel_kernel::tenancy::TenantScope) -> Option<String> {
    match scope.actor() {
        keel_kernel::tenancy::Actor::User(id) => Some(id.to_string()),
        keel_kernel::tenancy::Actor::System(name) => Some((*name).to_string()),
    }
}

/// The audit actions published on the organization's realtime channel.
pub const REALTIME_ACTIONS: &[&str] = &[
    "trade.shipment.status_changed",
    "trade.shipment.ebrc_changed",
    "trade.shipment.ebrc_realized",
    "trade.document.extracted",
    "trade.forex.alert",
];

/// The trade permissions.
pub mod perms {
    keel_kernel::permission!(pub ShipmentsRead = "trade.shipments.read");
    keel_kernel::permission!(pub ShipmentsWrite = "trade.shipments.write");
    keel_kernel::permission!(pub ForexRead = "trade.forex.read");
    keel_kernel::permission!(pub ForexManage = "trade.forex.manage");
    keel_kernel::permission!(pub ReportsRead = "trade.reports.read");
    keel_kernel::permission!(pub DocumentsRead = "trade.documents.read");
    keel_kernel::permission!(pub DocumentsWrite = "trade.documents.write");
    keel_kernel::permission!(pub PaymentsRead = "trade.payments.read");
    keel_kernel::permission!(pub PaymentsWrite = "trade.payments.write");
    keel_kernel::permission!(pub ConnectorsManage = "trade.connectors.manage");
}

impl Module for TradeModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn settings_problems(&self, settings: &serde_json::Value) -> Vec<String> {
        TradeSettings::problems(settings)
    }

    fn migrations(&self) -> Vec<Migration> {
        vec![
            keel_kernel::migration!(1, "0001_shipments", "migrations"),
            keel_kernel::migration!(2, "0002_forex", "migrations"),
            keel_kernel::migration!(3, "0003_connectors", "migrations"),
            keel_kernel::migration!(4, "0004_documents", "migrations"),
            keel_kernel::migration!(5, "0005_payments", "migrations"),
            keel_kernel::migration!(6, "0006_record_versions", "migrations"),
            keel_kernel::migration!(7, "0007_forex_series", "migrations"),
            keel_kernel::migration!(8, "0008_search_index", "migrations"),
            keel_kernel::migration!(9, "0009_tally_shards", "migrations"),
        ]
    }

    fn routes(&self) -> ModuleRouter {
        ModuleRouter::new()
            .merge(shipments::routes::router())
            .merge(forex::routes::router())
            .merge(gst::router())
            .merge(dashboard::router())
            .merge(documents::routes::router())
            .merge(payments::routes::router())
            .merge(export::routes::router())
            .merge(connectors::routes::router())
    }

    fn permissions(&self) -> Vec<Permission> {
        vec![
            Permission {
                name: "trade.shipments.read",
                description: "Read shipments (partner users: those of their partner)",
                default_roles: &[ADMIN, MEMBER, PARTNER],
            },
            Permission {
                name: "trade.shipments.write",
                description: "Create, change, transition and delete shipments",
                default_roles: &[ADMIN, MEMBER],
            },
            Permission {
                name: "trade.forex.read",
                description: "Read forex rates, their history and alerts",
                default_roles: &[ADMIN, MEMBER],
            },
            Permission {
                name: "trade.forex.manage",
                description: "Record forex rates",
                default_roles: &[ADMIN],
            },
            Permission {
                name: "trade.reports.read",
                description: "Read the GST monthly summary and the dashboard",
                default_roles: &[ADMIN, MEMBER],
            },
            Permission {
                name: "trade.documents.read",
                description: "Read, download and see the extraction of shipment documents",
                default_roles: &[ADMIN, MEMBER],
            },
            Permission {
                name: "trade.documents.write",
                description: "Upload, delete and extract shipment documents; correct extractions",
                default_roles: &[ADMIN, MEMBER],
            },
            Permission {
                name: "trade.payments.read",
                description: "Read payments received against shipments",
                default_roles: &[ADMIN, MEMBER],
            },
            Permission {
                name: "trade.payments.write",
                description: "Record payments received against shipments",
                default_roles: &[ADMIN, MEMBER],
            },
            Permission {
                name: "trade.connectors.manage",
                description: "Create, change and delete connectors (bank via Account Aggregator, GST, ICEGATE)",
                default_roles: &[ADMIN],
            },
        ]
    }

    fn demo(&self) -> Option<keel_kernel::demo::DemoFn> {
        Some(std::sync::Arc::new(|ctx| Box::pin(demo::seed(ctx))))
    }

    fn notification_types(&self) -> Vec<keel_kernel::notify::NotificationType> {
        forex::routes::notification_types()
    }

    fn jobs(&self) -> Vec<keel_kernel::jobs::JobDefinition> {
        vec![documents::extract_job(), overdue::job(), export::job()]
    }

    fn rate_limit_policies(&self) -> Vec<keel_kernel::limits::Policy> {
        let mut policies = forex::routes::policies();
        policies.push(export::routes::policy());
        policies.push(keel_kernel::limits::Policy::new(
            documents::routes::EXTRACT_POLICY,
            20,
            std::time::Duration::from_secs(3600),
            keel_kernel::limits::KeyKind::Org,
            keel_kernel::limits::FailMode::Local,
        ));
        policies
    }

    fn document_fields(&self) -> Vec<keel_kernel::extract::DocumentField> {
        documents::document_fields()
    }

    fn encrypted_columns(&self) -> Vec<keel_kernel::crypto::keys::EncryptedTable> {
        payments::encrypted_columns()
    }

    fn log_redacted_fields(&self) -> Vec<&'static str> {
        payments::LOG_REDACTED_FIELDS.to_vec()
    }

    fn fixtures(&self) -> Vec<keel_kernel::module::Fixture> {
        let mut fixtures = shipments::fixtures();
        fixtures.extend(documents::fixtures());
        fixtures.extend(payments::fixtures());
        fixtures.extend(connectors::fixtures());
        fixtures.extend(export::fixtures());
        fixtures.extend(forex::fixtures());
        fixtures
    }

    fn schedules(&self) -> Vec<keel_kernel::jobs::ScheduleDefinition> {
        vec![overdue::schedule()]
    }

    /// Shipment status and e-BRC changes, extraction results and forex alerts reach the
    /// organization's channel (members with the organization's view subscribe to it).
    fn realtime_channels_for(
        &self,
        event: &keel_kernel::audit::AuditEvent,
    ) -> Vec<keel_kernel::realtime::Channel> {
        if REALTIME_ACTIONS.contains(&event.action.as_str()) {
            vec![keel_kernel::realtime::Channel::org(event.org_id)]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_up_to_100000_rows_are_answered_at_once_by_default() {
        let settings = TradeSettings::default();
        assert_eq!(settings.export_async_rows, 100_000);
        assert!(
            TradeSettings::problems(&serde_json::to_value(&settings).unwrap_or_default())
                .is_empty()
        );
    }
}
