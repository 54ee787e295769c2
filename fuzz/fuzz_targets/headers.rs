//! Checks arbitrary mirrored headers against an arbitrary body, as the gateway does with every
//! stateless-era POST. The input is four lines and a body: `MCP-Protocol-Version`,
//! `Mcp-Method`, `Mcp-Name`, `Mcp-Param-Region` (an empty line: the header is absent), then
//! the JSON-RPC message. Any panic is a finding, and so is a request that passes although a
//! lenient upstream, reading the body with `serde_json::Value`, would route it differently
//! from its headers; and every value must survive the header encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_mcp::headers::{
    check_param_headers, decode_header_value, encode_header_value, name_source,
};
use portcullis_mcp::{Message, MirroredHeaders, check_mirrored_headers};
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(5, '\n');
    let mut header = || parts.next().filter(|h| !h.is_empty());
    let (version, method, name, region) = (header(), header(), header(), header());
    let body = parts.next().unwrap_or_default();

    for value in [version, method, name, region, Some(body)]
        .into_iter()
        .flatten()
    {
        let encoded = encode_header_value(value);
        assert!(
            encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "an encoded value is a valid header value: {encoded:?}"
        );
        assert_eq!(
            decode_header_value(&encoded).as_deref(),
            Ok(value),
            "round trip"
        );
    }

    let Ok(message) = Message::parse(body.as_bytes()) else {
        return;
    };
    let headers = MirroredHeaders {
        protocol_version: version,
        method,
        name,
    };
    if check_mirrored_headers(&headers, &message).is_ok() {
        if let Message::Request {
            method: body_method,
            ..
        } = &message
        {
            let lenient: Value = serde_json::from_str(body).expect("an accepted body is JSON");
            let params = &lenient["params"];
            assert_eq!(method, Some(body_method.as_str()));
            assert_eq!(
                lenient["method"].as_str(),
                method,
                "Mcp-Method routes elsewhere"
            );
            assert_eq!(
                params["_meta"]["io.modelcontextprotocol/protocolVersion"].as_str(),
                version,
                "MCP-Protocol-Version differs from the body's"
            );
            if let Some(source) = name_source(body_method) {
                let decoded = decode_header_value(name.expect("a name is required"))
                    .expect("an accepted Mcp-Name decodes");
                assert_eq!(
                    params[source].as_str(),
                    Some(decoded.as_ref()),
                    "Mcp-Name routes elsewhere"
                );
            }
        }
    }

    // Mcp-Param-Region against `arguments.region`, with the `execute_sql` schema of the spec.
    if let Some(Ok(call)) = message.tool_call() {
        let schema = json!({
            "type": "object",
            "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "query": {"type": "string"}
            }
        });
        let sent: Vec<(&str, &str)> = region
            .map(|r| ("mcp-param-region", r))
            .into_iter()
            .collect();
        if check_param_headers(sent, &schema, &call.arguments).is_ok() {
            let argument = call.arguments.get("region").filter(|v| !v.is_null());
            match (argument, region) {
                (None, None) => {}
                (Some(Value::String(s)), Some(r)) => {
                    assert_eq!(decode_header_value(r).as_deref(), Ok(s.as_str()));
                }
                (Some(Value::Number(n)), Some(r)) => {
                    let decoded = decode_header_value(r).expect("an accepted header decodes");
                    let header: f64 = decoded.trim().parse().expect("a number");
                    assert_eq!(Some(header), n.as_f64());
                }
                (Some(Value::Bool(b)), Some(r)) => {
                    assert_eq!(
                        decode_header_value(r).as_deref(),
                        Ok(b.to_string().as_str())
                    );
                }
                other => panic!("accepted a header that does not mirror the argument: {other:?}"),
            }
        }
    }
});
