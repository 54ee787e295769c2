//! One supervised stdio MCP server: started under the guard, fed on stdin, read on stdout,
//! logged from stderr, stopped with a grace, restarted with a back-off when it keeps dying.

use std::ffi::OsString;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::guard::PID_LINE_PREFIX;
use crate::lines::{Line, Lines};
use crate::routes::Routes;

/// The largest message a server may write on one line (a catalogue of hundreds of tools with
/// their schemas fits many times over).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The longest stderr line logged whole.
const MAX_LOG_LINE_BYTES: usize = 16 * 1024;
/// A server that exits sooner than this after its start counts as crashing.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// The first and the longest wait before starting a server again after a crash.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The stdio server to run: its program, arguments and environment.
#[derive(Debug, Clone, Default)]
pub struct ChildCommand {
    /// The program and its arguments.
    pub argv: Vec<OsString>,
    /// Variables set for it, on top of the bridge's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Variables of the bridge's environment it must not see (the bridge's own token).
    pub env_remove: Vec<OsString>,
}

/// Starts children (with the back-off) and remembers how to.
pub(crate) struct Spawner {
    /// How to start the guard: program and leading arguments.
    guard: Vec<OsString>,
    command: ChildCommand,
    grace: Duration,
    backoff: Mutex<Backoff>,
}

#[derive(Default)]
struct Backoff {
    crashes: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    fn exited(&mut self, lived: Duration) {
        if lived >= HEALTHY_AFTER {
            *self = Backoff::default();
            return;
        }
        self.crashes += 1;
        self.not_before = Some(Instant::now() + backoff_after(self.crashes));
    }
}

/// The wait before the next start after `crashes` crashes in a row (at least one).
fn backoff_after(crashes: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << crashes.saturating_sub(1).min(10))
        .min(MAX_BACKOFF)
}

/// A running child.
pub(crate) struct Process {
    guard_pid: u32,
    pid: Arc<AtomicU32>,
    stdin: mpsc::UnboundedSender<Vec<u8>>,
    /// Where its messages go.
    pub routes: Arc<Mutex<Routes>>,
    gone: CancellationToken,
    stopping: Arc<AtomicBool>,
    /// A `--shared` child's `initialize` result, answered to every later session.
    pub initialized: tokio::sync::Mutex<Option<Value>>,
    /// Whether its `notifications/initialized` was sent (once per child).
    pub initialized_sent: AtomicBool,
}

impl Spawner {
    pub fn new(guard: Vec<OsString>, command: ChildCommand, grace: Duration) -> Self {
        Self {
            guard,
            command,
            grace,
            backoff: Mutex::default(),
        }
    }

    /// Starts a child, after the back-off if the last ones crashed.
    pub async fn spawn(self: &Arc<Self>) -> std::io::Result<Arc<Process>> {
        let not_before = lock(&self.backoff).not_before;
        if let Some(at) = not_before {
            tokio::time::sleep_until(at.into()).await;
        }
        let (guard, leading) = self
            .guard
            .split_first()
            .ok_or_else(|| std::io::Error::other("no guard program"))?;
        let mut command = tokio::process::Command::new(guard);
        command
            .args(leading)
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--grace")
            .arg(format!("{}ms", self.grace.as_millis()))
            .arg("--")
            .args(&self.command.argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in &self.command.env_remove {
            command.env_remove(name);
        }
        command.envs(self.command.env.iter().map(|(k, v)| (k, v)));
        let mut child = command.spawn()?;
        let guard_pid = child.id().unwrap_or_default();
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("the child's pipes are missing"));
        };

        let (stdin_tx, mut stdin_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(mut line) = stdin_rx.recv().await {
                line.push(b'\n');
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });

        let pid = Arc::new(AtomicU32::new(guard_pid));
        let stderr_pid = pid.clone();
        tokio::spawn(async move {
            let mut lines = Lines::new(BufReader::new(stderr), MAX_LOG_LINE_BYTES);
            while let Ok(Some(line)) = lines.next().await {
                let pid = stderr_pid.load(Ordering::Relaxed);
                match line {
                    Line::Text(text) => {
                        let text = String::from_utf8_lossy(&text);
                        if let Some(server) = text
                            .strip_prefix(PID_LINE_PREFIX)
                            .and_then(|p| p.parse::<u32>().ok())
                        {
                            stderr_pid.store(server, Ordering::Relaxed);
                            tracing::info!(pid = server, guard_pid, "MCP server started");
                        } else {
                            tracing::info!(pid, "{text}");
                        }
                    }
                    Line::TooLong(n) => tracing::info!(pid, "(a stderr line of {n} bytes)"),
                }
            }
        });

