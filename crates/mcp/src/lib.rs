#![warn(missing_docs)]
//! JSON-RPC and MCP message model, SSE codec and protocol-era detection.
//!
//! Pure: no IO, no async. The gateway parses each message once with [`Message::parse`],
//! decides on the parts it needs ([`ToolCall`], [`era::detect`],
//! [`headers::check_mirrored_headers`]) and forwards the original bytes; only `tools/list`
//! results are rewritten ([`tools::filter_tools_list`]).
//!
//! Protocol eras: `Legacy` is 2024-11-05 (HTTP+SSE), `Session` is 2025-03-26 … 2025-11-25
//! (Streamable HTTP with `initialize` and `Mcp-Session-Id`), `Stateless` is 2026-07-28 and
//! later (per-request `_meta`, mirrored `Mcp-Method`/`Mcp-Name` headers, `input_required`
//! results, `subscriptions/listen`).

pub mod elicitation;
pub mod era;
pub mod error;
pub mod headers;
pub mod message;
pub mod meta;
pub mod method;
pub mod mrtr;
mod raw_json;
pub mod sse;
pub mod tools;

pub use era::{Detected, ProtocolEra};
pub use error::Error;
pub use headers::{MirroredHeaders, check_mirrored_headers};
pub use message::{ErrorObject, Message, RequestId, codes, error_response, result_response};
pub use method::{MethodKind, classify};
pub use mrtr::{InputRequired, ResultType, Retry};
pub use sse::{SseDecoder, SseEvent, SseFrame};
pub use tools::{FilteredTools, ToolCall, filter_tools_list};
