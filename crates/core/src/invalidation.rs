//! What the control plane announces on the invalidation channel when something the gateway
//! caches changes. Gateways drop the matching cache entries at once.

use serde::{Deserialize, Serialize};

use crate::ids::{GrantId, PolicyId, ServerId, TenantId};

/// One invalidation message, sent as JSON on `RedisKeys::invalidation_channel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invalidation {
    /// A grant was revoked, rotated or changed.
    Grant {
        /// Owner.
        tenant_id: TenantId,
        /// The grant.
        grant_id: GrantId,
    },
    /// A policy got a new version.
    Policy {
        /// Owner.
        tenant_id: TenantId,
        /// The policy.
        policy_id: PolicyId,
    },
    /// A server's URL, credentials or tools changed.
    Server {
        /// Owner.
        tenant_id: TenantId,
        /// The server.
        server_id: ServerId,
    },
    /// Everything of a tenant.
    Tenant {
        /// The tenant.
        tenant_id: TenantId,
    },
}

impl Invalidation {
    /// The tenant it concerns.
    pub fn tenant(&self) -> TenantId {
        match *self {
            Invalidation::Grant { tenant_id, .. }
            | Invalidation::Policy { tenant_id, .. }
            | Invalidation::Server { tenant_id, .. }
            | Invalidation::Tenant { tenant_id } => tenant_id,
        }
    }

    /// The message as sent on the channel.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("plain enum serialises"))
    }

    /// Reads a message; `None` for anything else (unknown kinds from newer versions are ignored).
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_tagged_json() {
        let m = Invalidation::Grant {
            tenant_id: TenantId::new(),
            grant_id: GrantId::new(),
        };
        let json = m.to_json();
        assert!(json.contains(r#""kind":"grant""#), "{json}");
        assert_eq!(Invalidation::from_json(&json), Some(m));
        assert_eq!(Invalidation::from_json(r#"{"kind":"future"}"#), None);
    }
}
