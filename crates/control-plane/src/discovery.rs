//! A real MCP client for "test connection" and discovery: `initialize`,
//! `notifications/initialized`, then every page of `tools/list`.
//!
//! Both upstream transports work: Streamable HTTP (a POST per message, replies as JSON or as an
//! SSE stream, `Mcp-Session-Id`), and legacy HTTP+SSE (GET the stream, wait for the `endpoint`
//! event, POST messages there, read replies from the stream). A server that refuses `initialize`
//! is retried in the stateless era (2026-07-28), where every request carries its version in
//! `_meta`. The server's static headers are sent with every request.

use std::time::Duration;

use futures::StreamExt as _;
use portcullis_mcp::era::{KNOWN_VERSIONS, LATEST_VERSION};
use portcullis_mcp::headers::names;
use portcullis_mcp::meta::keys;
use portcullis_mcp::{Message, RequestId, SseDecoder, SseFrame};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The session-era version this client asks for.
const SESSION_VERSION: &str = "2025-11-25";
/// Most `tools/list` pages read, so a server cannot keep discovery busy forever.
const MAX_PAGES: usize = 100;
/// Most tools kept.
const MAX_TOOLS: usize = 10_000;
/// Largest reply body read.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// How the upstream speaks MCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Streamable HTTP (2025-03-26 and later).
    StreamableHttp,
    /// Legacy HTTP+SSE (2024-11-05).
    Sse,
}

impl Transport {
    /// The name stored in `servers.transport`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable_http",
            Transport::Sse => "sse",
        }
    }

    /// Reads a stored or submitted transport.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "streamable_http" | "http" | "streamable-http" => Some(Transport::StreamableHttp),
            "sse" => Some(Transport::Sse),
            _ => None,
        }
    }
}

/// Where and how to reach an upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The MCP endpoint (Streamable HTTP) or the SSE stream URL (legacy).
    pub url: String,
    /// The transport.
    pub transport: Transport,
    /// Static headers (decrypted credentials), sent with every request.
    pub headers: Vec<(String, String)>,
}

/// What the upstream said about itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerInfo {
    /// The protocol version in use.
    pub protocol_version: String,
    /// The server's self-reported name.
    pub name: Option<String>,
    /// The server's self-reported version.
    pub version: Option<String>,
    /// Whether the server offers tools.
    pub has_tools: bool,
}

