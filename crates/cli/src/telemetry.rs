//! Logging (JSON lines with the request id of the span they were written in) and distributed
//! tracing (OpenTelemetry spans exported over OTLP/HTTP, only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set; see `docs/operations.md`, "Traces").
//!
//! The two are apart on purpose: log spans are never exported, and every exported span and
//! attribute is written explicitly (here, and in `portcullis_gateway::spans`), so nothing a log
//! line carries can reach a trace backend by accident.

use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber. Safe to call twice (the second call does nothing).
pub fn init(config: &Config) {
    init_with(&config.log, config.log_format);
}

/// Installs the global subscriber with a filter and a format (commands without a [`Config`]).
pub fn init_with(log: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The span exporter of one running process (not a global: each [`crate::start`] has its
/// own, so tests can run several side by side).
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// The exporter the settings ask for: `None` when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset,
    /// and then nothing about a request is traced. `service` names the spans' service unless
    /// `OTEL_SERVICE_NAME` does.
    pub fn new(config: &Config, service: &'static str) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = config.traces_endpoint()? else {
            return Ok(None);
        };
        // Batches are posted from the batch processor's own thread, whatever the async
        // runtimes are doing (the gateway's threads never wait for an export).
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.as_str())
            .build()
            .context("cannot set up the OTLP trace exporter")?;
        let service = config
            .otel_service_name
            .as_deref()
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .unwrap_or(service)
            .to_owned();
        let resource = Resource::builder()
            .with_service_name(service)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Some(Self { provider }))
    }

    /// The spans of one listener's requests: `scope` names the instrumentation (the service
    /// library), `name` the spans (`None`: `METHOD /route/template`, as HTTP servers name them).
    pub fn listener(&self, scope: &'static str, name: Option<&'static str>) -> Arc<ServerSpans> {
        let scope = InstrumentationScope::builder(scope)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Arc::new(ServerSpans {
            tracer: self.provider.tracer_with_scope(scope),
            name,
        })
    }

    /// Exports the spans still queued and stops. It blocks (for up to the exporter's timeout):
    /// call it off the async threads.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "cannot export the last spans");
        }
    }
}

/// Paths that get no span: probes and scrapes, which would otherwise be most of the traces.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Starts and ends the server span of each request of one listener ([`crate::http::Edge`]).
pub struct ServerSpans {
    tracer: SdkTracer,
    /// The spans' name; `None`: `METHOD /route`.
    name: Option<&'static str>,
}

impl ServerSpans {
    /// Starts the span of `request`, continuing the client's W3C trace context (`traceparent`,
    /// `tracestate`) when it sent a valid one. Its only attribute so far is the method: never
    /// the path (a grant URL holds a token) nor the query.
    pub fn start(&self, request: &Request<Body>) -> Option<ServerSpan> {
        if UNTRACED.contains(&request.uri().path()) {
            return None;
        }
        let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
        let method = method_name(request.method());
        let span = self
            .tracer
            .span_builder(self.name.unwrap_or(method))
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method)])
            .start_with_context(&self.tracer, &parent);
        Some(ServerSpan(Box::new(Open {
            cx: parent.with_span(span),
            method,
            named_by_route: self.name.is_none(),
        })))
    }
}

/// A request's server span, open until its answer's head goes back.
pub struct ServerSpan(Box<Open>);

struct Open {
    /// The span, as the request's handlers see it (in its extensions).
    cx: Context,
    method: &'static str,
    /// Renamed `METHOD /route` once the route is known.
    named_by_route: bool,
}

impl ServerSpan {
    /// The context holding the span, for the request's handlers.
    pub fn context(&self) -> &Context {
        &self.0.cx
    }

    /// Ends the span with the answer's status, and the template of the route that served it
    /// (`/api/v1/grants/{id}`, never the path itself) when one did.
    pub fn end(self, status: StatusCode, route: Option<&str>) {
        let Open {
            cx,
            method,
            named_by_route,
        } = *self.0;
        let span = cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if let Some(route) = route {
                span.set_attribute(KeyValue::new("http.route", route.to_owned()));
                if named_by_route {
                    span.update_name(format!("{method} {route}"));
                }
            }
            if status.is_server_error() {
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }
}

/// The method as HTTP semantic conventions name it: one of the known ones, else `_OTHER` (a
/// client's made-up method is not copied into a trace).
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// A request's headers, as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly by design.

    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use super::*;

    fn spans(name: Option<&'static str>) -> (ServerSpans, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let spans = ServerSpans {
            tracer: provider.tracer("test"),
            name,
        };
        (spans, exporter)
    }

    fn request(method: &str, path: &str, traceparent: Option<&str>) -> Request<Body> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(value) = traceparent {
            request = request.header("traceparent", value);
        }
        request.body(Body::empty()).unwrap()
    }

    #[test]
    fn a_span_continues_the_clients_trace_and_names_its_route_not_its_path() {
        let (spans, exported) = spans(None);
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let span = spans
            .start(&request(
                "GET",
                "/api/v1/grants/0193?x=pcg_secret",
                Some(traceparent),
            ))
            .unwrap();
        span.end(StatusCode::UNAUTHORIZED, Some("/api/v1/grants/{id}"));
        let exported = exported.get_finished_spans().unwrap();
        let [span] = exported.as_slice() else {
            panic!("{exported:?}")
        };
        assert_eq!(span.name, "GET /api/v1/grants/{id}");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(
            span.span_context.trace_id(),
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
        );
        assert_eq!(
            span.parent_span_id,
            SpanId::from_hex("b7ad6b7169203331").unwrap()
        );
        let text = format!("{:?}", span.attributes);
        assert!(
            text.contains("http.route") && text.contains("401"),
            "{text}"
        );
        assert!(!text.contains("0193") && !text.contains("pcg_"), "{text}");
        assert_eq!(span.status, Status::Unset);
    }

    #[test]
    fn a_listener_may_name_its_spans_and_probes_get_none() {
        let (spans, exported) = spans(Some("gateway.request"));
        for path in UNTRACED {
            assert!(spans.start(&request("GET", path, None)).is_none(), "{path}");
        }
        let span = spans
            .start(&request("BREW", "/g/pcg_secret/mcp", Some("garbage")))
            .unwrap();
        span.end(StatusCode::BAD_GATEWAY, None);
        let exported = exported.get_finished_spans().unwrap();
        let [span] = exported.as_slice() else {
            panic!("{exported:?}")
        };
        assert_eq!(span.name, "gateway.request");
        // An unreadable traceparent starts a trace of the gateway's own.
        assert_eq!(span.parent_span_id, SpanId::INVALID);
        let text = format!("{:?}", span.attributes);
        assert!(text.contains("_OTHER") && !text.contains("BREW"), "{text}");
        assert!(!text.contains("pcg_"), "{text}");
        assert!(matches!(span.status, Status::Error { .. }));
    }
}
