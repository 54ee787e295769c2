//! Identity-bound access end to end: identity providers and policy bindings in the control
//! plane's API, and the gateway verifying tokens of a real OpenID provider (panva's
//! `oidc-provider`, `tests/peers/oidc_provider.mjs`) on `/mcp/{server_id}`, with real MCP
//! clients (rmcp and the Python SDK). Refused tokens that no provider would issue are made
//! here with `jsonwebtoken`, as an attacker would make them.

#![allow(clippy::unwrap_used)]

mod cp_support;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cp_support::{Api, Upstream, eventually};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::{Config, Role, Running};
use portcullis_tests::peers::{free_port, peers_dir};
use portcullis_tests::{TestDatabase, TestRedis};
use rmcp::ServiceExt as _;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

/// The OpenID provider: `oidc-provider` on 127.0.0.1, killed when dropped.
struct Idp {
    child: Option<Child>,
    port: u16,
    jwks: PathBuf,
    clients: String,
}

/// The client-credentials clients of the tests: identity (email) and groups of each.
fn clients() -> String {
    json!([
        { "client_id": "agent-a", "client_secret": "agent-a-secret",
          "claims": { "email": "a@example.com", "groups": ["eng"] } },
        { "client_id": "agent-b", "client_secret": "agent-b-secret",
          "claims": { "email": "b@example.com", "groups": ["ops"] } },
        { "client_id": "agent-c", "client_secret": "agent-c-secret",
          "claims": { "email": "c@example.com", "groups": ["sales"] } },
    ])
    .to_string()
}

impl Idp {
    fn start() -> Self {
        let jwks =
            std::env::temp_dir().join(format!("portcullis-idp-{}.json", uuid::Uuid::now_v7()));
        let mut idp = Self {
            child: None,
            port: free_port(),
            jwks,
            clients: clients(),
        };
        idp.run(false);
        idp
    }

    fn run(&mut self, rotate: bool) {
        let dir = peers_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is missing: run deploy/local/test once to install the test peers"
        );
        let mut child = Command::new("node")
            .current_dir(&dir)
            .arg("--require")
            .arg(dir.join("loopback.cjs"))
            .arg(dir.join("oidc_provider.mjs"))
            .env("PORT", self.port.to_string())
            .env("JWKS_FILE", &self.jwks)
            .env("CLIENTS", &self.clients)
            .env("ROTATE", if rotate { "1" } else { "0" })
            .env("DASHBOARD_REDIRECT_URI", "http://127.0.0.1:1/auth/callback")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start node");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let listening = stdout
            .lines()
            .map_while(Result::ok)
            .any(|line| line.starts_with("listening "));
        assert!(listening, "the OpenID provider exited before listening");
        self.child = Some(child);
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it (the provider is down).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with a new signing key when `rotate`.
    fn restart(&mut self, rotate: bool) {
        self.stop();
        self.run(rotate);
    }

    /// An access token of `client` for `resource` (client-credentials grant).
    async fn token(&self, client: &str, resource: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/token", self.issuer()))
            .basic_auth(client, Some(format!("{client}-secret")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&resource={}",
                form_encoded(resource)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// The current signing key's id.
    fn kid(&self) -> String {
        let jwks: Value = serde_json::from_slice(&std::fs::read(&self.jwks).unwrap()).unwrap();
        jwks["keys"][0]["kid"].as_str().unwrap().to_owned()
    }

    /// The current signing key, private (PKCS#8 PEM).
    fn private_pem(&self) -> Vec<u8> {
        std::fs::read(format!("{}.pem", self.jwks.display())).unwrap()
    }

    /// The current signing key's public half (SPKI PEM), as anyone can read it in the JWKS.
    fn public_pem(&self) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(format!("{}.pem", self.jwks.display()))
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }
}

/// `text` as an `application/x-www-form-urlencoded` value.
fn form_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.jwks);
        let _ = std::fs::remove_file(format!("{}.pem", self.jwks.display()));
    }
}

