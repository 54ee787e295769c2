//! Discovered tools: definitions, hashes, classification, and change detection.
//!
//! A tool's `definition_hash` is the SHA-256 of its canonical definition; `approved_hash` is the
//! hash a person last accepted. On the first discovery of a server every tool is accepted as
//! found. Later discoveries mark a tool `changed` when its definition differs from the approved
//! one (a "rug pull"), mark new tools `changed` too (nobody reviewed them yet), and mark tools
//! that vanished `removed`. Approving sets `approved_hash` to the current hash. The gateway can
//! block `changed` tools while the server's `block_changed_tools` is on.

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use portcullis_core::{Invalidation, ServerId, TenantId};
use portcullis_policy::{ToolDefinition, classify};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::admin_audit;
use crate::auth::{Manager, Tenant};
use crate::dashboard::see_other_with;
use crate::discovery::ServerInfo;
use crate::error::{Error, Result};
use crate::input;
use crate::servers::{self, Server};

mod catalogue;
mod governance;
mod guidance;
mod page;
mod usage;

/// A stored tool.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Tool {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The definition as the upstream listed it.
    pub definition: Value,
    /// SHA-256 of the canonical definition.
    pub definition_hash: String,
    /// The hash last approved.
    pub approved_hash: Option<String>,
    /// Risk category.
    pub risk_category: String,
    /// Risk level.
    pub risk_level: String,
    /// Evidence.
    pub risk_signals: Value,
    /// `active`, `changed` or `removed`.
    pub status: String,
    /// First seen.
    pub first_seen_at: DateTime<Utc>,
    /// Last seen.
    pub last_seen_at: DateTime<Utc>,
}

impl Tool {
    /// The definition, typed for the policy crate.
    pub fn typed(&self) -> ToolDefinition {
        serde_json::from_value(self.definition.clone()).unwrap_or_else(|_| ToolDefinition {
            name: self.name.clone(),
            ..ToolDefinition::default()
        })
    }

    /// The API shape: DESIGN §7's `{name, description, risk}` and more.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "title": self.definition.get("title"),
            "description": self.definition.get("description").and_then(Value::as_str),
            "risk": {
                "category": self.risk_category,
                "level": self.risk_level,
                "signals": self.risk_signals,
            },
            "status": self.status,
            "definition_hash": self.definition_hash,
            "approved_hash": self.approved_hash,
            "annotations": self.definition.get("annotations"),
            "input_schema": self.definition.get("inputSchema"),
            "first_seen_at": self.first_seen_at,
            "last_seen_at": self.last_seen_at,
        })
    }
}

const COLUMNS: &str = "id, name, definition, definition_hash, approved_hash, risk_category, risk_level, risk_signals, status, first_seen_at, last_seen_at";

/// Every tool of a server (removed ones included), by name.
pub async fn list(db: &sqlx::PgPool, tenant: TenantId, server: ServerId) -> Result<Vec<Tool>> {
    Ok(sqlx::query_as(crate::sql(format!(
        "SELECT {COLUMNS} FROM tools WHERE tenant_id = $1 AND server_id = $2 ORDER BY name"
    )))
    .bind(tenant.0)
    .bind(server.0)
    .fetch_all(db)
    .await?)
}

/// What a discovery found, and what changed since the last one.
#[derive(Debug, Default)]
pub struct Discovery {
    /// What the upstream said about itself.
    pub server_info: Option<ServerInfo>,
    /// Current tools (active and changed).
    pub tools: Vec<Tool>,
    /// Tools that vanished.
    pub removed: Vec<Tool>,
    /// Names new since the last discovery.
    pub added_names: Vec<String>,
    /// Names whose definition differs from the approved one.
    pub changed_names: Vec<String>,
    /// Names that vanished in this discovery.
    pub removed_names: Vec<String>,
}

impl Discovery {
    /// The API answer.
    pub fn to_json(&self) -> Value {
        json!({
            "tools": self.tools.iter().map(Tool::to_json).collect::<Vec<_>>(),
            "removed": self.removed.iter().map(Tool::to_json).collect::<Vec<_>>(),
            "changes": {
                "added": self.added_names,
                "changed": self.changed_names,
                "removed": self.removed_names,
            },
            "server_info": self.server_info,
        })
    }

