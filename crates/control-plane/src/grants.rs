//! Grants: a bearer token bound to one identity, server and policy.
//!
//! The token exists in the clear only in the answer that creates (or rotates) it; Postgres keeps
//! its SHA-256. Rotation replaces the hash in place (the grant keeps its id and history);
//! revocation stamps `revoked_at`. Both are announced on the invalidation channel so every
//! gateway drops the cached grant within a second.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDateTime, Utc};
use portcullis_core::{GrantId, GrantToken, Invalidation, PolicyId, ServerId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::admin_audit;
use crate::auth::{Manager, Tenant};
use crate::dashboard::{Layout, Problems, see_other_with, when, when_opt};
use crate::error::{Error, FieldError, Result};
use crate::input::{self, FormBody, JsonBody, QueryParams};
use crate::{policies, servers};

/// A grant as stored (never with its token).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Grant {
    /// Id.
    pub id: Uuid,
    /// The server.
    pub server_id: Uuid,
    /// The policy.
    pub policy_id: Uuid,
    /// Who uses it (an agent, a person, a team).
    pub identity: String,
    /// A free label.
    pub label: String,
    /// Non-secret start of the token.
    pub token_hint: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The server's name.
    pub server_name: String,
    /// The policy's name.
    pub policy_name: String,
}

impl Grant {
    /// `active`, `expired` or `revoked`.
    pub fn status(&self) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| e <= Utc::now()) {
            "expired"
        } else {
            "active"
        }
    }

    fn to_json(&self) -> Value {
        let mut value = json!(self);
        value["status"] = json!(self.status());
        value
    }
}

const SELECT: &str =
    "SELECT g.id, g.server_id, g.policy_id, g.identity, g.label, g.token_hint, g.created_at,
        g.expires_at, g.revoked_at, s.name AS server_name, p.name AS policy_name
   FROM grants g
   JOIN servers s ON s.tenant_id = g.tenant_id AND s.id = g.server_id
   JOIN policies p ON p.tenant_id = g.tenant_id AND p.id = g.policy_id";

/// Finds a grant of the tenant.
pub async fn find(db: &sqlx::PgPool, tenant: TenantId, id: GrantId) -> Result<Grant> {
    Ok(sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE g.tenant_id = $1 AND g.id = $2"
    )))
    .bind(tenant.0)
    .bind(id.0)
    .fetch_one(db)
    .await?)
}

/// The tenant's grants, newest first, optionally of one server.
pub async fn list(
    db: &sqlx::PgPool,
    tenant: TenantId,
    server: Option<ServerId>,
) -> Result<Vec<Grant>> {
    Ok(sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE g.tenant_id = $1 AND ($2::uuid IS NULL OR g.server_id = $2) ORDER BY g.created_at DESC"
    )))
    .bind(tenant.0)
    .bind(server.map(|s| s.0))
    .fetch_all(db)
    .await?)
}

/// A new grant or a rotated one, with the token (shown once) and ready-made client settings.
#[derive(Debug, Serialize)]
pub struct Issued {
    /// The grant.
    pub id: Uuid,
    /// The bearer token.
    pub token: String,
    /// The per-grant URL (works with any MCP client).
    pub url: String,
    /// The header form: this URL with `Authorization: Bearer <token>`.
    pub header_url: String,
    /// The headers of the header form.
    pub headers: Value,
    /// Copy-paste client configurations.
    pub configs: Value,
    /// The grant's record.
    pub grant: Value,
}

fn slug(text: &str) -> String {
    let slug: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let slug = slug.trim_matches('-').to_owned();
    if slug.is_empty() {
        "portcullis".into()
    } else {
        slug
    }
}

