//! The proxy audit log: ingestion from the gateways' Redis stream, queries, export, live tail,
//! and maintenance (partitions ahead, retention behind).

use tokio_util::sync::CancellationToken;

use crate::AppState;

pub mod ingest;
mod maintenance;
pub mod query;

pub(crate) use query::{api, pages};

/// Starts the ingester and the maintenance loop; both stop on `shutdown`.
pub(crate) fn spawn_background(state: &AppState, shutdown: &CancellationToken) {
    if state.settings.audit_ingest {
        let config = ingest::Config {
            batch: state.settings.audit_batch.clamp(1, 10_000),
            claim_idle: state.settings.audit_claim_idle,
            consumer: None,
        };
        tokio::spawn(ingest::run(
            state.shared.db.clone(),
            state.shared.redis_client.clone(),
            state.shared.keys.clone(),
            config,
            shutdown.clone(),
        ));
    }
    tokio::spawn(maintenance::run(state.clone(), shutdown.clone()));
}
