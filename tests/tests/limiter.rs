//! The limiter against a real Redis: sliding windows, all-or-none charges, refunds, bounded
//! memory, and batched round trips that never let more through than the limit.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::TenantId;
use portcullis_core::redis_keys::RedisKeys;
use portcullis_gateway::batch::{BUCKETS, Batcher};
use portcullis_gateway::limiter::{Charged, Limiter};
use portcullis_gateway::spill::Spill;
use portcullis_policy::Charge;
use portcullis_tests::TestRedis;
use redis::AsyncCommands as _;

struct Setup {
    redis: TestRedis,
    limiter: Limiter,
}

impl Setup {
    async fn new() -> Self {
        let redis = TestRedis::new().await;
        let keys = redis.redis_keys();
        let batch = Batcher::start(
            redis.conn(),
            keys.audit_streams(),
            Duration::from_secs(2),
            None,
        );
        let limiter = Limiter::new(redis.conn(), batch, keys, Duration::from_secs(2));
        Self { redis, limiter }
    }

    async fn stream_len(&self) -> usize {
        let mut conn = self.redis.conn();
        let mut total = 0;
        for key in self.redis.redis_keys().audit_streams() {
            let len: usize = conn.xlen(key).await.unwrap();
            total += len;
        }
        total
    }
}

fn charge(key: &str, window: Duration, max: u64, cost: u64) -> Charge {
    Charge {
        key: key.to_owned(),
        window,
        max,
        cost,
        rule: "/tools/t/limits/0".into(),
    }
}

fn is_ok(charged: &Charged) -> bool {
    matches!(charged, Charged::Ok(_))
}

#[tokio::test]
async fn a_window_refuses_past_max_says_when_and_frees_up_as_it_slides() {
    let s = Setup::new().await;
    let t = TenantId::new();
    let window = Duration::from_secs(2);
    let c = [charge("grant:g:calls", window, 3, 1)];
    for _ in 0..3 {
        assert!(is_ok(&s.limiter.charge(t, &c, None).await.unwrap()));
    }
    let Charged::Exceeded { index, retry_after } = s.limiter.charge(t, &c, None).await.unwrap()
    else {
        panic!("the fourth call in the window went through");
    };
    assert_eq!(index, 0);
    // Never lenient: at most one window plus one bucket width.
    let width = Duration::from_millis(2000 / BUCKETS);
    assert!(
        retry_after > Duration::ZERO && retry_after <= window + width,
        "{retry_after:?}"
    );
    tokio::time::sleep(retry_after + Duration::from_millis(5)).await;
    assert!(is_ok(&s.limiter.charge(t, &c, None).await.unwrap()));
    // Another tenant's counter of the same name is its own.
    let other = TenantId::new();
    assert!(is_ok(&s.limiter.charge(other, &c, None).await.unwrap()));
}

