//! The `portcullis` command line: its subcommands, and running them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{Config, Role};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A policy gateway for AI agents' MCP tool calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane and the gateway in one process, on two listeners.
    Serve(#[command(flatten)] Config),
    /// Run the control plane (dashboard and API) only.
    ControlPlane(#[command(flatten)] Config),
    /// Run the gateway only.
    Gateway(#[command(flatten)] Config),
    /// Apply the database migrations (creating the database if needed) and exit.
    Migrate(#[command(flatten)] Config),
    /// Compile every policy stored in the database as this release does, and list those it
    /// refuses (their grants' calls would all be denied); exits 1 when there are any. Run it
    /// with a new release before upgrading.
    CheckPolicies(#[command(flatten)] Config),
    /// Check, evaluate and recommend policies, offline.
    Policy {
        #[command(subcommand)]
        command: crate::policy_cmd::PolicyCommand,
    },
    /// Bridge a stdio MCP server to Streamable HTTP.
    Bridge {
        #[command(subcommand)]
        command: crate::stdio_cmd::BridgeCommand,
    },
    /// Act as a stdio MCP server that forwards every message to a grant URL.
    Connect(crate::stdio_cmd::Connect),
    /// GET a URL and exit 0 when it answers 2xx (a container health check).
    Healthcheck(crate::stdio_cmd::Healthcheck),
    /// Runs one child of `bridge stdio` (started by the bridge itself).
    #[command(hide = true)]
    ChildGuard(crate::stdio_cmd::ChildGuard),
    /// Print a new random encryption key (`ID:BASE64`) for PORTCULLIS_ENCRYPTION_KEYS.
    Keygen {
        /// The key's id; give each key of a ring its own.
        #[arg(long, default_value_t = 1)]
        id: u32,
    },
}

/// Parses the command line and runs what it asks for; the binary's `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Offline commands need no runtime; the guard must start no threads (it blocks signals).
    let cli = match cli.command {
        Command::Policy { command } => return crate::policy_cmd::run(command),
        Command::ChildGuard(g) => {
            return portcullis_stdio::guard::run(g.parent, g.grace, &g.command);
        }
        command => Cli { command },
    };
    // The gateway serves requests on threads of its own (one runtime each); the main runtime
    // runs the control plane and background work.
    let threads = match &cli.command {
        Command::Serve(c) | Command::ControlPlane(c) => c.worker_threads,
        Command::Gateway(_) | Command::Connect(_) | Command::Healthcheck(_) => Some(1),
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(usize::from(n));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => serve(config, Role::Both).await,
            Command::ControlPlane(config) => serve(config, Role::ControlPlane).await,
            Command::Gateway(config) => serve(config, Role::Gateway).await,
            Command::Policy { .. } | Command::ChildGuard(_) => unreachable!("handled above"),
            Command::Bridge {
                command: crate::stdio_cmd::BridgeCommand::Stdio(args),
            } => crate::stdio_cmd::bridge(args).await,
            Command::Connect(args) => crate::stdio_cmd::connect(args).await,
            Command::Healthcheck(args) => crate::stdio_cmd::healthcheck(args).await,
            Command::Keygen { id } => {
                println!("{}", portcullis_core::Keyring::generate(id).1);
                Ok(ExitCode::SUCCESS)
            }
            Command::CheckPolicies(config) => {
                crate::telemetry::init(&config);
                let report = crate::stored_policies::check(&config).await?;
                println!("{}", report.render());
                Ok(if report.refused.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Command::Migrate(config) => {
                crate::telemetry::init(&config);
                let applied = crate::migrate(&config).await?;
                println!("migrations: {applied} applied, database up to date");
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// One clear line on standard error, the causes joined, never a backtrace.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

async fn serve(config: Config, role: Role) -> anyhow::Result<ExitCode> {
    config.validate()?;
    crate::telemetry::init(&config);
    let running = crate::start(&config, role).await?;
    if let Some(addr) = running.control_plane {
        println!("dashboard: http://{addr}/");
    }
    if let Some(addr) = running.gateway {
        println!("gateway:   http://{addr}/");
    }
    let token = running.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        token.cancel();
    });
    running.wait().await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
