//! The text scanner: one compiled regex finds every *candidate* (a sensitive `key=value`, a
//! token, an email, an IP, a GSTIN/PAN/IBAN shape, a long digit run) in a single left-to-right
//! pass; code then validates each candidate (Luhn, Verhoeff, mod 97, the GSTIN checksum, an
//! address parser, the surrounding context) before anything is masked.
//!
//! Why one regex: a lazy DFA scans all patterns at once, so a clean line costs one pass and
//! no allocation. Leftmost-first semantics do the rest of the work: a UUID (listed first) is
//! consumed whole, so its digit groups can never be mistaken for a phone or an Aadhaar
//! number, and a `password=` key is seen before its value.
//!
//! Why `regex-automata`'s multi-pattern `meta::Regex` rather than `regex` with one capture
//! group per alternative: the search reports *which* pattern matched, with no capture groups.
//! Resolving captures on a pattern this large ran a slower engine over every match and cost
//! about ten times the search itself (5.7 µs against 0.6 µs for a line with four findings).
//! It is the engine `regex` is built on, already in the dependency tree.
//!
//! The patterns use only ASCII classes and ASCII word boundaries (`(?-u:\b)`), which keeps
//! the DFA usable on any input and lets the engine build without its Unicode tables.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use regex_automata::meta::{BuildError, Regex};
use regex_automata::{Input, Match};

use super::checks::{gstin_valid, iban_valid, luhn_digits, verhoeff_digits};
use super::fields::{FieldKind, FieldRules};
use super::mask::{IdKind, mask_ip};
use super::{Engine, REDACTED};

/// ANSI colour sequences the development formatter puts around field names.
const ANSI: &str = r"(?:\x1b\[[0-9;]*m)";
/// Characters of a field name in text (`user.email`, `x-api-key`, `refresh_token`).
const IDENT: &str = r"[A-Za-z0-9_.\-]";

/// Which alternative of the scanner matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alt {
    Uuid,
    Key,
    Jwt,
    Bearer,
    KeelKey,
    Email,
    Ipv6,
    Ipv4,
    Gstin,
    Pan,
    Iban,
    Digits,
}

/// The alternatives in pattern order (the pattern id indexes this).
const ALTS: [Alt; 12] = [
    Alt::Uuid,
    Alt::Key,
    Alt::Jwt,
    Alt::Bearer,
    Alt::KeelKey,
    Alt::Email,
    Alt::Ipv6,
    Alt::Ipv4,
    Alt::Gstin,
    Alt::Pan,
    Alt::Iban,
    Alt::Digits,
];

/// The compiled candidate finder.
#[derive(Debug, Clone)]
pub(crate) struct Scanner {
    /// Every alternative, UUID first: used to walk text that has candidates.
    re: Regex,
    /// The same without the UUID alternative: decides whether there is anything to do at
    /// all. UUIDs are in most lines (request, org and user ids) and alone need no work, so
    /// they must not push a line off the fast path.
    prefilter: Regex,
}

impl Scanner {
    pub(crate) fn new(fields: &FieldRules) -> Result<Self, Box<BuildError>> {
        let parts = patterns(fields);
        let re = Regex::new_many(&parts).map_err(Box::new)?;
        let prefilter = Regex::new_many(&parts[1..]).map_err(Box::new)?;
        Ok(Self { re, prefilter })
    }

    /// True if `text` holds at least one candidate. The fast path: no allocation.
    pub(crate) fn is_match(&self, text: &str) -> bool {
        self.prefilter.is_match(text)
    }

    /// Where the candidates are (UUIDs aside), in order. Empty — and unallocated — when
    /// there are none.
    pub(crate) fn candidates(&self, text: &str) -> Vec<Range<usize>> {
        self.prefilter.find_iter(text).map(|m| m.range()).collect()
    }

    /// The next candidate at or after `pos`, with which alternative it is.
    fn next(&self, text: &str, pos: usize) -> Option<(Match, Alt)> {
        let m = self.re.find(Input::new(text).span(pos..text.len()))?;
        let alt = *ALTS.get(m.pattern().as_usize())?;
        Some((m, alt))
    }
}

