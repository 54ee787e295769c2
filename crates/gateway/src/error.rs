//! The gateway's one error type, and the one place it becomes an HTTP response.
//!
//! Clients get a JSON-RPC error body with a clear message; the cause stays in the logs.
//! Policy outcomes (deny, hidden, rate limited, approval) are not errors: they are ordinary
//! JSON-RPC answers built by the enforcement code.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_mcp::{RequestId, error_response};

/// JSON-RPC code of a refused grant (the range -32000..-32099 is for implementations).
pub const UNAUTHORIZED_CODE: i64 = -32001;
/// JSON-RPC code of an unknown or foreign session.
pub const SESSION_NOT_FOUND_CODE: i64 = -32002;
/// JSON-RPC code of an upstream failure or of the gateway's own.
pub const INTERNAL_CODE: i64 = -32603;

/// Everything that stops the gateway from proxying a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No grant token in the path or the `Authorization` header.
    #[error("a grant token is required")]
    MissingToken,
    /// The token is unknown, revoked, expired, or belongs to another server. One message for
    /// all, so a caller cannot probe which; the log line says which.
    #[error("the grant token is invalid, revoked or expired")]
    InvalidToken,
    /// A verified identity that no policy binding of the server covers. Carries the audit
    /// event of the refusal until it is written.
    #[error("no policy binding of this server covers your identity")]
    NoBinding(Option<Box<portcullis_core::audit::AuditEvent>>),
    /// The message does not follow JSON-RPC or MCP.
    #[error(transparent)]
    Mcp(#[from] portcullis_mcp::Error),
    /// The body is larger than the configured limit.
    #[error("request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// The body is not `application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The session id does not open under this grant (unknown, tampered, or another grant's).
    #[error("session not found")]
    SessionNotFound,
    /// The session id was issued under this grant longer ago than `PORTCULLIS_SESSION_MAX_AGE`.
    #[error(
        "session expired: it began longer ago than this gateway's maximum session age; start a new session"
    )]
    SessionExpired,
    /// A `Last-Event-ID` that was not sealed by this gateway under this grant (event ids are
    /// sealed like session ids, so a stream resumes only under the grant that received it).
    #[error("Last-Event-ID was not issued for this grant's streams")]
    UnknownEventId,
    /// The method is not available on this endpoint.
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    /// The upstream could not be reached or did not answer in time.
    #[error("the upstream MCP server did not answer: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// Postgres could not be reached or answered with an error.
    #[error("the gateway cannot reach its database")]
    Database(#[from] sqlx::Error),
}

impl From<crate::sessions::Refused> for GatewayError {
    fn from(refused: crate::sessions::Refused) -> Self {
        match refused {
            crate::sessions::Refused::NotIssued => Self::SessionNotFound,
            crate::sessions::Refused::Expired => Self::SessionExpired,
        }
    }
}

/// A [`GatewayError`] with the id of the request it answers, when one was read.
#[derive(Debug)]
pub struct Rejection {
    /// What went wrong.
    pub error: GatewayError,
    /// The JSON-RPC id to echo.
    pub id: Option<RequestId>,
}

impl<E: Into<GatewayError>> From<E> for Rejection {
    fn from(error: E) -> Self {
        Self {
            error: error.into(),
            id: None,
        }
    }
}

impl GatewayError {
    /// Attaches the request id the error answers.
    pub fn at(self, id: Option<&RequestId>) -> Rejection {
        Rejection {
            error: self,
            id: id.cloned(),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::NoBinding(_) => StatusCode::FORBIDDEN,
            Self::Mcp(e) => {
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::SessionNotFound | Self::SessionExpired => StatusCode::NOT_FOUND,
            Self::UnknownEventId => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON-RPC error code of this error.
    pub fn code(&self) -> i64 {
        match self {
            Self::MissingToken | Self::InvalidToken | Self::NoBinding(_) => UNAUTHORIZED_CODE,
            Self::Mcp(e) => e.code(),
            Self::PayloadTooLarge(_) | Self::UnsupportedMediaType | Self::UnknownEventId => {
                portcullis_mcp::codes::INVALID_REQUEST
            }
            Self::SessionNotFound | Self::SessionExpired => SESSION_NOT_FOUND_CODE,
            Self::MethodNotAllowed(_) => portcullis_mcp::codes::METHOD_NOT_FOUND,
            Self::Upstream(_) | Self::Database(_) => INTERNAL_CODE,
        }
    }
}

/// Failures that come in floods (an upstream or the database down, a burst of unknown tokens
/// waiting for the database) warn at most once a second each; the line says how many it stands
/// for. The metrics count every one.
static UPSTREAM_FAILURES: Throttle = Throttle::new();
static DATABASE_FAILURES: Throttle = Throttle::new();

/// Time since the process's first throttled line: a clock that never steps back (a wall clock
/// set back would silence the lines until it caught up).
fn since_start() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// At most one log line a second.
struct Throttle {
    /// When the next line may be written, in milliseconds of [`since_start`].
    next_ms: AtomicU64,
    /// Lines not written since the last one.
    skipped: AtomicU64,
}

impl Throttle {
    const INTERVAL: Duration = Duration::from_secs(1);

    const fn new() -> Self {
        Self {
            next_ms: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// `Some(lines skipped since the last)` when a line may be written at `now` (since start).
    fn admit(&self, now: Duration) -> Option<u64> {
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(Self::INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if now_ms < next
            || self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        Rejection {
            error: self,
            id: None,
        }
        .into_response()
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let Rejection { error, id } = self;
        let status = error.status();
        let flood = match &error {
            GatewayError::Upstream(_) => Some(&UPSTREAM_FAILURES),
            GatewayError::Database(_) => Some(&DATABASE_FAILURES),
            _ => None,
        };
        match flood.map(|throttle| throttle.admit(since_start())) {
            Some(Some(skipped)) => {
                tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), skipped, "request failed");
            }
            Some(None) => {}
            None => tracing::debug!(error = %error, "request refused"),
        }
        let body = match &error {
            GatewayError::Mcp(e) => e.to_response(id.as_ref()),
            other => error_response(id.as_ref(), other.code(), &other.to_string(), None),
        };
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        match error {
            GatewayError::MissingToken => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="portcullis""#),
                );
            }
            GatewayError::InvalidToken => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="portcullis", error="invalid_token""#),
                );
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_failures_writes_a_line_a_second_counting_the_rest() {
        let throttle = Throttle::new();
        let at = Duration::from_millis;
        assert_eq!(throttle.admit(at(0)), Some(0));
        for ms in 1..1000 {
            assert_eq!(throttle.admit(at(ms)), None);
        }
        assert_eq!(throttle.admit(at(1000)), Some(999));
        assert_eq!(throttle.admit(at(1500)), None);
        assert_eq!(throttle.admit(at(5000)), Some(1));
    }
}
