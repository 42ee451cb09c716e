//! Which field names are sensitive, and how their values are masked.
//!
//! A field name is split into lower-cased *segments* (`userEmail`, `user_email`,
//! `USER-EMAIL` and `user.email` are all `user · email`), and a configured name matches when
//! its segments appear consecutively, the last one optionally plural. Segments rather than
//! substrings keep `span`, `expand` and `japan` from matching `pan`, and `cardinality` from
//! matching `card`, while `customer_pan`, `x-api-key` and `refreshToken` do match.

/// How a sensitive field's value is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FieldKind {
    /// Personal data with no recognisable shape (an address, a birth date): fully masked, or a
    /// keyed-hash tag in hash mode.
    Identifier,
    Email,
    Phone,
    Card,
    Aadhaar,
    Pan,
    Gstin,
    Iban,
    /// A bank account number: the last four characters stay.
    Account,
    /// Passwords, tokens, keys, cookies, one-time codes: always fully `[REDACTED]`, never
    /// hashed (a hash of a low-entropy secret invites guessing). Highest precedence.
    Secret,
}

/// Built-in sensitive names. `config.log.redaction.extra_fields` adds more (as secrets).
pub(crate) const BUILTIN_FIELDS: &[(&str, FieldKind)] = &[
    ("password", FieldKind::Secret),
    ("passwd", FieldKind::Secret),
    ("pwd", FieldKind::Secret),
    ("passphrase", FieldKind::Secret),
    ("secret", FieldKind::Secret),
    ("token", FieldKind::Secret),
    ("api_key", FieldKind::Secret),
    ("apikey", FieldKind::Secret),
    ("authorization", FieldKind::Secret),
    ("cookie", FieldKind::Secret),
    ("otp", FieldKind::Secret),
    ("totp", FieldKind::Secret),
    ("refresh_token", FieldKind::Secret),
    ("access_token", FieldKind::Secret),
    ("private_key", FieldKind::Secret),
    ("signing_key", FieldKind::Secret),
    ("encryption_key", FieldKind::Secret),
    ("session_id", FieldKind::Secret),
    ("credential", FieldKind::Secret),
    ("cvv", FieldKind::Secret),
    ("cvc", FieldKind::Secret),
    ("pin", FieldKind::Secret),
    ("email", FieldKind::Email),
    ("phone", FieldKind::Phone),
    ("mobile", FieldKind::Phone),
    ("msisdn", FieldKind::Phone),
    ("telephone", FieldKind::Phone),
    ("card", FieldKind::Card),
    ("card_number", FieldKind::Card),
    ("aadhaar", FieldKind::Aadhaar),
    ("aadhar", FieldKind::Aadhaar),
    ("pan", FieldKind::Pan),
    ("gstin", FieldKind::Gstin),
    ("iban", FieldKind::Iban),
    ("bank_account", FieldKind::Account),
    ("account_number", FieldKind::Account),
    ("account_no", FieldKind::Account),
    ("address", FieldKind::Identifier),
    ("date_of_birth", FieldKind::Identifier),
    ("dob", FieldKind::Identifier),
];

/// Names whose numeric values are never personal data (amounts, sizes, timings). A digit run
/// under such a key is left alone even if it happens to pass Luhn or look like a mobile
/// number, so `amount_minor=9876543210` stays readable. Sensitive names win over these.
const NUMERIC_SURVIVORS: &[&str] = &[
    "amount",
    "total",
    "subtotal",
    "price",
    "cost",
    "tax",
    "fee",
    "balance",
    "qty",
    "quantity",
    "count",
    "latency",
    "duration",
    "elapsed",
    "size",
    "bytes",
    "len",
    "length",
    "status",
    "port",
    "version",
    "minor",
    "ms",
    "us",
    "ns",
    "secs",
    "timestamp",
    "epoch",
];

const MAX_SEGMENTS: usize = 24;

/// One configured name, split into lower-case segments.
#[derive(Debug, Clone)]
pub(crate) struct FieldName {
    pub(crate) segments: Vec<String>,
    pub(crate) kind: FieldKind,
}

/// The sensitive names a redactor knows.
#[derive(Debug, Clone)]
pub(crate) struct FieldRules {
    names: Vec<FieldName>,
}

impl FieldRules {
    pub(crate) fn new(extra: &[String]) -> Self {
        let mut names: Vec<FieldName> = BUILTIN_FIELDS
            .iter()
            .map(|(name, kind)| FieldName {
                segments: split_lower(name),
                kind: *kind,
            })
            .collect();
        for name in extra {
            let segments = split_lower(name);
            if !segments.is_empty() {
                names.push(FieldName {
                    segments,
                    kind: FieldKind::Secret,
                });
            }
        }
        Self { names }
    }

    pub(crate) fn names(&self) -> &[FieldName] {
        &self.names
    }

    /// The kind of a sensitive key, `None` if the key is not sensitive. Allocation-free.
    pub(crate) fn classify(&self, key: &str) -> Option<FieldKind> {
        let mut spans = [(0usize, 0usize); MAX_SEGMENTS];
        let n = segments(key, &mut spans);
        if n == 0 {
            return None;
        }
        let segs = &spans[..n];
        let mut best: Option<FieldKind> = None;
        for name in &self.names {
            if best.is_some_and(|b| b >= name.kind) {
                continue;
            }
            if contains_run(key, segs, &name.segments) {
                best = Some(name.kind);
            }
        }
        best
    }

