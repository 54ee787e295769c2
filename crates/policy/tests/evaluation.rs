//! Table-driven evaluation: the order of DESIGN §4, every precedence rule, charges and flags.

use std::time::Duration;

use portcullis_policy::{
    AuditArguments, Call, Charge, CompiledPolicy, Decision, Mode, OnLimiterError, Outcome,
    RiskCategory, evaluate, is_visible,
};
use serde_json::{Value, json};

fn policy(document: Value) -> CompiledPolicy {
    CompiledPolicy::from_json(&document).unwrap_or_else(|e| panic!("{e:?}"))
}

fn call<'a>(tool: &'a str, arguments: &'a Value, category: Option<RiskCategory>) -> Call<'a> {
    Call {
        tool,
        arguments,
        grant: "g1",
        identity: "alice",
        server: "srv",
        tenant: "acme",
        category,
    }
}

fn decide(policy: &CompiledPolicy, tool: &str, arguments: Value) -> Decision {
    evaluate(Some(policy), &call(tool, &arguments, None))
}

fn decide_in(policy: &CompiledPolicy, tool: &str, category: RiskCategory) -> Decision {
    evaluate(Some(policy), &call(tool, &json!({}), Some(category)))
}

const APPROVAL_30M: Outcome = Outcome::ApprovalRequired {
    timeout: Duration::from_secs(1800),
};
const APPROVAL_1H: Outcome = Outcome::ApprovalRequired {
    timeout: Duration::from_secs(3600),
};

/// (tool, arguments, category, outcome, rule, message fragment)
type Case = (
    &'static str,
    Value,
    Option<RiskCategory>,
    Outcome,
    &'static str,
    &'static str,
);

fn design_example() -> CompiledPolicy {
    policy(json!({
        "version": "1",
        "default": "deny",
        "mode": "enforce",
        "on_limiter_error": "deny",
        "audit": { "arguments": "keys" },
        "hide": ["delete_*"],
        "all_tools": { "limits": [{ "counter": "calls", "window": "minute", "max": 60, "scope": "grant" }] },
        "categories": { "financial": { "approval": {} }, "destructive": "hide" },
        "tools": {
            "list_messages": {},
            "delete_everything": {},
            "send_message": {
                "require": [{ "path": "args.To", "op": "regex", "value": "^\\+44" }],
                "deny_if": [{ "conditions": [{ "path": "args.Body", "op": "contains", "value": "password" }],
                              "on_deny": "Message bodies may not carry credentials." }],
                "limits": [{ "counter": "sms", "window": "hour", "max": 30, "scope": "identity" },
                           { "counter": "spend", "window": "day", "max": 5000, "scope": "tenant", "cost": "args.amount" }],
                "approval": { "when": [{ "path": "args.amount", "op": "gt", "value": 100 }], "timeout": "30m" },
                "validate": true
            }
        }
    }))
}

