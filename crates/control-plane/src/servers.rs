//! Upstream MCP servers: register, edit, delete, test the connection, discover tools.
//!
//! Static headers (the upstream's credentials) are sealed with the key ring as one JSON object
//! `{name: value}` bound to the tenant and server; only the names stay in the clear. Nobody can
//! read a value back: admins see a masked hint, everyone else only the names.

use std::collections::BTreeMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use portcullis_core::crypto::server_headers_context;
use portcullis_core::egress::Egress;
use portcullis_core::{GrantId, Invalidation, ServerId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::admin_audit;
use crate::auth::{Admin, Manager, Role, Tenant};
use crate::dashboard::{Layout, Problems, see_other_with, when_opt};
use crate::discovery::{self, Transport, Upstream};
use crate::error::{Error, FieldError, Result};
use crate::input::{self, FormBody, JsonBody, QueryParams};
use crate::tools;

/// A registered upstream, as stored (without its sealed headers).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Server {
    /// Id.
    pub id: Uuid,
    /// Unique name within the tenant.
    pub name: String,
    /// The MCP endpoint (or SSE stream URL).
    pub url: String,
    /// `streamable_http` or `sse`.
    pub transport: String,
    /// Names of the static headers (values are sealed).
    pub header_names: Vec<String>,
    /// Whether tools whose definition changed since approval are blocked.
    pub block_changed_tools: bool,
    /// Last successful discovery.
    pub last_discovered_at: Option<DateTime<Utc>>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    headers_enc: Option<Vec<u8>>,
}

const COLUMNS: &str = "id, name, url, transport, header_names, block_changed_tools, last_discovered_at, created_at, updated_at, headers_enc";

/// Finds a server of the tenant; another tenant's server is "not found".
pub async fn find(db: &sqlx::PgPool, tenant: TenantId, id: ServerId) -> Result<Server> {
    Ok(sqlx::query_as(crate::sql(format!(
        "SELECT {COLUMNS} FROM servers WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant.0)
    .bind(id.0)
    .fetch_one(db)
    .await?)
}

/// The tenant's servers by name.
pub async fn list(db: &sqlx::PgPool, tenant: TenantId) -> Result<Vec<Server>> {
    Ok(sqlx::query_as(crate::sql(format!(
        "SELECT {COLUMNS} FROM servers WHERE tenant_id = $1 ORDER BY name"
    )))
    .bind(tenant.0)
    .fetch_all(db)
    .await?)
}

impl Server {
    /// The typed id.
    pub fn server_id(&self) -> ServerId {
        ServerId(self.id)
    }

    /// The stored headers, opened (for the discovery client only).
    fn headers(&self, state: &AppState, tenant: TenantId) -> Result<Vec<(String, String)>> {
        let Some(sealed) = &self.headers_enc else {
            return Ok(Vec::new());
        };
        let plain = state
            .shared
            .credentials
            .open(sealed, &server_headers_context(tenant, self.server_id()))
            .map_err(|e| {
                Error::internal(anyhow::anyhow!(
                    "cannot open the headers of server {}: {e}",
                    self.id
                ))
            })?;
        let map: BTreeMap<String, String> =
            serde_json::from_slice(&plain).map_err(Error::internal)?;
        Ok(map.into_iter().collect())
    }

    /// The upstream the discovery client talks to.
    pub fn upstream(&self, state: &AppState, tenant: TenantId) -> Result<Upstream> {
        // Registered before PORTCULLIS_UPSTREAM_ALLOW changed, an address may no longer be
        // permitted; host names are checked as they resolve.
        state
            .shared
            .egress
            .check_url(&self.url)
            .map_err(|e| Error::Upstream(e.to_string()))?;
        Ok(Upstream {
            url: self.url.clone(),
            transport: Transport::parse(&self.transport).unwrap_or(Transport::StreamableHttp),
            headers: self.headers(state, tenant)?,
        })
    }

    /// The API view; header hints (masked) only for admins.
    pub fn view(&self, state: &AppState, caller: &Tenant) -> Value {
        let mut value = json!(self);
        let hints: BTreeMap<String, String> = if caller.role >= Role::Admin {
            self.headers(state, caller.id)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, value)| (name, mask(&value)))
                .collect()
        } else {
            BTreeMap::new()
        };
        value["header_hints"] = json!(hints);
        value
    }
}

/// A masked hint of a secret: its length and at most its last four characters.
pub fn mask(secret: &str) -> String {
    let len = secret.chars().count();
    if len >= 16 {
        let tail: String = secret.chars().skip(len - 4).collect();
        format!("••••{tail} ({len} characters)")
    } else {
        format!("•••• ({len} characters)")
    }
}

/// What registering or editing a server takes.
#[derive(Debug, Default, Deserialize)]
pub struct ServerInput {
    /// Name.
    pub name: Option<String>,
    /// Upstream URL.
    pub url: Option<String>,
    /// `streamable_http` (default) or `sse`.
    pub transport: Option<String>,
    /// Static headers; on edit they replace the stored ones (`{}` removes them all).
    pub headers: Option<BTreeMap<String, String>>,
    /// Block tools changed since approval.
    pub block_changed_tools: Option<bool>,
}

/// Headers a server may not set: the gateway owns them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "accept",
    "connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
];

