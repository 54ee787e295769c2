//! `portcullis connect URL`: a stdio MCP server that forwards every message to a grant URL.
//!
//! For clients that can only launch stdio servers: each line the client writes is POSTed to
//! the gateway (`/g/{token}/mcp`, or `/mcp/{server_id}` with the grant token as a bearer
//! token), and every message of the answer — JSON, or each event of an SSE stream — is written
//! back as a line. Both eras work unchanged: a session-era `initialize` answer's
//! `Mcp-Session-Id` goes on every later request and opens the session's GET stream; a
//! stateless request gets its `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers from
//! its body. Requests run concurrently; `initialize`, notifications and answers go in order.
//!
//! Logs go to stderr and never carry the token: the URL is logged with its grant-token segment
//! redacted, and errors are logged without their URL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_mcp::headers::{encode_header_value, name_source, names};
use portcullis_mcp::meta::keys::PROTOCOL_VERSION;
use portcullis_mcp::{SseDecoder, SseFrame, codes};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::lines::{Line, Lines};

/// The largest message read from the client or the gateway.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long, once the client has closed stdin, answers still in flight are waited for.
const DRAIN: Duration = Duration::from_secs(5);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    /// The grant URL.
    pub url: url::Url,
    /// The grant token, sent as a bearer token (for `/mcp/{server_id}` URLs).
    pub token: Option<String>,
}

/// Why `connect` cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not an http(s) URL.
    #[error("the URL must be http:// or https://")]
    Scheme,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// Reading stdin or writing stdout failed.
    #[error("stdio: {0}")]
    Io(#[from] std::io::Error),
}

struct Connection {
    http: reqwest::Client,
    url: url::Url,
    token: Option<String>,
    /// The session-era session id, once `initialize` was answered with one.
    session: Mutex<Option<String>>,
    /// The protocol version `initialize` negotiated.
    version: Mutex<Option<String>>,
    out: mpsc::UnboundedSender<Value>,
}

/// Serves stdio on the process's stdin and stdout until stdin closes.
pub async fn run(settings: ConnectSettings) -> Result<(), ConnectError> {
    serve(settings, tokio::io::stdin(), tokio::io::stdout()).await
}

/// Serves the stdio protocol on `input` and `output` until `input` closes.
pub async fn serve<R, W>(settings: ConnectSettings, input: R, output: W) -> Result<(), ConnectError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    if !matches!(settings.url.scheme(), "http" | "https") {
        return Err(ConnectError::Scheme);
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ConnectError::Client(e.without_url().to_string()))?;
    let (out, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_lines(output, out_rx));
    tracing::info!(
        url = %redacted(&settings.url),
        "forwarding stdio to the gateway"
    );
    let connection = Arc::new(Connection {
        http,
        url: settings.url,
        token: settings.token,
        session: Mutex::new(None),
        version: Mutex::new(None),
        out,
    });
    let mut in_flight = JoinSet::new();
    let mut lines = Lines::new(BufReader::new(input), MAX_MESSAGE_BYTES);
    while let Some(line) = lines.next().await? {
        let message = match line {
            Line::Text(text) if text.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Text(text) => serde_json::from_slice::<Value>(&text),
            Line::TooLong(n) => {
                connection.reply_error(
                    None,
                    codes::INVALID_REQUEST,
                    &format!("message of {n} bytes is too large"),
                );
                continue;
            }
        };
        let message = match message {
            Ok(message @ Value::Object(_)) => message,
            Ok(_) | Err(_) => {
                connection.reply_error(None, codes::PARSE_ERROR, "parse error: not a JSON object");
                continue;
            }
        };
        let is_request = message.get("method").is_some() && message.get("id").is_some();
        let initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        if is_request && !initialize {
            let connection = connection.clone();
            in_flight.spawn(async move { connection.forward(message).await });
        } else {
            // In order: the session id must be known before anything follows `initialize`.
            let opens_session =
                message.get("method").and_then(Value::as_str) == Some("notifications/initialized");
            connection.forward(message).await;
            if opens_session {
                let listener = connection.clone();
                tokio::spawn(async move { listener.listen().await });
            }
        }
        while in_flight.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(DRAIN, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    connection.end_session().await;
    drop(connection);
    let _ = writer.await;
    Ok(())
}

async fn write_lines<W: AsyncWrite + Unpin>(mut output: W, mut rx: mpsc::UnboundedReceiver<Value>) {
    while let Some(message) = rx.recv().await {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
            break;
        }
    }
}

