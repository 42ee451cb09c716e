//! Fields of invoices and trade documents, found in recognised text.
//!
//! Each field records its value, a confidence (0–1) and how it was found: `label` (the value
//! follows its label, e.g. `Invoice No: INV-42`), `pattern` (found by its shape alone, e.g. a
//! three-letter currency code anywhere), `engine` (an engine that reads fields itself) or
//! `reviewer` (a correction). A field's confidence is the OCR engine's mean confidence in the
//! words of its value times the method's weight (1.0 for a label, 0.75 for a shape), so a
//! clearly printed labelled value scores high and a guess scores low.
//!
//! Money amounts are integer minor units of the document's currency (`73500` for USD 735.00).
//! Apps register fields of their own document types ([`DocumentField`]) through the module
//! seam, e.g. a shipping bill's number.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::engine::{Line, Text};

/// A field an app adds to a document type, found by a pattern with one capture group (the
/// value), matched case-insensitively on each line; e.g. shipping bill number:
/// `shipping\s+bill\s+(?:no|number)\.?\s*[:#]?\s*([A-Z0-9/-]+)`.
#[derive(Debug, Clone)]
pub struct DocumentField {
    /// The document type it belongs to (`[a-z0-9_]`), e.g. `shipping_bill`.
    pub document_type: &'static str,
    /// The field's name in results, e.g. `shipping_bill_number`.
    pub name: &'static str,
    pub pattern: &'static str,
    /// Whether a document of this type without it needs review.
    pub required: bool,
}

/// How a value was found, and the weight that gives its confidence.
pub const METHOD_LABEL: &str = "label";
pub const METHOD_PATTERN: &str = "pattern";
pub const METHOD_ENGINE: &str = "engine";
pub const METHOD_REVIEWER: &str = "reviewer";

const PATTERN_WEIGHT: f64 = 0.75;

/// One extracted field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Field {
    /// A string, a date (`YYYY-MM-DD`), or an integer of minor units for amounts.
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    /// 0–1.
    pub confidence: f64,
    /// `label`, `pattern`, `engine` or `reviewer`.
    pub method: String,
    /// The text it was read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One line of an invoice's table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LineItem {
    pub description: String,
    /// A decimal string, e.g. `"2.5"`.
    pub quantity: String,
    pub unit_price_minor: i64,
    pub amount_minor: i64,
    #[serde(default = "one")]
    pub confidence: f64,
}

fn one() -> f64 {
    1.0
}

/// The fields and line items of one document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExtractedFields {
    pub fields: BTreeMap<String, Field>,
    pub line_items: Vec<LineItem>,
}

impl ExtractedFields {
    pub fn str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(|f| f.value.as_str())
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.fields.get(name).and_then(|f| f.value.as_i64())
    }
}

/// The fields every invoice or trade document is expected to carry; a missing one lowers
/// the overall confidence and is listed as an issue.
pub const CORE_FIELDS: [&str; 6] = [
    "invoice_number",
    "invoice_date",
    "seller",
    "buyer",
    "currency",
    "total_minor",
];

fn re(pattern: &str) -> Regex {
    // Built-in patterns are constants checked by the unit tests below.
    #[allow(clippy::expect_used)]
    Regex::new(pattern).expect("a built-in extraction pattern compiles")
}

const AMOUNT: &str = r"(-?\d{1,3}(?:[,.' ]\d{3})+(?:[.,]\d{1,3})?|-?\d+(?:[.,]\d{1,3})?)";
const DATE: &str = r"(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{1,2}\s+[A-Za-z]{3,9}\.?,?\s+\d{4}|[A-Za-z]{3,9}\.?\s+\d{1,2},?\s+\d{4})";

static INVOICE_NO: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(?:invoice|inv|bill)\s*(?:no\b\.?|number|num\b|#)\s*[:;#.]?\s*([A-Z0-9][A-Z0-9\-/._]{1,40})",
    )
});
static INVOICE_NO_SHAPE: LazyLock<Regex> =
    LazyLock::new(|| re(r"\b(INV[-/]?[0-9][A-Z0-9\-/]{2,30})\b"));
