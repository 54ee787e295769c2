//! MCP HTTP header names and the stateless-era rule that mirrored headers match the body.
//!
//! In 2026-07-28 every POST carries `MCP-Protocol-Version`, `Mcp-Method` and, for
//! `tools/call`, `prompts/get` and `resources/read`, `Mcp-Name`, so intermediaries can route
//! without reading the body. A server that reads the body must reject any disagreement with
//! HTTP 400 and JSON-RPC `-32020` (`HeaderMismatch`). The gateway decides policy on the body
//! and runs this check so nothing behind it can be steered by a forged header.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;

use crate::era::meta_protocol_version;
use crate::error::Error;
use crate::message::Message;
use crate::method::names as methods;
use crate::raw_json::member_str;

/// Header names, lowercase as `http::HeaderName::from_static` requires (matching is
/// case-insensitive on the wire).
pub mod names {
    /// Protocol version of the request (session era after `initialize`; every stateless request).
    pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
    /// Session-era session id.
    pub const MCP_SESSION_ID: &str = "mcp-session-id";
    /// Stateless era: mirrors the body's `method`.
    pub const MCP_METHOD: &str = "mcp-method";
    /// Stateless era: mirrors `params.name` or `params.uri`.
    pub const MCP_NAME: &str = "mcp-name";
    /// Stateless era: prefix of headers mirroring tool arguments marked `x-mcp-header`.
    pub const MCP_PARAM_PREFIX: &str = "mcp-param-";
    /// Session-era SSE resumption.
    pub const LAST_EVENT_ID: &str = "last-event-id";
}

const SENTINEL_PREFIX: &str = "=?base64?";
const SENTINEL_SUFFIX: &str = "?=";

// Clients are told to use Base64; accept it with or without padding rather than reject a
// header over a detail that does not change the decoded value.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The body member `Mcp-Name` mirrors for a method, if the method has one.
pub fn name_source(method: &str) -> Option<&'static str> {
    match method {
        methods::TOOLS_CALL | methods::PROMPTS_GET => Some("name"),
        methods::RESOURCES_READ => Some("uri"),
        _ => None,
    }
}

fn mismatch(detail: impl Into<String>) -> Error {
    Error::HeaderMismatch(detail.into())
}

/// RFC 9110 field value characters: visible ASCII, space and tab.
fn check_chars(header: &str, value: &str) -> Result<(), Error> {
    if value
        .bytes()
        .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
    {
        Ok(())
    } else {
        Err(mismatch(format!(
            "{header} header contains invalid characters"
        )))
    }
}

/// Decodes a mirrored header value, undoing the `=?base64?…?=` sentinel when present.
pub fn decode_header_value(value: &str) -> Result<Cow<'_, str>, Error> {
    let Some(inner) = value
        .strip_prefix(SENTINEL_PREFIX)
        .and_then(|v| v.strip_suffix(SENTINEL_SUFFIX))
    else {
        return Ok(Cow::Borrowed(value));
    };
    let bytes = BASE64
        .decode(inner)
        .map_err(|e| mismatch(format!("invalid Base64 header value: {e}")))?;
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|_| mismatch("Base64 header value is not UTF-8"))
}

/// Encodes a value for a mirrored header: as-is when it is plain ASCII without edge
/// whitespace, else (or when it looks like the sentinel itself) in the Base64 sentinel.
pub fn encode_header_value(value: &str) -> Cow<'_, str> {
    let unsafe_chars = value.bytes().any(|b| !(0x20..=0x7e).contains(&b));
    let edge_space = value.starts_with(' ') || value.ends_with(' ');
    let looks_encoded = value.starts_with(SENTINEL_PREFIX) && value.ends_with(SENTINEL_SUFFIX);
    if !(unsafe_chars || edge_space || looks_encoded) {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!(
            "{SENTINEL_PREFIX}{}{SENTINEL_SUFFIX}",
            BASE64.encode(value.as_bytes())
        ))
    }
}

/// The mirrored header values of one POST, as received (`None` when absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct MirroredHeaders<'a> {
    /// `MCP-Protocol-Version`.
    pub protocol_version: Option<&'a str>,
    /// `Mcp-Method`.
    pub method: Option<&'a str>,
    /// `Mcp-Name`.
    pub name: Option<&'a str>,
}

