//! Keeping secrets out of logs: the grant token travels in the path of `/g/{token}/mcp`.

use std::borrow::Cow;

/// The path with every segment that may hold a grant token replaced by `[redacted]`: the one
/// after a `g` segment (`/g/{token}/mcp`), and any that contains the tokens' prefix `pcg_`
/// (plain or percent-encoded, in any case). A client that misplaces its token, say under a base
/// URL that doubles a slash (`//g/pcg_…/mcp`, a 404), must not get it written to the log.
pub fn path(path: &str) -> Cow<'_, str> {
    let mut previous = None;
    let secret = |previous: Option<&str>, segment: &str| {
        previous.is_some_and(|p: &str| p.eq_ignore_ascii_case("g")) || holds_prefix(segment)
    };
    if !path.split('/').any(|segment| {
        let hit = secret(previous, segment);
        previous = Some(segment);
        hit
    }) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut previous = None;
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if secret(previous, segment) {
            "[redacted]"
        } else {
            segment
        });
        previous = Some(segment);
    }
    Cow::Owned(out)
}

/// Whether `segment` contains `pcg_` or `pcg%5F`, ignoring ASCII case.
fn holds_prefix(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let at = |i: usize, pattern: &[u8]| {
        bytes
            .get(i..i + pattern.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(pattern))
    };
    (0..bytes.len()).any(|i| at(i, b"pcg_") || at(i, b"pcg%5f"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_grant_tokens_wherever_they_are_in_the_path() {
        let cases = [
            ("/g/pcg_secret/mcp", "/g/[redacted]/mcp"),
            ("/g/pcg_secret", "/g/[redacted]"),
            ("/g/anything/mcp", "/g/[redacted]/mcp"),
            ("//g/pcg_secret/mcp", "//g/[redacted]/mcp"),
            ("/g//pcg_secret/mcp", "/g/[redacted]/[redacted]/mcp"),
            ("/G/pcg_secret/mcp", "/G/[redacted]/mcp"),
            ("/mcp/pcg_secret", "/mcp/[redacted]"),
            ("/api/PCG%5Fsecret/x", "/api/[redacted]/x"),
            ("/x/Bearer%20pcg_secret", "/x/[redacted]"),
            ("/mcp/123", "/mcp/123"),
            ("/healthz", "/healthz"),
            ("/", "/"),
            ("", ""),
            ("/gateway/pcg", "/gateway/pcg"),
        ];
        for (path, redacted) in cases {
            assert_eq!(super::path(path), redacted, "{path}");
        }
        assert!(matches!(
            super::path("/mcp/123"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
