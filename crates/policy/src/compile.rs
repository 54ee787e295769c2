//! Compilation: turns a validated document into the structure evaluation walks.
//!
//! Everything a decision needs is prepared here, once per policy load: exact names in a hash
//! map, globs sorted most specific first, regexes compiled, numbers parsed, and every rule id and
//! message built as a shared string, so evaluating a call only looks things up and clones `Arc`s.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;

use crate::classify::RiskCategory;
use crate::conditions::{ArgPath, Condition, ValueProblem};
use crate::decision::SharedStr;
use crate::document::{
    self, AuditArguments, CategoryAction, CategoryRule, DefaultAction, Mode, OnLimiterError,
    PolicyDocument, Scope, ToolRule,
};
use crate::error::{PolicyError, child, index};
use crate::glob::Glob;
use crate::prompt::Prompt;

/// How long an approval waits when a rule does not say.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(3_600);
/// How long the user has to confirm a call when a rule does not say.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a rule may give the user to confirm: the client's request waits that long.
pub const MAX_CONFIRM_TIMEOUT: Duration = Duration::from_secs(900);

/// A validated policy, ready to evaluate calls. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub(crate) default: DefaultAction,
    pub(crate) mode: Mode,
    pub(crate) on_limiter_error: OnLimiterError,
    pub(crate) audit_arguments: AuditArguments,
    pub(crate) hidden_names: HashSet<Box<str>>,
    pub(crate) hidden_globs: Vec<Glob>,
    /// Every `tools` key, wildcards or not: a tool literally named `a*` still matches exactly.
    pub(crate) exact: HashMap<Box<str>, usize>,
    /// The wildcard keys of `tools`, most specific first.
    pub(crate) globs: Vec<(Glob, usize)>,
    pub(crate) categories: [CategoryEntry; RiskCategory::ALL.len()],
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) all_tools: Box<[CompiledLimit]>,
}

/// What a category rule does to tools that no `tools` key matches.
#[derive(Debug, Clone)]
pub(crate) enum CategoryEntry {
    None,
    Hide,
    Deny { rule: SharedStr, message: SharedStr },
    Rule(usize),
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) id: SharedStr,
    pub(crate) require: Box<[Requirement]>,
    pub(crate) deny_if: Box<[DenyEntry]>,
    pub(crate) limits: Box<[CompiledLimit]>,
    pub(crate) confirm: Option<CompiledConfirm>,
    pub(crate) approval: Option<CompiledApproval>,
    pub(crate) validate: bool,
}

#[derive(Debug)]
pub(crate) struct CompiledConfirm {
    pub(crate) prompt: Prompt,
    pub(crate) timeout: Duration,
    pub(crate) rule: SharedStr,
    pub(crate) message: SharedStr,
}

#[derive(Debug)]
pub(crate) struct Requirement {
    pub(crate) condition: Condition,
    pub(crate) rule: SharedStr,
    pub(crate) message: SharedStr,
}

#[derive(Debug)]
pub(crate) struct DenyEntry {
    pub(crate) conditions: Box<[Condition]>,
    pub(crate) rule: SharedStr,
    pub(crate) message: SharedStr,
}

#[derive(Debug)]
pub(crate) struct CompiledLimit {
    pub(crate) counter: Box<str>,
    pub(crate) scope: Scope,
    pub(crate) window: Duration,
    pub(crate) max: u64,
    pub(crate) cost: Option<ArgPath>,
    pub(crate) rule: SharedStr,
    pub(crate) cost_message: SharedStr,
}

#[derive(Debug)]
pub(crate) struct CompiledApproval {
    pub(crate) when: Option<Box<[Condition]>>,
    pub(crate) timeout: Duration,
    pub(crate) rule: SharedStr,
    pub(crate) message: SharedStr,
}

impl CompiledPolicy {
    /// Validates and compiles a policy document, reporting every problem at once.
    pub fn from_json(value: &Value) -> Result<Self, Vec<PolicyError>> {
        let document = PolicyDocument::from_json(value)?;
        Self::compile(&document)
    }

