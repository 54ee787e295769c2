//! Distributed tracing end to end: a gateway and a control plane, each exporting to a loopback
//! OTLP/HTTP receiver; calls with known `traceparent`s through the real gateway (real Postgres
//! and Redis) to an upstream that records the trace context it is sent.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

#[allow(dead_code, unused_imports)] // This test uses a few of the gateway tests' fixtures.
mod gateway {
    pub mod support;
}

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use gateway::support::{Stack, call, message, post as post_json, text};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use portcullis::{Role, Running};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The client's trace: the gateway's span must continue it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// An argument value that must never be exported.
const ARGUMENT: &str = "argument-value-never-exported";

/// A server on 127.0.0.1:0 in this process, stopped when dropped.
struct Served {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Served {
    async fn start(router: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { addr, task }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the OTLP receiver took: each request's body as sent, and decoded.
#[derive(Default)]
struct Received {
    bodies: Vec<Bytes>,
    requests: Vec<ExportTraceServiceRequest>,
}

/// An OTLP/HTTP receiver: `POST /v1/traces`, protobuf, as a collector takes it.
async fn otlp_receiver() -> (Served, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let store = received.clone();
    let router = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body.clone()).unwrap();
                let mut received = store.lock().unwrap();
                received.bodies.push(body);
                received.requests.push(request);
                // An empty ExportTraceServiceResponse: everything accepted.
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    (Served::start(router).await, received)
}

/// An MCP upstream that answers every `tools/call` and records the `traceparent` and
/// `tracestate` it was sent.
async fn recording_upstream() -> (Served, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    let router = Router::new().route(
        "/mcp",
        post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let mut kept = HeaderMap::new();
                for name in ["traceparent", "tracestate"] {
                    if let Some(value) = headers.get(name) {
                        kept.insert(name, value.clone());
                    }
                }
                store.lock().unwrap().push(kept);
                let request: Value = serde_json::from_slice(&body).unwrap();
                let answer = json!({"jsonrpc": "2.0", "id": request["id"], "result": {
                    "content": [{"type": "text", "text": "done"}], "isError": false}});
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    answer.to_string(),
                )
                    .into_response()
            }
        }),
    );
    (Served::start(router).await, seen)
}

/// The exported spans, each with the `service.name` of the process that sent it.
fn exported(received: &Received) -> Vec<(String, Span)> {
    let mut spans = Vec::new();
    for request in &received.requests {
        for resource_spans in &request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| string(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope_spans in &resource_spans.scope_spans {
                for span in &scope_spans.spans {
                    spans.push((service.clone(), span.clone()));
                }
            }
        }
    }
    spans
}

