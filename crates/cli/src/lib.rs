//! The `portcullis` command as a library, so tests start the very services the binary runs.

pub mod app;
pub mod command;
pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod policy_cmd;
pub mod rebinding;
pub mod stdio_cmd;
pub mod stored_policies;
pub mod telemetry;

pub use app::{Connections, Role, Running, migrate, start, start_with};
pub use config::Config;
