//! Validation: walks the JSON of a policy and reports every problem at once, each at its pointer.
//!
//! serde stops at the first error and cannot say where a value sits in the document, so the
//! walk is done by hand over `serde_json::Value`; once it finds nothing, serde reads the same
//! value into a [`PolicyDocument`] (which then cannot fail).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::classify::RiskCategory;
use crate::compile::MAX_CONFIRM_TIMEOUT;
use crate::conditions::{ArgPath, Op, REGEX_BUDGET, ValueProblem, check_operand, kind};
use crate::document::{PolicyDocument, Scope};
use crate::duration::Span;
use crate::error::{PolicyError, child, index};
use crate::prompt::Prompt;

const DOCUMENT_KEYS: &[&str] = &[
    "version",
    "default",
    "mode",
    "on_limiter_error",
    "audit",
    "hide",
    "all_tools",
    "categories",
    "tools",
];
const RULE_KEYS: &[&str] = &[
    "require", "deny_if", "limits", "confirm", "approval", "validate",
];
const CONDITION_KEYS: &[&str] = &["path", "op", "value"];
const DENY_IF_KEYS: &[&str] = &["conditions", "on_deny"];
const LIMIT_KEYS: &[&str] = &["counter", "window", "max", "scope", "cost"];
const APPROVAL_KEYS: &[&str] = &["when", "timeout"];
const CONFIRM_KEYS: &[&str] = &["message", "timeout"];
const MAX_COUNTER_LEN: usize = 128;

/// Validates `value` as a policy document and reads it.
pub(crate) fn validate(value: &Value) -> Result<PolicyDocument, Vec<PolicyError>> {
    let mut walk = Walk::default();
    walk.document(value);
    if !walk.errors.is_empty() {
        return Err(walk.errors);
    }
    PolicyDocument::deserialize(value).map_err(|e| vec![PolicyError::new("", e.to_string())])
}

/// A limit as seen by the cross-checks between limits.
struct LimitSeen {
    counter: String,
    scope: Scope,
    window: Duration,
    window_text: String,
    pointer: String,
}

#[derive(Default)]
struct Walk {
    errors: Vec<PolicyError>,
    /// The first window seen for each counter and scope, with where it was seen.
    windows: BTreeMap<(String, Scope), (Duration, String, String)>,
    /// What the regexes seen so far take of the heap once compiled.
    regex_bytes: usize,
}

impl Walk {
    fn error(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        self.errors.push(PolicyError::new(pointer, message));
    }

