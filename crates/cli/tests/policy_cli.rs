//! `portcullis policy check|eval|recommend`, run as the built binary.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn portcullis(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the portcullis binary starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("stdin accepts the input");
    child.wait_with_output().expect("the binary exits")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../policy/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

const POLICY: &str = r#"{
  "version": "1",
  "hide": ["delete_*"],
  "all_tools": {"limits": [{"counter": "calls", "window": "minute", "max": 60}]},
  "tools": {
    "send_message": {
      "require": [{"path": "args.To", "op": "regex", "value": "^\\+44"}],
      "limits": [{"counter": "sms", "window": "hour", "max": 30, "scope": "identity"}],
      "approval": {"when": [{"path": "args.amount", "op": "gt", "value": 100}], "timeout": "30m"}
    }
  }
}"#;

#[test]
fn check_prints_ok_for_a_valid_policy() {
    let out = portcullis(&["policy", "check", "-"], POLICY);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok\n");
}

#[test]
fn check_prints_every_error_pointer_first() {
    let policy = r#"{"version": "1", "defualt": "deny",
        "tools": {"send_message": {"limits": [{"counter": "sms", "window": "minit", "max": 0}]}}}"#;
    let out = portcullis(&["policy", "check", "-"], policy);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "/defualt: unknown key \"defualt\" (did you mean \"default\"?); expected version, default, mode, on_limiter_error, audit, hide, all_tools, categories or tools",
            "/tools/send_message/limits/0/window: unknown window \"minit\"; expected minute, hour, day or a duration like \"90s\"",
            "/tools/send_message/limits/0/max: max must be a whole number of at least 1, found 0",
        ]
    );
}

#[test]
fn malformed_json_is_one_line_with_its_position() {
    let out = portcullis(&["policy", "check", "-"], "{\n  \"version\": \"1\",\n}");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: <stdin>: invalid JSON at line 3, column 1: trailing comma\n"
    );
    let out = portcullis(
        &[
            "policy", "eval", "--policy", "-", "--tool", "x", "--args", "{bad",
        ],
        POLICY,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: --args: invalid JSON at line 1, column 2: key must be a string\n"
    );
    let out = portcullis(&["policy", "check", "/nonexistent/policy.json"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: cannot read /nonexistent/policy.json"));
}

#[test]
fn eval_prints_the_decision_as_one_json_object() {
    let args = r#"{"To": "+447700900000", "amount": 5}"#;
    let out = portcullis(
        &[
            "policy",
            "eval",
            "--policy",
            "-",
            "--tool",
            "send_message",
            "--args",
            args,
            "--identity",
            "alice",
        ],
        POLICY,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1);
    let decision: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["rule"], "/tools/send_message");
    assert_eq!(
        decision["charges"],
        json!([
            {"key": "identity:alice:sms", "window_ms": 3_600_000, "max": 30, "cost": 1, "rule": "/tools/send_message/limits/0"},
            {"key": "grant:cli:calls", "window_ms": 60_000, "max": 60, "cost": 1, "rule": "/all_tools/limits/0"},
        ])
    );

    let cases = [
        (
            "send_message",
            r#"{"To": "+15550100"}"#,
            "deny",
            "/tools/send_message/require/0",
        ),
        (
            "send_message",
            r#"{"To": "+447700900000", "amount": 500}"#,
            "approval_required",
            "/tools/send_message/approval",
        ),
        ("delete_repo", "{}", "hidden", "(hidden)"),
        ("other", "{}", "deny", "(default deny)"),
    ];
    for (tool, args, want, rule) in cases {
        let out = portcullis(
            &[
                "policy", "eval", "--policy", "-", "--tool", tool, "--args", args,
            ],
            POLICY,
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let decision: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(
            (decision["decision"].as_str(), decision["rule"].as_str()),
            (Some(want), Some(rule)),
            "{tool}"
        );
        assert!(decision["message"].is_string());
    }
}

#[test]
fn eval_reports_a_confirmation_with_the_question_the_user_sees() {
    let policy = r#"{"version": "1", "tools": {"send_sms": {
        "confirm": {"message": "Send an SMS to {args.to}?", "timeout": "90s"},
        "approval": {}
    }}}"#;
    let args = r#"{"to": "+44 <b>7700</b>", "api_key": "s3cr3t"}"#;
    let out = portcullis(
        &[
            "policy", "eval", "--policy", "-", "--tool", "send_sms", "--args", args,
        ],
        policy,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let decision: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(decision["decision"], "confirmation_required");
    assert_eq!(decision["rule"], "/tools/send_sms/confirm");
    let confirmation = &decision["confirmation"];
    assert_eq!(confirmation["message"], "Send an SMS to {args.to}?");
    assert_eq!(confirmation["timeout_ms"], 90_000);
    assert_eq!(
        confirmation["then_approval"]["rule"],
        "/tools/send_sms/approval"
    );
    // Filled, escaped, and redacted as the audit log redacts values.
    assert_eq!(
        confirmation["question"],
        "Send an SMS to +44 \\<b\\>7700\\</b\\>?\n\nTool: send\\_sms\n\
         Arguments: \\{\"api\\_key\":\"\\[redacted\\]\",\"to\":\"+44 \\<b\\>7700\\</b\\>\"\\}"
    );
}

#[test]
fn eval_refuses_an_invalid_policy() {
    let out = portcullis(
        &["policy", "eval", "--policy", "-", "--tool", "x"],
        r#"{"version": "1", "mode": "watch"}"#,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/mode: unknown mode \"watch\""),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn recommend_reads_tools_list_results_in_every_shape() {
    let out = portcullis(
        &["policy", "recommend", &fixture("twilio_api_v2010.json")],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let policy: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(policy["version"], "1");
    assert_eq!(policy["default"], "deny");
    assert!(
        policy["hide"]
            .as_array()
            .unwrap()
            .contains(&json!("TwilioApiV2010--DeleteMessage"))
    );
    assert_eq!(
        policy["tools"]["TwilioApiV2010--CreateMessage"],
        json!({"approval": {}})
    );
    assert_eq!(policy["tools"]["TwilioApiV2010--ListMessage"], json!({}));

    // The recommendation is itself a valid policy.
    let check = portcullis(&["policy", "check", "-"], &stdout(&out));
    assert_eq!(stdout(&check), "ok\n");

    let rpc = r#"{"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "run_job"}]}}"#;
    let out = portcullis(&["policy", "recommend", "-"], rpc);
    let policy: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(policy["tools"]["run_job"]["limits"][0]["max"], 10);

    let array = r#"[{"name": "delete_everything"}]"#;
    let out = portcullis(&["policy", "recommend", "-"], array);
    let policy: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(policy["hide"], json!(["delete_everything"]));

    let out = portcullis(&["policy", "recommend", "-"], r#"{"items": []}"#);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("expected a tools/list result"));
}

#[test]
fn usage_errors_exit_2() {
    let out = portcullis(&["policy", "eval", "--tool", "x"], "");
    assert_eq!(out.status.code(), Some(2));
}

/// Every policy docs/security.md shows passes `portcullis policy check`: the threat model's
/// examples are policies the product accepts, not sketches.
#[test]
fn the_threat_models_example_policies_pass_the_check() {
    let doc = std::fs::read_to_string(format!(
        "{}/../../docs/security.md",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("docs/security.md is readable");
    let examples: Vec<&str> = doc
        .split("```json\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(examples.len() >= 9, "found {} examples", examples.len());
    for example in examples {
        let out = portcullis(&["policy", "check", "-"], example);
        assert!(
            out.status.success() && stdout(&out).trim() == "ok",
            "{example}\n{}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}
