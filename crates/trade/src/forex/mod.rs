//! Forex rates against INR, per organization, and the alerts their changes raise.
//!
//! A rate is the number of rupees one unit of a currency buys, stored exactly as an integer
//! of millionths of a rupee (`rate_micros`; `"83.2512"` is `83_251_200`) and shown as a decimal
//! string. Input with more than six decimals is refused rather than rounded. A new rate is
//! compared with the rate in force just before its effective time (for a back-dated rate, the
//! rate in force before its date, not the newest one); rates of one currency are recorded one
//! after the other (a per-currency series row, [`store::lock_series`]), so two recorded at
//! once are not both compared with the same previous rate. A change above 3 % raises
//! an alert (`medium` up to 5 %, `high` above; above 10 % it is also flagged an `anomaly`),
//! which is stored, notified in-app to the organization's admins and recorded as the audit
//! event `trade.forex.alert` (published on the organization's realtime channel).

pub mod routes;
pub mod store;

use keel_kernel::module::{Fixture, FixtureResource};

/// A rate to read back, for the isolation probe.
pub fn fixtures() -> Vec<Fixture> {
    vec![Fixture {
        resource: "trade.forex_rate",
        create: std::sync::Arc::new(|state, scope| {
            Box::pin(async move {
                let rate = store::NewRate {
                    currency: "USD".into(),
                    rate_micros: 83_250_000,
                    buy_micros: None,
                    sell_micros: None,
                    effective_at: None,
                };
                let mut tx = state.db.begin().await?;
                store::lock_series(&mut tx, &scope, &rate.currency).await?;
                let r = store::insert(&mut tx, &scope, &rate, None).await?;
                tx.commit().await?;
                Ok(FixtureResource {
                    paths: vec![format!("/api/v1/trade/forex/rates/{}", r.id)],
                })
            })
        }),
    }]
}

/// A cache loader's error as an API error (a database outage stays a 503).
pub(crate) fn cache_error(
    e: std::sync::Arc<keel_kernel::store::StoreError>,
) -> keel_kernel::http::ApiError {
    match std::sync::Arc::try_unwrap(e) {
        Ok(e) => e.into(),
        Err(shared) => match &*shared {
            keel_kernel::store::StoreError::Unavailable(_)
            | keel_kernel::store::StoreError::Contention(_) => {
                keel_kernel::http::ApiError::service_unavailable("the database is busy; retry")
            }
            other => keel_kernel::http::ApiError::internal(anyhow::anyhow!("{other}")),
        },
    }
}

/// Millionths of a rupee per rupee: the scale of every stored rate.
pub const SCALE: i64 = 1_000_000;
/// Decimals a rate may carry.
pub const DECIMALS: usize = 6;
/// Rates must be below this (in rupees).
pub const MAX_RUPEES: i64 = 1_000_000;

/// Parses a positive decimal string (`"83.2512"`) into millionths, exactly. `None` when it is
/// not plain digits with an optional fraction of at most six digits, or is zero, or is not
/// below 1,000,000.
pub fn parse_micros(raw: &str) -> Option<i64> {
    let s = raw.trim();
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty()
        || int.len() > 7
        || !int.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > DECIMALS
        || (s.contains('.') && frac.is_empty())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = int.parse().ok()?;
    let mut fraction: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..DECIMALS {
        fraction *= 10;
    }
    let micros = whole.checked_mul(SCALE)?.checked_add(fraction)?;
    (micros > 0 && micros < MAX_RUPEES * SCALE).then_some(micros)
}

/// Why a rate string was refused, for the field's message.
pub fn micros_problem(raw: &str) -> &'static str {
    let s = raw.trim();
    if let Some((_, f)) = s.split_once('.')
        && f.len() > DECIMALS
        && f.bytes().all(|b| b.is_ascii_digit())
    {
        return "at most 6 decimal places";
    }
    "must be a decimal string greater than 0 and below 1000000, e.g. \"83.2512\""
}