#[test]
fn the_design_example_decides_in_order() {
    let p = design_example();
    let cases: Vec<Case> = vec![
        (
            "delete_repo",
            json!({}),
            None,
            Outcome::Hidden,
            "(hidden)",
            "hidden",
        ),
        // `hide` wins over an exact `tools` key.
        (
            "delete_everything",
            json!({}),
            None,
            Outcome::Hidden,
            "(hidden)",
            "hidden",
        ),
        (
            "unknown_tool",
            json!({}),
            None,
            Outcome::Deny,
            "(default deny)",
            "default deny",
        ),
        (
            "list_messages",
            json!({}),
            None,
            Outcome::Allow,
            "/tools/list_messages",
            "allowed",
        ),
        (
            "send_message",
            json!({"Body": "hi", "amount": 5}),
            None,
            Outcome::Deny,
            "/tools/send_message/require/0",
            "required condition not met: args.To regex \"^\\\\+44\"",
        ),
        (
            "send_message",
            json!({"To": "+15550100", "amount": 5}),
            None,
            Outcome::Deny,
            "/tools/send_message/require/0",
            "required condition",
        ),
        (
            "send_message",
            json!({"To": "+447700900000", "Body": "my password", "amount": 5}),
            None,
            Outcome::Deny,
            "/tools/send_message/deny_if/0",
            "Message bodies may not carry credentials.",
        ),
        (
            "send_message",
            json!({"To": "+447700900000", "Body": "hi", "amount": 500}),
            None,
            APPROVAL_30M,
            "/tools/send_message/approval",
            "approval",
        ),
        (
            "send_message",
            json!({"To": "+447700900000", "Body": "hi", "amount": "500"}),
            None,
            APPROVAL_30M,
            "/tools/send_message/approval",
            "approval",
        ),
        (
            "send_message",
            json!({"To": "+447700900000", "Body": "hi", "amount": 100}),
            None,
            Outcome::Allow,
            "/tools/send_message",
            "allowed",
        ),
        (
            "send_message",
            json!({"To": "+447700900000", "Body": "hi"}),
            None,
            Outcome::Deny,
            "/tools/send_message/limits/1",
            "cost argument args.amount must be a non-negative number",
        ),
        (
            "send_message",
            json!({"To": "+447700900000", "Body": "hi", "amount": -5}),
            None,
            Outcome::Deny,
            "/tools/send_message/limits/1",
            "counter \"spend\"",
        ),
        (
            "send_message",
            json!({"To": "+447700900000", "Body": "hi", "amount": "lots"}),
            None,
            Outcome::Deny,
            "/tools/send_message/limits/1",
            "cost",
        ),
        // Categories apply only to tools no name rule matches.
        (
            "buy_credits",
            json!({}),
            Some(RiskCategory::Financial),
            APPROVAL_1H,
            "/categories/financial/approval",
            "approval",
        ),
        (
            "list_messages",
            json!({}),
            Some(RiskCategory::Financial),
            Outcome::Allow,
            "/tools/list_messages",
            "allowed",
        ),
        (
            "drop_table",
            json!({}),
            Some(RiskCategory::Destructive),
            Outcome::Hidden,
            "(hidden)",
            "hidden",
        ),
        (
            "read_thing",
            json!({}),
            Some(RiskCategory::Read),
            Outcome::Deny,
            "(default deny)",
            "default deny",
        ),
    ];
    for (tool, args, category, outcome, rule, fragment) in cases {
        let d = evaluate(Some(&p), &call(tool, &args, category));
        assert_eq!(d.outcome, outcome, "{tool} {args}: {d:?}");
        assert_eq!(d.rule, rule, "{tool} {args}: {d:?}");
        assert!(d.message.contains(fragment), "{tool} {args}: {d:?}");
        assert!(!d.monitor);
        if matches!(d.outcome, Outcome::Deny | Outcome::Hidden) {
            assert!(d.charges.is_empty(), "{d:?}");
            assert!(!d.validate);
        }
    }
}

#[test]
fn allowed_calls_carry_scoped_charges_tool_limits_first() {
    let p = design_example();
    let d = decide(
        &p,
        "send_message",
        json!({"To": "+447700900000", "Body": "hi", "amount": 12.2}),
    );
    assert_eq!(d.outcome, Outcome::Allow);
    assert!(d.validate);
    let hour = Duration::from_secs(3600);
    assert_eq!(
        d.charges,
        vec![
            Charge {
                key: "identity:alice:sms".into(),
                window: hour,
                max: 30,
                cost: 1,
                rule: "/tools/send_message/limits/0".into()
            },
            Charge {
                key: "tenant:acme:spend".into(),
                window: hour * 24,
                max: 5000,
                cost: 13,
                rule: "/tools/send_message/limits/1".into()
            },
            Charge {
                key: "grant:g1:calls".into(),
                window: Duration::from_secs(60),
                max: 60,
                cost: 1,
                rule: "/all_tools/limits/0".into()
            },
        ]
    );
    // An approval carries the charges the call will make once approved.
    let approval = decide(
        &p,
        "send_message",
        json!({"To": "+447700900000", "amount": 101}),
    );
    assert_eq!(approval.outcome, APPROVAL_30M);
    assert_eq!(approval.charges.len(), 3);
    assert!(approval.validate);
    // A plain rule still pays the all_tools limit.
    let list = decide(&p, "list_messages", json!({}));
    assert_eq!(list.charges.len(), 1);
    assert_eq!(list.charges[0].key, "grant:g1:calls");
    assert!(!list.validate);
}

#[test]
fn every_scope_resolves_its_subject() {
    let p = policy(json!({"version": "1", "tools": {"t": {"limits": [
        {"counter": "a", "window": "30s", "max": 1},
        {"counter": "b", "window": "15m", "max": 2, "scope": "grant"},
        {"counter": "c", "window": "2h", "max": 3, "scope": "identity"},
        {"counter": "d", "window": "1d", "max": 4, "scope": "server"},
        {"counter": "e", "window": "90s", "max": 5, "scope": "tenant"},
    ]}}}));
    let d = decide(&p, "t", json!({}));
    let keys: Vec<(&str, u64, u64)> = d
        .charges
        .iter()
        .map(|c| (c.key.as_str(), c.window.as_secs(), c.max))
        .collect();
    assert_eq!(
        keys,
        [
            ("grant:g1:a", 30, 1),
            ("grant:g1:b", 900, 2),
            ("identity:alice:c", 7200, 3),
            ("server:srv:d", 86_400, 4),
            ("tenant:acme:e", 90, 5),
        ]
    );
}

