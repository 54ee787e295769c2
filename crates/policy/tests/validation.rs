//! Table-driven validation: every key, every way to get it wrong, all errors at once.

use portcullis_policy::{CompiledPolicy, PolicyDocument, PolicyError};
use serde_json::{Value, json};

fn errors(document: Value) -> Vec<PolicyError> {
    match CompiledPolicy::from_json(&document) {
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    }
}

/// Each case: a document and every (pointer, message fragment) it must produce, in order.
#[test]
fn invalid_documents_report_every_error_with_its_pointer() {
    let cases: Vec<(Value, Vec<(&str, &str)>)> = vec![
        (
            json!([]),
            vec![("", "a policy document must be an object, found an array")],
        ),
        (json!({}), vec![("", "missing required key \"version\"")]),
        (
            json!({"version": 1}),
            vec![("/version", "unsupported version 1; expected \"1\"")],
        ),
        (
            json!({"version": "2"}),
            vec![("/version", "unsupported version \"2\"")],
        ),
        (
            json!({"version": "1", "defualt": "deny", "tols": {}}),
            vec![
                (
                    "/defualt",
                    "unknown key \"defualt\" (did you mean \"default\"?); expected version, default, mode, on_limiter_error, audit, hide, all_tools, categories or tools",
                ),
                ("/tols", "unknown key \"tols\" (did you mean \"tools\"?)"),
            ],
        ),
        (
            json!({"version": "1", "default": "block"}),
            vec![(
                "/default",
                "unknown default \"block\"; expected allow or deny",
            )],
        ),
        (
            json!({"version": "1", "default": true}),
            vec![("/default", "expected allow or deny, found a boolean")],
        ),
        (
            json!({"version": "1", "mode": "monitr"}),
            vec![(
                "/mode",
                "unknown mode \"monitr\" (did you mean \"monitor\"?); expected enforce or monitor",
            )],
        ),
        (
            json!({"version": "1", "on_limiter_error": "open"}),
            vec![("/on_limiter_error", "expected deny or allow")],
        ),
        (
            json!({"version": "1", "audit": {"arguments": "all"}}),
            vec![(
                "/audit/arguments",
                "unknown audit.arguments \"all\"; expected keys or values",
            )],
        ),
        (
            json!({"version": "1", "audit": {"args": "keys"}}),
            vec![("/audit/args", "unknown key \"args\"")],
        ),
        (
            json!({"version": "1", "audit": "keys"}),
            vec![("/audit", "audit must be an object, found a string")],
        ),
        (
            json!({"version": "1", "hide": "delete_*"}),
            vec![("/hide", "hide must be an array, found a string")],
        ),
        (
            json!({"version": "1", "hide": ["ok", "", 3]}),
            vec![
                ("/hide/1", "must not be empty"),
                ("/hide/2", "expected a tool name or glob, found a number"),
            ],
        ),
        (
            json!({"version": "1", "all_tools": {"limit": []}}),
            vec![(
                "/all_tools/limit",
                "unknown key \"limit\" (did you mean \"limits\"?)",
            )],
        ),
        (
            json!({"version": "1", "all_tools": {"limits": {}}}),
            vec![(
                "/all_tools/limits",
                "a list of limits must be an array, found an object",
            )],
        ),
        (
            json!({"version": "1", "tools": []}),
            vec![("/tools", "tools must be an object, found an array")],
        ),
        (
            json!({"version": "1", "tools": {"": {}}}),
            vec![("/tools/", "tool name or glob must not be empty")],
        ),
        (
            json!({"version": "1", "tools": {"a": "allow"}}),
            vec![("/tools/a", "a tool rule must be an object, found a string")],
        ),
        (
            json!({"version": "1", "tools": {"send/sms": {"limts": [], "validate": "yes"}}}),
            vec![
                (
                    "/tools/send~1sms/limts",
                    "unknown key \"limts\" (did you mean \"limits\"?); expected require, deny_if, limits, confirm, approval or validate",
                ),
                (
                    "/tools/send~1sms/validate",
                    "expected true or false, found a string",
                ),
            ],
        ),
        // conditions
        (
            json!({"version": "1", "tools": {"a": {"require": {}}}}),
            vec![("/tools/a/require", "a list of conditions must be an array")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{}]}}}),
            vec![
                ("/tools/a/require/0", "missing required key \"path\""),
                ("/tools/a/require/0", "missing required key \"op\""),
            ],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "to", "op": "eq", "value": 1}]}}}),
            vec![(
                "/tools/a/require/0/path",
                "path \"to\" must be \"args\" or start with \"args.\"",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args..to", "op": "eq", "value": 1}]}}}),
            vec![("/tools/a/require/0/path", "empty segment")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"deny_if": [{"conditions": [{"path": "args.m[][][][][]", "op": "exists"}]}]}}}),
            vec![(
                "/tools/a/deny_if/0/conditions/0/path",
                "writes \"[]\" more than 4 times",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "day", "max": 5, "cost": "args.[].n"}]}}}),
            vec![("/tools/a/limits/0/cost", "empty segment")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": 5, "op": "eq", "value": 1}]}}}),
            vec![("/tools/a/require/0/path", "expected a path string")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "equals", "value": 1}]}}}),
            vec![(
                "/tools/a/require/0/op",
                "unknown op \"equals\"; expected eq, neq, lt, lte, gt, gte, in, not_in, exists, regex or contains",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "nq", "value": 1}]}}}),
            vec![("/tools/a/require/0/op", "(did you mean \"eq\"?)")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "eq"}]}}}),
            vec![(
                "/tools/a/require/0",
                "missing required key \"value\" (op eq needs one)",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "gt", "value": "5"}]}}}),
            vec![(
                "/tools/a/require/0/value",
                "op gt compares numbers; expected a number, found a string",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "in", "value": "a"}]}}}),
            vec![("/tools/a/require/0/value", "op in needs an array of values")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "not_in", "value": {}}]}}}),
            vec![("/tools/a/require/0/value", "op not_in needs an array")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "exists", "value": "yes"}]}}}),
            vec![("/tools/a/require/0/value", "op exists takes true or false")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "regex", "value": "(a"}]}}}),
            vec![(
                "/tools/a/require/0/value",
                "invalid regex \"(a\": unclosed group",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "regex", "value": "(?<!a)b"}]}}}),
            vec![("/tools/a/require/0/value", "invalid regex")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "regex", "value": "a{1000}{1000}"}]}}}),
            vec![("/tools/a/require/0/value", "too large once compiled")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"require": [{"path": "args.x", "op": "eq", "value": 1, "on_fail": "x"}]}}}),
            vec![(
                "/tools/a/require/0/on_fail",
                "unknown key \"on_fail\"; expected path, op or value",
            )],
        ),
        // deny_if
        (
            json!({"version": "1", "tools": {"a": {"deny_if": [{"condition": []}]}}}),
            vec![(
                "/tools/a/deny_if/0/condition",
                "(did you mean \"conditions\"?)",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"deny_if": [{"on_deny": ""}]}}}),
            vec![("/tools/a/deny_if/0/on_deny", "on_deny must not be empty")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"deny_if": [{"on_deny": 1}]}}}),
            vec![(
                "/tools/a/deny_if/0/on_deny",
                "expected a message string, found a number",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"deny_if": [[]]}}}),
            vec![(
                "/tools/a/deny_if/0",
                "a deny_if entry must be an object, found an array",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"deny_if": [{"conditions": [{"path": "args.x", "op": "lt"}]}]}}}),
            vec![(
                "/tools/a/deny_if/0/conditions/0",
                "missing required key \"value\"",
            )],
        ),
        // limits
        (
            json!({"version": "1", "tools": {"send_message": {"limits": [{"counter": "sms", "window": "minit", "max": 5}]}}}),
            vec![(
                "/tools/send_message/limits/0/window",
                "unknown window \"minit\"; expected minute, hour, day or a duration like \"90s\"",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{}]}}}),
            vec![
                ("/tools/a/limits/0", "missing required key \"counter\""),
                ("/tools/a/limits/0", "missing required key \"window\""),
                ("/tools/a/limits/0", "missing required key \"max\""),
            ],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "a:b", "window": "minute", "max": 1}]}}}),
            vec![(
                "/tools/a/limits/0/counter",
                "counter name \"a:b\" must be 1 to 128 characters",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "", "window": "minute", "max": 1}]}}}),
            vec![("/tools/a/limits/0/counter", "must be 1 to 128")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "0s", "max": 1}]}}}),
            vec![(
                "/tools/a/limits/0/window",
                "window \"0s\" is too short; the minimum is 1s",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "400d", "max": 1}]}}}),
            vec![("/tools/a/limits/0/window", "too long; the maximum is 366d")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": 60, "max": 1}]}}}),
            vec![(
                "/tools/a/limits/0/window",
                "expected a window such as \"minute\" or \"90s\", found a number",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 0}]}}}),
            vec![(
                "/tools/a/limits/0/max",
                "max must be a whole number of at least 1, found 0",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 1.5}]}}}),
            vec![("/tools/a/limits/0/max", "found 1.5")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": -1}]}}}),
            vec![("/tools/a/limits/0/max", "found -1")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 1, "scope": "user"}]}}}),
            vec![(
                "/tools/a/limits/0/scope",
                "unknown scope \"user\"; expected grant, identity, server or tenant",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 1, "cost": "amount"}]}}}),
            vec![(
                "/tools/a/limits/0/cost",
                "must be \"args\" or start with \"args.\"",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 1, "cost": 5}]}}}),
            vec![(
                "/tools/a/limits/0/cost",
                "expected the path of a numeric argument",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 1, "per": "grant"}]}}}),
            vec![("/tools/a/limits/0/per", "unknown key \"per\"")],
        ),
        // one window per counter and scope; one charge per counter and scope per call
        (
            json!({"version": "1", "tools": {
                "a": {"limits": [{"counter": "calls", "window": "minute", "max": 1}]},
                "b": {"limits": [{"counter": "calls", "window": "hour", "max": 1}]}}}),
            vec![(
                "/tools/b/limits/0/window",
                "counter \"calls\" with scope grant already has window \"minute\" at /tools/a/limits/0",
            )],
        ),
        (
            json!({"version": "1",
                "all_tools": {"limits": [{"counter": "calls", "window": "minute", "max": 60}]},
                "tools": {"a": {"limits": [{"counter": "calls", "window": "minute", "max": 5}]}}}),
            vec![(
                "/tools/a/limits/0/counter",
                "counter \"calls\" with scope grant is already charged by /all_tools/limits/0 on the same call",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"limits": [
                {"counter": "c", "window": "minute", "max": 5},
                {"counter": "c", "window": "minute", "max": 9}]}}}),
            vec![(
                "/tools/a/limits/1/counter",
                "already charged by /tools/a/limits/0",
            )],
        ),
        // approval
        (
            json!({"version": "1", "tools": {"a": {"approval": true}}}),
            vec![(
                "/tools/a/approval",
                "approval must be an object, found a boolean",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"approval": {"timeout": "forever"}}}}),
            vec![("/tools/a/approval/timeout", "unknown timeout \"forever\"")],
        ),
        (
            json!({"version": "1", "tools": {"a": {"approval": {"when": {"path": "args.x"}}}}}),
            vec![(
                "/tools/a/approval/when",
                "a list of conditions must be an array",
            )],
        ),
        (
            json!({"version": "1", "tools": {"a": {"approval": {"approvers": []}}}}),
            vec![(
                "/tools/a/approval/approvers",
                "unknown key \"approvers\"; expected when or timeout",
            )],
        ),
        // categories
        (
            json!({"version": "1", "categories": {"reads": "allow"}}),
            vec![(
                "/categories/reads",
                "unknown risk category \"reads\"; expected read, write, execute, financial, destructive or other",
            )],
        ),
        (
            json!({"version": "1", "categories": {"read": "permit"}}),
            vec![(
                "/categories/read",
                "unknown category action \"permit\"; expected allow, deny or hide",
            )],
        ),
        (
            json!({"version": "1", "categories": {"read": 1}}),
            vec![(
                "/categories/read",
                "expected \"allow\", \"deny\", \"hide\" or a rule object, found a number",
            )],
        ),
        (
            json!({"version": "1", "categories": {"financial": {"aproval": {}}}}),
            vec![(
                "/categories/financial/aproval",
                "(did you mean \"approval\"?)",
            )],
        ),
        (
            json!({"version": "1", "tools": {
                "send": {"confirm": {"mesage": "x", "timeout": "forever"}},
                "pay": {"confirm": {"message": "Pay {args.amount", "timeout": "16m"}},
                "ask": {"confirm": {"message": "To {to}? }"}},
                "bad": {"confirm": "yes"},
                "num": {"confirm": {"message": 3, "timeout": 5}},
                "empty": {"confirm": {"message": " "}},
            }}),
            vec![
                (
                    "/tools/ask/confirm/message",
                    "placeholder {to}: path \"to\" must be \"args\" or start with \"args.\"",
                ),
                (
                    "/tools/bad/confirm",
                    "confirm must be an object, found a string",
                ),
                ("/tools/empty/confirm/message", "message must not be empty"),
                (
                    "/tools/num/confirm/message",
                    "expected a message string like",
                ),
                ("/tools/num/confirm/timeout", "expected a timeout such as"),
                ("/tools/pay/confirm/message", "unterminated placeholder"),
                (
                    "/tools/pay/confirm/timeout",
                    "timeout \"16m\" is too long: the client's call waits for the answer, so it may be at most 15 minutes",
                ),
                (
                    "/tools/send/confirm/mesage",
                    "unknown key \"mesage\" (did you mean \"message\"?); expected message or timeout",
                ),
                ("/tools/send/confirm/timeout", "unknown timeout \"forever\""),
            ],
        ),
    ];
    for (document, expected) in cases {
        let found = errors(document.clone());
        assert_eq!(found.len(), expected.len(), "{document}\nfound: {found:#?}");
        for (error, (pointer, fragment)) in found.iter().zip(&expected) {
            assert_eq!(error.pointer, *pointer, "{document}: {error}");
            assert!(
                error.message.contains(fragment),
                "{document}: {error:?} should contain {fragment:?}"
            );
            assert!(!error.message.contains('\n'));
        }
    }
}

