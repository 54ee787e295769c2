//! Evaluation of one call, in the order of DESIGN §4:
//!
//! 1. no policy → deny `(no policy)`;
//! 2. hidden by `hide` (exact or glob; `hide` wins over `tools`) → hidden `(hidden)`;
//! 3. the rule: the exact `tools` key, else the most specific matching glob, else the rule of
//!    the call's risk category (`"hide"` → hidden, `"deny"` → deny);
//! 4. no rule: `default: deny` → deny `(default deny)`; `default: allow` → allow `(default allow)`;
//! 5. `require` — the first entry that does not hold denies;
//! 6. `deny_if` — the first entry whose conditions all hold denies;
//! 7. charges — a limit whose `cost` argument is missing or not a non-negative number denies;
//! 8. `confirm` → confirmation required (the user confirms in their client; then the
//!    `approval` of step 9 follows when it asks, else the call is allowed);
//! 9. `approval` — when all of `when` holds (or there is no `when`) → approval required;
//! 10. allow, charging the rule's limits then the `all_tools` limits.
//!
//! Lookups never allocate: names are hashed as `&str`, globs are precompiled, rule ids and
//! messages are shared strings. The only allocations are a decision's charges (one vector, one
//! key string per charge).

use serde_json::Value;

use crate::classify::RiskCategory;
use crate::compile::{
    CategoryEntry, CompiledApproval, CompiledLimit, CompiledPolicy, CompiledRule,
};
use crate::conditions::{ArgPath, Condition, Reading, cost_at};
use crate::decision::{
    ApprovalStep, Charge, Confirmation, DEFAULT_ALLOW, DEFAULT_DENY, Decision, HIDDEN, Outcome,
    SharedStr,
};
use crate::document::{DefaultAction, Mode, Scope};

const HIDDEN_MESSAGE: SharedStr = SharedStr::from_static("this tool is hidden by policy");
const DEFAULT_DENY_MESSAGE: SharedStr =
    SharedStr::from_static("no rule of the policy allows this tool (default deny)");
const DEFAULT_ALLOW_MESSAGE: SharedStr =
    SharedStr::from_static("no rule matches this tool; allowed by default");
const ALLOWED_MESSAGE: SharedStr = SharedStr::from_static("allowed by policy");

/// One `tools/call` as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The tool name as the client sent it.
    pub tool: &'a str,
    /// The call's `arguments` (any JSON; paths resolve against it).
    pub arguments: &'a Value,
    /// The grant's id: the subject of `grant`-scoped counters.
    pub grant: &'a str,
    /// The grant's identity: the subject of `identity`-scoped counters.
    pub identity: &'a str,
    /// The upstream server's id: the subject of `server`-scoped counters.
    pub server: &'a str,
    /// The tenant's id: the subject of `tenant`-scoped counters.
    pub tenant: &'a str,
    /// The tool's risk category from discovery, for `categories` rules; `None` if unknown.
    pub category: Option<RiskCategory>,
}

/// Decides one call. Without a policy every call is denied with rule `(no policy)`.
pub fn evaluate(policy: Option<&CompiledPolicy>, call: &Call<'_>) -> Decision {
    match policy {
        Some(policy) => policy.evaluate(call),
        None => Decision::no_policy(),
    }
}

/// Whether a tool belongs in a filtered `tools/list`: hidden tools and tools denied by default
/// are left out (as is everything when there is no policy); tools with a rule stay visible even
/// if some calls will be denied, so the agent learns why.
pub fn is_visible(
    policy: Option<&CompiledPolicy>,
    tool: &str,
    category: Option<RiskCategory>,
) -> bool {
    policy.is_some_and(|policy| policy.is_visible(tool, category))
}

/// The rule a tool name resolves to.
pub(crate) enum Resolved<'p> {
    Hidden(Via),
    Rule(&'p CompiledRule, Via),
    CategoryDeny {
        rule: &'p SharedStr,
        message: &'p SharedStr,
    },
    Unmatched,
}

/// Which part of the policy a resolution came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// The tool's own name (a `tools` key or a `hide` entry).
    Exact,
    /// A wildcard `tools` key or `hide` entry.
    Glob,
    /// The rule of the tool's risk category.
    Category,
}

