//! Names of every Redis key and channel, in one place.
//!
//! A deployment-wide prefix lets several installations (or tests) share one Redis.
//!
//! The gateway charges the limits of many calls, of many tenants, in one script call and writes
//! their decisions to the audit stream in the same script, so every key of one script must
//! live in one hash slot of a Redis Cluster. On a **single primary** there are no slots: the
//! counters carry their tenant in a hash tag (`pc:{t:<tenant>}:lim:…`) and there is one audit
//! stream (`pc:audit`). On a **cluster** the keys are spread over a fixed number of *shards*:
//! a tenant belongs to shard `fnv1a(tenant) mod shards`, and every key of the shard carries the
//! shard's hash tag — its counters (`pc:{<tag>}:lim:<tenant>:…`), its continuation markers and
//! its own audit stream (`pc:{<tag>}:audit`). A script then touches one shard, one slot, one
//! master. The tags are chosen so that shard `i` of `n` hashes into the `i`th `n`th of the
//! slot space: masters that own equal ranges of slots (as `redis-cli --cluster create` makes
//! them) get equal numbers of shards, and tenants spread evenly over the masters.

use std::sync::Arc;

use crate::ids::TenantId;

/// The shards of a cluster unless configured otherwise: divisible by 2, 3, 4, 6, 8, 12, 16,
/// 24 and 48, so that as many masters with equal slot ranges get equal numbers of shards.
pub const DEFAULT_SHARDS: u16 = 48;

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16_384;

/// Builds key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
    /// The hash tag of each shard, on a cluster.
    shards: Option<Arc<[String]>>,
}

impl RedisKeys {
    /// Keys under `prefix` (`pc` in production; a unique value per test) on a single primary.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            shards: None,
        }
    }

    /// Keys under `prefix` on a Redis Cluster, spread over `shards` shards (at least one).
    pub fn clustered(prefix: impl Into<String>, shards: u16) -> Self {
        let shards = shards.max(1);
        let tags: Vec<String> = (0..shards).map(|i| shard_tag(i, shards)).collect();
        Self {
            prefix: prefix.into(),
            shards: Some(tags.into()),
        }
    }

    /// How many audit streams (and limiter shards) there are: 1 on a single primary.
    pub fn shard_count(&self) -> usize {
        self.shards.as_ref().map_or(1, |s| s.len())
    }

    /// The shard of a tenant: 0 on a single primary.
    pub fn shard(&self, tenant: TenantId) -> usize {
        match &self.shards {
            None => 0,
            Some(tags) => (fnv1a(tenant.0.as_bytes()) % tags.len() as u64) as usize,
        }
    }

    /// The hash tag of a shard, braces included (`{s3.17}`), on a cluster.
    fn tag(&self, tenant: TenantId) -> Option<&str> {
        let tags = self.shards.as_ref()?;
        Some(&tags[self.shard(tenant)])
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A sliding-window limiter counter over a window of `window_ms`. `counter` is already
    /// scope-resolved by the policy engine. (Built on every limited call, so without `format!`.)
    pub fn limiter(&self, tenant: TenantId, counter: &str, window_ms: u64) -> String {
        let mut uuid = uuid::Uuid::encode_buffer();
        let mut ms = itoa::Buffer::new();
        let tenant_text = tenant.0.hyphenated().encode_lower(&mut uuid);
        let window = ms.format(window_ms);
        let tag = self.tag(tenant);
        let mut key = String::with_capacity(
            self.prefix.len()
                + tag.map_or(0, str::len)
                + tenant_text.len()
                + counter.len()
                + window.len()
                + 16,
        );
        // Single primary: pc:{t:<tenant>}:lim:<counter>:<window>ms;
        // cluster: pc:{<shard tag>}:lim:<tenant>:<counter>:<window>ms.
        let head: [&str; 4] = match tag {
            None => [":{t:", tenant_text, "}:lim:", counter],
            Some(tag) => [":", tag, ":lim:", tenant_text],
        };
        key.push_str(&self.prefix);
        for part in head {
            key.push_str(part);
        }
        if tag.is_some() {
            key.push(':');
            key.push_str(counter);
        }
        key.push(':');
        key.push_str(window);
        key.push_str("ms");
        key
    }

    /// The one-use marker of a continuation envelope (`id`: its digest).
    pub fn continuation(&self, tenant: TenantId, id: &str) -> String {
        match self.tag(tenant) {
            None => format!("{}:{{t:{tenant}}}:cont:{id}", self.prefix),
            Some(tag) => format!("{}:{tag}:cont:{tenant}:{id}", self.prefix),
        }
    }

    /// Where the user's answer to the gateway's confirmation question `id` waits for the
    /// replica holding the question's stream (session era).
    pub fn confirmation(&self, tenant: TenantId, id: &str) -> String {
        match self.tag(tenant) {
            None => format!("{}:{{t:{tenant}}}:confirm:{id}", self.prefix),
            Some(tag) => format!("{}:{tag}:confirm:{tenant}:{id}", self.prefix),
        }
    }

    /// The audit stream of a shard (see [`RedisKeys::shard`]), from the gateways to the
    /// control plane's ingester.
    pub fn audit_stream(&self, shard: usize) -> String {
        match &self.shards {
            None => format!("{}:audit", self.prefix),
            Some(tags) => format!("{}:{}:audit", self.prefix, tags[shard % tags.len()]),
        }
    }

    /// Every audit stream, shard by shard.
    pub fn audit_streams(&self) -> Vec<String> {
        (0..self.shard_count())
            .map(|shard| self.audit_stream(shard))
            .collect()
    }

    /// The pub/sub channel on which the control plane announces grant and policy changes.
    pub fn invalidation_channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }

    /// Every key of this installation, for `SCAN MATCH` (tests clean up with it).
    pub fn pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }
}

