//! Authenticated encryption with versioned keys (AES-256-GCM).
//!
//! Upstream credentials are sealed at rest and the gateway's session ids are sealed on the wire.
//! Each sealed value names the key that sealed it, so keys rotate without downtime: add a new key
//! first in the list (it seals from then on), keep the old ones until nothing sealed by them
//! remains, then drop them.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;

const FORMAT: u8 = 1;
const HEADER: usize = 1 + 4 + 12;

/// A set of keys: the first seals, every one opens what it sealed.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(u32, Aes256Gcm)>,
}

/// Why a keyring or a sealed value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The key list does not parse.
    #[error("{0}")]
    InvalidKeys(String),
    /// The value was not sealed by a key of this ring, or was altered, or is bound elsewhere.
    #[error("sealed value cannot be opened")]
    Unopenable,
}

impl Keyring {
    /// Parses `ID:BASE64KEY[,ID:BASE64KEY…]`, each key 32 bytes, the first one active.
    pub fn parse(spec: &str) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        for (i, item) in spec.split(',').map(str::trim).enumerate() {
            let (id, key) = item.split_once(':').ok_or_else(|| {
                CryptoError::InvalidKeys(format!("key {} is not ID:BASE64", i + 1))
            })?;
            let id: u32 = id.parse().map_err(|_| {
                CryptoError::InvalidKeys(format!("key {}: id {id:?} is not a number", i + 1))
            })?;
            let bytes = STANDARD
                .decode(key)
                .map_err(|_| CryptoError::InvalidKeys(format!("key {id}: not valid base64")))?;
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| {
                CryptoError::InvalidKeys(format!(
                    "key {id}: must be 32 bytes, is {} bytes",
                    bytes.len()
                ))
            })?;
            if keys.iter().any(|(k, _)| *k == id) {
                return Err(CryptoError::InvalidKeys(format!(
                    "key id {id} appears twice"
                )));
            }
            keys.push((id, cipher));
        }
        Ok(Self { keys })
    }

    /// A ring with one fresh random key, for tests and first start-up.
    pub fn generate(id: u32) -> (Self, String) {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let spec = format!("{id}:{}", STANDARD.encode(key));
        // A freshly generated spec always parses.
        let ring = Self::parse(&spec).unwrap_or_else(|_| unreachable!());
        (ring, spec)
    }

    /// The id of the key that seals.
    pub fn active_id(&self) -> u32 {
        self.keys[0].0
    }

    /// Seals `plaintext`, bound to `context` (the value only opens with the same context).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let (id, cipher) = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM encryption of an in-memory buffer"));
        let mut out = Vec::with_capacity(HEADER + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed by any key of the ring under the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < HEADER || sealed[0] != FORMAT {
            return Err(CryptoError::Unopenable);
        }
        let id = u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]);
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| *k == id)
            .ok_or(CryptoError::Unopenable)?;
        cipher
            .decrypt(
                Nonce::from_slice(&sealed[5..HEADER]),
                Payload {
                    msg: &sealed[HEADER..],
                    aad: context,
                },
            )
            .map_err(|_| CryptoError::Unopenable)
    }

    /// [`Keyring::seal`], as text a client can hold and send back (base64url, no padding).
    pub fn seal_text(&self, plaintext: &[u8], context: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.seal(plaintext, context))
    }

    /// Opens text made by [`Keyring::seal_text`], exactly as issued (callers that accept
    /// surrounding whitespace trim it first).
    pub fn open_text(&self, text: &str, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let sealed = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CryptoError::Unopenable)?;
        self.open(&sealed, context)
    }

    /// The id of the key that sealed a value, to find values still sealed by an old key.
    pub fn sealed_by(sealed: &[u8]) -> Option<u32> {
        (sealed.len() >= HEADER && sealed[0] == FORMAT)
            .then(|| u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]))
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<u32> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

/// The context an upstream server's sealed headers are bound to, so a sealed value copied onto
/// another server or tenant does not open.
pub fn server_headers_context(tenant: crate::TenantId, server: crate::ServerId) -> Vec<u8> {
    format!("server-headers:{tenant}:{server}").into_bytes()
}

/// The context a client-facing session id is bound to: the grant it was issued under.
pub fn session_context(grant: crate::GrantId) -> Vec<u8> {
    format!("session:{grant}").into_bytes()
}

/// The context of a stateless-era `requestState` envelope: the grant, and the tool call it
/// continues (its name and the SHA-256 of its canonical arguments), so an envelope opens only
/// for the same call under the same grant.
pub fn request_state_context(grant: crate::GrantId, tool: &str, arguments_digest: &str) -> Vec<u8> {
    format!("request-state:{grant}:{arguments_digest}:{tool}").into_bytes()
}

/// The context of an SSE event id a client sees: the grant its stream was relayed under, so a
/// `Last-Event-ID` resumes only a stream of that grant.
pub fn event_id_context(grant: crate::GrantId) -> Vec<u8> {
    format!("event-id:{grant}").into_bytes()
}

/// The context of the id the gateway gives a legacy (HTTP+SSE) server's request to a client:
/// the grant it was relayed under.
pub fn legacy_reply_context(grant: crate::GrantId) -> Vec<u8> {
    format!("legacy-reply:{grant}").into_bytes()
}

/// The context of the id of the gateway's own `elicitation/create` asking a session-era user
/// to confirm a call: the grant it was asked under, so only that grant's client can answer.
pub fn confirmation_context(grant: crate::GrantId) -> Vec<u8> {
    format!("confirmation:{grant}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_context() {
        let (ring, _) = Keyring::generate(1);
        let sealed = ring.seal(b"secret", b"tenant-a");
        assert_eq!(ring.open(&sealed, b"tenant-a").unwrap(), b"secret");
        assert_eq!(
            ring.open(&sealed, b"tenant-b"),
            Err(CryptoError::Unopenable)
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            ring.open(&tampered, b"tenant-a"),
            Err(CryptoError::Unopenable)
        );
        assert_eq!(
            ring.open(b"short", b"tenant-a"),
            Err(CryptoError::Unopenable)
        );
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let (old, old_spec) = Keyring::generate(1);
        let sealed_old = old.seal(b"v1", b"");
        let (_, new_spec) = Keyring::generate(2);
        let rotated = Keyring::parse(&format!("{},{}", new_spec, old_spec)).unwrap();
        assert_eq!(rotated.active_id(), 2);
        assert_eq!(rotated.open(&sealed_old, b"").unwrap(), b"v1");
        let sealed_new = rotated.seal(b"v2", b"");
        assert_eq!(Keyring::sealed_by(&sealed_new), Some(2));
        assert!(old.open(&sealed_new, b"").is_err());
    }

    #[test]
    fn bad_key_lists_say_why() {
        for (spec, want) in [
            ("", "not ID:BASE64"),
            ("x:AAAA", "not a number"),
            ("1:!!!", "base64"),
            ("1:AAAA", "32 bytes"),
        ] {
            let err = Keyring::parse(spec).unwrap_err().to_string();
            assert!(err.contains(want), "{spec}: {err}");
        }
        let (_, a) = Keyring::generate(1);
        assert!(
            Keyring::parse(&format!("{a},{a}"))
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(!format!("{:?}", Keyring::parse(&a).unwrap()).contains(&a[2..]));
    }
}
