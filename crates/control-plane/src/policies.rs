//! Policies: named per server, each with an immutable version history.
//!
//! Saving a document validates it with the policy crate (every problem at once, each with a JSON
//! pointer into the document), inserts a new version, moves `current_version` and announces the
//! change to the gateways. Versions are never updated or deleted while the policy exists.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use portcullis_core::{Invalidation, PolicyId, ServerId, TenantId};
use portcullis_policy::{CompiledPolicy, RiskCategory};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::admin_audit;
use crate::auth::{Manager, Tenant};
use crate::error::{Error, FieldError, Result};
use crate::input::{self, JsonBody, QueryParams};
use crate::servers;
use crate::tools;

pub mod builder;
pub mod diff;
mod pages;

pub use pages::pages;

/// A policy with its current version number.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Policy {
    /// Id.
    pub id: Uuid,
    /// The server it governs.
    pub server_id: Uuid,
    /// Unique name per server.
    pub name: String,
    /// The version in force.
    pub current_version: i32,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last saved.
    pub updated_at: DateTime<Utc>,
}

/// One immutable version.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Version {
    /// Its number (1, 2, …).
    pub version: i32,
    /// The document.
    pub document: Value,
    /// Who saved it.
    pub created_by: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A policy as listed on a server page.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicySummary {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Current version.
    pub current_version: i32,
    /// Grants using it.
    pub grants: i64,
}

const COLUMNS: &str = "id, server_id, name, current_version, created_at, updated_at";

