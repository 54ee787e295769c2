//! One page per discovered tool (`/servers/{id}/tools/{name}`, and its JSON twin
//! `/api/v1/servers/{id}/tools/{name}`): its risk and the signals behind it, its definition's
//! status and history, what each policy of the server does with it, the recommended rule (and
//! the action that adds it to a policy as a new version, shown as a diff first), guidance, the
//! attack patterns it invites, and its usage from the audit log.
//!
//! Descriptions, titles and annotations come from the upstream: they are shown as text (askama
//! escapes them) and never trusted.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use portcullis_core::{PolicyId, ServerId, TenantId};
use portcullis_policy::{RiskCategory, add_recommended_rule, recommend_rule};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::governance::{Policies, PolicyEffect};
use super::guidance::{self, Advice, Attack, Signal};
use super::usage::{self, Usage};
use super::{COLUMNS, Tool};
use crate::AppState;
use crate::auth::{Manager, Tenant};
use crate::dashboard::{Layout, see_other_with, when};
use crate::error::{Error, Result};
use crate::input::{self, FormBody, QueryParams};
use crate::policies::{self, diff};
use crate::servers::{self, Server};

/// The state of a tool's definition.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `approved`, `changed` (since approval), `new` (never approved) or `removed`.
    pub state: &'static str,
    /// Whether the gateway refuses its calls until the definition is approved.
    pub blocked: bool,
    /// One sentence for people.
    pub text: String,
}

/// One definition the tool has had.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DefinitionVersion {
    /// SHA-256 of the canonical definition.
    pub definition_hash: String,
    /// First discovered.
    pub first_seen_at: DateTime<Utc>,
    /// Last discovered.
    pub last_seen_at: DateTime<Utc>,
    /// Whether this is the approved definition.
    #[sqlx(default)]
    pub approved: bool,
    /// Whether this is the current definition.
    #[sqlx(default)]
    pub current: bool,
}

/// Everything a tool page shows; the API answers it as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The server's id.
    pub server_id: Uuid,
    /// The server's name.
    pub server_name: String,
    /// The tool's name.
    pub name: String,
    /// Its title (upstream text).
    pub title: Option<String>,
    /// Its description (upstream text).
    pub description: Option<String>,
    /// Its annotations: the upstream's claims, not facts.
    pub annotations: Value,
    /// Its input schema.
    pub input_schema: Value,
    /// Category, level and signals with their sources.
    pub risk: Risk,
    /// The definition's status.
    pub status: Status,
    /// The current definition's hash.
    pub definition_hash: String,
    /// The approved definition's hash.
    pub approved_hash: Option<String>,
    /// Every definition seen, newest first.
    pub history: Vec<DefinitionVersion>,
    /// The line diff from the approved definition to the current one, when they differ and
    /// the approved one is known.
    pub definition_diff: Option<Vec<diff::Line>>,
    /// What each policy of the server does with the tool.
    pub policies: Vec<PolicyEffect>,
    /// Whether every policy of the server governs the tool.
    pub governed: bool,
    /// The recommended rule as a `policy.json` fragment (`None`: nothing is recommended).
    pub recommended: Option<Value>,
    /// How to rate-limit, block or require approval for it.
    pub guidance: Vec<Advice>,
    /// The attack patterns that apply.
    pub attacks: Vec<Attack>,
    /// Its last 24 hours and 7 days.
    pub usage: Usage,
}

/// A tool's risk with its signals split by source.
#[derive(Debug, Clone, Serialize)]
pub struct Risk {
    /// Category.
    pub category: String,
    /// Level.
    pub level: String,
    /// Signals.
    pub signals: Vec<Signal>,
}

