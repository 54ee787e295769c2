//! Evaluating one call against a 200-tool policy with globs and conditions.
//!
//! `cargo bench -p portcullis-policy --bench evaluate`; the target is under 2 µs per call.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_policy::{Call, CompiledPolicy, Outcome, evaluate};
use serde_json::{Map, Value, json};

/// 160 exact tools (every fourth with a limit, all with conditions), 40 globs of mixed
/// specificity, hide globs, category rules and an `all_tools` limit.
fn policy() -> CompiledPolicy {
    let mut tools = Map::new();
    for i in 0..160 {
        let mut rule = json!({
            "require": [
                {"path": "args.To", "op": "regex", "value": "^\\+44\\d{10}$"},
                {"path": "args.media.0.url", "op": "regex", "value": "^https://"},
            ],
            "deny_if": [
                {"conditions": [{"path": "args.Body", "op": "contains", "value": "password"}], "on_deny": "no credentials"},
                {"conditions": [{"path": "args.Priority", "op": "in", "value": ["urgent", "critical", 1, 2]},
                                {"path": "args.amount", "op": "gt", "value": 1000}]},
                {"conditions": [{"path": "args.Region", "op": "neq", "value": "eu"}, {"path": "args.Region", "op": "exists"}]},
            ],
            "approval": {"when": [{"path": "args.amount", "op": "gte", "value": 500}]},
        });
        if i % 4 == 0 {
            rule["limits"] = json!([
                {"counter": format!("tool{i}"), "window": "minute", "max": 30, "scope": "identity"},
                {"counter": "spend", "window": "day", "max": 100_000, "scope": "tenant", "cost": "args.amount"},
            ]);
        }
        tools.insert(format!("Service{}Api--CreateThing{i}", i % 8), rule);
    }
    for i in 0..40 {
        let pattern = match i % 4 {
            0 => format!("Service{i}Api--List*"),
            1 => format!("Service{i}Api--Fetch?*"),
            2 => format!("*--Update{i}*"),
            _ => format!("Svc{i}*"),
        };
        tools.insert(pattern, json!({"deny_if": [{"conditions": [{"path": "args.force", "op": "eq", "value": true}]}]}));
    }
    let document = json!({
        "version": "1",
        "default": "deny",
        "hide": ["*--Delete*", "*--Remove*", "Service0Api--DropEverything", "admin_?", "internal_*"],
        "all_tools": {"limits": [{"counter": "calls", "window": "minute", "max": 600}]},
        "categories": {"financial": {"approval": {}}, "destructive": "hide", "read": "allow"},
        "tools": Value::Object(tools),
    });
    CompiledPolicy::from_json(&document).expect("the benchmark policy validates")
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    let args = json!({
        "To": "+447700900123",
        "Body": "Your order has shipped",
        "Priority": "normal",
        "Region": "eu",
        "amount": 42,
        "media": [{"url": "https://cdn.example.com/a.png"}],
    });
    let call = |tool| Call {
        tool,
        arguments: &args,
        grant: "grt_01J8ZQ",
        identity: "alice@example.com",
        server: "srv_01J8ZQ",
        tenant: "ten_01J8ZQ",
        category: None,
    };
    let cases = [
        (
            "exact rule, 2 regex + 3 deny_if, 3 charges",
            "Service0Api--CreateThing0",
            Outcome::Allow,
        ),
        (
            "exact rule, 2 regex + 3 deny_if, 1 charge",
            "Service1Api--CreateThing1",
            Outcome::Allow,
        ),
        ("glob rule", "Svc39Ops", Outcome::Allow),
        ("no rule: default deny", "Unknown--Tool", Outcome::Deny),
        (
            "hidden by glob",
            "Service3Api--DeleteThing",
            Outcome::Hidden,
        ),
    ];
    let mut group = c.benchmark_group("evaluate");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(60);
    for (name, tool, outcome) in cases {
        let call = call(tool);
        assert_eq!(evaluate(Some(&policy), &call).outcome, outcome, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| evaluate(Some(black_box(&policy)), black_box(&call)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
