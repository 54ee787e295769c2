//! The invalidation feed: the control plane announces grant, policy, server and tenant
//! changes on Redis pub/sub, and every replica drops the matching cache entries at once.
//!
//! When the subscription breaks (Redis restarted, connection cut) announcements may have been
//! missed, so the caches are cleared and the subscriber reconnects; a periodic ping notices a
//! connection that died without closing.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use portcullis_core::Invalidation;
use tokio_util::sync::CancellationToken;

use crate::catalogue::Catalogue;
use crate::grants::Grants;

const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the subscriber until `shutdown`.
pub async fn run(
    client: redis::Client,
    channel: String,
    grants: Arc<Grants>,
    catalogue: Arc<Catalogue>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match subscribe_and_listen(&client, &channel, &grants, &catalogue, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "invalidation feed interrupted; caches cleared, resubscribing");
                metrics::counter!("portcullis_gateway_invalidation_reconnects_total").increment(1);
            }
        }
        grants.clear();
        catalogue.clear();
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn subscribe_and_listen(
    client: &redis::Client,
    channel: &str,
    grants: &Grants,
    catalogue: &Catalogue,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out"))??;
    let (mut sink, mut stream) = pubsub.split();
    sink.subscribe(channel).await?;
    // Whatever was cached before this subscription may have missed announcements.
    grants.clear();
    catalogue.clear();
    tracing::debug!(channel, "invalidation feed subscribed");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = stream.next() => {
                let Some(message) = message else {
                    anyhow::bail!("subscription closed");
                };
                let Ok(text) = message.get_payload::<String>() else { continue };
                match Invalidation::from_json(&text) {
                    Some(invalidation) => {
                        tracing::debug!(?invalidation, "invalidation");
                        grants.invalidate(&invalidation);
                        catalogue.invalidate(&invalidation);
                    }
                    None => tracing::debug!("ignoring an unknown invalidation message"),
                }
            }
            _ = ping.tick() => {
                tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>())
                    .await
                    .map_err(|_| anyhow::anyhow!("ping timed out"))??;
            }
        }
    }
}