impl CompiledPolicy {
    /// Decides one call against this policy.
    pub fn evaluate(&self, call: &Call<'_>) -> Decision {
        match self.resolve(call.tool, call.category) {
            Resolved::Hidden(_) => self.decision(
                Outcome::Hidden,
                &SharedStr::from_static(HIDDEN),
                &HIDDEN_MESSAGE,
            ),
            Resolved::CategoryDeny { rule, message } => self.decision(Outcome::Deny, rule, message),
            Resolved::Unmatched => match self.default {
                DefaultAction::Deny => self.decision(
                    Outcome::Deny,
                    &SharedStr::from_static(DEFAULT_DENY),
                    &DEFAULT_DENY_MESSAGE,
                ),
                DefaultAction::Allow => match self.charges(&[], call) {
                    Ok(charges) => Decision {
                        charges,
                        ..self.decision(
                            Outcome::Allow,
                            &SharedStr::from_static(DEFAULT_ALLOW),
                            &DEFAULT_ALLOW_MESSAGE,
                        )
                    },
                    Err(unreadable) => self.unreadable(unreadable),
                },
            },
            Resolved::Rule(rule, _) => self.apply(rule, call),
        }
    }

    /// Whether `tool` belongs in a filtered `tools/list`; see [`is_visible`].
    pub fn is_visible(&self, tool: &str, category: Option<RiskCategory>) -> bool {
        match self.resolve(tool, category) {
            Resolved::Hidden(_) => false,
            Resolved::Rule(..) | Resolved::CategoryDeny { .. } => true,
            Resolved::Unmatched => self.default == DefaultAction::Allow,
        }
    }

    /// How `tool` is hidden, if it is: by its own name or by a wildcard entry of `hide`.
    fn hidden_by(&self, tool: &str) -> Option<Via> {
        if self.hidden_names.contains(tool) {
            Some(Via::Exact)
        } else if self.hidden_globs.iter().any(|g| g.matches(tool)) {
            Some(Via::Glob)
        } else {
            None
        }
    }

    /// The rule `tool` resolves to: the one place that decides it, for calls, for `tools/list`
    /// and for the dashboard's account of what a policy does with a tool.
    pub(crate) fn resolve(&self, tool: &str, category: Option<RiskCategory>) -> Resolved<'_> {
        if let Some(via) = self.hidden_by(tool) {
            return Resolved::Hidden(via);
        }
        let by_name = match self.exact.get(tool) {
            Some(i) => Some((*i, Via::Exact)),
            None => self
                .globs
                .iter()
                .find(|(glob, _)| glob.matches(tool))
                .map(|(_, rule)| (*rule, Via::Glob)),
        };
        if let Some((rule, via)) = by_name.and_then(|(i, via)| Some((self.rules.get(i)?, via))) {
            return Resolved::Rule(rule, via);
        }
        match category.and_then(|c| self.categories.get(c.index())) {
            Some(CategoryEntry::Hide) => Resolved::Hidden(Via::Category),
            Some(CategoryEntry::Deny { rule, message }) => Resolved::CategoryDeny { rule, message },
            Some(CategoryEntry::Rule(i)) => {
                self.rules.get(*i).map_or(Resolved::Unmatched, |rule| {
                    Resolved::Rule(rule, Via::Category)
                })
            }
            Some(CategoryEntry::None) | None => Resolved::Unmatched,
        }
    }

    fn apply(&self, rule: &CompiledRule, call: &Call<'_>) -> Decision {
        self.apply_unambiguous(rule, call)
            .unwrap_or_else(|(rule, path)| self.ambiguous(rule, path))
    }

    /// The denial of a call whose arguments are ambiguous at `path`.
    fn ambiguous(&self, rule: &SharedStr, path: &ArgPath) -> Decision {
        let message = format!(
            "the arguments can be read more than one way at {path} (members whose names differ \
             only in case, or that a dotted name could also mean), so the policy cannot tell \
             what the tool would run with"
        );
        self.decision(Outcome::Deny, rule, &message.into())
    }

    /// The denial of a call whose limit cannot read its cost.
    fn unreadable(&self, unreadable: Unreadable<'_>) -> Decision {
        match unreadable {
            Unreadable::Cost(limit) => {
                self.decision(Outcome::Deny, &limit.rule, &limit.cost_message)
            }
            Unreadable::Ambiguous(limit, path) => self.ambiguous(&limit.rule, path),
        }
    }

    /// [`Self::apply`], or the rule and the path where the arguments are ambiguous: the call
    /// is then denied whatever the rule says, as no reading can be trusted to be the upstream's.
    fn apply_unambiguous<'p>(
        &'p self,
        rule: &'p CompiledRule,
        call: &Call<'_>,
    ) -> Result<Decision, (&'p SharedStr, &'p ArgPath)> {
        let args = call.arguments;
        for required in &rule.require {
            let condition = &required.condition;
            if !condition
                .holds(args, Reading::Every)
                .map_err(|_| (&required.rule, condition.path()))?
            {
                return Ok(self.decision(Outcome::Deny, &required.rule, &required.message));
            }
        }
        for entry in &rule.deny_if {
            if all_hold(&entry.conditions, args).map_err(|path| (&entry.rule, path))? {
                return Ok(self.decision(Outcome::Deny, &entry.rule, &entry.message));
            }
        }
        let charges = match self.charges(&rule.limits, call) {
            Ok(charges) => charges,
            Err(unreadable) => return Ok(self.unreadable(unreadable)),
        };
        let asks = match &rule.approval {
            Some(approval) => match &approval.when {
                None => true,
                Some(when) => all_hold(when, args).map_err(|path| (&approval.rule, path))?,
            },
            None => false,
        };
        let approval = rule.approval.as_ref().filter(|_| asks);
        if let Some(confirm) = &rule.confirm {
            if let Some(path) = confirm.prompt.ambiguous_in(args) {
                return Err((&confirm.rule, path));
            }
            let step = |approval: &CompiledApproval| ApprovalStep {
                timeout: approval.timeout,
                rule: approval.rule.clone(),
                message: approval.message.clone(),
            };
            return Ok(Decision {
                charges,
                validate: rule.validate,
                confirmation: Some(Confirmation {
                    prompt: confirm.prompt.clone(),
                    then: approval.map(step),
                    fallback: rule.approval.as_ref().map(step),
                }),
                ..self.decision(
                    Outcome::ConfirmationRequired {
                        timeout: confirm.timeout,
                    },
                    &confirm.rule,
                    &confirm.message,
                )
            });
        }
        if let Some(approval) = approval {
            return Ok(Decision {
                charges,
                validate: rule.validate,
                ..self.decision(
                    Outcome::ApprovalRequired {
                        timeout: approval.timeout,
                    },
                    &approval.rule,
                    &approval.message,
                )
            });
        }
        Ok(Decision {
            charges,
            validate: rule.validate,
            ..self.decision(Outcome::Allow, &rule.id, &ALLOWED_MESSAGE)
        })
    }

    /// The charges of `limits` then `all_tools`, or the limit whose cost cannot be read.
    fn charges<'p>(
        &'p self,
        limits: &'p [CompiledLimit],
        call: &Call<'_>,
    ) -> Result<Vec<Charge>, Unreadable<'p>> {
        let mut charges = Vec::with_capacity(limits.len() + self.all_tools.len());
        for limit in limits.iter().chain(self.all_tools.iter()) {
            let cost = match &limit.cost {
                None => 1,
                Some(path) => cost_at(path, call.arguments)
                    .map_err(|_| Unreadable::Ambiguous(limit, path))?
                    .ok_or(Unreadable::Cost(limit))?,
            };
            charges.push(Charge {
                key: charge_key(limit, call, self.mode == Mode::Monitor),
                window: limit.window,
                max: limit.max,
                cost,
                rule: limit.rule.clone(),
            });
        }
        Ok(charges)
    }

    fn decision(&self, outcome: Outcome, rule: &SharedStr, message: &SharedStr) -> Decision {
        Decision {
            outcome,
            rule: rule.clone(),
            message: message.clone(),
            charges: Vec::new(),
            monitor: self.mode == Mode::Monitor,
            validate: false,
            confirmation: None,
        }
    }
}

