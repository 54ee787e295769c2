//! Streaming upstream answers back to the client, and recording how each call ended.
//!
//! SSE streams are decoded incrementally only when the gateway must look inside them (the
//! answer to a `tools/list`, to filter it; the answer to a `tools/call`, to learn `isError`
//! and to seal the `requestState` of an `input_required` answer);
//! every other event, comment and server→client request is re-encoded as it arrives, never
//! buffered beyond the event in hand. Other streams pass through as bytes.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use portcullis_core::audit::{AuditEvent, AuditOutcome};
use portcullis_mcp::sse::{SseDecoder, SseEvent, SseFrame};
use portcullis_mcp::{Message, MethodKind, ProtocolEra, RequestId};
use portcullis_policy::CompiledPolicy;
use serde_json::Value;

use crate::Gateway;
use crate::audit::AuditSink;
use crate::catalogue::ServerTools;
use crate::continuation::Sealer;
use crate::limiter::{Limiter, Reservation};
use crate::meters::Meters;
use crate::sessions::EventIds;

/// Decides which tools of a `tools/list` a grant may see.
pub struct ToolFilter {
    /// The grant's policy (`None`: nothing is visible).
    pub policy: Option<Arc<CompiledPolicy>>,
    /// The server's discovered tools (categories, changed definitions).
    pub tools: Arc<ServerTools>,
    /// Hide tools whose definition changed since approval.
    pub block_changed: bool,
    /// The era of the request (a stateless list is marked private).
    pub era: ProtocolEra,
}

impl ToolFilter {
    /// Whether the grant sees `tool` (a tool definition).
    pub fn keep(&self, tool: &Value) -> bool {
        let Some(name) = portcullis_mcp::tools::tool_name(tool) else {
            return false;
        };
        let known = self.tools.get(name);
        if self.block_changed && known.is_some_and(|t| t.changed) {
            return false;
        }
        portcullis_policy::is_visible(self.policy.as_deref(), name, known.and_then(|t| t.category))
    }

    /// Rewrites the answer to a `tools/list` (a whole JSON-RPC message). Any result is taken
    /// for the list, whatever its id: an upstream that answers under another id (`"1"` for `1`)
    /// must not get an unfiltered list past the gateway.
    pub fn rewrite(&self, message: &Message) -> Option<Bytes> {
        let Message::Response { id, result } = message else {
            return None;
        };
        match portcullis_mcp::filter_tools_list(result, |t| self.keep(t), self.era) {
            Ok(filtered) => Some(portcullis_mcp::message::result_response_raw(
                id,
                &filtered.result,
            )),
            Err(e) => {
                // Never let an unfiltered list out: answer with an error instead.
                tracing::warn!(error = %e, "upstream tools/list answer cannot be filtered");
                Some(e.to_response(Some(id)))
            }
        }
    }

    /// Rewrites an answer replayed on a session's stream if it lists tools (it may answer a
    /// `tools/list` of the session's); other answers pass as they are.
    fn rewrite_replayed(&self, message: &Message) -> Option<Bytes> {
        match message {
            Message::Response { result, .. } if portcullis_mcp::tools::lists_tools(result) => {
                self.rewrite(message)
            }
            _ => None,
        }
    }
}

/// What the gateway looks for in an answer.
pub enum Watch {
    /// Nothing: pass it through.
    Nothing,
    /// The answer to a `tools/list`: filter it.
    ToolsList(ToolFilter),
    /// The answer to a `tools/call`: learn whether it failed, and seal the `requestState` of
    /// an `input_required` answer ([`crate::continuation`]).
    ToolsCall(Sealer),
    /// A session's own stream (GET). It answers no request, but one resumed with
    /// `Last-Event-ID` replays the answers of earlier requests, a `tools/list`'s among them:
    /// every list in it is filtered.
    Replays(ToolFilter),
}

impl Watch {
    /// Whether the stream may carry a list of tools, so an unreadable message in it is dropped.
    fn sees_lists(&self) -> bool {
        matches!(self, Watch::ToolsList(_) | Watch::Replays(_))
    }
}

/// What a forwarded call holds that is given back when it certainly never reached the tool.
#[derive(Debug, Default)]
pub struct Held {
    /// Its charges (also given back when it failed).
    pub reservation: Option<Reservation>,
    /// The approval it consumed (given back if dropped unused).
    pub approval: Option<crate::approvals::Consumed>,
}

/// A request whose outcome is not yet known. Records it (audit entry, metrics, refund) once,
/// when told or when dropped (a client that went away mid-stream).
pub struct Pending {
    audit: AuditSink,
    limiter: Arc<Limiter>,
    event: Option<AuditEvent>,
    /// The decision entry written before forwarding; the outcome entry is this with the
    /// outcome added.
    decided: String,
    reservation: Option<Reservation>,
    /// The approval consumed, given back if the call never ran.
    approval: Option<crate::approvals::Consumed>,
    arrived: Instant,
    /// HTTP status of the upstream answer, once known.
    pub status: Option<u16>,
    /// The user's answer, when the call needed their confirmation.
    pub confirmation: Option<portcullis_core::audit::Confirmation>,
    /// The request certainly did not reach the upstream's tool ([`Pending::fail_unsent`]).
    unsent: bool,
    method: MethodKind,
    meters: Arc<Meters>,
}