/// The control plane and the gateway on fresh Postgres and Redis, the gateway on a port known
/// in advance so that its public URL (and so each server's resource URL) is right.
struct World {
    app: Running,
    base: String,
    gateway: String,
    api: Api,
    _db: TestDatabase,
    _redis: TestRedis,
}

async fn world() -> World {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let port = free_port();
    let gateway = format!("http://127.0.0.1:{port}");
    let gateway_addr = format!("127.0.0.1:{port}");
    let keys = portcullis_tests::encryption_keys();
    let session_keys = portcullis_core::Keyring::generate(2).1;
    let (db_url, redis_url) = (db.url(), portcullis_tests::redis_url());
    let mut args = vec![
        "--database-url",
        &db_url,
        "--redis-url",
        &redis_url,
        "--redis-prefix",
        redis.prefix(),
        "--control-plane-addr",
        "127.0.0.1:0",
        "--gateway-addr",
        &gateway_addr,
        "--public-gateway-url",
        &gateway,
        "--shutdown-grace",
        "2s",
        "--encryption-keys",
        &keys,
        "--session-keys",
        &session_keys,
        "--cookie-key",
        "test-cookie-key-of-at-least-thirty-two-characters",
        "--audit-claim-idle",
        "2s",
        "--upstream-allow",
        "127.0.0.0/8,::1",
        "--jwt-leeway",
        "5s",
        "--jwks-refetch-interval",
        "1s",
    ];
    args.extend_from_slice(portcullis_tests::redis_flags(&redis_url));
    let config = Config::from_flags(args).unwrap();
    let app = portcullis::start(&config, Role::Both).await.unwrap();
    let base = format!("http://{}", app.control_plane.unwrap());
    let http = reqwest::Client::new();
    let api = signup(&http, &base, "owner@example.com", "Acme").await;
    World {
        app,
        base,
        gateway,
        api,
        _db: db,
        _redis: redis,
    }
}