static DUE_DATE: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"(?i)\b(?:due\s+date|payment\s+due|due\s+by|due)\s*[:;.]?\s*{DATE}"
    ))
});
static INVOICE_DATE: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"(?i)\b(?:invoice\s+date|date\s+of\s+issue|issue\s+date|issued|dated|date)\s*[:;.]?\s*{DATE}"
    ))
});
static NOT_ISSUE_DATE: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\b(?:due|delivery|shipment|shipping|expiry|payment)\b"));
static ANY_DATE: LazyLock<Regex> = LazyLock::new(|| re(DATE));
static SELLER: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?i)^\W*(?:seller|supplier|vendor|exporter|shipper|sold\s+by|from)\s*[:;]\s*(.+)$")
});
static BUYER: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)^\W*(?:buyer|bill\s+to|billed\s+to|customer|importer|consignee|sold\s+to|to)\s*[:;]\s*(.+)$",
    )
});
static CURRENCY: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\bcurrency\s*[:;]?\s*([A-Za-z]{3})\b"));
static CODE: LazyLock<Regex> = LazyLock::new(|| re(r"\b([A-Z]{3})\b"));
static TOTAL: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"(?i)^\W*(?:grand\s+total|total\s+amount|total\s+due|amount\s+due|invoice\s+total|total)\b(?:\s*\([^)]*\))?\s*[:;]?\s*(?:[A-Z]{{3}}|[$€£₹¥])?\s*{AMOUNT}\s*(?:[A-Z]{{3}})?\W*$"
    ))
});
static SUBTOTAL: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"(?i)^\W*(?:sub\s*-?\s*total|net\s+amount|total\s+before\s+tax)\b\s*[:;]?\s*(?:[A-Z]{{3}}|[$€£₹¥])?\s*{AMOUNT}\s*(?:[A-Z]{{3}})?\W*$"
    ))
});
static TAX: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"(?i)^\W*(?:sales\s+tax|tax|vat|gst|igst|cgst|sgst)\b(?:\s*\(?\s*\d+(?:[.,]\d+)?\s*%\s*\)?)?\s*[:;]?\s*(?:[A-Z]{{3}}|[$€£₹¥])?\s*{AMOUNT}\s*(?:[A-Z]{{3}})?\W*$"
    ))
});
static ITEM: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"^\W*(.*?[A-Za-z].*?)[\s\W]+(\d+(?:[.,]\d+)?)\s+{AMOUNT}\s+{AMOUNT}\W*$"
    ))
});
static NOT_ITEM: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?i)^\W*(?:sub\s*-?\s*total|total|grand\s+total|tax|vat|gst|amount\s+due|balance)\b")
});

/// The currency symbols that name one currency.
fn currency_of_symbol(text: &str) -> Option<&'static str> {
    if text.contains('€') {
        Some("EUR")
    } else if text.contains('£') {
        Some("GBP")
    } else if text.contains('₹') {
        Some("INR")
    } else {
        None
    }
}