impl Connection {
    fn reply_error(&self, id: Option<&Value>, code: i64, message: &str) {
        let _ = self.out.send(json!({
            "jsonrpc": "2.0",
            "id": id.cloned().unwrap_or(Value::Null),
            "error": {"code": code, "message": message},
        }));
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, self.url.clone());
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(session) = lock(&self.session).as_deref() {
            request = request.header(names::MCP_SESSION_ID, session);
        }
        request
    }

    /// POSTs one message and writes back what answers it.
    async fn forward(&self, message: Value) {
        let id = message.get("method").and(message.get("id")).cloned();
        let method = message.get("method").and_then(Value::as_str);
        let mut request = self
            .request(reqwest::Method::POST)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        let version = message
            .pointer("/params/_meta")
            .and_then(|m| m.get(PROTOCOL_VERSION))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| lock(&self.version).clone());
        if let Some(version) = version {
            request = request.header(names::MCP_PROTOCOL_VERSION, version);
        }
        if let Some(method) = method {
            request = request.header(names::MCP_METHOD, encode_header_value(method).as_ref());
            if let Some(name) = name_source(method)
                .and_then(|member| message.pointer(&format!("/params/{member}")))
                .and_then(Value::as_str)
            {
                request = request.header(names::MCP_NAME, encode_header_value(name).as_ref());
            }
        }
        let initialize = method == Some("initialize");
        let response = match request.body(message.to_string()).send().await {
            Ok(response) => response,
            Err(e) => {
                let e = describe(e);
                tracing::warn!("cannot reach the gateway: {e}");
                if let Some(id) = &id {
                    self.reply_error(
                        Some(id),
                        codes::INTERNAL_ERROR,
                        &format!("cannot reach the gateway: {e}"),
                    );
                }
                return;
            }
        };
        let status = response.status();
        if initialize && status.is_success() {
            let session = response
                .headers()
                .get(names::MCP_SESSION_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            *lock(&self.session) = session;
        }
        if status == reqwest::StatusCode::ACCEPTED {
            return;
        }
        if status.is_success() && is_sse(&response) {
            self.relay_sse(response, None).await;
            return;
        }
        let body = response.bytes().await.unwrap_or_default();
        let answer = serde_json::from_slice::<Value>(&body).ok();
        if status.is_success() {
            if let Some(answer) = answer {
                if initialize {
                    self.note_version(&answer);
                }
                let _ = self.out.send(answer);
            }
            return;
        }
        tracing::warn!(status = status.as_u16(), "the gateway refused a message");
        let Some(id) = id else { return };
        // The gateway's own JSON-RPC error, about this request (or about no id at all).
        match answer {
            Some(mut answer) if answer.get("error").is_some() => {
                answer["id"] = id;
                let _ = self.out.send(answer);
            }
            _ => self.reply_error(
                Some(&id),
                codes::INTERNAL_ERROR,
                &format!("the gateway answered HTTP {status}"),
            ),
        }
    }

    fn note_version(&self, answer: &Value) {
        if let Some(version) = answer
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
        {
            *lock(&self.version) = Some(version.to_owned());
        }
    }

    /// Writes every message of an SSE answer; returns the last event id seen.
    async fn relay_sse(
        &self,
        response: reqwest::Response,
        mut last_id: Option<String>,
    ) -> Option<String> {
        use futures::StreamExt as _;
        let mut decoder = SseDecoder::with_max_event_bytes(MAX_MESSAGE_BYTES);
        let mut body = response.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            let Ok(frames) = decoder.push(&chunk) else {
                tracing::warn!("an SSE event from the gateway was too large");
                break;
            };
            for frame in frames {
                let SseFrame::Event(event) = frame else {
                    continue;
                };
                if let Some(id) = event.id.as_ref().filter(|id| !id.is_empty()) {
                    last_id = Some(id.clone());
                }
                if !event.is_message() {
                    continue;
                }
                let Some(message) = event
                    .data
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                else {
                    continue;
                };
                if message.pointer("/result/protocolVersion").is_some() {
                    self.note_version(&message);
                }
                let _ = self.out.send(message);
            }
        }
        last_id
    }

    /// The session's GET stream, for what the server sends between calls; reopened (resuming
    /// after its last event) while the session lasts.
    async fn listen(&self) {
        let mut last_id: Option<String> = None;
        loop {
            let Some(session) = lock(&self.session).clone() else {
                return;
            };
            let mut request = self
                .request(reqwest::Method::GET)
                .header(ACCEPT, "text/event-stream");
            if let Some(version) = lock(&self.version).clone() {
                request = request.header(names::MCP_PROTOCOL_VERSION, version);
            }
            if let Some(id) = &last_id {
                request = request.header(names::LAST_EVENT_ID, id.as_str());
            }
            match request.send().await {
                Ok(response) if response.status().is_success() && is_sse(&response) => {
                    last_id = self.relay_sse(response, last_id).await;
                }
                // 405: the server has no such stream; 404: the session is gone.
                Ok(response) => {
                    tracing::debug!(status = response.status().as_u16(), "no GET stream");
                    return;
                }
                Err(e) => tracing::debug!("the GET stream failed: {}", describe(e)),
            }
            if lock(&self.session).as_deref() != Some(session.as_str()) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Ends the session (DELETE), if there is one.
    async fn end_session(&self) {
        if lock(&self.session).is_none() {
            return;
        }
        let request = self.request(reqwest::Method::DELETE);
        *lock(&self.session) = None;
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), request.send()).await {
            tracing::debug!("ending the session: {e}");
        }
    }
}

/// An HTTP error with its causes, without the URL (it may hold the grant token).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn is_sse(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

fn redacted(url: &url::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        portcullis_core::redact::path(url.path())
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_logged_url_never_carries_the_token() {
        let url = url::Url::parse("https://gw.example:8443/g/pcg_secret/mcp?x=1").unwrap();
        assert_eq!(redacted(&url), "https://gw.example/g/[redacted]/mcp");
    }
}
