//! Access tokens (JWT) and refresh-token derivation.
//!
//! Access tokens are HS256 JWTs with a key id (`kid`): the active secret signs, previous
//! secrets (configuration) still verify until their tokens expire, so the secret can rotate
//! without signing everyone out. Verification pins the algorithm, issuer and audience and
//! requires `exp`; an `alg: none` token or one signed with another algorithm is refused.
//!
//! Refresh tokens are opaque. The first of a session is 256 random bits; each rotation's
//! successor is `HMAC(refresh key, parent)`. That determinism lets a just-rotated token,
//! replayed within the grace window (two tabs refreshing at once), yield the very same new
//! token instead of revoking the session, while only hashes are ever stored.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Config;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user.
    pub sub: Uuid,
    /// The user's organization.
    pub org: Uuid,
    pub role: String,
    /// The session; revoking it refuses its access tokens everywhere.
    pub sid: Uuid,
    /// This token's id, for revoking one token.
    pub jti: Uuid,
    pub iat: i64,
    /// Issued-at in milliseconds: lets a revocation refuse tokens issued before it within
    /// the same second (e.g. just before a role change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ims: Option<i64>,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// The business partner a partner user is tied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<Uuid>,
    /// Set when the organization requires two-factor sign-in and the user has not enrolled:
    /// only enrolment and sign-out are allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enr: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid")]
    Invalid,
}

/// Signing and verification keys, by key id.
#[derive(Clone)]
pub struct TokenKeys {
    active_kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    validation: Validation,
    refresh_key: [u8; 32],
    csrf_key: [u8; 32],
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("active_kid", &self.active_kid)
            .field("kids", &self.decoding.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The public id of a signing secret.
pub fn signing_kid(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"keel/jwt-kid/v1");
    h.update(secret);
    hex::encode(&h.finalize()[..8])
}

fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl TokenKeys {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let secret = config
            .jwt_secret
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("jwt_secret is not configured"))?
            .expose()
            .as_bytes()
            .to_vec();
        let active_kid = signing_kid(&secret);
        let mut decoding = HashMap::new();
        decoding.insert(active_kid.clone(), DecodingKey::from_secret(&secret));
        for old in &config.auth.previous_jwt_secrets {
            let bytes = old.expose().as_bytes();
            decoding.insert(signing_kid(bytes), DecodingKey::from_secret(bytes));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[config.auth.issuer.as_str()]);
        validation.set_audience(&[config.auth.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(Self {
            active_kid,
            encoding: EncodingKey::from_secret(&secret),
            decoding,
            validation,
            refresh_key: derive(&secret, b"keel/refresh-rotation/v1"),
            csrf_key: derive(&secret, b"keel/csrf/v1"),
        })
    }

    pub fn active_kid(&self) -> &str {
        &self.active_kid
    }

    pub fn sign(&self, claims: &AccessClaims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.active_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| anyhow::anyhow!("cannot sign a token: {e}"))
    }

    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        // With one key (no rotation under way) the header need not be read first: decoding
        // checks the algorithm against the pinned one anyway, and a token signed with any
        // other key fails its signature. That saves a third of the work on every request.
        let key = if self.decoding.len() == 1 {
            self.decoding.values().next().ok_or(TokenError::Invalid)?
        } else {
            let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
            if header.alg != Algorithm::HS256 {
                return Err(TokenError::Invalid);
            }
            header
                .kid
                .as_deref()
                .and_then(|kid| self.decoding.get(kid))
                .ok_or(TokenError::Invalid)?
        };
        match jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }

    /// The refresh token that succeeds `parent` at rotation.
    pub fn child_refresh_token(&self, parent: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.refresh_key)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(parent.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The CSRF token of a session (stateless: derived from the session id).
    pub fn csrf_token(&self, session_id: Uuid) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.csrf_key)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(session_id.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(secret: &str) -> Config {
        Config {
            jwt_secret: Some(Secret::new(secret)),
            ..Config::default()
        }
    }

    fn claims(exp_in: i64) -> AccessClaims {
        let now = chrono::Utc::now().timestamp();
        AccessClaims {
            sub: Uuid::now_v7(),
            org: Uuid::now_v7(),
            role: "admin".into(),
            sid: Uuid::now_v7(),
            jti: Uuid::now_v7(),
            iat: now,
            ims: Some(now * 1000),
            exp: now + exp_in,
            iss: "keel".into(),
            aud: "keel-api".into(),
            pid: None,
            enr: false,
        }
    }

    const A: &str = "first-secret-first-secret-first-secret-0001";
    const B: &str = "second-secret-second-secret-second-secret-02";

    #[test]
    fn a_signed_token_verifies_and_round_trips_its_claims() {
        let keys = TokenKeys::from_config(&config(A)).expect("keys");
        let c = claims(900);
        let token = keys.sign(&c).expect("sign");
        assert_eq!(keys.verify(&token).expect("verify"), c);
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let keys = TokenKeys::from_config(&config(A)).expect("keys");
        let expired = keys.sign(&claims(-60)).expect("sign");
        assert_eq!(keys.verify(&expired), Err(TokenError::Expired));

        let other = TokenKeys::from_config(&config(B)).expect("keys");
        let foreign = other.sign(&claims(900)).expect("sign");
        assert_eq!(keys.verify(&foreign), Err(TokenError::Invalid));

        let token = keys.sign(&claims(900)).expect("sign");
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&AccessClaims {
                role: "super_admin".into(),
                ..claims(900)
            })
            .expect("json"),
        );
        parts[1] = &forged_payload;
        assert_eq!(keys.verify(&parts.join(".")), Err(TokenError::Invalid));
    }

    #[test]
    fn alg_none_and_wrong_audience_are_refused() {
        let keys = TokenKeys::from_config(&config(A)).expect("keys");
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(900)).expect("json"));
        assert_eq!(
            keys.verify(&format!("{header}.{payload}.")),
            Err(TokenError::Invalid)
        );

        let mut wrong_aud = config(A);
        wrong_aud.auth.audience = "someone-else".into();
        let other = TokenKeys::from_config(&wrong_aud).expect("keys");
        let token = keys.sign(&claims(900)).expect("sign");
        assert_eq!(other.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn a_previous_secret_still_verifies_after_rotation() {
        let old = TokenKeys::from_config(&config(A)).expect("keys");
        let token = old.sign(&claims(900)).expect("sign");
        let mut rotated = config(B);
        rotated.auth.previous_jwt_secrets = vec![Secret::new(A)];
        let new = TokenKeys::from_config(&rotated).expect("keys");
        assert!(new.verify(&token).is_ok());
        assert_ne!(new.active_kid(), old.active_kid());
        assert!(
            TokenKeys::from_config(&config(B))
                .expect("keys")
                .verify(&token)
                .is_err()
        );
    }

    #[test]
    fn refresh_children_are_deterministic_and_unlinkable() {
        let keys = TokenKeys::from_config(&config(A)).expect("keys");
        let parent = crate::crypto::random_token(32);
        assert_eq!(
            keys.child_refresh_token(&parent),
            keys.child_refresh_token(&parent)
        );
        assert_ne!(keys.child_refresh_token(&parent), parent);
        let other = TokenKeys::from_config(&config(B)).expect("keys");
        assert_ne!(
            other.child_refresh_token(&parent),
            keys.child_refresh_token(&parent)
        );
    }
}
