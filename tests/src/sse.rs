//! Reading SSE answers in tests.

use std::time::Duration;

use serde_json::Value;

/// Reads the JSON-RPC messages of an SSE answer one by one, as they arrive.
pub struct SseMessages {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl SseMessages {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next message; `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).unwrap();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if let Ok(message) = serde_json::from_str(&data.join("\n")) {
                    return Some(message);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("no SSE event within 30 s")
                .unwrap()?;
            self.buffer.extend_from_slice(&chunk);
        }
    }
}
