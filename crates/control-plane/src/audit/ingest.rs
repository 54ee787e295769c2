//! The audit ingester: gateways' stream → Postgres, in batches, idempotently.
//!
//! Each ingester is a consumer of the group `ingest` on the audit stream. It reads a batch with
//! `XREADGROUP`, merges the decision and outcome entries of the same event, stores the batch
//! into `audit_events` keyed by `(ts, id)`, and only after the commit acknowledges (and
//! deletes) the entries. A crash between commit and acknowledgement leaves the entries
//! pending; another ingester claims them with `XAUTOCLAIM` once they have been idle for
//! `claim_idle`, and the upsert makes the replay harmless: every event lands exactly once.
//!
//! **One row, written once.** An `allow` decision is followed by its outcome as soon as the
//! upstream answers, often in the next read. Stored apart, the pair costs an insert and then an
//! update of every index of the row; so an allowed call's decision waits in the ingester for
//! its outcome, up to [`OUTCOME_WAIT`], and the two are stored as one row. Its stream entries
//! stay pending meanwhile: a crash redelivers them, nothing is lost. A batch is sent with
//! `COPY`, Postgres's cheapest way in; should any of its rows exist already (a redelivery, a
//! decision stored alone after waiting, another ingester's claim), the batch is upserted
//! instead (`INSERT … ON CONFLICT`), which fills in the outcome.
//!
//! On a Redis Cluster there is one stream per shard (`RedisKeys::audit_streams`), each in its
//! own slot; every ingester reads them all in turn (a read per stream, since one command may
//! not name keys of two slots), claims what a dead consumer left on each, and sleeps
//! [`IDLE_POLL`] when none had anything. An event's decision and outcome entries may arrive in
//! two streams (an entry sent again after a failure goes to any); the upsert merges them
//! whichever comes first.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use portcullis_core::audit::{AuditDecision, AuditEvent, stream};
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
/// The shortest such wait (`BLOCK 0` would mean forever).
const MIN_BLOCK: Duration = Duration::from_millis(1);
/// With several streams, how long to wait after a round in which none had new entries.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long an allowed call's decision waits in the ingester for its outcome before it is
/// stored alone (and its outcome, later, as an update); at most a quarter of `claim_idle`, so
/// that no ingester takes waiting entries for a dead consumer's.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(2);
/// How many ids of decisions stored alone an ingester remembers, so that their outcomes go
/// straight to the upsert; past it, it forgets them all (they then take the `COPY` attempt
/// first).
const STORED_ALONE_CAP: usize = 100_000;

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
    let wait = OUTCOME_WAIT.min(config.claim_idle / 4);
    let mut waiting: Vec<Waiting> = streams.iter().map(|_| Waiting::new(wait)).collect();
    // After a failure (Postgres down mid-batch) this consumer's own entries are still pending:
    // take them up again first rather than waiting for the idle claim. Everything pending is
    // stored now, outcome or not (`COUNT` pages through the pending list, which only shrinks
    // as entries are acknowledged).
    for (stream_key, waiting) in streams.iter().zip(&mut waiting) {
        loop {
            let entries = read(&mut conn, stream_key, consumer, config, "0", None).await?;
            if entries.is_empty() {
                break;
            }
            waiting.add(entries);
            waiting
                .store(db, &mut conn, stream_key, Instant::now() + wait)
                .await?;
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
            for (stream_key, waiting) in streams.iter().zip(&mut waiting) {
                claim_stale(db, &mut conn, stream_key, config, consumer, waiting).await?;
            }
            last_claim = Some(Instant::now());
        }
        let mut idle = true;
        for (stream_key, waiting) in streams.iter().zip(&mut waiting) {
            // While decisions wait for their outcomes, a read waits no longer than they may.
            let block = block.map(|b| waiting.due_in().map_or(b, |due| due.clamp(MIN_BLOCK, b)));
            let entries = read(&mut conn, stream_key, consumer, config, ">", block).await?;
            if entries.is_empty() && !waiting.is_due() {
                continue;
            }
            idle &= entries.is_empty();
            waiting.add(entries);
            waiting
                .store(db, &mut conn, stream_key, Instant::now())
                .await?;
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
    waiting: &mut Waiting,
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
            // A dead consumer's entries have waited long enough: store them as they are.
            waiting.add(reply.claimed);
            let now = Instant::now() + waiting.wait;
            waiting.store(db, conn, stream_key, now).await?;
        }
        if reply.next_stream_id == "0-0" {
            return Ok(());
        }
        start = reply.next_stream_id;
    }
}