/// A hash tag for shard `i` of `n` whose slot lies in the `i`th `n`th of the slot space.
fn shard_tag(i: u16, n: u16) -> String {
    let (low, high) = (
        (u32::from(i) * u32::from(SLOTS) / u32::from(n)) as u16,
        (u32::from(i + 1) * u32::from(SLOTS) / u32::from(n)) as u16,
    );
    (0u32..)
        .map(|k| format!("s{i}.{k}"))
        .find(|tag| (low..high.max(low + 1)).contains(&slot(tag.as_bytes())))
        .map(|tag| format!("{{{tag}}}"))
        .unwrap_or_default()
}

/// The Redis Cluster hash slot of a key (or of a hash tag's content): CRC-16/XMODEM mod 16384.
pub fn slot(key: &[u8]) -> u16 {
    let key = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &byte in key {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

/// FNV-1a, 64 bits: a tenant's shard, the same in every process and release.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_keys_are_hash_tagged_by_tenant() {
        let keys = RedisKeys::new("pc");
        let t = TenantId::new();
        assert_eq!(
            keys.limiter(t, "sms", 60_000),
            format!("pc:{{t:{t}}}:lim:sms:60000ms")
        );
        assert_eq!(keys.audit_stream(0), "pc:audit");
        assert_eq!(keys.audit_streams(), vec!["pc:audit".to_owned()]);
        assert_eq!(keys.shard(t), 0);
    }

    #[test]
    fn slots_are_redis_cluster_slots() {
        // Values given by CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn on_a_cluster_every_key_of_a_tenant_is_in_its_shards_slot() {
        let keys = RedisKeys::clustered("pc", 16);
        assert_eq!(keys.shard_count(), 16);
        for _ in 0..50 {
            let t = TenantId::new();
            let shard = keys.shard(t);
            let stream = keys.audit_stream(shard);
            let counter = keys.limiter(t, "calls:grant:x", 60_000);
            assert_eq!(
                slot(counter.as_bytes()),
                slot(stream.as_bytes()),
                "{counter} {stream}"
            );
            assert_eq!(
                slot(keys.continuation(t, "abc").as_bytes()),
                slot(stream.as_bytes())
            );
            assert!(
                counter.starts_with("pc:{s") && counter.ends_with(":60000ms"),
                "{counter}"
            );
            assert!(counter.contains(&t.to_string()));
        }
    }

    #[test]
    fn shards_spread_evenly_over_the_slot_space_and_tenants_over_the_shards() {
        for n in [1u16, 3, 16, 64] {
            let keys = RedisKeys::clustered("pc", n);
            for (i, stream) in keys.audit_streams().iter().enumerate() {
                let s = u32::from(slot(stream.as_bytes()));
                let (low, high) = (
                    i as u32 * 16_384 / u32::from(n),
                    (i as u32 + 1) * 16_384 / u32::from(n),
                );
                assert!((low..high).contains(&s), "shard {i} of {n}: slot {s}");
            }
        }
        // Three masters with equal slot ranges: 300 tenants land about a third on each.
        let keys = RedisKeys::clustered("pc", 16);
        let mut masters = [0usize; 3];
        for _ in 0..300 {
            let stream = keys.audit_stream(keys.shard(TenantId::new()));
            masters[usize::from(slot(stream.as_bytes())) * 3 / 16_384] += 1;
        }
        assert!(
            masters.iter().all(|&m| (60..=140).contains(&m)),
            "{masters:?}"
        );
    }
}
