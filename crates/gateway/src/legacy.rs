//! Upstreams on the 2024-11-05 HTTP+SSE transport: GET the SSE stream, read its `endpoint`
//! event, POST messages there, read the answers on the stream.
//!
//! That transport ties a session to one open stream, which a stateless gateway cannot hold
//! across replicas. So each client request opens its own upstream stream, replays the client's
//! `initialize` (kept, sealed, in the session id the client holds), sends the request, relays
//! what the upstream sends until the request's answer, and closes.
//!
//! Server→client requests (sampling, elicitation, roots, ping) sent while a call is relayed
//! reach the client with their id replaced by a sealed token naming the upstream session's
//! message endpoint ([`crate::replies`]); the client's answer, on whichever replica it
//! arrives, opens that token and is POSTed to the endpoint with its original id, while the
//! relaying replica still holds the stream the upstream answers on.
//!
//! Client notifications are acknowledged without being forwarded: a notification has no id
//! that could carry such a token, and the client's session names no upstream session (only
//! the `initialize` to replay), so the gateway cannot tell which upstream stream, if any, it
//! belongs to; on a fresh stream it would reach a session that never saw the request it is
//! about.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::http::{HeaderValue, Method, header};
use bytes::Bytes;
use futures::StreamExt as _;
use portcullis_core::{GrantId, Keyring};
use portcullis_mcp::sse::{ENDPOINT_EVENT, SseDecoder, SseEvent, SseFrame};
use portcullis_mcp::{Message, RequestId};
use serde_json::json;

use crate::grants::Server;
use crate::relay::ByteStream;
use crate::upstream::{
    Mirrored, Upstream, UpstreamError, body_stream, is_event_stream, request_headers,
};

/// The id of the replayed `initialize`; a client cannot collide with it on this connection,
/// which carries nothing else before the handshake ends.
const INIT_ID: &str = "portcullis-initialize";

/// `initialize` params for clients that never sent one (stateless-era clients).
pub fn default_init_params() -> String {
    json!({
        "protocolVersion": "2024-11-05",
        "capabilities": {},
        "clientInfo": { "name": "portcullis-gateway", "version": env!("CARGO_PKG_VERSION") },
    })
    .to_string()
}

/// One open upstream SSE stream.
pub struct Connection {
    stream: ByteStream,
    decoder: SseDecoder,
    queue: VecDeque<SseFrame>,
    endpoint: url::Url,
}

