//! Password hashing with argon2id, off the async threads.
//!
//! Verification for an unknown email runs against a dummy hash, so a login takes as long
//! whether or not the account exists.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use crate::error::{Error, Result};

/// Shortest password accepted.
pub const MIN_LEN: usize = 10;
/// Longest password accepted (hashing cost grows with length).
pub const MAX_LEN: usize = 512;

/// A password that meets the length rules.
pub struct Password(String);

impl Password {
    /// Checks the rules; the error names the field.
    pub fn parse(pointer: &str, text: &str) -> Result<Self> {
        let len = text.chars().count();
        if len < MIN_LEN {
            return Err(Error::field(
                pointer,
                format!("use at least {MIN_LEN} characters"),
            ));
        }
        if len > MAX_LEN {
            return Err(Error::field(
                pointer,
                format!("use at most {MAX_LEN} characters"),
            ));
        }
        Ok(Self(text.to_owned()))
    }
}

fn hash_blocking(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(anyhow::anyhow!("argon2: {e}")))
}

/// Hashes a new password (argon2id, random salt) on the blocking pool.
pub async fn hash(password: Password) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_blocking(&password.0))
        .await
        .map_err(Error::internal)?
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_blocking(&portcullis_core::token::random_secret("dummy_"))
            .unwrap_or_else(|_| String::from("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA"))
    })
}

/// Whether `password` matches `stored`; with `None` (no such account) it does the same work
/// against a dummy hash and answers false.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| dummy_hash().to_owned());
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok();
        ok && known
    })
    .await
    .map_err(Error::internal)
}

/// Computes the dummy hash now, so the first login of an unknown email is not faster.
pub fn warm_up() {
    tokio::task::spawn_blocking(|| {
        let _ = dummy_hash();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_never_do() {
        let stored = hash(Password::parse("/p", "correct horse battery").unwrap())
            .await
            .unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(
            verify("correct horse battery".into(), Some(stored.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify("wrong password!".into(), Some(stored))
                .await
                .unwrap()
        );
        assert!(!verify("anything at all".into(), None).await.unwrap());
        assert!(Password::parse("/p", "short").is_err());
    }
}
