//! Reading and rewriting raw JSON objects without building `Value` trees.
//!
//! Every reader here rejects an object that repeats a member name: JSON parsers disagree on
//! which duplicate wins, and a gateway that reads a different `name` than the upstream
//! executes would enforce policy on the wrong tool. Names are compared as the most lenient
//! upstreams read them: Go's `encoding/json` matches a member to a field regardless of case,
//! with Unicode case folding (`ſ` reads as `s`, the Kelvin sign as `k`), and the last match
//! wins. So `{"name":"read_file","NAME":"delete_file"}` repeats `name`, and a lone `"NAME"`
//! where the gateway looks for `name` is refused rather than overlooked.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// A string that borrows from the input when it has no escapes (serde's own `Cow` impl
/// always allocates).
pub(crate) struct CowStr<'de>(pub(crate) Cow<'de, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A member name as an upstream that ignores case reads it. Go's `encoding/json` maps each
/// character to one representative of its simple case-folding orbit, so `ſ`, `S` and `s` are
/// one, as are the Kelvin sign, `K` and `k`, and `ß` and `ẞ`; `ß` and `ss` are not (that
/// would be full folding). Here each character becomes the lower case of its upper case,
/// where each of those is one character (the simple mappings). Borrowed when the name is
/// already in that form, as nearly every name is.
pub(crate) fn fold(name: &str) -> Cow<'_, str> {
    if !name
        .bytes()
        .any(|b| b.is_ascii_uppercase() || !b.is_ascii())
    {
        return Cow::Borrowed(name);
    }
    if name.is_ascii() {
        return Cow::Owned(name.to_ascii_lowercase());
    }
    Cow::Owned(name.chars().map(fold_char).collect())
}

/// One character's representative: its simple upper case, then that one's simple lower case.
fn fold_char(c: char) -> char {
    // Orbits that simple case folding has and the case mappings do not (CaseFolding.txt, S).
    let c = match c {
        '\u{1FD3}' => '\u{0390}',
        '\u{1FE3}' => '\u{03B0}',
        '\u{FB05}' => '\u{FB06}',
        c => c,
    };
    // Where the full mapping is several characters (`ß` → `SS`), the simple one is the
    // character itself or, for Greek with a subscript iota, a character whose lower case is
    // the same as this one's: keeping the character gives the same representative.
    let upper = single(c.to_uppercase()).unwrap_or(c);
    single(upper.to_lowercase()).unwrap_or(upper)
}

fn single(mut chars: impl ExactSizeIterator<Item = char>) -> Option<char> {
    if chars.len() == 1 { chars.next() } else { None }
}

/// Whether two member names read the same to an upstream that ignores case.
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    if a.len() == b.len() && a.eq_ignore_ascii_case(b) {
        return true;
    }
    if a.is_ascii() && b.is_ascii() {
        return false;
    }
    fold(a) == fold(b)
}

/// The member names of one object so far, as upstreams read them (folded).
#[derive(Default)]
pub(crate) struct Names<'a> {
    few: Vec<Cow<'a, str>>,
    /// Past [`Names::FEW`] names, a set: an object of many members must not cost a scan each.
    many: HashSet<Cow<'a, str>>,
}

impl<'a> Names<'a> {
    const FEW: usize = 16;

    /// Adds a name; an error when one that reads the same came before.
    #[allow(clippy::ptr_arg)] // A borrowed name is kept with its lifetime, which `&str` loses.
    pub(crate) fn add<E: de::Error>(&mut self, name: &Cow<'a, str>) -> Result<(), E> {
        if name.contains('\0') {
            // A parser that reads C strings ends the name there: `"name\u0000x"` is its `name`.
            return Err(E::custom(format_args!(
                "member name {name:?} contains U+0000 (upstreams that read C strings cut it there)"
            )));
        }
        let folded = match name {
            Cow::Borrowed(name) => fold(name),
            Cow::Owned(name) => Cow::Owned(fold(name).into_owned()),
        };
        let fresh = if self.few.len() < Self::FEW {
            let fresh = !self.few.contains(&folded);
            if fresh {
                self.few.push(folded);
            }
            fresh
        } else {
            if self.many.is_empty() {
                self.many.extend(self.few.iter().cloned());
            }
            self.many.insert(folded)
        };
        if fresh {
            Ok(())
        } else {
            Err(E::custom(format_args!(
                "duplicate member {name:?} (member names are compared regardless of case)"
            )))
        }
    }

