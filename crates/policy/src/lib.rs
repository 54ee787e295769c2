//! Portcullis policy language: parse, validate, evaluate, classify.
//!
//! Pure logic, no IO and no async. The gateway compiles a policy once
//! ([`CompiledPolicy::from_json`]) and calls [`evaluate`] per `tools/call` and [`is_visible`] per
//! tool of a `tools/list`; the control plane validates documents (every error at once, each with
//! a JSON pointer), classifies discovered tools ([`classify`]) and proposes policies
//! ([`recommend`]). The language is described in `docs/policy.md`.

mod classify;
mod compile;
mod conditions;
mod decision;
mod document;
mod duration;
mod error;
mod evaluate;
mod glob;
mod governing;
pub mod json_text;
mod prompt;
mod recommend;
mod validate;

pub use classify::{
    Risk, RiskCategory, RiskLevel, ToolAnnotations, ToolDefinition, classify,
    words as identifier_words,
};
pub use compile::{
    CompiledPolicy, DEFAULT_APPROVAL_TIMEOUT, DEFAULT_CONFIRM_TIMEOUT, MAX_CONFIRM_TIMEOUT,
};
pub use conditions::{Ambiguous, ArgPath, Op, holds_rounded_integer};
pub use decision::{
    ApprovalStep, Charge, Confirmation, DEFAULT_ALLOW, DEFAULT_DENY, Decision, HIDDEN, NO_POLICY,
    Outcome, SharedStr,
};
pub use document::{
    AllTools, Approval, Audit, AuditArguments, CategoryAction, CategoryRule, Condition, Confirm,
    DefaultAction, DenyIf, Limit, Mode, OnLimiterError, PolicyDocument, Scope, ToolRule, Version,
};
pub use duration::{Span, SpanError};
pub use error::PolicyError;
pub use evaluate::{Call, evaluate, is_visible};
pub use glob::Glob;
pub use governing::{Effect, Governing, LimitSummary, Match};
pub use prompt::{Prompt, inert};
pub use recommend::{add_recommended_rule, recommend, recommend_document, recommend_rule};