fn string(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// A span's attribute, as text (numbers formatted).
fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv| kv.key == key)?;
    Some(match value.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn traceparent(span_id: &str) -> String {
    format!("00-{TRACE_ID}-{span_id}-01")
}

#[tokio::test]
async fn spans_reach_an_otlp_receiver_and_the_trace_goes_on_upstream() {
    let (receiver, received) = otlp_receiver().await;
    let (upstream, seen) = recording_upstream().await;
    let stack = Stack::new().await;
    let f = stack
        .fixture(
            &format!("http://{}/mcp", upstream.addr),
            "streamable_http",
            json!({
                "version": "1",
                "default": "deny",
                "tools": {
                    "echo": {},
                    "get_secret": { "deny_if": [{ "conditions": [], "on_deny": "Secrets stay secret." }] }
                }
            }),
        )
        .await;
    let endpoint = format!("http://{}", receiver.addr);
    let flags = ["--otel-exporter-otlp-endpoint", endpoint.as_str()];
    let redis_url = portcullis_tests::redis_url();
    let gateway = portcullis::start(&stack.config(&redis_url, &flags), Role::Gateway)
        .await
        .unwrap();
    let control_plane = portcullis::start(&stack.config(&redis_url, &flags), Role::ControlPlane)
        .await
        .unwrap();
    let url = f.url(&gateway);

    // An allowed call, in the client's trace: forwarded with the gateway's span as parent.
    let client_trace = [
        ("traceparent", traceparent(CLIENT_SPAN)),
        ("tracestate", "client=1".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = client_trace.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, body) =
        post_json(&url, &headers, &call(1, "echo", json!({"text": ARGUMENT}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&message(&body)), "done");
    // A denied call in another span of that trace: it never reaches the upstream.
    let denied_parent = "b7ad6b7169203331";
    let (status, _, body) = post_json(
        &url,
        &[("traceparent", &traceparent(denied_parent))],
        &call(2, "get_secret", json!({"key": ARGUMENT})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let denial = message(&body);
    assert!(text(&denial).starts_with("[POLICY DENIED]"), "{body}");
    // A control-plane request without credentials, on a route with a parameter.
    let grant_path = format!("/api/v1/grants/{}", f.grant);
    let answer = reqwest::get(format!(
        "http://{}{grant_path}",
        control_plane.control_plane.unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(answer.status(), 401);

    // Stopping each process exports what it still holds: nothing is waited for here.
    stop(gateway).await;
    stop(control_plane).await;
    let received = received.lock().unwrap();
    let spans = exported(&received);

    let gateway_spans: Vec<&Span> = spans
        .iter()
        .filter(|(service, span)| service == "portcullis-gateway" && span.name == "gateway.request")
        .map(|(_, span)| span)
        .collect();
    assert_eq!(gateway_spans.len(), 2, "{spans:#?}");
    let allowed = gateway_spans
        .iter()
        .find(|s| attribute(s, "gen_ai.tool.name").as_deref() == Some("echo"))
        .unwrap();
    assert_eq!(allowed.kind, SpanKind::Server as i32);
    assert_eq!(hex(&allowed.trace_id), TRACE_ID);
    assert_eq!(hex(&allowed.parent_span_id), CLIENT_SPAN);
    for (key, value) in [
        ("portcullis.grant.id", f.grant.to_string()),
        ("portcullis.tenant.id", f.tenant.to_string()),
        ("portcullis.server.id", f.server.to_string()),
        ("mcp.method.name", "tools/call".to_owned()),
        ("portcullis.decision", "allow".to_owned()),
        ("portcullis.rule", "/tools/echo".to_owned()),
        ("portcullis.upstream.status_code", "200".to_owned()),
        ("http.request.method", "POST".to_owned()),
        ("http.response.status_code", "200".to_owned()),
    ] {
        assert_eq!(
            attribute(allowed, key).as_deref(),
            Some(value.as_str()),
            "{key}: {allowed:#?}"
        );
    }
    let latency: f64 = attribute(allowed, "portcullis.upstream.latency_ms")
        .unwrap()
        .parse()
        .unwrap();
    let span_ms = (allowed.end_time_unix_nano - allowed.start_time_unix_nano) as f64 / 1e6;
    assert!(
        latency > 0.0 && latency <= span_ms,
        "{latency} ms of {span_ms} ms"
    );

    // The upstream was told the gateway's span, in the client's trace, with its trace state.
    let seen = seen.lock().unwrap();
    let [sent] = seen.as_slice() else {
        panic!("the upstream saw {} calls", seen.len())
    };
    assert_eq!(
        sent["traceparent"],
        traceparent(&hex(&allowed.span_id)).as_str()
    );
    assert_eq!(sent["tracestate"], "client=1");

    let denied = gateway_spans
        .iter()
        .find(|s| attribute(s, "gen_ai.tool.name").as_deref() == Some("get_secret"))
        .unwrap();
    assert_eq!(hex(&denied.trace_id), TRACE_ID);
    assert_eq!(hex(&denied.parent_span_id), denied_parent);
    assert_eq!(
        attribute(denied, "portcullis.decision").as_deref(),
        Some("deny")
    );
    assert_eq!(
        attribute(denied, "portcullis.rule").as_deref(),
        Some("/tools/get_secret/deny_if/0")
    );
    assert_eq!(attribute(denied, "portcullis.upstream.status_code"), None);
    // The audit event it stands for is named, as the denial names it.
    assert_eq!(
        attribute(denied, "portcullis.audit.event_id").as_deref(),
        denial["result"]["_meta"]["portcullis/decision"]["event_id"].as_str()
    );
    assert!(attribute(allowed, "portcullis.audit.event_id").is_some());

    // The control plane's span: the route's template, never the path.
    let control = spans
        .iter()
        .find(|(service, _)| service == "portcullis-control-plane")
        .map(|(_, span)| span)
        .unwrap_or_else(|| panic!("no control-plane span in {spans:#?}"));
    assert_eq!(control.name, "GET /api/v1/grants/{id}");
    assert_eq!(control.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(control, "http.route").as_deref(),
        Some("/api/v1/grants/{id}")
    );
    assert_eq!(
        attribute(control, "http.response.status_code").as_deref(),
        Some("401")
    );

    // Nothing secret anywhere in what was exported: not the arguments, not the grant token
    // (nor the grant URL), not the server's stored credential.
    let everything: Vec<u8> = received.bodies.iter().flat_map(|b| b.to_vec()).collect();
    let grant_url_path = format!("/g/{}/mcp", f.token.expose());
    for secret in [
        ARGUMENT,
        f.token.expose(),
        "pcg_",
        grant_url_path.as_str(),
        grant_path.as_str(),
        "upstream-secret",
    ] {
        assert!(
            !everything
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{secret:?} was exported"
        );
    }
    drop((receiver, upstream));
}

async fn stop(running: Running) {
    running.stop().await.unwrap();
}