async fn signup(http: &reqwest::Client, base: &str, email: &str, organization: &str) -> Api {
    let resp = http
        .post(format!("{base}/api/v1/signup"))
        .json(&json!({ "email": email, "password": "correct horse battery", "organization": organization }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    Api {
        base: base.to_owned(),
        http: http.clone(),
        token: body["api_token"].as_str().unwrap().to_owned(),
        tenant_id: body["tenant_id"].as_str().unwrap().to_owned(),
        user_id: body["user_id"].as_str().unwrap().to_owned(),
    }
}

/// A server on `upstream` with its tools discovered; its id.
async fn server(api: &Api, upstream: &Upstream, name: &str) -> String {
    let server = api
        .expect(
            "POST",
            "/api/v1/servers",
            Some(json!({ "name": name, "url": upstream.url, "headers": { "x-api-key": "k" } })),
            201,
        )
        .await;
    let id = server["id"].as_str().unwrap().to_owned();
    api.expect("POST", &format!("/api/v1/servers/{id}/discover"), None, 200)
        .await;
    id
}

async fn policy(api: &Api, server: &str, name: &str, document: Value) -> String {
    let created = api
        .expect(
            "POST",
            &format!("/api/v1/servers/{server}/policies"),
            Some(json!({ "name": name, "document": document })),
            201,
        )
        .await;
    created["id"].as_str().unwrap().to_owned()
}

/// Allows every tool but `hide`, 5 calls a minute per identity; a payment needs an approval.
fn five_a_minute(hide: &[&str]) -> Value {
    json!({
        "version": "1", "default": "allow", "hide": hide,
        "tools": { "create_payment": { "approval": {} } },
        "all_tools": { "limits": [{ "counter": "calls", "window": "minute", "max": 5, "scope": "identity" }] },
    })
}

#[tokio::test]
async fn providers_and_bindings_have_a_checked_api() {
    let w = world().await;
    let api = &w.api;
    let upstream = Upstream::start("k").await;
    let srv = server(api, &upstream, "crm").await;
    let other_srv = server(api, &upstream, "other").await;
    let p = policy(api, &srv, "p", five_a_minute(&[])).await;
    let other_p = policy(api, &other_srv, "q", five_a_minute(&[])).await;

    // Providers: created, listed, read, replaced, deleted; mistakes located by pointer.
    let provider = api
        .expect(
            "POST",
            "/api/v1/identity-providers",
            Some(
                json!({ "issuer": "http://127.0.0.1:9", "audience": format!("{}/", w.gateway),
                         "identity_claim": "email", "groups_claim": "groups" }),
            ),
            201,
        )
        .await;
    assert_eq!(provider["issuer"], "http://127.0.0.1:9");
    assert_eq!(provider["audience"], w.gateway.as_str());
    assert_eq!(provider["identity_claim"], "email");
    let id = provider["id"].as_str().unwrap();
    let listed = api
        .expect("GET", "/api/v1/identity-providers", None, 200)
        .await;
    assert_eq!(listed["identity_providers"][0]["id"], id);
    let (status, errors) = api
        .post(
            "/api/v1/identity-providers",
            json!({ "issuer": "http://169.254.169.254/x", "audience": "nope", "identity_claim": "name" }),
        )
        .await;
    assert_eq!(status, 422, "{errors}");
    let pointers: Vec<&str> = errors["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/issuer", "/audience", "/identity_claim"]);
    let (status, _) = api
        .post(
            "/api/v1/identity-providers",
            json!({ "issuer": "http://127.0.0.1:9", "audience": w.gateway }),
        )
        .await;
    assert_eq!(status, 409);
    let replaced = api
        .expect(
            "PUT",
            &format!("/api/v1/identity-providers/{id}"),
            Some(json!({ "issuer": "http://127.0.0.1:10", "audience": w.gateway })),
            200,
        )
        .await;
    assert_eq!(replaced["identity_claim"], "sub");
    assert_eq!(replaced["groups_claim"], Value::Null);
    let viewer = api.token_of("viewer").await;
    let (status, _) = viewer
        .call("DELETE", &format!("/api/v1/identity-providers/{id}"), None)
        .await;
    assert_eq!(status, 403);
    viewer
        .expect(
            "GET",
            &format!("/api/v1/identity-providers/{id}"),
            None,
            200,
        )
        .await;

    // Bindings: one per server and subject, to a policy of that server.
    let binding = api
        .expect(
            "POST",
            "/api/v1/bindings",
            Some(json!({ "server_id": srv, "policy_id": p, "identity": "a@example.com" })),
            201,
        )
        .await;
    assert_eq!(binding["identity"], "a@example.com");
    assert_eq!(binding["group"], Value::Null);
    assert_eq!(binding["policy_name"], "p");
    let everyone = api
        .expect(
            "POST",
            "/api/v1/bindings",
            Some(json!({ "server_id": srv, "policy_id": p })),
            201,
        )
        .await;
    assert_eq!(everyone["identity"], Value::Null);
    let (status, _) = api
        .post(
            "/api/v1/bindings",
            json!({ "server_id": srv, "policy_id": p, "identity": "" }),
        )
        .await;
    assert_eq!(status, 409, "a second binding for every identity");
    let (status, errors) = api
        .post(
            "/api/v1/bindings",
            json!({ "server_id": srv, "policy_id": p, "identity": "x", "group": "y" }),
        )
        .await;
    assert_eq!(
        (status, errors["errors"][0]["pointer"].as_str()),
        (422, Some("/group"))
    );
    let (status, errors) = api
        .post(
            "/api/v1/bindings",
            json!({ "server_id": srv, "policy_id": other_p, "group": "eng" }),
        )
        .await;
    assert_eq!(
        (status, errors["errors"][0]["pointer"].as_str()),
        (422, Some("/policy_id"))
    );
    let bid = binding["id"].as_str().unwrap();
    let moved = api
        .expect(
            "PUT",
            &format!("/api/v1/bindings/{bid}"),
            Some(json!({ "server_id": other_srv, "policy_id": other_p, "group": "eng" })),
            200,
        )
        .await;
    assert_eq!(
        (moved["group"].as_str(), moved["identity"].as_str()),
        (Some("eng"), None)
    );
    let listed = api
        .expect(
            "GET",
            &format!("/api/v1/bindings?server_id={other_srv}"),
            None,
            200,
        )
        .await;
    assert_eq!(listed["bindings"].as_array().unwrap().len(), 1);
    // A policy a binding names cannot be deleted.
    let (status, _) = api
        .call("DELETE", &format!("/api/v1/policies/{other_p}"), None)
        .await;
    assert_eq!(status, 409);

    // Another tenant sees none of it.
    let stranger = signup(&api.http, &w.base, "other@example.com", "Other").await;
    let (status, _) = stranger.get(&format!("/api/v1/bindings/{bid}")).await;
    assert_eq!(status, 404);
    let (status, _) = stranger
        .get(&format!("/api/v1/identity-providers/{id}"))
        .await;
    assert_eq!(status, 404);
    let (status, _) = stranger
        .post(
            "/api/v1/bindings",
            json!({ "server_id": srv, "policy_id": p }),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        stranger.expect("GET", "/api/v1/bindings", None, 200).await["bindings"],
        json!([])
    );

    api.expect("DELETE", &format!("/api/v1/bindings/{bid}"), None, 204)
        .await;
    api.expect(
        "DELETE",
        &format!("/api/v1/identity-providers/{id}"),
        None,
        204,
    )
    .await;
    let admin_audit = api.expect("GET", "/api/v1/admin-audit", None, 200).await;
    let actions: Vec<&str> = admin_audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "identity_provider.create",
        "identity_provider.update",
        "identity_provider.delete",
        "binding.create",
        "binding.update",
        "binding.delete",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }

    // The OpenAPI document describes the routes.
    let doc = api.expect("GET", "/api/v1/openapi.json", None, 200).await;
    for path in ["/api/v1/identity-providers/{id}", "/api/v1/bindings/{id}"] {
        assert!(doc["paths"][path]["put"].is_object(), "{path}");
    }
    w.app.stop().await.unwrap();
}