/// Parses an amount (`1,250.00`, `1.250,00`, `1 250.00`, `735`) into minor units.
pub fn parse_amount(raw: &str, digits: u32) -> Option<i64> {
    let raw = raw.trim();
    let negative = raw.starts_with('-');
    let body: String = raw
        .trim_start_matches('-')
        .chars()
        .filter(|c| !matches!(c, ' ' | '\''))
        .collect();
    let last_sep = body.rfind([',', '.']);
    let (int_part, frac_part) = match last_sep {
        Some(i) => {
            let frac = &body[i + 1..];
            let seps = body.matches([',', '.']).count();
            // One separator followed by exactly three digits is a thousands separator.
            if seps == 1 && frac.len() == 3 && digits != 3 {
                (body.replace([',', '.'], ""), String::new())
            } else {
                (body[..i].replace([',', '.'], ""), frac.to_string())
            }
        }
        None => (body.clone(), String::new()),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac_part.bytes().all(|b| b.is_ascii_digit()) || frac_part.len() > digits as usize + 1 {
        return None;
    }
    let scale = 10i64.checked_pow(digits)?;
    let units: i64 = int_part.parse::<i64>().ok()?.checked_mul(scale)?;
    let mut frac = frac_part;
    while frac.len() < digits as usize {
        frac.push('0');
    }
    // A rounding digit beyond the currency's precision rounds half up.
    let (kept, extra) = frac.split_at(digits as usize);
    let mut minor = if kept.is_empty() {
        0
    } else {
        kept.parse::<i64>().ok()?
    };
    if extra.chars().next().is_some_and(|c| c >= '5') {
        minor += 1;
    }
    let total = units.checked_add(minor)?;
    Some(if negative { -total } else { total })
}

/// Parses a date in the usual invoice forms into `YYYY-MM-DD`; `Err` keeps the text of a
/// date-shaped value that is not a real date (`2025-02-30`).
pub fn parse_date(raw: &str) -> Result<chrono::NaiveDate, String> {
    use chrono::NaiveDate;
    let raw = raw.trim().trim_end_matches(['.', ',']);
    let ymd = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d).ok_or(raw.to_string());
    if let Some((y, rest)) = raw.split_once('-')
        && y.len() == 4
    {
        let mut parts = rest.split('-');
        let m = parts.next().and_then(|m| m.parse().ok());
        let d = parts.next().and_then(|d| d.parse().ok());
        return match (y.parse(), m, d) {
            (Ok(y), Some(m), Some(d)) => ymd(y, m, d),
            _ => Err(raw.to_string()),
        };
    }
    let nums: Vec<&str> = raw.split(['/', '.', '-']).collect();
    if nums.len() == 3 && nums.iter().all(|n| n.bytes().all(|b| b.is_ascii_digit())) {
        let a: u32 = nums[0].parse().map_err(|_| raw.to_string())?;
        let b: u32 = nums[1].parse().map_err(|_| raw.to_string())?;
        let mut y: i32 = nums[2].parse().map_err(|_| raw.to_string())?;
        if nums[2].len() == 2 {
            y += 2000;
        }
        // Day first (the international order); month first only when the day cannot be.
        return ymd(y, b, a).or_else(|_| ymd(y, a, b));
    }
    for format in ["%d %B %Y", "%d %b %Y", "%B %d %Y", "%b %d %Y"] {
        let cleaned = raw.replace([',', '.'], "");
        let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Ok(d) = NaiveDate::parse_from_str(&cleaned, format) {
            return Ok(d);
        }
    }
    Err(raw.to_string())
}

