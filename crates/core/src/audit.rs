//! The audit record a gateway emits for each JSON-RPC request, as it travels through Redis.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{GrantId, PolicyId, ServerId, TenantId};

/// What the gateway decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDecision {
    /// Forwarded to the upstream.
    Allow,
    /// Refused by a policy rule.
    Deny,
    /// The tool is hidden from this grant.
    Hidden,
    /// A limit was exhausted.
    RateLimited,
    /// The call waits for a human approval.
    ApprovalRequired,
    /// The gateway could not decide or forward (limiter down, upstream unreachable, bad message).
    Error,
}

impl AuditDecision {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Hidden => "hidden",
            Self::RateLimited => "rate_limited",
            Self::ApprovalRequired => "approval_required",
            Self::Error => "error",
        }
    }

    /// Every decision, in display order.
    pub const ALL: [Self; 6] = [
        Self::Allow,
        Self::Deny,
        Self::Hidden,
        Self::RateLimited,
        Self::ApprovalRequired,
        Self::Error,
    ];
}

impl std::str::FromStr for AuditDecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("unknown decision {s:?}"))
    }
}

/// One audit event. The gateway writes the decision part before contacting the upstream and
/// the outcome part afterwards, as two stream entries sharing `id`; the ingester merges them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Event id (UUID v7); the ingester's idempotency key.
    pub id: Uuid,
    /// When the request arrived.
    pub ts: DateTime<Utc>,
    /// Owner of the grant.
    pub tenant_id: TenantId,
    /// The grant the request came through.
    pub grant_id: GrantId,
    /// The grant's identity label.
    pub identity: String,
    /// The upstream server.
    pub server_id: ServerId,
    /// The JSON-RPC method.
    pub method: String,
    /// The tool name, for `tools/call`.
    pub tool: Option<String>,
    /// The decision.
    pub decision: AuditDecision,
    /// The deciding rule: a JSON pointer or `(hidden)`, `(default deny)`, `(no policy)`.
    pub rule: Option<String>,
    /// The message shown to the agent, if any.
    pub message: Option<String>,
    /// The policy and version in force.
    pub policy_id: Option<PolicyId>,
    /// The policy version in force.
    pub policy_version: Option<i32>,
    /// `2025-11-25`, `2026-07-28`, …
    pub protocol: Option<String>,
    /// The session id the client sees (never the upstream's).
    pub session: Option<String>,
    /// The request id of the HTTP request.
    pub request_id: Option<String>,
    /// Top-level argument names.
    pub arg_keys: Vec<String>,
    /// SHA-256 of the canonical arguments.
    pub arg_digest: Option<String>,
    /// Redacted argument values, only when the policy opts in.
    pub arguments: Option<serde_json::Value>,
    /// The outcome, once known.
    #[serde(default)]
    pub outcome: Option<AuditOutcome>,
}

/// What happened upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditOutcome {
    /// HTTP status of the upstream reply, if one came.
    pub upstream_status: Option<u16>,
    /// Whether the tool result was an error (`isError` or a JSON-RPC error).
    pub is_error: Option<bool>,
    /// Milliseconds from arrival to the end of the reply.
    pub latency_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip_by_name() {
        for d in AuditDecision::ALL {
            assert_eq!(d.as_str().parse::<AuditDecision>().unwrap(), d);
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
    }
}

/// How audit events travel on the Redis stream (`RedisKeys::audit_stream`).
///
/// Each entry has one field: [`stream::FIELD`], holding one event as JSON, or
/// [`stream::BATCH_FIELD`], holding a JSON array of events (a gateway writes the events of one
/// round trip as one entry). The gateway adds an
/// entry with `outcome: null` before it contacts the upstream (so the decision is durable even if
/// the gateway dies mid-call) and a second entry for the same `id` and `ts` with the outcome set.
/// The ingester upserts by `(ts, id)`: the first entry inserts, the second completes the row, and
/// a redelivered entry changes nothing.
pub mod stream {
    use super::AuditEvent;

