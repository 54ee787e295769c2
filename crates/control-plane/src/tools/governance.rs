//! What the current policies do with a tool: each policy's current version, compiled by the
//! policy crate as the gateway compiles it, asked which rule governs the tool
//! ([`CompiledPolicy::governing`], the gateway's own lookup).

use std::collections::HashMap;

use portcullis_core::{ServerId, TenantId};
use portcullis_policy::{CompiledPolicy, Governing, RiskCategory};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::error::Result;

/// One policy's current version, compiled.
pub struct Current {
    /// Policy id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// The version in force.
    pub version: i32,
    /// The compiled document, or why it does not compile (the gateway then has no policy).
    pub compiled: std::result::Result<CompiledPolicy, String>,
}

/// The current policies of a tenant (or of one server), grouped by server.
#[derive(Default)]
pub struct Policies(HashMap<Uuid, Vec<Current>>);

/// What one policy does with one tool.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyEffect {
    /// Policy id.
    pub policy_id: Uuid,
    /// Policy name.
    pub policy_name: String,
    /// The version evaluated.
    pub version: i32,
    /// The governing rule and its effect; `None` when the document does not compile.
    pub governing: Option<Governing>,
    /// One line for people.
    pub summary: String,
    /// Whether this policy governs the tool (see [`Governing::governed`]).
    pub governed: bool,
}

impl Policies {
    /// Loads and compiles the current version of every policy of `tenant` (of `server` only,
    /// when given).
    pub async fn load(
        db: &sqlx::PgPool,
        tenant: TenantId,
        server: Option<ServerId>,
    ) -> Result<Self> {
        let rows: Vec<(Uuid, Uuid, String, i32, Value)> = sqlx::query_as(
            "SELECT p.id, p.server_id, p.name, p.current_version, v.document
               FROM policies p
               JOIN policy_versions v
                 ON v.tenant_id = p.tenant_id AND v.policy_id = p.id AND v.version = p.current_version
              WHERE p.tenant_id = $1 AND ($2::uuid IS NULL OR p.server_id = $2)
              ORDER BY p.name",
        )
        .bind(tenant.0)
        .bind(server.map(|s| s.0))
        .fetch_all(db)
        .await?;
        let mut by_server: HashMap<Uuid, Vec<Current>> = HashMap::new();
        for (id, server_id, name, version, document) in rows {
            let compiled = CompiledPolicy::from_json(&document).map_err(|errors| {
                errors
                    .first()
                    .map(|e| format!("{}: {}", e.pointer, e.message))
                    .unwrap_or_default()
            });
            by_server.entry(server_id).or_default().push(Current {
                id,
                name,
                version,
                compiled,
            });
        }
        Ok(Self(by_server))
    }

    /// The policies of one server.
    pub fn of(&self, server: Uuid) -> &[Current] {
        self.0.get(&server).map(Vec::as_slice).unwrap_or_default()
    }

    /// What each policy of `server` does with `tool`.
    pub fn effects(
        &self,
        server: Uuid,
        tool: &str,
        category: Option<RiskCategory>,
    ) -> Vec<PolicyEffect> {
        self.of(server)
            .iter()
            .map(|p| match &p.compiled {
                Ok(compiled) => {
                    let governing = compiled.governing(tool, category);
                    PolicyEffect {
                        policy_id: p.id,
                        policy_name: p.name.clone(),
                        version: p.version,
                        summary: governing.summary(),
                        governed: governing.governed(),
                        governing: Some(governing),
                    }
                }
                Err(problem) => PolicyEffect {
                    policy_id: p.id,
                    policy_name: p.name.clone(),
                    version: p.version,
                    governing: None,
                    summary: format!("does not compile ({problem}): every call is denied"),
                    governed: true,
                },
            })
            .collect()
    }
}
