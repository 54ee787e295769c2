//! Confirmation by the user (a rule's `confirm`) end to end: real clients (the Python SDK's
//! with an elicitation callback, rmcp with its elicitation handler) answer the gateway's
//! question, and what reached the upstream is counted on the upstream's side (the rmcp
//! toolbox counts every call its tools run).

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

// The gateway suite's harness, of which these tests use a part.
#[allow(dead_code, unused_imports)]
mod gateway {
    pub mod support;
    pub mod toolbox;
}

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::support::{Fixture, Stack, message, post};
use gateway::toolbox::RmcpServer;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult,
    ElicitationAction, Implementation, ProtocolVersion,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{
    ClientHandler, ClientLifecycleMode, ClientServiceExt as _, ErrorData, RoleClient,
    ServiceExt as _,
};
use serde_json::{Value, json};

/// `echo` asks its user, with a limit of one call a minute; `send_money` asks its user, then
/// an approver when the amount is over 100; `add` asks nobody.
fn policy() -> Value {
    json!({
        "version": "1",
        "default": "deny",
        "tools": {
            "echo": {
                "confirm": { "message": "Echo {args.text}?", "timeout": "1m" },
                "limits": [{ "counter": "echo", "window": "minute", "max": 1 }]
            },
            "send_money": {
                "confirm": { "message": "Send {args.amount} to {args.to}?" },
                "approval": { "when": [{ "path": "args.amount", "op": "gt", "value": 100 }] }
            },
            "add": {}
        }
    })
}

async fn stack(doc: Value) -> (Stack, RmcpServer, Fixture) {
    let stack = Stack::new().await;
    let upstream = RmcpServer::start(true).await;
    let f = stack.fixture(&upstream.url, "streamable_http", doc).await;
    (stack, upstream, f)
}

/// What the Python client's run came to: its exit code, its results and the questions shown.
struct PythonRun {
    code: Option<i32>,
    results: Vec<Value>,
    asked: Vec<Value>,
}