impl Pending {
    /// A request of `method` forwarded upstream by `gw`.
    pub fn new(
        gw: &Gateway,
        method: MethodKind,
        event: AuditEvent,
        decided: String,
        held: Held,
        arrived: Instant,
    ) -> Self {
        Self {
            audit: gw.audit.clone(),
            limiter: gw.limiter.clone(),
            meters: gw.meters.clone(),
            event: Some(event),
            decided,
            reservation: held.reservation,
            approval: held.approval,
            arrived,
            status: None,
            confirmation: None,
            unsent: false,
            method,
        }
    }

    /// Records the outcome. `is_error`: the tool result or JSON-RPC answer reported a failure
    /// (`None`: unknown). Charges are refunded when the upstream failed or reported an error.
    pub fn finish(&mut self, is_error: Option<bool>) {
        self.record(is_error, None);
    }

    /// Records a call that ended without a whole answer, and why (`error` and its causes).
    /// Without an answer head the call may still have run (a timeout, a reset after the
    /// request was written), so its charge stands.
    pub fn fail(&mut self, error: &(dyn std::error::Error + 'static)) {
        self.record(None, Some(portcullis_core::error_chain(error)));
    }

    /// Records a call that failed before it could reach the upstream's tool: its charge is
    /// refunded.
    pub fn fail_unsent(&mut self, error: &(dyn std::error::Error + 'static)) {
        self.unsent = true;
        self.fail(error);
    }

    /// Records an upstream error: refunded when it shows the call never ran.
    pub fn fail_upstream(&mut self, error: &crate::upstream::UpstreamError) {
        if error.never_ran() {
            self.fail_unsent(error);
        } else {
            self.fail(error);
        }
    }

    fn record(&mut self, is_error: Option<bool>, upstream_error: Option<String>) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        let elapsed = self.arrived.elapsed();
        let failed_upstream = self.unsent || self.status.is_some_and(|s| s >= 400);
        event.outcome = Some(AuditOutcome {
            upstream_status: self.status,
            is_error,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_error,
            confirmation: self.confirmation,
        });
        self.meters.request(self.method, event.decision, elapsed);
        if let Some(approval) = self.approval.take() {
            if self.unsent {
                // The approved call never reached the tool: dropped, it stands for its retry.
                drop(approval);
            } else {
                approval.used();
            }
        }
        self.audit.enqueue_outcome(&self.decided, &event);
        if let Some(reservation) = self.reservation.take()
            && (is_error == Some(true) || (failed_upstream && is_error.is_none()))
        {
            let limiter = self.limiter.clone();
            tokio::spawn(async move {
                if let Err(e) = limiter.refund(&reservation).await {
                    metrics::counter!("portcullis_gateway_limiter_errors_total", "op" => "refund")
                        .increment(1);
                    tracing::warn!(error = %e, "limiter refund failed");
                }
            });
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.event.is_some() {
            // The answer was dropped before it ended (the client went away, or the gateway
            // shut down): the call may have run, so nothing is refunded.
            let reservation = self.reservation.take();
            self.record(None, Some(CUT_OFF.into()));
            drop(reservation);
        }
    }
}

/// Why a call's answer was dropped before it ended.
const CUT_OFF: &str = "the answer was cut off: the client went away or the gateway shut down";

/// Why a watched SSE answer ended without the answer it was watched for.
const NO_ANSWER: &str = "the upstream ended its SSE stream without answering";

/// An answer body in flight.
pub type ByteStream = futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Passes a stream through as bytes; the outcome is recorded when it ends.
pub fn raw(upstream: ByteStream, pending: Option<Pending>) -> Body {
    let stream = futures::stream::unfold(
        (upstream, pending),
        |(mut upstream, mut pending)| async move {
            match upstream.next().await {
                Some(Err(e)) => {
                    if let Some(p) = pending.as_mut() {
                        p.fail(&e);
                    }
                    Some((Err(e), (upstream, pending)))
                }
                Some(item) => Some((item, (upstream, pending))),
                None => {
                    if let Some(p) = pending.as_mut() {
                        p.finish(None);
                    }
                    None
                }
            }
        },
    );
    Body::from_stream(stream)
}

struct SseRelay {
    upstream: ByteStream,
    decoder: SseDecoder,
    watch: Watch,
    id: Option<RequestId>,
    pending: Option<Pending>,
    /// The request's answer went by: a second one (a protocol error) is dropped, so one
    /// call's charge is never sealed into two continuations.
    answered: bool,
    /// Seals the event ids the client sees.
    ids: EventIds,
}

impl SseRelay {
    fn frame(&mut self, mut frame: SseFrame, out: &mut BytesMut) {
        if let SseFrame::Event(SseEvent { id: Some(id), .. }) = &mut frame
            && !id.is_empty()
        {
            // (An empty id resets the client's last event id: it passes as it is.)
            *id = self.ids.seal(id);
        }
        let event = match &frame {
            // An unwatched stream is read for the answer to its request (its outcome, and what
            // must not pass under another request's id).
            SseFrame::Event(event)
                if !matches!(self.watch, Watch::Nothing) || self.pending.is_some() =>
            {
                event
            }
            _ => {
                frame.encode_into(out);
                return;
            }
        };
        if self.watch.sees_lists()
            && !event.is_message()
            && event.data.as_deref().is_some_and(|d| !d.is_empty())
        {
            // MCP sends its messages as `message` events; another event type's data is read by
            // no SDK, but a client that reads every event's data would get it unfiltered.
            tracing::warn!("dropping a non-message event from a stream that may list tools");
            return;
        }
        let message = match event.json_rpc() {
            Some(Ok(message)) if message.is_response() => Some(message),
            Some(Err(_)) if self.watch.sees_lists() || self.id.is_some() => {
                // A message the gateway cannot read might be a tools list it cannot filter, or
                // an answer a client reads as another request's.
                tracing::warn!("dropping an unreadable message from a watched stream");
                return;
            }
            _ => None,
        };
        let Some(message) = message else {
            frame.encode_into(out);
            return;
        };
        let answers = message
            .id()
            .zip(self.id.as_ref())
            .is_some_and(|(answer, request)| request.answered_by(answer));
        if !answers && self.id.is_some() && matches!(message, Message::Response { .. }) {
            // A POST's stream answers its own request: a result for another (a client matches
            // answers by id) could carry a tools list to a pending `tools/list`, unfiltered.
            // (An error carries no list.)
            tracing::warn!("dropping an answer to another request from a request's stream");
            return;
        }
        if answers && std::mem::replace(&mut self.answered, true) {
            tracing::warn!("dropping a second answer to one request");
            return;
        }
        let (rewritten, is_error) = match &self.watch {
            Watch::ToolsList(filter) => (
                filter.rewrite(&message),
                matches!(message, Message::Error { .. }),
            ),
            Watch::Replays(filter) => (filter.rewrite_replayed(&message), false),
            Watch::ToolsCall(sealer) if answers => {
                (sealer.rewrite(&message), answer_is_error(&message))
            }
            Watch::ToolsCall(_) => (None, false),
            Watch::Nothing => (None, answer_is_error(&message)),
        };
        if answers {
            self.finish(Some(rewritten.is_none() && is_error));
        }
        match rewritten {
            Some(bytes) => SseEvent {
                event: event.event.clone(),
                data: Some(String::from_utf8_lossy(&bytes).into_owned()),
                id: event.id.clone(),
                retry: event.retry,
            }
            .encode_into(out),
            None => frame.encode_into(out),
        }
    }

    fn finish(&mut self, is_error: Option<bool>) {
        if let Some(pending) = self.pending.as_mut() {
            pending.finish(is_error);
        }
    }

    fn fail(&mut self, error: &std::io::Error) {
        if let Some(pending) = self.pending.as_mut() {
            pending.fail(error);
        }
    }
}

/// Relays an SSE stream, rewriting the answers `watch` is about.
///
/// Every event id is sealed under the grant (`ids`): the client resumes with the sealed id,
/// which the gateway opens before the upstream sees it.
pub fn sse(
    upstream: ByteStream,
    watch: Watch,
    id: Option<RequestId>,
    pending: Option<Pending>,
    ids: EventIds,
) -> Body {
    let relay = SseRelay {
        upstream,
        decoder: SseDecoder::new(),
        watch,
        id,
        pending,
        answered: false,
        ids,
    };
    let stream = futures::stream::unfold(relay, |mut relay| async move {
        loop {
            match relay.upstream.next().await {
                Some(Ok(chunk)) => {
                    let pushed = relay
                        .decoder
                        .push(&chunk)
                        .map(|frames| frames.collect::<Vec<SseFrame>>());
                    let frames = match pushed {
                        Ok(frames) => frames,
                        Err(e) => {
                            tracing::warn!(error = %e, "upstream SSE stream unusable; closing it");
                            let e = std::io::Error::other(format!("unusable SSE stream: {e}"));
                            relay.fail(&e);
                            return Some((Err(e), relay));
                        }
                    };
                    let mut out = BytesMut::new();
                    for frame in frames {
                        relay.frame(frame, &mut out);
                    }
                    if !out.is_empty() {
                        return Some((Ok(out.freeze()), relay));
                    }
                }
                Some(Err(e)) => {
                    relay.fail(&e);
                    return Some((Err(e), relay));
                }
                None => {
                    if let Some(pending) = relay.pending.as_mut() {
                        pending.record(None, Some(NO_ANSWER.into()));
                    }
                    return None;
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// Whether a `tools/call` answer reports a failure: a JSON-RPC error or `isError: true`.
pub fn answer_is_error(message: &Message) -> bool {
    match message {
        Message::Error { .. } => true,
        Message::Response { result, .. } => {
            portcullis_mcp::tools::call_result_is_error(result).unwrap_or(false)
        }
        _ => false,
    }
}

/// Adapts an upstream body to the relay's input.
pub fn boxed<S, E>(stream: S) -> ByteStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    stream
        .map(|item| item.map_err(std::io::Error::other))
        .boxed()
}