/// Events read from one stream and not stored yet, with the stream entries that carried them.
#[derive(Default)]
struct Waiting {
    /// How long an allowed call's decision waits for its outcome.
    wait: Duration,
    /// In the order their first part was read.
    events: Vec<Pending>,
    /// Position in `events` by event id.
    index: HashMap<uuid::Uuid, usize>,
    /// How many not yet stored events each stream entry carries: it is acknowledged at zero.
    carried: HashMap<String, usize>,
    /// Entries with nothing to store (malformed, trimmed), acknowledged with the next store.
    empty: Vec<String>,
    /// Ids of allowed calls whose decision was stored without its outcome.
    stored_alone: HashSet<uuid::Uuid>,
}

/// One event, merged from the parts read so far.
struct Pending {
    event: AuditEvent,
    /// The entry of each part (decision, outcome).
    entries: Vec<String>,
    /// When its first part was read.
    read_at: Instant,
}

impl Waiting {
    fn new(wait: Duration) -> Self {
        Self {
            wait,
            ..Self::default()
        }
    }

    /// An allowed call whose outcome has not come yet, and may still come before `now`.
    fn awaits_outcome(&self, pending: &Pending, now: Instant) -> bool {
        pending.event.decision == AuditDecision::Allow
            && pending.event.outcome.is_none()
            && pending.read_at + self.wait > now
    }

    /// Decodes the events of `entries` and merges them with those waiting.
    fn add(&mut self, entries: Vec<StreamId>) {
        let now = Instant::now();
        for entry in entries {
            let events = decode(&entry);
            if events.is_empty() {
                self.empty.push(entry.id);
                continue;
            }
            *self.carried.entry(entry.id.clone()).or_default() += events.len();
            for event in events {
                self.merge(event, entry.id.clone(), now);
            }
        }
    }

    /// Merges one part of an event. The part with the outcome is the gateway's last word on
    /// the call, so its decision stands: a charge the gateway stopped waiting for may still
    /// have been taken by Redis, with its `allow` decision entry, while the call was answered
    /// as a limiter error.
    fn merge(&mut self, event: AuditEvent, entry: String, now: Instant) {
        match self.index.get(&event.id) {
            Some(&i) => {
                let pending = &mut self.events[i];
                pending.entries.push(entry);
                let existing = &mut pending.event;
                if existing.outcome.is_none() && event.outcome.is_some() {
                    existing.decision = event.decision;
                    existing.rule = event.rule;
                    existing.message = event.message;
                    existing.outcome = event.outcome;
                }
            }
            None => {
                self.index.insert(event.id, self.events.len());
                self.events.push(Pending {
                    event,
                    entries: vec![entry],
                    read_at: now,
                });
            }
        }
    }

    /// How long until the oldest waiting decision must be stored, if one waits.
    fn due_in(&self) -> Option<Duration> {
        let first = self.events.first()?;
        Some((first.read_at + self.wait).saturating_duration_since(Instant::now()))
    }

    /// Whether a waiting decision must be stored now.
    fn is_due(&self) -> bool {
        self.due_in().is_some_and(|d| d.is_zero())
    }