fn check_headers(headers: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    if headers.len() > 20 {
        errors.push(FieldError::new("/headers", "at most 20 headers"));
    }
    for (name, value) in headers {
        let pointer = format!("/headers/{}", name.replace('~', "~0").replace('/', "~1"));
        if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(FieldError::new(pointer, "is not a valid header name"));
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            errors.push(FieldError::new(pointer, "is set by Portcullis itself"));
        } else if value.len() > 8192 || http::HeaderValue::from_str(value).is_err() {
            errors.push(FieldError::new(pointer, "is not a valid header value"));
        }
    }
}

struct Checked {
    name: Option<String>,
    url: Option<String>,
    transport: Option<Transport>,
}

fn check(input: &ServerInput, creating: bool, egress: &Egress) -> Result<Checked> {
    let mut errors = Vec::new();
    let mut absorb = |r: Result<String>| match r {
        Ok(v) => Some(v),
        Err(Error::Validation(mut e)) => {
            errors.append(&mut e);
            None
        }
        Err(_) => None,
    };
    let name = match &input.name {
        Some(n) => absorb(input::text("/name", n, 200)),
        None if creating => absorb(Err(Error::field("/name", "is required"))),
        None => None,
    };
    let url = match &input.url {
        Some(u) => absorb(input::outbound_url("/url", u, egress).map(|u| u.to_string())),
        None if creating => absorb(Err(Error::field("/url", "is required"))),
        None => None,
    };
    let transport = match input.transport.as_deref() {
        None | Some("") => creating.then_some(Transport::StreamableHttp),
        Some(t) => match Transport::parse(t) {
            Some(t) => Some(t),
            None => {
                errors.push(FieldError::new("/transport", "use streamable_http or sse"));
                None
            }
        },
    };
    if let Some(headers) = &input.headers {
        check_headers(headers, &mut errors);
    }
    if errors.is_empty() {
        Ok(Checked {
            name,
            url,
            transport,
        })
    } else {
        Err(Error::Validation(errors))
    }
}

/// Whether `e` is Postgres refusing a duplicate of a unique key.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// Registers a server, sealing its headers.
pub async fn create(state: &AppState, who: &Tenant, input: &ServerInput) -> Result<Server> {
    let checked = check(input, true, &state.shared.egress)?;
    let id = ServerId::new();
    let headers = input.headers.clone().unwrap_or_default();
    let (sealed, key_id) = seal_headers(state, who.id, id, &headers);
    let names: Vec<String> = headers.keys().cloned().collect();
    let mut tx = state.db().begin().await?;
    let server: Server = sqlx::query_as(crate::sql(format!(
        "INSERT INTO servers (id, tenant_id, name, url, transport, headers_enc, headers_key_id, header_names, block_changed_tools)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, true)) RETURNING {COLUMNS}"
    )))
    .bind(id.0)
    .bind(who.id.0)
    .bind(&checked.name)
    .bind(&checked.url)
    .bind(checked.transport.unwrap_or(Transport::StreamableHttp).as_str())
    .bind(sealed)
    .bind(key_id)
    .bind(&names)
    .bind(input.block_changed_tools)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            Error::field("/name", "a server with this name exists")
        } else {
            e.into()
        }
    })?;
    admin_audit::commit(
        tx,
        who,
        "server.create",
        "server",
        &id.to_string(),
        None,
        Some(json!(server)),
    )
    .await?;
    Ok(server)
}

