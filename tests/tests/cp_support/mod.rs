//! What the control-plane tests share: a running stack on fresh Postgres and Redis (its mail
//! written to a folder of its own), an API client, a real MCP upstream (rmcp, in process) whose
//! tool list the test can change, a legacy HTTP+SSE upstream (the Python SDK), and a local
//! webhook receiver.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod oidc;

use portcullis::{Config, Role, Running};
use portcullis_tests::{Mailbox, TestDatabase, TestRedis};
use reqwest::Method;
use serde_json::{Value, json};

/// A control plane (and optionally the gateway) on fresh Postgres and Redis, its mail written
/// to `mail` (unless the test names another `--mail-transport`).
pub struct Stack {
    pub app: Running,
    pub base: String,
    pub gateway: Option<String>,
    pub http: reqwest::Client,
    pub redis: TestRedis,
    pub db: TestDatabase,
    pub mail: Mailbox,
}

impl Stack {
    /// Starts the control plane alone.
    pub async fn start() -> Self {
        Self::start_with(Role::ControlPlane, &[]).await
    }

    /// Starts `role` with extra flags.
    pub async fn start_with(role: Role, extra: &[&str]) -> Self {
        let db = TestDatabase::new().await;
        let redis = TestRedis::new().await;
        let mail = Mailbox::new();
        let transport = mail.transport();
        let mut flags = Vec::new();
        if !extra.contains(&"--mail-transport") {
            flags.extend(["--mail-transport", transport.as_str()]);
        }
        flags.extend_from_slice(extra);
        let app = start_app(&db, &redis, role, &flags).await;
        let base = format!("http://{}", app.control_plane.unwrap());
        let gateway = app.gateway.map(|a| format!("http://{a}"));
        Self {
            app,
            base,
            gateway,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            redis,
            db,
            mail,
        }
    }

    /// Signs up a new organisation and confirms it through the mailed link; returns its API
    /// client (admin token).
    pub async fn signup(&self, email: &str, organization: &str) -> Api {
        let body = portcullis_tests::signup(
            &self.http,
            &self.base,
            &self.mail,
            (email, "correct horse battery", organization),
        )
        .await;
        Api {
            base: self.base.clone(),
            http: self.http.clone(),
            token: body["api_token"].as_str().unwrap().to_owned(),
            tenant_id: body["tenant_id"].as_str().unwrap().to_owned(),
            user_id: body["user_id"].as_str().unwrap().to_owned(),
        }
    }
}

/// Starts the services with the test's database and Redis prefix.
pub async fn start_app(
    db: &TestDatabase,
    redis: &TestRedis,
    role: Role,
    extra: &[&str],
) -> Running {
    start_app_with_keys(db, redis, role, extra, &portcullis_tests::encryption_keys()).await
}

/// Like [`start_app`], with the credential key ring given.
pub async fn start_app_with_keys(
    db: &TestDatabase,
    redis: &TestRedis,
    role: Role,
    extra: &[&str],
    keys: &str,
) -> Running {
    let session_keys = portcullis_core::Keyring::generate(2).1;
    let db_url = db.url();
    let redis_url = portcullis_tests::redis_url();
    // A test that needs the dashboard's own URL (a provider's redirect URI) names its address.
    let address = if extra.contains(&"--control-plane-addr") {
        &[][..]
    } else {
        &["--control-plane-addr", "127.0.0.1:0"][..]
    };
    let mut args = vec![
        "--database-url",
        &db_url,
        "--redis-url",
        &redis_url,
        "--redis-prefix",
        redis.prefix(),
        "--gateway-addr",
        "127.0.0.1:0",
        "--shutdown-grace",
        "2s",
        "--encryption-keys",
        keys,
        "--session-keys",
        &session_keys,
        "--cookie-key",
        "test-cookie-key-of-at-least-thirty-two-characters",
        "--approval-sweep-interval",
        "200ms",
        "--audit-claim-idle",
        "2s",
        // The tests' upstreams and webhook receivers listen on loopback.
        "--upstream-allow",
        "127.0.0.0/8,::1",
    ];
    args.extend_from_slice(address);
    args.extend_from_slice(portcullis_tests::redis_flags(&redis_url));
    args.extend_from_slice(extra);
    let config = Config::from_flags(args).unwrap();
    portcullis::start(&config, role).await.unwrap()
}

