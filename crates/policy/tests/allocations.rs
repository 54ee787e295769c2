//! Counts heap allocations of evaluation with an instrumented global allocator.
//!
//! Lookups never allocate: tool names are hashed as `&str`, globs and regexes are compiled at
//! load time, rule ids and messages are shared strings. What a decision allocates is its
//! charges: one vector plus one key string per charge. (The `regex` crate's lazy DFA may grow its
//! cache the first time it meets a new input, so each measured call is made once beforehand.)
//!
//! One test per file: the allocator's counters are process-wide.

use std::alloc::System;

use portcullis_policy::{Call, CompiledPolicy, Decision, Outcome, evaluate, is_visible};
use serde_json::{Value, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The decision for `tool` and the allocations its (second) evaluation made.
fn measure(policy: &CompiledPolicy, tool: &str, arguments: &Value) -> (Decision, usize) {
    let call = Call {
        tool,
        arguments,
        grant: "grant-1",
        identity: "alice",
        server: "srv",
        tenant: "acme",
        category: None,
    };
    drop(evaluate(Some(policy), &call));
    let region = Region::new(GLOBAL);
    let decision = evaluate(Some(policy), &call);
    let change = region.change();
    (decision, change.allocations + change.reallocations)
}

#[test]
fn evaluation_allocates_only_the_charges_it_returns() {
    let policy = CompiledPolicy::from_json(&json!({
        "version": "1",
        "hide": ["delete_*", "admin?"],
        "categories": {"financial": {"approval": {}}},
        "tools": {
            "list_messages": {},
            "send_message": {
                "require": [{"path": "args.To", "op": "regex", "value": "^\\+44"},
                            {"path": "args.media.0.url", "op": "regex", "value": "^https://"},
                            {"path": "args.media[].url", "op": "regex", "value": "^https://"}],
                "deny_if": [{"conditions": [{"path": "args.Body", "op": "contains", "value": "password"}]},
                            {"conditions": [{"path": "args.n", "op": "in", "value": [1, "2", 3]}]},
                            {"conditions": [{"path": "args.n", "op": "regex", "value": "^99$"}]}],
                "approval": {"when": [{"path": "args.amount", "op": "gt", "value": 100}]},
            },
            "send_*": {"deny_if": [{"conditions": [{"path": "args.x", "op": "exists"}]}]},
            "charged": {"limits": [
                {"counter": "sms", "window": "hour", "max": 30, "scope": "identity"},
                {"counter": "spend", "window": "day", "max": 5000, "scope": "tenant", "cost": "args.amount"},
                {"counter": "media", "window": "day", "max": 5000, "scope": "tenant", "cost": "args.media[].size"},
            ]},
        },
    }))
    .unwrap();
    let args = json!({"To": "+447700900000", "Body": "hello", "n": 7, "amount": 5,
                      "media": [{"url": "https://example.com/a.png", "size": 2},
                                {"url": "https://example.com/b.png", "size": 3}]});
    // (tool, outcome, allocations)
    let cases = [
        ("send_message", Outcome::Allow, 0),
        ("list_messages", Outcome::Allow, 0),
        ("send_sms", Outcome::Allow, 0),
        ("delete_repo", Outcome::Hidden, 0),
        ("unknown", Outcome::Deny, 0),
        ("charged", Outcome::Allow, 4),
    ];
    for (tool, outcome, allowed) in cases {
        let (decision, allocations) = measure(&policy, tool, &args);
        assert_eq!(decision.outcome, outcome, "{tool}: {decision:?}");
        assert_eq!(allocations, allowed, "{tool}: {decision:?}");
    }

    let denied = json!({"To": "+15550100"});
    let (decision, allocations) = measure(&policy, "send_message", &denied);
    assert_eq!((decision.outcome, allocations), (Outcome::Deny, 0));

    let region = Region::new(GLOBAL);
    assert!(is_visible(Some(&policy), "send_message", None));
    assert!(!is_visible(Some(&policy), "admin1", None));
    assert_eq!(region.change().allocations, 0);
}
