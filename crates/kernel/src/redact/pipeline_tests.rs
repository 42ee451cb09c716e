//! End-to-end tests: events go through the subscriber stack `observe::init_logging` installs
//! (JSON and development variants, built by `observe::log_layer`) into an in-memory buffer,
//! and the written bytes are checked — raw values gone, hints right, ordinary numbers intact.

use std::collections::BTreeMap;

use tracing_subscriber::layer::SubscriberExt;

use super::RedactionConfig;
use super::checks::verhoeff_check_digit;
use crate::config::{Config, LogConfig, LogFormat, Secret};
use crate::observe::{LogCapture, log_layer};

const FORMATS: [LogFormat; 2] = [LogFormat::Json, LogFormat::Pretty];

fn config(format: LogFormat, redaction: RedactionConfig) -> Config {
    Config {
        log: LogConfig {
            level: "trace".into(),
            format,
            redaction,
            ..LogConfig::default()
        },
        ..Config::default()
    }
}

/// What the stack built from `config` writes while `emit` runs.
fn capture(config: &Config, ansi: bool, emit: impl FnOnce()) -> String {
    let buf = LogCapture::default();
    let layer = log_layer(config, buf.clone(), ansi).expect("log layer");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, emit);
    let out = buf.text();
    assert!(!out.is_empty(), "nothing was logged");
    if config.log.format == LogFormat::Json {
        for line in out.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not JSON after redaction ({e}): {line}"));
        }
    }
    out
}

/// Runs `emit` through the JSON and the development stacks with default settings.
fn each_format(emit: impl Fn()) -> Vec<(LogFormat, String)> {
    FORMATS
        .iter()
        .map(|&f| {
            (
                f,
                capture(&config(f, RedactionConfig::default()), false, &emit),
            )
        })
        .collect()
}

fn assert_gone(out: &str, format: LogFormat, raw: &[&str]) {
    for r in raw {
        assert!(!out.contains(r), "{format:?}: `{r}` leaked:\n{out}");
    }
}

fn assert_kept(out: &str, format: LogFormat, kept: &[&str]) {
    for k in kept {
        assert!(out.contains(k), "{format:?}: `{k}` missing:\n{out}");
    }
}

fn aadhaar(first11: &str) -> String {
    let check = verhoeff_check_digit(first11).expect("digits");
    format!("{first11}{check}")
}

#[test]
fn card_numbers_keep_only_their_last_four_digits() {
    for (format, out) in each_format(|| {
        tracing::info!(
            card = "4111 1111 1111 1111",
            payment_ref = "5555-5555-5555-4444",
            amount_minor = 125000u64,
            "charged 378282246310005 total 4599.00"
        );
    }) {
        assert_gone(
            &out,
            format,
            &[
                "4111 1111 1111 1111",
                "5555-5555-5555-4444",
                "378282246310005",
            ],
        );
        assert_kept(
            &out,
            format,
            &[
                "************1111",
                "************4444",
                "***********0005",
                "125000",
                "4599.00",
            ],
        );
    }
}

#[test]
fn aadhaar_numbers_keep_only_their_last_four_digits() {
    let number = aadhaar("23456789012");
    let grouped = format!("{} {} {}", &number[..4], &number[4..8], &number[8..]);
    let last4 = number[8..].to_string();
    let other = aadhaar("98765432101");
    for (format, out) in each_format(|| {
        tracing::info!(aadhaar = %grouped, kyc_ref = %other, "verified aadhaar {number}");
    }) {
        assert_gone(&out, format, &[&number, &grouped, &other]);
        assert_kept(
            &out,
            format,
            &[
                &format!("XXXX XXXX {last4}"),
                &format!("XXXX XXXX {}", &other[8..]),
            ],
        );
    }
}

#[test]
fn pan_and_gstin_are_masked() {
    for (format, out) in each_format(|| {
        tracing::info!(
            pan = "ABCPE1234F",
            supplier = "27AAPFU0939F1ZV",
            "invoice for PAN AAPFU0939F, GSTIN 29AAGCB7383J1Z4"
        );
    }) {
        assert_gone(
            &out,
            format,
            &[
                "ABCPE1234F",
                "27AAPFU0939F1ZV",
                "AAPFU0939F",
                "29AAGCB7383J1Z4",
            ],
        );
        assert_kept(
            &out,
            format,
            &[
                "XXXXXX234F",
                "27XXXXXXXXXX1ZV",
                "XXXXXX939F",
                "29XXXXXXXXXX1Z4",
            ],
        );
    }
}

