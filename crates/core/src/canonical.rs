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
