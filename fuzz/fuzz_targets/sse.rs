//! Decodes arbitrary bytes as an SSE stream, as the gateway does with every upstream stream.
//! The first byte picks the chunk size and the event size limit. Any panic is a finding, and
//! so is a stream that decodes differently when split into chunks, or frames that do not
//! decode back to themselves once re-encoded (the gateway re-encodes what it relays).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_mcp::{SseDecoder, SseFrame};

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(knobs & 0x0f) + 1;
    let limit = if knobs & 0x10 == 0 { 1 << 20 } else { 64 };

    let whole = decode(&[stream], limit);
    let chunks: Vec<&[u8]> = stream.chunks(chunk).collect();
    let split = decode(&chunks, limit);
    match (&whole, &split) {
        (Ok(w), Ok(s)) => assert_eq!(w, s, "chunking changed the frames"),
        // Split streams are also checked mid-line, so they may fail where the whole does not,
        // never the other way round.
        (Err(_), Ok(_)) => panic!("the whole stream failed where its chunks did not"),
        _ => {}
    }

    if let Ok((frames, _)) = whole {
        let mut encoded = Vec::new();
        for frame in &frames {
            encoded.extend_from_slice(&frame.encode());
            if let SseFrame::Event(event) = frame {
                let _ = event.json_rpc();
            }
        }
        let (again, tail) = decode(&[&encoded], usize::MAX).expect("no limit");
        assert_eq!(again, frames, "re-encoded frames decode to themselves");
        assert_eq!(tail, None, "every re-encoded event is dispatched");
    }
});

type Decoded = (Vec<SseFrame>, Option<portcullis_mcp::SseEvent>);

fn decode(chunks: &[&[u8]], limit: usize) -> Result<Decoded, portcullis_mcp::Error> {
    let mut decoder = SseDecoder::with_max_event_bytes(limit);
    let mut frames = Vec::new();
    for chunk in chunks {
        frames.extend(decoder.push(chunk)?);
    }
    Ok((frames, decoder.finish()))
}
