#![warn(missing_docs)]
//! One way to Redis for every service: a single primary, or a Redis Cluster.
//!
//! [`Redis`] is where Redis is (`REDIS_URL`, or with `PORTCULLIS_REDIS_CLUSTER` the seed nodes
//! of a cluster, comma-separated; the rest of the cluster is discovered). [`Conn`] is a
//! connection to it that every command path takes as a plain [`redis::aio::ConnectionLike`]:
//! on a cluster each command goes to the master of its key's slot, so a script (every key in
//! one slot, see `portcullis_core::redis_keys`) is still one round trip to one node.
//!
//! Connections are lazy: a process starts while Redis is down, reports itself not ready, and
//! connects once Redis answers.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo as _, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

/// Where Redis is.
#[derive(Clone)]
pub struct Redis {
    target: Arc<Target>,
}

impl std::fmt::Debug for Redis {
    // The URLs may hold a password: only the shape is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.target {
            Target::Single(_) => f.write_str("Redis(single primary)"),
            Target::Cluster { seeds, .. } => {
                write!(f, "Redis(cluster, {} seed nodes)", seeds.len())
            }
        }
    }
}

enum Target {
    Single(redis::Client),
    Cluster {
        /// The seed nodes, as given.
        seeds: Vec<redis::Client>,
        certificates: Option<redis::TlsCertificates>,
    },
}

/// `REDIS_URL` does not name a usable Redis.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// A URL that does not parse, or a scheme other than `redis://` or `rediss://`.
    #[error("{0}")]
    Invalid(String),
    /// Several URLs without cluster mode.
    #[error("several URLs are seed nodes of a Redis Cluster: set PORTCULLIS_REDIS_CLUSTER=true")]
    SeveralWithoutCluster,
}

/// How long connecting and answering may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting (and, lazily, each reconnection).
    pub connect: Duration,
    /// One command's answer.
    pub response: Duration,
}

impl Redis {
    /// Parses `REDIS_URL`: one `redis://` or `rediss://` URL, or with `cluster` one or more
    /// (comma-separated) seed nodes. `ca` is the PEM of a private CA for `rediss://`.
    pub fn parse(url: &str, cluster: bool, ca: Option<Vec<u8>>) -> Result<Self, UrlError> {
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(UrlError::Invalid("empty".into()));
        }
        if urls.len() > 1 && !cluster {
            return Err(UrlError::SeveralWithoutCluster);
        }
        let certificates = ca.map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        });
        let mut clients = Vec::with_capacity(urls.len());
        for url in urls {
            let parsed = url::Url::parse(url).map_err(|e| UrlError::Invalid(e.to_string()))?;
            let scheme = parsed.scheme();
            let allowed: &[&str] = if cluster {
                &["redis", "rediss"]
            } else {
                &["redis", "rediss", "redis+unix", "unix"]
            };
            if !allowed.contains(&scheme) {
                return Err(UrlError::Invalid(format!(
                    "scheme must be redis:// or rediss://, not {scheme}://"
                )));
            }
            let client = match &certificates {
                Some(certs) => redis::Client::build_with_tls(url, certs.clone()),
                None => redis::Client::open(url),
            }
            .map_err(|e| UrlError::Invalid(e.to_string()))?;
            clients.push(client);
        }
        let target = if cluster {
            Target::Cluster {
                seeds: clients,
                certificates,
            }
        } else {
            Target::Single(clients.remove(0))
        };
        Ok(Self {
            target: Arc::new(target),
        })
    }

    /// A single primary, from its client.
    pub fn single(client: redis::Client) -> Self {
        Self {
            target: Arc::new(Target::Single(client)),
        }
    }

    /// True for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(*self.target, Target::Cluster { .. })
    }

    /// The URL of one node, for a client of one node's own (a single primary's, else the
    /// `n`th seed's, round robin).
    pub fn node(&self, n: usize) -> redis::Client {
        match &*self.target {
            Target::Single(client) => client.clone(),
            Target::Cluster { seeds, .. } => seeds[n % seeds.len()].clone(),
        }
    }

    /// A shared connection that connects lazily and reconnects by itself (a single primary's
    /// connection manager, or a cluster connection that follows slot moves and failovers).
    pub fn connect_lazy(&self, timeouts: Timeouts) -> redis::RedisResult<Conn> {
        match &*self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client.clone(), config).map(Conn::Single)
            }
            Target::Cluster { .. } => Ok(Conn::Cluster(Arc::new(LazyCluster {
                client: self.cluster_client(timeouts)?,
                connection: OnceCell::new(),
            }))),
        }
    }

    /// A connection of its own, connected now (for blocking reads that must not hold up a
    /// shared connection's other users).
    pub async fn connect_own(&self, timeouts: Timeouts) -> redis::RedisResult<Conn> {
        match &*self.target {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Multiplexed)
            }
            Target::Cluster { .. } => {
                let client = self.cluster_client(timeouts)?;
                let connection = client.get_async_connection().await?;
                Ok(Conn::Cluster(Arc::new(LazyCluster {
                    client,
                    connection: OnceCell::new_with(Some(connection)),
                })))
            }
        }
    }

    fn cluster_client(&self, timeouts: Timeouts) -> redis::RedisResult<ClusterClient> {
        let Target::Cluster {
            seeds,
            certificates,
        } = &*self.target
        else {
            unreachable!("cluster_client on a single primary")
        };
        let nodes: Vec<ConnectionInfo> = seeds
            .iter()
            .map(|c| c.get_connection_info().clone())
            .collect();
        let mut builder = ClusterClientBuilder::new(
            nodes
                .into_iter()
                .map(|n| n.into_connection_info())
                .collect::<redis::RedisResult<Vec<_>>>()?,
        )
        .connection_timeout(timeouts.connect)
        .response_timeout(timeouts.response)
        // A failover moves slots in seconds: retry a command a few times, briefly, rather
        // than fail it at once; the callers' own deadlines still bound the wait.
        .retries(4)
        .min_retry_wait(50)
        .max_retry_wait(500);
        if let Some(certificates) = certificates {
            builder = builder.certs(certificates.clone());
        }
        builder.build()
    }
}

/// A connection to Redis, whatever its shape.
#[derive(Clone)]
pub enum Conn {
    /// A single primary, through a connection manager (reconnects by itself).
    Single(ConnectionManager),
    /// A single primary, on a multiplexed connection of its own.
    Multiplexed(redis::aio::MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use (so a process starts while the cluster is down),
/// and again after a failed attempt.
pub struct LazyCluster {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl LazyCluster {
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        self.connection
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(lazy) => {
                let lazy = lazy.clone();
                Box::pin(async move { lazy.get().await?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(lazy) => {
                let lazy = lazy.clone();
                Box::pin(async move {
                    lazy.get()
                        .await?
                        .req_packed_commands(pipeline, offset, count)
                        .await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_are_a_cluster_only() {
        assert!(matches!(
            Redis::parse("redis://a:1,redis://b:2", false, None),
            Err(UrlError::SeveralWithoutCluster)
        ));
        let redis =
            Redis::parse("redis://a:1, redis://b:2", true, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(redis.is_cluster());
        assert!(!Redis::parse("redis://a:1", false, None).is_ok_and(|r| r.is_cluster()));
        assert!(matches!(
            Redis::parse("http://a:1", true, None),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            Redis::parse(" , ", true, None),
            Err(UrlError::Invalid(_))
        ));
    }
}
