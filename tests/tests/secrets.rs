//! No secret leaks: the whole journey (sign-up, sign-in, a server with an upstream credential,
//! discovery, a policy, grants, calls through the gateway on both routes, an approval, refused
//! calls, the audit export) against `portcullis serve` logging at `debug`, then every log line
//! of the process, every audit row in Postgres, every error body and every exported file is
//! searched for each secret the journey made or used: the password, the sign-up confirmation
//! token, API tokens, the session cookie, the CSRF token, the upstream credential and grant
//! tokens. None may appear.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod cp_support;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cp_support::Upstream;
use portcullis_tests::{TestDatabase, TestRedis};
use serde_json::{Value, json};

const PASSWORD: &str = "journey password of the owner";
const UPSTREAM_KEY: &str = "upstream-credential-7f3a9c21e5";

/// `portcullis serve` logging at `debug`, every line it writes kept.
struct Serve {
    child: Child,
    dashboard: String,
    gateway: String,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Where its mail goes.
    mail: portcullis_tests::Mailbox,
}

impl Serve {
    fn start(db: &TestDatabase, redis: &TestRedis) -> Self {
        let keys = portcullis_tests::encryption_keys();
        let redis_url = portcullis_tests::redis_url();
        let mail = portcullis_tests::Mailbox::new();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-e2e"))
            .arg("serve")
            .args(["--mail-transport", &mail.transport()])
            .args(["--database-url", &db.url(), "--redis-url", &redis_url])
            .args(portcullis_tests::redis_flags(&redis_url))
            .args(["--redis-prefix", redis.prefix()])
            .args(["--control-plane-addr", "127.0.0.1:0"])
            .args(["--gateway-addr", "127.0.0.1:0"])
            .args(["--encryption-keys", &keys, "--session-keys", &keys])
            .args(["--upstream-allow", "127.0.0.0/8"])
            .args(["--approval-sweep-interval", "200ms"])
            .args(["--shutdown-grace", "2s"])
            .env("PORTCULLIS_LOG", "debug")
            .env("PORTCULLIS_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (found, addresses) = std::sync::mpsc::channel();
        let mut readers = Vec::new();
        let stdout = child.stdout.take().unwrap();
        let kept = lines.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = found.send(line.clone());
                kept.lock().unwrap().push(line);
            }
        }));
        let stderr = child.stderr.take().unwrap();
        let kept = lines.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        }));
        let (mut dashboard, mut gateway) = (None, None);
        while dashboard.is_none() || gateway.is_none() {
            let line = addresses
                .recv_timeout(Duration::from_secs(30))
                .expect("portcullis serve printed no addresses within 30 s");
            let address = |prefix: &str| {
                line.strip_prefix(prefix)
                    .map(|a| a.trim().trim_end_matches('/').to_owned())
            };
            dashboard = dashboard.or(address("dashboard:"));
            gateway = gateway.or(address("gateway:"));
        }
        Self {
            child,
            dashboard: dashboard.unwrap(),
            gateway: gateway.unwrap(),
            lines,
            readers,
            mail,
        }
    }

    /// Stops it (SIGTERM) and returns every line it wrote.
    async fn stop(mut self) -> Vec<String> {
        let status = portcullis_tests::terminate(&mut self.child).await;
        assert!(status.success(), "{status}");
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the journey saw that a secret must never be in, by where it came from.
#[derive(Default)]
struct Haystack(Vec<(String, String)>);

impl Haystack {
    fn add(&mut self, place: impl Into<String>, text: impl Into<String>) {
        self.0.push((place.into(), text.into()));
    }

    /// Every place where one of `secrets` (by name) appears.
    fn hits(&self, secrets: &[(&str, String)]) -> Vec<String> {
        let mut hits = Vec::new();
        for (place, text) in &self.0 {
            for (name, secret) in secrets {
                if text.contains(secret.as_str()) {
                    let at = text.find(secret.as_str()).unwrap_or(0);
                    let start = text.floor_char_boundary(at.saturating_sub(80));
                    let end = text.ceil_char_boundary((at + secret.len() + 80).min(text.len()));
                    hits.push(format!("{name} in {place}: …{}…", &text[start..end]));
                }
            }
        }
        hits
    }
}

/// An HTTP answer: status, headers, body.
async fn answer(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, String) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// A stateless-era `tools/call` (or `tools/list` when `name` is `None`) through `url`.
async fn mcp(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    id: i64,
    name: Option<&str>,
    args: Value,
) -> (u16, String) {
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": { "name": "journey", "version": "1" },
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let (method, params) = match name {
        Some(name) => (
            "tools/call",
            json!({ "name": name, "arguments": args, "_meta": meta }),
        ),
        None => ("tools/list", json!({ "_meta": meta })),
    };
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = name {
        request = request.header("mcp-name", name);
    }
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
    let (status, _, text) = answer(request.body(body.to_string()).send().await.unwrap()).await;
    (status, text)
}

/// The JSON-RPC message of a JSON or SSE answer.
fn message(body: &str) -> Value {
    if body.trim_start().starts_with('{') {
        return serde_json::from_str(body).unwrap();
    }
    body.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str(d.trim()).ok())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_an_audit_row_an_error_or_an_export() {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let upstream = Upstream::start(UPSTREAM_KEY).await;
    let serve = Serve::start(&db, &redis);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = serve.dashboard.clone();
    let mut seen = Haystack::default();

    // Sign up, confirm through the mailed link (its page, then the API; then once more, which
    // is refused), then sign in: a confirmation token, an API token, a session cookie, a CSRF
    // token.
    let (status, _, body) = answer(
        http.post(format!("{base}/api/v1/signup"))
            .json(&json!({ "email": "owner@secrets.example", "password": PASSWORD, "organization": "Secrets" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    seen.add("the sign-up's answer", &body);
    let confirm_token = serve
        .mail
        .take("owner@secrets.example")
        .await
        .token()
        .unwrap();
    let (status, _, body) = answer(
        http.get(format!("{base}/signup/confirm?token={confirm_token}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut confirmed = String::new();
    for expected in [201, 400] {
        let (status, _, body) = answer(
            http.post(format!("{base}/api/v1/signup/confirm"))
                .json(&json!({ "token": confirm_token }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, expected, "{body}");
        // The 201 shows the API token, once, as it should.
        if expected == 201 {
            confirmed = body;
        } else {
            seen.add("the refused second confirmation", body);
        }
    }
    let api_token = serde_json::from_str::<Value>(&confirmed).unwrap()["api_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, headers, body) = answer(
        http.post(format!("{base}/api/v1/login"))
            .json(&json!({ "email": "owner@secrets.example", "password": PASSWORD }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let cookie_value = cookie.split_once('=').unwrap().1.to_owned();
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(&api_token)
    };
    let with_cookie = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{base}{path}"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
    };

    // A server with an upstream credential (through the session), discovered; a policy.
    let (status, _, body) = answer(
        with_cookie(reqwest::Method::POST, "/api/v1/servers")
            .json(&json!({ "name": "sms", "url": upstream.url, "headers": { "x-api-key": UPSTREAM_KEY } }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    seen.add("the server's answer", &body);
    let server = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in ["test", "discover"] {
        let (status, _, body) = answer(
            bearer(
                reqwest::Method::POST,
                &format!("/api/v1/servers/{server}/{path}"),
            )
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{path}: {body}");
        seen.add(format!("the {path} answer"), &body);
    }
    let document = json!({
        "version": "1", "default": "deny",
        "audit": { "arguments": "values" },
        "tools": { "list_messages": {}, "send_message": { "approval": {} } }
    });
    let (status, _, body) = answer(
        bearer(
            reqwest::Method::POST,
            &format!("/api/v1/servers/{server}/policies"),
        )
        .json(&json!({ "name": "p", "document": document }))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let policy = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Two grants (one revoked later) and a second API token.
    let mut issued_once = String::new();
    let mut grant_tokens = Vec::new();
    let mut grant_ids = Vec::new();
    for identity in ["agent-1", "agent-2"] {
        let (status, _, body) = answer(
            bearer(reqwest::Method::POST, "/api/v1/grants")
                .json(&json!({ "server_id": server, "policy_id": policy, "identity": identity }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let issued: Value = serde_json::from_str(&body).unwrap();
        issued_once = body.clone();
        grant_tokens.push(issued["token"].as_str().unwrap().to_owned());
        grant_ids.push(issued["id"].as_str().unwrap().to_owned());
    }
    let (status, _, body) = answer(
        bearer(reqwest::Method::POST, "/api/v1/tokens")
            .json(&json!({ "name": "ci", "role": "viewer" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let second_api_token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Calls through the gateway, on both routes.
    let gw = &serve.gateway;
    let by_grant = format!("{gw}/g/{}/mcp", grant_tokens[0]);
    let by_server = format!("{gw}/mcp/{server}");
    let (status, body) = mcp(&http, &by_grant, None, 1, None, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = mcp(
        &http,
        &by_grant,
        None,
        2,
        Some("list_messages"),
        json!({ "limit": 5 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("called list_messages"), "{body}");
    let (status, body) = mcp(
        &http,
        &by_server,
        Some(&grant_tokens[1]),
        3,
        Some("list_messages"),
        json!({ "limit": 1 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // An approval: asked, approved through the session, then the call passes.
    let send = json!({ "to": "+15550100", "body": "hello" });
    let (status, body) = mcp(
        &http,
        &by_grant,
        None,
        4,
        Some("send_message"),
        send.clone(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    seen.add("the approval-required answer", &body);
    let approval = message(&body)["result"]["_meta"]["portcullis"]["approval_id"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            let text = message(&body)["result"]["content"][0]["text"]
                .as_str()?
                .to_owned();
            let at = text.find("apr_")?;
            Some(
                text[at..]
                    .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .next()?
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| panic!("no approval id in {body}"));
    let (status, _, body) = answer(
        with_cookie(
            reqwest::Method::POST,
            &format!("/api/v1/approvals/{approval}/approve"),
        )
        .json(&json!({ "note": "fine" }))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = mcp(&http, &by_grant, None, 5, Some("send_message"), send).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("called send_message"), "{body}");

    // Refusals and errors: every body is kept.
    let revoked = answer(
        bearer(
            reqwest::Method::DELETE,
            &format!("/api/v1/grants/{}", grant_ids[1]),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(revoked.0, 204);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refusals = [
        (format!("{gw}/g/{}x/mcp", grant_tokens[0]), None),
        (format!("{gw}/g/{}/mcp", grant_tokens[1]), None),
        (by_server.clone(), Some(grant_tokens[1].as_str())),
        (
            format!("{gw}/mcp/{}", uuid::Uuid::nil()),
            Some(grant_tokens[0].as_str()),
        ),
    ];
    for (url, token) in &refusals {
        let (status, body) = mcp(&http, url, *token, 9, Some("list_messages"), json!({})).await;
        assert_eq!(status, 401, "{body}");
        seen.add("a refused gateway call", body);
    }
    for (headers, body) in [
        (vec![], "{not json"),
        (vec![("mcp-protocol-version", "1999-01-01")], "{}"),
    ] {
        let mut request = http
            .post(&by_grant)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let (status, _, body) = answer(request.body(body).send().await.unwrap()).await;
        assert!(status >= 400, "{body}");
        seen.add("a malformed gateway call", body);
    }
    let (status, body) = mcp(&http, &by_grant, None, 10, Some("delete_all"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    seen.add("a denied call", body);
    for (request, expected) in [
        (
            http.post(format!("{base}/api/v1/login"))
                .json(&json!({ "email": "owner@secrets.example", "password": format!("{PASSWORD}!") })),
            400,
        ),
        (
            http.post(format!("{base}/api/v1/signup"))
                .json(&json!({ "email": "owner@secrets.example", "password": "another long password", "organization": "X" })),
            202,
        ),
        (
            http.get(format!("{base}/api/v1/me"))
                .bearer_auth(format!("{api_token}x")),
            401,
        ),
        (
            http.post(format!("{base}/api/v1/servers"))
                .header("cookie", &cookie)
                .json(&json!({ "name": "no-csrf", "url": upstream.url })),
            403,
        ),
        (
            bearer(reqwest::Method::POST, "/api/v1/servers")
                .json(&json!({ "name": "bad", "url": "not a url", "headers": { "x-api-key": UPSTREAM_KEY } })),
            422,
        ),
        (
            http.post(format!("{base}/api/v1/servers"))
                .bearer_auth(&second_api_token)
                .json(&json!({ "name": "viewer", "url": upstream.url })),
            403,
        ),
    ] {
        let (status, _, body) = answer(request.send().await.unwrap()).await;
        assert_eq!(status, expected, "{body}");
        seen.add(format!("a {expected} from the control plane"), body);
    }

    // Every call's audit row, then the export in both formats.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, body) = answer(
            bearer(reqwest::Method::GET, "/api/v1/audit?limit=100")
                .send()
                .await
                .unwrap(),
        )
        .await;
        let events = serde_json::from_str::<Value>(&body).unwrap()["events"]
            .as_array()
            .map_or(0, Vec::len);
        if events >= 8 {
            seen.add("the audit list", body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {events} audit events after 20 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for format in ["csv", "jsonl"] {
        let (status, _, body) = answer(
            bearer(
                reqwest::Method::GET,
                &format!("/api/v1/audit/export?format={format}"),
            )
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.lines().count() > 5, "{format} export: {body}");
        seen.add(format!("the {format} export"), body);
    }
    for table in [
        "audit_events",
        "admin_audit",
        "approvals",
        "webhook_deliveries",
        "signup_requests",
        "mail_outbox",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM {table} t"
        )))
        .fetch_all(db.pool())
        .await
        .unwrap();
        if table == "audit_events" || table == "admin_audit" {
            assert!(!rows.is_empty(), "no rows in {table}");
        }
        for row in rows {
            seen.add(format!("a row of {table}"), row);
        }
    }

    let lines = serve.stop().await;
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
        "no debug line was written"
    );
    let scanned = lines.len();
    for line in lines {
        seen.add("a log line", line);
    }
    let mut secrets = vec![
        ("the password", PASSWORD.to_owned()),
        ("the sign-up confirmation token", confirm_token),
        ("the upstream credential", UPSTREAM_KEY.to_owned()),
        ("the API token", api_token),
        ("the second API token", second_api_token),
        ("the session cookie", cookie_value.clone()),
        ("the CSRF token", csrf),
    ];
    // The session secret inside the signed cookie, on its own.
    if let Some((secret, _)) = cookie_value.split_once('.') {
        secrets.push(("the session secret", secret.to_owned()));
    }
    for token in grant_tokens {
        secrets.push(("a grant token", token));
    }
    // The scan finds what it looks for: the answer that shows a grant token once holds it.
    let mut control = Haystack::default();
    control.add("the grant's answer", issued_once);
    assert_eq!(control.hits(&secrets).len(), 1);
    let hits = seen.hits(&secrets);
    eprintln!(
        "scanned {scanned} log lines and {} other texts for {} secrets",
        seen.0.len() - scanned,
        secrets.len()
    );
    assert!(
        hits.is_empty(),
        "{} leaks:\n{}",
        hits.len(),
        hits.join("\n")
    );
}
