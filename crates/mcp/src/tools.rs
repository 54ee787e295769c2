//! Tools: reading a `tools/call`, filtering a `tools/list` result, and answering for a tool.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::era::ProtocolEra;
use crate::error::Error;
use crate::message::{self, Message, RequestId, codes};
use crate::method::names;
use crate::mrtr::{self, Retry};
use crate::raw_json::{self, CowStr, find_member, object_members, parse_strict, write_object};

/// `tools/list` result member holding the tools.
pub const TOOLS: &str = "tools";
/// Pagination cursor member of list results.
pub const NEXT_CURSOR: &str = "nextCursor";
/// Stateless-era cache scope member of cacheable results (`"public"` or `"private"`).
pub const CACHE_SCOPE: &str = "cacheScope";
/// Stateless-era cache lifetime member of cacheable results, in milliseconds.
pub const TTL_MS: &str = "ttlMs";
/// The cache scope of a list that differs per grant.
pub const CACHE_SCOPE_PRIVATE: &str = "private";

/// The members of `tools/call` params the gateway reads (or the upstream acts on).
const CALL_MEMBERS: [&str; 5] = [
    "name",
    "arguments",
    "_meta",
    "inputResponses",
    "requestState",
];

/// What the gateway decides on for a `tools/call`.
#[derive(Debug, Clone)]
pub struct ToolCall<'a> {
    /// The tool name, borrowed from the params unless it contains escapes.
    pub name: Cow<'a, str>,
    /// The arguments, always a JSON object (`{}` when absent or `null`).
    pub arguments: Value,
    /// Stateless era: set when this call retries an `input_required` round trip.
    pub retry: Retry<'a>,
}

/// The members of `tools/call` params the gateway reads, in one pass over them; member names
/// are read as upstreams that ignore case read them (`raw_json`).
struct CallParams<'a> {
    name: CowStr<'a>,
    arguments: Option<&'a RawValue>,
    input_responses: Option<&'a RawValue>,
    request_state: Option<CowStr<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for CallParams<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = CallParams<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tools/call params")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CallParams<'a>, A::Error> {
                let mut name = None;
                let (mut arguments, mut input_responses, mut request_state) = (None, None, None);
                let mut names = raw_json::Names::default();
                while let Some(CowStr(key)) = map.next_key()? {
                    names.add_among(&key, &CALL_MEMBERS)?;
                    match key.as_ref() {
                        "name" => name = Some(map.next_value::<CowStr<'a>>()?),
                        "arguments" => arguments = map.next_value()?,
                        "inputResponses" => input_responses = map.next_value()?,
                        "requestState" => request_state = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(CallParams {
                    name: name.ok_or_else(|| de::Error::missing_field("name"))?,
                    arguments,
                    input_responses,
                    request_state,
                })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> ToolCall<'a> {
    /// Reads a `tools/call` request's params.
    ///
    /// A missing or non-string `name`, non-object `arguments`, or a member name repeated at
    /// any depth of `params` or `arguments` is [`Error::InvalidParams`]: the gateway must
    /// see exactly the name and arguments the upstream will execute.
    pub fn from_params(params: Option<&'a RawValue>) -> Result<Self, Error> {
        let params =
            params.ok_or_else(|| Error::InvalidParams("tools/call needs params".into()))?;
        let p: CallParams<'a> = serde_json::from_str(params.get())
            .map_err(|e| Error::InvalidParams(format!("tools/call params: {e}")))?;
        let arguments = match p.arguments {
            None => Value::Object(Map::new()),
            Some(raw) if raw.get() == "null" => Value::Object(Map::new()),
            Some(raw) => match parse_strict(raw.get()) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    return Err(Error::InvalidParams(
                        "tools/call arguments must be an object".into(),
                    ));
                }
                Err(e) => return Err(Error::InvalidParams(format!("tools/call arguments: {e}"))),
            },
        };
        if p.name.0.chars().any(char::is_control) {
            // As for methods (`message`): a C-string reader would call another tool.
            return Err(Error::InvalidParams(
                "tools/call name must not contain control characters".into(),
            ));
        }
        Ok(ToolCall {
            name: p.name.0,
            arguments,
            retry: Retry {
                input_responses: p.input_responses,
                request_state: p.request_state.map(|s| s.0),
            },
        })
    }
}