/// Finds one tool of a server of the tenant (404 when either is not the tenant's).
pub async fn find(
    db: &sqlx::PgPool,
    tenant: TenantId,
    server: ServerId,
    name: &str,
) -> Result<Tool> {
    Ok(sqlx::query_as(crate::sql(format!(
        "SELECT {COLUMNS} FROM tools WHERE tenant_id = $1 AND server_id = $2 AND name = $3"
    )))
    .bind(tenant.0)
    .bind(server.0)
    .bind(name)
    .fetch_one(db)
    .await?)
}

/// The definition status of `tool` on `server`.
pub fn status(tool: &Tool, server: &Server) -> Status {
    definition_status(
        &tool.status,
        tool.approved_hash.is_some(),
        server.block_changed_tools,
    )
}

/// The definition status of a tool in stored `state` (`active`, `changed`, `removed`), ever
/// approved or not, on a server that does or does not block changed tools (as the gateway does:
/// `crates/gateway/src/catalogue.rs`).
pub fn definition_status(state: &str, ever_approved: bool, blocks_changed: bool) -> Status {
    let hold = |what: &str| {
        if blocks_changed {
            format!(
                "{what} Blocked: the gateway refuses its calls until a policy manager approves this definition."
            )
        } else {
            format!("{what} Flagged only: this server does not block changed tools.")
        }
    };
    match state {
        "removed" => Status {
            state: "removed",
            blocked: false,
            text: "No longer offered by the server.".into(),
        },
        "changed" if !ever_approved => Status {
            state: "new",
            blocked: blocks_changed,
            text: hold("New since the first discovery: nobody has approved it yet."),
        },
        "changed" => Status {
            state: "changed",
            blocked: blocks_changed,
            text: hold("The definition changed since it was approved."),
        },
        _ => Status {
            state: "approved",
            blocked: false,
            text: "The current definition is the approved one.".into(),
        },
    }
}

/// Builds the report of one tool.
pub async fn report(
    state: &AppState,
    tenant: TenantId,
    server: ServerId,
    name: &str,
) -> Result<Report> {
    let db = state.db();
    let record = servers::find(db, tenant, server).await?;
    let tool = find(db, tenant, server, name).await?;
    let mut history: Vec<DefinitionVersion> = sqlx::query_as(
        "SELECT definition_hash, first_seen_at, last_seen_at FROM tool_definitions
          WHERE tenant_id = $1 AND server_id = $2 AND name = $3
          ORDER BY last_seen_at DESC, first_seen_at DESC LIMIT 50",
    )
    .bind(tenant.0)
    .bind(server.0)
    .bind(name)
    .fetch_all(db)
    .await?;
    for h in &mut history {
        h.current = h.definition_hash == tool.definition_hash;
        h.approved = tool.approved_hash.as_deref() == Some(h.definition_hash.as_str());
    }
    let definition_diff = match &tool.approved_hash {
        Some(approved) if *approved != tool.definition_hash => {
            let old: Option<Value> = sqlx::query_scalar(
                "SELECT definition FROM tool_definitions
                  WHERE tenant_id = $1 AND server_id = $2 AND name = $3 AND definition_hash = $4",
            )
            .bind(tenant.0)
            .bind(server.0)
            .bind(name)
            .bind(approved)
            .fetch_optional(db)
            .await?;
            old.map(|old| diff::lines(&policies::pretty(&old), &policies::pretty(&tool.definition)))
        }
        _ => None,
    };
    let category = RiskCategory::from_name(&tool.risk_category);
    let effects = Policies::load(db, tenant, Some(server))
        .await?
        .effects(record.id, &tool.name, category);
    let signals: Vec<String> =
        serde_json::from_value(tool.risk_signals.clone()).unwrap_or_default();
    let signals: Vec<Signal> = signals.iter().map(|s| guidance::signal(s)).collect();
    let typed = tool.typed();
    let recommended = recommend_rule(&typed);
    let counter = recommended
        .as_ref()
        .and_then(|r| r.pointer(&format!("/tools/{}/limits/0/counter", escape(&tool.name))))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| counter_for(&tool.name));
    let category = category.unwrap_or(RiskCategory::Other);
    let usage = usage::usage(db, tenant, server, &tool.name).await?;
    Ok(Report {
        server_id: record.id,
        server_name: record.name.clone(),
        status: status(&tool, &record),
        title: typed.title.clone(),
        description: typed.description.clone(),
        annotations: tool
            .definition
            .get("annotations")
            .cloned()
            .unwrap_or(Value::Null),
        input_schema: tool
            .definition
            .get("inputSchema")
            .cloned()
            .unwrap_or(Value::Null),
        risk: Risk {
            category: tool.risk_category.clone(),
            level: tool.risk_level.clone(),
            signals: signals.clone(),
        },
        definition_hash: tool.definition_hash.clone(),
        approved_hash: tool.approved_hash.clone(),
        history,
        definition_diff,
        governed: effects.iter().all(|e| e.governed),
        policies: effects,
        recommended,
        guidance: guidance::advice(
            &tool.name,
            category,
            typed
                .annotations
                .is_some_and(|a| a.open_world_hint == Some(true)),
            &counter,
        ),
        attacks: guidance::attacks(category, &signals),
        usage,
        name: tool.name,
    })
}

