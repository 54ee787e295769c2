//! `portcullis bridge stdio`: a stdio MCP server served over Streamable HTTP at `/mcp`.
//!
//! Session era (2025-03-26 … 2025-11-25): each `initialize` starts a child of its own by default
//! (a stdio server keeps per-connection state: its negotiated capabilities, subscriptions,
//! log level), and the session id the client gets names that child. With `--shared` one child
//! serves every session: it is initialized once and later sessions get its first answer.
//! Stateless era (2026-07-28): requests carry their version in `_meta` and have no session;
//! they all go to one shared child. A POST's answer is an SSE stream when the client accepts
//! one (so sampling, elicitation, progress and logging reach it while its call runs), else
//! JSON; a GET opens a session's stream for what the server sends between calls.
//!
//! A child that dies answers its waiting requests with a JSON-RPC error and takes its session
//! with it (404 afterwards, so the client starts a new one); the next child starts after a
//! back-off if children keep crashing. The bridge stops its children when it stops.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use portcullis_mcp::headers::names;
use portcullis_mcp::{Message, MirroredHeaders, ProtocolEra, SseEvent, codes};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::child::{ChildCommand, Process, Spawner, lock};
use crate::routes::{Outgoing, STATELESS, SessionKey};

/// The largest POST body the bridge reads.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How the bridge runs.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// Where it listens.
    pub listen: SocketAddr,
    /// One child for every session instead of one per session.
    pub shared: bool,
    /// The bearer token every request must carry (required off loopback).
    pub token: Option<String>,
    /// How long a stopping child gets before it is killed.
    pub grace: Duration,
    /// The most sessions open at once (each a child process, unless `shared`).
    pub max_sessions: usize,
    /// How to start the child guard: the program and its leading arguments
    /// (`[portcullis, child-guard]`).
    pub guard: Vec<std::ffi::OsString>,
    /// The stdio server.
    pub command: ChildCommand,
}

/// The settings cannot work.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Listening beyond loopback without a token would serve the child to anyone.
    #[error("listening on {0} (not loopback) requires a bearer token: set --token-env VAR")]
    TokenRequired(SocketAddr),
    /// No command after `--`.
    #[error("no command to run: give it after --, e.g. -- npx my-mcp-server")]
    NoCommand,
    /// The listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// A running bridge.
