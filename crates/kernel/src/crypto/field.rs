//! Encrypted columns as apps use them.
//!
//! A row type holds an encrypted column as a [`Sealed`] value (the ciphertext text, never the
//! plaintext): writes make one with [`KeyRing::seal`], reads open it with [`KeyRing::open`].
//! Both take a [`FieldRef`] — organization, table, column and row id — which is the
//! ciphertext's associated data, so a value copied into another row, column or organization
//! fails to decrypt. A `FieldRef` is made from a [`TenantScope`], so apps cannot address
//! another organization's fields.
//!
//! ```ignore
//! let field = FieldRef::new(&scope, "bank_accounts", "account_number", id);
//! let sealed = state.crypto.seal(&field, "DE89370400440532013000")?; // store this
//! let number = state.crypto.open(&field, &row.account_number)?;     // read back
//! let hint = mask_tail(&number, 4);                                  // "****3000"
//! ```
//!
//! **Blind indexes.** Ciphertexts are randomised, so equality lookups use a keyed blind
//! index stored next to the column: HMAC-SHA256 under a key derived from the encryption key
//! (never the key itself), over the organization, table, column and the normalised value
//! (trimmed, lowercased), truncated to 128 bits (32 hex digits). It reveals only which rows of
//! one organization share a value. While a rotation runs, rows carry indexes under the old key
//! or the new one: look up with [`KeyRing::blind_index_lookup`] (one candidate per key in the
//! ring) and `IN (…)`; `keel keys rotate` recomputes the index of every row it re-encrypts.
//!
//! **Legacy plaintext.** Columns that held plaintext before they were encrypted can be read
//! with [`KeyRing::open_legacy`], which passes a value that is not a Keel ciphertext through
//! unchanged. Only columns registered with `allow_legacy_plaintext` use it, and
//! `keel keys rotate` encrypts whatever plaintext they still hold.

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;
use uuid::Uuid;

use super::{CryptoError, KeyRing, ciphertext_kid};
use crate::tenancy::TenantScope;

/// One encrypted field of one row: the associated data of its ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRef<'a> {
    org: Uuid,
    table: &'a str,
    column: &'a str,
    row_id: Uuid,
}

impl<'a> FieldRef<'a> {
    /// The field `column` of row `row_id` of `table`, in the scope's organization.
    pub fn new(scope: &TenantScope, table: &'a str, column: &'a str, row_id: Uuid) -> Self {
        Self::raw(scope.org_id(), table, column, row_id)
    }

    /// Kernel-only (key rotation walks every organization's rows).
    pub(crate) fn raw(org: Uuid, table: &'a str, column: &'a str, row_id: Uuid) -> Self {
        Self {
            org,
            table,
            column,
            row_id,
        }
    }

    /// `org|table|column|row id`: the associated data bound into the ciphertext.
    pub fn context(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.org, self.table, self.column, self.row_id
        )
    }
}

/// An encrypted value as stored: `v1.<kid>.<base64url>`. Its `Debug` shows only the key id.
/// Decodes from and binds as text on both engines; converts into a sea-query value.
#[derive(Clone, PartialEq, Eq, sqlx::Type, serde::Serialize, serde::Deserialize)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// Wraps a stored value read some other way (it is checked when opened).
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The stored text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }

    /// The id of the key that made it (`None` for a legacy plaintext value).
    pub fn kid(&self) -> Option<&str> {
        ciphertext_kid(&self.0)
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kid() {
            Some(kid) => write!(f, "Sealed(kid {kid})"),
            None => f.write_str("Sealed(unencrypted)"),
        }
    }
}

impl From<Sealed> for sea_query::Value {
    fn from(s: Sealed) -> Self {
        s.0.into()
    }
}

impl KeyRing {
    /// Encrypts `plaintext` for `field` under the active key.
    pub fn seal(&self, field: &FieldRef<'_>, plaintext: &str) -> Result<Sealed, CryptoError> {
        self.encrypt_str(plaintext, &field.context()).map(Sealed)
    }

