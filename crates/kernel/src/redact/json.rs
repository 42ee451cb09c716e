//! Redaction of JSON: a production log line (rewritten in place, byte for byte except the
//! masked values, keys kept in their order) and a `serde_json::Value` (walked and mutated).
//!
//! The line walker is a small lexer rather than a parse into `Value` and back: it keeps the
//! formatter's key order and number formatting, allocates only when something is masked, and
//! knows which strings are keys, so a sensitive key's value is replaced whatever its type
//! while other values only go through the text scanner. Booleans and `null` are left alone
//! under any key: they cannot carry an identifier.
//!
//! It only looks closely at what the scanner flagged: the candidate positions of the whole
//! line are found in one pass first, and a key is classified, or a string scanned, only if it
//! overlaps one. Strings cannot hide a candidate from that pass (no pattern crosses a quote,
//! and the formatter escapes only quotes, backslashes and control characters), so the rest
//! of a line costs nothing but lexing.

use std::borrow::Cow;
use std::ops::Range;

use serde_json::Value;

use super::fields::FieldKind;
use super::scan::Edits;
use super::{Engine, REDACTED};

/// Deeper nesting than this is not a log line: the walker gives up and the caller falls back
/// to scanning the line as text.
const MAX_DEPTH: usize = 64;

struct Malformed;

struct Walker<'e, 't> {
    engine: &'e Engine,
    src: &'t str,
    b: &'t [u8],
    pos: usize,
    edits: Edits,
    /// Candidate ranges from the scanner, in order, and the first one not yet passed.
    candidates: Vec<Range<usize>>,
    cursor: usize,
}