fn issued(state: &AppState, grant: &Grant, token: &GrantToken) -> Issued {
    let url = format!("{}/g/{}/mcp", state.gateway_url, token.expose());
    let header_url = format!("{}/mcp/{}", state.gateway_url, grant.server_id);
    let bearer = format!("Bearer {}", token.expose());
    let name = slug(&grant.server_name);
    let configs = json!({
        "claude_desktop": { "mcpServers": { &name: { "command": "npx", "args": ["-y", "mcp-remote", &url] } } },
        "claude_code": {
            "command": format!("claude mcp add --transport http {name} {url}"),
            "mcp_json": { "mcpServers": { &name: { "type": "http", "url": &url } } },
        },
        "cursor": { "mcpServers": { &name: { "url": &url } } },
        "vscode": { "servers": { &name: { "type": "http", "url": &url } } },
        "vscode_headers": { "servers": { &name: { "type": "http", "url": &header_url, "headers": { "Authorization": &bearer } } } },
    });
    Issued {
        id: grant.id,
        token: token.expose().to_owned(),
        url,
        header_url,
        headers: json!({ "Authorization": bearer }),
        configs,
        grant: grant.to_json(),
    }
}

/// What creating a grant takes.
#[derive(Debug, Default, Deserialize)]
pub struct GrantInput {
    /// The server.
    pub server_id: Option<String>,
    /// The policy (must belong to the server).
    pub policy_id: Option<String>,
    /// Who uses it.
    #[serde(default)]
    pub identity: String,
    /// A free label.
    pub label: Option<String>,
    /// Expiry (RFC 3339, or `YYYY-MM-DDTHH:MM` in UTC).
    pub expires_at: Option<String>,
}

fn parse_expiry(text: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").map(|n| n.and_utc()))
        .map_err(|_| Error::field("/expires_at", "use a time like 2030-01-31T12:00:00Z"))?;
    if parsed <= Utc::now() {
        return Err(Error::field("/expires_at", "must be in the future"));
    }
    Ok(Some(parsed))
}

/// Issues a grant.
pub async fn create(state: &AppState, who: &Tenant, input: &GrantInput) -> Result<Issued> {
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
    let identity = match input::text("/identity", &input.identity, 200) {
        Ok(i) => Some(i),
        Err(Error::Validation(mut e)) => {
            errors.append(&mut e);
            None
        }
        Err(e) => return Err(e),
    };
    let expires_at = match parse_expiry(input.expires_at.as_deref()) {
        Ok(e) => e,
        Err(Error::Validation(mut e)) => {
            errors.append(&mut e);
            None
        }
        Err(e) => return Err(e),
    };
    let label: String = input
        .label
        .as_deref()
        .unwrap_or("")
        .trim()
        .chars()
        .take(200)
        .collect();
    let (Some(server), Some(policy), Some(identity), true) =
        (server, policy, identity, errors.is_empty())
    else {
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
    let token = GrantToken::generate();
    let id = GrantId::new();
    let mut tx = state.db().begin().await?;
    sqlx::query(
        "INSERT INTO grants (id, tenant_id, server_id, policy_id, identity, label, token_hash, token_hint, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id.0)
    .bind(who.id.0)
    .bind(server.0)
    .bind(policy.0)
    .bind(&identity)
    .bind(&label)
    .bind(token.hash().as_bytes())
    .bind(token.hint())
    .bind(who.actor.user_id.map(|u| u.0))
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    let grant: Grant = sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE g.tenant_id = $1 AND g.id = $2"
    )))
    .bind(who.id.0)
    .bind(id.0)
    .fetch_one(&mut *tx)
    .await?;
    admin_audit::commit(
        tx,
        who,
        "grant.create",
        "grant",
        &id.to_string(),
        None,
        Some(grant.to_json()),
    )
    .await?;
    metrics::counter!("portcullis_grants_issued_total").increment(1);
    Ok(issued(state, &grant, &token))
}

/// Replaces a grant's token: the old one stops working at once.
pub async fn rotate(state: &AppState, who: &Tenant, id: GrantId) -> Result<Issued> {
    let before = find(state.db(), who.id, id).await?;
    if before.revoked_at.is_some() {
        return Err(Error::Conflict(
            "a revoked grant cannot be rotated; issue a new one".into(),
        ));
    }
    let token = GrantToken::generate();
    let mut tx = state.db().begin().await?;
    sqlx::query(
        "UPDATE grants SET token_hash = $3, token_hint = $4 WHERE tenant_id = $1 AND id = $2",
    )
    .bind(who.id.0)
    .bind(id.0)
    .bind(token.hash().as_bytes())
    .bind(token.hint())
    .execute(&mut *tx)
    .await?;
    let after = finish_change(state, who, tx, id, "grant.rotate", &before).await?;
    Ok(issued(state, &after, &token))
}

