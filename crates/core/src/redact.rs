//! Keeping secrets out of logs: the grant token travels in the path of `/g/{token}/mcp`.

use std::borrow::Cow;

/// The path with the grant token of a per-grant URL replaced by `[redacted]`.
pub fn path(path: &str) -> Cow<'_, str> {
    match path.strip_prefix("/g/") {
        Some(rest) => {
            let tail = rest.find('/').map_or("", |i| &rest[i..]);
            Cow::Owned(format!("/g/[redacted]{tail}"))
        }
        None => Cow::Borrowed(path),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_grant_paths_only() {
        assert_eq!(super::path("/g/pcg_secret/mcp"), "/g/[redacted]/mcp");
        assert_eq!(super::path("/g/pcg_secret"), "/g/[redacted]");
        assert_eq!(super::path("/mcp/123"), "/mcp/123");
        assert_eq!(super::path("/healthz"), "/healthz");
    }
}
