//! Stdio MCP servers and clients through Portcullis: `portcullis bridge stdio` in front of the
//! real Twilio and reference servers, `portcullis connect` behind the Python SDK's stdio
//! client, a child killed mid-call, and a bridge killed with SIGKILL.

#![allow(clippy::unwrap_used)]

mod cp_support;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cp_support::{Api, Stack};
use portcullis::Role;
use portcullis_tests::peers;
use serde_json::{Value, json};

/// The `portcullis` command.
fn portcullis() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis-e2e")
}

/// A `portcullis bridge stdio` process, killed on drop; its JSON log lines are kept.
struct Bridge {
    process: Child,
    url: String,
    log: Arc<Mutex<Vec<Value>>>,
}

impl Bridge {
    fn start(flags: &[&str], command: &[&str]) -> Self {
        Self::start_with_env(flags, &[], command)
    }

    fn start_with_env(flags: &[&str], env: &[(&str, &str)], command: &[&str]) -> Self {
        let mut process = Command::new(portcullis())
            .args([
                "bridge",
                "stdio",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(flags)
            .arg("--")
            .args(command)
            .envs(env.iter().copied())
            .current_dir(peers::peers_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut url = String::new();
        BufReader::new(process.stdout.take().unwrap())
            .read_line(&mut url)
            .unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "printed {url:?}");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let stderr = process.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    lines.lock().unwrap().push(value);
                }
            }
        });
        Self {
            process,
            url: url.trim().to_owned(),
            log,
        }
    }

    /// The pids of every server and guard the bridge started.
    fn children(&self) -> Vec<u32> {
        self.started()
            .iter()
            .flat_map(|e| [e["pid"].as_u64(), e["guard_pid"].as_u64()])
            .flatten()
            .map(|p| p as u32)
            .collect()
    }

    fn started(&self) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["message"] == "MCP server started")
            .cloned()
            .collect()
    }

    /// Waits until `n` servers have started; returns the newest one's pid.
    async fn server_started(&self, n: usize) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let started = self.started();
            if started.len() >= n {
                return started[n - 1]["pid"].as_u64().unwrap() as u32;
            }
            assert!(Instant::now() < deadline, "server {n} did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        portcullis_tests::signal(self.process.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// True while `pid` runs (a zombie no longer counts).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

fn twilio_entry() -> PathBuf {
    let entry = peers::peers_dir().join("node_modules/@twilio-alpha/mcp/build/index.js");
    assert!(
        entry.exists(),
        "{} is missing: run deploy/local/test once to install the test peers",
        entry.display()
    );
    entry
}

fn everything_entry() -> PathBuf {
    peers::peers_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
}

/// Fake credentials pass Twilio's format check; nothing reaches Twilio (no network).
const TWILIO_CREDENTIALS: &str =
    "AC00000000000000000000000000000000/SK00000000000000000000000000000000:secret";

/// A server registered, discovered, with a policy and a grant.
struct Registered {
    server_id: String,
    discovered: Value,
    token: String,
}

/// Registers `url`, discovers it, writes `policy` and grants it.
async fn register(api: &Api, url: &str, policy: Value) -> Registered {
    let server = api
        .expect(
            "POST",
            "/api/v1/servers",
            Some(json!({"name": "stdio-server", "url": url})),
            201,
        )
        .await;
    let id = server["id"].as_str().unwrap();
    let discovered = api
        .expect("POST", &format!("/api/v1/servers/{id}/discover"), None, 200)
        .await;
    let policy = api
        .expect(
            "POST",
            &format!("/api/v1/servers/{id}/policies"),
            Some(json!({"name": "agents", "document": policy})),
            201,
        )
        .await;
    let grant = api
        .expect(
            "POST",
            "/api/v1/grants",
            Some(json!({"server_id": id, "policy_id": policy["id"], "identity": "agent-7"})),
            201,
        )
        .await;
    Registered {
        server_id: id.to_owned(),
        discovered,
        token: grant["token"].as_str().unwrap().to_owned(),
    }
}

/// The grant URL of `token` on the stack's gateway.
fn grant_url(stack: &Stack, token: &str) -> String {
    format!("{}/g/{token}/mcp", stack.gateway.as_deref().unwrap())
}

async fn rmcp_tool_names(url: &str) -> Vec<String> {
    use rmcp::ServiceExt as _;
    let client = ()
        .serve(rmcp::transport::StreamableHttpClientTransport::from_uri(
            url.to_owned(),
        ))
        .await
        .unwrap();
    let tools = client.list_all_tools().await.unwrap();
    let _ = client.cancel().await;
    let mut names: Vec<String> = tools.into_iter().map(|t| t.name.to_string()).collect();
    names.sort();
    names
}

fn step(results: &Value, i: usize) -> &Value {
    let step = &results[i];
    assert!(step.get("ok").is_some(), "step {i} failed: {results}");
    &step["ok"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_behind_the_bridge_is_discovered_classified_and_filtered() {
    let record = tempfile_path("twilio-stdin");
    // The child records every line it receives before Twilio's server reads it.
    let bridge = Bridge::start(
        &[],
        &[
            "sh",
            "-c",
            r#"tee -a "$0" | exec node "$1" "$2" --services twilio_api_v2010"#,
            record.to_str().unwrap(),
            twilio_entry().to_str().unwrap(),
            TWILIO_CREDENTIALS,
        ],
    );
    let stack = Stack::start_with(Role::Both, &[]).await;
    let api = stack.signup("ops@twilio-test.example", "Twilio Test").await;
    let denied = "TwilioApiV2010--CreateMessage";
    let policy = json!({
        "version": "1",
        "default": "allow",
        "categories": {"destructive": "hide", "financial": {"approval": {}}},
        "tools": {denied: {"deny_if": [{"conditions": [], "on_deny": "Agents do not send SMS."}]}}
    });
    let registered = register(&api, &bridge.url, policy).await;
    let url = grant_url(&stack, &registered.token);
    let discovered = registered.discovered;

    let tools = discovered["tools"].as_array().unwrap();
    assert!(tools.len() > 150, "{} tools discovered", tools.len());
    let category = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["risk"]["category"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{name} was not discovered"))
    };
    assert_eq!(
        category("TwilioApiV2010--CreateIncomingPhoneNumber"),
        "financial"
    );
    assert_eq!(
        category("TwilioApiV2010--DeleteIncomingPhoneNumber"),
        "destructive"
    );
    assert_eq!(category("TwilioApiV2010--ListIncomingPhoneNumber"), "read");
    let destructive: Vec<&str> = tools
        .iter()
        .filter(|t| t["risk"]["category"] == "destructive")
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(!destructive.is_empty());

    // The official Rust and Python SDKs list the filtered catalogue through the grant URL.
    let listed = rmcp_tool_names(&url).await;
    assert_eq!(listed.len(), tools.len() - destructive.len());
    assert!(destructive.iter().all(|d| !listed.iter().any(|l| l == d)));
    let results: Value = serde_json::from_str(
        &peers::python_client(
            &url,
            "legacy",
            &json!([
                {"op": "list"},
                {"op": "call", "name": denied, "args": {"To": "+15550000000", "Body": "hi"}},
                {"op": "call", "name": "TwilioApiV2010--FetchAccount", "args": {"Sid": "AC00000000000000000000000000000000"}},
            ])
            .to_string(),
        )
        .await,
    )
    .unwrap();
    let python_listed: Vec<String> = serde_json::from_value(step(&results, 0).clone()).unwrap();
    assert_eq!(python_listed, listed);
    let refused = step(&results, 1);
    assert_eq!(refused["is_error"], true);
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .starts_with("[POLICY DENIED] Agents do not send SMS."),
        "{refused}"
    );
    // The allowed call reached Twilio's server, which cannot reach Twilio from here.
    assert!(results[2].get("error").is_some() || step(&results, 2)["is_error"] == true);

    // From the child's side: the allowed call arrived, the denied one never did.
    let received = std::fs::read_to_string(&record).unwrap();
    assert!(received.contains("TwilioApiV2010--FetchAccount"));
    assert!(
        !received.contains(denied),
        "the denied call reached the child"
    );
    let _ = std::fs::remove_file(record);
}

fn tempfile_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "portcullis-{what}-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_serves_both_eras_with_sampling_elicitation_and_progress() {
    let python = peers::peers_dir().join(".venv/bin/python");
    let server = peers::peers_dir().join("mcp_server.py");
    let bridge = Bridge::start(
        &[],
        &[
            python.to_str().unwrap(),
            server.to_str().unwrap(),
            "--transport",
            "stdio",
        ],
    );
    let plan = json!([
        {"op": "list"},
        {"op": "call", "name": "echo", "args": {"text": "through stdio"}},
        {"op": "call", "name": "consult", "args": {"topic": "tides"}},
    ])
    .to_string();
    for mode in ["legacy", "2026-07-28"] {
        let results: Value =
            serde_json::from_str(&peers::python_client(&bridge.url, mode, &plan).await).unwrap();
        let names: Vec<String> = serde_json::from_value(step(&results, 0).clone()).unwrap();
        assert!(names.contains(&"consult".to_owned()), "{mode}: {names:?}");
        assert_eq!(step(&results, 1)["text"], "echo: through stdio", "{mode}");
        assert_eq!(
            step(&results, 2)["text"],
            "Ada asked about tides; sampled: Tell me about tides",
            "{mode}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_serves_a_stdio_client_through_a_grant_url_in_both_eras() {
    let upstream = peers::python_server("streamable-http", false);
    let stack = Stack::start_with(Role::Both, &[]).await;
    let api = stack
        .signup("ops@connect-test.example", "Connect Test")
        .await;
    let policy = json!({
        "version": "1",
        "default": "allow",
        "tools": {"get_secret": {"deny_if": [{"conditions": [], "on_deny": "No secrets for agents."}]}}
    });
    let Registered {
        server_id, token, ..
    } = register(&api, &upstream.url("/mcp"), policy).await;
    let url = grant_url(&stack, &token);
    let bearer_url = format!("{}/mcp/{server_id}", stack.gateway.as_deref().unwrap());
    let plan = json!([
        {"op": "list"},
        {"op": "call", "name": "echo", "args": {"text": "over stdio"}},
        {"op": "call", "name": "get_secret", "args": {}},
        {"op": "call", "name": "consult", "args": {"topic": "tides"}},
    ])
    .to_string();
    // The grant URL as it is, and the server URL with the token from the environment.
    let launches = [
        json!({"command": portcullis(), "args": ["connect", "--log", "warn"],
               "env": {"PORTCULLIS_CONNECT_URL": url}}),
        json!({"command": portcullis(), "args": ["connect", &bearer_url, "--token-env", "GRANT_TOKEN", "--log", "warn"],
               "env": {"GRANT_TOKEN": token}}),
    ];
    for launch in &launches {
        for mode in ["legacy", "2026-07-28"] {
            let results: Value = serde_json::from_str(
                &peers::python_client(&format!("stdio:{launch}"), mode, &plan).await,
            )
            .unwrap();
            let names: Vec<String> = serde_json::from_value(step(&results, 0).clone()).unwrap();
            assert!(names.contains(&"echo".to_owned()), "{mode}: {names:?}");
            assert_eq!(step(&results, 1)["text"], "echo: over stdio", "{mode}");
            let denied = step(&results, 2);
            assert_eq!(denied["is_error"], true, "{mode}");
            assert!(
                denied["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("[POLICY DENIED] No secrets for agents."),
                "{mode}: {denied}"
            );
            assert_eq!(
                step(&results, 3)["text"],
                "Ada asked about tides; sampled: Tell me about tides",
                "{mode}"
            );
        }
    }
}

/// Starts server-everything's long-running operation (`seconds` long) in `session` with the
/// request id `id`, and reads its answer until the first progress notification (its token
/// restored to the client's).
async fn long_call(
    http: &reqwest::Client,
    url: &str,
    session: &str,
    id: &str,
    seconds: u32,
) -> portcullis_tests::sse::SseMessages {
    let call = http
        .post(url)
        .header("mcp-session-id", session)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "trigger-long-running-operation",
            "arguments": {"duration": seconds, "steps": seconds},
            "_meta": {"progressToken": "p"}}}),
        )
        .send()
        .await
        .unwrap();
    let mut events = portcullis_tests::sse::SseMessages::new(call);
    loop {
        let event = events.next().await.unwrap();
        if event["method"] == "notifications/progress" {
            assert_eq!(event["params"]["progressToken"], "p");
            return events;
        }
    }
}

