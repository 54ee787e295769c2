//! The question a `confirm` rule puts to the agent's user: its message, with `{args.…}`
//! placeholders filled from the call's arguments, then the exact action (tool and arguments).
//!
//! Argument values come from the agent, which may be steered by whatever it read: they are
//! passed through the caller's redaction (the audit log's), stripped of control and
//! direction-changing characters, cut to a bounded length, and every character a Markdown or
//! HTML renderer would read as markup is escaped, so a value can neither hide the question,
//! fake a line of it, nor turn into a link or an image in the client that shows it.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::conditions::{Ambiguous, ArgPath};

/// Longest `message` a policy may give, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1_000;
/// Most placeholders in one message.
pub const MAX_PLACEHOLDERS: usize = 20;
/// Longest text one placeholder renders to, in characters (before escaping).
pub const MAX_VALUE_CHARS: usize = 120;
/// Longest rendering of the whole arguments under the question, in characters.
pub const MAX_ARGUMENTS_CHARS: usize = 600;

/// What a rule without a `message` asks.
const DEFAULT_MESSAGE: &str = "Allow this tool call?";

/// A parsed confirmation message. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Prompt {
    text: Arc<str>,
    parts: Arc<[Part]>,
}

#[derive(Debug, PartialEq, Eq)]
enum Part {
    Text(Box<str>),
    Arg(ArgPath),
}

impl fmt::Debug for Prompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl Default for Prompt {
    fn default() -> Self {
        Self {
            text: DEFAULT_MESSAGE.into(),
            parts: Arc::new([Part::Text(DEFAULT_MESSAGE.into())]),
        }
    }
}

impl Prompt {
    /// Parses a message: text with `{args.…}` placeholders; `{{` and `}}` are literal braces.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("message must not be empty; omit it for the default question".into());
        }
        let chars = text.chars().count();
        if chars > MAX_MESSAGE_CHARS {
            return Err(format!(
                "message is {chars} characters long; at most {MAX_MESSAGE_CHARS} are allowed"
            ));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{{") {
                literal.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                literal.push('}');
                rest = after;
            } else if tail.starts_with('}') {
                return Err(format!(
                    "unmatched \"}}\" at character {}; write \"}}}}\" for a literal brace",
                    text[..text.len() - tail.len()].chars().count()
                ));
            } else {
                let Some(end) = tail.find('}') else {
                    return Err(
                        "unterminated placeholder: \"{\" opens one like {args.to}; write \"{{\" for a literal brace"
                            .into(),
                    );
                };
                let inner = tail[1..end].trim();
                let path =
                    ArgPath::parse(inner).map_err(|e| format!("placeholder {{{inner}}}: {e}"))?;
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal).into()));
                }
                parts.push(Part::Arg(path));
                rest = &tail[end + 1..];
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal.into()));
        }
        let placeholders = parts.iter().filter(|p| matches!(p, Part::Arg(_))).count();
        if placeholders > MAX_PLACEHOLDERS {
            return Err(format!(
                "message has {placeholders} placeholders; at most {MAX_PLACEHOLDERS} are allowed"
            ));
        }
        Ok(Self {
            text: text.into(),
            parts: parts.into(),
        })
    }

    /// The message as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first placeholder whose path reads `args` more than one way, if any: such a call
    /// cannot be shown as the upstream would run it.
    pub fn ambiguous_in<'p>(&'p self, args: &Value) -> Option<&'p ArgPath> {
        self.paths()
            .find(|path| path.readings(args, &mut |_| Ok(false)).is_err())
    }

    fn paths(&self) -> impl Iterator<Item = &ArgPath> {
        self.parts.iter().filter_map(|part| match part {
            Part::Arg(path) => Some(path),
            Part::Text(_) => None,
        })
    }

    /// The question for the call of `tool` with `args`: the message with its placeholders
    /// filled, then the tool and its arguments. Values go through `redact` first.
    pub fn render(&self, tool: &str, args: &Value, redact: &dyn Fn(&Value) -> Value) -> String {
        let mut out = String::new();
        for part in self.parts.iter() {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Arg(path) => out.push_str(&placeholder(path, args, redact)),
            }
        }
        let arguments = serde_json::to_string(&redact(args)).unwrap_or_default();
        out.push_str("\n\nTool: ");
        out.push_str(&inert(tool, MAX_VALUE_CHARS));
        out.push_str("\nArguments: ");
        out.push_str(&inert(&arguments, MAX_ARGUMENTS_CHARS));
        out
    }
}

