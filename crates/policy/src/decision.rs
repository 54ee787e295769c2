//! What an evaluation decides: the outcome, the rule that decided, and the counters to charge.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::prompt::Prompt;

/// A string that is either static or shared, so a decision names its rule without copying it.
#[derive(Clone)]
pub struct SharedStr(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl SharedStr {
    /// Wraps a string literal (no allocation).
    pub const fn from_static(text: &'static str) -> Self {
        Self(Repr::Static(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for SharedStr {
    fn from(text: String) -> Self {
        Self(Repr::Shared(text.into()))
    }
}

impl From<&str> for SharedStr {
    fn from(text: &str) -> Self {
        Self(Repr::Shared(text.into()))
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::hash::Hash for SharedStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SharedStr::from)
    }
}

/// Rule id of a decision made without a policy.
pub const NO_POLICY: &str = "(no policy)";
/// Rule id of a hidden tool.
pub const HIDDEN: &str = "(hidden)";
/// Rule id of a tool no rule matches under `default: deny`.
pub const DEFAULT_DENY: &str = "(default deny)";
/// Rule id of a tool no rule matches under `default: allow`.
pub const DEFAULT_ALLOW: &str = "(default allow)";

/// What happens to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forward it (after charging the decision's counters).
    Allow,
    /// Refuse it with the decision's message.
    Deny,
    /// Answer as if the tool did not exist.
    Hidden,
    /// Hold it for a human; a pending approval expires after `timeout`.
    ApprovalRequired {
        /// How long the approval may wait.
        timeout: Duration,
    },
    /// Ask the agent's user to confirm it (the decision's [`Confirmation`] says what), then
    /// go on as the confirmation says.
    ConfirmationRequired {
        /// How long the user has to answer.
        timeout: Duration,
    },
}

impl Outcome {
    /// The name used in audit records and the CLI: `allow`, `deny`, `hidden`,
    /// `approval_required`, `confirmation_required`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Hidden => "hidden",
            Outcome::ApprovalRequired { .. } => "approval_required",
            Outcome::ConfirmationRequired { .. } => "confirmation_required",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One counter the gateway must charge (atomically with the others) before forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// `<scope>:<subject>:<counter>`, e.g. `grant:<grant>:sms`, `tenant:<tenant>:spend`.
    pub key: String,
    /// Sliding window length.
    #[serde(rename = "window_ms", with = "millis")]
    pub window: Duration,
    /// Most units allowed within the window.
    pub max: u64,
    /// Units this call consumes (1, or the value of the limit's `cost` argument).
    pub cost: u64,
    /// Pointer of the limit in the policy, e.g. `/tools/send_message/limits/0`.
    pub rule: SharedStr,
}

/// What a `confirmation_required` decision asks, and what follows a confirmed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The question, rendered per call ([`Prompt::render`]).
    pub prompt: Prompt,
    /// The approval the rule also asks for, once the user has confirmed.
    pub then: Option<ApprovalStep>,
    /// The rule's approval (whether or not its `when` holds for this call): what stands in for
    /// the user when their client cannot be asked.
    pub fallback: Option<ApprovalStep>,
}

/// The approval that follows a confirmation, as the decision would name it on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalStep {
    /// How long the approval may wait.
    pub timeout: Duration,
    /// Pointer of the rule's `approval`.
    pub rule: SharedStr,
    /// Why, for the agent and the audit log.
    pub message: SharedStr,
}

/// The result of evaluating one call against a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What happens to the call.
    pub outcome: Outcome,
    /// Which rule decided: a JSON pointer into the policy, or `(hidden)`, `(default deny)`,
    /// `(default allow)`, `(no policy)`.
    pub rule: SharedStr,
    /// Why, for the agent and the audit log.
    pub message: SharedStr,
    /// Counters to charge when the call goes through (also for approvals, once approved).
    pub charges: Vec<Charge>,
    /// The policy is in monitor mode: audit the outcome but let the call through.
    pub monitor: bool,
    /// Check the arguments against the tool's `inputSchema` before forwarding.
    pub validate: bool,
    /// What the user is asked, for `confirmation_required`.
    pub confirmation: Option<Confirmation>,
}

impl Decision {
    /// The decision when a grant has no policy: deny everything.
    pub fn no_policy() -> Self {
        Self {
            outcome: Outcome::Deny,
            rule: SharedStr::from_static(NO_POLICY),
            message: SharedStr::from_static("no policy is attached, so every call is denied"),
            charges: Vec::new(),
            monitor: false,
            validate: false,
            confirmation: None,
        }
    }

    /// The decision once the user has confirmed a `confirmation_required` call: the approval
    /// the rule also asks for, else allow (with the same charges). `None` for other outcomes.
    pub fn confirmed(&self) -> Option<Decision> {
        let confirmation = self.confirmation.as_ref()?;
        let (outcome, rule, message) = match &confirmation.then {
            Some(step) => (
                Outcome::ApprovalRequired {
                    timeout: step.timeout,
                },
                step.rule.clone(),
                step.message.clone(),
            ),
            None => (Outcome::Allow, self.rule.clone(), self.message.clone()),
        };
        Some(Decision {
            outcome,
            rule,
            message,
            charges: self.charges.clone(),
            monitor: self.monitor,
            validate: self.validate,
            confirmation: None,
        })
    }

    /// The decision when the user cannot be asked (their client does not support elicitation):
    /// the rule's approval, whatever its `when` says, or `None` (deny) when it has none.
    pub fn unconfirmable(&self) -> Option<Decision> {
        let step = self.confirmation.as_ref()?.fallback.as_ref()?;
        Some(Decision {
            outcome: Outcome::ApprovalRequired {
                timeout: step.timeout,
            },
            rule: step.rule.clone(),
            message: step.message.clone(),
            charges: self.charges.clone(),
            monitor: self.monitor,
            validate: self.validate,
            confirmation: None,
        })
    }

