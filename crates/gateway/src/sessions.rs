//! Client-facing session ids: the upstream's session id sealed (AES-256-GCM) and bound to the
//! grant, so any replica can continue a session and an id presented under another grant does
//! not open.
//!
//! The client sees `base64url(seal(payload, "session:<grant>"))`. The payload is the upstream's
//! id (Streamable HTTP), or, for HTTP+SSE upstreams, the client's `initialize` params, which
//! every request replays on a fresh upstream connection (the legacy transport ties a session
//! to one open stream, which a stateless gateway cannot keep).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::{GrantId, Keyring};

/// Payload tags: the kind of session, and whether its issue time follows (8 bytes, seconds
/// since the Unix epoch, big-endian). Ids sealed before issue times were recorded have none.
/// `e` is `u` for a client that declared form elicitation at `initialize`, so every replica
/// knows it can ask the client's user to confirm a call (a legacy session's replayed
/// `initialize` params say so themselves).
const UPSTREAM: u8 = b'U';
const LEGACY: u8 = b'L';
const UPSTREAM_TIMED: u8 = b'u';
const LEGACY_TIMED: u8 = b'l';
const UPSTREAM_TIMED_ELICITS: u8 = b'e';

/// What a client's session id stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    /// The upstream's own session id (Streamable HTTP, session era).
    Upstream(String),
    /// The `initialize` params to replay on each request (HTTP+SSE upstreams).
    Legacy(String),
}

/// Why a client's session id does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not sealed under this grant by a key of the ring, or altered.
    NotIssued,
    /// Issued under this grant, but longer ago than the maximum age (or before issue times
    /// were kept, while there is a maximum age).
    Expired,
}

/// Seals and opens session ids.
#[derive(Clone)]
pub struct SessionKeys {
    keys: Arc<Keyring>,
    /// How long after it was issued a session id still opens; `None`: forever.
    max_age: Option<Duration>,
}

impl SessionKeys {
    /// Session ids sealed with `keys` (the first seals; all open, so keys rotate), opening for
    /// `max_age` after they were issued (`None`: as long as their key is in the ring).
    pub fn new(keys: Keyring, max_age: Option<Duration>) -> Self {
        Self {
            keys: Arc::new(keys),
            max_age,
        }
    }

