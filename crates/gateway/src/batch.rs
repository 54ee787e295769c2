//! The gateway's one path to Redis for the request path: limiter charges and audit entries,
//! gathered from concurrent requests into ONE script call per round trip (group commit).
//!
//! While a script call is in flight, new work queues; when it returns, everything queued goes
//! in the next call. An idle gateway therefore pays one round trip per request, and a busy one
//! shares each round trip among all the requests that arrived during the previous one, which
//! cuts Redis's work and the gateway's syscalls per request by the batch size. Entries nobody
//! waits for (outcomes, refusals) may wait a few milliseconds for a charge or a decision entry
//! to ride with, so that at a moderate rate they do not each cost a round trip of their own.
//!
//! Each charge in a batch is still all or nothing, checked and applied in order inside the
//! script, so batching changes no limiter decision. A charge's audit decision entry is written
//! only when the charge goes through: by the same script when every charge of the batch went
//! through (one stream entry for all, `portcullis_core::audit::stream::BATCH_FIELD`), else
//! right after it, before the charges are answered. Plain entries (outcomes, decisions of calls
//! without limits) are one more stream entry, written by an `XADD` sent with the script call
//! (both are in flight at once on the one connection, so they still share a round trip), never
//! through the script: Redis's Lua copies and hashes every byte of every argument a script
//! gets, which made the plain entries most of Redis's work per call. A caller that
//! waits for a write (a charge, the decision entry of a call about to be forwarded) is answered
//! only after Redis has it. Entries whose write failed are kept and sent again (they must
//! survive a Redis outage), in memory up to a bound, then in the spill directory when there is
//! one ([`crate::spill`]), which is also where a worker that stops before Redis is back leaves
//! them.
//!
//! Counters are Redis hashes of time buckets; see [`crate::limiter`] for the model.
//!
//! On a Redis Cluster the work is cut by shard ([`RedisKeys::shard`]): every key of a shard's
//! script call is in the shard's hash slot, with the shard's own audit stream, and the shards'
//! calls of one round go to their masters at once. Entries sent again after a failure go to
//! one shard's stream per round, in turn: the ingester merges an event's entries whichever
//! streams they took.
//!
//! [`RedisKeys::shard`]: portcullis_core::redis_keys::RedisKeys::shard

use std::collections::VecDeque;
use std::time::Duration;

use portcullis_core::audit::stream;
use portcullis_redis::{Conn, Redis, Timeouts};
use redis::Script;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::spill::Spill;

/// How many buckets a limiter window is cut into.
pub const BUCKETS: u64 = 100;

/// Most requests' work in one script call.
const MAX_BATCH: usize = 512;
/// Queued work the gateway holds before it sheds audit entries (and refuses charges).
const QUEUE: usize = 65_536;
/// How long an entry nobody waits for may wait for a round trip that has to go anyway.
const LINGER: Duration = Duration::from_millis(5);
/// Bytes of audit entries a worker keeps for another try while Redis cannot take them (a
/// minute or so of a busy worker's entries); past it the oldest are spilled to disk down to
/// half of it (with a spill directory), or dropped (and counted).
const RETRY_BYTES: usize = 32 << 20;
/// Kept entries sent again per round trip, oldest first, so a backlog goes in bounded pieces:
/// at most this many, and at most [`RETRY_TRIP_BYTES`] (one at least).
const RETRY_PER_TRIP: usize = MAX_BATCH;
const RETRY_TRIP_BYTES: usize = 1 << 20;
/// Failed round trips in a row after which a stopping worker gives up what it still holds.
const LAST_TRIES: u32 = 3;
/// How long a worker whose last round trip failed waits before trying again with no new work.
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// How often an idle, healthy worker looks for spilled entries to send.
const SPILL_CHECK: Duration = Duration::from_secs(10);

