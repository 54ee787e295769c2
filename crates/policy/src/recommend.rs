//! Recommended policies (DESIGN §5): a starting point a team reviews, never applied unseen.
//!
//! Per category: read → allowed (`{}`); write → 30 calls a minute per grant; execute → 10 a
//! minute per grant; financial → human approval; destructive → hidden; other → not listed, so
//! `default: deny` refuses it until someone decides.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::classify::{RiskCategory, ToolDefinition, classify};
use crate::document::{Approval, Limit, PolicyDocument, Scope, ToolRule, Version};
use crate::duration::Span;
use crate::glob::Glob;

const WRITE_PER_MINUTE: u64 = 30;
const EXECUTE_PER_MINUTE: u64 = 10;
const MAX_COUNTER_LEN: usize = 120;

/// A recommended policy document (as JSON) for these tools; it always validates.
pub fn recommend(tools: &[ToolDefinition]) -> Value {
    let document = recommend_document(tools);
    serde_json::to_value(&document)
        .unwrap_or_else(|_| serde_json::json!({"version": "1", "default": "deny"}))
}

/// The recommended policy as a typed document (serialises with keys in language order).
pub fn recommend_document(tools: &[ToolDefinition]) -> PolicyDocument {
    let mut document = PolicyDocument {
        version: Version::V1,
        default: crate::document::DefaultAction::Deny,
        mode: Default::default(),
        on_limiter_error: Default::default(),
        audit: Default::default(),
        hide: Vec::new(),
        all_tools: Default::default(),
        categories: Default::default(),
        tools: Default::default(),
    };
    let mut hidden = BTreeSet::new();
    let mut counters = BTreeSet::new();
    for tool in tools {
        let name = tool.name.as_str();
        if name.is_empty() {
            continue;
        }
        let category = classify(tool).category;
        if category == RiskCategory::Destructive {
            // As a hide entry a wildcard only hides more, which is the safe direction.
            hidden.insert(name.to_owned());
            continue;
        }
        // As a `tools` key a wildcard would grant its rule to other tools too: leave such a tool
        // to `default: deny`.
        if Glob::is_pattern(name) {
            continue;
        }
        let rule = match category {
            RiskCategory::Read => ToolRule::default(),
            RiskCategory::Write => rate_limited(name, WRITE_PER_MINUTE, &mut counters),
            RiskCategory::Execute => rate_limited(name, EXECUTE_PER_MINUTE, &mut counters),
            RiskCategory::Financial => ToolRule {
                approval: Some(Approval::default()),
                ..ToolRule::default()
            },
            RiskCategory::Destructive | RiskCategory::Other => continue,
        };
        document.tools.insert(name.to_owned(), rule);
    }
    document.hide = hidden.into_iter().collect();
    document
}

/// The recommended rule of one tool as a `policy.json` fragment: `{"hide": [name]}` for a
/// destructive tool, `{"tools": {name: rule}}` otherwise; `None` when nothing is recommended (a
/// tool of category `other`, or a name that is a wildcard pattern), which `default: deny` refuses.
pub fn recommend_rule(tool: &ToolDefinition) -> Option<Value> {
    let document = recommend_document(std::slice::from_ref(tool));
    if !document.hide.is_empty() {
        return Some(serde_json::json!({ "hide": [tool.name] }));
    }
    let rule = serde_json::to_value(document.tools.get(&tool.name)?).ok()?;
    Some(serde_json::json!({ "tools": { tool.name.clone(): rule } }))
}

/// `document` with the recommended rule of `tool` added, or `None` when nothing is recommended
/// (see [`recommend_rule`]) or the document is not a JSON object. A hidden tool joins `hide`; a
/// rule replaces the tool's own `tools` key and takes the tool out of `hide` (where it would win
/// over the rule), with its counter renamed if another rule of the document already counts on
/// that name (sharing a counter would make the two tools spend one budget).
pub fn add_recommended_rule(document: &Value, tool: &ToolDefinition) -> Option<Value> {
    let fragment = recommend_rule(tool)?;
    let mut out = document.clone();
    let object = out.as_object_mut()?;
    let name = tool.name.as_str();
    if fragment.get("hide").is_some() {
        let hide = object
            .entry("hide")
            .or_insert_with(|| Value::Array(Vec::new()));
        let list = hide.as_array_mut()?;
        if !list.iter().any(|v| v.as_str() == Some(name)) {
            list.push(Value::String(name.to_owned()));
        }
        return Some(out);
    }
    let mut rule = fragment.get("tools")?.get(name)?.clone();
    let mut taken = BTreeSet::new();
    collect_counters(object, name, &mut taken);
    if let Some(limits) = rule.get_mut("limits").and_then(Value::as_array_mut) {
        for limit in limits {
            let Some(counter) = limit.get("counter").and_then(Value::as_str) else {
                continue;
            };
            let unique = counter_name(counter, &mut taken);
            limit["counter"] = Value::String(unique);
        }
    }
    if let Some(hide) = object.get_mut("hide").and_then(Value::as_array_mut) {
        hide.retain(|v| v.as_str() != Some(name));
        if hide.is_empty() {
            object.remove("hide");
        }
    }
    let tools = object
        .entry("tools")
        .or_insert_with(|| Value::Object(Default::default()));
    tools.as_object_mut()?.insert(name.to_owned(), rule);
    Some(out)
}