/// A JSON pointer token (`~` and `/` escaped).
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// A counter name for a tool: its name within the counter alphabet.
fn counter_for(name: &str) -> String {
    let counter: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    if counter.is_empty() {
        "tool".into()
    } else {
        counter
    }
}

// ---- API ----

pub(super) async fn api_tool(
    State(state): State<AppState>,
    tenant: Tenant,
    Path((id, name)): Path<(String, String)>,
) -> Result<axum::Json<Report>> {
    let server: ServerId = input::id(&id)?;
    Ok(axum::Json(report(&state, tenant.id, server, &name).await?))
}

// ---- Pages ----

/// Advice with its JSON as text.
struct AdviceView {
    advice: Advice,
    json: String,
    id: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "tool.html")]
struct ToolPage {
    layout: Layout,
    r: Report,
    annotations: Vec<(String, String)>,
    schema: String,
    recommended: String,
    advice: Vec<AdviceView>,
    history: Vec<(String, String, String, bool, bool)>,
    audit_base: String,
    /// Each top identity with its link into the audit log (this tool, this identity, 7 days).
    callers: Vec<(usage::Caller, String)>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct NoticeQuery {
    notice: Option<String>,
}

pub(super) async fn tool_page(
    State(state): State<AppState>,
    tenant: Tenant,
    Path((id, name)): Path<(String, String)>,
    QueryParams(q): QueryParams<NoticeQuery>,
) -> Result<Response> {
    let server: ServerId = input::id(&id)?;
    let r = report(&state, tenant.id, server, &name).await?;
    let annotations = match &r.annotations {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        _ => Vec::new(),
    };
    let advice = r
        .guidance
        .iter()
        .map(|a| AdviceView {
            json: policies::pretty(&a.json),
            id: format!("advice-{}", a.action),
            advice: a.clone(),
        })
        .collect();
    let history = r
        .history
        .iter()
        .map(|h| {
            (
                h.definition_hash.clone(),
                when(&h.first_seen_at),
                when(&h.last_seen_at),
                h.approved,
                h.current,
            )
        })
        .collect();
    let audit = |extra: &[(&str, &str)]| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("server_id", &r.server_id.to_string())
            .append_pair("tool", &r.name);
        for (k, v) in extra {
            query.append_pair(k, v);
        }
        format!("/audit?{}", query.finish())
    };
    let since = r.usage.since.format("%Y-%m-%dT%H:%M").to_string();
    let callers = r
        .usage
        .top_identities
        .iter()
        .map(|c| {
            let href = audit(&[("identity", &c.identity), ("since", &since)]);
            (c.clone(), href)
        })
        .collect();
    let page = ToolPage {
        layout: Layout::new(&tenant, format!("Tool {}", r.name), "tools").with_notice(q.notice),
        annotations,
        schema: policies::pretty(&r.input_schema),
        recommended: r
            .recommended
            .as_ref()
            .map(policies::pretty)
            .unwrap_or_default(),
        advice,
        history,
        audit_base: audit(&[]),
        callers,
        r,
    };
    Ok(page.into_response())
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct AddRuleQuery {
    #[serde(default)]
    policy_id: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "tool_add_rule.html")]
