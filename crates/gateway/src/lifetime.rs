//! Streams end when their grant or session does.
//!
//! A relayed SSE stream (a session's GET stream, a request's streamed answer) may stay open
//! for hours, and its grant and session are checked when it opens. It must not outlive them:
//! once a new request under the same token would be refused (the grant revoked, expired or
//! deleted) or the session has passed its maximum age, the stream ends, and the client's
//! reconnection is refused as any request is.
//!
//! The grant is looked up again, through the cache, whenever the cache is invalidated or
//! cleared (a revocation reaches every replica within a second) and once per cache TTL (a
//! change no message announced); a timer ends the stream at the grant's expiry and at its
//! session's end. A lookup that fails (Postgres unreachable, or no turn to query it) is tried
//! again within a second; the stream ends once its grant has gone unconfirmed for as long as a
//! request would trust a cached one ([`Grants::trusted_for`]). An identity-bound caller's
//! stream ends when its token expires (a new token opens a new stream).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use portcullis_core::{GrantId, ServerId, TokenHash};

use crate::grants::{Grant, Grants};

/// What a stream was opened under.
pub struct Lifetime {
    grants: Arc<Grants>,
    /// The grant's token hash; `None` for an identity-bound caller, whose stream ends when
    /// its token expires.
    hash: Option<TokenHash>,
    grant: GrantId,
    server: ServerId,
    expires_at: Option<SystemTime>,
    session_ends: Option<SystemTime>,
    /// When the grant was last found usable.
    confirmed: Instant,
    /// Whether the last lookup failed.
    failed: bool,
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its grant is revoked, expired or gone.
    Grant,
    /// Its session passed its maximum age.
    Session,
}

impl Lifetime {
    /// A stream opened under `grant`, in a session that ends at `session_ends` (if it does).
    pub fn new(grants: Arc<Grants>, grant: &Grant, session_ends: Option<SystemTime>) -> Self {
        Self {
            grants,
            hash: grant.token_hash,
            grant: grant.id,
            server: grant.server.id,
            expires_at: grant.expires_at.map(SystemTime::from),
            session_ends,
            confirmed: Instant::now(),
            failed: false,
        }
    }

    /// Resolves when the stream must end, and says why.
    pub async fn ended(mut self) -> Ended {
        let mut changes = self.grants.changes();
        let mut announced = true;
        loop {
            let now = SystemTime::now();
            if self.session_ends.is_some_and(|end| end <= now) {
                return Ended::Session;
            }
            if self.expires_at.is_some_and(|at| at <= now) {
                return Ended::Grant;
            }
            // After a failed lookup, look again within a second rather than a TTL.
            let recheck = if self.failed {
                self.grants.ttl().min(Duration::from_secs(1))
            } else {
                self.grants.ttl()
            };
            let next = [self.session_ends, self.expires_at]
                .into_iter()
                .flatten()
                .map(|at| at.duration_since(now).unwrap_or_default())
                .fold(recheck, Duration::min);
            tokio::select! {
                changed = changes.changed(), if announced => announced = changed.is_ok(),
                () = tokio::time::sleep(next) => {}
            }
            if !self.still_usable().await {
                return Ended::Grant;
            }
        }
    }

    /// Whether a request under the token would still be let in (after a failed lookup: while
    /// the last confirmation is trusted).
    async fn still_usable(&mut self) -> bool {
        let Some(hash) = self.hash else {
            return true;
        };
        let found = self.grants.resolve_hash(hash).await;
        self.failed = found.is_err();
        match found {
            Ok(Some(grant)) => {
                self.expires_at = grant.expires_at.map(SystemTime::from);
                let usable = grant.id == self.grant
                    && grant.server.id == self.server
                    && grant.is_usable(Utc::now());
                if usable {
                    self.confirmed = Instant::now();
                }
                usable
            }
            Ok(None) => false,
            Err(e) => {
                let trusted = self.confirmed.elapsed() < self.grants.trusted_for();
                tracing::warn!(grant = %self.grant, error = %e, trusted, "cannot look up the grant of an open stream");
                trusted
            }
        }
    }
}
