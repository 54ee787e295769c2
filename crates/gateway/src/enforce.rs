//! Enforcement of one `tools/call`: the policy decision, changed-tool blocking, argument
//! validation, approvals, and the limiter, in that order. The result is either "forward" (with
//! the charges taken, to refund if the call fails) or a JSON-RPC answer given by the gateway.
//!
//! `mode: monitor` runs every step and audits what would have happened, but always forwards
//! (and opens no approvals: nobody is waiting on them).
//!
//! A continuation (a stateless-era retry of an `input_required` answer, see
//! [`crate::continuation`]) is decided by the policy like any call, but charges no limits and
//! needs no approval: the call it continues paid for both.

use bytes::Bytes;
use portcullis_core::audit::{AuditDecision, AuditEvent, Confirmation};
use portcullis_mcp::tools::{ToolCall, tool_error_response, unknown_tool_response};
use portcullis_mcp::{ProtocolEra, RequestId};
use portcullis_policy::{AuditArguments, Call, Decision, OnLimiterError, Outcome, SharedStr};
use serde_json::{Map, Value, json};

use crate::Gateway;
use crate::approvals::Opened;
use crate::confirm::{Reach, Settled};
use crate::continuation::{self, Round};
use crate::error::GatewayError;
use crate::grants::Grant;
use crate::limiter::Charged;
use crate::relay::Held;

/// The `_meta` key under which answers carry the gateway's decision.
pub const META_KEY: &str = "portcullis/decision";

/// Rule id of a call refused because the tool's definition changed since approval.
pub const TOOL_CHANGED: &str = "(tool changed)";
/// Rule id of a call refused because the limiter could not be reached.
pub const LIMITER_UNAVAILABLE: &str = "(limiter unavailable)";

/// What to do with a call.
pub enum Verdict {
    /// Forward it, holding these charges.
    Forward {
        /// The charges taken and the approval consumed, given back if the call fails or never
        /// reaches the tool.
        held: Held,
        /// The decision's audit entry, when it was written with the charge (same round trip).
        decided: Option<String>,
    },
    /// Answer it with this JSON-RPC message (HTTP 200).
    Answer(Bytes),
    /// Session era: ask its user to confirm it on the stream that answers it, then decide it
    /// again ([`crate::confirm`]).
    Ask(crate::confirm::Ask),
}

