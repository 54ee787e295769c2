//! What a request's trace span carries, and the `traceparent` its upstream call sends.
//!
//! When tracing is on (`OTEL_EXPORTER_OTLP_ENDPOINT`), the process's HTTP edge starts a server
//! span around each request, continuing the client's W3C trace context, and hands it to the
//! handlers in the request's extensions. The gateway adds what only it knows: the grant,
//! tenant and server, the MCP method and tool, the decision and its rule, the audit event's id,
//! and the upstream's status and latency; and it sends the upstream a `traceparent` naming
//! this span. It never adds an argument (key or value), a token, a session or request id, the
//! identity, a decision's message or a URL. When tracing is off there is no span: every method
//! here is a branch on `None`, with no allocation, header parsing or clock reading.

use std::time::Instant;

use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanRef, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use portcullis_core::audit::AuditEvent;

use crate::grants::Grant;
use crate::upstream::{UpstreamError, UpstreamResponse};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Attribute names: OpenTelemetry's semantic conventions where they have one (MCP's
/// `mcp.method.name`, `gen_ai.tool.name`), Portcullis's own otherwise.
pub mod attributes {
    /// The grant's id.
    pub const GRANT: &str = "portcullis.grant.id";
    /// The tenant's id.
    pub const TENANT: &str = "portcullis.tenant.id";
    /// The upstream server's id.
    pub const SERVER: &str = "portcullis.server.id";
    /// The JSON-RPC method (`tools/call`, `notifications/initialized`, …).
    pub const METHOD: &str = "mcp.method.name";
    /// The tool called.
    pub const TOOL: &str = "gen_ai.tool.name";
    /// The decision, as the audit log names it (`allow`, `deny`, `hidden`, …).
    pub const DECISION: &str = "portcullis.decision";
    /// The rule that decided (a JSON pointer into the policy, or `(default deny)` and the like).
    pub const RULE: &str = "portcullis.rule";
    /// The id of the request's audit event.
    pub const AUDIT_EVENT: &str = "portcullis.audit.event_id";
    /// The HTTP status of the upstream's answer.
    pub const UPSTREAM_STATUS: &str = "portcullis.upstream.status_code";
    /// Milliseconds from sending the request upstream to its answer's head.
    pub const UPSTREAM_LATENCY: &str = "portcullis.upstream.latency_ms";
}

/// The trace span of one request, or nothing when tracing is off.
#[derive(Default)]
pub struct RequestSpan(Option<Box<Context>>);

impl RequestSpan {
    /// The span the edge put in the request's extensions, if any.
    pub fn take(extensions: &mut Extensions) -> Self {
        Self(extensions.remove::<Context>().map(Box::new))
    }