fn seal_headers(
    state: &AppState,
    tenant: TenantId,
    server: ServerId,
    headers: &BTreeMap<String, String>,
) -> (Option<Vec<u8>>, Option<i32>) {
    if headers.is_empty() {
        return (None, None);
    }
    let json = serde_json::to_vec(headers).unwrap_or_default();
    let sealed = state
        .shared
        .credentials
        .seal(&json, &server_headers_context(tenant, server));
    (
        Some(sealed),
        i32::try_from(state.shared.credentials.active_id()).ok(),
    )
}

/// Edits a server; headers, when given, replace the stored ones.
pub async fn update(
    state: &AppState,
    who: &Tenant,
    id: ServerId,
    input: &ServerInput,
) -> Result<Server> {
    let before = find(state.db(), who.id, id).await?;
    let checked = check(input, false, &state.shared.egress)?;
    let (sealed, key_id, names) = match &input.headers {
        Some(headers) => {
            let (sealed, key_id) = seal_headers(state, who.id, id, headers);
            (
                Some(sealed),
                key_id,
                Some(headers.keys().cloned().collect::<Vec<_>>()),
            )
        }
        None => (None, None, None),
    };
    let mut tx = state.db().begin().await?;
    let after: Server = sqlx::query_as(crate::sql(format!(
        "UPDATE servers SET
            name = coalesce($3, name),
            url = coalesce($4, url),
            transport = coalesce($5, transport),
            headers_enc = CASE WHEN $6 THEN $7 ELSE headers_enc END,
            headers_key_id = CASE WHEN $6 THEN $8 ELSE headers_key_id END,
            header_names = coalesce($9, header_names),
            block_changed_tools = coalesce($10, block_changed_tools),
            updated_at = now()
          WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
    )))
    .bind(who.id.0)
    .bind(id.0)
    .bind(&checked.name)
    .bind(&checked.url)
    .bind(checked.transport.map(Transport::as_str))
    .bind(sealed.is_some())
    .bind(sealed.flatten())
    .bind(key_id)
    .bind(names)
    .bind(input.block_changed_tools)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            Error::field("/name", "a server with this name exists")
        } else {
            e.into()
        }
    })?;
    admin_audit::commit(
        tx,
        who,
        "server.update",
        "server",
        &id.to_string(),
        Some(json!(before)),
        Some(json!(after)),
    )
    .await?;
    state
        .publish(Invalidation::Server {
            tenant_id: who.id,
            server_id: id,
        })
        .await;
    Ok(after)
}

/// Deletes a server with its tools, policies and grants; the grants stop working at once.
pub async fn delete(state: &AppState, who: &Tenant, id: ServerId) -> Result<()> {
    let before = find(state.db(), who.id, id).await?;
    let mut tx = state.db().begin().await?;
    // Grants go first: they restrict the deletion of the policies the server cascades to.
    let grants: Vec<Uuid> = sqlx::query_scalar(
        "DELETE FROM grants WHERE tenant_id = $1 AND server_id = $2 RETURNING id",
    )
    .bind(who.id.0)
    .bind(id.0)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM servers WHERE tenant_id = $1 AND id = $2")
        .bind(who.id.0)
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
    admin_audit::commit(
        tx,
        who,
        "server.delete",
        "server",
        &id.to_string(),
        Some(json!(before)),
        None,
    )
    .await?;
    for grant in grants {
        state
            .publish(Invalidation::Grant {
                tenant_id: who.id,
                grant_id: GrantId(grant),
            })
            .await;
    }
    state
        .publish(Invalidation::Server {
            tenant_id: who.id,
            server_id: id,
        })
        .await;
    Ok(())
}