// ---- the gateway ----

fn call(name: &str) -> rmcp::model::CallToolRequestParams {
    rmcp::model::CallToolRequestParams::new(name.to_owned()).with_arguments(Default::default())
}

fn decision_of(result: &rmcp::model::CallToolResult) -> Value {
    serde_json::to_value(result).unwrap()["_meta"]["portcullis/decision"]["decision"].clone()
}

/// An rmcp client on `url` presenting `token`.
async fn rmcp_client(
    url: &str,
    token: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    let config =
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    ().serve(transport).await.unwrap()
}

async fn tool_names(client: &rmcp::service::RunningService<rmcp::RoleClient, ()>) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

/// POSTs `initialize` to `url` with `token`: the status, `WWW-Authenticate` and body.
async fn initialize(url: &str, token: &str) -> (u16, String, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    (
        status,
        challenge,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn b64(value: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The claims a provider would issue for `email` on `resource`.
fn claims(issuer: &str, resource: &str, email: &str, exp: i64) -> Value {
    json!({ "iss": issuer, "aud": resource, "sub": "agent-x", "email": email,
            "groups": ["eng"], "jti": uuid::Uuid::now_v7().to_string(), "iat": now() - 30, "exp": exp })
}

/// A tenant with the provider, a server on `upstream`, and two policies bound: `a@example.com`
/// by identity to one that hides nothing, the `ops` group to one that hides `delete_message`;
/// both allow 5 calls a minute per identity.
struct Bound {
    server: String,
    url: String,
    resource: String,
}

async fn bind(w: &World, idp: &Idp, upstream: &Upstream) -> Bound {
    let api = &w.api;
    let server = server(api, upstream, "crm").await;
    let p_a = policy(api, &server, "for-a", five_a_minute(&[])).await;
    let p_b = policy(api, &server, "for-ops", five_a_minute(&["delete_message"])).await;
    api.expect(
        "POST",
        "/api/v1/identity-providers",
        Some(json!({ "issuer": idp.issuer(), "audience": w.gateway,
                     "identity_claim": "email", "groups_claim": "groups" })),
        201,
    )
    .await;
    for binding in [
        json!({ "server_id": server, "policy_id": p_a, "identity": "a@example.com" }),
        json!({ "server_id": server, "policy_id": p_b, "group": "ops" }),
    ] {
        api.expect("POST", "/api/v1/bindings", Some(binding), 201)
            .await;
    }
    Bound {
        url: format!("{}/mcp/{server}", w.gateway),
        resource: format!("{}/mcp/{server}", w.gateway),
        server,
    }
}

#[tokio::test]
async fn identity_tokens_get_their_bound_policy_and_forged_ones_are_refused() {
    let idp = Idp::start();
    let w = world().await;
    let upstream = Upstream::start("k").await;
    let b = bind(&w, &idp, &upstream).await;

    // A and B through the same server URL, each under its own binding.
    let token_a = idp.token("agent-a", &b.resource).await;
    let token_b = idp.token("agent-b", &b.resource).await;
    let a = rmcp_client(&b.url, &token_a).await;
    let b_client = rmcp_client(&b.url, &token_b).await;
    assert!(tool_names(&a).await.contains(&"delete_message".to_owned()));
    assert!(
        !tool_names(&b_client)
            .await
            .contains(&"delete_message".to_owned())
    );
    let called = a.call_tool(call("list_messages")).await.unwrap();
    assert_eq!(decision_of(&called), Value::Null, "{called:?}");
    assert_eq!(called.is_error, Some(false));
    // An approval is A's: approved once, A's same call passes once.
    let pay = || {
        let mut params = call("create_payment");
        params.arguments = Some(json!({ "amount": 5 }).as_object().unwrap().clone());
        params
    };
    let pending = a.call_tool(pay()).await.unwrap();
    assert_eq!(decision_of(&pending), "approval_required", "{pending:?}");
    let approval =
        serde_json::to_value(&pending).unwrap()["_meta"]["portcullis/decision"]["approval_id"]
            .as_str()
            .unwrap()
            .to_owned();
    let listed = w
        .api
        .expect("GET", &format!("/api/v1/approvals/{approval}"), None, 200)
        .await;
    assert_eq!(listed["identity"], "a@example.com");
    w.api
        .expect(
            "POST",
            &format!("/api/v1/approvals/{approval}/approve"),
            Some(json!({})),
            200,
        )
        .await;
    let paid = a.call_tool(pay()).await.unwrap();
    assert_eq!(paid.is_error, Some(false), "{paid:?}");
    a.cancel().await.unwrap();
    b_client.cancel().await.unwrap();

    // A verified identity no binding covers: 403, audited.
    let token_c = idp.token("agent-c", &b.resource).await;
    let (status, _, body) = initialize(&b.url, &token_c).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], -32001);

    // Refused with 401, each pointing to the resource's metadata.
    let metadata = format!(
        "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp/{}\"",
        w.gateway, b.server
    );
    let (iss, kid, key) = (idp.issuer(), idp.kid(), idp.private_pem());
    let rs256 = |claims: &Value| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&key).unwrap()).unwrap()
    };
    let expired = rs256(&claims(&iss, &b.resource, "a@example.com", now() - 600));
    let wrong_issuer = rs256(&claims(
        "http://127.0.0.1:1",
        &b.resource,
        "a@example.com",
        now() + 600,
    ));
    let wrong_audience = idp
        .token(
            "agent-a",
            &format!("{}/mcp/{}", w.gateway, uuid::Uuid::now_v7()),
        )
        .await;
    let bad_signature = {
        let parts: Vec<&str> = token_a.split('.').collect();
        let forged = claims(&iss, &b.resource, "a@example.com", now() + 600);
        format!("{}.{}.{}", parts[0], b64(&forged), parts[2])
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT", "kid": kid })),
        b64(&claims(&iss, &b.resource, "a@example.com", now() + 600))
    );
    let hmac_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &header,
            &claims(&iss, &b.resource, "a@example.com", now() + 600),
            &EncodingKey::from_secret(&idp.public_pem()),
        )
        .unwrap()
    };
    let unknown_kid = {
        let pair = rcgen::KeyPair::generate().unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("not-a-key-of-the-provider".into());
        jsonwebtoken::encode(
            &header,
            &claims(&iss, &b.resource, "a@example.com", now() + 600),
            &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    // Another tenant's server: its tenant trusts no provider.
    let stranger = signup(&w.api.http, &w.base, "other@example.com", "Other").await;
    let foreign_server = server(&stranger, &upstream, "theirs").await;
    let foreign_policy = policy(&stranger, &foreign_server, "all", five_a_minute(&[])).await;
    stranger
        .expect(
            "POST",
            "/api/v1/bindings",
            Some(json!({ "server_id": foreign_server, "policy_id": foreign_policy })),
            201,
        )
        .await;
    let foreign_url = format!("{}/mcp/{foreign_server}", w.gateway);
    let foreign = idp.token("agent-a", &foreign_url).await;
    // The keys were fetched more than a refetch interval ago: the unknown kid makes one fetch.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (what, url, token) in [
        ("expired", &b.url, &expired),
        ("wrong issuer", &b.url, &wrong_issuer),
        ("wrong audience", &b.url, &wrong_audience),
        ("bad signature", &b.url, &bad_signature),
        ("alg none", &b.url, &none),
        ("HMAC with the public key", &b.url, &hmac_with_public_key),
        ("unknown kid", &b.url, &unknown_kid),
        ("another tenant's server", &foreign_url, &foreign),
    ] {
        let (status, challenge, body) = initialize(url, token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], -32001, "{what}");
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        if url == &b.url {
            assert!(challenge.contains(&metadata), "{what}: {challenge}");
        }
    }
    // Grant tokens work as ever on the same URL.
    let (status, _, _) = initialize(&b.url, "pcg_not-a-grant").await;
    assert_eq!(status, 401);

    // The audit log names the verified identity, the issuer and the jti.
    let api = &w.api;
    let found = eventually(Duration::from_secs(15), || async {
        let (_, page) = api.get("/api/v1/audit?identity=c%40example.com").await;
        page["events"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    assert!(found, "the refusal of c@example.com is audited");
    let (_, page) = api.get("/api/v1/audit?identity=c%40example.com").await;
    let refused = &page["events"][0];
    assert_eq!(
        (refused["decision"].as_str(), refused["rule"].as_str()),
        (Some("deny"), Some("(no binding)"))
    );
    assert_eq!(refused["method"], "initialize");
    let found = eventually(Duration::from_secs(15), || async {
        let (_, page) = api
            .get("/api/v1/audit?identity=a%40example.com&tool=list_messages")
            .await;
        page["events"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    assert!(found, "A's call is audited under A");
    let (_, page) = api
        .get("/api/v1/audit?identity=a%40example.com&tool=list_messages")
        .await;
    let id = page["events"][0]["id"].as_str().unwrap();
    let detail = api
        .expect("GET", &format!("/api/v1/audit/{id}"), None, 200)
        .await;
    assert_eq!(detail["issuer"], idp.issuer().as_str());
    assert!(
        detail["jti"].as_str().is_some_and(|j| !j.is_empty()),
        "{detail}"
    );
    let everything = api
        .expect("GET", "/api/v1/audit?limit=500", None, 200)
        .await
        .to_string();
    for token in [&token_a, &token_b, &token_c] {
        assert!(
            !everything.contains(token.as_str()),
            "a token reached the audit log"
        );
    }
    w.app.stop().await.unwrap();
}

/// Runs `tests/peers/identity_client.py` (the Python SDK's Client) against `url` with `auth`
/// (`{"bearer": …}` or `{"client_credentials": …}`) and a plan; returns its JSON line.
async fn python_client(url: &str, auth: Value, plan: Value) -> Value {
    let python = peers_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run deploy/local/test once",
        python.display()
    );
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(peers_dir().join("identity_client.py"))
            .args([url, "legacy", &auth.to_string(), &plan.to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client did not finish within 120 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the Python client failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

#[tokio::test]
async fn a_spec_following_client_finds_the_provider_from_the_401() {
    let idp = Idp::start();
    let w = world().await;
    let upstream = Upstream::start("k").await;
    let b = bind(&w, &idp, &upstream).await;

    // The 401 points to the metadata, which names the provider.
    let response = reqwest::Client::new()
        .post(&b.url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let metadata_url = format!(
        "{}/.well-known/oauth-protected-resource/mcp/{}",
        w.gateway, b.server
    );
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    let metadata: Value = reqwest::get(&metadata_url)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        metadata,
        json!({ "resource": b.url, "authorization_servers": [idp.issuer()],
                "bearer_methods_supported": ["header"] })
    );
    // A server that takes no identity tokens has none.
    let plain = server(&w.api, &upstream, "plain").await;
    let none = reqwest::get(format!(
        "{}/.well-known/oauth-protected-resource/mcp/{plain}",
        w.gateway
    ))
    .await
    .unwrap();
    assert_eq!(none.status(), 404);

    // The Python SDK's OAuth support does the rest by itself (client credentials).
    let auth = json!({ "client_credentials": {
        "client_id": "agent-b", "client_secret": "agent-b-secret", "issuer": idp.issuer() } });
    let out = python_client(
        &b.url,
        auth,
        json!([{ "op": "list" }, { "op": "call", "name": "list_messages" }]),
    )
    .await;
    let tools = &out[0]["ok"];
    assert!(tools.is_array(), "{out}");
    assert!(
        !tools.as_array().unwrap().contains(&json!("delete_message")),
        "B's policy hides it: {out}"
    );
    assert_eq!(out[1]["ok"]["is_error"], false, "{out}");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn limits_count_per_identity_and_keys_rotate_and_outlive_the_provider() {
    let mut idp = Idp::start();
    let w = world().await;
    let upstream = Upstream::start("k").await;
    let b = bind(&w, &idp, &upstream).await;

    // A (rmcp) is limited at 5 a minute; B (the Python SDK) is not limited by A's calls.
    let token_a = idp.token("agent-a", &b.resource).await;
    let a = rmcp_client(&b.url, &token_a).await;
    for i in 0..5 {
        let ok = a.call_tool(call("list_messages")).await.unwrap();
        assert_eq!(ok.is_error, Some(false), "call {i}: {ok:?}");
    }
    let limited = a.call_tool(call("list_messages")).await.unwrap();
    assert_eq!(decision_of(&limited), "rate_limited", "{limited:?}");
    a.cancel().await.unwrap();
    let token_b = idp.token("agent-b", &b.resource).await;
    let five = json!(vec![json!({ "op": "call", "name": "list_messages" }); 5]);
    let out = python_client(&b.url, json!({ "bearer": token_b }), five).await;
    for (i, step) in out.as_array().unwrap().iter().enumerate() {
        assert_eq!(step["ok"]["is_error"], false, "B's call {i}: {out}");
    }

    // The audit page filters by the verified identity.
    let api = &w.api;
    let counted = eventually(Duration::from_secs(15), || async {
        let (_, page) = api
            .get("/api/v1/audit?identity=b%40example.com&tool=list_messages")
            .await;
        page["events"].as_array().is_some_and(|e| e.len() == 5)
    })
    .await;
    assert!(counted, "B's five calls are audited under B");
    let (_, page) = api
        .get("/api/v1/audit?identity=a%40example.com&tool=list_messages")
        .await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 6, "{page}");
    assert!(events.iter().all(|e| e["identity"] == "a@example.com"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["decision"] == "rate_limited")
            .count(),
        1
    );
    let page = api
        .http
        .get(format!("{}/audit?identity=b%40example.com", w.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<td>b@example.com</td>"), "{page}");
    assert!(!page.contains("<td>a@example.com</td>"), "{page}");

    // The provider rotates its key: a token signed with the new one passes after one refetch.
    let old_kid = idp.kid();
    idp.restart(true);
    assert_ne!(idp.kid(), old_kid);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = idp.token("agent-b", &b.resource).await;
    let (status, _, body) = initialize(&b.url, &rotated).await;
    assert_eq!(status, 200, "{body}");

    // The provider is down: the cached keys keep serving, and the gateway stays ready.
    idp.stop();
    let (status, _, body) = initialize(&b.url, &rotated).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = initialize(&b.url, &token_b).await;
    assert_eq!(status, 200, "a token of the old key: {body}");
    let ready = reqwest::get(format!("{}/readyz", w.gateway)).await.unwrap();
    assert_eq!(ready.status(), 200);
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn the_dashboard_lists_and_changes_providers_and_bindings() {
    let w = world().await;
    let api = &w.api;
    let upstream = Upstream::start("k").await;
    let srv = server(api, &upstream, "crm").await;
    let p = policy(api, &srv, "engineers", five_a_minute(&[])).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = || async {
        let resp = http
            .get(format!("{}/identity-providers", w.base))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    };
    let post = |path: &str, pairs: Vec<(&'static str, String)>| {
        let request = http
            .post(format!("{}{path}", w.base))
            .bearer_auth(&api.token);
        async move {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let resp = cp_support::form(request, &pairs).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert!(get().await.contains("No provider yet"));

    let (status, page) = post(
        "/identity-providers",
        vec![
            ("issuer", "ftp://x".into()),
            ("audience", w.gateway.clone()),
        ],
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        page.contains("must be an http:// or https:// URL"),
        "{page}"
    );
    let (status, _) = post(
        "/identity-providers",
        vec![
            ("issuer", "http://127.0.0.1:9".into()),
            ("audience", w.gateway.clone()),
            ("identity_claim", "email".into()),
            ("groups_claim", "groups".into()),
        ],
    )
    .await;
    assert_eq!(status, 303);
    let (status, _) = post(
        "/bindings",
        vec![("policy_id", p.clone()), ("group", "eng".into())],
    )
    .await;
    assert_eq!(status, 303);
    let page = get().await;
    assert!(page.contains("<code>http://127.0.0.1:9</code>"), "{page}");
    assert!(
        page.contains("group eng") && page.contains("engineers"),
        "{page}"
    );

    let bindings = api.expect("GET", "/api/v1/bindings", None, 200).await;
    let bid = bindings["bindings"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = post(&format!("/bindings/{bid}/delete"), vec![]).await;
    assert_eq!(status, 303);
    let providers = api
        .expect("GET", "/api/v1/identity-providers", None, 200)
        .await;
    let pid = providers["identity_providers"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = post(&format!("/identity-providers/{pid}/delete"), vec![]).await;
    assert_eq!(status, 303);
    let page = get().await;
    assert!(
        page.contains("No provider yet") && page.contains("No binding yet"),
        "{page}"
    );
    w.app.stop().await.unwrap();
}