    /// The span, when it records (tracing on, and this trace sampled).
    fn recording(&self) -> Option<SpanRef<'_>> {
        self.0
            .as_deref()
            .map(Context::span)
            .filter(SpanRef::is_recording)
    }

    /// Records the grant that authenticated the request.
    pub fn grant(&self, grant: &Grant) {
        if let Some(span) = self.recording() {
            span.set_attributes([
                KeyValue::new(attributes::GRANT, grant.id_text.clone()),
                KeyValue::new(attributes::TENANT, grant.tenant_text.clone()),
                KeyValue::new(attributes::SERVER, grant.server_text.clone()),
            ]);
        }
    }

    /// Records the method of a message that is passed on undecided (a notification; a
    /// response has none).
    pub fn method(&self, method: Option<&str>) {
        if let (Some(span), Some(method)) = (self.recording(), method) {
            span.set_attribute(KeyValue::new(attributes::METHOD, method.to_owned()));
        }
    }

    /// Records a request as its audit event has it once decided: method, tool, decision, rule
    /// and the event's id. (Not the event's arguments, message or identity.)
    pub fn decided(&self, event: &AuditEvent) {
        let Some(span) = self.recording() else {
            return;
        };
        span.set_attributes([
            KeyValue::new(attributes::METHOD, event.method.clone()),
            KeyValue::new(attributes::DECISION, event.decision.as_str()),
            KeyValue::new(attributes::AUDIT_EVENT, event.id.to_string()),
        ]);
        if let Some(tool) = &event.tool {
            span.set_attribute(KeyValue::new(attributes::TOOL, tool.clone()));
        }
        if let Some(rule) = &event.rule {
            span.set_attribute(KeyValue::new(attributes::RULE, rule.clone()));
        }
    }

    /// The time an upstream call starts, when there is a span to record its latency in.
    pub fn clock(&self) -> Option<Instant> {
        self.recording().map(|_| Instant::now())
    }

    /// Records the upstream's answer to a call sent at `sent` (from [`RequestSpan::clock`]):
    /// how long its head took (or the call took to fail), and its status when it answered.
    pub fn upstream_answered(
        &self,
        answer: &Result<UpstreamResponse, UpstreamError>,
        sent: Option<Instant>,
    ) {
        let (Some(span), Some(sent)) = (self.recording(), sent) else {
            return;
        };
        let latency_ms = sent.elapsed().as_secs_f64() * 1000.0;
        span.set_attribute(KeyValue::new(attributes::UPSTREAM_LATENCY, latency_ms));
        let status = match answer {
            Ok(response) => response.status().as_u16(),
            // Answered, and refused as the gateway's own failure (see `UpstreamError`).
            Err(UpstreamError::CredentialsRefused(status)) => *status,
            Err(_) => return,
        };
        span.set_attribute(KeyValue::new(
            attributes::UPSTREAM_STATUS,
            i64::from(status),
        ));
    }

    /// Puts this span's W3C trace context in the headers of the upstream call: its
    /// `traceparent` in place of the client's, and the trace's `tracestate` (the client's, as
    /// the span carries it on; none when the client's `traceparent` was unusable). Without a
    /// span (tracing off) the client's headers go as they are.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        let Some(cx) = self.0.as_deref() else {
            return;
        };
        let span = cx.span();
        let context = span.span_context();
        if !context.is_valid() {
            return;
        }
        let traceparent = format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            // Version 00 defines one flag: sampled.
            context.trace_flags().to_u8() & 1
        );
        if let Ok(value) = HeaderValue::from_str(&traceparent) {
            headers.insert(TRACEPARENT, value);
        }
        let state = context.trace_state().header();
        match HeaderValue::from_str(&state) {
            Ok(value) if !state.is_empty() => {
                headers.insert(TRACESTATE, value);
            }
            _ => {
                headers.remove(TRACESTATE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly by design.

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    use super::*;

    /// A span as the edge makes one, child of the client's `parent` (trace state `state`).
    fn span(sampled: bool, state: &str) -> (RequestSpan, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("test");
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let parent = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            flags,
            true,
            state.parse::<TraceState>().unwrap(),
        ));
        let span = tracer.start_with_context("gateway.request", &parent);
        let mut extensions = Extensions::new();
        extensions.insert(parent.with_span(span));
        (RequestSpan::take(&mut extensions), exporter)
    }

    fn client_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=client"));
        headers
    }

    #[test]
    fn the_upstream_is_told_this_span_in_the_clients_trace() {
        for sampled in [true, false] {
            let (span, _) = span(sampled, "vendor=client");
            let mut headers = client_headers();
            span.propagate(&mut headers);
            let value = headers[&TRACEPARENT].to_str().unwrap().to_owned();
            let own = span.0.as_ref().unwrap().span().span_context().span_id();
            let flags = if sampled { "01" } else { "00" };
            assert_eq!(
                value,
                format!("00-0af7651916cd43dd8448eb211c80319c-{own}-{flags}")
            );
            assert_ne!(own, SpanId::from_hex("b7ad6b7169203331").unwrap());
            assert_eq!(headers[&TRACESTATE], "vendor=client");
        }
        let (span, _) = span(true, "");
        let mut headers = client_headers();
        span.propagate(&mut headers);
        assert!(!headers.contains_key(TRACESTATE));
    }

    #[test]
    fn without_a_span_nothing_is_recorded_and_the_clients_context_passes() {
        let span = RequestSpan::take(&mut Extensions::new());
        assert!(span.clock().is_none());
        let mut headers = client_headers();
        span.propagate(&mut headers);
        assert_eq!(headers, client_headers());
    }

    #[test]
    fn a_decision_is_recorded_without_the_arguments() {
        let (span, exporter) = span(true, "");
        let event = AuditEvent {
            id: uuid::Uuid::parse_str("0193a1b2-0000-7000-8000-000000000001").unwrap(),
            ts: chrono::Utc::now(),
            tenant_id: portcullis_core::TenantId::new(),
            grant_id: portcullis_core::GrantId::new(),
            identity: "alice@example.com".into(),
            server_id: portcullis_core::ServerId::new(),
            method: "tools/call".into(),
            tool: Some("send_money".into()),
            decision: portcullis_core::audit::AuditDecision::Deny,
            rule: Some("/tools/send_money/deny_if/0".into()),
            message: Some("no money to hunter2".into()),
            policy_id: None,
            policy_version: None,
            protocol: None,
            session: Some("session-1".into()),
            request_id: Some("request-1".into()),
            arg_keys: vec!["to".into()],
            arg_digest: None,
            arguments: Some(serde_json::json!({"to": "hunter2"})),
            outcome: None,
            issuer: None,
            jti: None,
        };
        span.decided(&event);
        span.upstream_answered(&Err(UpstreamError::CredentialsRefused(403)), span.clock());
        span.0.as_ref().unwrap().span().end();
        let exported = exporter.get_finished_spans().unwrap();
        let text = format!("{:?}", exported[0].attributes);
        for expected in [
            "tools/call",
            "send_money",
            "deny",
            "/tools/send_money/deny_if/0",
            "0193a1b2-0000-7000-8000-000000000001",
            attributes::UPSTREAM_LATENCY,
            "I64(403)",
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
        for absent in ["hunter2", "alice", "\"to\"", "session-1", "request-1"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
    }
}