/// Re-seals the headers of every server of the tenant that an older key sealed, under the active
/// key: after a new key is put first in `PORTCULLIS_ENCRYPTION_KEYS`, this lets the old key be
/// dropped. Returns how many servers were re-sealed.
pub async fn reseal(state: &AppState, who: &Tenant) -> Result<usize> {
    let active = i32::try_from(state.shared.credentials.active_id()).unwrap_or(i32::MAX);
    let stale: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, headers_enc FROM servers
          WHERE tenant_id = $1 AND headers_enc IS NOT NULL AND headers_key_id IS DISTINCT FROM $2",
    )
    .bind(who.id.0)
    .bind(active)
    .fetch_all(state.db())
    .await?;
    let mut tx = state.db().begin().await?;
    for (id, sealed) in &stale {
        let context = server_headers_context(who.id, ServerId(*id));
        let plain = state
            .shared
            .credentials
            .open(sealed, &context)
            .map_err(|e| {
                Error::internal(anyhow::anyhow!(
                    "cannot open the headers of server {id}: {e}"
                ))
            })?;
        sqlx::query(
            "UPDATE servers SET headers_enc = $3, headers_key_id = $4 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(who.id.0)
        .bind(id)
        .bind(state.shared.credentials.seal(&plain, &context))
        .bind(active)
        .execute(&mut *tx)
        .await?;
    }
    admin_audit::commit(
        tx,
        who,
        "server.reseal",
        "server",
        "*",
        None,
        Some(json!({ "servers": stale.len(), "key_id": active })),
    )
    .await?;
    for (id, _) in &stale {
        state
            .publish(Invalidation::Server {
                tenant_id: who.id,
                server_id: ServerId(*id),
            })
            .await;
    }
    Ok(stale.len())
}

/// Runs `initialize` against the upstream.
pub async fn test_connection(
    state: &AppState,
    who: &Tenant,
    id: ServerId,
) -> Result<discovery::ServerInfo> {
    let server = find(state.db(), who.id, id).await?;
    let upstream = server.upstream(state, who.id)?;
    discovery::test_connection(&state.http, &upstream, state.settings.discovery_timeout)
        .await
        .map_err(|e| Error::Upstream(e.to_string()))
}

/// Discovers the upstream's tools and records what changed.
pub async fn discover(state: &AppState, who: &Tenant, id: ServerId) -> Result<tools::Discovery> {
    let server = find(state.db(), who.id, id).await?;
    let upstream = server.upstream(state, who.id)?;
    let started = std::time::Instant::now();
    let (info, listed) =
        discovery::list_tools(&state.http, &upstream, state.settings.discovery_timeout)
            .await
            .map_err(|e| {
                metrics::counter!("portcullis_discoveries_total", "result" => "failed")
                    .increment(1);
                Error::Upstream(e.to_string())
            })?;
    metrics::histogram!("portcullis_discovery_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("portcullis_discoveries_total", "result" => "ok").increment(1);
    let mut discovery = tools::apply_discovery(state, who, &server, listed).await?;
    discovery.server_info = Some(info);
    Ok(discovery)
}

// ---- API ----

async fn api_list(State(state): State<AppState>, tenant: Tenant) -> Result<axum::Json<Value>> {
    let servers: Vec<Value> = list(state.db(), tenant.id)
        .await?
        .iter()
        .map(|s| s.view(&state, &tenant))
        .collect();
    Ok(axum::Json(json!({ "servers": servers })))
}

async fn api_create(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    JsonBody(input): JsonBody<ServerInput>,
) -> Result<Response> {
    let server = create(&state, &tenant, &input).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(server.view(&state, &tenant)),
    )
        .into_response())
}

async fn api_get(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    let server = find(state.db(), tenant.id, input::id(&id)?).await?;
    Ok(axum::Json(server.view(&state, &tenant)))
}

async fn api_update(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<ServerInput>,
) -> Result<axum::Json<Value>> {
    let server = update(&state, &tenant, input::id(&id)?, &input).await?;
    Ok(axum::Json(server.view(&state, &tenant)))
}

async fn api_delete(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    delete(&state, &tenant, input::id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn api_reseal(
    State(state): State<AppState>,
    Admin(tenant): Admin,
) -> Result<axum::Json<Value>> {
    let resealed = reseal(&state, &tenant).await?;
    Ok(axum::Json(
        json!({ "resealed": resealed, "key_id": state.shared.credentials.active_id() }),
    ))
}

async fn api_test(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    let info = test_connection(&state, &tenant, input::id(&id)?).await?;
    Ok(axum::Json(json!({ "ok": true, "server_info": info })))
}

async fn api_discover(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    let discovery = discover(&state, &tenant, input::id(&id)?).await?;
    Ok(axum::Json(discovery.to_json()))
}

/// `/api/v1/servers…`.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/api/v1/servers", get(api_list).post(api_create))
        .route(
            "/api/v1/servers/{id}",
            get(api_get).patch(api_update).delete(api_delete),
        )
        .route("/api/v1/servers/reseal", post(api_reseal))
        .route("/api/v1/servers/{id}/test", post(api_test))
        .route("/api/v1/servers/{id}/discover", post(api_discover))
}

// ---- pages ----

struct ServerRow {
    id: String,
    name: String,
    url: String,
    transport: String,
    tools: i64,
    changed: i64,
    discovered: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "servers.html")]
