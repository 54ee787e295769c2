//! Confirmation by the user (a rule's `confirm`): before the call reaches the upstream, the
//! person driving the agent confirms it in their MCP client, through elicitation.
//!
//! - Stateless era (2026-07-28): the call is answered `input_required`, its one input request
//!   an `elicitation/create` form with one boolean ([`portcullis_mcp::elicitation`]), its
//!   `requestState` an envelope of [`crate::continuation`] sealed for the grant, the session and
//!   the call's fingerprint (tool and canonical arguments), valid for the rule's `timeout`. The
//!   retry that carries the user's answer is decided again by the policy, claims the envelope
//!   once (in Redis, as continuations do) and, when confirmed, goes on as a fresh call: the
//!   approval the rule also asks for, the limits, the upstream. The upstream never sees the
//!   question or the answer.
//! - Session era: when the client declared form elicitation at `initialize` (its sealed
//!   session id remembers it), the call is answered with an SSE stream that carries an
//!   `elicitation/create` request; the answer may reach any replica and comes back through
//!   Redis (see below). A confirmed call is then decided again and goes on as in the stateless
//!   era, its answer on the same stream; a declined or cancelled one, one not answered within
//!   the rule's `timeout`, or one whose client closed the stream, is denied.
//! - A client that did not declare form elicitation cannot be asked: the rule's `approval`
//!   stands in for the user when it has one, else the call is denied, saying why.
//!
//! Limits are charged when a confirmed call goes on, never for one the user declined.

use std::time::Duration;

use bytes::Bytes;
use portcullis_core::audit::{AuditDecision, AuditEvent, Confirmation};
use portcullis_core::{GrantId, Keyring};
use portcullis_mcp::elicitation::{self, Answer};
use portcullis_mcp::tools::{ToolCall, tool_error_response};
use portcullis_mcp::{Message, ProtocolEra, RequestId, mrtr};
use portcullis_policy::{Decision, Outcome, SharedStr};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Gateway;
use crate::continuation::{self, Refusal, Round};
use crate::enforce::{Verdict, meta};
use crate::error::GatewayError;
use crate::grants::Grant;

/// Whether the call's user can be asked, and where.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reach<'a> {
    /// The client declared form elicitation (at `initialize`, or in the request's capabilities).
    pub elicits: bool,
    /// The session id the client presented, if any: a stateless-era question is bound to it.
    pub session: Option<&'a str>,
}

/// What became of a call that needs its user's confirmation.
pub enum Settled {
    /// The gateway answers it now (the question, or a refusal).
    Answer(Verdict),
    /// It goes on under this decision (the approval that follows, or allow).
    Go(Decision),
}

/// Settles a `confirmation_required` decision (not in monitor mode) for the call in `round`;
/// `answer` receives the user's answer, for the audit outcome.
#[allow(clippy::too_many_arguments)] // One call's context, all of it needed here.
pub async fn settle(
    gw: &Gateway,
    grant: &Grant,
    id: &RequestId,
    call: &ToolCall<'_>,
    round: &Round,
    era: ProtocolEra,
    reach: Reach<'_>,
    decision: &Decision,
    event: &mut AuditEvent,
    answer: &mut Option<Confirmation>,
) -> Result<Settled, GatewayError> {
    event.decision = AuditDecision::ConfirmationRequired;
    match round {
        Round::Confirming(confirming) => {
            let Some(said) = confirming.answer else {
                let message = format!(
                    "the retry carries no answer to the confirmation: inputResponses.{} must hold \
                     the user's elicitation result",
                    continuation::CONFIRM_KEY
                );
                event.decision = AuditDecision::Deny;
                event.message = Some(message.clone());
                return Ok(Settled::Answer(Verdict::Answer(
                    portcullis_mcp::error_response(
                        Some(id),
                        portcullis_mcp::codes::INVALID_PARAMS,
                        &message,
                        Some(&json!({"reason": "invalid_request_state"})),
                    ),
                )));
            };
            let claim = gw.limiter.claim_once(
                grant.tenant,
                &confirming.marker,
                confirming.claim_expires_ms(),
            );
            let refusal = match Box::pin(claim).await {
                Ok(true) => None,
                Ok(false) => Some(Refusal::Used),
                Err(e) => {
                    metrics::counter!("portcullis_gateway_limiter_errors_total", "op" => "confirmation")
                        .increment(1);
                    tracing::warn!(error = %e, "cannot claim a confirmation");
                    Some(Refusal::Unclaimed)
                }
            };
            if let Some(refusal) = refusal {
                return Ok(Settled::Answer(crate::enforce::refused_continuation(
                    event, id, refusal,
                )));
            }
            Ok(match said {
                Answer::Confirmed => {
                    *answer = Some(Confirmation::Confirmed);
                    go(decision, event)
                }
                Answer::Declined => {
                    *answer = Some(Confirmation::Declined);
                    Settled::Answer(refused(event, id, era, Confirmation::Declined))
                }
                Answer::Cancelled => {
                    *answer = Some(Confirmation::Cancelled);
                    Settled::Answer(refused(event, id, era, Confirmation::Cancelled))
                }
            })
        }
        // The call it continues was confirmed: its rounds are not asked again.
        Round::Continuation(resumed) if resumed.confirmed => Ok(go(decision, event)),
        Round::Continuation(_) => Ok(Settled::Answer(crate::enforce::denied(
            event,
            id,
            "this call needs its user's confirmation now, which the call it continues did not \
             have; call the tool again without requestState"
                .to_owned(),
            era,
        ))),
        // Session era: the user confirmed on the stream answering this very request.
        Round::Confirmed => {
            *answer = Some(Confirmation::Confirmed);
            Ok(go(decision, event))
        }
        Round::Fresh if reach.elicits && era == ProtocolEra::Stateless => Ok(Settled::Answer(
            ask_stateless(gw, grant, id, call, reach, decision, event),
        )),
        Round::Fresh if reach.elicits => Ok(Settled::Answer(Verdict::Ask(Ask {
            question: question(decision, call),
            timeout: timeout_of(decision),
        }))),
        Round::Fresh | Round::Refused(_) => Ok(unreachable_user(decision, event, id, era)),
    }
}