#[tokio::test]
async fn a_charge_takes_every_counter_or_none_and_writes_its_entry_only_when_it_passes() {
    let s = Setup::new().await;
    let t = TenantId::new();
    let minute = Duration::from_secs(60);
    let both = [
        charge("grant:g:calls", minute, 10, 1),
        charge("tenant:t:spend", minute, 100, 60),
    ];
    assert!(is_ok(
        &s.limiter
            .charge(t, &both, Some(r#"{"n":1}"#.into()))
            .await
            .unwrap()
    ));
    // Spend is now 60 of 100: another 60 does not fit, so calls must not be taken either.
    let refused = s
        .limiter
        .charge(t, &both, Some(r#"{"n":2}"#.into()))
        .await
        .unwrap();
    assert!(
        matches!(refused, Charged::Exceeded { index: 1, .. }),
        "{refused:?}"
    );
    assert_eq!(s.stream_len().await, 1, "a refused charge wrote its entry");
    // A cost larger than the limit itself never fits: retry after a whole window.
    let huge = [charge("tenant:t:spend", minute, 100, 101)];
    let Charged::Exceeded { retry_after, .. } = s.limiter.charge(t, &huge, None).await.unwrap()
    else {
        panic!("a cost over max went through");
    };
    assert_eq!(retry_after, minute);
    // calls: 1 taken, so 9 more fit and the tenth is refused.
    let calls = [charge("grant:g:calls", minute, 10, 1)];
    for _ in 0..9 {
        assert!(is_ok(&s.limiter.charge(t, &calls, None).await.unwrap()));
    }
    assert!(!is_ok(&s.limiter.charge(t, &calls, None).await.unwrap()));
}

/// A caller that stops waiting for its charge (its timeout answered the call) is not charged
/// when the batch it was queued in goes to Redis, and its decision entry is not written.
#[tokio::test]
async fn a_charge_whose_caller_gave_up_is_not_taken() {
    let s = Setup::new().await;
    let t = TenantId::new();
    let once = [charge("grant:g:once", Duration::from_secs(60), 1, 1)];
    {
        // Queued (the first poll sends it to the batcher), then abandoned before the batcher
        // runs: on this single-threaded runtime nothing else runs in between.
        let mut abandoned = std::pin::pin!(s.limiter.charge(t, &once, Some(r#"{"n":1}"#.into())));
        assert!(futures::poll!(abandoned.as_mut()).is_pending());
    }
    assert!(is_ok(&s.limiter.charge(t, &once, None).await.unwrap()));
    assert_eq!(
        s.stream_len().await,
        0,
        "the abandoned charge wrote its entry"
    );
}

#[tokio::test]
async fn refunds_give_charges_back() {
    let s = Setup::new().await;
    let t = TenantId::new();
    let c = [charge("grant:g:calls", Duration::from_secs(60), 1, 1)];
    let Charged::Ok(reservation) = s.limiter.charge(t, &c, None).await.unwrap() else {
        panic!("refused");
    };
    assert!(!is_ok(&s.limiter.charge(t, &c, None).await.unwrap()));
    s.limiter.refund(&reservation).await.unwrap();
    assert!(is_ok(&s.limiter.charge(t, &c, None).await.unwrap()));
}

#[tokio::test]
async fn memory_per_counter_is_bounded_however_high_the_limit() {
    let s = Setup::new().await;
    let t = TenantId::new();
    let c = [charge(
        "tenant:t:all",
        Duration::from_millis(500),
        1_000_000_000,
        1,
    )];
    // 3,000 charges spread over more than a window: the old buckets must be gone.
    let limiter = Arc::new(s.limiter.clone());
    for _ in 0..30 {
        let calls = (0..100).map(|_| {
            let limiter = limiter.clone();
            let c = c.clone();
            async move { limiter.charge(t, &c, None).await.unwrap() }
        });
        for charged in futures::future::join_all(calls).await {
            assert!(is_ok(&charged));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let keys = s.redis.keys().await;
    let counter = keys.iter().find(|k| k.contains(":lim:")).unwrap();
    let mut conn = s.redis.conn();
    let fields: usize = conn.hlen(counter).await.unwrap();
    assert!(
        fields <= usize::try_from(BUCKETS).unwrap() + 3,
        "{fields} fields for one counter"
    );
    let ttl: i64 = conn.pttl(counter).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 500 + 5 + 1000,
        "the counter expires on its own: {ttl}"
    );
}

#[tokio::test]
async fn concurrent_charges_batched_together_let_exactly_max_through() {
    let s = Setup::new().await;
    let t = TenantId::new();
    let c = [
        charge("grant:g:calls", Duration::from_secs(60), 50, 1),
        charge("tenant:t:all", Duration::from_secs(3600), 1000, 1),
    ];
    let limiter = Arc::new(s.limiter.clone());
    let calls = (0..400).map(|i| {
        let limiter = limiter.clone();
        let c = c.clone();
        async move {
            limiter
                .charge(t, &c, Some(format!(r#"{{"n":{i}}}"#)))
                .await
                .unwrap()
        }
    });
    let results = futures::future::join_all(calls).await;
    let passed = results.iter().filter(|r| is_ok(r)).count();
    assert_eq!(passed, 50);
    // Every passing charge wrote its entry (some in batch entries).
    let key = s
        .redis
        .redis_keys()
        .audit_stream(s.redis.redis_keys().shard(t));
    let mut conn = s.redis.conn();
    let entries: redis::streams::StreamRangeReply = conn.xrange_all(&key).await.unwrap();
    let mut events = 0;
    for entry in &entries.ids {
        if let Some(json) = entry.get::<String>("events") {
            events += serde_json::from_str::<Vec<serde_json::Value>>(&json)
                .unwrap()
                .len();
        } else if entry.get::<String>("event").is_some() {
            events += 1;
        }
    }
    assert_eq!(events, 50);
}

#[tokio::test]
async fn absurd_limits_and_costs_never_break_the_batch_they_share() {
    let s = Setup::new().await;
    let t = TenantId::new();
    let minute = Duration::from_secs(60);
    let huge = [charge("tenant:t:spend", minute, u64::MAX, u64::MAX / 2)];
    let over = [charge("tenant:t:other", minute, u64::MAX / 4, u64::MAX / 2)];
    let normal = [charge("grant:g:calls", minute, 10, 1)];
    let limiter = Arc::new(s.limiter.clone());
    let (a, b, c) = tokio::join!(
        limiter.charge(t, &huge, None),
        limiter.charge(t, &over, None),
        limiter.charge(t, &normal, None)
    );
    assert!(is_ok(&a.unwrap()), "a cost within its (clamped) max fits");
    assert!(!is_ok(&b.unwrap()), "a cost over its max never fits");
    assert!(
        is_ok(&c.unwrap()),
        "the other calls of the batch are unaffected"
    );
}

#[tokio::test]
async fn a_charge_of_nothing_fits_a_counter_over_its_max() {
    let s = Setup::new().await;
    let t = TenantId::new();
    let minute = Duration::from_secs(60);
    let ten = [charge("tenant:t:spend", minute, 10, 10)];
    assert!(is_ok(&s.limiter.charge(t, &ten, None).await.unwrap()));
    // The max lowered since (or another policy's, sharing the counter): 10 held against 5.
    let free = [charge("tenant:t:spend", minute, 5, 0)];
    let one = [charge("tenant:t:spend", minute, 5, 1)];
    assert!(is_ok(&s.limiter.charge(t, &free, None).await.unwrap()));
    assert!(!is_ok(&s.limiter.charge(t, &one, None).await.unwrap()));
    let results = concurrently(&s, t, &free, 10).await;
    assert!(results.iter().all(is_ok), "a run of free charges fits too");
}

/// Charges `n` concurrent calls of `c` (so that most share a round trip); returns the results.
async fn concurrently(s: &Setup, t: TenantId, c: &[Charge], n: usize) -> Vec<Charged> {
    let limiter = Arc::new(s.limiter.clone());
    let calls = (0..n).map(|_| {
        let limiter = limiter.clone();
        let c = c.to_vec();
        async move { limiter.charge(t, &c, None).await.unwrap() }
    });
    futures::future::join_all(calls).await
}

#[tokio::test]
async fn a_run_of_identical_charges_is_decided_as_if_one_by_one() {
    let s = Setup::new().await;
    let t = TenantId::new();
    let minute = Duration::from_secs(60);
    // Cost 3 against 50: 16 fit. The refused name the full counter and when to retry.
    let c = [
        charge("grant:g:calls", minute, 50, 3),
        charge("tenant:t:all", minute, 1000, 3),
    ];
    let results = concurrently(&s, t, &c, 40).await;
    assert_eq!(results.iter().filter(|r| is_ok(r)).count(), 16);
    for r in results.iter().filter(|r| !is_ok(r)) {
        let Charged::Exceeded { index, retry_after } = r else {
            unreachable!()
        };
        assert_eq!(*index, 0);
        assert!(*retry_after > Duration::ZERO && *retry_after <= minute + minute / 100);
    }
    // Now the second counter is the one that fills: 1000 - 48 = 952 left, cost 100 → 9 fit.
    let c = [
        charge("grant:h:calls", minute, 10_000, 100),
        charge("tenant:t:all", minute, 1000, 100),
    ];
    let results = concurrently(&s, t, &c, 30).await;
    assert_eq!(results.iter().filter(|r| is_ok(r)).count(), 9);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Charged::Ok(_) | Charged::Exceeded { index: 1, .. }))
    );
    // A charge that names one counter twice takes it twice: 5 fit in 10.
    let twice = [
        charge("grant:k:calls", minute, 10, 1),
        charge("grant:k:calls", minute, 10, 1),
    ];
    let results = concurrently(&s, t, &twice, 20).await;
    assert_eq!(results.iter().filter(|r| is_ok(r)).count(), 5);
}

/// The `n` of every entry in the audit streams, sorted.
async fn entries(redis: &TestRedis) -> Vec<i64> {
    let mut conn = redis.conn();
    let mut found = Vec::new();
    for key in redis.redis_keys().audit_streams() {
        let read: redis::streams::StreamRangeReply = conn.xrange_all(key).await.unwrap();
        found.extend(entry_numbers(read));
    }
    found.sort_unstable();
    found
}

/// The `n` of each event of stream entries.
fn entry_numbers(read: redis::streams::StreamRangeReply) -> Vec<i64> {
    let mut found = Vec::new();
    for id in read.ids {
        for value in id.map.values() {
            let batch: Vec<serde_json::Value> =
                serde_json::from_slice(&redis::from_redis_value_ref::<Vec<u8>>(value).unwrap())
                    .unwrap();
            found.extend(batch.iter().map(|e| e["n"].as_i64().unwrap()));
        }
    }
    found
}

/// A batcher reaching Redis through a proxy the test can cut, giving up after `timeout`.
async fn batcher_behind_chaos(
    timeout: Duration,
) -> (TestRedis, portcullis_tests::ChaosProxy, Batcher) {
    let redis = TestRedis::new().await;
    let keys = RedisKeys::new(redis.prefix());
    let proxy = portcullis_tests::ChaosProxy::start(portcullis_tests::redis_addr()).await;
    let (_, conn) = through(&proxy, timeout);
    let batch = Batcher::start(conn, keys.audit_streams(), timeout, None);
    (redis, proxy, batch)
}

/// A client of Redis through `proxy`, and a connection from it giving up after `timeout`.
fn through(
    proxy: &portcullis_tests::ChaosProxy,
    timeout: Duration,
) -> (portcullis_redis::Redis, portcullis_redis::Conn) {
    let client = redis::Client::open(format!("redis://{}", proxy.addr())).unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1);
    let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config).unwrap();
    (
        portcullis_redis::Redis::single(client),
        portcullis_redis::Conn::Single(conn),
    )
}

#[tokio::test]
async fn audit_entries_redis_never_took_wait_on_disk_until_it_is_back() {
    if portcullis_tests::skipped_on_cluster(
        "audit_entries_redis_never_took_wait_on_disk_until_it_is_back",
    ) {
        return;
    }
    let timeout = Duration::from_millis(200);
    let redis = TestRedis::new().await;
    let keys = RedisKeys::new(redis.prefix());
    let proxy = portcullis_tests::ChaosProxy::start(portcullis_tests::redis_addr()).await;
    let dir = std::env::temp_dir().join(format!(
        "portcullis-spill-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let spill = Spill::open(&dir).unwrap();
    let force = tokio_util::sync::CancellationToken::new();
    let (client, conn) = through(&proxy, timeout);
    let (batch, task) = Batcher::spawn(
        conn,
        keys.audit_streams(),
        timeout,
        Some(spill.clone()),
        (client, force.clone()),
    );
    proxy.cut();
    let total = 300;
    for n in 1..=total {
        batch.enqueue(0, format!(r#"{{"n":{n}}}"#));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The gateway is stopped by force while Redis is still down: what its worker holds
    // cannot be written, and goes to disk.
    force.cancel();
    let leftover = task.await.unwrap().expect("stopped by force");
    drop(batch);
    leftover.write().await;
    assert!(entries(&redis).await.is_empty());
    assert!(spill.has_files(), "the entries wait on disk");

    // Any gateway using the directory sends them once Redis answers, each once.
    proxy.restore();
    let _later = Batcher::start(
        redis.conn(),
        keys.audit_streams(),
        timeout,
        Some(Spill::open(&dir).unwrap()),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while entries(&redis).await.len() < total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: Vec<i64> = (1..=i64::try_from(total).unwrap()).collect();
    assert_eq!(entries(&redis).await, expected);
    // Claimed files are deleted once Redis has taken their entries (till then they stay, so
    // a gateway that dies meanwhile loses nothing).
    while std::fs::read_dir(&dir).unwrap().count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a claimed file was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_dir(&dir).unwrap();
}

#[tokio::test]
async fn audit_entries_written_while_redis_is_cut_are_written_once_when_it_is_back() {
    if portcullis_tests::skipped_on_cluster(
        "audit_entries_written_while_redis_is_cut_are_written_once_when_it_is_back",
    ) {
        return;
    }
    let (redis, proxy, batch) = batcher_behind_chaos(Duration::from_millis(300)).await;
    let calls = vec![portcullis_gateway::batch::Counter {
        key: format!("{}:{{t:x}}:calls", redis.prefix()),
        width: 600,
        max: 100,
        cost: 1,
    }];
    // Up: a charge and an entry share a round trip (in either order), and both land.
    let (charged, written) = tokio::join!(
        batch.charge(0, calls.clone(), Some(r#"{"n":1}"#.into())),
        batch.write(0, r#"{"n":2}"#.into()),
    );
    assert_eq!(charged.unwrap().refused, 0);
    assert!(written);
    assert_eq!(entries(&redis).await, [1, 2]);

    proxy.cut();
    assert!(batch.charge(0, calls.clone(), None).await.is_err());
    batch.enqueue(0, r#"{"n":3}"#.into());
    assert!(
        !batch.write(0, r#"{"n":4}"#.into()).await,
        "written while cut"
    );
    proxy.restore();
    // The entries kept for another try are written once Redis is back, each exactly once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while entries(&redis).await.len() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(entries(&redis).await, [1, 2, 3, 4]);
    assert_eq!(batch.charge(0, calls, None).await.unwrap().refused, 0);
}

#[tokio::test]
async fn audit_entries_outlive_a_redis_outage_of_seconds() {
    if portcullis_tests::skipped_on_cluster("audit_entries_outlive_a_redis_outage_of_seconds") {
        return;
    }
    let (redis, proxy, batch) = batcher_behind_chaos(Duration::from_millis(200)).await;
    proxy.cut();
    // Entries keep coming through an outage many round trips long (a failover, say), more
    // of them than one round trip sends again.
    let total = 2_000;
    for n in 1..=total {
        batch.enqueue(0, format!(r#"{{"n":{n}}}"#));
        if n % 250 == 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while entries(&redis).await.len() < total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every one, exactly once.
    let expected: Vec<i64> = (1..=i64::try_from(total).unwrap()).collect();
    assert_eq!(entries(&redis).await, expected);
}