/// The scanner's alternatives, UUID first. Field names come from the configuration (already
/// restricted to letters, digits, `_`, `-` and `.`) and are escaped anyway.
fn patterns(fields: &FieldRules) -> Vec<String> {
    let mut names: Vec<&[String]> = fields.names().iter().map(|n| &n.segments[..]).collect();
    // Longest first, then alphabetical: a stable pattern, duplicates adjacent.
    let len = |segs: &[String]| segs.iter().map(String::len).sum::<usize>();
    names.sort_by(|a, b| len(b).cmp(&len(a)).then_with(|| a.cmp(b)));
    names.dedup();
    let mut lower = Vec::with_capacity(names.len());
    let mut camel = Vec::with_capacity(names.len());
    for segs in names {
        let joined = segs
            .iter()
            .map(|s| escape(s))
            .collect::<Vec<_>>()
            .join(r"[_.\- ]?");
        // `userEmail`: the name starts with a capital right after a lower-case letter.
        let mut chars = joined.chars();
        if let Some(first) = chars.next()
            && first.is_ascii_lowercase()
        {
            camel.push(format!(
                "{}(?i-u:{})",
                first.to_ascii_uppercase(),
                chars.as_str()
            ));
        }
        lower.push(joined);
    }
    let lower = lower.join("|");
    let camel = camel.join("|");
    let hex = "[0-9A-Fa-f]";
    let h = "[0-9A-Fa-f]{1,4}";
    let b = r"(?-u:\b)";
    [
        // A UUID is consumed whole so its digit groups are never read as anything else.
        format!(r"(?:{b}{hex}{{8}}-{hex}{{4}}-{hex}{{4}}-{hex}{{4}}-{hex}{{12}}{b})"),
        // A sensitive name followed by `=` or `:` (quoted or not, JSON-escaped or not,
        // coloured or not). The name must start a segment: after a separator, a digit, the
        // start of a word, a colour code, or as a capital after a lower-case letter.
        format!(
            r#"(?:(?:(?:{ANSI}+|{b}|{IDENT}*[_.\-0-9])(?i-u:{lower})|{IDENT}*[a-z0-9](?:{camel}))(?i-u:e?s)?(?:[_.\-0-9A-Z]{IDENT}*)?(?:\\?["'])?{ANSI}*[ \t]*[:=]{ANSI}*[ \t]*)"#
        ),
        format!(r"(?:{b}eyJ[A-Za-z0-9_\-]{{6,}}\.[A-Za-z0-9_\-]{{6,}}\.[A-Za-z0-9_\-]*)"),
        format!(r"(?:{b}(?i-u:bearer)[ \t]+[A-Za-z0-9._~+/\-]{{8,}}=*)"),
        format!(r"(?:{b}keel_[A-Za-z0-9_\-]{{16,}})"),
        format!(
            r"(?:[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{{2,}}{b})"
        ),
        // Full or `::`-compressed IPv6 (host part present), optionally ending in dotted IPv4;
        // parsed afterwards. Each form ends on a word boundary so `::context` in a Rust path
        // is not `::c`.
        format!(
            r"(?:{b}(?:{h}:){{7}}{h}{b}|(?:{b}(?:{h}:){{1,7}}:|::){h}(?::{h}){{0,6}}(?:\.[0-9]{{1,3}}){{0,3}}{b})"
        ),
        format!(r"(?:{b}[0-9]{{1,3}}(?:\.[0-9]{{1,3}}){{3}}{b})"),
        format!(r"(?:{b}[0-9]{{2}}[A-Z]{{5}}[0-9]{{4}}[A-Z][1-9A-Z]Z[0-9A-Z]{b})"),
        format!(r"(?:{b}[A-Z]{{5}}[0-9]{{4}}[A-Z]{b})"),
        format!(r"(?:{b}[A-Z]{{2}}[0-9]{{2}}(?:[ ]?[A-Z0-9]){{11,30}}{b})"),
        // Ten or more digits, optionally grouped by single spaces or dashes; `+` for E.164
        // (eight or more). Which of card / Aadhaar / phone it is, if any, is decided in code.
        format!(r"(?:(?:\+[0-9](?:[ \-]?[0-9]){{7,}}|{b}[0-9](?:[ \-]?[0-9]){{9,}}){b})"),
    ]
    .into()
}