    /// One line for the dashboard.
    pub fn summary(&self) -> String {
        let mut text = format!("Discovered {} tools.", self.tools.len());
        if !self.added_names.is_empty() {
            text.push_str(&format!(" New: {}.", self.added_names.join(", ")));
        }
        if !self.changed_names.is_empty() {
            text.push_str(&format!(
                " Changed since approval: {}.",
                self.changed_names.join(", ")
            ));
        }
        if !self.removed_names.is_empty() {
            text.push_str(&format!(" Gone: {}.", self.removed_names.join(", ")));
        }
        text
    }
}

/// Stores a discovery's tools: classifies each, and marks new, changed and vanished tools.
pub async fn apply_discovery(
    state: &AppState,
    who: &Tenant,
    server: &Server,
    listed: Vec<Value>,
) -> Result<Discovery> {
    let tenant = who.id;
    let server_id = server.server_id();
    let first = server.last_discovered_at.is_none();
    let existing: BTreeMap<String, Tool> = list(state.db(), tenant, server_id)
        .await?
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut seen = BTreeSet::new();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    let mut tx = state.db().begin().await?;
    for definition in listed {
        let typed: ToolDefinition = match serde_json::from_value(definition.clone()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "skipping a tool definition that does not parse");
                continue;
            }
        };
        if typed.name.is_empty() || typed.name.len() > 500 || !seen.insert(typed.name.clone()) {
            continue;
        }
        let hash = portcullis_core::canonical::digest(&definition);
        let risk = classify(&typed);
        let signals = json!(risk.signals);
        let (approved, status) = match existing.get(&typed.name) {
            None if first => (Some(hash.clone()), "active"),
            None => {
                added.push(typed.name.clone());
                (None, "changed")
            }
            Some(old) => {
                let approved = old.approved_hash.clone();
                if approved.as_deref() == Some(hash.as_str()) {
                    (approved, "active")
                } else {
                    changed.push(typed.name.clone());
                    (approved, "changed")
                }
            }
        };
        sqlx::query(
            "INSERT INTO tools (id, tenant_id, server_id, name, definition, definition_hash, approved_hash,
                                risk_category, risk_level, risk_signals, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (server_id, name) DO UPDATE SET
                definition = EXCLUDED.definition,
                definition_hash = EXCLUDED.definition_hash,
                approved_hash = EXCLUDED.approved_hash,
                risk_category = EXCLUDED.risk_category,
                risk_level = EXCLUDED.risk_level,
                risk_signals = EXCLUDED.risk_signals,
                status = EXCLUDED.status,
                last_seen_at = now()",
        )
        .bind(Uuid::now_v7())
        .bind(tenant.0)
        .bind(server_id.0)
        .bind(&typed.name)
        .bind(&definition)
        .bind(&hash)
        .bind(approved)
        .bind(risk.category.as_str())
        .bind(risk.level.as_str())
        .bind(signals)
        .bind(status)
        .execute(&mut *tx)
        .await?;
        // The history of definitions, so a changed tool can be shown against the approved one.
        sqlx::query(
            "INSERT INTO tool_definitions (tenant_id, server_id, name, definition_hash, definition)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, server_id, name, definition_hash) DO UPDATE SET last_seen_at = now()",
        )
        .bind(tenant.0)
        .bind(server_id.0)
        .bind(&typed.name)
        .bind(&hash)
        .bind(&definition)
        .execute(&mut *tx)
        .await?;
    }
    let vanished: Vec<String> = existing
        .values()
        .filter(|t| t.status != "removed" && !seen.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    sqlx::query(
        "UPDATE tools SET status = 'removed' WHERE tenant_id = $1 AND server_id = $2 AND name = ANY($3)",
    )
    .bind(tenant.0)
    .bind(server_id.0)
    .bind(&vanished)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE servers SET last_discovered_at = now() WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.0)
        .bind(server_id.0)
        .execute(&mut *tx)
        .await?;
    admin_audit::commit(
        tx,
        who,
        "server.discover",
        "server",
        &server_id.to_string(),
        None,
        Some(
            json!({ "tools": seen.len(), "added": added, "changed": changed, "removed": vanished }),
        ),
    )
    .await?;
    state
        .publish(Invalidation::Server {
            tenant_id: tenant,
            server_id,
        })
        .await;
    let all = list(state.db(), tenant, server_id).await?;
    let (removed, tools): (Vec<Tool>, Vec<Tool>) =
        all.into_iter().partition(|t| t.status == "removed");
    Ok(Discovery {
        server_info: None,
        tools,
        removed,
        added_names: added,
        changed_names: changed,
        removed_names: vanished,
    })
}

