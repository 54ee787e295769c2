//! One JSON-RPC 2.0 message: parsing, the id, and building responses.
//!
//! `params` and `result` are kept as `Box<RawValue>`, not `serde_json::Value`: the gateway
//! forwards almost every message untouched, so building a `Value` tree (one allocation per
//! node) for each would be wasted work. A `RawValue` is validated once during the single
//! parse, costs one memcpy, and can be re-read cheaply into small borrowed structs for the
//! few fields the gateway inspects (`tools/call` name and arguments, `_meta`). Only a
//! `tools/list` result that must be rewritten is taken apart, and even then each kept tool
//! is copied back byte for byte.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Number, Value};

use crate::error::Error;
use crate::method::{MethodKind, classify};
use crate::raw_json::{self, CowStr};

/// JSON-RPC and MCP error codes.
pub mod codes {
    /// Invalid JSON was received.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON sent is not a valid request object (MCP also uses it for batches).
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist or is not available.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid method parameters; MCP uses it for unknown tools and missing `_meta` fields.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal JSON-RPC error.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// 2026-07-28 `HeaderMismatch`: mirrored HTTP headers are missing, malformed or disagree
    /// with the body (HTTP 400).
    pub const HEADER_MISMATCH: i64 = -32020;
    /// 2026-07-28 `MissingRequiredClientCapability`: the request needs a capability the
    /// client did not declare in `_meta` (HTTP 400).
    pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
    /// 2026-07-28 `UnsupportedProtocolVersion`: `data` carries `supported` and `requested`
    /// (HTTP 400).
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
    /// Resource not found in 2025-11-25 and earlier; reserved, never emitted in 2026-07-28.
    pub const RESOURCE_NOT_FOUND_LEGACY: i64 = -32002;
    /// URL elicitation required, 2025-11-25 only; reserved, never emitted in 2026-07-28.
    pub const URL_ELICITATION_REQUIRED: i64 = -32042;
}

/// A JSON-RPC request id: MCP allows a string or an integer, never `null`.
///
/// Integers are kept as `serde_json::Number`, so every integer JSON can carry (i64 and u64)
/// is echoed back byte for byte. A non-integer number (which MCP forbids: `1.5`, `1e3`, or an
/// integer past 64 bits) is refused, as it could not be echoed as it was spelled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    /// A numeric id.
    Number(Number),
    /// A string id.
    String(String),
}

impl RequestId {
    /// Whether an answer under `answer` can only be taken for this request: the same id, or a
    /// number and a string of the same integer (the TypeScript SDK matches answers by
    /// `Number(id)`, so `"7"` answers `7` there, and an upstream may echo ids that way).
    pub fn answered_by(&self, answer: &RequestId) -> bool {
        let integer = |n: &Number, s: &str| {
            let s = s.trim();
            match (n.as_i64(), n.as_u64()) {
                (Some(n), _) => s.parse::<i64>() == Ok(n),
                (_, Some(n)) => s.parse::<u64>() == Ok(n),
                _ => false,
            }
        };
        match (self, answer) {
            (RequestId::Number(n), RequestId::String(s))
            | (RequestId::String(s), RequestId::Number(n)) => integer(n, s),
            _ => self == answer,
        }
    }
}

impl From<i64> for RequestId {
    fn from(n: i64) -> Self {
        RequestId::Number(n.into())
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        RequestId::String(s.to_owned())
    }
}

