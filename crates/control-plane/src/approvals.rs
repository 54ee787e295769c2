//! Approvals: the gateway holds a call that needs a human and records a pending approval; here
//! an approver approves or denies it with a note, and pending approvals past their expiry close.
//!
//! Every change queues a webhook event (outbox, same transaction); new pending approvals are
//! noticed by the sweep and announced as `approval.requested`.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use portcullis_core::{ApprovalId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::admin_audit;
use crate::auth::{Manager, Tenant};
use crate::dashboard::{Layout, see_other_with, when};
use crate::error::{Error, Result};
use crate::input::{FormBody, QueryParams};
use crate::webhooks;
use bytes::Bytes;

/// One approval.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Approval {
    /// `apr_…`.
    pub id: String,
    /// The tool called.
    pub tool: String,
    /// The grant it came through.
    pub grant_id: Uuid,
    /// The grant's identity (the requester).
    pub identity: String,
    /// `pending`, `approved`, `denied`, `expired` or `consumed`.
    pub status: String,
    /// When the call first arrived.
    pub created_at: DateTime<Utc>,
    /// The server.
    pub server_id: Uuid,
    /// Arguments, as far as the policy lets the audit keep them.
    pub arguments: Option<Value>,
    /// Until when it may be decided.
    pub expires_at: DateTime<Utc>,
    /// When decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// The approver's note.
    pub note: Option<String>,
    /// When the approved call went through.
    pub consumed_at: Option<DateTime<Utc>>,
}

const SELECT: &str =
    "SELECT a.id, a.tool, a.grant_id, a.identity, a.status, a.created_at, a.server_id, a.arguments,
        a.expires_at, a.decided_at, u.email AS decided_by, a.note, a.consumed_at
   FROM approvals a LEFT JOIN users u ON u.id = a.decided_by";

/// Approvals of the tenant, newest first, optionally of one status.
pub async fn list(
    db: &sqlx::PgPool,
    tenant: TenantId,
    status: Option<&str>,
) -> Result<Vec<Approval>> {
    Ok(sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE a.tenant_id = $1 AND ($2::text IS NULL OR a.status = $2) ORDER BY a.created_at DESC LIMIT 500"
    )))
    .bind(tenant.0)
    .bind(status)
    .fetch_all(db)
    .await?)
}

/// One approval of the tenant.
pub async fn find(db: &sqlx::PgPool, tenant: TenantId, id: &ApprovalId) -> Result<Approval> {
    Ok(sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE a.tenant_id = $1 AND a.id = $2"
    )))
    .bind(tenant.0)
    .bind(id.as_str())
    .fetch_one(db)
    .await?)
}

/// Approves or denies a pending approval.
pub async fn decide(
    state: &AppState,
    who: &Tenant,
    id: &ApprovalId,
    approve: bool,
    note: Option<&str>,
) -> Result<Approval> {
    let before = find(state.db(), who.id, id).await?;
    let note: Option<String> = note
        .map(|n| n.trim().chars().take(2000).collect())
        .filter(|n: &String| !n.is_empty());
    let status = if approve { "approved" } else { "denied" };
    let mut tx = state.db().begin().await?;
    let updated = sqlx::query(
        "UPDATE approvals SET status = $3, decided_by = $4, decided_at = now(), note = $5
          WHERE tenant_id = $1 AND id = $2 AND status = 'pending' AND expires_at > now()",
    )
    .bind(who.id.0)
    .bind(id.as_str())
    .bind(status)
    .bind(who.actor.user_id.map(|u| u.0))
    .bind(&note)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        let state_now = if before.status == "pending" {
            "expired"
        } else {
            before.status.as_str()
        };
        return Err(Error::Conflict(format!(
            "this approval is already {state_now}"
        )));
    }
    let after: Approval = sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE a.tenant_id = $1 AND a.id = $2"
    )))
    .bind(who.id.0)
    .bind(id.as_str())
    .fetch_one(&mut *tx)
    .await?;
    admin_audit::record(
        &mut tx,
        who,
        if approve {
            "approval.approve"
        } else {
            "approval.deny"
        },
        "approval",
        id.as_str(),
        Some(json!(before)),
        Some(json!(after)),
    )
    .await?;
    webhooks::enqueue(
        &mut tx,
        who.id,
        &format!("approval.{status}"),
        &payload(&after),
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("portcullis_approvals_decided_total", "decision" => status).increment(1);
    Ok(after)
}

fn payload(a: &Approval) -> Value {
    json!({
        "id": a.id,
        "status": a.status,
        "tool": a.tool,
        "grant_id": a.grant_id,
        "server_id": a.server_id,
        "identity": a.identity,
        "arguments": a.arguments,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
        "decided_at": a.decided_at,
        "decided_by": a.decided_by,
        "note": a.note,
    })
}

