//! The `_meta` member of params and results: reserved keys, reading and writing.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::raw_json::{self, find_member, member_str, object_members, write_object};

/// The member name that carries metadata in params, results and notifications.
pub const META: &str = "_meta";

/// `_meta` keys reserved by the MCP specification (2026-07-28 `basic/index`).
pub mod keys {
    /// Opts a request into progress notifications.
    pub const PROGRESS_TOKEN: &str = "progressToken";
    /// Stateless era, required on every request: the protocol version of this request.
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    /// Stateless era, optional: the client's name and version (self-reported, untrusted).
    pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
    /// Stateless era, required on every request: the client's capabilities for this request.
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    /// Stateless era, optional (deprecated): minimum log level for this request.
    pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
    /// Stateless era: correlates a notification with its `subscriptions/listen` request.
    pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
    /// Stateless era, on results: the server's name and version (self-reported, untrusted).
    pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
    /// W3C trace context, exempt from the prefix rule.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// W3C baggage.
    pub const BAGGAGE: &str = "baggage";
}

fn bad(e: &serde_json::Error) -> Error {
    Error::InvalidParams(format!("malformed {META}: {e}"))
}

/// Reads `_meta[key]` from a raw params or result object without building a tree.
///
/// `Ok(None)` when `_meta` or the key is absent (or `_meta` is not an object); malformed
/// JSON or duplicate keys are [`Error::InvalidParams`].
pub fn get_raw<'a>(obj: &'a RawValue, key: &str) -> Result<Option<&'a RawValue>, Error> {
    match find_member(obj, META).map_err(|e| bad(&e))? {
        None => Ok(None),
        Some(meta) => find_member(meta, key).map_err(|e| bad(&e)),
    }
}

/// Reads a string-valued `_meta[key]` from a raw object; a non-string value is an error.
pub fn get_str<'a>(obj: &'a RawValue, key: &str) -> Result<Option<Cow<'a, str>>, Error> {
    match find_member(obj, META).map_err(|e| bad(&e))? {
        None => Ok(None),
        Some(meta) => member_str(meta, key)
            .map_err(|e| Error::InvalidParams(format!("{META}.{key} must be a string: {e}"))),
    }
}

/// Reads `_meta[key]` from a parsed object.
pub fn get<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get(META)?.get(key)
}

/// Sets `_meta[key]` on a parsed object, creating `_meta` when missing; returns the old value.
///
/// Fails when `obj` or its existing `_meta` is not an object, rather than clobbering it.
pub fn insert(obj: &mut Value, key: &str, value: Value) -> Result<Option<Value>, Error> {
    let Value::Object(map) = obj else {
        return Err(Error::InvalidParams("expected a JSON object".into()));
    };
    let meta = map.entry(META).or_insert_with(|| Value::Object(Map::new()));
    match meta {
        Value::Object(m) => Ok(m.insert(key.to_owned(), value)),
        _ => Err(Error::InvalidParams(format!("{META} is not an object"))),
    }
}

