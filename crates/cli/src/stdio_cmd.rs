//! The stdio commands: `bridge stdio`, `connect`, the hidden `child-guard`, and `healthcheck`
//! (an HTTP probe for container images that carry no curl).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use portcullis_core::settings::parse_duration;
use portcullis_stdio::{BridgeSettings, ChildCommand, bridge, connect};

use crate::config::LogFormat;

/// Logging flags of the commands that have no [`crate::Config`].
#[derive(Debug, Clone, clap::Args)]
pub struct Logging {
    /// Log filter, in `tracing` directive syntax. Logs go to stderr.
    #[arg(long, env = "PORTCULLIS_LOG", default_value = "info")]
    pub log: String,
    /// Log format: `json` (one object a line) or `pretty`.
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
}

/// The bridges between stdio and HTTP.
#[derive(Debug, clap::Subcommand)]
pub enum BridgeCommand {
    /// Run a stdio MCP server as a supervised child and serve it over Streamable HTTP at
    /// `http://LISTEN/mcp` (printed on start), to register it as an upstream.
    Stdio(BridgeStdio),
}

/// `portcullis bridge stdio [--listen ADDR] [--env K=V]… [--shared] [--token-env VAR] -- CMD…`
#[derive(Debug, clap::Args)]
pub struct BridgeStdio {
    /// Address to listen on. Anything but loopback requires --token-env.
    #[arg(
        long,
        env = "PORTCULLIS_BRIDGE_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    pub listen: SocketAddr,
    /// A variable for the child's environment (`K=V`), on top of the bridge's; repeatable.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env_pair)]
    pub child_env: Vec<(String, String)>,
    /// Run one child for every session instead of one per session.
    #[arg(long, env = "PORTCULLIS_BRIDGE_SHARED")]
    pub shared: bool,
    /// Name of the environment variable holding the bearer token every request must carry
    /// (required when listening beyond loopback). The child does not see it.
    #[arg(long, env = "PORTCULLIS_BRIDGE_TOKEN_ENV", value_name = "VAR")]
    pub token_env: Option<String>,
    /// How long a stopping child gets before it is killed.
    #[arg(long, env = "PORTCULLIS_BRIDGE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// The most sessions open at once (each its own child unless --shared); more are refused
    /// with 503 until one ends.
    #[arg(long, env = "PORTCULLIS_BRIDGE_MAX_SESSIONS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_sessions: u32,
    #[command(flatten)]
    pub logging: Logging,
    /// The stdio MCP server and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `portcullis connect URL [--token-env VAR]`
#[derive(Debug, clap::Args)]
pub struct Connect {
    /// The grant URL: `https://GATEWAY/g/TOKEN/mcp`, or `https://GATEWAY/mcp/SERVER_ID` with
    /// --token-env. Set it in PORTCULLIS_CONNECT_URL to keep a token-bearing URL out of
    /// the process list.
    #[arg(env = "PORTCULLIS_CONNECT_URL", hide_env_values = true)]
    pub url: url::Url,
    /// Name of the environment variable holding the grant token, sent as a bearer token.
    #[arg(long, env = "PORTCULLIS_CONNECT_TOKEN_ENV", value_name = "VAR")]
    pub token_env: Option<String>,
    #[command(flatten)]
    pub logging: Logging,
}

/// The guard between the bridge and each child (see `portcullis_stdio::guard`).
#[derive(Debug, clap::Args)]
pub struct ChildGuard {
    /// The bridge's pid.
    #[arg(long)]
    pub parent: u32,
    /// How long the child's process group gets after SIGTERM before SIGKILL.
    #[arg(long, value_parser = parse_duration)]
    pub grace: Duration,
    /// The child and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// `portcullis healthcheck URL`
#[derive(Debug, clap::Args)]
pub struct Healthcheck {
    /// The URL to GET, e.g. http://127.0.0.1:8081/healthz.
    pub url: url::Url,
    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

/// Reads the secret named by a `--token-env` flag.
fn token_from(var: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(var) = var else { return Ok(None) };
    match std::env::var(var) {
        Ok(token) if !token.is_empty() => Ok(Some(token)),
        _ => anyhow::bail!("--token-env {var}: the variable is not set or empty"),
    }
}

/// Runs the bridge until SIGTERM or Ctrl-C, then stops its children.
pub async fn bridge(args: BridgeStdio) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_with(&args.logging.log, args.logging.log_format);
    let token = token_from(args.token_env.as_deref())?;
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find this program's path: {e}"))?;
    let settings = BridgeSettings {
        listen: args.listen,
        shared: args.shared,
        token,
        grace: args.grace,
        max_sessions: args.max_sessions as usize,
        guard: vec![exe.into_os_string(), "child-guard".into()],
        command: ChildCommand {
            argv: args.command,
            env: args
                .child_env
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            env_remove: args.token_env.into_iter().map(Into::into).collect(),
        },
    };
    let running = bridge::start(settings).await?;
    println!("{}", running.url());
    let token = running.shutdown_token();
    tokio::spawn(async move {
        crate::command::wait_for_signal().await;
        tracing::info!("shutdown signal received; stopping the MCP servers");
        token.cancel();
    });
    running.wait().await;
    Ok(ExitCode::SUCCESS)
}

/// Forwards stdio to the grant URL until stdin closes.
pub async fn connect(args: Connect) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_with(&args.logging.log, args.logging.log_format);
    let token = token_from(args.token_env.as_deref())?;
    connect::run(connect::ConnectSettings {
        url: args.url,
        token,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// GETs the URL: exit 0 on a 2xx answer, 1 otherwise.
pub async fn healthcheck(args: Healthcheck) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
    match client.get(args.url).send().await {
        Ok(response) if response.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(response) => {
            eprintln!("unhealthy: HTTP {}", response.status());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("unhealthy: {}", e.without_url());
            Ok(ExitCode::FAILURE)
        }
    }
}