    /// Compiles a document built in code (e.g. by [`crate::recommend`]); it is validated first.
    pub fn from_document(document: &PolicyDocument) -> Result<Self, Vec<PolicyError>> {
        let value = serde_json::to_value(document)
            .map_err(|e| vec![PolicyError::new("", e.to_string())])?;
        Self::from_json(&value)
    }

    /// Whether the policy blocks (`enforce`) or only reports (`monitor`).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// What the gateway does when the limiter store is unreachable.
    pub fn on_limiter_error(&self) -> OnLimiterError {
        self.on_limiter_error
    }

    /// What the audit log may keep of arguments.
    pub fn audit_arguments(&self) -> AuditArguments {
        self.audit_arguments
    }

    /// What happens to tools no rule matches.
    pub fn default_action(&self) -> DefaultAction {
        self.default
    }

    fn compile(doc: &PolicyDocument) -> Result<Self, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(doc.tools.len() + doc.categories.len());

        let mut hidden_names = HashSet::new();
        let mut hidden_globs = Vec::new();
        for name in &doc.hide {
            if Glob::is_pattern(name) {
                hidden_globs.push(Glob::new(name));
            }
            hidden_names.insert(Box::from(name.as_str()));
        }

        let all_tools = compile_limits(&doc.all_tools.limits, "/all_tools/limits");

        let mut exact = HashMap::with_capacity(doc.tools.len());
        let mut globs = Vec::new();
        for (name, rule) in &doc.tools {
            let id = rules.len();
            rules.push(compile_rule(rule, &child("/tools", name), &mut errors));
            exact.insert(Box::from(name.as_str()), id);
            if Glob::is_pattern(name) {
                globs.push((Glob::new(name), id));
            }
        }
        globs.sort_by(|(a, _), (b, _)| a.more_specific(b));

        let mut categories: [CategoryEntry; RiskCategory::ALL.len()] =
            std::array::from_fn(|_| CategoryEntry::None);
        for (category, rule) in &doc.categories {
            let pointer = child("/categories", category.as_str());
            let entry = match rule {
                CategoryRule::Action(CategoryAction::Hide) => CategoryEntry::Hide,
                CategoryRule::Action(CategoryAction::Deny) => CategoryEntry::Deny {
                    message: format!("tools in the {category} risk category are denied by policy")
                        .into(),
                    rule: pointer.into(),
                },
                CategoryRule::Action(CategoryAction::Allow) => {
                    rules.push(compile_rule(&ToolRule::default(), &pointer, &mut errors));
                    CategoryEntry::Rule(rules.len() - 1)
                }
                CategoryRule::Rule(rule) => {
                    rules.push(compile_rule(rule, &pointer, &mut errors));
                    CategoryEntry::Rule(rules.len() - 1)
                }
            };
            if let Some(slot) = categories.get_mut(category.index()) {
                *slot = entry;
            }
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            default: doc.default,
            mode: doc.mode,
            on_limiter_error: doc.on_limiter_error,
            audit_arguments: doc.audit.arguments,
            hidden_names,
            hidden_globs,
            exact,
            globs,
            categories,
            rules,
            all_tools,
        })
    }
}

impl FromStr for CompiledPolicy {
    type Err = Vec<PolicyError>;

    /// Parses JSON text; malformed JSON is one error carrying its line and column.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let value = crate::json_text::parse(text).map_err(|e| vec![e])?;
        Self::from_json(&value)
    }
}