#[test]
fn exact_names_beat_globs_and_the_most_specific_glob_wins() {
    let p = policy(json!({"version": "1", "tools": {
        "*": {},
        "send_*": {},
        "send_?ms": {},
        "send_message": {},
        "a*": {},
        "*a": {},
        "x?": {},
        "x*": {},
        "lit*eral": {},
    }}));
    let cases = [
        ("send_message", "/tools/send_message"),
        ("send_sms", "/tools/send_?ms"),
        ("send_mms", "/tools/send_?ms"),
        ("send_email", "/tools/send_*"),
        ("list", "/tools/*"),
        // Same literals, no `?`, same stars: lexical order of the pattern ("*a" < "a*").
        ("aa", "/tools/*a"),
        ("ab", "/tools/a*"),
        // A `?` is more specific than a `*`.
        ("xy", "/tools/x?"),
        ("xyz", "/tools/x*"),
        ("literal", "/tools/lit*eral"),
        // A tool literally named like a glob matches its own key exactly.
        ("send_*", "/tools/send_*"),
    ];
    for (tool, rule) in cases {
        let d = decide(&p, tool, json!({}));
        assert_eq!(d.outcome, Outcome::Allow, "{tool}");
        assert_eq!(d.rule, rule, "{tool}");
    }
}

#[test]
fn hide_globs_and_star() {
    let p = policy(
        json!({"version": "1", "default": "allow", "hide": ["delete_*", "?dmin", "secret"],
                          "tools": {"delete_*": {}, "admin": {}}}),
    );
    for tool in ["delete_x", "delete_", "admin", "xdmin", "secret"] {
        assert_eq!(
            decide(&p, tool, json!({})).outcome,
            Outcome::Hidden,
            "{tool}"
        );
        assert!(!is_visible(Some(&p), tool, None), "{tool}");
    }
    for tool in ["undelete_x", "secrets", "dmin"] {
        assert_eq!(
            decide(&p, tool, json!({})).outcome,
            Outcome::Allow,
            "{tool}"
        );
    }
    // "*" in hide hides every tool, whatever `tools` says.
    let all =
        policy(json!({"version": "1", "default": "allow", "hide": ["*"], "tools": {"a": {}}}));
    assert_eq!(decide(&all, "a", json!({})).outcome, Outcome::Hidden);
    assert_eq!(decide(&all, "", json!({})).outcome, Outcome::Hidden);
}

#[test]
fn default_allow_charges_all_tools_and_reports_its_rule() {
    let p = policy(json!({"version": "1", "default": "allow",
        "all_tools": {"limits": [{"counter": "calls", "window": "minute", "max": 5, "scope": "server"},
                                 {"counter": "spend", "window": "day", "max": 5, "cost": "args.n"}]}}));
    let d = decide(&p, "anything", json!({"n": 2}));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Allow, "(default allow)")
    );
    assert_eq!(
        d.charges
            .iter()
            .map(|c| (c.key.as_str(), c.cost))
            .collect::<Vec<_>>(),
        [("server:srv:calls", 1), ("grant:g1:spend", 2)]
    );
    let bad = decide(&p, "anything", json!({}));
    assert_eq!(
        (bad.outcome, bad.rule.as_str()),
        (Outcome::Deny, "/all_tools/limits/1")
    );
}

#[test]
fn require_checks_every_entry_and_names_the_first_that_fails() {
    let p = policy(json!({"version": "1", "tools": {"t": {
        "require": [
            {"path": "args.a", "op": "exists"},
            {"path": "args.b", "op": "in", "value": ["x", "y"]},
            {"path": "args.c", "op": "lte", "value": 10},
        ],
        "deny_if": [{"conditions": [{"path": "args.a", "op": "eq", "value": "bad"}]}],
    }}}));
    let cases = [
        (json!({}), "/tools/t/require/0"),
        (json!({"a": 1}), "/tools/t/require/1"),
        (json!({"a": 1, "b": "z", "c": 1}), "/tools/t/require/1"),
        (json!({"a": 1, "b": "x"}), "/tools/t/require/2"),
        (json!({"a": 1, "b": "x", "c": 11}), "/tools/t/require/2"),
        (json!({"a": 1, "b": "x", "c": "abc"}), "/tools/t/require/2"),
        // `require` is checked before `deny_if`.
        (json!({"a": "bad", "b": "q", "c": 1}), "/tools/t/require/1"),
        (json!({"a": "bad", "b": "y", "c": 1}), "/tools/t/deny_if/0"),
        (json!({"a": "ok", "b": "y", "c": 10}), "/tools/t"),
    ];
    for (args, rule) in cases {
        let d = decide(&p, "t", args.clone());
        assert_eq!(d.rule, rule, "{args}: {d:?}");
    }
}