#[test]
fn a_document_with_many_mistakes_reports_them_all_at_once() {
    let document = json!({
        "version": "1",
        "default": "nope",
        "hide": [1],
        "tools": {
            "send_message": {
                "require": [{"path": "args.To", "op": "regex", "value": "(+44"}],
                "deny_if": [{"conditions": [{"path": "Body", "op": "contain", "value": "x"}]}],
                "limits": [{"counter": "sms", "window": "minit", "max": 0, "scope": "users"}],
                "approval": {"timeout": "soon"},
            },
        },
    });
    let found = errors(document);
    let rendered: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered,
        [
            "/default: unknown default \"nope\"; expected allow or deny",
            "/hide/0: expected a tool name or glob, found a number",
            "/tools/send_message/require/0/value: invalid regex \"(+44\": repetition operator missing expression",
            "/tools/send_message/deny_if/0/conditions/0/path: path \"Body\" must be \"args\" or start with \"args.\" (for example \"args.to\")",
            "/tools/send_message/deny_if/0/conditions/0/op: unknown op \"contain\" (did you mean \"contains\"?); expected eq, neq, lt, lte, gt, gte, in, not_in, exists, regex or contains",
            "/tools/send_message/limits/0/window: unknown window \"minit\"; expected minute, hour, day or a duration like \"90s\"",
            "/tools/send_message/limits/0/max: max must be a whole number of at least 1, found 0",
            "/tools/send_message/limits/0/scope: unknown scope \"users\"; expected grant, identity, server or tenant",
            "/tools/send_message/approval/timeout: unknown timeout \"soon\"; expected minute, hour, day or a duration like \"90s\"",
        ]
    );
}

