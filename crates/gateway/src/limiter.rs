//! Sliding-window rate limits in Redis: every counter of a decision is checked and charged in
//! ONE round trip by a Lua script, all or nothing.
//!
//! Each counter is an exact sliding log: a sorted set of the charges inside the window (score =
//! Redis `TIME` in milliseconds, member = `<charge id>:<index>:<cost>`) plus a running total,
//! so a check costs one `GET` and expired charges are removed (and subtracted) as they age out.
//! Exact, because tests and customers count: 100 per minute means the 101st call in any
//! 60-second span is refused, whichever replica it reaches. The clock is Redis's, so replicas
//! with skewed clocks agree. Keys carry the tenant's hash tag, so on a Redis Cluster every key
//! of one script lives in one slot.

use std::time::Duration;

use portcullis_core::TenantId;
use portcullis_core::redis_keys::RedisKeys;
use portcullis_policy::Charge;
use redis::Script;
use redis::aio::ConnectionManager;

const CHARGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 2
local function cost_of(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end
for i = 1, n do
  local log, total = KEYS[2 * i - 1], KEYS[2 * i]
  local window = tonumber(ARGV[3 * i - 1])
  local max = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local expired = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
  if #expired > 0 then
    local freed = 0
    for _, m in ipairs(expired) do freed = freed + cost_of(m) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
    if redis.call('DECRBY', total, freed) <= 0 then redis.call('DEL', total) end
  end
  local used = tonumber(redis.call('GET', total) or '0')
  if used + cost > max then
    local retry = window
    if cost <= max then
      local need = used + cost - max
      local freed = 0
      local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        freed = freed + cost_of(entries[j])
        if freed >= need then
          retry = tonumber(entries[j + 1]) + window - now
          break
        end
      end
    end
    return {i, retry}
  end
end
for i = 1, n do
  local log, total = KEYS[2 * i - 1], KEYS[2 * i]
  local window = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i + 1])
  redis.call('ZADD', log, now, ARGV[1] .. ':' .. i .. ':' .. cost)
  redis.call('INCRBY', total, cost)
  redis.call('PEXPIRE', log, window + 1000)
  redis.call('PEXPIRE', total, window + 1000)
end
return {0, 0}
";

const REFUND: &str = r"
local n = #KEYS / 2
for i = 1, n do
  local log, total = KEYS[2 * i - 1], KEYS[2 * i]
  local cost = tonumber(ARGV[i + 1])
  if redis.call('ZREM', log, ARGV[1] .. ':' .. i .. ':' .. cost) == 1 then
    if redis.call('DECRBY', total, cost) <= 0 then redis.call('DEL', total) end
  end
end
return 0
";

/// The limiter could not answer (Redis down or too slow).
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the limiter's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Charges that went through, so they can be refunded if the call fails.
#[derive(Debug, Clone)]
pub struct Reservation {
    keys: Vec<String>,
    member: String,
    costs: Vec<u64>,
}

/// What the limiter decided.
#[derive(Debug)]
pub enum Charged {
    /// Every counter had room; all were charged.
    Ok(Reservation),
    /// The counter at `index` of the charges is full; nothing was charged.
    Exceeded {
        /// Index into the decision's charges.
        index: usize,
        /// When enough of that counter frees up for this call.
        retry_after: Duration,
    },
}

/// The Redis limiter.
#[derive(Clone)]
pub struct Limiter {
    redis: ConnectionManager,
    keys: RedisKeys,
    charge: Script,
    refund: Script,
    timeout: Duration,
}

impl Limiter {
    /// A limiter on `redis` that gives up after `timeout`.
    pub fn new(redis: ConnectionManager, keys: RedisKeys, timeout: Duration) -> Self {
        Self {
            redis,
            keys,
            charge: Script::new(CHARGE),
            refund: Script::new(REFUND),
            timeout,
        }
    }

    fn counter_keys(&self, tenant: TenantId, charges: &[Charge]) -> Vec<String> {
        let mut keys = Vec::with_capacity(charges.len() * 2);
        for charge in charges {
            let log = self.keys.limiter(tenant, &charge.key);
            let total = format!("{log}:total");
            keys.push(log);
            keys.push(total);
        }
        keys
    }

    /// Checks and charges every counter, all or none. `id` must be unique per call (the audit
    /// event id), so a refund removes exactly this call's charges.
    pub async fn charge(
        &self,
        tenant: TenantId,
        id: &str,
        charges: &[Charge],
    ) -> Result<Charged, LimiterError> {
        let keys = self.counter_keys(tenant, charges);
        let mut invocation = self.charge.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation.arg(id);
        for charge in charges {
            let window = u64::try_from(charge.window.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            invocation.arg(window).arg(charge.max).arg(charge.cost);
        }
        let mut conn = self.redis.clone();
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64)>(&mut conn),
        )
        .await
        .map_err(|_| LimiterError::Timeout(self.timeout))??;
        metrics::histogram!("portcullis_gateway_limiter_seconds").record(started.elapsed());
        match answer {
            (0, _) => Ok(Charged::Ok(Reservation {
                keys,
                member: id.to_owned(),
                costs: charges.iter().map(|c| c.cost).collect(),
            })),
            (index, retry_ms) => Ok(Charged::Exceeded {
                index: usize::try_from(index - 1).unwrap_or(0),
                retry_after: Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0)),
            }),
        }
    }

    /// Gives back the charges of a call that failed upstream.
    pub async fn refund(&self, reservation: &Reservation) -> Result<(), LimiterError> {
        let mut invocation = self.refund.prepare_invoke();
        for key in &reservation.keys {
            invocation.key(key);
        }
        invocation.arg(&reservation.member);
        for cost in &reservation.costs {
            invocation.arg(*cost);
        }
        let mut conn = self.redis.clone();
        tokio::time::timeout(self.timeout * 4, invocation.invoke_async::<i64>(&mut conn))
            .await
            .map_err(|_| LimiterError::Timeout(self.timeout))??;
        Ok(())
    }
}
