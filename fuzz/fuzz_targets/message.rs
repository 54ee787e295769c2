//! Parses arbitrary bytes as one JSON-RPC message, as the gateway does with every POST body
//! and every upstream answer. Any panic is a finding, and so is an accepted message that a
//! lenient upstream would read differently: the method, id, tool name and arguments the
//! gateway decides on must be the ones a `serde_json::Value` parse (duplicate members: the
//! last wins) reads, and no object the gateway reads may hold a member that an upstream
//! matching names regardless of case (Go's `encoding/json`) would take instead.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use portcullis_mcp::{Message, ProtocolEra, era, filter_tools_list, mrtr};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::parse(data) else {
        return;
    };

    // The encoding re-parses to the same message.
    let encoded = message.encode();
    let again = Message::parse(&encoded).expect("an encoded message parses");
    assert_eq!(again.encode(), encoded, "encoding is stable");

    // An accepted message is JSON; read as lenient upstreams read it: each object's members
    // (a repeated one: the last wins), then only the values the gateway decides on. Members it
    // does not read are not read here either: serde_json's `Value` holds no number past f64's
    // range, which a member the gateway skips may carry (its upstream reads or refuses it).
    serde_json::from_slice::<IgnoredAny>(data).expect("an accepted message is JSON");
    let envelope = members(std::str::from_utf8(data).expect("an accepted message is UTF-8"));
    for member in ["jsonrpc", "id", "method", "params", "result", "error"] {
        only_exact(&envelope, member);
    }
    assert_eq!(
        envelope
            .get("method")
            .map(|raw| value(raw))
            .as_ref()
            .and_then(Value::as_str),
        message.method(),
        "the method a lenient parser reads"
    );
    if let Some(id) = message.id() {
        assert_eq!(
            envelope.get("id").map(|raw| value(raw)),
            Some(serde_json::to_value(id).expect("ids serialise")),
            "the id a lenient parser reads"
        );
    }

    if let Some(Ok(call)) = message.tool_call() {
        let params = members(envelope["params"].get());
        for member in ["name", "arguments", "inputResponses", "requestState"] {
            only_exact(&params, member);
        }
        assert_eq!(
            params
                .get("name")
                .map(|raw| value(raw))
                .as_ref()
                .and_then(Value::as_str),
            Some(call.name.as_ref()),
            "the tool a lenient parser reads"
        );
        let arguments = match params.get("arguments").map(|raw| value(raw)) {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v) => v,
        };
        assert_eq!(
            arguments, call.arguments,
            "the arguments a lenient parser reads"
        );
        assert!(
            !call.name.contains('\0'),
            "a C-string reader would cut the name"
        );
    }

    // Everything else the gateway does with a message must not panic.
    let _ = era::detect(Some("2026-07-28"), &message);
    let _ = era::detect(None, &message);
    if let Some(result) = message.result() {
        let _ = filter_tools_list(result, |_| true, ProtocolEra::Stateless);
        let _ = filter_tools_list(
            result,
            |tool| {
                tool.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.len() % 2 == 0)
            },
            ProtocolEra::Session,
        );
        let _ = mrtr::InputRequired::from_result(result).map(|r| r.map(|r| r.request_methods()));
        let _ = portcullis_mcp::tools::call_result_is_error(result);
    }
    if let Some(params) = message.params() {
        let _ = mrtr::Retry::from_params(params);
        let _ = portcullis_mcp::meta::with_raw(params, "k", &Value::Bool(true));
    }
});

/// An object's members, raw; a repeated name keeps its last value.
fn members(text: &str) -> HashMap<String, Box<RawValue>> {
    serde_json::from_str(text).expect("an object the gateway read")
}

/// A member's value as `serde_json::Value` reads it.
fn value(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).expect("a value the gateway read")
}

/// An upstream that ignores case takes the last member whose name folds to `wanted`; the
/// gateway must have refused any object where that is not the member named exactly `wanted`.
fn only_exact(object: &HashMap<String, Box<RawValue>>, wanted: &str) {
    let matching: Vec<&String> = object.keys().filter(|k| go_equal_fold(k, wanted)).collect();
    assert!(
        matching.is_empty() || matching == [wanted],
        "members {matching:?} read as {wanted:?} to an upstream that ignores case"
    );
}

/// Go's `strings.EqualFold` against an ASCII name: ASCII case, plus the two non-ASCII
/// characters whose simple case folding reaches an ASCII letter (`ſ` is s, the Kelvin sign
/// is k).
fn go_equal_fold(name: &str, ascii: &str) -> bool {
    let mut chars = name.chars();
    for want in ascii.chars() {
        let Some(c) = chars.next() else {
            return false;
        };
        let c = match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            c => c,
        };
        if !c.eq_ignore_ascii_case(&want) {
            return false;
        }
    }
    chars.next().is_none()
}