impl Connection {
    /// Opens the stream and waits for the `endpoint` event.
    pub async fn open(upstream: &Upstream, server: &Server) -> Result<Self, UpstreamError> {
        let mut headers = request_headers(&Default::default(), server, Mirrored::None, false);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let response = upstream
            .send(Method::GET, &server.uri, headers, None)
            .await?;
        if !response.status().is_success() || !is_event_stream(response.headers()) {
            return Err(UpstreamError::Protocol(format!(
                "the SSE endpoint answered {} without an event stream",
                response.status()
            )));
        }
        let mut connection = Self {
            stream: body_stream(response),
            decoder: SseDecoder::new(),
            queue: VecDeque::new(),
            endpoint: server.url.clone(),
        };
        let timeout = upstream.timeout();
        let endpoint = tokio::time::timeout(timeout, async {
            loop {
                let Some(event) = connection.next_event().await? else {
                    return Err(UpstreamError::Protocol(
                        "the SSE stream ended before its endpoint event".into(),
                    ));
                };
                if event.event.as_deref() == Some(ENDPOINT_EVENT) {
                    return Ok(event.data.unwrap_or_default());
                }
            }
        })
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))??;
        connection.endpoint = server
            .url
            .join(endpoint.trim())
            .map_err(|e| UpstreamError::Protocol(format!("unusable endpoint {endpoint:?}: {e}")))?;
        // The message endpoint must stay on the registered server: a malicious upstream must
        // not point the gateway (and the server's credentials) elsewhere.
        if connection.endpoint.origin() != server.url.origin() {
            return Err(UpstreamError::Protocol(
                "the endpoint event points to another origin".into(),
            ));
        }
        Ok(connection)
    }

    /// The next event, comments skipped.
    async fn next_event(&mut self) -> Result<Option<SseEvent>, UpstreamError> {
        loop {
            match self.next_frame().await? {
                Some(SseFrame::Event(event)) => return Ok(Some(event)),
                Some(SseFrame::Comment(_)) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next event or comment (an upstream's keep-alive, which the client needs too).
    async fn next_frame(&mut self) -> Result<Option<SseFrame>, UpstreamError> {
        loop {
            if let Some(frame) = self.queue.pop_front() {
                return Ok(Some(frame));
            }
            let Some(chunk) = self.stream.next().await else {
                return Ok(None);
            };
            let chunk = chunk.map_err(|e| UpstreamError::Protocol(format!("SSE stream: {e}")))?;
            let frames = self
                .decoder
                .push(&chunk)
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            self.queue.extend(frames);
        }
    }

    /// POSTs one message to the endpoint. (`&mut`: the connection's stream is `Send` but not
    /// `Sync`, so a shared borrow could not cross an await.)
    pub async fn post(
        &mut self,
        upstream: &Upstream,
        server: &Server,
        body: Bytes,
    ) -> Result<(), UpstreamError> {
        post_message(upstream, server, &self.endpoint, body).await
    }

    /// Waits (up to the response timeout) for the answer to `id`, skipping anything before it.
    pub async fn answer_to(
        &mut self,
        upstream: &Upstream,
        id: &RequestId,
    ) -> Result<SseEvent, UpstreamError> {
        let timeout = upstream.timeout();
        tokio::time::timeout(timeout, async {
            loop {
                let Some(event) = self.next_event().await? else {
                    return Err(UpstreamError::Protocol(
                        "the SSE stream ended before the answer".into(),
                    ));
                };
                if let Some(Ok(message)) = event.json_rpc()
                    && message.is_response()
                    && message.id().is_some_and(|answer| id.answered_by(answer))
                {
                    return Ok(event);
                }
            }
        })
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
    }

    /// Replays the session's `initialize` and completes the handshake.
    pub async fn handshake(
        &mut self,
        upstream: &Upstream,
        server: &Server,
        init_params: &str,
    ) -> Result<(), UpstreamError> {
        let params: serde_json::Value = serde_json::from_str(init_params)
            .map_err(|e| UpstreamError::Protocol(format!("stored initialize params: {e}")))?;
        let init =
            json!({"jsonrpc": "2.0", "id": INIT_ID, "method": "initialize", "params": params});
        self.post(upstream, server, Bytes::from(init.to_string()))
            .await?;
        let answer = self.answer_to(upstream, &RequestId::from(INIT_ID)).await?;
        if let Some(Ok(Message::Error { error, .. })) = answer.json_rpc() {
            // The client's request would go to a session that never began.
            return Err(UpstreamError::Protocol(format!(
                "the upstream refused the session's initialize: {}",
                error.message
            )));
        }
        let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.post(upstream, server, Bytes::from(done.to_string()))
            .await
    }

    /// The upstream's messages as an SSE stream for the client, ending after the answer to
    /// `id` (the upstream stream is closed with it). The ids of the upstream's requests to the
    /// client are sealed under `grant` ([`crate::replies`]), so the client's answers find their
    /// way back to this upstream session. Comments (keep-alives) pass, so a long call's stream
    /// is not idle for the client while the upstream keeps its own alive.
    ///
    /// A `notifications/cancelled` about one of those requests names it by the token the client
    /// got (tokens are sealed with a fresh nonce, so the relay remembers the ones it issued).
    pub fn relay_until(self, id: RequestId, keys: Arc<Keyring>, grant: GrantId) -> ByteStream {
        let issued: HashMap<RequestId, RequestId> = HashMap::new();
        futures::stream::unfold(Some((self, issued)), move |state| {
            let id = id.clone();
            let keys = keys.clone();
            async move {
                let (mut connection, mut issued) = state?;
                loop {
                    match connection.next_frame().await {
                        Ok(Some(comment @ SseFrame::Comment(_))) => {
                            return Some((Ok(comment.encode()), Some((connection, issued))));
                        }
                        Ok(Some(SseFrame::Event(mut event))) => {
                            if !event.is_message() {
                                continue;
                            }
                            let message = match event.json_rpc() {
                                Some(Ok(message)) => message,
                                _ => {
                                    return Some((Ok(event.encode()), Some((connection, issued))));
                                }
                            };
                            let last = message.is_response()
                                && message.id().is_some_and(|answer| id.answered_by(answer));
                            let relayed = match message {
                                Message::Request { id, method, params } => {
                                    let token = crate::replies::seal(
                                        &keys,
                                        grant,
                                        &connection.endpoint,
                                        &id,
                                    );
                                    if issued.len() < MAX_ISSUED {
                                        issued.insert(id, token.clone());
                                    }
                                    Some(Message::Request {
                                        id: token,
                                        method,
                                        params,
                                    })
                                }
                                Message::Notification { method, params } => {
                                    cancelled_by_token(&issued, &method, params.as_deref())
                                        .map(|params| Message::Notification { method, params })
                                }
                                _ => None,
                            };
                            if let Some(relayed) = relayed {
                                event.data =
                                    Some(String::from_utf8_lossy(&relayed.encode()).into_owned());
                            }
                            let bytes = event.encode();
                            return Some((Ok(bytes), (!last).then_some((connection, issued))));
                        }
                        Ok(None) => return None,
                        Err(e) => return Some((Err(std::io::Error::other(e.to_string())), None)),
                    }
                }
            }
        })
        .boxed()
    }
}

/// The most server→client request tokens one relayed call remembers.
const MAX_ISSUED: usize = 1024;

/// The params of a `notifications/cancelled` about a request relayed with a token, naming it by
/// that token; `None` for any other notification (passed on as it is).
fn cancelled_by_token(
    issued: &HashMap<RequestId, RequestId>,
    method: &str,
    params: Option<&serde_json::value::RawValue>,
) -> Option<Option<Box<serde_json::value::RawValue>>> {
    if method != "notifications/cancelled" {
        return None;
    }
    let mut params: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(params?.get()).ok()?;
    let original: RequestId = serde_json::from_value(params.get("requestId")?.clone()).ok()?;
    let token = issued.get(&original)?;
    params.insert("requestId".into(), serde_json::to_value(token).ok()?);
    serde_json::value::to_raw_value(&params).ok().map(Some)
}

/// POSTs one message to a legacy server's message endpoint, with the server's credential
/// headers. The endpoint must be on the server's origin: a malicious upstream (or a client
/// replaying an old token after the server moved) must not point the gateway, and the
/// server's credentials, elsewhere.
pub async fn post_message(
    upstream: &Upstream,
    server: &Server,
    endpoint: &url::Url,
    body: Bytes,
) -> Result<(), UpstreamError> {
    if endpoint.origin() != server.url.origin() {
        return Err(UpstreamError::Protocol(
            "the message endpoint is on another origin".into(),
        ));
    }
    let headers = request_headers(&Default::default(), server, Mirrored::None, true);
    let response = upstream
        .send(
            Method::POST,
            &crate::upstream::uri(endpoint)?,
            headers,
            Some(body),
        )
        .await?;
    if !response.status().is_success() {
        return Err(UpstreamError::Protocol(format!(
            "the message endpoint answered {}",
            response.status()
        )));
    }
    Ok(())
}

/// The most `initialize` params a legacy session carries: they travel in its id, a header
/// the client sends with every request.
pub const MAX_INIT_PARAMS: usize = 8 * 1024;

/// The `initialize` params of a message, as stored in a legacy session.
pub fn init_params(message: &Message) -> String {
    message
        .params()
        .map_or_else(default_init_params, |p| p.get().to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly by design.

    use super::*;

    fn connection(chunks: &[&'static str]) -> Connection {
        let chunks: Vec<Result<Bytes, std::io::Error>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        Connection {
            stream: futures::stream::iter(chunks).boxed(),
            decoder: SseDecoder::new(),
            queue: VecDeque::new(),
            endpoint: url::Url::parse("http://127.0.0.1:1/messages?session=s").unwrap(),
        }
    }

    #[tokio::test]
    async fn a_relayed_call_keeps_the_upstreams_keep_alives_and_ends_with_its_answer() {
        let upstream = connection(&[
            ": ping\n\n",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n",
            ": ping\n\n",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n\n",
            ": after the answer\n\n",
        ]);
        let keys = Arc::new(Keyring::generate(1).0);
        let relayed: Vec<Bytes> = upstream
            .relay_until(RequestId::from(7), keys, GrantId::new())
            .map(Result::unwrap)
            .collect()
            .await;
        let text: String = relayed
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert_eq!(text.matches(": ping").count(), 2, "{text}");
        assert!(text.contains("notifications/progress"), "{text}");
        assert!(text.contains("\"id\":7"), "{text}");
        assert!(!text.contains("after the answer"), "{text}");
    }

    #[tokio::test]
    async fn a_cancelled_request_is_named_by_the_token_the_client_knows() {
        let upstream = connection(&[
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"sampling/createMessage\",\"params\":{\"maxTokens\":5}}\n\n",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":5,\"reason\":\"t\"}}\n\n",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":6}}\n\n",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n\n",
        ]);
        let keys = Arc::new(Keyring::generate(1).0);
        let relayed: Vec<serde_json::Value> = upstream
            .relay_until(RequestId::from(7), keys, GrantId::new())
            .map(|b| {
                let b = b.unwrap();
                let text = String::from_utf8_lossy(&b);
                serde_json::from_str(text.split("data: ").nth(1).unwrap().trim()).unwrap()
            })
            .collect()
            .await;
        let token = &relayed[0]["id"];
        assert!(token.is_string(), "{relayed:?}");
        assert_eq!(relayed[0]["params"]["maxTokens"], 5);
        assert_eq!(&relayed[1]["params"]["requestId"], token);
        assert_eq!(relayed[1]["params"]["reason"], "t");
        // Not one of the relayed requests: passed on as it is.
        assert_eq!(relayed[2]["params"]["requestId"], 6);
        assert_eq!(relayed[3]["id"], 7);
    }
}
