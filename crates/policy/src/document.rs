//! The policy document as written: a serde model of policy language v1.
//!
//! Every struct refuses unknown keys. Use [`PolicyDocument::from_json`] to read a document: it
//! reports every problem at once with a JSON pointer, where plain serde would stop at the first.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::classify::RiskCategory;
use crate::conditions::{ArgPath, Op};
use crate::duration::Span;
use crate::error::PolicyError;

/// A whole policy document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Language version; only `"1"` exists.
    pub version: Version,
    /// What happens to a tool no rule matches (default `deny`).
    #[serde(default)]
    pub default: DefaultAction,
    /// `enforce` blocks; `monitor` decides and audits but never blocks.
    #[serde(default, skip_serializing_if = "is_default")]
    pub mode: Mode,
    /// What the gateway does when the limiter store cannot be reached (default `deny`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_limiter_error: OnLimiterError,
    /// What the audit log keeps of a call's arguments.
    #[serde(default, skip_serializing_if = "is_default")]
    pub audit: Audit,
    /// Tool names or globs that are hidden: absent from `tools/list` and refused as unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hide: Vec<String>,
    /// Limits charged on every allowed call.
    #[serde(default, skip_serializing_if = "AllTools::is_empty")]
    pub all_tools: AllTools,
    /// Rules for tools that no `tools` key or glob matches, by risk category.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<RiskCategory, CategoryRule>,
    /// Rules keyed by exact tool name or glob (`*`, `?`).
    #[serde(default)]
    pub tools: BTreeMap<String, ToolRule>,
}

impl PolicyDocument {
    /// Reads and validates a document, reporting every problem at once.
    pub fn from_json(value: &Value) -> Result<Self, Vec<PolicyError>> {
        crate::validate::validate(value)
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The language version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Version {
    /// Version `"1"`.
    #[default]
    #[serde(rename = "1")]
    V1,
}

/// What happens to a tool that no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    /// Allow it (still charging `all_tools` limits).
    Allow,
    /// Deny it and keep it out of `tools/list`.
    #[default]
    Deny,
}

/// Whether decisions block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decisions are enforced.
    #[default]
    Enforce,
    /// Decisions are computed and audited, but every call goes through.
    Monitor,
}

/// The gateway's choice when the limiter cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimiterError {
    /// Fail closed: refuse calls that carry charges.
    #[default]
    Deny,
    /// Fail open: let calls through uncharged.
    Allow,
}

/// Audit settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// What is kept of the arguments (default `keys`).
    #[serde(default)]
    pub arguments: AuditArguments,
}

/// What the audit log keeps of a call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditArguments {
    /// Argument names only.
    #[default]
    Keys,
    /// Names and (redacted) values.
    Values,
}

/// Limits charged on every allowed call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllTools {
    /// The limits.
    #[serde(default)]
    pub limits: Vec<Limit>,
}

impl AllTools {
    fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }
}

/// A category's rule: a shorthand action or a full tool rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CategoryRule {
    /// `"allow"`, `"deny"` or `"hide"`.
    Action(CategoryAction),
    /// A rule applied as if written under `tools`.
    Rule(ToolRule),
}

/// The shorthand actions of a category rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CategoryAction {
    /// Allow with no conditions (same as `{}`).
    Allow,
    /// Deny every call.
    Deny,
    /// Hide the tools.
    Hide,
}

/// The rule of one tool (or glob, or category).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    /// Conditions that must all hold, else the call is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<Condition>,
    /// Entries whose conditions all hold deny the call; the first matching entry wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_if: Vec<DenyIf>,
    /// Counters charged when the call is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
    /// The agent's user confirms the call in their MCP client before it goes through
    /// (before `approval`, when the rule has both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<Confirm>,
    /// Human approval before the call goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Check arguments against the tool's `inputSchema` before forwarding.
    #[serde(default, skip_serializing_if = "is_false")]
    pub validate: bool,
}

/// One condition on the call's arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Where the argument is: `args.to`, `args.media.0.url`.
    pub path: ArgPath,
    /// The operator.
    pub op: Op,
    /// The operand; optional only for `exists` (meaning `true`). `null` is a value.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
}

/// Keeps an explicit `null` as `Some(Value::Null)` so `eq null` is expressible.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A `deny_if` entry: ANDed conditions and the message for the agent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyIf {
    /// All must hold; an empty list always holds.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Shown to the agent when this entry denies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_deny: Option<String>,
}

/// A counter charged per call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Counter name (`[A-Za-z0-9_.-]`, up to 128 characters).
    pub counter: String,
    /// Sliding window length.
    pub window: Span,
    /// Most units the counter may hold within the window.
    pub max: u64,
    /// Whose counter it is (default `grant`).
    #[serde(default)]
    pub scope: Scope,
    /// Argument whose numeric value is the charge (default: 1 per call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<ArgPath>,
}

/// Whose counter a limit charges.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One counter per grant (token).
    #[default]
    Grant,
    /// One counter per identity, across that identity's grants.
    Identity,
    /// One counter per upstream server, shared by all its grants.
    Server,
    /// One counter for the whole tenant.
    Tenant,
}

impl Scope {
    /// The scope's name in a policy and in charge keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Grant => "grant",
            Scope::Identity => "identity",
            Scope::Server => "server",
            Scope::Tenant => "tenant",
        }
    }
}

/// Approval settings of a rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Conditions (ANDed) under which approval is needed; absent means always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Vec<Condition>>,
    /// How long a pending approval waits for an approver (default 1 hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
}

/// Confirmation settings of a rule: what the agent's user is asked, and how long they have.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    /// The question, with `{args.…}` placeholders filled from the call's arguments; absent
    /// means a question naming the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long the user has to answer (default 2 minutes, at most 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
}
