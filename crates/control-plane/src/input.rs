//! Parsing what callers send: JSON bodies, forms and ids, with errors in the crate's shape.

use std::str::FromStr;

use axum::extract::{FromRequest, Request};
use portcullis_core::egress::Egress;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A JSON body; a malformed one answers 400 with the crate's error shape, and one that names
/// a member twice in an object answers 422 with its pointer (a JSON reader keeps one copy, so a
/// repeated key in a policy would drop a rule without a word).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self> {
        // Read as raw JSON text first (axum checks the content type and the syntax), so a
        // repeated name can be found before a reader keeps one copy.
        let rejected = |rejection: axum::extract::rejection::JsonRejection| {
            Error::BadRequest(rejection.body_text())
        };
        let axum::Json(raw) =
            axum::Json::<Box<serde_json::value::RawValue>>::from_request(req, state)
                .await
                .map_err(rejected)?;
        portcullis_policy::json_text::unique_keys(raw.get())
            .map_err(|e| Error::field(e.pointer, e.message))?;
        if raw.get().contains("\\u0000") {
            let value: serde_json::Value =
                serde_json::from_str(raw.get()).map_err(|e| Error::BadRequest(e.to_string()))?;
            if let Some(pointer) = nul_at(&value, String::new()) {
                return Err(Error::field(pointer, NUL));
            }
        }
        let axum::Json(value) =
            axum::Json::<T>::from_bytes(raw.get().as_bytes()).map_err(rejected)?;
        Ok(Self(value))
    }
}

/// A form body (dashboard); a malformed one answers 400.
pub struct FormBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for FormBody<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(value)) => Ok(Self(value)),
            Err(rejection) => Err(Error::BadRequest(rejection.body_text())),
        }
    }
}

/// Why a value with U+0000 is refused: Postgres stores neither `text` nor `jsonb` with one, so
/// no field can hold it (and a reader of C strings would cut the text there).
const NUL: &str = "must not contain the character U+0000";

/// The JSON pointer of the first member name or string in `value` that holds U+0000.
fn nul_at(value: &serde_json::Value, at: String) -> Option<String> {
    let escape = |key: &str| key.replace('~', "~0").replace('/', "~1");
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(at),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, format!("{at}/{i}"))),
        serde_json::Value::Object(members) => members.iter().find_map(|(k, v)| {
            let here = format!("{at}/{}", escape(k));
            if k.contains('\0') {
                Some(here)
            } else {
                nul_at(v, here)
            }
        }),
        _ => None,
    }
}

/// Query parameters; malformed ones answer 400, and one holding U+0000 answers 422.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self> {
        let query = parts.uri.query().unwrap_or_default();
        if query.contains("%00")
            && let Some((name, _)) = url::form_urlencoded::parse(query.as_bytes())
                .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            return Err(Error::field(format!("/{}", name.replace('\0', "")), NUL));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(Error::BadRequest(rejection.body_text())),
        }
    }
}

/// An id from a path; one that does not parse names nothing, so it is a 404 like any unknown id.
pub fn id<T: FromStr>(text: &str) -> Result<T> {
    text.parse().map_err(|_| Error::NotFound)
}

/// A required, trimmed text field of bounded length.
pub fn text(pointer: &str, value: &str, max: usize) -> Result<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Error::field(pointer, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(Error::field(
            pointer,
            format!("use at most {max} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// An email address: one `@` with text on both sides, no spaces, at most 320 characters.
pub fn email(pointer: &str, value: &str) -> Result<String> {
    let value = value.trim();
    let ok = value.len() <= 320
        && !value.chars().any(char::is_whitespace)
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::field(pointer, "is not an email address"))
    }
}

/// An absolute http(s) URL.
pub fn http_url(pointer: &str, value: &str) -> Result<url::Url> {
    let url = url::Url::parse(value.trim())
        .map_err(|e| Error::field(pointer, format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Error::field(pointer, "must be an http:// or https:// URL"));
    }
    Ok(url)
}

/// An absolute http(s) URL Portcullis may connect to on a tenant's behalf: its host is a name
/// (checked when resolved) or an address `egress` permits.
pub fn outbound_url(pointer: &str, value: &str, egress: &Egress) -> Result<url::Url> {
    let url = http_url(pointer, value)?;
    egress
        .check_host(url.host_str().unwrap_or_default())
        .map_err(|e| Error::field(pointer, e.to_string()))?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nul_a_database_cannot_store() {
        let value = serde_json::json!({ "a": [1, "x", { "b/c": "y\u{0}" }], "d": "e" });
        assert_eq!(nul_at(&value, String::new()).as_deref(), Some("/a/2/b~1c"));
        let key = serde_json::json!({ "ok": { "k\u{0}": 1 } });
        assert_eq!(nul_at(&key, String::new()).as_deref(), Some("/ok/k\u{0}"));
        assert_eq!(
            nul_at(&serde_json::json!({ "a": "\\u0000" }), String::new()),
            None
        );
    }

    #[test]
    fn emails_and_urls_parse_strictly() {
        assert!(email("/e", "a@b.co").is_ok());
        assert!(email("/e", "a b@c.d").is_err());
        assert!(email("/e", "@b.c").is_err());
        assert!(http_url("/u", "http://127.0.0.1:9/mcp").is_ok());
        assert!(http_url("/u", "ftp://x/y").is_err());
        assert!(id::<uuid::Uuid>("nope").is_err());
        let public_only = Egress::default();
        assert!(outbound_url("/u", "https://mcp.example.com/mcp", &public_only).is_ok());
        assert!(outbound_url("/u", "http://169.254.169.254/latest", &public_only).is_err());
        assert!(outbound_url("/u", "http://[::1]:9/mcp", &public_only).is_err());
        let local: Egress = "127.0.0.0/8".parse().unwrap();
        assert!(outbound_url("/u", "http://127.0.0.1:9/mcp", &local).is_ok());
    }
}
