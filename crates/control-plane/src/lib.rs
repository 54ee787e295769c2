//! The Portcullis control plane: accounts, servers, policies, grants, approvals, audit, dashboard and API.

use axum::Router;
use portcullis_core::redis_keys::RedisKeys;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

/// Everything the service needs, built once at start-up.
#[derive(Clone)]
pub struct ControlPlane {
    /// Postgres.
    pub db: PgPool,
    /// Redis.
    pub redis: ConnectionManager,
    /// Key and channel names.
    pub keys: RedisKeys,
}

impl ControlPlane {
    /// The service's routes.
    pub fn router(self) -> Router {
        Router::new()
    }
}
