//! Passwords: argon2id hashing off the async runtime, and the password policy.
//!
//! Hashing is deliberately slow (OWASP parameters), so it runs on the blocking pool behind a
//! semaphore sized to the CPUs: a sign-in storm waits its turn there instead of starving the
//! runtime threads that serve every other request. Verification reads its parameters from
//! the stored PHC string, so hashes made with older parameters keep verifying.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::config::AuthConfig;

#[derive(Clone)]
pub struct PasswordHasherPool {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the account does not exist so an
    /// unknown email takes as long as a wrong password.
    dummy_hash: Arc<String>,
}

impl std::fmt::Debug for PasswordHasherPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasherPool")
            .field("permits", &self.permits.available_permits())
            .finish()
    }
}

impl PasswordHasherPool {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let permits = if config.hash_concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.hash_concurrency
        };
        let dummy = hash_blocking(&params, &crate::crypto::random_token(24))?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(permits)),
            dummy_hash: Arc::new(dummy),
        })
    }

    /// Hashes a password (argon2id, random salt) into a PHC string.
    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let params = self.params.clone();
        let password = password.to_string();
        tokio::task::spawn_blocking(move || hash_blocking(&params, &password)).await?
    }

    /// Checks a password against a stored hash; `None` burns the same time against a dummy
    /// hash and returns false.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let stored = stored.unwrap_or(&self.dummy_hash).to_string();
        let real = !std::ptr::eq(stored.as_str(), self.dummy_hash.as_str());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return false;
            };
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .await?;
        Ok(ok && real)
    }
}

fn hash_blocking(params: &Params, password: &str) -> anyhow::Result<String> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    argon
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
}

/// Passwords people choose most often that are long enough to pass a length rule.
const COMMON: &[&str] = &[
    "123456789012",
    "1234567890123",
    "12345678901234",
    "123456789abc",
    "1234567890qwerty",
    "qwertyuiopasdf",
    "qwertyuiop123",
    "qwerty123456",
    "qwertyqwerty",
    "1q2w3e4r5t6y",
    "1qaz2wsx3edc",
    "zaq12wsxcde3",
    "password1234",
    "password12345",
    "password123456",
    "passwordpassword",
    "password!123",
    "p@ssword1234",
    "p@ssw0rd1234",
    "passw0rd1234",
    "iloveyou1234",
    "iloveyouforever",
    "letmein12345",
    "welcome12345",
    "welcome123456",
    "administrator",
    "administrator1",
    "admin1234567",
    "adminadmin123",
    "changeme1234",
    "changemeplease",
    "trustno1trustno1",
    "football1234",
    "baseball1234",
    "basketball123",
    "superman1234",
    "batman123456",
    "starwars1234",
    "princess1234",
    "sunshine1234",
    "monkey123456",
    "dragon123456",
    "master123456",
    "shadow123456",
    "michael12345",
    "jennifer1234",
    "computer1234",
    "internet1234",
    "whatever1234",
    "abc123456789",
    "abcdefghijkl",
    "abcdefgh1234",
    "abcd1234abcd",
    "aaaaaaaaaaaa",
    "111111111111",
    "000000000000",
    "987654321098",
    "qazwsxedcrfv",
    "asdfghjkl123",
    "zxcvbnm12345",
    "mypassword123",
    "secretpassword",
    "supersecret123",
    "letmeinplease",
    "correcthorsebatterystaple",
    "summer2024!!",
    "winter2024!!",
    "spring2024!!",
    "autumn2024!!",
    "january2024!",
    "india@123456",
    "india1234567",
    "pakistan1234",
    "bismillah123",
    "allahuakbar1",
];

/// Why a password is refused (shown to the user as the field message).
pub fn check_policy(password: &str, email: &str, min_length: usize) -> Result<(), String> {
    let length = password.chars().count();
    if length < min_length {
        return Err(format!("must be at least {min_length} characters"));
    }
    if length > 128 {
        return Err("must be at most 128 characters".into());
    }
    let lower = password.to_lowercase();
    if COMMON.contains(&lower.as_str()) {
        return Err("is one of the most common passwords; choose another".into());
    }
    let first = lower.chars().next();
    if lower.chars().all(|c| Some(c) == first) {
        return Err("must not repeat a single character".into());
    }
    let local = email.split('@').next().unwrap_or("").to_lowercase();
    if local.len() >= 4 && lower.contains(&local) {
        return Err("must not contain your email address".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> AuthConfig {
        AuthConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..AuthConfig::default()
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_only_its_password() {
        let pool = PasswordHasherPool::new(&fast()).expect("pool");
        let h = pool.hash("correct horse battery").await.expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(
            pool.verify("correct horse battery", Some(&h))
                .await
                .expect("verify")
        );
        assert!(
            !pool
                .verify("wrong horse battery", Some(&h))
                .await
                .expect("verify")
        );
        assert!(!pool.verify("anything", None).await.expect("verify"));
        assert!(
            !pool
                .verify("anything", Some("not a hash"))
                .await
                .expect("verify")
        );
    }

    #[test]
    fn the_policy_names_what_is_wrong() {
        assert!(check_policy("short", "a@b.c", 12).is_err_and(|m| m.contains("12")));
        assert!(check_policy("password1234", "a@b.c", 12).is_err_and(|m| m.contains("common")));
        assert!(check_policy("zzzzzzzzzzzzzz", "a@b.c", 12).is_err());
        assert!(check_policy("alice.smith-2024!", "alice.smith@x.io", 12).is_err());
        assert!(check_policy("tangerine-orbit-42", "alice@x.io", 12).is_ok());
    }
}