#[test]
fn valid_documents_cover_every_key() {
    let documents = [
        json!({"version": "1"}),
        json!({"version": "1", "default": "allow", "mode": "monitor", "on_limiter_error": "allow",
               "audit": {"arguments": "values"}}),
        json!({"version": "1", "audit": {}}),
        json!({"version": "1", "hide": ["delete_*", "exact", "?x*"]}),
        json!({"version": "1", "all_tools": {}}),
        json!({"version": "1", "all_tools": {"limits": [
            {"counter": "calls", "window": "minute", "max": 60},
            {"counter": "calls", "window": "minute", "max": 600, "scope": "tenant"},
            {"counter": "daily.calls-1", "window": "1d", "max": 10000, "scope": "identity"},
        ]}}),
        json!({"version": "1", "categories": {
            "read": "allow", "write": {"limits": [{"counter": "w", "window": "30s", "max": 5}]},
            "execute": "deny", "financial": {"approval": {}}, "destructive": "hide", "other": {},
        }}),
        json!({"version": "1", "tools": {"a": {
            "require": [{"path": "args", "op": "exists"}, {"path": "args.x.0.y", "op": "eq", "value": null}],
            "deny_if": [{}, {"conditions": []}, {"conditions": [{"path": "args.n", "op": "gte", "value": 1.5}], "on_deny": "no"}],
            "limits": [{"counter": "x", "window": "hour", "max": 1, "scope": "server", "cost": "args.n"}],
            "approval": {"when": [], "timeout": "15m"},
            "validate": false,
        }}}),
        json!({"version": "1", "tools": {
            "send_sms": {"confirm": {"message": "Send an SMS to {args.to} ({{literal}})?", "timeout": "2m"}},
            "pay": {"confirm": {}, "approval": {}},
        }, "categories": {"financial": {"confirm": {"timeout": "15m"}}}}),
    ];
    for document in documents {
        let parsed =
            PolicyDocument::from_json(&document).unwrap_or_else(|e| panic!("{document}: {e:?}"));
        // The typed document serialises back to an equivalent one.
        let again = serde_json::to_value(&parsed).unwrap();
        assert_eq!(PolicyDocument::from_json(&again).unwrap(), parsed);
        assert!(CompiledPolicy::from_json(&document).is_ok());
    }
}

