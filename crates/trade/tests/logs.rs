//! Bank details never reach a log line in clear: the trade module registers `bank_reference`
//! with the kernel's log redaction (`account_number` is on its built-in list), and the payment
//! types' `Debug` masks both, so neither a field nor `?payment` logged anywhere shows them.

use std::sync::Arc;

use keel_kernel::config::{Config, LogConfig, LogFormat};
use keel_kernel::module::Module;
use keel_kernel::observe::LogCapture;
use keel_trade::payments::routes::PaymentInput;
use keel_trade::payments::store::Payment;
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

const BANK_REFERENCE: &str = "HDFCR52025032012345";
const ACCOUNT: &str = "50100234567890";

fn input() -> PaymentInput {
    serde_json::from_value(json!({
        "amount_minor": 100_000,
        "currency": "EUR",
        "received_on": "2025-03-20",
        "remitter": "Hamburg Imports GmbH",
        "bank_reference": BANK_REFERENCE,
        "account_number": ACCOUNT,
    }))
    .expect("a payment input")
}

fn payment() -> Payment {
    serde_json::from_value(json!({
        "id": uuid::Uuid::now_v7(),
        "shipment_id": uuid::Uuid::now_v7(),
        "amount_minor": 100_000,
        "currency": "EUR",
        "received_on": "2025-03-20",
        "remitter": "Hamburg Imports GmbH",
        "bank_reference": BANK_REFERENCE,
        "account_number": ACCOUNT,
        "created_at": "2025-03-20T10:02:11Z",
        "updated_at": "2025-03-20T10:02:11Z",
        "version": 1,
    }))
    .expect("a payment")
}

/// What the kernel's log stack (the one `keel serve` installs) writes for these events, in
/// `format`, with the trade module's redacted fields registered or not.
fn logged(format: LogFormat, with_module_fields: bool) -> String {
    let mut config = Config {
        log: LogConfig {
            format,
            ..LogConfig::default()
        },
        ..Config::default()
    };
    if with_module_fields {
        let modules: Vec<Arc<dyn Module>> = vec![Arc::new(keel_trade::TradeModule)];
        config.log.redaction.module_fields = keel_kernel::module::log_redacted_fields(&modules);
    }
    let buffer = LogCapture::default();
    let layer = keel_kernel::observe::log_layer(&config, buffer.clone(), false).expect("layer");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(
            bank_reference = BANK_REFERENCE,
            account_number = ACCOUNT,
            "payment recorded"
        );
        tracing::warn!(body = ?input(), "payment refused");
        tracing::info!(payment = ?payment(), "payment read");
        tracing::info!(
            details = %json!({"payment": {"bank_reference": BANK_REFERENCE}}),
            "nested"
        );
    });
    buffer.text()
}

#[test]
fn bank_details_are_masked_in_every_log_format() {
    for format in [LogFormat::Json, LogFormat::Pretty] {
        let out = logged(format, true);
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(out.contains("payment recorded"), "{out}");
        assert!(!out.contains(BANK_REFERENCE), "{format:?}: {out}");
        assert!(!out.contains(ACCOUNT), "{format:?}: {out}");
        // The amount and the remitter's business name are no secret and stay readable.
        assert!(out.contains("100000"), "{out}");
    }
}

#[test]
fn the_module_registration_is_what_masks_the_bank_reference() {
    // Without the trade module's registration a bare `bank_reference` field would be
    // written as it is: the kernel does not know the name by itself.
    let out = logged(LogFormat::Json, false);
    let first = out.lines().next().unwrap_or_default();
    assert!(first.contains(BANK_REFERENCE), "{first}");
    assert!(
        keel_trade::TradeModule
            .log_redacted_fields()
            .contains(&"bank_reference")
    );
}

#[test]
fn payment_debug_output_masks_the_bank_fields() {
    for text in [
        format!("{:?}", input()),
        format!("{:#?}", input()),
        format!("{:?}", payment()),
    ] {
        assert!(!text.contains(BANK_REFERENCE), "{text}");
        assert!(!text.contains(ACCOUNT), "{text}");
        // As lists show them: the last four characters.
        assert!(text.contains("2345") && text.contains("7890"), "{text}");
        assert!(text.contains("Hamburg Imports GmbH"), "{text}");
    }
}
