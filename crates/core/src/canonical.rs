//! Canonical JSON (object keys sorted, no white space) and digests of it, so that the same
//! arguments always give the same fingerprint whatever order a client wrote them in.

use std::io::{self, Write};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Writes `value` as canonical JSON to `out`, without building it first when `out` is a hasher.
fn write(value: &Value, out: &mut impl Write) -> io::Result<()> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.write_all(b"{")?;
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, k)?;
                out.write_all(b":")?;
                write(v, out)?;
            }
            out.write_all(b"}")
        }
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write(v, out)?;
            }
            out.write_all(b"]")
        }
        // Scalars have one serialisation in serde_json; only objects need sorting.
        scalar => Ok(serde_json::to_writer(out, scalar)?),
    }
}

/// Hex SHA-256 of the canonical JSON of `value`.
pub fn digest(value: &Value) -> String {
    finish(Sha256::new(), value)
}

/// The fingerprint of a tool call: binds an approval to one tool and its exact arguments.
pub fn call_fingerprint(tool: &str, arguments: &Value) -> String {
    let mut hash = Sha256::new();
    hash.update(tool.as_bytes());
    hash.update([0]);
    finish(hash, arguments)
}

/// Whether `value` holds a number a fingerprint cannot tell apart from its neighbours: a whole
/// number of magnitude 2^63 or more that is not a 64-bit integer. JSON readers here round it
/// to a double (`10000000000000000000001` and `10000000000000000000002` read the same), while
/// an upstream may keep it exact (Python does).
pub fn holds_rounded_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            !(n.is_i64() || n.is_u64())
                && n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.abs() >= 9_223_372_036_854_775_808.0)
        }
        Value::Array(items) => items.iter().any(holds_rounded_integer),
        Value::Object(map) => map.values().any(holds_rounded_integer),
        _ => false,
    }
}

/// `hash`, continued with the canonical JSON of `value`, in hex.
fn finish(mut hash: Sha256, value: &Value) -> String {
    // Hashing cannot fail.
    let _ = write(value, &mut hash);
    format!("{:x}", hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The canonical JSON of `value`, as text.
    fn to_string(value: &Value) -> String {
        let mut out = Vec::new();
        write(value, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers_past_64_bits_are_told_apart_from_the_rest() {
        let big: Value =
            serde_json::from_str(r#"{"a": [1, {"n": 10000000000000000000001}]}"#).unwrap();
        assert!(holds_rounded_integer(&big));
        for fine in [
            json!({"n": u64::MAX, "m": i64::MIN, "f": 1.5e18, "s": "10000000000000000000001"}),
            json!([0.1, -3, null, true]),
        ] {
            assert!(!holds_rounded_integer(&fine), "{fine}");
        }
    }

    #[test]
    fn key_order_does_not_matter() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "s"}});
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#).unwrap();
        assert_eq!(
            to_string(&a),
            r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#
        );
        assert_eq!(digest(&a), digest(&b));
        assert_eq!(
            digest(&a),
            hex::encode(Sha256::digest(to_string(&a).as_bytes())),
            "the digest is of the canonical text"
        );
        let escaped = json!({"k\"\u{e9}\n": ["\u{1F600}", 1.5, -2, null, true]});
        assert_eq!(
            to_string(&escaped),
            serde_json::to_string(&escaped).unwrap()
        );
        assert_eq!(call_fingerprint("t", &a), call_fingerprint("t", &b));
        assert_ne!(call_fingerprint("t", &a), call_fingerprint("u", &a));
        assert_ne!(
            call_fingerprint("t", &a),
            call_fingerprint("t", &json!({"b": 2}))
        );
    }
}
