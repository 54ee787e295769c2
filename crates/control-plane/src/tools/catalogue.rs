//! The tenant's catalogue: every tool of every server, with its risk, its definition status and
//! whether the server's policies govern it, sortable and filterable (`/tools`, and its JSON
//! twin `/api/v1/tools`), so a reviewer finds the risky, ungoverned tools first.
//!
//! One query for the tools, one for the current policies (each compiled once); the rest is
//! lookups in memory, so 300 tools cost two round trips and a few hundred microseconds of work.

use std::cmp::Ordering;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use portcullis_core::TenantId;
use portcullis_policy::RiskCategory;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::governance::Policies;
use super::page::definition_status;
use crate::AppState;
use crate::auth::Tenant;
use crate::dashboard::Layout;
use crate::error::{Error, Result};
use crate::input::QueryParams;
use crate::servers::{self, Server};

/// `?risk=&category=&status=&governed=&q=&sort=&dir=`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    /// Risk level: `low`, `medium`, `high`, `critical`.
    #[serde(default)]
    pub risk: String,
    /// Risk category.
    #[serde(default)]
    pub category: String,
    /// Definition status: `approved`, `changed`, `new`, `removed`.
    #[serde(default)]
    pub status: String,
    /// `no`: only tools some policy leaves ungoverned; `yes`: only governed ones.
    #[serde(default)]
    pub governed: String,
    /// A part of the name.
    #[serde(default)]
    pub q: String,
    /// `risk` (default), `name`, `server`, `category`, `status`, `governed`.
    #[serde(default)]
    pub sort: String,
    /// `desc` (default for risk) or `asc`.
    #[serde(default)]
    pub dir: String,
}

/// One tool of the catalogue.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Server id.
    pub server_id: Uuid,
    /// Server name.
    pub server_name: String,
    /// Tool name.
    pub name: String,
    /// Risk category.
    pub category: String,
    /// Risk level.
    pub level: String,
    /// The strongest signal.
    pub signal: String,
    /// `approved`, `changed`, `new`, `removed`.
    pub status: &'static str,
    /// Whether the gateway refuses its calls until it is approved.
    pub blocked: bool,
    /// Whether every policy of the server governs it.
    pub governed: bool,
    /// Policies that leave it ungoverned, with the rule that lets it through.
    pub ungoverned_by: Vec<String>,
    /// Whether the server has any policy (without one, every call is denied).
    pub has_policy: bool,
}

fn level_rank(level: &str) -> u8 {
    match level {
        "critical" => 4,
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        _ => 0,
    }
}

impl Filter {
    fn check(&self) -> Result<()> {
        let ok = |value: &str, allowed: &[&str], pointer: &str| {
            if value.is_empty() || allowed.contains(&value) {
                Ok(())
            } else {
                Err(Error::field(
                    pointer,
                    format!("use one of {}", allowed.join(", ")),
                ))
            }
        };
        ok(&self.risk, &["low", "medium", "high", "critical"], "/risk")?;
        ok(
            &self.category,
            &[
                "read",
                "write",
                "execute",
                "financial",
                "destructive",
                "other",
            ],
            "/category",
        )?;
        ok(
            &self.status,
            &["approved", "changed", "new", "removed"],
            "/status",
        )?;
        ok(&self.governed, &["yes", "no"], "/governed")?;
        ok(
            &self.sort,
            &["risk", "name", "server", "category", "status", "governed"],
            "/sort",
        )?;
        ok(&self.dir, &["asc", "desc"], "/dir")?;
        Ok(())
    }

    fn keeps(&self, e: &Entry) -> bool {
        (self.risk.is_empty() || e.level == self.risk)
            && (self.category.is_empty() || e.category == self.category)
            && (self.status.is_empty() || e.status == self.status)
            && match self.governed.as_str() {
                "yes" => e.governed,
                "no" => !e.governed,
                _ => true,
            }
            && (self.q.is_empty() || e.name.to_lowercase().contains(&self.q.to_lowercase()))
    }

    fn order(&self, a: &Entry, b: &Entry) -> Ordering {
        let by_risk = || {
            level_rank(&a.level)
                .cmp(&level_rank(&b.level))
                // Within a level, ungoverned first (when descending).
                .then(b.governed.cmp(&a.governed))
        };
        let primary = match self.sort.as_str() {
            "name" => a.name.cmp(&b.name),
            "server" => a.server_name.cmp(&b.server_name),
            "category" => a.category.cmp(&b.category),
            "status" => a.status.cmp(b.status),
            "governed" => b.governed.cmp(&a.governed),
            _ => by_risk(),
        };
        let descending = match self.dir.as_str() {
            "asc" => false,
            "desc" => true,
            _ => matches!(self.sort.as_str(), "" | "risk"),
        };
        let primary = if descending {
            primary.reverse()
        } else {
            primary
        };
        primary
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.server_name.cmp(&b.server_name))
    }
}

