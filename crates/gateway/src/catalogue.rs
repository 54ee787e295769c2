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
/// Past this many compiled validators (one per tool definition ever validated) they are
/// dropped rather than grown: an upstream whose definitions keep changing must not grow every
/// replica's memory for good.
const MAX_VALIDATORS: usize = 10_000;

/// Cached tool catalogues and compiled validators.
pub struct Catalogue {
    db: PgPool,
    servers: Cache<ServerId, ServerTools, TenantId>,
    validators: RwLock<HashMap<String, Result<Validator, String>>>,
}

impl Catalogue {
    /// An empty catalogue in front of `db`, whose catalogues serve up to `grace` past twice
    /// the `ttl` while Postgres cannot be reached.
    pub fn new(db: PgPool, ttl: Duration, grace: Duration) -> Self {
        Self {
            db,
            servers: Cache::with_grace(ttl, grace, MAX_SERVERS),
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
                            Ok(tools) => {
                                this.servers
                                    .insert_in(tenant, server, Arc::new(tools), generation)
                            }
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
        let tools = match self.load(tenant, server).await {
            Ok(tools) => Arc::new(tools),
            Err(e) => {
                let cached = self.servers.fallback(&server).ok_or(e)?;
                tracing::warn!(%server, "cannot load a tool catalogue; serving it as cached");
                return Ok(cached);
            }
        };
        self.servers
            .insert_in(tenant, server, tools.clone(), generation);
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
                let mut validators = self.validators.write().unwrap_or_else(|e| e.into_inner());
                if validators.len() >= MAX_VALIDATORS {
                    validators.clear();
                }
                validators.insert(tool.definition_hash.clone(), compiled.clone());
                compiled
            }
        }?;
        validator
            .validate(arguments)
            .map_err(|error| describe(&error))
    }

    /// Drops the catalogues an invalidation concerns.
    pub fn invalidate(&self, message: &Invalidation) {
        match message {
            Invalidation::Server {
                server_id,
                tenant_id,
            } => self.servers.remove_in(tenant_id, server_id),
            Invalidation::Tenant { tenant_id } => self.servers.retain_in(tenant_id, |_| false),
            Invalidation::Grant { .. } | Invalidation::Policy { .. } => {}
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.servers.clear();
    }
}

/// Schema text quoted in a message (a pattern, `enum` options, a `const`) at most this long.
const MAX_QUOTED: usize = 120;

