//! The crate's one error type, and the one place it becomes an HTTP response.
//!
//! Users see a clear message; the cause of an internal error goes to the log only. The API
//! answers `{"error": {"code", "message"}}` (or `{"errors": [{pointer, message}]}` for a 422);
//! dashboard pages get the same status with an HTML page, rendered by
//! [`crate::dashboard::html_errors`] from the [`ErrorPage`] this attaches to the response.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem with one field of a request, located by a JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON pointer of the field (`/name`, `/document/tools/x/limits/0/max`).
    pub pointer: String,
    /// What is wrong, in plain words.
    pub message: String,
}

impl FieldError {
    /// An error at `pointer`.
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist, or belongs to another tenant (indistinguishable on purpose).
    #[error("not found")]
    NotFound,
    /// No route answers this path.
    #[error("no such route")]
    NoRoute,
    /// No valid session or API token.
    #[error("sign in first")]
    Unauthenticated,
    /// Signed in, but the role does not allow this.
    #[error("your role ({role}) cannot do this; it needs {needed}")]
    Forbidden {
        /// The caller's role.
        role: &'static str,
        /// The least role that may.
        needed: &'static str,
    },
    /// A form or cookie-authenticated call came without the session's CSRF token.
    #[error("the form expired or did not come from this site; reload the page and try again")]
    Csrf,
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but some fields are not acceptable.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// The request conflicts with the current state (a duplicate name, a decided approval).
    #[error("{0}")]
    Conflict(String),
    /// Too many attempts; retry after the given seconds.
    #[error("too many attempts; try again in {retry_after} seconds")]
    TooManyRequests {
        /// Seconds until the next attempt may succeed.
        retry_after: u64,
    },
    /// The upstream MCP server could not be reached or answered nonsense.
    #[error("upstream: {0}")]
    Upstream(String),
    /// Anything else: a bug or an unavailable dependency. The cause is logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attached to every error response so the dashboard can render it as a page.
#[derive(Debug, Clone)]
pub struct ErrorPage {
    /// The HTTP status.
    pub status: StatusCode,
    /// The user-facing message.
    pub message: String,
    /// Field problems of a 422.
    pub errors: Vec<FieldError>,
}

impl Error {
    /// An internal error with its cause, for the log.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self::Internal(cause.into())
    }

    /// A single-field validation error.
    pub fn field(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(pointer, message)])
    }

    /// The status and the machine-readable code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Error::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            Error::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Error::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            Error::Csrf => (StatusCode::FORBIDDEN, "csrf"),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Error::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Error::NotFound,
            // Text with U+0000 (22021), or JSON with `\u0000` (22P05), which Postgres cannot
            // store: the caller's input, wherever it came from (the extractors refuse it first
            // where they can name the field).
            sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("22021" | "22P05")) => {
                Error::BadRequest("text must not contain the character U+0000".into())
            }
            other => Error::Internal(other.into()),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Internal(e.into())
    }
}

impl From<askama::Error> for Error {
    fn from(e: askama::Error) -> Self {
        Error::Internal(e.into())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        if let Error::Internal(cause) = &self {
            tracing::error!(error = ?cause, "request failed");
        }
        let message = self.to_string();
        let errors = match &self {
            Error::Validation(errors) => errors.clone(),
            _ => Vec::new(),
        };
        let mut response = match &self {
            Error::Validation(errors) => {
                (status, Json(serde_json::json!({ "errors": errors }))).into_response()
            }
            _ => (
                status,
                Json(serde_json::json!({ "error": { "code": code, "message": message } })),
            )
                .into_response(),
        };
        if let Error::TooManyRequests { retry_after } = &self
            && let Ok(value) = HeaderValue::from_str(&retry_after.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response.extensions_mut().insert(ErrorPage {
            status,
            message,
            errors,
        });
        response
    }
}