/// A caller of `/api/v1` with an API token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
    pub tenant_id: String,
    pub user_id: String,
}

impl Api {
    /// The same caller with another token.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// Any call; answers the status and the JSON body (or `Value::String` of a non-JSON body).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// A call that must succeed with `status`.
    pub async fn expect(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let (got, value) = self.call(method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {value}");
        value
    }

    /// Makes a token of `role` in this tenant.
    pub async fn token_of(&self, role: &str) -> Api {
        let v = self
            .expect(
                "POST",
                "/api/v1/tokens",
                Some(json!({ "name": format!("{role}-token"), "role": role })),
                201,
            )
            .await;
        self.with_token(v["token"].as_str().unwrap())
    }
}

/// Tool definitions of the test upstream: one of each risk category.
pub fn sample_tools() -> Vec<Value> {
    vec![
        json!({ "name": "list_messages", "description": "List recent messages in the inbox.",
                "inputSchema": { "type": "object", "properties": { "limit": { "type": "integer" } } },
                "annotations": { "readOnlyHint": true } }),
        json!({ "name": "send_message", "description": "Send an SMS message to a phone number. Incurs per-message charges.",
                "inputSchema": { "type": "object", "properties": { "to": { "type": "string" }, "body": { "type": "string" } }, "required": ["to", "body"] } }),
        json!({ "name": "update_contact", "description": "Update a contact's name and notes.",
                "inputSchema": { "type": "object", "properties": { "id": { "type": "string" }, "name": { "type": "string" } } } }),
        json!({ "name": "delete_message", "description": "Permanently delete a message.",
                "inputSchema": { "type": "object", "properties": { "id": { "type": "string" } } },
                "annotations": { "destructiveHint": true } }),
        json!({ "name": "create_payment", "description": "Charge a customer's card and create a payment.",
                "inputSchema": { "type": "object", "properties": { "amount": { "type": "number" }, "currency": { "type": "string" } } } }),
    ]
}

/// An rmcp server whose tools come from a shared list, served two per page.
#[derive(Clone)]
struct DynamicServer {
    tools: Arc<Mutex<Vec<Value>>>,
}

impl rmcp::ServerHandler for DynamicServer {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_tools()
                .build(),
        )
    }

    async fn list_tools(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        _: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let tools = self.tools.lock().unwrap().clone();
        let start: usize = request
            .and_then(|r| r.cursor)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let end = (start + 2).min(tools.len());
        let next = (end < tools.len()).then(|| end.to_string());
        Ok(serde_json::from_value(
            json!({ "tools": tools[start.min(end)..end], "nextCursor": next }),
        )
        .unwrap())
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        _: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let text = format!("called {} with {}", request.name, json!(request.arguments));
        let result: rmcp::model::CallToolResult = serde_json::from_value(
            json!({ "content": [{ "type": "text", "text": text }], "isError": false }),
        )
        .unwrap();
        Ok(result.into())
    }
}

