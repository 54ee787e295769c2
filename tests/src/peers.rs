//! Real MCP peers for end-to-end tests (see `shared/PEERS.md`): the Python SDK's server and
//! client (run from the venv in `tests/peers/.venv`) and the TypeScript `server-everything`
//! (from `tests/peers/node_modules`), both installed by `deploy/local/test`; and a real SMTP
//! server (`aiosmtpd`, from the same venv) for the control plane's mail.
//!
//! Every server listens on 127.0.0.1 only and is killed when its handle is dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `tests/peers`.
pub fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

fn python() -> PathBuf {
    let python = peers_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run deploy/local/test once to install the test peers",
        python.display()
    );
    python
}

/// A port that was free a moment ago (for peers that cannot report the port they bound).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A peer process, killed on drop.
pub struct PeerProcess {
    child: Child,
    port: u16,
}

impl PeerProcess {
    fn spawn(mut command: Command, port: u16, what: &str) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut peer = Self { child, port };
        peer.wait_until_listening(what);
        peer
    }

    fn wait_until_listening(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{what} exited before listening: {status}");
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what} did not listen on {addr} within 60 s");
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tests/peers/mcp_server.py` (the Python SDK's `MCPServer`): `transport` is
/// `streamable-http` (endpoint `/mcp`) or `sse` (endpoint `/sse`).
pub fn python_server(transport: &str, json_response: bool) -> PeerProcess {
    let port = free_port();
    let mut command = Command::new(python());
    command.arg(peers_dir().join("mcp_server.py")).args([
        "--transport",
        transport,
        "--port",
        &port.to_string(),
    ]);
    if json_response {
        command.arg("--json-response");
    }
    PeerProcess::spawn(command, port, "the Python MCP server")
}

/// Starts `@modelcontextprotocol/server-everything` over Streamable HTTP (endpoint `/mcp`),
/// forced onto 127.0.0.1 by `tests/peers/loopback.cjs`.
pub fn everything_server() -> PeerProcess {
    let dir = peers_dir();
    let entry = dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        entry.exists(),
        "{} is missing: run deploy/local/test once to install the test peers",
        entry.display()
    );
    let port = free_port();
    let mut command = Command::new("node");
    command
        .current_dir(&dir)
        .arg("--require")
        .arg(dir.join("loopback.cjs"))
        .arg(entry)
        .arg("streamableHttp")
        .env("PORT", port.to_string());
    PeerProcess::spawn(command, port, "server-everything")
}

/// Runs `tests/peers/mcp_client.py` (the Python SDK's `Client`) against `url` in `mode`
/// (`legacy` or `2026-07-28`) with a JSON plan of steps; returns the JSON line it prints.
pub async fn python_client(url: &str, mode: &str, plan: &str) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python())
            .arg(peers_dir().join("mcp_client.py"))
            .args([url, mode, plan])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python MCP client did not finish within 120 s")
    .expect("cannot run the Python MCP client");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the Python MCP client failed ({}):\n{}\n{}",
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().last().unwrap_or_default().to_owned()
}

/// Starts `aiosmtpd` (a real SMTP server) on 127.0.0.1:`port`, storing every message it
/// receives in the maildir `maildir` (each in `maildir/new/`, read with
/// [`crate::Mailbox::at`]).
pub fn smtp_server(port: u16, maildir: &std::path::Path) -> PeerProcess {
    let mut command = Command::new(python());
    command
        .args(["-m", "aiosmtpd", "--nosetuid"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--class", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir);
    PeerProcess::spawn(command, port, "aiosmtpd")
}