/// Accepts a tool's current definition.
pub async fn approve(state: &AppState, who: &Tenant, server: ServerId, name: &str) -> Result<Tool> {
    servers::find(state.db(), who.id, server).await?;
    let mut tx = state.db().begin().await?;
    let before: Tool = sqlx::query_as(crate::sql(format!(
        "SELECT {COLUMNS} FROM tools WHERE tenant_id = $1 AND server_id = $2 AND name = $3 FOR UPDATE"
    )))
    .bind(who.id.0)
    .bind(server.0)
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    if before.status == "removed" {
        return Err(Error::Conflict(
            "the tool is no longer offered by the server".into(),
        ));
    }
    let after: Tool = sqlx::query_as(crate::sql(format!(
        "UPDATE tools SET approved_hash = definition_hash, status = 'active'
          WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(before.id)
    .fetch_one(&mut *tx)
    .await?;
    admin_audit::commit(
        tx,
        who,
        "tool.approve",
        "tool",
        &format!("{server}/{name}"),
        Some(json!({ "approved_hash": before.approved_hash, "status": before.status })),
        Some(json!({ "approved_hash": after.approved_hash, "status": after.status, "definition": after.definition })),
    )
    .await?;
    state
        .publish(Invalidation::Server {
            tenant_id: who.id,
            server_id: server,
        })
        .await;
    Ok(after)
}

/// A tool as a table row.
#[derive(Debug, Clone)]
pub struct ToolRow {
    /// Name.
    pub name: String,
    /// Description (first 200 characters).
    pub description: String,
    /// Category.
    pub category: String,
    /// Level.
    pub level: String,
    /// Evidence.
    pub signals: Vec<String>,
    /// Status.
    pub status: String,
    /// Whether the approved hash differs.
    pub needs_review: bool,
    /// Short hash.
    pub hash: String,
}

impl From<Tool> for ToolRow {
    fn from(t: Tool) -> Self {
        let description: String = t
            .definition
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        Self {
            needs_review: t.status == "changed",
            hash: t.definition_hash.chars().take(12).collect(),
            signals: serde_json::from_value(t.risk_signals).unwrap_or_default(),
            name: t.name,
            description,
            category: t.risk_category,
            level: t.risk_level,
            status: t.status,
        }
    }
}

// ---- API ----

async fn api_tools(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    let id: ServerId = input::id(&id)?;
    servers::find(state.db(), tenant.id, id).await?;
    let (removed, tools): (Vec<Tool>, Vec<Tool>) = list(state.db(), tenant.id, id)
        .await?
        .into_iter()
        .partition(|t| t.status == "removed");
    Ok(axum::Json(json!({
        "tools": tools.iter().map(Tool::to_json).collect::<Vec<_>>(),
        "removed": removed.iter().map(Tool::to_json).collect::<Vec<_>>(),
    })))
}

async fn api_approve(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path((id, name)): Path<(String, String)>,
) -> Result<axum::Json<Value>> {
    let tool = approve(&state, &tenant, input::id(&id)?, &name).await?;
    Ok(axum::Json(tool.to_json()))
}

/// `?back=tool`: back to the tool's page rather than the server's.
#[derive(Debug, Default, serde::Deserialize)]
struct ApproveBack {
    #[serde(default)]
    back: String,
}

async fn approve_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path((id, name)): Path<(String, String)>,
    input::QueryParams(form): input::QueryParams<ApproveBack>,
) -> Result<Response> {
    let server: ServerId = input::id(&id)?;
    approve(&state, &tenant, server, &name).await?;
    let back = if form.back == "tool" {
        let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        format!("/servers/{server}/tools/{encoded}")
    } else {
        format!("/servers/{server}")
    };
    Ok(see_other_with(
        &back,
        &format!("Approved the current definition of {name}."),
    ))
}

/// `/api/v1/servers/{id}/tools…` and the catalogue `/api/v1/tools`.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tools", get(catalogue::api_catalogue))
        .route("/api/v1/servers/{id}/tools", get(api_tools))
        .route("/api/v1/servers/{id}/tools/{name}", get(page::api_tool))
        .route(
            "/api/v1/servers/{id}/tools/{name}/approve",
            post(api_approve),
        )
}

/// The tool pages, the catalogue, and the approve button.
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/tools", get(catalogue::catalogue_page))
        .route("/servers/{id}/tools/{name}", get(page::tool_page))
        .route(
            "/servers/{id}/tools/{name}/add-rule",
            get(page::add_rule_preview).post(page::add_rule_submit),
        )
        .route("/servers/{id}/tools/{name}/approve", post(approve_submit))
}