/// Decides a `tools/call` in `round`, filling the audit event's decision fields, and
/// `confirmation` with the user's answer when the call needed their confirmation.
#[allow(clippy::too_many_arguments)] // One call's context, all of it needed here.
pub async fn tools_call(
    gw: &Gateway,
    grant: &Grant,
    id: &RequestId,
    call: &ToolCall<'_>,
    round: &Round,
    era: ProtocolEra,
    reach: Reach<'_>,
    event: &mut AuditEvent,
    confirmation: &mut Option<Confirmation>,
) -> Result<Verdict, GatewayError> {
    let name: &str = &call.name;
    let policy = grant.policy.compiled.as_deref();
    event.tool = Some(name.to_owned());
    if let Value::Object(args) = &call.arguments {
        event.arg_keys = args.keys().cloned().collect();
    }
    event.arg_digest = Some(portcullis_core::canonical::digest(&call.arguments));
    if policy.is_some_and(|p| p.audit_arguments() == AuditArguments::Values) {
        event.arguments = Some(crate::audit::redact_arguments(&call.arguments));
    }
    // Continuation hook: a `requestState` this gateway did not issue for this grant, tool and
    // arguments is refused before anything else.
    if let Round::Refused(refusal) = round {
        event.decision = AuditDecision::Deny;
        if *refusal == continuation::Refusal::ConfirmationExpired {
            event.decision = AuditDecision::ConfirmationRequired;
            *confirmation = Some(Confirmation::TimedOut);
        }
        event.rule = Some(continuation::RULE.to_owned());
        event.message = Some(refusal.message().to_owned());
        return Ok(Verdict::Answer(continuation::refusal_response(
            id, *refusal,
        )));
    }

    let tools = gw.catalogue.tools(grant.tenant, grant.server.id).await?;
    let known = tools.get(name);
    // The name the policy decides on: the called one, or the discovered tool it is a case
    // variant of, which an upstream that ignores case would run.
    let mut decided = name;
    match known {
        Some(tool) => {
            portcullis_mcp::tools::check_argument_names(&tool.input_schema, &call.arguments)?
        }
        None => {
            if let Some(meant) = portcullis_mcp::tools::case_variant(name, tools.names()) {
                if portcullis_policy::is_visible(policy, meant, tools.category(meant)) {
                    return Err(portcullis_mcp::Error::InvalidParams(format!(
                        "unknown tool {name:?}: it reads as {meant:?} to upstreams that ignore \
                         case, and tool names are matched exactly"
                    ))
                    .into());
                }
                // A tool the grant may not see: decided as that tool (hidden or denied), so
                // the answer tells no more than calling it by its name would.
                decided = meant;
            }
        }
    }
    let mut decision = portcullis_policy::evaluate(
        policy,
        &Call {
            tool: decided,
            arguments: &call.arguments,
            grant: &grant.id_text,
            identity: &grant.identity,
            server: &grant.server_text,
            tenant: &grant.tenant_text,
            category: tools.category(decided),
        },
    );
    let would_run = matches!(
        decision.outcome,
        Outcome::Allow | Outcome::ApprovalRequired { .. } | Outcome::ConfirmationRequired { .. }
    );
    if would_run && grant.server.block_changed_tools && known.is_some_and(|t| t.changed) {
        decision = refuse(
            &decision,
            TOOL_CHANGED.into(),
            "this tool's definition changed since it was approved; an administrator must review it",
        );
    } else if would_run && decision.validate {
        let problem = match known {
            None => Some(
                "the tool's input schema is unknown (the server's tools were not discovered)"
                    .to_owned(),
            ),
            Some(tool) => gw.catalogue.validate(tool, &call.arguments).err(),
        };
        if let Some(problem) = problem {
            // The `validate` key sits in the rule whose decision this is: an approval's
            // decision names the rule's `approval` key, a confirmation's its `confirm` key.
            let rule_id = decision
                .rule
                .strip_suffix("/approval")
                .or_else(|| decision.rule.strip_suffix("/confirm"))
                .unwrap_or(&decision.rule);
            let rule = format!("{rule_id}/validate");
            decision = refuse(
                &decision,
                rule.into(),
                &format!("invalid arguments: {problem}"),
            );
        }
    }

    event.rule = Some(decision.rule.to_string());
    event.message = Some(decision.message.to_string());
    if matches!(decision.outcome, Outcome::ConfirmationRequired { .. }) && !decision.monitor {
        let settled = crate::confirm::settle(
            gw,
            grant,
            id,
            call,
            round,
            era,
            reach,
            &decision,
            event,
            confirmation,
        );
        // Boxed: a rare branch's future must not grow every call's.
        match Box::pin(settled).await? {
            Settled::Answer(verdict) => return Ok(verdict),
            Settled::Go(next) => decision = next,
        }
    }
    let monitor = decision.monitor;
    let needs_approval = matches!(decision.outcome, Outcome::ApprovalRequired { .. });
    if confirmation.is_none() {
        event.rule = Some(decision.rule.to_string());
        event.message = Some(decision.message.to_string());
    }
    let mut approved: Option<crate::approvals::Consumed> = None;
    // A continuation whose envelope was claimed while its approval was looked up.
    let mut claimed_here = None;
    match decision.outcome {
        Outcome::Hidden => {
            event.decision = AuditDecision::Hidden;
            if !monitor {
                return Ok(Verdict::Answer(unknown_tool_response(id, name)));
            }
        }
        Outcome::Deny => {
            event.decision = AuditDecision::Deny;
            if !monitor {
                let text = format!("[POLICY DENIED] {}", decision.message);
                return Ok(Verdict::Answer(tool_error_response(
                    id,
                    &text,
                    Some(meta(event, None)),
                    era,
                )));
            }
        }
        Outcome::ApprovalRequired { timeout } => {
            event.decision = AuditDecision::ApprovalRequired;
            if matches!(round, Round::Continuation(resumed) if resumed.approved) {
                // Continuation hook: the call it continues passed the approval.
                event.decision = AuditDecision::Allow;
            } else if !monitor {
                // A fresh call, or a continuation of one that passed no approval (it needed
                // none then, or ran in `mode: monitor`): approved calls pass once each. A used
                // envelope asks no approver anything.
                if portcullis_policy::holds_rounded_integer(&call.arguments) {
                    // An approval binds the exact arguments; these cannot be told apart from
                    // their neighbours, so none is asked for.
                    return Ok(denied(event, id, INEXACT_APPROVAL.to_owned(), era));
                }
                if let Round::Continuation(resumed) = round {
                    // The envelope is claimed before the approvals are looked at, so of
                    // concurrent retries of one envelope only one reaches them: a retry that
                    // loses can neither take the approval nor open a new one for a call that
                    // already ran. Boxed: a rare branch's future must not grow every call's.
                    let claim = Box::pin(gw.limiter.claim_once(
                        grant.tenant,
                        &resumed.marker,
                        resumed.claim_expires_ms(),
                    ));
                    let refusal = match claim.await {
                        Ok(true) => None,
                        Ok(false) => Some(continuation::Refusal::Used),
                        Err(e) => {
                            continuation_unchecked(&e, false, "cannot claim a continuation");
                            Some(continuation::Refusal::Unclaimed)
                        }
                    };
                    if let Some(refusal) = refusal {
                        return Ok(refused_continuation(event, id, refusal));
                    }
                    claimed_here = Some(resumed);
                }
                let fingerprint =
                    portcullis_core::canonical::call_fingerprint(name, &call.arguments);
                let asked = match crate::approvals::consume(&gw.db, grant, &fingerprint).await {
                    Ok(Some(approval)) => {
                        event.decision = AuditDecision::Allow;
                        event.message = Some(format!("approved ({approval})"));
                        approved = Some(crate::approvals::Consumed::new(
                            gw.db.clone(),
                            grant.tenant,
                            approval,
                        ));
                        None
                    }
                    Ok(None) => {
                        let redacted = crate::audit::redact_arguments(&call.arguments);
                        let opened = crate::approvals::open(
                            &gw.db,
                            grant,
                            name,
                            &fingerprint,
                            &redacted,
                            timeout,
                            gw.approvals_pending_max,
                        );
                        Some(opened.await)
                    }
                    Err(e) => Some(Err(e)),
                };
                if let Some(asked) = asked {
                    if let Some(resumed) = claimed_here {
                        // This retry does not run: its envelope stays good for the one that
                        // will, once approved.
                        let release = Box::pin(gw.limiter.release(grant.tenant, &resumed.marker));
                        if let Err(e) = release.await {
                            continuation_unchecked(
                                &e,
                                false,
                                "cannot release a continuation's claim",
                            );
                        }
                    }
                    let approval = match asked? {
                        Opened::Open(approval) => approval,
                        Opened::TooMany => {
                            let max = gw.approvals_pending_max;
                            let message = format!(
                                "this grant has {max} approvals pending, the most it may have: \
                                 ask an approver to decide them, then retry"
                            );
                            return Ok(denied(event, id, message, era));
                        }
                    };
                    let text = format!(
                        "[APPROVAL REQUIRED] {} Approval {approval} is pending: ask an approver \
                         to approve it, then retry the same call with the same arguments.",
                        with_period(&decision.message)
                    );
                    let meta = meta(event, Some(("approval_id", json!(approval))));
                    return Ok(Verdict::Answer(tool_error_response(
                        id,
                        &text,
                        Some(meta),
                        era,
                    )));
                }
            }
        }
        // Reached only in monitor mode: audited, nobody asked.
        Outcome::ConfirmationRequired { .. } => {
            event.decision = AuditDecision::ConfirmationRequired;
        }
        Outcome::Allow => {
            event.decision = if confirmation.is_some() {
                AuditDecision::ConfirmationRequired
            } else {
                AuditDecision::Allow
            };
        }
    }
    let forward = |reservation, approval| Verdict::Forward {
        held: Held {
            reservation,
            approval,
        },
        decided: None,
    };

    if let Round::Continuation(resumed) = round {
        if claimed_here.is_none()
            && !needs_approval
            && !resumed.approved
            && resumed.reservation.is_none()
            && decision.charges.is_empty()
        {
            // Nothing rides on this envelope: no charge to carry on or refund, no approval
            // passed. A replay costs what a fresh call does, so its one use is not kept, and
            // the call needs Redis no more than a fresh call without limits does.
            event.message = Some(continuation::note(event.message.as_deref(), false));
            return Ok(forward(None, approved));
        }
        // Continuation hook: the call it continues was charged (and, if it needed one, passed
        // its approval); each envelope continues once. Only the claim that wins carries the
        // charge on, so a replayed envelope can neither run an approved call again nor have
        // that charge refunded twice.
        let claimed = match claimed_here {
            Some(_) => Ok(true),
            None => {
                gw.limiter
                    .claim_once(grant.tenant, &resumed.marker, resumed.claim_expires_ms())
                    .await
            }
        };
        let refusal = match &claimed {
            Ok(true) => None,
            Ok(false) => Some(continuation::Refusal::Used),
            Err(e) => {
                // `on_limiter_error` speaks for limits: an approval is never taken on trust.
                let fail_open = !needs_approval
                    && policy.is_some_and(|p| p.on_limiter_error() == OnLimiterError::Allow);
                continuation_unchecked(e, fail_open, "cannot claim a continuation");
                if fail_open {
                    event.message = Some(continuation::note(
                        event.message.as_deref(),
                        approved.is_some(),
                    ));
                    return Ok(forward(None, approved));
                }
                if needs_approval {
                    Some(continuation::Refusal::Unclaimed)
                } else if monitor {
                    None
                } else {
                    return Ok(limiter_unavailable(event, id, era));
                }
            }
        };
        if let Some(refusal) = refusal {
            if monitor {
                note_refusal(event, refusal);
                return Ok(forward(None, approved));
            }
            // (No approval to give back: a retry consumes one only after claiming its envelope.)
            return Ok(refused_continuation(event, id, refusal));
        }
        event.message = Some(continuation::note(
            event.message.as_deref(),
            approved.is_some(),
        ));
        // The call it continues was charged: if this retry fails, that charge is refunded.
        // Only a won claim carries the charge on (in monitor mode a used envelope is forwarded
        // too, without it).
        let reservation = if matches!(claimed, Ok(true)) {
            resumed.reservation.clone()
        } else {
            None
        };
        return Ok(forward(reservation, approved));
    }
    if decision.charges.is_empty() {
        return Ok(forward(None, approved));
    }
    // The entry written with the charge is the decision as it stands if the charge succeeds.
    let entry = portcullis_core::audit::stream::encode(event);
    match gw
        .limiter
        .charge(grant.tenant, &decision.charges, Some(entry.clone()))
        .await
    {
        Ok(Charged::Ok(reservation)) => Ok(Verdict::Forward {
            held: Held {
                reservation: Some(reservation),
                approval: approved,
            },
            decided: Some(entry),
        }),
        Ok(Charged::Exceeded { index, retry_after }) => {
            let charge = &decision.charges[index.min(decision.charges.len() - 1)];
            let retry_secs = retry_after.as_millis().div_ceil(1000).max(1);
            let message = format!(
                "rate limit {} reached: at most {} per {}; retry after {retry_secs} s",
                charge.rule,
                charge.max,
                window_text(charge.window),
            );
            if matches!(
                event.decision,
                AuditDecision::Allow | AuditDecision::ConfirmationRequired
            ) {
                event.decision = AuditDecision::RateLimited;
                event.rule = Some(charge.rule.to_string());
                event.message = Some(message.clone());
            }
            if monitor {
                return Ok(forward(None, approved));
            }
            if let Some(approval) = approved {
                // The approval was not used: give it back for the retry.
                Box::pin(approval.give_back()).await?;
            }
            let text = format!("[RATE LIMITED] {message}.");
            let meta = meta(
                event,
                Some((
                    "retry_after_ms",
                    json!(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)),
                )),
            );
            Ok(Verdict::Answer(tool_error_response(
                id,
                &text,
                Some(meta),
                era,
            )))
        }
        Err(e) => {
            metrics::counter!("portcullis_gateway_limiter_errors_total", "op" => "charge")
                .increment(1);
            let fail_open = policy.is_some_and(|p| p.on_limiter_error() == OnLimiterError::Allow);
            tracing::warn!(error = %e, fail_open, "limiter unavailable");
            if fail_open || monitor {
                event.message = Some(format!(
                    "{} (limits not charged: limiter unavailable; on_limiter_error: allow)",
                    decision.message
                ));
                return Ok(forward(None, approved));
            }
            if let Some(approval) = approved {
                Box::pin(approval.give_back()).await?;
            }
            Ok(limiter_unavailable(event, id, era))
        }
    }
}