    /// True if digit runs under `key` are never personal data (see [`NUMERIC_SURVIVORS`]).
    pub(crate) fn numeric_survivor(&self, key: &str) -> bool {
        if self.classify(key).is_some() {
            return false;
        }
        let mut spans = [(0usize, 0usize); MAX_SEGMENTS];
        let n = segments(key, &mut spans);
        spans[..n].iter().any(|&(s, e)| {
            key.get(s..e).is_some_and(|seg| {
                NUMERIC_SURVIVORS
                    .iter()
                    .any(|w| seg.eq_ignore_ascii_case(w))
            })
        })
    }
}

/// True if `name` appears as consecutive segments of `key` (the last may carry `s`/`es`).
fn contains_run(key: &str, segs: &[(usize, usize)], name: &[String]) -> bool {
    if name.is_empty() || name.len() > segs.len() {
        return false;
    }
    segs.windows(name.len()).any(|window| {
        window
            .iter()
            .zip(name)
            .enumerate()
            .all(|(i, (&(s, e), want))| {
                let Some(got) = key.get(s..e) else {
                    return false;
                };
                if got.eq_ignore_ascii_case(want) {
                    return true;
                }
                // Plurals on the last segment: `emails`, `addresses`, `tokens`.
                i + 1 == name.len()
                    && [&b"s"[..], &b"es"[..]].iter().any(|suffix| {
                        got.len() == want.len() + suffix.len()
                            && got.as_bytes()[..want.len()].eq_ignore_ascii_case(want.as_bytes())
                            && got.as_bytes()[want.len()..].eq_ignore_ascii_case(suffix)
                    })
            })
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Lower,
    Upper,
    Digit,
    Sep,
}

fn class(b: u8) -> Class {
    match b {
        b'a'..=b'z' | 0x80..=0xff => Class::Lower,
        b'A'..=b'Z' => Class::Upper,
        b'0'..=b'9' => Class::Digit,
        _ => Class::Sep,
    }
}

/// Splits `key` into segment byte ranges: at separators (anything not a letter or digit),
/// lower→upper (`userEmail`), the end of an upper-case run before a capitalised word
/// (`APIKey` → `API`, `Key`) and letter↔digit (`address1`). Returns how many were written.
pub(crate) fn segments(key: &str, out: &mut [(usize, usize); MAX_SEGMENTS]) -> usize {
    let b = key.as_bytes();
    let mut n = 0;
    let mut start: Option<usize> = None;
    for i in 0..b.len() {
        let c = class(b[i]);
        if c == Class::Sep {
            if let Some(s) = start.take() {
                if n == out.len() {
                    return n;
                }
                out[n] = (s, i);
                n += 1;
            }
            continue;
        }
        if let Some(s) = start
            && i > s
        {
            let prev = class(b[i - 1]);
            let next = b.get(i + 1).map(|&x| class(x));
            let boundary =
                matches!(
                    (prev, c),
                    (Class::Lower, Class::Upper)
                        | (Class::Digit, Class::Lower | Class::Upper)
                        | (Class::Lower | Class::Upper, Class::Digit)
                ) || (prev == Class::Upper && c == Class::Upper && next == Some(Class::Lower));
            if boundary {
                if n == out.len() {
                    return n;
                }
                out[n] = (s, i);
                n += 1;
                start = Some(i);
            }
        }
        if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start
        && n < out.len()
    {
        out[n] = (s, b.len());
        n += 1;
    }
    n
}

/// Segments of a configured name, lower-cased (configuration time only).
pub(crate) fn split_lower(name: &str) -> Vec<String> {
    let mut spans = [(0usize, 0usize); MAX_SEGMENTS];
    let n = segments(name, &mut spans);
    spans[..n]
        .iter()
        .filter_map(|&(s, e)| name.get(s..e))
        .map(str::to_ascii_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> FieldRules {
        FieldRules::new(&["salary".to_string()])
    }

    #[test]
    fn names_match_by_segment_in_any_case_style() {
        let r = rules();
        for (key, kind) in [
            ("password", FieldKind::Secret),
            ("PASSWORD", FieldKind::Secret),
            ("new_password", FieldKind::Secret),
            ("currentPassword", FieldKind::Secret),
            ("x-api-key", FieldKind::Secret),
            ("apiKey", FieldKind::Secret),
            ("APIKey", FieldKind::Secret),
            ("refreshToken", FieldKind::Secret),
            ("Set-Cookie", FieldKind::Secret),
            ("user.email", FieldKind::Email),
            ("emails", FieldKind::Email),
            ("customer_phone", FieldKind::Phone),
            ("company_pan", FieldKind::Pan),
            ("billing_addresses", FieldKind::Identifier),
            ("address1", FieldKind::Identifier),
            ("card_token", FieldKind::Secret),
            ("monthly_salary", FieldKind::Secret),
        ] {
            assert_eq!(r.classify(key), Some(kind), "{key}");
        }
    }

    #[test]
    fn substrings_that_are_not_segments_do_not_match() {
        let r = rules();
        for key in [
            "span",
            "expand",
            "japan",
            "cardinality",
            "spinner",
            "request_id",
            "route",
            "status",
            "latency_ms",
            "amount_minor",
            "tokenizer",
        ] {
            assert_eq!(r.classify(key), None, "{key}");
        }
    }

    #[test]
    fn amounts_and_timings_are_numeric_survivors_but_sensitive_names_win() {
        let r = rules();
        assert!(r.numeric_survivor("amount_minor"));
        assert!(r.numeric_survivor("totalAmount"));
        assert!(r.numeric_survivor("latency_ms"));
        assert!(!r.numeric_survivor("contact"));
        assert!(!r.numeric_survivor("phone_count"), "phone wins over count");
    }
}
