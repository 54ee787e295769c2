//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer), on every listener.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use portcullis_redis::Conn;
use serde_json::json;
use sqlx::PgPool;

/// The dependencies a readiness probe checks.
#[derive(Clone)]
pub struct Dependencies {
    /// Postgres.
    pub db: PgPool,
    /// Redis.
    pub redis: Conn,
    /// How long each check may take.
    pub timeout: Duration,
    /// This listener serves while Postgres is down (a gateway with a cache grace): Postgres
    /// down is then reported as `degraded`, still ready.
    pub postgres_optional: bool,
}

/// The health routes, to merge into a service's router.
pub fn router(deps: Dependencies) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(deps)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(deps): State<Dependencies>) -> Response {
    let (postgres, redis) = tokio::join!(check_postgres(&deps), check_redis(&deps));
    let (mut failed, mut degraded) = (Vec::new(), Vec::new());
    let mut checks = serde_json::Map::new();
    for (name, result, optional) in [
        ("postgres", postgres, deps.postgres_optional),
        ("redis", redis, false),
    ] {
        match result {
            Ok(()) => {
                checks.insert(name.into(), json!("ok"));
            }
            Err(cause) => {
                tracing::warn!(dependency = name, %cause, "readiness check failed");
                checks.insert(name.into(), json!(cause));
                if optional {
                    degraded.push(name);
                } else {
                    failed.push(name);
                }
            }
        }
    }
    // The status, the list that names what is down, and how the message begins.
    let (code, status, list, names, verdict) = match (failed.is_empty(), degraded.is_empty()) {
        (true, true) => {
            let body = json!({ "status": "ready", "checks": checks });
            return (StatusCode::OK, Json(body)).into_response();
        }
        (true, false) => (
            StatusCode::OK,
            "degraded",
            "degraded",
            degraded,
            "ready, degraded",
        ),
        (false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "failed",
            failed,
            "not ready",
        ),
    };
    let mut body = serde_json::Map::new();
    body.insert("status".into(), json!(status));
    body.insert(
        "message".into(),
        json!(format!("{verdict}: {} unreachable", names.join(" and "))),
    );
    body.insert(list.into(), json!(names));
    body.insert("checks".into(), checks.into());
    (code, Json(body)).into_response()
}

async fn check_postgres(deps: &Dependencies) -> Result<(), String> {
    let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&deps.db);
    match tokio::time::timeout(deps.timeout, probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("error: {e}")),
        Err(_) => Err(format!("no answer within {:?}", deps.timeout)),
    }
}

async fn check_redis(deps: &Dependencies) -> Result<(), String> {
    let mut conn = deps.redis.clone();
    let ping = redis::cmd("PING");
    let probe = ping.query_async::<String>(&mut conn);
    match tokio::time::timeout(deps.timeout, probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("error: {e}")),
        Err(_) => Err(format!("no answer within {:?}", deps.timeout)),
    }
}
