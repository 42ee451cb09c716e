//! Timestamps and dates for serde, written and read without chrono's general formatter and
//! parser, for the records a list returns by the page.
//!
//! chrono's own serde writes a timestamp through `fmt::Display`, which serde_json escapes a
//! few characters at a time, and reads one through its general RFC 3339 parser. A page of 20
//! shipments carries 40 timestamps each way (stored as text on SQLite, sent as JSON), and
//! together they cost more than the page's query. The functions here give exactly the
//! same results — the same text out, the same value in, the same error for bad input — by
//! writing the digits into a stack buffer and reading the stored shape directly; anything
//! outside the common shape (years before 0 or after 9999, offsets other than UTC, leap
//! seconds, relaxed separators) goes through chrono as before.
//!
//! Use with serde's field attributes:
//!
//! ```ignore
//! #[serde(with = "keel_kernel::time::utc")]
//! pub created_at: DateTime<Utc>,
//! #[serde(with = "keel_kernel::time::date::option")]
//! pub shipping_bill_date: Option<NaiveDate>,
//! ```

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Timelike, Utc};

/// A timestamp or date written out, on the stack.
pub struct Formatted {
    bytes: [u8; 32],
    len: usize,
}

impl Formatted {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }

    fn push(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    /// `n` in exactly `width` digits, zero-padded.
    fn digits(&mut self, mut n: u32, width: usize) {
        for at in (self.len..self.len + width).rev() {
            self.bytes[at] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.len += width;
    }

    fn date(&mut self, d: NaiveDate) {
        self.digits(d.year().unsigned_abs(), 4);
        self.push(b'-');
        self.digits(d.month(), 2);
        self.push(b'-');
        self.digits(d.day(), 2);
    }
}

/// `t` as chrono's serde writes it (RFC 3339 with `Z`, the fraction in 0, 3, 6 or 9
/// digits, whichever is shortest and exact), or `None` for a year outside 0–9999 or a leap
/// second, which chrono writes differently.
pub fn rfc3339(t: &DateTime<Utc>) -> Option<Formatted> {
    let naive = t.naive_utc();
    let nano = naive.nanosecond();
    if !(0..=9999).contains(&naive.year()) || nano >= 1_000_000_000 {
        return None;
    }
    let mut out = Formatted {
        bytes: [0; 32],
        len: 0,
    };
    out.date(naive.date());
    out.push(b'T');
    out.digits(naive.hour(), 2);
    out.push(b':');
    out.digits(naive.minute(), 2);
    out.push(b':');
    out.digits(naive.second(), 2);
    if nano != 0 {
        out.push(b'.');
        if nano.is_multiple_of(1_000_000) {
            out.digits(nano / 1_000_000, 3);
        } else if nano.is_multiple_of(1_000) {
            out.digits(nano / 1_000, 6);
        } else {
            out.digits(nano, 9);
        }
    }
    out.push(b'Z');
    Some(out)
}

/// `d` as `YYYY-MM-DD`, or `None` for a year outside 0–9999.
pub fn iso_date(d: &NaiveDate) -> Option<Formatted> {
    if !(0..=9999).contains(&d.year()) {
        return None;
    }
    let mut out = Formatted {
        bytes: [0; 32],
        len: 0,
    };
    out.date(*d);
    Some(out)
}

fn digit(s: &[u8], i: usize) -> Option<u32> {
    let d = s.get(i)?.wrapping_sub(b'0');
    (d < 10).then_some(u32::from(d))
}

fn number(s: &[u8], from: usize, width: usize) -> Option<u32> {
    (from..from + width).try_fold(0, |n, i| Some(n * 10 + digit(s, i)?))
}

/// `YYYY-MM-DD` at the start of `s`, when it is a valid date.
fn date_prefix(s: &[u8]) -> Option<NaiveDate> {
    if s.get(4) != Some(&b'-') || s.get(7) != Some(&b'-') {
        return None;
    }
    let year = i32::try_from(number(s, 0, 4)?).ok()?;
    NaiveDate::from_ymd_opt(year, number(s, 5, 2)?, number(s, 8, 2)?)
}

/// The shapes Keel stores and sends: `YYYY-MM-DDTHH:MM:SS`, an optional fraction of 1–9
/// digits, then `Z` or `+00:00`. Anything else is left to chrono.
fn parse_common(s: &str) -> Option<DateTime<Utc>> {
    let s = s.as_bytes();
    if s.len() < 20 || s[10] != b'T' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    let date = date_prefix(s)?;
    let (hour, minute, second) = (number(s, 11, 2)?, number(s, 14, 2)?, number(s, 17, 2)?);
    let mut at = 19;
    let mut nano = 0;
    if s[at] == b'.' {
        at += 1;
        let start = at;
        while let Some(d) = digit(s, at) {
            if at - start == 9 {
                return None;
            }
            nano = nano * 10 + d;
            at += 1;
        }
        let width = at - start;
        if width == 0 {
            return None;
        }
        nano *= 10u32.pow(u32::try_from(9 - width).ok()?);
    }
    if !matches!(&s[at..], b"Z" | b"+00:00") {
        return None;
    }
    Some(date.and_hms_nano_opt(hour, minute, second, nano)?.and_utc())
}

/// `s` as chrono's serde reads a `DateTime<Utc>`: any RFC 3339 timestamp, converted to UTC.
pub fn parse_utc(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match parse_common(s) {
        Some(t) => Ok(t),
        None => s
            .parse::<DateTime<FixedOffset>>()
            .map(|t| t.with_timezone(&Utc)),
    }
}

/// `s` as chrono's serde reads a `NaiveDate`.
pub fn parse_date(s: &str) -> Result<NaiveDate, chrono::ParseError> {
    match (s.len() == 10).then(|| date_prefix(s.as_bytes())).flatten() {
        Some(d) => Ok(d),
        None => s.parse::<NaiveDate>(),
    }
}

/// Reads a string as chrono's own visitors do: through `parse`, its error as the message.
struct Text<T> {
    parse: fn(&str) -> Result<T, chrono::ParseError>,
    expecting: &'static str,
}

impl<T> serde::de::Visitor<'_> for Text<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

/// `null` (or nothing), or a string read by the [`Text`] visitor.
struct OrNone<T>(Text<T>);

impl<'de, T> serde::de::Visitor<'de> for OrNone<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "null or {}", self.0.expecting)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_str(self.0).map(Some)
    }
}