    /// Whether the outcome lets the call through unconditionally (ignoring monitor mode).
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }
}

/// The JSON shape of a decision, as the CLI prints it and `_meta` carries it.
#[derive(Serialize, Deserialize)]
struct DecisionJson {
    decision: String,
    rule: SharedStr,
    message: SharedStr,
    charges: Vec<Charge>,
    monitor: bool,
    validate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approval_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confirmation: Option<ConfirmationJson>,
}

/// A confirmation as the CLI prints it: the message as written (the CLI adds the rendered
/// `question`), how long the user has, and the approval that follows.
#[derive(Serialize, Deserialize)]
struct ConfirmationJson {
    message: String,
    timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    then_approval: Option<ApprovalStepJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fallback_approval: Option<ApprovalStepJson>,
}

#[derive(Serialize, Deserialize)]
struct ApprovalStepJson {
    rule: SharedStr,
    message: SharedStr,
    timeout_ms: u64,
}

impl ApprovalStepJson {
    fn of(step: &ApprovalStep) -> Self {
        Self {
            rule: step.rule.clone(),
            message: step.message.clone(),
            timeout_ms: millis::of(step.timeout),
        }
    }

    fn step(self) -> ApprovalStep {
        ApprovalStep {
            timeout: Duration::from_millis(self.timeout_ms),
            rule: self.rule,
            message: self.message,
        }
    }
}

impl Serialize for Decision {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let approval_timeout_ms = match self.outcome {
            Outcome::ApprovalRequired { timeout } => Some(millis::of(timeout)),
            _ => None,
        };
        let confirmation = match (self.outcome, &self.confirmation) {
            (Outcome::ConfirmationRequired { timeout }, Some(c)) => Some(ConfirmationJson {
                message: c.prompt.as_str().to_owned(),
                timeout_ms: millis::of(timeout),
                then_approval: c.then.as_ref().map(ApprovalStepJson::of),
                fallback_approval: c.fallback.as_ref().map(ApprovalStepJson::of),
            }),
            _ => None,
        };
        DecisionJson {
            decision: self.outcome.as_str().to_owned(),
            rule: self.rule.clone(),
            message: self.message.clone(),
            charges: self.charges.clone(),
            monitor: self.monitor,
            validate: self.validate,
            approval_timeout_ms,
            confirmation,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Decision {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = DecisionJson::deserialize(d)?;
        let outcome = match json.decision.as_str() {
            "allow" => Outcome::Allow,
            "deny" => Outcome::Deny,
            "hidden" => Outcome::Hidden,
            "approval_required" => Outcome::ApprovalRequired {
                timeout: Duration::from_millis(json.approval_timeout_ms.unwrap_or_default()),
            },
            "confirmation_required" => Outcome::ConfirmationRequired {
                timeout: Duration::from_millis(
                    json.confirmation.as_ref().map_or(0, |c| c.timeout_ms),
                ),
            },
            other => {
                return Err(serde::de::Error::unknown_variant(
                    other,
                    &[
                        "allow",
                        "deny",
                        "hidden",
                        "approval_required",
                        "confirmation_required",
                    ],
                ));
            }
        };
        let confirmation = match json.confirmation {
            Some(c) => Some(Confirmation {
                prompt: Prompt::parse(&c.message).map_err(serde::de::Error::custom)?,
                then: c.then_approval.map(ApprovalStepJson::step),
                fallback: c.fallback_approval.map(ApprovalStepJson::step),
            }),
            None => None,
        };
        Ok(Self {
            outcome,
            rule: json.rule,
            message: json.message,
            charges: json.charges,
            monitor: json.monitor,
            validate: json.validate,
            confirmation,
        })
    }
}

/// Durations on the wire are whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn of(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(of(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decisions_serialise_to_the_cli_shape_and_back() {
        let decision = Decision {
            outcome: Outcome::ApprovalRequired {
                timeout: Duration::from_secs(1800),
            },
            rule: SharedStr::from("/tools/send_message/approval"),
            message: SharedStr::from_static("approval required"),
            charges: vec![Charge {
                key: "grant:g1:sms".into(),
                window: Duration::from_secs(3600),
                max: 30,
                cost: 1,
                rule: "/tools/send_message/limits/0".into(),
            }],
            monitor: false,
            validate: true,
            confirmation: None,
        };
        let value = serde_json::to_value(&decision).unwrap();
        assert_eq!(
            value,
            json!({
                "decision": "approval_required",
                "rule": "/tools/send_message/approval",
                "message": "approval required",
                "charges": [{"key": "grant:g1:sms", "window_ms": 3_600_000, "max": 30, "cost": 1,
                             "rule": "/tools/send_message/limits/0"}],
                "monitor": false,
                "validate": true,
                "approval_timeout_ms": 1_800_000,
            })
        );
        let back: Decision = serde_json::from_value(value).unwrap();
        assert_eq!(back, decision);
        let no_policy = serde_json::to_value(Decision::no_policy()).unwrap();
        assert_eq!(no_policy["decision"], "deny");
        assert_eq!(no_policy["rule"], "(no policy)");
        assert!(no_policy.get("approval_timeout_ms").is_none());
    }

    #[test]
    fn shared_strings_compare_by_text() {
        assert_eq!(SharedStr::from_static("a"), SharedStr::from("a".to_owned()));
        assert_eq!(SharedStr::from_static("(hidden)"), HIDDEN);
        assert_eq!(format!("{:?}", SharedStr::from("x")), "\"x\"");
    }
}