#[test]
fn deny_if_ands_conditions_ors_entries_and_the_first_match_wins() {
    let p = policy(json!({"version": "1", "tools": {"t": {"deny_if": [
        {"conditions": [{"path": "args.a", "op": "eq", "value": 1}, {"path": "args.b", "op": "eq", "value": 2}], "on_deny": "a and b"},
        {"conditions": [{"path": "args.c", "op": "exists"}]},
        {"conditions": [{"path": "args.a", "op": "eq", "value": 1}], "on_deny": "a alone"},
    ]}, "u": {"deny_if": [{"conditions": []}]}, "v": {"deny_if": [{"on_deny": "never"}]}}}));
    let cases = [
        (
            json!({"a": 1, "b": 2, "c": 0}),
            "/tools/t/deny_if/0",
            "a and b",
        ),
        (
            json!({"a": 1, "c": 0}),
            "/tools/t/deny_if/1",
            "denied by policy rule /tools/t/deny_if/1",
        ),
        (json!({"a": "1"}), "/tools/t/deny_if/2", "a alone"),
        (json!({"a": 2, "b": 2}), "/tools/t", "allowed by policy"),
    ];
    for (args, rule, message) in cases {
        let d = decide(&p, "t", args.clone());
        assert_eq!(
            (d.rule.as_str(), d.message.as_str()),
            (rule, message),
            "{args}"
        );
    }
    // Empty (or absent) conditions always match.
    assert_eq!(
        decide(&p, "u", json!({"anything": 1})).rule,
        "/tools/u/deny_if/0"
    );
    assert_eq!(decide(&p, "v", json!(null)).message, "never");
}

#[test]
fn approval_when_and_timeouts() {
    let p = policy(json!({"version": "1", "tools": {
        "always": {"approval": {}},
        "empty_when": {"approval": {"when": []}},
        "big": {"approval": {"when": [{"path": "args.n", "op": "gt", "value": 10}, {"path": "args.cur", "op": "eq", "value": "usd"}], "timeout": "2h"}},
        "guarded": {"deny_if": [{"conditions": [{"path": "args.n", "op": "gt", "value": 1000}]}], "approval": {}},
    }}));
    assert_eq!(decide(&p, "always", json!({})).outcome, APPROVAL_1H);
    assert_eq!(decide(&p, "empty_when", json!({})).outcome, APPROVAL_1H);
    let two_hours = Outcome::ApprovalRequired {
        timeout: Duration::from_secs(7200),
    };
    assert_eq!(
        decide(&p, "big", json!({"n": 11, "cur": "usd"})).outcome,
        two_hours
    );
    assert_eq!(
        decide(&p, "big", json!({"n": 11, "cur": "eur"})).outcome,
        Outcome::Allow
    );
    assert_eq!(
        decide(&p, "big", json!({"n": 10, "cur": "usd"})).outcome,
        Outcome::Allow
    );
    assert_eq!(decide(&p, "big", json!({})).outcome, Outcome::Allow);
    // deny_if is decided before approval is asked for.
    assert_eq!(
        decide(&p, "guarded", json!({"n": 1001})).outcome,
        Outcome::Deny
    );
    assert_eq!(decide(&p, "guarded", json!({"n": 1})).outcome, APPROVAL_1H);
}