impl Engine {
    /// Redacts one JSON document (a log line) whose candidate ranges are `candidates`.
    /// `None` if `line` is not well-formed JSON.
    pub(crate) fn redact_json_document<'t>(
        &self,
        line: &'t str,
        candidates: Vec<Range<usize>>,
    ) -> Option<Cow<'t, str>> {
        let mut w = Walker {
            engine: self,
            src: line,
            b: line.as_bytes(),
            pos: 0,
            edits: Edits::default(),
            candidates,
            cursor: 0,
        };
        w.value(None, 0).ok()?;
        w.skip_ws();
        if w.pos != w.b.len() {
            return None;
        }
        Some(w.edits.apply(line))
    }

    /// Redacts a JSON value in place (structured payloads, audit details).
    pub(crate) fn redact_json_value(&self, value: &mut Value, key: Option<&str>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    match self.fields.classify(k) {
                        Some(kind) => self.mask_json_value(kind, v),
                        None => self.redact_json_value(v, Some(k)),
                    }
                }
            }
            Value::Array(items) => {
                for v in items {
                    self.redact_json_value(v, key);
                }
            }
            Value::String(s) => {
                if let Cow::Owned(new) = self.redact_text(s, key) {
                    *s = new;
                }
            }
            Value::Number(n) => {
                if let Some(mask) = self.mask_number(&n.to_string(), key) {
                    *value = Value::String(mask);
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn mask_json_value(&self, kind: FieldKind, value: &mut Value) {
        let replacement = match value {
            Value::Bool(_) | Value::Null => return,
            Value::String(s) if s.is_empty() => return,
            Value::String(s) => self.mask_field(kind, s),
            Value::Number(n) => self.mask_field(kind, &n.to_string()),
            Value::Object(_) | Value::Array(_) => REDACTED.to_string(),
        };
        *value = Value::String(replacement);
    }
}

impl<'t> Walker<'_, 't> {
    /// True if `start..end` overlaps a candidate. Calls come in increasing position order.
    fn flagged(&mut self, start: usize, end: usize) -> bool {
        while self
            .candidates
            .get(self.cursor)
            .is_some_and(|c| c.end <= start)
        {
            self.cursor += 1;
        }
        self.candidates
            .get(self.cursor)
            .is_some_and(|c| c.start < end)
    }

    fn skip_ws(&mut self) {
        while self.pos < self.b.len() && matches!(self.b[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), Malformed> {
        self.skip_ws();
        if self.b.get(self.pos) == Some(&c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn value(&mut self, key: Option<&str>, depth: usize) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        self.skip_ws();
        match self.b.get(self.pos).copied().ok_or(Malformed)? {
            b'{' => self.object(depth),
            b'[' => {
                self.pos += 1;
                self.skip_ws();
                if self.b.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.value(key, depth + 1)?;
                    self.skip_ws();
                    match self.b.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(Malformed),
                    }
                }
            }
            b'"' => {
                let (start, end, escaped) = self.string()?;
                self.on_string(key, start, end, escaped)
            }
            b'-' | b'0'..=b'9' => {
                let (start, end) = self.number();
                if self.flagged(start, end)
                    && let Some(mask) = self.engine.mask_number(&self.src[start..end], key)
                {
                    self.edits.push(start..end, quoted(&mask));
                }
                Ok(())
            }
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => Err(Malformed),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), Malformed> {
        self.pos += 1;
        self.skip_ws();
        if self.b.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.b.get(self.pos) != Some(&b'"') {
                return Err(Malformed);
            }
            let (ks, ke, kesc) = self.string()?;
            let key: Cow<'t, str> = if kesc {
                Cow::Owned(decode(self.src, ks, ke)?)
            } else {
                Cow::Borrowed(&self.src[ks..ke])
            };
            let sensitive = if self.flagged(ks, ke) {
                self.engine.fields.classify(&key)
            } else {
                None
            };
            self.expect(b':')?;
            self.skip_ws();
            match sensitive {
                Some(kind) => {
                    let start = self.pos;
                    self.skip_value(depth + 1)?;
                    self.on_sensitive(kind, start, self.pos)?;
                }
                None => self.value(Some(&key), depth + 1)?,
            }
            self.skip_ws();
            match self.b.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Malformed),
            }
        }
    }

    /// Reads a string starting at its opening quote: (content start, content end, has
    /// escapes). Leaves `pos` after the closing quote.
    fn string(&mut self) -> Result<(usize, usize, bool), Malformed> {
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        while i < self.b.len() {
            match self.b[i] {
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                b'"' => {
                    self.pos = i + 1;
                    return Ok((start, i, escaped));
                }
                _ => i += 1,
            }
        }
        Err(Malformed)
    }

    fn number(&mut self) -> (usize, usize) {
        let start = self.pos;
        while self.pos < self.b.len()
            && matches!(
                self.b[self.pos],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.pos += 1;
        }
        (start, self.pos)
    }

    fn literal(&mut self, word: &str) -> Result<(), Malformed> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn skip_value(&mut self, depth: usize) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        self.skip_ws();
        match self.b.get(self.pos).copied().ok_or(Malformed)? {
            b'{' | b'[' => {
                let close = if self.b[self.pos] == b'{' { b'}' } else { b']' };
                self.pos += 1;
                self.skip_ws();
                if self.b.get(self.pos) == Some(&close) {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    if close == b'}' {
                        self.skip_ws();
                        if self.b.get(self.pos) != Some(&b'"') {
                            return Err(Malformed);
                        }
                        self.string()?;
                        self.expect(b':')?;
                    }
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.b.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(&c) if c == close => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(Malformed),
                    }
                }
            }
            b'"' => self.string().map(|_| ()),
            b'-' | b'0'..=b'9' => {
                self.number();
                Ok(())
            }
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => Err(Malformed),
        }
    }

    fn on_string(
        &mut self,
        key: Option<&str>,
        start: usize,
        end: usize,
        escaped: bool,
    ) -> Result<(), Malformed> {
        if !self.flagged(start, end) {
            return Ok(());
        }
        let raw = &self.src[start..end];
        if !escaped {
            if let Cow::Owned(new) = self.engine.redact_text(raw, key) {
                self.edits.push(start..end, escape(&new));
            }
            return Ok(());
        }
        // Escapes (a Debug-formatted value, a message with quotes): scan the decoded text so
        // `\"password\":` and `\n` do not hide anything, and re-escape what changed.
        let decoded = decode(self.src, start, end)?;
        if let Cow::Owned(new) = self.engine.redact_text(&decoded, key) {
            self.edits.push(start..end, escape(&new));
        }
        Ok(())
    }

    /// The value of a sensitive key, whatever its type, spanning `start..end`.
    fn on_sensitive(&mut self, kind: FieldKind, start: usize, end: usize) -> Result<(), Malformed> {
        let raw = &self.src[start..end];
        let replacement = match self.b[start] {
            b't' | b'f' | b'n' => return Ok(()),
            b'"' if end - start == 2 => return Ok(()),
            b'"' => {
                let inner = if raw.contains('\\') {
                    decode(self.src, start + 1, end - 1)?
                } else {
                    raw[1..raw.len() - 1].to_string()
                };
                self.engine.mask_field(kind, &inner)
            }
            b'{' | b'[' => REDACTED.to_string(),
            _ => self.engine.mask_field(kind, raw),
        };
        self.edits.push(start..end, quoted(&replacement));
        Ok(())
    }
}

