//! A line diff of two texts (pretty-printed policy documents), by longest common subsequence.

use serde::Serialize;

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// `" "` unchanged, `"-"` only in the old text, `"+"` only in the new one.
    pub op: &'static str,
    /// The line's text.
    pub text: String,
}

/// Beyond this many lines on either side the LCS table would be too large: fall back to
/// "everything removed, everything added".
const MAX_LINES: usize = 4000;

/// The lines of `old` and `new`, each marked unchanged, removed or added.
pub fn lines(old: &str, new: &str) -> Vec<Line> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let line = |op, text: &str| Line {
        op,
        text: text.to_owned(),
    };
    if a.len() > MAX_LINES || b.len() > MAX_LINES {
        return a
            .iter()
            .map(|t| line("-", t))
            .chain(b.iter().map(|t| line("+", t)))
            .collect();
    }
    // lcs[i][j] = length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(line(" ", a[i]));
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            out.push(line("-", a[i]));
            i += 1;
        } else {
            out.push(line("+", b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|t| line("-", t)));
    out.extend(b[j..].iter().map(|t| line("+", t)));
    out
}

/// The diff as text, one `op text` line each.
pub fn unified(lines: &[Line]) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(l.op);
        out.push_str(&l.text);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_changed_lines() {
        let d = lines("a\nb\nc", "a\nx\nc\nd");
        let ops: Vec<(&str, &str)> = d.iter().map(|l| (l.op, l.text.as_str())).collect();
        assert_eq!(
            ops,
            vec![(" ", "a"), ("-", "b"), ("+", "x"), (" ", "c"), ("+", "d")]
        );
        assert_eq!(unified(&d), " a\n-b\n+x\n c\n+d\n");
        assert!(lines("same", "same").iter().all(|l| l.op == " "));
    }
}
