//! What one tool has done, from the audit log: the last 24 hours and 7 days.

use chrono::{DateTime, Duration, Utc};
use portcullis_core::{ServerId, TenantId};
use serde::Serialize;

use crate::error::Result;

/// Counts of one period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Period {
    /// Calls of the tool (every decision).
    pub calls: i64,
    /// Denied or hidden.
    pub denials: i64,
    /// Rate-limited.
    pub rate_limited: i64,
    /// Held for approval.
    pub approvals: i64,
    /// Median latency of the forwarded calls, in ms.
    pub p50_ms: Option<f64>,
    /// 95th percentile latency of the forwarded calls, in ms.
    pub p95_ms: Option<f64>,
}

/// One identity calling the tool.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Caller {
    /// The grant's identity.
    pub identity: String,
    /// Its calls in the last 7 days.
    pub calls: i64,
    /// Of which denied, hidden or rate-limited.
    pub blocked: i64,
}

/// The tool's usage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// The last 24 hours.
    pub day: Period,
    /// The last 7 days.
    pub week: Period,
    /// The busiest identities of the last 7 days (at most 5).
    pub top_identities: Vec<Caller>,
    /// The start of the 7 days (the audit links' `since`).
    pub since: DateTime<Utc>,
}

/// One period's counts as the query names them (`d_…` the last day, `w_…` the week).
#[derive(sqlx::FromRow)]
struct Counts {
    d_calls: i64,
    d_denials: i64,
    d_rate_limited: i64,
    d_approvals: i64,
    d_p50: Option<f64>,
    d_p95: Option<f64>,
    w_calls: i64,
    w_denials: i64,
    w_rate_limited: i64,
    w_approvals: i64,
    w_p50: Option<f64>,
    w_p95: Option<f64>,
}

/// The usage of `tool` on `server`; one scan of its 7 days of events (the `tool` index).
pub async fn usage(
    db: &sqlx::PgPool,
    tenant: TenantId,
    server: ServerId,
    tool: &str,
) -> Result<Usage> {
    let now = Utc::now();
    let week_start = now - Duration::days(7);
    let day_start = now - Duration::hours(24);
    let c: Counts = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE ts >= $5) AS d_calls,
                count(*) FILTER (WHERE ts >= $5 AND decision IN ('deny', 'hidden')) AS d_denials,
                count(*) FILTER (WHERE ts >= $5 AND decision = 'rate_limited') AS d_rate_limited,
                count(*) FILTER (WHERE ts >= $5 AND decision = 'approval_required') AS d_approvals,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE ts >= $5) AS d_p50,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE ts >= $5) AS d_p95,
                count(*) AS w_calls,
                count(*) FILTER (WHERE decision IN ('deny', 'hidden')) AS w_denials,
                count(*) FILTER (WHERE decision = 'rate_limited') AS w_rate_limited,
                count(*) FILTER (WHERE decision = 'approval_required') AS w_approvals,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS w_p50,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS w_p95
           FROM audit_events
          WHERE tenant_id = $1 AND tool = $3 AND server_id = $2 AND ts >= $4",
    )
    .bind(tenant.0)
    .bind(server.0)
    .bind(tool)
    .bind(week_start)
    .bind(day_start)
    .fetch_one(db)
    .await?;
    let top_identities: Vec<Caller> = sqlx::query_as(
        "SELECT identity, count(*) AS calls,
                count(*) FILTER (WHERE decision IN ('deny', 'hidden', 'rate_limited')) AS blocked
           FROM audit_events
          WHERE tenant_id = $1 AND tool = $3 AND server_id = $2 AND ts >= $4
          GROUP BY identity ORDER BY calls DESC, identity LIMIT 5",
    )
    .bind(tenant.0)
    .bind(server.0)
    .bind(tool)
    .bind(week_start)
    .fetch_all(db)
    .await?;
    Ok(Usage {
        day: Period {
            calls: c.d_calls,
            denials: c.d_denials,
            rate_limited: c.d_rate_limited,
            approvals: c.d_approvals,
            p50_ms: c.d_p50.map(round),
            p95_ms: c.d_p95.map(round),
        },
        week: Period {
            calls: c.w_calls,
            denials: c.w_denials,
            rate_limited: c.w_rate_limited,
            approvals: c.w_approvals,
            p50_ms: c.w_p50.map(round),
            p95_ms: c.w_p95.map(round),
        },
        top_identities,
        since: week_start,
    })
}

/// Latencies to a tenth of a millisecond.
fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}
