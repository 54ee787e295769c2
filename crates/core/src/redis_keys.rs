//! Names of every Redis key and channel, in one place.
//!
//! Keys carry the tenant in a hash tag (`{t:<tenant>}`) so that, on a Redis Cluster, every key a
//! limiter script touches for one tenant lives in one slot. A deployment-wide prefix lets several
//! installations (or tests) share one Redis.

use crate::ids::TenantId;

/// Builds key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    /// Keys under `prefix` (`pc` in production; a unique value per test).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
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
        let tenant = tenant.0.hyphenated().encode_lower(&mut uuid);
        let window = ms.format(window_ms);
        let mut key = String::with_capacity(
            self.prefix.len() + tenant.len() + counter.len() + window.len() + 14,
        );
        for part in [
            &self.prefix,
            ":{t:",
            tenant,
            "}:lim:",
            counter,
            ":",
            window,
            "ms",
        ] {
            key.push_str(part);
        }
        key
    }

    /// The one-use marker of a continuation envelope (`id`: its digest).
    pub fn continuation(&self, tenant: TenantId, id: &str) -> String {
        format!("{}:{{t:{tenant}}}:cont:{id}", self.prefix)
    }

    /// The stream of audit events from the gateways to the control plane's ingester.
    pub fn audit_stream(&self) -> String {
        format!("{}:audit", self.prefix)
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
        assert!(keys.audit_stream().starts_with("pc:"));
    }
}
