//! Grant resolution: the SHA-256 of a bearer token → grant, server, tenant and policy.
//!
//! Resolutions are cached in memory for a few seconds ([`crate::cache`]: refreshed in the
//! background as they age, never kept from a load an invalidation overtook). The control plane
//! announces changes on Redis pub/sub ([`crate::invalidation`]), which drops the matching
//! entries at once; the TTL bounds staleness when an announcement is lost (twice the TTL at
//! most, while a refresh is under way).
//!
//! Tokens are unauthenticated input, so a miss must not cost Postgres without limit: a token
//! that resolved to no grant is remembered as unknown for [`UNKNOWN_TTL`], and at most
//! [`cold_load_permits`] misses query Postgres at once. A miss that cannot start its query
//! within the pool's acquire timeout is refused as the pool would refuse it (503). Cached grants never
//! wait for a permit.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use portcullis_core::{
    GrantId, GrantToken, Invalidation, Keyring, PolicyId, ServerId, TenantId, TokenHash,
};
use portcullis_policy::CompiledPolicy;
use sqlx::{PgPool, Row as _};
use tokio::sync::{Semaphore, watch};

use crate::cache::{Cache, Lookup};

/// How an upstream speaks MCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP (either protocol era).
    StreamableHttp,
    /// The 2024-11-05 HTTP+SSE transport: GET the SSE stream, POST to its `endpoint`.
    Sse,
}

/// An upstream MCP server as the gateway needs it.
#[derive(Debug)]
pub struct Server {
    /// The server.
    pub id: ServerId,
    /// Its owner.
    pub tenant: TenantId,
    /// The MCP endpoint (Streamable HTTP) or the SSE endpoint (HTTP+SSE).
    pub url: url::Url,
    /// `url` as a request target, parsed once.
    pub uri: http::Uri,
    /// How to talk to it.
    pub transport: Transport,
    /// Decrypted static headers (credentials) to inject into every upstream request.
    pub headers: HeaderMap,
    /// Tools whose definition changed since a human approved it are refused.
    pub block_changed_tools: bool,
}

/// The policy in force for a grant.
#[derive(Debug)]
pub struct PolicyRef {
    /// The policy.
    pub id: PolicyId,
    /// Its current version.
    pub version: i32,
    /// The compiled document; `None` when the stored document does not compile (every call is
    /// then denied, as without a policy).
    pub compiled: Option<Arc<CompiledPolicy>>,
}

/// A resolved grant: everything a request needs to be decided and forwarded. A caller that
/// presented a JWT from an identity provider resolves to one too ([`crate::identity`]), so
/// enforcement, limits and audit are one code path.
#[derive(Debug)]
pub struct Grant {
    /// The grant.
    pub id: GrantId,
    /// Its owner; every lookup below it is scoped by this.
    pub tenant: TenantId,
    /// The identity label (who the agent acts for).
    pub identity: String,
    /// The upstream it is bound to.
    pub server: Arc<Server>,
    /// Its policy.
    pub policy: Arc<PolicyRef>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// `id` as text, for policy charge keys (formatted once).
    pub id_text: String,
    /// `tenant` as text.
    pub tenant_text: String,
    /// `server.id` as text.
    pub server_text: String,
    /// The hash of its token, which finds it again ([`Grants::resolve_hash`]); `None` for an
    /// identity-bound caller, which has no grant row.
    pub token_hash: Option<TokenHash>,
    /// For an identity-bound caller: the issuer of its token.
    pub issuer: Option<String>,
    /// For an identity-bound caller: its token's `jti`.
    pub jti: Option<String>,
}

impl Grant {
    /// Usable now: not revoked, not expired.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && self.expires_at.is_none_or(|at| at > now)
    }
}

/// A tenant's identity provider, as the gateway verifies its tokens.
#[derive(Debug)]
pub struct Provider {
    /// The issuer, exactly as tokens name it.
    pub issuer: String,
    /// The gateway's URL as the provider names it: tokens for server S carry
    /// `{audience}/mcp/{S}` in `aud`.
    pub audience: String,
    /// The claim that names the identity (`sub` or `email`).
    pub identity_claim: String,
    /// The claim that lists the identity's groups.
    pub groups_claim: Option<String>,
}

