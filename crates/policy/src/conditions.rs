//! Conditions on a call's arguments: argument paths and the eleven operators.
//!
//! A condition whose path does not resolve is false, except `exists: false`, which is true.
//! That keeps every operator fail-safe inside `require` (a missing argument fails the
//! requirement, so the call is denied) and explicit inside `deny_if` (write `exists` to catch a
//! missing argument). A path that an upstream could read another way ([`Ambiguous`]) decides
//! nothing: the rule that reads it denies the call.

use std::cmp::Ordering;
use std::fmt::{self, Write as _};

use regex_automata::meta::Regex;
use serde_json::{Number, Value};

/// Deeper argument paths than this are refused: no tool schema nests that far.
const MAX_SEGMENTS: usize = 32;
/// Compiled-size cap per regex, so a hostile policy cannot make the gateway build a huge automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The most a regex's lazy DFA may cache per thread that matches with it (2 MiB by default;
/// a policy may hold hundreds of patterns, each cached on every gateway thread). A pattern
/// whose lazy DFA needs more runs on the slower engines, still in linear time.
const REGEX_CACHE_CAPACITY: usize = 256 << 10;
/// What all of a policy's regexes may take of the heap once compiled. Each replica keeps every
/// policy in use compiled, so many regexes just under the cap of one must not add up.
pub(crate) const REGEX_BUDGET: usize = 4 << 20;

/// A parsed argument path: `args`, `args.to`, `args.media.0.url`, `args.media[].url`.
///
/// Resolution walks objects by key and arrays by index. MCP tools generated from OpenAPI often
/// have argument names that contain dots (`Configuration.Url`), so when a segment is not a key
/// the next segments are tried joined by dots, shortest first: `args.Configuration.Url` finds
/// `{"Configuration": {"Url": …}}` and `{"Configuration.Url": …}` alike.
///
/// A segment ending in `[]` enters every element of the array it names, so the path has one
/// reading per element (`args.media[].url`: the `url` of each); a value there that is not an
/// array is read as the one element (a tool may take `"a"` for `["a"]`). Each further `[]`
/// enters one more level of nested arrays (`args.rows[][]`: every cell of every row). See
/// [`Condition::holds`] for how a condition reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgPath {
    text: Box<str>,
    segments: Box<[Segment]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// The name's range in the path's text (without a `[]` suffix).
    start: usize,
    end: usize,
    index: Option<usize>,
    /// How many times `[]` was written after the name: every element of the array found, of
    /// each element's array, and so on.
    each: u8,
}

/// The most `[]` a segment may carry: no tool schema nests arrays deeper.
const MAX_EACH: u8 = 4;