/// The confirmed call goes on under the decision that follows the confirmation.
fn go(decision: &Decision, event: &mut AuditEvent) -> Settled {
    match decision.confirmed() {
        Some(next) => {
            event.rule = Some(next.rule.to_string());
            event.message = Some(format!("confirmed by the user; {}", next.message));
            Settled::Go(next)
        }
        None => Settled::Go(decision.clone()),
    }
}

/// A client that cannot be asked: the rule's approval stands in for the user, else deny.
fn unreachable_user(
    decision: &Decision,
    event: &mut AuditEvent,
    id: &RequestId,
    era: ProtocolEra,
) -> Settled {
    match decision.unconfirmable() {
        Some(approval) => {
            let message = format!(
                "{} (its user cannot confirm it: the client did not declare form elicitation)",
                approval.message
            );
            event.rule = Some(approval.rule.to_string());
            event.message = Some(message.clone());
            Settled::Go(Decision {
                message: SharedStr::from(message),
                ..approval
            })
        }
        None => Settled::Answer(crate::enforce::denied(
            event,
            id,
            "this call needs its user's confirmation, and the client cannot be asked: it did \
             not declare the elicitation capability (form mode)"
                .to_owned(),
            era,
        )),
    }
}

/// What the user is told a refusal was for.
fn reason(answer: Confirmation) -> &'static str {
    match answer {
        Confirmation::Confirmed => "the user confirmed this call",
        Confirmation::Declined => "the user declined this call",
        Confirmation::Cancelled => "the user cancelled this call",
        Confirmation::TimedOut => "the user did not confirm this call in time",
    }
}

/// The answer to a call its user did not confirm: `[POLICY DENIED] <why>.`, audited
/// `confirmation_required` (the answer goes in the outcome).
pub fn refused(
    event: &mut AuditEvent,
    id: &RequestId,
    era: ProtocolEra,
    answer: Confirmation,
) -> Verdict {
    let message = reason(answer).to_owned();
    let text = format!("[POLICY DENIED] {message}.");
    event.decision = AuditDecision::ConfirmationRequired;
    event.message = Some(message);
    Verdict::Answer(tool_error_response(id, &text, Some(meta(event, None)), era))
}

/// The question a call puts to its user, rendered from the rule's message and the call.
pub fn question(decision: &Decision, call: &ToolCall<'_>) -> String {
    decision
        .confirmation
        .as_ref()
        .map(|c| {
            c.prompt
                .render(&call.name, &call.arguments, &crate::audit::redact_arguments)
        })
        .unwrap_or_default()
}

/// How long the user has to answer the question of `decision`.
fn timeout_of(decision: &Decision) -> Duration {
    match decision.outcome {
        Outcome::ConfirmationRequired { timeout } => timeout,
        _ => portcullis_policy::DEFAULT_CONFIRM_TIMEOUT,
    }
}

