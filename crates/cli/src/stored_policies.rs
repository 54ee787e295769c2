//! `portcullis check-policies`: every policy in the database, compiled as a gateway of this
//! release compiles it. Run before an upgrade (with the new binary) to find the policies whose
//! grants the new release would deny every call, and after one to confirm none is left.

use std::fmt::Write as _;

use anyhow::Context as _;
use portcullis_core::{PolicyId, TenantId};
use portcullis_policy::CompiledPolicy;
use uuid::Uuid;

use crate::Config;

/// A current policy version this release refuses.
#[derive(Debug)]
pub struct Refused {
    pub tenant: String,
    pub tenant_id: TenantId,
    pub policy: String,
    pub policy_id: PolicyId,
    pub version: i32,
    /// Grants neither revoked nor expired: whose calls are denied.
    pub live_grants: i64,
    /// Each error, its JSON pointer first.
    pub errors: Vec<String>,
}

/// What a check found.
#[derive(Debug)]
pub struct Report {
    /// Policies checked (their current versions).
    pub checked: usize,
    pub refused: Vec<Refused>,
}

impl Report {
    /// The report as printed: each refused policy with its errors, then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.refused {
            let _ = writeln!(
                out,
                "refused: tenant {:?} ({}), policy {:?} ({}), version {}, {} live grant{}",
                r.tenant,
                r.tenant_id,
                r.policy,
                r.policy_id,
                r.version,
                r.live_grants,
                if r.live_grants == 1 { "" } else { "s" },
            );
            for e in &r.errors {
                let _ = writeln!(out, "  {e}");
            }
        }
        let _ = write!(out, "checked {} policies: ", self.checked);
        if self.refused.is_empty() {
            out.push_str("all compile");
        } else {
            let _ = write!(
                out,
                "{} refused (every call through their grants is denied until a fixed version is saved)",
                self.refused.len()
            );
        }
        out
    }
}

/// Compiles the current version of every policy in the database of `config`.
pub async fn check(config: &Config) -> anyhow::Result<Report> {
    let pool = crate::app::one_connection(config).await?;
    let rows: Vec<(String, Uuid, String, Uuid, i32, serde_json::Value, i64)> = sqlx::query_as(
        "SELECT t.name, p.tenant_id, p.name, p.id, p.current_version, v.document,
                (SELECT count(*) FROM grants g
                  WHERE g.tenant_id = p.tenant_id AND g.policy_id = p.id
                    AND g.revoked_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > now()))
           FROM policies p
           JOIN tenants t ON t.id = p.tenant_id
           JOIN policy_versions v ON v.policy_id = p.id AND v.version = p.current_version
          ORDER BY t.name, t.id, p.name",
    )
    .fetch_all(&pool)
    .await
    .context("cannot read the stored policies")?;
    pool.close().await;
    let checked = rows.len();
    let refused = rows
        .into_iter()
        .filter_map(
            |(tenant, tenant_id, policy, policy_id, version, document, live_grants)| {
                let errors = CompiledPolicy::from_json(&document).err()?;
                Some(Refused {
                    tenant,
                    tenant_id: tenant_id.into(),
                    policy,
                    policy_id: policy_id.into(),
                    version,
                    live_grants,
                    errors: errors.iter().map(ToString::to_string).collect(),
                })
            },
        )
        .collect();
    Ok(Report { checked, refused })
}