/// Why discovery failed, in words for the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Could not connect or the request failed in transit.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server answered with an HTTP error.
    #[error("the server answered HTTP {status}: {body}")]
    Http {
        /// Status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The server answered with a JSON-RPC error.
    #[error("the server refused {method}: {message} ({code})")]
    Rpc {
        /// The method refused.
        method: String,
        /// JSON-RPC code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// The reply was not MCP.
    #[error("the server's reply is not valid MCP: {0}")]
    Protocol(String),
    /// The time limit passed.
    #[error("the server did not finish within {0:?}")]
    Timeout(Duration),
}

fn unreachable(e: reqwest::Error) -> DiscoveryError {
    DiscoveryError::Unreachable(outbound_error(&e))
}

/// What a failed outbound request tells the tenant. An address the egress guard refused is
/// logged for the operator: the message leaves out addresses a host name resolved to.
pub(crate) fn outbound_error(e: &reqwest::Error) -> String {
    if let Some(refused) = portcullis_core::egress::Refused::find(e) {
        tracing::warn!(address = %refused.ip, "outbound address refused");
    }
    portcullis_core::error_chain(e)
}

/// Connects and initialises, then ends the session: "test connection".
pub async fn test_connection(
    http: &reqwest::Client,
    upstream: &Upstream,
    limit: Duration,
) -> Result<ServerInfo, DiscoveryError> {
    tokio::time::timeout(limit, async {
        let (mut conn, info) = Conn::open(http, upstream).await?;
        conn.close().await;
        Ok(info)
    })
    .await
    .map_err(|_| DiscoveryError::Timeout(limit))?
}

/// Connects, initialises and reads every page of `tools/list`.
pub async fn list_tools(
    http: &reqwest::Client,
    upstream: &Upstream,
    limit: Duration,
) -> Result<(ServerInfo, Vec<Value>), DiscoveryError> {
    tokio::time::timeout(limit, async {
        let (mut conn, info) = Conn::open(http, upstream).await?;
        let result = conn.all_tools().await;
        conn.close().await;
        result.map(|tools| (info, tools))
    })
    .await
    .map_err(|_| DiscoveryError::Timeout(limit))?
}

enum Channel {
    Http {
        session: Option<String>,
    },
    Sse {
        endpoint: url::Url,
        replies: mpsc::Receiver<Message>,
        reader: tokio::task::JoinHandle<()>,
    },
}

struct Conn {
    http: reqwest::Client,
    upstream: Upstream,
    channel: Channel,
    /// Negotiated version; `LATEST_VERSION` in the stateless era.
    protocol: Option<String>,
    stateless: bool,
    next_id: i64,
}

impl Conn {
    async fn open(
        http: &reqwest::Client,
        upstream: &Upstream,
    ) -> Result<(Self, ServerInfo), DiscoveryError> {
        let channel = match upstream.transport {
            Transport::StreamableHttp => Channel::Http { session: None },
            Transport::Sse => open_sse(http, upstream).await?,
        };
        let mut conn = Conn {
            http: http.clone(),
            upstream: upstream.clone(),
            channel,
            protocol: None,
            stateless: false,
            next_id: 1,
        };
        let init = conn
            .request(
                "initialize",
                json!({
                    "protocolVersion": SESSION_VERSION,
                    "capabilities": {},
                    "clientInfo": { "name": "portcullis-discovery", "version": env!("CARGO_PKG_VERSION") },
                }),
            )
            .await;
        let result = match init {
            Ok(result) => result,
            Err(e) if upstream.transport == Transport::StreamableHttp && refuses_initialize(&e) => {
                conn.stateless = true;
                conn.protocol = Some(LATEST_VERSION.to_owned());
                let info = ServerInfo {
                    protocol_version: LATEST_VERSION.to_owned(),
                    has_tools: true,
                    ..ServerInfo::default()
                };
                return Ok((conn, info));
            }
            Err(e) => return Err(e),
        };
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(SESSION_VERSION)
            .to_owned();
        if !KNOWN_VERSIONS.contains(&version.as_str()) {
            tracing::info!(version, "upstream negotiated an unknown protocol version");
        }
        conn.protocol = Some(version.clone());
        conn.notify("notifications/initialized").await?;
        let server = result.get("serverInfo");
        let info = ServerInfo {
            protocol_version: version,
            name: server
                .and_then(|s| s.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            version: server
                .and_then(|s| s.get("version"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            has_tools: result
                .get("capabilities")
                .and_then(|c| c.get("tools"))
                .is_some(),
        };
        Ok((conn, info))
    }

    async fn all_tools(&mut self) -> Result<Vec<Value>, DiscoveryError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let result = self.request("tools/list", params).await?;
            let page = result
                .get("tools")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    DiscoveryError::Protocol("tools/list result has no tools array".into())
                })?;
            tools.extend(
                page.iter()
                    .filter(|t| t.get("name").and_then(Value::as_str).is_some())
                    .cloned(),
            );
            if tools.len() >= MAX_TOOLS {
                tools.truncate(MAX_TOOLS);
                break;
            }
            cursor = result
                .get("nextCursor")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        Ok(tools)
    }

    fn post(&self, url: &str, method: &str, body: &Value) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(url)
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in &self.upstream.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        if let Some(version) = &self.protocol {
            req = req.header(names::MCP_PROTOCOL_VERSION, version.as_str());
        }
        if self.stateless {
            req = req.header(names::MCP_METHOD, method);
        }
        if let Channel::Http { session: Some(id) } = &self.channel {
            req = req.header(names::MCP_SESSION_ID, id.as_str());
        }
        req.body(body.to_string())
    }

    async fn notify(&mut self, method: &str) -> Result<(), DiscoveryError> {
        let body = json!({ "jsonrpc": "2.0", "method": method });
        let url = self.target();
        let response = self
            .post(&url, method, &body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(http_error(response).await);
        }
        Ok(())
    }

    fn target(&self) -> String {
        match &self.channel {
            Channel::Http { .. } => self.upstream.url.clone(),
            Channel::Sse { endpoint, .. } => endpoint.to_string(),
        }
    }

    async fn request(&mut self, method: &str, mut params: Value) -> Result<Value, DiscoveryError> {
        let id = self.next_id;
        self.next_id += 1;
        if self.stateless {
            params[portcullis_mcp::meta::META] = json!({
                keys::PROTOCOL_VERSION: LATEST_VERSION,
                keys::CLIENT_CAPABILITIES: {},
                keys::CLIENT_INFO: { "name": "portcullis-discovery", "version": env!("CARGO_PKG_VERSION") },
            });
        }
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let url = self.target();
        let response = self
            .post(&url, method, &body)
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(http_error(response).await);
        }
        if let Channel::Http { session } = &mut self.channel
            && let Some(value) = response.headers().get(names::MCP_SESSION_ID)
            && let Ok(text) = value.to_str()
        {
            *session = Some(text.to_owned());
        }
        let message = match &mut self.channel {
            Channel::Http { .. } => read_reply(response, id).await?,
            Channel::Sse { replies, .. } => {
                drop(response);
                loop {
                    let message = replies
                        .recv()
                        .await
                        .ok_or_else(|| DiscoveryError::Protocol("the SSE stream closed".into()))?;
                    if answers(&message, id) {
                        break message;
                    }
                }
            }
        };
        match message {
            Message::Response { result, .. } => serde_json::from_str(result.get())
                .map_err(|e| DiscoveryError::Protocol(e.to_string())),
            Message::Error { error, .. } => Err(DiscoveryError::Rpc {
                method: method.to_owned(),
                code: error.code,
                message: error.message,
            }),
            _ => Err(DiscoveryError::Protocol("expected a response".into())),
        }
    }

    async fn close(&mut self) {
        match &self.channel {
            Channel::Http { session: Some(id) } => {
                let mut req = self
                    .http
                    .delete(&self.upstream.url)
                    .header(names::MCP_SESSION_ID, id.as_str());
                for (name, value) in &self.upstream.headers {
                    req = req.header(name.as_str(), value.as_str());
                }
                if let Some(version) = &self.protocol {
                    req = req.header(names::MCP_PROTOCOL_VERSION, version.as_str());
                }
                // Ending the session is a courtesy; a server that does not support it is fine.
                let _ = tokio::time::timeout(Duration::from_secs(2), req.send()).await;
            }
            Channel::Http { session: None } => {}
            Channel::Sse { reader, .. } => reader.abort(),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Channel::Sse { reader, .. } = &self.channel {
            reader.abort();
        }
    }
}