/// ARGV: BUCKETS, MAXLEN, the number of groups; per group: how many charges it holds, its
/// counter count n, then per counter `key index, bucket width (ms), max, cost`; then the
/// charges' decision entries, a JSON array already made (or empty).
/// KEYS: the counters' hashes (each once), then the audit stream. Returns `{now_ms,
/// decisions_written, admitted_1, refused_1, retry_ms_1, admitted_2, …}` per group.
///
/// A group is a run of consecutive charges with the same counters and costs (under load, most
/// of a batch: the same tool called through the same grant). The script decides such a run at
/// once, as it would one by one: charges go through in order until one does not fit, and from
/// then on none fits (nothing more is taken within the call), each refused at the same counter
/// with the same retry. So `admitted` is the smallest room any counter has for the run, in
/// charges; `refused` is 0 when all went through, else the 1-based index of the first counter
/// that is full for the rest. The decision entries are written only when every charge of the
/// batch went through (`decisions_written` 1); otherwise the caller writes those of the charges
/// that did.
///
/// Entries arrive as one string each, never one argument per event, and are never joined in
/// the script: Redis's Lua hashes every byte of every string it makes, which was most of the
/// script's time when each event was an argument and the script concatenated them. For the same
/// reason a run costs one set of counter arguments, not one per charge.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local buckets = tonumber(ARGV[1])
local stream = KEYS[#KEYS]
local states = {}

-- A counter's state, read once per batch: buckets that left the window are dropped first.
-- Bucket b holds charges made before (b + 1) * width; they count while their time is after
-- now - window, so b has left the window once (b + 1) * width - 1 <= now - window.
local function state(k, width)
  local st = states[k]
  if st then return st end
  local key = KEYS[k]
  local window = width * buckets
  local gone = math.floor((now - window + 1) / width) - 1
  local got = redis.call('HMGET', key, 't', 'o')
  local used = tonumber(got[1]) or 0
  local oldest = tonumber(got[2])
  if oldest and oldest <= gone then
    for b = oldest, gone do
      local v = redis.call('HGET', key, b)
      if v then
        used = used - tonumber(v)
        redis.call('HDEL', key, b)
      end
    end
    if used <= 0 then
      redis.call('DEL', key)
      used = 0
    else
      redis.call('HSET', key, 't', used, 'o', gone + 1)
    end
  end
  st = {used = used, add = 0, width = width}
  states[k] = st
  return st
end

-- When enough of counter k frees up for `need` more units.
local function retry_after(k, width, need)
  local window = width * buckets
  local fields = redis.call('HGETALL', KEYS[k])
  local held = {}
  for j = 1, #fields, 2 do
    local b = tonumber(fields[j])
    if b then held[#held + 1] = {b, tonumber(fields[j + 1])} end
  end
  table.sort(held, function(x, y) return x[1] < y[1] end)
  local freed = 0
  for _, h in ipairs(held) do
    freed = freed + h[2]
    if freed >= need then return math.max((h[1] + 1) * width + window - now, 1) end
  end
  return window
end

local out = {now, 1}
local all = true
local a = 4
for _ = 1, tonumber(ARGV[3]) do
  local count, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local first = a + 2
  a = first + 4 * n
  -- How many of the run fit: the least room of any counter, in charges.
  local admitted, refused = count, 0
  for i = 1, n do
    local p = first + 4 * (i - 1)
    local k, width, max, cost = tonumber(ARGV[p]), tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    local st = state(k, width)
    local room = max - st.used - st.add
    -- A charge of 0 always fits, even in a counter over its max (lowered since, or shared).
    local fits = count
    if cost > 0 then fits = math.max(0, math.min(count, math.floor(room / cost))) end
    if fits < admitted then admitted, refused = fits, i end
  end
  for i = 1, n do
    local p = first + 4 * (i - 1)
    local st = states[tonumber(ARGV[p])]
    st.add = st.add + admitted * tonumber(ARGV[p + 3])
  end
  local retry = 0
  if admitted < count then
    all = false
    local p = first + 4 * (refused - 1)
    local k, width, max, cost = tonumber(ARGV[p]), tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    local st = states[k]
    if cost > max then retry = width * buckets else retry = retry_after(k, width, st.used + st.add + cost - max) end
  else
    refused = 0
  end
  out[#out + 1] = admitted
  out[#out + 1] = refused
  out[#out + 1] = retry
end

for k, st in pairs(states) do
  if st.add > 0 then
    local key = KEYS[k]
    local bucket = math.floor(now / st.width)
    if redis.call('HINCRBY', key, bucket, st.add) == st.add then
      -- A new bucket: the hash must outlive it by a window.
      redis.call('HSETNX', key, 'o', bucket)
      redis.call('PEXPIRE', key, st.width * (buckets + 1) + 1000)
    end
    redis.call('HINCRBY', key, 't', st.add)
  end
end
local decisions = ARGV[a]
if decisions ~= '' then
  if all then
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], '*', 'events', decisions)
  else
    out[2] = 0
  end
end
return out
";

/// Encoded entries as the JSON array of one stream entry; empty for none.
fn batch_json(entries: &[&str]) -> String {
    if entries.is_empty() {
        String::new()
    } else {
        stream::encode_batch(entries)
    }
}

/// One counter of a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// The counter's hash.
    pub key: String,
    /// Bucket width in milliseconds (the window is [`BUCKETS`] widths).
    pub width: u64,
    /// Most units in the window.
    pub max: u64,
    /// Units this call takes.
    pub cost: u64,
}

/// How a charge went.
#[derive(Debug, Clone, Copy)]
pub struct ChargeResult {
    /// Redis's clock when it was decided, in milliseconds.
    pub now_ms: i64,
    /// 0: charged; else the 1-based index of the first full counter.
    pub refused: usize,
    /// With `refused`: when enough of that counter frees up.
    pub retry_ms: u64,
}

/// Why queued work was not done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// Redis failed or could not be reached.
    #[error("redis: {0}")]
    Redis(String),
    /// The gateway holds too much queued work (Redis too slow).
    #[error("too much queued work")]
    Overloaded,
    /// The gateway is shutting down.
    #[error("shutting down")]
    Closed,
}

enum Op {
    Charge {
        /// The shard of the charge's tenant ([`RedisKeys::shard`]): every counter is in it.
        shard: usize,
        counters: Vec<Counter>,
        entry: Option<String>,
        reply: oneshot::Sender<Result<ChargeResult, BatchError>>,
    },
    Entry {
        /// The shard whose audit stream takes it.
        shard: usize,
        json: String,
        written: Option<oneshot::Sender<bool>>,
    },
}

impl Op {
    fn shard(&self) -> usize {
        match self {
            Op::Charge { shard, .. } | Op::Entry { shard, .. } => *shard,
        }
    }

    /// Whether nobody waits for this work: an entry queued without a waiter.
    fn can_wait(&self) -> bool {
        matches!(self, Op::Entry { written: None, .. })
    }
}

/// Lets entries nobody waits for (outcomes, refusals) wait up to [`LINGER`] for work that
/// must go now, to share its round trip: at a moderate rate most outcomes would otherwise go
/// alone, each a round trip that wakes Redis and the worker. Returns as soon as such work, or
/// a full batch, is queued; false when every handle is gone (then nothing more will come).
async fn linger(rx: &mut mpsc::Receiver<Op>, ops: &mut Vec<Op>) -> bool {
    let deadline = tokio::time::sleep(LINGER);
    tokio::pin!(deadline);
    while ops.len() < MAX_BATCH {
        let seen = ops.len();
        tokio::select! {
            n = rx.recv_many(ops, MAX_BATCH - seen) => {
                if n == 0 {
                    return false;
                }
                if !ops[seen..].iter().all(Op::can_wait) {
                    break;
                }
            }
            () = &mut deadline => break,
        }
    }
    true
}

/// The handle requests use; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Op>,
}