/// Refuses an argument whose name the tool's schema does not declare at the top level but
/// which reads as a declared one to an upstream that ignores case (`"PATH"` where the schema
/// has `path`): the policy would look at one argument while the upstream runs with another.
pub fn check_argument_names(input_schema: &Value, arguments: &Value) -> Result<(), Error> {
    let (Some(declared), Value::Object(arguments)) = (
        input_schema.get("properties").and_then(Value::as_object),
        arguments,
    ) else {
        return Ok(());
    };
    for name in arguments.keys() {
        if declared.contains_key(name) {
            continue;
        }
        if let Some(meant) = declared.keys().find(|d| raw_json::same_name(d, name)) {
            return Err(Error::InvalidParams(format!(
                "argument {name:?} reads as the declared {meant:?} to upstreams that ignore case"
            )));
        }
    }
    Ok(())
}

/// The one of `known` (the server's discovered tools) that `name` is a case variant of, when
/// it is not one of them itself: an upstream that ignores case would run that tool, while
/// policy rules match names exactly (`"Delete_Repository"` for `delete_repository`).
pub fn case_variant<'k>(name: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    known
        .into_iter()
        .find(|k| *k != name && raw_json::same_name(k, name))
}

impl Message {
    /// The tool call of a `tools/call` request; `None` for any other message.
    pub fn tool_call(&self) -> Option<Result<ToolCall<'_>, Error>> {
        match self {
            Message::Request { method, params, .. } if method == names::TOOLS_CALL => {
                Some(ToolCall::from_params(params.as_deref()))
            }
            _ => None,
        }
    }
}

/// The `name` of a tool definition.
pub fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("name")?.as_str()
}

/// A rewritten `tools/list` result.
#[derive(Debug)]
pub struct FilteredTools {
    /// The result to send in place of the upstream's.
    pub result: Box<RawValue>,
    /// How many tools were kept.
    pub kept: usize,
    /// How many tools were removed.
    pub removed: usize,
}

fn shape(detail: impl Into<String>) -> Error {
    Error::UnexpectedShape(detail.into())
}

/// Removes the tools `keep` rejects from a raw `tools/list` result.
///
/// Every other member (`nextCursor`, `ttlMs`, `_meta`, …) and every kept tool is copied byte
/// for byte, so schemas keep their key order. In the stateless era the result is marked
/// `cacheScope: "private"` (a member of the result, per `CacheableResult`), because the list
/// now depends on the caller's grant. A tool whose definition repeats a member name is
/// removed without asking `keep`: the gateway cannot know which definition the client reads.
/// A result without a `tools` array is an error, so an unfiltered list never goes out.
pub fn filter_tools_list(
    result: &RawValue,
    mut keep: impl FnMut(&Value) -> bool,
    era: ProtocolEra,
) -> Result<FilteredTools, Error> {
    let members = object_members(result).map_err(|e| shape(format!("tools/list result: {e}")))?;
    let tools_raw = members
        .iter()
        .find(|(k, _)| k == TOOLS)
        .map(|(_, v)| *v)
        .ok_or_else(|| shape("tools/list result has no tools"))?;
    let tools: Vec<&RawValue> = serde_json::from_str(tools_raw.get())
        .map_err(|e| shape(format!("tools/list tools must be an array: {e}")))?;

    let mut array = String::with_capacity(tools_raw.get().len());
    array.push('[');
    let (mut kept, mut removed) = (0, 0);
    for tool in tools {
        let keep_it = match parse_strict(tool.get()) {
            Ok(value) => keep(&value),
            Err(_) => false,
        };
        if keep_it {
            if kept > 0 {
                array.push(',');
            }
            array.push_str(tool.get());
            kept += 1;
        } else {
            removed += 1;
        }
    }
    array.push(']');

    let private = format!("\"{CACHE_SCOPE_PRIVATE}\"");
    let stateless = era == ProtocolEra::Stateless;
    let mut out: Vec<(&str, &str)> = members
        .iter()
        .map(|(k, v)| match k.as_ref() {
            TOOLS => (TOOLS, array.as_str()),
            CACHE_SCOPE if stateless => (CACHE_SCOPE, private.as_str()),
            _ => (k.as_ref(), v.get()),
        })
        .collect();
    if stateless && !members.iter().any(|(k, _)| k == CACHE_SCOPE) {
        out.push((CACHE_SCOPE, private.as_str()));
    }
    let result = write_object(out).map_err(|e| shape(e.to_string()))?;
    Ok(FilteredTools {
        result,
        kept,
        removed,
    })
}