#[test]
fn ibans_keep_their_country_and_last_four() {
    for (format, out) in each_format(|| {
        tracing::info!(
            iban = "DE89370400440532013000",
            "refund to GB82 WEST 1234 5698 7654 32 for order 4599"
        );
    }) {
        assert_gone(
            &out,
            format,
            &[
                "DE89370400440532013000",
                "GB82 WEST 1234 5698 7654 32",
                "WEST",
            ],
        );
        assert_kept(
            &out,
            format,
            &[
                "DE****************3000",
                "GB****************5432",
                "order 4599",
            ],
        );
    }
}

#[test]
fn emails_keep_their_first_character_and_domain() {
    for (format, out) in each_format(|| {
        tracing::info!(
            email = "john.doe@example.com",
            invited_by = "Priya.S@corp.example.in",
            "sent welcome mail to asha+orders@shop.example"
        );
    }) {
        assert_gone(&out, format, &["john.doe@", "Priya.S@", "asha+orders@"]);
        assert_kept(
            &out,
            format,
            &[
                "j***@example.com",
                "P***@corp.example.in",
                "a***@shop.example",
            ],
        );
    }
}

#[test]
fn phone_numbers_keep_their_last_four_digits() {
    for (format, out) in each_format(|| {
        tracing::info!(
            phone = "+91 98765 43210",
            alternate = "9123456780",
            status = 200u16,
            "sms to +14155552671 and 08765432109, retry 3"
        );
    }) {
        assert_gone(
            &out,
            format,
            &["98765 43210", "9123456780", "14155552671", "08765432109"],
        );
        assert_kept(
            &out,
            format,
            &[
                "+********3210",
                "******6780",
                "+*******2671",
                "*******2109",
                "200",
                "retry 3",
            ],
        );
    }
}

#[test]
fn passwords_tokens_and_keys_are_fully_redacted() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let mut headers = BTreeMap::new();
    headers.insert("authorization", "Bearer opaque-session-credential-1");
    headers.insert("cookie", "sid=s3cr3t-cookie-value");
    headers.insert("accept", "application/json");
    for (format, out) in each_format(|| {
        tracing::warn!(
            password = "hunter2-correct-horse",
            refresh_token = "rt_0f9e8d7c6b5a",
            api_key = "keel_live_4f9aB2c8D1e7F6a5b4C3",
            headers = ?headers,
            body = r#"{"email":"x@y.dev","new_password":"n3w-s3cret","otp":"493817"}"#,
            "login with {jwt}, then Bearer abcdefgh12345678, key keel_test_Zz9Yy8Xx7Ww6Vv5U"
        );
    }) {
        assert_gone(
            &out,
            format,
            &[
                "hunter2-correct-horse",
                "rt_0f9e8d7c6b5a",
                "keel_live_",
                "opaque-session-credential-1",
                "s3cr3t-cookie-value",
                "n3w-s3cret",
                "493817",
                "eyJ",
                "abcdefgh12345678",
                "keel_test_",
                "x@y.dev",
            ],
        );
        assert_kept(
            &out,
            format,
            &["[REDACTED]", "Bearer [REDACTED]", "application/json"],
        );
    }
}

#[test]
fn ip_addresses_keep_their_network() {
    for (format, out) in each_format(|| {
        tracing::info!(
            client_ip = "203.0.113.77",
            peer = "2001:db8:85a3:1:2:8a2e:370:7334",
            "connection from 192.168.10.23:51234 via [2401:4900:1c3a::1]:443, bound 127.0.0.1:8080"
        );
    }) {
        assert_gone(
            &out,
            format,
            &[
                "203.0.113.77",
                "8a2e:370:7334",
                "192.168.10.23",
                "2401:4900:1c3a::1",
            ],
        );
        assert_kept(
            &out,
            format,
            &[
                "203.0.x.x",
                "2001:db8:85a3:x:x:x:x:x",
                "192.168.x.x:51234",
                "[2401:4900:1c3a:x:x:x:x:x]:443",
                "127.0.0.1:8080",
            ],
        );
    }
}

#[test]
fn span_fields_are_redacted_as_well_as_event_fields() {
    for (format, out) in each_format(|| {
        let span = tracing::info_span!(
            "request",
            request_id = "0190f5a2b3c47d8e9f0a1b2c3d4e5f60",
            user_email = "meera@example.org",
            route = "/api/v1/orders/{id}",
        );
        let _guard = span.enter();
        tracing::info!(status = 201u16, latency_ms = 3.25, "request completed");
    }) {
        assert_gone(&out, format, &["meera@"]);
        assert_kept(
            &out,
            format,
            &[
                "m***@example.org",
                "0190f5a2b3c47d8e9f0a1b2c3d4e5f60",
                "/api/v1/orders/{id}",
                "201",
                "3.25",
            ],
        );
    }
}

