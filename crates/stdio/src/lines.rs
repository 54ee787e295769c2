//! Reading newline-delimited messages with a bound on each line's size.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One read from a [`Lines`] reader.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its line ending.
    Text(Vec<u8>),
    /// A line longer than the bound, skipped whole; how many bytes it had.
    TooLong(usize),
}

/// Splits a stream into lines of at most `max` bytes. A longer line is skipped whole (never
/// buffered past the bound), so one oversized message cannot exhaust memory or end the stream.
pub struct Lines<R> {
    reader: R,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    /// Reads lines of at most `max` bytes from `reader`.
    pub fn new(reader: R, max: usize) -> Self {
        Self { reader, max }
    }

    /// The next line; `None` at the end of the stream (a last line without a newline counts).
    pub async fn next(&mut self) -> std::io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut seen = 0usize;
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                return Ok(match seen {
                    0 => None,
                    n if n > self.max => Some(Line::TooLong(n)),
                    _ => Some(Line::Text(trim_cr(line))),
                });
            }
            let (part, done) = match memchr(chunk) {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            seen += part.len();
            if seen <= self.max {
                line.extend_from_slice(part);
            } else if !line.is_empty() {
                line = Vec::new();
            }
            let consumed = done.unwrap_or(part.len());
            self.reader.consume(consumed);
            if done.is_some() {
                return Ok(Some(if seen > self.max {
                    Line::TooLong(seen)
                } else {
                    Line::Text(trim_cr(line))
                }));
            }
        }
    }
}

fn memchr(chunk: &[u8]) -> Option<usize> {
    chunk.iter().position(|&b| b == b'\n')
}

fn trim_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn read_all(input: &[u8], max: usize, capacity: usize) -> Vec<Line> {
        let reader = tokio::io::BufReader::with_capacity(capacity, input);
        let mut lines = Lines::new(reader, max);
        let mut out = Vec::new();
        while let Some(line) = lines.next().await.unwrap() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_skips_the_oversized_ones_whole() {
        for capacity in [1, 3, 64] {
            let lines = read_all(b"ab\r\n\n0123456789\nxyz", 5, capacity).await;
            assert_eq!(
                lines,
                vec![
                    Line::Text(b"ab".to_vec()),
                    Line::Text(Vec::new()),
                    Line::TooLong(10),
                    Line::Text(b"xyz".to_vec()),
                ],
                "buffer of {capacity}"
            );
        }
        assert_eq!(read_all(b"", 5, 8).await, vec![]);
        assert_eq!(read_all(b"0123456", 5, 8).await, vec![Line::TooLong(7)]);
    }
}
