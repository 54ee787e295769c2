//! Policy JSON as text: a member name given twice in one object is an error.
//!
//! JSON readers keep one copy of a repeated name (serde_json and Postgres `jsonb` the last), so
//! `{"deny_if": [...], "deny_if": []}` would silently drop a rule. A security policy never loses
//! a key without a word: the repeated name is reported with its JSON pointer.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::error::{PolicyError, child, index};

/// Parses JSON text, refusing malformed JSON (one error with its line and column) and any
/// member name repeated within one object (its pointer).
pub fn parse(text: &str) -> Result<Value, PolicyError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| PolicyError::new("", format!("invalid JSON: {e}")))?;
    unique_keys(text)?;
    Ok(value)
}

/// Checks well-formed JSON text for a member name repeated within one object.
pub fn unique_keys(text: &str) -> Result<(), PolicyError> {
    let mut found = None;
    let mut reader = serde_json::Deserializer::from_str(text);
    let checked = Unique {
        pointer: String::new(),
        found: &mut found,
    }
    .deserialize(&mut reader);
    match (checked, found) {
        (_, Some(repeated)) => Err(repeated),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(PolicyError::new("", format!("invalid JSON: {e}"))),
    }
}

/// Walks one value, without building it, remembering the first repeated name.
struct Unique<'a> {
    pointer: String,
    found: &'a mut Option<PolicyError>,
}

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(Unique {
                pointer: index(&self.pointer, i),
                found: &mut *self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            let pointer = child(&self.pointer, &name);
            if seen.contains(&name) {
                *self.found = Some(PolicyError::new(
                    pointer,
                    format!(
                        "duplicate key {name:?}: a key may appear once in an object (a JSON \
                         reader would keep one copy and drop the other)"
                    ),
                ));
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(Unique {
                pointer,
                found: &mut *self.found,
            })?;
            seen.insert(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_are_reported_where_they_repeat() {
        let cases = [
            (
                r#"{"version":"1","tools":{"send":{"deny_if":[{"on_deny":"never"}],"deny_if":[]}}}"#,
                "/tools/send/deny_if",
            ),
            (r#"{"tools":{},"tools":{}}"#, "/tools"),
            (r#"{"a":[{"x":1},{"x":1,"x":2}]}"#, "/a/1/x"),
            (r#"{"a/b":{"~":1,"~":2}}"#, "/a~1b/~0"),
            (r#"{"é":1,"\u00e9":2}"#, "/é"),
        ];
        for (text, pointer) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.pointer, pointer, "{text}");
            assert!(err.message.starts_with("duplicate key"), "{}", err.message);
        }
        // The same name in different objects, and names differing in case, are fine.
        let ok = r#"{"a":{"x":1},"b":{"x":1},"X":[{"x":1},{"x":2}],"x":null}"#;
        assert_eq!(parse(ok).unwrap()["b"]["x"], 1);
        assert!(parse("{").unwrap_err().message.starts_with("invalid JSON"));
    }
}