/// Stateless era: the `input_required` answer that asks the user.
fn ask_stateless(
    gw: &Gateway,
    grant: &Grant,
    id: &RequestId,
    call: &ToolCall<'_>,
    reach: Reach<'_>,
    decision: &Decision,
    event: &mut AuditEvent,
) -> Verdict {
    let timeout = timeout_of(decision);
    let digest = event
        .arg_digest
        .clone()
        .unwrap_or_else(|| portcullis_core::canonical::digest(&call.arguments));
    let state = continuation::seal_question(
        gw.sessions.keyring(),
        grant.id,
        reach.session,
        &call.name,
        &digest,
        timeout,
    );
    let mut result = json!({
        mrtr::RESULT_TYPE: mrtr::INPUT_REQUIRED,
        mrtr::INPUT_REQUESTS: {
            continuation::CONFIRM_KEY: {
                "method": elicitation::METHOD,
                "params": elicitation::confirm_params(&question(decision, call)),
            },
        },
        mrtr::REQUEST_STATE: state,
    });
    if let Value::Object(fields) = &mut result {
        fields.insert(
            portcullis_mcp::meta::META.to_owned(),
            Value::Object(meta(event, None)),
        );
    }
    Verdict::Answer(portcullis_mcp::result_response(id, &result))
}

// ---- session era ----
//
// The question goes out on the SSE stream answering the `tools/call`, as an
// `elicitation/create` request whose id is sealed (the session key ring, bound to the grant)
// and names the question. The client POSTs its answer as a JSON-RPC response, which may reach
// any replica: that replica opens the id and leaves the answer in Redis, under a key of the
// tenant's hash tag, where the replica holding the stream picks it up (it polls: no
// connection is held per waiting question). The upstream never sees either.

/// A session-era question to the user, to put on the call's stream.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The question.
    pub question: String,
    /// How long the user has to answer.
    pub timeout: Duration,
}

/// How often the replica holding a question looks for its answer.
pub const POLL: Duration = Duration::from_millis(200);
/// How often the question's stream carries an SSE comment while it waits: a client that went
/// away is noticed when writing to it fails.
pub const KEEPALIVE: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
struct QuestionId {
    /// The question.
    q: String,
    /// When it expires, Unix milliseconds.
    e: i64,
    /// SHA-256 (hex) of the session id it was asked in.
    s: String,
}

/// A question: its id in Redis, until when it may be answered (Unix milliseconds), and the
/// session it was asked in (only an answer in that session counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Names the question's answer in Redis.
    pub id: String,
    /// Until when it may be answered.
    pub expires_ms: i64,
    /// SHA-256 (hex) of the client's session id.
    session: String,
}

impl Question {
    /// A new question in the client's `session` that may be answered for `timeout`.
    pub fn new(timeout: Duration, session: &str) -> Self {
        let timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        Self {
            id: uuid::Uuid::now_v7().simple().to_string(),
            expires_ms: chrono::Utc::now()
                .timestamp_millis()
                .saturating_add(timeout),
            session: continuation::session_digest(session),
        }
    }

    /// The JSON-RPC id of its `elicitation/create`, sealed for `grant`.
    pub fn request_id(&self, keys: &Keyring, grant: GrantId) -> RequestId {
        let plain = serde_json::to_vec(&QuestionId {
            q: self.id.clone(),
            e: self.expires_ms,
            s: self.session.clone(),
        })
        .unwrap_or_default();
        RequestId::String(keys.seal_text(
            &plain,
            &portcullis_core::crypto::confirmation_context(grant),
        ))
    }

    /// The question an id names, when it is one sealed for `grant`.
    pub fn of_request_id(keys: &Keyring, grant: GrantId, id: &RequestId) -> Option<Self> {
        let RequestId::String(token) = id else {
            return None;
        };
        let plain = keys
            .open_text(
                token.trim(),
                &portcullis_core::crypto::confirmation_context(grant),
            )
            .ok()?;
        let opened: QuestionId = serde_json::from_slice(&plain).ok()?;
        Some(Self {
            id: opened.q,
            expires_ms: opened.e,
            session: opened.s,
        })
    }

    /// The question's `elicitation/create` as one SSE event.
    pub fn event(&self, keys: &Keyring, grant: GrantId, question: &str) -> Bytes {
        let request = json!({
            "jsonrpc": "2.0",
            "id": self.request_id(keys, grant),
            "method": elicitation::METHOD,
            "params": elicitation::confirm_params(question),
        });
        sse_event(request.to_string().as_bytes())
    }
}