/// Trims OCR debris (quotes, tildes, pipes) around a free-text value.
fn clean_text(s: &str) -> String {
    s.trim_matches(|c: char| !c.is_alphanumeric() && !matches!(c, ')' | '.' | '&'))
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A match's value, confidence and source line.
struct Found {
    value: String,
    confidence: f64,
    line: usize,
}

fn find_labelled(lines: &[Line], pattern: &Regex, skip: Option<&Regex>) -> Option<Found> {
    lines.iter().enumerate().find_map(|(i, line)| {
        let caps = pattern.captures(&line.text)?;
        let m = caps.get(1)?;
        // `skip` vetoes a match whose label side says it is something else ("Due Date").
        // Match boundaries are char boundaries, so the slice cannot split a character.
        if skip.is_some_and(|s| s.is_match(&line.text[..m.start()])) {
            return None;
        }
        Some(Found {
            value: m.as_str().to_string(),
            confidence: line.confidence_of(m.start(), m.end()),
            line: i,
        })
    })
}

fn field(value: serde_json::Value, confidence: f64, method: &str, source: &Line) -> Field {
    Field {
        value,
        confidence: (confidence * 1000.0).round() / 1000.0,
        method: method.to_string(),
        source: Some(source.text.chars().take(200).collect()),
    }
}

/// Finds the invoice fields and line items in recognised text, plus the extra fields
/// registered for `document_type`.
pub fn parse(text: &Text, extra: &[(String, Regex)]) -> ExtractedFields {
    let lines = &text.lines;
    let mut out = ExtractedFields::default();
    let put = |out: &mut ExtractedFields, name: &str, f: Field| {
        out.fields.insert(name.to_string(), f);
    };

    // Invoice number: after its label, else by its shape.
    if let Some(f) = find_labelled(lines, &INVOICE_NO, None)
        .filter(|f| f.value.chars().any(|c| c.is_ascii_digit()))
    {
        let value = f.value.trim_end_matches(['.', ',', ';']).to_string();
        put(
            &mut out,
            "invoice_number",
            field(value.into(), f.confidence, METHOD_LABEL, &lines[f.line]),
        );
    } else if let Some(f) = find_labelled(lines, &INVOICE_NO_SHAPE, None) {
        put(
            &mut out,
            "invoice_number",
            field(
                f.value.into(),
                f.confidence * PATTERN_WEIGHT,
                METHOD_PATTERN,
                &lines[f.line],
            ),
        );
    }

    // Dates: the due date first, so "Due Date: …" is not taken for the issue date.
    for (name, pattern, skip) in [
        ("due_date", &*DUE_DATE, None),
        ("invoice_date", &*INVOICE_DATE, Some(&*NOT_ISSUE_DATE)),
    ] {
        if let Some(f) = find_labelled(lines, pattern, skip) {
            let value = match parse_date(&f.value) {
                Ok(d) => d.format("%Y-%m-%d").to_string(),
                Err(raw) => raw,
            };
            put(
                &mut out,
                name,
                field(value.into(), f.confidence, METHOD_LABEL, &lines[f.line]),
            );
        }
    }
    if !out.fields.contains_key("invoice_date")
        && let Some(f) = find_labelled(lines, &ANY_DATE, Some(&NOT_ISSUE_DATE))
        && let Ok(d) = parse_date(&f.value)
    {
        put(
            &mut out,
            "invoice_date",
            field(
                d.format("%Y-%m-%d").to_string().into(),
                f.confidence * PATTERN_WEIGHT,
                METHOD_PATTERN,
                &lines[f.line],
            ),
        );
    }

    for (name, pattern) in [("seller", &*SELLER), ("buyer", &*BUYER)] {
        if let Some(f) = find_labelled(lines, pattern, None) {
            let value = clean_text(&f.value);
            if !value.is_empty() {
                put(
                    &mut out,
                    name,
                    field(value.into(), f.confidence, METHOD_LABEL, &lines[f.line]),
                );
            }
        }
    }

    // Currency: its label, else an ISO code or an unambiguous symbol anywhere.
    if let Some(f) = find_labelled(lines, &CURRENCY, None) {
        put(
            &mut out,
            "currency",
            field(
                f.value.to_ascii_uppercase().into(),
                f.confidence,
                METHOD_LABEL,
                &lines[f.line],
            ),
        );
    } else if let Some((line, code, conf)) = lines.iter().find_map(|l| {
        CODE.captures_iter(&l.text).find_map(|c| {
            let m = c.get(1)?;
            let code = crate::money::parse_currency(m.as_str())?;
            Some((l, code, l.confidence_of(m.start(), m.end())))
        })
    }) {
        put(
            &mut out,
            "currency",
            field(code.into(), conf * PATTERN_WEIGHT, METHOD_PATTERN, line),
        );
    } else if let Some(line) = lines.iter().find(|l| currency_of_symbol(&l.text).is_some()) {
        let code = currency_of_symbol(&line.text).unwrap_or("USD");
        put(
            &mut out,
            "currency",
            field(code.into(), 0.9 * PATTERN_WEIGHT, METHOD_PATTERN, line),
        );
    }
    let digits = out
        .str("currency")
        .and_then(crate::money::parse_currency)
        .map_or(2, crate::money::minor_digits);

    // Totals, subtotal and taxes (several tax lines add up: CGST + SGST).
    let amount_in = |pattern: &Regex| -> Vec<(i64, f64, usize)> {
        lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let c = pattern.captures(&l.text)?;
                let m = c.get(1)?;
                let v = parse_amount(m.as_str(), digits)?;
                Some((v, l.confidence_of(m.start(), m.end()), i))
            })
            .collect()
    };
    if let Some(&(v, conf, i)) = amount_in(&TOTAL).last() {
        put(
            &mut out,
            "total_minor",
            field(v.into(), conf, METHOD_LABEL, &lines[i]),
        );
    }
    if let Some(&(v, conf, i)) = amount_in(&SUBTOTAL).last() {
        put(
            &mut out,
            "subtotal_minor",
            field(v.into(), conf, METHOD_LABEL, &lines[i]),
        );
    }
    let taxes = amount_in(&TAX);
    if !taxes.is_empty() {
        let sum: i64 = taxes.iter().map(|t| t.0).sum();
        let conf = taxes.iter().map(|t| t.1).fold(1.0, f64::min);
        put(
            &mut out,
            "tax_minor",
            field(sum.into(), conf, METHOD_LABEL, &lines[taxes[0].2]),
        );
    }

    // Line items: description, quantity, unit price, amount on one line.
    for line in lines {
        if NOT_ITEM.is_match(&line.text) {
            continue;
        }
        let Some(c) = ITEM.captures(&line.text) else {
            continue;
        };
        let (Some(d), Some(q), Some(u), Some(a)) = (c.get(1), c.get(2), c.get(3), c.get(4)) else {
            continue;
        };
        let (Some(unit), Some(amount)) = (
            parse_amount(u.as_str(), digits),
            parse_amount(a.as_str(), digits),
        ) else {
            continue;
        };
        let description = clean_text(d.as_str());
        if description.is_empty() {
            continue;
        }
        out.line_items.push(LineItem {
            description,
            quantity: q.as_str().replace(',', "."),
            unit_price_minor: unit,
            amount_minor: amount,
            confidence: (line.confidence_of(0, line.text.len()) * 1000.0).round() / 1000.0,
        });
    }

    for (name, pattern) in extra {
        if let Some(f) = find_labelled(lines, pattern, None) {
            put(
                &mut out,
                name,
                field(
                    clean_text(&f.value).into(),
                    f.confidence,
                    METHOD_LABEL,
                    &lines[f.line],
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Text {
        Text {
            pages: 1,
            lines: s.lines().map(|l| Line::exact(1, l)).collect(),
        }
    }

    #[test]
    fn amounts_in_common_notations() {
        assert_eq!(parse_amount("735.00", 2), Some(73500));
        assert_eq!(parse_amount("1,250.50", 2), Some(125050));
        assert_eq!(parse_amount("1.250,50", 2), Some(125050));
        assert_eq!(parse_amount("1 250.50", 2), Some(125050));
        assert_eq!(parse_amount("1,250", 2), Some(125000));
        assert_eq!(parse_amount("12", 0), Some(12));
        assert_eq!(parse_amount("1.250", 3), Some(1250));
        assert_eq!(parse_amount("-35.00", 2), Some(-3500));
        assert_eq!(parse_amount("abc", 2), None);
    }

    #[test]
    fn dates_in_common_notations() {
        let d = |s| parse_date(s).map(|d| d.to_string());
        assert_eq!(d("2025-03-14"), Ok("2025-03-14".into()));
        assert_eq!(d("14/03/2025"), Ok("2025-03-14".into()));
        assert_eq!(d("03/14/2025"), Ok("2025-03-14".into()));
        assert_eq!(d("14 March 2025"), Ok("2025-03-14".into()));
        assert_eq!(d("Mar 14, 2025"), Ok("2025-03-14".into()));
        assert!(d("2025-02-30").is_err());
    }

    #[test]
    fn an_invoice_reads_into_fields() {
        let t = text(
            "ACME Export Trading LLC\n\
             Invoice No: INV-2025-0042\n\
             Invoice Date: 14/03/2025\n\
             Due Date: 2025-04-13\n\
             Seller: ACME Export Trading LLC\n\
             Buyer: Blue Harbor Imports Ltd\n\
             Currency: USD\n\
             Description            Qty   Unit Price      Amount\n\
             Steel bolts M8         100         2.50      250.00\n\
             Copper wire 2mm         20        15.00      300.00\n\
             Subtotal: 550.00\n\
             Tax (5%): 27.50\n\
             Total: 577.50",
        );
        let f = parse(&t, &[]);
        assert_eq!(f.str("invoice_number"), Some("INV-2025-0042"));
        assert_eq!(f.str("invoice_date"), Some("2025-03-14"));
        assert_eq!(f.str("due_date"), Some("2025-04-13"));
        assert_eq!(f.str("seller"), Some("ACME Export Trading LLC"));
        assert_eq!(f.str("buyer"), Some("Blue Harbor Imports Ltd"));
        assert_eq!(f.str("currency"), Some("USD"));
        assert_eq!(f.int("total_minor"), Some(57750));
        assert_eq!(f.int("subtotal_minor"), Some(55000));
        assert_eq!(f.int("tax_minor"), Some(2750));
        assert_eq!(f.line_items.len(), 2);
        assert_eq!(f.line_items[0].description, "Steel bolts M8");
        assert_eq!(f.line_items[0].quantity, "100");
        assert_eq!(f.line_items[0].unit_price_minor, 250);
        assert_eq!(f.line_items[1].amount_minor, 30000);
        assert!(f.fields.values().all(|f| f.method == METHOD_LABEL));
    }

    #[test]
    fn multibyte_text_never_splits_a_character() {
        let t =
            text("Fälligkeitsdatum Due: 2025-04-13 €\nتاريخ Date: 2025-03-14\nTotal: € 1.234,50");
        let f = parse(&t, &[]);
        assert_eq!(f.str("due_date"), Some("2025-04-13"));
        assert_eq!(f.str("invoice_date"), Some("2025-03-14"));
        assert_eq!(f.int("total_minor"), Some(123450));
        assert_eq!(f.str("currency"), Some("EUR"));
    }

    #[test]
    fn registered_fields_are_found_by_their_pattern() {
        let t = text("Shipping Bill No: SB/4471/2025\nPort Code: INNSA1");
        let extra = vec![
            (
                "shipping_bill_number".to_string(),
                re(r"(?i)shipping\s+bill\s+no\.?\s*[:#]?\s*([A-Z0-9/-]+)"),
            ),
            (
                "port_code".to_string(),
                re(r"(?i)port\s+code\s*:\s*([A-Z0-9]{5,6})"),
            ),
        ];
        let f = parse(&t, &extra);
        assert_eq!(f.str("shipping_bill_number"), Some("SB/4471/2025"));
        assert_eq!(f.str("port_code"), Some("INNSA1"));
    }

    #[test]
    fn every_built_in_pattern_compiles() {
        for r in [
            &*INVOICE_NO,
            &*INVOICE_NO_SHAPE,
            &*DUE_DATE,
            &*INVOICE_DATE,
            &*NOT_ISSUE_DATE,
            &*ANY_DATE,
            &*SELLER,
            &*BUYER,
            &*CURRENCY,
            &*CODE,
            &*TOTAL,
            &*SUBTOTAL,
            &*TAX,
            &*ITEM,
            &*NOT_ITEM,
        ] {
            assert!(!r.as_str().is_empty());
        }
    }
}