struct ServersPage {
    layout: Layout,
    servers: Vec<ServerRow>,
    form_name: String,
    form_url: String,
    form_transport: String,
    form_headers: String,
    problems: Problems,
}

#[derive(Debug, Default, Deserialize)]
struct NoticeQuery {
    notice: Option<String>,
}

async fn servers_page_with(
    state: &AppState,
    tenant: &Tenant,
    notice: Option<String>,
    form: Option<&ServerForm>,
    problems: Problems,
) -> Result<ServersPage> {
    let counts: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT server_id, count(*) FILTER (WHERE status <> 'removed'), count(*) FILTER (WHERE status = 'changed')
           FROM tools WHERE tenant_id = $1 GROUP BY server_id",
    )
    .bind(tenant.id.0)
    .fetch_all(state.db())
    .await?;
    let servers = list(state.db(), tenant.id)
        .await?
        .into_iter()
        .map(|s| {
            let (tools, changed) = counts
                .iter()
                .find(|c| c.0 == s.id)
                .map(|c| (c.1, c.2))
                .unwrap_or((0, 0));
            ServerRow {
                id: s.id.to_string(),
                name: s.name,
                url: s.url,
                transport: s.transport,
                tools,
                changed,
                discovered: when_opt(&s.last_discovered_at),
            }
        })
        .collect();
    Ok(ServersPage {
        layout: Layout::new(tenant, "Servers", "servers").with_notice(notice),
        servers,
        form_name: form.map(|f| f.name.clone()).unwrap_or_default(),
        form_url: form.map(|f| f.url.clone()).unwrap_or_default(),
        form_transport: form
            .map(|f| f.transport.clone())
            .unwrap_or_else(|| "streamable_http".into()),
        form_headers: form.map(|f| f.headers.clone()).unwrap_or_default(),
        problems,
    })
}

async fn servers_page(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(q): QueryParams<NoticeQuery>,
) -> Result<ServersPage> {
    servers_page_with(&state, &tenant, q.notice, None, Problems::default()).await
}

#[derive(Debug, Default, Deserialize)]
struct ServerForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    transport: String,
    /// One `Name: value` a line.
    #[serde(default)]
    headers: String,
    #[serde(default)]
    block_changed_tools: Option<String>,
    /// On edit: keep the stored headers when the field is left blank.
    #[serde(default)]
    keep_headers: Option<String>,
}

fn parse_header_lines(text: &str) -> Result<BTreeMap<String, String>> {
    let mut headers = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Error::field(
                "/headers",
                format!("line {} is not `Name: value`", i + 1),
            ));
        };
        headers.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    Ok(headers)
}

async fn servers_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    FormBody(form): FormBody<ServerForm>,
) -> Result<Response> {
    let result = async {
        let headers = parse_header_lines(&form.headers)?;
        let input = ServerInput {
            name: Some(form.name.clone()),
            url: Some(form.url.clone()),
            transport: Some(form.transport.clone()),
            headers: Some(headers),
            block_changed_tools: Some(true),
        };
        create(&state, &tenant, &input).await
    }
    .await;
    match result {
        Ok(server) => Ok(see_other_with(
            &format!("/servers/{}", server.id),
            "Server registered. Discover its tools next.",
        )),
        Err(Error::Validation(errors)) => {
            let page =
                servers_page_with(&state, &tenant, None, Some(&form), Problems(errors)).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(e) => Err(e),
    }
}

struct HeaderRow {
    name: String,
    hint: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "server.html")]
struct ServerPage {
    layout: Layout,
    server: Server,
    headers: Vec<HeaderRow>,
    tools: Vec<tools::ToolRow>,
    removed: Vec<tools::ToolRow>,
    policies: Vec<crate::policies::PolicySummary>,
    grants: i64,
    discovered: String,
    problems: Problems,
    test_result: String,
}