/// A policy binding of a server.
#[derive(Debug)]
pub struct Binding {
    /// The binding.
    pub id: uuid::Uuid,
    /// The identity it is for, if one.
    pub identity: Option<String>,
    /// The group it is for, if one.
    pub group: Option<String>,
    /// The policy it applies.
    pub policy: Arc<PolicyRef>,
}

/// What identity-bound access to one server needs: the server, its tenant's providers and
/// its bindings (oldest first).
#[derive(Debug)]
pub struct Access {
    /// The server.
    pub server: Arc<Server>,
    /// The tenant's identity providers.
    pub providers: Vec<Provider>,
    /// The server's bindings, oldest first.
    pub bindings: Vec<Binding>,
}

/// The in-memory cache of grant resolutions and compiled policies.
pub struct Grants {
    db: PgPool,
    credentials: Keyring,
    entries: Cache<TokenHash, Grant, TenantId>,
    /// Identity-bound access by server.
    access: Cache<ServerId, Access, TenantId>,
    /// Server ids that named no server a moment ago.
    unknown_servers: Cache<ServerId, ()>,
    /// Tokens that resolved to no grant a moment ago.
    unknown: Cache<TokenHash, ()>,
    /// Permits for the misses that query Postgres.
    cold_loads: Semaphore,
    policies: RwLock<HashMap<(PolicyId, i32), Arc<CompiledPolicy>>>,
    /// How long a resolution is fresh.
    ttl: Duration,
    /// How long past twice the TTL a cached resolution serves while Postgres fails.
    grace: Duration,
    /// Counts the invalidations and clears, for what must look again when one happens
    /// ([`crate::lifetime`]).
    changes: watch::Sender<u64>,
    /// `portcullis_gateway_grant_cache_total`, `result` = `hit` (a cached grant), `unknown` (a
    /// token remembered as unknown), `miss` (a Postgres query), `busy` (refused: no permit).
    hits: metrics::Counter,
    unknown_hits: metrics::Counter,
    misses: metrics::Counter,
    busy: metrics::Counter,
}

/// Past this many cached entries the cache is cleared rather than grown (a crude bound that
/// only a flood of distinct valid tokens reaches).
const MAX_ENTRIES: usize = 100_000;
const MAX_POLICIES: usize = 10_000;
/// How long a token that resolved to no grant is answered as unknown without asking Postgres
/// (never longer than the grant cache TTL). Nothing announces a token hash that starts to
/// exist, so this is kept short; a new or rotated token is random and secret, so in practice
/// no one has presented it before it exists.
const UNKNOWN_TTL: Duration = Duration::from_secs(2);
/// Past this many remembered unknown tokens they are all forgotten rather than grown (about
/// 1 MB). A flood of distinct tokens only costs what [`cold_load_permits`] lets through.
const MAX_UNKNOWN: usize = 10_000;

/// How many misses may query Postgres at once: a quarter of the pool (4 of the 16 connections
/// `portcullis gateway` opens), so unknown tokens can never take the connections approvals,
/// tool catalogues and cache refreshes need.
fn cold_load_permits(db: &PgPool) -> usize {
    (db.options().get_max_connections() / 4).max(1) as usize
}

impl Grants {
    /// An empty cache in front of `db`, whose grants serve up to `grace` past twice the `ttl`
    /// while Postgres cannot be reached.
    pub fn new(db: PgPool, credentials: Keyring, ttl: Duration, grace: Duration) -> Self {
        Self {
            entries: Cache::with_grace(ttl, grace, MAX_ENTRIES),
            access: Cache::with_grace(ttl, grace, MAX_ENTRIES),
            unknown_servers: Cache::new(ttl.min(UNKNOWN_TTL), MAX_UNKNOWN),
            unknown: Cache::new(ttl.min(UNKNOWN_TTL), MAX_UNKNOWN),
            cold_loads: Semaphore::new(cold_load_permits(&db)),
            db,
            credentials,
            policies: RwLock::new(HashMap::new()),
            ttl,
            grace,
            changes: watch::Sender::new(0),
            hits: metrics::counter!("portcullis_gateway_grant_cache_total", "result" => "hit"),
            unknown_hits: metrics::counter!(
                "portcullis_gateway_grant_cache_total", "result" => "unknown"
            ),
            misses: metrics::counter!("portcullis_gateway_grant_cache_total", "result" => "miss"),
            busy: metrics::counter!("portcullis_gateway_grant_cache_total", "result" => "busy"),
        }
    }

