//! The crate's one error type: a problem in a policy document, located by a JSON pointer.

use std::borrow::Cow;
use std::fmt;

/// A problem found in a policy document: where (a JSON pointer, RFC 6901) and what, in plain words.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyError {
    /// JSON pointer into the document; empty for the document itself.
    pub pointer: String,
    /// One line a policy author can act on.
    pub message: String,
}

impl PolicyError {
    /// An error at `pointer`; newlines in `message` are flattened so every error stays one line.
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = if message.contains('\n') {
            message.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            message
        };
        Self {
            pointer: pointer.into(),
            message,
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "(document): {}", self.message)
        } else {
            write!(f, "{}: {}", self.pointer, self.message)
        }
    }
}

impl std::error::Error for PolicyError {}

/// Escapes one reference token of a JSON pointer (`~` → `~0`, `/` → `~1`).
pub(crate) fn escape_token(token: &str) -> Cow<'_, str> {
    if token.contains(['~', '/']) {
        Cow::Owned(token.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(token)
    }
}

/// `pointer` extended by one (escaped) reference token.
pub(crate) fn child(pointer: &str, token: &str) -> String {
    let token = escape_token(token);
    let mut out = String::with_capacity(pointer.len() + 1 + token.len());
    out.push_str(pointer);
    out.push('/');
    out.push_str(&token);
    out
}

/// `pointer` extended by an array index.
pub(crate) fn index(pointer: &str, i: usize) -> String {
    format!("{pointer}/{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(child("/tools", "a/b~c"), "/tools/a~1b~0c");
        assert_eq!(child("", "tools"), "/tools");
        assert_eq!(index("/hide", 3), "/hide/3");
    }

    #[test]
    fn display_puts_the_pointer_first_and_stays_on_one_line() {
        let e = PolicyError::new("/tools/x/limits/0/window", "bad\n  window");
        assert_eq!(e.to_string(), "/tools/x/limits/0/window: bad window");
        assert_eq!(
            PolicyError::new("", "expected an object").to_string(),
            "(document): expected an object"
        );
    }
}
