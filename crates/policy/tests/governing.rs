//! `CompiledPolicy::governing` on the real Twilio catalogue (300 captured tools): the rule it
//! names is the rule `evaluate` decides by, and "not governed" is exactly the set of tools whose
//! calls pass on `default: allow` or a wildcard `tools` key, with no exact key, `hide` entry or
//! category rule of their own.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::collections::BTreeSet;

use portcullis_policy::{
    Call, CompiledPolicy, Effect, Match, Outcome, ToolDefinition, add_recommended_rule, classify,
    evaluate, recommend,
};
use serde_json::{Value, json};

fn catalogue() -> Vec<ToolDefinition> {
    let mut tools = Vec::new();
    for file in ["twilio_api_v2010.json", "twilio_conversations_v1.json"] {
        let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
        let value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let defs: Vec<ToolDefinition> = serde_json::from_value(value["tools"].clone()).unwrap();
        tools.extend(defs);
    }
    tools
}

fn decide(policy: &CompiledPolicy, tool: &ToolDefinition) -> (Outcome, String) {
    let args = json!({});
    let call = Call {
        tool: &tool.name,
        arguments: &args,
        grant: "g",
        identity: "i",
        server: "s",
        tenant: "t",
        category: Some(classify(tool).category),
    };
    let decision = evaluate(Some(policy), &call);
    (decision.outcome, decision.rule.to_string())
}

#[test]
fn not_governed_is_what_default_allow_and_globs_let_through() {
    let tools = catalogue();
    assert_eq!(tools.len(), 300);
    let document = json!({
        "version": "1",
        "default": "allow",
        "hide": ["TwilioApiV2010--Delete*", "TwilioConversationsV1--DeleteService"],
        "categories": { "financial": { "approval": {} }, "execute": "deny" },
        "tools": {
            "TwilioApiV2010--List*": { "limits": [{ "counter": "lists", "window": "minute", "max": 60 }] },
            "TwilioConversationsV1--FetchConversation": {},
            "TwilioConversationsV1--Update*": { "deny_if": [{ "conditions": [] }] },
            "TwilioApiV2010--CreateMessage": { "approval": {} }
        }
    });
    let policy = CompiledPolicy::from_json(&document).unwrap();
    let globs = ["TwilioApiV2010--List*", "TwilioConversationsV1--Update*"];
    let mut by_engine = BTreeSet::new();
    let mut by_governing = BTreeSet::new();
    for tool in &tools {
        let category = classify(tool).category;
        let governing = policy.governing(&tool.name, Some(category));
        let (outcome, rule) = decide(&policy, tool);
        // The rule `governing` names is the one `evaluate` decided by (or its part that did).
        let own_rule = rule == governing.rule || rule.starts_with(&format!("{}/", governing.rule));
        assert!(own_rule, "{}: {rule} vs {}", tool.name, governing.rule);
        let passes = !matches!(outcome, Outcome::Deny | Outcome::Hidden);
        let through_glob = globs
            .iter()
            .any(|g| rule == format!("/tools/{g}") || rule.starts_with(&format!("/tools/{g}/")));
        if passes && (rule == "(default allow)" || through_glob) {
            by_engine.insert(tool.name.clone());
        }
        if !governing.governed() {
            by_governing.insert(tool.name.clone());
        }
    }
    assert_eq!(by_governing, by_engine);
    // Every way in and out is exercised.
    assert!(
        by_engine
            .iter()
            .any(|n| n.starts_with("TwilioApiV2010--List"))
    );
    assert!(
        by_engine.len() > 50 && by_engine.len() < 250,
        "{}",
        by_engine.len()
    );
    let effect = |name: &str| {
        let tool = tools.iter().find(|t| t.name == name).unwrap();
        let g = policy.governing(name, Some(classify(tool).category));
        (g.matched, g.effect)
    };
    assert_eq!(
        effect("TwilioApiV2010--DeleteIncomingPhoneNumber"),
        (Match::Glob, Effect::Hidden)
    );
    assert_eq!(
        effect("TwilioApiV2010--CreateIncomingPhoneNumber"),
        (Match::Category, Effect::Approval)
    );
    assert_eq!(
        effect("TwilioConversationsV1--FetchConversation"),
        (Match::Exact, Effect::Allow)
    );
    assert_eq!(
        effect("TwilioConversationsV1--UpdateConversation"),
        (Match::Glob, Effect::Deny)
    );
}

#[test]
fn the_recommendation_governs_every_tool_and_each_rule_adds_alone() {
    let tools = catalogue();
    let recommended = recommend(&tools);
    let policy = CompiledPolicy::from_json(&recommended).unwrap();
    assert!(tools.iter().all(|t| {
        policy
            .governing(&t.name, Some(classify(t).category))
            .governed()
    }));
    // Adding each tool's rule, one by one, to an empty default-deny policy rebuilds the
    // recommendation exactly.
    let mut built = json!({ "version": "1", "default": "deny" });
    for tool in &tools {
        if let Some(next) = add_recommended_rule(&built, tool) {
            built = next;
        }
    }
    let mut hide: Vec<Value> = built["hide"].as_array().cloned().unwrap_or_default();
    hide.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    built["hide"] = Value::Array(hide);
    assert_eq!(built["hide"], recommended["hide"]);
    assert_eq!(built["tools"], recommended["tools"]);
    assert!(CompiledPolicy::from_json(&built).is_ok());
}
