//! Server-Sent Events: an incremental decoder and an encoder, for proxying MCP streams.
//!
//! Decoding follows the WHATWG "event stream interpretation" rules (CR, LF and CRLF line
//! ends; one leading BOM; `field: value` with one optional space; a line without a colon is
//! a field with an empty value; unknown fields ignored; `retry` only when all digits; `id`
//! ignored when it contains NUL). Where a browser would drop something a proxy must keep,
//! this keeps it: comments are items of their own, emitted as soon as their line ends so
//! keep-alives pass through at once, and a block with only `id` or `retry` still yields an
//! event (the session-era priming event is an `id` with empty `data`).

use std::mem;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Error;
use crate::message::Message;

/// The event type of JSON-RPC messages on MCP streams (also the SSE default).
pub const MESSAGE_EVENT: &str = "message";
/// Legacy HTTP+SSE (2024-11-05): the first event, whose data is the POST endpoint URL.
pub const ENDPOINT_EVENT: &str = "endpoint";
/// Default limit on one event's buffered size (and on one unterminated line).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The line buffer's capacity kept between lines: a stream that once carried a long line
/// gives the rest back.
const KEPT_LINE_CAPACITY: usize = 64 * 1024;

/// One dispatched event; each field is `None` when the block did not set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (the type; `None` means the default, `message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; `Some("")` for a single empty `data:` line.
    pub data: Option<String>,
    /// `id:` (`Some("")` resets the last event id).
    pub id: Option<String>,
    /// `retry:` in milliseconds.
    pub retry: Option<u64>,
}

/// One unit of an SSE stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseFrame {
    /// A dispatched event.
    Event(SseEvent),
    /// A comment line, its text after the `:` kept verbatim (leading space included).
    Comment(String),
}

impl SseEvent {
    /// An event carrying one JSON-RPC message (as MCP servers send it).
    pub fn message(json: &str) -> Self {
        SseEvent {
            data: Some(json.to_owned()),
            ..SseEvent::default()
        }
    }

    /// True when the event type is `message` (given or defaulted).
    pub fn is_message(&self) -> bool {
        self.event
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == MESSAGE_EVENT)
    }

    /// Parses the data of a `message` event as a JSON-RPC message.
    ///
    /// `None` for other event types and for events without data or with empty data (the
    /// session-era priming event).
    pub fn json_rpc(&self) -> Option<Result<Message, Error>> {
        let data = self.data.as_deref().filter(|d| !d.is_empty())?;
        self.is_message().then(|| Message::parse(data.as_bytes()))
    }

    /// Encodes the event, ending with the blank line that dispatches it.
    ///
    /// Line breaks inside `data` become separate `data:` lines (so CR and CRLF read back as
    /// LF); line breaks in `event` and `id`, which SSE cannot carry, are dropped, as is NUL in
    /// `id`. An event with no field set encodes to nothing.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// Appends the encoding of [`SseEvent::encode`] to `buf`.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        if self.event.is_none() && self.data.is_none() && self.id.is_none() && self.retry.is_none()
        {
            return;
        }
        if let Some(event) = &self.event {
            put_field(buf, "event", event, &['\r', '\n']);
        }
        if let Some(id) = &self.id {
            put_field(buf, "id", id, &['\r', '\n', '\0']);
        }
        if let Some(retry) = self.retry {
            put_field(buf, "retry", &retry.to_string(), &[]);
        }
        if let Some(data) = &self.data {
            for line in lines(data) {
                put_field(buf, "data", line, &[]);
            }
        }
        buf.put_u8(b'\n');
    }
}

impl SseFrame {
    /// Encodes the frame.
    ///
    /// A comment is followed by a blank line: the blank line dispatches nothing, but keeps
    /// clients that split streams on blank lines (rather than parse SSE) from gluing a
    /// keep-alive to the next event.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// Appends the encoding of [`SseFrame::encode`] to `buf`.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        match self {
            SseFrame::Event(e) => e.encode_into(buf),
            SseFrame::Comment(text) => {
                for line in lines(text) {
                    buf.put_u8(b':');
                    buf.put_slice(line.as_bytes());
                    buf.put_u8(b'\n');
                }
                buf.put_u8(b'\n');
            }
        }
    }
}