        let routes = Arc::new(Mutex::new(Routes::default()));
        let gone = CancellationToken::new();
        let stopping = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let (reader_routes, reader_pid, reader_gone, reader_stopping, spawner) = (
            routes.clone(),
            pid.clone(),
            gone.clone(),
            stopping.clone(),
            self.clone(),
        );
        tokio::spawn(async move {
            let mut lines = Lines::new(BufReader::new(stdout), MAX_MESSAGE_BYTES);
            loop {
                let line = match lines.next().await {
                    Ok(Some(line)) => line,
                    Ok(None) | Err(_) => break,
                };
                let pid = reader_pid.load(Ordering::Relaxed);
                match line {
                    Line::Text(text) => match parse_message(&text) {
                        Some(message) => {
                            if !lock(&reader_routes).deliver(message) {
                                tracing::debug!(
                                    pid,
                                    "a message from the MCP server had nowhere to go"
                                );
                            }
                        }
                        None if text.iter().all(u8::is_ascii_whitespace) => {}
                        None => tracing::warn!(
                            pid,
                            line = %preview(&text),
                            "skipped a line from the MCP server that is not a JSON-RPC message"
                        ),
                    },
                    Line::TooLong(n) => tracing::warn!(
                        pid,
                        "skipped a message of {n} bytes from the MCP server (at most {MAX_MESSAGE_BYTES})"
                    ),
                }
            }
            // Its output is closed: it exited, or will be made to.
            let status = match tokio::time::timeout(Duration::from_millis(500), child.wait()).await
            {
                Ok(status) => status.ok(),
                Err(_) => {
                    let _ = child.start_kill();
                    child.wait().await.ok()
                }
            };
            let pid = reader_pid.load(Ordering::Relaxed);
            let why = match status {
                Some(status) => format!("the MCP server exited ({status})"),
                None => "the MCP server exited".to_owned(),
            };
            lock(&reader_routes).fail_all(&why);
            if reader_stopping.load(Ordering::Relaxed) {
                tracing::info!(pid, "MCP server stopped");
            } else {
                tracing::warn!(
                    pid,
                    lived_ms = started.elapsed().as_millis() as u64,
                    "{why}"
                );
                lock(&spawner.backoff).exited(started.elapsed());
            }
            reader_gone.cancel();
        });

        Ok(Arc::new(Process {
            guard_pid,
            pid,
            stdin: stdin_tx,
            routes,
            gone,
            stopping,
            initialized: tokio::sync::Mutex::new(None),
            initialized_sent: AtomicBool::new(false),
        }))
    }

    /// How long a stop waits for a child before killing it.
    pub fn grace(&self) -> Duration {
        self.grace
    }
}

impl Process {
    /// Writes one message to the child's stdin; false when the child is gone.
    pub fn send(&self, message: &Value) -> bool {
        !self.gone.is_cancelled() && self.stdin.send(message.to_string().into_bytes()).is_ok()
    }

    /// True once the child has exited and every waiting request was answered.
    pub fn is_gone(&self) -> bool {
        self.gone.is_cancelled()
    }

    /// Resolves when the child has exited.
    pub async fn gone(&self) {
        self.gone.cancelled().await;
    }

    /// The server's pid (the guard's until the server's is known).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Stops the child: SIGTERM to its guard, which stops the server's process group (SIGKILL
    /// after `grace`); the guard itself is killed if it is still there a second later.
    pub async fn stop(&self, grace: Duration) {
        if self.is_gone() {
            return;
        }
        self.stopping.store(true, Ordering::Relaxed);
        let guard = Pid::from_raw(self.guard_pid as i32);
        let _ = kill(guard, Signal::SIGTERM);
        let deadline = grace + Duration::from_secs(1);
        if tokio::time::timeout(deadline, self.gone()).await.is_err() && !self.is_gone() {
            let _ = kill(guard, Signal::SIGKILL);
            self.gone().await;
        }
    }
}

/// A JSON-RPC 2.0 message object, or `None`.
fn parse_message(line: &[u8]) -> Option<Value> {
    let value: Value = serde_json::from_slice(line).ok()?;
    (value.get("jsonrpc").and_then(Value::as_str) == Some("2.0")).then_some(value)
}

fn preview(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    match text.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.into_owned(),
    }
}

/// Locks a mutex whose holders never panic while holding it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashes_back_off_exponentially_up_to_a_bound_and_a_healthy_run_resets_it() {
        assert_eq!(backoff_after(1), FIRST_BACKOFF);
        assert_eq!(backoff_after(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff_after(4), FIRST_BACKOFF * 8);
        assert_eq!(backoff_after(8), MAX_BACKOFF);
        assert_eq!(backoff_after(u32::MAX), MAX_BACKOFF);
        let mut backoff = Backoff::default();
        backoff.exited(Duration::from_millis(5));
        backoff.exited(Duration::from_millis(5));
        assert_eq!(backoff.crashes, 2);
        assert!(backoff.not_before.is_some());
        backoff.exited(HEALTHY_AFTER);
        assert_eq!(backoff.crashes, 0);
        assert!(backoff.not_before.is_none());
    }

    #[test]
    fn only_json_rpc_objects_are_messages() {
        assert!(parse_message(br#"{"jsonrpc":"2.0","method":"x"}"#).is_some());
        assert!(parse_message(br#"{"method":"log"}"#).is_none());
        assert!(parse_message(b"Server started on stdio").is_none());
        assert!(parse_message(b"[1,2]").is_none());
    }
}