    /// The grant of `token`, from the cache or Postgres; `None` when no grant has this token.
    /// Revocation and expiry are the caller's to check ([`Grant::is_usable`]). A miss that gets
    /// no permit to query Postgres in time is [`sqlx::Error::PoolTimedOut`]. When Postgres
    /// fails, a grant still cached within the grace serves.
    pub async fn resolve(
        self: &Arc<Self>,
        token: &GrantToken,
    ) -> Result<Option<Arc<Grant>>, sqlx::Error> {
        self.resolve_hash(token.hash()).await
    }

    /// [`Grants::resolve`] by the token's hash.
    pub async fn resolve_hash(
        self: &Arc<Self>,
        hash: TokenHash,
    ) -> Result<Option<Arc<Grant>>, sqlx::Error> {
        if let Some(known) = self.cached(hash) {
            return Ok(known);
        }
        match self.load_missed(hash).await {
            Err(e) => match self.entries.fallback(&hash) {
                Some(grant) => {
                    tracing::warn!(error = %e, "cannot load a grant; serving it as cached");
                    self.hits.increment(1);
                    Ok(Some(grant))
                }
                None => Err(e),
            },
            loaded => loaded,
        }
    }

    /// Loads a grant the cache missed, one query per token at a time.
    async fn load_missed(
        self: &Arc<Self>,
        hash: TokenHash,
    ) -> Result<Option<Arc<Grant>>, sqlx::Error> {
        let wait = self.db.options().get_acquire_timeout();
        let Ok(Ok(_permit)) = tokio::time::timeout(wait, self.cold_loads.acquire()).await else {
            self.busy.increment(1);
            return Err(sqlx::Error::PoolTimedOut);
        };
        // Concurrent misses of one token (a burst after a restart) query it once: the first
        // to get a permit caches what it found for those behind it.
        if let Some(known) = self.cached(hash) {
            return Ok(known);
        }
        self.misses.increment(1);
        let generation = self.entries.generation();
        let unknown_generation = self.unknown.generation();
        let Some(grant) = self.load(&hash).await? else {
            self.unknown.insert(hash, Arc::new(()), unknown_generation);
            return Ok(None);
        };
        let grant = Arc::new(grant);
        self.entries
            .insert_in(grant.tenant, hash, grant.clone(), generation);
        Ok(Some(grant))
    }

    /// What memory knows of a token: its grant, or that it has none; `None` for a miss.
    fn cached(self: &Arc<Self>, hash: TokenHash) -> Option<Option<Arc<Grant>>> {
        let hit = match self.entries.get(&hash) {
            Lookup::Fresh(grant) => Some(grant),
            Lookup::Stale { value, refresh } => {
                if refresh {
                    let this = self.clone();
                    let tenant = value.tenant;
                    tokio::spawn(async move { this.reload(hash, tenant).await });
                }
                Some(value)
            }
            Lookup::Miss => None,
        };
        if let Some(grant) = hit {
            self.hits.increment(1);
            return Some(Some(grant));
        }
        if matches!(self.unknown.get(&hash), Lookup::Fresh(_)) {
            self.unknown_hits.increment(1);
            return Some(None);
        }
        None
    }

