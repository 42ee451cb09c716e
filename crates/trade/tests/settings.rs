//! `[modules.trade]` settings are checked at start-up: every problem is named, with its key.

mod common;

use serde_json::json;

async fn start_with(settings: serde_json::Value) -> Result<(), String> {
    common::builder()
        .configure(move |c| {
            if let Some(map) = settings.as_object() {
                for (k, v) in map {
                    c.modules.insert(k.clone(), v.clone());
                }
            }
        })
        .build()
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

#[tokio::test]
async fn bad_settings_refuse_to_start_and_name_each_problem() {
    let err = start_with(json!({
        "trade": {"overdue_days": 0, "currencies": ["USD", "INR", "XYZ"]},
        "nope": {"x": 1}
    }))
    .await
    .expect_err("refused");
    for needle in [
        "modules.trade.overdue_days",
        "modules.trade.currencies: `INR`",
        "modules.trade.currencies: `XYZ`",
        "modules.nope",
    ] {
        assert!(err.contains(needle), "{needle} in {err}");
    }
    let err = start_with(json!({"trade": {"overdue_dayz": 300}}))
        .await
        .expect_err("an unknown key is refused");
    assert!(err.contains("overdue_dayz"), "{err}");

    start_with(json!({"trade": {"overdue_days": 180, "currencies": ["usd"]}}))
        .await
        .expect_err("lower case is not an ISO 4217 code in configuration");
    start_with(json!({"trade": {"overdue_days": 180, "currencies": ["USD", "EUR"]}}))
        .await
        .expect("good settings start");
}
