//! Human approvals: a call that needs one opens a pending approval bound to the grant and a
//! fingerprint of the tool and its canonical arguments; once an approver approves it (in the
//! control plane), the identical call passes exactly once.
//!
//! "Exactly once" is the database's: consuming is one `UPDATE … WHERE status = 'approved'`,
//! so two replicas racing for the same approval cannot both win. The partial unique index on
//! `(grant_id, fingerprint)` over open approvals makes opening idempotent: a retried call finds
//! its pending approval instead of creating another.

use std::time::Duration;

use portcullis_core::{ApprovalId, TenantId};
use serde_json::Value;
use sqlx::PgPool;

use crate::grants::Grant;

/// Takes the approved approval of this call, if there is one; returns its id.
pub async fn consume(
    db: &PgPool,
    grant: &Grant,
    fingerprint: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE approvals SET status = 'consumed', consumed_at = now()
          WHERE id = (SELECT id FROM approvals
                       WHERE tenant_id = $1 AND grant_id = $2 AND fingerprint = $3
                         AND status = 'approved' AND expires_at > now()
                       LIMIT 1 FOR UPDATE SKIP LOCKED)
            AND status = 'approved'
      RETURNING id",
    )
    .bind(grant.tenant.0)
    .bind(grant.id.0)
    .bind(fingerprint)
    .fetch_optional(db)
    .await
}

/// An approval a call consumed. Until the call is sent on ([`Consumed::used`]) it belongs to
/// the call's retry: given back when the call is refused after all ([`Consumed::give_back`]),
/// and, when the request is dropped before (the client went away while the call was charged
/// or its decision written), given back in the background as it is dropped.
pub struct Consumed {
    id: String,
    tenant: TenantId,
    /// Where to give it back; `None` once used or given back.
    db: Option<PgPool>,
}

impl Consumed {
    /// Approval `id` of `tenant`, consumed in `db`.
    pub fn new(db: PgPool, tenant: TenantId, id: String) -> Self {
        Self {
            id,
            tenant,
            db: Some(db),
        }
    }

    /// Approval `id`, which nothing will give back (tests).
    #[cfg(test)]
    pub(crate) fn detached(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            tenant: TenantId::new(),
            db: None,
        }
    }

    /// The call went to the upstream (it may have run): the approval is spent.
    pub fn used(mut self) {
        self.db = None;
    }

    /// Gives it back now ([`restore`]).
    pub async fn give_back(mut self) -> Result<(), sqlx::Error> {
        match self.db.take() {
            Some(db) => restore(&db, self.tenant, &self.id).await,
            None => Ok(()),
        }
    }
}

impl Drop for Consumed {
    fn drop(&mut self) {
        let Some(db) = self.db.take() else { return };
        let (tenant, id) = (self.tenant, std::mem::take(&mut self.id));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(approval = %id, "cannot give an unused approval back: no runtime");
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = restore(&db, tenant, &id).await {
                tracing::warn!(error = %e, approval = %id, "cannot give an unused approval back");
            }
        });
    }
}

impl std::fmt::Debug for Consumed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Consumed").field(&self.id).finish()
    }
}

