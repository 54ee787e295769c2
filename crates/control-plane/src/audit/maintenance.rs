//! Audit maintenance: daily partitions created ahead, rows past each tenant's retention
//! deleted, and whole partitions older than the longest retention dropped.
//!
//! Several replicas may run this loop; a Postgres advisory lock lets one of them work at a time.

use std::time::Duration;

use chrono::{NaiveDate, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::AppState;

const LOCK_KEY: i64 = 0x5043_4d41_494e; // "PCMAIN"
/// Rows deleted per statement, so retention never holds long locks.
const DELETE_BATCH: i64 = 10_000;

pub(crate) async fn run(state: AppState, shutdown: CancellationToken) {
    let interval = state
        .settings
        .audit_maintenance_interval
        .max(Duration::from_secs(1));
    loop {
        if let Err(e) = once(state.db(), state.settings.audit_retention_days).await {
            tracing::warn!(error = %e, "audit maintenance failed; retrying at the next run");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One maintenance pass, skipped when another replica holds the lock.
pub(crate) async fn once(db: &PgPool, default_retention: i32) -> anyhow::Result<()> {
    let mut conn = db.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(());
    }
    let result = work(&mut conn, default_retention).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    result
}

async fn work(conn: &mut sqlx::PgConnection, default_retention: i32) -> anyhow::Result<()> {
    // Today and a week ahead; yesterday's partition exists from the migration or an earlier run.
    // A day whose rows arrived early (a gateway clock far ahead) takes them over from the
    // default partition. A failure here must not stop retention below.
    if let Err(e) = sqlx::query(
        "SELECT portcullis_ensure_audit_partitions((now() AT TIME ZONE 'UTC')::date, 8)",
    )
    .execute(&mut *conn)
    .await
    {
        tracing::error!(error = %e, "cannot create audit partitions ahead");
    }
    let tenants: Vec<(uuid::Uuid, i32)> =
        sqlx::query_as("SELECT id, audit_retention_days FROM tenants")
            .fetch_all(&mut *conn)
            .await?;
    let mut deleted = 0u64;
    for (tenant, days) in &tenants {
        loop {
            let done = sqlx::query(
                "DELETE FROM audit_events WHERE (ts, id) IN (
                    SELECT ts, id FROM audit_events
                     WHERE tenant_id = $1 AND ts < now() - make_interval(days => $2)
                     LIMIT $3)",
            )
            .bind(tenant)
            .bind(days)
            .bind(DELETE_BATCH)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            deleted += done;
            if done < DELETE_BATCH as u64 {
                break;
            }
        }
    }
    let longest = tenants
        .iter()
        .map(|(_, d)| *d)
        .max()
        .unwrap_or(default_retention)
        .max(1);
    let cutoff = Utc::now().date_naive() - chrono::Days::new(u64::try_from(longest).unwrap_or(1));
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'audit_events'::regclass AND c.relname ~ '^audit_events_[0-9]{8}$'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut dropped = 0;
    for name in partitions {
        let Some(day) = partition_day(&name) else {
            continue;
        };
        // A partition holds [day, day + 1); it is wholly past retention once day + 1 <= cutoff.
        if day.succ_opt().is_some_and(|end| end <= cutoff) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                r#"DROP TABLE IF EXISTS "{name}""#
            )))
            .execute(&mut *conn)
            .await?;
            dropped += 1;
        }
    }
    metrics::counter!("portcullis_audit_retention_deleted_total").increment(deleted);
    metrics::counter!("portcullis_audit_partitions_dropped_total").increment(dropped);
    if deleted > 0 || dropped > 0 {
        tracing::info!(deleted, dropped, "audit retention applied");
    }
    Ok(())
}

fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix("audit_events_")?;
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_parse() {
        assert_eq!(
            partition_day("audit_events_20261122"),
            NaiveDate::from_ymd_opt(2026, 11, 22)
        );
        assert_eq!(partition_day("audit_events_default"), None);
    }
}