/// Returns a copy of a raw object with `_meta[key]` set, every other byte kept as it was.
///
/// This is how the gateway adds metadata to a message it otherwise forwards untouched.
pub fn with_raw(obj: &RawValue, key: &str, value: &Value) -> Result<Box<RawValue>, Error> {
    let members = object_members(obj).map_err(|e| bad(&e))?;
    let value_text = value.to_string();
    let mut new_meta: Option<Box<RawValue>> = None;
    for (k, v) in &members {
        if k == META {
            if !v.get().starts_with('{') {
                return Err(Error::InvalidParams(format!("{META} is not an object")));
            }
            let meta_members = object_members(v).map_err(|e| bad(&e))?;
            let replaced = meta_members.iter().any(|(mk, _)| mk == key);
            let mut out: Vec<(&str, &str)> = meta_members
                .iter()
                .map(|(mk, mv)| {
                    if mk == key {
                        (mk.as_ref(), value_text.as_str())
                    } else {
                        (mk.as_ref(), mv.get())
                    }
                })
                .collect();
            if !replaced {
                out.push((key, value_text.as_str()));
            }
            new_meta = Some(write_object(out).map_err(|e| bad(&e))?);
        }
    }
    let created;
    let meta_text = match &new_meta {
        Some(m) => m.get(),
        None => {
            let mut s = String::from("{");
            raw_json::push_json_string(&mut s, key);
            s.push(':');
            s.push_str(&value_text);
            s.push('}');
            created = s;
            created.as_str()
        }
    };
    let mut out: Vec<(&str, &str)> = members
        .iter()
        .map(|(k, v)| {
            if k == META {
                (k.as_ref(), meta_text)
            } else {
                (k.as_ref(), v.get())
            }
        })
        .collect();
    if new_meta.is_none() {
        out.push((META, meta_text));
    }
    write_object(out).map_err(|e| bad(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn reads_raw_meta() {
        let params = raw(
            r#"{"name":"get_weather","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":5}}"#,
        );
        assert_eq!(
            get_str(&params, keys::PROTOCOL_VERSION).unwrap().unwrap(),
            "2026-07-28"
        );
        assert_eq!(
            get_raw(&params, keys::PROGRESS_TOKEN)
                .unwrap()
                .unwrap()
                .get(),
            "5"
        );
        assert!(get_raw(&params, keys::CLIENT_INFO).unwrap().is_none());
        assert!(get_str(&params, keys::PROGRESS_TOKEN).is_err());
        assert!(
            get_raw(&raw(r#"{"a":1}"#), keys::PROGRESS_TOKEN)
                .unwrap()
                .is_none()
        );
        assert!(
            get_raw(&raw(r#"{"_meta":7}"#), keys::PROGRESS_TOKEN)
                .unwrap()
                .is_none()
        );
        let dup = raw(r#"{"_meta":{"progressToken":1,"progressToken":2}}"#);
        assert!(matches!(
            get_raw(&dup, keys::PROGRESS_TOKEN),
            Err(Error::InvalidParams(_))
        ));
    }

    #[test]
    fn reads_and_writes_parsed_meta() {
        let mut v = json!({"content": []});
        assert_eq!(get(&v, "k"), None);
        assert_eq!(insert(&mut v, "k", json!(1)).unwrap(), None);
        assert_eq!(insert(&mut v, "k", json!(2)).unwrap(), Some(json!(1)));
        assert_eq!(get(&v, "k"), Some(&json!(2)));
        assert_eq!(v, json!({"content": [], "_meta": {"k": 2}}));
        assert!(insert(&mut json!([]), "k", json!(1)).is_err());
        assert!(insert(&mut json!({"_meta": "x"}), "k", json!(1)).is_err());
    }

    #[test]
    fn rewrites_raw_meta_keeping_other_bytes() {
        let cases = [
            (
                r#"{"b": [1, 2], "a":"x"}"#,
                r#"{"b":[1, 2],"a":"x","_meta":{"traceparent":"t"}}"#,
            ),
            (
                r#"{"_meta": {"z": 1.50}, "n": 1}"#,
                r#"{"_meta":{"z":1.50,"traceparent":"t"},"n":1}"#,
            ),
            (
                r#"{"_meta":{"traceparent":"old","y":true}}"#,
                r#"{"_meta":{"traceparent":"t","y":true}}"#,
            ),
        ];
        for (input, expected) in cases {
            let out = with_raw(&raw(input), keys::TRACEPARENT, &json!("t")).unwrap();
            assert_eq!(out.get(), expected, "{input}");
        }
        assert!(with_raw(&raw(r#"{"_meta":[]}"#), "k", &json!(1)).is_err());
        assert!(with_raw(&raw("[]"), "k", &json!(1)).is_err());
    }
}
