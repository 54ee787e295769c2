//! The visual policy builder: one row per tool (Default / Allow / Deny / Hide / Custom, with a
//! rate limit, a condition, confirmation by the agent's user and approval), converted to and
//! from the policy document.
//!
//! The builder edits only `default`, `mode`, `hide` entries and `tools` rules of the tools it
//! shows; everything else in the document (categories, `all_tools`, audit settings, rules it
//! cannot express, which it shows as Custom JSON) is kept as it was.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::error::FieldError;
use crate::tools::Tool;

/// One tool's row.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// The tool name (or glob).
    pub name: String,
    /// `default`, `allow`, `deny`, `hide` or `custom`.
    pub mode: String,
    /// Rate limit: most calls per window (blank: none).
    pub max: String,
    /// Rate limit window (`minute`, `hour`, `day`, or a duration like `15m`).
    pub window: String,
    /// Whether the agent's user confirms each call in their MCP client (`confirm`, with the
    /// default question and timeout).
    pub confirm: bool,
    /// Whether calls wait for a human approval.
    pub approval: bool,
    /// A required condition: argument path (`args.to`).
    pub cond_path: String,
    /// Its operator.
    pub cond_op: String,
    /// Its value (JSON, or text).
    pub cond_value: String,
    /// The rule as JSON, for Custom.
    pub custom: String,
    /// Risk category, if discovered.
    pub category: String,
    /// Risk level, if discovered.
    pub level: String,
    /// Discovered (not just named in the document).
    pub discovered: bool,
    /// The tool changed since approval.
    pub changed: bool,
    /// Problems of this row, from the last save.
    pub errors: Vec<String>,
}

/// Escapes a key for a JSON pointer (RFC 6901).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn is_deny(rule: &Map<String, Value>) -> bool {
    rule.len() == 1
        && rule
            .get("deny_if")
            .and_then(Value::as_array)
            .is_some_and(|entries| {
                entries.len() == 1
                    && entries[0]
                        .get("conditions")
                        .is_none_or(|c| c.as_array().is_some_and(Vec::is_empty))
            })
}

fn simple_allow(rule: &Map<String, Value>, row: &mut Row) -> bool {
    if !rule
        .keys()
        .all(|k| matches!(k.as_str(), "limits" | "confirm" | "approval" | "require"))
    {
        return false;
    }
    if let Some(limits) = rule.get("limits") {
        let Some([limit]) = limits.as_array().map(Vec::as_slice) else {
            return false;
        };
        let Some(limit) = limit.as_object() else {
            return false;
        };
        if !limit
            .keys()
            .all(|k| matches!(k.as_str(), "counter" | "window" | "max" | "scope"))
            || limit.get("scope").is_some_and(|s| s != "grant")
        {
            return false;
        }
        row.max = limit.get("max").map(|m| m.to_string()).unwrap_or_default();
        row.window = limit
            .get("window")
            .and_then(Value::as_str)
            .unwrap_or("minute")
            .to_owned();
    }
    // A question or timeout of its own is more than a checkbox says: Custom keeps it.
    if let Some(confirm) = rule.get("confirm") {
        if confirm.as_object().is_none_or(|c| !c.is_empty()) {
            return false;
        }
        row.confirm = true;
    }
    if let Some(approval) = rule.get("approval") {
        if approval.as_object().is_none_or(|a| !a.is_empty()) {
            return false;
        }
        row.approval = true;
    }
    if let Some(require) = rule.get("require") {
        let Some([condition]) = require.as_array().map(Vec::as_slice) else {
            return false;
        };
        let Some(condition) = condition.as_object() else {
            return false;
        };
        if !condition
            .keys()
            .all(|k| matches!(k.as_str(), "path" | "op" | "value"))
        {
            return false;
        }
        row.cond_path = condition
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        row.cond_op = condition
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        row.cond_value = match condition.get("value") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
    }
    true
}

