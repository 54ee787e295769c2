//! Opens arbitrary ids as the sealed reply tokens of legacy (HTTP+SSE) upstream requests, as
//! the gateway does with every client response it is sent, and seals an endpoint and id read
//! from the input to open them again. Any panic is a finding, and so is a forged or altered
//! token that opens, a token that opens under another grant, or a reply that comes back
//! aimed at another endpoint or id.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis_core::{GrantId, Keyring};
use portcullis_gateway::replies;
use portcullis_mcp::{Message, RequestId};

static GRANTS: LazyLock<(GrantId, GrantId)> = LazyLock::new(|| {
    (
        "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
            .parse()
            .expect("a grant id"),
        "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c"
            .parse()
            .expect("a grant id"),
    )
});

fuzz_target!(|data: &[u8]| {
    // A fresh key for each input: libFuzzer learns the values the target compares, tokens
    // sealed under earlier inputs among them, and those must not count as forged.
    let keys = &Keyring::generate(7).0;
    let (grant, other) = *GRANTS;
    let text = String::from_utf8_lossy(data);

    // Nothing the fuzzer writes was sealed by this key, whatever the id's JSON type.
    let id = serde_json::from_str::<RequestId>(&text)
        .unwrap_or_else(|_| RequestId::String(text.clone().into_owned()));
    assert_eq!(replies::open(keys, grant, &id), None);
    if let Ok(message) = Message::parse(data) {
        assert!(replies::open_response(keys, grant, message).is_none());
    }

    // The input as `endpoint SPACE id`: what seals opens to the same endpoint and id.
    let (endpoint, id) = text.split_once(' ').unwrap_or((&text, "1"));
    let Ok(endpoint) = url::Url::parse(endpoint) else {
        return;
    };
    let id = serde_json::from_str::<RequestId>(id).unwrap_or_else(|_| RequestId::String(id.into()));
    let token = replies::seal(keys, grant, &endpoint, &id);
    let reply = replies::open(keys, grant, &token).expect("a sealed token opens");
    assert_eq!(
        reply.endpoint, endpoint,
        "the answer goes where the request came from"
    );
    assert_eq!(reply.id, id);
    assert_eq!(replies::open(keys, other, &token), None);

    let RequestId::String(sealed) = &token else {
        panic!("a token is a string id");
    };
    let response = format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#,
        serde_json::to_string(sealed).expect("a string serialises")
    );
    let message = Message::parse(response.as_bytes()).expect("a response parses");
    let (reply, restored) = replies::open_response(keys, grant, message).expect("it opens");
    assert_eq!(
        restored.id(),
        Some(&id),
        "the upstream's own id is restored"
    );
    assert_eq!(reply.endpoint, endpoint);

    // One character changed: the token no longer opens.
    let mut altered = sealed.clone().into_bytes();
    let at = data.len() % altered.len();
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    let altered = RequestId::String(String::from_utf8_lossy(&altered).into_owned());
    assert_eq!(replies::open(keys, grant, &altered), None);
});
