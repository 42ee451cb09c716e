//! Field encryption at rest: AES-256-GCM under a key ring.
//!
//! A ciphertext is the text `v1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>`: it names the
//! key that made it, so old keys can keep decrypting while the active key encrypts. Every
//! value gets a fresh random 96-bit nonce, and the caller's associated data (table, column,
//! row id) is bound in: a ciphertext copied into another row or column fails to decrypt.
//!
//! Key ids are derived from the key (the first 8 bytes of a SHA-256 of a label and the key),
//! so every node computes the same id without coordination and the id reveals nothing.
//!
//! - [`field`] — the typed API apps use for encrypted columns ([`field::FieldRef`],
//!   [`field::Sealed`]), keyed blind indexes for equality lookups, and masking for lists;
//! - [`keys`] — the registry of encrypted columns, `keel keys status` and `keel keys rotate`.

pub mod field;
pub mod keys;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::config::{Config, parse_encryption_key};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the value is not a Keel ciphertext")]
    Malformed,
    #[error("no key with id {0} is configured")]
    UnknownKey(String),
    #[error(
        "the value does not decrypt with its key and context (tampered, or moved from another row)"
    )]
    Integrity,
}

struct RingKey {
    kid: String,
    cipher: Aes256Gcm,
    /// The key of this key's blind indexes (derived, never the encryption key itself).
    index_key: [u8; 32],
}

/// The active key and any older keys still needed to decrypt.
pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "kids",
                &self.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The public id of a key.
pub fn key_id(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"keel/kid/v1");
    h.update(key);
    hex::encode(&h.finalize()[..8])
}

impl KeyRing {
    /// `active` encrypts; `previous` only decrypt.
    pub fn new(active: [u8; 32], previous: &[[u8; 32]]) -> Self {
        let keys = std::iter::once(&active)
            .chain(previous.iter())
            .map(|k| RingKey {
                kid: key_id(k),
                cipher: Aes256Gcm::new(&(*k).into()),
                index_key: field::blind_index_key(k),
            })
            .collect();
        Self { keys }
    }

    /// The key ring from `encryption_key` and `previous_encryption_keys` (validated at
    /// start-up).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let key = config
            .encryption_key
            .as_ref()
            .and_then(|k| parse_encryption_key(k.expose()))
            .ok_or_else(|| anyhow::anyhow!("encryption_key is missing or invalid"))?;
        let previous = config
            .previous_encryption_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                parse_encryption_key(k.expose())
                    .ok_or_else(|| anyhow::anyhow!("previous_encryption_keys[{i}] is invalid"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self::new(key, &previous))
    }

    pub fn active_kid(&self) -> &str {
        self.keys.first().map(|k| k.kid.as_str()).unwrap_or("")
    }

    /// Every key id of the ring, the active one first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// The blind-index keys of the ring, the active one first.
    pub(crate) fn index_keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.keys.iter().map(|k| &k.index_key)
    }

    /// Encrypts `plaintext`, binding `context` (e.g. `users|totp_secret|<id>`).
    pub fn encrypt(&self, plaintext: &[u8], context: &str) -> Result<String, CryptoError> {
        let key = self
            .keys
            .first()
            .ok_or(CryptoError::UnknownKey(String::new()))?;
        let mut nonce = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let sealed = key
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Integrity)?;
        let mut blob = Vec::with_capacity(12 + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(format!("v1.{}.{}", key.kid, URL_SAFE_NO_PAD.encode(blob)))
    }

    /// Decrypts a value made by [`KeyRing::encrypt`] with the same `context`.
    pub fn decrypt(&self, value: &str, context: &str) -> Result<Vec<u8>, CryptoError> {
        let mut parts = value.splitn(3, '.');
        let (Some("v1"), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CryptoError::Malformed);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| CryptoError::UnknownKey(kid.to_string()))?;
        let blob = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CryptoError::Malformed)?;
        if blob.len() < 12 + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = blob.split_at(12);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Malformed)?;
        key.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Integrity)
    }

    pub fn encrypt_str(&self, plaintext: &str, context: &str) -> Result<String, CryptoError> {
        self.encrypt(plaintext.as_bytes(), context)
    }

    pub fn decrypt_str(&self, value: &str, context: &str) -> Result<String, CryptoError> {
        String::from_utf8(self.decrypt(value, context)?).map_err(|_| CryptoError::Integrity)
    }
}

/// The key id a ciphertext names, if it is one (`v1.<kid>.…`).
pub fn ciphertext_kid(value: &str) -> Option<&str> {
    let mut parts = value.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(kid), Some(_)) => Some(kid),
        _ => None,
    }
}

/// SHA-256 of a high-entropy secret (tokens, API keys), hex. Such secrets need no slow hash:
/// guessing one is already infeasible; the hash only keeps a database leak from being usable.
pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `n` random bytes, base64url without padding (`n = 32` gives 256 bits).
pub fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> [u8; 32] {
        [b; 32]
    }

    #[test]
    fn round_trip_with_a_fresh_nonce_each_time() {
        let ring = KeyRing::new(key(1), &[]);
        let a = ring
            .encrypt_str("JBSWY3DPEHPK3PXP", "users|totp|1")
            .expect("enc");
        let b = ring
            .encrypt_str("JBSWY3DPEHPK3PXP", "users|totp|1")
            .expect("enc");
        assert_ne!(a, b, "same plaintext must not give the same ciphertext");
        assert!(!a.contains("JBSWY3DP"));
        assert_eq!(
            ring.decrypt_str(&a, "users|totp|1").expect("dec"),
            "JBSWY3DPEHPK3PXP"
        );
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_does_not_decrypt() {
        let ring = KeyRing::new(key(1), &[]);
        let a = ring.encrypt_str("secret", "users|totp|1").expect("enc");
        assert_eq!(
            ring.decrypt_str(&a, "users|totp|2"),
            Err(CryptoError::Integrity)
        );
    }

    #[test]
    fn old_keys_decrypt_and_the_active_key_encrypts() {
        let old = KeyRing::new(key(1), &[]);
        let value = old.encrypt_str("v", "t|c|1").expect("enc");
        let rotated = KeyRing::new(key(2), &[key(1)]);
        assert_eq!(rotated.decrypt_str(&value, "t|c|1").expect("dec"), "v");
        let fresh = rotated.encrypt_str("v", "t|c|1").expect("enc");
        assert!(fresh.contains(&key_id(&key(2))));
        let without_old = KeyRing::new(key(2), &[]);
        assert!(matches!(
            without_old.decrypt_str(&value, "t|c|1"),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let ring = KeyRing::new(key(1), &[]);
        let value = ring.encrypt_str("value", "t|c|1").expect("enc");
        let mut chars: Vec<char> = value.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert!(ring.decrypt_str(&tampered, "t|c|1").is_err());
        assert_eq!(
            ring.decrypt_str("plain", "t|c|1"),
            Err(CryptoError::Malformed)
        );
    }
}