fn compile_rule(rule: &ToolRule, pointer: &str, errors: &mut Vec<PolicyError>) -> CompiledRule {
    let require_pointer = child(pointer, "require");
    let require = rule
        .require
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let at = index(&require_pointer, i);
            let condition = compile_condition(c, &at, errors)?;
            Some(Requirement {
                condition,
                message: format!("required condition not met: {}", describe(c)).into(),
                rule: at.into(),
            })
        })
        .collect();

    let deny_pointer = child(pointer, "deny_if");
    let deny_if = rule
        .deny_if
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let at = index(&deny_pointer, i);
            let conditions =
                compile_conditions(&entry.conditions, &child(&at, "conditions"), errors);
            let message = match &entry.on_deny {
                Some(message) => message.clone(),
                None => format!("denied by policy rule {at}"),
            };
            DenyEntry {
                conditions,
                rule: at.into(),
                message: message.into(),
            }
        })
        .collect();

    let limits = compile_limits(&rule.limits, &child(pointer, "limits"));

    let confirm = rule.confirm.as_ref().and_then(|confirm| {
        let at = child(pointer, "confirm");
        let prompt = match confirm.message.as_deref().map(Prompt::parse) {
            None => Prompt::default(),
            Some(Ok(prompt)) => prompt,
            Some(Err(message)) => {
                errors.push(PolicyError::new(child(&at, "message"), message));
                return None;
            }
        };
        Some(CompiledConfirm {
            prompt,
            timeout: confirm
                .timeout
                .as_ref()
                .map_or(DEFAULT_CONFIRM_TIMEOUT, |t| t.duration()),
            message: format!("this call needs the user's confirmation (rule {at})").into(),
            rule: at.into(),
        })
    });

    let approval = rule.approval.as_ref().map(|approval| {
        let at = child(pointer, "approval");
        let when = approval
            .when
            .as_ref()
            .map(|when| compile_conditions(when, &child(&at, "when"), errors));
        CompiledApproval {
            when,
            timeout: approval
                .timeout
                .as_ref()
                .map_or(DEFAULT_APPROVAL_TIMEOUT, |t| t.duration()),
            message: format!("this call needs a human's approval (rule {at})").into(),
            rule: at.into(),
        }
    });

    CompiledRule {
        id: pointer.into(),
        require,
        deny_if,
        limits,
        confirm,
        approval,
        validate: rule.validate,
    }
}

fn compile_limits(limits: &[document::Limit], pointer: &str) -> Box<[CompiledLimit]> {
    limits
        .iter()
        .enumerate()
        .map(|(i, limit)| {
            let at = index(pointer, i);
            let cost_message = match &limit.cost {
                Some(path) => format!(
                    "the cost argument {path} must be a non-negative number, so the call can be charged to counter {:?} (rule {at})",
                    limit.counter
                ),
                None => String::new(),
            };
            CompiledLimit {
                counter: limit.counter.as_str().into(),
                scope: limit.scope,
                window: limit.window.duration(),
                max: limit.max,
                cost: limit.cost.clone(),
                rule: at.into(),
                cost_message: cost_message.into(),
            }
        })
        .collect()
}

fn compile_conditions(
    conditions: &[document::Condition],
    pointer: &str,
    errors: &mut Vec<PolicyError>,
) -> Box<[Condition]> {
    conditions
        .iter()
        .enumerate()
        .filter_map(|(i, c)| compile_condition(c, &index(pointer, i), errors))
        .collect()
}

/// Validation has already checked the operand; a failure here is reported, never ignored.
fn compile_condition(
    c: &document::Condition,
    pointer: &str,
    errors: &mut Vec<PolicyError>,
) -> Option<Condition> {
    match Condition::compile(&c.path, c.op, c.value.as_ref()) {
        Ok(condition) => Some(condition),
        Err(ValueProblem::Missing) => {
            errors.push(PolicyError::new(pointer, "missing required key \"value\""));
            None
        }
        Err(ValueProblem::Invalid(message)) => {
            errors.push(PolicyError::new(child(pointer, "value"), message));
            None
        }
    }
}

/// `args.To regex "^\\+44"`, for messages.
fn describe(c: &document::Condition) -> String {
    match &c.value {
        Some(value) => format!("{} {} {value}", c.path, c.op),
        None => format!("{} {} true", c.path, c.op),
    }
}