pub(super) struct AddRulePage {
    layout: Layout,
    server_id: String,
    name: String,
    policy_id: String,
    policy_name: String,
    version: i32,
    lines: Vec<diff::Line>,
    changed: usize,
}

/// The policy (of this server) a rule is added to, its current document, and that document
/// with the tool's recommended rule added.
async fn merged(
    state: &AppState,
    tenant: TenantId,
    server: ServerId,
    name: &str,
    policy: &str,
) -> Result<(policies::Policy, Value, Value)> {
    let tool = find(state.db(), tenant, server, name).await?;
    let policy_id: PolicyId =
        input::id(policy).map_err(|_| Error::field("/policy_id", "choose a policy"))?;
    let policy = policies::find(state.db(), tenant, policy_id).await?;
    if policy.server_id != server.0 {
        return Err(Error::field(
            "/policy_id",
            "that policy belongs to another server",
        ));
    }
    let current = policies::version(state.db(), tenant, policy_id, policy.current_version).await?;
    let document = add_recommended_rule(&current.document, &tool.typed()).ok_or_else(|| {
        Error::field(
            "/policy_id",
            "nothing is recommended for this tool: default deny refuses it until you write a rule",
        )
    })?;
    Ok((policy, current.document, document))
}

pub(super) async fn add_rule_preview(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path((id, name)): Path<(String, String)>,
    QueryParams(q): QueryParams<AddRuleQuery>,
) -> Result<AddRulePage> {
    let server: ServerId = input::id(&id)?;
    servers::find(state.db(), tenant.id, server).await?;
    let (policy, before, after) = merged(&state, tenant.id, server, &name, &q.policy_id).await?;
    let lines = diff::lines(&policies::pretty(&before), &policies::pretty(&after));
    Ok(AddRulePage {
        layout: Layout::new(&tenant, format!("Add the rule for {name}"), "tools"),
        server_id: server.to_string(),
        policy_id: policy.id.to_string(),
        policy_name: policy.name,
        version: policy.current_version,
        changed: lines.iter().filter(|l| l.op != " ").count(),
        lines,
        name,
    })
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct AddRuleForm {
    #[serde(default)]
    policy_id: String,
    #[serde(default)]
    base_version: String,
}

pub(super) async fn add_rule_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path((id, name)): Path<(String, String)>,
    FormBody(form): FormBody<AddRuleForm>,
) -> Result<Response> {
    let server: ServerId = input::id(&id)?;
    servers::find(state.db(), tenant.id, server).await?;
    let (policy, before, after) = merged(&state, tenant.id, server, &name, &form.policy_id).await?;
    let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
    let preview = format!(
        "/servers/{server}/tools/{encoded}/add-rule?policy_id={}",
        policy.id
    );
    // The diff the person saw was against `base_version`; a policy saved since then is shown again.
    if form.base_version.parse::<i32>().ok() != Some(policy.current_version) {
        return Ok(see_other_with(
            &preview,
            "The policy changed since the preview: review the diff again.",
        ));
    }
    if before == after {
        return Ok(see_other_with(
            &format!("/policies/{}", policy.id),
            "The policy already has this rule: nothing to save.",
        ));
    }
    let saved = policies::update(&state, &tenant, PolicyId(policy.id), &after, None).await?;
    Ok(see_other_with(
        &format!(
            "/policies/{}/diff?from={}&to={}",
            policy.id, policy.current_version, saved.current_version
        ),
        &format!(
            "Saved as version {}: added the recommended rule for {name}.",
            saved.current_version
        ),
    ))
}