/// What is wrong with the arguments, for the agent and the audit log: where (the JSON pointer of
/// the offending value, under `arguments`) and which keyword of the schema it fails, with that
/// keyword's constraint when it is short (`arguments/token: fails "maxLength": 10`). Never the
/// value itself, which can be a secret: the text of a `jsonschema` error quotes it.
fn describe(error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::{TypeKind, ValidationErrorKind as Kind};

    let kind = error.kind();
    let mut message = format!(
        "arguments{}: fails \"{}\"",
        error.instance_path().as_str(),
        kind.keyword()
    );
    let quoted = |text: String| (text.len() <= MAX_QUOTED).then_some(text);
    let detail = match kind {
        Kind::MaxLength { limit }
        | Kind::MinLength { limit }
        | Kind::MaxItems { limit }
        | Kind::MinItems { limit }
        | Kind::MaxProperties { limit }
        | Kind::MinProperties { limit } => Some(limit.to_string()),
        Kind::Maximum { limit }
        | Kind::Minimum { limit }
        | Kind::ExclusiveMaximum { limit }
        | Kind::ExclusiveMinimum { limit } => Some(limit.to_string()),
        Kind::MultipleOf { multiple_of } => Some(multiple_of.to_string()),
        Kind::Type {
            kind: TypeKind::Single(t),
        } => Some(format!("\"{t}\"")),
        Kind::Type {
            kind: TypeKind::Multiple(types),
        } => Some(format!(
            "[{}]",
            types
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Kind::Required { property } => Some(format!("{property} is missing")),
        // Names, not values: the argument names are in the audit event already.
        Kind::AdditionalProperties { unexpected } | Kind::UnevaluatedProperties { unexpected } => {
            quoted(format!("{unexpected:?} not allowed"))
        }
        Kind::Enum { options } => quoted(options.to_string()),
        Kind::Constant { expected_value } => quoted(expected_value.to_string()),
        Kind::Pattern { pattern } => quoted(format!("{pattern:?}")),
        Kind::Format { format } => Some(format!("{format:?}")),
        Kind::ContentEncoding { content_encoding } => Some(format!("{content_encoding:?}")),
        Kind::ContentMediaType { content_media_type } => Some(format!("{content_media_type:?}")),
        // The rest either names nothing short, or carries text that may quote the value
        // (`Custom` messages, regex engine failures, the inner error of `propertyNames`).
        _ => None,
    };
    if let Some(detail) = detail {
        message.push_str(": ");
        message.push_str(&detail);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problem(schema: Value, arguments: Value) -> String {
        let validator = jsonschema::validator_for(&schema).unwrap();
        describe(&validator.validate(&arguments).unwrap_err())
    }

    #[test]
    fn validation_messages_never_quote_the_value() {
        let secret = format!("sk_live_{}", "0123456789abcdef".repeat(2));
        let cases = [
            (
                json!({"properties": {"token": {"maxLength": 10}}}),
                "arguments/token: fails \"maxLength\": 10",
            ),
            (
                json!({"properties": {"token": {"type": "integer"}}}),
                "arguments/token: fails \"type\": \"integer\"",
            ),
            (
                json!({"properties": {"token": {"pattern": "^[0-9]+$"}}}),
                "arguments/token: fails \"pattern\": \"^[0-9]+$\"",
            ),
            (
                json!({"properties": {"token": {"enum": ["a", "b"]}}}),
                "arguments/token: fails \"enum\": [\"a\",\"b\"]",
            ),
            (
                json!({"properties": {"token": {"const": "x"}}}),
                "arguments/token: fails \"const\": \"x\"",
            ),
            (
                json!({"properties": {"token": {"not": {"type": "string"}}}}),
                "arguments/token: fails \"not\"",
            ),
            (
                json!({"properties": {"token": {"anyOf": [{"type": "integer"}, {"maxLength": 3}]}}}),
                "arguments/token: fails \"anyOf\"",
            ),
            (
                json!({"properties": {"token": false}}),
                "arguments/token: fails \"falseSchema\"",
            ),
            (
                json!({"properties": {"list": {"items": {"maxLength": 4}}}}),
                "arguments/list/1: fails \"maxLength\": 4",
            ),
        ];
        for (schema, expected) in cases {
            let arguments = json!({"token": secret, "list": ["ok", secret]});
            let said = problem(schema, arguments);
            assert_eq!(said, expected);
            assert!(!said.contains("sk_live"), "{said}");
        }
    }

    #[test]
    fn validation_messages_say_what_to_fix() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {}},
                            "required": ["a", "b"], "additionalProperties": false});
        assert_eq!(
            problem(schema.clone(), json!({"a": 1})),
            "arguments: fails \"required\": \"b\" is missing"
        );
        assert_eq!(
            problem(schema.clone(), json!({"a": 1, "b": 2, "c": "hunter2"})),
            "arguments: fails \"additionalProperties\": [\"c\"] not allowed"
        );
        assert_eq!(
            problem(schema, json!({"a": "hunter2", "b": 2})),
            "arguments/a: fails \"type\": \"integer\""
        );
        assert_eq!(
            problem(
                json!({"properties": {"n": {"minimum": 5}}}),
                json!({"n": 1})
            ),
            "arguments/n: fails \"minimum\": 5"
        );
        assert_eq!(
            problem(json!({"type": ["object", "null"]}), json!("hunter2")),
            "arguments: fails \"type\": [\"null\", \"object\"]"
        );
        let long = json!({"properties": {"mode": {"enum": (0..40).map(|i| format!("option {i}")).collect::<Vec<_>>()}}});
        assert_eq!(
            problem(long, json!({"mode": "hunter2"})),
            "arguments/mode: fails \"enum\""
        );
    }
}