impl ArgPath {
    /// Parses `args` or `args.<segment>(.<segment>)*`, segments non-empty.
    pub fn parse(text: &str) -> Result<Self, String> {
        const PREFIX: &str = "args.";
        let mut segments = Vec::new();
        if text != "args" {
            let Some(rest) = text.strip_prefix(PREFIX) else {
                return Err(format!(
                    "path {text:?} must be \"args\" or start with \"args.\" (for example \"args.to\")"
                ));
            };
            let mut start = PREFIX.len();
            for written in rest.split('.') {
                let mut part = written;
                let mut each = 0u8;
                while let Some(name) = part.strip_suffix("[]") {
                    part = name;
                    each += 1;
                    if each > MAX_EACH {
                        return Err(format!(
                            "path {text:?} writes \"[]\" more than {MAX_EACH} times in a \
                             segment"
                        ));
                    }
                }
                if part.is_empty() {
                    return Err(format!("path {text:?} has an empty segment"));
                }
                let end = start + part.len();
                let index = if part.bytes().all(|b| b.is_ascii_digit()) {
                    part.parse().ok()
                } else {
                    None
                };
                segments.push(Segment {
                    start,
                    end,
                    index,
                    each,
                });
                start += written.len() + 1;
            }
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(format!(
                "path {text:?} is deeper than {MAX_SEGMENTS} segments"
            ));
        }
        Ok(Self {
            text: text.into(),
            segments: segments.into(),
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Gives `visit` each reading of this path in `args`, in order (one for a path without
    /// `[]`; `None` where the path does not resolve), until it returns `true`; whether it did.
    ///
    /// [`Ambiguous`] when an upstream could read another member than the one found, in any
    /// element: an object holds more than one member the next segments could name
    /// (`Configuration` and `Configuration.Url` for `args.Configuration.Url`), or a member
    /// whose name differs only in case from one they could name (`Force` for
    /// `args.opts.force`, `configuration.url` beside `Configuration`): an upstream that
    /// ignores case reads it, and a condition must not look past it.
    ///
    /// A string that encodes a JSON object or array, where the path goes on into it, is read
    /// both ways: as the string (the path goes no further: no value), as upstreams that take
    /// it as it is read it, and as what it encodes, as upstreams that decode such strings read
    /// it (the Python SDK's servers do, for parameters that are not strings). So a condition
    /// that must hold (`require`) holds for both, and one that stops a call (`deny_if`) stops
    /// it on either. Decoding alone allocates; every other reading borrows from `args`.
    pub fn readings(
        &self,
        args: &Value,
        visit: &mut dyn FnMut(Option<&Value>) -> Result<bool, Ambiguous>,
    ) -> Result<bool, Ambiguous> {
        self.walk(args, 0, visit)
    }

    /// The first reading, for tests.
    #[cfg(test)]
    fn first(&self, args: &Value) -> Result<Option<Value>, Ambiguous> {
        let mut first = None;
        self.readings(args, &mut |value| {
            first = value.cloned();
            Ok(true)
        })?;
        Ok(first)
    }

    fn walk(
        &self,
        mut current: &Value,
        mut i: usize,
        visit: &mut dyn FnMut(Option<&Value>) -> Result<bool, Ambiguous>,
    ) -> Result<bool, Ambiguous> {
        while let Some(segment) = self.segments.get(i) {
            let last = match current {
                Value::Object(map) => {
                    // Names joined by dots from this segment on, up to one written with `[]`
                    // (`a[].b` names no key `a.b`).
                    let rest = self.segments.get(i..).unwrap_or_default();
                    let joinable = rest
                        .iter()
                        .position(|s| s.each > 0)
                        .map_or(rest.len(), |n| n + 1);
                    // A segment written with `[]` also names a key spelled with the brackets
                    // as written (`ids[]`, as form-style APIs name lists); both kinds are
                    // entered the same way, and an object that has both is ambiguous.
                    let names = rest.iter().take(joinable).enumerate();
                    let names = names.flat_map(|(offset, until)| {
                        let bracketed =
                            (until.each > 0).then_some(until.end + 2 * usize::from(until.each));
                        std::iter::once(until.end)
                            .chain(bracketed)
                            .filter_map(move |end| {
                                Some((self.text.get(segment.start..end)?, i + offset))
                            })
                    });
                    let mut found = None;
                    for (key, value) in map {
                        for (name, last) in names.clone() {
                            if key == name {
                                if found.is_some() {
                                    return Err(Ambiguous);
                                }
                                found = Some((value, last));
                            } else if same_but_case(key, name) {
                                return Err(Ambiguous);
                            }
                        }
                    }
                    let Some((value, last)) = found else {
                        return visit(None);
                    };
                    current = value;
                    last
                }
                Value::Array(items) => match segment.index.and_then(|n| items.get(n)) {
                    Some(item) => {
                        current = item;
                        i
                    }
                    None => return visit(None),
                },
                Value::String(text) => {
                    // Read both ways: as the string, where the path goes no further, and as
                    // what it encodes, if it encodes an object or a list.
                    if visit(None)? {
                        return Ok(true);
                    }
                    return match decoded(text) {
                        Some(value) => self.walk(&value, i, visit),
                        None => Ok(false),
                    };
                }
                _ => return visit(None),
            };
            i = last + 1;
            if let Some(depth) = self.segments.get(last).map(|s| s.each).filter(|&d| d > 0) {
                return self.each(current, depth, i, visit);
            }
        }
        visit(Some(current))
    }

    /// Walks on from segment `i` in every element of `value`, `depth` levels of arrays down:
    /// an array's elements, or those of a string that encodes one; any other value is the
    /// one element.
    fn each(
        &self,
        value: &Value,
        depth: u8,
        i: usize,
        visit: &mut dyn FnMut(Option<&Value>) -> Result<bool, Ambiguous>,
    ) -> Result<bool, Ambiguous> {
        let inner =
            |item: &Value, visit: &mut dyn FnMut(Option<&Value>) -> Result<bool, Ambiguous>| {
                match depth {
                    1 => self.walk(item, i, visit),
                    _ => self.each(item, depth - 1, i, visit),
                }
            };
        match value {
            Value::Array(items) => {
                for item in items {
                    if inner(item, visit)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Value::String(text) => {
                // The string as the one element, and the elements it encodes, if any.
                if inner(value, visit)? {
                    return Ok(true);
                }
                match decoded(text) {
                    Some(decoded) => self.each(&decoded, depth, i, visit),
                    None => Ok(false),
                }
            }
            _ => inner(value, visit),
        }
    }
}

/// The object or array a string encodes, if it encodes one (JSON, surrounding whitespace
/// allowed, as Python's `json.loads` takes it).
fn decoded(text: &str) -> Option<Value> {
    if !text.trim_start().starts_with(['{', '[']) {
        return None;
    }
    serde_json::from_str::<Value>(text)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
}

/// Arguments an upstream could read in more than one way at a path ([`ArgPath::readings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

/// Whether two names differ only in case, as upstreams that ignore case compare them (Go's
/// `encoding/json`, with Unicode simple case folding: `ſ` is `s`, the Kelvin sign `k`, `ϑ`
/// is `ϴ`). Errs on the side of "the same": two characters count as one when their lower
/// cases, their upper cases, or the lower cases of their upper cases are equal.
fn same_but_case(a: &str, b: &str) -> bool {
    if a.len() == b.len() && a.eq_ignore_ascii_case(b) {
        return true;
    }
    if a.is_ascii() && b.is_ascii() || a.chars().count() != b.chars().count() {
        return false;
    }
    let folded = |c: char| c.to_uppercase().flat_map(char::to_lowercase);
    a.chars().zip(b.chars()).all(|(x, y)| {
        x == y
            || x.to_lowercase().eq(y.to_lowercase())
            || x.to_uppercase().eq(y.to_uppercase())
            || folded(x).eq(folded(y))
    })
}

impl fmt::Display for ArgPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for ArgPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for ArgPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ArgPath::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A condition operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal, with numeric coercion between numbers and numeric strings.
    Eq,
    /// Present and not equal (same coercion as `eq`).
    Neq,
    /// Numerically less than.
    Lt,
    /// Numerically less than or equal.
    Lte,
    /// Numerically greater than.
    Gt,
    /// Numerically greater than or equal.
    Gte,
    /// Equal to one of a list.
    In,
    /// Present and equal to none of a list.
    NotIn,
    /// Present (`true`) or absent (`false`).
    Exists,
    /// Matches an RE2-syntax regular expression (unanchored unless the pattern anchors).
    Regex,
    /// Substring of a string argument, or element of an array argument.
    Contains,
}

impl Op {
    /// Every operator, in documentation order.
    pub const ALL: [Op; 11] = [
        Op::Eq,
        Op::Neq,
        Op::Lt,
        Op::Lte,
        Op::Gt,
        Op::Gte,
        Op::In,
        Op::NotIn,
        Op::Exists,
        Op::Regex,
        Op::Contains,
    ];

    /// The operator's name in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Exists => "exists",
            Op::Regex => "regex",
            Op::Contains => "contains",
        }
    }

    /// The operator called `name`, if any.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A number taken from an argument: exact for integers, `f64` otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Numeric {
    Int(i128),
    Float(f64),
}

impl Numeric {
    /// A number, or a string that is a number (`"150"`, `"12.5"`, `"inf"`, `"1e309"`; `"nan"`
    /// reads as NaN, which equals and orders against nothing); nothing else.
    fn of(value: &Value) -> Option<Numeric> {
        match value {
            Value::Number(n) => Self::from_number(n),
            Value::String(s) => Self::parse(s),
            _ => None,
        }
    }

    /// An argument's number, as [`Numeric::of`], or [`Ambiguous`] where upstreams read it
    /// differently: a string Python's `float()` reads as NaN (which passes every comparison an
    /// upstream's own check would make), and an integral JSON number too large for 64 bits
    /// (Python keeps it exact; here it is already rounded to a double).
    fn of_argument(value: &Value) -> Result<Option<Numeric>, Ambiguous> {
        match Self::of(value) {
            Some(Numeric::Float(f)) if f.is_nan() => Err(Ambiguous),
            Some(Numeric::Float(f)) if value.is_number() && is_rounded_integer(f) => Err(Ambiguous),
            other => Ok(other),
        }
    }

    fn from_number(n: &Number) -> Option<Numeric> {
        if let Some(i) = n.as_i64() {
            Some(Numeric::Int(i128::from(i)))
        } else if let Some(u) = n.as_u64() {
            Some(Numeric::Int(i128::from(u)))
        } else {
            n.as_f64().filter(|f| f.is_finite()).map(Numeric::Float)
        }
    }

    /// The number a string spells as lenient upstreams read it: Python's `int()` and
    /// `float()` (and so pydantic) ignore surrounding whitespace (Unicode's, and the ASCII
    /// separators `\x1c`–`\x1f`) and take `_` between digits, so `" 20_000"` is 20000 there
    /// and must be here too.
    fn parse(s: &str) -> Option<Numeric> {
        let s = s.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c));
        if !s.contains('_') {
            return Self::parse_plain(s);
        }
        let bytes = s.as_bytes();
        let between_digits = |i: usize| {
            i > 0
                && bytes[i - 1].is_ascii_digit()
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
        };
        if !(0..bytes.len()).all(|i| bytes[i] != b'_' || between_digits(i)) {
            return None;
        }
        let mut plain = StackText::default();
        if s.split('_').all(|part| plain.write_str(part).is_ok()) {
            Self::parse_plain(plain.as_str())
        } else {
            // Longer than the stack buffer (leading zeros, say): rare enough to allocate.
            Self::parse_plain(&s.replace('_', ""))
        }
    }

    fn parse_plain(s: &str) -> Option<Numeric> {
        if let Ok(i) = s.parse::<i128>() {
            return Some(Numeric::Int(i));
        }
        // Like Python's `float()`, this reads "inf", "-Infinity", "1e309" (infinite) and "nan".
        s.parse::<f64>().ok().map(Numeric::Float)
    }

    fn as_f64(self) -> f64 {
        match self {
            // Precision loss only beyond 2^53, where any ordering answer is as good as the input.
            #[allow(clippy::cast_precision_loss)]
            Numeric::Int(i) => i as f64,
            Numeric::Float(f) => f,
        }
    }

    fn compare(self, other: Numeric) -> Option<Ordering> {
        match (self, other) {
            (Numeric::Int(a), Numeric::Int(b)) => Some(a.cmp(&b)),
            // A whole double compares exactly with an integer: 1e23 is not 10^23 + 1.
            (Numeric::Int(a), Numeric::Float(b)) if b.fract() == 0.0 && b.abs() < I128_BOUND => {
                Some(a.cmp(&(b as i128)))
            }
            (Numeric::Float(a), Numeric::Int(b)) if a.fract() == 0.0 && a.abs() < I128_BOUND => {
                Some((a as i128).cmp(&b))
            }
            _ => self.as_f64().partial_cmp(&other.as_f64()),
        }
    }
}

/// 2^127: every whole double below it in magnitude converts to `i128` exactly.
const I128_BOUND: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;

/// A whole double of 2^63 or more, which JSON can only have brought as a rounded integer
/// (smaller integers arrive exact, as `i64` or `u64`).
fn is_rounded_integer(f: f64) -> bool {
    f.fract() == 0.0 && f.abs() >= 9_223_372_036_854_775_808.0
}

/// Whether `value` holds a number that JSON readers here cannot tell apart from its
/// neighbours: a whole number of magnitude 2^63 or more that is not a 64-bit integer. It is
/// read as a double (`10000000000000000000001` and `10000000000000000000002` read the same),
/// while an upstream may keep it exact (Python does), so nothing that must bind the exact
/// arguments (an approval's fingerprint) can be decided on it.
pub fn holds_rounded_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            !(n.is_i64() || n.is_u64()) && n.as_f64().is_some_and(is_rounded_integer)
        }
        Value::Array(items) => items.iter().any(holds_rounded_integer),
        Value::Object(map) => map.values().any(holds_rounded_integer),
        _ => false,
    }
}

