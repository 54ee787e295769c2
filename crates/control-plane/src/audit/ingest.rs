//! The audit ingester: gateways' stream → Postgres, in batches, idempotently.
//!
//! Each ingester is a consumer of the group `ingest` on the audit stream. It reads a batch with
//! `XREADGROUP`, merges the decision and outcome entries of the same event, upserts the batch
//! into `audit_events` keyed by `(ts, id)` in one statement, and only after the commit
//! acknowledges (and deletes) the entries. A crash between commit and acknowledgement leaves
//! the entries pending; another ingester claims them with `XAUTOCLAIM` once they have been idle
//! for `claim_idle`, and the upsert makes the replay harmless: every event lands exactly once.
//!
//! On a Redis Cluster there is one stream per shard (`RedisKeys::audit_streams`), each in its
//! own slot; every ingester reads them all in turn (a read per stream, since one command may
//! not name keys of two slots), claims what a dead consumer left on each, and sleeps
//! [`IDLE_POLL`] when none had anything. An event's decision and outcome entries may arrive in
//! two streams (an entry sent again after a failure goes to any); the upsert merges them
//! whichever comes first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use portcullis_core::audit::{AuditEvent, stream};
use portcullis_core::redis_keys::RedisKeys;
use portcullis_redis::{Conn, Redis, Timeouts};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How an ingester runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most entries per batch (and per transaction).
    pub batch: usize,
    /// Entries pending this long with another consumer are claimed.
    pub claim_idle: Duration,
    /// The consumer name; a fresh one per process when `None`.
    pub consumer: Option<String>,
}