pub struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The URL to register as an upstream: `http://ADDR/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Cancelling it stops the bridge and its children.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the bridge has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

struct Bridge {
    spawner: Arc<Spawner>,
    shared: bool,
    max_sessions: usize,
    token: Option<String>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// The child of stateless requests, and of every session with `--shared`.
    common: tokio::sync::Mutex<Option<Arc<Process>>>,
    next_key: AtomicU64,
}

struct Session {
    key: SessionKey,
    process: Arc<Process>,
}

/// Starts the bridge; children start with the sessions that need them.
pub async fn start(settings: BridgeSettings) -> Result<Running, BridgeError> {
    if settings.command.argv.is_empty() {
        return Err(BridgeError::NoCommand);
    }
    if settings.token.is_none() && !settings.listen.ip().is_loopback() {
        return Err(BridgeError::TokenRequired(settings.listen));
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| BridgeError::Listen(settings.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BridgeError::Listen(settings.listen, e))?;
    let bridge = Arc::new(Bridge {
        spawner: Arc::new(Spawner::new(
            settings.guard,
            settings.command,
            settings.grace,
        )),
        shared: settings.shared,
        max_sessions: settings.max_sessions,
        token: settings.token,
        sessions: Mutex::default(),
        common: tokio::sync::Mutex::new(None),
        next_key: AtomicU64::new(STATELESS + 1),
    });
    let app = axum::Router::new()
        .route("/mcp", post(on_post).get(on_get).delete(on_delete))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(bridge.clone());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let draining = stop.clone();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            draining.cancelled().await;
            // Stopping the children answers what waits and ends every stream.
            bridge.stop_all().await;
        });
        if let Err(e) = server.await {
            tracing::error!("the bridge's listener failed: {e}");
        }
    });
    tracing::info!(url = %format!("http://{addr}/mcp"), "bridge listening");
    Ok(Running {
        addr,
        shutdown,
        task,
    })
}

impl Bridge {
    fn session(&self, id: &str) -> Option<Arc<Session>> {
        let mut sessions = lock(&self.sessions);
        let session = sessions.get(id)?.clone();
        if session.process.is_gone() {
            sessions.remove(id);
            return None;
        }
        Some(session)
    }

    /// The common child, started if it is not running.
    async fn common(&self) -> std::io::Result<Arc<Process>> {
        let mut common = self.common.lock().await;
        if let Some(process) = common.as_ref().filter(|p| !p.is_gone()) {
            return Ok(process.clone());
        }
        let process = self.spawner.spawn().await?;
        lock(&process.routes).open_session(STATELESS);
        *common = Some(process.clone());
        Ok(process)
    }

    async fn stop_all(&self) {
        let mut processes: Vec<Arc<Process>> = lock(&self.sessions)
            .drain()
            .map(|(_, s)| s.process.clone())
            .collect();
        processes.extend(self.common.lock().await.take());
        let grace = self.spawner.grace();
        futures::future::join_all(processes.iter().map(|p| p.stop(grace))).await;
    }

    /// The answer refusing a request that lacks the token or comes from a foreign page.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let Some(token) = &self.token else {
            // Without a token the bridge listens on loopback only; a browser page must still
            // not reach it (DNS rebinding), so a foreign Origin is refused.
            return match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
                None => None,
                Some(Ok(origin)) if is_local_origin(origin) => None,
                Some(_) => Some(error(
                    StatusCode::FORBIDDEN,
                    None,
                    codes::INVALID_REQUEST,
                    "requests from a web page of another origin are refused",
                )),
            };
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return None;
        }
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            None,
            codes::INVALID_REQUEST,
            "missing or wrong bearer token",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(response)
    }

    async fn initialize(
        self: &Arc<Self>,
        mut request: Map<String, Value>,
    ) -> Result<Response, Response> {
        // Each session may be a process: a client must not be able to start them unbounded.
        if lock(&self.sessions).len() >= self.max_sessions {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                request.get("id"),
                codes::INTERNAL_ERROR,
                &format!(
                    "{} sessions are open, the most this bridge serves; end one (DELETE) or try later",
                    self.max_sessions
                ),
            ));
        }
        let process = if self.shared {
            self.common().await
        } else {
            self.spawner.spawn().await
        }
        .map_err(|e| {
            tracing::error!("cannot start the MCP server: {e}");
            error(
                StatusCode::BAD_GATEWAY,
                request.get("id"),
                codes::INTERNAL_ERROR,
                &format!("cannot start the MCP server: {e}"),
            )
        })?;
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        lock(&process.routes).open_session(key);
        let mut cached = process.initialized.lock().await;
        let answer = match cached.as_ref() {
            Some(result) => json!({"jsonrpc": "2.0", "id": request.remove("id"), "result": result}),
            None => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let id = lock(&process.routes).request(key, &mut request, tx, false);
                let pending = Pending::new(process.clone(), Some(id), None);
                if !process.send(&Value::Object(request)) {
                    return Err(pending.gone());
                }
                let Some(answer) = pending.last(&mut rx, key).await else {
                    return Err(pending.gone());
                };
                if let Some(result) = answer.get("result") {
                    *cached = Some(result.clone());
                }
                answer
            }
        };
        drop(cached);
        if answer.get("result").is_none() {
            if !self.shared {
                let grace = self.spawner.grace();
                tokio::spawn(async move { process.stop(grace).await });
            }
            return Ok(json_response(&answer, None));
        }
        let id = session_id();
        lock(&self.sessions).insert(
            id.clone(),
            Arc::new(Session {
                key,
                process: process.clone(),
            }),
        );
        // A session ends with its child.
        let bridge = Arc::downgrade(self);
        let forget = id.clone();
        tokio::spawn(async move {
            process.gone().await;
            if let Some(bridge) = bridge.upgrade() {
                lock(&bridge.sessions).remove(&forget);
            }
        });
        tracing::info!(pid = lock_pid(self, &id), "session started");
        Ok(json_response(&answer, Some(&id)))
    }
}

fn lock_pid(bridge: &Bridge, id: &str) -> u32 {
    lock(&bridge.sessions)
        .get(id)
        .map_or(0, |s| s.process.pid())
}

async fn on_post(State(bridge): State<Arc<Bridge>>, headers: HeaderMap, body: Bytes) -> Response {
    post_message(&bridge, &headers, &body)
        .await
        .unwrap_or_else(|r| r)
}

async fn post_message(
    bridge: &Arc<Bridge>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Response> {
    if let Some(refusal) = bridge.refusal(headers) {
        return Err(refusal);
    }
    let message = Message::parse(body).map_err(|e| mcp_error(&e))?;
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            codes::PARSE_ERROR,
            "the body is not a JSON object",
        ));
    };
    let streams = accepts_sse(headers);
    if let Some(id) = header_str(headers, names::MCP_SESSION_ID) {
        let session = bridge.session(id).ok_or_else(session_not_found)?;
        return Ok(dispatch(&session.process, session.key, message, object, streams).await);
    }
    if message.method() == Some("initialize") {
        return bridge.initialize(object).await;
    }
    if !message.is_request() {
        // A stateless client's notification or answer: for the common child, if it runs.
        if let Some(process) = bridge.common.lock().await.clone() {
            return Ok(dispatch(&process, STATELESS, message, object, streams).await);
        }
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let version = header_str(headers, names::MCP_PROTOCOL_VERSION);
    let detected = portcullis_mcp::era::detect(version, &message).map_err(|e| mcp_error(&e))?;
    if detected.era != ProtocolEra::Stateless {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            codes::INVALID_REQUEST,
            "Bad Request: no Mcp-Session-Id header (initialize first)",
        ));
    }
    let mirrored = MirroredHeaders {
        protocol_version: version,
        method: header_str(headers, names::MCP_METHOD),
        name: header_str(headers, names::MCP_NAME),
    };
    portcullis_mcp::check_mirrored_headers(&mirrored, &message).map_err(|e| mcp_error(&e))?;
    let process = bridge.common().await.map_err(|e| {
        error(
            StatusCode::BAD_GATEWAY,
            object.get("id"),
            codes::INTERNAL_ERROR,
            &format!("cannot start the MCP server: {e}"),
        )
    })?;
    Ok(dispatch(&process, STATELESS, message, object, streams).await)
}

/// Sends one client message of `session` to its child and answers it.
async fn dispatch(
    process: &Arc<Process>,
    session: SessionKey,
    message: Message,
    mut object: Map<String, Value>,
    streams: bool,
) -> Response {
    match message {
        Message::Request { method, .. } => {
            let (tx, rx) = mpsc::unbounded_channel();
            let listen = method == "subscriptions/listen";
            let id = lock(&process.routes).request(session, &mut object, tx, listen);
            let pending = Pending::new(process.clone(), Some(id), None);
            if !process.send(&Value::Object(object)) {
                return pending.gone();
            }
            if streams {
                sse_response(pending, rx)
            } else {
                json_answer(pending, session, rx).await
            }
        }
        Message::Notification { method, .. } => {
            let forward = match method.as_str() {
                "notifications/cancelled" => lock(&process.routes).cancel(session, &mut object),
                // A shared child is initialized once.
                "notifications/initialized" => {
                    !process.initialized_sent.swap(true, Ordering::Relaxed)
                }
                _ => true,
            };
            if forward {
                process.send(&Value::Object(object));
            }
            StatusCode::ACCEPTED.into_response()
        }
        // The client's answer to a server→client request: the id is the child's own.
        Message::Response { .. } | Message::Error { .. } => {
            process.send(&Value::Object(object));
            StatusCode::ACCEPTED.into_response()
        }
    }
}

async fn on_get(State(bridge): State<Arc<Bridge>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = bridge.refusal(&headers) {
        return refusal;
    }
    let Some(id) = header_str(&headers, names::MCP_SESSION_ID) else {
        // Stateless clients listen with `subscriptions/listen`, not GET.
        let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
        return response;
    };
    let Some(session) = bridge.session(id) else {
        return session_not_found();
    };
    let (tx, rx) = mpsc::unbounded_channel();
    if lock(&session.process.routes)
        .listen(session.key, tx)
        .is_err()
    {
        return error(
            StatusCode::CONFLICT,
            None,
            codes::INVALID_REQUEST,
            "this session's stream is already open",
        );
    }
    sse_response(
        Pending::new(session.process.clone(), None, Some(session.key)),
        rx,
    )
}

async fn on_delete(State(bridge): State<Arc<Bridge>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = bridge.refusal(&headers) {
        return refusal;
    }
    let Some(id) = header_str(&headers, names::MCP_SESSION_ID) else {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            codes::INVALID_REQUEST,
            "no Mcp-Session-Id header",
        );
    };
    let Some(session) = lock(&bridge.sessions).remove(id) else {
        return session_not_found();
    };
    lock(&session.process.routes).close_session(session.key);
    if !bridge.shared {
        let grace = bridge.spawner.grace();
        tokio::spawn(async move { session.process.stop(grace).await });
    }
    StatusCode::NO_CONTENT.into_response()
}

/// One HTTP answer in the making; when it is dropped (answered, or its client left), the
/// child's routes forget it.
struct Pending {
    process: Arc<Process>,
    request: Option<i64>,
    listening: Option<SessionKey>,
}

impl Pending {
    fn new(process: Arc<Process>, request: Option<i64>, listening: Option<SessionKey>) -> Self {
        Self {
            process,
            request,
            listening,
        }
    }

    /// Waits for the final answer. A request answered with JSON cannot carry what comes
    /// before its answer: that goes to `session`'s stream (or its backlog).
    async fn last(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Outgoing>,
        session: SessionKey,
    ) -> Option<Value> {
        while let Some(out) = rx.recv().await {
            if out.last {
                return Some(out.message);
            }
            lock(&self.process.routes).deliver_to_session(session, out.message);
        }
        None
    }

    /// The child is gone (or the request was cancelled) before answering.
    fn gone(&self) -> Response {
        error(
            StatusCode::OK,
            None,
            codes::INTERNAL_ERROR,
            "the MCP server ended before answering",
        )
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut routes = lock(&self.process.routes);
        if let Some(id) = self.request {
            routes.forget(id);
        }
        if let Some(session) = self.listening {
            routes.unlisten(session);
        }
    }
}

async fn json_answer(
    pending: Pending,
    session: SessionKey,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) -> Response {
    match pending.last(&mut rx, session).await {
        Some(answer) => json_response(&answer, None),
        None => pending.gone(),
    }
}

fn sse_response(pending: Pending, rx: mpsc::UnboundedReceiver<Outgoing>) -> Response {
    let stream =
        futures::stream::unfold((pending, rx, false), |(pending, mut rx, done)| async move {
            if done {
                return None;
            }
            let out = rx.recv().await?;
            let event = SseEvent::message(&out.message.to_string()).encode();
            Some((Ok::<_, Infallible>(event), (pending, rx, out.last)))
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn json_response(message: &Value, session: Option<&str>) -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        message.to_string(),
    )
        .into_response();
    if let Some(id) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        response.headers_mut().insert(names::MCP_SESSION_ID, id);
    }
    response
}

fn error(status: StatusCode, id: Option<&Value>, code: i64, message: &str) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": code, "message": message},
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn mcp_error(e: &portcullis_mcp::Error) -> Response {
    (
        StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, "application/json")],
        e.to_response(None),
    )
        .into_response()
}

fn session_not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        None,
        -32001,
        "session not found: it ended, or its MCP server exited; initialize a new one",
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn is_local_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|u| {
        matches!(u.host(), Some(url::Host::Domain("localhost")))
            || matches!(u.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || matches!(u.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
    })
}

/// A new session id: 128 random bits, hex.
fn session_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listening_beyond_loopback_needs_a_token() {
        let settings = |listen: &str| BridgeSettings {
            listen: listen.parse().unwrap_or_else(|_| unreachable!()),
            shared: false,
            token: None,
            grace: Duration::from_secs(1),
            max_sessions: 10,
            guard: vec!["portcullis".into(), "child-guard".into()],
            command: ChildCommand {
                argv: vec!["true".into()],
                ..ChildCommand::default()
            },
        };
        let refused = start(settings("0.0.0.0:0"))
            .await
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            refused.as_deref(),
            Some(
                "listening on 0.0.0.0:0 (not loopback) requires a bearer token: set --token-env VAR"
            )
        );
        let mut no_command = settings("127.0.0.1:0");
        no_command.command.argv.clear();
        assert!(matches!(
            start(no_command).await,
            Err(BridgeError::NoCommand)
        ));
    }

    #[test]
    fn only_loopback_origins_pass_without_a_token() {
        assert!(is_local_origin("http://localhost:6274"));
        assert!(is_local_origin("http://127.0.0.1"));
        assert!(is_local_origin("http://[::1]:3000"));
        assert!(!is_local_origin("https://evil.example"));
        assert!(!is_local_origin("http://localhost.evil.example"));
        assert!(!is_local_origin("null"));
    }
}
