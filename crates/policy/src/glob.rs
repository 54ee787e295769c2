//! Tool-name patterns: `*` matches any run of characters (including none), `?` exactly one.
//!
//! Every other character is literal, so there is nothing to escape and no pattern is invalid.
//! When several patterns match a name, the most specific one wins; see [`Glob::more_specific`].

use std::cmp::Ordering;

/// A compiled tool-name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<str>,
    literals: usize,
    singles: usize,
    stars: usize,
}

impl Glob {
    /// Whether `text` contains a wildcard and so is a pattern rather than a plain name.
    pub fn is_pattern(text: &str) -> bool {
        text.contains(['*', '?'])
    }

    /// Compiles `pattern`; every string is a valid pattern.
    pub fn new(pattern: &str) -> Self {
        let (mut literals, mut singles, mut stars) = (0, 0, 0);
        for c in pattern.chars() {
            match c {
                '*' => stars += 1,
                '?' => singles += 1,
                _ => literals += 1,
            }
        }
        Self {
            pattern: pattern.into(),
            literals,
            singles,
            stars,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        wildcard_match(self.pattern.as_bytes(), name.as_bytes())
    }

    /// Orders patterns most specific first: more literal characters, then more `?`, then fewer
    /// `*`, then byte-wise lexical order of the pattern, which makes the order total.
    pub fn more_specific(&self, other: &Self) -> Ordering {
        other
            .literals
            .cmp(&self.literals)
            .then(other.singles.cmp(&self.singles))
            .then(self.stars.cmp(&other.stars))
            .then(self.pattern.cmp(&other.pattern))
    }
}

/// Length of the UTF-8 sequence that starts with `lead`; `?` consumes whole characters.
fn char_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Linear-space wildcard matching with single-star backtracking: O(pattern × name) at worst,
/// and names and patterns are short, so no compilation to an automaton is worth it.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, text index it absorbed to).
    let mut resume: Option<(usize, usize)> = None;
    while let Some(&byte) = text.get(t) {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                resume = Some((p, t));
                continue;
            }
            Some(b'?') => {
                p += 1;
                t += char_len(byte);
                continue;
            }
            Some(&literal) if literal == byte => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match resume {
            Some((after_star, absorbed)) => {
                let next = absorbed + text.get(absorbed).map_or(1, |&b| char_len(b));
                resume = Some((after_star, next));
                p = after_star;
                t = next;
            }
            None => return false,
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&b| b == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("delete_*", "delete_repo", true),
            ("delete_*", "delete_", true),
            ("delete_*", "undelete_repo", false),
            ("*_message", "send_message", true),
            ("*_message", "send_messages", false),
            ("send_?", "send_a", true),
            ("send_?", "send_", false),
            ("send_?", "send_ab", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("a*b*c", "abcbc", true),
            (
                "*Delete*",
                "TwilioConversationsV1--DeleteConversation",
                true,
            ),
            ("Twilio*--Fetch*", "TwilioApiV2010--FetchCall", true),
            ("Twilio*--Fetch*", "TwilioApiV2010--ListCall", false),
            ("??", "é!", true),
            ("?", "é", true),
            ("é*", "éa", true),
            ("**", "x", true),
            ("exact", "exact", true),
            ("exact", "exac", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(
                Glob::new(pattern).matches(name),
                want,
                "{pattern:?} vs {name:?}"
            );
        }
    }

    #[test]
    fn specificity_prefers_literals_then_single_wildcards_then_fewer_stars_then_lexical() {
        let mut globs: Vec<Glob> = ["*", "send_*", "send_??", "send_*_*", "*_*", "a*", "b*"]
            .into_iter()
            .map(Glob::new)
            .collect();
        globs.sort_by(Glob::more_specific);
        let order: Vec<&str> = globs.iter().map(Glob::as_str).collect();
        assert_eq!(
            order,
            ["send_*_*", "send_??", "send_*", "a*", "b*", "*_*", "*"]
        );
    }

    #[test]
    fn patterns_are_recognised() {
        assert!(Glob::is_pattern("a*"));
        assert!(Glob::is_pattern("a?"));
        assert!(!Glob::is_pattern("send_message"));
    }
}
