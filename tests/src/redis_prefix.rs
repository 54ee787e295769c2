//! A unique Redis key prefix per test, and its keys deleted afterwards; on a single primary or,
//! when the suite runs under `portcullis-redis-cluster`, on a Redis Cluster.

use portcullis_core::redis_keys::RedisKeys;
use portcullis_redis::{Conn, Redis, Timeouts};
use redis::AsyncCommands as _;

/// A Redis connection and a prefix no other test uses.
pub struct TestRedis {
    prefix: String,
    redis: Redis,
    conn: Conn,
}

impl TestRedis {
    /// Connects and picks a fresh prefix.
    pub async fn new() -> Self {
        let redis = Redis::parse(&crate::redis_url(), crate::redis_cluster(), None)
            .expect("REDIS_URL is not a Redis URL");
        let timeouts = Timeouts {
            connect: std::time::Duration::from_secs(2),
            response: std::time::Duration::from_secs(5),
        };
        let mut conn = redis
            .connect_lazy(timeouts)
            .expect("cannot set up a Redis connection");
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .expect("cannot connect to Redis (is it running? see deploy/local/test)");
        Self {
            prefix: format!("test-{}", uuid::Uuid::now_v7().simple()),
            redis,
            conn,
        }
    }

    /// The key prefix to configure the service under test with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection for the test's own checks.
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Where Redis is.
    pub fn redis(&self) -> Redis {
        self.redis.clone()
    }

    /// The key names the services use under this prefix (sharded on a cluster, with the
    /// services' default shard count).
    pub fn redis_keys(&self) -> RedisKeys {
        if self.redis.is_cluster() {
            RedisKeys::clustered(self.prefix.clone(), crate::REDIS_SHARDS)
        } else {
            RedisKeys::new(self.prefix.clone())
        }
    }

    /// Every key under the prefix (on every node of a cluster).
    pub async fn keys(&self) -> Vec<String> {
        let mut found = Vec::new();
        for mut conn in self.nodes().await {
            let mut iter: redis::AsyncIter<String> =
                conn.scan_match(format!("{}:*", self.prefix)).await.unwrap();
            while let Some(key) = iter.next_item().await {
                found.push(key.unwrap());
            }
        }
        found.sort();
        found.dedup();
        found
    }

    /// A connection to each node: the one primary, or every node of a cluster.
    async fn nodes(&self) -> Vec<redis::aio::MultiplexedConnection> {
        let mut nodes = Vec::new();
        for url in crate::redis_url().split(',') {
            let client = redis::Client::open(url.trim()).unwrap();
            nodes.push(client.get_multiplexed_async_connection().await.unwrap());
        }
        nodes
    }

    /// Waits until at least `gateways` gateways listen for this prefix's invalidations (on a
    /// cluster, a subscriber is counted by the node it is subscribed on).
    pub async fn subscribed(&self, gateways: usize) {
        let channel = self.redis_keys().invalidation_channel();
        for _ in 0..100 {
            let mut total = 0;
            for mut conn in self.nodes().await {
                let counts: Vec<(String, usize)> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&channel)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                total += counts.first().map_or(0, |(_, n)| *n);
            }
            if total >= gateways {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{gateways} gateway(s) never subscribed to {channel}");
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.prefix);
        let _ = std::thread::spawn(move || {
            for url in crate::redis_url().split(',') {
                let Ok(client) = redis::Client::open(url.trim()) else {
                    continue;
                };
                let Ok(mut conn) = client.get_connection() else {
                    continue;
                };
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query(&mut conn)
                    .unwrap_or_default();
                // One at a time: on a cluster the keys are in many slots (a replica refuses
                // the deletes; its master takes them).
                for key in keys {
                    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&key).query(&mut conn);
                }
            }
        })
        .join();
    }
}