/// One SSE event carrying `data` (each of its lines a `data:` line).
pub fn sse_event(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 16);
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// The answer a client's message gives, when it answers one of the gateway's questions asked
/// under `grant` in the client's `session`: a response (its `ElicitResult`; one that is not a
/// readable one declines) or an error (cancels).
pub fn answer_of(
    keys: &Keyring,
    grant: GrantId,
    session: Option<&str>,
    message: &Message,
) -> Option<(Question, Answer)> {
    let asked_here = |question: Question| {
        session
            .is_some_and(|s| continuation::session_digest(s) == question.session)
            .then_some(question)
    };
    match message {
        Message::Response { id, result } => {
            let question = asked_here(Question::of_request_id(keys, grant, id)?)?;
            let answer = serde_json::from_str::<Value>(result.get())
                .ok()
                .and_then(|result| elicitation::read_answer(&result))
                .unwrap_or(Answer::Declined);
            Some((question, answer))
        }
        Message::Error { id: Some(id), .. } => Some((
            asked_here(Question::of_request_id(keys, grant, id)?)?,
            Answer::Cancelled,
        )),
        _ => None,
    }
}

/// The name an answer has in Redis, and back.
fn answer_name(answer: Answer) -> &'static str {
    match answer {
        Answer::Confirmed => "confirmed",
        Answer::Declined => "declined",
        Answer::Cancelled => "cancelled",
    }
}

fn answer_named(name: &str) -> Answer {
    match name {
        "confirmed" => Answer::Confirmed,
        "cancelled" => Answer::Cancelled,
        _ => Answer::Declined,
    }
}

/// Leaves the user's answer for the replica that asked (kept a little past the question's
/// expiry, for replicas whose clocks differ).
pub async fn deliver(
    gw: &Gateway,
    grant: &Grant,
    question: &Question,
    answer: Answer,
) -> Result<(), crate::limiter::LimiterError> {
    let keep = question.expires_ms.saturating_add(60_000);
    gw.limiter
        .put_answer(grant.tenant, &question.id, answer_name(answer), keep)
        .await
}

/// The user's answer to `question`, once it has come; `None` while it has not (a Redis
/// failure reads as no answer yet: the question times out if Redis stays away).
pub async fn answered(gw: &Gateway, grant: &Grant, question: &Question) -> Option<Answer> {
    match gw.limiter.take_answer(grant.tenant, &question.id).await {
        Ok(answer) => answer.as_deref().map(answer_named),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the answer to a confirmation");
            None
        }
    }
}

/// The user's answer as the audit log names it.
pub fn audited(answer: Answer) -> Confirmation {
    match answer {
        Answer::Confirmed => Confirmation::Confirmed,
        Answer::Declined => Confirmation::Declined,
        Answer::Cancelled => Confirmation::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Message {
        Message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn answers_open_only_for_the_grant_that_asked() {
        let keys = Keyring::generate(1).0;
        let grant = GrantId::new();
        let question = Question::new(Duration::from_secs(60), "s-1");
        let event = question.event(&keys, grant, "Send?\n\nTool: send");
        let text = std::str::from_utf8(&event).unwrap();
        assert!(
            text.starts_with("data: {") && text.ends_with("}\n\n"),
            "{text}"
        );
        let request: Value = serde_json::from_str(&text[6..text.len() - 2]).unwrap();
        assert_eq!(request["method"], "elicitation/create");
        assert_eq!(request["params"]["message"], "Send?\n\nTool: send");
        let id = request["id"].clone();
        let answer = |result: Value| {
            parse(&json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
        };
        let yes = answer(json!({"action": "accept", "content": {"confirm": true}}));
        assert_eq!(
            answer_of(&keys, grant, Some("s-1"), &yes),
            Some((question.clone(), Answer::Confirmed))
        );
        assert_eq!(answer_of(&keys, GrantId::new(), Some("s-1"), &yes), None);
        assert_eq!(answer_of(&keys, grant, Some("s-2"), &yes), None);
        assert_eq!(answer_of(&keys, grant, None, &yes), None);
        assert_eq!(
            answer_of(&keys, grant, Some("s-1"), &answer(json!({"nonsense": 1}))),
            Some((question.clone(), Answer::Declined))
        );
        let error = parse(
            &json!({"jsonrpc": "2.0", "id": id, "error": {"code": -1, "message": "no"}})
                .to_string(),
        );
        assert_eq!(
            answer_of(&keys, grant, Some("s-1"), &error),
            Some((question, Answer::Cancelled))
        );
        let other = parse(r#"{"jsonrpc":"2.0","id":"abc","result":{}}"#);
        assert_eq!(answer_of(&keys, grant, Some("s-1"), &other), None);
    }

    #[test]
    fn multi_line_data_becomes_one_event() {
        assert_eq!(
            &sse_event(b"{\n\"a\": 1\r\n}")[..],
            b"data: {\ndata: \"a\": 1\ndata: }\n\n"
        );
    }
}
