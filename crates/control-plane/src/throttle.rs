//! Throttling of sign-in and sign-up: attempts are counted per account and per client address
//! in Redis, under the installation's prefix, for a fixed window. Sign-in counts its failures;
//! sign-up counts every attempt (each may make an organisation, and each says something about
//! an address), in a key space of its own.
//!
//! Fail-open by choice: when Redis is unreachable logins still work (argon2 keeps guessing slow)
//! and the outage is logged, because locking every user out during a Redis outage is worse.

use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::{Error, Result};

/// What is throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// Signing in (`PORTCULLIS_LOGIN_*`).
    Login,
    /// Signing up (`PORTCULLIS_SIGNUP_*`).
    Signup,
}

impl Door {
    fn name(self) -> &'static str {
        match self {
            Door::Login => "login",
            Door::Signup => "signup",
        }
    }

    /// Attempts allowed per account and per address, and the window.
    fn limits(self, state: &AppState) -> (u32, u32, Duration) {
        let s = &state.settings;
        match self {
            Door::Login => (s.login_max_per_account, s.login_max_per_ip, s.login_window),
            Door::Signup => (
                s.signup_max_per_account,
                s.signup_max_per_ip,
                s.signup_window,
            ),
        }
    }
}

fn keys(state: &AppState, door: Door, email: &str, ip: Option<IpAddr>) -> Vec<(String, u32)> {
    let prefix = state.shared.keys.prefix();
    let door_name = door.name();
    let (per_account, per_ip, _) = door.limits(state);
    // The email is hashed so Redis never holds the address list of the installation.
    let account = hex::encode(&Sha256::digest(email.trim().to_lowercase().as_bytes())[..16]);
    let mut keys = vec![(
        format!("{prefix}:{door_name}:account:{account}"),
        per_account,
    )];
    if let Some(ip) = ip {
        keys.push((format!("{prefix}:{door_name}:ip:{ip}"), per_ip));
    }
    keys
}

/// Refuses with 429 when the account or the address used up its attempts at `door`.
pub async fn check(state: &AppState, door: Door, email: &str, ip: Option<IpAddr>) -> Result<()> {
    let mut redis = state.shared.redis.clone();
    for (key, max) in keys(state, door, email, ip) {
        let result: redis::RedisResult<(Option<u32>, i64)> = redis::pipe()
            .cmd("GET")
            .arg(&key)
            .cmd("TTL")
            .arg(&key)
            .query_async(&mut redis)
            .await;
        match result {
            Ok((Some(count), ttl)) if count >= max => {
                let counter = match door {
                    Door::Login => "portcullis_logins_total",
                    Door::Signup => "portcullis_signup_attempts_total",
                };
                metrics::counter!(counter, "result" => "throttled").increment(1);
                return Err(Error::TooManyRequests {
                    retry_after: u64::try_from(ttl.max(1)).unwrap_or(1),
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, door = door.name(), "throttle unavailable; allowing the attempt")
            }
        }
    }
    Ok(())
}

/// Counts an attempt at `door` (a failed login; any sign-up) against the account and the
/// address.
pub async fn count(state: &AppState, door: Door, email: &str, ip: Option<IpAddr>) {
    let mut redis = state.shared.redis.clone();
    let window = door.limits(state).2.as_secs().max(1);
    // A pipeline per key: on a Redis Cluster the account's and the address's keys may be in
    // two slots, on two masters.
    for (key, _) in keys(state, door, email, ip) {
        let mut pipe = redis::pipe();
        pipe.cmd("INCR").arg(&key).ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(window).arg("NX").ignore();
        if let Err(e) = pipe.query_async::<()>(&mut redis).await {
            tracing::warn!(error = %e, door = door.name(), "cannot count an attempt");
        }
    }
}

/// Forgets the account's failed attempts after a successful login.
pub async fn succeeded(state: &AppState, email: &str) {
    let mut redis = state.shared.redis.clone();
    let (key, _) = keys(state, Door::Login, email, None).remove(0);
    let result: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query_async(&mut redis).await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot reset the login throttle");
    }
}
