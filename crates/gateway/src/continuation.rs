//! Stateless-era (2026-07-28) `input_required` round trips of `tools/call`: a retry continues
//! the call it answers, so it is not charged again.
//!
//! An upstream that needs client input answers a `tools/call` with
//! `{"resultType":"input_required","inputRequests":…,"requestState":…}`; the client retries the
//! same call under a new id with `inputResponses` and the echoed `requestState`. That retry is
//! the same call: it must not be charged to the limits again, nor ask for (or consume) another
//! approval. The gateway recognises it without keeping state:
//!
//! - When it relays an `input_required` answer to a `tools/call` (JSON or inside SSE), it
//!   replaces `requestState` with an envelope sealed with the session key ring (AES-256-GCM)
//!   and bound to the grant, the tool name and the SHA-256 of the canonical arguments. The
//!   envelope holds the upstream's own `requestState` (or none, when the upstream gave none)
//!   and an expiry ([`LIFETIME`] after the charged call; later rounds keep that expiry, so a
//!   chain of rounds cannot outlive it).
//! - A `tools/call` carrying `requestState` whose envelope opens under its grant for the same
//!   tool and arguments is a continuation: the policy is evaluated again (a deny still denies,
//!   a hidden tool stays hidden), but limits are not charged and approvals are neither asked
//!   for nor consumed; the upstream's `requestState` is put back (or removed) before the retry
//!   is forwarded.
//! - A `requestState` that does not open (altered, issued under another grant or for another
//!   tool or arguments, or expired) is refused with `-32602` and audited as denied.
//!
//! - The envelope carries the charges of the call it continues, and each later round's envelope
//!   carries them on: the retry that ends the call refunds them if it fails, as the first round
//!   would have.
//! - An envelope continues one retry only: the first continuation claims it in Redis (a key
//!   that expires [`CLAIM_MARGIN`] after the envelope, as replicas' clocks may run behind
//!   Redis's), and presenting it again is refused like an altered one.
//!   Otherwise an agent could replay one retry forever without being charged. When Redis
//!   cannot be reached, the policy's `on_limiter_error` decides, as for limits.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use portcullis_core::{GrantId, Keyring};
use portcullis_mcp::elicitation::{self, Answer};
use portcullis_mcp::mrtr::{self, InputRequired};
use portcullis_mcp::tools::ToolCall;
use portcullis_mcp::{Message, RequestId, codes};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use crate::limiter::Reservation;
use crate::relay::Held;

/// How long an envelope stays valid after the call that was charged.
pub const LIFETIME: Duration = Duration::from_secs(3600);

/// Rule id of a call refused because its `requestState` did not open.
pub const RULE: &str = "(invalid requestState)";

const VERSION: u8 = 1;

/// What an envelope holds.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// Format version.
    v: u8,
    /// Expiry, Unix seconds.
    exp: i64,
    /// The upstream's `requestState`.
    s: Option<String>,
    /// The charges of the call it continues, refunded if the continuation fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<Reservation>,
    /// The call it continues passed an approval (consumed one), so its retries need none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    a: bool,
    /// The call it continues was confirmed by the user, so its retries are not asked again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    f: bool,
    /// Set on the gateway's own `input_required` answer, asking the user to confirm the call
    /// (`confirm`): the retry carries the user's answer, and there is no upstream state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q: Option<Asked>,
}

/// The gateway's question to the user, as its envelope binds it.
#[derive(Serialize, Deserialize)]
struct Asked {
    /// SHA-256 (hex) of the session id the client presented, if it presented one: the answer
    /// counts in that session only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<String>,
}

/// How a `tools/call` relates to an earlier `input_required` answer.
pub enum Round {
    /// No `requestState`: a call of its own.
    Fresh,
    /// A retry whose envelope opened: it continues a call that was already charged.
    Continuation(Resumed),
    /// A retry answering the gateway's own question to the user (`confirm`).
    Confirming(Confirming),
    /// Session era: the call whose user has just confirmed it, on the stream that asked them.
    Confirmed,
    /// A `requestState` that does not open: refused.
    Refused(Refusal),
}