/// The cost of a call taken from the argument at `path`, as [`cost_of`]; through `[]`, the sum
/// of the elements' costs (none for an empty array), and `None` when any element has none.
pub(crate) fn cost_at(path: &ArgPath, args: &Value) -> Result<Option<u64>, Ambiguous> {
    let mut total = Some(0_u64);
    path.readings(args, &mut |arg| {
        total = total
            .zip(arg.and_then(cost_of))
            .map(|(sum, cost)| sum.saturating_add(cost));
        Ok(total.is_none())
    })?;
    Ok(total)
}

/// The cost of a call taken from an argument: a non-negative number (or numeric string),
/// rounded up so a fractional amount is never under-charged.
pub(crate) fn cost_of(value: &Value) -> Option<u64> {
    match Numeric::of(value)? {
        Numeric::Int(i) => u64::try_from(i).ok(),
        Numeric::Float(f) if f >= 0.0 => {
            let up = f.ceil();
            // u64::MAX as f64 rounds up to 2^64, so `<` keeps the cast in range.
            #[allow(clippy::cast_precision_loss)]
            let limit = u64::MAX as f64;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            (up < limit).then_some(up as u64)
        }
        Numeric::Float(_) => None,
    }
}

/// A value a condition compares against, with its numeric reading computed once at load time.
#[derive(Debug, Clone)]
struct Expected {
    value: Value,
    numeric: Option<Numeric>,
}

impl Expected {
    fn new(value: &Value) -> Self {
        let numeric = match value {
            Value::Number(_) | Value::String(_) => Numeric::of(value),
            _ => None,
        };
        Self {
            value: value.clone(),
            numeric,
        }
    }

    /// An operand that compares exactly: a whole number past 64 bits arrives rounded, so
    /// it must be written as a string.
    fn exact(value: &Value) -> Result<Self, ValueProblem> {
        if let Value::Number(n) = value
            && n.as_f64().is_some_and(is_rounded_integer)
        {
            return Err(ValueProblem::Invalid(format!(
                "the number {n} is too large to compare exactly (JSON readers round it); \
                 write it as a string of its digits"
            )));
        }
        Ok(Self::new(value))
    }

    /// Equality with numeric coercion: a number equals a string that parses to the same number.
    /// Two strings compare as text ("5.0" is not "5"); arrays and objects compare structurally.
    /// A number an upstream would read more exactly than this gateway is [`Ambiguous`].
    /// A boolean equals what lenient upstreams read as it ([`reads_as_bool`]).
    fn equals(&self, arg: &Value) -> Result<bool, Ambiguous> {
        Ok(match (arg, &self.value) {
            (arg, Value::Bool(expected)) => reads_as_bool(arg) == Some(*expected),
            (Value::Number(_), Value::Number(_) | Value::String(_)) => {
                same_number(Numeric::of_argument(arg)?, self.numeric)
            }
            (Value::String(a), Value::Number(_)) => same_number(Numeric::parse(a), self.numeric),
            (arg, expected) => arg == expected,
        })
    }
}

