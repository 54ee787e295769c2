//! The foundation: the harness itself, readiness on both listeners, and behaviour when a
//! dependency dies.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::net::SocketAddr;
use std::time::Duration;

use portcullis::Running;
use portcullis_tests::{ChaosProxy, TestDatabase, TestRedis};
use redis::AsyncCommands as _;
use serde_json::Value;

/// Starts both services on port 0 against the given Postgres and Redis URLs.
async fn start(db_url: &str, redis_url: &str, prefix: &str) -> Running {
    portcullis_tests::start_both(db_url, redis_url, prefix, &[]).await
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap(), headers)
}

fn listeners(app: &Running) -> [SocketAddr; 2] {
    [app.control_plane.unwrap(), app.gateway.unwrap()]
}

#[tokio::test]
async fn every_test_gets_its_own_migrated_database() {
    let a = TestDatabase::new().await;
    let b = TestDatabase::new().await;
    assert_ne!(a.name(), b.name());
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'Acme')")
        .bind(uuid::Uuid::now_v7())
        .execute(a.pool())
        .await
        .unwrap();
    let count = |db: &TestDatabase| {
        let pool = db.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tenants")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count(&a).await, 1);
    assert_eq!(count(&b).await, 0);
    // The audit log is partitioned and has a partition for today.
    let partitions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass",
    )
    .fetch_one(a.pool())
    .await
    .unwrap();
    assert!(partitions >= 2, "{partitions} partitions");

    let name = a.name().to_owned();
    drop(a);
    let gone: bool =
        sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(b.pool())
            .await
            .unwrap();
    assert!(gone, "the dropped test database {name} still exists");
}

#[tokio::test]
async fn every_test_gets_its_own_redis_prefix_and_leaves_nothing() {
    let a = TestRedis::new().await;
    let b = TestRedis::new().await;
    assert_ne!(a.prefix(), b.prefix());
    let mut conn = a.conn();
    let _: () = conn.set(format!("{}:k", a.prefix()), "v").await.unwrap();
    assert_eq!(a.keys().await.len(), 1);
    assert!(b.keys().await.is_empty());
    let key = format!("{}:k", a.prefix());
    drop(a);
    let mut conn = b.conn();
    let exists: bool = conn.exists(&key).await.unwrap();
    assert!(!exists, "the prefix's keys outlived the test");
}

#[tokio::test]
async fn both_listeners_answer_health_and_readiness() {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let app = start(&db.url(), &portcullis_tests::redis_url(), redis.prefix()).await;
    for addr in listeners(&app) {
        let (status, body, headers) = get(addr, "/healthz").await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "ok");
        assert!(headers.contains_key("x-request-id"), "no request id");
        let (status, body, _) = get(addr, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["checks"]["postgres"], "ok");
        assert_eq!(body["checks"]["redis"], "ok");
        let metrics = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200);
        assert!(
            metrics.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_process_holds_at_most_its_pool_of_named_postgres_connections() {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let app = portcullis_tests::start_both(
        &db.url(),
        &portcullis_tests::redis_url(),
        redis.prefix(),
        &["--database-max-connections", "2"],
    )
    .await;
    // Forty readiness probes at once, each a query, through both listeners.
    let probes = listeners(&app)
        .into_iter()
        .cycle()
        .take(40)
        .map(|addr| async move { get(addr, "/readyz").await.0 });
    let statuses = futures::future::join_all(probes).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'portcullis'",
    )
    .bind(db.name())
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!((1..=2).contains(&held), "{held} connections");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn readiness_names_redis_when_it_is_down_and_recovers() {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let proxy = ChaosProxy::start(portcullis_tests::redis_addr()).await;
    let app = start(
        &db.url(),
        &format!("redis://{}", proxy.addr()),
        redis.prefix(),
    )
    .await;
    for addr in listeners(&app) {
        assert_eq!(get(addr, "/readyz").await.0, 200);
    }

    proxy.cut();
    for addr in listeners(&app) {
        let (status, body, _) = get(addr, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["failed"], serde_json::json!(["redis"]));
        assert!(
            body["message"].as_str().unwrap().contains("redis"),
            "{body}"
        );
        assert_eq!(body["checks"]["postgres"], "ok");
        assert_eq!(
            get(addr, "/healthz").await.0,
            200,
            "healthz must not depend on Redis"
        );
    }

    proxy.restore();
    for addr in listeners(&app) {
        eventually_ready(addr).await;
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn readiness_names_postgres_when_it_is_down() {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let proxy = ChaosProxy::start(db.addr()).await;
    let db_url = db.url_via(proxy.addr());
    let app = start(&db_url, &portcullis_tests::redis_url(), redis.prefix()).await;
    let addr = app.gateway.unwrap();
    assert_eq!(get(addr, "/readyz").await.0, 200);

    proxy.cut();
    let (status, body, _) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["failed"], serde_json::json!(["postgres"]));
    assert_eq!(get(addr, "/healthz").await.0, 200);

    proxy.restore();
    eventually_ready(addr).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_and_frees_the_ports() {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let app = start(&db.url(), &portcullis_tests::redis_url(), redis.prefix()).await;
    let [cp, gw] = listeners(&app);
    app.stop().await.unwrap();
    for addr in [cp, gw] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still accepts connections after shutdown"
        );
    }
}

async fn eventually_ready(addr: SocketAddr) {
    for _ in 0..50 {
        if get(addr, "/readyz").await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} did not become ready again");
}