/// The rows for a document and the server's discovered tools.
pub fn rows(document: &Value, tools: &[Tool]) -> Vec<Row> {
    let rules = document
        .get("tools")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let hidden: BTreeSet<String> = document
        .get("hide")
        .and_then(Value::as_array)
        .map(|h| {
            h.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut names: BTreeMap<String, Option<&Tool>> = BTreeMap::new();
    for tool in tools.iter().filter(|t| t.status != "removed") {
        names.insert(tool.name.clone(), Some(tool));
    }
    for name in rules.keys().chain(hidden.iter()) {
        names.entry(name.clone()).or_insert(None);
    }
    names
        .into_iter()
        .map(|(name, tool)| {
            let mut row = Row {
                window: "minute".into(),
                cond_op: "eq".into(),
                category: tool.map(|t| t.risk_category.clone()).unwrap_or_default(),
                level: tool.map(|t| t.risk_level.clone()).unwrap_or_default(),
                discovered: tool.is_some(),
                changed: tool.is_some_and(|t| t.status == "changed"),
                ..Row::default()
            };
            let rule = rules.get(&name);
            row.custom = rule
                .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
                .unwrap_or_else(|| "{}".into());
            row.mode = if hidden.contains(&name) {
                "hide".into()
            } else {
                match rule.and_then(Value::as_object) {
                    None => "default".into(),
                    Some(r) if is_deny(r) => "deny".into(),
                    Some(r) => {
                        let mut probe = row.clone();
                        if simple_allow(r, &mut probe) {
                            row = probe;
                            "allow".into()
                        } else {
                            "custom".into()
                        }
                    }
                }
            };
            row.name = name;
            row
        })
        .collect()
}

fn counter_for(name: &str) -> String {
    let mut counter: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(90)
        .collect();
    counter.push_str("_calls");
    counter
}

fn field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Builds a document from the builder's form over `base` (the current version).
pub fn build(base: &Value, form: &[(String, String)]) -> Result<Value, Vec<FieldError>> {
    let mut document = base.as_object().cloned().unwrap_or_default();
    let mut errors = Vec::new();
    document.entry("version").or_insert(json!("1"));
    if let Some(d @ ("allow" | "deny")) = field(form, "default") {
        document.insert("default".into(), json!(d));
    }
    match field(form, "mode") {
        Some("monitor") => {
            document.insert("mode".into(), json!("monitor"));
        }
        Some("enforce") => {
            document.remove("mode");
        }
        _ => {}
    }
    let mut hide: Vec<Value> = document
        .get("hide")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut tools = document
        .get("tools")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for i in 0.. {
        let Some(name) = field(form, &format!("tool.{i}.name")) else {
            break;
        };
        let name = name.to_owned();
        let get = |f: &str| {
            field(form, &format!("tool.{i}.{f}"))
                .unwrap_or("")
                .trim()
                .to_owned()
        };
        let pointer = format!("/tools/{}", escape(&name));
        hide.retain(|h| h.as_str() != Some(name.as_str()));
        tools.remove(&name);
        match get("mode").as_str() {
            "default" | "" => {}
            "hide" => hide.push(json!(name)),
            "deny" => {
                tools.insert(
                    name.clone(),
                    json!({ "deny_if": [{ "conditions": [], "on_deny": format!("{name} is not allowed by policy.") }] }),
                );
            }
            "allow" => {
                let mut rule = Map::new();
                let max = get("max");
                if !max.is_empty() {
                    match max.parse::<u64>() {
                        Ok(max) if max > 0 => {
                            let window = match get("window") {
                                w if w.is_empty() => "minute".to_owned(),
                                w => w,
                            };
                            rule.insert(
                                "limits".into(),
                                json!([{ "counter": counter_for(&name), "window": window, "max": max, "scope": "grant" }]),
                            );
                        }
                        _ => errors.push(FieldError::new(
                            format!("{pointer}/limits/0/max"),
                            "the limit must be a whole number above 0",
                        )),
                    }
                }
                if field(form, &format!("tool.{i}.confirm")).is_some() {
                    rule.insert("confirm".into(), json!({}));
                }
                if field(form, &format!("tool.{i}.approval")).is_some() {
                    rule.insert("approval".into(), json!({}));
                }
                let path = get("cond_path");
                if !path.is_empty() {
                    let op = match get("cond_op") {
                        o if o.is_empty() => "eq".to_owned(),
                        o => o,
                    };
                    let raw = get("cond_value");
                    let value = if op == "exists" && raw.is_empty() {
                        json!(true)
                    } else {
                        serde_json::from_str::<Value>(&raw)
                            .ok()
                            .filter(|v| !v.is_string() || raw.starts_with('"'))
                            .unwrap_or(Value::String(raw))
                    };
                    rule.insert(
                        "require".into(),
                        json!([{ "path": path, "op": op, "value": value }]),
                    );
                }
                tools.insert(name.clone(), Value::Object(rule));
            }
            "custom" => match portcullis_policy::json_text::parse(&get("custom")) {
                Ok(rule) => {
                    tools.insert(name.clone(), rule);
                }
                Err(e) => errors.push(FieldError::new(
                    format!("{pointer}{}", e.pointer),
                    format!("the custom rule: {}", e.message),
                )),
            },
            other => errors.push(FieldError::new(
                pointer,
                format!("unknown choice {other:?}"),
            )),
        }
    }
    if hide.is_empty() {
        document.remove("hide");
    } else {
        document.insert("hide".into(), Value::Array(hide));
    }
    document.insert("tools".into(), Value::Object(tools));
    if errors.is_empty() {
        Ok(Value::Object(document))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rows_round_trip_through_the_form() {
        let base = json!({
            "version": "1",
            "default": "deny",
            "categories": { "financial": { "approval": {} } },
            "hide": ["drop_db"],
            "tools": {
                "read": {},
                "send": { "limits": [{ "counter": "send_calls", "window": "minute", "max": 30, "scope": "grant" }] },
                "weird": { "validate": true },
                "nope": { "deny_if": [{ "conditions": [] }] },
                "sms": { "confirm": {}, "approval": {} },
                "asked": { "confirm": { "message": "Send to {args.to}?" } }
            }
        });
        let rows = rows(&base, &[]);
        let mode = |n: &str| rows.iter().find(|r| r.name == n).unwrap().mode.clone();
        assert_eq!(mode("read"), "allow");
        assert_eq!(mode("send"), "allow");
        assert_eq!(mode("weird"), "custom");
        assert_eq!(mode("nope"), "deny");
        assert_eq!(mode("drop_db"), "hide");
        assert_eq!(rows.iter().find(|r| r.name == "send").unwrap().max, "30");
        let sms = rows.iter().find(|r| r.name == "sms").unwrap();
        assert_eq!(
            (sms.mode.as_str(), sms.confirm, sms.approval),
            ("allow", true, true)
        );
        // A question of its own stays in Custom, where the builder cannot lose it.
        assert_eq!(mode("asked"), "custom");

        let built = build(
            &base,
            &form(&[
                ("default", "deny"),
                ("mode", "monitor"),
                ("tool.0.name", "send"),
                ("tool.0.mode", "allow"),
                ("tool.0.max", "5"),
                ("tool.0.window", "hour"),
                ("tool.0.confirm", "on"),
                ("tool.0.approval", "on"),
                ("tool.0.cond_path", "args.to"),
                ("tool.0.cond_op", "regex"),
                ("tool.0.cond_value", "^\\+44"),
                ("tool.1.name", "drop_db"),
                ("tool.1.mode", "default"),
            ]),
        )
        .unwrap();
        assert_eq!(built["mode"], "monitor");
        assert_eq!(built["categories"]["financial"], json!({ "approval": {} }));
        assert!(built.get("hide").is_none());
        assert_eq!(built["tools"]["send"]["limits"][0]["max"], 5);
        assert_eq!(built["tools"]["send"]["limits"][0]["window"], "hour");
        assert_eq!(built["tools"]["send"]["require"][0]["value"], "^\\+44");
        assert_eq!(built["tools"]["send"]["confirm"], json!({}));
        assert_eq!(built["tools"]["send"]["approval"], json!({}));
        assert_eq!(
            built["tools"]["asked"],
            json!({ "confirm": { "message": "Send to {args.to}?" } })
        );
        assert_eq!(built["tools"]["weird"], json!({ "validate": true }));
        crate::policies::validate(&built).unwrap();

        let bad = build(
            &base,
            &form(&[
                ("tool.0.name", "send"),
                ("tool.0.mode", "allow"),
                ("tool.0.max", "x"),
            ]),
        )
        .unwrap_err();
        assert_eq!(bad[0].pointer, "/tools/send/limits/0/max");
    }
}
