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
}
