//! What a tool page advises: how to rate-limit, block or require approval for the tool (with
//! the exact `policy.json` for it), the attack patterns its category and signals invite, and
//! where each signal of its classification came from. Pure: built from the tool alone.

use portcullis_policy::RiskCategory;
use serde::Serialize;
use serde_json::{Value, json};

/// Where `docs/security.md` describes each attack (anchors of its headings).
const SECURITY_DOC: &str = "docs/security.md";

/// One signal of the classification, split into what it says and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Signal {
    /// The signal as stored: `"Accepts URL/endpoint input (media[].url)"`.
    pub text: String,
    /// What it says: `"Accepts URL/endpoint input"`.
    pub what: String,
    /// Where it was read: the argument paths, `name`, `description` or an annotation's name.
    pub source: String,
    /// `name`, `description`, `argument` or `annotation`.
    pub kind: &'static str,
}

/// Splits a stored signal (`"<what> (<source>)"`) and says which part of the definition it came from.
pub fn signal(text: &str) -> Signal {
    let (what, source) = match text.strip_suffix(')').and_then(|t| t.rsplit_once(" (")) {
        Some((what, source)) => (what.to_owned(), source.to_owned()),
        None => (text.to_owned(), String::new()),
    };
    let kind = match source.as_str() {
        "name" => "name",
        "description" => "description",
        s if s.ends_with("Hint") => "annotation",
        "" => "name",
        _ => "argument",
    };
    Signal {
        text: text.to_owned(),
        what,
        source,
        kind,
    }
}

/// One way to govern the tool, with the policy fragment that does it.
#[derive(Debug, Clone, Serialize)]
pub struct Advice {
    /// `confirm`, `rate_limit`, `block` or `approval`.
    pub action: &'static str,
    /// What to do and why, for this tool's category.
    pub text: String,
    /// The `policy.json` fragment for this tool.
    pub json: Value,
}

/// Rate limit, block and approval advice for a tool of `category` named `name`, led by asking
/// the agent's user to confirm for a financial tool, and for a write tool that says it reaches
/// outside its own system (`open_world`).
pub fn advice(name: &str, category: RiskCategory, open_world: bool, counter: &str) -> Vec<Advice> {
    let (per_minute, limit_text) = match category {
        RiskCategory::Read => (
            120,
            "Reads are cheap to allow; a generous per-grant limit still stops an agent that loops.",
        ),
        RiskCategory::Write => (
            30,
            "Cap writes per grant so a prompt-injected agent cannot rewrite data in bulk.",
        ),
        RiskCategory::Execute => (
            10,
            "Cap runs per grant: each call starts work on the upstream.",
        ),
        RiskCategory::Financial => (
            5,
            "Cap calls per identity; add a `cost` argument to the limit to budget the amount spent, not just the calls.",
        ),
        RiskCategory::Destructive => (
            2,
            "If you allow it at all, allow very few calls per identity.",
        ),
        RiskCategory::Other => (
            10,
            "Nothing in its definition says what it does: start low.",
        ),
    };
    let scope = match category {
        RiskCategory::Financial | RiskCategory::Destructive => "identity",
        _ => "grant",
    };
    let block_text = match category {
        RiskCategory::Destructive => {
            "Hide it: agents never see it in tools/list and a call answers as an unknown tool."
        }
        _ => "Hide it if no agent needs it; deny it (with a message) if agents should learn why.",
    };
    let approval_text = match category {
        RiskCategory::Financial => {
            "Hold every call for a person, or only above an amount (`when`)."
        }
        RiskCategory::Destructive | RiskCategory::Execute => {
            "Hold each call until a person approves these exact arguments; the approved call passes once."
        }
        _ => "Approval suits rare, consequential calls; for routine ones a limit is kinder.",
    };
    let mut advice = Vec::with_capacity(4);
    if let Some(text) = confirm_text(category, open_world) {
        advice.push(Advice {
            action: "confirm",
            text: text.to_owned(),
            json: json!({ "tools": { name: { "confirm": {
                "message": format!("Allow {name} with these arguments?"),
                "timeout": "2m"
            } } } }),
        });
    }
    advice.extend([
        Advice {
            action: "rate_limit",
            text: limit_text.to_owned(),
            json: json!({ "tools": { name: { "limits": [
                { "counter": counter, "window": "minute", "max": per_minute, "scope": scope }
            ] } } }),
        },
        Advice {
            action: "block",
            text: block_text.to_owned(),
            json: json!({ "hide": [name] }),
        },
        Advice {
            action: "approval",
            text: approval_text.to_owned(),
            json: json!({ "tools": { name: { "approval": { "timeout": "30m" } } } }),
        },
    ]);
    advice
}

/// Why to ask the agent's user before each call, for the tools where that is advised.
fn confirm_text(category: RiskCategory, open_world: bool) -> Option<&'static str> {
    match category {
        RiskCategory::Financial => Some(
            "Ask the person driving the agent to confirm each charge in their MCP client, shown the exact arguments; add approval as well if someone else must sign off.",
        ),
        RiskCategory::Write if open_world => Some(
            "It writes to systems outside the server: ask the person driving the agent to confirm each call in their MCP client, so a prompt-injected agent cannot send on their behalf unseen.",
        ),
        _ => None,
    }
}

