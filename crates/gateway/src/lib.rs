//! The Portcullis gateway: resolves grants, enforces policy, proxies to upstream MCP servers.

use axum::Router;
use portcullis_core::redis_keys::RedisKeys;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

/// Everything the service needs, built once at start-up.
#[derive(Clone)]
pub struct Gateway {
    /// Postgres.
    pub db: PgPool,
    /// Redis.
    pub redis: ConnectionManager,
    /// Key and channel names.
    pub keys: RedisKeys,
}

impl Gateway {
    /// The service's routes.
    pub fn router(self) -> Router {
        Router::new()
    }
}