    fn document(&mut self, value: &Value) {
        let Some(map) = self.object(value, "", "a policy document", DOCUMENT_KEYS) else {
            return;
        };
        match map.get("version") {
            None => self.error("", "missing required key \"version\" (use \"1\")"),
            Some(Value::String(v)) if v == "1" => {}
            Some(other) => self.error(
                "/version",
                format!("unsupported version {other}; expected \"1\""),
            ),
        }
        if let Some(v) = map.get("default") {
            self.choice(v, "/default", "default", &["allow", "deny"]);
        }
        if let Some(v) = map.get("mode") {
            self.choice(v, "/mode", "mode", &["enforce", "monitor"]);
        }
        if let Some(v) = map.get("on_limiter_error") {
            self.choice(
                v,
                "/on_limiter_error",
                "on_limiter_error",
                &["deny", "allow"],
            );
        }
        if let Some(v) = map.get("audit")
            && let Some(audit) = self.object(v, "/audit", "audit", &["arguments"])
            && let Some(arguments) = audit.get("arguments")
        {
            self.choice(
                arguments,
                "/audit/arguments",
                "audit.arguments",
                &["keys", "values"],
            );
        }
        if let Some(v) = map.get("hide")
            && let Some(items) = self.array(v, "/hide", "hide")
        {
            for (i, item) in items.iter().enumerate() {
                let pointer = index("/hide", i);
                match item {
                    Value::String(name) if name.is_empty() => {
                        self.error(pointer, "tool name or glob must not be empty");
                    }
                    Value::String(_) => {}
                    other => self.error(
                        pointer,
                        format!("expected a tool name or glob, found {}", kind(other)),
                    ),
                }
            }
        }
        let mut all_tools = Vec::new();
        if let Some(v) = map.get("all_tools")
            && let Some(section) = self.object(v, "/all_tools", "all_tools", &["limits"])
            && let Some(limits) = section.get("limits")
        {
            all_tools = self.limits(limits, "/all_tools/limits");
            self.no_double_charge(&[], &all_tools);
        }
        if let Some(v) = map.get("categories")
            && let Some(categories) = self.object(v, "/categories", "categories", &[])
        {
            for (name, rule) in categories {
                let pointer = child("/categories", name);
                if RiskCategory::from_name(name).is_none() {
                    self.error(
                        &pointer,
                        format!(
                            "unknown risk category {name:?}; expected read, write, execute, financial, destructive or other"
                        ),
                    );
                }
                match rule {
                    Value::String(_) => {
                        self.choice(
                            rule,
                            &pointer,
                            "category action",
                            &["allow", "deny", "hide"],
                        );
                    }
                    Value::Object(_) => self.rule(rule, &pointer, &all_tools),
                    other => self.error(
                        pointer,
                        format!(
                            "expected \"allow\", \"deny\", \"hide\" or a rule object, found {}",
                            kind(other)
                        ),
                    ),
                }
            }
        }
        if let Some(v) = map.get("tools")
            && let Some(tools) = self.object(v, "/tools", "tools", &[])
        {
            for (name, rule) in tools {
                let pointer = child("/tools", name);
                if name.is_empty() {
                    self.error(&pointer, "tool name or glob must not be empty");
                }
                self.rule(rule, &pointer, &all_tools);
            }
        }
    }

    fn rule(&mut self, value: &Value, pointer: &str, all_tools: &[LimitSeen]) {
        let Some(map) = self.object(value, pointer, "a tool rule", RULE_KEYS) else {
            return;
        };
        if let Some(v) = map.get("require") {
            self.conditions(v, &child(pointer, "require"));
        }
        if let Some(v) = map.get("deny_if") {
            let list_pointer = child(pointer, "deny_if");
            if let Some(entries) = self.array(v, &list_pointer, "deny_if") {
                for (i, entry) in entries.iter().enumerate() {
                    let entry_pointer = index(&list_pointer, i);
                    let Some(entry) =
                        self.object(entry, &entry_pointer, "a deny_if entry", DENY_IF_KEYS)
                    else {
                        continue;
                    };
                    if let Some(conditions) = entry.get("conditions") {
                        self.conditions(conditions, &child(&entry_pointer, "conditions"));
                    }
                    match entry.get("on_deny") {
                        None => {}
                        Some(Value::String(m)) if m.trim().is_empty() => self.error(
                            child(&entry_pointer, "on_deny"),
                            "on_deny must not be empty; omit it for the default message",
                        ),
                        Some(Value::String(_)) => {}
                        Some(other) => self.error(
                            child(&entry_pointer, "on_deny"),
                            format!("expected a message string, found {}", kind(other)),
                        ),
                    }
                }
            }
        }
        if let Some(v) = map.get("limits") {
            let limits = self.limits(v, &child(pointer, "limits"));
            self.no_double_charge(all_tools, &limits);
        }
        if let Some(v) = map.get("confirm") {
            self.confirm(v, &child(pointer, "confirm"));
        }
        if let Some(v) = map.get("approval") {
            let approval_pointer = child(pointer, "approval");
            if let Some(approval) = self.object(v, &approval_pointer, "approval", APPROVAL_KEYS) {
                if let Some(when) = approval.get("when") {
                    self.conditions(when, &child(&approval_pointer, "when"));
                }
                if let Some(timeout) = approval.get("timeout") {
                    self.span(timeout, &child(&approval_pointer, "timeout"), "timeout");
                }
            }
        }
        if let Some(v) = map.get("validate")
            && !v.is_boolean()
        {
            self.error(
                child(pointer, "validate"),
                format!("expected true or false, found {}", kind(v)),
            );
        }
    }