async fn server_page_with(
    state: &AppState,
    tenant: &Tenant,
    id: ServerId,
    notice: Option<String>,
    problems: Problems,
    test_result: String,
) -> Result<ServerPage> {
    let server = find(state.db(), tenant.id, id).await?;
    let hints: BTreeMap<String, String> = if tenant.role >= Role::Admin {
        server
            .headers(state, tenant.id)
            .unwrap_or_default()
            .into_iter()
            .map(|(n, v)| (n, mask(&v)))
            .collect()
    } else {
        BTreeMap::new()
    };
    let headers = server
        .header_names
        .iter()
        .map(|n| HeaderRow {
            name: n.clone(),
            hint: hints.get(n).cloned().unwrap_or_else(|| "••••".into()),
        })
        .collect();
    let all = tools::list(state.db(), tenant.id, id).await?;
    let (removed, tools): (Vec<_>, Vec<_>) = all
        .into_iter()
        .map(tools::ToolRow::from)
        .partition(|t| t.status == "removed");
    let policies = crate::policies::list_for_server(state.db(), tenant.id, id).await?;
    let grants: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM grants WHERE tenant_id = $1 AND server_id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant.id.0)
    .bind(id.0)
    .fetch_one(state.db())
    .await?;
    Ok(ServerPage {
        layout: Layout::new(tenant, server.name.clone(), "servers").with_notice(notice),
        discovered: when_opt(&server.last_discovered_at),
        server,
        headers,
        tools,
        removed,
        policies,
        grants,
        problems,
        test_result,
    })
}

async fn server_page(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<NoticeQuery>,
) -> Result<ServerPage> {
    server_page_with(
        &state,
        &tenant,
        input::id(&id)?,
        q.notice,
        Problems::default(),
        String::new(),
    )
    .await
}

async fn server_edit_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
    FormBody(form): FormBody<ServerForm>,
) -> Result<Response> {
    let id: ServerId = input::id(&id)?;
    let result = async {
        let headers = if form.keep_headers.is_some() && form.headers.trim().is_empty() {
            None
        } else {
            Some(parse_header_lines(&form.headers)?)
        };
        let input = ServerInput {
            name: Some(form.name.clone()),
            url: Some(form.url.clone()),
            transport: Some(form.transport.clone()),
            headers,
            block_changed_tools: Some(form.block_changed_tools.is_some()),
        };
        update(&state, &tenant, id, &input).await
    }
    .await;
    match result {
        Ok(_) => Ok(see_other_with(&format!("/servers/{id}"), "Server saved.")),
        Err(Error::Validation(errors)) => {
            let page = server_page_with(&state, &tenant, id, None, Problems(errors), String::new())
                .await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(e) => Err(e),
    }
}

async fn server_delete_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<Response> {
    delete(&state, &tenant, input::id(&id)?).await?;
    Ok(see_other_with("/servers", "Server deleted."))
}

async fn server_test_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<Response> {
    let id: ServerId = input::id(&id)?;
    let text = match test_connection(&state, &tenant, id).await {
        Ok(info) => format!(
            "Connected: {} {} speaks MCP {}.",
            info.name.unwrap_or_else(|| "the server".into()),
            info.version.unwrap_or_default(),
            info.protocol_version
        ),
        Err(Error::Upstream(message)) => format!("Connection failed: {message}"),
        Err(e) => return Err(e),
    };
    Ok(
        server_page_with(&state, &tenant, id, None, Problems::default(), text)
            .await?
            .into_response(),
    )
}

async fn server_discover_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<Response> {
    let id: ServerId = input::id(&id)?;
    match discover(&state, &tenant, id).await {
        Ok(d) => Ok(see_other_with(&format!("/servers/{id}"), &d.summary())),
        Err(Error::Upstream(message)) => Ok(server_page_with(
            &state,
            &tenant,
            id,
            None,
            Problems::default(),
            format!("Discovery failed: {message}"),
        )
        .await?
        .into_response()),
        Err(e) => Err(e),
    }
}

/// The server pages and their forms.
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/servers", get(servers_page).post(servers_submit))
        .route("/servers/{id}", get(server_page).post(server_edit_submit))
        .route("/servers/{id}/delete", post(server_delete_submit))
        .route("/servers/{id}/test", post(server_test_submit))
        .route("/servers/{id}/discover", post(server_discover_submit))
}