/// Checks a stateless-era message's mirrored headers against its body.
///
/// A request's are required. A notification's `Mcp-Method`, when sent, must name its method
/// (some clients send it on every POST, and an upstream may route on it); responses carry
/// no method. Missing, malformed or disagreeing headers are [`Error::HeaderMismatch`] (400,
/// -32020); a request without the required `_meta` version is [`Error::InvalidParams`]
/// (400, -32602). An `Mcp-Name` on a method that has no name is not defined by the spec
/// and is ignored (and not forwarded). Comparisons are exact: header values are
/// case-sensitive.
pub fn check_mirrored_headers(headers: &MirroredHeaders<'_>, msg: &Message) -> Result<(), Error> {
    if let Message::Notification { method, .. } = msg
        && let Some(method_header) = headers.method
    {
        check_chars("Mcp-Method", method_header)?;
        if method_header != method {
            return Err(mismatch(format!(
                "Mcp-Method header value '{method_header}' does not match body value '{method}'"
            )));
        }
    }
    let Message::Request { method, params, .. } = msg else {
        return Ok(());
    };
    let params = params.as_deref();

    let version_header = headers
        .protocol_version
        .ok_or_else(|| mismatch("required header MCP-Protocol-Version is missing"))?;
    check_chars("MCP-Protocol-Version", version_header)?;
    let body_version = params
        .map(meta_protocol_version)
        .transpose()?
        .flatten()
        .ok_or_else(|| {
            Error::InvalidParams("missing _meta io.modelcontextprotocol/protocolVersion".into())
        })?;
    if version_header != body_version {
        return Err(mismatch(format!(
            "MCP-Protocol-Version header value '{version_header}' does not match body value '{body_version}'"
        )));
    }

    let method_header = headers
        .method
        .ok_or_else(|| mismatch("required header Mcp-Method is missing"))?;
    check_chars("Mcp-Method", method_header)?;
    if method_header != method {
        return Err(mismatch(format!(
            "Mcp-Method header value '{method_header}' does not match body value '{method}'"
        )));
    }

    if let Some(source) = name_source(method) {
        let name_header = headers
            .name
            .ok_or_else(|| mismatch(format!("required header Mcp-Name is missing for {method}")))?;
        check_chars("Mcp-Name", name_header)?;
        let decoded = decode_header_value(name_header)?;
        let body_name = params
            .map(|p| member_str(p, source))
            .transpose()
            .map_err(|e| Error::InvalidParams(format!("params.{source}: {e}")))?
            .flatten();
        match body_name {
            Some(body) if body == decoded => {}
            // A resource URI may carry credentials (a signed URL, a user in a database URI),
            // and the message reaches the audit log: URIs are not quoted, names are.
            Some(_) if source == "uri" => {
                return Err(mismatch(
                    "Mcp-Name header does not match body value params.uri",
                ));
            }
            Some(body) => {
                return Err(mismatch(format!(
                    "Mcp-Name header value '{name_header}' does not match body value '{body}'"
                )));
            }
            None => {
                return Err(mismatch(format!(
                    "Mcp-Name header is set but the body has no params.{source}"
                )));
            }
        }
    }
    Ok(())
}

/// Whether a header spells the body's number: integers exactly (a double cannot tell 2^53
/// from 2^53 + 1), other numbers by value, so `42.0` still equals `42`.
fn numbers_equal(header: &str, body: &serde_json::Number) -> bool {
    let integer = body
        .as_i64()
        .map(i128::from)
        .or_else(|| body.as_u64().map(i128::from));
    match (integer, header.parse::<i128>()) {
        (Some(b), Ok(h)) => b == h,
        // A double holds every integer up to 2^53 exactly; past that only the integer
        // spelling can be compared.
        (Some(b), Err(_)) if b.unsigned_abs() > 1 << 53 => false,
        _ => match (header.parse::<f64>(), body.as_f64()) {
            (Ok(h), Some(b)) => h == b,
            _ => false,
        },
    }
}

