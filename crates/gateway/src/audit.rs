//! Audit emission: one event per JSON-RPC request, on the Redis stream the control plane
//! ingests (`portcullis_core::audit::stream`).
//!
//! For a forwarded call the decision is written (and awaited) before the upstream is contacted,
//! so it survives a gateway that dies mid-call (a call with limits has it written by the
//! limiter's script, in the round trip that charges it); the outcome follows as a second entry
//! with the same id and timestamp, queued without waiting. Calls that never reach the upstream
//! are written once, with their outcome. Every write goes through [`crate::batch`], so the
//! entries of concurrent requests share round trips.
//!
//! If Redis cannot take the decision entry in time, the call still proceeds (the policy's
//! `on_limiter_error` already governs what happens when Redis is down) and the entry stays
//! queued for another try; the error is counted in `portcullis_gateway_audit_errors_total`.

use std::time::Duration;

use portcullis_core::audit::{AuditEvent, stream};
use serde_json::Value;

use crate::batch::Batcher;

/// Writes audit events to the stream, through the gateway's Redis batcher.
#[derive(Clone)]
pub struct AuditSink {
    batch: Batcher,
    timeout: Duration,
}

impl AuditSink {
    /// A sink writing through `batch`, waiting at most `timeout` for a write before forwarding.
    pub fn new(batch: Batcher, timeout: Duration) -> Self {
        Self { batch, timeout }
    }

    /// Writes an entry now (the decision of a call about to be forwarded); returns its JSON.
    pub async fn write_now(&self, event: &AuditEvent) -> String {
        let json = stream::encode(event);
        let written = tokio::time::timeout(self.timeout, self.batch.write(json.clone()));
        match written.await {
            Ok(true) => {}
            Ok(false) => {
                metrics::counter!("portcullis_gateway_audit_errors_total").increment(1);
                tracing::warn!("audit entry not written before forwarding; queued");
            }
            Err(_) => {
                metrics::counter!("portcullis_gateway_audit_errors_total").increment(1);
                tracing::warn!("audit entry not written in time before forwarding; queued");
            }
        }
        json
    }

    /// Queues an entry for the next round trip.
    pub fn enqueue(&self, event: &AuditEvent) {
        self.batch.enqueue(stream::encode(event));
    }

    /// Queues the outcome entry of an event whose decision entry `decided` was written.
    pub fn enqueue_outcome(&self, decided: &str, event: &AuditEvent) {
        self.batch.enqueue(stream::encode_outcome(decided, event));
    }
}

/// Argument names that look like secrets: their values never reach the audit log.
const SECRET_WORDS: [&str; 12] = [
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "authorization",
    "cookie",
    "credential",
    "private_key",
    "session",
];

/// The arguments with secret-looking fields replaced by `"[redacted]"`, at any depth.
pub fn redact_arguments(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let secret = SECRET_WORDS.iter().any(|w| lower.contains(w))
                        || lower == "key"
                        || lower.ends_with("_key")
                        || lower.ends_with("-key");
                    let v = if secret {
                        Value::String("[redacted]".into())
                    } else {
                        redact_arguments(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_arguments).collect()),
        Value::String(s) if looks_like_secret(s) => Value::String("[redacted]".into()),
        other => other.clone(),
    }
}

/// Values that are secrets whatever their field is called: bearer headers, known token shapes.
fn looks_like_secret(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    lower.starts_with("bearer ")
        || lower.starts_with("basic ")
        || ["pcg_", "sk_live_", "sk-", "ghp_", "xoxb-", "akia"]
            .iter()
            .any(|p| lower.starts_with(p) && s.len() >= 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_looking_fields_are_redacted_at_any_depth() {
        let args = json!({
            "To": "+441234",
            "password": "hunter2",
            "nested": {"api_key": "abc", "list": [{"Authorization": "x"}, "Bearer abcdef"]},
            "note": "sk_live_0123456789abcdef",
            "monkey": "banana"
        });
        let out = redact_arguments(&args);
        assert_eq!(out["To"], "+441234");
        assert_eq!(out["password"], "[redacted]");
        assert_eq!(out["nested"]["api_key"], "[redacted]");
        assert_eq!(out["nested"]["list"][0]["Authorization"], "[redacted]");
        assert_eq!(out["nested"]["list"][1], "[redacted]");
        assert_eq!(out["note"], "[redacted]");
        assert_eq!(out["monkey"], "banana");
    }
}