fn serialize_option<T, S, F>(value: &Option<T>, s: S, some: F) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    F: FnOnce(&T, S) -> Result<S::Ok, S::Error>,
{
    match value {
        Some(v) => some(v, s),
        None => s.serialize_none(),
    }
}

/// `#[serde(with = "keel_kernel::time::utc")]` for `DateTime<Utc>`.
pub mod utc {
    use chrono::{DateTime, Utc};
    use serde::{Deserializer, Serializer};

    const TEXT: super::Text<DateTime<Utc>> = super::Text {
        parse: super::parse_utc,
        expecting: "an RFC 3339 formatted date and time string",
    };

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        match super::rfc3339(t) {
            Some(text) => s.serialize_str(text.as_str()),
            None => serde::Serialize::serialize(t, s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(TEXT)
    }

    /// `#[serde(with = "keel_kernel::time::utc::option")]` for `Option<DateTime<Utc>>`.
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            super::super::serialize_option(t, s, super::serialize)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            d.deserialize_option(super::super::OrNone(super::TEXT))
        }
    }
}

/// `#[serde(with = "keel_kernel::time::date")]` for `NaiveDate`.
pub mod date {
    use chrono::NaiveDate;
    use serde::{Deserializer, Serializer};

    const TEXT: super::Text<NaiveDate> = super::Text {
        parse: super::parse_date,
        expecting: "a formatted date string",
    };

