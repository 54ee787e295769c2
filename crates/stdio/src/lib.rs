#![warn(missing_docs)]
//! Stdio MCP transports, in both directions.
//!
//! - [`bridge`]: runs a stdio MCP server as a supervised child and serves it over Streamable
//!   HTTP, so it can be registered as an upstream of the gateway.
//! - [`connect`]: a stdio MCP server that forwards every message to a grant URL, for clients
//!   that can only launch stdio servers.
//!
//! A stdio server speaks newline-delimited JSON-RPC on its stdin and stdout and logs on its
//! stderr. Children run under a small guard process ([`guard`]) that takes their whole process
//! group down with it, so no child outlives the bridge, even one killed with SIGKILL.

pub mod bridge;
mod child;
pub mod connect;
pub mod guard;
mod lines;
mod routes;

pub use bridge::{BridgeSettings, Running};
pub use child::ChildCommand;
