//! What a policy does with a tool before any call is made: the rule that governs it, found the
//! way the gateway finds it ([`CompiledPolicy::resolve`]), and that rule's effect.
//!
//! A tool is *governed* when a rule written for it decides it (its exact `tools` key or `hide`
//! entry, or its risk category's rule), or when nothing gets through at all (hidden, denied by
//! its category or by `default: deny`, or denied unconditionally). A tool whose calls can pass on
//! the strength of `default: allow` or a wildcard `tools` key alone is *not governed*: nobody
//! decided about that tool, a broad rule let it in.

use std::time::Duration;

use serde::Serialize;

use crate::classify::RiskCategory;
use crate::compile::{CompiledLimit, CompiledPolicy, CompiledRule};
use crate::decision::{DEFAULT_ALLOW, DEFAULT_DENY, HIDDEN};
use crate::document::DefaultAction;
use crate::evaluate::{Resolved, Via};

/// How the governing rule was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// The tool's own `tools` key or `hide` entry.
    Exact,
    /// A wildcard `tools` key or `hide` entry.
    Glob,
    /// The rule of the tool's risk category.
    Category,
    /// No rule: the policy's `default`.
    Default,
}

impl Match {
    /// The name used in the API and on the page.
    pub fn as_str(self) -> &'static str {
        match self {
            Match::Exact => "exact",
            Match::Glob => "glob",
            Match::Category => "category",
            Match::Default => "default",
        }
    }
}

/// What the governing rule does with calls of the tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Left out of `tools/list`; calls answer as an unknown tool.
    Hidden,
    /// Every call is denied.
    Deny,
    /// Calls pass, unless a condition of the rule denies them or a limit is spent.
    Allow,
    /// Calls wait for a person's approval (always, or when the rule's `when` holds).
    Approval,
}

impl Effect {
    /// The name used in the API and on the page.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Hidden => "hidden",
            Effect::Deny => "deny",
            Effect::Allow => "allow",
            Effect::Approval => "approval",
        }
    }
}

/// One limit a call of the tool is charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitSummary {
    /// The limit's id (a JSON pointer into the document).
    pub rule: String,
    /// Counter name.
    pub counter: String,
    /// Most units per window.
    pub max: u64,
    /// The window, e.g. `1m`, `1h`, `90s`.
    pub window: String,
    /// `grant`, `identity`, `server` or `tenant`.
    pub scope: &'static str,
    /// The argument that is the charge, when it is not 1 per call.
    pub cost: Option<String>,
}

/// The rule a policy applies to a tool and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Governing {
    /// How the rule was found.
    #[serde(rename = "match")]
    pub matched: Match,
    /// The rule as decisions name it: a JSON pointer into the document, `(hidden)`,
    /// `(default deny)` or `(default allow)`.
    pub rule: String,
    /// The effect.
    pub effect: Effect,
    /// `require` entries (each one that fails denies the call).
    pub require: usize,
    /// `deny_if` entries (each one that matches denies the call).
    pub deny_if: usize,
    /// Whether the approval is asked only when its `when` holds.
    pub approval_conditional: bool,
    /// Whether the agent's user confirms each call in their client (`confirm`).
    pub confirm: bool,
    /// The limits charged: the rule's, then `all_tools`'.
    pub limits: Vec<LimitSummary>,
    /// Whether arguments are checked against the tool's `inputSchema`.
    pub validate: bool,
    /// Whether the policy only reports (`mode: monitor`) instead of blocking.
    pub monitor: bool,
}

impl Governing {
    /// Whether a rule written for this tool (or its category) decides it, or nothing passes;
    /// see the module's documentation.
    pub fn governed(&self) -> bool {
        match self.matched {
            Match::Exact | Match::Category => true,
            Match::Glob | Match::Default => matches!(self.effect, Effect::Hidden | Effect::Deny),
        }
    }

    /// One line for people: `"allow · 30 per 1m per grant"`, `"approval (when its conditions hold)"`.
    pub fn summary(&self) -> String {
        let mut parts = vec![self.effect.as_str().to_owned()];
        if self.effect == Effect::Approval && self.approval_conditional {
            parts[0].push_str(" (when its conditions hold)");
        }
        if matches!(self.effect, Effect::Allow | Effect::Approval) {
            if self.require > 0 {
                parts.push(format!("{} requirement(s)", self.require));
            }
            if self.deny_if > 0 {
                parts.push(format!("{} deny_if entr(ies)", self.deny_if));
            }
            if self.confirm {
                parts.push("the user confirms each call".to_owned());
            }
            for limit in &self.limits {
                let unit = match &limit.cost {
                    Some(cost) => format!(" (cost {cost})"),
                    None => String::new(),
                };
                parts.push(format!(
                    "{} per {} per {}{unit}",
                    limit.max, limit.window, limit.scope
                ));
            }
            if self.validate {
                parts.push("arguments validated".to_owned());
            }
        }
        if self.monitor {
            parts.push("monitor mode: reported, not enforced".to_owned());
        }
        parts.join(" · ")
    }
}