#[test]
fn categories_allow_deny_hide_and_rules() {
    let p = policy(json!({"version": "1", "categories": {
        "read": "allow",
        "write": {"limits": [{"counter": "writes", "window": "minute", "max": 30}]},
        "execute": "deny",
        "financial": {"approval": {"timeout": "30m"}},
        "destructive": "hide",
    }, "tools": {"run_tests": {}}}));
    let cases = [
        (
            "get_x",
            RiskCategory::Read,
            Outcome::Allow,
            "/categories/read",
        ),
        (
            "set_x",
            RiskCategory::Write,
            Outcome::Allow,
            "/categories/write",
        ),
        (
            "exec_x",
            RiskCategory::Execute,
            Outcome::Deny,
            "/categories/execute",
        ),
        (
            "run_tests",
            RiskCategory::Execute,
            Outcome::Allow,
            "/tools/run_tests",
        ),
        (
            "pay_x",
            RiskCategory::Financial,
            APPROVAL_30M,
            "/categories/financial/approval",
        ),
        (
            "rm_x",
            RiskCategory::Destructive,
            Outcome::Hidden,
            "(hidden)",
        ),
        (
            "odd_x",
            RiskCategory::Other,
            Outcome::Deny,
            "(default deny)",
        ),
    ];
    for (tool, category, outcome, rule) in cases {
        let d = decide_in(&p, tool, category);
        assert_eq!((d.outcome, d.rule.as_str()), (outcome, rule), "{tool}");
    }
    let write = decide_in(&p, "set_x", RiskCategory::Write);
    assert_eq!(write.charges[0].key, "grant:g1:writes");
    assert_eq!(write.charges[0].rule, "/categories/write/limits/0");
    assert!(
        decide_in(&p, "exec_x", RiskCategory::Execute)
            .message
            .contains("execute")
    );
    // Without a category, category rules never apply.
    assert_eq!(decide(&p, "get_x", json!({})).rule, "(default deny)");
}

#[test]
fn visibility_for_tools_list() {
    let p = policy(
        json!({"version": "1", "hide": ["h*"], "categories": {"execute": "deny", "destructive": "hide", "read": "allow"},
                          "tools": {"a": {"deny_if": [{}]}, "g*": {}}}),
    );
    let cases = [
        ("a", None, true),
        ("go", None, true),
        ("hello", None, false),
        ("zzz", None, false),
        ("zzz", Some(RiskCategory::Read), true),
        ("zzz", Some(RiskCategory::Execute), true),
        ("zzz", Some(RiskCategory::Destructive), false),
        ("zzz", Some(RiskCategory::Write), false),
        ("go", Some(RiskCategory::Destructive), true),
    ];
    for (tool, category, visible) in cases {
        assert_eq!(
            is_visible(Some(&p), tool, category),
            visible,
            "{tool} {category:?}"
        );
    }
    assert!(!is_visible(None, "a", None));
    let open = policy(json!({"version": "1", "default": "allow"}));
    assert!(is_visible(Some(&open), "anything", None));
}

#[test]
fn no_policy_denies_everything() {
    let args = json!({});
    let d = evaluate(None, &call("anything", &args, Some(RiskCategory::Read)));
    assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Deny, "(no policy)"));
}

#[test]
fn monitor_mode_and_policy_settings_are_reported() {
    let p = policy(
        json!({"version": "1", "mode": "monitor", "on_limiter_error": "allow", "audit": {"arguments": "values"},
                          "tools": {"t": {"deny_if": [{}]}}}),
    );
    let d = decide(&p, "t", json!({}));
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.monitor);
    assert!(decide(&p, "other", json!({})).monitor);
    // A policy on trial counts on counters of its own.
    let limited = |mode: &str| {
        let p = policy(
            json!({"version": "1", "mode": mode, "tools": {"t": {"limits": [
            {"counter": "spend", "window": "day", "max": 5, "scope": "tenant"}]}}}),
        );
        decide(&p, "t", json!({})).charges[0].key.clone()
    };
    assert_eq!(limited("monitor"), "monitor:tenant:acme:spend");
    assert_eq!(limited("enforce"), "tenant:acme:spend");
    assert_eq!(p.mode(), Mode::Monitor);
    assert_eq!(p.on_limiter_error(), OnLimiterError::Allow);
    assert_eq!(p.audit_arguments(), AuditArguments::Values);
    let defaults = policy(json!({"version": "1"}));
    assert_eq!(defaults.mode(), Mode::Enforce);
    assert_eq!(defaults.on_limiter_error(), OnLimiterError::Deny);
    assert_eq!(defaults.audit_arguments(), AuditArguments::Keys);
}

#[test]
fn rule_ids_are_escaped_json_pointers() {
    let p = policy(
        json!({"version": "1", "tools": {"files/read~all": {"deny_if": [{}]}, "git/*": {}}}),
    );
    assert_eq!(
        decide(&p, "files/read~all", json!({})).rule,
        "/tools/files~1read~0all/deny_if/0"
    );
    assert_eq!(decide(&p, "git/push", json!({})).rule, "/tools/git~1*");
}