/// The tenant's catalogue, filtered and sorted.
pub async fn catalogue(db: &sqlx::PgPool, tenant: TenantId, filter: &Filter) -> Result<Vec<Entry>> {
    filter.check()?;
    let servers: Vec<Server> = servers::list(db, tenant).await?;
    let tools: Vec<(Uuid, String, String, String, serde_json::Value, String, bool)> =
        sqlx::query_as(
            "SELECT server_id, name, risk_category, risk_level, risk_signals, status, approved_hash IS NOT NULL
               FROM tools WHERE tenant_id = $1",
        )
        .bind(tenant.0)
        .fetch_all(db)
        .await?;
    let policies = Policies::load(db, tenant, None).await?;
    let mut entries = Vec::with_capacity(tools.len());
    for (server_id, name, category, level, signals, state, ever_approved) in tools {
        let Some(server) = servers.iter().find(|s| s.id == server_id) else {
            continue;
        };
        let effects = policies.effects(server_id, &name, RiskCategory::from_name(&category));
        let ungoverned_by: Vec<String> = effects
            .iter()
            .filter(|e| !e.governed)
            .map(|e| {
                let rule = e.governing.as_ref().map(|g| g.rule.as_str()).unwrap_or("");
                format!("{} ({rule})", e.policy_name)
            })
            .collect();
        let status = definition_status(&state, ever_approved, server.block_changed_tools);
        entries.push(Entry {
            server_id,
            server_name: server.name.clone(),
            signal: signals
                .get(0)
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_owned(),
            name,
            category,
            level,
            status: status.state,
            blocked: status.blocked,
            governed: ungoverned_by.is_empty(),
            ungoverned_by,
            has_policy: !policies.of(server_id).is_empty(),
        });
    }
    entries.retain(|e| filter.keeps(e));
    entries.sort_by(|a, b| filter.order(a, b));
    Ok(entries)
}

pub(super) async fn api_catalogue(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(filter): QueryParams<Filter>,
) -> Result<axum::Json<serde_json::Value>> {
    let tools = catalogue(state.db(), tenant.id, &filter).await?;
    Ok(axum::Json(serde_json::json!({ "tools": tools })))
}

/// A column heading that sorts by it (toggling the direction when it is the current sort).
struct Column {
    label: &'static str,
    href: String,
    current: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "tools.html")]
pub(super) struct CataloguePage {
    layout: Layout,
    filter: Filter,
    tools: Vec<Entry>,
    columns: Vec<Column>,
    levels: [&'static str; 4],
    categories: [&'static str; 6],
    statuses: [&'static str; 4],
}

pub(super) async fn catalogue_page(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(filter): QueryParams<Filter>,
) -> Result<CataloguePage> {
    let tools = catalogue(state.db(), tenant.id, &filter).await?;
    let columns = [
        ("Tool", "name"),
        ("Server", "server"),
        ("Risk", "risk"),
        ("Category", "category"),
        ("Status", "status"),
        ("Governed", "governed"),
    ]
    .into_iter()
    .map(|(label, key)| {
        let current = filter.sort == key || (filter.sort.is_empty() && key == "risk");
        let dir = match (current, filter.dir.as_str()) {
            (true, "asc") => "desc",
            (true, "desc") => "asc",
            (true, _) if key == "risk" => "asc",
            (true, _) => "desc",
            (false, _) if key == "risk" => "desc",
            (false, _) => "asc",
        };
        let href = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("risk", &filter.risk)
            .append_pair("category", &filter.category)
            .append_pair("status", &filter.status)
            .append_pair("governed", &filter.governed)
            .append_pair("q", &filter.q)
            .append_pair("sort", key)
            .append_pair("dir", dir)
            .finish();
        Column {
            label,
            href: format!("/tools?{href}"),
            current,
        }
    })
    .collect();
    Ok(CataloguePage {
        layout: Layout::new(&tenant, "Tools", "tools"),
        filter,
        tools,
        columns,
        levels: ["low", "medium", "high", "critical"],
        categories: [
            "read",
            "write",
            "execute",
            "financial",
            "destructive",
            "other",
        ],
        statuses: ["approved", "changed", "new", "removed"],
    })
}