impl Batcher {
    /// Starts the task that talks to Redis, writing audit entries to `streams` (one per shard),
    /// giving up on a
    /// script call after `timeout`. It runs until every handle is dropped (the service's routes
    /// and the requests still in flight), so requests draining during a graceful shutdown still
    /// reach Redis, then writes what is left and stops.
    /// Entries Redis does not take in time go to `spill` rather than being given up.
    pub fn start(
        redis: Conn,
        streams: Vec<String>,
        timeout: Duration,
        spill: Option<Spill>,
    ) -> Self {
        Self::launch(Worker::new(redis, streams, timeout, spill), None).0
    }

    /// Like [`Batcher::start`], also returning the task, which ends once every handle is gone
    /// and what was queued is written (or given up on), or as soon as `force` is cancelled:
    /// then it hands over what it still holds, as a [`Leftover`] to write over a connection
    /// from `client` once the requests still open are dropped (their outcome entries join it).
    pub fn spawn(
        redis: Conn,
        streams: Vec<String>,
        timeout: Duration,
        spill: Option<Spill>,
        (client, force): (Redis, CancellationToken),
    ) -> (Self, tokio::task::JoinHandle<Option<Leftover>>) {
        Self::launch(
            Worker::new(redis, streams, timeout, spill),
            Some((client, force)),
        )
    }