/// Finds a policy of the tenant.
pub async fn find(db: &sqlx::PgPool, tenant: TenantId, id: PolicyId) -> Result<Policy> {
    Ok(sqlx::query_as(crate::sql(format!(
        "SELECT {COLUMNS} FROM policies WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant.0)
    .bind(id.0)
    .fetch_one(db)
    .await?)
}

/// The policies of one server.
pub async fn list_for_server(
    db: &sqlx::PgPool,
    tenant: TenantId,
    server: ServerId,
) -> Result<Vec<PolicySummary>> {
    Ok(sqlx::query_as(
        "SELECT p.id, p.name, p.current_version,
                (SELECT count(*) FROM grants g WHERE g.tenant_id = p.tenant_id AND g.policy_id = p.id AND g.revoked_at IS NULL) AS grants
           FROM policies p WHERE p.tenant_id = $1 AND p.server_id = $2 ORDER BY p.name",
    )
    .bind(tenant.0)
    .bind(server.0)
    .fetch_all(db)
    .await?)
}

/// Every policy of the tenant.
pub async fn list_all(db: &sqlx::PgPool, tenant: TenantId) -> Result<Vec<Policy>> {
    Ok(sqlx::query_as(crate::sql(format!(
        "SELECT {COLUMNS} FROM policies WHERE tenant_id = $1 ORDER BY name"
    )))
    .bind(tenant.0)
    .fetch_all(db)
    .await?)
}

/// One version of a policy.
pub async fn version(
    db: &sqlx::PgPool,
    tenant: TenantId,
    id: PolicyId,
    number: i32,
) -> Result<Version> {
    Ok(sqlx::query_as(
        "SELECT v.version, v.document, u.email AS created_by, v.created_at
           FROM policy_versions v LEFT JOIN users u ON u.id = v.created_by
          WHERE v.tenant_id = $1 AND v.policy_id = $2 AND v.version = $3",
    )
    .bind(tenant.0)
    .bind(id.0)
    .bind(number)
    .fetch_one(db)
    .await?)
}

/// Every version of a policy, newest first.
pub async fn versions(db: &sqlx::PgPool, tenant: TenantId, id: PolicyId) -> Result<Vec<Version>> {
    Ok(sqlx::query_as(
        "SELECT v.version, v.document, u.email AS created_by, v.created_at
           FROM policy_versions v LEFT JOIN users u ON u.id = v.created_by
          WHERE v.tenant_id = $1 AND v.policy_id = $2 ORDER BY v.version DESC",
    )
    .bind(tenant.0)
    .bind(id.0)
    .fetch_all(db)
    .await?)
}

/// Validates a document with the policy crate; problems carry pointers into the document.
pub fn validate(document: &Value) -> Result<CompiledPolicy> {
    CompiledPolicy::from_json(document).map_err(|errors| {
        Error::Validation(
            errors
                .into_iter()
                .map(|e| FieldError::new(e.pointer, e.message))
                .collect(),
        )
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// Creates a policy with its first version.
pub async fn create(
    state: &AppState,
    who: &Tenant,
    server: ServerId,
    name: &str,
    document: &Value,
) -> Result<Policy> {
    servers::find(state.db(), who.id, server).await?;
    let name = input::text("/name", name, 200)?;
    validate(document)?;
    let id = PolicyId::new();
    let mut tx = state.db().begin().await?;
    let policy: Policy = sqlx::query_as(crate::sql(format!(
        "INSERT INTO policies (id, tenant_id, server_id, name) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
    )))
    .bind(id.0)
    .bind(who.id.0)
    .bind(server.0)
    .bind(&name)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            Error::field("/name", "this server already has a policy with this name")
        } else {
            e.into()
        }
    })?;
    sqlx::query(
        "INSERT INTO policy_versions (tenant_id, policy_id, version, document, created_by) VALUES ($1, $2, 1, $3, $4)",
    )
    .bind(who.id.0)
    .bind(id.0)
    .bind(document)
    .bind(who.actor.user_id.map(|u| u.0))
    .execute(&mut *tx)
    .await?;
    admin_audit::commit(
        tx,
        who,
        "policy.create",
        "policy",
        &id.to_string(),
        None,
        Some(json!({ "name": name, "server_id": server, "version": 1, "document": document })),
    )
    .await?;
    Ok(policy)
}

/// Saves a new version (and optionally a new name). An unchanged document makes no version.
pub async fn update(
    state: &AppState,
    who: &Tenant,
    id: PolicyId,
    document: &Value,
    name: Option<&str>,
) -> Result<Policy> {
    let name = name.map(|n| input::text("/name", n, 200)).transpose()?;
    let before = find(state.db(), who.id, id).await?;
    validate(document)?;
    let mut tx = state.db().begin().await?;
    // Lock the policy so two saves cannot both claim the next version number.
    let current: (i32, Value) = sqlx::query_as(
        "SELECT p.current_version, v.document FROM policies p
           JOIN policy_versions v ON v.policy_id = p.id AND v.version = p.current_version
          WHERE p.tenant_id = $1 AND p.id = $2 FOR UPDATE OF p",
    )
    .bind(who.id.0)
    .bind(id.0)
    .fetch_one(&mut *tx)
    .await?;
    let unchanged = current.1 == *document;
    if unchanged && name.as_deref().is_none_or(|n| n == before.name) {
        return Ok(before);
    }
    let next = if unchanged { current.0 } else { current.0 + 1 };
    if !unchanged {
        sqlx::query(
            "INSERT INTO policy_versions (tenant_id, policy_id, version, document, created_by) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(who.id.0)
        .bind(id.0)
        .bind(next)
        .bind(document)
        .bind(who.actor.user_id.map(|u| u.0))
        .execute(&mut *tx)
        .await?;
    }
    let after: Policy = sqlx::query_as(crate::sql(format!(
        "UPDATE policies SET current_version = $3, name = coalesce($4, name), updated_at = now()
          WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
    )))
    .bind(who.id.0)
    .bind(id.0)
    .bind(next)
    .bind(name.as_deref())
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            Error::field("/name", "this server already has a policy with this name")
        } else {
            e.into()
        }
    })?;
    admin_audit::commit(
        tx,
        who,
        "policy.update",
        "policy",
        &id.to_string(),
        Some(json!({ "name": before.name, "version": current.0, "document": current.1 })),
        Some(json!({ "name": after.name, "version": next, "document": document })),
    )
    .await?;
    state
        .publish(Invalidation::Policy {
            tenant_id: who.id,
            policy_id: id,
        })
        .await;
    Ok(after)
}

/// Deletes a policy that no grant or binding uses.
pub async fn delete(state: &AppState, who: &Tenant, id: PolicyId) -> Result<()> {
    let before = find(state.db(), who.id, id).await?;
    let mut tx = state.db().begin().await?;
    let (grants, bindings): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM grants WHERE tenant_id = $1 AND policy_id = $2),
                (SELECT count(*) FROM policy_bindings WHERE tenant_id = $1 AND policy_id = $2)",
    )
    .bind(who.id.0)
    .bind(id.0)
    .fetch_one(&mut *tx)
    .await?;
    if grants > 0 {
        return Err(Error::Conflict(format!(
            "{grants} grant(s) use this policy; delete them or move them to another policy first"
        )));
    }
    if bindings > 0 {
        return Err(Error::Conflict(format!(
            "{bindings} binding(s) use this policy; delete them or move them to another policy first"
        )));
    }
    sqlx::query("DELETE FROM policies WHERE tenant_id = $1 AND id = $2")
        .bind(who.id.0)
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
    admin_audit::commit(
        tx,
        who,
        "policy.delete",
        "policy",
        &id.to_string(),
        Some(json!(before)),
        None,
    )
    .await?;
    state
        .publish(Invalidation::Policy {
            tenant_id: who.id,
            policy_id: id,
        })
        .await;
    Ok(())
}

