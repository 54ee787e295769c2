//! The admin audit: who changed what (servers, policies, grants, members, settings), with the
//! object before and after. Written in the same transaction as the change it records.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Admin, Tenant};
use crate::error::Result;
use crate::input::QueryParams;
use portcullis_core::TenantId;

/// One change.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Entry {
    /// Entry id.
    pub id: Uuid,
    /// Who, as shown (`alice@example.com`, `token:ci`).
    pub actor_label: String,
    /// The user behind it, if any.
    pub actor_id: Option<Uuid>,
    /// `server.create`, `policy.update`, `grant.revoke`, …
    pub action: String,
    /// `server`, `policy`, `grant`, `member`, …
    pub object_kind: String,
    /// The object's id.
    pub object_id: String,
    /// The object before (absent for creations).
    pub before: Option<Value>,
    /// The object after (absent for deletions).
    pub after: Option<Value>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Records a change by `who` within the caller's transaction.
pub async fn record(
    conn: &mut PgConnection,
    who: &Tenant,
    action: &str,
    object_kind: &str,
    object_id: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO admin_audit (id, tenant_id, actor_id, actor_label, action, object_kind, object_id, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(Uuid::now_v7())
    .bind(who.id.0)
    .bind(who.actor.user_id.map(|u| u.0))
    .bind(&who.actor.label)
    .bind(action)
    .bind(object_kind)
    .bind(object_id)
    .bind(before)
    .bind(after)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a change by `who` and commits the transaction that made it: how a change ends.
pub async fn commit(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    who: &Tenant,
    action: &str,
    object_kind: &str,
    object_id: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<()> {
    record(&mut tx, who, action, object_kind, object_id, before, after).await?;
    tx.commit().await?;
    Ok(())
}

/// Query of the admin audit list.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only entries about this kind of object.
    pub object_kind: Option<String>,
    /// Entries older than this entry id (keyset).
    pub before: Option<Uuid>,
    /// Page size (default 50, at most 200).
    pub limit: Option<i64>,
}

impl ListQuery {
    /// The page size: 50 unless given; one outside 1 to 200 is refused (as the audit list
    /// refuses one outside its range) rather than quietly changed.
    pub fn page_size(&self) -> Result<i64> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=200).contains(&n) => Ok(n),
            Some(_) => Err(crate::error::Error::field("/limit", "use 1 to 200")),
        }
    }
}

/// Newest first, keyset-paginated by id (UUID v7 ids sort by time).
pub async fn list(db: &sqlx::PgPool, tenant: TenantId, q: &ListQuery) -> Result<Vec<Entry>> {
    let limit = q.page_size()?;
    let rows = sqlx::query_as::<_, Entry>(
        "SELECT id, actor_label, actor_id, action, object_kind, object_id, before, after, created_at
           FROM admin_audit
          WHERE tenant_id = $1
            AND ($2::text IS NULL OR object_kind = $2)
            AND ($3::uuid IS NULL OR id < $3)
          ORDER BY created_at DESC, id DESC
          LIMIT $4",
    )
    .bind(tenant.0)
    .bind(q.object_kind.as_deref().filter(|k| !k.is_empty()))
    .bind(q.before)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows)
}

async fn api_list(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<axum::Json<Value>> {
    let entries = list(state.db(), tenant.id, &q).await?;
    let next = (entries.len() as i64 == q.page_size()?)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(axum::Json(
        serde_json::json!({ "entries": entries, "next_before": next }),
    ))
}

/// `GET /api/v1/admin-audit`.
pub fn api() -> Router<AppState> {
    Router::new().route("/api/v1/admin-audit", get(api_list))
}