#[test]
fn ordinary_numbers_ids_and_timestamps_survive() {
    let order_id = "0190f5a2-b3c4-7d8e-9f0a-1b2c3d4e5f60";
    for (format, out) in each_format(|| {
        tracing::info!(
            order_id,
            amount_minor = 9876543210u64,
            total = "4599.00",
            items = 12u32,
            latency_ms = 12.345,
            status = 404u16,
            port = 8443u16,
            version = "1.95.0",
            route = "/api/v1/trade/shipments/{id}/documents",
            at = "2024-05-01T12:34:56.123456Z",
            epoch_ms = 1714567890123u64,
            invoice_no = "4111111111111112",
            "order {order_id} total 4599.00 amount_minor=125000 took 12.345ms v0.1.0 qty 3"
        );
    }) {
        assert_kept(
            &out,
            format,
            &[
                order_id,
                "9876543210",
                "4599.00",
                "12.345",
                "404",
                "8443",
                "1.95.0",
                "/api/v1/trade/shipments/{id}/documents",
                "2024-05-01T12:34:56.123456Z",
                "1714567890123",
                "4111111111111112",
                "amount_minor=125000",
                "v0.1.0",
                "qty 3",
            ],
        );
        assert!(
            !out.contains("REDACTED"),
            "{format:?}: over-redacted:\n{out}"
        );
        assert!(!out.contains("***"), "{format:?}: over-masked:\n{out}");
    }
}

#[test]
fn hash_mode_tags_one_person_the_same_in_every_line_and_format() {
    let redaction = RedactionConfig {
        hash_identifiers: true,
        ..RedactionConfig::default()
    };
    let mut tags = Vec::new();
    for format in FORMATS {
        let config = Config {
            encryption_key: Some(Secret::new("11".repeat(32))),
            ..config(format, redaction.clone())
        };
        let out = capture(&config, false, || {
            tracing::info!(email = "ravi@example.com", "signed up");
            tracing::info!("password reset asked by Ravi@Example.com");
            tracing::info!(password = "pw-123456", card = "4111111111111111", "paid");
        });
        assert_gone(
            &out,
            format,
            &["ravi@", "Ravi@", "pw-123456", "4111111111111111"],
        );
        let found: Vec<&str> = out
            .match_indices("[REDACTED:")
            .map(|(i, _)| &out[i..i + 19])
            .collect();
        assert_eq!(found.len(), 3, "{format:?}: two emails and a card:\n{out}");
        assert_eq!(found[0], found[1], "{format:?}: same person, same tag");
        assert_ne!(found[0], found[2], "{format:?}: a card is someone else");
        assert!(out.contains("[REDACTED]"), "the password is never hashed");
        tags.push(found[0].to_string());
    }
    assert_eq!(tags[0], tags[1], "JSON and text agree");
}

#[test]
fn the_disabled_switch_leaves_lines_untouched() {
    for format in FORMATS {
        let redaction = RedactionConfig {
            enabled: false,
            ..RedactionConfig::default()
        };
        let out = capture(&config(format, redaction), false, || {
            tracing::info!(password = "hunter2", "card 4111 1111 1111 1111");
        });
        assert_kept(&out, format, &["hunter2", "4111 1111 1111 1111"]);
    }
}

#[test]
fn extra_fields_from_configuration_are_redacted() {
    for format in FORMATS {
        let redaction = RedactionConfig {
            extra_fields: vec!["salary".into(), "passport_no".into()],
            ..RedactionConfig::default()
        };
        let out = capture(&config(format, redaction), false, || {
            tracing::info!(
                monthly_salary = 185000u64,
                passport_no = "K1234567",
                "updated: salary=185000"
            );
        });
        assert_gone(&out, format, &["185000", "K1234567"]);
    }
}

#[test]
fn fields_modules_declare_are_redacted_and_bad_names_refused() {
    for format in FORMATS {
        let redaction = RedactionConfig {
            module_fields: vec!["bank_reference".into()],
            ..RedactionConfig::default()
        };
        let out = capture(&config(format, redaction), false, || {
            tracing::info!(bank_reference = "HDFCR52025032012345", "payment");
        });
        assert_gone(&out, format, &["HDFCR52025032012345"]);
    }
    let bad = RedactionConfig {
        module_fields: vec!["no spaces".into()],
        ..RedactionConfig::default()
    };
    assert!(matches!(
        crate::redact::Redactor::new(&bad, None),
        Err(crate::redact::RedactError::BadModuleField(_))
    ));
}

#[test]
fn coloured_development_lines_are_redacted() {
    let out = capture(
        &config(LogFormat::Pretty, RedactionConfig::default()),
        true,
        || {
            tracing::info!(
                password = "hunter2",
                email = "john@example.com",
                status = 200u16,
                "ok"
            );
        },
    );
    assert!(out.contains('\x1b'), "colours are on:\n{out:?}");
    assert_gone(&out, LogFormat::Pretty, &["hunter2", "john@"]);
    assert_kept(&out, LogFormat::Pretty, &["j***@example.com", "200"]);
}
