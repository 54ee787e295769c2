//! Three `portcullis gateway` replicas behind a real load balancer: Debian's nginx, round robin
//! on 127.0.0.1, naming in `X-Upstream-Addr` the replica that answered. A session continues on
//! whichever replica a request reaches, in both protocol eras; a limit holds exactly across the
//! replicas; and when one replica is killed under load, only the calls it held fail, while
//! every call that reached the upstream has its decision in Postgres, ingested exactly once by
//! two control planes at once.
//!
//! Each test has its own nginx, replicas and upstream; nginx's configuration, pid file, logs
//! and temporary files live in a directory of its own, removed when it stops.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

// The gateway suite's harness, of which these tests use a part.
#[allow(dead_code, unused_imports)]
mod gateway {
    pub mod support;
    pub mod toolbox;
}

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway::support::{
    Fixture, Gateway, GatewayProcess, Stack, call, initialize, message, post, post_stateless,
    stateless_call, text,
};
use gateway::toolbox::RmcpServer;
use portcullis::{Role, Running};
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use serde_json::{Value, json};

/// Where Debian's nginx package puts the server.
const NGINX: &str = "/usr/sbin/nginx";

/// A policy that lets every tool through.
fn open_policy() -> Value {
    json!({"version": "1", "default": "allow"})
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nginx in front of the replicas, as a child process of the test: SIGTERM by
/// [`Nginx::stop`] or when dropped (killed if it has not exited 10 s later), then its
/// directory is removed.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Gateway for Nginx {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The configuration: every path nginx writes inside `dir`, listening on loopback only.
fn nginx_conf(dir: &Path, port: u16, replicas: &[SocketAddr]) -> String {
    let dir = dir.display();
    // One failure takes a replica out of the rotation for 5 s; it is then tried again.
    let servers: String = replicas
        .iter()
        .map(|addr| format!("        server {addr} max_fails=1 fail_timeout=5s;\n"))
        .collect();
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    log_format replicas '$remote_addr "$request" $status $upstream_addr $upstream_status $request_time';
    access_log {dir}/access.log replicas;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream replicas {{
{servers}        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # SSE answers and streams go through as they are written.
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            # A POST is never sent to a second replica: a call runs at most once.
            proxy_next_upstream off;
            add_header X-Upstream-Addr $upstream_addr always;
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// Starts nginx in front of `replicas` and waits until it proxies a request.
    async fn start(replicas: &[SocketAddr]) -> Self {
        assert!(
            Path::new(NGINX).is_file(),
            "{NGINX} is missing: these tests put Debian's nginx in front of the gateways; \
             run deploy/local/test once, which installs it with the other test peers \
             (the apt package nginx)"
        );
        let dir = TempDir(std::env::temp_dir().join(format!(
            "portcullis-nginx-{}",
            uuid::Uuid::now_v7().simple()
        )));
        std::fs::create_dir(&dir.0).unwrap();
        let (conf, pid_file, error_log) = (
            dir.0.join("nginx.conf"),
            dir.0.join("nginx.pid"),
            dir.0.join("error.log"),
        );
        // nginx cannot bind port 0 and tell which port it got: it takes a port that was free a
        // moment ago, and another if that one was taken in between.
        for _ in 0..5 {
            let port = portcullis_tests::peers::free_port();
            std::fs::write(&conf, nginx_conf(&dir.0, port, replicas)).unwrap();
            let mut child = Command::new(NGINX)
                .arg("-p")
                .arg(&dir.0)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&error_log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {NGINX}: {e}"));
            // The master writes its pid file once its listening socket is bound.
            let deadline = Instant::now() + Duration::from_secs(20);
            let bound = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                    assert!(
                        log.contains("Address already in use"),
                        "nginx exited ({status}) while starting:\n{log}"
                    );
                    break false;
                }
                let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
                if pid.trim() == child.id().to_string() {
                    break true;
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx did not start within 20 s:\n{}",
                    std::fs::read_to_string(&error_log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            if !bound {
                continue;
            }
            let nginx = Self {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                dir,
            };
            let health = format!("http://{}/healthz", nginx.addr);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let answer = reqwest::get(&health).await;
                if answer.as_ref().is_ok_and(|r| r.status() == 200) {
                    return nginx;
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx on {} proxied no /healthz within 20 s: {answer:?}",
                    nginx.addr
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("nginx found no free port in 5 tries");
    }

    /// Stops nginx and checks that nothing listens on its port any more (no worker outlived
    /// its master).
    async fn stop(mut self) {
        self.terminate();
        assert!(
            tokio::net::TcpStream::connect(self.addr).await.is_err(),
            "something still listens on {} after nginx exited",
            self.addr
        );
    }

    /// SIGTERM (nginx's fast shutdown: the master stops its workers, then exits), SIGKILL if it
    /// still runs 10 s later.
    fn terminate(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// nginx's error log, for a failure's message.
    fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Three `portcullis gateway` processes sharing the stack's Postgres, Redis and session keys.
async fn replicas(stack: &Stack) -> Vec<GatewayProcess> {
    // A call's decision entry is written before it is forwarded, awaited up to the limiter
    // timeout (past it the entry stays queued and the call goes on). Here a replica is killed
    // under load, which must not take queued decisions of forwarded calls with it, and 600
    // calls arrive at once on a 2-core machine: the timeout is made generous, so that neither
    // depends on how fast Redis answers during the test.
    // nginx forwards the client's Host, its own address, whose port is chosen after the
    // replicas start: the replicas answer to 127.0.0.1 on any port (in production, the public
    // URL names the load balancer).
    let flags = ["--limiter-timeout", "10s", "--gateway-hosts", "127.0.0.1"];
    let (a, b, c) = tokio::join!(
        stack.gateway_process(&flags),
        stack.gateway_process(&flags),
        stack.gateway_process(&flags)
    );
    vec![a, b, c]
}

/// The replica nginx says answered (`X-Upstream-Addr`).
fn replica(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("x-upstream-addr")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_owned()
}

/// How one call through nginx went.
#[derive(Debug)]
struct Answer {
    /// The replica nginx named, when an answer came (its own 502s name one too).
    replica: Option<String>,
    /// The tool result's text, or why there was none.
    result: Result<String, String>,
}

/// An error with its causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The text of the tool result in a JSON or SSE answer, if it holds one.
fn result_text(body: &str) -> Option<String> {
    let value: Value = if body.trim_start().starts_with('{') {
        serde_json::from_str(body).ok()?
    } else {
        body.lines()
            .rev()
            .filter_map(|l| l.strip_prefix("data:"))
            .find_map(|d| serde_json::from_str(d.trim()).ok())?
    };
    value["result"]["content"][0]["text"]
        .as_str()
        .map(str::to_owned)
}

/// A stateless-era `tools/call` of `echo` through `client`.
async fn echo(client: &reqwest::Client, url: &str, id: i64, text: &str) -> Answer {
    let sent = client
        .post(url)
        .timeout(Duration::from_secs(60))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .body(stateless_call(id, "echo", json!({ "text": text })))
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => {
            return Answer {
                replica: None,
                result: Err(format!("no answer: {}", chain(&e))),
            };
        }
    };
    let replica = Some(replica(response.headers()));
    let status = response.status().as_u16();
    let result = match response.text().await {
        Err(e) => Err(format!("{status}, answer cut off: {}", chain(&e))),
        Ok(body) => match result_text(&body) {
            Some(text) if status == 200 => Ok(text),
            _ => Err(format!("{status}: {body}")),
        },
    };
    Answer { replica, result }
}

/// Waits until `done` holds, polling; fails with `what` after `limit`.
async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A session started through nginx goes on whichever replica serves each request (session
/// era: one session id; stateless era: nothing to carry), and a real client works through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_continues_on_any_replica_behind_nginx() {
    let stack = Stack::new().await;
    // SSE answers: they must stream through nginx.
    let upstream = RmcpServer::start(false).await;
    let f = stack
        .fixture(&upstream.url, "streamable_http", open_policy())
        .await;
    let gateways = replicas(&stack).await;
    let addrs: Vec<SocketAddr> = gateways.iter().map(Gateway::addr).collect();
    let nginx = Nginx::start(&addrs).await;
    let url = f.url(&nginx);
    let known: BTreeSet<String> = addrs.iter().map(SocketAddr::to_string).collect();

    // Session era: the session opened on one replica goes on on the others.
    let (status, headers, body) = post(&url, &[], &initialize(1)).await;
    assert_eq!(status, 200, "initialize through nginx: {body}");
    let session = headers
        .get("mcp-session-id")
        .unwrap_or_else(|| panic!("initialize through nginx gave no session id: {body}"))
        .to_str()
        .unwrap()
        .to_owned();
    let mut served_by = vec![replica(&headers)];
    let in_session = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (status, headers, body) = post(
        &url,
        &in_session,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await;
    assert_eq!(status, 202, "notifications/initialized: {body}");
    served_by.push(replica(&headers));
    for id in 2..8 {
        let said = format!("session call {id}");
        let (status, headers, body) = post(
            &url,
            &in_session,
            &call(id, "echo", json!({ "text": said })),
        )
        .await;
        let by = replica(&headers);
        assert_eq!(status, 200, "call {id} of the session, on {by}: {body}");
        assert_eq!(
            text(&message(&body)),
            format!("echo: {said}"),
            "call {id} of the session, on {by}"
        );
        if let Some(returned) = headers.get("mcp-session-id") {
            assert_eq!(
                returned.to_str().unwrap(),
                session,
                "replica {by} handed the session a new id"
            );
        }
        served_by.push(by);
    }
    let distinct: BTreeSet<String> = served_by.iter().cloned().collect();
    eprintln!("session era: one session served by {served_by:?}");
    assert!(
        distinct.is_subset(&known),
        "answers named replicas other than {known:?}: {served_by:?}"
    );
    assert!(
        distinct.len() >= 2,
        "one session should have been served by at least two replicas: {served_by:?}"
    );

    // Stateless era: every call stands alone, wherever it lands.
    let mut served_by = Vec::new();
    for id in 1..7 {
        let said = format!("stateless call {id}");
        let (status, headers, body) =
            post_stateless(&url, &[], id, "echo", json!({ "text": said })).await;
        let by = replica(&headers);
        assert_eq!(status, 200, "stateless call {id}, on {by}: {body}");
        assert_eq!(
            text(&message(&body)),
            format!("echo: {said}"),
            "stateless call {id}, on {by}"
        );
        served_by.push(by);
    }
    let distinct: BTreeSet<String> = served_by.iter().cloned().collect();
    eprintln!("stateless era: calls served by {served_by:?}");
    assert!(
        distinct.is_subset(&known),
        "answers named replicas other than {known:?}: {served_by:?}"
    );
    assert!(
        distinct.len() >= 2,
        "stateless calls should have landed on at least two replicas: {served_by:?}"
    );

    // A real client: rmcp, its session and server→client stream through nginx.
    let client = ()
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await
        .unwrap_or_else(|e| panic!("rmcp could not connect through nginx: {e}"));
    let tools: Vec<String> = client
        .list_tools(None)
        .await
        .unwrap_or_else(|e| panic!("rmcp could not list tools through nginx: {e}"))
        .tools
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(
        tools.iter().any(|t| t == "echo"),
        "rmcp listed through nginx: {tools:?}"
    );
    let Value::Object(arguments) = json!({"text": "from rmcp"}) else {
        unreachable!()
    };
    let echoed = client
        .call_tool(CallToolRequestParams::new("echo".to_owned()).with_arguments(arguments))
        .await
        .unwrap_or_else(|e| panic!("rmcp could not call echo through nginx: {e}"));
    let echoed = serde_json::to_value(&echoed).unwrap();
    assert_eq!(
        echoed["content"][0]["text"], "echo: from rmcp",
        "rmcp's call through nginx"
    );
    client.cancel().await.unwrap();

    nginx.stop().await;
    for g in gateways {
        g.stop().await;
    }
}

/// A limit of 100 per minute per grant admits exactly 100 of 600 calls sent at once, which
/// nginx spreads over the three replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_holds_exactly_across_replicas_behind_nginx() {
    let stack = Stack::new().await;
    let upstream = RmcpServer::start(true).await;
    let policy = json!({
        "version": "1",
        "default": "allow",
        "all_tools": {"limits": [{"counter": "calls", "window": "minute", "max": 100, "scope": "grant"}]}
    });
    let f = stack
        .fixture(&upstream.url, "streamable_http", policy)
        .await;
    let gateways = replicas(&stack).await;
    let addrs: Vec<SocketAddr> = gateways.iter().map(Gateway::addr).collect();
    let nginx = Nginx::start(&addrs).await;
    let url = f.url(&nginx);

    let client = reqwest::Client::new();
    let calls = (0..600).map(|id| echo(&client, &url, id, "x"));
    let answers = futures::future::join_all(calls).await;

    let mut served = 0;
    let mut limited = 0;
    let mut other = Vec::new();
    let mut per_replica: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for a in &answers {
        let by = a.replica.clone().unwrap_or_else(|| "(none)".to_owned());
        match &a.result {
            Ok(t) if t == "echo: x" => {
                served += 1;
                per_replica.entry(by).or_default().0 += 1;
            }
            Ok(t) if t.starts_with("[RATE LIMITED]") => {
                limited += 1;
                per_replica.entry(by).or_default().1 += 1;
            }
            _ => other.push(a),
        }
    }
    eprintln!(
        "limit of 100 per minute, 600 calls at once: {served} served, {limited} rate limited; \
         (served, limited) per replica: {per_replica:?}"
    );
    assert!(
        other.is_empty(),
        "calls neither served nor rate limited: {other:#?}\n{}",
        nginx.errors()
    );
    assert_eq!(
        per_replica.len(),
        3,
        "the 600 calls should have been spread over the three replicas: {per_replica:?}"
    );
    assert_eq!(
        (served, limited),
        (100, 500),
        "a limit of 100 per minute should admit exactly 100 of 600 calls"
    );
    assert_eq!(
        upstream.calls(),
        100,
        "the upstream should have run exactly 100 calls"
    );

    nginx.stop().await;
    for g in gateways {
        g.stop().await;
    }
}

/// The load of [`a_killed_replica_fails_only_its_own_calls`].
#[derive(Default)]
struct Load {
    sent: AtomicUsize,
    in_flight: AtomicUsize,
    killed: AtomicBool,
    stop: AtomicBool,
}

/// Clients looping calls through nginx.
const CLIENTS: i64 = 96;

/// A control plane (its audit ingester a consumer of its own) on the stack.
async fn control_plane(stack: &Stack) -> Running {
    portcullis::start(
        &stack.config(&portcullis_tests::redis_url(), &[]),
        Role::ControlPlane,
    )
    .await
    .unwrap()
}

/// Entries of a stream: its length and how many of them were read but not acknowledged.
async fn stream_backlog(stack: &Stack, stream: &str) -> (u64, u64) {
    let mut conn = stack.redis.conn();
    let length: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    let summary: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(portcullis_core::audit::stream::GROUP)
        .query_async(&mut conn)
        .await;
    let pending = match summary {
        Ok(redis::Value::Array(items)) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    };
    (length, pending)
}

/// The decision rows of `f`'s calls of `echo` in Postgres: allowed, all, distinct ids.
async fn decisions(stack: &Stack, f: &Fixture) -> (usize, i64, i64) {
    let (allowed, rows, ids): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE decision = 'allow'), count(*), count(DISTINCT id)
           FROM audit_events WHERE tenant_id = $1 AND grant_id = $2 AND tool = 'echo'",
    )
    .bind(f.tenant.0)
    .bind(f.grant.0)
    .fetch_one(stack.db.pool())
    .await
    .unwrap();
    (usize::try_from(allowed).unwrap(), rows, ids)
}

/// 96 clients loop calls through nginx; one replica is killed (SIGKILL) after the first 1,000
/// calls, and the load goes on for at least 1,500 more and past nginx's `fail_timeout`, when
/// nginx tries the dead replica again. Only calls nginx sent to the dead replica fail; every
/// call the upstream ran has its decision in Postgres, ingested once by two control planes
/// reading the stream at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_fails_only_its_own_calls() {
    let stack = Stack::new().await;
    let upstream = RmcpServer::start(true).await;
    let f = stack
        .fixture(&upstream.url, "streamable_http", open_policy())
        .await;
    let control_planes = [control_plane(&stack).await, control_plane(&stack).await];
    let gateways = replicas(&stack).await;
    let addrs: Vec<SocketAddr> = gateways.iter().map(Gateway::addr).collect();
    let nginx = Nginx::start(&addrs).await;
    let url = f.url(&nginx);

    let load = Arc::new(Load::default());
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (url, load) = (url.clone(), load.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut answers = Vec::new();
            let mut id = c * 1_000_000;
            while !load.stop.load(Ordering::SeqCst) {
                id += 1;
                let after_kill = load.killed.load(Ordering::SeqCst);
                load.sent.fetch_add(1, Ordering::SeqCst);
                load.in_flight.fetch_add(1, Ordering::SeqCst);
                let answer = echo(&client, &url, id, "load").await;
                load.in_flight.fetch_sub(1, Ordering::SeqCst);
                answers.push((after_kill, answer));
            }
            answers
        }));
    }
    let sent = || load.sent.load(Ordering::SeqCst);
    wait_until(
        Duration::from_secs(60),
        "the load did not reach 1,000 calls",
        || sent() >= 1_000,
    )
    .await;
    let victim = addrs[1].to_string();
    portcullis_tests::signal(gateways[1].pid(), "KILL");
    let in_flight_at_kill = load.in_flight.load(Ordering::SeqCst);
    let sent_at_kill = sent();
    let killed_at = Instant::now();
    load.killed.store(true, Ordering::SeqCst);
    // Past nginx's fail_timeout, so that it also tries the dead replica again.
    wait_until(
        Duration::from_secs(60),
        "the load did not send 1,500 calls after the kill",
        || sent() >= sent_at_kill + 1_500 && killed_at.elapsed() > Duration::from_secs(6),
    )
    .await;
    load.stop.store(true, Ordering::SeqCst);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }

    let total = answers.len();
    // Calls served and failed, by (sent after the kill?, the replica nginx named).
    let mut served: BTreeMap<(bool, String), usize> = BTreeMap::new();
    let mut failed_by: BTreeMap<(bool, String), usize> = BTreeMap::new();
    let mut failed = Vec::new();
    for (after_kill, a) in &answers {
        let by = a
            .replica
            .clone()
            .unwrap_or_else(|| "(no answer)".to_owned());
        if a.result.as_deref() == Ok("echo: load") {
            *served.entry((*after_kill, by)).or_default() += 1;
        } else {
            *failed_by.entry((*after_kill, by)).or_default() += 1;
            failed.push(a);
        }
    }
    // What nginx saw of the dead replica: calls cut off, and connections it refused.
    let errors = nginx.errors();
    let cut_off = errors
        .lines()
        .filter(|l| l.contains("prematurely closed") || l.contains("reset by peer"))
        .count();
    let refused = errors
        .lines()
        .filter(|l| l.contains("Connection refused"))
        .count();
    eprintln!(
        "{CLIENTS} clients sent {total} calls: {sent_at_kill} before the kill of {victim}, \
         {in_flight_at_kill} in flight at the kill; {} failed, by (sent after the kill?, replica): \
         {failed_by:?}; served by (sent after the kill?, replica): {served:?}; nginx logged \
         {cut_off} calls cut off and {refused} connections refused",
        failed.len()
    );
    assert!(
        total >= 2_000,
        "only {total} calls were sent around the kill"
    );
    assert!(
        served.get(&(false, victim.clone())).is_some_and(|&n| n > 0),
        "the killed replica served no call before the kill: {served:?}"
    );
    for survivor in [&addrs[0], &addrs[2]] {
        assert!(
            served
                .get(&(true, survivor.to_string()))
                .is_some_and(|&n| n > 0),
            "the surviving replica {survivor} served no call after the kill: {served:?}"
        );
    }
    // nginx answers every call, a call whose replica died or refused the connection with a 502
    // naming that replica: a failure that names another replica, or no answer at all, is a
    // failure the kill should not have caused.
    let not_the_victims: Vec<&&Answer> = failed
        .iter()
        .filter(|a| a.replica.as_deref() != Some(victim.as_str()))
        .collect();
    assert!(
        not_the_victims.is_empty(),
        "calls failed that the killed replica {victim} did not answer \
         (clients of the other replicas must see no error): {not_the_victims:#?}\n{}",
        nginx.errors()
    );

    // Every call the upstream ran has its decision in Postgres, written before it was
    // forwarded, once both control planes have ingested the stream; none twice.
    let ran = upstream.calls();
    let keys = stack.redis.redis_keys();
    let stream = keys.audit_stream(keys.shard(f.tenant));
    let deadline = Instant::now() + Duration::from_secs(60);
    let (allowed, rows, ids) = loop {
        let counts = decisions(&stack, &f).await;
        let backlog = stream_backlog(&stack, &stream).await;
        if counts.0 >= ran && backlog == (0, 0) {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream ran {ran} calls, {} allow decisions are in Postgres 60 s later, \
             stream entries (left, pending): {backlog:?}",
            counts.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg(portcullis_core::audit::stream::GROUP)
        .query_async(&mut stack.redis.conn())
        .await
        .unwrap();
    eprintln!(
        "the upstream ran {ran} calls; Postgres holds {allowed} allow decisions in {rows} rows \
         ({ids} ids), ingested by {} consumers",
        consumers.len()
    );
    assert!(
        consumers.len() >= 2,
        "both control planes should read the audit stream: {consumers:?}"
    );
    assert!(
        allowed >= ran,
        "the upstream ran {ran} calls but Postgres holds {allowed} allow decisions"
    );
    assert_eq!(rows, ids, "an event was ingested twice");

    nginx.stop().await;
    let mut gateways = gateways.into_iter();
    let (first, killed, third) = (
        gateways.next().unwrap(),
        gateways.next().unwrap(),
        gateways.next().unwrap(),
    );
    drop(killed);
    first.stop().await;
    third.stop().await;
    for cp in control_planes {
        cp.stop().await.unwrap();
    }
}