/// A call the gateway denies for a reason of its own (not a policy rule's message): audited as
/// `deny` with `message`, answered `[POLICY DENIED] <message>.`
pub(crate) fn denied(
    event: &mut AuditEvent,
    id: &RequestId,
    message: String,
    era: ProtocolEra,
) -> Verdict {
    let text = format!("[POLICY DENIED] {message}.");
    event.decision = AuditDecision::Deny;
    event.message = Some(message);
    Verdict::Answer(tool_error_response(id, &text, Some(meta(event, None)), era))
}

/// Why a call that needs approval is refused when its arguments hold an inexact number.
const INEXACT_APPROVAL: &str = "this call needs approval, and its arguments hold a number too \
     large to approve exactly (an integer past 64 bits); send it as a string";

/// Counts and logs a Redis failure while claiming or releasing a continuation's envelope
/// (`fail_open`: the call goes on regardless).
fn continuation_unchecked(
    error: &crate::limiter::LimiterError,
    fail_open: bool,
    what: &'static str,
) {
    metrics::counter!("portcullis_gateway_limiter_errors_total", "op" => "continuation")
        .increment(1);
    tracing::warn!(error = %error, fail_open, "{what}");
}

/// Audits a continuation's refusal.
fn note_refusal(event: &mut AuditEvent, refusal: continuation::Refusal) {
    (event.decision, event.rule) = match refusal {
        continuation::Refusal::Unclaimed => {
            (AuditDecision::Error, Some(LIMITER_UNAVAILABLE.to_owned()))
        }
        _ => (AuditDecision::Deny, Some(continuation::RULE.to_owned())),
    };
    event.message = Some(refusal.message().to_owned());
}

