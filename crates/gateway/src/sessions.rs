//! Client-facing session ids: the upstream's session id sealed (AES-256-GCM) and bound to the
//! grant, so any replica can continue a session and an id presented under another grant does
//! not open.
//!
//! The client sees `base64url(seal(payload, "session:<grant>"))`. The payload is the upstream's
//! id (Streamable HTTP), or, for HTTP+SSE upstreams, the client's `initialize` params, which
//! every request replays on a fresh upstream connection (the legacy transport ties a session
//! to one open stream, which a stateless gateway cannot keep).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::{GrantId, Keyring};

const UPSTREAM: u8 = b'U';
const LEGACY: u8 = b'L';

/// What a client's session id stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    /// The upstream's own session id (Streamable HTTP, session era).
    Upstream(String),
    /// The `initialize` params to replay on each request (HTTP+SSE upstreams).
    Legacy(String),
}

/// Seals and opens session ids.
#[derive(Clone)]
pub struct SessionKeys {
    keys: Arc<Keyring>,
}

impl SessionKeys {
    /// Session ids sealed with `keys` (the first seals; all open, so keys rotate).
    pub fn new(keys: Keyring) -> Self {
        Self {
            keys: Arc::new(keys),
        }
    }

    /// The ring, which also seals the gateway's other client-held values under contexts of
    /// their own (`requestState` envelopes, legacy reply ids).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keys
    }

    /// The id the client sees for `session` under `grant`.
    pub fn wrap(&self, grant: GrantId, session: &Session) -> String {
        let (tag, body) = match session {
            Session::Upstream(id) => (UPSTREAM, id.as_bytes()),
            Session::Legacy(init) => (LEGACY, init.as_bytes()),
        };
        let mut plain = Vec::with_capacity(body.len() + 1);
        plain.push(tag);
        plain.extend_from_slice(body);
        self.keys
            .seal_text(&plain, &portcullis_core::crypto::session_context(grant))
    }

    /// Whether a session id the client holds was sealed by the ring's active key (an id sealed
    /// by an older key is sealed again when next returned, so old keys can be retired).
    pub fn sealed_by_active(&self, client_id: &str) -> bool {
        // The first 24 characters are the first 18 bytes: the header (format, key id, nonce).
        let head = client_id.trim().get(..24).unwrap_or_default();
        URL_SAFE_NO_PAD
            .decode(head)
            .ok()
            .and_then(|b| Keyring::sealed_by(&b))
            .is_some_and(|id| id == self.keys.active_id())
    }

    /// Opens a client's session id; `None` when it was not issued under `grant` by a key of
    /// the ring (or was altered).
    pub fn unwrap(&self, grant: GrantId, client_id: &str) -> Option<Session> {
        let plain = self
            .keys
            .open_text(
                client_id.trim(),
                &portcullis_core::crypto::session_context(grant),
            )
            .ok()?;
        let (tag, body) = plain.split_first()?;
        let body = String::from_utf8(body.to_vec()).ok()?;
        match *tag {
            UPSTREAM => Some(Session::Upstream(body)),
            LEGACY => Some(Session::Legacy(body)),
            _ => None,
        }
    }
}

/// Seals and opens the SSE event ids a client sees. An upstream's event ids name points in its
/// streams, and some upstreams replay by event id alone (whatever the session); sealed under
/// the grant, a `Last-Event-ID` opens only under the grant whose stream carried it, so no
/// client can resume another grant's stream with an id it learned.
#[derive(Clone)]
pub struct EventIds {
    keys: Arc<Keyring>,
    context: Vec<u8>,
}

impl EventIds {
    /// Event ids of streams relayed under `grant`.
    pub fn new(keys: Arc<Keyring>, grant: GrantId) -> Self {
        Self {
            keys,
            context: portcullis_core::crypto::event_id_context(grant),
        }
    }

    /// The id the client sees for the upstream's `id`.
    pub fn seal(&self, id: &str) -> String {
        self.keys.seal_text(id.as_bytes(), &self.context)
    }

    /// The upstream's id, if `client_id` was sealed under this grant by a key of the ring.
    pub fn open(&self, client_id: &str) -> Option<String> {
        let plain = self.keys.open_text(client_id.trim(), &self.context).ok()?;
        String::from_utf8(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sealed_by_an_older_key_are_told_apart() {
        let (old, old_spec) = Keyring::generate(1);
        let (_, new_spec) = Keyring::generate(2);
        let rotated = SessionKeys::new(Keyring::parse(&format!("{new_spec},{old_spec}")).unwrap());
        let grant = GrantId::new();
        let session = Session::Upstream("abc-123".into());
        let before = SessionKeys::new(old).wrap(grant, &session);
        assert_eq!(rotated.unwrap(grant, &before), Some(session.clone()));
        assert!(!rotated.sealed_by_active(&before));
        assert!(rotated.sealed_by_active(&rotated.wrap(grant, &session)));
        assert!(!rotated.sealed_by_active("short"));
    }

    #[test]
    fn event_ids_open_only_under_their_grant() {
        let (ring, spec) = Keyring::generate(1);
        let keys = Arc::new(ring);
        let grant = GrantId::new();
        let ids = EventIds::new(keys.clone(), grant);
        let sealed = ids.seal("stream-1:42");
        assert!(!sealed.contains("42"));
        assert!(
            sealed
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(ids.open(&sealed).as_deref(), Some("stream-1:42"));
        assert_eq!(EventIds::new(keys, GrantId::new()).open(&sealed), None);
        assert_eq!(ids.open("stream-1:42"), None);
        // A session id of the same grant, sealed by the same key, is not an event id.
        let session = SessionKeys::new(Keyring::parse(&spec).unwrap())
            .wrap(grant, &Session::Upstream("stream-1:42".into()));
        assert_eq!(ids.open(&session), None);
    }

    #[test]
    fn sessions_open_only_under_their_grant() {
        let keys = SessionKeys::new(Keyring::generate(1).0);
        let grant = GrantId::new();
        let session = Session::Upstream("abc-123".into());
        let wrapped = keys.wrap(grant, &session);
        assert!(!wrapped.contains("abc-123"));
        assert!(wrapped.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(keys.unwrap(grant, &wrapped), Some(session));
        assert_eq!(keys.unwrap(GrantId::new(), &wrapped), None);
        assert_eq!(keys.unwrap(grant, "not-a-session"), None);
        let other = SessionKeys::new(Keyring::generate(1).0);
        assert_eq!(other.unwrap(grant, &wrapped), None);
    }
}