    /// Decrypts a value sealed for `field`. A value sealed for another row, column or
    /// organization, or altered, is refused ([`CryptoError::Integrity`]); a plaintext value
    /// is refused too ([`CryptoError::Malformed`]).
    pub fn open(&self, field: &FieldRef<'_>, sealed: &Sealed) -> Result<String, CryptoError> {
        self.decrypt_str(&sealed.0, &field.context())
    }

    /// [`KeyRing::open`] for columns registered with `allow_legacy_plaintext`: a value that
    /// is not a Keel ciphertext is returned as it is (it predates encryption).
    pub fn open_legacy(
        &self,
        field: &FieldRef<'_>,
        sealed: &Sealed,
    ) -> Result<String, CryptoError> {
        if sealed.kid().is_none() {
            return Ok(sealed.0.clone());
        }
        self.open(field, sealed)
    }

    /// Encrypts any serialisable value (as JSON) for `field`.
    pub fn seal_value<T: Serialize>(
        &self,
        field: &FieldRef<'_>,
        value: &T,
    ) -> Result<Sealed, CryptoError> {
        let json = serde_json::to_string(value).map_err(|_| CryptoError::Malformed)?;
        self.seal(field, &json)
    }

    /// Decrypts a value made by [`KeyRing::seal_value`].
    pub fn open_value<T: DeserializeOwned>(
        &self,
        field: &FieldRef<'_>,
        sealed: &Sealed,
    ) -> Result<T, CryptoError> {
        serde_json::from_str(&self.open(field, sealed)?).map_err(|_| CryptoError::Integrity)
    }

    /// The blind index of `value` for `table.column` in the scope's organization, under the
    /// active key: store it next to the ciphertext.
    pub fn blind_index(
        &self,
        scope: &TenantScope,
        table: &str,
        column: &str,
        value: &str,
    ) -> String {
        self.blind_index_raw(scope.org_id(), table, column, value)
    }

    pub(crate) fn blind_index_raw(
        &self,
        org: Uuid,
        table: &str,
        column: &str,
        value: &str,
    ) -> String {
        self.index_keys()
            .next()
            .map(|k| blind_index_with(k, org, table, column, value))
            .unwrap_or_default()
    }

    /// The blind indexes `value` may be stored under (one per key of the ring, the active
    /// key's first): look up with `index_column IN (…)`, which stays correct while a rotation
    /// is half done.
    pub fn blind_index_lookup(
        &self,
        scope: &TenantScope,
        table: &str,
        column: &str,
        value: &str,
    ) -> Vec<String> {
        self.index_keys()
            .map(|k| blind_index_with(k, scope.org_id(), table, column, value))
            .collect()
    }
}

/// The blind-index key of an encryption key: HMAC-SHA256(key, label).
pub(crate) fn blind_index_key(encryption_key: &[u8; 32]) -> [u8; 32] {
    hmac_sha256(encryption_key, &[b"keel blind index key v1"])
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here; the fallback
    // keeps the function total without a panic path.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return [0u8; 32];
    };
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The normal form a blind index is computed over: trimmed and lowercased.
pub fn normalize_for_index(value: &str) -> String {
    value.trim().to_lowercase()
}

fn blind_index_with(key: &[u8; 32], org: Uuid, table: &str, column: &str, value: &str) -> String {
    let normal = normalize_for_index(value);
    let mac = hmac_sha256(
        key,
        &[
            org.as_bytes(),
            table.as_bytes(),
            column.as_bytes(),
            normal.as_bytes(),
        ],
    );
    hex::encode(&mac[..16])
}

