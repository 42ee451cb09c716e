//! `vision_llm`: the configured LLM reads the page images and returns the fields itself.
//!
//! The request goes through the kernel's LLM client, so it is cached per organization (the
//! same document asked twice costs one call), retried once when the answer does not match the
//! schema, and guarded by the `llm.*` circuit breaker. Amounts come back as decimal strings and
//! are converted to minor units of the document's currency here (never floats); each field
//! carries the model's own confidence. PDFs are rasterised to page images first.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::engine::{Engine, EngineError, EngineInput, EngineOutput, Tools, page_images};
use super::fields::{ExtractedFields, Field, LineItem, parse_amount};
use crate::integrations::{Integrations, LlmError, LlmRequest};
use crate::store::Db;

const SYSTEM: &str = "You read trade documents (invoices, packing lists, shipping bills). \
Answer with JSON only, matching the schema. Copy values exactly as printed; use null for a value \
that is not on the document. Dates as YYYY-MM-DD. Amounts as decimal strings without thousands \
separators or currency symbols (\"1234.50\"). currency is the ISO 4217 code. For each field give \
your confidence from 0 to 1 in `confidence`.";

/// The LLM engine.
pub struct VisionLlm {
    pub db: Db,
    pub integrations: Arc<Integrations>,
    pub tools: Tools,
}

impl std::fmt::Debug for VisionLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionLlm").finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    invoice_number: Option<String>,
    invoice_date: Option<String>,
    due_date: Option<String>,
    seller: Option<String>,
    buyer: Option<String>,
    currency: Option<String>,
    subtotal: Option<String>,
    tax: Option<String>,
    total: Option<String>,
    #[serde(default)]
    line_items: Vec<AnswerItem>,
    #[serde(default)]
    confidence: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
struct AnswerItem {
    description: String,
    quantity: Option<String>,
    unit_price: Option<String>,
    amount: String,
}

fn schema() -> Value {
    let text = json!({ "type": ["string", "null"] });
    json!({
        "type": "object",
        "required": ["invoice_number", "currency", "total", "line_items", "confidence"],
        "properties": {
            "invoice_number": text, "invoice_date": text, "due_date": text,
            "seller": text, "buyer": text, "currency": text,
            "subtotal": text, "tax": text, "total": text,
            "line_items": { "type": "array", "items": {
                "type": "object",
                "required": ["description", "amount"],
                "properties": {
                    "description": { "type": "string" },
                    "quantity": text, "unit_price": text,
                    "amount": { "type": "string" }
                }
            }},
            "confidence": { "type": "object" }
        }
    })
}

fn mime(path: &std::path::Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        _ => "image/png",
    }
}

impl Answer {
    /// Fields with the model's confidences; amounts in minor units of the currency.
    fn into_fields(self) -> ExtractedFields {
        let conf = |name: &str| {
            self.confidence
                .get(name)
                .copied()
                .unwrap_or(0.8)
                .clamp(0.0, 1.0)
        };
        let currency = self
            .currency
            .as_deref()
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| !c.is_empty());
        let digits = crate::money::minor_digits(currency.as_deref().unwrap_or("USD"));
        let mut fields = BTreeMap::new();
        let mut put = |name: &str, value: Value, confidence: f64| {
            fields.insert(
                name.to_string(),
                Field {
                    value,
                    confidence,
                    method: "engine".into(),
                    source: None,
                },
            );
        };
        for (name, value) in [
            ("invoice_number", &self.invoice_number),
            ("invoice_date", &self.invoice_date),
            ("due_date", &self.due_date),
            ("seller", &self.seller),
            ("buyer", &self.buyer),
        ] {
            if let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                put(name, json!(v), conf(name));
            }
        }
        if let Some(c) = &currency {
            put("currency", json!(c), conf("currency"));
        }
        for (name, key, value) in [
            ("subtotal_minor", "subtotal", &self.subtotal),
            ("tax_minor", "tax", &self.tax),
            ("total_minor", "total", &self.total),
        ] {
            // An amount that does not parse is left out (and so listed as missing), never guessed.
            if let Some(minor) = value.as_deref().and_then(|v| parse_amount(v, digits)) {
                put(name, json!(minor), conf(key));
            }
        }
        let items_conf = conf("line_items");
        let line_items = self
            .line_items
            .into_iter()
            .filter_map(|i| {
                Some(LineItem {
                    description: i.description.trim().to_string(),
                    quantity: i.quantity.unwrap_or_else(|| "1".into()),
                    unit_price_minor: i
                        .unit_price
                        .as_deref()
                        .and_then(|p| parse_amount(p, digits))
                        .unwrap_or(0),
                    amount_minor: parse_amount(&i.amount, digits)?,
                    confidence: items_conf,
                })
            })
            .collect();
        ExtractedFields { fields, line_items }
    }
}

#[async_trait::async_trait]
impl Engine for VisionLlm {
    fn name(&self) -> &'static str {
        "vision_llm"
    }

    fn available(&self) -> Result<(), String> {
        match self.integrations.llm.describe() {
            Some(_) => Ok(()),
            None => Err("llm.api_key is not set".into()),
        }
    }

    async fn extract(&self, input: &EngineInput<'_>) -> Result<EngineOutput, EngineError> {
        let Some(scope) = input.scope else {
            return Err(EngineError::NotApplicable(
                "the LLM reads documents of an organization only".into(),
            ));
        };
        let pages = page_images(&self.tools, input, false).await?;
        let mut request = LlmRequest::new(format!(
            "Extract the fields of this {} ({} page(s)).",
            input.document_type.replace('_', " "),
            pages.count
        ))
        .system(SYSTEM);
        for image in &pages.images {
            let bytes = tokio::fs::read(image)
                .await
                .map_err(|e| EngineError::Failed(e.into()))?;
            request = request.image(bytes, mime(image));
        }
        let answer: Answer = match self
            .integrations
            .llm
            .complete_json(&self.db, scope, request, &schema())
            .await
        {
            Ok((answer, _)) => answer,
            // Not configured: the next engine may read it.
            Err(LlmError::Disabled) => {
                return Err(EngineError::NotApplicable(
                    "the LLM is not configured".into(),
                ));
            }
            Err(e) => return Err(EngineError::Failed(anyhow::anyhow!("{e}"))),
        };
        Ok(EngineOutput::Fields {
            pages: pages.count,
            fields: answer.into_fields(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_become_minor_units_of_the_documents_currency() {
        let answer: Answer = serde_json::from_value(json!({
            "invoice_number": "INV-7", "invoice_date": "2026-03-01", "seller": "Acme",
            "buyer": "Globex", "currency": "kwd", "subtotal": "100.500", "tax": null,
            "total": "100.500",
            "line_items": [{"description": "Widget", "quantity": "2", "unit_price": "50.250", "amount": "100.500"}],
            "confidence": {"invoice_number": 0.97, "total": 0.91}
        }))
        .expect("answer");
        let f = answer.into_fields();
        assert_eq!(f.str("currency"), Some("KWD"));
        assert_eq!(
            f.int("total_minor"),
            Some(100_500),
            "KWD has three decimals"
        );
        assert_eq!(f.line_items[0].unit_price_minor, 50_250);
        assert_eq!(f.fields["invoice_number"].confidence, 0.97);
        assert_eq!(
            f.fields["seller"].confidence, 0.8,
            "no confidence given: a cautious default"
        );
        assert!(!f.fields.contains_key("tax_minor"), "null stays missing");
        assert_eq!(f.fields["total_minor"].method, "engine");
    }
}
