//! Policy bindings: which policy applies to a verified identity on a server.
//!
//! A binding maps a server and an identity, a group, or neither (every verified identity of
//! the tenant) to one of the server's policies. The gateway picks the most specific binding
//! that matches a token (docs/identity.md); a token that matches none is refused. A change is
//! announced as a change of the server, so gateways drop what they cached of its bindings.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use portcullis_core::{Invalidation, PolicyId, ServerId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::admin_audit;
use crate::auth::{Manager, Tenant};
use crate::error::{Error, FieldError, Result};
use crate::input::{self, JsonBody, QueryParams};
use crate::servers::is_unique_violation;
use crate::{policies, servers};

/// A binding as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Binding {
    /// Id.
    pub id: Uuid,
    /// The server.
    pub server_id: Uuid,
    /// The policy it applies.
    pub policy_id: Uuid,
    /// The verified identity it is for, if one.
    pub identity: Option<String>,
    /// The group it is for, if one.
    pub group: Option<String>,
    /// The server's name.
    pub server_name: String,
    /// The policy's name.
    pub policy_name: String,
    /// Created.
    pub created_at: DateTime<Utc>,
}

const SELECT: &str = "SELECT b.id, b.server_id, b.policy_id, b.identity, b.group_name AS \"group\",
        s.name AS server_name, p.name AS policy_name, b.created_at
   FROM policy_bindings b
   JOIN servers s ON s.tenant_id = b.tenant_id AND s.id = b.server_id
   JOIN policies p ON p.tenant_id = b.tenant_id AND p.id = b.policy_id";

/// Finds a binding of the tenant.
pub async fn find(db: &sqlx::PgPool, tenant: TenantId, id: Uuid) -> Result<Binding> {
    Ok(sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE b.tenant_id = $1 AND b.id = $2"
    )))
    .bind(tenant.0)
    .bind(id)
    .fetch_one(db)
    .await?)
}

/// The tenant's bindings, optionally of one server, by server and then oldest first.
pub async fn list(
    db: &sqlx::PgPool,
    tenant: TenantId,
    server: Option<ServerId>,
) -> Result<Vec<Binding>> {
    Ok(sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE b.tenant_id = $1 AND ($2::uuid IS NULL OR b.server_id = $2)
          ORDER BY s.name, b.server_id, b.created_at, b.id"
    )))
    .bind(tenant.0)
    .bind(server.map(|s| s.0))
    .fetch_all(db)
    .await?)
}

/// What creating or replacing a binding takes.
#[derive(Debug, Default, Deserialize)]
pub struct BindingInput {
    /// The server.
    pub server_id: Option<String>,
    /// One of the server's policies.
    pub policy_id: Option<String>,
    /// A verified identity (the provider's identity claim), or absent.
    pub identity: Option<String>,
    /// A group (from the provider's group claim), or absent.
    pub group: Option<String>,
}

/// A binding's fields once checked.
struct Checked {
    server: ServerId,
    policy: PolicyId,
    identity: Option<String>,
    group: Option<String>,
}

/// An optional subject: absent or blank is none, otherwise 1 to 200 characters.
fn subject(pointer: &str, value: Option<&str>) -> Result<Option<String>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => input::text(pointer, text, 200).map(Some),
    }
}

async fn check(state: &AppState, who: &Tenant, input: &BindingInput) -> Result<Checked> {
    let mut errors = Vec::new();
    let server: Option<ServerId> = match input.server_id.as_deref().map(str::parse) {
        Some(Ok(id)) => Some(id),
        _ => {
            errors.push(FieldError::new("/server_id", "choose a server"));
            None
        }
    };
    let policy: Option<PolicyId> = match input.policy_id.as_deref().map(str::parse) {
        Some(Ok(id)) => Some(id),
        _ => {
            errors.push(FieldError::new("/policy_id", "choose a policy"));
            None
        }
    };
    let mut subjects = Vec::new();
    for (pointer, value) in [("/identity", &input.identity), ("/group", &input.group)] {
        match subject(pointer, value.as_deref()) {
            Ok(v) => subjects.push(v),
            Err(Error::Validation(mut e)) => {
                errors.append(&mut e);
                subjects.push(None);
            }
            Err(e) => return Err(e),
        }
    }
    let group = subjects.pop().flatten();
    let identity = subjects.pop().flatten();
    if identity.is_some() && group.is_some() {
        errors.push(FieldError::new(
            "/group",
            "give an identity or a group, not both",
        ));
    }
    let (Some(server), Some(policy), true) = (server, policy, errors.is_empty()) else {
        return Err(Error::Validation(errors));
    };
    // Both must be the caller's: another tenant's server or policy is simply not found.
    servers::find(state.db(), who.id, server).await?;
    let record = policies::find(state.db(), who.id, policy).await?;
    if record.server_id != server.0 {
        return Err(Error::field(
            "/policy_id",
            "this policy belongs to another server",
        ));
    }
    Ok(Checked {
        server,
        policy,
        identity,
        group,
    })
}

