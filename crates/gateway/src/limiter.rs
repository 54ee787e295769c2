//! Sliding-window rate limits in Redis: every counter of a decision is checked and charged in
//! ONE round trip by a Lua script, all or nothing (the script of [`crate::batch`], which also
//! writes the call's audit decision entry when the charge goes through, and serves every
//! request that arrived during the previous round trip in the same call).
//!
//! Each counter is one Redis hash: the window is cut into [`BUCKETS`] buckets of equal width,
//! each field `<bucket number>` holds what was charged in it, `t` the total over the buckets
//! still inside the window, and `o` the oldest bucket that may still hold charges. A check
//! reads `t` and `o`; buckets that have left the window are subtracted and deleted as they age
//! out (at most one per bucket width, so the cost per call stays constant), and the hash
//! expires on its own when its newest bucket leaves the window.
//!
//! Never lenient: a charge keeps counting until its whole bucket has left the window, i.e. for
//! between one window and one window plus a bucket width (1/100 of the window: 600 ms for a
//! minute, 36 s for an hour). So "100 per minute" never lets a 101st call through in any
//! 60-second span, whichever replica it reaches, and memory per counter is bounded (about a
//! hundred small fields) however high its `max`. The clock is Redis's `TIME`, so replicas with
//! skewed clocks agree. A counter's key names its window, so two limits that share a counter
//! name but not a window never share buckets. Limiter keys carry the tenant's hash tag; the
//! script also writes the audit stream, so the gateway needs one Redis primary (not a cluster).

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::TenantId;
use portcullis_core::redis_keys::RedisKeys;
use portcullis_policy::Charge;
use portcullis_redis::Conn;
use redis::Script;

pub use crate::batch::BUCKETS;
use crate::batch::{BatchError, Batcher, Counter};

/// KEYS: the counters' hashes. ARGV: per counter `bucket cost`.
const REFUND: &str = r"
for i = 1, #KEYS do
  local key = KEYS[i]
  local bucket, cost = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local held = tonumber(redis.call('HGET', key, bucket) or '0')
  -- A bucket that already left the window has nothing left to give back.
  if held >= cost and cost > 0 then
    redis.call('HINCRBY', key, bucket, -cost)
    if redis.call('HINCRBY', key, 't', -cost) <= 0 then redis.call('DEL', key) end
  end
end
return 0
";

/// The limiter could not answer (Redis down or too slow).
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// Redis answered with an error, the connection failed, or work queued up too long.
    #[error("{0}")]
    Unavailable(#[from] BatchError),
    /// Redis answered a refund with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the limiter's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Charges that went through, so they can be refunded if the call fails. (It travels sealed in
/// a continuation's `requestState`, so that the retry that ends the call can refund it; a clone
/// shares the lists.)
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    keys: Arc<[String]>,
    /// Per counter: the bucket charged and the cost.
    charged: Arc<[(i64, u64)]>,
}

/// What the limiter decided.
#[derive(Debug)]
pub enum Charged {
    /// Every counter had room; all were charged (and the audit entry, if any, written).
    Ok(Reservation),
    /// The counter at `index` of the charges is full; nothing was charged or written.
    Exceeded {
        /// Index into the decision's charges.
        index: usize,
        /// When enough of that counter frees up for this call.
        retry_after: Duration,
    },
}

/// The Redis limiter. The gateway shares it by `Arc`: a clone copies its script.
#[derive(Clone)]
pub struct Limiter {
    redis: Conn,
    batch: Batcher,
    keys: RedisKeys,
    refund: Script,
    timeout: Duration,
    /// `portcullis_gateway_limiter_seconds`.
    seconds: metrics::Histogram,
}

/// Largest `max` (and cost) the script handles exactly: Lua numbers are doubles, and Redis
/// formats larger ones in exponent notation, which `HINCRBY` refuses. A larger limit is kept
/// at this value (stricter, never lenient; 10^14 units per window is unlimited in practice).
pub const LARGEST: u64 = 100_000_000_000_000;

/// The width of one bucket of `window`, in milliseconds (at least 1).
pub fn bucket_width(window: Duration) -> u64 {
    let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    ms.div_ceil(BUCKETS).max(1)
}

impl Limiter {
    /// A limiter on `redis`, charging through `batch`, that gives up after `timeout`.
    pub fn new(redis: Conn, batch: Batcher, keys: RedisKeys, timeout: Duration) -> Self {
        Self {
            redis,
            batch,
            keys,
            refund: Script::new(REFUND),
            timeout,
            seconds: metrics::histogram!("portcullis_gateway_limiter_seconds"),
        }
    }

