//! The test harness every Portcullis test shares: a fresh Postgres database per test (cloned
//! from a template migrated once), a unique Redis key prefix per test, and a chaos proxy that
//! cuts a connection on demand, and a mailbox that reads the mail the control plane sends.
//! Everything a harness object starts stops when it is dropped.
//!
//! Postgres and Redis are found through `DATABASE_URL` and `REDIS_URL` (any database name in
//! `DATABASE_URL` is ignored: the harness makes its own), defaulting to the local servers.

#![allow(clippy::unwrap_used)]

mod chaos;
mod mailbox;
pub mod peers;
mod postgres;
pub mod redis_cluster;
mod redis_prefix;
pub mod sse;

pub use chaos::ChaosProxy;
pub use mailbox::{Mail, Mailbox, signup};
pub use postgres::TestDatabase;
pub use redis_cluster::RedisCluster;
pub use redis_prefix::TestRedis;

/// The Postgres server URL the tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh credential key ring spec for a service under test.
pub fn encryption_keys() -> String {
    portcullis_core::Keyring::generate(1).1
}

/// Starts the control plane and the gateway in this process, on port 0, against the given
/// Postgres and Redis URLs, with fresh keys; `extra` flags are added.
pub async fn start_both(
    database_url: &str,
    redis_url: &str,
    prefix: &str,
    extra: &[&str],
) -> portcullis::Running {
    let keys = encryption_keys();
    let mut flags = vec![
        "--database-url",
        database_url,
        "--redis-url",
        redis_url,
        "--redis-prefix",
        prefix,
        "--control-plane-addr",
        "127.0.0.1:0",
        "--gateway-addr",
        "127.0.0.1:0",
        "--probe-timeout",
        "500ms",
        "--shutdown-grace",
        "2s",
        "--encryption-keys",
        &keys,
        "--session-keys",
        &keys,
    ];
    flags.extend_from_slice(redis_flags(redis_url));
    flags.extend_from_slice(extra);
    let config = portcullis::Config::from_flags(flags).unwrap();
    portcullis::start(&config, portcullis::Role::Both)
        .await
        .unwrap()
}

/// Stops a process as an orchestrator would, with SIGTERM (drain, then exit), and returns how
/// it exited; fails the test if it still runs 10 s later.
pub async fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    signal(child.id(), "TERM");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sends a signal (`TERM`, `KILL`, …) to a process; fails the test if it cannot be sent.
pub fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid}: {sent}");
}

/// The shard count the services use on a cluster (`PORTCULLIS_REDIS_SHARDS`' default).
pub const REDIS_SHARDS: u16 = portcullis_core::redis_keys::DEFAULT_SHARDS;

/// True when the suite runs against a Redis Cluster (`portcullis-redis-cluster` sets
/// `PORTCULLIS_TEST_REDIS_CLUSTER`, and `REDIS_URL` to the cluster's nodes).
pub fn redis_cluster() -> bool {
    std::env::var("PORTCULLIS_TEST_REDIS_CLUSTER").is_ok_and(|v| v == "1")
}

/// The flags a service needs for the tests' Redis at `url`, beyond the URL itself:
/// `--redis-cluster` when it is the cluster's.
pub fn redis_flags(url: &str) -> &'static [&'static str] {
    if redis_cluster() && url == redis_url() {
        &["--redis-cluster"]
    } else {
        &[]
    }
}

/// True (and says so) when the suite runs on a Redis Cluster: a test that cuts the one Redis
/// connection through a [`ChaosProxy`] does not apply there (a cluster connection goes to the
/// cluster's own nodes, not through the proxy); a master's failover tests that instead.
pub fn skipped_on_cluster(test: &str) -> bool {
    let skip = redis_cluster();
    if skip {
        eprintln!("{test}: skipped on a Redis Cluster (it cuts a single Redis connection)");
    }
    skip
}

/// The Redis URL the tests use (on a cluster, its nodes, comma-separated).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The address of the Redis server the tests use (for a [`ChaosProxy`] in front of it).
pub fn redis_addr() -> std::net::SocketAddr {
    use redis::IntoConnectionInfo as _;
    use std::net::ToSocketAddrs as _;
    let url = redis_url();
    let info = url
        .as_str()
        .into_connection_info()
        .unwrap_or_else(|e| panic!("REDIS_URL {url}: {e}"));
    let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
        panic!("REDIS_URL {url}: not a TCP address");
    };
    (host.as_str(), *port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find(std::net::SocketAddr::is_ipv4))
        .unwrap_or_else(|| panic!("REDIS_URL {url}: no IPv4 address for {host}"))
}
