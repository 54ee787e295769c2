//! An rmcp (official Rust SDK) MCP server, in process on port 0: the upstream of most tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Text {
    text: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Sum {
    a: i64,
    b: i64,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Payment {
    amount: f64,
    to: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Confirm {
    #[allow(dead_code)]
    confirm: bool,
}

/// The tools; `calls` counts every call that reached it.
#[derive(Clone)]
pub struct Toolbox {
    calls: Arc<AtomicUsize>,
}

#[tool_router(server_handler)]
impl Toolbox {
    #[tool(description = "Echo the text back.")]
    fn echo(&self, Parameters(Text { text }): Parameters<Text>) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        format!("echo: {text}")
    }

    #[tool(description = "Add two numbers.")]
    fn add(&self, Parameters(Sum { a, b }): Parameters<Sum>) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        (a + b).to_string()
    }

    #[tool(description = "Read the deployment secret.")]
    fn get_secret(&self) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        "the-secret".into()
    }

    #[tool(description = "Delete every record permanently.")]
    fn delete_everything(&self, Parameters(_): Parameters<Confirm>) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        "deleted".into()
    }

    #[tool(description = "Send money to a recipient.")]
    fn send_money(&self, Parameters(Payment { amount, to }): Parameters<Payment>) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        format!("sent {amount} to {to}")
    }

    #[tool(description = "Always fails.")]
    fn fail(&self, Parameters(Text { text }): Parameters<Text>) -> CallToolResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        CallToolResult::error(vec![ContentBlock::text(format!("failed: {text}"))])
    }

    #[tool(description = "Report the headers the upstream received.")]
    fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let get = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let mirrored = ["mcp-method", "mcp-name", "mcp-param-x", "last-event-id"]
            .iter()
            .filter(|name| parts.headers.contains_key(**name))
            .map(|name| format!("; {name}={}", get(name)))
            .collect::<String>();
        format!(
            "x-upstream-key={}; authorization={}; cookie={}{mirrored}",
            get("x-upstream-key"),
            get("authorization"),
            get("cookie")
        )
    }
}

/// A running rmcp server.
pub struct RmcpServer {
    pub url: String,
    pub calls: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl RmcpServer {
    /// Starts it on 127.0.0.1, port 0; `json` prefers JSON answers over SSE.
    pub async fn start(json: bool) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let factory_calls = calls.clone();
        let mut config = StreamableHttpServerConfig::default();
        config.json_response = json;
        config.cancellation_token = stop.child_token();
        let service = StreamableHttpService::new(
            move || {
                Ok(Toolbox {
                    calls: factory_calls.clone(),
                })
            },
            Arc::new(LocalSessionManager::default()),
            config,
        );
        let app = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Self { url, calls, stop }
    }

    /// Calls that reached the tools.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for RmcpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