/// The answer to a continuation refused, audited.
pub(crate) fn refused_continuation(
    event: &mut AuditEvent,
    id: &RequestId,
    refusal: continuation::Refusal,
) -> Verdict {
    note_refusal(event, refusal);
    Verdict::Answer(continuation::refusal_response(id, refusal))
}

/// The answer to a call refused because the limiter (Redis) cannot be reached and the policy's
/// `on_limiter_error` is `deny`.
fn limiter_unavailable(event: &mut AuditEvent, id: &RequestId, era: ProtocolEra) -> Verdict {
    event.decision = AuditDecision::Error;
    event.rule = Some(LIMITER_UNAVAILABLE.to_owned());
    event.message = Some(
        "the rate limiter is unavailable, so calls with limits are refused (on_limiter_error: deny)"
            .to_owned(),
    );
    let text = format!(
        "[POLICY DENIED] {}.",
        event.message.as_deref().unwrap_or("")
    );
    Verdict::Answer(tool_error_response(id, &text, Some(meta(event, None)), era))
}

fn refuse(decision: &Decision, rule: SharedStr, message: &str) -> Decision {
    Decision {
        outcome: Outcome::Deny,
        rule,
        message: SharedStr::from(message),
        charges: Vec::new(),
        monitor: decision.monitor,
        validate: false,
        confirmation: None,
    }
}

fn with_period(text: &str) -> String {
    if text.ends_with(['.', '!', '?']) {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

/// The decision as an answer's `_meta` carries it.
pub(crate) fn meta(event: &AuditEvent, extra: Option<(&str, Value)>) -> Map<String, Value> {
    let mut decision = json!({
        "decision": event.decision.as_str(),
        "rule": event.rule,
        "message": event.message,
        "event_id": event.id.to_string(),
    });
    if let (Some((key, value)), Value::Object(obj)) = (extra, &mut decision) {
        obj.insert(key.to_owned(), value);
    }
    let mut meta = Map::new();
    meta.insert(META_KEY.to_owned(), decision);
    meta
}

fn window_text(window: std::time::Duration) -> String {
    let secs = window.as_secs();
    match secs {
        60 => "minute".into(),
        3600 => "hour".into(),
        86_400 => "day".into(),
        s if s % 3600 == 0 && s > 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{} min", s / 60),
        s if s > 0 => format!("{s} s"),
        _ => format!("{} ms", window.as_millis()),
    }
}
