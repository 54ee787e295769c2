//! The one pooled HTTP client to upstream MCP servers, and what may cross the gateway in
//! headers.
//!
//! Headers are forwarded by allowlist, in both directions: the client's `Authorization`,
//! cookies and hop-by-hop headers can never reach the upstream because nothing but the MCP
//! headers is copied; the server's stored static headers (its credentials) are injected last.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_core::egress::{Egress, Refused};
use portcullis_mcp::ProtocolEra;
use portcullis_mcp::headers::names as mcp;
use tokio::net::TcpStream;

use crate::grants::Server;

/// An upstream answer: its head, and a body that streams as it is read.
pub type UpstreamResponse = http::Response<Incoming>;

/// The upstream failed to answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting, sending or reading failed.
    #[error("request failed: {0}")]
    Request(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No answer within the response timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was larger than the gateway reads into memory.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// The answer did not follow the transport (e.g. an SSE upstream without `endpoint`).
    #[error("{0}")]
    Protocol(String),
    /// The upstream's address is one the gateway may not connect to ([`Egress`]).
    #[error("upstream address not allowed: {0}")]
    NotAllowed(String),
    /// The upstream refused the credentials the gateway sent for its server (HTTP 401 or
    /// 403). Not the client's to fix: passed on, a 401 would send it to sign in again.
    #[error("the upstream refused this server's stored credentials (HTTP {0})")]
    CredentialsRefused(u16),
}

impl UpstreamError {
    /// True when the request certainly never reached the upstream's tool: the connection
    /// could not be made or was not allowed, or the upstream refused the server's credentials.
    /// Anything else (a timeout, a reset after the request was written) may come after the
    /// tool ran.
    pub fn never_ran(&self) -> bool {
        match self {
            Self::NotAllowed(_) | Self::CredentialsRefused(_) => true,
            Self::Request(e) => e
                .downcast_ref::<hyper_util::client::legacy::Error>()
                .is_some_and(hyper_util::client::legacy::Error::is_connect),
            Self::Timeout(_) | Self::TooLarge(_) | Self::Protocol(_) => false,
        }
    }

    /// True for timeouts (answered 504 rather than 502), connecting included.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Request(e) => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
                while let Some(err) = source {
                    if err
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                    {
                        return true;
                    }
                    source = err.source();
                }
                false
            }
            _ => false,
        }
    }
}

/// Request headers a client may send through: the MCP transport's own, and tracing context
/// (whose `traceparent` and `tracestate` the gateway replaces with its own span's when tracing
/// is on: see `spans`). (`Last-Event-ID` goes only with a GET, which resumes a stream: see
/// `proxy`.)
const FORWARDED_REQUEST: [HeaderName; 5] = [
    header::ACCEPT,
    HeaderName::from_static(mcp::MCP_PROTOCOL_VERSION),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("baggage"),
];

/// Response headers passed back to the client (the session id is rewritten separately).
const FORWARDED_RESPONSE: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
    HeaderName::from_static(mcp::MCP_PROTOCOL_VERSION),
];

const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("portcullis-gateway/", env!("CARGO_PKG_VERSION")));

type Connector = hyper_rustls::HttpsConnector<Guarded>;

/// The pooled client: HTTP/1.1 keep-alive connections, `https` through rustls with the
/// platform's trust store. It follows no redirect and uses no proxy from the environment
/// (upstream URLs are registered by tenants: a call must go where the URL says and nowhere
/// else), and never sends a request twice (a retried `tools/call` could charge a card twice;
/// only a request that never started to be written on a pooled connection the server had
/// closed is sent again, on a new one).
#[derive(Clone)]
pub struct Upstream {
    connector: Connector,
    client: Client<Connector, Full<Bytes>>,
    timeout: Duration,
    /// Largest answer read into memory (JSON answers that are inspected or rewritten).
    pub max_buffered: usize,
    /// `portcullis_gateway_upstream_head_seconds`.
    head_seconds: metrics::Histogram,
}

