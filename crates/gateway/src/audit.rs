//! Audit emission: one event per JSON-RPC request, on the Redis stream the control plane
//! ingests (`portcullis_core::audit::stream`).
//!
//! For a forwarded call the decision is written (and awaited) before the upstream is contacted,
//! so it survives a gateway that dies mid-call; the outcome follows as a second entry with the
//! same id and timestamp, written by a background task that pipelines entries. Calls that never
//! reach the upstream are written once, with their outcome, by the same task.
//!
//! If Redis cannot take the decision entry in time, the call still proceeds (the policy's
//! `on_limiter_error` already governs what happens when Redis is down) and the entry is queued
//! for the background writer; the error is counted in `portcullis_gateway_audit_errors_total`.

use std::time::Duration;

use portcullis_core::audit::{AuditEvent, stream};
use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 65_536;
const BATCH: usize = 256;

/// Writes audit events to the stream.
#[derive(Clone)]
pub struct AuditSink {
    redis: ConnectionManager,
    stream: String,
    queue: mpsc::Sender<String>,
    timeout: Duration,
}

impl AuditSink {
    /// A sink writing to `stream`, with its background writer stopping on `shutdown` (after
    /// draining what is queued).
    pub fn start(
        redis: ConnectionManager,
        stream: String,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(redis.clone(), stream.clone(), rx, shutdown));
        Self {
            redis,
            stream,
            queue,
            timeout,
        }
    }

    /// Writes an entry now (the decision of a call about to be forwarded).
    pub async fn write_now(&self, event: &AuditEvent) {
        let json = stream::encode(event);
        let mut conn = self.redis.clone();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(stream::MAX_LEN)
            .arg("*")
            .arg(stream::FIELD)
            .arg(&json);
        match tokio::time::timeout(self.timeout, cmd.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                metrics::counter!("portcullis_gateway_audit_errors_total").increment(1);
                tracing::warn!(error = %e, "audit entry not written before forwarding; queued");
                self.enqueue_json(json);
            }
            Err(_) => {
                metrics::counter!("portcullis_gateway_audit_errors_total").increment(1);
                tracing::warn!("audit entry not written in time before forwarding; queued");
                self.enqueue_json(json);
            }
        }
    }

    /// Queues an entry for the background writer.
    pub fn enqueue(&self, event: &AuditEvent) {
        self.enqueue_json(stream::encode(event));
    }

    fn enqueue_json(&self, json: String) {
        if self.queue.try_send(json).is_err() {
            metrics::counter!("portcullis_gateway_audit_dropped_total").increment(1);
            tracing::error!("audit queue full; an audit entry was dropped");
        }
    }
}

async fn writer(
    redis: ConnectionManager,
    stream_key: String,
    mut rx: mpsc::Receiver<String>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            () = shutdown.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, QUEUE).await
            }
        };
        if received == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        for json in &batch {
            pipe.cmd("XADD")
                .arg(&stream_key)
                .arg("MAXLEN")
                .arg("~")
                .arg(stream::MAX_LEN)
                .arg("*")
                .arg(stream::FIELD)
                .arg(json)
                .ignore();
        }
        let mut conn = redis.clone();
        // A few tries: entries are kept across a short Redis outage, dropped after a long one
        // (the queue must not grow without bound).
        let mut written = false;
        for attempt in 0..3u32 {
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => {
                    written = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "audit batch not written; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                }
            }
        }
        if !written {
            metrics::counter!("portcullis_gateway_audit_dropped_total")
                .increment(batch.len() as u64);
            tracing::error!(entries = batch.len(), "audit batch dropped after retries");
        }
        batch.clear();
        if rx.is_closed() && rx.is_empty() {
            return;
        }
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