    fn confirm(&mut self, value: &Value, pointer: &str) {
        let Some(confirm) = self.object(value, pointer, "confirm", CONFIRM_KEYS) else {
            return;
        };
        match confirm.get("message") {
            None => {}
            Some(Value::String(text)) => {
                if let Err(message) = Prompt::parse(text) {
                    self.error(child(pointer, "message"), message);
                }
            }
            Some(other) => self.error(
                child(pointer, "message"),
                format!(
                    "expected a message string like \"Send an SMS to {{args.to}}?\", found {}",
                    kind(other)
                ),
            ),
        }
        if let Some(timeout) = confirm.get("timeout") {
            let at = child(pointer, "timeout");
            if let Some((duration, text)) = self.span(timeout, &at, "timeout")
                && duration > MAX_CONFIRM_TIMEOUT
            {
                self.error(
                    at,
                    format!(
                        "timeout {text:?} is too long: the client's call waits for the answer, \
                         so it may be at most {} minutes",
                        MAX_CONFIRM_TIMEOUT.as_secs() / 60
                    ),
                );
            }
        }
    }

    fn conditions(&mut self, value: &Value, pointer: &str) {
        let Some(items) = self.array(value, pointer, "a list of conditions") else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            self.condition(item, &index(pointer, i));
        }
    }

    fn condition(&mut self, value: &Value, pointer: &str) {
        let Some(map) = self.object(value, pointer, "a condition", CONDITION_KEYS) else {
            return;
        };
        match map.get("path") {
            None => self.error(pointer, "missing required key \"path\""),
            Some(Value::String(path)) => {
                if let Err(message) = ArgPath::parse(path) {
                    self.error(child(pointer, "path"), message);
                }
            }
            Some(other) => self.error(
                child(pointer, "path"),
                format!(
                    "expected a path string like \"args.to\", found {}",
                    kind(other)
                ),
            ),
        }
        let op = match map.get("op") {
            None => {
                self.error(pointer, "missing required key \"op\"");
                None
            }
            Some(Value::String(name)) => {
                let op = Op::from_name(name);
                if op.is_none() {
                    let names: Vec<&str> = Op::ALL.iter().map(|op| op.as_str()).collect();
                    self.error(
                        child(pointer, "op"),
                        format!(
                            "unknown op {name:?}{}; expected {}",
                            suggest(name, &names),
                            or_list(&names)
                        ),
                    );
                }
                op
            }
            Some(other) => {
                self.error(
                    child(pointer, "op"),
                    format!("expected an operator name, found {}", kind(other)),
                );
                None
            }
        };
        // Past the budget (reported once), regexes are not compiled: a document full of them
        // must not cost a compilation each.
        if op == Some(Op::Regex) && self.regex_bytes > REGEX_BUDGET {
            match map.get("value") {
                None => self.error(
                    pointer,
                    "missing required key \"value\" (op regex needs one)",
                ),
                Some(Value::String(_)) => {}
                Some(other) => self.error(
                    child(pointer, "value"),
                    format!("op regex needs a pattern string, found {}", kind(other)),
                ),
            }
        } else if let Some(op) = op {
            match check_operand(op, map.get("value")) {
                Ok(bytes) => {
                    let before = self.regex_bytes;
                    self.regex_bytes = before.saturating_add(bytes);
                    if before <= REGEX_BUDGET && self.regex_bytes > REGEX_BUDGET {
                        self.error(
                            child(pointer, "value"),
                            format!(
                                "the policy's regexes take more than {} MiB once compiled, \
                                 counting this one; simplify them or use fewer",
                                REGEX_BUDGET >> 20
                            ),
                        );
                    }
                }
                Err(ValueProblem::Missing) => self.error(
                    pointer,
                    format!("missing required key \"value\" (op {op} needs one)"),
                ),
                Err(ValueProblem::Invalid(message)) => self.error(child(pointer, "value"), message),
            }
        }
    }

    fn limits(&mut self, value: &Value, pointer: &str) -> Vec<LimitSeen> {
        let Some(items) = self.array(value, pointer, "a list of limits") else {
            return Vec::new();
        };
        let mut seen = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(limit) = self.limit(item, &index(pointer, i)) {
                seen.push(limit);
            }
        }
        seen
    }

    fn limit(&mut self, value: &Value, pointer: &str) -> Option<LimitSeen> {
        let map = self.object(value, pointer, "a limit", LIMIT_KEYS)?;
        let counter = match map.get("counter") {
            None => {
                self.error(pointer, "missing required key \"counter\"");
                None
            }
            Some(Value::String(name)) => {
                let valid = !name.is_empty()
                    && name.len() <= MAX_COUNTER_LEN
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                if valid {
                    Some(name.clone())
                } else {
                    self.error(
                        child(pointer, "counter"),
                        format!(
                            "counter name {name:?} must be 1 to {MAX_COUNTER_LEN} characters of A-Z, a-z, 0-9, '_', '-' or '.'"
                        ),
                    );
                    None
                }
            }
            Some(other) => {
                self.error(
                    child(pointer, "counter"),
                    format!("expected a counter name, found {}", kind(other)),
                );
                None
            }
        };
        let window = match map.get("window") {
            None => {
                self.error(pointer, "missing required key \"window\"");
                None
            }
            Some(v) => self.span(v, &child(pointer, "window"), "window"),
        };
        match map.get("max") {
            None => self.error(pointer, "missing required key \"max\""),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|m| m >= 1) => {}
            Some(other) => self.error(
                child(pointer, "max"),
                format!("max must be a whole number of at least 1, found {other}"),
            ),
        }
        let scope = match map.get("scope") {
            None => Some(Scope::default()),
            Some(v) => self
                .choice(
                    v,
                    &child(pointer, "scope"),
                    "scope",
                    &["grant", "identity", "server", "tenant"],
                )
                .map(|name| match name {
                    "identity" => Scope::Identity,
                    "server" => Scope::Server,
                    "tenant" => Scope::Tenant,
                    _ => Scope::Grant,
                }),
        };
        match map.get("cost") {
            None => {}
            Some(Value::String(path)) => {
                if let Err(message) = ArgPath::parse(path) {
                    self.error(child(pointer, "cost"), message);
                }
            }
            Some(other) => self.error(
                child(pointer, "cost"),
                format!(
                    "expected the path of a numeric argument like \"args.amount\", found {}",
                    kind(other)
                ),
            ),
        }
        let (counter, (window, window_text), scope) = (counter?, window?, scope?);
        Some(LimitSeen {
            counter,
            scope,
            window,
            window_text,
            pointer: pointer.to_owned(),
        })
    }

    /// A counter is one Redis key per scope subject, so it has one window per policy, and one
    /// call charges it at most once.
    fn no_double_charge(&mut self, all_tools: &[LimitSeen], limits: &[LimitSeen]) {
        for (i, limit) in limits.iter().enumerate() {
            let key = (limit.counter.clone(), limit.scope);
            match self.windows.get(&key) {
                Some((window, text, first)) if *window != limit.window => {
                    let message = format!(
                        "counter {:?} with scope {} already has window {text:?} at {first}; a counter has one window, so give this limit its own counter name",
                        limit.counter,
                        limit.scope.as_str()
                    );
                    self.error(child(&limit.pointer, "window"), message);
                }
                Some(_) => {}
                None => {
                    self.windows.insert(
                        key,
                        (
                            limit.window,
                            limit.window_text.clone(),
                            limit.pointer.clone(),
                        ),
                    );
                }
            }
            let earlier = all_tools
                .iter()
                .chain(limits.get(..i).unwrap_or_default())
                .find(|other| other.counter == limit.counter && other.scope == limit.scope);
            if let Some(other) = earlier {
                let message = format!(
                    "counter {:?} with scope {} is already charged by {} on the same call; each call charges a counter once",
                    limit.counter,
                    limit.scope.as_str(),
                    other.pointer
                );
                self.error(child(&limit.pointer, "counter"), message);
            }
        }
    }

    fn span(&mut self, value: &Value, pointer: &str, what: &str) -> Option<(Duration, String)> {
        match value {
            Value::String(text) => match Span::parse(text) {
                Ok(span) => Some((span.duration(), text.clone())),
                Err(e) => {
                    self.error(pointer, e.describe(what, text));
                    None
                }
            },
            other => {
                self.error(
                    pointer,
                    format!(
                        "expected a {what} such as \"minute\" or \"90s\", found {}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }

    /// An object whose keys are all in `keys` (any key when `keys` is empty).
    fn object<'v>(
        &mut self,
        value: &'v Value,
        pointer: &str,
        what: &str,
        keys: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = value else {
            self.error(
                pointer,
                format!("{what} must be an object, found {}", kind(value)),
            );
            return None;
        };
        if !keys.is_empty() {
            for key in map.keys().filter(|k| !keys.contains(&k.as_str())) {
                self.error(
                    child(pointer, key),
                    format!(
                        "unknown key {key:?}{}; expected {}",
                        suggest(key, keys),
                        or_list(keys)
                    ),
                );
            }
        }
        Some(map)
    }

    fn array<'v>(&mut self, value: &'v Value, pointer: &str, what: &str) -> Option<&'v [Value]> {
        match value {
            Value::Array(items) => Some(items),
            other => {
                self.error(
                    pointer,
                    format!("{what} must be an array, found {}", kind(other)),
                );
                None
            }
        }
    }

    /// One of a few fixed strings; returns it when valid.
    fn choice<'o>(
        &mut self,
        value: &Value,
        pointer: &str,
        what: &str,
        options: &[&'o str],
    ) -> Option<&'o str> {
        match value {
            Value::String(s) => {
                let found = options.iter().copied().find(|o| *o == s.as_str());
                if found.is_none() {
                    self.error(
                        pointer,
                        format!(
                            "unknown {what} {s:?}{}; expected {}",
                            suggest(s, options),
                            or_list(options)
                        ),
                    );
                }
                found
            }
            other => {
                self.error(
                    pointer,
                    format!("expected {}, found {}", or_list(options), kind(other)),
                );
                None
            }
        }
    }
}

/// `a, b or c`.
fn or_list(options: &[&str]) -> String {
    match options {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// ` (did you mean "x"?)` when one option is a near miss, else nothing.
fn suggest(word: &str, options: &[&str]) -> String {
    options
        .iter()
        .map(|o| (edit_distance(word, o), *o))
        .filter(|(d, o)| *d <= 2 && *d < o.len())
        .min()
        .map(|(_, o)| format!(" (did you mean {o:?}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance over characters; inputs are key names, so quadratic is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = i;
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let above = row.get(j + 1).copied().unwrap_or(usize::MAX);
            let left = row.get(j).copied().unwrap_or(usize::MAX);
            let cost = diagonal + usize::from(ca != *cb);
            diagonal = above;
            if let Some(cell) = row.get_mut(j + 1) {
                *cell = cost.min(above + 1).min(left + 1);
            }
        }
    }
    row.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("limts", "limits"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest("limts", RULE_KEYS), " (did you mean \"limits\"?)");
        assert_eq!(suggest("zzzzzz", RULE_KEYS), "");
        assert_eq!(or_list(&["a", "b", "c"]), "a, b or c");
    }
}