/// Whether a result carries a list of tools (a `tools` member; an unreadable result counts, so
/// that it is filtered, and refused, rather than passed on unread).
pub fn lists_tools(result: &RawValue) -> bool {
    find_member(result, TOOLS).map_or(true, |m| m.is_some())
}

/// [`filter_tools_list`] for a result that is already parsed; returns how many were removed.
pub fn filter_tools_list_value(
    result: &mut Value,
    mut keep: impl FnMut(&Value) -> bool,
    era: ProtocolEra,
) -> Result<usize, Error> {
    let Some(obj) = result.as_object_mut() else {
        return Err(shape("tools/list result is not an object"));
    };
    let Some(Value::Array(tools)) = obj.get_mut(TOOLS) else {
        return Err(shape("tools/list result has no tools array"));
    };
    let before = tools.len();
    tools.retain(|t| keep(t));
    let removed = before - tools.len();
    if era == ProtocolEra::Stateless {
        obj.insert(
            CACHE_SCOPE.into(),
            Value::String(CACHE_SCOPE_PRIVATE.into()),
        );
    }
    Ok(removed)
}

/// A tool result reporting a failure the model can read: `isError: true`, one text block.
///
/// `meta` goes under `_meta` (the gateway puts its decision there). The stateless era
/// requires `resultType` on every result, so it is added there.
pub fn tool_error_result(text: &str, meta: Option<Map<String, Value>>, era: ProtocolEra) -> Value {
    let mut result = json!({
        "content": [{ "type": "text", "text": text }],
        "isError": true,
    });
    if let Value::Object(obj) = &mut result {
        if let Some(meta) = meta {
            obj.insert(crate::meta::META.into(), Value::Object(meta));
        }
        if era == ProtocolEra::Stateless {
            obj.insert(
                mrtr::RESULT_TYPE.into(),
                Value::String(mrtr::COMPLETE.into()),
            );
        }
    }
    result
}

/// The full JSON-RPC response carrying [`tool_error_result`], for a denied `tools/call`.
pub fn tool_error_response(
    id: &RequestId,
    text: &str,
    meta: Option<Map<String, Value>>,
    era: ProtocolEra,
) -> Bytes {
    message::result_response(id, &tool_error_result(text, meta, era))
}

/// The error an MCP server gives for a tool it does not have; hidden tools answer with it.
pub fn unknown_tool_response(id: &RequestId, name: &str) -> Bytes {
    message::error_response(
        Some(id),
        codes::INVALID_PARAMS,
        &format!("Unknown tool: {name}"),
        None,
    )
}