/// Every counter name the document's rules use, but those of `tools.{except}`.
fn collect_counters(
    document: &serde_json::Map<String, Value>,
    except: &str,
    out: &mut BTreeSet<String>,
) {
    let mut rules: Vec<&Value> = Vec::new();
    if let Some(all) = document.get("all_tools") {
        rules.push(all);
    }
    if let Some(categories) = document.get("categories").and_then(Value::as_object) {
        rules.extend(categories.values());
    }
    if let Some(tools) = document.get("tools").and_then(Value::as_object) {
        rules.extend(
            tools
                .iter()
                .filter(|(k, _)| k.as_str() != except)
                .map(|(_, v)| v),
        );
    }
    for rule in rules {
        for limit in rule
            .get("limits")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(counter) = limit.get("counter").and_then(Value::as_str) {
                out.insert(counter.to_owned());
            }
        }
    }
}

fn rate_limited(name: &str, max: u64, counters: &mut BTreeSet<String>) -> ToolRule {
    ToolRule {
        limits: vec![Limit {
            counter: counter_name(name, counters),
            window: Span::minute(),
            max,
            scope: Scope::Grant,
            cost: None,
        }],
        ..ToolRule::default()
    }
}

/// A per-tool counter name within the counter alphabet, unique within the document.
fn counter_name(tool: &str, taken: &mut BTreeSet<String>) -> String {
    let mut base: String = tool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_COUNTER_LEN)
        .collect();
    if base.is_empty() {
        base.push_str("tool");
    }
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    taken.insert(name.clone());
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::CompiledPolicy;
    use serde_json::json;

    #[test]
    fn recommends_per_category() {
        let tools: Vec<ToolDefinition> = serde_json::from_value(json!([
            {"name": "list_messages"},
            {"name": "update_contact"},
            {"name": "run_job"},
            {"name": "create_payment"},
            {"name": "delete_repository"},
            {"name": "frobnicate"},
            {"name": "get_*"},
            {"name": "update contact"},
            {"name": "update_contact!"},
        ]))
        .unwrap();
        let policy = recommend(&tools);
        assert_eq!(
            policy,
            json!({
                "version": "1",
                "default": "deny",
                "hide": ["delete_repository"],
                "tools": {
                    "list_messages": {},
                    "update_contact": {"limits": [{"counter": "update_contact", "window": "minute", "max": 30, "scope": "grant"}]},
                    "update contact": {"limits": [{"counter": "update_contact-2", "window": "minute", "max": 30, "scope": "grant"}]},
                    "update_contact!": {"limits": [{"counter": "update_contact_", "window": "minute", "max": 30, "scope": "grant"}]},
                    "run_job": {"limits": [{"counter": "run_job", "window": "minute", "max": 10, "scope": "grant"}]},
                    "create_payment": {"approval": {}},
                }
            })
        );
        assert!(CompiledPolicy::from_json(&policy).is_ok());
    }

    #[test]
    fn adds_one_tools_recommended_rule_to_a_document() {
        let tool = |name: &str| ToolDefinition {
            name: name.to_owned(),
            ..ToolDefinition::default()
        };
        let document = json!({
            "version": "1", "default": "allow",
            "hide": ["update_contact", "x"],
            "tools": {"other": {"limits": [{"counter": "update_contact", "window": "hour", "max": 5}]}}
        });
        assert_eq!(
            recommend_rule(&tool("update_contact")),
            Some(json!({"tools": {"update_contact": {"limits": [
                {"counter": "update_contact", "window": "minute", "max": 30, "scope": "grant"}]}}}))
        );
        let added = add_recommended_rule(&document, &tool("update_contact")).unwrap();
        assert_eq!(
            added["hide"],
            json!(["x"]),
            "a hide entry would win over the rule"
        );
        assert_eq!(
            added["tools"]["update_contact"]["limits"][0]["counter"], "update_contact-2",
            "another rule counts on that name"
        );
        assert!(CompiledPolicy::from_json(&added).is_ok());
        let hidden = add_recommended_rule(&document, &tool("delete_everything")).unwrap();
        assert_eq!(
            hidden["hide"],
            json!(["update_contact", "x", "delete_everything"])
        );
        let again = add_recommended_rule(&hidden, &tool("delete_everything")).unwrap();
        assert_eq!(again, hidden, "adding twice changes nothing");
        assert_eq!(recommend_rule(&tool("frobnicate")), None, "category other");
        assert_eq!(add_recommended_rule(&json!([]), &tool("list_things")), None);
        let bare = add_recommended_rule(
            &json!({"version": "1", "default": "deny"}),
            &tool("list_things"),
        );
        assert_eq!(bare.unwrap()["tools"], json!({"list_things": {}}));
    }
}