/// One pass of the sweep: expire overdue pending approvals and queue `approval.requested` for
/// new ones. Returns how many approvals it expired.
pub async fn sweep(db: &sqlx::PgPool) -> anyhow::Result<u64> {
    let mut tx = db.begin().await?;
    let expired: Vec<Approval> = sqlx::query_as(crate::sql(format!(
        "WITH e AS (
            UPDATE approvals SET status = 'expired', decided_at = now()
             WHERE status = 'pending' AND expires_at <= now()
            RETURNING id)
         {SELECT} WHERE a.id IN (SELECT id FROM e)"
    )))
    .fetch_all(&mut *tx)
    .await?;
    // The CTE's update is not visible to the outer select: report the new status ourselves.
    for approval in &expired {
        let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM approvals WHERE id = $1")
            .bind(&approval.id)
            .fetch_one(&mut *tx)
            .await?;
        let mut body = payload(approval);
        body["status"] = json!("expired");
        webhooks::enqueue(&mut tx, TenantId(tenant), "approval.expired", &body).await?;
    }
    let fresh: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE approvals SET notified_at = now()
          WHERE id IN (SELECT id FROM approvals WHERE notified_at IS NULL ORDER BY created_at LIMIT 200
                       FOR UPDATE SKIP LOCKED)
         RETURNING tenant_id, id",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (tenant, id) in fresh {
        let approval: Approval = sqlx::query_as(crate::sql(format!("{SELECT} WHERE a.id = $1")))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        if approval.status == "pending" {
            webhooks::enqueue(
                &mut tx,
                TenantId(tenant),
                "approval.requested",
                &payload(&approval),
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(expired.len() as u64)
}

pub(crate) fn spawn_background(state: &AppState, shutdown: &CancellationToken) {
    let db = state.shared.db.clone();
    let interval = state
        .settings
        .approval_sweep_interval
        .max(std::time::Duration::from_millis(100));
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            match sweep(&db).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("portcullis_approvals_expired_total").increment(n);
                }
                Err(e) => tracing::warn!(error = %e, "approval sweep failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    });
}

// ---- API ----

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    status: Option<String>,
    notice: Option<String>,
}

fn status_filter(q: &ListQuery) -> Result<Option<&str>> {
    match q
        .status
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "all")
    {
        None => Ok(None),
        Some(s @ ("pending" | "approved" | "denied" | "expired" | "consumed")) => Ok(Some(s)),
        Some(_) => Err(Error::field(
            "/status",
            "use pending, approved, denied, expired or consumed",
        )),
    }
}

async fn api_list(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<axum::Json<Value>> {
    let approvals = list(state.db(), tenant.id, status_filter(&q)?).await?;
    Ok(axum::Json(json!({ "approvals": approvals })))
}

fn approval_id(text: &str) -> Result<ApprovalId> {
    text.parse().map_err(|_| Error::NotFound)
}

async fn api_get(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<Approval>> {
    Ok(axum::Json(
        find(state.db(), tenant.id, &approval_id(&id)?).await?,
    ))
}

#[derive(Debug, Default, Deserialize)]
struct NoteBody {
    note: Option<String>,
}

/// The optional `{note}` body; an empty body is no note.
fn note_of(body: &[u8]) -> Result<Option<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<NoteBody>(body)
        .map(|b| b.note)
        .map_err(|e| Error::BadRequest(format!("the body must be {{\"note\": \"…\"}}: {e}")))
}

async fn api_approve(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<Approval>> {
    let note = note_of(&body)?;
    Ok(axum::Json(
        decide(&state, &tenant, &approval_id(&id)?, true, note.as_deref()).await?,
    ))
}

async fn api_deny(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<Approval>> {
    let note = note_of(&body)?;
    Ok(axum::Json(
        decide(&state, &tenant, &approval_id(&id)?, false, note.as_deref()).await?,
    ))
}

/// `/api/v1/approvals…`.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/api/v1/approvals", get(api_list))
        .route("/api/v1/approvals/{id}", get(api_get))
        .route("/api/v1/approvals/{id}/approve", post(api_approve))
        .route("/api/v1/approvals/{id}/deny", post(api_deny))
}

// ---- pages ----

struct Row {
    id: String,
    tool: String,
    identity: String,
    grant_id: String,
    status: String,
    created: String,
    expires: String,
    arguments: String,
    decided: String,
    note: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "approvals.html")]
struct ApprovalsPage {
    layout: Layout,
    rows: Vec<Row>,
    status: String,
}

async fn approvals_page(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<ApprovalsPage> {
    let status = q.status.clone().unwrap_or_else(|| "pending".into());
    let filter = ListQuery {
        status: Some(status.clone()),
        notice: None,
    };
    let rows = list(state.db(), tenant.id, status_filter(&filter)?)
        .await?
        .into_iter()
        .map(|a| Row {
            arguments: a
                .arguments
                .as_ref()
                .map(|v| serde_json::to_string(v).unwrap_or_default())
                .unwrap_or_default(),
            decided: match (&a.decided_by, &a.decided_at) {
                (Some(by), Some(at)) => format!("{by}, {}", when(at)),
                (None, Some(at)) => when(at),
                _ => String::new(),
            },
            note: a.note.unwrap_or_default(),
            id: a.id,
            tool: a.tool,
            identity: a.identity,
            grant_id: a.grant_id.to_string(),
            status: a.status,
            created: when(&a.created_at),
            expires: when(&a.expires_at),
        })
        .collect();
    Ok(ApprovalsPage {
        layout: Layout::new(&tenant, "Approvals", "approvals").with_notice(q.notice),
        rows,
        status,
    })
}

#[derive(Debug, Default, Deserialize)]
struct NoteForm {
    #[serde(default)]
    note: String,
}

async fn approve_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
    FormBody(form): FormBody<NoteForm>,
) -> Result<Response> {
    let approval = decide(&state, &tenant, &approval_id(&id)?, true, Some(&form.note)).await?;
    Ok(see_other_with(
        "/approvals",
        &format!(
            "Approved {} ({}). The same call may now go through once.",
            approval.id, approval.tool
        ),
    ))
}

async fn deny_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
    FormBody(form): FormBody<NoteForm>,
) -> Result<Response> {
    let approval = decide(&state, &tenant, &approval_id(&id)?, false, Some(&form.note)).await?;
    Ok(see_other_with(
        "/approvals",
        &format!("Denied {} ({}).", approval.id, approval.tool),
    ))
}

/// The approvals queue and its forms.
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/approvals", get(approvals_page))
        .route("/approvals/{id}/approve", post(approve_submit))
        .route("/approvals/{id}/deny", post(deny_submit))
}