    /// Takes out the events to store as of `now`: all but the allowed calls still awaiting
    /// their outcome.
    fn take_ready(&mut self, now: Instant) -> Vec<Pending> {
        let (waiting, ready): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.events)
            .into_iter()
            .partition(|p| self.awaits_outcome(p, now));
        self.index = waiting
            .iter()
            .enumerate()
            .map(|(i, p)| (p.event.id, i))
            .collect();
        self.events = waiting;
        ready
    }

    /// Stores every event that is ready as of `now` (see [`Waiting::awaits_outcome`]), then
    /// acknowledges and deletes the entries that carried only stored events.
    async fn store(
        &mut self,
        db: &PgPool,
        conn: &mut Conn,
        stream_key: &str,
        now: Instant,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let ready = self.take_ready(now);
        if ready.is_empty() && self.empty.is_empty() {
            return Ok(());
        }
        // Outcomes of decisions stored alone update their row; the rest are new rows.
        let (updates, fresh): (Vec<&AuditEvent>, Vec<&AuditEvent>) = ready
            .iter()
            .map(|p| &p.event)
            .partition(|e| self.stored_alone.contains(&e.id));
        write(db, &fresh, &updates).await?;
        let mut done = std::mem::take(&mut self.empty);
        for pending in &ready {
            let id = pending.event.id;
            if pending.event.outcome.is_some() {
                self.stored_alone.remove(&id);
            } else if pending.event.decision == AuditDecision::Allow {
                if self.stored_alone.len() >= STORED_ALONE_CAP {
                    self.stored_alone.clear();
                }
                self.stored_alone.insert(id);
            }
            for entry in &pending.entries {
                if let Some(n) = self.carried.get_mut(entry) {
                    *n -= 1;
                    if *n == 0 {
                        self.carried.remove(entry);
                        done.push(entry.clone());
                    }
                }
            }
        }
        if !done.is_empty() {
            // Acknowledge only after the commit: a crash before this means redelivery, not loss.
            let _: () = redis::pipe()
                .cmd("XACK")
                .arg(stream_key)
                .arg(stream::GROUP)
                .arg(&done)
                .ignore()
                .cmd("XDEL")
                .arg(stream_key)
                .arg(&done)
                .ignore()
                .query_async(conn)
                .await?;
        }
        metrics::counter!("portcullis_audit_ingested_total").increment(ready.len() as u64);
        metrics::histogram!("portcullis_audit_ingest_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// The events an entry carries; a malformed or trimmed entry is logged and carries none.
fn decode(entry: &StreamId) -> Vec<AuditEvent> {
    let decoded = [stream::FIELD, stream::BATCH_FIELD]
        .into_iter()
        .find_map(|field| Some((field, entry.map.get(field)?)))
        .and_then(|(field, v)| {
            let bytes = redis::from_redis_value_ref::<Vec<u8>>(v).ok()?;
            Some(stream::decode_field(field, &bytes))
        });
    match decoded {
        Some(Ok(events)) => events,
        // A malformed entry would fail forever: log it and let it go.
        Some(Err(e)) => {
            metrics::counter!("portcullis_audit_malformed_total").increment(1);
            tracing::error!(entry = %entry.id, error = %e, "dropping a malformed audit entry");
            Vec::new()
        }
        // A pending entry trimmed from the stream comes back empty.
        None if entry.map.is_empty() => {
            metrics::counter!("portcullis_audit_trimmed_total").increment(1);
            tracing::error!(entry = %entry.id, "audit entry trimmed from the stream before it was stored");
            Vec::new()
        }
        None => {
            metrics::counter!("portcullis_audit_malformed_total").increment(1);
            tracing::error!(entry = %entry.id, "dropping an audit entry without an event field");
            Vec::new()
        }
    }
}

/// Stores new rows (`fresh`, by `COPY`) and fills in rows stored earlier (`updates`, by
/// upsert). Should any fresh row exist already, they are upserted too.
async fn write(db: &PgPool, fresh: &[&AuditEvent], updates: &[&AuditEvent]) -> anyhow::Result<()> {
    if !fresh.is_empty() {
        match copy(db, fresh).await {
            Ok(()) => {}
            Err(e) if refused_by_database(&e) => upsert(db, fresh).await?,
            Err(e) => return Err(e),
        }
    }
    upsert(db, updates).await
}

/// The columns an event fills, in the order [`csv_row`] writes them.
const COPY_STATEMENT: &str = "COPY audit_events (id, ts, tenant_id, grant_id, identity, server_id, method, tool,
    decision, rule, message, policy_id, policy_version, protocol, session, request_id, arg_keys, arg_digest,
    arguments, upstream_status, is_error, latency_ms, upstream_error, issuer, jti) FROM STDIN (FORMAT csv)";

/// Inserts a batch of new rows in one `COPY`; fails whole when any row exists already.
///
/// The `COPY` runs in a task of its own. A `COPY` dropped half way (its ingester cancelled)
/// would return its connection to the pool with the copy's end still unread, and the next
/// query on that connection would read it as its own answer. Left to finish instead, it stores
/// its rows or fails whole; either way the entries stay pending until acknowledged, and a
/// later claim of them finds the rows and upserts.
async fn copy(db: &PgPool, events: &[&AuditEvent]) -> anyhow::Result<()> {
    let mut rows = String::with_capacity(events.len() * 400);
    for event in events {
        csv_row(event, &mut rows);
    }
    let db = db.clone();
    tokio::spawn(async move {
        let mut conn = db.acquire().await?;
        let mut copy = conn.copy_in_raw(COPY_STATEMENT).await?;
        copy.send(rows.as_bytes()).await?;
        copy.finish().await?;
        Ok::<_, anyhow::Error>(())
    })
    .await?
}

/// One event as a CSV line: text quoted (quotes doubled), NULL as nothing, `arg_keys` as an
/// array literal, `arguments` as JSON text.
fn csv_row(e: &AuditEvent, out: &mut String) {
    let text = |out: &mut String, value: Option<&str>| {
        if let Some(value) = value {
            out.push('"');
            for c in value.chars() {
                if c == '"' {
                    out.push('"');
                }
                out.push(c);
            }
            out.push('"');
        }
        out.push(',');
    };
    let display = |out: &mut String, value: Option<&dyn std::fmt::Display>| {
        if let Some(value) = value {
            let _ = write!(out, "{value}");
        }
        out.push(',');
    };
    let o = e.outcome.as_ref();
    display(out, Some(&e.id));
    text(out, Some(&e.ts.to_rfc3339()));
    display(out, Some(&e.tenant_id));
    display(out, Some(&e.grant_id));
    text(out, Some(&e.identity));
    display(out, Some(&e.server_id));
    text(out, Some(&e.method));
    text(out, e.tool.as_deref());
    text(out, Some(e.decision.as_str()));
    text(out, e.rule.as_deref());
    text(out, e.message.as_deref());
    display(out, e.policy_id.as_ref().map(|v| v as _));
    display(out, e.policy_version.as_ref().map(|v| v as _));
    text(out, e.protocol.as_deref());
    text(out, e.session.as_deref());
    text(out, e.request_id.as_deref());
    // An array literal: each element quoted, `"` and `\` escaped by a backslash.
    let mut keys = String::from("{");
    for (i, key) in e.arg_keys.iter().enumerate() {
        if i > 0 {
            keys.push(',');
        }
        keys.push('"');
        for c in key.chars() {
            if c == '"' || c == '\\' {
                keys.push('\\');
            }
            keys.push(c);
        }
        keys.push('"');
    }
    keys.push('}');
    text(out, Some(&keys));
    text(out, e.arg_digest.as_deref());
    text(out, e.arguments.as_ref().map(|a| a.to_string()).as_deref());
    display(
        out,
        o.and_then(|o| o.upstream_status).as_ref().map(|v| v as _),
    );
    display(out, o.and_then(|o| o.is_error).as_ref().map(|v| v as _));
    display(out, o.map(|o| &o.latency_ms as _));
    text(out, o.and_then(|o| o.upstream_error.as_deref()));
    text(out, e.issuer.as_deref());
    text(out, e.jti.as_deref());
    // The last field's separator becomes the line's end.
    out.pop();
    out.push('\n');
}

/// Upserts events, setting aside one by one those Postgres refuses for what they hold.
async fn upsert(db: &PgPool, events: &[&AuditEvent]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let Err(e) = write_batch(db, events).await else {
        return Ok(());
    };
    if !refused_by_database(&e) {
        // Postgres unreachable: the entries stay pending and come back.
        return Err(e);
    }
    // Postgres refused the batch for what it holds: one event it cannot store must hold back
    // neither the others nor, coming back forever, the whole stream. One by one, setting
    // aside those it refuses.
    tracing::warn!(error = %e, events = events.len(), "audit batch refused; storing its events one by one");
    for event in events {
        if let Err(e) = write_batch(db, std::slice::from_ref(event)).await {
            if !refused_by_database(&e) {
                return Err(e);
            }
            metrics::counter!("portcullis_audit_rejected_total").increment(1);
            tracing::error!(event = %event.id, error = %e, "dropping an audit event the database refuses");
        }
    }
    Ok(())
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
        "issuer": event.issuer,
        "jti": event.jti,
    })
}