#[test]
fn conditions_reach_nested_objects_arrays_and_dotted_names() {
    let p = policy(json!({"version": "1", "tools": {"t": {"deny_if": [
        {"conditions": [{"path": "args.media.0.url", "op": "regex", "value": "^http:"}], "on_deny": "insecure media"},
        {"conditions": [{"path": "args.Configuration.Url", "op": "contains", "value": "evil"}], "on_deny": "evil hook"},
        {"conditions": [{"path": "args.tags", "op": "contains", "value": "secret"}], "on_deny": "secret tag"},
    ]}}}));
    let cases = [
        (json!({"media": [{"url": "http://x"}]}), "insecure media"),
        (
            json!({"media": [{"url": "https://x"}, {"url": "http://y"}]}),
            "allowed by policy",
        ),
        (
            json!({"Configuration.Url": "https://evil.example"}),
            "evil hook",
        ),
        (
            json!({"Configuration": {"Url": "https://evil.example"}}),
            "evil hook",
        ),
        (json!({"tags": ["a", "secret"]}), "secret tag"),
        (json!({"tags": "top-secret"}), "secret tag"),
        (json!("not an object"), "allowed by policy"),
    ];
    for (args, message) in cases {
        assert_eq!(decide(&p, "t", args.clone()).message, message, "{args}");
    }
}

#[test]
fn a_path_through_brackets_checks_every_element_where_the_stricter_reading_wins() {
    let p = policy(
        json!({"version": "1", "default": "allow", "tools": {"send": {
            "require": [{"path": "args.media[].url", "op": "regex", "value": "^https://"}],
            "deny_if": [{"conditions": [{"path": "args.to[]", "op": "regex", "value": "@evil\\.example$"}],
                         "on_deny": "no mail to evil"}],
            "approval": {"when": [{"path": "args.items[].amount", "op": "gt", "value": 100}]},
            "limits": [{"counter": "spend", "window": "day", "max": 1000, "scope": "grant",
                        "cost": "args.items[].amount"}],
        }}}),
    );
    let media = |urls: &[&str]| -> Value { urls.iter().map(|u| json!({"url": u})).collect() };
    let cases = [
        // `require`: every element must hold; a later element cannot slip past it.
        (
            json!({"media": media(&["https://a", "https://b"])}),
            "allowed by policy",
        ),
        (
            json!({"media": media(&["https://a", "http://b"])}),
            "/tools/send/require/0",
        ),
        (
            json!({"media": [{"url": "https://a"}, {}]}),
            "/tools/send/require/0",
        ),
        (json!({"media": []}), "allowed by policy"),
        (json!({}), "/tools/send/require/0"),
        // `deny_if`: any element that matches denies; a lone value is one element.
        (
            json!({"media": [], "to": ["a@ok.example", "b@evil.example"]}),
            "no mail to evil",
        ),
        (
            json!({"media": [], "to": "b@evil.example"}),
            "no mail to evil",
        ),
        (
            json!({"media": [], "to": ["a@ok.example"]}),
            "allowed by policy",
        ),
        // An element that can be read two ways denies, whichever element it is.
        (
            json!({"media": [{"url": "https://a"}, {"URL": "http://b"}]}),
            "more than one way",
        ),
    ];
    for (mut args, expected) in cases {
        // Nothing to charge: no items (a missing cost argument would deny the call).
        args["items"] = json!([]);
        let d = decide(&p, "send", args.clone());
        assert!(
            d.rule.contains(expected) || d.message.contains(expected),
            "{args}: {d:?}"
        );
    }
    // `approval.when`: any item over 100 asks; the cost is the sum of the items' amounts.
    let d = decide(
        &p,
        "send",
        json!({"media": [], "items": [{"amount": 20}, {"amount": 150}]}),
    );
    assert!(
        matches!(d.outcome, Outcome::ApprovalRequired { .. }),
        "{d:?}"
    );
    assert_eq!(d.charges[0].cost, 170);
    let d = decide(
        &p,
        "send",
        json!({"media": [], "items": [{"amount": 20}, {"amount": 2.5}]}),
    );
    assert_eq!((d.outcome, d.charges[0].cost), (Outcome::Allow, 23));
    // An item without an amount leaves no cost to charge.
    let d = decide(
        &p,
        "send",
        json!({"media": [], "items": [{"amount": 20}, {}]}),
    );
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
}