/// A limit whose cost argument cannot be used.
enum Unreadable<'p> {
    /// Missing, or not a non-negative number.
    Cost(&'p CompiledLimit),
    /// Readable more than one way.
    Ambiguous(&'p CompiledLimit, &'p ArgPath),
}

/// Whether every condition of a `deny_if` entry or an approval's `when` holds (the first that
/// does not ends the check; through `[]`, a condition holds when it does for any element), or
/// the path of the first that reads ambiguous arguments.
fn all_hold<'c>(conditions: &'c [Condition], args: &Value) -> Result<bool, &'c ArgPath> {
    for condition in conditions {
        if !condition
            .holds(args, Reading::Any)
            .map_err(|_| condition.path())?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `<scope>:<subject>:<counter>` in one exactly-sized allocation. Counter names cannot contain
/// `:`, so the key splits unambiguously from the right whatever the subject holds.
/// `<scope>:<subject>:<counter>`; in `mode: monitor`, `monitor:` first, so trying a policy
/// counts on counters of its own and never spends what enforced policies share.
fn charge_key(limit: &CompiledLimit, call: &Call<'_>, monitor: bool) -> String {
    const MONITOR: &str = "monitor:";
    let subject = match limit.scope {
        Scope::Grant => call.grant,
        Scope::Identity => call.identity,
        Scope::Server => call.server,
        Scope::Tenant => call.tenant,
    };
    let scope = limit.scope.as_str();
    let mut key = String::with_capacity(
        MONITOR.len() + scope.len() + subject.len() + limit.counter.len() + 2,
    );
    if monitor {
        key.push_str(MONITOR);
    }
    key.push_str(scope);
    key.push(':');
    key.push_str(subject);
    key.push(':');
    key.push_str(&limit.counter);
    key
}