    pub fn serialize<S: Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
        match super::iso_date(d) {
            Some(text) => s.serialize_str(text.as_str()),
            None => serde::Serialize::serialize(d, s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
        d.deserialize_str(TEXT)
    }

    /// `#[serde(with = "keel_kernel::time::date::option")]` for `Option<NaiveDate>`.
    pub mod option {
        use chrono::NaiveDate;
        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
            super::super::serialize_option(d, s, super::serialize)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
            d.deserialize_option(super::super::OrNone(super::TEXT))
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Fast {
        #[serde(with = "utc")]
        at: DateTime<Utc>,
        #[serde(with = "utc::option")]
        maybe_at: Option<DateTime<Utc>>,
        #[serde(with = "date")]
        day: NaiveDate,
        #[serde(with = "date::option")]
        maybe_day: Option<NaiveDate>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Chrono {
        at: DateTime<Utc>,
        maybe_at: Option<DateTime<Utc>>,
        day: NaiveDate,
        maybe_day: Option<NaiveDate>,
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, sec: u32, nano: u32) -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|d| d.and_hms_nano_opt(h, mi, sec, nano))
            .expect("test timestamp")
            .and_utc()
    }

    /// Timestamps covering every branch: each fraction width, no fraction, leap years,
    /// years at and beyond the four-digit range, a leap second.
    fn samples() -> Vec<DateTime<Utc>> {
        vec![
            at(2025, 1, 9, 1, 9, 9, 281_459_000),
            at(2025, 1, 9, 1, 9, 9, 0),
            at(2025, 1, 9, 1, 9, 9, 500_000_000),
            at(2025, 1, 9, 1, 9, 9, 120_000_000),
            at(2025, 1, 9, 1, 9, 9, 1_000),
            at(2025, 1, 9, 1, 9, 9, 1),
            at(2025, 1, 9, 1, 9, 9, 123_456_789),
            at(2024, 2, 29, 23, 59, 59, 999_999_999),
            at(0, 1, 1, 0, 0, 0, 0),
            at(999, 12, 31, 23, 59, 59, 100_000_000),
            at(9999, 12, 31, 23, 59, 59, 999_000_000),
            at(10000, 1, 1, 0, 0, 0, 0),
            at(-1, 6, 15, 12, 0, 0, 250_000_000),
            // A leap second, as chrono represents one.
            at(2016, 12, 31, 23, 59, 59, 1_500_000_000),
            Utc.timestamp_opt(0, 0).single().expect("epoch"),
        ]
    }

    /// The same values in both shapes: the optional fields set, or left out.
    fn pair(t: DateTime<Utc>, day: NaiveDate, present: bool) -> (Fast, Chrono) {
        let (maybe_at, maybe_day) = if present {
            (Some(t), Some(day))
        } else {
            (None, None)
        };
        (
            Fast {
                at: t,
                maybe_at,
                day,
                maybe_day,
            },
            Chrono {
                at: t,
                maybe_at,
                day,
                maybe_day,
            },
        )
    }

    fn pairs() -> impl Iterator<Item = (Fast, Chrono)> {
        let dates = samples().into_iter().map(|t| (t, t.date_naive())).chain([
            (samples()[0], NaiveDate::MIN),
            (samples()[0], NaiveDate::MAX),
        ]);
        dates.flat_map(|(t, day)| [pair(t, day, true), pair(t, day, false)])
    }

    #[test]
    fn writes_exactly_what_chrono_writes() {
        for (fast, chrono) in pairs() {
            assert_eq!(
                serde_json::to_string(&fast).expect("fast"),
                serde_json::to_string(&chrono).expect("chrono"),
                "{chrono:?}"
            );
        }
    }

    #[test]
    fn reads_what_chrono_writes_as_chrono_reads_it() {
        for (fast, chrono) in pairs() {
            let json = serde_json::to_string(&chrono).expect("json");
            let read: Fast = serde_json::from_str(&json).expect("read");
            let by_chrono: Chrono = serde_json::from_str(&json).expect("chrono reads");
            assert_eq!(read, fast, "{json}");
            assert_eq!(
                (read.at, read.maybe_at, read.day, read.maybe_day),
                (
                    by_chrono.at,
                    by_chrono.maybe_at,
                    by_chrono.day,
                    by_chrono.maybe_day
                )
            );
        }
        // A wrong type is refused as chrono refuses it.
        let wrong = r#"{"at":5,"maybe_at":null,"day":"2025-01-09","maybe_day":7}"#;
        let refused = serde_json::from_str::<Fast>(wrong)
            .err()
            .map(|e| e.to_string());
        assert!(refused.is_some());
        assert_eq!(
            refused,
            serde_json::from_str::<Chrono>(wrong)
                .err()
                .map(|e| e.to_string())
        );
        // The shape SQLite rows hold: `+00:00`, microseconds.
        assert_eq!(
            parse_utc("2025-01-09T01:09:09.281459+00:00"),
            Ok(at(2025, 1, 9, 1, 9, 9, 281_459_000))
        );
    }

    #[test]
    fn reads_every_input_the_way_chrono_reads_it() {
        let inputs = [
            "2025-01-09T01:09:09.281459+00:00",
            "2025-01-09T01:09:09.281459Z",
            "2025-01-09T01:09:09Z",
            "2025-01-09T01:09:09.1Z",
            "2025-01-09T01:09:09.123456789Z",
            "2025-01-09T01:09:09.1234567891Z",
            "2025-01-09T01:09:09.Z",
            "2025-01-09T01:09:09z",
            "2025-01-09t01:09:09Z",
            "2025-01-09 01:09:09Z",
            "2025-01-09T01:09:09+05:30",
            "2025-01-09T01:09:09-00:00",
            "2025-01-09T01:09:09.5+01:00",
            "2016-12-31T23:59:60Z",
            "2025-02-29T01:09:09Z",
            "2025-13-09T01:09:09Z",
            "2025-01-09T24:00:00Z",
            "2025-01-09T01:60:09Z",
            "2025-01-09T01:09:09",
            "2025-01-09T01:09:09Z ",
            " 2025-01-09T01:09:09Z",
            "2025-01-09T01:09:09+00:00:00",
            "+12025-01-09T01:09:09Z",
            "2025-1-09T01:09:09Z",
            "２025-01-09T01:09:09Z",
            "",
            "not a time",
        ];
        for input in inputs {
            let chrono = input
                .parse::<DateTime<FixedOffset>>()
                .map(|t| t.with_timezone(&Utc));
            assert_eq!(parse_utc(input), chrono, "{input:?}");
            let json = serde_json::to_string(input).expect("json");
            let fast: Result<Wrap, _> = serde_json::from_str(&json);
            let slow: Result<DateTime<Utc>, _> = serde_json::from_str(&json);
            match (fast, slow) {
                (Ok(f), Ok(s)) => assert_eq!(f.0, s, "{input:?}"),
                (Err(f), Err(s)) => assert_eq!(f.to_string(), s.to_string(), "{input:?}"),
                (f, s) => panic!("{input:?}: {f:?} against chrono's {s:?}"),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(transparent)]
    struct Wrap(#[serde(with = "utc")] DateTime<Utc>);

    #[test]
    fn reads_every_date_the_way_chrono_reads_it() {
        let inputs = [
            "2025-01-14",
            "2024-02-29",
            "2025-02-29",
            "2025-00-10",
            "0000-01-01",
            "9999-12-31",
            "+10000-01-01",
            "2025-1-14",
            "2025-01-14 ",
            " 2025-01-14",
            "20250114",
            "2025/01/14",
            "",
        ];
        for input in inputs {
            assert_eq!(parse_date(input), input.parse::<NaiveDate>(), "{input:?}");
        }
    }
}
