//! The gateway end to end: real Postgres and Redis, real MCP clients and servers (rmcp, the
//! Python SDK, server-everything), fixtures written straight into Postgres.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod gateway {
    pub mod support;
    pub mod toolbox;
}

use std::time::{Duration, Instant};

use gateway::support::{
    self, Fixture, SseMessages, Stack, call, message, open_session, open_stream, post,
    post_stateless, text,
};
use gateway::toolbox::RmcpServer;
use portcullis::Running;
use portcullis_core::egress::Egress;
use portcullis_core::{Invalidation, Keyring};
use portcullis_tests::peers::PeerProcess;
use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt as _, RoleClient, ServiceExt as _};
use serde_json::{Value, json};

/// The policy most tests use.
fn policy() -> Value {
    json!({
        "version": "1",
        "default": "deny",
        "hide": ["delete_*"],
        "tools": {
            "echo": {},
            "add": {},
            "whoami": {},
            "fail": { "limits": [{ "counter": "fails", "window": "minute", "max": 1 }] },
            "get_secret": { "deny_if": [{ "conditions": [], "on_deny": "Secrets stay secret." }] },
            "send_money": { "approval": { "when": [{ "path": "args.amount", "op": "gt", "value": 100 }] } },
            "trigger-*": {}
        }
    })
}

/// A stack with an rmcp upstream (`json_answers`: JSON rather than SSE replies) and a fixture
/// for it under `doc`.
async fn rmcp_stack(json_answers: bool, doc: Value) -> (Stack, RmcpServer, Fixture) {
    let stack = Stack::new().await;
    let upstream = RmcpServer::start(json_answers).await;
    let f = stack.fixture(&upstream.url, "streamable_http", doc).await;
    (stack, upstream, f)
}

async fn rmcp_session(url: &str) -> RunningService<RoleClient, ()> {
    ().serve(StreamableHttpClientTransport::from_uri(url.to_owned()))
        .await
        .unwrap()
}

async fn rmcp_stateless(url: &str) -> RunningService<RoleClient, ()> {
    ().serve_with_lifecycle(
        StreamableHttpClientTransport::from_uri(url.to_owned()),
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
    )
    .await
    .unwrap()
}

fn args(value: Value) -> CallToolRequestParams {
    let Value::Object(map) = value["arguments"].clone() else {
        panic!("arguments must be an object")
    };
    CallToolRequestParams::new(value["name"].as_str().unwrap().to_owned()).with_arguments(map)
}