    /// The entry field that holds one event's JSON.
    pub const FIELD: &str = "event";

    /// The entry field that holds a JSON array of events.
    pub const BATCH_FIELD: &str = "events";

    /// The consumer group the control plane's ingesters share.
    pub const GROUP: &str = "ingest";

    /// Approximate cap on the stream's length in entries, so a stopped ingester cannot fill
    /// Redis. (Under load an entry carries a batch of events: as many as were in flight.)
    pub const MAX_LEN: usize = 250_000;

    /// The JSON written under [`FIELD`].
    pub fn encode(event: &AuditEvent) -> String {
        serde_json::to_string(event).unwrap_or_else(|_| unreachable!("audit events serialise"))
    }

    /// How [`encode`] ends an event whose outcome is not yet known (`outcome` is the last field).
    const NO_OUTCOME: &str = "\"outcome\":null}";

    /// The JSON of `event` (which now has its outcome), given `decided`, the JSON [`encode`]
    /// made of it before the outcome was known: the outcome is spliced in rather than the whole
    /// event serialised again.
    pub fn encode_outcome(decided: &str, event: &AuditEvent) -> String {
        match (&event.outcome, decided.strip_suffix(NO_OUTCOME)) {
            (Some(outcome), Some(head)) => {
                let outcome = serde_json::to_string(outcome)
                    .unwrap_or_else(|_| unreachable!("audit outcomes serialise"));
                let mut out = String::with_capacity(decided.len() + outcome.len());
                out.push_str(head);
                out.push_str("\"outcome\":");
                out.push_str(&outcome);
                out.push('}');
                out
            }
            _ => encode(event),
        }
    }

    /// Reads an entry's JSON.
    pub fn decode(json: &[u8]) -> Result<AuditEvent, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// The JSON of a batch entry, from events already encoded with [`encode`].
    pub fn encode_batch<S: AsRef<str>>(events: &[S]) -> String {
        let mut out =
            String::with_capacity(events.iter().map(|e| e.as_ref().len() + 1).sum::<usize>() + 2);
        out.push('[');
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(event.as_ref());
        }
        out.push(']');
        out
    }

    /// Reads the events of an entry from its field `field` ([`FIELD`] or [`BATCH_FIELD`]).
    pub fn decode_field(field: &str, json: &[u8]) -> Result<Vec<AuditEvent>, serde_json::Error> {
        if field == BATCH_FIELD {
            serde_json::from_slice(json)
        } else {
            decode(json).map(|event| vec![event])
        }
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    #[test]
    fn stream_entries_round_trip() {
        let event = AuditEvent {
            id: Uuid::now_v7(),
            ts: Utc::now(),
            tenant_id: TenantId::new(),
            grant_id: GrantId::new(),
            identity: "agent-1".into(),
            server_id: ServerId::new(),
            method: "tools/call".into(),
            tool: Some("send_message".into()),
            decision: AuditDecision::Deny,
            rule: Some("/tools/send_message/deny_if/0".into()),
            message: Some("no".into()),
            policy_id: None,
            policy_version: Some(3),
            protocol: Some("2025-11-25".into()),
            session: None,
            request_id: None,
            arg_keys: vec!["To".into()],
            arg_digest: None,
            arguments: None,
            outcome: None,
        };
        let json = stream::encode(&event);
        assert_eq!(stream::decode(json.as_bytes()).unwrap(), event);
        let mut finished = event.clone();
        finished.outcome = Some(AuditOutcome {
            upstream_status: Some(200),
            is_error: Some(false),
            latency_ms: 1.5,
        });
        let spliced = stream::encode_outcome(&json, &finished);
        assert_eq!(spliced, stream::encode(&finished));
        assert_eq!(stream::decode(spliced.as_bytes()).unwrap(), finished);
        let batch = stream::encode_batch(&[json.clone(), json]);
        let events = stream::decode_field(stream::BATCH_FIELD, batch.as_bytes()).unwrap();
        assert_eq!(events, vec![event.clone(), event]);
    }
}