/// The recommended policy for a server's current tools (DESIGN §5).
pub async fn recommended(db: &sqlx::PgPool, tenant: TenantId, server: ServerId) -> Result<Value> {
    servers::find(db, tenant, server).await?;
    let definitions: Vec<_> = tools::list(db, tenant, server)
        .await?
        .iter()
        .filter(|t| t.status != "removed")
        .map(tools::Tool::typed)
        .collect();
    Ok(portcullis_policy::recommend(&definitions))
}

/// A sample call for the tester.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TestCall {
    /// The tool name.
    #[serde(default)]
    pub tool: String,
    /// Its arguments (an object).
    #[serde(default)]
    pub arguments: Value,
    /// The identity to evaluate as.
    #[serde(default)]
    pub identity: Option<String>,
    /// A draft document; the current version when absent.
    #[serde(default)]
    pub document: Option<Value>,
}

/// Evaluates a sample call against a draft or the current version.
pub async fn test(
    db: &sqlx::PgPool,
    tenant: TenantId,
    policy: &Policy,
    call: &TestCall,
) -> Result<Value> {
    let document = match &call.document {
        Some(d) => d.clone(),
        None => {
            version(db, tenant, PolicyId(policy.id), policy.current_version)
                .await?
                .document
        }
    };
    let compiled = validate(&document)?;
    let tool = input::text("/tool", &call.tool, 500)?;
    let category: Option<String> = sqlx::query_scalar(
        "SELECT risk_category FROM tools WHERE tenant_id = $1 AND server_id = $2 AND name = $3",
    )
    .bind(tenant.0)
    .bind(policy.server_id)
    .bind(&tool)
    .fetch_optional(db)
    .await?;
    let category = category.as_deref().and_then(RiskCategory::from_name);
    let arguments = match &call.arguments {
        Value::Null => json!({}),
        Value::Object(_) => call.arguments.clone(),
        // A tool call's arguments are an object: the gateway refuses any other.
        _ => return Err(Error::field("/arguments", "must be an object")),
    };
    let server = policy.server_id.to_string();
    let tenant_text = tenant.to_string();
    let decision = compiled.evaluate(&portcullis_policy::Call {
        tool: &tool,
        arguments: &arguments,
        grant: "tester",
        identity: call.identity.as_deref().unwrap_or("tester"),
        server: &server,
        tenant: &tenant_text,
        category,
    });
    let visible = compiled.is_visible(&tool, category);
    Ok(json!({
        "tool": tool,
        "category": category.map(RiskCategory::as_str),
        "visible": visible,
        "decision": decision,
    }))
}

/// The body of create and update.
#[derive(Debug, Deserialize)]
pub struct PolicyBody {
    /// Name (required on create).
    #[serde(default)]
    pub name: Option<String>,
    /// The document.
    pub document: Option<Value>,
}

fn policy_json(p: &Policy) -> Value {
    json!({
        "id": p.id,
        "server_id": p.server_id,
        "name": p.name,
        "version": p.current_version,
        "current_version": p.current_version,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    })
}

async fn api_list(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(server): Path<String>,
) -> Result<axum::Json<Value>> {
    let server: ServerId = input::id(&server)?;
    servers::find(state.db(), tenant.id, server).await?;
    let policies: Vec<Value> = list_all(state.db(), tenant.id)
        .await?
        .iter()
        .filter(|p| p.server_id == server.0)
        .map(policy_json)
        .collect();
    Ok(axum::Json(json!({ "policies": policies })))
}

async fn api_create(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(server): Path<String>,
    JsonBody(body): JsonBody<PolicyBody>,
) -> Result<Response> {
    let server: ServerId = input::id(&server)?;
    servers::find(state.db(), tenant.id, server).await?;
    let document = body
        .document
        .ok_or_else(|| Error::field("/document", "is required"))?;
    let policy = create(
        &state,
        &tenant,
        server,
        body.name.as_deref().unwrap_or(""),
        &document,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": policy.id, "version": policy.current_version, "name": policy.name, "server_id": policy.server_id })),
    )
        .into_response())
}