    fn launch(
        worker: Worker,
        force: Option<(Redis, CancellationToken)>,
    ) -> (Self, tokio::task::JoinHandle<Option<Leftover>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, tokio::spawn(worker.run(rx, force)))
    }

    /// Checks and takes every counter (all in `shard`), all or none, in the next round trip;
    /// `entry` (an encoded audit event) is written in the same script when the charge goes
    /// through.
    pub async fn charge(
        &self,
        shard: usize,
        counters: Vec<Counter>,
        entry: Option<String>,
    ) -> Result<ChargeResult, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Op::Charge {
                shard,
                counters,
                entry,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => BatchError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => BatchError::Closed,
            })?;
        answer.await.map_err(|_| BatchError::Closed)?
    }

    /// Writes an audit entry in the next round trip and waits until Redis has it; `false` when
    /// it could not be written yet (it stays queued for another try).
    pub async fn write(&self, shard: usize, json: String) -> bool {
        let (written, answer) = oneshot::channel();
        if !self.queue(Op::Entry {
            shard,
            json,
            written: Some(written),
        }) {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Queues an audit entry for the next round trip, without waiting.
    pub fn enqueue(&self, shard: usize, json: String) {
        self.queue(Op::Entry {
            shard,
            json,
            written: None,
        });
    }

    fn queue(&self, op: Op) -> bool {
        if self.tx.try_send(op).is_err() {
            dropped(1, "the audit queue is full");
            return false;
        }
        true
    }
}

/// Entries whose write failed, oldest first, waiting for another try; bounded by
/// [`RETRY_BYTES`].
#[derive(Default)]
struct Kept {
    entries: VecDeque<String>,
    bytes: usize,
}

impl Kept {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps `json` for another try.
    fn keep(&mut self, json: String) {
        self.bytes += json.len();
        self.entries.push_back(json);
    }

    /// When more than `limit` bytes are kept, takes the oldest entries out until no more than
    /// `down_to` are left.
    fn trim(&mut self, limit: usize, down_to: usize) -> Vec<String> {
        let mut out = Vec::new();
        if self.bytes > limit {
            while self.bytes > down_to
                && let Some(old) = self.entries.pop_front()
            {
                self.bytes -= old.len();
                out.push(old);
            }
        }
        out
    }

    /// How many of the oldest go in one round trip: [`RETRY_PER_TRIP`] and
    /// [`RETRY_TRIP_BYTES`] at most, one at least.
    fn per_trip(&self) -> usize {
        let mut bytes = 0;
        let fit = self
            .entries
            .iter()
            .take(RETRY_PER_TRIP)
            .take_while(|json| {
                bytes += json.len();
                bytes <= RETRY_TRIP_BYTES
            })
            .count();
        fit.max(usize::from(!self.entries.is_empty()))
    }

    /// The first `n` entries were written.
    fn written(&mut self, n: usize) {
        for json in self.entries.drain(..n) {
            self.bytes -= json.len();
        }
    }

    /// Takes everything out.
    fn take_all(&mut self) -> Vec<String> {
        std::mem::take(self).entries.into()
    }
}

/// `command`'s answer, or an error past `timeout`.
async fn within<T>(
    timeout: Duration,
    command: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, BatchError> {
    match tokio::time::timeout(timeout, command).await {
        Ok(answer) => answer.map_err(|e| BatchError::Redis(e.to_string())),
        Err(_) => Err(BatchError::Redis(format!("no answer within {timeout:?}"))),
    }
}

/// Runs file work off the worker's thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}

/// Counts and reports audit entries given up.
fn dropped(n: usize, why: &str) {
    if n > 0 {
        metrics::counter!("portcullis_gateway_audit_dropped_total").increment(n as u64);
        tracing::error!(entries = n, "audit entries dropped: {why}");
    }
}

/// The batcher's metric handles, looked up once.
struct BatchMetrics {
    seconds: metrics::Histogram,
    size: metrics::Histogram,
}

struct Worker {
    metrics: BatchMetrics,
    redis: Conn,
    /// The audit stream of each shard.
    streams: Vec<String>,
    /// The shard whose stream takes the next round's entries sent again.
    retry_shard: usize,
    script: Script,
    timeout: Duration,
    retry: Kept,
    /// Whether the last round trip failed (kept entries then wait [`RETRY_DELAY`]).
    failing: bool,
    /// Where entries go that Redis has not taken for too long.
    spill: Option<Spill>,
    /// When to look for spilled entries next.
    spill_check: Instant,
    /// The spill file whose entries are being retried, deleted once Redis has taken them.
    claimed: Option<std::path::PathBuf>,
}

/// What a batcher stopped by force still holds: its queue (still open, so the requests dropped
/// after it stopped can add their outcome entries) and the entries it was retrying.
pub struct Leftover {
    rx: mpsc::Receiver<Op>,
    ops: Vec<Op>,
    /// The stopped worker, with its retry queue; its connection belonged to the runtime that
    /// is gone and is replaced before it writes again.
    worker: Worker,
    client: Redis,
}

impl Leftover {
    /// Writes everything queued, over a connection of its own (the worker's belonged to a
    /// runtime that is gone): the same tries as a drain, so it ends within a few timeouts even
    /// when Redis is down.
    pub async fn write(self) {
        let Self {
            mut rx,
            ops,
            mut worker,
            client,
        } = self;
        let timeouts = Timeouts {
            connect: worker.timeout,
            response: worker.timeout,
        };
        match client.connect_lazy(timeouts) {
            Ok(conn) => worker.redis = conn,
            Err(e) => {
                tracing::error!(error = %e, "cannot write the last audit entries");
                return;
            }
        }
        worker.drain(&mut rx, ops).await;
    }
}

impl Worker {
    fn new(redis: Conn, streams: Vec<String>, timeout: Duration, spill: Option<Spill>) -> Self {
        Worker {
            metrics: BatchMetrics {
                seconds: metrics::histogram!("portcullis_gateway_redis_batch_seconds"),
                size: metrics::histogram!("portcullis_gateway_redis_batch_size"),
            },
            redis,
            streams,
            retry_shard: 0,
            script: Script::new(SCRIPT),
            timeout,
            retry: Kept::default(),
            failing: false,
            spill,
            spill_check: Instant::now(),
            claimed: None,
        }
    }

    /// Serves until every handle is gone and what they queued is written; or, once `force` is
    /// cancelled, hands what it holds over, with `client` to write it.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Op>,
        force: Option<(Redis, CancellationToken)>,
    ) -> Option<Leftover> {
        let (client, force) = force.unzip();
        let forced = async {
            match force {
                Some(force) => force.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(forced);
        // One timer for the whole run, reset after each look (not one per round trip).
        let spill_check = tokio::time::sleep_until(self.spill_check);
        tokio::pin!(spill_check);
        let mut ops = Vec::with_capacity(MAX_BATCH);
        loop {
            let delay = if self.failing {
                RETRY_DELAY
            } else {
                Duration::ZERO
            };
            tokio::select! {
                n = rx.recv_many(&mut ops, MAX_BATCH) => if n == 0 { break },
                // Kept entries are sent again even when no new work arrives: at once while
                // Redis answers (a backlog in pieces), else after a pause.
                () = tokio::time::sleep(delay), if !self.retry.is_empty() => {}
                // Spilled entries come back while Redis takes what is sent and nothing waits.
                () = &mut spill_check,
                    if self.spill.is_some() && !self.failing && self.retry.is_empty() =>
                {
                    self.take_spilled().await;
                    spill_check.as_mut().reset(self.spill_check);
                }
                () = &mut forced, if client.is_some() => {
                    return client.map(|client| Leftover {
                        rx,
                        ops,
                        worker: self,
                        client,
                    });
                }
            }
            if !ops.is_empty() && ops.iter().all(Op::can_wait) && !linger(&mut rx, &mut ops).await {
                break;
            }
            if !ops.is_empty() || !self.retry.is_empty() {
                self.call(&mut ops).await;
            }
            self.release_claim().await;
        }
        self.drain(&mut rx, ops).await;
        None
    }

    /// Writes `ops`, what is queued and what waits for a retry, taking nothing more; gives
    /// what is left up after [`LAST_TRIES`] failed round trips in a row.
    async fn drain(&mut self, rx: &mut mpsc::Receiver<Op>, mut ops: Vec<Op>) {
        rx.close();
        let mut failures = 0;
        loop {
            while let Ok(op) = rx.try_recv() {
                ops.push(op);
            }
            if ops.is_empty() && self.retry.is_empty() {
                self.release_claim().await;
                return;
            }
            if !self.call(&mut ops).await {
                failures = 0;
                continue;
            }
            failures += 1;
            if failures == LAST_TRIES {
                let held = self.retry.take_all();
                self.let_go(held, "Redis did not take them before the worker stopped")
                    .await;
                return;
            }
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }

    /// Writes encoded entries (at least one) as one entry of `stream`.
    async fn xadd(&self, stream: &str, entries: &[&str]) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(stream::MAX_LEN)
            .arg("*")
            .arg(stream::BATCH_FIELD)
            .arg(batch_json(entries));
        cmd.query_async::<redis::Value>(&mut conn).await.map(drop)
    }

    /// Writes encoded entries as one entry of `stream`; false when Redis did not take it in
    /// time.
    async fn write_entries(&self, stream: &str, entries: &[&str]) -> bool {
        match within(self.timeout, self.xadd(stream, entries)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "redis: audit entries not written");
                false
            }
        }
    }

    /// One round trip for `ops` (left empty, its buffer kept for the next batch) and the
    /// entries due for a retry: per shard with work, the script call for the charges and the
    /// plain entries' `XADD` sent along with it (the shards' at once). True when any failed.
    async fn call(&mut self, ops: &mut Vec<Op>) -> bool {
        // A caller that stopped waiting (its timeout answered the call as a limiter error)
        // must not be charged, nor its `allow` decision written.
        ops.retain(|op| !matches!(op, Op::Charge { reply, .. } if reply.is_closed()));
        let retried = self.retry.per_trip();
        let size = ops.len();
        let started = std::time::Instant::now();
        let outcome = if self.streams.len() == 1 {
            let (outcome, emptied) = self.trip(0, std::mem::take(ops), retried).await;
            *ops = emptied;
            outcome
        } else {
            let mut shards: Vec<Vec<Op>> = (0..self.streams.len()).map(|_| Vec::new()).collect();
            for op in ops.drain(..) {
                let shard = op.shard() % shards.len();
                shards[shard].push(op);
            }
            self.retry_shard = (self.retry_shard + 1) % shards.len();
            let carrier = self.retry_shard;
            let trips = shards
                .into_iter()
                .enumerate()
                .filter(|(shard, batch)| !batch.is_empty() || (*shard == carrier && retried > 0))
                .map(|(shard, batch)| {
                    self.trip(shard, batch, if shard == carrier { retried } else { 0 })
                });
            futures::future::join_all(trips)
                .await
                .into_iter()
                .fold(Trip::default(), |all, (trip, _)| all.and(trip))
        };
        self.metrics.seconds.record(started.elapsed());
        self.metrics.size.record(size as f64);
        if !outcome.retried_failed {
            self.retry.written(retried);
        }
        for json in outcome.keep {
            self.retry.keep(json);
        }
        // A spill takes a large piece at once, so a long outage writes few files.
        let down_to = if self.spill.is_some() {
            RETRY_BYTES / 2
        } else {
            RETRY_BYTES
        };
        let over = self.retry.trim(RETRY_BYTES, down_to);
        self.let_go(
            over,
            "Redis has not taken them for too long; the oldest kept went first",
        )
        .await;
        self.failing = outcome.failed;
        self.failing
    }

    /// One shard's part of a round: its charges in one script call, its plain entries (and
    /// the first `retried` kept entries) in one `XADD`, both in flight at once; every waiter
    /// of `batch` answered. Gives `batch`'s buffer back, emptied.
    async fn trip(&self, shard: usize, mut batch: Vec<Op>, retried: usize) -> (Trip, Vec<Op>) {
        let stream = self.streams[shard].as_str();
        let charges: Vec<&[Counter]> = batch
            .iter()
            .filter_map(|op| match op {
                Op::Charge { counters, .. } => Some(counters.as_slice()),
                Op::Entry { .. } => None,
            })
            .collect();
        let groups = group(&charges);
        let mut keys: Vec<&str> = Vec::new();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(BUCKETS)
            .arg(stream::MAX_LEN)
            .arg(groups.len());
        for g in &groups {
            let counters = charges[g.start];
            invocation.arg(g.count).arg(counters.len());
            for c in counters {
                let index = match keys.iter().position(|k| *k == c.key) {
                    Some(i) => i + 1,
                    None => {
                        keys.push(&c.key);
                        keys.len()
                    }
                };
                invocation.arg(index).arg(c.width).arg(c.max).arg(c.cost);
            }
        }
        for key in &keys {
            invocation.key(*key);
        }
        invocation.key(stream);
        let decisions: Vec<&str> = batch
            .iter()
            .filter_map(|op| match op {
                Op::Charge { entry, .. } => entry.as_deref(),
                Op::Entry { .. } => None,
            })
            .collect();
        let plain_entries: Vec<&str> = self
            .retry
            .entries
            .iter()
            .take(retried)
            .map(String::as_str)
            .chain(batch.iter().filter_map(|op| match op {
                Op::Entry { json, .. } => Some(json.as_str()),
                Op::Charge { .. } => None,
            }))
            .collect();
        invocation.arg(batch_json(&decisions));
        let mut conn = self.redis.clone();
        let script = async {
            if charges.is_empty() {
                return Ok(None);
            }
            invocation
                .invoke_async::<Vec<i64>>(&mut conn)
                .await
                .map(Some)
        };
        let entries = async {
            if plain_entries.is_empty() {
                return Ok(());
            }
            self.xadd(stream, &plain_entries).await
        };
        // Each with a deadline of its own: a slow write of entries (a backlog, large argument
        // values) must not fail charges Redis has made, nor a slow script the entries.
        let (script, entries) =
            tokio::join!(within(self.timeout, script), within(self.timeout, entries));
        let result = script.and_then(|out| match out {
            Some(out) => decide(&out, &groups),
            // No charges, no script call.
            None => Ok(Decided {
                written: true,
                charges: Vec::new(),
            }),
        });
        if let Err(e) = &result {
            tracing::warn!(error = %e, "redis batch failed");
        }
        let entries_failed = entries.is_err();
        if let Err(e) = &entries {
            tracing::warn!(error = %e, "redis: audit entries not written");
        }
        // Entries to keep for another try, with their waiters (told `false`).
        let mut failed: Vec<(String, Option<oneshot::Sender<bool>>)> = Vec::new();
        if let Ok(decided) = &result
            && !decided.written
        {
            // A charge of the batch was refused, so the script wrote no decision entry: those
            // of the charges that went through are written now, before their calls go on.
            let charged: Vec<&str> = batch
                .iter()
                .filter_map(|op| match op {
                    Op::Charge { entry, .. } => Some(entry.as_deref()),
                    Op::Entry { .. } => None,
                })
                .zip(&decided.charges)
                .filter_map(|(entry, answer)| entry.filter(|_| answer.refused == 0))
                .collect();
            if !charged.is_empty() && !self.write_entries(stream, &charged).await {
                failed.extend(charged.iter().map(|json| ((*json).to_owned(), None)));
            }
        }
        let mut answers = match &result {
            Ok(decided) => decided.charges.iter(),
            Err(_) => [].iter(),
        };
        for op in batch.drain(..) {
            match op {
                Op::Charge { reply, .. } => {
                    let answer = match (&result, answers.next()) {
                        (Ok(_), Some(answer)) => Ok(*answer),
                        (Err(e), _) => Err(e.clone()),
                        (Ok(_), None) => unreachable!("one answer per charge"),
                    };
                    let _ = reply.send(answer);
                }
                Op::Entry { json, written, .. } => {
                    if entries_failed {
                        failed.push((json, written));
                    } else if let Some(w) = written {
                        let _ = w.send(true);
                    }
                }
            }
        }
        let keep = failed
            .into_iter()
            .map(|(json, written)| {
                if let Some(w) = written {
                    let _ = w.send(false);
                }
                json
            })
            .collect();
        let trip = Trip {
            failed: entries_failed || result.is_err(),
            retried_failed: retried > 0 && entries_failed,
            keep,
        };
        (trip, batch)
    }

    /// Entries this worker no longer holds: written to the spill directory, else given up.
    async fn let_go(&self, entries: Vec<String>, why: &str) {
        if entries.is_empty() {
            return;
        }
        let Some(spill) = self.spill.clone() else {
            dropped(entries.len(), why);
            return;
        };
        let n = entries.len();
        match blocking(move || spill.write(&entries)).await {
            Ok(()) => {
                metrics::counter!("portcullis_gateway_audit_spilled_total").increment(n as u64);
                tracing::warn!(entries = n, "audit entries spilled to disk: {why}");
            }
            Err(e) => dropped(n, &format!("{why}, and the spill failed: {e}")),
        }
    }

    /// Deletes the claimed spill file once Redis has taken everything retried (its entries
    /// among them). Entries spilled again meanwhile are in a new file: sent twice at worst.
    async fn release_claim(&mut self) {
        if !self.retry.is_empty() {
            return;
        }
        let (Some(spill), Some(claim)) = (self.spill.clone(), self.claimed.take()) else {
            return;
        };
        if let Err(e) = blocking(move || spill.release(&claim)).await {
            tracing::warn!(error = %e, "cannot delete a spill file whose entries were sent");
        }
    }

    /// Takes the oldest spill file back into the entries to send, if there is one.
    async fn take_spilled(&mut self) {
        self.spill_check = Instant::now() + SPILL_CHECK;
        let Some(spill) = self.spill.clone() else {
            return;
        };
        let taken = match blocking(move || spill.take_oldest()).await {
            Ok(Some(taken)) => taken,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the audit spill directory");
                return;
            }
        };
        dropped(taken.invalid, "a spill file line is not JSON");
        metrics::counter!("portcullis_gateway_audit_unspilled_total")
            .increment(taken.entries.len() as u64);
        tracing::info!(
            entries = taken.entries.len(),
            "spilled audit entries taken back"
        );
        for json in taken.entries {
            self.retry.keep(json);
        }
        self.claimed = Some(taken.claim);
        // The next file, if any, once these are written.
        self.spill_check = Instant::now();
    }
}

