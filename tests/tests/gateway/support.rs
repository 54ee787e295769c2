//! Fixtures written straight into Postgres (as the control plane would), gateways started on
//! port 0, and small clients.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portcullis::{Config, Role, Running};
use portcullis_core::{GrantId, GrantToken, Invalidation, Keyring, PolicyId, ServerId, TenantId};
use portcullis_tests::{TestDatabase, TestRedis};
use redis::AsyncCommands as _;
use serde_json::{Value, json};

/// Postgres, Redis and the keys every gateway of a test shares.
pub struct Stack {
    pub db: TestDatabase,
    pub redis: TestRedis,
    pub credentials: Keyring,
    credentials_spec: String,
    pub session_keys: String,
}

/// A tenant, a server, a policy and a grant on it.
pub struct Fixture {
    pub tenant: TenantId,
    pub server: ServerId,
    pub policy: PolicyId,
    pub grant: GrantId,
    pub token: GrantToken,
}

impl Fixture {
    /// The per-grant URL on a gateway.
    pub fn url(&self, gateway: &impl Gateway) -> String {
        format!("http://{}/g/{}/mcp", gateway.addr(), self.token.expose())
    }
}

/// A running gateway: in this test process, or a process of its own.
pub trait Gateway {
    /// Where it listens.
    fn addr(&self) -> SocketAddr;
}

impl Gateway for Running {
    fn addr(&self) -> SocketAddr {
        self.gateway.expect("a gateway")
    }
}

/// `portcullis gateway` in a process of its own (the command itself, built with the tests),
/// stopped with SIGTERM by [`GatewayProcess::stop`], killed if dropped.
pub struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
}