    /// Adds the name of a member of an object whose members `known` the gateway reads: it may
    /// not repeat another, nor be a case variant of one of `known` (the gateway would overlook
    /// a member the upstream uses).
    #[allow(clippy::ptr_arg)] // As for `add`.
    pub(crate) fn add_among<E: de::Error>(
        &mut self,
        name: &Cow<'a, str>,
        known: &[&str],
    ) -> Result<(), E> {
        self.add(name)?;
        if known.contains(&name.as_ref()) {
            return Ok(());
        }
        match known.iter().find(|k| same_name(k, name)) {
            Some(k) => Err(E::custom(format_args!(
                "member {name:?} reads as {k:?} to upstreams that ignore case"
            ))),
            None => Ok(()),
        }
    }
}

/// Finds one member of a raw JSON object; `Ok(None)` when absent or when `obj` is not an object.
pub(crate) fn find_member<'a>(
    obj: &'a RawValue,
    key: &str,
) -> Result<Option<&'a RawValue>, serde_json::Error> {
    if !obj.get().starts_with('{') {
        return Ok(None);
    }
    let mut de = serde_json::Deserializer::from_str(obj.get());
    FindMember { key }.deserialize(&mut de)
}

struct FindMember<'k> {
    key: &'k str,
}

impl<'de> DeserializeSeed<'de> for FindMember<'_> {
    type Value = Option<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FindMember<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(CowStr(k)) = map.next_key()? {
            if k == self.key {
                if found.is_some() {
                    return Err(de::Error::custom(format_args!("duplicate member {k:?}")));
                }
                found = Some(map.next_value::<&'de RawValue>()?);
            } else if same_name(&k, self.key) {
                return Err(de::Error::custom(format_args!(
                    "member {k:?} reads as {:?} to upstreams that ignore case",
                    self.key
                )));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Reads a raw member as a string; `Ok(None)` when absent, an error when not a string.
pub(crate) fn member_str<'a>(
    obj: &'a RawValue,
    key: &str,
) -> Result<Option<Cow<'a, str>>, serde_json::Error> {
    match find_member(obj, key)? {
        None => Ok(None),
        Some(raw) => CowStr::deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
            .map(|s| Some(s.0)),
    }
}

/// The members of a raw JSON object, in document order.
pub(crate) type Members<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// Splits a raw JSON object into its members, keeping each value's bytes.
pub(crate) fn object_members(obj: &RawValue) -> Result<Members<'_>, serde_json::Error> {
    struct MembersVisitor;
    impl<'de> Visitor<'de> for MembersVisitor {
        type Value = Members<'de>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Members<'de> = Vec::new();
            let mut names = Names::default();
            while let Some(CowStr(k)) = map.next_key()? {
                names.add(&k)?;
                let v = map.next_value::<&'de RawValue>()?;
                out.push((k, v));
            }
            Ok(out)
        }
    }
    serde_json::Deserializer::from_str(obj.get()).deserialize_map(MembersVisitor)
}