#[test]
fn from_str_reports_malformed_json_with_line_and_column() {
    let err = "{\n  \"version\": \"1\",\n}"
        .parse::<CompiledPolicy>()
        .unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].pointer, "");
    assert_eq!(
        err[0].message,
        "invalid JSON: trailing comma at line 3 column 1"
    );
    assert!("{\"version\": \"1\"}".parse::<CompiledPolicy>().is_ok());
}

#[test]
fn a_key_given_twice_is_an_error_not_a_lost_rule() {
    let err = r#"{"version":"1","tools":{"send":{"deny_if":[{"on_deny":"never"}],"deny_if":[]}}}"#
        .parse::<CompiledPolicy>()
        .unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].pointer, "/tools/send/deny_if");
    assert!(err[0].message.starts_with("duplicate key \"deny_if\""));
}

#[test]
fn the_regexes_of_a_policy_share_one_memory_budget() {
    // Each is under the cap of one regex (about 1.1 MB compiled); four of them are not.
    let condition = json!({"path": "args.a", "op": "regex", "value": "\\w{20}"});
    let document = json!({"version": "1", "tools": {"t": {"require": vec![condition.clone(); 6]}}});
    let errors = errors(document);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].pointer, "/tools/t/require/3/value");
    assert!(
        errors[0].message.contains("MiB once compiled"),
        "{errors:?}"
    );
    let document = json!({"version": "1", "tools": {"t": {"require": vec![condition.clone(); 3]}}});
    assert!(CompiledPolicy::from_json(&document).is_ok());
    // Past the budget, patterns are no longer compiled, but still read.
    let mut require = vec![condition; 5];
    require.push(json!({"path": "args.a", "op": "regex"}));
    require.push(json!({"path": "args.a", "op": "regex", "value": 5}));
    let found = self::errors(json!({"version": "1", "tools": {"t": {"require": require}}}));
    let pointers: Vec<&str> = found.iter().map(|e| e.pointer.as_str()).collect();
    assert_eq!(
        pointers,
        [
            "/tools/t/require/3/value",
            "/tools/t/require/5",
            "/tools/t/require/6/value"
        ]
    );
}
