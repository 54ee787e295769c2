//! A unique Redis key prefix per test, and its keys deleted afterwards.

use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

/// A Redis connection and a prefix no other test uses.
pub struct TestRedis {
    prefix: String,
    conn: ConnectionManager,
}

impl TestRedis {
    /// Connects and picks a fresh prefix.
    pub async fn new() -> Self {
        let client = redis::Client::open(crate::redis_url()).expect("REDIS_URL is not a Redis URL");
        let conn = ConnectionManager::new(client)
            .await
            .expect("cannot connect to Redis (is it running? see deploy/local/test)");
        Self {
            prefix: format!("test-{}", uuid::Uuid::now_v7().simple()),
            conn,
        }
    }

    /// The key prefix to configure the service under test with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection for the test's own checks.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Every key under the prefix.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.conn.clone();
        let mut found = Vec::new();
        let mut iter: redis::AsyncIter<String> =
            conn.scan_match(format!("{}:*", self.prefix)).await.unwrap();
        while let Some(key) = iter.next_item().await {
            found.push(key.unwrap());
        }
        found
    }

    /// Waits until at least `gateways` gateways listen for this prefix's invalidations.
    pub async fn subscribed(&self, gateways: usize) {
        let mut conn = self.conn.clone();
        let channel =
            portcullis_core::redis_keys::RedisKeys::new(&self.prefix).invalidation_channel();
        for _ in 0..100 {
            let counts: Vec<(String, usize)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            if counts.first().is_some_and(|(_, n)| *n >= gateways) {
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
            let Ok(client) = redis::Client::open(crate::redis_url()) else {
                return;
            };
            let Ok(mut conn) = client.get_connection() else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
        })
        .join();
    }
}