/// A retry that answers the gateway's confirmation question.
pub struct Confirming {
    /// What the user answered; `None` when the retry carries no readable answer.
    pub answer: Option<Answer>,
    expires: i64,
    /// SHA-256 (hex) of the sealed envelope: the key of its one use.
    pub marker: String,
}

impl Confirming {
    /// Until when its one-use claim is kept, Unix milliseconds.
    pub fn claim_expires_ms(&self) -> i64 {
        claim_expiry(self.expires)
    }
}

/// A continuation's opened envelope.
pub struct Resumed {
    state: Option<String>,
    expires: i64,
    /// The charges of the call it continues.
    pub reservation: Option<Reservation>,
    /// The call it continues passed an approval: its retries need none. (A call that needed
    /// none then, or ran in `mode: monitor`, is asked for one when the policy now wants it.)
    pub approved: bool,
    /// The call it continues was confirmed by its user: its retries are not asked again.
    pub confirmed: bool,
    /// SHA-256 (hex) of the sealed envelope: the key of its one use.
    pub marker: String,
}

/// How long a claim outlives its envelope. The envelope's expiry is read on the gateway's
/// clock, the claim's on Redis's: a replica whose clock runs behind must not find the claim gone
/// while it still takes the envelope as valid (and so let it be replayed).
pub const CLAIM_MARGIN: Duration = Duration::from_secs(600);

impl Resumed {
    /// Until when its one-use claim is kept, Unix milliseconds.
    pub fn claim_expires_ms(&self) -> i64 {
        claim_expiry(self.expires)
    }
}

/// The claim expiry of an envelope that expires at `expires` (Unix seconds), in Unix ms.
fn claim_expiry(expires: i64) -> i64 {
    let margin = i64::try_from(CLAIM_MARGIN.as_millis()).unwrap_or(i64::MAX);
    expires.saturating_mul(1000).saturating_add(margin)
}

/// Why a `requestState` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not sealed by this gateway's key ring for this grant, tool and arguments, or altered.
    Unopenable,
    /// Opened, but past its expiry.
    Expired,
    /// Already used by an earlier retry.
    Used,
    /// The call it continues needed an approval, and Redis could not say whether this
    /// `requestState` was used already.
    Unclaimed,
    /// It carried the gateway's question to the user, who did not answer in time.
    ConfirmationExpired,
}

impl Refusal {
    /// The message the client (and the audit log) sees.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Unopenable => {
                "invalid requestState: it was not issued by this gateway for this grant, tool and \
                 arguments; call the tool again without it"
            }
            Refusal::Expired => "expired requestState: call the tool again without it",
            Refusal::Used => {
                "requestState already used: each input_required answer continues one retry; \
                 call the tool again without it"
            }
            Refusal::Unclaimed => {
                "requestState not checked: the rate limiter is unavailable, so a continuation of \
                 a call that needs approval or confirmation cannot be checked for reuse; retry \
                 later"
            }
            Refusal::ConfirmationExpired => {
                "the user did not confirm the call in time (its confirmation expired); call the \
                 tool again to ask them again"
            }
        }
    }
}

impl Round {
    /// Reads the round of `call` under `grant`, in the client's `session` (the session id it
    /// presented, if any).
    pub fn of(keys: &Keyring, grant: GrantId, session: Option<&str>, call: &ToolCall<'_>) -> Self {
        let Some(state) = call.retry.request_state.as_deref() else {
            return Round::Fresh;
        };
        let digest = portcullis_core::canonical::digest(&call.arguments);
        let (envelope, sealed) = match open(keys, grant, &call.name, &digest, state, now()) {
            Ok(opened) => opened,
            Err(refusal) => return Round::Refused(refusal),
        };
        // Of the sealed bytes, not of the text: one envelope has one marker however its text
        // is dressed.
        let marker = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&sealed));
        match envelope.q {
            Some(asked) if asked.s != session.map(session_digest) => {
                Round::Refused(Refusal::Unopenable)
            }
            Some(_) => Round::Confirming(Confirming {
                answer: call
                    .retry
                    .input_responses
                    .and_then(|responses| elicitation::read_input_response(responses, CONFIRM_KEY)),
                expires: envelope.exp,
                marker,
            }),
            None => Round::Continuation(Resumed {
                state: envelope.s,
                expires: envelope.exp,
                reservation: envelope.r,
                approved: envelope.a,
                confirmed: envelope.f,
                marker,
            }),
        }
    }

    /// True for a continuation.
    pub fn is_continuation(&self) -> bool {
        matches!(self, Round::Continuation(_))
    }
}

