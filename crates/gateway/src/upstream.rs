//! The one pooled HTTP client to upstream MCP servers, and what may cross the gateway in
//! headers.
//!
//! Headers are forwarded by allowlist, in both directions: the client's `Authorization`,
//! cookies and hop-by-hop headers can never reach the upstream because nothing but the MCP
//! headers is copied; the server's stored static headers (its credentials) are injected last.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use bytes::{Bytes, BytesMut};
use portcullis_mcp::headers::names as mcp;

use crate::grants::Server;

/// The upstream failed to answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting or sending failed.
    #[error("request failed: {0}")]
    Request(#[source] reqwest::Error),
    /// No answer within the response timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was larger than the gateway reads into memory.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// The answer did not follow the transport (e.g. an SSE upstream without `endpoint`).
    #[error("{0}")]
    Protocol(String),
}

impl UpstreamError {
    /// True for timeouts (answered 504 rather than 502).
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Request(e) => e.is_timeout(),
            _ => false,
        }
    }
}

/// Request headers a client may send through: the MCP transport's own, and tracing context.
const FORWARDED_REQUEST: [&str; 8] = [
    "accept",
    mcp::MCP_PROTOCOL_VERSION,
    mcp::MCP_METHOD,
    mcp::MCP_NAME,
    mcp::LAST_EVENT_ID,
    "traceparent",
    "tracestate",
    "baggage",
];

/// Response headers passed back to the client (the session id is rewritten separately).
const FORWARDED_RESPONSE: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
    HeaderName::from_static(mcp::MCP_PROTOCOL_VERSION),
];

/// The pooled client.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    timeout: Duration,
    /// Largest answer read into memory (JSON answers that are inspected or rewritten).
    pub max_buffered: usize,
}

impl Upstream {
    /// A client with the given connect and response timeouts.
    pub fn new(connect_timeout: Duration, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            // Upstream URLs are registered by tenants: never follow a redirect elsewhere and
            // never route through a proxy from the environment.
            .redirect(reqwest::redirect::Policy::none())
            // Never send a call twice: a retried `tools/call` could charge a card twice.
            .retry(reqwest::retry::never())
            .no_proxy()
            .user_agent(concat!("portcullis-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            timeout,
            max_buffered: portcullis_mcp::sse::DEFAULT_MAX_EVENT_BYTES,
        })
    }

    /// The response timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends a request and waits (up to the response timeout) for the response head; the
    /// body streams afterwards.
    pub async fn send(
        &self,
        method: Method,
        url: &url::Url,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut request = self.client.request(method, url.clone()).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, request.send()).await;
        metrics::histogram!("portcullis_gateway_upstream_head_seconds").record(started.elapsed());
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                metrics::counter!("portcullis_gateway_upstream_errors_total", "kind" => "request")
                    .increment(1);
                Err(UpstreamError::Request(e))
            }
            Err(_) => {
                metrics::counter!("portcullis_gateway_upstream_errors_total", "kind" => "timeout")
                    .increment(1);
                Err(UpstreamError::Timeout(self.timeout))
            }
        }
    }

    /// Reads a whole (JSON) answer, bounded in size and time.
    pub async fn read_body(&self, mut response: reqwest::Response) -> Result<Bytes, UpstreamError> {
        let limit = self.max_buffered;
        let read = async {
            let mut body = BytesMut::new();
            while let Some(chunk) = response.chunk().await.map_err(UpstreamError::Request)? {
                if body.len() + chunk.len() > limit {
                    return Err(UpstreamError::TooLarge(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body.freeze())
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
    }
}

/// The headers of a request to `server`: the client's MCP headers, then the server's own.
pub fn request_headers(client: &HeaderMap, server: &Server, has_body: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(8 + server.headers.len());
    for name in FORWARDED_REQUEST {
        for value in client.get_all(name) {
            out.append(HeaderName::from_static(name), value.clone());
        }
    }
    for (name, value) in client {
        if name.as_str().starts_with(mcp::MCP_PARAM_PREFIX) {
            out.append(name.clone(), value.clone());
        }
    }
    if has_body {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if !out.contains_key(header::ACCEPT) {
        out.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
    }
    for (name, value) in &server.headers {
        out.insert(name.clone(), value.clone());
    }
    out
}

/// The headers of an upstream answer that the client may see.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(4);
    for name in &FORWARDED_RESPONSE {
        if let Some(value) = upstream.get(name) {
            out.insert(name.clone(), value.clone());
        }
    }
    out
}

/// True when an answer is an SSE stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::{ServerId, TenantId};

    #[test]
    fn client_credentials_never_cross_and_server_headers_are_injected() {
        let mut client = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer pcg_secret"),
            ("cookie", "sid=1"),
            ("connection", "keep-alive, x-foo"),
            ("x-foo", "1"),
            ("te", "trailers"),
            ("host", "evil"),
            ("mcp-session-id", "wrapped"),
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-param-region", "eu"),
            ("x-api-key", "client-key"),
        ] {
            client.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut server_headers = HeaderMap::new();
        server_headers.insert("x-api-key", HeaderValue::from_static("server-key"));
        let server = Server {
            id: ServerId::new(),
            tenant: TenantId::new(),
            url: url::Url::parse("http://127.0.0.1:1/mcp").unwrap_or_else(|_| unreachable!()),
            transport: crate::grants::Transport::StreamableHttp,
            headers: server_headers,
            block_changed_tools: true,
        };
        let out = request_headers(&client, &server, true);
        for gone in [
            "authorization",
            "cookie",
            "connection",
            "x-foo",
            "te",
            "host",
            "mcp-session-id",
        ] {
            assert!(!out.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(out["x-api-key"], "server-key");
        assert_eq!(out["mcp-protocol-version"], "2025-11-25");
        assert_eq!(out["mcp-param-region"], "eu");
        assert_eq!(out["content-type"], "application/json");
        assert!(out.contains_key("accept"));
    }
}
