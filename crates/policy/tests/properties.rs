//! Property tests: evaluation never panics on arbitrary arguments, every policy that validates
//! evaluates any call, and every rejected policy's errors point into the document.

use portcullis_policy::{Call, CompiledPolicy, Decision, Outcome, RiskCategory, evaluate};
use proptest::prelude::*;
use proptest::{collection, option};
use serde_json::{Map, Number, Value, json};

const KEYS: &[&str] = &[
    "a",
    "b",
    "To",
    "Body",
    "amount",
    "media",
    "url",
    "0",
    "1",
    "n",
    "Configuration.Url",
];
/// Tool names for calls and `tools` keys; the empty name (last) is an error as a key.
const TOOLS: &[&str] = &[
    "send_message",
    "list_messages",
    "delete_repo",
    "a",
    "b1",
    "x",
    "send_*",
    "é?",
    "",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        "[a-z0-9+.: ]{0,10}".prop_map(Value::String),
        prop::sample::select(vec![
            "5",
            "-3.5",
            "+447700900000",
            "password",
            "NaN",
            "inf",
            "1e400",
            ""
        ])
        .prop_map(Value::from),
    ]
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn category() -> impl Strategy<Value = Option<RiskCategory>> {
    option::of(prop::sample::select(RiskCategory::ALL.to_vec()))
}

/// Usually one of `good`, rarely one of `bad`: a generated policy has dozens of parts, and
/// most generated policies must validate for the evaluation property to mean something.
fn mostly(good: Vec<&'static str>, bad: Vec<&'static str>) -> impl Strategy<Value = &'static str> {
    prop_oneof![40 => prop::sample::select(good), 1 => prop::sample::select(bad)]
}

