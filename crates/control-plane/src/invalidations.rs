//! Announcing changes to the gateways (Redis pub/sub), so a revocation or a policy change
//! applies on every replica within a second.
//!
//! A publish runs in a task of its own: a request whose client goes away after its change was
//! committed still announces it. When Redis refuses or cannot be reached, the task tries again
//! (for [`RETRY_FOR`]; past that the gateways' own cache expiry has applied the change anyway),
//! while the request returns after the first try.

use std::time::{Duration, Instant};

use portcullis_core::Invalidation;
use portcullis_redis::Conn;

/// How long a failed announcement is tried again: twice the gateways' default cache TTL, after
/// which every replica has reloaded what the change concerns.
pub const RETRY_FOR: Duration = Duration::from_secs(10);

/// Publishes `message` on `channel`; returns once the first try is done (the retries, if any,
/// go on in the background).
pub async fn publish(redis: Conn, channel: String, message: Invalidation) {
    let (tried, first) = tokio::sync::oneshot::channel();
    tokio::spawn(announce(redis, channel, message, tried));
    let _ = first.await;
}

async fn announce(
    mut redis: Conn,
    channel: String,
    message: Invalidation,
    tried: tokio::sync::oneshot::Sender<()>,
) {
    let text = message.to_json();
    let give_up = Instant::now() + RETRY_FOR;
    let mut tried = Some(tried);
    let mut wait = Duration::from_millis(100);
    loop {
        let result: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&text)
            .query_async(&mut redis)
            .await;
        match result {
            Ok(_) => {
                metrics::counter!("portcullis_invalidations_published_total").increment(1);
                break;
            }
            Err(e) => {
                metrics::counter!("portcullis_invalidations_failed_total").increment(1);
                if Instant::now() + wait > give_up {
                    tracing::error!(error = %e, ?message, "cannot publish an invalidation; giving up, gateways apply it when their caches expire");
                    break;
                }
                tracing::warn!(error = %e, ?message, "cannot publish an invalidation; trying again");
            }
        }
        if let Some(tried) = tried.take() {
            let _ = tried.send(());
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(1));
    }
    if let Some(tried) = tried.take() {
        let _ = tried.send(());
    }
}