async fn api_get(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    let id: PolicyId = input::id(&id)?;
    let policy = find(state.db(), tenant.id, id).await?;
    let current = version(state.db(), tenant.id, id, policy.current_version).await?;
    let mut value = policy_json(&policy);
    value["document"] = current.document;
    Ok(axum::Json(value))
}

async fn api_update(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PolicyBody>,
) -> Result<axum::Json<Value>> {
    let id: PolicyId = input::id(&id)?;
    find(state.db(), tenant.id, id).await?;
    let document = body
        .document
        .ok_or_else(|| Error::field("/document", "is required"))?;
    let policy = update(&state, &tenant, id, &document, body.name.as_deref()).await?;
    Ok(axum::Json(
        json!({ "id": policy.id, "version": policy.current_version }),
    ))
}

async fn api_delete(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    delete(&state, &tenant, input::id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn api_versions(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    let id: PolicyId = input::id(&id)?;
    find(state.db(), tenant.id, id).await?;
    Ok(axum::Json(
        json!({ "versions": versions(state.db(), tenant.id, id).await? }),
    ))
}

async fn api_version(
    State(state): State<AppState>,
    tenant: Tenant,
    Path((id, number)): Path<(String, String)>,
) -> Result<axum::Json<Version>> {
    let id: PolicyId = input::id(&id)?;
    let number: i32 = input::id(&number)?;
    Ok(axum::Json(
        version(state.db(), tenant.id, id, number).await?,
    ))
}

/// `?from=&to=` of a diff; defaults to the previous and the current version.
#[derive(Debug, Default, Deserialize)]
pub struct DiffQuery {
    /// Older version.
    pub from: Option<i32>,
    /// Newer version.
    pub to: Option<i32>,
    /// A notice (dashboard only).
    pub notice: Option<String>,
}

/// The two versions a diff compares.
pub async fn diff_versions(
    db: &sqlx::PgPool,
    tenant: TenantId,
    policy: &Policy,
    q: &DiffQuery,
) -> Result<(Version, Version)> {
    let id = PolicyId(policy.id);
    let to = q.to.unwrap_or(policy.current_version);
    let from = q.from.unwrap_or((to - 1).max(1));
    Ok((
        version(db, tenant, id, from).await?,
        version(db, tenant, id, to).await?,
    ))
}

async fn api_diff(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<DiffQuery>,
) -> Result<axum::Json<Value>> {
    let policy = find(state.db(), tenant.id, input::id(&id)?).await?;
    let (from, to) = diff_versions(state.db(), tenant.id, &policy, &q).await?;
    let lines = diff::lines(&pretty(&from.document), &pretty(&to.document));
    Ok(axum::Json(json!({
        "from": from.version,
        "to": to.version,
        "lines": lines,
        "text": diff::unified(&lines),
    })))
}

async fn api_test(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    JsonBody(call): JsonBody<TestCall>,
) -> Result<axum::Json<Value>> {
    let policy = find(state.db(), tenant.id, input::id(&id)?).await?;
    Ok(axum::Json(
        test(state.db(), tenant.id, &policy, &call).await?,
    ))
}

async fn api_recommended(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(server): Path<String>,
) -> Result<axum::Json<Value>> {
    let document = recommended(state.db(), tenant.id, input::id(&server)?).await?;
    Ok(axum::Json(json!({ "document": document })))
}

#[derive(Debug, Deserialize)]
struct ValidateBody {
    document: Value,
}

async fn api_validate(
    _tenant: Tenant,
    JsonBody(body): JsonBody<ValidateBody>,
) -> Result<axum::Json<Value>> {
    validate(&body.document)?;
    Ok(axum::Json(json!({ "valid": true })))
}

/// Pretty JSON for editors and diffs.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// `/api/v1/servers/{id}/policies`, `/api/v1/policies/{id}…`.
pub fn api() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/servers/{id}/policies",
            get(api_list).post(api_create),
        )
        .route(
            "/api/v1/servers/{id}/recommended-policy",
            get(api_recommended),
        )
        .route("/api/v1/policies/validate", post(api_validate))
        .route(
            "/api/v1/policies/{id}",
            get(api_get).put(api_update).delete(api_delete),
        )
        .route("/api/v1/policies/{id}/versions", get(api_versions))
        .route("/api/v1/policies/{id}/versions/{version}", get(api_version))
        .route("/api/v1/policies/{id}/diff", get(api_diff))
        .route("/api/v1/policies/{id}/test", post(api_test))
}
