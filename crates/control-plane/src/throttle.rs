//! Login throttling: failed attempts are counted per account and per client address in Redis,
//! under the installation's prefix, for a fixed window.
//!
//! Fail-open by choice: when Redis is unreachable logins still work (argon2 keeps guessing slow)
//! and the outage is logged, because locking every user out during a Redis outage is worse.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::{Error, Result};

fn keys(state: &AppState, email: &str, ip: Option<IpAddr>) -> Vec<(String, u32)> {
    let prefix = state.shared.keys.prefix();
    // The email is hashed so Redis never holds the address list of the installation.
    let account = hex::encode(&Sha256::digest(email.trim().to_lowercase().as_bytes())[..16]);
    let mut keys = vec![(
        format!("{prefix}:login:account:{account}"),
        state.settings.login_max_per_account,
    )];
    if let Some(ip) = ip {
        keys.push((
            format!("{prefix}:login:ip:{ip}"),
            state.settings.login_max_per_ip,
        ));
    }
    keys
}

/// Refuses with 429 when the account or the address used up its failed attempts.
pub async fn check(state: &AppState, email: &str, ip: Option<IpAddr>) -> Result<()> {
    let mut redis = state.shared.redis.clone();
    for (key, max) in keys(state, email, ip) {
        let result: redis::RedisResult<(Option<u32>, i64)> = redis::pipe()
            .cmd("GET")
            .arg(&key)
            .cmd("TTL")
            .arg(&key)
            .query_async(&mut redis)
            .await;
        match result {
            Ok((Some(count), ttl)) if count >= max => {
                metrics::counter!("portcullis_logins_total", "result" => "throttled").increment(1);
                return Err(Error::TooManyRequests {
                    retry_after: u64::try_from(ttl.max(1)).unwrap_or(1),
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "login throttle unavailable; allowing the attempt")
            }
        }
    }
    Ok(())
}

/// Counts a failed attempt against the account and the address.
pub async fn failed(state: &AppState, email: &str, ip: Option<IpAddr>) {
    let mut redis = state.shared.redis.clone();
    let window = state.settings.login_window.as_secs().max(1);
    // A pipeline per key: on a Redis Cluster the account's and the address's keys may be in
    // two slots, on two masters.
    for (key, _) in keys(state, email, ip) {
        let mut pipe = redis::pipe();
        pipe.cmd("INCR").arg(&key).ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(window).arg("NX").ignore();
        if let Err(e) = pipe.query_async::<()>(&mut redis).await {
            tracing::warn!(error = %e, "cannot count a failed login");
        }
    }
}

/// Forgets the account's failed attempts after a successful login.
pub async fn succeeded(state: &AppState, email: &str) {
    let mut redis = state.shared.redis.clone();
    let (key, _) = keys(state, email, None).remove(0);
    let result: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query_async(&mut redis).await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot reset the login throttle");
    }
}
