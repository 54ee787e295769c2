//! The crate's single error type, with its JSON-RPC code and HTTP status.

use bytes::Bytes;
use serde_json::json;

use crate::message::{self, RequestId, codes};

/// Everything that can go wrong while reading MCP traffic.
///
/// Each variant knows the JSON-RPC error code and the HTTP status that answer it, so the
/// gateway maps errors to the wire in one place ([`Error::code`], [`Error::http_status`],
/// [`Error::to_response`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The body was a JSON array: MCP removed JSON-RPC batching in 2025-06-18.
    #[error("JSON-RPC batches are not supported")]
    Batch,
    /// The body was not valid JSON.
    #[error("parse error: {0}")]
    Parse(String),
    /// Valid JSON, but not a valid JSON-RPC 2.0 message.
    #[error("invalid request: {detail}")]
    InvalidRequest {
        /// The id, when it could be read, so the error can still be correlated.
        id: Option<RequestId>,
        /// What was wrong.
        detail: String,
    },
    /// The message is well formed but its MCP params are not (e.g. `tools/call` without `name`).
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// Stateless era: a mirrored header is missing, malformed or disagrees with the body.
    #[error("header mismatch: {0}")]
    HeaderMismatch(String),
    /// The protocol version is not a version string this crate can place in an era.
    #[error("unsupported protocol version {requested:?}")]
    UnsupportedProtocolVersion {
        /// The version the peer asked for.
        requested: String,
        /// The versions it may ask for instead.
        supported: &'static [&'static str],
    },
    /// An upstream result did not have the shape MCP prescribes, so it cannot be rewritten safely.
    #[error("unexpected upstream result: {0}")]
    UnexpectedShape(String),
    /// An SSE event (or an unterminated line) grew past the decoder's limit.
    #[error("SSE event exceeds {limit} bytes")]
    SseEventTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
}

impl Error {
    /// The JSON-RPC error code that reports this error to a client.
    pub fn code(&self) -> i64 {
        match self {
            // A batch is well-formed JSON-RPC that MCP refuses, hence "invalid request".
            Error::Batch | Error::InvalidRequest { .. } => codes::INVALID_REQUEST,
            Error::Parse(_) => codes::PARSE_ERROR,
            Error::InvalidParams(_) => codes::INVALID_PARAMS,
            Error::HeaderMismatch(_) => codes::HEADER_MISMATCH,
            Error::UnsupportedProtocolVersion { .. } => codes::UNSUPPORTED_PROTOCOL_VERSION,
            Error::UnexpectedShape(_) | Error::SseEventTooLarge { .. } => codes::INTERNAL_ERROR,
        }
    }

    /// The HTTP status the gateway answers with.
    ///
    /// Client mistakes are 400 (the stateless spec requires 400 for header mismatches,
    /// missing `_meta` fields and unsupported versions); upstream misbehaviour is 502.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::UnexpectedShape(_) | Error::SseEventTooLarge { .. } => 502,
            _ => 400,
        }
    }

    /// The id to echo in the error response, when one is known.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            Error::InvalidRequest { id, .. } => id.as_ref(),
            _ => None,
        }
    }

    /// A complete JSON-RPC error response for this error.
    ///
    /// `id` is used when the caller parsed one (e.g. for a header mismatch on a valid
    /// request); otherwise the id recovered while parsing, if any, else `null`.
    pub fn to_response(&self, id: Option<&RequestId>) -> Bytes {
        let id = id.or(self.id());
        let data = match self {
            Error::UnsupportedProtocolVersion {
                requested,
                supported,
            } => Some(json!({
                "supported": supported,
                "requested": requested,
            })),
            _ => None,
        };
        message::error_response(id, self.code(), &self.to_string(), data.as_ref())
    }
}