fn result_text(result: &rmcp::model::CallToolResult) -> String {
    let value = serde_json::to_value(result).unwrap();
    value["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn tool_names(client: &RunningService<RoleClient, ()>) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_tools(None)
        .await
        .unwrap()
        .tools
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

const VISIBLE: [&str; 6] = ["add", "echo", "fail", "get_secret", "send_money", "whoami"];

/// Lists, allowed, denied and hidden calls through one client, whichever era.
async fn exercise(client: &RunningService<RoleClient, ()>) {
    assert_eq!(tool_names(client).await, VISIBLE);
    let echoed = client
        .call_tool(args(json!({"name": "echo", "arguments": {"text": "hi"}})))
        .await
        .unwrap();
    assert_eq!(result_text(&echoed), "echo: hi");
    assert_ne!(echoed.is_error, Some(true));

    let denied = client
        .call_tool(args(json!({"name": "get_secret", "arguments": {}})))
        .await
        .unwrap();
    assert_eq!(denied.is_error, Some(true));
    assert_eq!(result_text(&denied), "[POLICY DENIED] Secrets stay secret.");
    let meta = serde_json::to_value(&denied).unwrap()["_meta"]["portcullis/decision"].clone();
    assert_eq!(meta["rule"], "/tools/get_secret/deny_if/0", "{meta}");

    let hidden = client
        .call_tool(args(
            json!({"name": "delete_everything", "arguments": {"confirm": true}}),
        ))
        .await;
    let error = format!("{:?}", hidden.unwrap_err());
    assert!(
        error.contains("-32602") || error.contains("Unknown tool"),
        "{error}"
    );
}

#[tokio::test]
async fn rmcp_client_in_both_eras_through_the_gateway_to_rmcp_servers() {
    let stack = Stack::new().await;
    for json_answers in [false, true] {
        let upstream = RmcpServer::start(json_answers).await;
        let f = stack
            .fixture(&upstream.url, "streamable_http", policy())
            .await;
        let gw = stack.gateway().await;
        let url = f.url(&gw);

        let session = rmcp_session(&url).await;
        exercise(&session).await;
        session.cancel().await.unwrap();

        let stateless = rmcp_stateless(&url).await;
        exercise(&stateless).await;
        stateless.cancel().await.unwrap();
        // Denied and hidden calls never reached the upstream: only the two echoes did.
        assert_eq!(upstream.calls(), 2, "json answers: {json_answers}");
        gw.stop().await.unwrap();
    }
}

#[tokio::test]
async fn the_bearer_route_injects_server_credentials_and_never_forwards_the_clients() {
    let (stack, _upstream, f) = rmcp_stack(true, policy()).await;
    let gw = stack.gateway().await;
    let url = format!("http://{}/mcp/{}", gw.gateway.unwrap(), f.server);
    let config = StreamableHttpClientTransportConfig::with_uri(url.clone())
        .auth_header(f.token.expose().to_owned());
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let client = ().serve(transport).await.unwrap();
    let who = client
        .call_tool(args(json!({"name": "whoami", "arguments": {}})))
        .await
        .unwrap();
    assert_eq!(
        result_text(&who),
        "x-upstream-key=upstream-secret; authorization=; cookie="
    );
    client.cancel().await.unwrap();

    // The grant belongs to this server only.
    let other = format!(
        "http://{}/mcp/{}",
        gw.gateway.unwrap(),
        uuid::Uuid::now_v7()
    );
    let bearer = format!("Bearer {}", f.token.expose());
    let (status, headers, body) = post(
        &other,
        &[("authorization", &bearer)],
        &support::initialize(1),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(headers.contains_key("www-authenticate"));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn refusals_have_the_right_status_and_json_rpc_error() {
    let (stack, _upstream, f) = rmcp_stack(true, policy()).await;
    let gw = stack
        .gateway_with(
            &portcullis_tests::redis_url(),
            &["--gateway-max-body", "2KiB"],
        )
        .await;
    let url = f.url(&gw);
    let addr = gw.gateway.unwrap();

    // 401: no token, malformed token, unknown token; each with WWW-Authenticate.
    for (target, headers) in [
        (format!("http://{addr}/mcp/{}", f.server), vec![]),
        (format!("http://{addr}/g/not-a-token/mcp"), vec![]),
        (
            format!(
                "http://{addr}/g/{}/mcp",
                portcullis_core::GrantToken::generate().expose()
            ),
            vec![],
        ),
    ] {
        let (status, headers_out, body) = post(&target, &headers, &support::initialize(1)).await;
        assert_eq!(status, 401, "{target}: {body}");
        assert!(headers_out.contains_key("www-authenticate"));
        assert_eq!(message(&body)["error"]["code"], -32001, "{body}");
        assert!(!body.contains(f.token.expose()));
    }

    // 415, 413.
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "text/plain")
        .body(support::initialize(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let big = call(1, "echo", json!({"text": "x".repeat(4096)}));
    let (status, _, body) = post(&url, &[], &big).await;
    assert_eq!(status, 413, "{body}");

    // Batches.
    let (status, _, body) = post(&url, &[], &format!("[{}]", support::initialize(1))).await;
    assert_eq!(status, 400);
    assert_eq!(message(&body)["error"]["code"], -32600, "{body}");

    // A method call without an id is not a notification: it would pass undecided.
    let no_id = json!({"jsonrpc": "2.0", "method": "tools/call",
        "params": {"name": "get_secret", "arguments": {}}});
    let (status, _, body) = post(&url, &[], &no_id.to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(message(&body)["error"]["code"], -32600, "{body}");
    assert!(body.contains("without an id"), "{body}");

    // Stateless era: Mcp-Name must mirror the body, and policy is decided on the body.
    let stateless = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": "get_secret", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
    .to_string();
    let (status, _, body) = post(
        &url,
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ],
        &stateless,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(message(&body)["error"]["code"], -32020, "{body}");
    assert_eq!(message(&body)["id"], 5);
    let (status, _, body) = post(
        &url,
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "get_secret"),
        ],
        &stateless,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        text(&message(&body)).starts_with("[POLICY DENIED]"),
        "{body}"
    );

    // A `tools/call` the gateway cannot read is refused with a JSON-RPC error, and audited.
    let (status, _, body) = post(
        &url,
        &[],
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"arguments":{}}}"#,
    )
    .await;
    assert_eq!(message(&body)["error"]["code"], -32602, "{status} {body}");
    assert_eq!(message(&body)["id"], 6);
    let unreadable = |e: &Value| {
        e["method"] == "tools/call"
            && e["decision"] == "error"
            && e["message"].as_str().is_some_and(|m| m.contains("name"))
    };
    let entries = stack.audit_until(unreadable).await;
    let unread = entries.iter().find(|e| unreadable(e)).unwrap();
    assert!(unread["tool"].is_null(), "{unread}");
    assert!(
        unread["message"].as_str().unwrap().contains("name"),
        "{unread}"
    );

    // A session id opens only under the grant it was issued to.
    let session = open_session(&url).await;
    let (_, other_token) = stack.grant(f.tenant, f.server, f.policy, "agent-2").await;
    let other_url = format!("http://{addr}/g/{}/mcp", other_token.expose());
    let (status, _, body) = post(
        &other_url,
        &[
            ("mcp-session-id", &session),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        &call(2, "echo", json!({"text": "x"})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = post(
        &url,
        &[
            ("mcp-session-id", &session),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        &call(2, "echo", json!({"text": "x"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&message(&body)), "echo: x");

    // Session era: the stateless era's mirrored headers are not checked, so not forwarded.
    // Only a GET resumes a stream (and has its replays filtered): a POST's Last-Event-ID,
    // sealed or not, is not forwarded either.
    let session_era = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let mirrored = [
        ("mcp-method", "tools/list"),
        ("mcp-name", "echo"),
        ("mcp-param-x", "1"),
    ];
    for extra in [&mirrored[..], &[("last-event-id", "0")]] {
        let headers = [&session_era[..], extra].concat();
        let (status, _, body) = post(&url, &headers, &call(3, "whoami", json!({}))).await;
        assert_eq!(status, 200, "{extra:?}: {body}");
        assert!(
            text(&message(&body)).ends_with("cookie="),
            "{extra:?}: {body}"
        );
    }
    // A header the gateway checks may come only once: it reads one copy, and what sits
    // behind it could read the other.
    let (status, _, body) = post(
        &url,
        &[
            ("mcp-session-id", &session),
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-protocol-version", "2026-07-28"),
        ],
        &call(4, "echo", json!({"text": "x"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(message(&body)["error"]["code"], -32020, "{body}");
    assert!(body.contains("repeated"), "{body}");
    // Refused before being decided, yet audited: the header mismatch, the repeated header,
    // a batch.
    let (status, _, body) = post(&url, &[], &format!("[{}]", call(7, "echo", json!({})))).await;
    assert_eq!(status, 400, "{body}");
    for said in ["Mcp-Name", "repeated", "batch"] {
        stack
            .audit_until(|e| {
                e["decision"] == "error" && e["message"].as_str().is_some_and(|m| m.contains(said))
            })
            .await;
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn limits_say_when_to_retry_and_failed_calls_are_refunded() {
    let mut doc = policy();
    doc["tools"]["echo"] =
        json!({"limits": [{"counter": "echo", "window": "minute", "max": 2, "scope": "identity"}]});
    let (stack, upstream, f) = rmcp_stack(true, doc).await;
    let gw = stack.gateway().await;
    let client = rmcp_stateless(&f.url(&gw)).await;
    for _ in 0..2 {
        let ok = client
            .call_tool(args(json!({"name": "echo", "arguments": {"text": "a"}})))
            .await
            .unwrap();
        assert_eq!(result_text(&ok), "echo: a");
    }
    let limited = client
        .call_tool(args(json!({"name": "echo", "arguments": {"text": "a"}})))
        .await
        .unwrap();
    assert_eq!(limited.is_error, Some(true));
    let said = result_text(&limited);
    assert!(said.starts_with("[RATE LIMITED] rate limit /tools/echo/limits/0 reached: at most 2 per minute; retry after"), "{said}");
    let meta = serde_json::to_value(&limited).unwrap()["_meta"]["portcullis/decision"].clone();
    assert!(meta["retry_after_ms"].as_u64().unwrap() > 50_000, "{meta}");
    assert_eq!(meta["decision"], "rate_limited");

    // `fail` allows one call a minute, but failed calls give their charge back.
    for _ in 0..3 {
        let failed = client
            .call_tool(args(json!({"name": "fail", "arguments": {"text": "boom"}})))
            .await
            .unwrap();
        assert_eq!(
            result_text(&failed),
            "failed: boom",
            "a failed call was not refunded"
        );
        // The refund happens after the answer; give it a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(upstream.calls(), 5);
    client.cancel().await.unwrap();
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn approvals_pass_exactly_once_after_approval() {
    let (stack, upstream, f) = rmcp_stack(true, policy()).await;
    let gw = stack.gateway().await;
    let client = rmcp_session(&f.url(&gw)).await;
    let big = || args(json!({"name": "send_money", "arguments": {"amount": 250, "to": "bob"}}));

    let first = client.call_tool(big()).await.unwrap();
    assert_eq!(first.is_error, Some(true));
    let said = result_text(&first);
    assert!(said.starts_with("[APPROVAL REQUIRED]"), "{said}");
    let meta = serde_json::to_value(&first).unwrap()["_meta"]["portcullis/decision"].clone();
    let approval = meta["approval_id"].as_str().unwrap().to_owned();
    assert!(
        approval.starts_with("apr_") && said.contains(&approval),
        "{said}"
    );

    // Asking again before a decision points at the same approval.
    let again = client.call_tool(big()).await.unwrap();
    assert!(result_text(&again).contains(&approval));
    // Small amounts need no approval.
    let small = client
        .call_tool(args(
            json!({"name": "send_money", "arguments": {"amount": 5, "to": "bob"}}),
        ))
        .await
        .unwrap();
    assert_eq!(result_text(&small), "sent 5 to bob");

    let (tool, status): (String, String) =
        sqlx::query_as("SELECT tool, status FROM approvals WHERE id = $1")
            .bind(&approval)
            .fetch_one(stack.db.pool())
            .await
            .unwrap();
    assert_eq!((tool.as_str(), status.as_str()), ("send_money", "pending"));
    // The approver approves, as the control plane would.
    sqlx::query("UPDATE approvals SET status = 'approved', decided_at = now() WHERE id = $1")
        .bind(&approval)
        .execute(stack.db.pool())
        .await
        .unwrap();
    // Other arguments are another call: still needs approval.
    let other = client
        .call_tool(args(
            json!({"name": "send_money", "arguments": {"amount": 251, "to": "bob"}}),
        ))
        .await
        .unwrap();
    assert!(result_text(&other).starts_with("[APPROVAL REQUIRED]"));

    let passed = client.call_tool(big()).await.unwrap();
    assert_eq!(result_text(&passed), "sent 250 to bob");
    let third = client.call_tool(big()).await.unwrap();
    let said = result_text(&third);
    assert!(said.starts_with("[APPROVAL REQUIRED]"), "{said}");
    assert!(
        !said.contains(&approval),
        "a consumed approval was reused: {said}"
    );
    assert_eq!(upstream.calls(), 2);

    // A consumed approval given back (its call was then rate limited) while a retry opened a
    // new pending one for the same call: the given-back approval stands, the pending one goes.
    let pending =
        serde_json::to_value(&third).unwrap()["_meta"]["portcullis/decision"]["approval_id"]
            .as_str()
            .unwrap()
            .to_owned();
    portcullis_gateway::approvals::restore(stack.db.pool(), f.tenant, &approval)
        .await
        .unwrap();
    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, status FROM approvals WHERE id IN ($1, $2) ORDER BY id = $1 DESC",
    )
    .bind(&approval)
    .bind(&pending)
    .fetch_all(stack.db.pool())
    .await
    .unwrap();
    assert_eq!(
        statuses,
        [
            (approval.clone(), "approved".into()),
            (pending, "expired".into())
        ]
    );
    let restored = client.call_tool(big()).await.unwrap();
    assert_eq!(result_text(&restored), "sent 250 to bob");
    assert_eq!(upstream.calls(), 3);
    client.cancel().await.unwrap();
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_session_continues_on_a_second_gateway_and_get_delete_pass_through() {
    let (stack, _upstream, f) = rmcp_stack(false, policy()).await;
    // Two gateway processes: they share nothing but Postgres, Redis and the session keys.
    let a = stack.gateway_process(&[]).await;
    let b = stack.gateway_process(&[]).await;
    let session = open_session(&f.url(&a)).await;
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (status, _, body) =
        post(&f.url(&b), &headers, &call(2, "echo", json!({"text": "b"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&message(&body)), "echo: b");

    // The session's server→client stream opens through either gateway.
    let response = open_stream(&f.url(&b), &session).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    drop(response);

    let deleted = reqwest::Client::new()
        .delete(f.url(&a))
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let (status, _, body) =
        post(&f.url(&b), &headers, &call(3, "echo", json!({"text": "c"}))).await;
    assert_eq!(status, 404, "the upstream session should be gone: {body}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn sessions_end_at_their_max_age_and_a_key_rotation_does_not_make_them_younger() {
    let stack = Stack::new().await;
    // The Python SDK's server names its session in every answer, so the gateway hands back
    // the client's id in each, sealed anew when a retiring key sealed it.
    let upstream = portcullis_tests::peers::python_server("streamable-http", false);
    let f = stack
        .fixture(&upstream.url("/mcp"), "streamable_http", policy())
        .await;
    let redis = portcullis_tests::redis_url();
    let a = stack
        .gateway_with(&redis, &["--session-max-age", "4s"])
        .await;
    let opened = Instant::now();
    let session = open_session(&f.url(&a)).await;
    let echo = |url: String, session: String| async move {
        let headers = [
            ("mcp-session-id", session.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
        ];
        post(&url, &headers, &call(2, "echo", json!({"text": "aged"}))).await
    };

    // A replica whose ring has a new active key: the session goes on, its id sealed anew,
    // well after it was issued (an id sealed as new then would still open at the end).
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(opened.elapsed())).await;
    let ring = format!("{},{}", Keyring::generate(8).1, stack.session_keys);
    let b = stack
        .gateway_with(
            &redis,
            &["--session-max-age", "4s", "--session-keys", &ring],
        )
        .await;
    let (status, headers, body) = echo(f.url(&b), session.clone()).await;
    assert_eq!(text(&message(&body)), "echo: aged", "{status} {body}");
    let resealed = headers["mcp-session-id"].to_str().unwrap().to_owned();
    assert_ne!(
        resealed, session,
        "an id sealed by a retiring key is sealed anew"
    );
    let (status, _, body) = echo(f.url(&b), resealed.clone()).await;
    assert_eq!(text(&message(&body)), "echo: aged", "{status} {body}");

    // Past the maximum age, both ids are refused as an ended session (404, which tells a
    // client to start anew, saying why), and a new session opens.
    tokio::time::sleep(Duration::from_millis(4200).saturating_sub(opened.elapsed())).await;
    for (gw, id) in [(&a, &session), (&b, &session), (&b, &resealed)] {
        let (status, _, body) = echo(f.url(gw), id.clone()).await;
        assert_eq!(status, 404, "{body}");
        let error = &message(&body)["error"];
        assert_eq!(error["code"], -32002, "{body}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("session expired"),
            "{body}"
        );
    }
    let fresh = open_session(&f.url(&b)).await;
    let (status, _, body) = echo(f.url(&b), fresh).await;
    assert_eq!(text(&message(&body)), "echo: aged", "{status} {body}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Stops `gw`, checking it takes little more than its 1 s grace period: what is still open
/// then is closed, not waited for.
async fn stop_within_the_grace_period(gw: Running) {
    let started = Instant::now();
    gw.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_writes_every_audit_entry_and_closes_streams_after_the_grace_period() {
    let (stack, _upstream, f) = rmcp_stack(false, policy()).await;
    let gw = stack.gateway().await;
    let addr = gw.gateway.unwrap();
    let session = open_session(&f.url(&gw)).await;
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    // Calls on every worker thread (each connection lands on one of them).
    for id in 0..8 {
        let (status, _, body) = post(
            &f.url(&gw),
            &headers,
            &call(10 + id, "echo", json!({"text": "x"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // A server→client stream that stays open until the gateway closes it.
    let mut stream = open_stream(&f.url(&gw), &session).await;
    assert_eq!(stream.status(), 200);

    stop_within_the_grace_period(gw).await;
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the open stream outlived the gateway");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the gateway still accepts connections after shutdown"
    );
    // Every call's decision and outcome reached the stream before the workers stopped.
    let entries = stack.audit().await;
    let calls: Vec<&Value> = entries
        .iter()
        .filter(|e| e["tool"] == "echo" && e["session"].as_str() == Some(session.as_str()))
        .collect();
    let outcomes = calls.iter().filter(|e| !e["outcome"].is_null()).count();
    assert_eq!(outcomes, 8, "outcome entries missing: {calls:#?}");
}

/// Makes `doc` version `version` of `f`'s policy, its current one, and tells the gateways.
async fn publish_policy_version(stack: &Stack, f: &Fixture, version: i32, doc: &Value) {
    sqlx::query("INSERT INTO policy_versions (tenant_id, policy_id, version, document) VALUES ($1, $2, $3, $4)")
        .bind(f.tenant.0)
        .bind(f.policy.0)
        .bind(version)
        .bind(doc)
        .execute(stack.db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE policies SET current_version = $2 WHERE id = $1")
        .bind(f.policy.0)
        .bind(version)
        .execute(stack.db.pool())
        .await
        .unwrap();
    stack
        .publish(&Invalidation::Policy {
            tenant_id: f.tenant,
            policy_id: f.policy,
        })
        .await;
}

#[tokio::test]
async fn revocation_and_policy_changes_apply_within_a_second() {
    let (stack, _upstream, f) = rmcp_stack(true, policy()).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let send = |id: i64, name: &'static str| {
        let url = url.clone();
        async move { post_stateless(&url, &[], id, name, json!({"text": "x"})).await }
    };
    let (status, _, body) = send(1, "echo").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&message(&body)), "echo: x");

    // A new policy version that denies echo.
    let mut doc = policy();
    doc["tools"]["echo"] = json!({"deny_if": [{"conditions": [], "on_deny": "No more echoes."}]});
    let started = Instant::now();
    publish_policy_version(&stack, &f, 2, &doc).await;
    loop {
        let (_, _, body) = send(2, "echo").await;
        if text(&message(&body)) == "[POLICY DENIED] No more echoes." {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "policy change not applied: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    revoke(&stack, &f).await;
    loop {
        let (status, _, _) = send(3, "add").await;
        if status == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "revocation not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await.unwrap();
}

/// Reads `stream` to its end in the background; the instant it ended.
fn end_of(mut stream: reqwest::Response) -> tokio::task::JoinHandle<Instant> {
    tokio::spawn(async move {
        while let Ok(Some(_)) = stream.chunk().await {}
        Instant::now()
    })
}

#[tokio::test]
async fn open_streams_end_with_their_grant_and_their_session() {
    let (stack, upstream, revoked) = rmcp_stack(false, policy()).await;
    let expiring = stack
        .fixture(&upstream.url, "streamable_http", policy())
        .await;
    let aging = stack
        .fixture(&upstream.url, "streamable_http", policy())
        .await;
    let gw = stack.gateway().await;
    let max_age = stack
        .gateway_with(&portcullis_tests::redis_url(), &["--session-max-age", "2s"])
        .await;
    stack.subscribed(2).await;

    // Revoked while a session's stream is open: the stream ends within a second.
    let url = revoked.url(&gw);
    let session = open_session(&url).await;
    let stream = open_stream(&url, &session).await;
    assert_eq!(stream.status(), 200);
    let ended = end_of(stream);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!ended.is_finished(), "a stream ended with nothing ended");
    let started = Instant::now();
    revoke(&stack, &revoked).await;
    let at = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the stream outlived its revoked grant")
        .unwrap();
    assert!(at - started < Duration::from_secs(1), "{:?}", at - started);
    assert_eq!(open_stream(&url, &session).await.status(), 401);

    // Expiring while open: the stream ends at the expiry, which no message announces.
    sqlx::query("UPDATE grants SET expires_at = now() + interval '2 seconds' WHERE id = $1")
        .bind(expiring.grant.0)
        .execute(stack.db.pool())
        .await
        .unwrap();
    let started = Instant::now();
    let url = expiring.url(&gw);
    let session = open_session(&url).await;
    let ended = end_of(open_stream(&url, &session).await);
    let at = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the stream outlived its expired grant")
        .unwrap();
    let lived = at - started;
    assert!(
        lived > Duration::from_millis(1500) && lived < Duration::from_secs(3),
        "{lived:?}"
    );
    assert_eq!(open_stream(&url, &session).await.status(), 401);

    // A session past its maximum age: its stream ends then (the age counts whole seconds
    // from the second it was issued), and the session is gone.
    let url = aging.url(&max_age);
    let session = open_session(&url).await;
    let started = Instant::now();
    let ended = end_of(open_stream(&url, &session).await);
    let at = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the stream outlived its session")
        .unwrap();
    assert!(at - started < Duration::from_secs(3), "{:?}", at - started);
    assert_eq!(open_stream(&url, &session).await.status(), 404);
    gw.stop().await.unwrap();
    max_age.stop().await.unwrap();
}

/// A gateway whose Redis is reached through a proxy the test can cut, with a short limiter
/// timeout.
async fn behind_chaos(stack: &Stack) -> (portcullis_tests::ChaosProxy, Running) {
    let proxy = portcullis_tests::ChaosProxy::start(portcullis_tests::redis_addr()).await;
    let gw = stack
        .gateway_with(
            &format!("redis://{}", proxy.addr()),
            &["--limiter-timeout", "200ms"],
        )
        .await;
    (proxy, gw)
}

/// While the invalidation feed is down (Redis out of reach), announcements are missed: the
/// gateway keeps what it caches for at most half a second, so a revocation made meanwhile still
/// takes effect within a second.
#[tokio::test]
async fn a_revocation_missed_while_the_feed_is_down_applies_within_a_second() {
    if portcullis_tests::skipped_on_cluster(
        "a_revocation_missed_while_the_feed_is_down_applies_within_a_second",
    ) {
        return;
    }
    let (stack, _upstream, f) = rmcp_stack(true, policy()).await;
    let (proxy, gw) = behind_chaos(&stack).await;
    let url = f.url(&gw);
    let call = |id: i64| {
        let url = url.clone();
        async move {
            post_stateless(&url, &[], id, "echo", json!({"text": "x"}))
                .await
                .0
        }
    };
    assert_eq!(call(1).await, 200);
    proxy.cut();
    // Long enough for the reconnection attempts to back off to their longest wait, with the
    // grant in use (and cached) all along.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(call(2).await, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query("UPDATE grants SET revoked_at = now() WHERE id = $1")
        .bind(f.grant.0)
        .execute(stack.db.pool())
        .await
        .unwrap();
    let revoked = Instant::now();
    while call(3).await != 401 {
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "the revoked grant still works"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.restore();
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn when_redis_is_down_on_limiter_error_decides_fast() {
    if portcullis_tests::skipped_on_cluster("when_redis_is_down_on_limiter_error_decides_fast") {
        return;
    }
    let limited = json!({"limits": [{"counter": "c", "window": "minute", "max": 100}]});
    let mut closed = policy();
    closed["tools"]["echo"] = limited.clone();
    let mut open = policy();
    open["on_limiter_error"] = json!("allow");
    open["tools"]["echo"] = limited;
    let (stack, upstream, f_closed) = rmcp_stack(true, closed).await;
    let f_open = stack.fixture(&upstream.url, "streamable_http", open).await;
    let (proxy, gw) = behind_chaos(&stack).await;
    let echo = |url: String| async move {
        post_stateless(&url, &[], 1, "echo", json!({"text": "r"})).await
    };
    // Warm both grants while Redis is up.
    for f in [&f_closed, &f_open] {
        let (status, _, body) = echo(f.url(&gw)).await;
        assert_eq!(text(&message(&body)), "echo: r", "{status} {body}");
    }
    proxy.cut();
    let started = Instant::now();
    let (status, _, body) = echo(f_closed.url(&gw)).await;
    assert_eq!(status, 200, "{body}");
    let said = text(&message(&body));
    assert!(
        said.starts_with("[POLICY DENIED]") && said.contains("unavailable"),
        "{said}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let (_, _, body) = echo(f_open.url(&gw)).await;
    assert_eq!(text(&message(&body)), "echo: r");
    // Calls without limits never needed the limiter.
    let (_, _, body) =
        post_stateless(&f_closed.url(&gw), &[], 2, "add", json!({"a": 1, "b": 2})).await;
    assert_eq!(text(&message(&body)), "3");
    proxy.restore();
    gw.stop().await.unwrap();
}

/// Revokes `f`'s grant as the control plane does: in Postgres, then announced.
async fn revoke(stack: &Stack, f: &Fixture) {
    sqlx::query("UPDATE grants SET revoked_at = now() WHERE id = $1")
        .bind(f.grant.0)
        .execute(stack.db.pool())
        .await
        .unwrap();
    stack
        .publish(&Invalidation::Grant {
            tenant_id: f.tenant,
            grant_id: f.grant,
        })
        .await;
}

/// Calls `echo` through `url` until it is served (within five seconds).
async fn served_once_postgres_is_back(url: &str) {
    let mut said = String::new();
    for _ in 0..50 {
        let (_, _, body) = post_stateless(url, &[], 1, "echo", json!({"text": "pg"})).await;
        said = text(&message(&body));
        if said == "echo: pg" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(said, "echo: pg", "not served again once Postgres is back");
}

#[tokio::test]
async fn when_postgres_is_down_cached_grants_serve_until_they_expire_and_failures_are_audited() {
    let ttl = Duration::from_secs(2);
    let (stack, upstream, warm) = rmcp_stack(true, policy()).await;
    let cold = stack
        .fixture(&upstream.url, "streamable_http", policy())
        .await;
    let proxy = portcullis_tests::ChaosProxy::start(stack.db.addr()).await;
    let config = stack.config_on(
        &stack.db.url_via(proxy.addr()),
        &portcullis_tests::redis_url(),
        &["--grant-cache-ttl", "2s"],
    );
    let gw = portcullis::start(&config, portcullis::Role::Gateway)
        .await
        .unwrap();
    stack.subscribed(1).await;
    let echo = |url: String| async move {
        post_stateless(&url, &[], 1, "echo", json!({"text": "pg"})).await
    };
    let (status, _, body) = echo(warm.url(&gw)).await;
    assert_eq!(text(&message(&body)), "echo: pg", "{status} {body}");
    let warmed = Instant::now();
    proxy.cut();

    // A cached grant keeps serving calls that need nothing more from Postgres.
    let (status, _, body) = echo(warm.url(&gw)).await;
    assert_eq!(text(&message(&body)), "echo: pg", "{status} {body}");

    // Everything that needs Postgres answers 503 with a JSON-RPC error, within the pool's
    // acquire timeout: a call that needs an approval, a grant not in the cache.
    let unavailable = |status: u16, body: &str| {
        assert_eq!(status, 503, "{body}");
        let error = &message(body)["error"];
        assert_eq!(error["code"], -32603, "{body}");
        assert_eq!(error["message"], "the gateway cannot reach its database");
    };
    let started = Instant::now();
    let (status, _, body) = post_stateless(
        &warm.url(&gw),
        &[],
        2,
        "send_money",
        json!({"amount": 500, "to": "eve"}),
    )
    .await;
    unavailable(status, &body);
    let (status, _, body) = echo(cold.url(&gw)).await;
    unavailable(status, &body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    // Without a grace, the gateway is not ready while Postgres is down.
    let ready = reqwest::get(format!("http://{}/readyz", gw.gateway.unwrap()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    // Past twice the TTL, a grant Postgres cannot confirm is no longer trusted.
    tokio::time::sleep((ttl * 2 + Duration::from_millis(300)).saturating_sub(warmed.elapsed()))
        .await;
    let (status, _, body) = echo(warm.url(&gw)).await;
    unavailable(status, &body);

    proxy.restore();
    for f in [&warm, &cold] {
        served_once_postgres_is_back(&f.url(&gw)).await;
    }

    // The call that failed on the database is in the audit log as an error.
    let entries = stack
        .audit_until(|e| e["tool"] == "send_money" && e["decision"] == "error")
        .await;
    let failed = entries.iter().find(|e| e["tool"] == "send_money").unwrap();
    assert_eq!(failed["message"], "the gateway cannot reach its database");
    assert_eq!(failed["rule"], "/tools/send_money/approval", "{failed}");
    assert!(failed["outcome"]["upstream_status"].is_null(), "{failed}");
    gw.stop().await.unwrap();
}

/// With `--grant-cache-grace`, cached grants and catalogues keep serving through a Postgres
/// outage past twice the TTL, up to the grace; a revocation announced meanwhile still applies
/// at once, and nothing is trusted past the grace.
#[tokio::test]
async fn with_a_grace_cached_grants_ride_out_a_postgres_outage_but_not_a_revocation() {
    let (ttl, grace) = (Duration::from_secs(1), Duration::from_secs(10));
    let (stack, upstream, warm) = rmcp_stack(true, policy()).await;
    let idle = stack
        .fixture(&upstream.url, "streamable_http", policy())
        .await;
    let revoked = stack
        .fixture(&upstream.url, "streamable_http", policy())
        .await;
    let proxy = portcullis_tests::ChaosProxy::start(stack.db.addr()).await;
    let config = stack.config_on(
        &stack.db.url_via(proxy.addr()),
        &portcullis_tests::redis_url(),
        &["--grant-cache-ttl", "1s", "--grant-cache-grace", "10s"],
    );
    let gw = portcullis::start(&config, portcullis::Role::Gateway)
        .await
        .unwrap();
    stack.subscribed(1).await;
    let echo = |url: String| async move {
        post_stateless(&url, &[], 1, "echo", json!({"text": "pg"})).await
    };
    for f in [&warm, &idle, &revoked] {
        let (status, _, body) = echo(f.url(&gw)).await;
        assert_eq!(text(&message(&body)), "echo: pg", "{status} {body}");
    }
    let warmed = Instant::now();
    proxy.cut();

    // Past twice the TTL: a grant in use (its reloads fail meanwhile) and one left idle both
    // still serve, and so does the server's catalogue (a tools/list, filtered as before).
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let (status, _, body) = echo(warm.url(&gw)).await;
    assert_eq!(text(&message(&body)), "echo: pg", "{status} {body}");
    tokio::time::sleep((ttl * 2 + Duration::from_millis(300)).saturating_sub(warmed.elapsed()))
        .await;
    let (status, _, body) = echo(warm.url(&gw)).await;
    assert_eq!(text(&message(&body)), "echo: pg", "{status} {body}");
    let (status, _, body) = echo(idle.url(&gw)).await;
    assert_eq!(text(&message(&body)), "echo: pg", "{status} {body}");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}}}});
    let (status, _, body) = post(
        &warm.url(&gw),
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ],
        &list.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<Value> = message(&body)["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(json!(names), json!(VISIBLE), "{body}");

    // The gateway's listener stays ready (a readiness probe must not take it out of rotation
    // while it serves), and says what it lacks.
    let ready = reqwest::get(format!("http://{}/readyz", gw.gateway.unwrap()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["degraded"], json!(["postgres"]), "{ready}");

    // A revocation the control plane announces applies at once, outage or not: Postgres
    // cannot confirm the grant, so it is refused.
    revoke(&stack, &revoked).await;
    let started = Instant::now();
    loop {
        let (status, _, body) = echo(revoked.url(&gw)).await;
        if status == 503 {
            assert_eq!(
                message(&body)["error"]["message"],
                "the gateway cannot reach its database"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Past the grace, nothing is trusted.
    tokio::time::sleep(
        (ttl * 2 + grace + Duration::from_millis(300)).saturating_sub(warmed.elapsed()),
    )
    .await;
    let (status, _, body) = echo(warm.url(&gw)).await;
    assert_eq!(status, 503, "{body}");

    proxy.restore();
    served_once_postgres_is_back(&warm.url(&gw)).await;
    let (status, _, _) = echo(revoked.url(&gw)).await;
    assert_eq!(status, 401);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn every_request_is_audited_before_and_after_without_the_token() {
    let mut doc = policy();
    doc["audit"] = json!({"arguments": "values"});
    let (stack, _upstream, f) = rmcp_stack(true, doc).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let (_, _, body) = post_stateless(
        &url,
        &[("x-request-id", "req-123")],
        7,
        "echo",
        json!({"text": "hello", "password": "hunter2"}),
    )
    .await;
    assert_eq!(text(&message(&body)), "echo: hello");
    post_stateless(&url, &[], 8, "get_secret", json!({})).await;
    let entries = stack
        .audit_until(|e| e["tool"] == "get_secret" && !e["outcome"].is_null())
        .await;
    let echo: Vec<&Value> = entries.iter().filter(|e| e["tool"] == "echo").collect();
    let entries = if echo.len() < 2 {
        stack
            .audit_until(|e| e["tool"] == "echo" && !e["outcome"].is_null())
            .await
    } else {
        entries
    };
    let echo: Vec<&Value> = entries.iter().filter(|e| e["tool"] == "echo").collect();
    assert_eq!(echo.len(), 2, "{entries:#?}");
    assert!(
        echo[0]["outcome"].is_null(),
        "the decision is written first"
    );
    assert_eq!(echo[0]["id"], echo[1]["id"]);
    assert_eq!(echo[0]["ts"], echo[1]["ts"]);
    let done = echo[1];
    assert_eq!(done["decision"], "allow");
    assert_eq!(done["outcome"]["upstream_status"], 200);
    assert_eq!(done["outcome"]["is_error"], false);
    assert_eq!(done["request_id"], "req-123");
    assert_eq!(done["identity"], "agent-1");
    assert_eq!(done["policy_version"], 1);
    assert_eq!(done["arg_keys"], json!(["password", "text"]));
    assert_eq!(done["arguments"]["password"], "[redacted]");
    assert_eq!(done["arguments"]["text"], "hello");
    assert_eq!(done["arg_digest"].as_str().unwrap().len(), 64);
    let denied = entries.iter().find(|e| e["tool"] == "get_secret").unwrap();
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["rule"], "/tools/get_secret/deny_if/0");
    let all = serde_json::to_string(&entries).unwrap();
    assert!(
        !all.contains(f.token.expose()),
        "a token reached the audit log"
    );

    let metrics = reqwest::get(format!("http://{}/metrics", gw.gateway.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("portcullis_gateway_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_gateway_overhead_seconds_bucket"));
    assert!(!metrics.contains(f.token.expose()));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn monitor_mode_forwards_and_validation_refuses_bad_arguments() {
    let mut monitor = policy();
    monitor["mode"] = json!("monitor");
    let (stack, upstream, fm) = rmcp_stack(true, monitor).await;
    let mut validating = policy();
    validating["tools"]["add"] = json!({"validate": true});
    let fv = stack
        .fixture(&upstream.url, "streamable_http", validating)
        .await;
    stack
        .tool(
            &fv,
            "add",
            "read",
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}),
        )
        .await;
    stack
        .tool(&fv, "delete_repo", "destructive", json!({"type": "object"}))
        .await;
    let gw = stack.gateway().await;
    let (_, _, body) = post_stateless(&fm.url(&gw), &[], 1, "get_secret", json!({})).await;
    assert_eq!(
        text(&message(&body)),
        "the-secret",
        "monitor mode never blocks"
    );
    stack
        .audit_until(|e| e["tool"] == "get_secret" && e["decision"] == "deny")
        .await;

    let (_, _, body) =
        post_stateless(&fv.url(&gw), &[], 2, "add", json!({"a": "one", "b": 2})).await;
    let said = text(&message(&body));
    assert!(
        said.starts_with("[POLICY DENIED] invalid arguments"),
        "{said}"
    );
    let (_, _, body) = post_stateless(&fv.url(&gw), &[], 3, "add", json!({"a": 1, "b": 2})).await;
    assert_eq!(text(&message(&body)), "3");
    // An argument that is a case variant of a declared one: an upstream that ignores case
    // would run with it while the policy looked at another.
    let (status, _, body) =
        post_stateless(&fv.url(&gw), &[], 4, "add", json!({"A": 5, "b": 2})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(message(&body)["error"]["code"], -32602, "{body}");
    // So is a tool name that is a case variant of a discovered one: rules match names
    // exactly, and an upstream that ignores case would run `add`.
    let (status, _, body) =
        post_stateless(&fv.url(&gw), &[], 5, "ADD", json!({"a": 1, "b": 2})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(message(&body)["error"]["code"], -32602, "{body}");
    assert!(body.contains("reads as \\\"add\\\""), "{body}");
    // A variant of a tool the grant may not see is answered as that tool would be, so the
    // answer does not confirm that a hidden tool exists (`delete_repo`: hidden, discovered).
    let (_, _, hidden) = post_stateless(&fv.url(&gw), &[], 6, "delete_repo", json!({})).await;
    let (_, _, variant) = post_stateless(&fv.url(&gw), &[], 6, "Delete_Repo", json!({})).await;
    let code = |body: &str| message(body)["error"]["code"].clone();
    assert_eq!(code(&hidden), -32602, "{hidden}");
    assert_eq!(code(&variant), code(&hidden), "{variant}");
    assert!(!variant.contains("reads as"), "{variant}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn stateless_parameter_headers_must_mirror_the_arguments() {
    let (stack, _upstream, f) = rmcp_stack(true, policy()).await;
    stack
        .tool(
            &f,
            "echo",
            "read",
            json!({"type": "object",
                   "properties": {"text": {"type": "string", "x-mcp-header": "Text"}}}),
        )
        .await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let args = json!({"text": "hi"});
    let (status, _, body) =
        post_stateless(&url, &[("mcp-param-text", "hi")], 1, "echo", args.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&message(&body)), "echo: hi");
    // The policy decides on the body; a header that says otherwise, or is missing, is refused
    // before anything behind the gateway can route on it.
    for (id, headers) in [(2, vec![("mcp-param-text", "other")]), (3, vec![])] {
        let (status, _, body) = post_stateless(&url, &headers, id, "echo", args.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(message(&body)["error"]["code"], -32020, "{body}");
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_python_server_takes_yes_for_true_and_so_does_the_policy() {
    let stack = Stack::new().await;
    let server = portcullis_tests::peers::python_server("streamable-http", false);
    let policy = json!({"version": "1", "default": "allow", "tools": {"delete_everything": {
        "deny_if": [{"conditions": [{"path": "args.confirm", "op": "eq", "value": true}],
                     "on_deny": "never confirm a delete"}]}}});
    let f = stack
        .fixture(&server.url("/mcp"), "streamable_http", policy)
        .await;
    let gw = stack.gateway().await;
    let client = rmcp_session(&f.url(&gw)).await;
    let delete = |confirm: Value| {
        args(json!({"name": "delete_everything", "arguments": {"confirm": confirm}}))
    };
    // The server's pydantic reads all of these as `true`: none may reach it.
    for confirm in [
        json!(true),
        json!("true"),
        json!("Yes"),
        json!("on"),
        json!(1),
    ] {
        let result = client.call_tool(delete(confirm.clone())).await.unwrap();
        assert_eq!(result.is_error, Some(true), "{confirm}");
        assert!(
            result_text(&result).contains("never confirm a delete"),
            "{confirm}: {}",
            result_text(&result)
        );
    }
    // ... and these as `false`: the server takes them (a string it could not read as a
    // boolean would be a validation error, not "deleted").
    for confirm in [json!(false), json!("no"), json!("off")] {
        let result = client.call_tool(delete(confirm.clone())).await.unwrap();
        assert_eq!(result_text(&result), "deleted", "{confirm}");
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn python_sdk_server_over_streamable_http_and_legacy_sse() {
    let stack = Stack::new().await;
    let streamable = portcullis_tests::peers::python_server("streamable-http", false);
    let sse = portcullis_tests::peers::python_server("sse", false);
    let fs = stack
        .fixture(&streamable.url("/mcp"), "streamable_http", policy())
        .await;
    let fl = stack.fixture(&sse.url("/sse"), "sse", policy()).await;
    let gw = stack.gateway().await;
    for (f, eras) in [(&fs, &[false, true][..]), (&fl, &[false][..])] {
        for &stateless in eras {
            let client = if stateless {
                rmcp_stateless(&f.url(&gw)).await
            } else {
                rmcp_session(&f.url(&gw)).await
            };
            exercise(&client).await;
            let who = client
                .call_tool(args(json!({"name": "whoami", "arguments": {}})))
                .await
                .unwrap();
            assert_eq!(
                result_text(&who),
                "x-upstream-key=upstream-secret; authorization="
            );
            let failed = client
                .call_tool(args(json!({"name": "fail", "arguments": {"reason": "x"}})))
                .await
                .unwrap();
            assert_eq!(failed.is_error, Some(true));
            client.cancel().await.unwrap();
        }
    }
    // An HTTP+SSE server speaks only the handshake era: stateless requests are told so.
    let (status, _, body) =
        post_stateless(&fl.url(&gw), &[], 1, "echo", json!({"text": "x"})).await;
    assert_eq!(status, 400, "{body}");
    let refused = message(&body);
    assert_eq!(refused["error"]["code"], -32022, "{body}");
    // ... and offered only the versions it speaks, so a negotiating client falls back at once.
    assert_eq!(
        refused["error"]["data"]["supported"],
        json!(["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]),
        "{body}"
    );
    // Its sessions carry the `initialize` params in their id: they are kept small.
    let huge = json!({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"x": "y".repeat(10_000)},
        "clientInfo": {"name": "raw-test", "version": "1"}}});
    let (status, _, body) = post(
        &fl.url(&gw),
        &[("mcp-protocol-version", "2025-11-25")],
        &huge.to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(message(&body)["error"]["code"], -32602, "{body}");
    // A request other than a tool's is answered, and logged as answered.
    let ping = json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}).to_string();
    let (status, _, body) = post(
        &fl.url(&gw),
        &[("mcp-protocol-version", "2025-11-25")],
        &ping,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(message(&body)["id"], 3, "{body}");
    let server = fl.server.0.to_string();
    let pinged = |e: &Value| {
        e["server_id"] == server.as_str() && e["method"] == "ping" && !e["outcome"].is_null()
    };
    let entry = stack
        .audit_until(pinged)
        .await
        .into_iter()
        .find(pinged)
        .unwrap();
    assert!(entry["outcome"]["upstream_error"].is_null(), "{entry:#}");
    assert_eq!(entry["outcome"]["is_error"], false, "{entry:#}");
    gw.stop().await.unwrap();
}

/// A legacy (HTTP+SSE) upstream asks the client during a call (elicitation, then sampling):
/// the Python SDK client's callbacks answer through the gateway, and a raw client's answers
/// reach the upstream through another replica than the one relaying the call.
#[tokio::test]
async fn legacy_sse_server_requests_are_answered_through_any_replica() {
    let stack = Stack::new().await;
    // Refuses every request without the injected credential, reply POSTs included.
    let sse = portcullis_tests::peers::python_server("sse", false);
    let mut doc = policy();
    doc["tools"]["consult"] = json!({});
    let f = stack.fixture(&sse.url("/sse"), "sse", doc).await;
    let (_, other) = stack.grant(f.tenant, f.server, f.policy, "agent-2").await;
    let a = stack.gateway().await;
    let b = stack.gateway().await;

    let plan = json!([{"op": "call", "name": "consult", "args": {"topic": "tides"}}]).to_string();
    let out = portcullis_tests::peers::python_client(&f.url(&a), "legacy", &plan).await;
    let steps: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        steps[0]["ok"]["text"], "Ada asked about tides; sampled: Tell me about tides",
        "{out}"
    );

    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}, "sampling": {}},
        "clientInfo": {"name": "raw-test", "version": "1"}}})
    .to_string();
    let (status, headers, body) = post(&f.url(&a), &[], &init).await;
    assert_eq!(status, 200, "{body}");
    let session = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let with_session = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let response = reqwest::Client::new()
        .post(f.url(&a))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .body(call(2, "consult", json!({"topic": "waves"})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let other_url = format!("http://{}/g/{}/mcp", b.gateway.unwrap(), other.expose());
    let mut stream = SseMessages::new(response);
    let mut asked = Vec::new();
    let answer = loop {
        let msg = stream
            .next()
            .await
            .expect("the stream ended before the answer");
        let Some(method) = msg["method"].as_str() else {
            if msg["id"] == 2 {
                break msg;
            }
            continue;
        };
        if msg.get("id").is_none() {
            continue;
        }
        // The upstream's id is sealed: an opaque string, not its own number.
        let id = msg["id"].clone();
        assert!(id.as_str().is_some_and(|s| s.len() > 40), "{msg}");
        let result = match method {
            "elicitation/create" => json!({"action": "accept", "content": {"name": "Grace"}}),
            "sampling/createMessage" => json!({"role": "assistant", "model": "m",
                "content": {"type": "text", "text": "waves come from wind"}, "stopReason": "endTurn"}),
            other => panic!("unexpected request {other}: {msg}"),
        };
        asked.push(method.to_owned());
        // Under another grant the id does not open: acknowledged, never delivered.
        let forged = json!({"jsonrpc": "2.0", "id": id,
            "result": {"action": "accept", "content": {"name": "Mallory"}}});
        let (status, _, body) = post(&other_url, &[], &forged.to_string()).await;
        assert_eq!(status, 202, "{body}");
        let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
        let (status, _, body) = post(&f.url(&b), &with_session, &reply.to_string()).await;
        assert_eq!(status, 202, "{body}");
    };
    assert_eq!(asked, ["elicitation/create", "sampling/createMessage"]);
    assert_eq!(
        text(&answer),
        "Grace asked about waves; waves come from wind",
        "{answer}"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A stateless-era `consult` call (the Python server's tool that needs input), optionally a
/// retry with `(inputResponses, requestState)`, optionally with a progress token (which makes
/// the upstream answer with an SSE stream).
async fn consult(
    url: &str,
    id: i64,
    topic: &str,
    retry: Option<(&Value, &str)>,
    progress: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut params = json!({"name": "consult", "arguments": {"topic": topic}, "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}, "sampling": {}}}});
    if let Some((responses, state)) = retry {
        params["inputResponses"] = responses.clone();
        params["requestState"] = json!(state);
    }
    if let Some(token) = progress {
        params["_meta"]["progressToken"] = json!(token);
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
    post(
        url,
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "consult"),
        ],
        &body.to_string(),
    )
    .await
}

/// The client's answers to an `input_required` result's requests.
fn input_responses(requests: &Value, name: &str) -> Value {
    let mut out = serde_json::Map::new();
    for (key, request) in requests.as_object().unwrap() {
        let response = match request["method"].as_str().unwrap() {
            "elicitation/create" => json!({"action": "accept", "content": {"name": name}}),
            "sampling/createMessage" => {
                let prompt = request["params"]["messages"][0]["content"]["text"]
                    .as_str()
                    .unwrap();
                json!({"role": "assistant", "model": "m", "stopReason": "endTurn",
                       "content": {"type": "text", "text": format!("sampled: {prompt}")}})
            }
            other => panic!("unexpected input request {other}"),
        };
        out.insert(key.clone(), response);
    }
    Value::Object(out)
}

/// Calls `consult` (`id`) and reads its `input_required` answer: the envelope, and the
/// answers to its requests.
async fn input_round(url: &str, id: i64) -> (String, Value) {
    let (_, _, body) = consult(url, id, "tides", None, None).await;
    let first = message(&body);
    assert_eq!(first["result"]["resultType"], "input_required", "{body}");
    let state = first["result"]["requestState"].as_str().unwrap().to_owned();
    (
        state,
        input_responses(&first["result"]["inputRequests"], "Ada"),
    )
}

/// Asserts that `body` refuses a `requestState` with `-32602` and a message starting `said`.
fn assert_state_refused(body: &str, said: &str) {
    let refused = message(body);
    assert_eq!(refused["error"]["code"], -32602, "{body}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(said)),
        "{body}"
    );
}

/// A stack whose Python server's `consult` (the tool that needs input) may be called once a
/// minute, and a gateway in front of it (the peer process is returned to outlive the test).
async fn consult_once_a_minute() -> (Stack, PeerProcess, Fixture, Running) {
    let stack = Stack::new().await;
    let upstream = portcullis_tests::peers::python_server("streamable-http", false);
    let mut doc = policy();
    doc["tools"]["consult"] =
        json!({"limits": [{"counter": "consult", "window": "minute", "max": 1}]});
    let f = stack
        .fixture(&upstream.url("/mcp"), "streamable_http", doc)
        .await;
    let gw = stack.gateway().await;
    (stack, upstream, f, gw)
}

/// Stateless era: a retry answering `input_required` continues the call it answers (limits
/// and approvals are not charged again), and a `requestState` the gateway did not seal for
/// this grant, tool and arguments is refused.
#[tokio::test]
async fn input_required_retries_continue_the_call_without_charging_it_again() {
    let (stack, _upstream, f, gw) = consult_once_a_minute().await;
    let (_, other) = stack.grant(f.tenant, f.server, f.policy, "agent-2").await;
    let url = f.url(&gw);
    let other_url = format!("http://{}/g/{}/mcp", gw.gateway.unwrap(), other.expose());

    // The first round is charged (the one call a minute); its answer comes inside SSE.
    let (status, headers, body) = consult(&url, 1, "tides", None, Some("p1")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{body}"
    );
    let first = message(&body);
    assert_eq!(first["result"]["resultType"], "input_required", "{body}");
    let state = first["result"]["requestState"].as_str().unwrap().to_owned();
    assert!(
        !state.starts_with("v1."),
        "the upstream's own state: {state}"
    );
    let responses = input_responses(&first["result"]["inputRequests"], "Ada");

    // Altered, under another grant, for other arguments: refused, and not charged.
    let mut altered = state.clone().into_bytes();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for (target, topic, presented) in [
        (&url, "tides", altered.as_str()),
        (&other_url, "tides", state.as_str()),
        (&url, "waves", state.as_str()),
    ] {
        let (_, _, body) = consult(target, 2, topic, Some((&responses, presented)), None).await;
        let refused = message(&body);
        assert_eq!(refused["error"]["code"], -32602, "{body}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("requestState"),
            "{body}"
        );
    }

    // The retry with the echoed state continues the call: not rate limited.
    let (status, _, body) = consult(&url, 3, "tides", Some((&responses, &state)), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        text(&message(&body)),
        "Ada asked about tides; sampled: Tell me about tides",
        "{body}"
    );
    // An envelope continues one retry: replaying it is refused, not forwarded uncharged.
    let (_, _, body) = consult(&url, 5, "tides", Some((&responses, &state)), None).await;
    assert_state_refused(&body, "requestState already used");
    // A fresh call is a new call.
    let (_, _, body) = consult(&url, 4, "tides", None, None).await;
    assert!(
        text(&message(&body)).starts_with("[RATE LIMITED]"),
        "{body}"
    );
    stack
        .audit_until(|e| e["rule"] == "(invalid requestState)" && e["decision"] == "deny")
        .await;
    stack
        .audit_until(|e| {
            e["decision"] == "allow"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("continuation of an input_required call"))
        })
        .await;

    // The Python SDK client drives the round trip itself, on the other grant's own limit.
    let plan = json!([
        {"op": "call", "name": "consult", "args": {"topic": "stars"}},
        {"op": "call", "name": "consult", "args": {"topic": "stars"}}
    ])
    .to_string();
    let out = portcullis_tests::peers::python_client(&other_url, "2026-07-28", &plan).await;
    let steps: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        steps[0]["ok"]["text"], "Ada asked about stars; sampled: Tell me about stars",
        "{out}"
    );
    assert!(
        steps[1]["ok"]["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("[RATE LIMITED]"),
        "{out}"
    );
    gw.stop().await.unwrap();
}

/// A continuation that fails (here: the client declines the elicitation, so the tool fails)
/// gives back the charge of the call it continues: the logical call failed.
#[tokio::test]
async fn a_failed_continuation_refunds_the_call_it_continues() {
    let (_stack, _upstream, f, gw) = consult_once_a_minute().await;
    let url = f.url(&gw);

    let (_, _, body) = consult(&url, 1, "tides", None, None).await;
    let first = message(&body);
    assert_eq!(first["result"]["resultType"], "input_required", "{body}");
    let state = first["result"]["requestState"].as_str().unwrap().to_owned();
    let mut declined = input_responses(&first["result"]["inputRequests"], "Ada");
    for response in declined.as_object_mut().unwrap().values_mut() {
        if response.get("action").is_some() {
            *response = json!({"action": "decline"});
        }
    }
    // Spent: the one call of the minute is taken.
    let (_, _, body) = consult(&url, 2, "waves", None, None).await;
    assert!(
        text(&message(&body)).starts_with("[RATE LIMITED]"),
        "{body}"
    );

    let (status, _, body) = consult(&url, 3, "tides", Some((&declined, &state)), None).await;
    assert_eq!(status, 200, "{body}");
    let failed = message(&body);
    assert!(
        failed.get("error").is_some() || failed["result"]["isError"] == true,
        "the declined continuation failed: {body}"
    );
    // The refund is written after the answer: a fresh call is charged again within moments.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, body) = consult(&url, 4, "waves", None, None).await;
        let answer = message(&body);
        if answer["result"]["resultType"] == "input_required" {
            break;
        }
        assert!(text(&answer).starts_with("[RATE LIMITED]"), "{body}");
        assert!(
            Instant::now() < deadline,
            "the failed continuation's charge was not refunded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.stop().await.unwrap();
}

/// A continuation of a call that needed approval is never taken on trust: when Redis cannot say
/// whether its envelope was used already, it is refused, even under `on_limiter_error: allow`
/// (which speaks for limits), since a replayed envelope would run the approved call again.
#[tokio::test]
async fn an_approved_call_never_continues_unchecked() {
    if portcullis_tests::skipped_on_cluster("an_approved_call_never_continues_unchecked") {
        return;
    }
    let stack = Stack::new().await;
    let upstream = portcullis_tests::peers::python_server("streamable-http", false);
    let mut doc = policy();
    doc["on_limiter_error"] = json!("allow");
    doc["tools"]["consult"] = json!({"approval": {}});
    let f = stack
        .fixture(&upstream.url("/mcp"), "streamable_http", doc)
        .await;
    let (proxy, gw) = behind_chaos(&stack).await;
    let url = f.url(&gw);
    let (_, _, body) = consult(&url, 1, "tides", None, None).await;
    let asked = message(&body);
    assert!(text(&asked).starts_with("[APPROVAL REQUIRED]"), "{body}");
    approve_asked(&stack, &asked).await;
    let (state, responses) = input_round(&url, 2).await;

    proxy.cut();
    let (_, _, body) = consult(&url, 3, "tides", Some((&responses, &state)), None).await;
    assert_state_refused(&body, "requestState not checked");
    proxy.restore();
    // With Redis back (its answers may still come late for a moment on a busy machine: "not
    // checked" again) the envelope continues the call, once. A claim Redis took while its
    // answer came too late counts as used: never twice.
    let checked = |id: i64| {
        let (url, responses, state) = (url.clone(), responses.clone(), state.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (_, _, body) =
                    consult(&url, id, "tides", Some((&responses, &state)), None).await;
                let said = message(&body)["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if !said.starts_with("requestState not checked") {
                    return body;
                }
                assert!(Instant::now() < deadline, "{body}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    ran_or_used(&checked(4).await);
    assert_state_refused(&checked(5).await, "requestState already used");
    gw.stop().await.unwrap();
}

/// A continuation of a call with nothing to carry on (no limit, no approval) needs Redis no
/// more than a fresh call without limits does: with Redis out of reach it still runs.
#[tokio::test]
async fn a_continuation_with_nothing_to_carry_on_needs_no_redis() {
    if portcullis_tests::skipped_on_cluster(
        "a_continuation_with_nothing_to_carry_on_needs_no_redis",
    ) {
        return;
    }
    let stack = Stack::new().await;
    let upstream = portcullis_tests::peers::python_server("streamable-http", false);
    let mut doc = policy();
    doc["tools"]["consult"] = json!({});
    let f = stack
        .fixture(&upstream.url("/mcp"), "streamable_http", doc)
        .await;
    let (proxy, gw) = behind_chaos(&stack).await;
    let url = f.url(&gw);
    let (state, responses) = input_round(&url, 1).await;
    proxy.cut();
    let (_, _, body) = consult(&url, 2, "tides", Some((&responses, &state)), None).await;
    assert!(ran_or_used(&body), "{body}");
    proxy.restore();
    gw.stop().await.unwrap();
}

/// Whether a continuation of the `consult` call ran (and answered as the tool does) rather than
/// being refused as a used envelope; anything else fails the test.
fn ran_or_used(body: &str) -> bool {
    let answer = message(body);
    if answer.get("result").is_none() {
        assert_state_refused(body, "requestState already used");
        return false;
    }
    assert_eq!(
        text(&answer),
        "Ada asked about tides; sampled: Tell me about tides",
        "{body}"
    );
    true
}

/// A continuation skips the approval only of a call that passed one: when the policy asks for
/// an approval after the first round (or the first round ran in `mode: monitor`), the retry
/// asks too, and passes once approved.
#[tokio::test]
async fn a_continuation_needs_the_approval_its_call_did_not_pass() {
    let stack = Stack::new().await;
    let upstream = portcullis_tests::peers::python_server("streamable-http", false);
    let mut doc = policy();
    doc["tools"]["consult"] = json!({});
    let f = stack
        .fixture(&upstream.url("/mcp"), "streamable_http", doc.clone())
        .await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let (state, responses) = input_round(&url, 1).await;

    doc["tools"]["consult"] = json!({"approval": {}});
    publish_policy_version(&stack, &f, 2, &doc).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let asked = loop {
        let (_, _, body) = consult(&url, 2, "tides", Some((&responses, &state)), None).await;
        let answer = message(&body);
        if text(&answer).starts_with("[APPROVAL REQUIRED]") {
            break answer;
        }
        // Before the change reaches the gateway the retry runs, which uses the envelope.
        assert!(
            answer["result"]["resultType"] != "complete" && Instant::now() < deadline,
            "{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let approval = approve_asked(&stack, &asked).await;
    // Retries of the one envelope sent at once: one runs, on the approval; the others are
    // refused as used, and none opens another approval for the call that already ran.
    let (a, b, c, d) = tokio::join!(
        consult(&url, 3, "tides", Some((&responses, &state)), None),
        consult(&url, 4, "tides", Some((&responses, &state)), None),
        consult(&url, 5, "tides", Some((&responses, &state)), None),
        consult(&url, 6, "tides", Some((&responses, &state)), None),
    );
    let ran = [a, b, c, d]
        .iter()
        .filter(|(_, _, body)| ran_or_used(body))
        .count();
    assert_eq!(ran, 1);
    let approvals: Vec<(String, String)> =
        sqlx::query_as("SELECT id, status FROM approvals WHERE grant_id = $1")
            .bind(f.grant.0)
            .fetch_all(stack.db.pool())
            .await
            .unwrap();
    assert_eq!(approvals, [(approval, "consumed".to_owned())]);
    let (_, _, body) = consult(&url, 7, "tides", Some((&responses, &state)), None).await;
    assert_state_refused(&body, "requestState already used");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn python_sdk_client_in_both_eras() {
    let (stack, _upstream, rmcp) = rmcp_stack(false, policy()).await;
    let python = portcullis_tests::peers::python_server("streamable-http", false);
    let py = stack
        .fixture(&python.url("/mcp"), "streamable_http", policy())
        .await;
    let gw = stack.gateway().await;
    let plan = json!([
        {"op": "list"},
        {"op": "call", "name": "echo", "args": {"text": "py"}},
        {"op": "call", "name": "get_secret"},
        {"op": "call", "name": "delete_everything", "args": {"confirm": true}},
        {"op": "call", "name": "send_money", "args": {"amount": 500, "to": "eve"}}
    ])
    .to_string();
    // Both eras, to the rmcp server and to the Python SDK's.
    let (rmcp_url, py_url) = (rmcp.url(&gw), py.url(&gw));
    let outs = tokio::join!(
        portcullis_tests::peers::python_client(&rmcp_url, "legacy", &plan),
        portcullis_tests::peers::python_client(&rmcp_url, "2026-07-28", &plan),
        portcullis_tests::peers::python_client(&py_url, "legacy", &plan),
        portcullis_tests::peers::python_client(&py_url, "2026-07-28", &plan),
    );
    for out in [outs.0, outs.1, outs.2, outs.3] {
        let steps: Vec<Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(steps[0]["ok"], json!(VISIBLE), "{out}");
        assert_eq!(steps[1]["ok"]["text"], "echo: py", "{out}");
        assert_eq!(steps[2]["ok"]["is_error"], true, "{out}");
        assert_eq!(
            steps[2]["ok"]["text"], "[POLICY DENIED] Secrets stay secret.",
            "{out}"
        );
        let hidden = steps[3].to_string();
        assert!(hidden.contains("Unknown tool"), "{out}");
        assert!(
            steps[4]["ok"]["text"]
                .as_str()
                .unwrap()
                .starts_with("[APPROVAL REQUIRED]"),
            "{out}"
        );
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn server_everything_sampling_and_elicitation_round_trips() {
    let stack = Stack::new().await;
    let everything = portcullis_tests::peers::everything_server();
    let mut doc = policy();
    doc["tools"]["echo"] = json!({});
    doc["hide"] = json!(["get-env"]);
    doc["tools"]["get-*"] = json!({});
    doc["tools"]["get-tiny-image"] =
        json!({"deny_if": [{"conditions": [], "on_deny": "No images."}]});
    doc["tools"]["get-annotated-message"] =
        json!({"limits": [{"counter": "annotated", "window": "minute", "max": 1}]});
    let f = stack
        .fixture(&everything.url("/mcp"), "streamable_http", doc)
        .await;
    let gw = stack.gateway().await;
    let plan = json!([
        {"op": "list"},
        {"op": "call", "name": "trigger-sampling-request", "args": {"prompt": "hello", "maxTokens": 5}},
        {"op": "call", "name": "trigger-elicitation-request", "args": {}},
        {"op": "call", "name": "get-env"},
        {"op": "call", "name": "get-sum", "args": {"a": 2, "b": 3}}
    ])
    .to_string();
    // The session era, and a client that prefers 2026-07-28 and negotiates ("auto"):
    // server-everything speaks only the session era, so that client falls back to initialize,
    // through the gateway as it would directly.
    for mode in ["legacy", "auto"] {
        let out = portcullis_tests::peers::python_client(&f.url(&gw), mode, &plan).await;
        let steps: Vec<Value> = serde_json::from_str(&out).unwrap();
        let listed: Vec<String> = serde_json::from_value(steps[0]["ok"].clone()).unwrap();
        assert!(
            listed.contains(&"trigger-sampling-request".to_owned()),
            "{mode}: {out}"
        );
        assert!(listed.contains(&"echo".to_owned()), "{mode}: {out}");
        assert!(
            !listed.contains(&"get-env".to_owned()),
            "hidden tool listed ({mode}): {out}"
        );
        assert!(
            !listed.iter().any(|t| t.starts_with("toggle")),
            "default deny lists only ruled tools ({mode}): {out}"
        );
        let sampled = steps[1]["ok"]["text"].as_str().unwrap_or_default();
        assert!(sampled.contains("sampled:"), "{mode}: {out}");
        let elicited = steps[2]["ok"]["text"].as_str().unwrap_or_default();
        assert!(elicited.contains("Ada"), "{mode}: {out}");
        assert!(
            steps[3].to_string().contains("Unknown tool"),
            "{mode}: {out}"
        );
        assert!(
            steps[4]["ok"]["text"]
                .as_str()
                .unwrap_or_default()
                .contains('5'),
            "{mode}: {out}"
        );
    }

    // The rmcp client (session era: the only one server-everything has): allowed, denied,
    // default-denied, hidden and over-the-limit calls.
    let client = rmcp_session(&f.url(&gw)).await;
    let listed = tool_names(&client).await;
    assert!(
        listed.contains(&"echo".to_owned()) && !listed.contains(&"get-env".to_owned()),
        "{listed:?}"
    );
    let echoed = client
        .call_tool(args(
            json!({"name": "echo", "arguments": {"message": "hi"}}),
        ))
        .await
        .unwrap();
    assert_eq!(result_text(&echoed), "Echo: hi");
    let denied = client
        .call_tool(args(json!({"name": "get-tiny-image", "arguments": {}})))
        .await
        .unwrap();
    assert_eq!(result_text(&denied), "[POLICY DENIED] No images.");
    let unruled = client
        .call_tool(args(
            json!({"name": "toggle-simulated-logging", "arguments": {}}),
        ))
        .await
        .unwrap();
    assert!(
        result_text(&unruled).starts_with("[POLICY DENIED]"),
        "{unruled:?}"
    );
    let hidden = format!(
        "{:?}",
        client
            .call_tool(args(json!({"name": "get-env", "arguments": {}})))
            .await
            .unwrap_err()
    );
    assert!(
        hidden.contains("-32602") || hidden.contains("Unknown tool"),
        "{hidden}"
    );
    let annotated =
        json!({"name": "get-annotated-message", "arguments": {"messageType": "success"}});
    let first = client.call_tool(args(annotated.clone())).await.unwrap();
    assert_ne!(first.is_error, Some(true), "{first:?}");
    let second = client.call_tool(args(annotated)).await.unwrap();
    assert!(
        result_text(&second).starts_with("[RATE LIMITED]"),
        "{second:?}"
    );
    client.cancel().await.unwrap();
    gw.stop().await.unwrap();
}

/// The id of the first event of an SSE body (a priming event, when the server sends one).
fn first_event_id(body: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap_or_else(|| panic!("no event id in {body:?}"))
        .trim()
        .to_owned()
}

/// The names in a `tools/list` answer.
fn listed_names(answer: &Value) -> Vec<String> {
    answer["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools list: {answer}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_resumed_stream_replays_answers_with_tools_lists_filtered() {
    let stack = Stack::new().await;
    let everything = portcullis_tests::peers::everything_server();
    let mut doc = policy();
    doc["hide"] = json!(["get-env"]);
    doc["tools"]["get-*"] = json!({});
    let f = stack
        .fixture(&everything.url("/mcp"), "streamable_http", doc)
        .await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let session = open_session(&url).await;
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (status, _, body) = post(
        &url,
        &headers,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let listed = listed_names(&message(&body));
    assert!(
        listed.contains(&"echo".to_owned()) && !listed.contains(&"get-env".to_owned()),
        "{listed:?}"
    );

    // A client that lost that stream resumes it (GET with the last event id it saw, here the
    // server's priming event): the server replays the answer, which is filtered again.
    let resumed = reqwest::Client::new()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .header("last-event-id", first_event_id(&body))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let replayed = SseMessages::new(resumed).next().await.unwrap();
    assert_eq!(replayed["id"], 2, "{replayed}");
    let names = listed_names(&replayed);
    assert!(
        names.contains(&"echo".to_owned()) && !names.contains(&"get-env".to_owned()),
        "the replayed list must be filtered: {names:?}"
    );

    // Event ids are sealed under the grant, as session ids are: this server replays by event
    // id alone, so another grant of the same server cannot resume this grant's stream with
    // an id it learned, nor can anyone with an id the gateway did not issue.
    let other = stack
        .fixture(&everything.url("/mcp"), "streamable_http", policy())
        .await;
    let other_url = other.url(&gw);
    let other_session = open_session(&other_url).await;
    for (url, session, event_id) in [
        (&other_url, &other_session, first_event_id(&body)),
        (&url, &session, "0".to_owned()),
    ] {
        let refused = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25")
            .header("last-event-id", &event_id)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{event_id}");
        let text = refused.text().await.unwrap();
        assert!(text.contains("Last-Event-ID was not issued"), "{text}");
    }

    // An upstream that answers under another id ("7" for 7) gets no unfiltered list past,
    // as JSON or as SSE.
    let list = r#"{"jsonrpc":"2.0","id":"7","result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}},{"name":"delete_all","inputSchema":{"type":"object"}}]}}"#;
    let json_answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{list}",
        list.len()
    );
    let sse_answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: {list}\n\n"
    );
    for answer in [json_answer, sse_answer] {
        let port = raw_upstream(Some(&answer)).await;
        let f = loopback_fixture(&stack, port).await;
        let (status, _, body) = post(
            &f.url(&gw),
            &[],
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(listed_names(&message(&body)), ["echo"], "{body}");
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn three_gateways_sharing_redis_forward_exactly_the_limit() {
    let mut doc = policy();
    doc["tools"]["echo"] = json!({"limits": [{"counter": "burst", "window": "minute", "max": 100, "scope": "tenant"}]});
    let (stack, upstream, f) = rmcp_stack(true, doc).await;
    // This test is about exactness, not about a slow Redis: 600 calls at once through three
    // debug-build gateways, beside the other tests, can take longer than the default 250 ms
    // limiter timeout, and a call refused on that timeout may still have been charged.
    let patient = ["--limiter-timeout", "10s"];
    let gateways = [
        stack.gateway_process(&patient).await,
        stack.gateway_process(&patient).await,
        stack.gateway_process(&patient).await,
    ];
    let urls: Vec<String> = gateways.iter().map(|g| f.url(g)).collect();
    let client = reqwest::Client::new();
    let calls = (0..600).map(|i| {
        let client = client.clone();
        let url = urls[i % 3].clone();
        async move {
            let body =
                support::stateless_call(i64::try_from(i).unwrap(), "echo", json!({"text": "x"}));
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", "echo")
                .body(body)
                .send()
                .await
                .unwrap();
            text(&message(&response.text().await.unwrap()))
        }
    });
    let answers = futures::future::join_all(calls).await;
    let forwarded = answers.iter().filter(|t| *t == "echo: x").count();
    let limited = answers
        .iter()
        .filter(|t| t.starts_with("[RATE LIMITED]"))
        .count();
    let other: Vec<&String> = answers
        .iter()
        .filter(|t| *t != "echo: x" && !t.starts_with("[RATE LIMITED]"))
        .collect();
    println!(
        "limiter exactness: {forwarded} forwarded, {limited} rate limited of 600; other: {other:?}"
    );
    assert_eq!(forwarded, 100);
    assert_eq!(limited, 500);
    assert_eq!(upstream.calls(), 100);
    for g in gateways {
        g.stop().await;
    }
}

#[tokio::test]
async fn upstreams_on_refused_addresses_are_never_contacted() {
    let stack = Stack::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // A loopback address, and a name that resolves to one.
    let by_address = loopback_fixture(&stack, port).await;
    let by_name = stack
        .fixture(
            &format!("http://localhost:{port}/mcp"),
            "streamable_http",
            policy(),
        )
        .await;
    let mut config = stack.config(&portcullis_tests::redis_url(), &[]);
    config.upstream_allow = Egress::default(); // public addresses only
    let gw = portcullis::start(&config, portcullis::Role::Gateway)
        .await
        .unwrap();
    for f in [&by_address, &by_name] {
        let (status, _, body) = post(&f.url(&gw), &[], &support::initialize(1)).await;
        assert_eq!(status, 502, "{body}");
        let error = support::message(&body);
        assert_eq!(error["id"], 1, "{body}");
        let text = error["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains("upstream address not allowed"), "{body}");
        assert!(text.contains("PORTCULLIS_UPSTREAM_ALLOW"), "{body}");
    }
    // The address a name resolved to is the operator's to know, not the tenant's.
    let (_, _, body) = post(&by_name.url(&gw), &[], &support::initialize(2)).await;
    assert!(body.contains("resolves to no public address"), "{body}");
    assert!(
        !body.contains("127.0.0.1") && !body.contains("::1"),
        "{body}"
    );
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(
        accepted.is_err(),
        "the gateway connected to a refused address"
    );
    gw.stop().await.unwrap();
}

/// An upstream that reads each request whole, then answers `answer` (raw HTTP) and closes;
/// with no `answer`, it holds the connection open without a word.
async fn raw_upstream(answer: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let answer: Option<std::sync::Arc<str>> = answer.map(Into::into);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                    let Some(head) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..head]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if seen.len() >= head + 4 + length {
                        break;
                    }
                }
                match answer {
                    Some(answer) => {
                        let _ = socket.write_all(answer.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    }
                    None => {
                        let _ = socket.read(&mut buf).await;
                    }
                }
            });
        }
    });
    port
}

/// A port on this machine nothing listens on (connections to it are refused).
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A fixture for an upstream on this machine's `port`, under the usual policy.
async fn loopback_fixture(stack: &Stack, port: u16) -> Fixture {
    stack
        .fixture(
            &format!("http://127.0.0.1:{port}/mcp"),
            "streamable_http",
            policy(),
        )
        .await
}

/// The audit entry with the outcome of the one call through `f`'s server.
async fn outcome_of(stack: &Stack, f: &Fixture) -> Value {
    let server = f.server.0.to_string();
    let done = |e: &Value| e["server_id"] == server.as_str() && !e["outcome"].is_null();
    let entries = stack.audit_until(done).await;
    entries.into_iter().find(done).unwrap()
}

#[tokio::test]
async fn calls_that_end_without_an_answer_say_why_in_the_audit_log() {
    let stack = Stack::new().await;
    let refused_port = closed_port().await;
    let silent_port = raw_upstream(None).await;
    let cut_port = raw_upstream(Some(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n: working on it\n\n",
    ))
    .await;
    let unauthorized_port = raw_upstream(Some(
        "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ))
    .await;
    let gw = stack
        .gateway_with(
            &portcullis_tests::redis_url(),
            &["--upstream-timeout", "300ms"],
        )
        .await;
    let cases = [
        // The server's stored credentials are refused: the client is not told to sign in.
        (
            unauthorized_port,
            502,
            None,
            "the upstream refused this server's stored credentials (HTTP 401)",
        ),
        (refused_port, 502, None, "Connection refused"),
        (silent_port, 504, None, "no answer within 300ms"),
        (
            cut_port,
            200,
            Some(200),
            "the upstream ended its SSE stream without answering",
        ),
    ];
    for (port, status, upstream_status, reason) in cases {
        let f = loopback_fixture(&stack, port).await;
        let (got, _, body) =
            post_stateless(&f.url(&gw), &[], 1, "echo", json!({"text": "hi"})).await;
        assert_eq!(got, status, "{body}");
        let done = outcome_of(&stack, &f).await;
        assert_eq!(done["decision"], "allow", "{done:#}");
        assert_eq!(
            done["outcome"]["upstream_status"],
            json!(upstream_status),
            "{done:#}"
        );
        let error = done["outcome"]["upstream_error"]
            .as_str()
            .unwrap_or_default();
        assert!(error.contains(reason), "{reason:?} not in {done:#}");
    }

    // A client that gives up first: the call may still run upstream, and the log says so.
    let f = loopback_fixture(&stack, silent_port).await;
    let gave_up = support::give_up_after(Duration::from_millis(100), &f.url(&gw), 2, "echo").await;
    assert!(gave_up.unwrap_err().is_timeout());
    let done = outcome_of(&stack, &f).await;
    assert_eq!(
        done["outcome"]["upstream_error"],
        "the answer was cut off: the client went away or the gateway shut down",
        "{done:#}"
    );
    assert!(
        done["outcome"]["latency_ms"].as_f64().unwrap() < 300.0,
        "{done:#}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn calls_still_open_after_the_grace_period_are_audited_as_cut_off() {
    let stack = Stack::new().await;
    let silent_port = raw_upstream(None).await;
    let f = loopback_fixture(&stack, silent_port).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    // A call the upstream never answers: still open when the 1 s grace period ends.
    let call =
        tokio::spawn(
            async move { post_stateless(&url, &[], 1, "echo", json!({"text": "hi"})).await },
        );
    let server = f.server.0.to_string();
    stack
        .audit_until(|e| e["server_id"] == server.as_str() && e["decision"] == "allow")
        .await;
    stop_within_the_grace_period(gw).await;
    // Its outcome was written before `stop` returned, not left in a queue that died with the
    // worker.
    let entries = stack.audit().await;
    let done = entries
        .iter()
        .find(|e| e["server_id"] == server.as_str() && !e["outcome"].is_null())
        .unwrap_or_else(|| panic!("no outcome entry: {entries:#?}"));
    assert_eq!(
        done["outcome"]["upstream_error"],
        "the answer was cut off: the client went away or the gateway shut down",
        "{done:#}"
    );
    let _ = call.await;
}

/// `portcullis check-policies` on the stack's database: exit status and standard output.
fn check_policies(stack: &Stack) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-e2e"))
        .args([
            "check-policies",
            "--database-url",
            &stack.db.url(),
            "--log",
            "warn",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

#[tokio::test]
async fn check_policies_lists_the_stored_policies_this_release_refuses() {
    let stack = Stack::new().await;
    let good = stack
        .fixture("http://127.0.0.1:9/mcp", "streamable_http", policy())
        .await;
    // Stored by an older release, or written straight into the table: this one refuses it.
    let mut refused = policy();
    refused["default"] = json!("maybe");
    let bad = stack
        .fixture("http://127.0.0.1:9/mcp", "streamable_http", refused)
        .await;
    let (ok, out) = check_policies(&stack);
    assert!(!ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("refused: ")
            && lines[0].contains(&bad.policy.0.to_string())
            && lines[0].ends_with("version 1, 1 live grant"),
        "{out}"
    );
    assert!(lines[1].starts_with("  /default"), "{out}");
    assert!(!out.contains(&good.policy.0.to_string()), "{out}");
    assert_eq!(
        lines[2],
        "checked 2 policies: 1 refused (every call through their grants is denied until a fixed \
         version is saved)"
    );

    // A fixed version is current: nothing is left.
    publish_policy_version(&stack, &bad, 2, &policy()).await;
    let (ok, out) = check_policies(&stack);
    assert!(ok, "{out}");
    assert_eq!(out.trim_end(), "checked 2 policies: all compile");
}

/// Approves the approval an `[APPROVAL REQUIRED]` answer names, as an approver would; its id.
async fn approve_asked(stack: &Stack, asked: &Value) -> String {
    let approval = asked["result"]["_meta"]["portcullis/decision"]["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no approval asked: {asked}"))
        .to_owned();
    sqlx::query("UPDATE approvals SET status = 'approved', decided_at = now() WHERE id = $1")
        .bind(&approval)
        .execute(stack.db.pool())
        .await
        .unwrap();
    approval
}

/// An approved call that never reaches the tool (its upstream refuses the connection) does not
/// use up its approval: the retry passes once the upstream is back.
#[tokio::test]
async fn an_approval_is_given_back_when_its_call_never_ran() {
    let stack = Stack::new().await;
    let gw = stack.gateway().await;
    let doc = json!({"version": "1", "default": "deny", "tools": {"echo": {"approval": {}}}});
    let f = stack
        .fixture(
            &format!("http://127.0.0.1:{}/mcp", closed_port().await),
            "streamable_http",
            doc,
        )
        .await;
    let url = f.url(&gw);
    // An approval binds exact arguments: one past 64 bits cannot be told from its neighbours.
    let inexact: Value =
        serde_json::from_str(r#"{"text": "hi", "n": 10000000000000000000001}"#).unwrap();
    let (_, _, body) = post_stateless(&url, &[], 1, "echo", inexact).await;
    assert!(
        text(&message(&body)).starts_with(
            "[POLICY DENIED] this call needs approval, and its arguments hold a number too large"
        ),
        "{body}"
    );
    let (_, _, body) = post_stateless(&url, &[], 1, "echo", json!({"text": "hi"})).await;
    let asked = message(&body);
    let approval = approve_asked(&stack, &asked).await;
    let (status, _, body) = post_stateless(&url, &[], 2, "echo", json!({"text": "hi"})).await;
    assert_eq!(status, 502, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (state,): (String,) = sqlx::query_as("SELECT status FROM approvals WHERE id = $1")
            .bind(&approval)
            .fetch_one(stack.db.pool())
            .await
            .unwrap();
        if state == "approved" {
            break;
        }
        assert!(Instant::now() < deadline, "the approval stayed {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await.unwrap();
}

/// A grant has at most `--approvals-pending-max` approvals pending: an agent looping over
/// arguments cannot flood its approvers. A call whose approval is open still finds it.
#[tokio::test]
async fn a_grant_has_a_bounded_number_of_pending_approvals() {
    let stack = Stack::new().await;
    let upstream = RmcpServer::start(true).await;
    let gw = stack
        .gateway_with(
            &portcullis_tests::redis_url(),
            &["--approvals-pending-max", "2"],
        )
        .await;
    let doc = json!({"version": "1", "default": "deny", "tools": {"echo": {"approval": {}}}});
    let f = stack.fixture(&upstream.url, "streamable_http", doc).await;
    let url = f.url(&gw);
    let ask = |text: &'static str| {
        let url = url.clone();
        async move {
            let (_, _, body) = post_stateless(&url, &[], 1, "echo", json!({"text": text})).await;
            message(&body)
        }
    };
    let first = ask("one").await;
    ask("two").await;
    let refused = text(&ask("three").await);
    assert_eq!(
        refused,
        "[POLICY DENIED] this grant has 2 approvals pending, the most it may have: ask an \
         approver to decide them, then retry."
    );
    let again = ask("one").await;
    let approval_id =
        |m: &Value| m["result"]["_meta"]["portcullis/decision"]["approval_id"].clone();
    assert_eq!(approval_id(&again), approval_id(&first), "{again}");
    // Once an approver decides one, there is room for another.
    approve_asked(&stack, &first).await;
    assert!(text(&ask("three").await).starts_with("[APPROVAL REQUIRED]"));
    let entries = stack
        .audit_until(|e| e["decision"] == "deny" && e["tool"] == "echo")
        .await;
    let denied = entries.iter().find(|e| e["decision"] == "deny").unwrap();
    assert_eq!(denied["rule"], "/tools/echo/approval", "{denied}");
    gw.stop().await.unwrap();
}

/// An approval consumed by a call whose client went away before the call was sent on (here:
/// while it waited for its charge, Redis stalled) is given back: the retry passes.
#[tokio::test]
async fn an_approval_is_given_back_when_its_client_leaves_before_the_call_is_sent() {
    if portcullis_tests::skipped_on_cluster(
        "an_approval_is_given_back_when_its_client_leaves_before_the_call_is_sent",
    ) {
        return;
    }
    let stack = Stack::new().await;
    let upstream = RmcpServer::start(true).await;
    let proxy = portcullis_tests::ChaosProxy::start(portcullis_tests::redis_addr()).await;
    let gw = stack
        .gateway_with(
            &format!("redis://{}", proxy.addr()),
            &["--limiter-timeout", "10s"],
        )
        .await;
    let doc = json!({"version": "1", "default": "deny", "tools": {"echo": {
        "approval": {}, "limits": [{"counter": "echo", "window": "minute", "max": 10}]}}});
    let f = stack.fixture(&upstream.url, "streamable_http", doc).await;
    let url = f.url(&gw);
    let (_, _, body) = post_stateless(&url, &[], 1, "echo", json!({"text": "hi"})).await;
    let approval = approve_asked(&stack, &message(&body)).await;

    proxy.stall();
    let left = support::give_up_after(Duration::from_millis(500), &url, 2, "echo").await;
    assert!(left.is_err(), "answered while Redis was stalled: {left:?}");
    let state = || async {
        let (state,): (String,) = sqlx::query_as("SELECT status FROM approvals WHERE id = $1")
            .bind(&approval)
            .fetch_one(stack.db.pool())
            .await
            .unwrap();
        state
    };
    // Long before the charge could time out (10 s), the approval is back.
    let deadline = Instant::now() + Duration::from_secs(3);
    while state().await != "approved" {
        assert!(
            Instant::now() < deadline,
            "the approval stayed {}",
            state().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.flow();
    let (status, _, body) = post_stateless(&url, &[], 3, "echo", json!({"text": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&message(&body)), "echo: hi");
    assert_eq!(state().await, "consumed");
    gw.stop().await.unwrap();
}

/// A charge is refunded only when the call certainly never ran: a connection refused is
/// refunded, an upstream that took the request and never answered is not (its tool may have
/// run, and a slow tool must not buy unlimited calls).
#[tokio::test]
async fn a_call_that_may_have_run_keeps_its_charge() {
    let stack = Stack::new().await;
    let refused_port = closed_port().await;
    let silent_port = raw_upstream(None).await;
    let gw = stack
        .gateway_with(
            &portcullis_tests::redis_url(),
            &["--upstream-timeout", "300ms"],
        )
        .await;
    let once = json!({"version": "1", "default": "deny", "tools": {
        "echo": {"limits": [{"counter": "echo", "window": "minute", "max": 1}]}}});
    for (port, status, refunded) in [(refused_port, 502, true), (silent_port, 504, false)] {
        let f = stack
            .fixture(
                &format!("http://127.0.0.1:{port}/mcp"),
                "streamable_http",
                once.clone(),
            )
            .await;
        let (got, _, body) =
            post_stateless(&f.url(&gw), &[], 1, "echo", json!({"text": "hi"})).await;
        assert_eq!(got, status, "{body}");
        // The outcome (and any refund) is written after the answer.
        outcome_of(&stack, &f).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, _, body) = post_stateless(&f.url(&gw), &[], 2, "echo", json!({"text": "hi"})).await;
        assert_eq!(
            body.contains("[RATE LIMITED]"),
            !refunded,
            "port {port}: {body}"
        );
    }
    gw.stop().await.unwrap();
}

/// Answers the gateway watches (a `tools/list`, a session's stream) are read as SSE events
/// whatever their `Content-Type` says, and events of other types than `message` do not pass:
/// a hidden or default-denied tool reaches the client in none of them.
#[tokio::test]
async fn watched_answers_are_filtered_whatever_their_content_type() {
    let stack = Stack::new().await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "echo", "inputSchema": {"type": "object"}},
        {"name": "delete_everything", "inputSchema": {"type": "object"}},
        {"name": "unlisted", "inputSchema": {"type": "object"}}]}});
    let events = format!("event: message\ndata: {list}\n\nevent: msg\ndata: {list}\n\n");
    let gw = stack.gateway().await;
    for content_type in ["content-type: Text/Event-Stream\r\n", ""] {
        let answer = format!("HTTP/1.1 200 OK\r\n{content_type}connection: close\r\n\r\n{events}");
        let port = raw_upstream(Some(&answer)).await;
        let f = loopback_fixture(&stack, port).await;
        let url = f.url(&gw);
        let version = [("mcp-protocol-version", "2025-11-25")];
        let (status, _, listed) = post(
            &url,
            &version,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string(),
        )
        .await;
        let streamed = reqwest::Client::new()
            .get(&url)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for body in [&listed, &streamed] {
            assert!(
                !body.contains("delete_everything") && !body.contains("unlisted"),
                "{content_type:?}: {body}"
            );
            assert!(!body.contains("event: msg"), "{content_type:?}: {body}");
        }
        // A session's stream is SSE, whatever its header says: the list passes, filtered.
        assert_eq!(listed_names(&message(&streamed)), ["echo"], "{streamed}");
        if !content_type.is_empty() {
            assert_eq!(status, 200, "{listed}");
            assert_eq!(listed_names(&message(&listed)), ["echo"], "{listed}");
        }
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn answers_to_another_request_never_reach_the_client() {
    let stack = Stack::new().await;
    let hidden = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "echo", "inputSchema": {"type": "object"}},
        {"name": "delete_everything", "inputSchema": {"type": "object"}}]}});
    let answer = json!({"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "done"}]}});
    let sse = format!("event: message\ndata: {hidden}\n\nevent: message\ndata: {answer}\n\n");
    let json_body = hidden.to_string();
    let answers = [
        // A tools list for a pending `tools/list` (id 1) in a `tools/call`'s stream: dropped.
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{sse}"
        ),
        // As the JSON answer to the `tools/call` (id 2): refused.
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json_body}",
            json_body.len()
        ),
    ];
    let gw = stack.gateway().await;
    let version = [("mcp-protocol-version", "2025-11-25")];
    for (i, raw) in answers.iter().enumerate() {
        let f = loopback_fixture(&stack, raw_upstream(Some(raw)).await).await;
        let (status, _, body) = post(&f.url(&gw), &version, &call(2, "echo", json!({}))).await;
        assert!(!body.contains("delete_everything"), "{i}: {body}");
        if i == 0 {
            assert_eq!(status, 200, "{body}");
            assert_eq!(text(&message(&body)), "done");
        } else {
            assert_eq!(message(&body)["error"]["code"], -32603, "{body}");
            assert_eq!(message(&body)["id"], 2, "{body}");
        }
    }
    // What the gateway cannot read may be read by a client as another request's answer (the
    // TypeScript SDK takes `3.0` for `3`, and reads a JSON array as a batch): dropped from a
    // stream, refused as a JSON answer.
    let odd = r#"{"jsonrpc":"2.0","id":2.0,"result":{"tools":[{"name":"delete_everything"}]}}"#;
    let batch = format!("[{hidden}]");
    let unreadable_answers = [
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\nevent: message\ndata: {odd}\n\nevent: message\ndata: {answer}\n\n"
        ),
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{odd}",
            odd.len()
        ),
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{batch}",
            batch.len()
        ),
    ];
    for (i, raw) in unreadable_answers.iter().enumerate() {
        let f = loopback_fixture(&stack, raw_upstream(Some(raw)).await).await;
        let (status, _, body) = post(&f.url(&gw), &version, &call(2, "echo", json!({}))).await;
        assert!(!body.contains("delete_everything"), "{i}: {body}");
        if i == 0 {
            assert_eq!(text(&message(&body)), "done", "{body}");
        } else {
            assert_eq!(status, 502, "{i}: {body}");
        }
    }
    // A stateless notification's Mcp-Method, when sent, names its method.
    let cancelled =
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
            .to_string();
    let stateless = |method: &'static str| {
        [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ]
    };
    let sse_port = raw_upstream(Some(&answers[0])).await;
    let f = loopback_fixture(&stack, sse_port).await;
    let (status, _, body) = post(&f.url(&gw), &stateless("tools/call"), &cancelled).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(message(&body)["error"]["code"], -32020, "{body}");
    // The same in the SSE answer to a request the gateway does not otherwise read.
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}).to_string();
    let (status, _, body) = post(&f.url(&gw), &version, &ping).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("delete_everything"), "{body}");
    assert_eq!(message(&body)["id"], 2, "{body}");
    // An error under an id of the upstream's own (the Python SDK answers HTTP-level errors
    // with `"id": "server-error"`) carries no list: it passes, with its status (a 404 tells
    // the client its session is gone).
    let gone = r#"{"jsonrpc":"2.0","id":"server-error","error":{"code":-32600,"message":"Session not found"}}"#;
    let raw = format!(
        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{gone}",
        gone.len()
    );
    let f = loopback_fixture(&stack, raw_upstream(Some(&raw)).await).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    let (status, _, body) = post(&f.url(&gw), &version, &list).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        message(&body)["error"]["message"],
        "Session not found",
        "{body}"
    );
    // A failure's body the gateway cannot read is not passed on for a `tools/list`: its status
    // is (a 404 says the session is gone), with an error of the gateway's.
    let unreadable =
        r#"{"jsonrpc":"2.0","id":1,"id":1,"result":{"tools":[{"name":"delete_everything"}]}}"#;
    let raw = format!(
        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{unreadable}",
        unreadable.len()
    );
    let f = loopback_fixture(&stack, raw_upstream(Some(&raw)).await).await;
    let (status, _, body) = post(&f.url(&gw), &version, &list).await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("delete_everything"), "{body}");
    assert_eq!(message(&body)["error"]["code"], -32603, "{body}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_gateway_refuses_to_start_without_session_keys() {
    let stack = Stack::new().await;
    // Both services: the control plane, started first, must not stay behind when the gateway
    // cannot start.
    let control_plane = closed_port().await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], control_plane));
    let mut config = stack.config(&portcullis_tests::redis_url(), &[]);
    config.control_plane_addr = addr;
    config.gateway.session_keys = None;
    let error = portcullis::start(&config, portcullis::Role::Both)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("PORTCULLIS_SESSION_KEYS"), "{error}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the control plane still listens after the start failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_gateway_refuses_to_start_with_a_spill_directory_it_cannot_use() {
    let stack = Stack::new().await;
    // A file where the directory should be.
    let file = std::env::temp_dir().join(format!(
        "portcullis-not-a-dir-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::write(&file, b"").unwrap();
    let mut config = stack.config(&portcullis_tests::redis_url(), &[]);
    config.gateway.audit_spill_dir = Some(file.clone());
    let error = portcullis::start(&config, portcullis::Role::Gateway)
        .await
        .err()
        .unwrap()
        .to_string();
    std::fs::remove_file(&file).unwrap();
    assert!(error.contains("PORTCULLIS_AUDIT_SPILL_DIR"), "{error}");
    assert!(error.contains(&file.display().to_string()), "{error}");
}

/// A TCP relay in front of an upstream that counts the connections it is asked for, so a test
/// can tell that nothing reached the upstream.
struct CountingRelay {
    url: String,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl CountingRelay {
    /// In front of `upstream_url`, `http://ADDR/PATH`.
    async fn start(upstream_url: &str) -> Self {
        let (target, path) = upstream_url
            .trim_start_matches("http://")
            .split_once('/')
            .unwrap();
        let target = target.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/{path}", listener.local_addr().unwrap());
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            url,
            connections,
            accept,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// DNS rebinding: a page on evil.example.com whose name now points at the gateway makes the
/// browser send `Host: evil.example.com` (and its own `Origin`). The gateway answers 421 before
/// it looks at the grant, so no session opens and the upstream (which would have refused that
/// Host itself, had it seen it) is never called; a foreign `Origin` under the right `Host` is
/// a 403. Without either, the same request opens a session.
#[tokio::test]
async fn a_foreign_host_or_origin_is_refused_before_the_grant_is_looked_at() {
    let stack = Stack::new().await;
    let upstream = RmcpServer::start(true).await;
    let relay = CountingRelay::start(&upstream.url).await;
    let f = stack.fixture(&relay.url, "streamable_http", policy()).await;
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let own = gw.gateway.unwrap().to_string();

    let refusals = [
        (
            vec![
                ("host", "evil.example.com"),
                ("origin", "http://evil.example.com"),
            ],
            421,
        ),
        (vec![("host", "evil.example.com")], 421),
        (vec![("origin", "http://evil.example.com")], 403),
        (vec![("host", own.as_str()), ("origin", "null")], 403),
    ];
    for (headers, expected) in &refusals {
        for body in [
            support::initialize(1),
            call(2, "echo", json!({"text": "x"})),
        ] {
            let (status, headers_out, answer) = post(&url, headers, &body).await;
            assert_eq!(status, *expected, "{headers:?}: {answer}");
            assert!(
                !headers_out.contains_key("mcp-session-id"),
                "{headers:?} opened a session"
            );
            assert_eq!(message(&answer)["error"]["code"], -32600, "{answer}");
            assert!(!answer.contains(f.token.expose()));
        }
        // The bearer route too: refused before the token is read.
        let by_server = format!("http://{own}/mcp/{}", f.server);
        let bearer = format!("Bearer {}", f.token.expose());
        let mut with_token = headers.clone();
        with_token.push(("authorization", bearer.as_str()));
        let (status, _, answer) = post(&by_server, &with_token, &support::initialize(1)).await;
        assert_eq!(status, *expected, "{headers:?}: {answer}");
    }
    assert_eq!(
        relay.connections(),
        0,
        "a refused request reached the upstream"
    );
    assert_eq!(upstream.calls(), 0);

    // The gateway's own names and origin, or none: served.
    let localhost = own.replace("127.0.0.1", "localhost");
    let origin = format!("http://{own}");
    for headers in [
        vec![],
        vec![("host", localhost.as_str())],
        vec![("origin", origin.as_str())],
    ] {
        let (status, headers_out, answer) = post(&url, &headers, &support::initialize(1)).await;
        assert_eq!(status, 200, "{headers:?}: {answer}");
        assert!(headers_out.contains_key("mcp-session-id"), "{answer}");
    }
    assert!(relay.connections() > 0);
    stop_within_the_grace_period(gw).await;
}

/// The gateway's upstream client reads no proxy from the environment: with `HTTP_PROXY`,
/// `HTTPS_PROXY` and `ALL_PROXY` pointing at a listener, calls still go straight to the
/// upstream, through the egress guard, and the listener sees nothing.
#[tokio::test]
async fn the_environments_proxy_is_never_used_for_upstream_calls() {
    let (stack, upstream, f) = rmcp_stack(true, policy()).await;
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = seen.clone();
    let listening = tokio::spawn(async move {
        while let Ok((connection, _)) = proxy.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(connection);
        }
    });
    let env: Vec<(&str, &str)> = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy"]
        .into_iter()
        .map(|name| (name, proxy_url.as_str()))
        .collect();
    let gw = stack.gateway_process_with_env(&[], &env).await;
    let (status, _, body) =
        post_stateless(&f.url(&gw), &[], 1, "echo", json!({"text": "direct"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&message(&body)), "echo: direct");
    assert_eq!(upstream.calls(), 1);
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
    listening.abort();
    gw.stop().await;
}

/// A rug pull: a tool whose definition changed since a person approved it is refused and left
/// out of `tools/list` while its server blocks changed tools (the default); approving the new
/// definition lets it through again.
#[tokio::test]
async fn a_tool_whose_definition_changed_since_approval_is_refused_and_hidden() {
    let (stack, upstream, f) = rmcp_stack(true, policy()).await;
    for (name, approved) in [("echo", "approved-hash"), ("add", "hash-now")] {
        sqlx::query(
            "INSERT INTO tools (id, tenant_id, server_id, name, definition, definition_hash, approved_hash,
                                risk_category, risk_level, status)
             VALUES ($1, $2, $3, $4, '{}', 'hash-now', $5, 'other', 'low', 'active')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(f.tenant.0)
        .bind(f.server.0)
        .bind(name)
        .bind(approved)
        .execute(stack.db.pool())
        .await
        .unwrap();
    }
    let gw = stack.gateway().await;
    let url = f.url(&gw);
    let (status, _, body) = post_stateless(&url, &[], 1, "echo", json!({"text": "x"})).await;
    assert_eq!(status, 200, "{body}");
    let answer = message(&body);
    assert_eq!(answer["result"]["isError"], true, "{body}");
    assert!(body.contains("tool changed"), "{body}");
    assert_eq!(upstream.calls(), 0);
    let (status, _, body) = post_stateless(&url, &[], 2, "add", json!({"a": 1, "b": 2})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&message(&body)), "3");
    let session = rmcp_stateless(&url).await;
    let names = tool_names(&session).await;
    assert!(!names.contains(&"echo".to_owned()), "{names:?}");
    assert!(names.contains(&"add".to_owned()), "{names:?}");
    session.cancel().await.unwrap();

    // A person approves the new definition: the tool works again.
    sqlx::query("UPDATE tools SET approved_hash = definition_hash WHERE server_id = $1")
        .bind(f.server.0)
        .execute(stack.db.pool())
        .await
        .unwrap();
    stack
        .publish(&Invalidation::Server {
            tenant_id: f.tenant,
            server_id: f.server,
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body) = post_stateless(&url, &[], 3, "echo", json!({"text": "x"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&message(&body)), "echo: x");
    stop_within_the_grace_period(gw).await;
}