    /// The ring, which also seals the gateway's other client-held values under contexts of
    /// their own (`requestState` envelopes, legacy reply ids).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keys
    }

    /// The id the client sees for a new `session` under `grant`, issued now.
    pub fn wrap(&self, grant: GrantId, session: &Session) -> String {
        self.wrap_client(grant, session, false)
    }

    /// [`SessionKeys::wrap`] for a client that declared form elicitation (`elicits`) or not.
    pub fn wrap_client(&self, grant: GrantId, session: &Session, elicits: bool) -> String {
        self.seal(grant, session, unix_now(), elicits)
    }

    fn seal(&self, grant: GrantId, session: &Session, issued: u64, elicits: bool) -> String {
        let (tag, body) = match session {
            Session::Upstream(id) if elicits => (UPSTREAM_TIMED_ELICITS, id.as_bytes()),
            Session::Upstream(id) => (UPSTREAM_TIMED, id.as_bytes()),
            Session::Legacy(init) => (LEGACY_TIMED, init.as_bytes()),
        };
        let mut plain = Vec::with_capacity(body.len() + 9);
        plain.push(tag);
        plain.extend_from_slice(&issued.to_be_bytes());
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

    /// Opens a client's session id issued under `grant` by a key of the ring, no older than
    /// the maximum age.
    pub fn unwrap(&self, grant: GrantId, client_id: &str) -> Result<Session, Refused> {
        self.open(grant, client_id).map(|opened| opened.session)
    }

    /// [`SessionKeys::unwrap`], and whether the client declared form elicitation when the
    /// session began.
    pub fn unwrap_client(
        &self,
        grant: GrantId,
        client_id: &str,
    ) -> Result<(Session, bool), Refused> {
        self.open(grant, client_id).map(|opened| {
            let elicits = match &opened.session {
                Session::Upstream(_) => opened.elicits,
                Session::Legacy(init) => serde_json::value::RawValue::from_string(init.clone())
                    .is_ok_and(|params| {
                        portcullis_mcp::elicitation::initialize_supports_form(&params)
                    }),
            };
            (opened.session, elicits)
        })
    }

    /// A client's session id sealed again by the active key, with the same session and issue
    /// time (so a key rotation neither ends sessions nor makes them younger).
    pub fn reseal(&self, grant: GrantId, client_id: &str) -> Option<String> {
        let opened = self.open(grant, client_id).ok()?;
        Some(self.seal(grant, &opened.session, opened.issued?, opened.elicits))
    }

    /// When a session id the client holds stops opening: its issue time plus the maximum
    /// age. `None` without a maximum age, and for an id that does not open.
    pub fn ends(&self, grant: GrantId, client_id: &str) -> Option<SystemTime> {
        let max_age = self.max_age?.as_secs();
        let issued = self.open(grant, client_id).ok()?.issued;
        Some(UNIX_EPOCH + Duration::from_secs(issued?.saturating_add(max_age)))
    }

    /// The session, its issue time and its elicitation flag.
    fn open(&self, grant: GrantId, client_id: &str) -> Result<Opened, Refused> {
        let plain = self
            .keys
            .open_text(
                client_id.trim(),
                &portcullis_core::crypto::session_context(grant),
            )
            .map_err(|_| Refused::NotIssued)?;
        let (&tag, rest) = plain.split_first().ok_or(Refused::NotIssued)?;
        let (issued, body) = match tag {
            UPSTREAM_TIMED | LEGACY_TIMED | UPSTREAM_TIMED_ELICITS => {
                let (time, body) = rest.split_first_chunk::<8>().ok_or(Refused::NotIssued)?;
                (Some(u64::from_be_bytes(*time)), body)
            }
            _ => (None, rest),
        };
        if let Some(max_age) = self.max_age {
            // An id without an issue time cannot be shown to be young enough.
            let age = issued.map(|issued| unix_now().saturating_sub(issued));
            if age.is_none_or(|age| age >= max_age.as_secs()) {
                return Err(Refused::Expired);
            }
        }
        let body = String::from_utf8(body.to_vec()).map_err(|_| Refused::NotIssued)?;
        let session = match tag {
            UPSTREAM | UPSTREAM_TIMED | UPSTREAM_TIMED_ELICITS => Session::Upstream(body),
            LEGACY | LEGACY_TIMED => Session::Legacy(body),
            _ => return Err(Refused::NotIssued),
        };
        Ok(Opened {
            session,
            issued,
            elicits: tag == UPSTREAM_TIMED_ELICITS,
        })
    }
}