/// The boolean an argument is read as by upstreams that coerce (Python's pydantic, and so the
/// Python SDK's servers, in its default lax mode): a boolean; the numbers 0 and 1; a string
/// that is, ignoring case and surrounding whitespace, one of `true t yes y on 1` or
/// `false f no n off 0`. A strict upstream refuses the others for a boolean parameter, so
/// reading them this way never lets a call past a condition that the upstream would read
/// otherwise. `None` for anything else.
fn reads_as_bool(arg: &Value) -> Option<bool> {
    match arg {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => {
            let s = s.trim();
            let is = |words: &[&str]| words.iter().any(|w| s.eq_ignore_ascii_case(w));
            if is(&["true", "t", "yes", "y", "on", "1"]) {
                Some(true)
            } else if is(&["false", "f", "no", "n", "off", "0"]) {
                Some(false)
            } else {
                None
            }
        }
        _ => None,
    }
}

fn any_equals(list: &[Expected], arg: &Value) -> Result<bool, Ambiguous> {
    for expected in list {
        if expected.equals(arg)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn same_number(a: Option<Numeric>, b: Option<Numeric>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.compare(b) == Some(Ordering::Equal),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy)]
enum Comparison {
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Comparison {
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Comparison::Lt => ordering == Ordering::Less,
            Comparison::Lte => ordering != Ordering::Greater,
            Comparison::Gt => ordering == Ordering::Greater,
            Comparison::Gte => ordering != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone)]
enum Test {
    Eq(Expected),
    Neq(Expected),
    Compare(Comparison, Numeric),
    In(Box<[Expected]>),
    NotIn(Box<[Expected]>),
    Exists(bool),
    Regex(Regex),
    Contains {
        needle: Option<Box<str>>,
        element: Expected,
    },
}

/// Why a condition's `value` was refused; `Missing` means the key itself is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ValueProblem {
    Missing,
    Invalid(String),
}

impl Test {
    fn compile(op: Op, value: Option<&Value>) -> Result<Test, ValueProblem> {
        let required = || value.ok_or(ValueProblem::Missing);
        let number = |op: Op| -> Result<Numeric, ValueProblem> {
            let v = required()?;
            match v {
                Value::Number(n) => Numeric::from_number(n)
                    .ok_or_else(|| ValueProblem::Invalid(format!("op {op} needs a finite number"))),
                other => Err(ValueProblem::Invalid(format!(
                    "op {op} compares numbers; expected a number, found {}",
                    kind(other)
                ))),
            }
        };
        let list = |op: Op| -> Result<Box<[Expected]>, ValueProblem> {
            match required()? {
                Value::Array(items) => items.iter().map(Expected::exact).collect(),
                other => Err(ValueProblem::Invalid(format!(
                    "op {op} needs an array of values, found {}",
                    kind(other)
                ))),
            }
        };
        Ok(match op {
            Op::Eq => Test::Eq(Expected::exact(required()?)?),
            Op::Neq => Test::Neq(Expected::exact(required()?)?),
            Op::Lt => Test::Compare(Comparison::Lt, number(op)?),
            Op::Lte => Test::Compare(Comparison::Lte, number(op)?),
            Op::Gt => Test::Compare(Comparison::Gt, number(op)?),
            Op::Gte => Test::Compare(Comparison::Gte, number(op)?),
            Op::In => Test::In(list(op)?),
            Op::NotIn => Test::NotIn(list(op)?),
            Op::Exists => match value {
                None => Test::Exists(true),
                Some(Value::Bool(b)) => Test::Exists(*b),
                Some(other) => {
                    return Err(ValueProblem::Invalid(format!(
                        "op exists takes true or false, found {}",
                        kind(other)
                    )));
                }
            },
            Op::Regex => match required()? {
                Value::String(pattern) => {
                    Test::Regex(compile_regex(pattern).map_err(ValueProblem::Invalid)?)
                }
                other => {
                    return Err(ValueProblem::Invalid(format!(
                        "op regex needs a pattern string, found {}",
                        kind(other)
                    )));
                }
            },
            Op::Contains => {
                let v = required()?;
                Test::Contains {
                    needle: v.as_str().map(Box::from),
                    element: Expected::new(v),
                }
            }
        })
    }
}

/// Checks a condition's operand without keeping the compiled test; what it would take of the
/// heap once compiled (a regex's automata; nothing for the other operators).
pub(crate) fn check_operand(op: Op, value: Option<&Value>) -> Result<usize, ValueProblem> {
    Test::compile(op, value).map(|test| match test {
        Test::Regex(re) => re.memory_usage(),
        _ => 0,
    })
}

/// Compiles an RE2-syntax pattern with a size cap; the error is one plain line.
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    Regex::builder()
        .configure(
            Regex::config()
                .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
                .hybrid_cache_capacity(REGEX_CACHE_CAPACITY),
        )
        .build(pattern)
        .map_err(|e| {
            if let Some(syntax) = e.syntax_error() {
                let text = syntax.to_string();
                let reason = text
                    .lines()
                    .find_map(|line| line.trim().strip_prefix("error: "))
                    .unwrap_or("syntax error");
                format!("invalid regex {pattern:?}: {reason}")
            } else if e.size_limit().is_some() {
                format!("regex {pattern:?} is too large once compiled; simplify it")
            } else {
                format!("invalid regex {pattern:?}: {e}")
            }
        })
}

/// "a string", "an array", … for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Which readings of a path through `[]` must hold for a condition to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// All of them (`require`).
    Every,
    /// At least one (`deny_if`, `approval.when`).
    Any,
}

/// A compiled condition: a path and a test that cannot fail at evaluation.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    path: ArgPath,
    test: Test,
}

impl Condition {
    /// Compiles `path op value`; the error says what is wrong with `value`.
    pub(crate) fn compile(
        path: &ArgPath,
        op: Op,
        value: Option<&Value>,
    ) -> Result<Self, ValueProblem> {
        Ok(Self {
            path: path.clone(),
            test: Test::compile(op, value)?,
        })
    }

    /// The path this condition reads.
    pub(crate) fn path(&self) -> &ArgPath {
        &self.path
    }

    /// Whether the condition holds for these arguments. Never panics; allocates only to decode
    /// a string that encodes JSON ([`ArgPath::readings`]).
    ///
    /// A path through `[]` has a reading per element, and `reading` says which must hold:
    /// [`Reading::Every`] for a condition that must hold for the call to pass (`require`),
    /// [`Reading::Any`] for one that stops it (`deny_if`, `approval.when`). Either way the
    /// strict side wins: one bad element fails a requirement, one matching element denies.
    /// An empty array has no reading: every one of none holds, any of none does not. A path
    /// without `[]` has one reading, and both are the same.
    pub(crate) fn holds(&self, args: &Value, reading: Reading) -> Result<bool, Ambiguous> {
        let every = matches!(reading, Reading::Every);
        // Stop at the first reading that settles it.
        let settled = self
            .path
            .readings(args, &mut |arg| Ok(self.holds_for(arg)? != every))?;
        Ok(settled != every)
    }

