//! Answers to a legacy (HTTP+SSE, 2024-11-05) server's requests, routed without gateway state.
//!
//! While the gateway relays a call, a legacy upstream may send requests to the client on its
//! SSE stream (`sampling/createMessage`, `elicitation/create`, `roots/list`, `ping`). The client
//! answers with a POST that any replica may receive, and that replica must know where the
//! answer goes: the message endpoint of the upstream session whose stream is held open by the
//! relaying replica. So the relay replaces each such request's id with a sealed token
//! (AES-256-GCM with the session key ring, bound to the grant) holding that endpoint URL and
//! the original id, JSON type included. A client response whose id opens under its grant has
//! its id restored and is POSTed to the endpoint (still required to be on the server's origin,
//! with the server's credential headers).

use portcullis_core::{GrantId, Keyring};
use portcullis_mcp::{Message, RequestId};
use serde::{Deserialize, Serialize};

/// Where a client's answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The upstream session's message endpoint.
    pub endpoint: url::Url,
    /// The id the upstream gave its request.
    pub id: RequestId,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// The endpoint URL.
    e: String,
    /// The original id.
    i: RequestId,
}

/// Seals the id of a server→client request relayed under `grant` from `endpoint`.
pub fn seal(keys: &Keyring, grant: GrantId, endpoint: &url::Url, id: &RequestId) -> RequestId {
    let payload = Payload {
        e: endpoint.as_str().to_owned(),
        i: id.clone(),
    };
    // A string and a request id always serialize.
    let plain = serde_json::to_vec(&payload).unwrap_or_default();
    RequestId::String(keys.seal_text(
        &plain,
        &portcullis_core::crypto::legacy_reply_context(grant),
    ))
}

/// Opens the id of a client's response; `None` when it is not a token sealed under `grant`.
pub fn open(keys: &Keyring, grant: GrantId, id: &RequestId) -> Option<Reply> {
    let RequestId::String(token) = id else {
        return None;
    };
    let plain = keys
        .open_text(
            token.trim(),
            &portcullis_core::crypto::legacy_reply_context(grant),
        )
        .ok()?;
    let payload: Payload = serde_json::from_slice(&plain).ok()?;
    Some(Reply {
        endpoint: url::Url::parse(&payload.e).ok()?,
        id: payload.i,
    })
}

/// A client's response, with its id restored, and where it goes; `None` when the message is
/// not a response or its id is not a token sealed under `grant`.
pub fn open_response(keys: &Keyring, grant: GrantId, message: Message) -> Option<(Reply, Message)> {
    let reply = open(keys, grant, message.id()?)?;
    let restored = match message {
        Message::Response { result, .. } => Message::Response {
            id: reply.id.clone(),
            result,
        },
        Message::Error { error, .. } => Message::Error {
            id: Some(reply.id.clone()),
            error,
        },
        _ => return None,
    };
    Some((reply, restored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(raw: &str) -> Message {
        Message::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn ids_keep_their_type_and_open_only_under_their_grant() {
        let keys = Keyring::generate(1).0;
        let grant = GrantId::new();
        // A session id long enough that a random token never holds it by chance.
        let session = "legacy-session-0123456789";
        let endpoint = url::Url::parse(&format!(
            "http://127.0.0.1:9/messages/?session_id={session}"
        ))
        .unwrap();
        for (id, want) in [(r#"0"#, Value::from(0)), (r#""s-1""#, Value::from("s-1"))] {
            let id: RequestId = serde_json::from_str(id).unwrap();
            let RequestId::String(token) = seal(&keys, grant, &endpoint, &id) else {
                panic!("the sealed id is not a string")
            };
            assert!(!token.contains(session));

            let answer = parse(&format!(
                r#"{{"jsonrpc":"2.0","id":{},"result":{{"model":"m"}}}}"#,
                Value::String(token.clone())
            ));
            let (reply, restored) = open_response(&keys, grant, answer.clone()).unwrap();
            assert_eq!(reply.endpoint, endpoint);
            let restored: Value = serde_json::from_slice(&restored.encode()).unwrap();
            assert_eq!(restored["id"], want);
            assert_eq!(restored["result"]["model"], "m");
            assert!(open_response(&keys, GrantId::new(), answer).is_none());

            let error = parse(&format!(
                r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":-1,"message":"declined"}}}}"#,
                Value::String(token)
            ));
            let (_, restored) = open_response(&keys, grant, error).unwrap();
            let restored: Value = serde_json::from_slice(&restored.encode()).unwrap();
            assert_eq!(restored["id"], want);
            assert_eq!(restored["error"]["message"], "declined");
        }
        let plain = parse(r#"{"jsonrpc":"2.0","id":"abc","result":{}}"#);
        assert!(open_response(&keys, grant, plain).is_none());
    }
}