/// Upserts a batch of events; the outcome fills in what the decision entry left empty.
pub async fn write_batch(db: &PgPool, events: &[&AuditEvent]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = Value::Array(events.iter().map(|e| row(e)).collect());
    sqlx::query(
        "INSERT INTO audit_events (id, ts, tenant_id, grant_id, identity, server_id, method, tool, decision, rule,
                                   message, policy_id, policy_version, protocol, session, request_id, arg_keys,
                                   arg_digest, arguments, upstream_status, is_error, latency_ms, upstream_error,
                                   issuer, jti)
         SELECT r.id, r.ts, r.tenant_id, r.grant_id, r.identity, r.server_id, r.method, r.tool, r.decision, r.rule,
                r.message, r.policy_id, r.policy_version, r.protocol, r.session, r.request_id,
                ARRAY(SELECT jsonb_array_elements_text(coalesce(r.arg_keys, '[]'::jsonb))),
                r.arg_digest, r.arguments, r.upstream_status, r.is_error, r.latency_ms, r.upstream_error,
                r.issuer, r.jti
           FROM jsonb_to_recordset($1::jsonb) AS r(
                id uuid, ts timestamptz, tenant_id uuid, grant_id uuid, identity text, server_id uuid, method text,
                tool text, decision text, rule text, message text, policy_id uuid, policy_version integer,
                protocol text, session text, request_id text, arg_keys jsonb, arg_digest text, arguments jsonb,
                upstream_status integer, is_error boolean, latency_ms double precision, upstream_error text,
                issuer text, jti text)
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
            issuer: None,
            jti: None,
        }
    }

    fn merged(parts: Vec<AuditEvent>) -> Vec<AuditEvent> {
        let mut waiting = Waiting::new(OUTCOME_WAIT);
        let now = Instant::now();
        for (i, part) in parts.into_iter().enumerate() {
            waiting.merge(part, format!("{i}-0"), now);
        }
        waiting
            .take_ready(now + OUTCOME_WAIT)
            .into_iter()
            .map(|p| p.event)
            .collect()
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
        let merged = merged(vec![
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
            let merged = merged(entries);
            assert_eq!(merged.len(), 1);
            assert_eq!(merged[0].decision, AuditDecision::Error);
            assert_eq!(merged[0].rule.as_deref(), Some("(limiter unavailable)"));
        }
    }

    #[test]
    fn an_allowed_call_waits_for_its_outcome_and_nothing_else_does() {
        let mut waiting = Waiting::new(OUTCOME_WAIT);
        let now = Instant::now();
        let allowed = uuid::Uuid::now_v7();
        let mut denied = event(uuid::Uuid::now_v7(), None);
        denied.decision = AuditDecision::Deny;
        waiting.merge(event(allowed, None), "1-0".into(), now);
        waiting.merge(denied, "1-0".into(), now);
        let ready = waiting.take_ready(now);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].event.decision, AuditDecision::Deny);
        // The decision waits, at most OUTCOME_WAIT.
        assert!(waiting.take_ready(now + OUTCOME_WAIT / 2).is_empty());
        let ready = waiting.take_ready(now + OUTCOME_WAIT);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].event.id, allowed);
        assert!(waiting.events.is_empty() && waiting.index.is_empty());
    }

    #[test]
    fn csv_rows_quote_what_csv_and_array_literals_need() {
        let mut e = event(uuid::Uuid::now_v7(), None);
        e.identity = "a \"quoted\", comma\nand newline".into();
        e.arg_keys = vec![
            "plain".into(),
            "q\"uote".into(),
            "back\\slash".into(),
            "{br,ace}".into(),
        ];
        e.rule = Some(String::new());
        let mut line = String::new();
        csv_row(&e, &mut line);
        assert!(line.ends_with('\n'));
        assert!(line.contains(
            r#""a ""quoted"", comma
and newline""#
        ));
        assert!(line.contains(r#""{""plain"",""q\""uote"",""back\\slash"",""{br,ace}""}""#));
        // An empty string is quoted; a NULL is nothing at all.
        assert!(line.contains(r#""t","allow","",,"#), "{line}");
    }
}