/// Writes members back as a compact JSON object; values are copied verbatim.
pub(crate) fn write_object<'v>(
    members: impl IntoIterator<Item = (&'v str, &'v str)>,
) -> Result<Box<RawValue>, serde_json::Error> {
    let mut out = String::from("{");
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, k);
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
    RawValue::from_string(out)
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// Parses a JSON value, rejecting any object (at any depth) that repeats a member name.
pub(crate) fn parse_strict(raw: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let value = StrictValue::deserialize(&mut de)?.0;
    de.end()?;
    Ok(value)
}

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut names = Names::default();
        while let Some(CowStr(k)) = map.next_key()? {
            names.add(&k)?;
            let StrictValue(v) = map.next_value()?;
            out.insert(k.into_owned(), v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn finds_members() {
        let obj = raw(r#"{"a":1,"_meta":{"k":"v"},"s":"x\"y"}"#);
        assert_eq!(
            find_member(&obj, "_meta").unwrap().unwrap().get(),
            r#"{"k":"v"}"#
        );
        assert!(find_member(&obj, "missing").unwrap().is_none());
        assert_eq!(member_str(&obj, "s").unwrap().unwrap(), "x\"y");
        assert!(member_str(&obj, "a").is_err());
        assert!(find_member(&raw("[1]"), "a").unwrap().is_none());
        assert!(find_member(&raw(r#"{"a":1,"a":2}"#), "a").is_err());
        // Escaped member names are matched by their decoded text.
        assert_eq!(
            find_member(&raw(r#"{"n\u0061me":"t"}"#), "name")
                .unwrap()
                .unwrap()
                .get(),
            r#""t""#
        );
    }

    #[test]
    fn splits_and_rewrites_objects() {
        let obj = raw(r#"{ "z" : [1, 2], "a\n": {"x": 1.50} }"#);
        let members = object_members(&obj).unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].0, "z");
        assert_eq!(members[1].1.get(), r#"{"x": 1.50}"#);
        let back = write_object(members.iter().map(|(k, v)| (k.as_ref(), v.get()))).unwrap();
        assert_eq!(back.get(), r#"{"z":[1, 2],"a\n":{"x": 1.50}}"#);
        assert!(object_members(&raw(r#"{"a":1,"a":1}"#)).is_err());
        assert!(object_members(&raw("[]")).is_err());
    }

    #[test]
    fn strict_parse_rejects_duplicates_at_any_depth() {
        assert_eq!(
            parse_strict(r#"{"a":[{"b":1}],"c":null}"#).unwrap(),
            json!({"a":[{"b":1}],"c":null})
        );
        assert!(parse_strict(r#"{"a":1,"a":1}"#).is_err());
        assert!(parse_strict(r#"{"x":[{"b":1,"b":2}]}"#).is_err());
        assert!(parse_strict(r#"{"x":{"y":{"z":1,"z":1}}}"#).is_err());
        assert!(parse_strict(r#"{"a":1} x"#).is_err());
    }

    #[test]
    fn names_that_differ_only_in_case_are_the_same_name() {
        // As Go's encoding/json reads them: ASCII case, `ſ` (U+017F) for s, Kelvin sign for k.
        for dup in [
            r#"{"name":"a","NAME":"b"}"#,
            r#"{"path":"a","x":{},"Path":"b"}"#,
            "{\"arguments\":{},\"argument\\u017f\":{}}",
            "{\"kind\":1,\"\\u212aind\":2}",
        ] {
            assert!(parse_strict(dup).is_err(), "{dup}");
            assert!(object_members(&raw(dup)).is_err(), "{dup}");
        }
        assert!(parse_strict(r#"{"x":[{"b":1,"B":2}]}"#).is_err());
        // One simple case-folding orbit each, as Go reads them; `ß` is not `ss` there.
        for (a, b) in [
            ("straße", "STRAẞE"),
            ("ıd", "id"),
            ("ǅx", "ǆx"),
            ("ᾳ", "ᾼ"),
            ("\u{1FD3}", "\u{0390}"),
            ("µ", "μ"),
            ("θ", "ϑ"),
            ("Å", "\u{212B}"),
        ] {
            assert!(same_name(a, b), "{a} {b}");
            let dup = format!(r#"{{"{a}":1,"{b}":2}}"#);
            assert!(parse_strict(&dup).is_err(), "{dup}");
        }
        for (a, b) in [("straße", "strasse"), ("İd", "id"), ("ﬀ", "ff")] {
            assert!(!same_name(a, b), "{a} {b}");
        }
        assert!(parse_strict(r#"{"name":"a","names":"b","nam":"c"}"#).is_ok());
        // Many members: still one lookup each, still refused when one repeats.
        let many: String = (0..10_000).map(|i| format!("\"k{i}\":{i},")).collect();
        assert!(parse_strict(&format!("{{{many}\"K9999\":0}}")).is_err());
        assert!(parse_strict(&format!("{{{many}\"last\":0}}")).is_ok());

        // A lone case variant of a member the gateway reads is refused, not overlooked (and
        // so in messages and tools/call params: their tests).
        assert!(find_member(&raw(r#"{"NAME":"x"}"#), "name").is_err());
        assert!(find_member(&raw(r#"{"name":"x","named":"y"}"#), "name").is_ok());
    }

    /// Property tests: no input panics, and what the gateway accepts reads the same to the
    /// most lenient upstreams: `serde_json::Value` (a repeated member: the last one wins) and
    /// Go's `encoding/json` (a member matches a field regardless of case, the last one wins).
    mod props {
        use super::*;
        use crate::message::Message;
        use proptest::prelude::*;

        /// Member names as JSON text (escapes included): the names the gateway reads, their
        /// case variants (ASCII, `ſ` for s, the Kelvin sign for k), escaped spellings, a
        /// name with U+0000, and names it ignores.
        fn name_text() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "name",
                "NAME",
                "Name",
                "n\\u0061me",
                "name\\u0000",
                "arguments",
                "Arguments",
                "argument\\u017f",
                "argument\u{17f}",
                "path",
                "PATH",
                "pat\\u0068",
                "kind",
                "\u{212a}ind",
                "\\u212aind",
                "_meta",
                "x",
            ])
        }

        /// JSON text of a value, possibly an object whose names repeat or vary in case.
        fn value_text() -> impl Strategy<Value = String> {
            let leaf = prop::sample::select(vec![
                "\"read_file\"",
                "\"delete_file\"",
                "\"/etc\"",
                "1",
                "1.5e3",
                "null",
                "true",
                "[]",
            ])
            .prop_map(str::to_owned);
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec((name_text(), inner.clone()), 0..4).prop_map(|m| {
                        let members: Vec<String> =
                            m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                        format!("{{{}}}", members.join(","))
                    }),
                    prop::collection::vec(inner, 0..3)
                        .prop_map(|items| format!("[{}]", items.join(","))),
                ]
            })
        }

        /// An object's members as JSON text, names drawn from [`name_text`].
        fn object_text() -> impl Strategy<Value = String> {
            prop::collection::vec((name_text(), value_text()), 0..5).prop_map(|m| {
                let members: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", members.join(","))
            })
        }

        /// Go's `strings.EqualFold` on the names generated here: ASCII case, `ſ` is s, the
        /// Kelvin sign is k.
        fn go_fold(name: &str) -> String {
            name.chars()
                .map(|c| match c {
                    '\u{17F}' => 's',
                    '\u{212A}' => 'k',
                    c => c.to_ascii_lowercase(),
                })
                .collect()
        }

        /// The member an upstream that ignores case reads for `key`, from the object's members
        /// in document order: the last whose name folds to it.
        fn go_member<'a>(members: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
            members
                .iter()
                .rev()
                .find(|(k, _)| go_fold(k) == go_fold(key))
                .map(|(_, v)| v)
        }

        /// Whether any object in the value, at any depth, has two names an upstream that
        /// ignores case reads as one, or a name with U+0000 in it.
        fn has_ambiguous_names(text: &str) -> bool {
            fn walk(value: &RawValue) -> bool {
                let text = value.get();
                if text.starts_with('{') {
                    let members = in_order(text);
                    let mut seen = HashSet::new();
                    members
                        .iter()
                        .any(|(k, _)| k.contains('\0') || !seen.insert(go_fold(k)))
                        || members.iter().any(|(_, v)| walk(v))
                } else if text.starts_with('[') {
                    let items: Vec<Box<RawValue>> = serde_json::from_str(text).unwrap();
                    items.iter().any(|v| walk(v))
                } else {
                    false
                }
            }
            walk(&RawValue::from_string(text.to_owned()).unwrap())
        }

        /// An object's members in document order, repeats kept (a `Value` keeps one).
        fn in_order(text: &str) -> Vec<(String, Box<RawValue>)> {
            struct Ordered;
            impl<'de> Visitor<'de> for Ordered {
                type Value = Vec<(String, Box<RawValue>)>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                        out.push((k, v));
                    }
                    Ok(out)
                }
            }
            serde_json::Deserializer::from_str(text)
                .deserialize_map(Ordered)
                .unwrap()
        }

        fn go_members(text: &str) -> Vec<(String, Value)> {
            in_order(text)
                .into_iter()
                .map(|(k, v)| (k, serde_json::from_str(v.get()).unwrap()))
                .collect()
        }

        proptest! {
            #[test]
            fn readers_never_panic(text in "\\PC{0,64}", key in "[a-zA-Z\u{17f}\u{212a}_]{0,6}") {
                let _ = parse_strict(&text);
                if let Ok(raw) = RawValue::from_string(text.clone()) {
                    let _ = find_member(&raw, &key);
                    let _ = member_str(&raw, &key);
                    let _ = object_members(&raw);
                }
                let _ = same_name(&text, &key);
                let _ = fold(&text);
            }

            #[test]
            fn generated_json_never_panics(text in value_text(), key in name_text()) {
                let raw = RawValue::from_string(text.clone()).unwrap();
                let _ = find_member(&raw, key);
                let _ = member_str(&raw, key);
                let _ = object_members(&raw);
            }

            /// The strict reader takes exactly the documents whose names no lenient reader can
            /// read two ways, and reads them as `serde_json::Value` does.
            #[test]
            fn strict_parse_agrees_with_the_lenient_readers(text in value_text()) {
                let lenient: Value = serde_json::from_str(&text).unwrap();
                match parse_strict(&text) {
                    Ok(strict) => {
                        prop_assert!(!has_ambiguous_names(&text), "accepted {}", text);
                        prop_assert_eq!(strict, lenient);
                    }
                    Err(_) => prop_assert!(has_ambiguous_names(&text), "refused {}", text),
                }
            }

            /// A member the gateway finds is the one both lenient readers find; one it does not
            /// find neither of them finds.
            #[test]
            fn found_members_are_the_ones_upstreams_read(text in object_text(), key in name_text()) {
                let key: String = serde_json::from_str(&format!("\"{key}\"")).unwrap();
                let raw = RawValue::from_string(text.clone()).unwrap();
                let lenient: Value = serde_json::from_str(&text).unwrap();
                let members = go_members(&text);
                if let Ok(found) = find_member(&raw, &key) {
                    let found: Option<Value> = found.map(|v| serde_json::from_str(v.get()).unwrap());
                    prop_assert_eq!(found.as_ref(), lenient.get(&key), "{}", text);
                    prop_assert_eq!(found.as_ref(), go_member(&members, &key), "{}", text);
                }
                if object_members(&raw).is_ok() {
                    let mut folded = HashSet::new();
                    prop_assert!(members.iter().all(|(k, _)| folded.insert(go_fold(k))), "{}", text);
                }
            }

            /// Any `tools/call` the gateway accepts names the tool and carries the arguments
            /// that a `Value` parse and a case-insensitive reader of the same bytes take.
            #[test]
            fn accepted_calls_decide_what_upstreams_run(params in object_text(), nested in object_text()) {
                for params in [params.clone(), format!("{{\"name\":\"t\",\"arguments\":{nested}}}"),
                               params.replacen('{', &format!("{{\"arguments\":{nested},"), 1)] {
                    let params = params.replace(",}", "}");
                    let text = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#);
                    let Ok(message) = Message::parse(text.as_bytes()) else { continue };
                    let Some(Ok(call)) = message.tool_call() else { continue };
                    let lenient: Value = serde_json::from_str(&text).unwrap();
                    let arguments = match &lenient["params"].get("arguments") {
                        None | Some(Value::Null) => Value::Object(Map::new()),
                        Some(v) => (*v).clone(),
                    };
                    prop_assert_eq!(lenient["params"]["name"].as_str(), Some(call.name.as_ref()), "{}", text);
                    prop_assert_eq!(&arguments, &call.arguments, "{}", text);
                    let members = go_members(&params);
                    prop_assert_eq!(go_member(&members, "name").and_then(Value::as_str), Some(call.name.as_ref()));
                    let go_arguments = match go_member(&members, "arguments") {
                        None | Some(Value::Null) => Value::Object(Map::new()),
                        Some(v) => v.clone(),
                    };
                    prop_assert_eq!(&go_arguments, &call.arguments, "{}", text);
                    prop_assert!(!has_ambiguous_names(&arguments.to_string()));
                }
            }
        }
    }
}
