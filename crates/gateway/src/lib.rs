//! The Portcullis gateway: resolves grants, enforces policy, proxies to upstream MCP servers.

use axum::Router;
use portcullis_core::Keyring;
use portcullis_core::redis_keys::RedisKeys;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Settings of this service alone; the `portcullis` command flattens them into its one
/// configuration, so each is a flag and a `PORTCULLIS_*` environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "gateway")]
pub struct Settings {}

/// What the process shares with this service.
#[derive(Clone)]
pub struct Shared {
    /// Postgres.
    pub db: PgPool,
    /// Redis, multiplexed and reconnecting.
    pub redis: ConnectionManager,
    /// The Redis client, for connections of their own (pub/sub).
    pub redis_client: redis::Client,
    /// Key and channel names.
    pub keys: RedisKeys,
    /// Seals and opens upstream credentials at rest.
    pub credentials: Keyring,
}

/// Builds the service: its routes, and its background tasks, which stop when `shutdown` is
/// cancelled.
pub async fn build(
    shared: Shared,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<Router> {
    let _ = (shared, settings, shutdown);
    Ok(Router::new())
}