/// How one shard's part of a round went.
#[derive(Default)]
struct Trip {
    /// The script call or the entries' write failed.
    failed: bool,
    /// The entries sent again were not written.
    retried_failed: bool,
    /// Entries to send again.
    keep: Vec<String>,
}

impl Trip {
    fn and(mut self, other: Trip) -> Trip {
        self.failed |= other.failed;
        self.retried_failed |= other.retried_failed;
        self.keep.extend(other.keep);
        self
    }
}

/// A run of consecutive charges with the same counters: `charges[start..start + count]`.
#[derive(Debug, PartialEq)]
struct Group {
    start: usize,
    count: usize,
}

/// Cuts the charges, in order, into runs the script decides at once. A charge that names one
/// counter twice is a run of its own: the script's shortcut counts each counter once per charge.
/// (A charge joins a run only if it equals the run's first, so both name distinct counters.)
fn group(charges: &[&[Counter]]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, &counters) in charges.iter().enumerate() {
        let distinct = counters
            .iter()
            .enumerate()
            .all(|(j, c)| counters[..j].iter().all(|d| d.key != c.key));
        match groups.last_mut() {
            Some(g) if distinct && charges[g.start] == counters => g.count += 1,
            _ => groups.push(Group { start: i, count: 1 }),
        }
    }
    groups
}