#[test]
fn what_lenient_upstreams_read_as_true_or_as_a_list_cannot_slip_past_a_rule() {
    let p = policy(
        json!({"version": "1", "default": "allow", "tools": {"delete": {"deny_if": [
            {"conditions": [{"path": "args.force", "op": "eq", "value": true}], "on_deny": "no force"},
            {"conditions": [{"path": "args.options.recursive", "op": "eq", "value": true}],
             "on_deny": "no recursion"},
            {"conditions": [{"path": "args.paths[]", "op": "regex", "value": "^/etc/"}],
             "on_deny": "not /etc"},
        ]}}}),
    );
    // Python SDK servers (pydantic, lax) read these strings and numbers as booleans, and
    // decode JSON sent inside a string for parameters that are not strings.
    let cases = [
        (json!({"force": "true"}), "no force"),
        (json!({"force": " Yes"}), "no force"),
        (json!({"force": 1}), "no force"),
        (json!({"force": "no"}), "allowed by policy"),
        (
            json!({"options": "{\"recursive\": \"on\"}"}),
            "no recursion",
        ),
        (
            json!({"options": {"recursive": false}}),
            "allowed by policy",
        ),
        (
            json!({"paths": "[\"/tmp/a\", \"/etc/passwd\"]"}),
            "not /etc",
        ),
        (json!({"paths": ["/tmp/a"]}), "allowed by policy"),
    ];
    for (args, message) in cases {
        assert_eq!(
            decide(&p, "delete", args.clone()).message,
            message,
            "{args}"
        );
    }
    // A string that encodes an object is read both ways, and a requirement must hold for
    // both: an upstream that takes the string as it is finds no `safe` in it.
    let p = policy(
        json!({"version": "1", "default": "allow", "tools": {"delete": {"require": [
            {"path": "args.options.safe", "op": "eq", "value": true},
        ]}}}),
    );
    for (args, outcome) in [
        (json!({"options": {"safe": true}}), Outcome::Allow),
        (json!({"options": "{\"safe\": true}"}), Outcome::Deny),
    ] {
        assert_eq!(
            decide(&p, "delete", args.clone()).outcome,
            outcome,
            "{args}"
        );
    }
}

#[test]
fn compiled_policies_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<CompiledPolicy>();
    shareable::<Decision>();
}

#[test]
fn arguments_readable_more_than_one_way_are_denied_by_the_rule_that_reads_them() {
    let p = policy(json!({
        "version": "1",
        "default": "allow",
        "tools": {
            "create_app": {"deny_if": [{"conditions": [
                {"path": "args.Configuration.Url", "op": "regex", "value": "evil"}]}]},
            "rm": {"require": [{"path": "args.opts.force", "op": "eq", "value": false}]},
            "pay": {
                "limits": [{"counter": "spend", "window": "day", "max": 100, "cost": "args.amount"}],
                "approval": {"when": [{"path": "args.to", "op": "neq", "value": "self"}]}
            }
        }
    }));
    let cases = [
        (
            "create_app",
            json!({"Configuration": 0, "Configuration.Url": "https://evil"}),
            "/tools/create_app/deny_if/0",
        ),
        (
            "rm",
            json!({"Opts": {"force": false}}),
            "/tools/rm/require/0",
        ),
        (
            "rm",
            json!({"opts": {"Force": true}}),
            "/tools/rm/require/0",
        ),
        (
            "pay",
            json!({"AMOUNT": 500, "to": "self"}),
            "/tools/pay/limits/0",
        ),
        (
            "pay",
            json!({"amount": 5, "TO": "eve"}),
            "/tools/pay/approval",
        ),
    ];
    for (tool, args, rule) in cases {
        let d = decide(&p, tool, args.clone());
        assert_eq!(d.outcome, Outcome::Deny, "{tool} {args}");
        assert_eq!(&*d.rule, rule, "{tool} {args}");
        assert!(d.message.contains("more than one way"), "{}", &*d.message);
    }
    // Unambiguous arguments are decided as before.
    let d = decide(
        &p,
        "create_app",
        json!({"Configuration.Url": "https://evil"}),
    );
    assert_eq!(d.outcome, Outcome::Deny);
    let d = decide(&p, "rm", json!({"opts": {"force": false}}));
    assert_eq!(d.outcome, Outcome::Allow);
    let d = decide(&p, "pay", json!({"amount": 5, "to": "eve"}));
    assert!(matches!(d.outcome, Outcome::ApprovalRequired { .. }));
}