/// An attack pattern that applies to the tool.
#[derive(Debug, Clone, Serialize)]
pub struct Attack {
    /// Its name.
    pub name: &'static str,
    /// Why it applies to this tool.
    pub why: String,
    /// The policy field (or setting) that stops it.
    pub stopped_by: &'static str,
    /// Its entry in `docs/security.md`.
    pub doc: String,
}

fn attack(name: &'static str, why: String, stopped_by: &'static str, anchor: &str) -> Attack {
    Attack {
        name,
        why,
        stopped_by,
        doc: format!("{SECURITY_DOC}#{anchor}"),
    }
}

/// The attack patterns that apply to a tool of `category` with these signals.
pub fn attacks(category: RiskCategory, signals: &[Signal]) -> Vec<Attack> {
    let has = |what: &str| signals.iter().find(|s| s.what.starts_with(what));
    let mut out = vec![
        attack(
            "Tool poisoning",
            "Its description and annotations are text from the upstream that the model reads as instructions.".into(),
            "hide (until you have read the definition)",
            "tool-poisoning",
        ),
        attack(
            "Rug pull",
            "The upstream can change this definition after you approved it.".into(),
            "server setting block_changed_tools (re-approve changed definitions)",
            "rug-pulls",
        ),
    ];
    if let Some(s) = has("Accepts URL/endpoint input") {
        out.push(attack(
            "Data exfiltration through URL arguments",
            format!(
                "An injected prompt can put data into {} and send it anywhere.",
                s.source
            ),
            "require (a regex allow-list on the URL argument)",
            "exfiltration-through-arguments",
        ));
        out.push(attack(
            "SSRF through URL arguments",
            format!("{} can point the upstream at internal addresses.", s.source),
            "require (a regex allow-list on the URL argument)",
            "ssrf-through-upstream-urls",
        ));
    }
    if let Some(s) = has("Accepts credentials or secrets") {
        out.push(attack(
            "Credential theft and replay",
            format!(
                "{} carries secrets that could be captured or replayed.",
                s.source
            ),
            "audit.arguments: keys (never store values); deny_if on the argument",
            "token-theft-and-replay",
        ));
    }
    match category {
        RiskCategory::Write => out.push(attack(
            "Prompt-injected bulk writes",
            "An agent steered by injected text can change many records quickly, as the user it acts for.".into(),
            "limits",
            "confused-deputy",
        )),
        RiskCategory::Destructive => out.push(attack(
            "Destructive calls",
            "One injected call deletes data with the agent's authority.".into(),
            "hide, or approval",
            "confused-deputy",
        )),
        RiskCategory::Execute => {
            out.push(attack(
                "Confused deputy",
                "It runs work with the upstream's authority on the agent's say-so.".into(),
                "approval, or limits",
                "confused-deputy",
            ));
            out.push(attack(
                "Denial of wallet",
                "Each run costs compute; a looping agent runs up the bill.".into(),
                "limits",
                "denial-of-wallet",
            ));
        }
        RiskCategory::Financial => out.push(attack(
            "Denial of wallet",
            "Every call spends money; a looping or injected agent spends it fast.".into(),
            "approval, and limits with cost",
            "denial-of-wallet",
        )),
        RiskCategory::Read | RiskCategory::Other => {}
    }
    if category != RiskCategory::Financial
        && let Some(s) = has("Accepts a monetary amount")
    {
        out.push(attack(
            "Denial of wallet",
            format!("{} takes an amount an agent can inflate.", s.source),
            "limits with cost",
            "denial-of-wallet",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_name_their_source() {
        let s = signal("Accepts URL/endpoint input (media[].url, callback)");
        assert_eq!(
            (s.what.as_str(), s.source.as_str(), s.kind),
            (
                "Accepts URL/endpoint input",
                "media[].url, callback",
                "argument"
            )
        );
        assert_eq!(
            signal("Declared destructive (destructiveHint)").kind,
            "annotation"
        );
        assert_eq!(signal("Reads data: \"list\" (name)").kind, "name");
        assert_eq!(
            signal("Purchases or charges: \"buy\" (description)").kind,
            "description"
        );
    }

    #[test]
    fn confirmation_is_advised_for_financial_and_open_world_write_tools() {
        let leads = |category, open_world| {
            advice("send", category, open_world, "send_calls")
                .first()
                .map(|a| a.action)
        };
        assert_eq!(leads(RiskCategory::Financial, false), Some("confirm"));
        assert_eq!(leads(RiskCategory::Write, true), Some("confirm"));
        assert_eq!(leads(RiskCategory::Write, false), Some("rate_limit"));
        assert_eq!(leads(RiskCategory::Read, true), Some("rate_limit"));
        let confirm = &advice("send", RiskCategory::Financial, false, "c")[0];
        let policy = json!({ "version": "1", "tools": confirm.json["tools"] });
        portcullis_policy::CompiledPolicy::from_json(&policy).unwrap();
    }

    #[test]
    fn attacks_follow_category_and_signals() {
        let signals = vec![signal("Accepts URL/endpoint input (StatusCallback)")];
        let names: Vec<&str> = attacks(RiskCategory::Financial, &signals)
            .iter()
            .map(|a| a.name)
            .collect();
        assert!(names.contains(&"Denial of wallet"));
        assert!(names.contains(&"Data exfiltration through URL arguments"));
        let read = attacks(RiskCategory::Read, &[]);
        assert_eq!(read.len(), 2);
        assert!(read.iter().all(|a| a.doc.starts_with("docs/security.md#")));
    }
}