impl Gateway for GatewayProcess {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl GatewayProcess {
    /// Its process id (for a test that signals it).
    #[allow(dead_code)] // Not every suite that shares this file signals a gateway.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it as an orchestrator would (SIGTERM: drain, then exit) and checks it exits 0.
    pub async fn stop(mut self) {
        let status = portcullis_tests::terminate(&mut self.child).await;
        assert!(status.success(), "{status}");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Stack {
    pub async fn new() -> Self {
        let (credentials, credentials_spec) = Keyring::generate(1);
        Self {
            db: TestDatabase::new().await,
            redis: TestRedis::new().await,
            credentials,
            credentials_spec,
            session_keys: Keyring::generate(7).1,
        }
    }

    pub fn config(&self, redis_url: &str, extra: &[&str]) -> Config {
        self.config_on(&self.db.url(), redis_url, extra)
    }

    /// [`Stack::config`] with the database reached at `database_url` (through a proxy, say).
    pub fn config_on(&self, database_url: &str, redis_url: &str, extra: &[&str]) -> Config {
        Config::from_flags(self.flags(database_url, redis_url, extra)).unwrap()
    }

    /// The command-line flags of a service of this stack.
    fn flags(&self, database_url: &str, redis_url: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--database-url",
            database_url,
            "--redis-url",
            redis_url,
            "--redis-prefix",
            self.redis.prefix(),
            "--gateway-addr",
            "127.0.0.1:0",
            "--control-plane-addr",
            "127.0.0.1:0",
            "--encryption-keys",
            &self.credentials_spec,
            "--shutdown-grace",
            "1s",
            "--log",
            "warn",
            // The tests' upstreams and webhook receivers listen on loopback.
            "--upstream-allow",
            "127.0.0.0/8,::1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(
            portcullis_tests::redis_flags(redis_url)
                .iter()
                .map(|f| f.to_string()),
        );
        // The stack's session keys, unless the test brings a ring of its own.
        if !extra.contains(&"--session-keys") {
            args.extend(["--session-keys".to_owned(), self.session_keys.clone()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `portcullis gateway` as a process of its own, on port 0; `extra` flags are added.
    pub async fn gateway_process(&self, extra: &[&str]) -> GatewayProcess {
        self.gateway_process_with_env(extra, &[]).await
    }

    /// [`Stack::gateway_process`] with `env` added to its environment.
    pub async fn gateway_process_with_env(
        &self,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let flags = self.flags(&self.db.url(), &portcullis_tests::redis_url(), extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-e2e"))
            .arg("gateway")
            .args(flags)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Read to the end (what it prints later must not meet a closed pipe), handing over
        // the line with its address.
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (found, address) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in stdout.lines().map_while(Result::ok) {
                if line.starts_with("gateway:")
                    && let Some(found) = found.take()
                {
                    let _ = found.send(line);
                }
            }
        });
        let line = tokio::time::timeout(Duration::from_secs(30), address)
            .await
            .expect("the gateway process did not start within 30 s")
            .expect("the gateway process exited without printing its address");
        let addr = line
            .trim_start_matches("gateway:")
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        GatewayProcess { child, addr }
    }

    /// A gateway (in this test process) on port 0.
    pub async fn gateway(&self) -> Running {
        self.gateway_with(&portcullis_tests::redis_url(), &[]).await
    }

    pub async fn gateway_with(&self, redis_url: &str, extra: &[&str]) -> Running {
        portcullis::start(&self.config(redis_url, extra), Role::Gateway)
            .await
            .unwrap()
    }

    /// Tenant, server (with sealed static headers), policy version 1 and a grant.
    pub async fn fixture(&self, url: &str, transport: &str, policy: Value) -> Fixture {
        let pool = self.db.pool();
        let tenant = TenantId::new();
        sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
            .bind(tenant.0)
            .bind(format!("tenant {tenant}"))
            .execute(pool)
            .await
            .unwrap();
        let server = ServerId::new();
        let headers = json!({"x-upstream-key": "upstream-secret"}).to_string();
        let sealed = self.credentials.seal(
            headers.as_bytes(),
            &portcullis_core::crypto::server_headers_context(tenant, server),
        );
        sqlx::query(
            "INSERT INTO servers (id, tenant_id, name, url, transport, headers_enc, headers_key_id, header_names)
             VALUES ($1, $2, 'upstream', $3, $4, $5, 1, '{x-upstream-key}')",
        )
        .bind(server.0)
        .bind(tenant.0)
        .bind(url)
        .bind(transport)
        .bind(sealed)
        .execute(pool)
        .await
        .unwrap();
        let policy_id = PolicyId::new();
        sqlx::query(
            "INSERT INTO policies (id, tenant_id, server_id, name, current_version) VALUES ($1, $2, $3, 'p', 1)",
        )
        .bind(policy_id.0)
        .bind(tenant.0)
        .bind(server.0)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO policy_versions (tenant_id, policy_id, version, document) VALUES ($1, $2, 1, $3)",
        )
        .bind(tenant.0)
        .bind(policy_id.0)
        .bind(&policy)
        .execute(pool)
        .await
        .unwrap();
        let (grant, token) = self.grant(tenant, server, policy_id, "agent-1").await;
        Fixture {
            tenant,
            server,
            policy: policy_id,
            grant,
            token,
        }
    }

    /// Another grant on an existing server and policy.
    pub async fn grant(
        &self,
        tenant: TenantId,
        server: ServerId,
        policy: PolicyId,
        identity: &str,
    ) -> (GrantId, GrantToken) {
        let grant = GrantId::new();
        let token = GrantToken::generate();
        sqlx::query(
            "INSERT INTO grants (id, tenant_id, server_id, policy_id, identity, token_hash, token_hint)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(grant.0)
        .bind(tenant.0)
        .bind(server.0)
        .bind(policy.0)
        .bind(identity)
        .bind(token.hash().as_bytes())
        .bind(token.hint())
        .execute(self.db.pool())
        .await
        .unwrap();
        (grant, token)
    }

    /// A discovered tool (as the control plane's discovery would store it).
    pub async fn tool(&self, f: &Fixture, name: &str, category: &str, input_schema: Value) {
        let definition = json!({"name": name, "inputSchema": input_schema});
        let hash = portcullis_core::canonical::digest(&definition);
        sqlx::query(
            "INSERT INTO tools (id, tenant_id, server_id, name, definition, definition_hash, approved_hash,
                                risk_category, risk_level)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, 'low')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(f.tenant.0)
        .bind(f.server.0)
        .bind(name)
        .bind(&definition)
        .bind(&hash)
        .bind(category)
        .execute(self.db.pool())
        .await
        .unwrap();
    }

    /// The names of this stack's Redis keys and channels.
    fn keys(&self) -> portcullis_core::redis_keys::RedisKeys {
        self.redis.redis_keys()
    }

    /// Announces a change, as the control plane does.
    pub async fn publish(&self, message: &Invalidation) {
        let mut conn = self.redis.conn();
        let channel = self.keys().invalidation_channel();
        let _: i64 = conn.publish(channel, message.to_json()).await.unwrap();
    }

    /// Waits until `gateways` gateways listen for announcements: each clears its caches once
    /// subscribed, so a test that needs a cached grant to stay cached warms it after this.
    pub async fn subscribed(&self, gateways: usize) {
        self.redis.subscribed(gateways).await;
    }

    /// The audit entries written so far (both halves of each event).
    pub async fn audit(&self) -> Vec<Value> {
        let mut conn = self.redis.conn();
        let mut events = Vec::new();
        for key in self.keys().audit_streams() {
            let entries: redis::streams::StreamRangeReply = conn.xrange_all(&key).await.unwrap();
            events.extend(decode_entries(&entries));
        }
        events
    }

    /// Waits until the audit holds an entry matching `pred`.
    pub async fn audit_until(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        for _ in 0..100 {
            let entries = self.audit().await;
            if entries.iter().any(&pred) {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no matching audit entry in {:#?}", self.audit().await);
    }
}

/// The audit events of stream entries (an entry holds one event, or a batch of them).
fn decode_entries(entries: &redis::streams::StreamRangeReply) -> Vec<Value> {
    let mut events = Vec::new();
    for entry in &entries.ids {
        if let Some(json) = entry.get::<String>("event") {
            events.push(serde_json::from_str(&json).unwrap());
        } else if let Some(json) = entry.get::<String>("events") {
            let batch: Vec<Value> = serde_json::from_str(&json).unwrap();
            events.extend(batch);
        }
    }
    events
}

/// A raw JSON-RPC POST; returns status, headers and body text.
pub async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::Client::new();
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_owned());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// The JSON-RPC message of a body that is JSON or an SSE stream (the last message in it).
pub fn message(body: &str) -> Value {
    if body.trim_start().starts_with('{') {
        return serde_json::from_str(body).unwrap();
    }
    body.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .unwrap_or_else(|| panic!("no JSON-RPC message in {body:?}"))
}

/// Session-era initialize body.
pub fn initialize(id: i64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "1"}}})
    .to_string()
}

/// A `tools/call` body.
pub fn call(id: i64, name: &str, args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": name, "arguments": args}})
    .to_string()
}

/// A stateless-era (2026-07-28) `tools/call` body, with the `_meta` servers require.
pub fn stateless_call(id: i64, name: &str, args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
    "name": name, "arguments": args,
    "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    }}})
    .to_string()
}

/// POSTs a stateless-era `tools/call` with its mirrored headers.
pub async fn post_stateless(
    url: &str,
    extra: &[(&str, &str)],
    id: i64,
    name: &str,
    args: Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut headers = vec![
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", name),
    ];
    headers.extend_from_slice(extra);
    post(url, &headers, &stateless_call(id, name, args)).await
}

/// A stateless `tools/call` of `name` with `{"text": "hi"}` from a client that gives up after
/// `limit` (and closes its connection).
pub async fn give_up_after(
    limit: Duration,
    url: &str,
    id: i64,
    name: &str,
) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(url)
        .timeout(limit)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", name)
        .body(stateless_call(id, name, json!({"text": "hi"})))
        .send()
        .await
}

/// Opens a session's server→client stream (GET) in the 2025-11-25 era.
pub async fn open_stream(url: &str, session: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap()
}

/// Opens a session-era session through the gateway; returns the session id the client sees.
pub async fn open_session(url: &str) -> String {
    let (status, headers, body) = post(url, &[], &initialize(1)).await;
    assert_eq!(status, 200, "{body}");
    let session = headers
        .get("mcp-session-id")
        .unwrap_or_else(|| panic!("no session id: {body}"))
        .to_str()
        .unwrap()
        .to_owned();
    let (status, _, body) = post(
        url,
        &[
            ("mcp-session-id", &session),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    session
}

/// The text of a tool result.
pub fn text(result: &Value) -> String {
    result["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub use portcullis_tests::sse::SseMessages;