/// Ends a change to a grant inside `tx`: reads it back, records who changed what, commits, and
/// tells the gateways to drop their cached copy.
async fn finish_change(
    state: &AppState,
    who: &Tenant,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    id: GrantId,
    action: &str,
    before: &Grant,
) -> Result<Grant> {
    let after: Grant = sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE g.tenant_id = $1 AND g.id = $2"
    )))
    .bind(who.id.0)
    .bind(id.0)
    .fetch_one(&mut *tx)
    .await?;
    admin_audit::commit(
        tx,
        who,
        action,
        "grant",
        &id.to_string(),
        Some(before.to_json()),
        Some(after.to_json()),
    )
    .await?;
    state
        .publish(Invalidation::Grant {
            tenant_id: who.id,
            grant_id: id,
        })
        .await;
    Ok(after)
}

/// Revokes a grant for good.
pub async fn revoke(state: &AppState, who: &Tenant, id: GrantId) -> Result<()> {
    let before = find(state.db(), who.id, id).await?;
    let mut tx = state.db().begin().await?;
    sqlx::query("UPDATE grants SET revoked_at = coalesce(revoked_at, now()) WHERE tenant_id = $1 AND id = $2")
        .bind(who.id.0)
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
    finish_change(state, who, tx, id, "grant.revoke", &before).await?;
    Ok(())
}

/// A change of a grant: its policy (of the same server), label or expiry.
#[derive(Debug, Default, Deserialize)]
pub struct GrantChange {
    /// Another policy of the same server.
    pub policy_id: Option<String>,
    /// New label.
    pub label: Option<String>,
    /// New expiry (empty text removes it).
    pub expires_at: Option<String>,
}

/// Changes a grant.
pub async fn change(
    state: &AppState,
    who: &Tenant,
    id: GrantId,
    change: &GrantChange,
) -> Result<Grant> {
    let before = find(state.db(), who.id, id).await?;
    let policy = match change.policy_id.as_deref() {
        Some(p) => {
            let p: PolicyId = p
                .parse()
                .map_err(|_| Error::field("/policy_id", "is not a policy id"))?;
            let record = policies::find(state.db(), who.id, p)
                .await
                .map_err(|_| Error::field("/policy_id", "no such policy"))?;
            if record.server_id != before.server_id {
                return Err(Error::field(
                    "/policy_id",
                    "this policy belongs to another server",
                ));
            }
            Some(p.0)
        }
        None => None,
    };
    let expiry = match change.expires_at.as_deref() {
        Some(text) => Some(parse_expiry(Some(text))?),
        None => None,
    };
    let label = change
        .label
        .as_deref()
        .map(|l| l.trim().chars().take(200).collect::<String>());
    let mut tx = state.db().begin().await?;
    sqlx::query(
        "UPDATE grants SET policy_id = coalesce($3, policy_id), label = coalesce($4, label),
                expires_at = CASE WHEN $5 THEN $6 ELSE expires_at END
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(who.id.0)
    .bind(id.0)
    .bind(policy)
    .bind(label)
    .bind(expiry.is_some())
    .bind(expiry.flatten())
    .execute(&mut *tx)
    .await?;
    finish_change(state, who, tx, id, "grant.update", &before).await
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
    let server = match q.server_id.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(input::id::<ServerId>(s)?),
        None => None,
    };
    let grants: Vec<Value> = list(state.db(), tenant.id, server)
        .await?
        .iter()
        .map(Grant::to_json)
        .collect();
    Ok(axum::Json(json!({ "grants": grants })))
}

async fn api_create(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    JsonBody(input): JsonBody<GrantInput>,
) -> Result<Response> {
    let issued = create(&state, &tenant, &input).await?;
    Ok((StatusCode::CREATED, axum::Json(issued)).into_response())
}

async fn api_get(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    Ok(axum::Json(
        find(state.db(), tenant.id, input::id(&id)?)
            .await?
            .to_json(),
    ))
}

