//! Benchmark: the tool catalogue (`/tools` and `/api/v1/tools`) and one tool page with the real
//! Twilio catalogue of 300 tools.
//!
//! Starts the Twilio MCP server (`@twilio-alpha/mcp`, the v2010 API and Conversations: 300 tools)
//! behind `portcullis bridge stdio`, a control plane on a fresh test database, registers and
//! discovers it, writes three policies (the recommended one, a lenient one with globs and a
//! category rule, one that denies by default), and times each page as the server answers it
//! over loopback (keep-alive; the time to the last byte of the answer). Prints p50/p95/p99.
//! Run it with
//!
//! ```text
//! cargo bench -p portcullis-tests --bench tool_catalogue
//! ```
//!
//! (the test peers must be installed: deploy/local/test does it). The figures go to
//! docs/performance.md.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::{Config, Role};
use portcullis_tests::{TestDatabase, TestRedis};
use serde_json::{Value, json};

const SAMPLES: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let peers = portcullis_tests::peers::peers_dir();
    let entry = peers.join("node_modules/@twilio-alpha/mcp/build/index.js");
    assert!(
        entry.exists(),
        "{} is missing: run deploy/local/test once to install the test peers",
        entry.display()
    );
    let mut bridge = Command::new(env!("CARGO_BIN_EXE_portcullis-e2e"))
        .args(["bridge", "stdio", "--listen", "127.0.0.1:0", "--"])
        .arg("node")
        .arg(&entry)
        .arg("AC00000000000000000000000000000000/SK00000000000000000000000000000000:secret")
        .args(["--services", "twilio_api_v2010,twilio_conversations_v1"])
        .current_dir(&peers)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut bridge_url = String::new();
    BufReader::new(bridge.stdout.take().unwrap())
        .read_line(&mut bridge_url)
        .unwrap();

    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let keys = portcullis_tests::encryption_keys();
    let url = db.url();
    let redis_url = portcullis_tests::redis_url();
    let mail = portcullis_tests::Mailbox::new();
    let transport = mail.transport();
    let config = Config::from_flags([
        "--mail-transport",
        transport.as_str(),
        "--database-url",
        url.as_str(),
        "--redis-url",
        redis_url.as_str(),
        "--redis-prefix",
        redis.prefix(),
        "--control-plane-addr",
        "127.0.0.1:0",
        "--encryption-keys",
        keys.as_str(),
        "--upstream-allow",
        "127.0.0.0/8",
        "--log",
        "warn",
    ])
    .unwrap();
    let app = portcullis::start(&config, Role::ControlPlane)
        .await
        .unwrap();
    let base = format!("http://{}", app.control_plane.unwrap());
    let http = reqwest::Client::new();
    let signup = portcullis_tests::signup(
        &http,
        &base,
        &mail,
        ("bench@example.com", "benchmark password", "Bench"),
    )
    .await;
    let token = signup["api_token"].as_str().unwrap().to_owned();
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let resp = request.send().await.unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            resp.json::<Value>().await.unwrap()
        }
    };
    let server = call(
        reqwest::Method::POST,
        "/api/v1/servers".into(),
        Some(json!({ "name": "twilio", "url": bridge_url.trim() })),
    )
    .await;
    let sid = server["id"].as_str().unwrap().to_owned();
    let discovered = call(
        reqwest::Method::POST,
        format!("/api/v1/servers/{sid}/discover"),
        None,
    )
    .await;
    let tools = discovered["tools"].as_array().unwrap().len();
    let recommended = call(
        reqwest::Method::GET,
        format!("/api/v1/servers/{sid}/recommended-policy"),
        None,
    )
    .await;
    for (name, document) in [
        ("recommended", recommended["document"].clone()),
        (
            "lenient",
            json!({ "version": "1", "default": "allow", "hide": ["*Delete*"],
                    "categories": { "financial": { "approval": {} } },
                    "tools": { "TwilioApiV2010--List*": {}, "TwilioConversationsV1--Fetch*": {} } }),
        ),
        ("strict", json!({ "version": "1", "default": "deny" })),
    ] {
        call(
            reqwest::Method::POST,
            format!("/api/v1/servers/{sid}/policies"),
            Some(json!({ "name": name, "document": document })),
        )
        .await;
    }
    let ungoverned = call(
        reqwest::Method::GET,
        "/api/v1/tools?governed=no".into(),
        None,
    )
    .await;
    println!(
        "{tools} tools discovered, 3 policies; {} not governed",
        ungoverned["tools"].as_array().unwrap().len()
    );

    let pages = [
        ("/tools (catalogue page)", "/tools".to_owned()),
        ("/tools?governed=no", "/tools?governed=no".to_owned()),
        (
            "/tools?sort=name&dir=asc",
            "/tools?sort=name&dir=asc".to_owned(),
        ),
        ("/api/v1/tools", "/api/v1/tools".to_owned()),
        (
            "/servers/{id}/tools/{name} (tool page)",
            format!("/servers/{sid}/tools/TwilioApiV2010--CreateIncomingPhoneNumber"),
        ),
    ];
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9}",
        "page", "p50", "p95", "p99", "bytes"
    );
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(SAMPLES);
        let mut bytes = 0;
        for i in 0..SAMPLES + 10 {
            let started = Instant::now();
            let resp = http
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
            bytes = resp.bytes().await.unwrap().len();
            // The first ten warm the connection and the caches.
            if i >= 10 {
                times.push(started.elapsed());
            }
        }
        times.sort();
        println!(
            "{name:<40} {:>9.2?} {:>9.2?} {:>9.2?} {bytes:>9}",
            percentile(&times, 0.5),
            percentile(&times, 0.95),
            percentile(&times, 0.99),
        );
    }
    app.stop().await.unwrap();
    portcullis_tests::signal(bridge.id(), "TERM");
    let _ = bridge.wait();
}
