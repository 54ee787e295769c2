//! Windows and timeouts: `minute`, `hour`, `day`, or a duration such as `"90s"`, `"15m"`, `"2h"`, `"1d"`.

use std::fmt;
use std::time::Duration;

/// The shortest window or timeout a policy may name.
pub const MIN: Duration = Duration::from_secs(1);
/// The longest window or timeout a policy may name (366 days: a yearly budget still fits).
pub const MAX: Duration = Duration::from_secs(366 * 86_400);

/// A duration as written in a policy, keeping its text so a document round-trips unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    text: Box<str>,
    duration: Duration,
}

impl Span {
    /// Parses `minute`, `hour`, `day`, `second`, or `<digits><s|m|h|d>`, between 1 s and 366 d.
    pub fn parse(text: &str) -> Result<Self, SpanError> {
        let duration = parse(text)?;
        Ok(Self {
            text: text.into(),
            duration,
        })
    }

    /// One minute, written `minute`.
    pub(crate) fn minute() -> Self {
        Self {
            text: "minute".into(),
            duration: Duration::from_secs(60),
        }
    }

    /// The length of the span.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The text as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Span::parse(&text).map_err(|e| serde::de::Error::custom(e.describe("duration", &text)))
    }
}

/// Why a duration did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanError {
    /// Not a word or `<digits><unit>`.
    Unrecognised,
    /// Shorter than one second (including zero).
    TooShort,
    /// Longer than 366 days.
    TooLong,
}

impl SpanError {
    /// A one-line message about `text`, used as the `what` (`window`, `timeout`) of a policy.
    pub fn describe(self, what: &str, text: &str) -> String {
        match self {
            SpanError::Unrecognised => format!(
                "unknown {what} {text:?}; expected minute, hour, day or a duration like \"90s\""
            ),
            SpanError::TooShort => format!("{what} {text:?} is too short; the minimum is 1s"),
            SpanError::TooLong => format!("{what} {text:?} is too long; the maximum is 366d"),
        }
    }
}

fn parse(text: &str) -> Result<Duration, SpanError> {
    let duration = match text {
        "second" => Duration::from_secs(1),
        "minute" => Duration::from_secs(60),
        "hour" => Duration::from_secs(3_600),
        "day" => Duration::from_secs(86_400),
        _ => {
            let split = text
                .find(|c: char| !c.is_ascii_digit())
                .ok_or(SpanError::Unrecognised)?;
            let (digits, unit) = text.split_at(split);
            if digits.is_empty() {
                return Err(SpanError::Unrecognised);
            }
            let unit_secs: u64 = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3_600,
                "d" => 86_400,
                _ => return Err(SpanError::Unrecognised),
            };
            // Digits that overflow u64 are certainly longer than the maximum.
            let n: u64 = digits.parse().map_err(|_| SpanError::TooLong)?;
            Duration::from_secs(n.checked_mul(unit_secs).ok_or(SpanError::TooLong)?)
        }
    };
    if duration < MIN {
        Err(SpanError::TooShort)
    } else if duration > MAX {
        Err(SpanError::TooLong)
    } else {
        Ok(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("second", 1),
            ("minute", 60),
            ("hour", 3_600),
            ("day", 86_400),
            ("30s", 30),
            ("90s", 90),
            ("15m", 900),
            ("2h", 7_200),
            ("1d", 86_400),
            ("366d", 366 * 86_400),
        ];
        for (text, secs) in ok {
            let span = Span::parse(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(span.duration(), Duration::from_secs(secs), "{text}");
            assert_eq!(span.as_str(), text);
        }
        let bad = [
            ("minit", SpanError::Unrecognised),
            ("", SpanError::Unrecognised),
            ("s", SpanError::Unrecognised),
            ("10", SpanError::Unrecognised),
            ("10ms", SpanError::Unrecognised),
            ("-5s", SpanError::Unrecognised),
            ("1.5h", SpanError::Unrecognised),
            ("5 m", SpanError::Unrecognised),
            ("Minute", SpanError::Unrecognised),
            ("0s", SpanError::TooShort),
            ("367d", SpanError::TooLong),
            ("99999999999999999999999s", SpanError::TooLong),
            ("9999999999999999999d", SpanError::TooLong),
        ];
        for (text, err) in bad {
            assert_eq!(Span::parse(text), Err(err), "{text}");
        }
    }

    #[test]
    fn messages_name_the_accepted_forms() {
        assert_eq!(
            SpanError::Unrecognised.describe("window", "minit"),
            "unknown window \"minit\"; expected minute, hour, day or a duration like \"90s\""
        );
    }
}