/// Decodes the JSON string content `src[start..end]` (between its quotes).
fn decode(src: &str, start: usize, end: usize) -> Result<String, Malformed> {
    let with_quotes = src.get(start - 1..end + 1).ok_or(Malformed)?;
    serde_json::from_str(with_quotes).map_err(|_| Malformed)
}

/// `s` as JSON string content (without the quotes).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", escape(s))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::redact::{RedactionConfig, Redactor};

    fn redactor() -> Redactor {
        Redactor::new(&RedactionConfig::default(), None).expect("redactor")
    }

    #[test]
    fn nested_objects_and_arrays_are_walked_keeping_key_order() {
        let r = redactor();
        let line = r#"{"z_first":1,"user":{"profile":{"email":"john@example.com","phones":["9876543210"]},"password":{"old":"a","new":"b"}},"items":[{"card":"4111 1111 1111 1111"},{"note":"call +14155552671"}],"ok":true,"amount_minor":125000}"#;
        let out = r.redact_json_line(line);
        let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert!(
            out.starts_with(r#"{"z_first":1,"user":"#),
            "order kept: {out}"
        );
        assert_eq!(v["user"]["profile"]["email"], "j***@example.com");
        assert_eq!(v["user"]["profile"]["phones"], "[REDACTED]");
        assert_eq!(v["user"]["password"], "[REDACTED]");
        assert_eq!(v["items"][0]["card"], "************1111");
        assert_eq!(v["items"][1]["note"], "call +*******2671");
        assert_eq!(v["ok"], true);
        assert_eq!(v["amount_minor"], 125000);
    }

    #[test]
    fn a_sensitive_number_becomes_a_string_and_booleans_stay() {
        let r = redactor();
        let out = r.redact_json_line(r#"{"otp":123456,"otp_verified":true,"phone":null}"#);
        assert_eq!(
            out,
            r#"{"otp":"[REDACTED]","otp_verified":true,"phone":null}"#
        );
        let out = r.redact_json_line(r#"{"n":4111111111111111,"total":4111111111111111}"#);
        assert_eq!(out, r#"{"n":"************1111","total":4111111111111111}"#);
    }

    #[test]
    fn escaped_strings_are_decoded_scanned_and_re_escaped() {
        let r = redactor();
        let line =
            r#"{"message":"body {\"password\":\"hunter2\",\"email\":\"a.b@example.org\"}\nnext"}"#;
        let out = r.redact_json_line(line);
        let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(
            v["message"],
            "body {\"password\":\"[REDACTED]\",\"email\":\"a***@example.org\"}\nnext"
        );
    }

    #[test]
    fn values_are_walked_in_place() {
        let r = redactor();
        let mut v = json!({
            "customer": {"name": "Asha", "mobile": "+91 98765 43210", "pan": "ABCPE1234F"},
            "tokens": ["a", "b"],
            "lines": [{"amount_minor": 9876543210u64, "memo": "ref 4111-1111-1111-1111"}],
        });
        r.redact_value(&mut v);
        assert_eq!(v["customer"]["name"], "Asha");
        assert_eq!(v["customer"]["mobile"], "+********3210");
        assert_eq!(v["customer"]["pan"], "XXXXXX234F");
        assert_eq!(v["tokens"], "[REDACTED]");
        assert_eq!(v["lines"][0]["amount_minor"], 9876543210u64);
        assert_eq!(v["lines"][0]["memo"], "ref ************1111");
    }

    #[test]
    fn malformed_json_falls_back_to_text_scanning() {
        let r = redactor();
        let out = r.redact_json_line(r#"{"message":"password=hunter2"#);
        assert!(!out.contains("hunter2"), "{out}");
    }
}