impl fmt::Display for RequestId {
    // JSON spelling, so the string "1" and the number 1 stay distinguishable in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Number(n) => write!(f, "{n}"),
            RequestId::String(s) => write!(f, "{}", Value::String(s.clone())),
        }
    }
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RequestId::Number(n) => n.serialize(s),
            RequestId::String(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = RequestId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RequestId, E> {
                Ok(RequestId::String(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RequestId, E> {
                Ok(RequestId::String(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RequestId, E> {
                Ok(RequestId::Number(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RequestId, E> {
                Ok(RequestId::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RequestId, E> {
                // MCP ids are strings or integers; a fraction, an exponent or an integer past
                // 64 bits would come back spelled differently, so no answer would match it.
                Err(E::custom("id must be a string or an integer"))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

/// The `error` member of a JSON-RPC error response.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ErrorObject {
    /// The error code.
    pub code: i64,
    /// A short description.
    pub message: String,
    /// Optional sender-defined detail, kept raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
}

/// One JSON-RPC 2.0 message, in either direction.
///
/// This is the gateway's view for deciding; to forward a message unchanged, forward the
/// original bytes rather than re-encoding this.
#[derive(Debug, Clone)]
pub enum Message {
    /// A call that expects a response.
    Request {
        /// The id to echo.
        id: RequestId,
        /// The method name.
        method: String,
        /// The params object, raw; `None` when absent or `null`.
        params: Option<Box<RawValue>>,
    },
    /// A one-way message.
    Notification {
        /// The method name.
        method: String,
        /// The params object, raw; `None` when absent or `null`.
        params: Option<Box<RawValue>>,
    },
    /// A successful response.
    Response {
        /// The id of the request answered.
        id: RequestId,
        /// The result, raw.
        result: Box<RawValue>,
    },
    /// An error response; `id` is `None` when the peer sent `null` or omitted it.
    Error {
        /// The id of the request answered, if known.
        id: Option<RequestId>,
        /// The error.
        error: ErrorObject,
    },
}

/// Holds a field that was present in the object, even when its value is `null`.
struct Present<T>(Option<T>);

impl<T> Default for Present<T> {
    fn default() -> Self {
        Present(None)
    }
}

/// The members of a JSON-RPC message the gateway reads.
const ENVELOPE_MEMBERS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];

/// The members of a JSON-RPC object, each kept raw so that a type error in one member
/// still lets the id be recovered for the error response. Member names are read as upstreams
/// that ignore case read them (`raw_json`): a repeated or case-varied member is refused.
#[derive(Default)]
struct Envelope<'a> {
    jsonrpc: Present<&'a RawValue>,
    id: Present<&'a RawValue>,
    method: Present<&'a RawValue>,
    params: Present<&'a RawValue>,
    result: Present<&'a RawValue>,
    error: Present<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Envelope<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Envelope<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON-RPC message")
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Envelope<'a>, A::Error> {
                let mut env = Envelope::default();
                let mut names = raw_json::Names::default();
                while let Some(CowStr(name)) = map.next_key()? {
                    names.add_among(&name, &ENVELOPE_MEMBERS)?;
                    let slot = match name.as_ref() {
                        "jsonrpc" => &mut env.jsonrpc,
                        "id" => &mut env.id,
                        "method" => &mut env.method,
                        "params" => &mut env.params,
                        "result" => &mut env.result,
                        "error" => &mut env.error,
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Present(Some(map.next_value()?));
                }
                Ok(env)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

enum IdField {
    Absent,
    Null,
    Valid(RequestId),
    Bad,
}

fn read_id(raw: Option<&RawValue>) -> IdField {
    match raw {
        None => IdField::Absent,
        Some(r) if r.get() == "null" => IdField::Null,
        Some(r) => match serde_json::from_str::<RequestId>(r.get()) {
            Ok(id) => IdField::Valid(id),
            Err(_) => IdField::Bad,
        },
    }
}

fn first_non_ws(bytes: &[u8]) -> Option<u8> {
    bytes
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// The offset of the first `\u` escape of a surrogate that is not half of a pair, if any.
///
/// Every backslash of valid JSON starts an escape inside a string, so a scan from escape to
/// escape sees them all; invalid JSON is left for the parser to refuse.
fn lone_surrogate(bytes: &[u8]) -> Option<usize> {
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let mut i = 0;
    while let Some(offset) = bytes.get(i..)?.iter().position(|&b| b == b'\\') {
        let at = i + offset;
        if bytes.get(at + 1) != Some(&b'u') {
            i = at + 2;
            continue;
        }
        let unit = hex(at + 2)?;
        i = at + 6;
        match unit {
            0xD800..=0xDBFF => {
                let low = (bytes.get(at + 6..at + 8) == Some(b"\\u"))
                    .then(|| hex(at + 8))
                    .flatten();
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Some(at);
                }
                i = at + 12;
            }
            0xDC00..=0xDFFF => return Some(at),
            _ => {}
        }
    }
    None
}

fn json_error(e: &serde_json::Error) -> Error {
    Error::Parse(e.to_string())
}

impl Message {
    /// Parses exactly one JSON-RPC 2.0 message.
    ///
    /// Arrays are [`Error::Batch`], invalid JSON is [`Error::Parse`] (-32700), and JSON that
    /// is not a JSON-RPC message is [`Error::InvalidRequest`] (-32600). Duplicate members
    /// (`{"method":"a","method":"b"}`) are rejected, because peers disagree on which one wins.
    pub fn parse(bytes: &[u8]) -> Result<Message, Error> {
        // serde_json skips UTF-8 validation inside values it ignores; JSON must be UTF-8
        // throughout, and the bytes are forwarded as they are, so check all of them once.
        let text = std::str::from_utf8(bytes)
            .map_err(|e| Error::Parse(format!("body is not UTF-8: {e}")))?;
        // Nor does it check `\u` escapes there: a lone surrogate (`"\ud800"`) names no
        // character, and upstreams disagree on it (one refuses the message, one reads U+FFFD,
        // one keeps the half pair), so the message would not read the same everywhere.
        if let Some(at) = lone_surrogate(bytes) {
            return Err(Error::Parse(format!(
                "unpaired surrogate escape at byte {at} (JSON text must be Unicode)"
            )));
        }
        match first_non_ws(bytes) {
            Some(b'{') => {}
            Some(b'[') => {
                return match serde_json::from_str::<de::IgnoredAny>(text) {
                    Ok(_) => Err(Error::Batch),
                    Err(e) => Err(json_error(&e)),
                };
            }
            _ => {
                return match serde_json::from_str::<de::IgnoredAny>(text) {
                    Ok(_) => Err(invalid(None, "a JSON-RPC message must be a JSON object")),
                    Err(e) => Err(json_error(&e)),
                };
            }
        }
        let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => invalid(None, &e.to_string()),
            _ => json_error(&e),
        })?;
        Self::from_envelope(env)
    }

    fn from_envelope(env: Envelope<'_>) -> Result<Message, Error> {
        let id = read_id(env.id.0);
        let known_id = match &id {
            IdField::Valid(id) => Some(id.clone()),
            _ => None,
        };
        let fail = |detail: &str| invalid(known_id.clone(), detail);

        match env
            .jsonrpc
            .0
            .map(|r| serde_json::from_str::<CowStr<'_>>(r.get()))
        {
            Some(Ok(v)) if v.0 == JSONRPC_VERSION => {}
            Some(_) => return Err(fail("\"jsonrpc\" must be \"2.0\"")),
            None => return Err(fail("missing \"jsonrpc\": \"2.0\"")),
        }
        if matches!(id, IdField::Bad) {
            return Err(fail("\"id\" must be a string or a number"));
        }

        if let Some(raw_method) = env.method.0 {
            let method = serde_json::from_str::<String>(raw_method.get())
                .map_err(|_| fail("\"method\" must be a string"))?;
            if method.chars().any(char::is_control) {
                // No method has one, and an upstream that reads C strings would end the name
                // at a U+0000: `tools/call\u0000` would reach it as `tools/call`, undecided.
                return Err(fail("\"method\" must not contain control characters"));
            }
            if env.result.0.is_some() || env.error.0.is_some() {
                return Err(fail(
                    "a message cannot carry both \"method\" and a result or error",
                ));
            }
            let params = match env.params.0 {
                None => None,
                Some(p) if p.get() == "null" => None,
                Some(p) if matches!(p.get().as_bytes().first(), Some(b'{' | b'[')) => {
                    Some(p.to_owned())
                }
                Some(_) => return Err(fail("\"params\" must be an object or an array")),
            };
            return match id {
                IdField::Absent => Ok(Message::Notification { method, params }),
                IdField::Valid(id) => Ok(Message::Request { id, method, params }),
                // MCP forbids null ids on requests; JSON-RPC only discourages them.
                IdField::Null | IdField::Bad => Err(fail("a request id must not be null")),
            };
        }

        match (env.result.0, env.error.0) {
            (Some(result), None) => match id {
                IdField::Valid(id) => Ok(Message::Response {
                    id,
                    result: result.to_owned(),
                }),
                _ => Err(fail("a result response needs a string or number id")),
            },
            (None, Some(raw_error)) => {
                let error = serde_json::from_str::<ErrorObject>(raw_error.get()).map_err(|_| {
                    fail("\"error\" must be an object with an integer code and a message")
                })?;
                Ok(Message::Error {
                    id: known_id,
                    error,
                })
            }
            (Some(_), Some(_)) => Err(fail("a response cannot carry both result and error")),
            (None, None) => Err(fail("neither a request, a notification nor a response")),
        }
    }

    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method, .. } => Some(method),
            _ => None,
        }
    }

    /// The classified method of a request or notification.
    pub fn method_kind(&self) -> Option<MethodKind> {
        self.method().map(classify)
    }

    /// The id of a request or response.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            Message::Request { id, .. } | Message::Response { id, .. } => Some(id),
            Message::Error { id, .. } => id.as_ref(),
            Message::Notification { .. } => None,
        }
    }

    /// The raw params of a request or notification.
    pub fn params(&self) -> Option<&RawValue> {
        match self {
            Message::Request { params, .. } | Message::Notification { params, .. } => {
                params.as_deref()
            }
            _ => None,
        }
    }

    /// The raw result of a successful response.
    pub fn result(&self) -> Option<&RawValue> {
        match self {
            Message::Response { result, .. } => Some(result),
            _ => None,
        }
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self, Message::Request { .. })
    }

    /// True for notifications.
    pub fn is_notification(&self) -> bool {
        matches!(self, Message::Notification { .. })
    }

    /// True for result and error responses.
    pub fn is_response(&self) -> bool {
        matches!(self, Message::Response { .. } | Message::Error { .. })
    }

    /// Serializes the message (compact JSON); raw members are written verbatim.
    pub fn encode(&self) -> Bytes {
        #[derive(Serialize)]
        struct Call<'a> {
            jsonrpc: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a RequestId>,
            method: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            params: Option<&'a RawValue>,
        }
        match self {
            Message::Request { id, method, params } => to_bytes(&Call {
                jsonrpc: JSONRPC_VERSION,
                id: Some(id),
                method,
                params: params.as_deref(),
            }),
            Message::Notification { method, params } => to_bytes(&Call {
                jsonrpc: JSONRPC_VERSION,
                id: None,
                method,
                params: params.as_deref(),
            }),
            Message::Response { id, result } => result_response_raw(id, result),
            Message::Error { id, error } => to_bytes(&ErrorOut {
                jsonrpc: JSONRPC_VERSION,
                id: id.as_ref(),
                error: ErrorOutBody {
                    code: error.code,
                    message: &error.message,
                    data: error.data.as_deref().map(DataOut::Raw),
                },
            }),
        }
    }
}

/// The only JSON-RPC version there is.
pub const JSONRPC_VERSION: &str = "2.0";

fn invalid(id: Option<RequestId>, detail: &str) -> Error {
    Error::InvalidRequest {
        id,
        detail: detail.to_owned(),
    }
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    jsonrpc: &'static str,
    // Always written: JSON-RPC requires `"id": null` when the id could not be determined.
    id: Option<&'a RequestId>,
    error: ErrorOutBody<'a>,
}

#[derive(Serialize)]
struct ErrorOutBody<'a> {
    code: i64,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataOut<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DataOut<'a> {
    Raw(&'a RawValue),
    Value(&'a Value),
}

#[derive(Serialize)]
struct ResultOut<'a, R: Serialize + ?Sized> {
    jsonrpc: &'static str,
    id: &'a RequestId,
    result: &'a R,
}

/// Serializes values that cannot fail to serialize: strings, numbers, `RawValue` and
/// `Value` into a `Vec` (no IO error, no non-string map keys).
fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    #[allow(clippy::expect_used)]
    let out = serde_json::to_vec(value).expect("serializing JSON-RPC envelopes is infallible");
    Bytes::from(out)
}

/// Builds a JSON-RPC error response; `id: None` is written as `"id": null`.
pub fn error_response(
    id: Option<&RequestId>,
    code: i64,
    message: &str,
    data: Option<&Value>,
) -> Bytes {
    to_bytes(&ErrorOut {
        jsonrpc: JSONRPC_VERSION,
        id,
        error: ErrorOutBody {
            code,
            message,
            data: data.map(DataOut::Value),
        },
    })
}

/// Builds a JSON-RPC result response from a `Value`.
pub fn result_response(id: &RequestId, result: &Value) -> Bytes {
    to_bytes(&ResultOut {
        jsonrpc: JSONRPC_VERSION,
        id,
        result,
    })
}

/// Builds a JSON-RPC result response around an already-serialized result.
pub fn result_response_raw(id: &RequestId, result: &RawValue) -> Bytes {
    to_bytes(&ResultOut {
        jsonrpc: JSONRPC_VERSION,
        id,
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_str(s: &str) -> Result<Message, Error> {
        Message::parse(s.as_bytes())
    }

    fn as_value(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn parses_each_kind() {
        let req =
            parse_str(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"cursor":"c"}}"#)
                .unwrap();
        match &req {
            Message::Request { id, method, params } => {
                assert_eq!(id, &RequestId::from(7));
                assert_eq!(method, "tools/list");
                assert_eq!(params.as_ref().unwrap().get(), r#"{"cursor":"c"}"#);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(req.method_kind(), Some(MethodKind::ToolsList));

        let note = parse_str(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(note.is_notification());
        assert_eq!(note.id(), None);
        assert!(note.params().is_none());

        let resp = parse_str(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
        assert!(resp.is_response());
        assert_eq!(resp.id(), Some(&RequestId::from("a")));
        assert_eq!(resp.result().unwrap().get(), "{}");

        let err = parse_str(
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error","data":[1]}}"#,
        )
        .unwrap();
        match err {
            Message::Error { id, error } => {
                assert_eq!(id, None);
                assert_eq!(error.code, codes::PARSE_ERROR);
                assert_eq!(error.message, "Parse error");
                assert_eq!(error.data.unwrap().get(), "[1]");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Session-era (2025-11-25) traffic from the spec: the initialize response, the
    /// server→client sampling and elicitation requests and the client's answers, and a
    /// progress notification. All of it must parse and pass through untouched.
    #[test]
    fn parses_session_era_spec_samples() {
        let samples: &[(&str, &str, Option<&str>)] = &[
            (
                "initialize response",
                r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2024-11-05","capabilities":{"logging":{},"prompts":{"listChanged":true},"resources":{"subscribe":true,"listChanged":true},"tools":{"listChanged":true}},"serverInfo":{"name":"ExampleServer","title":"Example Server Display Name","version":"1.0.0"},"instructions":"Optional instructions for the client"}}"#,
                None,
            ),
            (
                "sampling request",
                r#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{"messages":[{"role":"user","content":{"type":"text","text":"What is the capital of France?"}}],"modelPreferences":{"hints":[{"name":"claude-3-sonnet"}],"intelligencePriority":0.8,"speedPriority":0.5},"systemPrompt":"You are a helpful assistant.","maxTokens":100}}"#,
                Some("sampling/createMessage"),
            ),
            (
                "sampling response",
                r#"{"jsonrpc":"2.0","id":1,"result":{"role":"assistant","content":{"type":"text","text":"The capital of France is Paris."},"model":"claude-3-sonnet-20240307","stopReason":"endTurn"}}"#,
                None,
            ),
            (
                "elicitation request",
                r#"{"jsonrpc":"2.0","id":1,"method":"elicitation/create","params":{"mode":"form","message":"Please provide your GitHub username","requestedSchema":{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}}}"#,
                Some("elicitation/create"),
            ),
            (
                "elicitation response",
                r#"{"jsonrpc":"2.0","id":1,"result":{"action":"accept","content":{"name":"octocat"}}}"#,
                None,
            ),
            (
                "progress",
                r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"abc123","progress":50,"total":100,"message":"Reticulating splines..."}}"#,
                Some("notifications/progress"),
            ),
            (
                "initialize error",
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Unsupported protocol version","data":{"supported":["2024-11-05"],"requested":"1.0.0"}}}"#,
                None,
            ),
        ];
        for (what, input, method) in samples {
            let msg = parse_str(input).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(msg.method(), *method, "{what}");
            assert_eq!(
                msg.method_kind().unwrap_or(MethodKind::Other),
                MethodKind::Other,
                "{what}"
            );
            assert_eq!(
                as_value(&msg.encode()),
                serde_json::from_str::<Value>(input).unwrap(),
                "{what}"
            );
        }
    }

    #[test]
    fn keeps_ids_exactly() {
        let cases = [
            (r#"0"#, "0"),
            (r#"-5"#, "-5"),
            (r#"18446744073709551615"#, "18446744073709551615"),
            (r#"-9223372036854775808"#, "-9223372036854775808"),
            (r#""abc""#, r#""abc""#),
            (r#""1""#, r#""1""#),
            (r#""é\n\"x\"""#, r#""é\n\"x\"""#),
            (r#""""#, r#""""#),
        ];
        for (input, echoed) in cases {
            let msg = parse_str(&format!(
                r#"{{"jsonrpc":"2.0","id":{input},"method":"ping"}}"#
            ))
            .unwrap();
            let id = msg.id().unwrap();
            assert_eq!(serde_json::to_string(id).unwrap(), echoed, "{input}");
            let back = error_response(Some(id), -1, "m", None);
            assert!(
                std::str::from_utf8(&back)
                    .unwrap()
                    .contains(&format!(r#""id":{echoed}"#)),
                "{input}"
            );
        }
        assert_ne!(RequestId::from("1"), RequestId::from(1));
        assert!(RequestId::from(7).answered_by(&RequestId::from(" 7")));
        assert!(RequestId::from("7").answered_by(&RequestId::from(7)));
        assert!(!RequestId::from(7).answered_by(&RequestId::from(8)));
        assert!(!RequestId::from(7).answered_by(&RequestId::from("7a")));
        assert!(!RequestId::from("a").answered_by(&RequestId::from("b")));
        assert_eq!(RequestId::from("1").to_string(), r#""1""#);
        assert_eq!(RequestId::from(1).to_string(), "1");
    }

    #[test]
    fn classifies_failures() {
        // (input, expected code, id recovered)
        let cases: &[(&str, i64, Option<RequestId>)] = &[
            ("", codes::PARSE_ERROR, None),
            ("   ", codes::PARSE_ERROR, None),
            ("{", codes::PARSE_ERROR, None),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x"} trailing"#,
                codes::PARSE_ERROR,
                None,
            ),
            ("[1,", codes::PARSE_ERROR, None),
            ("nul", codes::PARSE_ERROR, None),
            ("\u{feff}{}", codes::PARSE_ERROR, None),
            ("null", codes::INVALID_REQUEST, None),
            ("42", codes::INVALID_REQUEST, None),
            (r#""str""#, codes::INVALID_REQUEST, None),
            ("{}", codes::INVALID_REQUEST, None),
            (
                r#"{"id":1,"method":"ping"}"#,
                codes::INVALID_REQUEST,
                Some(1.into()),
            ),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
                codes::INVALID_REQUEST,
                Some(1.into()),
            ),
            (
                r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#,
                codes::INVALID_REQUEST,
                Some(1.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            // A C-string reader would take these for `tools/call`, or for the `method` member.
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call\u0000"}"#,
                codes::INVALID_REQUEST,
                Some(1.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call\u0000x"}"#,
                codes::INVALID_REQUEST,
                Some(1.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list\t"}"#,
                codes::INVALID_REQUEST,
                Some(1.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","method\u0000":"tools/call"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1e3,"method":"ping"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":5}"#,
                codes::INVALID_REQUEST,
                Some(2.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"x","method":"a","params":3}"#,
                codes::INVALID_REQUEST,
                Some("x".into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"x","method":"a","params":"s"}"#,
                codes::INVALID_REQUEST,
                Some("x".into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"a","result":{}}"#,
                codes::INVALID_REQUEST,
                Some(1.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}"#,
                codes::INVALID_REQUEST,
                Some(1.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","result":{}}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"error":{"code":"x","message":"m"}}"#,
                codes::INVALID_REQUEST,
                Some(3.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"error":{"code":1.5,"message":"m"}}"#,
                codes::INVALID_REQUEST,
                Some(3.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"error":null}"#,
                codes::INVALID_REQUEST,
                Some(3.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":4}"#,
                codes::INVALID_REQUEST,
                Some(4.into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"a"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            // A case variant is the same member to an upstream that ignores case (like a
            // repeated member, the message is not read far enough to trust its id).
            (
                r#"{"jsonrpc":"2.0","id":5,"method":"ping","METHOD":"tools/call"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":6,"Method":"tools/call"}"#,
                codes::INVALID_REQUEST,
                None,
            ),
        ];
        for (input, code, id) in cases {
            let err = parse_str(input).expect_err(input);
            assert_eq!(err.code(), *code, "{input}: {err}");
            assert_eq!(err.id(), id.as_ref(), "{input}");
            assert_eq!(err.http_status(), 400);
        }
    }

    #[test]
    fn rejects_invalid_utf8_anywhere() {
        let inputs: [&[u8]; 3] = [
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"junk\":\"\xff\"}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{\"a\":\"\xc3\"}}",
            b"[\"\xff\"]",
        ];
        for input in inputs {
            assert_eq!(
                Message::parse(input).unwrap_err().code(),
                codes::PARSE_ERROR
            );
        }
    }

    #[test]
    fn rejects_unpaired_surrogate_escapes_anywhere() {
        // Found by the `message` fuzz target: an escape in a member the parser skips went
        // through unchecked.
        let found: &[u8] = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"\ud800sampling":{}}}}"#;
        let inputs: [&[u8]; 4] = [
            found,
            br#"{"jsonrpc":"2.0","id":1,"method":"x","junk":"\udc00"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":"\uD83D\u0041"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":"end\ud83d"}}"#,
        ];
        for input in inputs {
            let err = Message::parse(input).unwrap_err();
            assert_eq!(
                err.code(),
                codes::PARSE_ERROR,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        // Pairs, escaped backslashes and other escapes are fine.
        let msg = parse_str(
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":"\ud83d\ude00","b":"\\ud800","c":"\u00e9\n"}}"#,
        )
        .unwrap();
        assert!(msg.params().is_some());
        assert_eq!(lone_surrogate(br#""\\\ud800""#), Some(3));
        assert_eq!(lone_surrogate(br#""\\ud800""#), None);
    }

    /// The input the `message` fuzz target stopped on next: a number past f64's range, which
    /// serde_json's `Value` cannot hold. Where the gateway decides (a call's arguments) it is
    /// refused; in a member it skips it goes through as sent, for the upstream to read or
    /// refuse.
    #[test]
    fn numbers_past_f64_are_refused_where_the_gateway_decides() {
        let found = r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"tools/call","params":{"n\u0061me":"t\u00e9","arguments":{"a":{"b":[1.5e600,-0,"\ud83d\ude00"]}}}}"#;
        let call = parse_str(found).unwrap();
        let refused = call.tool_call().unwrap().unwrap_err();
        assert_eq!(refused.code(), codes::INVALID_PARAMS, "{refused}");
        let skipped = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{},"_meta":{"x":1e999}}}"#;
        let call = parse_str(skipped).unwrap();
        assert_eq!(call.tool_call().unwrap().unwrap().name, "t");
        assert!(
            std::str::from_utf8(&call.encode())
                .unwrap()
                .contains("1e999")
        );
    }

    #[test]
    fn batches_are_their_own_error() {
        for input in [
            "[]",
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            " \n[1, 2]",
        ] {
            assert_eq!(parse_str(input).unwrap_err(), Error::Batch, "{input}");
        }
        assert_eq!(Error::Batch.code(), codes::INVALID_REQUEST);
        // An array that is not even JSON is a parse error, not a batch.
        assert_eq!(parse_str("[1,,]").unwrap_err().code(), codes::PARSE_ERROR);
    }

    #[test]
    fn tolerates_what_json_rpc_allows() {
        // Unknown members, null params, array params, whitespace around the object.
        let msg = parse_str(
            " \r\n\t{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":null,\"extra\":[1,{}]}\n",
        )
        .unwrap();
        assert!(msg.params().is_none());
        let msg = parse_str(r#"{"jsonrpc":"2.0","method":"x","params":[1,2]}"#).unwrap();
        assert_eq!(msg.params().unwrap().get(), "[1,2]");
        // Error responses may omit the id entirely.
        let msg =
            parse_str(r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"bad"}}"#).unwrap();
        assert_eq!(msg.id(), None);
        // A null result is a valid JSON-RPC result (MCP would never send one, but pass it on).
        let msg = parse_str(r#"{"jsonrpc":"2.0","id":1,"result":null}"#).unwrap();
        assert_eq!(msg.result().unwrap().get(), "null");
    }

    #[test]
    fn raw_members_are_kept_verbatim() {
        let params = r#"{"b": 1,  "a" : [ 1.50, "\u00e9" ]}"#;
        let input = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{params}}}"#);
        let msg = parse_str(&input).unwrap();
        assert_eq!(msg.params().unwrap().get(), params);
        let encoded = msg.encode();
        assert!(std::str::from_utf8(&encoded).unwrap().contains(params));
    }

    #[test]
    fn encode_round_trips() {
        let inputs = [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":"s","result":{"tools":[]}}"#,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#,
            r#"{"jsonrpc":"2.0","id":9,"error":{"code":-32602,"message":"m","data":{"k":[1]}}}"#,
        ];
        for input in inputs {
            let msg = parse_str(input).unwrap();
            assert_eq!(
                as_value(&msg.encode()),
                serde_json::from_str::<Value>(input).unwrap(),
                "{input}"
            );
        }
    }

    #[test]
    fn builds_responses() {
        let id = RequestId::from(3);
        assert_eq!(
            as_value(&error_response(
                Some(&id),
                codes::HEADER_MISMATCH,
                "Header mismatch",
                Some(&json!({"header": "Mcp-Name"}))
            )),
            json!({"jsonrpc":"2.0","id":3,"error":{"code":-32020,"message":"Header mismatch","data":{"header":"Mcp-Name"}}})
        );
        assert_eq!(
            as_value(&error_response(
                None,
                codes::PARSE_ERROR,
                "Parse error",
                None
            )),
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}})
        );
        assert_eq!(
            as_value(&result_response(&"r".into(), &json!({"ok": true}))),
            json!({"jsonrpc":"2.0","id":"r","result":{"ok":true}})
        );
        let raw = RawValue::from_string(r#"{"z":1,"a":2}"#.to_owned()).unwrap();
        assert_eq!(
            &result_response_raw(&id, &raw)[..],
            br#"{"jsonrpc":"2.0","id":3,"result":{"z":1,"a":2}}"#
        );
    }

    #[test]
    fn error_type_renders_its_own_response() {
        let err = parse_str(r#"{"jsonrpc":"2.0","id":"q","method":7}"#).unwrap_err();
        let body = as_value(&err.to_response(None));
        assert_eq!(body["id"], json!("q"));
        assert_eq!(body["error"]["code"], json!(codes::INVALID_REQUEST));

        let err = Error::UnsupportedProtocolVersion {
            requested: "1900-01-01".into(),
            supported: &crate::era::KNOWN_VERSIONS,
        };
        let body = as_value(&err.to_response(Some(&1.into())));
        assert_eq!(body["id"], json!(1));
        assert_eq!(body["error"]["code"], json!(-32022));
        assert_eq!(body["error"]["data"]["requested"], json!("1900-01-01"));
        assert!(
            body["error"]["data"]["supported"]
                .as_array()
                .unwrap()
                .contains(&json!("2026-07-28"))
        );
    }

    mod props {
        use super::*;
        use crate::era;
        use crate::headers::{MirroredHeaders, check_mirrored_headers};
        use crate::mrtr;
        use crate::tools::filter_tools_list;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| json!(f)),
                "[a-z_/é\\\"]{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("name".to_owned()),
                            Just("arguments".to_owned()),
                            Just("_meta".to_owned()),
                            Just("tools".to_owned()),
                            Just("resultType".to_owned()),
                            Just("io.modelcontextprotocol/protocolVersion".to_owned()),
                            "[a-z]{1,6}",
                        ],
                        inner,
                        0..4,
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn id() -> impl Strategy<Value = Value> {
            prop_oneof![
                any::<i64>().prop_map(|n| json!(n)),
                any::<u64>().prop_map(|n| json!(n)),
                "[ -~]{0,10}".prop_map(Value::String),
            ]
        }

        fn method() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("tools/call".to_owned()),
                Just("tools/list".to_owned()),
                Just("initialize".to_owned()),
                Just("resources/read".to_owned()),
                "[a-z/]{1,12}",
            ]
        }

        /// Exercises everything the gateway does with a parsed message; none of it may panic.
        fn use_message(msg: &Message) {
            let _ = msg.encode();
            let _ = msg.tool_call().map(|c| c.map(|c| c.arguments));
            let _ = era::detect(Some("2026-07-28"), msg);
            let _ = era::detect(None, msg);
            let headers = MirroredHeaders {
                protocol_version: Some("2026-07-28"),
                method: msg.method(),
                name: Some("x"),
            };
            let _ = check_mirrored_headers(&headers, msg);
            if let Some(result) = msg.result() {
                let _ = filter_tools_list(result, |_| true, ProtocolEra::Stateless);
                let _ = mrtr::InputRequired::from_result(result)
                    .map(|r| r.map(|r| r.request_methods()));
                let _ = crate::tools::call_result_is_error(result);
            }
            if let Some(params) = msg.params() {
                let _ = mrtr::Retry::from_params(params);
                let _ = crate::meta::with_raw(params, "k", &json!(1));
            }
        }

        use crate::era::ProtocolEra;

        proptest! {
            #[test]
            fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                if let Ok(msg) = Message::parse(&bytes) {
                    use_message(&msg);
                }
            }

            #[test]
            fn parse_never_panics_on_json(v in json_value()) {
                let text = v.to_string();
                if let Ok(msg) = Message::parse(text.as_bytes()) {
                    use_message(&msg);
                }
            }

            #[test]
            fn parse_never_panics_on_mutated_messages(
                id in id(),
                method in method(),
                params in json_value(),
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            ) {
                let text = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
                let mut bytes = text.into_bytes();
                for (at, b) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
                if let Ok(msg) = Message::parse(&bytes) {
                    use_message(&msg);
                }
            }

            #[test]
            fn requests_round_trip(id in id(), method in method(), params in json_value()) {
                let input = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
                let parsed = Message::parse(input.to_string().as_bytes());
                if params.is_object() || params.is_array() {
                    let msg = parsed.unwrap();
                    prop_assert!(msg.is_request());
                    prop_assert_eq!(serde_json::to_value(msg.id().unwrap()).unwrap(), id);
                    // Raw params come back byte for byte (comparing parsed `Value`s would not:
                    // serde_json's default float parsing is not round-trip exact).
                    prop_assert_eq!(msg.params().unwrap().get(), params.to_string());
                    let encoded = String::from_utf8(msg.encode().to_vec()).unwrap();
                    let tail = format!(",\"params\":{params}}}");
                    prop_assert!(encoded.ends_with(&tail));
                } else if params.is_null() {
                    prop_assert!(parsed.unwrap().params().is_none());
                } else {
                    prop_assert_eq!(parsed.unwrap_err().code(), codes::INVALID_REQUEST);
                }
            }
        }
    }
}