impl CompiledPolicy {
    /// The rule this policy applies to `tool` (of risk `category`), resolved exactly as the
    /// gateway resolves it for a call, and what that rule does.
    pub fn governing(&self, tool: &str, category: Option<RiskCategory>) -> Governing {
        let monitor = self.mode == crate::document::Mode::Monitor;
        let blocked = |matched: Match, rule: &str, effect: Effect| Governing {
            matched,
            rule: rule.to_owned(),
            effect,
            require: 0,
            deny_if: 0,
            approval_conditional: false,
            confirm: false,
            limits: Vec::new(),
            validate: false,
            monitor,
        };
        match self.resolve(tool, category) {
            Resolved::Hidden(via) => blocked(matched(via), HIDDEN, Effect::Hidden),
            Resolved::CategoryDeny { rule, .. } => blocked(Match::Category, rule, Effect::Deny),
            Resolved::Unmatched => match self.default {
                DefaultAction::Deny => blocked(Match::Default, DEFAULT_DENY, Effect::Deny),
                DefaultAction::Allow => Governing {
                    limits: self.all_tools.iter().map(limit_summary).collect(),
                    ..blocked(Match::Default, DEFAULT_ALLOW, Effect::Allow)
                },
            },
            Resolved::Rule(rule, via) => self.rule_effect(rule, matched(via), monitor),
        }
    }

    fn rule_effect(&self, rule: &CompiledRule, matched: Match, monitor: bool) -> Governing {
        // A `deny_if` entry without conditions always matches: nothing gets through.
        let always_denied = rule.deny_if.iter().any(|e| e.conditions.is_empty());
        let effect = if always_denied {
            Effect::Deny
        } else if rule.approval.is_some() {
            Effect::Approval
        } else {
            Effect::Allow
        };
        Governing {
            matched,
            rule: rule.id.to_string(),
            effect,
            require: rule.require.len(),
            deny_if: rule.deny_if.len(),
            approval_conditional: rule.approval.as_ref().is_some_and(|a| a.when.is_some()),
            confirm: rule.confirm.is_some(),
            limits: rule
                .limits
                .iter()
                .chain(self.all_tools.iter())
                .map(limit_summary)
                .collect(),
            validate: rule.validate,
            monitor,
        }
    }
}

fn matched(via: Via) -> Match {
    match via {
        Via::Exact => Match::Exact,
        Via::Glob => Match::Glob,
        Via::Category => Match::Category,
    }
}

fn limit_summary(limit: &CompiledLimit) -> LimitSummary {
    LimitSummary {
        rule: limit.rule.to_string(),
        counter: limit.counter.to_string(),
        max: limit.max,
        window: window(limit.window),
        scope: limit.scope.as_str(),
        cost: limit.cost.as_ref().map(|p| p.to_string()),
    }
}

/// A window in its largest whole unit: `1d`, `1h`, `15m`, `90s`, `1500ms`.
fn window(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(document: serde_json::Value) -> CompiledPolicy {
        CompiledPolicy::from_json(&document).unwrap()
    }

    #[test]
    fn finds_the_rule_the_gateway_would() {
        let p = policy(json!({
            "version": "1", "default": "allow",
            "hide": ["delete_*", "purge"],
            "all_tools": {"limits": [{"counter": "calls", "window": "minute", "max": 60}]},
            "categories": {"financial": {"approval": {}}, "execute": "deny"},
            "tools": {
                "send": {"limits": [{"counter": "sms", "window": "1h", "max": 30, "scope": "identity"}],
                         "approval": {"when": [{"path": "args.n", "op": "gt", "value": 5}]}},
                "get_*": {},
                "block": {"deny_if": [{"conditions": []}]}
            }
        }));
        let g = |tool: &str, category| p.governing(tool, Some(category));
        let send = g("send", RiskCategory::Financial);
        assert_eq!(
            (send.matched, send.effect),
            (Match::Exact, Effect::Approval)
        );
        assert!(send.approval_conditional && send.governed());
        assert_eq!(send.rule, "/tools/send");
        assert_eq!(
            send.summary(),
            "approval (when its conditions hold) · 30 per 1h per identity · 60 per 1m per grant"
        );
        let hidden = g("delete_all", RiskCategory::Destructive);
        assert_eq!(
            (hidden.matched, hidden.effect),
            (Match::Glob, Effect::Hidden)
        );
        assert!(hidden.governed(), "nothing gets through");
        assert_eq!(g("purge", RiskCategory::Destructive).matched, Match::Exact);
        let glob = g("get_user", RiskCategory::Read);
        assert_eq!((glob.matched, glob.effect), (Match::Glob, Effect::Allow));
        assert!(!glob.governed());
        let pay = g("pay", RiskCategory::Financial);
        assert_eq!(
            (pay.matched, pay.effect, pay.rule.as_str()),
            (Match::Category, Effect::Approval, "/categories/financial")
        );
        let run = g("run", RiskCategory::Execute);
        assert_eq!((run.matched, run.effect), (Match::Category, Effect::Deny));
        let other = g("frob", RiskCategory::Other);
        assert_eq!(
            (other.matched, other.effect, other.rule.as_str()),
            (Match::Default, Effect::Allow, "(default allow)")
        );
        assert!(!other.governed());
        assert_eq!(g("block", RiskCategory::Write).effect, Effect::Deny);
        let strict = policy(json!({"version": "1", "default": "deny", "mode": "monitor"}));
        let denied = strict.governing("frob", None);
        assert_eq!(
            (denied.effect, denied.rule.as_str()),
            (Effect::Deny, "(default deny)")
        );
        assert!(denied.governed() && denied.monitor);
        assert_eq!(window(Duration::from_millis(1500)), "1500ms");
        assert_eq!(window(Duration::from_secs(90)), "90s");
    }
}
