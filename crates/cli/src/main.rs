//! `portcullis`: the policy gateway for AI agents' MCP tool calls.

use std::process::ExitCode;

/// Every request allocates and frees many small, short-lived buffers (headers, JSON, audit
/// entries) on the thread that serves it; mimalloc's thread-local free lists make that a few
/// instructions each, where the system allocator spent a fifth of the gateway's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    portcullis::command::main()
}
