//! A Redis Cluster on loopback ports, for tests: `redis-server --cluster-enabled yes` per node,
//! joined by `redis-cli --cluster create`; every node is stopped and its files removed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running cluster.
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<(u16, Child)>,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each, and waits until the cluster
    /// serves every slot.
    pub fn start(masters: usize, replicas: usize) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-redis-cluster-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
        };
        for _ in 0..masters * (1 + replicas) {
            let node = cluster.start_node()?;
            cluster.nodes.push(node);
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .output()?;
        if !created.status.success() {
            return Err(std::io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stderr)
            )));
        }
        let ports: Vec<u16> = cluster.nodes.iter().map(|(p, _)| *p).collect();
        // Every node sees every slot served, and every replica is in sync with its master.
        wait_until(Duration::from_secs(30), || {
            ports.iter().all(|&p| {
                cli(p, &["cluster", "info"]).is_some_and(|info| info.contains("cluster_state:ok"))
            }) && ports
                .iter()
                .filter_map(|&p| cli(p, &["info", "replication"]))
                .filter(|info| {
                    info.contains("role:slave") && info.contains("master_link_status:up")
                })
                .count()
                == masters * replicas
        })?;
        Ok(cluster)
    }

    /// Starts one node on a free port pair and waits until it says it is ready. A port can be
    /// taken between choosing it and binding it (tests run in parallel, and the bus port lies in
    /// the ephemeral range): the node then exits, and another pair is tried.
    fn start_node(&self) -> std::io::Result<(u16, Child)> {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_cluster_port()?;
            let log = self.dir.join(format!("{port}.log"));
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                if said.contains("Ready to accept connections") {
                    return Ok((port, child));
                }
                if child.try_wait()?.is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = said.lines().last().unwrap_or("no log").to_owned();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(std::io::Error::other(format!(
            "a Redis Cluster node would not start: {last}"
        )))
    }

    /// Every node's URL, comma-separated (the seed list for `REDIS_URL`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master serving `slot` now, and its replicas (ports), from `CLUSTER SLOTS`.
    pub fn owner(&self, slot: u16) -> Option<(u16, Vec<u16>)> {
        use redis::Value;
        let int = |v: &Value| match v {
            Value::Int(n) => Some(*n),
            _ => None,
        };
        for (port, _) in &self.nodes {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                continue;
            };
            let Ok(mut conn) = client.get_connection() else {
                continue;
            };
            let Ok(Value::Array(ranges)) =
                redis::cmd("CLUSTER").arg("SLOTS").query::<Value>(&mut conn)
            else {
                continue;
            };
            for range in ranges {
                let Value::Array(fields) = range else {
                    continue;
                };
                let (Some(start), Some(end)) =
                    (fields.first().and_then(int), fields.get(1).and_then(int))
                else {
                    continue;
                };
                if !(start..=end).contains(&i64::from(slot)) {
                    continue;
                }
                // Each node: [host, port, id, …], the master first.
                let ports: Vec<u16> = fields[2..]
                    .iter()
                    .filter_map(|node| match node {
                        Value::Array(node) => node.get(1).and_then(int),
                        _ => None,
                    })
                    .filter_map(|p| u16::try_from(p).ok())
                    .collect();
                let master = *ports.first()?;
                // Replicas by their own account (CLUSTER SLOTS lists them only once gossip
                // has spread their state).
                let replicas = self
                    .nodes
                    .iter()
                    .map(|(p, _)| *p)
                    .filter(|&p| {
                        cli(p, &["info", "replication"]).is_some_and(|info| {
                            info.contains("role:slave")
                                && info
                                    .lines()
                                    .any(|l| l.trim() == format!("master_port:{master}"))
                        })
                    })
                    .collect();
                return Some((master, replicas));
            }
        }
        None
    }

    /// Kills a node with SIGKILL.
    pub fn kill(&mut self, port: u16) {
        if let Some((_, child)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The ports of the nodes that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .map(|(p, _)| *p)
            .filter(|&p| cli(p, &["role"]).is_some_and(|r| r.starts_with("master")))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p PORT ARGS…`'s output, when it ran.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A port that is free, with its cluster bus port (port + 10000) free too.
fn free_cluster_port() -> std::io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free port pair for a cluster node",
    ))
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> std::io::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(std::io::Error::other(
                "the Redis Cluster did not come up in time",
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