/// Whether a `tools/call` result reports a tool failure (`isError`, absent means false).
pub fn call_result_is_error(result: &RawValue) -> Result<bool, Error> {
    match find_member(result, "isError").map_err(|e| shape(e.to_string()))? {
        None => Ok(false),
        Some(v) => {
            serde_json::from_str::<bool>(v.get()).map_err(|e| shape(format!("isError: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-07-28 `server/tools` listing response, with a second tool added.
    const STATELESS_LIST: &str = r#"{
      "jsonrpc": "2.0",
      "id": 1,
      "result": {
        "resultType": "complete",
        "tools": [
          {
            "name": "get_weather",
            "title": "Weather Information Provider",
            "description": "Get current weather information for a location",
            "inputSchema": {
              "type": "object",
              "properties": {
                "location": { "type": "string", "description": "City name or zip code" }
              },
              "required": ["location"]
            },
            "icons": [
              { "src": "https://example.com/weather-icon.png", "mimeType": "image/png", "sizes": ["48x48"] }
            ]
          },
          {
            "name": "delete_city",
            "inputSchema": { "type": "object" },
            "annotations": { "destructiveHint": true }
          }
        ],
        "nextCursor": "next-page-cursor",
        "ttlMs": 300000,
        "cacheScope": "public"
      }
    }"#;

    /// 2025-11-25 `server/tools` listing response (no `resultType`, no cache fields).
    const SESSION_LIST: &str = r#"{
      "jsonrpc": "2.0",
      "id": 1,
      "result": {
        "tools": [
          {
            "name": "get_weather",
            "title": "Weather Information Provider",
            "description": "Get current weather information for a location",
            "inputSchema": {
              "type": "object",
              "properties": {
                "location": { "type": "string", "description": "City name or zip code" }
              },
              "required": ["location"]
            }
          }
        ],
        "nextCursor": "next-page-cursor"
      }
    }"#;

    /// 2025-11-25 `server/tools` call request.
    const SESSION_CALL: &str = r#"{
      "jsonrpc": "2.0",
      "id": 2,
      "method": "tools/call",
      "params": {
        "name": "get_weather",
        "arguments": { "location": "New York" }
      }
    }"#;

    /// 2026-07-28 `transports/streamable-http` call request with its `_meta`.
    const STATELESS_CALL: &str = r#"{
      "jsonrpc": "2.0",
      "id": 1,
      "method": "tools/call",
      "params": {
        "name": "get_weather",
        "arguments": { "location": "Seattle, WA" },
        "_meta": {
          "io.modelcontextprotocol/protocolVersion": "2026-07-28",
          "io.modelcontextprotocol/clientInfo": { "name": "ExampleClient", "version": "1.0.0" },
          "io.modelcontextprotocol/clientCapabilities": {}
        }
      }
    }"#;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn result_of(response: &str) -> Box<RawValue> {
        match Message::parse(response.as_bytes()).unwrap() {
            Message::Response { result, .. } => result,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_spec_tool_calls() {
        for (input, location) in [(SESSION_CALL, "New York"), (STATELESS_CALL, "Seattle, WA")] {
            let msg = Message::parse(input.as_bytes()).unwrap();
            let call = msg.tool_call().unwrap().unwrap();
            assert_eq!(call.name, "get_weather");
            assert!(matches!(call.name, Cow::Borrowed(_)));
            assert_eq!(call.arguments, json!({ "location": location }));
            assert!(!call.retry.is_retry());
        }
        let list = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
        assert!(list.tool_call().is_none());
    }

    #[test]
    fn argument_names_may_not_be_case_variants_of_declared_ones() {
        let schema = json!({"type": "object", "properties": {"path": {}, "Mode": {}, "size": {}}});
        for ok in [
            json!({"path": "/tmp"}),
            json!({"Mode": 1, "other": 2}),
            json!({}),
        ] {
            check_argument_names(&schema, &ok).unwrap();
        }
        for bad in [
            json!({"PATH": "/etc"}),
            json!({"mode": 1}),
            json!({"\u{17f}ize": 1}),
        ] {
            assert!(check_argument_names(&schema, &bad).is_err(), "{bad}");
        }
        check_argument_names(&json!({"type": "object"}), &json!({"PATH": 1})).unwrap();
    }

    #[test]
    fn tool_names_that_are_case_variants_of_discovered_ones_are_found() {
        let known = ["delete_repository", "list_issues"];
        assert_eq!(case_variant("new_tool", known), None);
        assert_eq!(case_variant("list_issues", known), None);
        for variant in ["Delete_Repository", "LIST_ISSUES", "li\u{17f}t_issues"] {
            assert!(case_variant(variant, known).is_some(), "{variant}");
        }
    }

    #[test]
    fn tool_call_params_table() {
        // (params, Ok(name, arguments) or Err)
        type Expected = Option<(&'static str, Value)>;
        let cases: &[(Option<&str>, Expected)] = &[
            (Some(r#"{"name":"t"}"#), Some(("t", json!({})))),
            (
                Some(r#"{"name":"t","arguments":null}"#),
                Some(("t", json!({}))),
            ),
            (
                Some(r#"{"name":"t\u00e9","arguments":{"a":{"b":[1]}}}"#),
                Some(("té", json!({"a":{"b":[1]}}))),
            ),
            (
                Some(r#"{"name":"t","arguments":{},"task":{"ttl":1},"_meta":{}}"#),
                Some(("t", json!({}))),
            ),
            (None, None),
            (Some(r#"{}"#), None),
            (Some(r#"{"name":7}"#), None),
            (Some(r#"{"name":null}"#), None),
            (Some(r#"{"name":"t","arguments":[1]}"#), None),
            (Some(r#"{"name":"t","arguments":"x"}"#), None),
            (Some(r#"{"name":"safe","name":"evil"}"#), None),
            // Case variants, as an upstream that ignores case reads them (Go's encoding/json).
            (Some(r#"{"name":"read_file","NAME":"delete_file"}"#), None),
            (
                Some("{\"name\":\"t\",\"argument\\u017f\":{\"path\":\"/etc\"}}"),
                None,
            ),
            (
                Some(r#"{"name":"t","arguments":{"path":"/tmp","PATH":"/etc"}}"#),
                None,
            ),
            (
                Some(r#"{"name":"t","arguments":{"To":"+44","To":"+1"}}"#),
                None,
            ),
            (
                Some(r#"{"name":"t","arguments":{"a":{"b":1,"b":2}}}"#),
                None,
            ),
            (Some(r#"{"name":"t","arguments":{},"arguments":{}}"#), None),
            (Some(r#"[]"#), None),
            // Read as C strings, these name another tool or member than they seem to.
            (Some(r#"{"name":"delete_repo\u0000"}"#), None),
            (Some(r#"{"name":"delete_repo\u0000x"}"#), None),
            (Some(r#"{"name":"read\nfile"}"#), None),
            (Some(r#"{"name":"t","name\u0000":"u"}"#), None),
            (
                Some(r#"{"name":"t","arguments":{"path":"/tmp","path\u0000":"/etc"}}"#),
                None,
            ),
        ];
        for (params, expected) in cases {
            let raw_params = params.map(raw);
            let got = ToolCall::from_params(raw_params.as_deref());
            match (got, expected) {
                (Ok(call), Some((name, args))) => {
                    assert_eq!(call.name, *name, "{params:?}");
                    assert_eq!(&call.arguments, args, "{params:?}");
                }
                (Err(e), None) => assert_eq!(e.code(), codes::INVALID_PARAMS, "{params:?}"),
                (got, expected) => panic!("{params:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn filters_stateless_list_and_marks_it_private() {
        let result = result_of(STATELESS_LIST);
        let mut seen = Vec::new();
        let filtered = filter_tools_list(
            &result,
            |t| {
                seen.push(tool_name(t).unwrap().to_owned());
                tool_name(t) != Some("delete_city")
            },
            ProtocolEra::Stateless,
        )
        .unwrap();
        assert_eq!(seen, ["get_weather", "delete_city"]);
        assert_eq!((filtered.kept, filtered.removed), (1, 1));
        let v: Value = serde_json::from_str(filtered.result.get()).unwrap();
        assert_eq!(v["nextCursor"], json!("next-page-cursor"));
        assert_eq!(v["ttlMs"], json!(300000));
        assert_eq!(v["resultType"], json!("complete"));
        assert_eq!(v["cacheScope"], json!("private"));
        assert_eq!(v["tools"].as_array().unwrap().len(), 1);
        assert_eq!(v["tools"][0]["name"], json!("get_weather"));
        // The kept tool's bytes are untouched, key order and whitespace included.
        let original: Vec<&RawValue> =
            serde_json::from_str(find_member(&result, "tools").unwrap().unwrap().get()).unwrap();
        assert!(filtered.result.get().contains(original[0].get()));
        // Member order of the result is kept too.
        let text = filtered.result.get();
        let pos = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
        assert!(pos("resultType") < pos("tools") && pos("nextCursor") < pos("cacheScope"));
    }

    #[test]
    fn filters_session_list_without_cache_scope() {
        let result = result_of(SESSION_LIST);
        let filtered = filter_tools_list(&result, |_| true, ProtocolEra::Session).unwrap();
        assert_eq!((filtered.kept, filtered.removed), (1, 0));
        let v: Value = serde_json::from_str(filtered.result.get()).unwrap();
        assert_eq!(v, serde_json::from_str::<Value>(result.get()).unwrap());
        assert!(v.get("cacheScope").is_none());

        let none = filter_tools_list(&result, |_| false, ProtocolEra::Session).unwrap();
        let v: Value = serde_json::from_str(none.result.get()).unwrap();
        assert_eq!(v, json!({"tools": [], "nextCursor": "next-page-cursor"}));
    }

    #[test]
    fn stateless_filter_adds_cache_scope_when_missing() {
        let result = raw(r#"{"tools":[],"ttlMs":0}"#);
        let filtered = filter_tools_list(&result, |_| true, ProtocolEra::Stateless).unwrap();
        assert_eq!(
            filtered.result.get(),
            r#"{"tools":[],"ttlMs":0,"cacheScope":"private"}"#
        );
    }

    #[test]
    fn filter_fails_closed() {
        for input in [
            r#"{"nextCursor":"c"}"#,
            r#"{"tools":{}}"#,
            r#"{"tools":null}"#,
            r#"[]"#,
            r#"{"tools":[],"tools":[{"name":"x"}]}"#,
        ] {
            let err = filter_tools_list(&raw(input), |_| true, ProtocolEra::Session).unwrap_err();
            assert!(matches!(err, Error::UnexpectedShape(_)), "{input}");
            assert_eq!(err.http_status(), 502);
        }
        // A tool with a repeated member is removed without consulting `keep`.
        let result = raw(r#"{"tools":[{"name":"a","name":"b"},{"name":"c"}]}"#);
        let mut calls = 0;
        let filtered = filter_tools_list(
            &result,
            |_| {
                calls += 1;
                true
            },
            ProtocolEra::Session,
        )
        .unwrap();
        assert_eq!((calls, filtered.kept, filtered.removed), (1, 1, 1));
        assert_eq!(filtered.result.get(), r#"{"tools":[{"name":"c"}]}"#);
    }

    #[test]
    fn filters_parsed_values() {
        let mut v =
            json!({"tools":[{"name":"a"},{"name":"b"}],"nextCursor":"n","cacheScope":"public"});
        let removed = filter_tools_list_value(
            &mut v,
            |t| tool_name(t) == Some("a"),
            ProtocolEra::Stateless,
        )
        .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(
            v,
            json!({"tools":[{"name":"a"}],"nextCursor":"n","cacheScope":"private"})
        );
        let mut session = json!({"tools":[{"name":"a"}]});
        assert_eq!(
            filter_tools_list_value(&mut session, |_| false, ProtocolEra::Session).unwrap(),
            1
        );
        assert_eq!(session, json!({"tools":[]}));
        assert!(filter_tools_list_value(&mut json!({}), |_| true, ProtocolEra::Session).is_err());
        assert!(filter_tools_list_value(&mut json!(1), |_| true, ProtocolEra::Session).is_err());
    }

    #[test]
    fn builds_denials() {
        let mut meta = Map::new();
        meta.insert("dev.portcullis/decision".into(), json!({"decision":"deny"}));
        let session = tool_error_result(
            "[POLICY DENIED] no",
            Some(meta.clone()),
            ProtocolEra::Session,
        );
        assert_eq!(
            session,
            json!({
                "content":[{"type":"text","text":"[POLICY DENIED] no"}],
                "isError":true,
                "_meta":{"dev.portcullis/decision":{"decision":"deny"}}
            })
        );
        let stateless = tool_error_result("x", None, ProtocolEra::Stateless);
        assert_eq!(stateless["resultType"], json!("complete"));
        assert!(stateless.get("_meta").is_none());

        let bytes = tool_error_response(&7.into(), "x", Some(meta), ProtocolEra::Legacy);
        let msg = Message::parse(&bytes).unwrap();
        assert_eq!(msg.id(), Some(&RequestId::from(7)));
        assert!(call_result_is_error(msg.result().unwrap()).unwrap());

        let unknown: Value =
            serde_json::from_slice(&unknown_tool_response(&"a".into(), "delete_all")).unwrap();
        assert_eq!(
            unknown,
            json!({"jsonrpc":"2.0","id":"a","error":{"code":-32602,"message":"Unknown tool: delete_all"}})
        );
    }

    #[test]
    fn reads_is_error() {
        for (input, expected) in [
            (r#"{"content":[]}"#, Some(false)),
            (r#"{"content":[],"isError":false}"#, Some(false)),
            (r#"{"content":[],"isError":true}"#, Some(true)),
            (r#"{"isError":"yes"}"#, None),
        ] {
            assert_eq!(call_result_is_error(&raw(input)).ok(), expected, "{input}");
        }
    }
}
