//! Parses arbitrary bytes as a policy; when one validates, evaluates calls derived from the
//! input against it. Any panic, or a decision that breaks an invariant, is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{Call, CompiledPolicy, Decision, Outcome, RiskCategory, evaluate};
use serde_json::{Map, Value, json};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match text.parse::<CompiledPolicy>() {
        Ok(policy) => policy,
        Err(errors) => {
            assert!(!errors.is_empty(), "a rejected policy must say why");
            for e in &errors {
                assert!(!e.message.contains('\n'), "errors are one line: {e}");
            }
            return;
        }
    };
    let Ok(document) = serde_json::from_str::<Value>(text) else {
        unreachable!("a policy that compiled is valid JSON");
    };

    let mut names = vec!["send_message", "delete_repository", "", "x"];
    for key in ["tools", "categories"] {
        if let Some(Value::Object(map)) = document.get(key) {
            names.extend(map.keys().map(String::as_str));
        }
    }
    if let Some(Value::Array(hidden)) = document.get("hide") {
        names.extend(hidden.iter().filter_map(Value::as_str));
    }
    names.truncate(24);

    let mut arguments = vec![json!({}), Value::Null, document.clone()];
    collect_arguments(&document, &mut arguments);
    arguments.truncate(16);

    let categories = [
        None,
        Some(RiskCategory::Financial),
        Some(RiskCategory::Destructive),
    ];
    for name in &names {
        for args in &arguments {
            for category in categories {
                let call = Call {
                    tool: name,
                    arguments: args,
                    grant: "g",
                    identity: "i",
                    server: "s",
                    tenant: "t",
                    category,
                };
                check(&policy, &call, evaluate(Some(&policy), &call));
            }
        }
    }
});

fn check(policy: &CompiledPolicy, call: &Call<'_>, decision: Decision) {
    assert!(!decision.rule.is_empty());
    let visible = policy.is_visible(call.tool, call.category);
    match decision.outcome {
        Outcome::Hidden => assert!(!visible, "a hidden tool is listed: {decision:?}"),
        Outcome::Allow | Outcome::ApprovalRequired { .. } => {
            assert!(visible, "an allowed tool is not listed: {decision:?}")
        }
        Outcome::Deny => assert!(decision.charges.is_empty()),
    }
    let json = serde_json::to_value(&decision).expect("decisions serialise");
    let back: Decision = serde_json::from_value(json).expect("decisions deserialise");
    assert_eq!(back, decision);
}

/// Arguments that make the policy's own conditions hold: for every `{path, value}` found in the
/// document, an object with `value` at `path`.
fn collect_arguments(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            if let (Some(Value::String(path)), Some(v)) = (map.get("path"), map.get("value")) {
                if let Some(rest) = path.strip_prefix("args.") {
                    let mut arg = v.clone();
                    for segment in rest.rsplit('.') {
                        let mut object = Map::new();
                        object.insert(segment.to_owned(), arg);
                        arg = Value::Object(object);
                    }
                    out.push(arg);
                }
            }
            for v in map.values() {
                collect_arguments(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_arguments(v, out)),
        _ => {}
    }
}