/// Mostly well-formed pieces of a policy, with enough mistakes mixed in that both branches of
/// validation are exercised.
fn condition() -> impl Strategy<Value = Value> {
    let path = mostly(
        vec![
            "args",
            "args.a",
            "args.a.b",
            "args.media.0.url",
            "args.n",
            "args.To",
            "args.Configuration.Url",
        ],
        vec!["a", "args..x"],
    );
    let op = mostly(
        vec![
            "eq", "neq", "lt", "lte", "gt", "gte", "in", "not_in", "exists", "regex", "contains",
        ],
        vec!["equals"],
    );
    let value = prop_oneof![
        leaf(),
        collection::vec(leaf(), 0..4).prop_map(Value::Array),
        mostly(
            vec!["^\\+44", ".*", "a|b", "(?i)pass", "[0-9]{3}"],
            vec!["("]
        )
        .prop_map(Value::from),
    ];
    (
        path,
        op,
        option::weighted(0.97, value),
        leaf(),
        collection::vec(leaf(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(path, op, value, number, list, flag)| {
            let mut c = json!({"path": path, "op": op});
            // Usually an operand of the type the operator needs.
            let fitting = match op {
                "lt" | "lte" | "gt" | "gte" if number.is_number() => Some(number),
                "lt" | "lte" | "gt" | "gte" => Some(json!(3)),
                "in" | "not_in" => Some(Value::Array(list)),
                "exists" => Some(json!(flag)),
                "regex" => value.filter(Value::is_string).or(Some(json!("^a"))),
                _ => value,
            };
            if let Some(v) = fitting {
                c["value"] = v;
            }
            c
        })
}

fn limit() -> impl Strategy<Value = Value> {
    (
        mostly(vec!["calls", "sms", "spend", "c1", "c2", "c3"], vec!["x:y"]),
        mostly(vec!["minute", "hour", "day", "30s", "15m"], vec!["0s", "minit"]),
        prop_oneof![20 => (1u64..1000).prop_map(Value::from), 1 => Just(json!(0)), 1 => Just(json!(-1))],
        mostly(vec!["grant", "identity", "server", "tenant"], vec!["user"]),
        option::weighted(0.3, mostly(vec!["args.amount", "args.n"], vec!["amount"])),
    )
        .prop_map(|(counter, window, max, scope, cost)| {
            // A counter has one window per scope, so the window is part of the generated name.
            let counter = format!("{counter}_{window}");
            let mut l = json!({"counter": counter, "window": window, "max": max, "scope": scope});
            if let Some(cost) = cost {
                l["cost"] = json!(cost);
            }
            l
        })
}

fn rule() -> impl Strategy<Value = Value> {
    (
        option::of(collection::vec(condition(), 0..3)),
        option::of(collection::vec(
            (
                collection::vec(condition(), 0..3),
                option::of("[a-z][a-z ]{0,8}"),
            ),
            0..3,
        )),
        option::of(collection::vec(limit(), 0..2)),
        option::of((
            option::of(collection::vec(condition(), 0..2)),
            option::of(mostly(vec!["30m", "1h"], vec!["never"])),
        )),
        option::of(any::<bool>()),
    )
        .prop_map(|(require, deny_if, limits, approval, validate)| {
            let mut r = Map::new();
            if let Some(require) = require {
                r.insert("require".into(), Value::Array(require));
            }
            if let Some(entries) = deny_if {
                let entries = entries
                    .into_iter()
                    .map(|(conditions, on_deny)| {
                        let mut e = json!({"conditions": conditions});
                        if let Some(m) = on_deny {
                            e["on_deny"] = json!(m);
                        }
                        e
                    })
                    .collect();
                r.insert("deny_if".into(), Value::Array(entries));
            }
            if let Some(limits) = limits {
                r.insert("limits".into(), Value::Array(limits));
            }
            if let Some((when, timeout)) = approval {
                let mut a = Map::new();
                if let Some(when) = when {
                    a.insert("when".into(), Value::Array(when));
                }
                if let Some(timeout) = timeout {
                    a.insert("timeout".into(), json!(timeout));
                }
                r.insert("approval".into(), Value::Object(a));
            }
            if let Some(v) = validate {
                r.insert("validate".into(), json!(v));
            }
            Value::Object(r)
        })
}

fn policy_document() -> impl Strategy<Value = Value> {
    (
        prop_oneof![40 => Just(json!("1")), 1 => Just(json!(1))],
        option::of(mostly(vec!["allow", "deny"], vec!["maybe"])),
        option::of(prop::sample::select(vec!["enforce", "monitor"])),
        option::of(collection::vec(
            prop::sample::select(vec!["delete_*", "a", "*", "?1", "x*"]),
            0..3,
        )),
        option::of(collection::vec(limit(), 0..2)),
        collection::vec(
            (
                mostly(
                    vec!["read", "write", "financial", "destructive"],
                    vec!["reads"],
                ),
                prop_oneof![
                    mostly(vec!["allow", "deny", "hide"], vec!["permit"]).prop_map(Value::from),
                    rule(),
                ],
            ),
            0..3,
        ),
        collection::vec(
            (mostly(TOOLS[..TOOLS.len() - 1].to_vec(), vec![""]), rule()),
            0..5,
        ),
    )
        .prop_map(
            |(version, default, mode, hide, all_tools, categories, tools)| {
                let mut d = json!({"version": version});
                if let Some(v) = default {
                    d["default"] = json!(v);
                }
                if let Some(v) = mode {
                    d["mode"] = json!(v);
                }
                if let Some(v) = hide {
                    d["hide"] = json!(v);
                }
                if let Some(limits) = all_tools {
                    d["all_tools"] = json!({"limits": limits});
                }
                d["categories"] = Value::Object(
                    categories
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                );
                d["tools"] =
                    Value::Object(tools.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
                d
            },
        )
}

fn check(
    policy: &CompiledPolicy,
    call: &Call<'_>,
    decision: &Decision,
) -> Result<(), TestCaseError> {
    prop_assert!(!decision.rule.is_empty());
    prop_assert!(!decision.message.is_empty());
    let visible = policy.is_visible(call.tool, call.category);
    match decision.outcome {
        Outcome::Hidden => prop_assert!(!visible),
        Outcome::Allow | Outcome::ApprovalRequired { .. } => prop_assert!(visible),
        Outcome::ConfirmationRequired { .. } => {
            prop_assert!(visible);
            prop_assert!(decision.confirmation.is_some());
        }
        Outcome::Deny => prop_assert!(decision.charges.is_empty()),
    }
    if !matches!(decision.outcome, Outcome::ConfirmationRequired { .. }) {
        prop_assert!(decision.confirmation.is_none());
    }
    let json = serde_json::to_value(decision).expect("decisions serialise");
    let back: Decision = serde_json::from_value(json).expect("decisions deserialise");
    prop_assert_eq!(&back, decision);
    Ok(())
}

fn rich_policy() -> CompiledPolicy {
    CompiledPolicy::from_json(&json!({
        "version": "1",
        "hide": ["delete_*"],
        "all_tools": {"limits": [{"counter": "calls", "window": "minute", "max": 60}]},
        "categories": {"financial": {"approval": {}}},
        "tools": {
            "send_message": {
                "require": [{"path": "args.To", "op": "regex", "value": "^\\+44"}],
                "deny_if": [
                    {"conditions": [{"path": "args.Body", "op": "contains", "value": "password"}]},
                    {"conditions": [{"path": "args.a", "op": "eq", "value": "5"}, {"path": "args.n", "op": "neq", "value": 1}]},
                    {"conditions": [{"path": "args.n", "op": "lt", "value": 0}, {"path": "args.n", "op": "lte", "value": -1}]},
                    {"conditions": [{"path": "args.n", "op": "gt", "value": 10}, {"path": "args.n", "op": "gte", "value": 11}]},
                    {"conditions": [{"path": "args.b", "op": "in", "value": [1, "x", null]}]},
                    {"conditions": [{"path": "args.b", "op": "not_in", "value": [2]}, {"path": "args.media.0.url", "op": "exists"}]},
                    {"conditions": [{"path": "args.Configuration.Url", "op": "regex", "value": "evil"}]},
                ],
                "limits": [{"counter": "spend", "window": "day", "max": 100, "scope": "tenant", "cost": "args.amount"}],
                "approval": {"when": [{"path": "args.amount", "op": "gt", "value": 50}]},
            },
            "*": {"limits": [{"counter": "any", "window": "30s", "max": 5, "cost": "args.n"}]},
        }
    }))
    .expect("the rich policy validates")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn evaluation_never_panics_on_arbitrary_arguments(
        args in arbitrary_json(),
        tool in prop::sample::select(TOOLS),
        category in category(),
    ) {
        let policy = rich_policy();
        let call = Call { tool, arguments: &args, grant: "g", identity: "i", server: "s", tenant: "t", category };
        let decision = evaluate(Some(&policy), &call);
        check(&policy, &call, &decision)?;
    }

    #[test]
    fn any_policy_that_validates_always_evaluates(
        document in policy_document(),
        calls in collection::vec((prop::sample::select(TOOLS), arbitrary_json(), category()), 1..6),
    ) {
        match CompiledPolicy::from_json(&document) {
            Ok(policy) => {
                for (tool, args, category) in &calls {
                    let call = Call { tool, arguments: args, grant: "g", identity: "i", server: "s", tenant: "t", category: *category };
                    let decision = evaluate(Some(&policy), &call);
                    check(&policy, &call, &decision)?;
                }
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for error in &errors {
                    prop_assert!(document.pointer(&error.pointer).is_some(), "{} does not point into {}", error, document);
                    prop_assert!(!error.message.contains('\n'));
                }
            }
        }
    }

    #[test]
    fn validation_never_panics_on_arbitrary_json(document in arbitrary_json()) {
        if let Err(errors) = CompiledPolicy::from_json(&document) {
            prop_assert!(!errors.is_empty());
            for error in &errors {
                prop_assert!(document.pointer(&error.pointer).is_some(), "{}", error);
            }
        }
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = text.parse::<CompiledPolicy>();
    }
}
