//! Checks an extraction's fields make sense together, and scores it.
//!
//! Issues: a core field missing, a date that is not a date (or a due date before the issue
//! date), a currency that is not ISO 4217, a negative amount, a line item whose quantity ×
//! unit price is not its amount, line items that do not add up to the subtotal (or to the
//! total, less tax), a subtotal plus tax that is not the total. Sums are compared within
//! rounding: one minor unit per line item.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::fields::{CORE_FIELDS, ExtractedFields, LineItem};

/// One problem found in an extraction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Issue {
    /// `missing_field`, `invalid_date`, `due_before_issue`, `unknown_currency`,
    /// `negative_amount`, `line_item_amount_mismatch`, `line_items_sum_mismatch`,
    /// `totals_mismatch`.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

fn issue(code: &str, field: Option<&str>, message: impl Into<String>) -> Issue {
    Issue {
        code: code.into(),
        field: field.map(str::to_string),
        message: message.into(),
    }
}

/// Quantity × unit price in minor units, rounded half up; `None` for a quantity that is not
/// a decimal number.
fn line_total(item: &LineItem) -> Option<i64> {
    let q = item.quantity.trim();
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mantissa: i128 = digits.parse().ok()?;
    let scale = 10i128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let product = mantissa.checked_mul(i128::from(item.unit_price_minor))?;
    let rounded = (product * 2 + scale) / (2 * scale);
    i64::try_from(rounded).ok()
}