/// Escapes regex metacharacters (configured names hold only `_`, `-`, `.` besides letters and
/// digits, but the built-in list should not depend on that).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Replacements collected during a scan, applied once at the end (so a clean input is
/// returned borrowed). Kept in increasing, non-overlapping order.
#[derive(Debug, Default)]
pub(crate) struct Edits {
    list: Vec<(Range<usize>, String)>,
}

impl Edits {
    pub(crate) fn push(&mut self, range: Range<usize>, replacement: String) {
        if range.is_empty() {
            return;
        }
        if self.list.last().is_some_and(|(r, _)| r.end > range.start) {
            // Overlaps an earlier edit: the earlier one already hides this text.
            return;
        }
        self.list.push((range, replacement));
    }

    pub(crate) fn apply(self, text: &str) -> Cow<'_, str> {
        if self.list.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len() + 16);
        let mut at = 0;
        for (range, replacement) in self.list {
            let Some(before) = text.get(at..range.start) else {
                continue;
            };
            out.push_str(before);
            out.push_str(&replacement);
            at = range.end;
        }
        out.push_str(text.get(at..).unwrap_or(""));
        Cow::Owned(out)
    }
}

/// A card, an Aadhaar number or a phone number found in a digit run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumKind {
    Card,
    Aadhaar,
    Phone,
}

impl From<NumKind> for IdKind {
    fn from(k: NumKind) -> Self {
        match k {
            NumKind::Card => IdKind::Card,
            NumKind::Aadhaar => IdKind::Aadhaar,
            NumKind::Phone => IdKind::Phone,
        }
    }
}

/// What a run of ASCII digits is, if anything. `plus`: it was written with a leading `+`.
///
/// - card: 13–19 digits, Luhn-valid, and a major industry identifier that payment cards use
///   (2–6 or 8) — which also keeps millisecond and nanosecond timestamps (leading 1) out;
/// - Aadhaar: 12 digits, not starting 0 or 1 (never issued), Verhoeff-valid;
/// - phone: E.164 (`+` and 8–15 digits), or an Indian mobile: 10 digits starting 6–9,
///   optionally after `0` or `91`.
pub(crate) fn classify_digits(d: &[u8], plus: bool) -> Option<NumKind> {
    let n = d.len();
    let first = *d.first()?;
    if plus {
        return (8..=15).contains(&n).then_some(NumKind::Phone);
    }
    if (13..=19).contains(&n) && matches!(first, b'2'..=b'6' | b'8') && luhn_digits(d) {
        return Some(NumKind::Card);
    }
    if n == 12 && matches!(first, b'2'..=b'9') && verhoeff_digits(d) {
        return Some(NumKind::Aadhaar);
    }
    let mobile = |i: usize| d.get(i).is_some_and(|b| matches!(b, b'6'..=b'9'));
    let phone = (n == 10 && mobile(0))
        || (n == 11 && first == b'0' && mobile(1))
        || (n == 12 && d.starts_with(b"91") && mobile(2));
    phone.then_some(NumKind::Phone)
}

/// Where a sensitive key's value lies in text: the part to replace and where to resume.
struct ValueSpan {
    inner: Range<usize>,
    resume: usize,
}

const AUTH_SCHEMES: [&str; 6] = ["bearer", "basic", "token", "digest", "negotiate", "apikey"];

fn is_terminator(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t'
            | b'\n'
            | b'\r'
            | b','
            | b';'
            | b'&'
            | b'"'
            | b'\''
            | b')'
            | b']'
            | b'}'
            | b'<'
            | b'>'
            | b'|'
            | b'\\'
            | 0x1b
    )
}