impl Resumed {
    /// The retry as the upstream must see it: the request with its own `requestState` put
    /// back (or removed, when it gave none).
    pub fn restore(&self, message: &Message) -> Result<Bytes, portcullis_mcp::Error> {
        with_params(message, |params| {
            mrtr::set_request_state(params, self.state.as_deref())
        })
    }
}

impl Confirming {
    /// The retry as the upstream must see it: the call as first sent, without the user's
    /// answer or the gateway's state (the upstream never sees the question).
    pub fn restore(message: &Message) -> Result<Bytes, portcullis_mcp::Error> {
        with_params(message, mrtr::without_retry)
    }
}

/// `message` (a request) encoded with its params rewritten by `rewrite`.
fn with_params(
    message: &Message,
    rewrite: impl FnOnce(&RawValue) -> Result<Box<RawValue>, portcullis_mcp::Error>,
) -> Result<Bytes, portcullis_mcp::Error> {
    let Message::Request { id, method, params } = message else {
        return Err(portcullis_mcp::Error::InvalidParams(
            "tools/call needs params".into(),
        ));
    };
    let params = params
        .as_deref()
        .ok_or_else(|| portcullis_mcp::Error::InvalidParams("tools/call needs params".into()))?;
    Ok(Message::Request {
        id: id.clone(),
        method: method.clone(),
        params: Some(rewrite(params)?),
    }
    .encode())
}

/// The key of the gateway's confirmation question among an `input_required` answer's
/// `inputRequests` (and so of the user's answer among the retry's `inputResponses`).
pub const CONFIRM_KEY: &str = "portcullis_confirm";

/// SHA-256 (hex) of a client's session id, as a confirmation binds it.
pub fn session_digest(session: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        session.trim().as_bytes(),
    ))
}

/// A `requestState` asking the user to confirm the call of `tool` (arguments of canonical
/// digest `digest`) under `grant`, in the client's `session`, valid for `timeout`.
pub fn seal_question(
    keys: &Keyring,
    grant: GrantId,
    session: Option<&str>,
    tool: &str,
    digest: &str,
    timeout: Duration,
) -> String {
    let lifetime = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
    seal(
        keys,
        grant,
        tool,
        digest,
        Envelope {
            v: VERSION,
            exp: now().saturating_add(lifetime.max(1)),
            s: None,
            r: None,
            a: false,
            f: false,
            q: Some(Asked {
                s: session.map(session_digest),
            }),
        },
    )
}

/// The JSON-RPC error answering a refused `requestState`.
pub fn refusal_response(id: &RequestId, refusal: Refusal) -> Bytes {
    portcullis_mcp::error_response(
        Some(id),
        codes::INVALID_PARAMS,
        refusal.message(),
        Some(&json!({"reason": "invalid_request_state"})),
    )
}

/// The audit message of a continuation; `approval_taken` when this retry took an approval of
/// its own (the call it continues passed none).
pub fn note(message: Option<&str>, approval_taken: bool) -> String {
    let note = if approval_taken {
        "continuation of an input_required call: limits not charged again"
    } else {
        "continuation of an input_required call: limits and approval not charged again"
    };
    match message {
        Some(m) if !m.is_empty() => format!("{m} ({note})"),
        _ => note.to_owned(),
    }
}

/// Seals the `requestState` of the answer to one `tools/call`.
pub struct Sealer {
    keys: Arc<Keyring>,
    grant: GrantId,
    tool: String,
    digest: String,
    expires: Option<i64>,
    reservation: Option<Reservation>,
    approved: bool,
    confirmed: bool,
}