/// Masks all but the last `keep` characters (`****3456`) for list responses. Values with no
/// more than `keep` characters are masked entirely, so a short secret is never shown whole.
pub fn mask_tail(value: &str, keep: usize) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= keep {
        return "*".repeat(chars.len().max(4));
    }
    let tail: String = chars[chars.len() - keep..].iter().collect();
    format!("{}{tail}", "*".repeat((chars.len() - keep).max(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(org: Uuid) -> TenantScope {
        TenantScope::system(org, "test")
    }

    #[test]
    fn sealed_fields_round_trip_and_refuse_another_row_column_or_org() {
        let ring = KeyRing::new([3; 32], &[]);
        let org = Uuid::now_v7();
        let row = Uuid::now_v7();
        let s = scope(org);
        let f = FieldRef::new(&s, "accounts", "iban", row);
        let sealed = ring.seal(&f, "DE89370400440532013000").expect("seal");
        assert!(!sealed.as_str().contains("DE89"));
        assert_eq!(
            ring.open(&f, &sealed).expect("open"),
            "DE89370400440532013000"
        );
        let other_row = FieldRef::new(&s, "accounts", "iban", Uuid::now_v7());
        assert_eq!(ring.open(&other_row, &sealed), Err(CryptoError::Integrity));
        let other_col = FieldRef::new(&s, "accounts", "bic", row);
        assert_eq!(ring.open(&other_col, &sealed), Err(CryptoError::Integrity));
        let other_org = FieldRef::new(&scope(Uuid::now_v7()), "accounts", "iban", row);
        assert_eq!(ring.open(&other_org, &sealed), Err(CryptoError::Integrity));
        assert_eq!(
            format!("{sealed:?}"),
            format!("Sealed(kid {})", ring.active_kid())
        );
    }

    #[test]
    fn legacy_plaintext_is_read_only_when_asked_for() {
        let ring = KeyRing::new([3; 32], &[]);
        let s = scope(Uuid::now_v7());
        let f = FieldRef::new(&s, "t", "c", Uuid::now_v7());
        let plain = Sealed::from_stored("4111111111111111".into());
        assert_eq!(ring.open(&f, &plain), Err(CryptoError::Malformed));
        assert_eq!(
            ring.open_legacy(&f, &plain).expect("legacy"),
            "4111111111111111"
        );
    }

    #[test]
    fn typed_values_round_trip() {
        let ring = KeyRing::new([3; 32], &[]);
        let s = scope(Uuid::now_v7());
        let f = FieldRef::new(&s, "t", "c", Uuid::now_v7());
        let sealed = ring.seal_value(&f, &vec![1u32, 2, 3]).expect("seal");
        let back: Vec<u32> = ring.open_value(&f, &sealed).expect("open");
        assert_eq!(back, vec![1, 2, 3]);
    }

    #[test]
    fn blind_indexes_match_equal_values_per_org_and_column_only() {
        let ring = KeyRing::new([3; 32], &[]);
        let a = scope(Uuid::now_v7());
        let b = scope(Uuid::now_v7());
        let x = ring.blind_index(&a, "users", "phone", "+91 98765 43210");
        assert_eq!(x.len(), 32);
        assert_eq!(
            x,
            ring.blind_index(&a, "users", "phone", " +91 98765 43210 ")
        );
        assert_ne!(x, ring.blind_index(&a, "users", "phone", "+91 98765 43211"));
        assert_ne!(x, ring.blind_index(&b, "users", "phone", "+91 98765 43210"));
        assert_ne!(
            x,
            ring.blind_index(&a, "users", "mobile", "+91 98765 43210")
        );
        let rotated = KeyRing::new([4; 32], &[[3; 32]]);
        let candidates = rotated.blind_index_lookup(&a, "users", "phone", "+91 98765 43210");
        assert_eq!(candidates.len(), 2);
        assert_eq!(candidates[1], x, "the old key's index is still found");
        assert_ne!(candidates[0], x);
    }

    #[test]
    fn masking_keeps_only_the_tail() {
        assert_eq!(mask_tail("4111111111113456", 4), "************3456");
        assert_eq!(mask_tail("123456", 4), "****3456");
        assert_eq!(mask_tail("12", 4), "****");
        assert_eq!(mask_tail("", 4), "****");
    }
}