    /// Checks and charges every counter, all or none; when they are charged, `entry` (an
    /// encoded audit event) is added to the audit stream in the same script.
    pub async fn charge(
        &self,
        tenant: TenantId,
        charges: &[Charge],
        entry: Option<String>,
    ) -> Result<Charged, LimiterError> {
        let counters: Vec<Counter> = charges
            .iter()
            .map(|c| {
                let width = bucket_width(c.window);
                Counter {
                    key: self.keys.limiter(tenant, &c.key, width * BUCKETS),
                    width,
                    max: c.max.min(LARGEST),
                    // A cost over the largest max never fits, as it would not fit `c.max`.
                    cost: if c.cost > c.max {
                        LARGEST + 1
                    } else {
                        c.cost.min(LARGEST)
                    },
                }
            })
            .collect();
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            self.timeout,
            self.batch
                .charge(self.keys.shard(tenant), counters.clone(), entry),
        )
        .await
        .map_err(|_| LimiterError::Timeout(self.timeout))??;
        self.seconds.record(started.elapsed());
        if result.refused == 0 {
            return Ok(Charged::Ok(Reservation {
                charged: counters
                    .iter()
                    .map(|c| {
                        (
                            result.now_ms / i64::try_from(c.width).unwrap_or(i64::MAX),
                            c.cost,
                        )
                    })
                    .collect(),
                keys: counters.into_iter().map(|c| c.key).collect(),
            }));
        }
        Ok(Charged::Exceeded {
            index: result.refused - 1,
            retry_after: Duration::from_millis(result.retry_ms),
        })
    }

    /// Claims a one-use `marker` of `tenant` until `expires_ms` (Unix milliseconds): true the
    /// first time, false ever after (until it expires).
    pub async fn claim_once(
        &self,
        tenant: TenantId,
        marker: &str,
        expires_ms: i64,
    ) -> Result<bool, LimiterError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.continuation(tenant, marker))
            .arg(1)
            .arg("NX")
            .arg("PXAT")
            .arg(expires_ms);
        let mut conn = self.redis.clone();
        let set: Option<String> = tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|_| LimiterError::Timeout(self.timeout))??;
        Ok(set.is_some())
    }

    /// Gives up a claim of a one-use `marker` of `tenant` that this caller won
    /// ([`Limiter::claim_once`] answered `true`) but did not use.
    pub async fn release(&self, tenant: TenantId, marker: &str) -> Result<(), LimiterError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.keys.continuation(tenant, marker));
        let mut conn = self.redis.clone();
        let _: i64 = tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|_| LimiterError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Leaves the user's `answer` to confirmation question `id` of `tenant` for the replica
    /// that asked it (session era), kept until `expires_ms` (Unix milliseconds). The first
    /// answer stands: a second one for the same question changes nothing.
    pub async fn put_answer(
        &self,
        tenant: TenantId,
        id: &str,
        answer: &str,
        expires_ms: i64,
    ) -> Result<(), LimiterError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.confirmation(tenant, id))
            .arg(answer)
            .arg("NX")
            .arg("PXAT")
            .arg(expires_ms);
        let mut conn = self.redis.clone();
        let _: Option<String> = tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|_| LimiterError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Takes the answer to confirmation question `id` of `tenant`, if it has come.
    pub async fn take_answer(
        &self,
        tenant: TenantId,
        id: &str,
    ) -> Result<Option<String>, LimiterError> {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(self.keys.confirmation(tenant, id));
        let mut conn = self.redis.clone();
        let answer: Option<String> = tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|_| LimiterError::Timeout(self.timeout))??;
        Ok(answer)
    }

    /// Gives back the charges of a call that failed upstream (those still inside the window).
    pub async fn refund(&self, reservation: &Reservation) -> Result<(), LimiterError> {
        let mut invocation = self.refund.prepare_invoke();
        for key in reservation.keys.iter() {
            invocation.key(key);
        }
        for (bucket, cost) in reservation.charged.iter() {
            invocation.arg(*bucket).arg(*cost);
        }
        let mut conn = self.redis.clone();
        // Nobody waits for a refund: it may take longer than a charge.
        let timeout = self.timeout * 4;
        tokio::time::timeout(timeout, invocation.invoke_async::<i64>(&mut conn))
            .await
            .map_err(|_| LimiterError::Timeout(timeout))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_a_hundredth_of_the_window_and_never_zero() {
        assert_eq!(bucket_width(Duration::from_secs(60)), 600);
        assert_eq!(bucket_width(Duration::from_secs(3600)), 36_000);
        assert_eq!(bucket_width(Duration::from_millis(150)), 2);
        assert_eq!(bucket_width(Duration::from_millis(1)), 1);
        assert_eq!(bucket_width(Duration::ZERO), 1);
    }
}
