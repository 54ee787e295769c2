//! The discovered tools of each server: risk category (for `categories` rules), whether the
//! definition changed since it was approved, and input schemas for argument validation.
//!
//! Categories apply to discovered tools only: a tool the control plane has not discovered has
//! no category, in `tools/list` and in `tools/call` alike, so both always agree.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_core::{Invalidation, ServerId, TenantId};
use portcullis_policy::RiskCategory;
use serde_json::Value;
use sqlx::{PgPool, Row as _};

use crate::cache::{Cache, Lookup};

/// One discovered tool.
#[derive(Debug)]
pub struct Tool {
    /// Its risk category.
    pub category: Option<RiskCategory>,
    /// Its definition changed since a human approved it.
    pub changed: bool,
    /// `inputSchema`.
    pub input_schema: Value,
    /// Hash of the definition, which keys compiled validators.
    pub definition_hash: String,
}

/// The tools of one server.
#[derive(Debug, Default)]
pub struct ServerTools {
    tools: HashMap<String, Tool>,
}

impl ServerTools {
    /// The tool called `name`, if discovered.
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.get(name)
    }

    /// The names of the discovered tools.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    /// The category of `name`, if discovered.
    pub fn category(&self, name: &str) -> Option<RiskCategory> {
        self.tools.get(name).and_then(|t| t.category)
    }
}

type Validator = Arc<jsonschema::Validator>;

/// Past this many cached catalogues the cache is cleared rather than grown.
const MAX_SERVERS: usize = 10_000;

/// Cached tool catalogues and compiled validators.
pub struct Catalogue {
    db: PgPool,
    servers: Cache<ServerId, ServerTools>,
    validators: RwLock<HashMap<String, Result<Validator, String>>>,
}

impl Catalogue {
    /// An empty catalogue in front of `db`.
    pub fn new(db: PgPool, ttl: Duration) -> Self {
        Self {
            db,
            servers: Cache::new(ttl, MAX_SERVERS),
            validators: RwLock::new(HashMap::new()),
        }
    }

    /// The discovered tools of a server.
    pub async fn tools(
        self: &Arc<Self>,
        tenant: TenantId,
        server: ServerId,
    ) -> Result<Arc<ServerTools>, sqlx::Error> {
        match self.servers.get(&server) {
            Lookup::Fresh(tools) => return Ok(tools),
            Lookup::Stale { value, refresh } => {
                if refresh {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let generation = this.servers.generation();
                        match this.load(tenant, server).await {
                            Ok(tools) => this.servers.insert(server, Arc::new(tools), generation),
                            Err(e) => {
                                tracing::warn!(error = %e, %server, "cannot refresh a tool catalogue");
                                this.servers.refresh_failed(&server);
                            }
                        }
                    });
                }
                return Ok(value);
            }
            Lookup::Miss => {}
        }
        let generation = self.servers.generation();
        let tools = Arc::new(self.load(tenant, server).await?);
        self.servers.insert(server, tools.clone(), generation);
        Ok(tools)
    }

    async fn load(&self, tenant: TenantId, server: ServerId) -> Result<ServerTools, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT name, risk_category, status, definition_hash, approved_hash,
                    definition -> 'inputSchema' AS input_schema
               FROM tools WHERE tenant_id = $1 AND server_id = $2 AND status <> 'removed'",
        )
        .bind(tenant.0)
        .bind(server.0)
        .fetch_all(&self.db)
        .await?;
        let mut tools = HashMap::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            let category: String = row.try_get("risk_category")?;
            let status: String = row.try_get("status")?;
            let definition_hash: String = row.try_get("definition_hash")?;
            let approved: Option<String> = row.try_get("approved_hash")?;
            let changed =
                status == "changed" || approved.as_deref().is_some_and(|a| a != definition_hash);
            let input_schema: Option<Value> = row.try_get("input_schema")?;
            tools.insert(
                name,
                Tool {
                    category: RiskCategory::from_name(&category),
                    changed,
                    input_schema: input_schema.unwrap_or(Value::Null),
                    definition_hash,
                },
            );
        }
        Ok(ServerTools { tools })
    }

    /// Checks arguments against a tool's input schema; the error names the first problem.
    /// Each schema is compiled once per definition.
    pub fn validate(&self, tool: &Tool, arguments: &Value) -> Result<(), String> {
        let cached = self
            .validators
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tool.definition_hash)
            .cloned();
        let validator = match cached {
            Some(v) => v,
            None => {
                let compiled = jsonschema::validator_for(&tool.input_schema)
                    .map(Arc::new)
                    .map_err(|e| format!("the tool's input schema is invalid: {e}"));
                self.validators
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(tool.definition_hash.clone(), compiled.clone());
                compiled
            }
        }?;
        match validator.validate(arguments) {
            Ok(()) => Ok(()),
            Err(error) => {
                let at = error.instance_path().to_string();
                let at = if at.is_empty() {
                    "arguments".to_owned()
                } else {
                    format!("arguments{at}")
                };
                Err(format!("{at}: {error}"))
            }
        }
    }

    /// Drops the catalogues an invalidation concerns.
    pub fn invalidate(&self, message: &Invalidation) {
        match message {
            Invalidation::Server { server_id, .. } => self.servers.remove(server_id),
            Invalidation::Tenant { .. } => self.servers.clear(),
            Invalidation::Grant { .. } | Invalidation::Policy { .. } => {}
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.servers.clear();
    }
}