impl Upstream {
    /// A client with the given connect and response timeouts, connecting only where `egress`
    /// allows.
    pub fn new(
        connect_timeout: Duration,
        timeout: Duration,
        egress: Egress,
    ) -> anyhow::Result<Self> {
        let egress = Arc::new(egress);
        let mut http = HttpConnector::new_with_resolver(GuardedResolver(egress.clone()));
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(rustls::crypto::aws_lc_rs::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(Guarded { http, egress });
        Ok(Self {
            client: pool(connector.clone()),
            connector,
            timeout,
            max_buffered: portcullis_mcp::sse::DEFAULT_MAX_EVENT_BYTES,
            head_seconds: metrics::histogram!("portcullis_gateway_upstream_head_seconds"),
        })
    }

    /// The same client with a connection pool of its own (a clone shares the pool), for a
    /// gateway thread: its connections are driven by tasks on that thread's runtime.
    pub fn with_own_pool(&self) -> Self {
        Self {
            client: pool(self.connector.clone()),
            ..self.clone()
        }
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
        uri: &Uri,
        mut headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        headers.insert(header::USER_AGENT, USER_AGENT);
        let mut request = http::Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = method;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers;
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, self.client.request(request)).await;
        self.head_seconds.record(started.elapsed());
        match result {
            Ok(Ok(response))
                if matches!(
                    response.status(),
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                ) =>
            {
                metrics::counter!("portcullis_gateway_upstream_errors_total", "kind" => "credentials")
                    .increment(1);
                Err(UpstreamError::CredentialsRefused(
                    response.status().as_u16(),
                ))
            }
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                metrics::counter!("portcullis_gateway_upstream_errors_total", "kind" => "request")
                    .increment(1);
                Err(match Refused::find(&e) {
                    Some(refused) => {
                        tracing::warn!(address = %refused.ip, "outbound address refused");
                        UpstreamError::NotAllowed(refused.to_string())
                    }
                    None => UpstreamError::Request(e.into()),
                })
            }
            Err(_) => {
                metrics::counter!("portcullis_gateway_upstream_errors_total", "kind" => "timeout")
                    .increment(1);
                Err(UpstreamError::Timeout(self.timeout))
            }
        }
    }

    /// Reads a whole (JSON) answer, bounded in size and time.
    pub async fn read_body(&self, response: UpstreamResponse) -> Result<Bytes, UpstreamError> {
        let limit = self.max_buffered;
        let read = Limited::new(response.into_body(), limit).collect();
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<LengthLimitError>() => Err(UpstreamError::TooLarge(limit)),
            Ok(Err(e)) => Err(UpstreamError::Request(e)),
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
        }
    }
}

/// Resolves upstream host names to the addresses [`Egress`] permits, and nothing else: the
/// connector then connects only to those.
#[derive(Clone)]
struct GuardedResolver(Arc<Egress>);

type Resolving<T> = Pin<Box<dyn Future<Output = std::io::Result<T>> + Send>>;

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let egress = self.0.clone();
        // The connector puts the URL's port on the addresses.
        Box::pin(async move { Ok(egress.resolve(name.as_str(), 0).await?.into_iter()) })
    }
}

