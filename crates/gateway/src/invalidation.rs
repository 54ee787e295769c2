//! The invalidation feed: the control plane announces grant, policy, server and tenant
//! changes on Redis pub/sub, and every replica drops the matching cache entries at once.
//!
//! When the subscription breaks (Redis restarted, connection cut) announcements may have been
//! missed, so the caches are cleared and the subscriber reconnects; until it is subscribed again
//! they are cleared every [`UNWATCHED_FOR`], so an announcement missed meanwhile (a revocation)
//! still takes effect within it. A periodic ping notices a connection that died without
//! closing.
//!
//! On a Redis Cluster the subscription is an ordinary one, on one node: a `PUBLISH` reaches
//! every node of a cluster, so any node will do, and a subscription on one connection is one
//! thing that either holds or breaks (which is what clearing the caches needs to know). When
//! it breaks the next attempt goes to the next seed node, so a dead node is not waited for.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use portcullis_core::Invalidation;
use tokio_util::sync::CancellationToken;

use crate::catalogue::Catalogue;
use crate::grants::Grants;

const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// While the feed is down, what is cached is kept at most this long.
const UNWATCHED_FOR: Duration = Duration::from_millis(500);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Runs the subscriber until `shutdown`.
pub async fn run(
    redis: portcullis_redis::Redis,
    channel: String,
    grants: Arc<Grants>,
    catalogue: Arc<Catalogue>,
    shutdown: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut first = true;
    let mut attempt = 0usize;
    while !shutdown.is_cancelled() {
        let client = redis.node(attempt);
        attempt = attempt.wrapping_add(1);
        if !first {
            // Announcements may be missed from now until subscribed again.
            let slept = tokio::time::sleep(backoff);
            tokio::select! {
                () = unwatched(&grants, &catalogue, slept) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        first = false;
        let subscribed = unwatched(&grants, &catalogue, subscribe(&client, &channel)).await;
        let (sink, stream) = match subscribed {
            Ok(feed) => feed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to the invalidation feed; retrying");
                metrics::counter!("portcullis_gateway_invalidation_reconnects_total").increment(1);
                continue;
            }
        };
        backoff = FIRST_BACKOFF;
        // Whatever was cached before this subscription may have missed announcements.
        grants.clear();
        catalogue.clear();
        tracing::debug!(channel, "invalidation feed subscribed");
        match listen(sink, stream, &grants, &catalogue, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "invalidation feed interrupted; caches cleared, resubscribing");
                metrics::counter!("portcullis_gateway_invalidation_reconnects_total").increment(1);
            }
        }
        grants.clear();
        catalogue.clear();
    }
}

/// Runs `fut` while the feed is down: the caches are cleared every [`UNWATCHED_FOR`].
async fn unwatched<F: Future>(grants: &Grants, catalogue: &Catalogue, fut: F) -> F::Output {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(UNWATCHED_FOR);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => {
                grants.clear();
                catalogue.clear();
            }
        }
    }
}

type Sink = redis::aio::PubSubSink;
type Messages = redis::aio::PubSubStream;

async fn subscribe(client: &redis::Client, channel: &str) -> anyhow::Result<(Sink, Messages)> {
    let pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out"))??;
    let (mut sink, stream) = pubsub.split();
    tokio::time::timeout(Duration::from_secs(2), sink.subscribe(channel))
        .await
        .map_err(|_| anyhow::anyhow!("subscribe timed out"))??;
    Ok((sink, stream))
}

async fn listen(
    mut sink: Sink,
    mut stream: Messages,
    grants: &Grants,
    catalogue: &Catalogue,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
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