/// The script's answer, per charge.
struct Decided {
    /// Whether the script wrote the charges' decision entries.
    written: bool,
    charges: Vec<ChargeResult>,
}

fn decide(out: &[i64], groups: &[Group]) -> Result<Decided, BatchError> {
    let short = || BatchError::Redis("short answer from the batch script".into());
    let (&now_ms, &written) = (
        out.first().ok_or_else(short)?,
        out.get(1).ok_or_else(short)?,
    );
    let answers = out.get(2..).unwrap_or_default().chunks_exact(3);
    if answers.len() != groups.len() {
        return Err(short());
    }
    let mut charges = Vec::with_capacity(groups.iter().map(|g| g.count).sum());
    for (g, answer) in groups.iter().zip(answers) {
        let admitted = usize::try_from(answer[0]).unwrap_or(0);
        for i in 0..g.count {
            charges.push(if i < admitted {
                ChargeResult {
                    now_ms,
                    refused: 0,
                    retry_ms: 0,
                }
            } else {
                ChargeResult {
                    now_ms,
                    refused: usize::try_from(answer[1]).unwrap_or(0).max(1),
                    retry_ms: u64::try_from(answer[2]).unwrap_or(0),
                }
            });
        }
    }
    Ok(Decided {
        written: written != 0,
        charges,
    })
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;

    use super::*;

    fn counter(key: &str, cost: u64) -> Counter {
        Counter {
            key: key.to_owned(),
            width: 600,
            max: 10,
            cost,
        }
    }

    #[test]
    fn past_the_bound_the_oldest_kept_entries_are_taken_out() {
        let mut kept = Kept::default();
        for n in 0..10 {
            kept.keep(format!("{{\"n\":{n}}}"));
        }
        // 10 entries of 7 bytes: within 70 bytes nothing is taken out.
        assert!(kept.trim(70, 35).is_empty());
        kept.keep(r#"{"n":10}"#.into());
        // Past it, the oldest go until no more than `down_to` bytes are left.
        let out = kept.trim(70, 35);
        assert_eq!(out.len(), 7);
        assert_eq!(out[0], r#"{"n":0}"#);
        assert_eq!((kept.entries.len(), kept.bytes), (4, 29));
        assert_eq!(kept.take_all().len(), 4);
        assert!(kept.is_empty() && kept.bytes == 0);
    }

    #[test]
    fn a_backlog_goes_in_pieces_bounded_in_count_and_bytes() {
        let mut kept = Kept::default();
        assert_eq!(kept.per_trip(), 0);
        for _ in 0..RETRY_PER_TRIP + 5 {
            kept.keep("{}".into());
        }
        assert_eq!(kept.per_trip(), RETRY_PER_TRIP);
        // Large entries (argument values kept): as many as fit in the bytes of a trip.
        let mut kept = Kept::default();
        for _ in 0..10 {
            kept.keep("x".repeat(RETRY_TRIP_BYTES / 4));
        }
        assert_eq!(kept.per_trip(), 4);
        // One larger than a trip still goes, alone.
        let mut kept = Kept::default();
        kept.keep("x".repeat(RETRY_TRIP_BYTES + 1));
        kept.keep("{}".into());
        assert_eq!(kept.per_trip(), 1);
    }

    fn entry(waiter: bool) -> Op {
        Op::Entry {
            shard: 0,
            json: "{}".into(),
            written: waiter.then(|| oneshot::channel().0),
        }
    }

    #[tokio::test]
    async fn entries_nobody_waits_for_linger_until_work_that_must_go_now() {
        let (tx, mut rx) = mpsc::channel(8);
        // A charge, or an entry someone waits for, ends the wait at once.
        let charge = Op::Charge {
            shard: 0,
            counters: vec![counter("a", 1)],
            entry: None,
            reply: oneshot::channel().0,
        };
        for urgent in [charge, entry(true)] {
            let mut ops = vec![entry(false)];
            tx.try_send(urgent).unwrap();
            assert_eq!(linger(&mut rx, &mut ops).now_or_never(), Some(true));
            assert_eq!(ops.len(), 2);
        }
        // Entries nobody waits for join the batch and wait the whole linger.
        let mut ops = vec![entry(false)];
        tx.try_send(entry(false)).unwrap();
        let started = tokio::time::Instant::now();
        {
            let mut waiting = std::pin::pin!(linger(&mut rx, &mut ops));
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            assert!(waiting.await);
        }
        assert!(started.elapsed() >= LINGER);
        assert_eq!(ops.len(), 2);
        // With every handle gone nothing more comes: the batch goes, and the worker stops.
        drop(tx);
        let mut ops = vec![entry(false)];
        assert!(!linger(&mut rx, &mut ops).await);
        assert_eq!(ops.len(), 1);
    }

    #[test]
    fn runs_are_consecutive_charges_with_the_same_counters() {
        let a = [counter("a", 1), counter("b", 1)];
        let b = [counter("a", 2), counter("b", 1)];
        let twice = [counter("a", 1), counter("a", 1)];
        let charges: Vec<&[Counter]> = vec![&a, &a, &a, &b, &a, &twice, &twice, &a, &a];
        let starts: Vec<(usize, usize)> =
            group(&charges).iter().map(|g| (g.start, g.count)).collect();
        assert_eq!(starts, [(0, 3), (3, 1), (4, 1), (5, 1), (6, 1), (7, 2)]);
    }

    #[test]
    fn a_run_answers_its_first_charges_and_refuses_the_rest_alike() {
        let groups = [Group { start: 0, count: 3 }, Group { start: 3, count: 1 }];
        let decided = decide(&[1000, 0, 2, 2, 700, 1, 0, 0], &groups).unwrap();
        assert!(!decided.written);
        let refused: Vec<(usize, u64)> = decided
            .charges
            .iter()
            .map(|c| (c.refused, c.retry_ms))
            .collect();
        assert_eq!(refused, [(0, 0), (0, 0), (2, 700), (0, 0)]);
        assert!(
            decide(&[1000, 1, 3, 0, 0], &groups).is_err(),
            "short answer"
        );
    }
}