/// The TCP connector, refusing URLs whose host is an address [`Egress`] does not permit (the
/// resolver never sees those).
#[derive(Clone)]
struct Guarded {
    http: HttpConnector<GuardedResolver>,
    egress: Arc<Egress>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Guarded {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Err(e) = self.egress.check_host(uri.host().unwrap_or_default()) {
            return Box::pin(std::future::ready(Err(e.into())));
        }
        let connecting = self.http.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// A pooled client: HTTP/1.1 keep-alive connections through `connector`.
fn pool(connector: Connector) -> Client<Connector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// The request target of an upstream URL.
pub fn uri(url: &url::Url) -> Result<Uri, UpstreamError> {
    Uri::try_from(url.as_str())
        .map_err(|e| UpstreamError::Protocol(format!("unusable upstream URL: {e}")))
}

/// An answer's body as a stream of chunks, as it arrives.
pub fn body_stream(response: UpstreamResponse) -> crate::relay::ByteStream {
    crate::relay::boxed(http_body_util::BodyDataStream::new(response.into_body()))
}

/// Which of the client's headers that mirror the body the gateway checked against it: the
/// only ones forwarded, since nothing behind the gateway may route on a header nobody checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mirrored {
    /// None: the session era, GET and DELETE, notifications and responses.
    #[default]
    None,
    /// A stateless-era request or notification: `Mcp-Method`, and `Mcp-Name` when its method
    /// has a name.
    Method {
        /// Whether the method has a name that `Mcp-Name` mirrors.
        name: bool,
    },
    /// A stateless-era `tools/call`: `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*`.
    Call,
}

impl Mirrored {
    /// What was checked for a message of `era` whose method is `method` (`None` for a
    /// response; a notification's `Mcp-Method`, if any, was checked too).
    pub fn checked(era: ProtocolEra, method: Option<&str>) -> Self {
        match (era, method) {
            (ProtocolEra::Stateless, Some(portcullis_mcp::method::names::TOOLS_CALL)) => Self::Call,
            (ProtocolEra::Stateless, Some(method)) => Self::Method {
                name: portcullis_mcp::headers::name_source(method).is_some(),
            },
            _ => Self::None,
        }
    }
}

/// The headers of a request to `server`: the client's MCP headers, then the server's own.
/// Of the headers that mirror the body, only those `mirrored` names go.
pub fn request_headers(
    client: &HeaderMap,
    server: &Server,
    mirrored: Mirrored,
    has_body: bool,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(8 + server.headers.len());
    let copy = |out: &mut HeaderMap, name: &HeaderName| {
        for value in client.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    };
    for name in FORWARDED_REQUEST.iter() {
        copy(&mut out, name);
    }
    let (method, name, params) = match mirrored {
        Mirrored::None => (false, false, false),
        Mirrored::Method { name } => (true, name, false),
        Mirrored::Call => (true, true, true),
    };
    if method {
        copy(&mut out, &HeaderName::from_static(mcp::MCP_METHOD));
    }
    if name {
        copy(&mut out, &HeaderName::from_static(mcp::MCP_NAME));
    }
    if params {
        for (name, value) in client {
            if name.as_str().starts_with(mcp::MCP_PARAM_PREFIX) {
                out.append(name.clone(), value.clone());
            }
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

/// Media types an upstream answer keeps: what MCP answers with, and plain text for errors.
const RELAYED_TYPES: [&str; 3] = ["application/json", "text/event-stream", "text/plain"];

/// The headers of an upstream answer that the client may see.
///
/// The answer is served from the gateway's origin, so an upstream must not be able to make a
/// browser render it (an HTML page with script, same-site with the dashboard): any other
/// media type becomes `application/octet-stream`, and every answer says not to sniff, run or
/// frame it.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(6);
    for name in &FORWARDED_RESPONSE {
        if let Some(value) = upstream.get(name) {
            out.insert(name.clone(), value.clone());
        }
    }
    if let Some(value) = out.get(header::CONTENT_TYPE)
        && !is_relayed_type(value)
    {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
    );
    out
}

fn is_relayed_type(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim();
    RELAYED_TYPES.iter().any(|t| media.eq_ignore_ascii_case(t))
}

/// True when an answer is an SSE stream (media types are case-insensitive).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let media = v.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("text/event-stream")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::{ServerId, TenantId};

    #[test]
    fn answers_keep_only_mcp_media_types_and_are_never_rendered() {
        for (upstream, relayed) in [
            ("application/json", "application/json"),
            ("text/event-stream", "text/event-stream"),
            (
                "Application/JSON; charset=utf-8",
                "Application/JSON; charset=utf-8",
            ),
            ("text/plain", "text/plain"),
            ("text/html; charset=utf-8", "application/octet-stream"),
            ("image/svg+xml", "application/octet-stream"),
            ("application/jsonx", "application/octet-stream"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(upstream));
            headers.insert(header::SET_COOKIE, HeaderValue::from_static("pc_session=x"));
            let out = response_headers(&headers);
            assert_eq!(out[header::CONTENT_TYPE], relayed, "{upstream}");
            assert_eq!(out[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(out.contains_key(header::CONTENT_SECURITY_POLICY));
            assert!(!out.contains_key(header::SET_COOKIE));
        }
    }

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
        let url = url::Url::parse("http://127.0.0.1:1/mcp").unwrap_or_else(|_| unreachable!());
        let server = Server {
            id: ServerId::new(),
            tenant: TenantId::new(),
            uri: uri(&url).unwrap_or_else(|_| unreachable!()),
            url,
            transport: crate::grants::Transport::StreamableHttp,
            headers: server_headers,
            block_changed_tools: true,
        };
        let out = request_headers(&client, &server, Mirrored::Call, true);
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

        // The headers that mirror the body go only where the gateway checked them.
        client.insert("mcp-method", HeaderValue::from_static("tools/call"));
        client.insert("mcp-name", HeaderValue::from_static("x"));
        let forwarded = |era, method| {
            let out = request_headers(&client, &server, Mirrored::checked(era, method), true);
            ["mcp-method", "mcp-name", "mcp-param-region"].map(|h| out.contains_key(h))
        };
        let stateless = ProtocolEra::Stateless;
        assert_eq!(forwarded(stateless, Some("tools/call")), [true; 3]);
        assert_eq!(
            forwarded(stateless, Some("prompts/get")),
            [true, true, false]
        );
        assert_eq!(
            forwarded(stateless, Some("tools/list")),
            [true, false, false]
        );
        // A notification's method is checked when sent; a response has none.
        assert_eq!(
            forwarded(stateless, Some("notifications/cancelled")),
            [true, false, false]
        );
        assert_eq!(forwarded(stateless, None), [false; 3]);
        assert_eq!(
            forwarded(ProtocolEra::Session, Some("tools/call")),
            [false; 3]
        );
        let session = request_headers(&client, &server, Mirrored::None, true);
        assert_eq!(session["mcp-protocol-version"], "2025-11-25");
    }
}