/// A real MCP server (rmcp, Streamable HTTP) on 127.0.0.1 that requires `x-api-key: <key>`.
pub struct Upstream {
    pub url: String,
    pub tools: Arc<Mutex<Vec<Value>>>,
    pub seen_keys: Arc<Mutex<Vec<String>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Upstream {
    pub async fn start(api_key: &'static str) -> Self {
        Self::start_on(api_key, "127.0.0.1").await
    }

    /// Like [`Upstream::start`], on another loopback address (`127.0.0.2`, say).
    pub async fn start_on(api_key: &'static str, ip: &str) -> Self {
        use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
        use rmcp::transport::streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService,
        };
        let tools = Arc::new(Mutex::new(sample_tools()));
        let seen_keys = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let server = DynamicServer {
            tools: tools.clone(),
        };
        let service = StreamableHttpService::new(
            move || Ok(server.clone()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default()
                .with_cancellation_token(stop.child_token())
                .with_allowed_hosts([ip]),
        );
        let seen = seen_keys.clone();
        let router =
            axum::Router::new()
                .nest_service("/mcp", service)
                .layer(axum::middleware::from_fn(
                    move |req: axum::extract::Request, next: axum::middleware::Next| {
                        let seen = seen.clone();
                        async move {
                            let key = req
                                .headers()
                                .get("x-api-key")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            seen.lock().unwrap().push(key.clone());
                            if key != api_key {
                                return axum::response::IntoResponse::into_response((
                                    axum::http::StatusCode::UNAUTHORIZED,
                                    "missing or wrong x-api-key",
                                ));
                            }
                            next.run(req).await
                        }
                    },
                ));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Self {
            url: format!("http://{addr}/mcp"),
            tools,
            seen_keys,
            stop,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The Python SDK's MCPServer on the legacy HTTP+SSE transport (GET /sse, POST /messages/).
pub struct LegacyUpstream {
    pub url: String,
    child: std::process::Child,
}

impl LegacyUpstream {
    /// `None` when the test peers are not installed (run deploy/local/test once).
    pub async fn start() -> Option<Self> {
        let python = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/.venv/bin/python");
        if !std::path::Path::new(python).exists() {
            eprintln!("skipping the legacy SSE upstream: {python} is missing");
            return None;
        }
        let port = free_port();
        let script = format!(
            r#"
from mcp.server import MCPServer
app = MCPServer("legacy-notes")

@app.tool()
def read_note(name: str) -> str:
    """Read a note by name."""
    return "note " + name

@app.tool()
def delete_note(name: str) -> str:
    """Delete a note permanently."""
    return "deleted " + name

app.run(transport="sse", host="127.0.0.1", port={port})
"#
        );
        let child = std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let upstream = Self {
            url: format!("http://127.0.0.1:{port}/sse"),
            child,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(upstream);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the legacy SSE upstream did not start");
    }
}

impl Drop for LegacyUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `application/x-www-form-urlencoded` body, as a browser sends a form.
pub fn form(request: reqwest::RequestBuilder, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                other => format!("%{other:02X}"),
            })
            .collect()
    }
    let body = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    request
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Records every webhook request it receives.
pub struct WebhookReceiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<(axum::http::HeaderMap, axum::body::Bytes)>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let store = store.clone();
                    async move {
                        store.lock().unwrap().push((headers, body));
                        "ok"
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            received,
            stop,
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits until `check` holds, polling every 50 ms, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An audit event as a gateway would emit it.
pub fn audit_event(
    tenant: &str,
    server: &str,
    grant: &str,
    identity: &str,
    tool: &str,
    decision: &str,
    rule: Option<&str>,
) -> Value {
    json!({
        "id": uuid::Uuid::now_v7(),
        "ts": chrono::Utc::now(),
        "tenant_id": tenant,
        "grant_id": grant,
        "identity": identity,
        "server_id": server,
        "method": "tools/call",
        "tool": tool,
        "decision": decision,
        "rule": rule,
        "message": format!("{decision} by policy"),
        "policy_id": null,
        "policy_version": 1,
        "protocol": "2025-11-25",
        "session": null,
        "request_id": null,
        "arg_keys": ["to"],
        "arg_digest": null,
        "arguments": null,
        "outcome": null,
    })
}

/// XADDs events to the audit streams, as gateways do (to their tenants' shards).
pub async fn push_events(redis: &TestRedis, events: &[Value]) {
    let keys = redis.redis_keys();
    let mut conn = redis.conn();
    for chunk in events.chunks(500) {
        // One pipeline per stream: on a cluster each stream is on its own node.
        let mut pipes: std::collections::BTreeMap<String, redis::Pipeline> = Default::default();
        for e in chunk {
            let tenant: portcullis_core::TenantId = serde_json::from_value(e["tenant_id"].clone())
                .unwrap_or_else(|_| portcullis_core::TenantId::new());
            pipes
                .entry(keys.audit_stream(keys.shard(tenant)))
                .or_insert_with(redis::pipe)
                .cmd("XADD")
                .arg(keys.audit_stream(keys.shard(tenant)))
                .arg("*")
                .arg(portcullis_core::audit::stream::FIELD)
                .arg(e.to_string())
                .ignore();
        }
        for pipe in pipes.values() {
            let _: () = pipe.query_async(&mut conn).await.unwrap();
        }
    }
}