impl Sealer {
    /// For the call `tool` with arguments of canonical digest `digest`, in `round`, holding
    /// `held` (its own charges, or those of the call it continues, and the approval it
    /// consumed, if any); `confirmed` when its user confirmed it in this round.
    pub fn new(
        keys: Arc<Keyring>,
        grant: GrantId,
        tool: &str,
        digest: String,
        round: &Round,
        held: &Held,
        confirmed: bool,
    ) -> Self {
        // Approved here, or in the round it continues: its retries need no approval again.
        let approved = held.approval.is_some()
            || matches!(round, Round::Continuation(resumed) if resumed.approved);
        // Likewise confirmed.
        let confirmed =
            confirmed || matches!(round, Round::Continuation(resumed) if resumed.confirmed);
        let expires = match round {
            Round::Continuation(resumed) => Some(resumed.expires),
            _ => None,
        };
        Self {
            keys,
            grant,
            tool: tool.to_owned(),
            digest,
            expires,
            reservation: held.reservation.clone(),
            approved,
            confirmed,
        }
    }

    /// The answer with its `requestState` sealed, when `message` is an `input_required` result;
    /// `None` for anything else (passed on as it is).
    pub fn rewrite(&self, message: &Message) -> Option<Bytes> {
        let Message::Response { id, result } = message else {
            return None;
        };
        let input = match InputRequired::from_result(result) {
            Ok(Some(input)) => input,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable input_required answer passed on as it is");
                return None;
            }
        };
        let expires = self.expires.unwrap_or_else(|| {
            now().saturating_add(i64::try_from(LIFETIME.as_secs()).unwrap_or(i64::MAX))
        });
        let sealed = seal(
            &self.keys,
            self.grant,
            &self.tool,
            &self.digest,
            Envelope {
                v: VERSION,
                exp: expires,
                s: input.request_state.map(Cow::into_owned),
                r: self.reservation.clone(),
                a: self.approved,
                f: self.confirmed,
                q: None,
            },
        );
        match mrtr::set_request_state(result, Some(&sealed)) {
            Ok(result) => Some(portcullis_mcp::message::result_response_raw(id, &result)),
            Err(e) => {
                tracing::warn!(error = %e, "input_required answer passed on as it is");
                None
            }
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn seal(keys: &Keyring, grant: GrantId, tool: &str, digest: &str, envelope: Envelope) -> String {
    // A struct of numbers and strings always serializes.
    let plain = serde_json::to_vec(&envelope).unwrap_or_default();
    let context = portcullis_core::crypto::request_state_context(grant, tool, digest);
    keys.seal_text(&plain, &context)
}

fn open(
    keys: &Keyring,
    grant: GrantId,
    tool: &str,
    digest: &str,
    token: &str,
    now: i64,
) -> Result<(Envelope, Vec<u8>), Refusal> {
    // The text exactly as issued: no whitespace, no padding, no stray bits.
    // Decoded here, not by `Keyring::open_text`: the claim is keyed by the sealed bytes.
    let sealed = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| Refusal::Unopenable)?;
    let context = portcullis_core::crypto::request_state_context(grant, tool, digest);
    let plain = keys
        .open(&sealed, &context)
        .map_err(|_| Refusal::Unopenable)?;
    let envelope: Envelope = serde_json::from_slice(&plain).map_err(|_| Refusal::Unopenable)?;
    if envelope.v != VERSION {
        return Err(Refusal::Unopenable);
    }
    if envelope.exp <= now {
        return Err(if envelope.q.is_some() {
            Refusal::ConfirmationExpired
        } else {
            Refusal::Expired
        });
    }
    Ok((envelope, sealed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn call(raw: &str) -> Message {
        Message::parse(raw.as_bytes()).unwrap()
    }

    fn retry(state: &str, args: &str, tool: &str) -> Message {
        call(&format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}","arguments":{args},"inputResponses":{{"k":{{"action":"accept"}}}},"requestState":{}}}}}"#,
            Value::String(state.to_owned())
        ))
    }

    fn round(keys: &Keyring, grant: GrantId, message: &Message) -> Round {
        Round::of(keys, grant, None, &message.tool_call().unwrap().unwrap())
    }

    fn sealed_answer(sealer: &Sealer, result: &str) -> Value {
        let answer = call(&format!(r#"{{"jsonrpc":"2.0","id":3,"result":{result}}}"#));
        let bytes = sealer.rewrite(&answer).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn an_envelope_opens_only_for_its_grant_tool_and_arguments() {
        let keys = Arc::new(Keyring::generate(1).0);
        let grant = GrantId::new();
        let args = r#"{"b":2,"a":1}"#;
        let digest = portcullis_core::canonical::digest(&serde_json::from_str(args).unwrap());
        let sealer = Sealer::new(
            keys.clone(),
            grant,
            "consult",
            digest,
            &Round::Fresh,
            &Held::default(),
            false,
        );
        let answer = sealed_answer(
            &sealer,
            r#"{"resultType":"input_required","inputRequests":{"k":{"method":"elicitation/create","params":{}}},"requestState":"upstream-state"}"#,
        );
        assert_eq!(answer["id"], 3);
        assert_eq!(
            answer["result"]["inputRequests"]["k"]["method"],
            "elicitation/create"
        );
        let state = answer["result"]["requestState"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(!state.contains("upstream"));

        // Same call (arguments in another order): a continuation, the upstream state restored.
        let same = retry(&state, r#"{"a":1,"b":2}"#, "consult");
        let Round::Continuation(resumed) = round(&keys, grant, &same) else {
            panic!("the envelope did not open")
        };
        let restored: Value = serde_json::from_slice(&resumed.restore(&same).unwrap()).unwrap();
        assert_eq!(restored["params"]["requestState"], "upstream-state");
        assert_eq!(
            restored["params"]["inputResponses"]["k"]["action"],
            "accept"
        );
        assert_eq!(restored["id"], 7);

        for (message, what) in [
            (
                retry(&state, r#"{"a":1,"b":3}"#, "consult"),
                "other arguments",
            ),
            (retry(&state, args, "other"), "other tool"),
            (retry(&format!("{state}x"), args, "consult"), "altered"),
            (retry("upstream-state", args, "consult"), "not an envelope"),
            // Dressed in whitespace it would be another text for the same envelope, and
            // another claim of its one use.
            (
                retry(&format!(" {state}"), args, "consult"),
                "leading space",
            ),
            (
                retry(&format!("{state}\n"), args, "consult"),
                "trailing newline",
            ),
        ] {
            assert!(
                matches!(
                    round(&keys, grant, &message),
                    Round::Refused(Refusal::Unopenable)
                ),
                "{what}"
            );
        }
        let same = retry(&state, args, "consult");
        assert!(matches!(
            round(&keys, GrantId::new(), &same),
            Round::Refused(Refusal::Unopenable)
        ));
        assert!(matches!(
            round(&Keyring::generate(1).0, grant, &same),
            Round::Refused(Refusal::Unopenable)
        ));
        let plain =
            call(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"consult"}}"#);
        assert!(matches!(round(&keys, grant, &plain), Round::Fresh));
    }

    #[test]
    fn no_upstream_state_is_removed_again_and_expiry_and_charges_are_inherited() {
        let keys = Arc::new(Keyring::generate(1).0);
        let grant = GrantId::new();
        let digest = portcullis_core::canonical::digest(&json!({}));
        let charged: Reservation = serde_json::from_value(
            json!({"keys": ["pc:{t:x}:lim:c:60000ms"], "charged": [[7, 1]]}),
        )
        .unwrap();
        let sealer = Sealer::new(
            keys.clone(),
            grant,
            "t",
            digest.clone(),
            &Round::Fresh,
            &Held {
                reservation: Some(charged.clone()),
                approval: Some(crate::approvals::Consumed::detached("apr_x")),
            },
            false,
        );
        let answer = sealed_answer(&sealer, r#"{"resultType":"input_required"}"#);
        let state = answer["result"]["requestState"]
            .as_str()
            .unwrap()
            .to_owned();
        let message = retry(&state, "{}", "t");
        let round = round(&keys, grant, &message);
        let Round::Continuation(resumed) = &round else {
            panic!("the envelope did not open")
        };
        assert!(resumed.state.is_none());
        assert_eq!(resumed.reservation.as_ref(), Some(&charged));
        assert!(resumed.approved);
        let restored: Value = serde_json::from_slice(&resumed.restore(&message).unwrap()).unwrap();
        assert!(
            restored["params"].get("requestState").is_none(),
            "{restored}"
        );

        // A later round keeps the first envelope's expiry (and, from the verdict, its charges).
        let later = Sealer::new(
            keys.clone(),
            grant,
            "t",
            digest.clone(),
            &round,
            &Held {
                reservation: resumed.reservation.clone(),
                approval: None,
            },
            false,
        );
        assert_eq!(later.expires, Some(resumed.expires));
        assert_eq!(later.reservation, Some(charged));
        assert!(later.approved);
        let expired = seal(
            &keys,
            grant,
            "t",
            &digest,
            Envelope {
                v: VERSION,
                exp: now() - 1,
                s: None,
                r: None,
                a: false,
                f: false,
                q: None,
            },
        );
        assert_eq!(
            open(&keys, grant, "t", &digest, &expired, now()).err(),
            Some(Refusal::Expired)
        );

        // Complete results and errors are not touched.
        let complete = call(r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#);
        assert!(sealer.rewrite(&complete).is_none());
        let error = call(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"x"}}"#);
        assert!(sealer.rewrite(&error).is_none());
    }

    #[test]
    fn a_question_opens_for_its_call_and_session_with_the_users_answer() {
        let keys = Keyring::generate(1).0;
        let grant = GrantId::new();
        let args = r#"{"to":"+44"}"#;
        let digest = portcullis_core::canonical::digest(&serde_json::from_str(args).unwrap());
        let minute = Duration::from_secs(60);
        let state = seal_question(&keys, grant, Some("s-1"), "send", &digest, minute);
        let answered = |state: &str, action: &str| {
            call(&format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"send","arguments":{args},"inputResponses":{{"{CONFIRM_KEY}":{{"action":"{action}","content":{{"confirm":true}}}}}},"requestState":{}}}}}"#,
                Value::String(state.to_owned())
            ))
        };
        let of = |message: &Message, session: Option<&str>| {
            Round::of(
                &keys,
                grant,
                session,
                &message.tool_call().unwrap().unwrap(),
            )
        };
        let yes = answered(&state, "accept");
        let Round::Confirming(confirming) = of(&yes, Some("s-1")) else {
            panic!("the question did not open")
        };
        assert_eq!(confirming.answer, Some(Answer::Confirmed));
        // The upstream sees neither the answer nor the state.
        let restored: Value = serde_json::from_slice(&Confirming::restore(&yes).unwrap()).unwrap();
        assert_eq!(
            restored["params"],
            serde_json::json!({"name": "send", "arguments": {"to": "+44"}})
        );
        let Round::Confirming(declined) = of(&answered(&state, "decline"), Some("s-1")) else {
            panic!("the question did not open")
        };
        assert_eq!(declined.answer, Some(Answer::Declined));
        // Another session, or none: refused.
        for session in [Some("s-2"), None] {
            assert!(matches!(
                of(&yes, session),
                Round::Refused(Refusal::Unopenable)
            ));
        }
        // Past its timeout: refused as a confirmation that timed out.
        let late = seal(
            &keys,
            grant,
            "send",
            &digest,
            Envelope {
                v: VERSION,
                exp: now() - 1,
                s: None,
                r: None,
                a: false,
                f: false,
                q: Some(Asked { s: None }),
            },
        );
        assert!(matches!(
            of(&answered(&late, "accept"), None),
            Round::Refused(Refusal::ConfirmationExpired)
        ));
    }

    #[test]
    fn refusals_are_invalid_params() {
        let body = refusal_response(&RequestId::from(4), Refusal::Expired);
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"]["code"], -32602);
        assert_eq!(value["id"], 4);
        assert!(
            value["error"]["message"]
                .as_str()
                .unwrap()
                .contains("requestState")
        );
    }
}
