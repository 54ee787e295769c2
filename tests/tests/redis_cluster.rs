//! The gateway on a Redis Cluster of its own (three masters, three replicas): charge scripts
//! spread over the masters, and a master's failover under load.
//!
//! The limiter, gateway and ingestion suites also run whole on a cluster
//! (`deploy/local/test` runs them under `portcullis-redis-cluster`); these tests need a
//! cluster they can take apart.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

// The gateway suite's harness, of which these tests use a part.
#[allow(dead_code, unused_imports)]
mod gateway {
    pub mod support;
    pub mod toolbox;
}

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gateway::support::{Stack, post_stateless};
use gateway::toolbox::RmcpServer;
use portcullis::{Role, Running};
use portcullis_core::redis_keys::{RedisKeys, slot};
use portcullis_tests::RedisCluster;
use portcullis_tests::redis_cluster::cli;
use serde_json::{Value, json};

fn limited(on_limiter_error: &str) -> Value {
    json!({
        "version": "1",
        "default": "allow",
        "on_limiter_error": on_limiter_error,
        "all_tools": {"limits": [{"counter": "calls", "window": "minute", "max": 1_000_000}]}
    })
}

async fn gateway_on(stack: &Stack, cluster: &RedisCluster) -> Running {
    portcullis::start(
        &stack.config(
            &cluster.url(),
            &["--redis-cluster", "--limiter-timeout", "500ms"],
        ),
        Role::Gateway,
    )
    .await
    .unwrap()
}

/// Script calls each master ran since its statistics were reset.
fn scripts(port: u16) -> u64 {
    let stats = cli(port, &["info", "commandstats"]).unwrap_or_default();
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charge_scripts_spread_over_the_masters() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1).unwrap())
        .await
        .unwrap();
    let stack = Stack::new().await;
    let upstream = RmcpServer::start(true).await;
    let gateway = gateway_on(&stack, &cluster).await;
    let mut fixtures = Vec::new();
    for _ in 0..300 {
        fixtures.push(
            stack
                .fixture(&upstream.url, "streamable_http", limited("deny"))
                .await,
        );
    }
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    for &m in &masters {
        cli(m, &["config", "resetstat"]).unwrap();
    }
    for f in &fixtures {
        let (status, _, body) =
            post_stateless(&f.url(&gateway), &[], 1, "echo", json!({"text": "hi"})).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("echo: hi"), "{body}");
    }
    let counts: Vec<u64> = masters.iter().map(|&m| scripts(m)).collect();
    let total: u64 = counts.iter().sum();
    assert!(total >= 300, "{counts:?}");
    let shares: Vec<f64> = counts.iter().map(|&c| c as f64 / total as f64).collect();
    eprintln!("charge scripts per master: {counts:?} ({shares:.3?})");
    assert!(
        shares.iter().all(|s| (0.25..=0.42).contains(s)),
        "each master should serve 25–42% of the charge scripts: {shares:?}"
    );
    gateway.stop().await.unwrap();
}

/// How one call of the load went.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Answered by the upstream.
    Served,
    /// Refused by `on_limiter_error: deny` while Redis could not charge it.
    LimiterDenied,
    /// Anything else.
    Failed(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_fails_over_under_load_and_service_resumes() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1).unwrap())
        .await
        .unwrap();
    let stack = Stack::new().await;
    let upstream = RmcpServer::start(true).await;
    let gateway = gateway_on(&stack, &cluster).await;
    let f = stack
        .fixture(&upstream.url, "streamable_http", limited("deny"))
        .await;
    let keys = RedisKeys::clustered(stack.redis.prefix(), portcullis_tests::REDIS_SHARDS);
    let stream = keys.audit_stream(keys.shard(f.tenant));
    let (master, replicas) = cluster.owner(slot(stream.as_bytes())).unwrap();
    let replica = replicas[0];

    // Load: 8 clients calling in a loop, each call's time and outcome recorded.
    let url = f.url(&gateway);
    let running = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (url, running) = (url.clone(), running.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut id = c * 1_000_000;
            while running.load(Ordering::Relaxed) {
                id += 1;
                let started = Instant::now();
                let (status, _, body) =
                    post_stateless(&url, &[], id, "echo", json!({"text": "load"})).await;
                let outcome = if status == 200 && body.contains("echo: load") {
                    Outcome::Served
                } else if status == 200 && body.contains("on_limiter_error: deny") {
                    Outcome::LimiterDenied
                } else {
                    Outcome::Failed(format!("{status} {body}"))
                };
                seen.push((started, outcome));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The replica takes over, then the old master is killed.
    cli(replica, &["cluster", "failover"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli(replica, &["role"]).is_some_and(|r| r.starts_with("master")) {
        assert!(Instant::now() < deadline, "the replica was never promoted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promoted = Instant::now();
    cluster.kill(master);
    tokio::time::sleep(Duration::from_secs(8)).await;
    running.store(false, Ordering::Relaxed);
    let mut seen = Vec::new();
    for client in clients {
        seen.extend(client.await.unwrap());
    }

    let failed: Vec<&(Instant, Outcome)> = seen
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "calls failed otherwise than by the policy: {failed:?}"
    );
    let late_denied = seen
        .iter()
        .filter(|(at, o)| *at > promoted + Duration::from_secs(5) && *o != Outcome::Served)
        .count();
    let after = seen
        .iter()
        .filter(|(at, _)| *at > promoted + Duration::from_secs(5))
        .count();
    let denied = seen
        .iter()
        .filter(|(_, o)| *o == Outcome::LimiterDenied)
        .count();
    let last_denied = seen
        .iter()
        .filter(|(_, o)| *o == Outcome::LimiterDenied)
        .map(|(at, _)| at.saturating_duration_since(promoted))
        .max();
    eprintln!(
        "{} calls, {denied} refused by on_limiter_error, the last {last_denied:?} after the promotion; {after} calls after promotion + 5 s",
        seen.len()
    );
    assert!(after > 50, "too little load after the failover to tell");
    assert_eq!(
        late_denied, 0,
        "service did not resume within 5 s of the promotion"
    );

    // Every call the upstream served has its decision in Redis, written before it was sent.
    let mut conn = portcullis_redis::Redis::parse(&cluster.url(), true, None)
        .unwrap()
        .connect_lazy(portcullis_redis::Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(5),
        })
        .unwrap();
    let mut allowed = HashSet::new();
    for key in keys.audit_streams() {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for entry in &entries.ids {
            let events: Vec<Value> = if let Some(json) = entry.get::<String>("events") {
                serde_json::from_str(&json).unwrap()
            } else if let Some(json) = entry.get::<String>("event") {
                vec![serde_json::from_str(&json).unwrap()]
            } else {
                Vec::new()
            };
            for e in events {
                if e["decision"] == "allow" && e["tool"] == "echo" {
                    allowed.insert(e["id"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    let served = upstream.calls();
    assert!(
        allowed.len() >= served,
        "{served} calls reached the upstream, {} allow decisions in Redis",
        allowed.len()
    );
    gateway.stop().await.unwrap();
}