/// An opened session id.
struct Opened {
    session: Session,
    /// Its issue time (`None` for an id sealed before issue times were kept, which opens only
    /// while there is no maximum age).
    issued: Option<u64>,
    /// The client declared form elicitation (an upstream session's flag).
    elicits: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        let rotated = SessionKeys::new(
            Keyring::parse(&format!("{new_spec},{old_spec}")).unwrap(),
            None,
        );
        let grant = GrantId::new();
        let session = Session::Upstream("abc-123".into());
        let before = SessionKeys::new(old, None).wrap(grant, &session);
        assert_eq!(rotated.unwrap(grant, &before), Ok(session.clone()));
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
        let session = SessionKeys::new(Keyring::parse(&spec).unwrap(), None)
            .wrap(grant, &Session::Upstream("stream-1:42".into()));
        assert_eq!(ids.open(&session), None);
    }

    #[test]
    fn sessions_open_until_their_max_age_and_keep_it_when_resealed() {
        let (old, old_spec) = Keyring::generate(1);
        let (_, new_spec) = Keyring::generate(2);
        let ring = || Keyring::parse(&format!("{new_spec},{old_spec}")).unwrap();
        let hour = Duration::from_secs(3600);
        let (timed, forever) = (
            SessionKeys::new(ring(), Some(hour)),
            SessionKeys::new(ring(), None),
        );
        let grant = GrantId::new();
        let session = Session::Legacy("{}".into());
        let old = SessionKeys::new(old, None);
        let young = old.seal(grant, &session, unix_now() - 3599, false);
        let aged = old.seal(grant, &session, unix_now() - 3600, false);
        assert_eq!(timed.unwrap(grant, &young), Ok(session.clone()));
        assert_eq!(timed.unwrap(grant, &aged), Err(Refused::Expired));
        assert_eq!(forever.unwrap(grant, &aged), Ok(session.clone()));
        // Sealed anew by the active key, an id keeps its issue time: it ages out as before.
        let resealed = timed.reseal(grant, &young).unwrap();
        assert!(timed.sealed_by_active(&resealed) && !timed.sealed_by_active(&young));
        assert_eq!(
            timed.open(grant, &resealed).map(|o| (o.session, o.issued)),
            timed.open(grant, &young).map(|o| (o.session, o.issued))
        );
        assert_eq!(timed.reseal(grant, &aged), None);
        // An id sealed before issue times were kept opens only without a maximum age.
        let untimed = old
            .keys
            .seal_text(b"Uabc", &portcullis_core::crypto::session_context(grant));
        let upstream = Session::Upstream("abc".into());
        assert_eq!(forever.unwrap(grant, &untimed), Ok(upstream));
        assert_eq!(forever.reseal(grant, &untimed), None);
        assert_eq!(timed.unwrap(grant, &untimed), Err(Refused::Expired));
        // An id of another grant is not issued, whatever its age.
        assert_eq!(timed.unwrap(GrantId::new(), &aged), Err(Refused::NotIssued));
    }

    #[test]
    fn a_session_remembers_whether_its_client_elicits_through_reseals() {
        let (old, old_spec) = Keyring::generate(1);
        let (_, new_spec) = Keyring::generate(2);
        let rotated = SessionKeys::new(
            Keyring::parse(&format!("{new_spec},{old_spec}")).unwrap(),
            None,
        );
        let grant = GrantId::new();
        let session = Session::Upstream("abc".into());
        let old = SessionKeys::new(old, None);
        for elicits in [true, false] {
            let id = old.wrap_client(grant, &session, elicits);
            assert_eq!(
                rotated.unwrap_client(grant, &id),
                Ok((session.clone(), elicits))
            );
            let resealed = rotated.reseal(grant, &id).unwrap();
            assert_eq!(
                rotated.unwrap_client(grant, &resealed),
                Ok((session.clone(), elicits))
            );
        }
        // A legacy session's replayed `initialize` says it.
        let legacy = Session::Legacy(r#"{"capabilities":{"elicitation":{}}}"#.into());
        let id = rotated.wrap(grant, &legacy);
        assert_eq!(rotated.unwrap_client(grant, &id), Ok((legacy, true)));
    }

    #[test]
    fn sessions_open_only_under_their_grant() {
        let keys = SessionKeys::new(Keyring::generate(1).0, None);
        let grant = GrantId::new();
        let session = Session::Upstream("abc-123".into());
        let wrapped = keys.wrap(grant, &session);
        assert!(!wrapped.contains("abc-123"));
        assert!(wrapped.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(keys.unwrap(grant, &wrapped), Ok(session));
        assert_eq!(
            keys.unwrap(GrantId::new(), &wrapped),
            Err(Refused::NotIssued)
        );
        assert_eq!(keys.unwrap(grant, "not-a-session"), Err(Refused::NotIssued));
        let other = SessionKeys::new(Keyring::generate(1).0, None);
        assert_eq!(other.unwrap(grant, &wrapped), Err(Refused::NotIssued));
    }

    /// The input the `session_id` fuzz target stopped on: an id sealed under the target's own
    /// fixed key, learned from an earlier input, with the white space a client may send around
    /// it. It opens under the key that sealed it and no other (the target now seals each input
    /// under fresh keys).
    #[test]
    fn ids_open_with_their_key_whatever_the_white_space_around_them() {
        let sealer = SessionKeys::new(Keyring::generate(2).0, None);
        let grant = GrantId::new();
        let session = Session::Upstream("0=r".into());
        let sent = format!("  {}", sealer.wrap(grant, &session));
        assert_eq!(sealer.unwrap(grant, &sent), Ok(session));
        let stranger = SessionKeys::new(Keyring::generate(2).0, None);
        assert_eq!(stranger.unwrap(grant, &sent), Err(Refused::NotIssued));
        assert!(!stranger.sealed_by_active("  ") && stranger.reseal(grant, &sent).is_none());
    }
}