/// Millionths as a decimal string with at least two decimals (`83251200` → `"83.2512"`,
/// `84000000` → `"84.00"`). Negative values (changes) keep their sign.
pub fn format_micros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let scale = SCALE.unsigned_abs();
    let mut frac = format!("{:06}", abs % scale);
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{sign}{}.{frac}", abs / scale)
}

/// How serious a rate change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Above 3 %, at most 5 %.
    Medium,
    /// Above 5 %.
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            _ => None,
        }
    }
}

/// The alert a change from `previous` to `current` raises, if any: its severity and whether it
/// is an anomaly (above 10 %). Compared exactly in integers: `|Δ| · 100 > 3 · previous`.
pub fn classify(previous: i64, current: i64) -> Option<(Severity, bool)> {
    if previous <= 0 {
        return None;
    }
    let delta = (i128::from(current) - i128::from(previous)).abs() * 100;
    let prev = i128::from(previous);
    if delta <= 3 * prev {
        return None;
    }
    let severity = if delta > 5 * prev {
        Severity::High
    } else {
        Severity::Medium
    };
    Some((severity, delta > 10 * prev))
}

/// The change from `previous` to `current` in parts per million of `previous`, truncated
/// toward zero (35,000 is +3.5 %).
pub fn change_ppm(previous: i64, current: i64) -> i64 {
    if previous <= 0 {
        return 0;
    }
    let ppm = (i128::from(current) - i128::from(previous)) * 1_000_000 / i128::from(previous);
    i64::try_from(ppm).unwrap_or(i64::MAX)
}

/// A change in parts per million as a percentage string with four decimals (`35000` →
/// `"3.5000"`, `-29000` → `"-2.9000"`).
pub fn format_percent(ppm: i64) -> String {
    let sign = if ppm < 0 { "-" } else { "" };
    let abs = ppm.unsigned_abs();
    format!("{sign}{}.{:04}", abs / 10_000, abs % 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_exactly_and_refuse_extra_precision() {
        assert_eq!(parse_micros("83.2512"), Some(83_251_200));
        assert_eq!(parse_micros(" 83 "), Some(83_000_000));
        assert_eq!(parse_micros("0.000001"), Some(1));
        assert_eq!(parse_micros("999999.999999"), Some(999_999_999_999));
        for bad in [
            "",
            "0",
            "0.000000",
            "-1",
            "+1",
            "1e3",
            "83.",
            ".5",
            "1000000",
            "83.1234567",
            "8,3",
            "NaN",
            "１",
        ] {
            assert_eq!(parse_micros(bad), None, "{bad}");
        }
        assert_eq!(micros_problem("83.1234567"), "at most 6 decimal places");
    }

    #[test]
    fn rates_format_back() {
        assert_eq!(format_micros(83_251_200), "83.2512");
        assert_eq!(format_micros(84_000_000), "84.00");
        assert_eq!(format_micros(1), "0.000001");
        assert_eq!(format_micros(-500_000), "-0.50");
        assert_eq!(format_percent(35_000), "3.5000");
        assert_eq!(format_percent(-29_000), "-2.9000");
    }

    #[test]
    fn changes_are_classified_at_the_thresholds() {
        let p = 100_000_000;
        assert_eq!(classify(p, 102_900_000), None);
        assert_eq!(classify(p, 103_000_000), None, "exactly 3 % is no alert");
        assert_eq!(classify(p, 103_000_001), Some((Severity::Medium, false)));
        assert_eq!(classify(p, 105_000_000), Some((Severity::Medium, false)));
        assert_eq!(classify(p, 106_000_000), Some((Severity::High, false)));
        assert_eq!(classify(p, 110_000_000), Some((Severity::High, false)));
        assert_eq!(classify(p, 112_000_000), Some((Severity::High, true)));
        assert_eq!(classify(p, 94_000_000), Some((Severity::High, false)));
        assert_eq!(change_ppm(p, 103_500_000), 35_000);
        assert_eq!(change_ppm(p, 96_500_000), -35_000);
    }
}