fn duplicate(e: sqlx::Error) -> Error {
    if is_unique_violation(&e) {
        Error::Conflict("the server has a binding for this identity or group already".into())
    } else {
        e.into()
    }
}

/// Adds a binding.
pub async fn create(state: &AppState, who: &Tenant, input: &BindingInput) -> Result<Binding> {
    let checked = check(state, who, input).await?;
    let id = Uuid::now_v7();
    let mut tx = state.db().begin().await?;
    sqlx::query(
        "INSERT INTO policy_bindings (id, tenant_id, server_id, policy_id, identity, group_name, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(who.id.0)
    .bind(checked.server.0)
    .bind(checked.policy.0)
    .bind(&checked.identity)
    .bind(&checked.group)
    .bind(who.actor.user_id.map(|u| u.0))
    .execute(&mut *tx)
    .await
    .map_err(duplicate)?;
    finish(
        state,
        who,
        tx,
        id,
        "binding.create",
        None,
        &[checked.server],
    )
    .await
}

/// Replaces a binding (its server may change too).
pub async fn replace(
    state: &AppState,
    who: &Tenant,
    id: Uuid,
    input: &BindingInput,
) -> Result<Binding> {
    let before = find(state.db(), who.id, id).await?;
    let checked = check(state, who, input).await?;
    let mut tx = state.db().begin().await?;
    sqlx::query(
        "UPDATE policy_bindings SET server_id = $3, policy_id = $4, identity = $5, group_name = $6
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(who.id.0)
    .bind(id)
    .bind(checked.server.0)
    .bind(checked.policy.0)
    .bind(&checked.identity)
    .bind(&checked.group)
    .execute(&mut *tx)
    .await
    .map_err(duplicate)?;
    let servers = [ServerId(before.server_id), checked.server];
    finish(
        state,
        who,
        tx,
        id,
        "binding.update",
        Some(&before),
        &servers,
    )
    .await
}

/// Ends a change inside `tx`: reads the binding back, records the change, commits, and tells
/// the gateways about each server it concerns.
async fn finish(
    state: &AppState,
    who: &Tenant,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    action: &str,
    before: Option<&Binding>,
    servers: &[ServerId],
) -> Result<Binding> {
    let after: Binding = sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE b.tenant_id = $1 AND b.id = $2"
    )))
    .bind(who.id.0)
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    admin_audit::commit(
        tx,
        who,
        action,
        "binding",
        &id.to_string(),
        before.map(|b| json!(b)),
        Some(json!(after)),
    )
    .await?;
    announce(state, who, servers).await;
    Ok(after)
}

async fn announce(state: &AppState, who: &Tenant, servers: &[ServerId]) {
    for (i, server) in servers.iter().enumerate() {
        if servers[..i].contains(server) {
            continue;
        }
        state
            .publish(Invalidation::Server {
                tenant_id: who.id,
                server_id: *server,
            })
            .await;
    }
}

/// Removes a binding: the identities it matched fall to a less specific one, or are refused.
pub async fn delete(state: &AppState, who: &Tenant, id: Uuid) -> Result<()> {
    let before = find(state.db(), who.id, id).await?;
    let mut tx = state.db().begin().await?;
    sqlx::query("DELETE FROM policy_bindings WHERE tenant_id = $1 AND id = $2")
        .bind(who.id.0)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    admin_audit::commit(
        tx,
        who,
        "binding.delete",
        "binding",
        &id.to_string(),
        Some(json!(before)),
        None,
    )
    .await?;
    announce(state, who, &[ServerId(before.server_id)]).await;
    Ok(())
}

// ---- API ----

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    server_id: Option<String>,
}

async fn api_list(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<axum::Json<Value>> {
    let server = match q
        .server_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(s) => Some(input::id::<ServerId>(s)?),
        None => None,
    };
    let bindings = list(state.db(), tenant.id, server).await?;
    Ok(axum::Json(json!({ "bindings": bindings })))
}

async fn api_create(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    JsonBody(input): JsonBody<BindingInput>,
) -> Result<Response> {
    let binding = create(&state, &tenant, &input).await?;
    Ok((StatusCode::CREATED, axum::Json(binding)).into_response())
}

async fn api_get(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<Binding>> {
    Ok(axum::Json(
        find(state.db(), tenant.id, input::id(&id)?).await?,
    ))
}

async fn api_replace(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<BindingInput>,
) -> Result<axum::Json<Binding>> {
    Ok(axum::Json(
        replace(&state, &tenant, input::id(&id)?, &input).await?,
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

/// `/api/v1/bindings…`.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/api/v1/bindings", get(api_list).post(api_create))
        .route(
            "/api/v1/bindings/{id}",
            get(api_get).put(api_replace).delete(api_delete),
        )
}