/// A tool parameter the server asked clients to mirror into `Mcp-Param-{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHeader {
    /// The `x-mcp-header` value: the header is `Mcp-Param-{name}`.
    pub name: String,
    /// The chain of `properties` keys from the schema root to the parameter.
    pub path: Vec<String>,
}

/// The `x-mcp-header` annotations of a tool's `inputSchema`.
///
/// Only annotations reachable from the root through `properties` alone count, as the spec
/// defines; annotations under `items`, `$ref`, `oneOf` and the like make a definition
/// invalid for clients, which drop such tools, so the server side never sees them used.
pub fn param_headers(input_schema: &Value) -> Vec<ParamHeader> {
    fn walk(schema: &Value, path: &mut Vec<String>, out: &mut Vec<ParamHeader>) {
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (key, sub) in props {
            path.push(key.clone());
            if let Some(name) = sub.get(X_MCP_HEADER).and_then(Value::as_str) {
                out.push(ParamHeader {
                    name: name.to_owned(),
                    path: path.clone(),
                });
            }
            walk(sub, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(input_schema, &mut Vec::new(), &mut out);
    out
}

/// The schema keyword that marks a tool parameter for mirroring.
pub const X_MCP_HEADER: &str = "x-mcp-header";

/// Checks a `tools/call`'s `Mcp-Param-*` headers against its arguments.
///
/// `headers` yields every request header as (name, value); names are matched
/// case-insensitively. For each annotated parameter: a value in the arguments needs a
/// matching header (strings exactly, numbers numerically so `42.0` equals `42`, booleans as
/// `true`/`false`), and a header without a value in the arguments disagrees with the body.
/// `null` counts as no value. Headers that no annotation names are left alone: the spec
/// tells intermediaries to forward and ignore them.
pub fn check_param_headers<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    input_schema: &Value,
    arguments: &Value,
) -> Result<(), Error> {
    let annotated = param_headers(input_schema);
    if annotated.is_empty() {
        return Ok(());
    }
    let sent: Vec<(&str, &str)> = headers
        .into_iter()
        .filter_map(|(n, v)| {
            let suffix = n.get(names::MCP_PARAM_PREFIX.len()..)?;
            n[..names::MCP_PARAM_PREFIX.len()]
                .eq_ignore_ascii_case(names::MCP_PARAM_PREFIX)
                .then_some((suffix, v))
        })
        .collect();
    for param in annotated {
        let header = format!("Mcp-Param-{}", param.name);
        let mut matching = sent
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&param.name))
            .map(|(_, v)| *v);
        let value = matching.next();
        if matching.next().is_some() {
            return Err(mismatch(format!("{header} header is repeated")));
        }
        let body = param
            .path
            .iter()
            .try_fold(arguments, |v, key| v.get(key))
            .filter(|v| !v.is_null());
        match (value, body) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(mismatch(format!("required header {header} is missing")));
            }
            (Some(_), None) => {
                return Err(mismatch(format!(
                    "{header} header is set but the arguments have no value for it"
                )));
            }
            (Some(raw), Some(body)) => {
                check_chars(&header, raw)?;
                let decoded = decode_header_value(raw)?;
                let equal = match body {
                    Value::String(s) => *s == decoded,
                    Value::Bool(b) => decoded == if *b { "true" } else { "false" },
                    Value::Number(n) => numbers_equal(decoded.trim(), n),
                    _ => false,
                };
                if !equal {
                    // Neither value is quoted: they are tool arguments, which may be secrets,
                    // and the message reaches the audit log.
                    return Err(mismatch(format!(
                        "{header} header does not match the argument's value"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, extra: &str) -> Message {
        let s = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{{extra}"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
        );
        Message::parse(s.as_bytes()).unwrap()
    }

    fn headers<'a>(method: &'a str, name: Option<&'a str>) -> MirroredHeaders<'a> {
        MirroredHeaders {
            protocol_version: Some("2026-07-28"),
            method: Some(method),
            name,
        }
    }

    #[test]
    fn accepts_matching_headers() {
        let cases = [
            (
                request("tools/call", r#""name":"get_weather","arguments":{},"#),
                headers("tools/call", Some("get_weather")),
            ),
            (
                request("prompts/get", r#""name":"code_review","#),
                headers("prompts/get", Some("code_review")),
            ),
            (
                request(
                    "resources/read",
                    r#""uri":"file:///projects/myapp/config.json","#,
                ),
                headers("resources/read", Some("file:///projects/myapp/config.json")),
            ),
            (request("tools/list", ""), headers("tools/list", None)),
            // Mcp-Name on a method without a name is ignored.
            (
                request("tools/list", ""),
                headers("tools/list", Some("whatever")),
            ),
            (
                request("tools/call", r#""name":"天気","#),
                headers("tools/call", Some("=?base64?5aSp5rCX?=")),
            ),
            (
                request("tools/call", r#""name":"天気","#),
                headers("tools/call", Some("=?base64?5aSp5rCX?=")),
            ),
            (
                request("tools/call", r#""name":"=?base64?literal?=","#),
                headers("tools/call", Some("=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=")),
            ),
            (
                request("tools/call", r#""name":"ab","#),
                headers("tools/call", Some("=?base64?YWI?=")),
            ),
        ];
        for (msg, h) in &cases {
            check_mirrored_headers(h, msg).unwrap_or_else(|e| panic!("{h:?}: {e}"));
        }
    }

    #[test]
    fn rejects_mismatches() {
        let call = request("tools/call", r#""name":"get_weather","#);
        let read = request("resources/read", r#""uri":"file:///a","#);
        let nameless = request("tools/call", "");
        let cases: Vec<(&Message, MirroredHeaders<'_>)> = vec![
            (&call, headers("tools/call", Some("delete_everything"))),
            (&call, headers("tools/call", None)),
            (&call, headers("prompts/get", Some("get_weather"))),
            (&call, headers("Tools/Call", Some("get_weather"))),
            (&call, headers("tools/call", Some("Get_Weather"))),
            (&call, headers("tools/call", Some("=?base64?!!!?="))),
            (&call, headers("tools/call", Some("=?base64?/w==?="))),
            (&call, headers("tools/call", Some("get_weather\u{7f}"))),
            (&call, headers("tools/call", Some("gét_weather"))),
            (
                &call,
                MirroredHeaders {
                    method: None,
                    ..headers("tools/call", Some("get_weather"))
                },
            ),
            (
                &call,
                MirroredHeaders {
                    protocol_version: None,
                    ..headers("tools/call", Some("get_weather"))
                },
            ),
            (
                &call,
                MirroredHeaders {
                    protocol_version: Some("2025-11-25"),
                    ..headers("tools/call", Some("get_weather"))
                },
            ),
            (&read, headers("resources/read", Some("file:///b"))),
            (&nameless, headers("tools/call", Some("get_weather"))),
        ];
        for (msg, h) in cases {
            let err = check_mirrored_headers(&h, msg).expect_err(&format!("{h:?}"));
            assert!(matches!(err, Error::HeaderMismatch(_)), "{h:?}: {err}");
            assert_eq!((err.code(), err.http_status()), (-32020, 400));
        }
    }

    #[test]
    fn reports_the_spec_message() {
        let call = request("tools/call", r#""name":"bar","#);
        let err = check_mirrored_headers(&headers("tools/call", Some("foo")), &call).unwrap_err();
        assert_eq!(
            err.to_string(),
            "header mismatch: Mcp-Name header value 'foo' does not match body value 'bar'"
        );
        // Resource URIs may carry credentials: neither is quoted.
        let read = request(
            "resources/read",
            r#""uri":"https://files.example/a?X-Amz-Signature=body-secret","#,
        );
        let sent = "https://files.example/b?X-Amz-Signature=header-secret";
        let err =
            check_mirrored_headers(&headers("resources/read", Some(sent)), &read).unwrap_err();
        assert_eq!(
            err.to_string(),
            "header mismatch: Mcp-Name header does not match body value params.uri"
        );
    }

    #[test]
    fn missing_meta_version_is_invalid_params() {
        let m = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#)
            .unwrap();
        let err = check_mirrored_headers(&headers("tools/list", None), &m).unwrap_err();
        assert!(matches!(err, Error::InvalidParams(_)));
        let bad_name = request("tools/call", r#""name":5,"#);
        let err = check_mirrored_headers(&headers("tools/call", Some("5")), &bad_name).unwrap_err();
        assert!(matches!(err, Error::InvalidParams(_)));
    }

    #[test]
    fn only_requests_must_mirror_and_a_notification_method_sent_must_match() {
        let note = Message::parse(
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
        )
        .unwrap();
        check_mirrored_headers(&MirroredHeaders::default(), &note).unwrap();
        let said = |method| MirroredHeaders {
            method: Some(method),
            ..MirroredHeaders::default()
        };
        check_mirrored_headers(&said("notifications/cancelled"), &note).unwrap();
        let err = check_mirrored_headers(&said("tools/call"), &note).unwrap_err();
        assert!(matches!(err, Error::HeaderMismatch(_)));
        let resp = Message::parse(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
        check_mirrored_headers(&MirroredHeaders::default(), &resp).unwrap();
    }

    #[test]
    fn encodes_header_values_like_the_spec() {
        // Examples from the 2026-07-28 Streamable HTTP "Value Encoding" table.
        let cases = [
            ("us-west1", "us-west1"),
            ("Hello, 世界", "=?base64?SGVsbG8sIOS4lueVjA==?="),
            (" padded ", "=?base64?IHBhZGRlZCA=?="),
            ("line1\nline2", "=?base64?bGluZTEKbGluZTI=?="),
            ("=?base64?literal?=", "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="),
        ];
        for (value, encoded) in cases {
            assert_eq!(encode_header_value(value), encoded, "{value:?}");
            assert_eq!(decode_header_value(encoded).unwrap(), value, "{encoded}");
        }
        assert!(decode_header_value("=?base64?not base64?=").is_err());
        assert_eq!(decode_header_value("=?base64?").unwrap(), "=?base64?");
        assert_eq!(
            decode_header_value("=?BASE64?YWI=?=").unwrap(),
            "=?BASE64?YWI=?="
        );
    }

    #[test]
    fn names_sources() {
        assert_eq!(name_source("tools/call"), Some("name"));
        assert_eq!(name_source("prompts/get"), Some("name"));
        assert_eq!(name_source("resources/read"), Some("uri"));
        assert_eq!(name_source("tools/list"), None);
    }

    /// The `execute_sql` example of the 2026-07-28 Streamable HTTP spec, plus a nested,
    /// an integer and a boolean parameter.
    fn sql_schema() -> Value {
        serde_json::json!({
            "type": "object",
            "properties": {
                "region": { "type": "string", "x-mcp-header": "Region" },
                "query": { "type": "string" },
                "opts": {
                    "type": "object",
                    "properties": {
                        "shard": { "type": "integer", "x-mcp-header": "Shard" },
                        "dry": { "type": "boolean", "x-mcp-header": "Dry" }
                    }
                },
                "list": { "type": "array", "items": { "type": "string", "x-mcp-header": "Ignored" } }
            },
            "required": ["region", "query"]
        })
    }

    #[test]
    fn finds_param_headers() {
        let mut found = param_headers(&sql_schema());
        found.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            found,
            vec![
                ParamHeader {
                    name: "Dry".into(),
                    path: vec!["opts".into(), "dry".into()]
                },
                ParamHeader {
                    name: "Region".into(),
                    path: vec!["region".into()]
                },
                ParamHeader {
                    name: "Shard".into(),
                    path: vec!["opts".into(), "shard".into()]
                },
            ]
        );
        assert!(param_headers(&serde_json::json!({"type": "object"})).is_empty());
    }

    #[test]
    fn checks_param_headers() {
        use serde_json::json;
        let schema = sql_schema();
        let args = json!({"region": "us-west1", "query": "SELECT * FROM users", "opts": {"shard": 42, "dry": true}});
        let ok: &[&[(&str, &str)]] = &[
            &[
                ("mcp-param-region", "us-west1"),
                ("Mcp-Param-Shard", "42"),
                ("MCP-PARAM-DRY", "true"),
            ],
            &[
                ("mcp-param-region", "=?base64?dXMtd2VzdDE=?="),
                ("mcp-param-shard", "42.0"),
                ("mcp-param-dry", "true"),
                ("mcp-param-unknown", "x"),
            ],
        ];
        for headers in ok {
            check_param_headers(headers.iter().copied(), &schema, &args)
                .unwrap_or_else(|e| panic!("{headers:?}: {e}"));
        }
        let bad: &[&[(&str, &str)]] = &[
            &[
                ("mcp-param-region", "eu-west1"),
                ("mcp-param-shard", "42"),
                ("mcp-param-dry", "true"),
            ],
            &[("mcp-param-shard", "42"), ("mcp-param-dry", "true")],
            &[
                ("mcp-param-region", "us-west1"),
                ("mcp-param-shard", "43"),
                ("mcp-param-dry", "true"),
            ],
            &[
                ("mcp-param-region", "us-west1"),
                ("mcp-param-shard", "42"),
                ("mcp-param-dry", "True"),
            ],
            &[
                ("mcp-param-region", "us-west1"),
                ("mcp-param-region", "us-west1"),
                ("mcp-param-shard", "42"),
                ("mcp-param-dry", "true"),
            ],
        ];
        for headers in bad {
            let err = check_param_headers(headers.iter().copied(), &schema, &args).unwrap_err();
            assert!(matches!(err, Error::HeaderMismatch(_)), "{headers:?}");
        }
        // Absent or null values need no header, and must not have one.
        let sparse = json!({"region": "us-west1", "query": "q", "opts": {"shard": null}});
        check_param_headers([("mcp-param-region", "us-west1")], &schema, &sparse).unwrap();
        assert!(
            check_param_headers(
                [("mcp-param-region", "us-west1"), ("mcp-param-shard", "1")],
                &schema,
                &sparse
            )
            .is_err()
        );
        // Integers compare exactly, past what a double holds.
        let big =
            json!({"region": "r", "query": "q", "opts": {"shard": 9_007_199_254_740_993_u64}});
        let with = |shard| [("mcp-param-region", "r"), ("mcp-param-shard", shard)];
        check_param_headers(with("9007199254740993"), &schema, &big).unwrap();
        for wrong in [
            "9007199254740992",
            "9.007199254740993e15",
            "9007199254740993.0",
        ] {
            assert!(
                check_param_headers(with(wrong), &schema, &big).is_err(),
                "{wrong}"
            );
        }
        // A schema without annotations ignores every header.
        check_param_headers([("mcp-param-x", "1")], &json!({"type": "object"}), &args).unwrap();
    }

    /// Property tests: no input panics, every value survives the header encoding, and headers
    /// that pass always mirror what a lenient upstream reads in the body (`serde_json::Value`,
    /// a repeated member: the last one wins), so nothing can route on one tool and run another.
    mod props {
        use super::*;
        use proptest::prelude::*;
        use serde_json::json;

        /// Header values: the body's own, case and encoding variants, sentinels, junk.
        fn header_value(body: &'static str) -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                Just(Some(body.to_owned())),
                Just(Some(body.to_uppercase())),
                Just(Some(encode_header_value(body).into_owned())),
                Just(Some(format!("=?base64?{}?=", BASE64.encode(body)))),
                Just(Some(format!(" {body}"))),
                Just(Some(format!("{body}\u{0}"))),
                Just(Some("=?base64?!!?=".to_owned())),
                Just(None),
                "[ -~\t\u{80}-\u{10ffff}]{0,12}".prop_map(Some),
            ]
        }

        /// A stateless-era request whose params may repeat or vary the names headers mirror.
        fn body() -> impl Strategy<Value = String> {
            let method = prop::sample::select(vec![
                "tools/call",
                "prompts/get",
                "resources/read",
                "tools/list",
            ]);
            let member = prop::sample::select(vec![
                r#""name":"get_weather""#,
                r#""name":"delete_all""#,
                r#""NAME":"delete_all""#,
                r#""n\u0061me":"get_weather""#,
                r#""uri":"file:///a""#,
                r#""URI":"file:///b""#,
                r#""name":7"#,
                r#""arguments":{"region":"us-west1"}"#,
                r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#,
                r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2025-11-25"}"#,
            ]);
            (method, prop::collection::vec(member, 0..5)).prop_map(|(method, members)| {
                format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{{}}}}}"#,
                    members.join(",")
                )
            })
        }

        proptest! {
            #[test]
            fn encoding_round_trips(value in "\\PC{0,24}|[\u{0}-\u{7f}]{0,24}") {
                let encoded = encode_header_value(&value);
                prop_assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{encoded:?}");
                prop_assert_eq!(decode_header_value(&encoded).unwrap(), value.as_str());
            }

            #[test]
            fn decoding_never_panics(value in "\\PC{0,32}", inner in "[A-Za-z0-9+/=_-]{0,16}") {
                let _ = decode_header_value(&value);
                let _ = decode_header_value(&format!("=?base64?{inner}?="));
            }

            /// Headers that pass name the method, version and tool or resource that the body
            /// names to a lenient reader.
            #[test]
            fn accepted_headers_mirror_the_body(
                body in body(),
                version in header_value("2026-07-28"),
                method in header_value("tools/call"),
                name in header_value("get_weather"),
                uri in header_value("file:///a"),
                pick_uri in any::<bool>(),
            ) {
                let Ok(message) = Message::parse(body.as_bytes()) else { return Ok(()) };
                let name = if pick_uri { uri } else { name };
                let headers = MirroredHeaders {
                    protocol_version: version.as_deref(),
                    method: method.as_deref(),
                    name: name.as_deref(),
                };
                if check_mirrored_headers(&headers, &message).is_err() {
                    return Ok(());
                }
                let lenient: Value = serde_json::from_str(&body).unwrap();
                let params = &lenient["params"];
                prop_assert_eq!(lenient["method"].as_str(), method.as_deref(), "{}", body);
                prop_assert_eq!(
                    params["_meta"]["io.modelcontextprotocol/protocolVersion"].as_str(),
                    version.as_deref(),
                    "{}", body
                );
                if let Some(source) = name_source(lenient["method"].as_str().unwrap()) {
                    let decoded = decode_header_value(name.as_deref().unwrap()).unwrap();
                    prop_assert_eq!(params[source].as_str(), Some(decoded.as_ref()), "{}", body);
                    // A case-insensitive reader finds no other member it could take instead.
                    let variants = params
                        .as_object()
                        .unwrap()
                        .keys()
                        .filter(|k| k.eq_ignore_ascii_case(source))
                        .count();
                    prop_assert_eq!(variants, 1, "{}", body);
                }
            }

            /// `Mcp-Param-*` headers that pass carry the argument's value.
            #[test]
            fn accepted_param_headers_mirror_the_arguments(
                region in prop_oneof![
                    Just(json!("us-west1")),
                    Just(json!(42)),
                    Just(json!(true)),
                    Just(json!(null)),
                    Just(json!(["us-west1"])),
                ],
                sent in prop::collection::vec(
                    (
                        prop::sample::select(vec!["mcp-param-region", "Mcp-Param-Region", "mcp-param-other", "mcp-param-"]),
                        prop::sample::select(vec!["us-west1", "US-WEST1", "=?base64?dXMtd2VzdDE=?=", "42", "42.0", "4.2e1", "true", "True", " 42", "=?base64?!?="]),
                    ),
                    0..3,
                ),
            ) {
                let schema = json!({"type": "object", "properties": {
                    "region": {"type": "string", "x-mcp-header": "Region"}}});
                let arguments = json!({ "region": region });
                if check_param_headers(sent.iter().copied(), &schema, &arguments).is_err() {
                    return Ok(());
                }
                let mirrored: Vec<&str> = sent
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("mcp-param-region"))
                    .map(|(_, v)| *v)
                    .collect();
                match &arguments["region"] {
                    Value::Null => prop_assert!(mirrored.is_empty()),
                    Value::String(s) => {
                        prop_assert_eq!(mirrored.len(), 1);
                        prop_assert_eq!(&decode_header_value(mirrored[0]).unwrap(), s);
                    }
                    Value::Number(n) => {
                        prop_assert_eq!(mirrored.len(), 1);
                        let header: f64 = decode_header_value(mirrored[0]).unwrap().trim().parse().unwrap();
                        prop_assert_eq!(Some(header), n.as_f64());
                    }
                    Value::Bool(b) => prop_assert_eq!(mirrored, vec![if *b { "true" } else { "false" }]),
                    other => prop_assert!(false, "accepted a header for {}", other),
                }
            }
        }
    }
}