/// How long one `XREADGROUP` waits for new entries (with a single stream).
const BLOCK: Duration = Duration::from_millis(500);
/// With several streams, how long to wait after a round in which none had new entries.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Runs until `shutdown`; reconnects to Redis and Postgres by itself after failures.
pub async fn run(
    db: PgPool,
    redis: Redis,
    keys: RedisKeys,
    config: Config,
    shutdown: CancellationToken,
) {
    let consumer = config
        .consumer
        .clone()
        .unwrap_or_else(|| format!("cp-{}", uuid::Uuid::now_v7().simple()));
    tracing::info!(consumer, "audit ingester started");
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            r = session(&db, &redis, &keys, &config, &consumer, &shutdown) => r,
            () = shutdown.cancelled() => Ok(()),
        };
        match result {
            Ok(()) => break,
            Err(e) => {
                metrics::counter!("portcullis_audit_ingest_errors_total").increment(1);
                tracing::warn!(error = %e, "audit ingester failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!(consumer, "audit ingester stopped");
}

async fn connect(redis: &Redis) -> anyhow::Result<Conn> {
    // A connection of its own: a blocking read must not hold up the shared connection's users.
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        response: BLOCK + Duration::from_secs(5),
    };
    Ok(redis.connect_own(timeouts).await?)
}

async fn ensure_group(conn: &mut Conn, stream_key: &str) -> anyhow::Result<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream_key)
        .arg(stream::GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn session(
    db: &PgPool,
    redis: &Redis,
    keys: &RedisKeys,
    config: &Config,
    consumer: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut conn = connect(redis).await?;
    let streams = keys.audit_streams();
    for stream_key in &streams {
        ensure_group(&mut conn, stream_key).await?;
    }
    // After a failure (Postgres down mid-batch) this consumer's own entries are still pending:
    // take them up again first rather than waiting for the idle claim.
    for stream_key in &streams {
        loop {
            let entries = read(&mut conn, stream_key, consumer, config, "0", None).await?;
            if entries.is_empty() {
                break;
            }
            ingest(db, &mut conn, stream_key, entries).await?;
        }
    }
    // One stream can wait on the server for new entries; several are read in turn.
    let block = (streams.len() == 1).then_some(BLOCK);
    let mut last_claim: Option<Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if last_claim.is_none_or(|t| t.elapsed() >= config.claim_idle / 2) {
            for stream_key in &streams {
                claim_stale(db, &mut conn, stream_key, config, consumer).await?;
            }
            last_claim = Some(Instant::now());
        }
        let mut idle = true;
        for stream_key in &streams {
            let entries = read(&mut conn, stream_key, consumer, config, ">", block).await?;
            if entries.is_empty() {
                continue;
            }
            idle = false;
            ingest(db, &mut conn, stream_key, entries).await?;
        }
        if idle && block.is_none() {
            tokio::select! {
                () = tokio::time::sleep(IDLE_POLL) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// Reads entries of `stream_key` for `consumer`: from `from` (`0`: its own pending ones, `>`:
/// new ones), waiting up to `block` for new ones. A stream or group that vanished (Redis
/// restarted empty) is made again, and reads as empty.
async fn read(
    conn: &mut Conn,
    stream_key: &str,
    consumer: &str,
    config: &Config,
    from: &str,
    block: Option<Duration>,
) -> anyhow::Result<Vec<StreamId>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(stream::GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(config.batch);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS").arg(stream_key).arg(from);
    let reply: Option<StreamReadReply> = match cmd.query_async(conn).await {
        Ok(reply) => reply,
        Err(e) if e.code() == Some("NOGROUP") => {
            ensure_group(conn, stream_key).await?;
            None
        }
        Err(e) => return Err(e.into()),
    };
    Ok(reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default())
}

/// Takes over entries that a dead (or stuck) consumer left unacknowledged.
async fn claim_stale(
    db: &PgPool,
    conn: &mut Conn,
    stream_key: &str,
    config: &Config,
    consumer: &str,
) -> anyhow::Result<()> {
    let mut start = "0-0".to_owned();
    loop {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(stream_key)
            .arg(stream::GROUP)
            .arg(consumer)
            .arg(config.claim_idle.as_millis() as u64)
            .arg(&start)
            .arg("COUNT")
            .arg(config.batch)
            .query_async(conn)
            .await?;
        if !reply.deleted_ids.is_empty() {
            // Trimmed away before anyone ingested them (the stream reached its cap while
            // ingestion lagged): lost, and said so; nothing to do but stop tracking them.
            metrics::counter!("portcullis_audit_trimmed_total")
                .increment(reply.deleted_ids.len() as u64);
            tracing::error!(
                entries = reply.deleted_ids.len(),
                "audit entries trimmed from the stream before they were stored"
            );
            let _: () = redis::cmd("XACK")
                .arg(stream_key)
                .arg(stream::GROUP)
                .arg(&reply.deleted_ids)
                .query_async(conn)
                .await?;
        }
        if !reply.claimed.is_empty() {
            metrics::counter!("portcullis_audit_claimed_total")
                .increment(reply.claimed.len() as u64);
            tracing::info!(
                entries = reply.claimed.len(),
                "claimed audit entries of another consumer"
            );
            ingest(db, conn, stream_key, reply.claimed).await?;
        }
        if reply.next_stream_id == "0-0" {
            return Ok(());
        }
        start = reply.next_stream_id;
    }
}

/// Merges the entries of one batch by event id: the decision entry and the outcome entry
/// become one row, so the upsert touches each row once.
///
/// The entry with the outcome is the gateway's last word on the call, so its decision stands:
/// a charge the gateway stopped waiting for may still have been taken by Redis, with its
/// `allow` decision entry, while the call was answered as a limiter error.
fn merge(events: Vec<AuditEvent>) -> Vec<AuditEvent> {
    let mut by_id: HashMap<uuid::Uuid, AuditEvent> = HashMap::with_capacity(events.len());
    let mut order = Vec::with_capacity(events.len());
    for event in events {
        match by_id.get_mut(&event.id) {
            Some(existing) => {
                if existing.outcome.is_none() && event.outcome.is_some() {
                    existing.decision = event.decision;
                    existing.rule = event.rule;
                    existing.message = event.message;
                    existing.outcome = event.outcome;
                }
            }
            None => {
                order.push(event.id);
                by_id.insert(event.id, event);
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}

fn row(event: &AuditEvent) -> Value {
    let outcome = event.outcome.as_ref();
    json!({
        "id": event.id,
        "ts": event.ts,
        "tenant_id": event.tenant_id,
        "grant_id": event.grant_id,
        "identity": event.identity,
        "server_id": event.server_id,
        "method": event.method,
        "tool": event.tool,
        "decision": event.decision.as_str(),
        "rule": event.rule,
        "message": event.message,
        "policy_id": event.policy_id,
        "policy_version": event.policy_version,
        "protocol": event.protocol,
        "session": event.session,
        "request_id": event.request_id,
        "arg_keys": event.arg_keys,
        "arg_digest": event.arg_digest,
        "arguments": event.arguments,
        "upstream_status": outcome.and_then(|o| o.upstream_status),
        "is_error": outcome.and_then(|o| o.is_error),
        "latency_ms": outcome.map(|o| o.latency_ms),
        "upstream_error": outcome.and_then(|o| o.upstream_error.as_deref()),
    })
}

/// Upserts a batch of events; the outcome fills in what the decision entry left empty.
pub async fn write_batch(db: &PgPool, events: &[AuditEvent]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = Value::Array(events.iter().map(row).collect());
    sqlx::query(
        "INSERT INTO audit_events (id, ts, tenant_id, grant_id, identity, server_id, method, tool, decision, rule,
                                   message, policy_id, policy_version, protocol, session, request_id, arg_keys,
                                   arg_digest, arguments, upstream_status, is_error, latency_ms, upstream_error)
         SELECT r.id, r.ts, r.tenant_id, r.grant_id, r.identity, r.server_id, r.method, r.tool, r.decision, r.rule,
                r.message, r.policy_id, r.policy_version, r.protocol, r.session, r.request_id,
                ARRAY(SELECT jsonb_array_elements_text(coalesce(r.arg_keys, '[]'::jsonb))),
                r.arg_digest, r.arguments, r.upstream_status, r.is_error, r.latency_ms, r.upstream_error
           FROM jsonb_to_recordset($1::jsonb) AS r(
                id uuid, ts timestamptz, tenant_id uuid, grant_id uuid, identity text, server_id uuid, method text,
                tool text, decision text, rule text, message text, policy_id uuid, policy_version integer,
                protocol text, session text, request_id text, arg_keys jsonb, arg_digest text, arguments jsonb,
                upstream_status integer, is_error boolean, latency_ms double precision, upstream_error text)
         ON CONFLICT (ts, id) DO UPDATE SET
                -- The entry with the outcome carries the call's final decision (see `merge`).
                decision = CASE WHEN audit_events.latency_ms IS NULL AND EXCLUDED.latency_ms IS NOT NULL
                                THEN EXCLUDED.decision ELSE audit_events.decision END,
                rule = CASE WHEN audit_events.latency_ms IS NULL AND EXCLUDED.latency_ms IS NOT NULL
                            THEN EXCLUDED.rule ELSE audit_events.rule END,
                message = CASE WHEN audit_events.latency_ms IS NULL AND EXCLUDED.latency_ms IS NOT NULL
                               THEN EXCLUDED.message ELSE audit_events.message END,
                upstream_status = coalesce(EXCLUDED.upstream_status, audit_events.upstream_status),
                is_error = coalesce(EXCLUDED.is_error, audit_events.is_error),
                latency_ms = coalesce(EXCLUDED.latency_ms, audit_events.latency_ms),
                upstream_error = coalesce(EXCLUDED.upstream_error, audit_events.upstream_error)",
    )
    .bind(rows)
    .execute(db)
    .await?;
    Ok(())
}

/// Whether Postgres refused the statement for its data (SQLSTATE classes 22, data exception,
/// e.g. a NUL in text; 23, integrity; 54, program limit), rather than failing to run it.
fn refused_by_database(error: &anyhow::Error) -> bool {
    match error.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(e)) => e.code().is_some_and(|code| {
            ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

async fn ingest(
    db: &PgPool,
    conn: &mut Conn,
    stream_key: &str,
    entries: Vec<StreamId>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    let mut events = Vec::with_capacity(entries.len());
    for entry in &entries {
        let decoded = [stream::FIELD, stream::BATCH_FIELD]
            .into_iter()
            .find_map(|field| Some((field, entry.map.get(field)?)))
            .and_then(|(field, v)| {
                let bytes = redis::from_redis_value_ref::<Vec<u8>>(v).ok()?;
                Some(stream::decode_field(field, &bytes))
            });
        match decoded {
            Some(Ok(batch)) => events.extend(batch),
            // A malformed entry would fail forever: log it and let it go.
            Some(Err(e)) => {
                metrics::counter!("portcullis_audit_malformed_total").increment(1);
                tracing::error!(entry = %entry.id, error = %e, "dropping a malformed audit entry");
            }
            // A pending entry trimmed from the stream comes back empty.
            None if entry.map.is_empty() => {
                metrics::counter!("portcullis_audit_trimmed_total").increment(1);
                tracing::error!(entry = %entry.id, "audit entry trimmed from the stream before it was stored");
            }
            None => {
                metrics::counter!("portcullis_audit_malformed_total").increment(1);
                tracing::error!(entry = %entry.id, "dropping an audit entry without an event field");
            }
        }
    }
    let events = merge(events);
    if let Err(e) = write_batch(db, &events).await {
        if !refused_by_database(&e) {
            // Postgres unreachable: the entries stay pending and come back.
            return Err(e);
        }
        // Postgres refused the batch for what it holds: one event it cannot store must hold
        // back neither the others nor, coming back forever, the whole stream. One by one,
        // setting aside those it refuses.
        tracing::warn!(error = %e, events = events.len(), "audit batch refused; storing its events one by one");
        for event in &events {
            if let Err(e) = write_batch(db, std::slice::from_ref(event)).await {
                if !refused_by_database(&e) {
                    return Err(e);
                }
                metrics::counter!("portcullis_audit_rejected_total").increment(1);
                tracing::error!(event = %event.id, error = %e, "dropping an audit event the database refuses");
            }
        }
    }
    // Acknowledge only after the commit: a crash before this line means redelivery, not loss.
    let _: () = redis::pipe()
        .cmd("XACK")
        .arg(stream_key)
        .arg(stream::GROUP)
        .arg(&ids)
        .ignore()
        .cmd("XDEL")
        .arg(stream_key)
        .arg(&ids)
        .ignore()
        .query_async(conn)
        .await?;
    metrics::counter!("portcullis_audit_ingested_total").increment(events.len() as u64);
    metrics::histogram!("portcullis_audit_ingest_batch_seconds")
        .record(started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use portcullis_core::audit::{AuditDecision, AuditOutcome};
    use portcullis_core::{GrantId, ServerId, TenantId};

    fn event(id: uuid::Uuid, outcome: Option<AuditOutcome>) -> AuditEvent {
        AuditEvent {
            id,
            ts: Utc::now(),
            tenant_id: TenantId::new(),
            grant_id: GrantId::new(),
            identity: "a".into(),
            server_id: ServerId::new(),
            method: "tools/call".into(),
            tool: Some("t".into()),
            decision: AuditDecision::Allow,
            rule: None,
            message: None,
            policy_id: None,
            policy_version: None,
            protocol: None,
            session: None,
            request_id: None,
            arg_keys: vec![],
            arg_digest: None,
            arguments: None,
            outcome,
        }
    }

    #[test]
    fn decision_and_outcome_entries_merge() {
        let id = uuid::Uuid::now_v7();
        let other = uuid::Uuid::now_v7();
        let outcome = AuditOutcome {
            upstream_status: Some(200),
            is_error: Some(false),
            latency_ms: 3.5,
            upstream_error: Some("no answer within 60s".into()),
        };
        let merged = merge(vec![
            event(id, None),
            event(other, None),
            event(id, Some(outcome.clone())),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].id, id);
        assert_eq!(merged[0].outcome, Some(outcome));
        assert!(merged[1].outcome.is_none());
    }

    #[test]
    fn the_entry_with_the_outcome_decides_in_either_order() {
        let id = uuid::Uuid::now_v7();
        let answered = AuditOutcome {
            upstream_status: None,
            is_error: None,
            latency_ms: 250.0,
            upstream_error: None,
        };
        let mut refused = event(id, Some(answered));
        refused.decision = AuditDecision::Error;
        refused.rule = Some("(limiter unavailable)".into());
        for entries in [
            vec![event(id, None), refused.clone()],
            vec![refused.clone(), event(id, None)],
        ] {
            let merged = merge(entries);
            assert_eq!(merged.len(), 1);
            assert_eq!(merged[0].decision, AuditDecision::Error);
            assert_eq!(merged[0].rule.as_deref(), Some("(limiter unavailable)"));
        }
    }
}
