//! Grant tokens: random bearer secrets that only ever exist in the clear once, at issue time.
//!
//! The database keeps the SHA-256 of a token. A token is long and random, so a fast hash is
//! enough (no password stretching is needed), and the gateway can resolve it with one lookup.

use std::fmt;

use rand::Rng;
use sha2::{Digest, Sha256};

pub(crate) const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Random text from the lowercase base32 alphabet.
pub fn random_base32(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| BASE32[rng.random_range(0..BASE32.len())] as char)
        .collect()
}

fn random_base62(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| BASE62[rng.random_range(0..BASE62.len())] as char)
        .collect()
}

/// A grant bearer token, `pcg_` and 43 base62 characters (about 256 bits).
///
/// `Debug` and `Display` never print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct GrantToken(String);

impl GrantToken {
    /// The prefix every grant token starts with, so secret scanners can recognise one.
    pub const PREFIX: &'static str = "pcg_";
    const BODY_LEN: usize = 43;

    /// A new random token.
    pub fn generate() -> Self {
        Self(format!("{}{}", Self::PREFIX, random_base62(Self::BODY_LEN)))
    }

    /// Accepts text that has the shape of a grant token. Says nothing about whether it is valid.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix(Self::PREFIX)?;
        (body.len() == Self::BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| Self(s.to_owned()))
    }

    /// The secret itself, for showing once to the user who created the grant.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash stored in Postgres and used to resolve the grant.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }

    /// A short, non-secret hint for lists (`pcg_AbCd…`).
    pub fn hint(&self) -> String {
        format!("{}…", &self.0[..Self::PREFIX.len() + 4])
    }
}

impl fmt::Debug for GrantToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GrantToken(<redacted>)")
    }
}

/// The SHA-256 of a secret token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes any secret text (grant tokens, API tokens, session tokens).
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// The bytes, for a `bytea` column.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", &hex::encode(self.0)[..12])
    }
}

/// A random secret with a readable prefix (`pct_` for API tokens, `pcs_` for sessions).
pub fn random_secret(prefix: &str) -> String {
    format!("{prefix}{}", random_base62(43))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_hash_and_never_print() {
        let t = GrantToken::generate();
        assert_eq!(t.expose().len(), 47);
        let parsed = GrantToken::parse(t.expose()).unwrap();
        assert_eq!(parsed.hash(), t.hash());
        assert!(!format!("{t:?}").contains(&t.expose()[4..]));
        assert!(GrantToken::parse("pcg_short").is_none());
        assert!(GrantToken::parse(&t.expose().replace("pcg_", "xyz_")).is_none());
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(
            hex::encode(TokenHash::of("abc").0),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