#[test]
fn confirm_comes_after_deny_if_and_before_approval() {
    let p = policy(json!({
        "version": "1",
        "all_tools": {"limits": [{"counter": "calls", "window": "minute", "max": 60}]},
        "tools": {
            "send_sms": {
                "deny_if": [{"conditions": [{"path": "args.body", "op": "contains", "value": "password"}]}],
                "confirm": {"message": "Send an SMS to {args.to}?", "timeout": "90s"},
                "approval": {"when": [{"path": "args.urgent", "op": "eq", "value": true}], "timeout": "30m"},
            },
            "plain": {"confirm": {}},
        },
    }));
    let denied = decide(&p, "send_sms", json!({"to": "+44", "body": "my password"}));
    assert_eq!(denied.outcome, Outcome::Deny);
    assert!(denied.confirmation.is_none());

    let asked = decide(&p, "send_sms", json!({"to": "+44", "body": "hi"}));
    assert_eq!(
        asked.outcome,
        Outcome::ConfirmationRequired {
            timeout: Duration::from_secs(90)
        }
    );
    assert_eq!(asked.rule, "/tools/send_sms/confirm");
    assert_eq!(
        asked.charges.len(),
        1,
        "charges are known before the user is asked"
    );
    let confirmation = asked.confirmation.as_ref().unwrap();
    assert!(
        confirmation.then.is_none(),
        "no approval: its `when` does not hold"
    );
    let question = confirmation.prompt.render(
        "send_sms",
        &json!({"to": "+44", "body": "hi"}),
        &|v: &Value| v.clone(),
    );
    assert!(
        question.starts_with("Send an SMS to +44?\n\nTool: send\\_sms"),
        "{question}"
    );
    let confirmed = asked.confirmed().unwrap();
    assert_eq!(confirmed.outcome, Outcome::Allow);
    assert_eq!(confirmed.charges, asked.charges);
    assert!(confirmed.confirmation.is_none());

    // Both: the user confirms, then an approver decides.
    let both = decide(
        &p,
        "send_sms",
        json!({"to": "+44", "body": "hi", "urgent": true}),
    );
    assert!(matches!(both.outcome, Outcome::ConfirmationRequired { .. }));
    let then = both.confirmed().unwrap();
    assert_eq!(then.outcome, APPROVAL_30M);
    assert_eq!(then.rule, "/tools/send_sms/approval");

    // Defaults: two minutes, a question naming nothing but the call itself.
    let plain = decide(&p, "plain", json!({}));
    assert_eq!(
        plain.outcome,
        Outcome::ConfirmationRequired {
            timeout: Duration::from_secs(120)
        }
    );
    assert_eq!(
        plain.confirmation.unwrap().prompt.as_str(),
        "Allow this tool call?"
    );
    assert!(decide(&p, "send_sms", json!({})).confirmed().is_some());
    assert!(decide(&p, "other", json!({})).confirmed().is_none());
}

#[test]
fn a_confirmation_whose_placeholder_reads_two_ways_is_denied() {
    let p = policy(json!({"version": "1", "tools": {
        "send": {"confirm": {"message": "To {args.to}?"}},
    }}));
    let d = decide(&p, "send", json!({"to": "a", "To": "b"}));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.rule, "/tools/send/confirm");
    assert!(
        d.message.contains("more than one way at args.to"),
        "{}",
        d.message
    );
}

#[test]
fn confirmation_decisions_print_for_the_cli_and_read_back() {
    let p = policy(json!({"version": "1", "tools": {
        "pay": {"confirm": {"message": "Pay {args.amount}?"}, "approval": {"timeout": "1h"}},
    }}));
    let d = decide(&p, "pay", json!({"amount": 5}));
    let value = serde_json::to_value(&d).unwrap();
    assert_eq!(value["decision"], "confirmation_required");
    assert_eq!(value["confirmation"]["message"], "Pay {args.amount}?");
    assert_eq!(value["confirmation"]["timeout_ms"], 120_000);
    assert_eq!(
        value["confirmation"]["then_approval"]["rule"],
        "/tools/pay/approval"
    );
    assert_eq!(
        value["confirmation"]["then_approval"]["timeout_ms"],
        3_600_000
    );
    let back: Decision = serde_json::from_value(value).unwrap();
    assert_eq!(back, d);
}

#[test]
fn a_client_that_cannot_confirm_falls_back_to_the_rules_approval() {
    let p = policy(json!({"version": "1", "tools": {
        "pay": {"confirm": {}, "approval": {"when": [{"path": "args.amount", "op": "gt", "value": 100}], "timeout": "30m"}},
        "send": {"confirm": {}},
    }}));
    // The approval stands in for the user even where its `when` would not ask for it.
    let small = decide(&p, "pay", json!({"amount": 5}));
    assert!(small.confirmed().unwrap().is_allowed());
    let fallback = small.unconfirmable().unwrap();
    assert_eq!(fallback.outcome, APPROVAL_30M);
    assert_eq!(fallback.rule, "/tools/pay/approval");
    assert!(decide(&p, "send", json!({})).unconfirmable().is_none());
}