/// Runs `tests/peers/confirm_client.py` (see its usage) against `url`.
async fn python(url: &str, mode: &str, answer: &str, plan: Value) -> PythonRun {
    let python = portcullis_tests::peers::peers_dir().join(".venv/bin/python");
    let script = portcullis_tests::peers::peers_dir().join("confirm_client.py");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(script)
            .args([url, mode, answer, &plan.to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client did not finish within 120 s")
    .expect("cannot run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let last: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    if output.status.code() == Some(0) {
        assert!(
            last.is_object(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    PythonRun {
        code: output.status.code(),
        results: last["results"].as_array().cloned().unwrap_or_default(),
        asked: last["asked"].as_array().cloned().unwrap_or_default(),
    }
}

/// An rmcp client's user: answers every confirmation with `action` (ticking it on accept) and
/// keeps the questions it was shown.
#[derive(Clone)]
struct User {
    action: ElicitationAction,
    asked: Arc<Mutex<Vec<String>>>,
}

impl User {
    fn new(action: ElicitationAction) -> Self {
        Self {
            action,
            asked: Arc::default(),
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl ClientHandler for User {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder().enable_elicitation().build(),
            Implementation::new("confirmation-test", "1"),
        )
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        if let ElicitRequestParams::FormElicitationParams { message, .. } = &request {
            self.asked.lock().unwrap().push(message.clone());
        }
        let result = ElicitResult::new(self.action.clone());
        Ok(match self.action {
            ElicitationAction::Accept => result.with_content(json!({"confirm": true})),
            _ => result,
        })
    }
}

async fn rmcp_stateless(url: &str, user: User) -> RunningService<RoleClient, User> {
    user.serve_with_lifecycle(
        StreamableHttpClientTransport::from_uri(url.to_owned()),
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
    )
    .await
    .unwrap()
}

fn call_params(name: &str, args: Value) -> CallToolRequestParams {
    let Value::Object(map) = args else {
        panic!("arguments must be an object")
    };
    CallToolRequestParams::new(name.to_owned()).with_arguments(map)
}

fn tool_text(result: &Value) -> String {
    result["ok"]["text"].as_str().unwrap_or_default().to_owned()
}

/// The audit events of `tool` that have their outcome, oldest first.
async fn finished(stack: &Stack, tool: &str, count: usize) -> Vec<Value> {
    let done = |e: &Value| e["tool"] == tool && !e["outcome"].is_null();
    for _ in 0..100 {
        let events: Vec<Value> = stack.audit().await.into_iter().filter(done).collect();
        if events.len() >= count {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "fewer than {count} finished events of {tool}: {:#?}",
        stack.audit().await
    );
}

/// Stateless era, the Python client: accept forwards exactly one call; unticked, declined and
/// cancelled ones deny and reach nothing; limits are charged for the confirmed call only.
#[tokio::test]
async fn python_client_stateless_confirms_declines_and_cancels() {
    let (stack, upstream, f) = stack(policy()).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let plan = json!([{"name": "echo", "args": {"text": "hi"}}]);
    for (answer, says) in [
        ("untick", "[POLICY DENIED] the user declined this call."),
        ("decline", "[POLICY DENIED] the user declined this call."),
        ("cancel", "[POLICY DENIED] the user cancelled this call."),
    ] {
        let run = python(&url, "2026-07-28", answer, plan.clone()).await;
        assert_eq!(
            run.results[0]["ok"]["is_error"], true,
            "{answer}: {:?}",
            run.results
        );
        assert_eq!(tool_text(&run.results[0]), says, "{answer}");
        assert_eq!(run.asked.len(), 1, "{answer}");
        assert_eq!(upstream.calls(), 0, "{answer}: the upstream ran a call");
    }
    // The declined calls charged nothing: the one call a minute is still there.
    let run = python(&url, "2026-07-28", "confirm", plan.clone()).await;
    assert_eq!(tool_text(&run.results[0]), "echo: hi", "{:?}", run.results);
    assert_eq!(upstream.calls(), 1);
    let asked = &run.asked[0];
    assert_eq!(asked["mode"], "form");
    assert_eq!(
        asked["message"],
        "Echo hi?\n\nTool: echo\nArguments: \\{\"text\":\"hi\"\\}"
    );
    assert_eq!(
        asked["requestedSchema"]["properties"]["confirm"]["type"],
        "boolean"
    );
    // Confirmed again: now the limit refuses, and nothing reaches the upstream.
    let run = python(&url, "2026-07-28", "confirm", plan).await;
    assert!(
        tool_text(&run.results[0]).starts_with("[RATE LIMITED]"),
        "{:?}",
        run.results
    );
    assert_eq!(upstream.calls(), 1);

    // The audit log: each question, then each answer on the retry's outcome.
    let events = finished(&stack, "echo", 10).await;
    let answers: Vec<&Value> = events
        .iter()
        .map(|e| &e["outcome"]["confirmation"])
        .filter(|c| !c.is_null())
        .collect();
    assert_eq!(
        answers,
        [
            "declined",
            "declined",
            "cancelled",
            "confirmed",
            "confirmed"
        ]
    );
    let asked = events
        .iter()
        .filter(|e| {
            e["decision"] == "confirmation_required" && e["outcome"].get("confirmation").is_none()
        })
        .count();
    assert_eq!(asked, 5, "one question per call: {events:#?}");
    let forwarded: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"]["upstream_status"] == 200)
        .collect();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0]["decision"], "confirmation_required");
    assert_eq!(forwarded[0]["outcome"]["confirmation"], "confirmed");
    gw.stop().await.unwrap();
}

/// Stateless era, rmcp with its elicitation handler: accept forwards one call, decline and
/// cancel deny; a call that needs no confirmation asks nothing.
#[tokio::test]
async fn rmcp_client_stateless_confirms_and_declines() {
    let (stack, upstream, f) = stack(policy()).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    for (action, calls) in [
        (ElicitationAction::Decline, 0),
        (ElicitationAction::Cancel, 0),
        (ElicitationAction::Accept, 1),
    ] {
        let user = User::new(action.clone());
        let client = rmcp_stateless(&url, user.clone()).await;
        let before = upstream.calls();
        let result = client
            .call_tool(call_params("send_money", json!({"amount": 5, "to": "ada"})))
            .await
            .unwrap();
        let result = serde_json::to_value(&result).unwrap();
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match action {
            ElicitationAction::Accept => assert_eq!(text, "sent 5 to ada"),
            ElicitationAction::Decline => {
                assert_eq!(text, "[POLICY DENIED] the user declined this call.");
            }
            _ => assert_eq!(text, "[POLICY DENIED] the user cancelled this call."),
        }
        assert_eq!(upstream.calls() - before, calls, "{action:?}");
        assert_eq!(
            user.asked(),
            ["Send 5 to ada?\n\nTool: send\\_money\nArguments: \\{\"amount\":5,\"to\":\"ada\"\\}"]
        );
        let added = client
            .call_tool(call_params("add", json!({"a": 1, "b": 2})))
            .await
            .unwrap();
        assert_ne!(added.is_error, Some(true));
        assert_eq!(user.asked().len(), 1, "add asks nobody");
        client.cancel().await.unwrap();
    }
    assert_eq!(upstream.calls(), 4);
    gw.stop().await.unwrap();
}

/// A stateless-era `tools/call` from a client that can answer an elicitation form.
fn asking_call(id: i64, name: &str, args: &Value, retry: Option<(&str, Value)>) -> String {
    let mut params = json!({
        "name": name, "arguments": args,
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}
        }
    });
    if let Some((state, answer)) = retry {
        params["requestState"] = json!(state);
        params["inputResponses"] = json!({ "portcullis_confirm": answer });
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}).to_string()
}

async fn post_asking(url: &str, name: &str, body: &str) -> Value {
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", name),
    ];
    let (status, _, body) = post(url, &headers, body).await;
    assert_eq!(status, 200, "{body}");
    message(&body)
}

fn accept() -> Value {
    json!({"action": "accept", "content": {"confirm": true}})
}

/// A confirmation is bound to its call: another grant, other arguments, a second use or a
/// late answer are refused; a later identical call is asked again.
#[tokio::test]
async fn a_confirmation_is_bound_to_its_call_and_used_once() {
    let (stack, upstream, f) = stack(policy()).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let args = json!({"amount": 5, "to": "ada"});
    let first = post_asking(
        &url,
        "send_money",
        &asking_call(1, "send_money", &args, None),
    )
    .await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let request = &result["inputRequests"]["portcullis_confirm"];
    assert_eq!(request["method"], "elicitation/create");
    assert_eq!(
        result["_meta"]["portcullis/decision"]["decision"],
        "confirmation_required"
    );
    let state = result["requestState"].as_str().unwrap().to_owned();

    // Other arguments, another grant, an altered state: refused, nothing forwarded.
    let other_args = json!({"amount": 5000, "to": "eve"});
    let altered = asking_call(2, "send_money", &other_args, Some((&state, accept())));
    let refused = post_asking(&url, "send_money", &altered).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    let (_, other_token) = stack.grant(f.tenant, f.server, f.policy, "agent-2").await;
    let other_url = url.replace(f.token.expose(), other_token.expose());
    let same = asking_call(3, "send_money", &args, Some((&state, accept())));
    let refused = post_asking(&other_url, "send_money", &same).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    let tampered = asking_call(
        3,
        "send_money",
        &args,
        Some((&format!("{state}x"), accept())),
    );
    let refused = post_asking(&url, "send_money", &tampered).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert_eq!(upstream.calls(), 0);

    // The right call with the user's yes: forwarded once, without the question or the answer.
    let confirmed = post_asking(&url, "send_money", &same).await;
    assert_eq!(
        confirmed["result"]["content"][0]["text"], "sent 5 to ada",
        "{confirmed}"
    );
    assert_eq!(upstream.calls(), 1);
    // Used twice: refused.
    let replayed = post_asking(&url, "send_money", &same).await;
    assert_eq!(replayed["error"]["code"], -32602, "{replayed}");
    assert!(
        replayed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used")
    );
    // A later identical call is asked again.
    let again = post_asking(
        &url,
        "send_money",
        &asking_call(4, "send_money", &args, None),
    )
    .await;
    assert_eq!(again["result"]["resultType"], "input_required", "{again}");
    // A retry without the answer is an invalid call.
    let state = again["result"]["requestState"].as_str().unwrap().to_owned();
    let mut unanswered: Value = serde_json::from_str(&asking_call(
        5,
        "send_money",
        &args,
        Some((&state, accept())),
    ))
    .unwrap();
    unanswered["params"]
        .as_object_mut()
        .unwrap()
        .remove("inputResponses");
    let refused = post_asking(&url, "send_money", &unanswered.to_string()).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert_eq!(upstream.calls(), 1);
    gw.stop().await.unwrap();
}

/// A question left unanswered past the rule's timeout is refused as timed out, and audited so.
#[tokio::test]
async fn an_answer_after_the_timeout_is_refused() {
    let doc = json!({"version": "1", "tools": {"echo": {"confirm": {"timeout": "1s"}}}});
    let (stack, upstream, f) = stack(doc).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let args = json!({"text": "late"});
    let first = post_asking(&url, "echo", &asking_call(1, "echo", &args, None)).await;
    let state = first["result"]["requestState"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = post_asking(
        &url,
        "echo",
        &asking_call(2, "echo", &args, Some((&state, accept()))),
    )
    .await;
    assert_eq!(late["error"]["code"], -32602, "{late}");
    assert!(
        late["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not confirm the call in time")
    );
    assert_eq!(upstream.calls(), 0);
    let events = finished(&stack, "echo", 2).await;
    assert_eq!(events[1]["decision"], "confirmation_required");
    assert_eq!(events[1]["outcome"]["confirmation"], "timed_out");
    gw.stop().await.unwrap();
}

/// A client without the elicitation capability: the rule's approval stands in for its user,
/// else the call is denied, saying why; nothing reaches the upstream.
#[tokio::test]
async fn clients_that_cannot_confirm_fall_back_to_approval_or_are_denied() {
    let (stack, upstream, f) = stack(policy()).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let plan = json!([
        {"name": "echo", "args": {"text": "hi"}},
        {"name": "send_money", "args": {"amount": 5, "to": "ada"}},
    ]);
    let run = python(&url, "2026-07-28", "unable", plan).await;
    assert!(run.asked.is_empty());
    assert_eq!(
        tool_text(&run.results[0]),
        "[POLICY DENIED] this call needs its user's confirmation, and the client cannot be \
         asked: it did not declare the elicitation capability (form mode)."
    );
    let approval = tool_text(&run.results[1]);
    assert!(approval.starts_with("[APPROVAL REQUIRED]"), "{approval}");
    assert!(approval.contains("cannot confirm it"), "{approval}");
    assert_eq!(upstream.calls(), 0);
    let events = finished(&stack, "send_money", 1).await;
    assert_eq!(events[0]["decision"], "approval_required");
    assert_eq!(events[0]["rule"], "/tools/send_money/approval");
    let events = finished(&stack, "echo", 1).await;
    assert_eq!(events[0]["decision"], "deny");
    gw.stop().await.unwrap();
}

/// Session era, the Python client: the question arrives on the call's stream; accept forwards
/// exactly one call, unticked, declined, cancelled and unanswered ones deny and reach nothing.
#[tokio::test]
async fn python_client_session_confirms_declines_cancels_and_times_out() {
    let mut doc = policy();
    doc["tools"]["echo"]["confirm"]["timeout"] = json!("2s");
    doc["tools"]["echo"]["limits"][0]["max"] = json!(10);
    let (stack, upstream, f) = stack(doc).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let plan = json!([{"name": "echo", "args": {"text": "hi"}}]);
    for (answer, says, calls) in [
        ("confirm", "echo: hi", 1),
        ("untick", "[POLICY DENIED] the user declined this call.", 1),
        ("decline", "[POLICY DENIED] the user declined this call.", 1),
        ("cancel", "[POLICY DENIED] the user cancelled this call.", 1),
        (
            "wait:4",
            "[POLICY DENIED] the user did not confirm this call in time.",
            1,
        ),
    ] {
        let run = python(&url, "legacy", answer, plan.clone()).await;
        assert_eq!(
            tool_text(&run.results[0]),
            says,
            "{answer}: {:?}",
            run.results
        );
        assert_eq!(run.asked.len(), 1, "{answer}");
        assert_eq!(
            run.asked[0]["message"],
            "Echo hi?\n\nTool: echo\nArguments: \\{\"text\":\"hi\"\\}"
        );
        assert_eq!(upstream.calls(), calls, "{answer}");
    }
    // Each question's outcome is the user's answer; the confirmed call has its own event,
    // forwarded, and charged once.
    let events = finished(&stack, "echo", 6).await;
    let answers: Vec<&str> = events
        .iter()
        .filter(|e| e["outcome"]["upstream_status"].is_null())
        .map(|e| e["outcome"]["confirmation"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        answers,
        [
            "confirmed",
            "declined",
            "declined",
            "cancelled",
            "timed_out"
        ]
    );
    let forwarded: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"]["upstream_status"] == 200)
        .collect();
    assert_eq!(forwarded.len(), 1, "{events:#?}");
    assert_eq!(forwarded[0]["decision"], "confirmation_required");
    assert_eq!(forwarded[0]["outcome"]["confirmation"], "confirmed");
    gw.stop().await.unwrap();
}

async fn rmcp_session(url: &str, user: User) -> RunningService<RoleClient, User> {
    user.serve(StreamableHttpClientTransport::from_uri(url.to_owned()))
        .await
        .unwrap()
}

/// Session era, rmcp with its elicitation handler: accept forwards one call (which then needs
/// an approver, as the rule says for large amounts), decline and cancel deny.
#[tokio::test]
async fn rmcp_client_session_confirms_and_declines() {
    let (stack, upstream, f) = stack(policy()).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    for (action, says) in [
        (
            ElicitationAction::Decline,
            "[POLICY DENIED] the user declined this call.",
        ),
        (
            ElicitationAction::Cancel,
            "[POLICY DENIED] the user cancelled this call.",
        ),
        (ElicitationAction::Accept, "sent 5 to ada"),
    ] {
        let user = User::new(action.clone());
        let client = rmcp_session(&url, user.clone()).await;
        let result = client
            .call_tool(call_params("send_money", json!({"amount": 5, "to": "ada"})))
            .await
            .unwrap();
        let result = serde_json::to_value(&result).unwrap();
        assert_eq!(result["content"][0]["text"], says, "{action:?}");
        assert_eq!(user.asked().len(), 1);
        client.cancel().await.unwrap();
    }
    assert_eq!(upstream.calls(), 1);
    // Confirmed, then an approver: the user confirms, then the approval is pending.
    let user = User::new(ElicitationAction::Accept);
    let client = rmcp_session(&url, user.clone()).await;
    let result = client
        .call_tool(call_params(
            "send_money",
            json!({"amount": 500, "to": "ada"}),
        ))
        .await
        .unwrap();
    let result = serde_json::to_value(&result).unwrap();
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("[APPROVAL REQUIRED]"), "{text}");
    assert_eq!(user.asked().len(), 1);
    assert_eq!(upstream.calls(), 1);
    client.cancel().await.unwrap();
    gw.stop().await.unwrap();
}

/// Session era: a client that closes the stream while the question is open is recorded as
/// cancelled, and the upstream receives nothing.
#[tokio::test]
async fn a_client_that_closes_the_stream_is_cancelled() {
    let (stack, upstream, f) = stack(policy()).await;
    let gw = stack.gateway().await;
    let plan = json!([{"name": "echo", "args": {"text": "bye"}}]);
    let run = python(&f.url(&gw), "legacy", "quit", plan).await;
    assert_eq!(run.code, Some(3));
    let cancelled = |e: &Value| e["outcome"]["confirmation"] == "cancelled";
    for _ in 0..200 {
        if stack.audit().await.iter().any(cancelled) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = stack.audit().await;
    let event = events
        .iter()
        .find(|e| cancelled(e))
        .expect("no cancelled event");
    assert_eq!(event["decision"], "confirmation_required");
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("closed the stream")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.calls(), 0);
    gw.stop().await.unwrap();
}

/// Session era, two replicas: the question's stream is held by one, the user's answer reaches
/// the other, and the call goes on, once.
#[tokio::test]
async fn the_answer_may_reach_another_replica() {
    let (stack, upstream, f) = stack(policy()).await;
    let (a, b) = (stack.gateway().await, stack.gateway().await);
    let (url_a, url_b) = (f.url(&a), f.url(&b));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}},
        "clientInfo": {"name": "raw-test", "version": "1"}}});
    let (status, headers, body) = post(&url_a, &[], &init.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let session = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let session_headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(post(&url_b, &session_headers, initialized).await.0, 202);

    let stream = reqwest::Client::new()
        .post(&url_a)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .body(gateway::support::call(
            2,
            "echo",
            json!({"text": "relayed"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut events = gateway::support::SseMessages::new(stream);
    let question = events.next().await.unwrap();
    assert_eq!(question["method"], "elicitation/create", "{question}");
    let answer = json!({"jsonrpc": "2.0", "id": question["id"],
                        "result": {"action": "accept", "content": {"confirm": true}}});
    let (status, _, body) = post(&url_b, &session_headers, &answer.to_string()).await;
    assert_eq!(status, 202, "{body}");
    let result = events.next().await.unwrap();
    assert_eq!(result["id"], 2);
    assert_eq!(
        result["result"]["content"][0]["text"], "echo: relayed",
        "{result}"
    );
    assert_eq!(upstream.calls(), 1);

    // The same answer again, or one under another grant, changes nothing and reaches no one.
    assert_eq!(
        post(&url_b, &session_headers, &answer.to_string()).await.0,
        202
    );
    let (_, other_token) = stack.grant(f.tenant, f.server, f.policy, "agent-2").await;
    let other_url = url_b.replace(f.token.expose(), other_token.expose());
    post(&other_url, &[], &answer.to_string()).await;
    assert_eq!(upstream.calls(), 1);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Limits: a confirmed call is charged once, and refunded when it fails upstream, in both
/// eras; a declined one was never charged (the first test shows it).
#[tokio::test]
async fn a_confirmed_call_that_fails_upstream_is_refunded() {
    let doc = json!({"version": "1", "tools": {"fail": {
        "confirm": {},
        "limits": [{ "counter": "fails", "window": "minute", "max": 1 }]
    }}});
    let (stack, upstream, f) = stack(doc).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    // Two failing calls a minute under a limit of one: the first one's charge came back.
    let plan = json!([
        {"name": "fail", "args": {"text": "one"}},
        {"name": "fail", "args": {"text": "two"}},
    ]);
    for (mode, calls) in [("2026-07-28", 2), ("legacy", 4)] {
        let run = python(&url, mode, "confirm", plan.clone()).await;
        for result in &run.results {
            assert_eq!(result["ok"]["is_error"], true, "{mode}: {result}");
            assert!(tool_text(result).starts_with("failed:"), "{mode}: {result}");
        }
        assert_eq!(run.asked.len(), 2, "{mode}");
        assert_eq!(upstream.calls(), calls, "{mode}");
    }
    gw.stop().await.unwrap();
}
