//! Protocol versions and the era they belong to.
//!
//! The era decides how the gateway treats HTTP: sessions, GET streams and server→client
//! requests (session era), or per-request `_meta`, mirrored headers and `input_required`
//! results (stateless era), or the old two-endpoint HTTP+SSE transport (legacy).

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::error::Error;
use crate::message::Message;
use crate::meta::{self, keys};
use crate::method::{MethodKind, classify};
use crate::raw_json::member_str;

/// Every protocol version published so far, oldest first.
pub const KNOWN_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];

/// The versions with the `initialize` handshake (legacy and session eras).
pub const HANDSHAKE_VERSIONS: [&str; 4] = [
    KNOWN_VERSIONS[0],
    KNOWN_VERSIONS[1],
    KNOWN_VERSIONS[2],
    KNOWN_VERSIONS[3],
];

/// The newest protocol version.
pub const LATEST_VERSION: &str = "2026-07-28";

/// First version of Streamable HTTP and sessions.
pub const FIRST_SESSION_VERSION: &str = "2025-03-26";

/// First version without `initialize` and sessions.
pub const FIRST_STATELESS_VERSION: &str = "2026-07-28";

/// The version a session-era server assumes when a request has no `MCP-Protocol-Version`
/// header and nothing else identifies it (2025-06-18 transports spec).
pub const DEFAULT_VERSION_WITHOUT_HEADER: &str = "2025-03-26";

/// A family of protocol versions that share transport semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolEra {
    /// 2024-11-05 and earlier: HTTP+SSE transport (GET `/sse`, `endpoint` event, POST).
    Legacy,
    /// 2025-03-26 … 2025-11-25: Streamable HTTP with `initialize` and `Mcp-Session-Id`.
    Session,
    /// 2026-07-28 and later: no sessions, version in every request's `_meta`.
    Stateless,
}

impl ProtocolEra {
    /// The era of a version string.
    ///
    /// Versions are dates, so an unknown but well-formed `YYYY-MM-DD` is placed by where it
    /// falls: the 2026-07-28 spec defines "modern" as "2026-07-28 and later", so a future
    /// version is stateless and gets header/body validation rather than less scrutiny; an
    /// unknown date between two eras belongs to the earlier one. Anything that is not a
    /// date is `None` (the caller answers `UnsupportedProtocolVersion`). Whether the
    /// upstream actually supports a version is the upstream's call, not the gateway's.
    pub fn of_version(version: &str) -> Option<ProtocolEra> {
        if !is_date(version) {
            return None;
        }
        // ISO dates order lexicographically.
        Some(if version >= FIRST_STATELESS_VERSION {
            ProtocolEra::Stateless
        } else if version >= FIRST_SESSION_VERSION {
            ProtocolEra::Session
        } else {
            ProtocolEra::Legacy
        })
    }
}

/// True for one of [`KNOWN_VERSIONS`].
pub fn is_known_version(version: &str) -> bool {
    KNOWN_VERSIONS.contains(&version)
}

fn is_date(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && matches!(
            &v[5..7],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        )
        && matches!(v[8..10].parse::<u8>(), Ok(1..=31))
}

/// Where a detected version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]` (stateless era).
    Meta,
    /// `params.protocolVersion` of an `initialize` request.
    Initialize,
    /// The `MCP-Protocol-Version` header.
    Header,
    /// Nothing said; the spec's default of 2025-03-26.
    Default,
}

/// The version of one message and the era it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected<'a> {
    /// The era.
    pub era: ProtocolEra,
    /// The version string, as sent.
    pub version: Cow<'a, str>,
    /// Where it was read.
    pub source: VersionSource,
}

/// Reads the stateless-era version from a request's params `_meta`.
pub fn meta_protocol_version(params: &RawValue) -> Result<Option<Cow<'_, str>>, Error> {
    meta::get_str(params, keys::PROTOCOL_VERSION)
}

/// Reads `protocolVersion` from `initialize` params.
pub fn initialize_protocol_version(params: &RawValue) -> Result<Option<Cow<'_, str>>, Error> {
    member_str(params, "protocolVersion")
        .map_err(|e| Error::InvalidParams(format!("initialize protocolVersion: {e}")))
}

