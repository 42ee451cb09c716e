//! What a found identifier is replaced with: a hint-keeping mask (`j***@example.com`,
//! `************3456`, `XXXX XXXX 1234`) or, in hash mode, a keyed-hash tag
//! (`[REDACTED:a665a45e]`) so one person's lines can still be correlated without the log
//! holding the value.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::REDACTED;

/// The kinds of identifier that have a shape-specific mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdKind {
    Email,
    Phone,
    Card,
    Aadhaar,
    Pan,
    Gstin,
    Iban,
    Account,
    /// No recognisable shape: fully masked.
    Other,
}

/// Builds masks and, when a key is set and hash mode is on, keyed-hash tags.
#[derive(Clone)]
pub(crate) struct Masker {
    /// HMAC-SHA256 already keyed (the pads computed once); cloned per tag.
    hasher: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("hashing", &self.hasher.is_some())
            .finish()
    }
}

impl Masker {
    pub(crate) fn new(hash_identifiers: bool, hash_key: Option<[u8; 32]>) -> Self {
        let hasher = match (hash_identifiers, hash_key) {
            (true, Some(key)) => Hmac::<Sha256>::new_from_slice(&key).ok(),
            _ => None,
        };
        Self { hasher }
    }

    pub(crate) fn hashing(&self) -> bool {
        self.hasher.is_some()
    }

    /// `[REDACTED:xxxxxxxx]`: the first 8 hex digits of HMAC-SHA256(key, normalised value).
    fn tag(&self, normalised: &[u8]) -> Option<String> {
        let mut mac = self.hasher.clone()?;
        mac.update(normalised);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(20);
        out.push_str("[REDACTED:");
        for byte in digest.iter().take(4) {
            let _ = write!(out, "{byte:02x}");
        }
        out.push(']');
        Some(out)
    }

    /// The replacement for an identifier of `kind` whose text is `raw`.
    pub(crate) fn identifier(&self, kind: IdKind, raw: &str) -> String {
        if self.hasher.is_some()
            && let Some(tag) = self.tag(normalise(kind, raw).as_bytes())
        {
            return tag;
        }
        match kind {
            IdKind::Email => mask_email(raw),
            IdKind::Phone => mask_phone(raw),
            IdKind::Card => mask_keep_last(&digits(raw), 4, '*'),
            IdKind::Aadhaar => {
                let d = digits(raw);
                format!("XXXX XXXX {}", last(&d, 4))
            }
            IdKind::Pan => {
                let a = alnum_upper(raw);
                format!("XXXXXX{}", last(&a, 4))
            }
            IdKind::Gstin => {
                let a = alnum_upper(raw);
                match (a.get(..2), a.get(12..)) {
                    (Some(state), Some(tail)) => format!("{state}XXXXXXXXXX{tail}"),
                    _ => REDACTED.to_string(),
                }
            }
            IdKind::Iban => {
                let a = alnum_upper(raw);
                match a.get(..2) {
                    Some(country) if a.len() > 6 => {
                        format!("{country}{}{}", "*".repeat(a.len() - 6), last(&a, 4))
                    }
                    _ => REDACTED.to_string(),
                }
            }
            IdKind::Account => {
                let a = alnum_upper(raw);
                if a.len() >= 8 {
                    mask_keep_last(&a, 4, '*')
                } else {
                    REDACTED.to_string()
                }
            }
            IdKind::Other => REDACTED.to_string(),
        }
    }
}