/// The extent of the value that starts at `at`: a quoted string (`"…"`, `'…'`, or the
/// JSON-escaped `\"…\"`), a bracketed structure (`{…}`, `[…]`), or a bare token — for an
/// authorization scheme (`Bearer abc`) the scheme and its credential together.
fn value_extent(text: &str, at: usize) -> Option<ValueSpan> {
    let b = text.as_bytes();
    let first = *b.get(at)?;
    let len = b.len();
    if first == b'\\' && b.get(at + 1) == Some(&b'"') {
        let mut i = at + 2;
        while i + 1 < len {
            if b[i] == b'\\' && b[i + 1] == b'"' && b[i - 1] != b'\\' {
                return Some(ValueSpan {
                    inner: at + 2..i,
                    resume: i + 2,
                });
            }
            i += 1;
        }
        return Some(ValueSpan {
            inner: at + 2..len,
            resume: len,
        });
    }
    if first == b'"' || first == b'\'' {
        let mut i = at + 1;
        while i < len {
            if b[i] == b'\\' {
                i += 2;
                continue;
            }
            if b[i] == first {
                return Some(ValueSpan {
                    inner: at + 1..i,
                    resume: i + 1,
                });
            }
            i += 1;
        }
        return Some(ValueSpan {
            inner: at + 1..len,
            resume: len,
        });
    }
    if first == b'{' || first == b'[' {
        let end = balanced_end(b, at);
        return Some(ValueSpan {
            inner: at..end,
            resume: end,
        });
    }
    let token_end = |from: usize| {
        b[from..]
            .iter()
            .position(|&c| is_terminator(c))
            .map_or(len, |p| from + p)
    };
    let mut end = token_end(at);
    if end == at {
        return None;
    }
    let token = text.get(at..end).unwrap_or("");
    if AUTH_SCHEMES.iter().any(|s| token.eq_ignore_ascii_case(s))
        && b.get(end) == Some(&b' ')
        && b.get(end + 1).is_some_and(|&c| !is_terminator(c))
    {
        end = token_end(end + 1);
    }
    Some(ValueSpan {
        inner: at..end,
        resume: end,
    })
}