/// Detects the protocol version and era of a client→gateway message.
///
/// In order: a request's `_meta` version (which must equal the header when both are
/// present: [`Error::HeaderMismatch`]); an `initialize` request's `protocolVersion`
/// (always session semantics, since `initialize` only exists before 2026-07-28, even when
/// a client offers a newer version to be negotiated down); the `MCP-Protocol-Version`
/// header; else 2025-03-26. A header naming a stateless version on a request without the
/// `_meta` version is [`Error::InvalidParams`] (the spec's answer to a missing required
/// `_meta` field). A version that is not a date is
/// [`Error::UnsupportedProtocolVersion`].
pub fn detect<'a>(header: Option<&'a str>, msg: &'a Message) -> Result<Detected<'a>, Error> {
    let era_of = |v: &str| {
        ProtocolEra::of_version(v).ok_or_else(|| Error::UnsupportedProtocolVersion {
            requested: v.to_owned(),
            supported: &KNOWN_VERSIONS,
        })
    };

    if let Message::Request { method, params, .. } = msg {
        let params = params.as_deref();
        if let Some(version) = params.map(meta_protocol_version).transpose()?.flatten() {
            if let Some(h) = header
                && h != version
            {
                return Err(Error::HeaderMismatch(format!(
                    "MCP-Protocol-Version header value '{h}' does not match body value '{version}'"
                )));
            }
            let era = era_of(&version)?;
            return Ok(Detected {
                era,
                version,
                source: VersionSource::Meta,
            });
        }
        if classify(method) == MethodKind::Initialize {
            let version = params
                .map(initialize_protocol_version)
                .transpose()?
                .flatten()
                .ok_or_else(|| Error::InvalidParams("initialize needs protocolVersion".into()))?;
            // The upstream negotiates: one that does not know the version answers with one
            // it does (the spec's rule for `initialize`), so any version goes through.
            let era = ProtocolEra::of_version(&version)
                .unwrap_or(ProtocolEra::Session)
                .min(ProtocolEra::Session);
            return Ok(Detected {
                era,
                version,
                source: VersionSource::Initialize,
            });
        }
    }

    match header {
        Some(h) => {
            let era = era_of(h)?;
            if era == ProtocolEra::Stateless && msg.is_request() {
                return Err(Error::InvalidParams(format!(
                    "missing _meta {} on a {h} request",
                    keys::PROTOCOL_VERSION
                )));
            }
            Ok(Detected {
                era,
                version: Cow::Borrowed(h),
                source: VersionSource::Header,
            })
        }
        None => Ok(Detected {
            era: ProtocolEra::Session,
            version: Cow::Borrowed(DEFAULT_VERSION_WITHOUT_HEADER),
            source: VersionSource::Default,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-11-25 `basic/lifecycle` initialize request (it offers 2024-11-05).
    const INITIALIZE: &str = r#"{
      "jsonrpc": "2.0",
      "id": 1,
      "method": "initialize",
      "params": {
        "protocolVersion": "2024-11-05",
        "capabilities": {
          "roots": { "listChanged": true },
          "sampling": {},
          "elicitation": { "form": {}, "url": {} }
        },
        "clientInfo": {
          "name": "ExampleClient",
          "title": "Example Client Display Name",
          "version": "1.0.0",
          "description": "An example MCP client application",
          "websiteUrl": "https://example.com"
        }
      }
    }"#;

    /// 2026-07-28 `transports/streamable-http` resources/read request.
    const STATELESS_READ: &str = r#"{
      "jsonrpc": "2.0",
      "id": 2,
      "method": "resources/read",
      "params": {
        "uri": "file:///projects/myapp/config.json",
        "_meta": {
          "io.modelcontextprotocol/protocolVersion": "2026-07-28",
          "io.modelcontextprotocol/clientInfo": { "name": "ExampleClient", "version": "1.0.0" },
          "io.modelcontextprotocol/clientCapabilities": {}
        }
      }
    }"#;

    fn msg(s: &str) -> Message {
        Message::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn places_versions_in_eras() {
        let cases = [
            ("2024-11-05", Some(ProtocolEra::Legacy)),
            ("2024-10-07", Some(ProtocolEra::Legacy)),
            ("2025-03-26", Some(ProtocolEra::Session)),
            ("2025-06-18", Some(ProtocolEra::Session)),
            ("2025-11-25", Some(ProtocolEra::Session)),
            ("2026-01-01", Some(ProtocolEra::Session)),
            ("2026-07-28", Some(ProtocolEra::Stateless)),
            ("2027-03-01", Some(ProtocolEra::Stateless)),
            ("DRAFT-2026-v1", None),
            ("1.0.0", None),
            ("", None),
            ("2025-13-01", None),
            ("2025-11-32", None),
            ("2025-11-00", None),
            ("2025-1-250", None),
            ("２０２５-11-25", None),
            (" 2025-11-25", None),
        ];
        for (version, era) in cases {
            assert_eq!(ProtocolEra::of_version(version), era, "{version}");
        }
        for v in KNOWN_VERSIONS {
            assert!(is_known_version(v));
            assert!(ProtocolEra::of_version(v).is_some());
        }
        assert!(!is_known_version("2026-01-01"));
        assert_eq!(KNOWN_VERSIONS.last(), Some(&LATEST_VERSION));
    }

    #[test]
    fn detects_from_meta() {
        let m = msg(STATELESS_READ);
        for header in [None, Some("2026-07-28")] {
            let d = detect(header, &m).unwrap();
            assert_eq!(d.era, ProtocolEra::Stateless);
            assert_eq!(d.version, "2026-07-28");
            assert_eq!(d.source, VersionSource::Meta);
        }
        let err = detect(Some("2025-11-25"), &m).unwrap_err();
        assert!(matches!(err, Error::HeaderMismatch(_)));
        assert_eq!(err.code(), -32020);
        assert_eq!(err.http_status(), 400);
    }

    #[test]
    fn detects_from_initialize() {
        let init = msg(INITIALIZE);
        let d = detect(None, &init).unwrap();
        assert_eq!(
            (d.era, d.version.as_ref(), d.source),
            (ProtocolEra::Legacy, "2024-11-05", VersionSource::Initialize)
        );
        let modern = INITIALIZE.replace("2024-11-05", "2025-11-25");
        assert_eq!(
            detect(None, &msg(&modern)).unwrap().era,
            ProtocolEra::Session
        );
        // A dual-era client offering the newest version in initialize is still in a session.
        let newest = INITIALIZE.replace("2024-11-05", "2026-07-28");
        assert_eq!(
            detect(None, &msg(&newest)).unwrap().era,
            ProtocolEra::Session
        );

        let missing = msg(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#);
        assert!(matches!(
            detect(None, &missing),
            Err(Error::InvalidParams(_))
        ));
        let no_params = msg(r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#);
        assert!(matches!(
            detect(None, &no_params),
            Err(Error::InvalidParams(_))
        ));
        // A version the gateway cannot place is the upstream's to negotiate.
        let unknown = msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1.0.0"}}"#,
        );
        let detected = detect(None, &unknown).unwrap();
        assert_eq!(detected.era, ProtocolEra::Session);
        assert_eq!(detected.version, "1.0.0");
    }

    #[test]
    fn detects_from_header_or_default() {
        let list = msg(r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#);
        let d = detect(Some("2025-06-18"), &list).unwrap();
        assert_eq!(
            (d.era, d.source),
            (ProtocolEra::Session, VersionSource::Header)
        );
        let d = detect(None, &list).unwrap();
        assert_eq!(
            (d.era, d.version.as_ref(), d.source),
            (ProtocolEra::Session, "2025-03-26", VersionSource::Default)
        );
        assert!(matches!(
            detect(Some("2026-07-28"), &list),
            Err(Error::InvalidParams(_))
        ));
        assert!(matches!(
            detect(Some("garbage"), &list),
            Err(Error::UnsupportedProtocolVersion { .. })
        ));

        // Responses and notifications carry no _meta version; the header decides.
        let response = msg(
            r#"{"jsonrpc":"2.0","id":"s1","result":{"action":"accept","content":{"name":"octocat"}}}"#,
        );
        assert_eq!(
            detect(Some("2025-11-25"), &response).unwrap().era,
            ProtocolEra::Session
        );
        let note = msg(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(
            detect(Some("2026-07-28"), &note).unwrap().era,
            ProtocolEra::Stateless
        );
    }

    #[test]
    fn malformed_meta_version_is_invalid_params() {
        let m = msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":20260728}}}"#,
        );
        assert!(matches!(detect(None, &m), Err(Error::InvalidParams(_))));
        let m = msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"next"}}}"#,
        );
        assert!(matches!(
            detect(None, &m),
            Err(Error::UnsupportedProtocolVersion { .. })
        ));
    }
}