async fn api_change(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<GrantChange>,
) -> Result<axum::Json<Value>> {
    Ok(axum::Json(
        change(&state, &tenant, input::id(&id)?, &body)
            .await?
            .to_json(),
    ))
}

async fn api_revoke(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    revoke(&state, &tenant, input::id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn api_rotate(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<axum::Json<Issued>> {
    Ok(axum::Json(rotate(&state, &tenant, input::id(&id)?).await?))
}

/// `/api/v1/grants…`.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/api/v1/grants", get(api_list).post(api_create))
        .route(
            "/api/v1/grants/{id}",
            get(api_get).patch(api_change).delete(api_revoke),
        )
        .route("/api/v1/grants/{id}/rotate", post(api_rotate))
}

// ---- pages ----

struct GrantRow {
    id: String,
    identity: String,
    label: String,
    server: String,
    policy: String,
    hint: String,
    status: &'static str,
    created: String,
    expires: String,
}

impl From<&Grant> for GrantRow {
    fn from(g: &Grant) -> Self {
        Self {
            id: g.id.to_string(),
            identity: g.identity.clone(),
            label: g.label.clone(),
            server: g.server_name.clone(),
            policy: g.policy_name.clone(),
            hint: g.token_hint.clone(),
            status: g.status(),
            created: when(&g.created_at),
            expires: when_opt(&g.expires_at),
        }
    }
}

struct Choice {
    id: String,
    label: String,
    group: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "grants.html")]
struct GrantsPage {
    layout: Layout,
    grants: Vec<GrantRow>,
    policies: Vec<Choice>,
    form_identity: String,
    form_label: String,
    form_policy: String,
    problems: Problems,
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    notice: Option<String>,
    policy_id: Option<String>,
}

async fn grants_page_with(
    state: &AppState,
    tenant: &Tenant,
    notice: Option<String>,
    form: Option<&GrantForm>,
    problems: Problems,
) -> Result<GrantsPage> {
    let grants = list(state.db(), tenant.id, None)
        .await?
        .iter()
        .map(GrantRow::from)
        .collect();
    let servers = servers::list(state.db(), tenant.id).await?;
    let policies = policies::list_all(state.db(), tenant.id)
        .await?
        .into_iter()
        .map(|p| Choice {
            group: servers
                .iter()
                .find(|s| s.id == p.server_id)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            id: p.id.to_string(),
            label: format!("{} (v{})", p.name, p.current_version),
        })
        .collect();
    Ok(GrantsPage {
        layout: Layout::new(tenant, "Grants", "grants").with_notice(notice),
        grants,
        policies,
        form_identity: form.map(|f| f.identity.clone()).unwrap_or_default(),
        form_label: form.map(|f| f.label.clone()).unwrap_or_default(),
        form_policy: form.map(|f| f.policy_id.clone()).unwrap_or_default(),
        problems,
    })
}

async fn grants_page(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<GrantsPage> {
    let form = q.policy_id.map(|p| GrantForm {
        policy_id: p,
        ..GrantForm::default()
    });
    grants_page_with(
        &state,
        &tenant,
        q.notice,
        form.as_ref(),
        Problems::default(),
    )
    .await
}

#[derive(Debug, Default, Deserialize)]
struct GrantForm {
    #[serde(default)]
    policy_id: String,
    #[serde(default)]
    identity: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    expires_at: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "grant_issued.html")]
struct IssuedPage {
    layout: Layout,
    grant_id: String,
    identity: String,
    token: String,
    url: String,
    header_url: String,
    claude_desktop: String,
    claude_code_command: String,
    claude_code_json: String,
    cursor: String,
    vscode: String,
    vscode_headers: String,
    rotated: bool,
}

fn issued_page(tenant: &Tenant, issued: Issued, identity: String, rotated: bool) -> IssuedPage {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    IssuedPage {
        layout: Layout::new(
            tenant,
            if rotated {
                "Grant rotated"
            } else {
                "Grant issued"
            },
            "grants",
        ),
        grant_id: issued.id.to_string(),
        identity,
        claude_desktop: pretty(&issued.configs["claude_desktop"]),
        claude_code_command: issued.configs["claude_code"]["command"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        claude_code_json: pretty(&issued.configs["claude_code"]["mcp_json"]),
        cursor: pretty(&issued.configs["cursor"]),
        vscode: pretty(&issued.configs["vscode"]),
        vscode_headers: pretty(&issued.configs["vscode_headers"]),
        token: issued.token,
        url: issued.url,
        header_url: issued.header_url,
        rotated,
    }
}

async fn grants_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    FormBody(form): FormBody<GrantForm>,
) -> Result<Response> {
    // The server follows from the policy.
    let server_id = match form.policy_id.parse::<PolicyId>() {
        Ok(p) => policies::find(state.db(), tenant.id, p)
            .await
            .ok()
            .map(|p| p.server_id.to_string()),
        Err(_) => None,
    };
    let input = GrantInput {
        server_id: Some(server_id.unwrap_or_default()),
        policy_id: Some(form.policy_id.clone()),
        identity: form.identity.clone(),
        label: Some(form.label.clone()),
        expires_at: Some(form.expires_at.clone()),
    };
    match create(&state, &tenant, &input).await {
        Ok(issued) => Ok(
            issued_page(&tenant, issued, form.identity.trim().to_owned(), false).into_response(),
        ),
        Err(Error::Validation(errors)) => {
            let errors = errors
                .into_iter()
                .map(|e| {
                    if e.pointer == "/server_id" {
                        FieldError::new("/policy_id", "choose a policy")
                    } else {
                        e
                    }
                })
                .collect();
            let page =
                grants_page_with(&state, &tenant, None, Some(&form), Problems(errors)).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(e) => Err(e),
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "grant.html")]
struct GrantPage {
    layout: Layout,
    grant: GrantRow,
    server_id: String,
    policy_id: String,
    revoked: bool,
    policies: Vec<Choice>,
}

async fn grant_page(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<GrantPage> {
    let grant = find(state.db(), tenant.id, input::id(&id)?).await?;
    let policies = policies::list_for_server(state.db(), tenant.id, ServerId(grant.server_id))
        .await?
        .into_iter()
        .map(|p| Choice {
            id: p.id.to_string(),
            label: format!("{} (v{})", p.name, p.current_version),
            group: String::new(),
        })
        .collect();
    Ok(GrantPage {
        layout: Layout::new(&tenant, format!("Grant {}", grant.identity), "grants")
            .with_notice(q.notice),
        server_id: grant.server_id.to_string(),
        policy_id: grant.policy_id.to_string(),
        revoked: grant.revoked_at.is_some(),
        grant: GrantRow::from(&grant),
        policies,
    })
}

async fn rotate_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<Response> {
    let id: GrantId = input::id(&id)?;
    let issued = rotate(&state, &tenant, id).await?;
    let identity = issued.grant["identity"].as_str().unwrap_or("").to_owned();
    Ok(issued_page(&tenant, issued, identity, true).into_response())
}

async fn revoke_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<Response> {
    let id: GrantId = input::id(&id)?;
    revoke(&state, &tenant, id).await?;
    Ok(see_other_with(
        &format!("/grants/{id}"),
        "Grant revoked. Gateways refuse it from now on.",
    ))
}

#[derive(Debug, Default, Deserialize)]
struct ChangeForm {
    #[serde(default)]
    policy_id: String,
    #[serde(default)]
    label: String,
}

async fn change_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
    FormBody(form): FormBody<ChangeForm>,
) -> Result<Response> {
    let id: GrantId = input::id(&id)?;
    change(
        &state,
        &tenant,
        id,
        &GrantChange {
            policy_id: Some(form.policy_id).filter(|p| !p.is_empty()),
            label: Some(form.label),
            expires_at: None,
        },
    )
    .await?;
    Ok(see_other_with(&format!("/grants/{id}"), "Grant saved."))
}

/// The grant pages and their forms.
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/grants", get(grants_page).post(grants_submit))
        .route("/grants/{id}", get(grant_page).post(change_submit))
        .route("/grants/{id}/rotate", post(rotate_submit))
        .route("/grants/{id}/revoke", post(revoke_submit))
}