/// The end (exclusive) of the bracketed structure opening at `at`, skipping quoted strings.
fn balanced_end(b: &[u8], at: usize) -> usize {
    let mut depth = 0usize;
    let mut i = at;
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_string = false;
            }
        } else {
            match c {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    b.len()
}

fn strip_ansi_prefix(s: &str) -> &str {
    let mut s = s;
    while let Some(rest) = s.strip_prefix("\x1b[") {
        match rest.find('m') {
            Some(i) => s = rest.get(i + 1..).unwrap_or(""),
            None => break,
        }
    }
    s
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Steps back over quotes, backslashes, blanks and colour codes.
fn skip_back_noise(b: &[u8], mut i: usize) -> usize {
    loop {
        if i > 0 && matches!(b[i - 1], b' ' | b'\t' | b'"' | b'\'' | b'\\') {
            i -= 1;
            continue;
        }
        if i > 0 && b[i - 1] == b'm' {
            let mut j = i - 1;
            while j > 0 && (b[j - 1].is_ascii_digit() || b[j - 1] == b';') {
                j -= 1;
            }
            if j >= 2 && b[j - 1] == b'[' && b[j - 2] == 0x1b {
                i = j - 2;
                continue;
            }
        }
        return i;
    }
}

/// The field name written just before `start` (`total=`, `"amount": `, `qty: `), if any.
fn preceding_key(text: &str, start: usize) -> Option<&str> {
    let b = text.as_bytes();
    let mut i = skip_back_noise(b, start);
    if i == 0 || !matches!(b[i - 1], b'=' | b':') {
        return None;
    }
    i = skip_back_noise(b, i - 1);
    let end = i;
    while i > 0 && is_ident_byte(b[i - 1]) {
        i -= 1;
    }
    // Coloured output: `\x1b[3mqty` — the colour code's `3m` is not part of the name.
    if i >= 2 && b[i - 1] == b'[' && b[i - 2] == 0x1b {
        while i < end && (b[i].is_ascii_digit() || b[i] == b';') {
            i += 1;
        }
        if i < end && b[i] == b'm' {
            i += 1;
        }
    }
    if i == end { None } else { text.get(i..end) }
}

fn next_char_boundary(text: &str, at: usize) -> usize {
    let mut i = at + 1;
    while i < text.len() && !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// True if the value of a sensitive field should be left alone: nothing, or a JSON-ish
/// `null`/boolean that cannot carry personal data.
fn is_empty_value(v: &str) -> bool {
    v.is_empty() || matches!(v, "null" | "None" | "true" | "false")
}

/// `Bearer xyz` → `Some("Bearer")`.
pub(crate) fn auth_scheme_prefix(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    (AUTH_SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) && !rest.trim().is_empty())
        .then_some(scheme)
}

impl Engine {
    /// Redacts free text (a message, a string field, a development-format line).
    pub(crate) fn redact_text<'t>(&self, text: &'t str, context_key: Option<&str>) -> Cow<'t, str> {
        let mut edits = Edits::default();
        self.scan_text(text, context_key, &mut edits);
        edits.apply(text)
    }

    /// Collects the edits for `text`. `context_key` is the field the text is the value of
    /// (for structured input), used only to spare amounts and timings.
    pub(crate) fn scan_text(&self, text: &str, context_key: Option<&str>, edits: &mut Edits) {
        // Fast path: no candidate, no allocation (not even the capture slots).
        if !self.scanner.is_match(text) {
            return;
        }
        let mut pos = 0;
        while pos < text.len() {
            let Some((m, alt)) = self.scanner.next(text, pos) else {
                break;
            };
            let (s, e) = (m.start(), m.end());
            let next = match alt {
                Alt::Uuid => e,
                Alt::Key => self.on_key(text, s, e, edits),
                Alt::Jwt | Alt::KeelKey => {
                    edits.push(s..e, REDACTED.to_string());
                    e
                }
                Alt::Bearer => {
                    // Keep the scheme: `Bearer [REDACTED]` still says what kind of credential.
                    let scheme_end = s + "bearer".len();
                    let b = text.as_bytes();
                    let mut t = scheme_end;
                    while t < e && matches!(b[t], b' ' | b'\t') {
                        t += 1;
                    }
                    edits.push(t..e, REDACTED.to_string());
                    e
                }
                Alt::Email => {
                    edits.push(s..e, self.masker.identifier(IdKind::Email, &text[s..e]));
                    e
                }
                Alt::Ipv4 => {
                    self.on_ipv4(text, s, e, edits);
                    e
                }
                Alt::Ipv6 => {
                    self.on_ipv6(text, s, e, edits);
                    e
                }
                Alt::Gstin => {
                    if gstin_valid(&text[s..e]) {
                        edits.push(s..e, self.masker.identifier(IdKind::Gstin, &text[s..e]));
                        e
                    } else {
                        next_char_boundary(text, s)
                    }
                }
                Alt::Pan => {
                    edits.push(s..e, self.masker.identifier(IdKind::Pan, &text[s..e]));
                    e
                }
                Alt::Iban => self.on_iban(text, s, e, edits),
                Alt::Digits => {
                    self.on_digits(text, s, e, context_key, edits);
                    e
                }
            };
            pos = if next > s {
                next
            } else {
                next_char_boundary(text, s)
            };
        }
    }

    fn on_key(&self, text: &str, s: usize, e: usize, edits: &mut Edits) -> usize {
        let b = text.as_bytes();
        // `auth::token::refresh` is a Rust path, not `token: refresh`.
        if e > 0 && b[e - 1] == b':' && b.get(e) == Some(&b':') {
            return e + 1;
        }
        // The match is `name`, maybe a closing quote, colour codes and blanks, then the
        // separator (the last `=` or `:`: neither occurs in a name or a colour code).
        let Some(sep) = b[s..e].iter().rposition(|&c| c == b'=' || c == b':') else {
            return e;
        };
        let name_end = skip_back_noise(b, s + sep).max(s);
        let name = strip_ansi_prefix(&text[s..name_end]);
        let Some(kind) = self.fields.classify(name) else {
            return e;
        };
        let Some(value) = value_extent(text, e) else {
            return e;
        };
        let inner = text.get(value.inner.clone()).unwrap_or("");
        if !is_empty_value(inner) {
            edits.push(value.inner, self.mask_field(kind, inner));
        }
        value.resume
    }

    /// The replacement for the value of a field known to be sensitive.
    pub(crate) fn mask_field(&self, kind: FieldKind, value: &str) -> String {
        let digit_count = value.bytes().filter(u8::is_ascii_digit).count();
        let alnum_count = value.bytes().filter(u8::is_ascii_alphanumeric).count();
        let id = |k: IdKind| self.masker.identifier(k, value);
        match kind {
            FieldKind::Secret => match auth_scheme_prefix(value) {
                Some(scheme) => format!("{scheme} {REDACTED}"),
                None => REDACTED.to_string(),
            },
            FieldKind::Email if value.contains('@') => id(IdKind::Email),
            FieldKind::Phone if digit_count >= 6 => id(IdKind::Phone),
            FieldKind::Card if digit_count >= 12 => id(IdKind::Card),
            FieldKind::Aadhaar if digit_count == 12 => id(IdKind::Aadhaar),
            FieldKind::Pan if alnum_count == 10 => id(IdKind::Pan),
            FieldKind::Gstin if alnum_count == 15 => id(IdKind::Gstin),
            FieldKind::Iban if alnum_count >= 15 => id(IdKind::Iban),
            FieldKind::Account => id(IdKind::Account),
            FieldKind::Identifier => match value.trim().parse::<IpAddr>() {
                Ok(ip) => mask_ip(ip).unwrap_or_else(|| value.to_string()),
                Err(_) if value.contains('@') => id(IdKind::Email),
                Err(_) => id(IdKind::Other),
            },
            _ => id(IdKind::Other),
        }
    }

    fn on_ipv4(&self, text: &str, s: usize, e: usize, edits: &mut Edits) {
        let b = text.as_bytes();
        // Part of a longer dotted number (a version `1.2.3.4.5`, an OID): not an address.
        if (s > 0 && b[s - 1] == b'.')
            || (b.get(e) == Some(&b'.') && b.get(e + 1).is_some_and(u8::is_ascii_digit))
        {
            return;
        }
        if let Ok(ip) = text[s..e].parse::<Ipv4Addr>()
            && let Some(mask) = mask_ip(IpAddr::V4(ip))
        {
            edits.push(s..e, mask);
        }
    }

    fn on_ipv6(&self, text: &str, s: usize, e: usize, edits: &mut Edits) {
        let b = text.as_bytes();
        // `keel_kernel::store::db` has `::db`, a valid address: demand clean edges.
        let glued = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'.');
        if (s > 0 && glued(b[s - 1])) || b.get(e).is_some_and(|&c| glued(c) && c != b'.') {
            return;
        }
        if let Ok(ip) = text[s..e].parse::<Ipv6Addr>()
            && let Some(mask) = mask_ip(IpAddr::V6(ip))
        {
            edits.push(s..e, mask);
        }
    }

    /// IBANs are printed in groups of four; the pattern may run on into following capitals,
    /// so on a failed check drop trailing groups until the check passes or too little is left.
    fn on_iban(&self, text: &str, s: usize, e: usize, edits: &mut Edits) -> usize {
        let mut candidate = &text[s..e];
        loop {
            if iban_valid(candidate) {
                let end = s + candidate.len();
                edits.push(s..end, self.masker.identifier(IdKind::Iban, candidate));
                return end;
            }
            match candidate.rfind(' ') {
                Some(i) if i >= 15 => candidate = &candidate[..i],
                _ => return next_char_boundary(text, s),
            }
        }
    }

    /// A run of digits (maybe grouped by spaces or dashes, maybe with a leading `+`). Tries
    /// every consecutive sequence of groups, longest first, so `qty 2 9876543210` finds the
    /// phone and `4111 1111 1111 1111` is read as one card.
    fn on_digits(
        &self,
        text: &str,
        s: usize,
        e: usize,
        context_key: Option<&str>,
        edits: &mut Edits,
    ) {
        let b = text.as_bytes();
        // The fraction or the whole part of a decimal (`12.9716123456`): a quantity.
        if (s >= 2 && b[s - 1] == b'.' && b[s - 2].is_ascii_digit())
            || (b.get(e) == Some(&b'.') && b.get(e + 1).is_some_and(u8::is_ascii_digit))
        {
            return;
        }
        if preceding_key(text, s)
            .or(context_key)
            .is_some_and(|k| self.fields.numeric_survivor(k))
        {
            return;
        }
        let plus = b[s] == b'+';
        let mut groups = [(0usize, 0usize); 16];
        let mut n = 0;
        let mut i = s;
        while i < e && n < groups.len() {
            if b[i].is_ascii_digit() {
                let start = i;
                while i < e && b[i].is_ascii_digit() {
                    i += 1;
                }
                groups[n] = (start, i);
                n += 1;
            } else {
                i += 1;
            }
        }
        let groups = &groups[..n];
        let mut i = 0;
        while i < groups.len() {
            let mut found = false;
            for j in (i + 1..=groups.len()).rev() {
                let window = &groups[i..j];
                let leading_plus = plus && i == 0;
                // A one-digit group only makes sense as a country code (`+1 415 …`); a lone
                // digit elsewhere is a separate number (`qty 2`).
                let sane = window
                    .iter()
                    .enumerate()
                    .all(|(k, &(gs, ge))| ge - gs >= 2 || (k == 0 && leading_plus));
                if !sane {
                    continue;
                }
                let mut digits = [0u8; 40];
                let mut len = 0;
                for &(gs, ge) in window {
                    for &d in &b[gs..ge] {
                        if len < digits.len() {
                            digits[len] = d;
                        }
                        len += 1;
                    }
                }
                if len > digits.len() {
                    continue;
                }
                if let Some(kind) = classify_digits(&digits[..len], leading_plus) {
                    let start = if leading_plus { s } else { window[0].0 };
                    let end = window[window.len() - 1].1;
                    edits.push(
                        start..end,
                        self.masker.identifier(kind.into(), &text[start..end]),
                    );
                    i = j;
                    found = true;
                    break;
                }
            }
            if !found {
                i += 1;
            }
        }
    }

    /// A bare integer (a JSON number): what it is, if it is personal data, and its mask.
    pub(crate) fn mask_number(&self, digits: &str, key: Option<&str>) -> Option<String> {
        if digits.len() < 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if key.is_some_and(|k| self.fields.numeric_survivor(k)) {
            return None;
        }
        let kind = classify_digits(digits.as_bytes(), false)?;
        Some(self.masker.identifier(kind.into(), digits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_runs_are_classified_only_when_their_check_passes() {
        let c = |s: &str, plus| classify_digits(s.as_bytes(), plus);
        assert_eq!(c("4111111111111111", false), Some(NumKind::Card));
        assert_eq!(c("4111111111111112", false), None, "Luhn fails");
        assert_eq!(
            c("1714567890123", false),
            None,
            "a millisecond timestamp is no card"
        );
        assert_eq!(c("9876543210", false), Some(NumKind::Phone));
        assert_eq!(c("919876543210", false), Some(NumKind::Phone));
        assert_eq!(c("1234567890", false), None, "mobiles start 6-9");
        assert_eq!(c("14155552671", true), Some(NumKind::Phone));
        assert_eq!(c("1714567890", false), None, "a Unix time");
    }

    #[test]
    fn value_extents_cover_each_quoting_style() {
        let cases = [
            (r#""hunter2" rest"#, "hunter2"),
            (r#"'hunter2', rest"#, "hunter2"),
            (r#"\"hunter2\",\"x\""#, "hunter2"),
            (r#"hunter2&email=x"#, "hunter2"),
            (r#"Bearer abc.def ghi"#, "Bearer abc.def"),
            (r#"{"a":{"b":"}"}} tail"#, r#"{"a":{"b":"}"}}"#),
            (r#""esc\"aped" x"#, r#"esc\"aped"#),
        ];
        for (text, want) in cases {
            let span = value_extent(text, 0).expect("a value");
            assert_eq!(&text[span.inner], want, "{text}");
        }
        assert!(value_extent(" x", 0).is_none());
    }

    #[test]
    fn the_key_before_a_number_is_found_through_quotes_and_colour() {
        fn at(text: &str) -> Option<&str> {
            preceding_key(text, text.find("98").expect("number"))
        }
        assert_eq!(at("total=98"), Some("total"));
        assert_eq!(at(r#""amount": 98"#), Some("amount"));
        assert_eq!(at("\x1b[3mqty\x1b[0m\x1b[2m=\x1b[0m98"), Some("qty"));
        assert_eq!(at("call 98"), None);
    }
}