fn put_field(buf: &mut BytesMut, name: &str, value: &str, drop: &[char]) {
    buf.put_slice(name.as_bytes());
    buf.put_slice(b": ");
    if value.contains(drop) {
        buf.put_slice(value.replace(drop, "").as_bytes());
    } else {
        buf.put_slice(value.as_bytes());
    }
    buf.put_u8(b'\n');
}

/// Splits on CRLF, CR and LF, the three line ends SSE recognises.
fn lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(r)
            }
            Some(i) => {
                let skip = if r[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&r[i + skip..]);
                Some(&r[..i])
            }
        }
    })
}

/// Incremental SSE decoder: feed it chunks as they arrive, split anywhere.
#[derive(Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    after_cr: bool,
    first_line: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    ready: Vec<SseFrame>,
    max_event_bytes: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder with [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A decoder that fails once one event (or one unterminated line) holds more than
    /// `max` bytes, so a peer cannot make the proxy buffer without bound.
    pub fn with_max_event_bytes(max: usize) -> Self {
        SseDecoder {
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            data: String::new(),
            has_data: false,
            event: None,
            id: None,
            retry: None,
            ready: Vec::new(),
            max_event_bytes: max,
        }
    }

    /// Feeds a chunk and yields every frame it completes, in stream order.
    ///
    /// Frames completed before an error in the same chunk are discarded with it; after
    /// [`Error::SseEventTooLarge`] the stream is unusable and should be closed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<std::vec::Drain<'_, SseFrame>, Error> {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            // The CR of a CRLF split across chunks already ended the line.
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.after_cr = false;
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let is_cr = rest[i] == b'\r';
            if self.line.is_empty() {
                self.process_line(&rest[..i]);
            } else {
                self.line.extend_from_slice(&rest[..i]);
                let line = mem::take(&mut self.line);
                self.process_line(&line);
                self.line = line;
                self.line.clear();
                // A long stream must not keep the buffer of its largest line for good.
                self.line.shrink_to(KEPT_LINE_CAPACITY);
            }
            self.check_size()?;
            rest = &rest[i + 1..];
            if is_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(rest);
        self.check_size()?;
        Ok(self.ready.drain(..))
    }

    /// Ends the stream and returns the event still being assembled, if any.
    ///
    /// The SSE spec discards an event that the stream ends before dispatching (no blank
    /// line), so a proxy should not forward it; it is returned so the caller can still
    /// log or audit what the peer sent.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.line.is_empty() {
            let line = mem::take(&mut self.line);
            self.process_line(&line);
        }
        self.after_cr = false;
        self.take_event()
    }

    fn pending_bytes(&self) -> usize {
        self.line.len()
            + self.data.len()
            + self.event.as_ref().map_or(0, String::len)
            + self.id.as_ref().map_or(0, String::len)
    }

    fn check_size(&mut self) -> Result<(), Error> {
        if self.pending_bytes() > self.max_event_bytes {
            self.line = Vec::new();
            self.data = String::new();
            self.has_data = false;
            self.event = None;
            self.id = None;
            self.retry = None;
            self.ready.clear();
            return Err(Error::SseEventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    fn process_line(&mut self, mut line: &[u8]) {
        if mem::take(&mut self.first_line) {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            if let Some(event) = self.take_event() {
                self.ready.push(SseFrame::Event(event));
            }
            return;
        }
        if let Some(comment) = line.strip_prefix(b":") {
            self.ready.push(SseFrame::Comment(
                String::from_utf8_lossy(comment).into_owned(),
            ));
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            // Only all-digit values count; one too large for u64 is ignored like any other
            // invalid retry.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Ok(ms) = std::str::from_utf8(value).unwrap_or("").parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        if !self.has_data && self.event.is_none() && self.id.is_none() && self.retry.is_none() {
            return None;
        }
        let data = if mem::take(&mut self.has_data) {
            let mut d = mem::take(&mut self.data);
            d.pop(); // the LF added after the last data line
            Some(d)
        } else {
            None
        };
        Some(SseEvent {
            event: self.event.take(),
            data,
            id: self.id.take(),
            retry: self.retry.take(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseFrame> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(d.push(c).unwrap());
        }
        out
    }

    fn ev(
        event: Option<&str>,
        data: Option<&str>,
        id: Option<&str>,
        retry: Option<u64>,
    ) -> SseFrame {
        SseFrame::Event(SseEvent {
            event: event.map(str::to_owned),
            data: data.map(str::to_owned),
            id: id.map(str::to_owned),
            retry,
        })
    }

    fn comment(s: &str) -> SseFrame {
        SseFrame::Comment(s.to_owned())
    }

    #[test]
    fn a_long_line_does_not_keep_its_buffer() {
        let mut decoder = SseDecoder::new();
        let long = "x".repeat(1024 * 1024);
        assert_eq!(decoder.push(b"data: ").unwrap().count(), 0);
        assert_eq!(decoder.push(long.as_bytes()).unwrap().count(), 0);
        let frames: Vec<SseFrame> = decoder.push(b"\n\n").unwrap().collect();
        assert_eq!(frames.len(), 1);
        assert!(decoder.line.capacity() <= KEPT_LINE_CAPACITY);
    }

    #[test]
    fn decodes_the_sse_spec_cases() {
        let cases: Vec<(&str, Vec<SseFrame>)> = vec![
            ("data: hello\n\n", vec![ev(None, Some("hello"), None, None)]),
            ("data:hello\n\n", vec![ev(None, Some("hello"), None, None)]),
            (
                "data:  two spaces\n\n",
                vec![ev(None, Some(" two spaces"), None, None)],
            ),
            (
                "data: YHOO\ndata: +2\ndata: 10\n\n",
                vec![ev(None, Some("YHOO\n+2\n10"), None, None)],
            ),
            ("data\n\n", vec![ev(None, Some(""), None, None)]),
            ("data\ndata\n\n", vec![ev(None, Some("\n"), None, None)]),
            ("data:\n\n", vec![ev(None, Some(""), None, None)]),
            (
                "event: add\ndata: 73857293\n\n",
                vec![ev(Some("add"), Some("73857293"), None, None)],
            ),
            (
                "id: 1\ndata: x\n\n",
                vec![ev(None, Some("x"), Some("1"), None)],
            ),
            ("id\n\n", vec![ev(None, None, Some(""), None)]),
            (
                "id: a\0b\ndata: x\n\n",
                vec![ev(None, Some("x"), None, None)],
            ),
            ("retry: 3000\n\n", vec![ev(None, None, None, Some(3000))]),
            (
                "retry: 30s\ndata: x\n\n",
                vec![ev(None, Some("x"), None, None)],
            ),
            ("retry:\ndata: x\n\n", vec![ev(None, Some("x"), None, None)]),
            ("retry: 99999999999999999999999\n\n", vec![]),
            (": keep-alive\n\n", vec![comment(" keep-alive")]),
            (":\n", vec![comment("")]),
            (
                "data: a\n: mid\ndata: b\n\n",
                vec![comment(" mid"), ev(None, Some("a\nb"), None, None)],
            ),
            ("unknown: x\n\n", vec![]),
            ("Data: x\n\n", vec![]),
            ("\n\n\n", vec![]),
            ("data: no blank line", vec![]),
            ("data: x\n", vec![]),
            (
                "\u{feff}data: bom\n\n",
                vec![ev(None, Some("bom"), None, None)],
            ),
            ("\u{feff}\u{feff}data: x\n\n", vec![]),
            ("data: x\r\n\r\n", vec![ev(None, Some("x"), None, None)]),
            (
                "data: x\r\rdata: y\r\r",
                vec![
                    ev(None, Some("x"), None, None),
                    ev(None, Some("y"), None, None),
                ],
            ),
            (
                "data: a\r\ndata: b\rdata: c\n\n",
                vec![ev(None, Some("a\nb\nc"), None, None)],
            ),
            (
                "event: endpoint\ndata: /messages?sessionId=abc\n\n",
                vec![ev(
                    Some("endpoint"),
                    Some("/messages?sessionId=abc"),
                    None,
                    None,
                )],
            ),
            (
                "data: {\"a\": \"b:c\"}\n\n",
                vec![ev(None, Some("{\"a\": \"b:c\"}"), None, None)],
            ),
            ("data: é\n\n", vec![ev(None, Some("é"), None, None)]),
        ];
        for (input, expected) in cases {
            assert_eq!(decode_all(&[input.as_bytes()]), expected, "{input:?}");
        }
    }

    #[test]
    fn handles_every_split_point() {
        let stream = "\u{feff}: hi\r\nid: 7\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\"}\r\ndata: é€😀\r\n\r\nretry: 10\r\rdata: y\n\n";
        let whole = decode_all(&[stream.as_bytes()]);
        assert_eq!(whole.len(), 4);
        let bytes = stream.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                assert_eq!(
                    decode_all(&[&bytes[..i], &bytes[i..j], &bytes[j..]]),
                    whole,
                    "{i} {j}"
                );
            }
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_all(&one_by_one), whole);
    }

    #[test]
    fn finish_returns_the_undispatched_event() {
        let mut d = SseDecoder::new();
        assert_eq!(d.push(b"data: a\ndata: b").unwrap().count(), 0);
        assert_eq!(
            d.finish(),
            Some(SseEvent {
                data: Some("a\nb".into()),
                ..SseEvent::default()
            })
        );
        assert_eq!(d.finish(), None);
        let mut d = SseDecoder::new();
        assert_eq!(d.push(b"data: a\n\n").unwrap().count(), 1);
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn limits_event_size() {
        let mut d = SseDecoder::with_max_event_bytes(16);
        assert_eq!(d.push(b"data: 0123456789\n\n").unwrap().count(), 1);
        let err = d.push(b"data: 0123456789\ndata: 0123456789\n").unwrap_err();
        assert_eq!(err, Error::SseEventTooLarge { limit: 16 });
        assert_eq!(err.http_status(), 502);
        let mut d = SseDecoder::with_max_event_bytes(16);
        assert!(d.push(&[b'x'; 17]).is_err());
        let mut d = SseDecoder::with_max_event_bytes(16);
        // Many small events in one chunk are fine: the limit is per event.
        let many = "data: 12345\n\n".repeat(100);
        assert_eq!(d.push(many.as_bytes()).unwrap().count(), 100);
    }

    #[test]
    fn encodes() {
        let cases: Vec<(SseFrame, &str)> = vec![
            (ev(None, Some("x"), None, None), "data: x\n\n"),
            (
                ev(Some("message"), Some("a\nb"), Some("42"), Some(5)),
                "event: message\nid: 42\nretry: 5\ndata: a\ndata: b\n\n",
            ),
            (
                ev(None, Some(""), Some("prime"), None),
                "id: prime\ndata: \n\n",
            ),
            (
                ev(None, Some("a\r\nb\rc"), None, None),
                "data: a\ndata: b\ndata: c\n\n",
            ),
            (
                ev(Some("e\r\nv"), None, Some("i\nd\0"), None),
                "event: ev\nid: id\n\n",
            ),
            (ev(None, None, None, None), ""),
            (comment(" keep-alive"), ": keep-alive\n\n"),
            (comment(""), ":\n\n"),
            (comment("a\nb"), ":a\n:b\n\n"),
        ];
        for (frame, expected) in cases {
            assert_eq!(&frame.encode()[..], expected.as_bytes(), "{frame:?}");
        }
    }

    #[test]
    fn carries_json_rpc_messages() {
        // A session-era POST answered with SSE: priming event, progress, then the response.
        let stream = concat!(
            "id: ev-0\ndata: \n\n",
            "id: ev-1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"abc123\",\"progress\":50,\"total\":100,\"message\":\"Reticulating splines...\"}}\n\n",
            ": ping\n\n",
            "id: ev-2\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"72°F\"}],\"isError\":false}}\n\n",
        );
        let frames = decode_all(&[stream.as_bytes()]);
        let events: Vec<&SseEvent> = frames
            .iter()
            .filter_map(|f| match f {
                SseFrame::Event(e) => Some(e),
                SseFrame::Comment(_) => None,
            })
            .collect();
        assert_eq!(events.len(), 3);
        assert!(events[0].json_rpc().is_none());
        let progress = events[1].json_rpc().unwrap().unwrap();
        assert_eq!(progress.method(), Some("notifications/progress"));
        let response = events[2].json_rpc().unwrap().unwrap();
        assert!(response.is_response());
        let endpoint = SseEvent {
            event: Some(ENDPOINT_EVENT.into()),
            data: Some("/messages".into()),
            ..SseEvent::default()
        };
        assert!(endpoint.json_rpc().is_none());
        assert!(SseEvent::message("{").json_rpc().unwrap().is_err());
        // Re-encoding what was decoded gives a stream that decodes the same.
        let mut re = BytesMut::new();
        for f in &frames {
            f.encode_into(&mut re);
        }
        assert_eq!(decode_all(&[&re]), frames);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn frame() -> impl Strategy<Value = SseFrame> {
            let event = (
                proptest::option::of("[^\r\n]{0,12}"),
                proptest::option::of("[^\r]{0,40}"),
                proptest::option::of("[^\r\n\x00]{0,12}"),
                proptest::option::of(any::<u64>()),
            )
                .prop_filter("an event sets at least one field", |(e, d, i, r)| {
                    e.is_some() || d.is_some() || i.is_some() || r.is_some()
                })
                .prop_map(|(event, data, id, retry)| {
                    SseFrame::Event(SseEvent {
                        event,
                        data,
                        id,
                        retry,
                    })
                });
            prop_oneof![
                1 => "[^\r\n]{0,20}".prop_map(SseFrame::Comment),
                4 => event,
            ]
        }

        proptest! {
            #[test]
            fn encode_split_decode_round_trips(
                frames in proptest::collection::vec(frame(), 0..8),
                line_end in 0..3usize,
                bom in any::<bool>(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let mut encoded = BytesMut::new();
                for f in &frames {
                    f.encode_into(&mut encoded);
                }
                // Every LF the encoder writes is a line end (data lines are split), so any
                // of the three SSE line ends can stand in for it.
                let ending: &[u8] = [&b"\n"[..], b"\r\n", b"\r"][line_end];
                let mut stream: Vec<u8> = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
                for &b in encoded.iter() {
                    if b == b'\n' { stream.extend_from_slice(ending) } else { stream.push(b) }
                }
                let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
                points.sort_unstable();
                let mut decoder = SseDecoder::new();
                let mut decoded = Vec::new();
                let mut start = 0;
                for p in points.into_iter().chain([stream.len()]) {
                    decoded.extend(decoder.push(&stream[start..p]).unwrap());
                    start = p;
                }
                prop_assert_eq!(decoder.finish(), None);
                prop_assert_eq!(decoded, frames);
            }

            #[test]
            fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
                let mut decoder = SseDecoder::with_max_event_bytes(256);
                for c in &chunks {
                    match decoder.push(c) {
                        Ok(frames) => for f in frames {
                            let _ = f.encode();
                            if let SseFrame::Event(e) = f { let _ = e.json_rpc(); }
                        },
                        Err(e) => prop_assert_eq!(e, Error::SseEventTooLarge { limit: 256 }),
                    }
                }
                let _ = decoder.finish();
            }
        }
    }
}