fn refuses_initialize(e: &DiscoveryError) -> bool {
    match e {
        DiscoveryError::Rpc { code, .. } => *code == -32601 || *code == -32600 || *code == -32602,
        DiscoveryError::Http { status, .. } => matches!(status, 400 | 404 | 405),
        _ => false,
    }
}

fn answers(message: &Message, id: i64) -> bool {
    let wanted = RequestId::Number(id.into());
    match message {
        Message::Response { id: got, .. } => *got == wanted,
        Message::Error { id: Some(got), .. } => *got == wanted,
        // An error with a null id answers whatever was pending.
        Message::Error { id: None, .. } => true,
        _ => false,
    }
}

async fn http_error(response: reqwest::Response) -> DiscoveryError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    DiscoveryError::Http { status, body }
}

/// Reads a Streamable HTTP reply: one JSON message, or an SSE stream until our response.
async fn read_reply(response: reqwest::Response, id: i64) -> Result<Message, DiscoveryError> {
    let is_sse = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        let bytes = response.bytes().await.map_err(unreachable)?;
        if bytes.len() > MAX_BODY {
            return Err(DiscoveryError::Protocol("reply too large".into()));
        }
        return Message::parse(&bytes).map_err(|e| DiscoveryError::Protocol(e.to_string()));
    }
    let mut decoder = SseDecoder::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(unreachable)?;
        let frames: Vec<SseFrame> = decoder
            .push(&chunk)
            .map_err(|e| DiscoveryError::Protocol(e.to_string()))?
            .collect();
        for frame in frames {
            if let SseFrame::Event(event) = frame
                && let Some(parsed) = event.json_rpc()
            {
                let message = parsed.map_err(|e| DiscoveryError::Protocol(e.to_string()))?;
                if answers(&message, id) {
                    return Ok(message);
                }
            }
        }
    }
    Err(DiscoveryError::Protocol(
        "the reply stream ended without a response".into(),
    ))
}

/// Opens a legacy SSE stream and waits for its `endpoint` event.
async fn open_sse(http: &reqwest::Client, upstream: &Upstream) -> Result<Channel, DiscoveryError> {
    let base =
        url::Url::parse(&upstream.url).map_err(|e| DiscoveryError::Unreachable(e.to_string()))?;
    let mut req = http
        .get(base.clone())
        .header(reqwest::header::ACCEPT, "text/event-stream");
    for (name, value) in &upstream.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let response = req.send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(http_error(response).await);
    }
    let (endpoint_tx, endpoint_rx) = tokio::sync::oneshot::channel::<String>();
    let (tx, replies) = mpsc::channel::<Message>(64);
    let reader = tokio::spawn(async move {
        let mut endpoint_tx = Some(endpoint_tx);
        let mut decoder = SseDecoder::new();
        let mut stream = response.bytes_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            let Ok(frames) = decoder.push(&chunk) else {
                return;
            };
            let frames: Vec<SseFrame> = frames.collect();
            for frame in frames {
                let SseFrame::Event(event) = frame else {
                    continue;
                };
                if event.event.as_deref() == Some(portcullis_mcp::sse::ENDPOINT_EVENT) {
                    if let (Some(sender), Some(data)) = (endpoint_tx.take(), event.data.clone()) {
                        let _ = sender.send(data);
                    }
                } else if let Some(Ok(message)) = event.json_rpc()
                    && tx.send(message).await.is_err()
                {
                    return;
                }
            }
        }
    });
    let endpoint = endpoint_rx
        .await
        .map_err(|_| DiscoveryError::Protocol("the SSE stream sent no endpoint event".into()))?;
    let endpoint = base
        .join(endpoint.trim())
        .map_err(|e| DiscoveryError::Protocol(format!("bad endpoint: {e}")))?;
    // The endpoint must stay on the upstream's origin: credentials go with every POST.
    if endpoint.origin() != base.origin() {
        reader.abort();
        return Err(DiscoveryError::Protocol(
            "the endpoint event points at another origin".into(),
        ));
    }
    Ok(Channel::Sse {
        endpoint,
        replies,
        reader,
    })
}