/// Gives a consumed approval back (the call it was consumed for was then rate limited, refused
/// as a used continuation, or never reached the upstream's tool).
///
/// Its transaction's future is large: callers on the request path box it (`Box::pin`), or it
/// would make every call's future larger (and a call's future is moved, so copied, a few
/// times per call) for a branch few calls take.
///
/// An identical retry may have opened a new pending approval meanwhile (the consumed one no
/// longer held the call's open slot); the restored approval supersedes it. If another approval
/// of the call was approved meanwhile, that one serves the retry and this one stays consumed.
pub async fn restore(db: &PgPool, tenant: TenantId, id: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE approvals SET status = 'expired'
          WHERE status = 'pending'
            AND (tenant_id, grant_id, fingerprint) =
                (SELECT tenant_id, grant_id, fingerprint FROM approvals
                  WHERE tenant_id = $1 AND id = $2 AND status = 'consumed')",
    )
    .bind(tenant.0)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let restored = sqlx::query(
        "UPDATE approvals a SET status = 'approved', consumed_at = NULL
          WHERE a.tenant_id = $1 AND a.id = $2 AND a.status = 'consumed'
            AND NOT EXISTS (SELECT 1 FROM approvals o
                             WHERE o.grant_id = a.grant_id AND o.fingerprint = a.fingerprint
                               AND o.status IN ('pending', 'approved'))",
    )
    .bind(tenant.0)
    .bind(id)
    .execute(&mut *tx)
    .await;
    match restored {
        Ok(_) => tx.commit().await,
        // A retry opened the call's approval again between the two statements: it stands.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(()),
        Err(e) => Err(e),
    }
}

/// What asking for an approval came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// The call's open approval: pending, or approved and not yet used.
    Open(String),
    /// None: the grant has `max_pending` approvals pending already.
    TooMany,
}

/// The open approval of this call: the one that exists, else a new pending one while the
/// grant has fewer than `max_pending` pending (racing calls may pass that bound by a few).
pub async fn open(
    db: &PgPool,
    grant: &Grant,
    tool: &str,
    fingerprint: &str,
    arguments: &Value,
    timeout: Duration,
    max_pending: u32,
) -> Result<Opened, sqlx::Error> {
    // An open approval past its deadline no longer counts; retire it so a new one can open.
    sqlx::query(
        "UPDATE approvals SET status = 'expired'
          WHERE tenant_id = $1 AND grant_id = $2 AND fingerprint = $3
            AND status IN ('pending', 'approved') AND expires_at <= now()",
    )
    .bind(grant.tenant.0)
    .bind(grant.id.0)
    .bind(fingerprint)
    .execute(db)
    .await?;
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2);
    for _ in 0..3 {
        // The count reads the grant's open approvals through the index that keeps one open
        // approval per call, so it costs at most `max_pending` index entries.
        let created: Option<String> = sqlx::query_scalar(
            "INSERT INTO approvals (id, tenant_id, grant_id, server_id, identity, tool, fingerprint,
                                    arguments, status, expires_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, 'pending',
                    now() + make_interval(secs => $9::double precision / 1000)
              WHERE (SELECT count(*) FROM approvals
                      WHERE grant_id = $3 AND status = 'pending' AND expires_at > now()) < $10
             ON CONFLICT (grant_id, fingerprint) WHERE status IN ('pending', 'approved') DO NOTHING
             RETURNING id",
        )
        .bind(ApprovalId::new().as_str())
        .bind(grant.tenant.0)
        .bind(grant.id.0)
        .bind(grant.server.id.0)
        .bind(&grant.identity)
        .bind(tool)
        .bind(fingerprint)
        .bind(arguments)
        .bind(timeout_ms)
        .bind(i64::from(max_pending))
        .fetch_optional(db)
        .await?;
        if let Some(id) = created {
            return Ok(Opened::Open(id));
        }
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT id FROM approvals
              WHERE tenant_id = $1 AND grant_id = $2 AND fingerprint = $3
                AND status IN ('pending', 'approved')",
        )
        .bind(grant.tenant.0)
        .bind(grant.id.0)
        .bind(fingerprint)
        .fetch_optional(db)
        .await?;
        if let Some(id) = existing {
            return Ok(Opened::Open(id));
        }
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM approvals
              WHERE grant_id = $1 AND status = 'pending' AND expires_at > now()",
        )
        .bind(grant.id.0)
        .fetch_one(db)
        .await?;
        if pending >= i64::from(max_pending) {
            return Ok(Opened::TooMany);
        }
        // The open approval changed state between the statements; try again.
    }
    Err(sqlx::Error::Protocol(
        "approval kept changing state while being opened".into(),
    ))
}
