//! Audit ingestion is exactly-once across a crash: events pushed through the Redis stream land
//! once each in Postgres even when an ingester dies mid-batch and another takes over its
//! unacknowledged entries.
//!
//! The suite runs the full 100,000 events (about 15 s on the 2-core CI machine; figures in
//! docs/performance.md).

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod cp_support;

use std::time::{Duration, Instant};

use cp_support::audit_event;
use portcullis_control_plane::audit::ingest;
use portcullis_tests::{TestDatabase, TestRedis};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn count(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// How many entries of the audit streams were read but not acknowledged.
async fn pending_entries(redis: &TestRedis) -> u64 {
    let mut conn = redis.conn();
    let mut pending = 0;
    for stream in redis.redis_keys().audit_streams() {
        let summary: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(portcullis_core::audit::stream::GROUP)
            .query_async(&mut conn)
            .await;
        // A stream nothing was written to has no group.
        if let Ok(redis::Value::Array(items)) = summary
            && let Some(redis::Value::Int(n)) = items.first()
        {
            pending += *n as u64;
        }
    }
    pending
}

/// The length of the audit streams together.
async fn stream_length(redis: &TestRedis) -> u64 {
    let mut conn = redis.conn();
    let mut length = 0;
    for stream in redis.redis_keys().audit_streams() {
        let n: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        length += n;
    }
    length
}

/// The audit stream of a tenant's events (its shard's, on a cluster).
fn stream_of(redis: &TestRedis, tenant: &str) -> String {
    let keys = redis.redis_keys();
    keys.audit_stream(keys.shard(serde_json::from_value(json!(tenant)).unwrap()))
}

async fn exactly_once_across_a_crash(events: usize) {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let keys = redis.redis_keys();
    let tenant = uuid::Uuid::now_v7().to_string();
    let stream = stream_of(&redis, &tenant);
    let server = uuid::Uuid::now_v7().to_string();
    let grant = uuid::Uuid::now_v7().to_string();

    // Each event as the gateway writes it: the decision, then the outcome with the same id.
    let started = Instant::now();
    let mut conn = redis.conn();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..events {
        let decision = audit_event(
            &tenant,
            &server,
            &grant,
            &format!("agent-{}", i % 7),
            "send_message",
            "allow",
            None,
        );
        let mut outcome = decision.clone();
        outcome["outcome"] =
            json!({ "upstream_status": 200, "is_error": false, "latency_ms": i as f64 });
        batch.push(decision);
        batch.push(outcome);
        if batch.len() >= 1000 || i + 1 == events {
            let mut pipe = redis::pipe();
            for e in batch.drain(..) {
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg(portcullis_core::audit::stream::FIELD)
                    .arg(e.to_string())
                    .ignore();
            }
            let _: () = pipe.query_async(&mut conn).await.unwrap();
        }
    }
    eprintln!("pushed {} entries in {:?}", events * 2, started.elapsed());

    let config = |name: &str| ingest::Config {
        batch: 500,
        claim_idle: Duration::from_secs(1),
        consumer: Some(name.to_owned()),
    };
    let started = Instant::now();
    let first_stop = CancellationToken::new();
    let first = tokio::spawn(ingest::run(
        db.pool().clone(),
        redis.redis(),
        keys.clone(),
        config("first"),
        first_stop.clone(),
    ));
    // Kill the first ingester abruptly once it is well under way: whatever it had read but not
    // acknowledged stays pending under its name.
    while count(&db).await < (events / 4) as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.abort();
    let _ = first.await;
    let at_crash = count(&db).await;
    eprintln!("killed the first ingester after {at_crash} events");
    assert!(
        at_crash < events as i64,
        "the first ingester finished before it could be killed"
    );

    let second_stop = CancellationToken::new();
    let second = tokio::spawn(ingest::run(
        db.pool().clone(),
        redis.redis(),
        keys.clone(),
        config("second"),
        second_stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(240);
    while count(&db).await < events as i64 {
        assert!(
            Instant::now() < deadline,
            "only {} of {events} events arrived",
            count(&db).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    // Let the second ingester drain and acknowledge anything still in flight.
    let mut pending = u64::MAX;
    for _ in 0..100 {
        pending = pending_entries(&redis).await;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second_stop.cancel();
    second.await.unwrap();
    assert_eq!(pending, 0, "entries left unacknowledged");

    let (rows, distinct, complete): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE upstream_status = 200 AND latency_ms IS NOT NULL) FROM audit_events",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct, complete),
        (events as i64, events as i64, events as i64)
    );
    let length = stream_length(&redis).await;
    assert_eq!(
        length, 0,
        "acknowledged entries are deleted from the stream"
    );
    eprintln!(
        "{events} events ({} entries) ingested exactly once in {elapsed:?} ({:.0} events/s) across a crash",
        events * 2,
        events as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_events_arrive_exactly_once_across_a_crash() {
    exactly_once_across_a_crash(100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_survives_a_postgres_outage_without_loss_or_duplicates() {
    use std::str::FromStr as _;
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let keys = redis.redis_keys();
    // The ingester reaches Postgres through a proxy the test can cut.
    let proxy = portcullis_tests::ChaosProxy::start(db.addr()).await;
    let options = sqlx::postgres::PgConnectOptions::from_str(&db.url_via(proxy.addr())).unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(options)
        .await
        .unwrap();
    let tenant = uuid::Uuid::now_v7().to_string();
    let events: Vec<_> = (0..20_000)
        .map(|i| {
            audit_event(
                &tenant,
                &tenant,
                &tenant,
                &format!("agent-{}", i % 3),
                "t",
                "allow",
                None,
            )
        })
        .collect();
    cp_support::push_events(&redis, &events).await;
    let stop = CancellationToken::new();
    let ingester = tokio::spawn(ingest::run(
        pool,
        redis.redis(),
        keys,
        ingest::Config {
            batch: 500,
            claim_idle: Duration::from_secs(30),
            consumer: None,
        },
        stop.clone(),
    ));
    while count(&db).await < 3_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = count(&db).await;
    proxy.restore();
    // Well before the 30 s claim-idle: the ingester takes up its own pending entries itself.
    let deadline = Instant::now() + Duration::from_secs(25);
    while count(&db).await < 20_000 {
        assert!(
            Instant::now() < deadline,
            "stuck at {} of 20000 (at the cut: {during})",
            count(&db).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    ingester.await.unwrap();
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT id) FROM audit_events")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!((count(&db).await, distinct), (20_000, 20_000));
}

/// An event Postgres cannot store (a NUL in its text, as gateways before it was replaced wrote
/// it) is set aside: it holds back neither the events read with it nor, read again forever,
/// the stream.
#[tokio::test]
async fn an_event_postgres_refuses_is_set_aside_and_the_rest_arrive() {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let keys = redis.redis_keys();
    let tenant = uuid::Uuid::now_v7().to_string();
    let event = |tool: &str| audit_event(&tenant, &tenant, &tenant, "agent", tool, "allow", None);
    let mut conn = redis.conn();
    for e in [event("before"), event("a\u{0}b"), event("after")] {
        let _: String = redis::cmd("XADD")
            .arg(stream_of(&redis, &tenant))
            .arg("*")
            .arg(portcullis_core::audit::stream::FIELD)
            .arg(e.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let stop = CancellationToken::new();
    let ingester = tokio::spawn(ingest::run(
        db.pool().clone(),
        redis.redis(),
        keys.clone(),
        ingest::Config {
            batch: 500,
            claim_idle: Duration::from_secs(1),
            consumer: Some("one".to_owned()),
        },
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&db).await < 2 || pending_entries(&redis).await > 0 {
        assert!(Instant::now() < deadline, "{} stored", count(&db).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    ingester.await.unwrap();
    let tools: Vec<String> = sqlx::query_scalar("SELECT tool FROM audit_events ORDER BY tool")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(tools, ["after", "before"]);
}

/// A row dated ahead of the partitions made so far (a gateway clock far ahead) waits in the
/// default partition; its day's partition is still created when its time comes, and takes it.
#[tokio::test]
async fn a_day_whose_rows_arrived_early_still_gets_its_partition() {
    let db = TestDatabase::new().await;
    let tenant = uuid::Uuid::now_v7().to_string();
    let mut early = audit_event(&tenant, &tenant, &tenant, "agent", "t", "allow", None);
    early["ts"] = json!(chrono::Utc::now() + chrono::Duration::days(20));
    let event = portcullis_core::audit::stream::decode(early.to_string().as_bytes()).unwrap();
    ingest::write_batch(db.pool(), &[&event]).await.unwrap();
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events_default")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(in_default, 1);
    sqlx::query(
        "SELECT portcullis_ensure_audit_partitions((now() AT TIME ZONE 'UTC')::date + 19, 3)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let (partitions, in_default, total): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = 'audit_events'::regclass AND c.relname IN (
                        'audit_events_' || to_char((now() AT TIME ZONE 'UTC')::date + 19, 'YYYYMMDD'),
                        'audit_events_' || to_char((now() AT TIME ZONE 'UTC')::date + 20, 'YYYYMMDD'),
                        'audit_events_' || to_char((now() AT TIME ZONE 'UTC')::date + 21, 'YYYYMMDD'))),
                (SELECT count(*) FROM audit_events_default),
                (SELECT count(*) FROM audit_events)",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((partitions, in_default, total), (3, 0, 1));
}

/// Starts an ingester with `claim_idle` (a decision waits for its outcome a quarter of it).
fn start_ingester(
    db: &TestDatabase,
    redis: &TestRedis,
    claim_idle: Duration,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn(ingest::run(
        db.pool().clone(),
        redis.redis(),
        redis.redis_keys(),
        ingest::Config {
            batch: 500,
            claim_idle,
            consumer: Some("one".to_owned()),
        },
        stop.clone(),
    ));
    (stop, handle)
}

/// Waits until `query` (a count) returns `want`.
async fn until(db: &TestDatabase, query: &'static str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: i64 = sqlx::query_scalar(query)
            .fetch_one(db.pool())
            .await
            .unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{query}: {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every text an agent or upstream controls arrives byte for byte, whatever CSV, array
/// literals or JSON make of quotes, commas, line breaks, backslashes and braces.
#[tokio::test]
async fn hostile_text_arrives_byte_for_byte() {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let tenant = uuid::Uuid::now_v7().to_string();
    let nasty = "a \"quote\", a comma,\na newline\r\n\ta tab \\ a backslash {brace} 'single' \\N ✓";
    let mut decision = audit_event(
        &tenant,
        &tenant,
        &tenant,
        nasty,
        nasty,
        "allow",
        Some(nasty),
    );
    decision["message"] = json!(nasty);
    decision["session"] = json!("");
    decision["arg_keys"] = json!([nasty, "", "NULL", "{}", "\\"]);
    decision["arguments"] = json!({ "to": nasty, "n": [1, 2.5, null, true] });
    let mut outcome = decision.clone();
    outcome["outcome"] = json!({ "upstream_status": 200, "is_error": false, "latency_ms": 1.25,
                                 "upstream_error": nasty });
    cp_support::push_events(&redis, &[decision.clone(), outcome]).await;
    let (stop, ingester) = start_ingester(&db, &redis, Duration::from_secs(8));
    until(
        &db,
        "SELECT count(*) FROM audit_events WHERE latency_ms IS NOT NULL",
        1,
    )
    .await;
    stop.cancel();
    ingester.await.unwrap();
    let row: (
        String,
        String,
        String,
        String,
        String,
        Vec<String>,
        serde_json::Value,
        String,
    ) = sqlx::query_as(
        "SELECT identity, tool, rule, message, session, arg_keys, arguments, upstream_error
               FROM audit_events",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            nasty.to_owned(),
            nasty.to_owned(),
            nasty.to_owned(),
            nasty.to_owned(),
            String::new(),
            vec![
                nasty.to_owned(),
                String::new(),
                "NULL".into(),
                "{}".into(),
                "\\".into()
            ],
            decision["arguments"].clone(),
            nasty.to_owned(),
        )
    );
    let nulls: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT request_id, arg_digest FROM audit_events")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(nulls, (None, None));
}

/// An allowed call's decision waits for its outcome and both become one row, written once; a
/// decision whose outcome is late is stored alone after the wait, and its outcome then fills
/// in that row.
#[tokio::test]
async fn a_decision_waits_for_its_outcome_and_a_late_outcome_completes_its_row() {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let tenant = uuid::Uuid::now_v7().to_string();
    let (stop, ingester) = start_ingester(&db, &redis, Duration::from_secs(4));

    let prompt = audit_event(&tenant, &tenant, &tenant, "agent", "prompt", "allow", None);
    let late = audit_event(&tenant, &tenant, &tenant, "agent", "late", "allow", None);
    cp_support::push_events(&redis, &[prompt.clone(), late.clone()]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not stored yet: both wait for their outcomes.
    assert_eq!(count(&db).await, 0);
    let mut answered = prompt.clone();
    answered["outcome"] = json!({ "upstream_status": 200, "is_error": false, "latency_ms": 3.0 });
    cp_support::push_events(&redis, &[answered]).await;
    until(
        &db,
        "SELECT count(*) FROM audit_events WHERE tool = 'prompt' AND latency_ms = 3",
        1,
    )
    .await;
    // The late one is stored alone once its wait (a quarter of claim_idle) is over.
    until(
        &db,
        "SELECT count(*) FROM audit_events WHERE tool = 'late' AND latency_ms IS NULL",
        1,
    )
    .await;
    let mut answered = late.clone();
    answered["outcome"] = json!({ "upstream_status": 502, "is_error": true, "latency_ms": 9.0 });
    cp_support::push_events(&redis, &[answered]).await;
    until(
        &db,
        "SELECT count(*) FROM audit_events WHERE tool = 'late' AND upstream_status = 502",
        1,
    )
    .await;
    assert_eq!(count(&db).await, 2);
    while pending_entries(&redis).await > 0 || stream_length(&redis).await > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    ingester.await.unwrap();
}