    #[cfg(test)]
    fn holds_every(&self, args: &Value) -> Result<bool, Ambiguous> {
        self.holds(args, Reading::Every)
    }

    /// Whether the condition holds for one reading of its path.
    fn holds_for(&self, arg: Option<&Value>) -> Result<bool, Ambiguous> {
        let Some(arg) = arg else {
            return Ok(matches!(self.test, Test::Exists(false)));
        };
        Ok(match &self.test {
            Test::Exists(want) => *want,
            Test::Eq(expected) => expected.equals(arg)?,
            Test::Neq(expected) => !expected.equals(arg)?,
            Test::Compare(comparison, bound) => Numeric::of_argument(arg)?
                .and_then(|n| n.compare(*bound))
                .is_some_and(|ordering| comparison.accepts(ordering)),
            Test::In(list) => any_equals(list, arg)?,
            Test::NotIn(list) => !any_equals(list, arg)?,
            Test::Regex(re) => match arg {
                Value::String(s) => re.is_match(s),
                // A number or boolean is matched as its JSON text, so sending `5` instead of
                // `"5"` cannot slip past a pattern. A whole number sent as a float (`22.0`,
                // `2.2e1`) is what upstreams take as the integer: it matches as `22` too.
                Value::Number(n) => {
                    let matches = |shown: &dyn fmt::Display| {
                        let mut text = StackText::default();
                        write!(text, "{shown}").is_ok() && re.is_match(text.as_str())
                    };
                    // Whole floats in [-2^63, 2^63) convert to an i64 exactly.
                    let whole = n.as_f64().filter(|f| {
                        n.is_f64()
                            && f.fract() == 0.0
                            && (i64::MIN as f64..-(i64::MIN as f64)).contains(f)
                    });
                    #[allow(clippy::cast_possible_truncation)] // whole and in range
                    let as_integer = |f: f64| matches(&(f as i64));
                    matches(n) || whole.is_some_and(as_integer)
                }
                Value::Bool(b) => re.is_match(if *b { "true" } else { "false" }),
                _ => false,
            },
            Test::Contains { needle, element } => match arg {
                Value::String(s) => needle.as_deref().is_some_and(|n| s.contains(n)),
                Value::Array(items) => {
                    for item in items {
                        if element.equals(item)? {
                            return Ok(true);
                        }
                    }
                    false
                }
                _ => false,
            },
        })
    }
}