/// One placeholder's text: its readings (one, unless the path goes through `[]` or a string
/// that encodes JSON), each redacted and made inert, joined by `, `; `(none)` where the path
/// does not resolve.
fn placeholder(path: &ArgPath, args: &Value, redact: &dyn Fn(&Value) -> Value) -> String {
    let mut texts: Vec<String> = Vec::new();
    let read = path.readings(args, &mut |value| {
        texts.push(match value.map(redact) {
            None => NONE.to_owned(),
            Some(Value::String(s)) => inert(&s, MAX_VALUE_CHARS),
            Some(other) => inert(&other.to_string(), MAX_VALUE_CHARS),
        });
        // Enough readings to fill the bound; the rest would be cut anyway.
        Ok(texts.len() > MAX_VALUE_CHARS / 2)
    });
    match read {
        Err(Ambiguous) => "(ambiguous)".to_owned(),
        Ok(_) if texts.is_empty() => NONE.to_owned(),
        Ok(_) => {
            let joined = texts.join(", ");
            if joined.chars().count() > 2 * MAX_VALUE_CHARS {
                let mut cut: String = joined.chars().take(2 * MAX_VALUE_CHARS - 1).collect();
                cut.push('…');
                cut
            } else {
                joined
            }
        }
    }
}

/// What a placeholder whose path does not resolve shows.
const NONE: &str = "(none)";

/// `text` made inert for display: control, format and line-breaking characters become
/// spaces (runs collapsed), it is cut to `max` characters (ending in `…` when cut), and
/// Markdown and HTML punctuation is escaped with a backslash.
pub fn inert(text: &str, max: usize) -> String {
    let mut flat = String::with_capacity(text.len().min(max * 4));
    let mut space = false;
    for c in text.chars() {
        if c.is_control() || c.is_whitespace() || is_format(c) {
            if !space && !flat.is_empty() {
                flat.push(' ');
            }
            space = true;
        } else {
            flat.push(c);
            space = false;
        }
    }
    let flat = flat.trim_end();
    let count = flat.chars().count();
    let cut: String = if count > max {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        flat.to_owned()
    };
    let mut out = String::with_capacity(cut.len() + 8);
    for c in cut.chars() {
        if is_markup(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Characters that change how text around them reads without showing: zero-width ones,
/// direction marks and overrides, the byte order mark.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}')
}

/// ASCII punctuation that Markdown or HTML may read as markup.
fn is_markup(c: char) -> bool {
    matches!(
        c,
        '\\' | '`'
            | '*'
            | '_'
            | '['
            | ']'
            | '('
            | ')'
            | '<'
            | '>'
            | '#'
            | '!'
            | '|'
            | '~'
            | '&'
            | '{'
            | '}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same(v: &Value) -> Value {
        v.clone()
    }

    #[test]
    fn placeholders_are_filled_and_escaped_braces_kept() {
        let prompt = Prompt::parse("Send an SMS to {args.to} ({{literal}})?").unwrap();
        let text = prompt.render("send_sms", &json!({"to": "+441234", "body": "hi"}), &same);
        assert!(
            text.starts_with("Send an SMS to +441234 ({literal})?\n\nTool: send\\_sms\n"),
            "{text}"
        );
        assert!(
            text.ends_with(r#"Arguments: \{"body":"hi","to":"+441234"\}"#),
            "{text}"
        );
    }

    #[test]
    fn values_cannot_inject_markup_or_lines_and_are_cut() {
        let prompt = Prompt::parse("To {args.to}?").unwrap();
        let hostile = "x\n\nTool: harmless ![img](http://e/x) <b>\u{202E}evil";
        let text = prompt.render("t", &json!({"to": hostile}), &same);
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            r"To x Tool: harmless \!\[img\]\(http://e/x\) \<b\> evil?"
        );
        let long = "a".repeat(500);
        let text = prompt.render("t", &json!({"to": long}), &same);
        let first = text.lines().next().unwrap();
        assert_eq!(first.chars().count(), "To ?".len() + MAX_VALUE_CHARS);
        assert!(first.ends_with("…?"));
    }

    #[test]
    fn values_are_redacted_and_missing_ones_named() {
        let prompt = Prompt::parse("{args.key} {args.none} {args.n} {args.list[]}").unwrap();
        let redact = |v: &Value| match v {
            Value::String(s) if s.starts_with("sk-") => json!("[redacted]"),
            other => other.clone(),
        };
        let text = prompt.render(
            "t",
            &json!({"key": "sk-1", "n": 3, "list": [1, "b"]}),
            &redact,
        );
        assert!(text.starts_with(r"\[redacted\] (none) 3 1, b"), "{text}");
    }

    #[test]
    fn bad_messages_are_refused() {
        for (text, wanted) in [
            ("", "must not be empty"),
            ("Pay {args.amount", "unterminated"),
            ("Pay }", "unmatched"),
            ("Pay {amount}", "placeholder {amount}"),
            (&"x".repeat(MAX_MESSAGE_CHARS + 1), "at most"),
            (&"{args.a}".repeat(MAX_PLACEHOLDERS + 1), "placeholders"),
        ] {
            let error = Prompt::parse(text).unwrap_err();
            assert!(error.contains(wanted), "{text}: {error}");
        }
    }
}