/// Every issue with the fields; `required` are the document type's own required fields.
pub fn validate(fields: &ExtractedFields, required: &[&str]) -> Vec<Issue> {
    let mut issues = Vec::new();
    for name in CORE_FIELDS.iter().chain(required) {
        if !fields.fields.contains_key(*name) {
            issues.push(issue(
                "missing_field",
                Some(name),
                format!("{name} was not found"),
            ));
        }
    }
    let mut dates = Vec::new();
    for name in ["invoice_date", "due_date"] {
        if let Some(v) = fields.fields.get(name) {
            match v
                .value
                .as_str()
                .and_then(|s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
            {
                Some(d) => dates.push((name, d)),
                None => issues.push(issue(
                    "invalid_date",
                    Some(name),
                    format!("{name} is not a valid date: {}", v.value),
                )),
            }
        }
    }
    if let [("invoice_date", issued), ("due_date", due)] = dates.as_slice()
        && due < issued
    {
        issues.push(issue(
            "due_before_issue",
            Some("due_date"),
            "the due date is before the invoice date",
        ));
    }
    if let Some(c) = fields.fields.get("currency") {
        let known = c
            .value
            .as_str()
            .and_then(crate::money::parse_currency)
            .is_some();
        if !known {
            issues.push(issue(
                "unknown_currency",
                Some("currency"),
                format!("{} is not an ISO 4217 currency code", c.value),
            ));
        }
    }
    for name in ["total_minor", "subtotal_minor", "tax_minor"] {
        if let Some(v) = fields.fields.get(name) {
            match v.value.as_i64() {
                Some(n) if n < 0 => issues.push(issue(
                    "negative_amount",
                    Some(name),
                    format!("{name} is negative"),
                )),
                Some(_) => {}
                None => issues.push(issue(
                    "invalid_amount",
                    Some(name),
                    format!("{name} must be an integer of minor units"),
                )),
            }
        }
    }
    for (i, item) in fields.line_items.iter().enumerate() {
        let field = format!("line_items[{i}]");
        if item.amount_minor < 0 || item.unit_price_minor < 0 || item.quantity.starts_with('-') {
            issues.push(issue(
                "negative_amount",
                Some(&field),
                "a line item has a negative quantity or amount",
            ));
        }
        match line_total(item) {
            Some(t) if (t - item.amount_minor).abs() <= 1 => {}
            _ => issues.push(issue(
                "line_item_amount_mismatch",
                Some(&field),
                format!(
                    "quantity {} × unit price {} is not the amount {}",
                    item.quantity, item.unit_price_minor, item.amount_minor
                ),
            )),
        }
    }
    let total = fields.int("total_minor");
    let subtotal = fields.int("subtotal_minor");
    let tax = fields.int("tax_minor").unwrap_or(0);
    if !fields.line_items.is_empty() {
        let sum: i64 = fields.line_items.iter().map(|i| i.amount_minor).sum();
        let tolerance = i64::try_from(fields.line_items.len()).unwrap_or(i64::MAX);
        let target = subtotal.or(total.map(|t| t - tax));
        if let Some(target) = target
            && (sum - target).abs() > tolerance
        {
            issues.push(issue(
                "line_items_sum_mismatch",
                Some("line_items"),
                format!("the line items add up to {sum}, not {target}"),
            ));
        }
    }
    if let (Some(total), Some(subtotal)) = (total, subtotal)
        && (subtotal + tax - total).abs() > 1
    {
        issues.push(issue(
            "totals_mismatch",
            Some("total_minor"),
            format!("subtotal {subtotal} + tax {tax} is not the total {total}"),
        ));
    }
    issues
}

/// The overall confidence: the mean over the core and required fields, a missing one
/// counting 0, lowered by the line items' own confidence when there are any.
pub fn overall_confidence(fields: &ExtractedFields, required: &[&str]) -> f64 {
    let names: Vec<&str> = CORE_FIELDS
        .iter()
        .copied()
        .chain(required.iter().copied())
        .collect();
    let sum: f64 = names
        .iter()
        .map(|n| fields.fields.get(*n).map_or(0.0, |f| f.confidence))
        .sum();
    let mut overall = sum / names.len() as f64;
    if !fields.line_items.is_empty() {
        let items = fields.line_items.iter().map(|i| i.confidence).sum::<f64>()
            / fields.line_items.len() as f64;
        overall = overall.min((overall + items) / 2.0);
    }
    (overall.clamp(0.0, 1.0) * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::super::fields::Field;
    use super::*;

    fn f(v: serde_json::Value) -> Field {
        Field {
            value: v,
            confidence: 1.0,
            method: "label".into(),
            source: None,
        }
    }

    fn invoice() -> ExtractedFields {
        let mut x = ExtractedFields::default();
        for (k, v) in [
            ("invoice_number", serde_json::json!("INV-1")),
            ("invoice_date", serde_json::json!("2025-03-14")),
            ("seller", serde_json::json!("A")),
            ("buyer", serde_json::json!("B")),
            ("currency", serde_json::json!("USD")),
            ("subtotal_minor", serde_json::json!(55000)),
            ("tax_minor", serde_json::json!(2750)),
            ("total_minor", serde_json::json!(57750)),
        ] {
            x.fields.insert(k.into(), f(v));
        }
        x.line_items = vec![
            LineItem {
                description: "bolts".into(),
                quantity: "100".into(),
                unit_price_minor: 250,
                amount_minor: 25000,
                confidence: 1.0,
            },
            LineItem {
                description: "wire".into(),
                quantity: "2.5".into(),
                unit_price_minor: 12000,
                amount_minor: 30000,
                confidence: 1.0,
            },
        ];
        x
    }

    #[test]
    fn a_consistent_invoice_has_no_issues() {
        let x = invoice();
        assert_eq!(validate(&x, &[]), vec![]);
        assert_eq!(overall_confidence(&x, &[]), 1.0);
    }

    #[test]
    fn sums_dates_currency_and_signs_are_checked() {
        let mut x = invoice();
        x.line_items[1].amount_minor = 31000;
        x.fields
            .insert("currency".into(), f(serde_json::json!("XYZ")));
        x.fields
            .insert("due_date".into(), f(serde_json::json!("2025-02-30")));
        x.fields
            .insert("tax_minor".into(), f(serde_json::json!(-5)));
        let codes: Vec<String> = validate(&x, &[]).into_iter().map(|i| i.code).collect();
        for code in [
            "line_item_amount_mismatch",
            "line_items_sum_mismatch",
            "unknown_currency",
            "invalid_date",
            "negative_amount",
            "totals_mismatch",
        ] {
            assert!(codes.iter().any(|c| c == code), "{code} in {codes:?}");
        }
        x.fields.remove("seller");
        assert!(overall_confidence(&x, &[]) < 0.85);
    }
}