    /// Reloads an entry that aged past the TTL, in the background. It takes no permit: only a
    /// cached grant (at most one reload each per TTL) gets here.
    async fn reload(&self, hash: TokenHash, tenant: TenantId) {
        let generation = self.entries.generation();
        match self.load(&hash).await {
            Ok(Some(grant)) => {
                self.entries
                    .insert_in(grant.tenant, hash, Arc::new(grant), generation);
            }
            Ok(None) => self.entries.remove_in(&tenant, &hash),
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh a cached grant");
                self.entries.refresh_failed(&hash);
            }
        }
    }

    /// What identity-bound access to `server` needs, from the cache or Postgres; `None` when
    /// no server has this id. Like a token, a server id is unauthenticated input: unknown ids
    /// are remembered for a moment and misses share the permits of grant misses.
    pub async fn access(
        self: &Arc<Self>,
        server: ServerId,
    ) -> Result<Option<Arc<Access>>, sqlx::Error> {
        match self.access.get(&server) {
            Lookup::Fresh(access) => return Ok(Some(access)),
            Lookup::Stale { value, refresh } => {
                if refresh {
                    let this = self.clone();
                    let tenant = value.server.tenant;
                    tokio::spawn(async move { this.reload_access(server, tenant).await });
                }
                return Ok(Some(value));
            }
            Lookup::Miss => {}
        }
        if matches!(self.unknown_servers.get(&server), Lookup::Fresh(_)) {
            return Ok(None);
        }
        let wait = self.db.options().get_acquire_timeout();
        let Ok(Ok(_permit)) = tokio::time::timeout(wait, self.cold_loads.acquire()).await else {
            self.busy.increment(1);
            return Err(sqlx::Error::PoolTimedOut);
        };
        let generation = self.access.generation();
        let unknown_generation = self.unknown_servers.generation();
        match self.load_access(server).await {
            Ok(Some(access)) => {
                let access = Arc::new(access);
                self.access
                    .insert_in(access.server.tenant, server, access.clone(), generation);
                Ok(Some(access))
            }
            Ok(None) => {
                self.unknown_servers
                    .insert(server, Arc::new(()), unknown_generation);
                Ok(None)
            }
            Err(e) => match self.access.fallback(&server) {
                Some(access) => {
                    tracing::warn!(error = %e, "cannot load a server's bindings; serving them as cached");
                    Ok(Some(access))
                }
                None => Err(e),
            },
        }
    }

    async fn reload_access(&self, server: ServerId, tenant: TenantId) {
        let generation = self.access.generation();
        match self.load_access(server).await {
            Ok(Some(access)) => {
                self.access
                    .insert_in(access.server.tenant, server, Arc::new(access), generation);
            }
            Ok(None) => self.access.remove_in(&tenant, &server),
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh a server's cached bindings");
                self.access.refresh_failed(&server);
            }
        }
    }

    async fn load_access(&self, server: ServerId) -> Result<Option<Access>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT s.id AS server_id, s.tenant_id, s.url, s.transport, s.headers_enc, s.block_changed_tools
               FROM servers s WHERE s.id = $1",
        )
        .bind(server.0)
        .fetch_optional(&self.db)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let server = self.server(&row)?;
        let providers = sqlx::query(
            "SELECT issuer, audience, identity_claim, groups_claim FROM identity_providers
              WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(server.tenant.0)
        .fetch_all(&self.db)
        .await?
        .iter()
        .map(|row| {
            Ok(Provider {
                issuer: row.try_get("issuer")?,
                audience: row.try_get("audience")?,
                identity_claim: row.try_get("identity_claim")?,
                groups_claim: row.try_get("groups_claim")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        let bindings = sqlx::query(
            "SELECT b.id, b.identity, b.group_name, p.id AS policy_id, p.current_version, v.document
               FROM policy_bindings b
               JOIN policies p ON p.tenant_id = b.tenant_id AND p.id = b.policy_id
               LEFT JOIN policy_versions v
                      ON v.tenant_id = p.tenant_id AND v.policy_id = p.id AND v.version = p.current_version
              WHERE b.tenant_id = $1 AND b.server_id = $2
              ORDER BY b.created_at, b.id",
        )
        .bind(server.tenant.0)
        .bind(server.id.0)
        .fetch_all(&self.db)
        .await?
        .iter()
        .map(|row| {
            let policy = PolicyId(row.try_get("policy_id")?);
            let version: i32 = row.try_get("current_version")?;
            let document: Option<serde_json::Value> = row.try_get("document")?;
            Ok(Binding {
                id: row.try_get("id")?,
                identity: row.try_get("identity")?,
                group: row.try_get("group_name")?,
                policy: Arc::new(PolicyRef {
                    id: policy,
                    version,
                    compiled: self.compile(policy, version, document.as_ref()),
                }),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        Ok(Some(Access {
            server: Arc::new(server),
            providers,
            bindings,
        }))
    }

    /// The server of a row with its `server_id`, `tenant_id`, `url`, `transport`,
    /// `headers_enc` and `block_changed_tools`.
    fn server(&self, row: &sqlx::postgres::PgRow) -> Result<Server, sqlx::Error> {
        let tenant = TenantId(row.try_get("tenant_id")?);
        let server_id = ServerId(row.try_get("server_id")?);
        let url_text: String = row.try_get("url")?;
        let transport = match row.try_get::<String, _>("transport")?.as_str() {
            "sse" => Transport::Sse,
            _ => Transport::StreamableHttp,
        };
        let sealed: Option<Vec<u8>> = row.try_get("headers_enc")?;
        let url = url::Url::parse(&url_text)
            .map_err(|e| sqlx::Error::Decode(format!("server {server_id} url: {e}").into()))?;
        let uri = crate::upstream::uri(&url)
            .map_err(|e| sqlx::Error::Decode(format!("server {server_id} url: {e}").into()))?;
        let headers = self.open_headers(tenant, server_id, sealed.as_deref());
        Ok(Server {
            id: server_id,
            tenant,
            url,
            uri,
            transport,
            headers,
            block_changed_tools: row.try_get("block_changed_tools")?,
        })
    }

    async fn load(&self, hash: &TokenHash) -> Result<Option<Grant>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT g.id, g.tenant_id, g.identity, g.expires_at, g.revoked_at IS NOT NULL AS revoked,
                    p.id AS policy_id, p.current_version, v.document,
                    s.id AS server_id, s.url, s.transport, s.headers_enc, s.block_changed_tools
               FROM grants g
               JOIN servers s ON s.tenant_id = g.tenant_id AND s.id = g.server_id
               JOIN policies p ON p.tenant_id = g.tenant_id AND p.id = g.policy_id
               LEFT JOIN policy_versions v
                      ON v.tenant_id = p.tenant_id AND v.policy_id = p.id AND v.version = p.current_version
              WHERE g.token_hash = $1",
        )
        .bind(hash.as_bytes())
        .fetch_optional(&self.db)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id = GrantId(row.try_get("id")?);
        let tenant = TenantId(row.try_get("tenant_id")?);
        let policy_id = PolicyId(row.try_get("policy_id")?);
        let version: i32 = row.try_get("current_version")?;
        let document: Option<serde_json::Value> = row.try_get("document")?;
        let server = self.server(&row)?;
        let server_id = server.id;
        let compiled = self.compile(policy_id, version, document.as_ref());
        Ok(Some(Grant {
            id,
            tenant,
            identity: row.try_get("identity")?,
            id_text: id.to_string(),
            tenant_text: tenant.to_string(),
            server_text: server_id.to_string(),
            server: Arc::new(server),
            policy: Arc::new(PolicyRef {
                id: policy_id,
                version,
                compiled,
            }),
            expires_at: row.try_get("expires_at")?,
            revoked: row.try_get("revoked")?,
            token_hash: Some(*hash),
            issuer: None,
            jti: None,
        }))
    }

    /// Opens a server's sealed static headers. A value that cannot be opened (a key dropped
    /// from the ring too early) is logged and treated as no headers: the upstream then refuses
    /// the call itself, which is visible, rather than the gateway guessing.
    fn open_headers(&self, tenant: TenantId, server: ServerId, sealed: Option<&[u8]>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let Some(sealed) = sealed else { return headers };
        let context = portcullis_core::crypto::server_headers_context(tenant, server);
        let plain = match self.credentials.open(sealed, &context) {
            Ok(plain) => plain,
            Err(e) => {
                tracing::error!(%tenant, %server, error = %e, "cannot open the server's stored headers");
                return headers;
            }
        };
        let Ok(map) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&plain)
        else {
            tracing::error!(%tenant, %server, "the server's stored headers are not a JSON object");
            return headers;
        };
        for (name, value) in map {
            let (Ok(name), Some(Ok(mut value))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::from_str),
            ) else {
                tracing::error!(%tenant, %server, header = %name, "skipping an unusable stored header");
                continue;
            };
            // A credential: never printed by `Debug`, never indexed by HTTP/2 header compression.
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        headers
    }

    fn compile(
        &self,
        policy: PolicyId,
        version: i32,
        document: Option<&serde_json::Value>,
    ) -> Option<Arc<CompiledPolicy>> {
        if let Some(hit) = self
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(policy, version))
        {
            return Some(hit.clone());
        }
        let compiled = match CompiledPolicy::from_json(document?) {
            Ok(compiled) => Arc::new(compiled),
            Err(errors) => {
                tracing::error!(%policy, version, errors = errors.len(), "stored policy does not compile; denying every call");
                return None;
            }
        };
        let mut policies = self.policies.write().unwrap_or_else(|e| e.into_inner());
        if policies.len() >= MAX_POLICIES {
            policies.clear();
        }
        policies.insert((policy, version), compiled.clone());
        Some(compiled)
    }

    /// Drops the entries an invalidation concerns (looking at its tenant's only), and forgets
    /// every unknown token (no message names a token hash, and forgetting costs one query per
    /// token at most).
    pub fn invalidate(&self, message: &Invalidation) {
        self.unknown.clear();
        self.unknown_servers.clear();
        self.access.retain_in(&message.tenant(), |a| match message {
            Invalidation::Grant { .. } => true,
            Invalidation::Policy { policy_id, .. } => {
                a.bindings.iter().all(|b| b.policy.id != *policy_id)
            }
            Invalidation::Server { server_id, .. } => a.server.id != *server_id,
            Invalidation::Tenant { .. } => false,
        });
        self.entries
            .retain_in(&message.tenant(), |g| match message {
                Invalidation::Grant { grant_id, .. } => g.id != *grant_id,
                Invalidation::Policy { policy_id, .. } => g.policy.id != *policy_id,
                Invalidation::Server { server_id, .. } => g.server.id != *server_id,
                Invalidation::Tenant { .. } => false,
            });
        // Only now: what wakes must find the entries gone, not race their removal.
        self.changed();
    }

    /// Drops everything (the invalidation feed was interrupted, so anything may be stale).
    pub fn clear(&self) {
        self.entries.clear();
        self.access.clear();
        self.unknown_servers.clear();
        self.unknown.clear();
        self.changed();
    }

    /// How long a resolution is fresh (a change no message announced shows within twice that).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long a grant last read from Postgres is trusted while Postgres cannot be reached:
    /// twice the TTL, plus the grace.
    pub fn trusted_for(&self) -> Duration {
        self.ttl * 2 + self.grace
    }

    /// Wakes at every invalidation or clear of this cache.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly by design.

    use std::time::Instant;

    use sqlx::postgres::PgPoolOptions;

    use super::*;

    /// The pool's acquire timeout in these tests: how long a miss waits for a permit.
    const WAIT: Duration = Duration::from_millis(250);

    /// Grants in front of a closed pool: whatever reaches Postgres fails at once with
    /// `PoolClosed`, so an `Ok` answer proves it came from memory.
    async fn offline(max_connections: u32) -> Grants {
        let db = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(WAIT)
            .connect_lazy("postgres://postgres@127.0.0.1:1/none")
            .unwrap();
        db.close().await;
        Grants::new(
            db,
            Keyring::generate(1).0,
            Duration::from_secs(60),
            Duration::ZERO,
        )
    }

    /// Remembers `token` as unknown, as `resolve` does when Postgres has no grant for it.
    fn remember_unknown(grants: &Grants, token: &GrantToken) {
        let generation = grants.unknown.generation();
        grants
            .unknown
            .insert(token.hash(), Arc::new(()), generation);
    }

    fn cache_grant(grants: &Grants, token: &GrantToken) {
        let tenant = TenantId::new();
        let url = url::Url::parse("http://127.0.0.1:9/mcp").unwrap();
        let grant = Grant {
            id: GrantId::new(),
            tenant,
            identity: "someone".to_owned(),
            server: Arc::new(Server {
                id: ServerId::new(),
                tenant,
                uri: crate::upstream::uri(&url).unwrap(),
                url,
                transport: Transport::StreamableHttp,
                headers: HeaderMap::new(),
                block_changed_tools: false,
            }),
            policy: Arc::new(PolicyRef {
                id: PolicyId::new(),
                version: 1,
                compiled: None,
            }),
            expires_at: None,
            revoked: false,
            id_text: String::new(),
            tenant_text: String::new(),
            server_text: String::new(),
            token_hash: Some(token.hash()),
            issuer: None,
            jti: None,
        };
        let generation = grants.entries.generation();
        grants
            .entries
            .insert_in(grant.tenant, token.hash(), Arc::new(grant), generation);
    }

    fn went_to_postgres(answer: Result<Option<Arc<Grant>>, sqlx::Error>) -> bool {
        matches!(answer, Err(sqlx::Error::PoolClosed))
    }

    #[tokio::test]
    async fn cold_loads_get_a_quarter_of_the_pool() {
        assert_eq!(offline(16).await.cold_loads.available_permits(), 4);
        assert_eq!(offline(2).await.cold_loads.available_permits(), 1);
    }

    #[tokio::test]
    async fn an_unknown_token_is_answered_from_memory_until_it_expires() {
        let mut grants = offline(16).await;
        grants.unknown = Cache::new(Duration::from_millis(40), MAX_UNKNOWN);
        let grants = Arc::new(grants);
        let (bad, other) = (GrantToken::generate(), GrantToken::generate());
        remember_unknown(&grants, &bad);
        assert!(grants.resolve(&bad).await.unwrap().is_none());
        assert!(grants.resolve(&bad).await.unwrap().is_none());
        assert!(went_to_postgres(grants.resolve(&other).await));
        std::thread::sleep(Duration::from_millis(45));
        assert!(went_to_postgres(grants.resolve(&bad).await));
    }

    #[tokio::test]
    async fn unknown_tokens_are_bounded_and_forgotten_on_invalidation() {
        let mut grants = offline(16).await;
        grants.unknown = Cache::new(Duration::from_secs(60), 2);
        let grants = Arc::new(grants);
        let tokens: Vec<_> = (0..3).map(|_| GrantToken::generate()).collect();
        for token in &tokens {
            remember_unknown(&grants, token);
        }
        // The third one found the set full and cleared it.
        assert!(went_to_postgres(grants.resolve(&tokens[0]).await));
        assert!(grants.resolve(&tokens[2]).await.unwrap().is_none());
        grants.invalidate(&Invalidation::Grant {
            tenant_id: TenantId::new(),
            grant_id: GrantId::new(),
        });
        assert!(went_to_postgres(grants.resolve(&tokens[2]).await));
        remember_unknown(&grants, &tokens[1]);
        grants.clear();
        assert!(went_to_postgres(grants.resolve(&tokens[1]).await));
    }

    #[tokio::test]
    async fn a_miss_without_a_permit_is_refused_quickly_and_a_cached_grant_never_waits() {
        let grants = Arc::new(offline(4).await);
        let (good, bad) = (GrantToken::generate(), GrantToken::generate());
        cache_grant(&grants, &good);
        let held = grants.cold_loads.acquire().await.unwrap();
        assert_eq!(grants.cold_loads.available_permits(), 0);

        let started = Instant::now();
        assert!(grants.resolve(&good).await.unwrap().is_some());
        assert!(started.elapsed() < WAIT);

        let started = Instant::now();
        assert!(matches!(
            grants.resolve(&bad).await,
            Err(sqlx::Error::PoolTimedOut)
        ));
        assert!(started.elapsed() >= WAIT);
        assert!(started.elapsed() < WAIT * 4);

        drop(held);
        assert!(went_to_postgres(grants.resolve(&bad).await));
        // The failed query gave its permit back.
        assert_eq!(grants.cold_loads.available_permits(), 1);
    }
}