/// A fixed buffer for the text of a JSON number, so matching a number never allocates.
struct StackText {
    buf: [u8; 64],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        Self {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl StackText {
    fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or("")
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(path: &str, op: &str, value: Option<Value>, args: &Value) -> bool {
        let path = ArgPath::parse(path).unwrap();
        let op = Op::from_name(op).unwrap();
        Condition::compile(&path, op, value.as_ref())
            .unwrap()
            .holds_every(args)
            .unwrap()
    }

    /// What a condition makes of `args` in `require` (every reading) and in `deny_if` (any).
    fn check(
        path: &str,
        op: &str,
        value: Value,
        args: Value,
    ) -> (Result<bool, Ambiguous>, Result<bool, Ambiguous>) {
        let c = Condition::compile(
            &ArgPath::parse(path).unwrap(),
            Op::from_name(op).unwrap(),
            Some(&value),
        )
        .unwrap();
        (c.holds(&args, Reading::Every), c.holds(&args, Reading::Any))
    }

    #[test]
    fn brackets_read_every_element_nested_and_beside_dotted_names() {
        let grid = json!({"rows": [{"cells": ["a", "b"]}, {"cells": ["c"]}]});
        assert_eq!(
            check("args.rows[].cells[]", "eq", json!("c"), grid.clone()),
            (Ok(false), Ok(true))
        );
        assert_eq!(
            check("args.rows[].cells[]", "regex", json!("^[a-c]$"), grid),
            (Ok(true), Ok(true))
        );
        // A dotted name is found up to the bracketed segment, never across it.
        let dotted = json!({"a.b": [{"c": 1}, {"c": 1}]});
        assert_eq!(
            check("args.a.b[].c", "eq", json!(1), dotted.clone()),
            (Ok(true), Ok(true))
        );
        assert_eq!(
            check("args.a[].b", "exists", json!(true), json!({"a.b": 1})),
            (Ok(false), Ok(false))
        );
        // An index and brackets together; a value that is not an array is one element.
        assert_eq!(
            check("args.m.0[]", "eq", json!(2), json!({"m": [[2, 2], [3]]})),
            (Ok(true), Ok(true))
        );
        assert_eq!(
            check("args.to[]", "eq", json!("x"), json!({"to": "x"})),
            (Ok(true), Ok(true))
        );
        // Elements that lack the member: they do not resolve, and `exists: false` says so.
        let some_without = json!({"items": [{"id": 1}, {}]});
        assert_eq!(
            check("args.items[].id", "exists", json!(false), some_without),
            (Ok(false), Ok(true))
        );
        // No elements: every one of none holds, none of them matches; no array: no reading.
        assert_eq!(
            check(
                "args.items[].id",
                "exists",
                json!(true),
                json!({"items": []})
            ),
            (Ok(true), Ok(false))
        );
        assert_eq!(
            check("args.items[].id", "exists", json!(true), json!({})),
            (Ok(false), Ok(false))
        );
        // An element that can be read two ways decides nothing, unless an element before it
        // settled the answer whatever it reads as.
        let ambiguous =
            |items: Value| check("args.items[].id", "eq", json!(1), json!({"items": items}));
        assert_eq!(
            ambiguous(json!([{"ID": 2}, {"id": 1}])),
            (Err(Ambiguous), Err(Ambiguous))
        );
        assert_eq!(
            ambiguous(json!([{"id": 1}, {"ID": 2}])),
            (Err(Ambiguous), Ok(true))
        );
        assert_eq!(
            ambiguous(json!([{"id": 2}, {"ID": 2}])),
            (Ok(false), Err(Ambiguous))
        );
        // A key spelled with the brackets (form-style APIs) is the same list; both at once
        // are ambiguous.
        assert_eq!(
            check("args.ids[]", "eq", json!(7), json!({"ids[]": [1, 7]})),
            (Ok(false), Ok(true))
        );
        assert_eq!(
            check(
                "args.ids[]",
                "eq",
                json!(7),
                json!({"ids[]": [7], "ids": [1]})
            ),
            (Err(Ambiguous), Err(Ambiguous))
        );
        assert!(ArgPath::parse("args.[]").is_err());
        assert!(ArgPath::parse("args.[][]").is_err());
        assert!(ArgPath::parse("args.m[][][][]").is_ok());
        assert!(ArgPath::parse("args.m[][][][][]").is_err());
    }

    #[test]
    fn each_pair_of_brackets_enters_one_level_of_nested_arrays() {
        // A spreadsheet's values: a formula in any cell is caught, wherever it sits.
        let formula = |rows: Value| check("args.values[][]", "regex", json!("^="), rows);
        assert_eq!(
            formula(json!({"values": [["a", "b"], ["c", "=IMPORTXML(x)"]]})),
            (Ok(false), Ok(true))
        );
        assert_eq!(
            formula(json!({"values": [["a", "b"], ["c"]]})),
            (Ok(false), Ok(false))
        );
        // A row given as a lone value is one cell; a row given as a string that encodes a
        // list is read both ways, as for one level.
        assert_eq!(
            formula(json!({"values": [["a"], "=cmd"]})),
            (Ok(false), Ok(true))
        );
        assert_eq!(
            formula(json!({"values": ["[\"a\", \"=cmd\"]"]})),
            (Ok(false), Ok(true))
        );
        assert_eq!(
            check(
                "args.values[][]",
                "regex",
                json!("^[a-z]$"),
                json!({"values": [["a", "b"], ["c"]]})
            ),
            (Ok(true), Ok(true))
        );
        // Members inside, and the key spelled with the brackets as written.
        assert_eq!(
            check(
                "args.m[][].id",
                "eq",
                json!(3),
                json!({"m": [[{"id": 1}], [{"id": 2}, {"id": 3}]]})
            ),
            (Ok(false), Ok(true))
        );
        assert_eq!(
            check("args.m[][]", "eq", json!(3), json!({"m[][]": [[1], [3]]})),
            (Ok(false), Ok(true))
        );
        assert_eq!(
            check(
                "args.m[][]",
                "eq",
                json!(3),
                json!({"m[][]": [[3]], "m": []})
            ),
            (Err(Ambiguous), Err(Ambiguous))
        );
        // One pair of brackets on an array of arrays reads each row as one value.
        assert_eq!(
            check("args.m[]", "eq", json!(3), json!({"m": [[3]]})),
            (Ok(false), Ok(false))
        );
    }

    #[test]
    fn booleans_equal_what_lenient_upstreams_read_as_them() {
        let eq =
            |expected: Value, arg: Value| holds("args.f", "eq", Some(expected), &json!({"f": arg}));
        for yes in [
            json!(true),
            json!("true"),
            json!("Yes"),
            json!(" on "),
            json!("T"),
            json!(1),
            json!(1.0),
            json!("1"),
        ] {
            assert!(eq(json!(true), yes.clone()), "{yes}");
            assert!(!eq(json!(false), yes.clone()), "{yes}");
        }
        for no in [
            json!(false),
            json!("FALSE"),
            json!("n"),
            json!("off"),
            json!(0),
            json!("0"),
        ] {
            assert!(eq(json!(false), no.clone()), "{no}");
            assert!(!eq(json!(true), no.clone()), "{no}");
        }
        for neither in [
            json!("maybe"),
            json!(2),
            json!(null),
            json!(""),
            json!([true]),
            json!("truthy"),
        ] {
            assert!(!eq(json!(true), neither.clone()), "{neither}");
            assert!(!eq(json!(false), neither.clone()), "{neither}");
        }
        assert!(!holds(
            "args.f",
            "neq",
            Some(json!(true)),
            &json!({"f": "yes"})
        ));
        assert!(holds(
            "args.f",
            "in",
            Some(json!([true])),
            &json!({"f": "on"})
        ));
        assert!(holds(
            "args.f",
            "contains",
            Some(json!(true)),
            &json!({"f": ["y"]})
        ));
        // A string operand still compares as text.
        assert!(!holds(
            "args.f",
            "eq",
            Some(json!("true")),
            &json!({"f": true})
        ));
    }

    #[test]
    fn a_path_goes_on_into_what_a_string_encodes() {
        let path = |p: &str, args: Value| {
            let mut readings = Vec::new();
            ArgPath::parse(p)
                .unwrap()
                .readings(&args, &mut |v| {
                    readings.push(v.cloned());
                    Ok(false)
                })
                .map(|_| readings)
        };
        // Read both ways: as the string (no value past it), then as what it encodes, as
        // the Python SDK's servers read it.
        assert_eq!(
            path("args.config.force", json!({"config": "{\"force\": true}"})),
            Ok(vec![None, Some(json!(true))])
        );
        let list = " [\"a@x\", \"b@y\"] ";
        assert_eq!(
            path("args.to[]", json!({"to": list})),
            Ok(vec![
                Some(json!(list)),
                Some(json!("a@x")),
                Some(json!("b@y"))
            ])
        );
        assert_eq!(
            path(
                "args.media.1.url",
                json!({"media": "[{}, {\"url\": \"u\"}]"})
            ),
            Ok(vec![None, Some(json!("u"))])
        );
        // What it encodes is read like any argument: two members for one name are ambiguous.
        assert_eq!(
            path("args.c.force", json!({"c": "{\"force\": 1, \"Force\": 2}"})),
            Err(Ambiguous)
        );
        // Strings that encode no object or list are what they are.
        assert_eq!(
            path("args.config.force", json!({"config": "plain"})),
            Ok(vec![None])
        );
        assert_eq!(
            path("args.config.force", json!({"config": "[not json"})),
            Ok(vec![None])
        );
        assert_eq!(
            path("args.config.force", json!({"config": "5"})),
            Ok(vec![None])
        );
        assert_eq!(
            path("args.to[]", json!({"to": "a@x"})),
            Ok(vec![Some(json!("a@x"))])
        );
        // Where the path ends at the string, it is the string.
        assert_eq!(
            path("args.config", json!({"config": "{}"})),
            Ok(vec![Some(json!("{}"))])
        );
    }

    #[test]
    fn a_cost_through_brackets_is_the_sum_of_the_elements() {
        let path = ArgPath::parse("args.items[].amount").unwrap();
        let cost = |args: Value| cost_at(&path, &args);
        assert_eq!(
            cost(json!({"items": [{"amount": 2}, {"amount": "3.5"}]})),
            Ok(Some(6))
        );
        assert_eq!(cost(json!({"items": []})), Ok(Some(0)));
        assert_eq!(
            cost(json!({"items": [{"amount": 2}, {"amount": -1}]})),
            Ok(None)
        );
        assert_eq!(
            cost(json!({"items": [{"amount": u64::MAX}, {"amount": 1}]})),
            Ok(Some(u64::MAX))
        );
        assert_eq!(cost(json!({})), Ok(None));
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
    fn numbers_upstreams_read_otherwise_are_ambiguous() {
        let compiled = |op: &str, value: Value| {
            let op = Op::from_name(op).unwrap();
            Condition::compile(&ArgPath::parse("args.n").unwrap(), op, Some(&value)).unwrap()
        };
        let gt = compiled("gt", json!(10_000));
        for huge in ["1e309", "inf", "+Infinity", " 1E400 "] {
            assert_eq!(gt.holds_every(&json!({"n": huge})), Ok(true), "{huge}");
        }
        // NaN passes every check an upstream would make with it: no rule can decide on it.
        for nan in ["nan", "NaN", "-nan"] {
            assert_eq!(gt.holds_every(&json!({"n": nan})), Err(Ambiguous), "{nan}");
        }
        // Integers past 64 bits: exact in Python, rounded here.
        let big: Value = serde_json::from_str(r#"{"n": 100000000000000000004242}"#).unwrap();
        assert_eq!(gt.holds_every(&big), Err(Ambiguous));
        let rounded = serde_json::from_str(r#"[100000000000000000000001]"#).unwrap();
        assert!(Test::compile(Op::In, Some(&rounded)).is_err());
        let allowed = compiled("in", json!(["100000000000000000000001"]));
        assert_eq!(allowed.holds_every(&big), Err(Ambiguous));
        assert_eq!(
            allowed.holds_every(&json!({"n": "100000000000000000004242"})),
            Ok(false)
        );
        assert_eq!(
            allowed.holds_every(&json!({"n": "100000000000000000000001"})),
            Ok(true)
        );
        // A whole double compares exactly with an integer string.
        let eq = compiled("eq", json!(1.5e18));
        assert_eq!(
            eq.holds_every(&json!({"n": "1500000000000000001"})),
            Ok(false)
        );
        assert_eq!(
            eq.holds_every(&json!({"n": "1500000000000000000"})),
            Ok(true)
        );
    }

    #[test]
    fn paths_parse_and_reject() {
        assert!(ArgPath::parse("args").is_ok());
        assert!(ArgPath::parse("args.a.b.0.c").is_ok());
        for bad in [
            "", "arg", "args.", "args..a", "args.a.", "input.a", "a.b", "argsx.a",
        ] {
            assert!(ArgPath::parse(bad).is_err(), "{bad:?}");
        }
        let deep = format!("args{}", ".a".repeat(33));
        assert!(ArgPath::parse(&deep).is_err());
    }

    #[test]
    fn paths_resolve_objects_arrays_and_dotted_keys() {
        let args = json!({
            "to": "+44",
            "media": [{"url": "https://a"}, {"url": "https://b"}],
            "nested": {"deep": {"x": 1}},
            "Configuration.Url": "https://c",
            "0": "zero-key",
            "a": {"b.c": {"d": true}},
        });
        let at = |p: &str| ArgPath::parse(p).unwrap().first(&args).unwrap();
        assert_eq!(at("args.to"), Some(json!("+44")));
        assert_eq!(at("args.media.1.url"), Some(json!("https://b")));
        assert_eq!(at("args.media.2.url"), None);
        assert_eq!(at("args.media.x"), None);
        assert_eq!(at("args.nested.deep.x"), Some(json!(1)));
        assert_eq!(at("args.Configuration.Url"), Some(json!("https://c")));
        assert_eq!(at("args.0"), Some(json!("zero-key")));
        assert_eq!(at("args.a.b.c.d"), Some(json!(true)));
        assert_eq!(at("args.to.length"), None);
        assert_eq!(at("args.missing"), None);
        assert_eq!(at("args"), Some(args.clone()));
        assert_eq!(
            ArgPath::parse("args.a").unwrap().first(&json!(null)),
            Ok(None)
        );
        assert_eq!(
            ArgPath::parse("args.0").unwrap().first(&json!(["first"])),
            Ok(Some(json!("first")))
        );
    }

    #[test]
    fn arguments_an_upstream_could_read_another_way_are_ambiguous() {
        let resolve = |p: &str, args: Value| ArgPath::parse(p).unwrap().first(&args);
        // A shorter key beside the dotted one: which one the tool takes is the upstream's call.
        let url = "args.Configuration.Url";
        for args in [
            json!({"Configuration": 0, "Configuration.Url": "https://evil"}),
            json!({"Configuration": {"Url": "https://ok"}, "Configuration.Url": "https://evil"}),
            json!({"a": {"Configuration": {}, "Configuration.Url": 1}}),
        ] {
            let path = if args.get("a").is_some() {
                "args.a.Configuration.Url"
            } else {
                url
            };
            assert_eq!(resolve(path, args.clone()), Err(Ambiguous), "{args}");
        }
        assert_eq!(
            resolve(url, json!({"Configuration": {"Url": 1}})),
            Ok(Some(json!(1)))
        );
        // A case variant where the exact name is missing, at any depth: an upstream that
        // ignores case reads it.
        for (path, args) in [
            ("args.opts.force", json!({"opts": {"Force": true}})),
            ("args.opts.force", json!({"OPTS": {"force": true}})),
            ("args.size", json!({"\u{17f}ize": 1})),
            ("args.kind", json!({"\u{212a}ind": 1})),
            ("args.Configuration.Url", json!({"configuration.url": 1})),
        ] {
            assert_eq!(resolve(path, args.clone()), Err(Ambiguous), "{path} {args}");
        }
        assert_eq!(
            resolve("args.opts.force", json!({"opts": {"forced": 1}})),
            Ok(None)
        );
        assert_eq!(
            resolve("args.media.0.url", json!({"media": [{"URL": 1}]})),
            Err(Ambiguous)
        );
        // A case variant beside an exact reading: which one the upstream takes is its call.
        for (path, args) in [
            (
                url,
                json!({"Configuration": {"Url": "ok"}, "configuration.url": "evil"}),
            ),
            (
                url,
                json!({"configuration": 0, "Configuration.Url": "evil"}),
            ),
            ("args.\u{3f4}", json!({"\u{3d1}": 1})),
        ] {
            assert_eq!(resolve(path, args.clone()), Err(Ambiguous), "{args}");
        }
    }

    #[test]
    fn operator_table() {
        let args = json!({
            "n": 5, "f": 2.5, "s": "5", "word": "hello world", "neg": -3,
            "big": u64::MAX, "t": true, "nul": null,
            "list": ["a", 1, "2"], "obj": {"k": "v"}, "nan": "NaN", "inf": "inf",
            "whole": 2.2e1, "spaced": " 20_000\n", "bad_underscore": "1__0",
            "vt": "\u{b}5000\u{a0}", "long": format!("{}5_000", "0".repeat(70)),
            "edge1": "_1", "edge2": "1_", "edge3": "1_.5", "edge4": "1e1_0", "big_whole": 1e16,
        });
        let cases: Vec<(&str, &str, Option<Value>, bool)> = vec![
            // eq / neq with numeric coercion
            ("args.n", "eq", Some(json!(5)), true),
            ("args.n", "eq", Some(json!(5.0)), true),
            ("args.n", "eq", Some(json!("5")), true),
            ("args.s", "eq", Some(json!(5)), true),
            ("args.s", "eq", Some(json!("5")), true),
            ("args.s", "eq", Some(json!("5.0")), false),
            ("args.n", "eq", Some(json!(6)), false),
            ("args.t", "eq", Some(json!(true)), true),
            ("args.t", "eq", Some(json!("true")), false),
            ("args.nul", "eq", Some(json!(null)), true),
            ("args.obj", "eq", Some(json!({"k": "v"})), true),
            ("args.missing", "eq", Some(json!(null)), false),
            ("args.n", "neq", Some(json!(6)), true),
            ("args.n", "neq", Some(json!("5")), false),
            ("args.missing", "neq", Some(json!(1)), false),
            // numeric-only comparisons
            ("args.n", "lt", Some(json!(6)), true),
            ("args.n", "lt", Some(json!(5)), false),
            ("args.n", "lte", Some(json!(5)), true),
            ("args.n", "gt", Some(json!(4.5)), true),
            ("args.n", "gte", Some(json!(5)), true),
            ("args.f", "gt", Some(json!(2)), true),
            ("args.s", "gt", Some(json!(4)), true),
            ("args.neg", "lt", Some(json!(0)), true),
            ("args.big", "gt", Some(json!(i64::MAX)), true),
            ("args.word", "gt", Some(json!(0)), false),
            ("args.spaced", "gt", Some(json!(10_000)), true),
            ("args.spaced", "eq", Some(json!(20_000)), true),
            ("args.bad_underscore", "gt", Some(json!(0)), false),
            ("args.vt", "gt", Some(json!(1000)), true),
            ("args.long", "eq", Some(json!(5000)), true),
            ("args.edge1", "gt", Some(json!(0)), false),
            ("args.edge2", "gt", Some(json!(0)), false),
            ("args.edge3", "gt", Some(json!(0)), false),
            ("args.edge4", "gt", Some(json!(0)), true),
            ("args.word", "lt", Some(json!(0)), false),
            ("args.t", "gt", Some(json!(0)), false),
            ("args.nul", "lt", Some(json!(1)), false),
            // Python reads "inf" (and "1e309") as infinity: more than any bound.
            ("args.inf", "gt", Some(json!(1)), true),
            ("args.inf", "lt", Some(json!(1)), false),
            ("args.list", "gt", Some(json!(0)), false),
            ("args.missing", "lt", Some(json!(1)), false),
            // in / not_in
            ("args.n", "in", Some(json!([1, "5"])), true),
            ("args.word", "in", Some(json!(["hello world"])), true),
            ("args.word", "in", Some(json!([])), false),
            ("args.n", "not_in", Some(json!([1, 2])), true),
            ("args.n", "not_in", Some(json!([5])), false),
            ("args.missing", "in", Some(json!([null])), false),
            ("args.missing", "not_in", Some(json!([1])), false),
            // exists
            ("args.n", "exists", Some(json!(true)), true),
            ("args.n", "exists", None, true),
            ("args.nul", "exists", Some(json!(true)), true),
            ("args.missing", "exists", Some(json!(true)), false),
            ("args.missing", "exists", Some(json!(false)), true),
            ("args.n", "exists", Some(json!(false)), false),
            // regex (RE2 syntax, unanchored unless anchored)
            ("args.word", "regex", Some(json!("wor")), true),
            ("args.word", "regex", Some(json!("^wor")), false),
            ("args.word", "regex", Some(json!("(?i)^HELLO")), true),
            ("args.n", "regex", Some(json!("^5$")), true),
            ("args.whole", "regex", Some(json!("^(22|3389)$")), true),
            ("args.whole", "regex", Some(json!("^22\\.0$")), true),
            ("args.f", "regex", Some(json!("^2$")), false),
            (
                "args.big_whole",
                "regex",
                Some(json!("^10000000000000000$")),
                true,
            ),
            ("args.t", "regex", Some(json!("^true$")), true),
            ("args.obj", "regex", Some(json!(".*")), false),
            ("args.missing", "regex", Some(json!(".*")), false),
            // contains
            ("args.word", "contains", Some(json!("lo wo")), true),
            ("args.word", "contains", Some(json!("LO")), false),
            ("args.list", "contains", Some(json!("a")), true),
            ("args.list", "contains", Some(json!(2)), true),
            ("args.list", "contains", Some(json!("1")), true),
            ("args.list", "contains", Some(json!("b")), false),
            ("args.n", "contains", Some(json!(5)), false),
            ("args.obj", "contains", Some(json!("k")), false),
            ("args.missing", "contains", Some(json!("a")), false),
        ];
        for (path, op, value, want) in cases {
            assert_eq!(
                holds(path, op, value.clone(), &args),
                want,
                "{path} {op} {value:?}"
            );
        }
    }

    #[test]
    fn values_are_checked_per_operator() {
        let path = ArgPath::parse("args.x").unwrap();
        let bad: Vec<(Op, Option<Value>)> = vec![
            (Op::Eq, None),
            (Op::Lt, Some(json!("5"))),
            (Op::Gte, None),
            (Op::In, Some(json!("a"))),
            (Op::NotIn, None),
            (Op::Exists, Some(json!("yes"))),
            (Op::Regex, Some(json!("("))),
            (Op::Regex, Some(json!(5))),
            (Op::Contains, None),
        ];
        for (op, value) in bad {
            assert!(
                Condition::compile(&path, op, value.as_ref()).is_err(),
                "{op} {value:?}"
            );
        }
        let err = compile_regex("(abc").unwrap_err();
        assert_eq!(err, "invalid regex \"(abc\": unclosed group");
        assert!(
            compile_regex("a{1000}{1000}")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn costs_are_non_negative_and_rounded_up() {
        assert_eq!(cost_of(&json!(5)), Some(5));
        assert_eq!(cost_of(&json!("7")), Some(7));
        assert_eq!(cost_of(&json!(2.1)), Some(3));
        assert_eq!(cost_of(&json!(0)), Some(0));
        assert_eq!(cost_of(&json!(-1)), None);
        assert_eq!(cost_of(&json!(-0.5)), None);
        assert_eq!(cost_of(&json!("abc")), None);
        assert_eq!(cost_of(&json!(true)), None);
        assert_eq!(cost_of(&json!(1e30)), None);
        assert_eq!(cost_of(&json!(u64::MAX)), Some(u64::MAX));
    }

    #[test]
    fn op_names_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.as_str()), Some(op));
        }
        assert_eq!(Op::from_name("equals"), None);
    }
}