/// A session-era `initialize` request.
fn initialize_request(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "stdio-test", "version": "1"}}})
}

/// Opens a session on the bridge; returns its id.
async fn initialize(http: &reqwest::Client, url: &str) -> String {
    let response = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize_request(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let initialized = http
        .post(url)
        .header("mcp-session-id", &session)
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert_eq!(initialized.status(), 202);
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_child_fails_its_call_at_once_and_a_killed_bridge_leaves_no_child() {
    let entry = everything_entry();
    let bridge = Bridge::start(
        &["--max-sessions", "2"],
        &["node", entry.to_str().unwrap(), "stdio"],
    );
    let http = reqwest::Client::new();
    let session = initialize(&http, &bridge.url).await;
    let pid = bridge.server_started(1).await;

    // A call that runs for 10 s; its child is killed once it has reported progress.
    let mut events = long_call(&http, &bridge.url, &session, "long", 10).await;
    let killed = Instant::now();
    portcullis_tests::signal(pid, "KILL");
    let answer = loop {
        let event = events
            .next()
            .await
            .expect("the stream ended without an answer");
        if event.get("id").is_some() {
            break event;
        }
    };
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(answer["id"], "long");
    assert_eq!(answer["error"]["code"], -32603);
    // The session died with its child; a new one gets a new child.
    let gone = http
        .post(&bridge.url)
        .header("mcp-session-id", &session)
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let second = initialize(&http, &bridge.url).await;
    let listed: Value = http
        .post(&bridge.url)
        .header("mcp-session-id", &second)
        .header("accept", "application/json")
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed["result"]["tools"].as_array().unwrap().len() > 5);
    let third = initialize(&http, &bridge.url).await;
    bridge.server_started(3).await;
    // Two sessions are open, the most it serves: a third starts no process.
    let refused = http
        .post(&bridge.url)
        .json(&initialize_request(9))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(bridge.started().len(), 3);
    let ended = http
        .delete(&bridge.url)
        .header("mcp-session-id", &third)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 204);
    let _fourth = initialize(&http, &bridge.url).await;
    bridge.server_started(4).await;

    // SIGKILL of the bridge: no guard and no server survives it.
    let children = bridge.children();
    assert_eq!(children.len(), 8, "{children:?}");
    // The second and the fourth session's guard and server run (the first's was killed,
    // the third's stopped with its session).
    let alive = [&children[2..4], &children[6..8]].concat();
    let deadline = Instant::now() + Duration::from_secs(10);
    while children[4..6].iter().any(|&p| running(p)) {
        assert!(
            Instant::now() < deadline,
            "an ended session's child still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(alive.iter().all(|&p| running(p)), "{alive:?}");
    portcullis_tests::signal(bridge.process.id(), "KILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while children.iter().any(|&p| running(p)) {
        assert!(
            Instant::now() < deadline,
            "children outlived the bridge: {:?}",
            children.iter().filter(|&&p| running(p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_keeps_the_token_out_of_its_logs_and_the_process_list() {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let upstream = peers::python_server("streamable-http", true);
    let stack = Stack::start_with(Role::Both, &[]).await;
    let api = stack
        .signup("ops@connect-logs.example", "Connect Logs")
        .await;
    let registered = register(
        &api,
        &upstream.url("/mcp"),
        json!({"version": "1", "default": "allow"}),
    )
    .await;
    let token = registered.token;
    let mut connect = tokio::process::Command::new(portcullis())
        .args(["connect", "--log", "debug"])
        .env("PORTCULLIS_CONNECT_URL", grant_url(&stack, &token))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", connect.id().unwrap())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&token));
    let mut stdin = connect.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(connect.stdout.take().unwrap()).lines();
    for line in [
        initialize_request(1),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    ] {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }
    stdin.write_all(b"not json\n").await.unwrap();
    let mut answers = Vec::new();
    while answers.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        answers.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    assert!(
        answers
            .iter()
            .any(|a| a["id"] == 2 && a["result"]["tools"].is_array()),
        "{answers:?}"
    );
    assert!(
        answers.iter().any(|a| a["error"]["code"] == -32700),
        "{answers:?}"
    );
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(15), connect.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("/g/[redacted]/mcp"), "{logs}");
    assert!(!logs.contains(&token), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_child_serves_every_session_and_cancellations_reach_it() {
    let record = tempfile_path("shared-stdin");
    let bridge = Bridge::start(
        &["--shared"],
        &[
            "sh",
            "-c",
            r#"tee -a "$0" | exec node "$1" stdio"#,
            record.to_str().unwrap(),
            everything_entry().to_str().unwrap(),
        ],
    );
    let http = reqwest::Client::new();
    let first = initialize(&http, &bridge.url).await;
    let second = initialize(&http, &bridge.url).await;
    assert_ne!(first, second);
    bridge.server_started(1).await;

    // Both sessions use the same request id; each gets its own answer.
    for (session, text) in [(&first, "one"), (&second, "two")] {
        let answer: Value = http
            .post(&bridge.url)
            .header("mcp-session-id", session)
            .header("accept", "application/json")
            .json(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": text}}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["id"], 5);
        assert_eq!(
            answer["result"]["content"][0]["text"],
            format!("Echo: {text}")
        );
    }

    // A client's cancellation reaches the child under the bridge's id for the request.
    // Its answer stays open until the cancellation (a client that left would cancel nothing).
    let _slow = long_call(&http, &bridge.url, &first, "slow", 30).await;
    let cancelled = http
        .post(&bridge.url)
        .header("mcp-session-id", &first)
        .json(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": "slow", "reason": "the user changed their mind"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(5);
    let received = loop {
        let received = std::fs::read_to_string(&record).unwrap();
        if received.contains("notifications/cancelled") {
            break received;
        }
        assert!(
            Instant::now() < deadline,
            "the cancellation never reached the child"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let sent: Vec<Value> = received
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let call = sent
        .iter()
        .find(|m| m["params"]["name"] == "trigger-long-running-operation")
        .unwrap();
    let cancel = sent
        .iter()
        .find(|m| m["method"] == "notifications/cancelled")
        .unwrap();
    assert_eq!(cancel["params"]["requestId"], call["id"]);
    assert_ne!(call["id"], "slow", "the child sees the bridge's ids");
    // The shared child was initialized once, for both sessions.
    assert_eq!(
        sent.iter().filter(|m| m["method"] == "initialize").count(),
        1
    );

    // Ending one session leaves the child to the other.
    let ended = http
        .delete(&bridge.url)
        .header("mcp-session-id", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 204);
    let listed = http
        .post(&bridge.url)
        .header("mcp-session-id", &second)
        .header("accept", "application/json")
        .json(&json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(bridge.started().len(), 1);
    let _ = std::fs::remove_file(record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_requires_its_token_and_keeps_it_from_the_child() {
    let secret = "bridge-secret-7f3a";
    let entry = everything_entry();
    let bridge = Bridge::start_with_env(
        &["--token-env", "BRIDGE_TOKEN", "--env", "GREETING=hello"],
        &[("BRIDGE_TOKEN", secret)],
        &["node", entry.to_str().unwrap(), "stdio"],
    );
    let http = reqwest::Client::new();
    let initialize = initialize_request(1);
    for wrong in [None, Some("Bearer nope")] {
        let mut request = http.post(&bridge.url).json(&initialize);
        if let Some(wrong) = wrong {
            request = request.header("authorization", wrong);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 401);
        assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    }
    assert!(
        bridge.started().is_empty(),
        "a refused request started a child"
    );
    let opened = http
        .post(&bridge.url)
        .bearer_auth(secret)
        .header("accept", "application/json")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let env: Value = http
        .post(&bridge.url)
        .bearer_auth(secret)
        .header("mcp-session-id", &session)
        .header("accept", "application/json")
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "get-env", "arguments": {}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let env = env["result"]["content"][0]["text"].as_str().unwrap();
    assert!(env.contains("GREETING"), "{env}");
    assert!(
        !env.contains("BRIDGE_TOKEN") && !env.contains(secret),
        "{env}"
    );
}
