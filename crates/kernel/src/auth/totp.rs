//! Two-factor sign-in with time-based one-time passwords (RFC 6238, via `totp-rs`) and
//! single-use recovery codes.
//!
//! The shared secret is stored encrypted (AES-256-GCM, bound to the user's row); a code is
//! accepted once (the last accepted time step is recorded, so a code seen over someone's
//! shoulder cannot be replayed within its 30 seconds); recovery codes are stored hashed.

use totp_rs::{Algorithm, Builder, Secret, Totp};
use uuid::Uuid;

use super::store::{self, SecurityEventKind, UserRow};
use crate::crypto::token_hash;
use crate::state::AppState;
use crate::store::Tx;

pub const RECOVERY_CODES: usize = 10;

pub fn secret_context(user_id: Uuid) -> String {
    format!("users|totp_secret|{user_id}")
}

/// A TOTP for a secret, labelled for authenticator apps.
pub fn totp(secret: &[u8], account: &str) -> anyhow::Result<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(Secret::from(secret.to_vec()))
        .with_issuer(Some("Keel"))
        .with_account_name(account.replace(':', "_"))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build a TOTP: {e:?}"))
}

pub fn new_secret() -> Vec<u8> {
    let mut bytes = vec![0u8; 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    bytes
}

/// The decrypted secret of a user, if one is stored.
pub fn user_secret(state: &AppState, user: &UserRow) -> anyhow::Result<Option<Vec<u8>>> {
    match &user.totp_secret {
        Some(enc) => Ok(Some(
            state
                .auth
                .keyring
                .decrypt(enc, &secret_context(user.id))
                .map_err(|e| anyhow::anyhow!("cannot decrypt a TOTP secret: {e}"))?,
        )),
        None => Ok(None),
    }
}

/// Checks a 6-digit code, accepting each time step once. Records the step when accepted.
pub async fn check_code(
    state: &AppState,
    tx: &mut Tx,
    user: &UserRow,
    code: &str,
) -> anyhow::Result<bool> {
    let Some(secret) = user_secret(state, user)? else {
        return Ok(false);
    };
    let t = totp(&secret, &user.email)?;
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    let Some(step) = t.check(code.trim(), now) else {
        return Ok(false);
    };
    let step = i64::try_from(step).unwrap_or(i64::MAX);
    if user.totp_last_step.is_some_and(|last| step <= last) {
        return Ok(false);
    }
    store::update_user(
        tx,
        user.org_id,
        user.id,
        vec![("totp_last_step", step.into())],
        None,
    )
    .await?;
    Ok(true)
}

/// Normalises a recovery code as typed (case, spaces, dashes).
pub fn normalise_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// New recovery codes: `XXXXX-XXXXX-XXXXX-XXXXX` (20 base32 characters, 100 bits).
pub fn new_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 20];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(b % 32)]))
                .collect();
            chars
                .chunks(5)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

pub fn recovery_hash(code: &str) -> String {
    token_hash(&normalise_recovery_code(code))
}

/// A second factor at sign-in: a current code, or an unused recovery code.
pub async fn verify_login_code(
    state: &AppState,
    tx: &mut Tx,
    user: &UserRow,
    code: &str,
    ctx: &crate::audit::AuditContext,
) -> Result<bool, crate::http::ApiError> {
    if !user.totp_enabled {
        return Ok(false);
    }
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() == 6 && digits.chars().all(|c| c.is_ascii_digit()) {
        return Ok(check_code(state, tx, user, &digits).await?);
    }
    let used = store::use_recovery_code(tx, user.id, &recovery_hash(code)).await?;
    if used {
        store::security_event_tx(
            tx,
            Some(user.org_id),
            Some(user.id),
            SecurityEventKind::RecoveryCodeUsed,
            ctx,
            serde_json::json!({}),
        )
        .await?;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_unique_and_normalise() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let set: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(set.len(), RECOVERY_CODES);
        let c = &codes[0];
        assert_eq!(
            recovery_hash(c),
            recovery_hash(&c.to_lowercase().replace('-', " "))
        );
    }

    #[test]
    fn a_generated_code_checks_at_its_time_only() {
        let secret = new_secret();
        let t = totp(&secret, "a@example.com").expect("totp");
        let code = t.generate(1_000_000).to_string();
        assert!(t.check(&code, 1_000_000).is_some());
        assert!(t.check(&code, 1_000_000 + 300).is_none());
    }
}