/// The canonical form hashed in hash mode, so `John@Example.com` in a message and
/// `john@example.com` in a field, or `+91 98765 43210` and `9876543210`, get the same tag.
fn normalise(kind: IdKind, raw: &str) -> String {
    match kind {
        IdKind::Email => raw.trim().to_ascii_lowercase(),
        IdKind::Phone => {
            let d = digits(raw);
            let b = d.as_bytes();
            let national = match b.len() {
                12 if b.starts_with(b"91") && matches!(b[2], b'6'..=b'9') => d.get(2..),
                11 if b[0] == b'0' && matches!(b[1], b'6'..=b'9') => d.get(1..),
                _ => None,
            };
            national.map(str::to_string).unwrap_or(d)
        }
        IdKind::Card | IdKind::Aadhaar => digits(raw),
        IdKind::Pan | IdKind::Gstin | IdKind::Iban | IdKind::Account => alnum_upper(raw),
        IdKind::Other => raw.trim().to_string(),
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn alnum_upper(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The last `n` characters of an ASCII string.
fn last(s: &str, n: usize) -> &str {
    s.get(s.len().saturating_sub(n)..).unwrap_or("")
}

fn mask_keep_last(s: &str, keep: usize, fill: char) -> String {
    if s.len() <= keep {
        return REDACTED.to_string();
    }
    let mut out: String = std::iter::repeat_n(fill, s.len() - keep).collect();
    out.push_str(last(s, keep));
    out
}

/// `john.doe@example.com` → `j***@example.com`.
fn mask_email(raw: &str) -> String {
    let raw = raw.trim();
    match raw.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
            let first = local.chars().next().unwrap_or('*');
            format!("{first}***@{domain}")
        }
        _ => REDACTED.to_string(),
    }
}

/// `+91 98765 43210` → `+********3210`; `9876543210` → `******3210`.
fn mask_phone(raw: &str) -> String {
    let d = digits(raw);
    let masked = mask_keep_last(&d, 4, '*');
    if raw.trim_start().starts_with('+') && masked != REDACTED {
        format!("+{masked}")
    } else {
        masked
    }
}

/// Keeps the network: IPv4 `203.0.x.x`, IPv6 the /48 (`2001:db8:85a3:x:x:x:x:x`).
/// Loopback and unspecified addresses are not personal data and stay as they are (`None`).
pub(crate) fn mask_ip(ip: IpAddr) -> Option<String> {
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    Some(match ip {
        IpAddr::V4(v4) => mask_v4(v4),
        IpAddr::V6(v6) => mask_v6(v6),
    })
}

fn mask_v4(ip: Ipv4Addr) -> String {
    let [a, b, _, _] = ip.octets();
    format!("{a}.{b}.x.x")
}

fn mask_v6(ip: Ipv6Addr) -> String {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return format!("::ffff:{}", mask_v4(v4));
    }
    let s = ip.segments();
    format!("{:x}:{:x}:{:x}:x:x:x:x:x", s[0], s[1], s[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_a_useful_hint() {
        let m = Masker::new(false, None);
        assert_eq!(
            m.identifier(IdKind::Email, "john.doe@example.com"),
            "j***@example.com"
        );
        assert_eq!(
            m.identifier(IdKind::Card, "4111 1111 1111 1111"),
            "************1111"
        );
        assert_eq!(
            m.identifier(IdKind::Aadhaar, "2345 6789 0124"),
            "XXXX XXXX 0124"
        );
        assert_eq!(
            m.identifier(IdKind::Phone, "+91 98765 43210"),
            "+********3210"
        );
        assert_eq!(m.identifier(IdKind::Phone, "9876543210"), "******3210");
        assert_eq!(m.identifier(IdKind::Pan, "ABCPE1234F"), "XXXXXX234F");
        assert_eq!(
            m.identifier(IdKind::Gstin, "27AAPFU0939F1ZV"),
            "27XXXXXXXXXX1ZV"
        );
        assert_eq!(
            m.identifier(IdKind::Iban, "GB82 WEST 1234 5698 7654 32"),
            "GB****************5432"
        );
        assert_eq!(m.identifier(IdKind::Other, "12 MG Road"), REDACTED);
    }

    #[test]
    fn ip_masks_keep_the_network_and_leave_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(mask_ip(ip("192.168.1.20")).as_deref(), Some("192.168.x.x"));
        assert_eq!(
            mask_ip(ip("2001:db8:85a3::8a2e:370:7334")).as_deref(),
            Some("2001:db8:85a3:x:x:x:x:x")
        );
        assert_eq!(
            mask_ip(ip("::ffff:203.0.113.9")).as_deref(),
            Some("::ffff:203.0.x.x")
        );
        assert_eq!(mask_ip(ip("127.0.0.1")), None);
        assert_eq!(mask_ip(ip("::1")), None);
    }

    #[test]
    fn keyed_hash_tags_are_stable_per_value_and_per_key() {
        let a = Masker::new(true, Some([7u8; 32]));
        let b = Masker::new(true, Some([8u8; 32]));
        let t1 = a.identifier(IdKind::Email, "John@Example.com");
        let t2 = a.identifier(IdKind::Email, "john@example.com");
        let t3 = a.identifier(IdKind::Email, "jane@example.com");
        assert!(t1.starts_with("[REDACTED:") && t1.len() == 19, "{t1}");
        assert_eq!(t1, t2, "same person, same tag");
        assert_ne!(t1, t3, "another person, another tag");
        assert_ne!(t1, b.identifier(IdKind::Email, "john@example.com"));
        assert_eq!(
            a.identifier(IdKind::Phone, "+91 98765 43210"),
            a.identifier(IdKind::Phone, "9876543210"),
            "the same number written two ways"
        );
        // Hash mode without a key falls back to masks.
        assert_eq!(
            Masker::new(true, None).identifier(IdKind::Email, "john@example.com"),
            "j***@example.com"
        );
    }

    #[test]
    fn the_tag_is_hmac_sha256_of_the_normalised_value() {
        // Computed independently of the masker, with the MAC used directly.
        let mut mac = Hmac::<Sha256>::new_from_slice(&[1u8; 32]).expect("key");
        mac.update(b"john@example.com");
        let full = mac.finalize().into_bytes();
        let want = format!("[REDACTED:{}]", hex::encode(&full[..4]));
        let m = Masker::new(true, Some([1u8; 32]));
        assert_eq!(m.identifier(IdKind::Email, "JOHN@example.com "), want);
    }
}
