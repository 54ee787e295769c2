//! The Portcullis gateway: resolves grants, enforces policy, proxies to upstream MCP servers.
//!
//! A request goes through, in order (DESIGN §2): grant resolution ([`grants`]), parsing and
//! protocol-era checks (`portcullis-mcp`), the policy decision ([`enforce`]), the limiter
//! ([`limiter`]), the decision's audit entry ([`audit`]), the upstream call ([`upstream`],
//! [`legacy`]) with the answer streamed back ([`relay`]), and the outcome's audit entry. When
//! tracing is on, the request's trace span records what was decided ([`spans`]). See
//! `docs/gateway.md`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use portcullis_core::Keyring;
use portcullis_core::egress::Egress;
use portcullis_core::redis_keys::RedisKeys;
use portcullis_redis::{Conn, Redis};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub mod approvals;
pub mod audit;
pub mod batch;
pub mod cache;
pub mod catalogue;
pub mod continuation;
pub mod enforce;
pub mod error;
pub mod grants;
pub mod identity;
pub mod invalidation;
pub mod legacy;
pub mod lifetime;
pub mod limiter;
pub mod meters;
pub mod proxy;
pub mod relay;
pub mod replies;
pub mod resource;
pub mod sessions;
pub mod spans;
pub mod spill;
pub mod upstream;

pub use batch::Leftover;
pub use error::GatewayError;

/// Settings of this service alone; the `portcullis` command flattens them into its one
/// configuration, so each is a flag and a `PORTCULLIS_*` environment variable.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "gateway")]
pub struct Settings {
    /// Keys that seal the session ids clients see: `ID:BASE64[,ID:BASE64…]`, 32-byte keys, the
    /// first one sealing, all opening (add a new key first to rotate). Every replica needs the
    /// same ring. Required by the gateway; make one with `portcullis keygen`.
    #[arg(long, env = "PORTCULLIS_SESSION_KEYS", hide_env_values = true)]
    pub session_keys: Option<String>,

    /// How long a session id opens after it was issued (e.g. `24h`); an older one is answered
    /// 404, which tells a client to start a new session. It also bounds how long a retired
    /// session key must stay in the ring. 0 (the default): as long as its key is in the ring.
    #[arg(long, env = "PORTCULLIS_SESSION_MAX_AGE", default_value = "0s", value_parser = portcullis_core::settings::parse_duration)]
    pub session_max_age: Duration,

    /// Largest request body the gateway accepts (e.g. `4MiB`); larger ones get 413.
    #[arg(long, env = "PORTCULLIS_GATEWAY_MAX_BODY", default_value = "4MiB", value_parser = portcullis_core::settings::parse_size)]
    pub gateway_max_body: usize,

    /// How long connecting to an upstream may take.
    #[arg(long, env = "PORTCULLIS_UPSTREAM_CONNECT_TIMEOUT", default_value = "3s", value_parser = positive_duration)]
    pub upstream_connect_timeout: Duration,

    /// How long an upstream may take to start answering (and to finish a JSON answer); SSE
    /// streams may then run as long as they like.
    #[arg(long, env = "PORTCULLIS_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub upstream_timeout: Duration,

    /// How long a resolved grant, its policy and its server's tools stay cached without an
    /// invalidation (changes announced by the control plane apply at once). From 100ms (0
    /// would send every request to Postgres) to 60s (the bound on staleness if an announcement
    /// is lost).
    #[arg(long, env = "PORTCULLIS_GRANT_CACHE_TTL", default_value = "5s", value_parser = cache_ttl)]
    pub grant_cache_ttl: Duration,

    /// How long past twice the TTL a cached grant and its server's tools keep serving while
    /// Postgres cannot be reached, so the gateway rides out a database failover. Changes the
    /// control plane announces still apply at once (a revoked grant is dropped and then
    /// refused); the grace only trusts what no announcement contradicts. 0 (the default) stops
    /// trusting them at twice the TTL. At most 1h.
    #[arg(long, env = "PORTCULLIS_GRANT_CACHE_GRACE", default_value = "0s", value_parser = cache_grace)]
    pub grant_cache_grace: Duration,

    /// How long the limiter (and the audit write before forwarding) may take before Redis is
    /// considered unreachable and the policy's `on_limiter_error` decides.
    #[arg(long, env = "PORTCULLIS_LIMITER_TIMEOUT", default_value = "250ms", value_parser = positive_duration)]
    pub limiter_timeout: Duration,

    /// A directory for audit entries Redis has not taken for too long (an outage of minutes,
    /// or one that outlasts the process): they are written there instead of being dropped,
    /// and sent from there once Redis is back, by any gateway using the directory. Created
    /// if missing (mode 0700). Unset: such entries are dropped and counted.
    #[arg(long, env = "PORTCULLIS_AUDIT_SPILL_DIR")]
    pub audit_spill_dir: Option<std::path::PathBuf>,

    /// How many approvals one grant may have pending at once (1 to 10000). A call that would
    /// ask for one more is refused until approvers decide some (or they expire): an agent
    /// looping over arguments cannot flood its approvers, nor Postgres.
    #[arg(long, env = "PORTCULLIS_APPROVALS_PENDING_MAX", default_value = "100", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub approvals_pending_max: u32,

    /// How far a JWT's `exp` and `nbf` may be off (clock skew between the identity provider
    /// and the gateway), from 0 to 5m.
    #[arg(long, env = "PORTCULLIS_JWT_LEEWAY", default_value = "60s", value_parser = jwt_leeway)]
    pub jwt_leeway: Duration,

    /// The least time between two fetches of an identity provider's keys: a token with an
    /// unknown `kid` makes the gateway fetch them again, once per this interval at most, so
    /// forged `kid`s cannot make it hammer the provider.
    #[arg(long, env = "PORTCULLIS_JWKS_REFETCH_INTERVAL", default_value = "30s", value_parser = positive_duration)]
    pub jwks_refetch_interval: Duration,
}

fn jwt_leeway(text: &str) -> Result<Duration, String> {
    let d = portcullis_core::settings::parse_duration(text)?;
    if d > Duration::from_secs(300) {
        return Err("must be at most 5m".into());
    }
    Ok(d)
}

/// A duration above zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = portcullis_core::settings::parse_duration(text)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

/// The grant cache TTL: 100ms to 60s.
fn cache_ttl(text: &str) -> Result<Duration, String> {
    let d = portcullis_core::settings::parse_duration(text)?;
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&d) {
        return Err("must be from 100ms to 60s".into());
    }
    Ok(d)
}

fn cache_grace(text: &str) -> Result<Duration, String> {
    let d = portcullis_core::settings::parse_duration(text)?;
    if d > Duration::from_secs(3600) {
        return Err("must be at most 1h".into());
    }
    Ok(d)
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            session_keys: None,
            session_max_age: Duration::ZERO,
            gateway_max_body: 4 * 1024 * 1024,
            upstream_connect_timeout: Duration::from_secs(3),
            upstream_timeout: Duration::from_secs(60),
            grant_cache_ttl: Duration::from_secs(5),
            grant_cache_grace: Duration::ZERO,
            limiter_timeout: Duration::from_millis(250),
            audit_spill_dir: None,
            approvals_pending_max: 100,
            jwt_leeway: Duration::from_secs(60),
            jwks_refetch_interval: Duration::from_secs(30),
        }
    }
}

/// What the process shares with this service.
#[derive(Clone)]
pub struct Shared {
    /// Postgres.
    pub db: PgPool,
    /// Redis, for connections of its own (pub/sub, the last audit entries of a stopped
    /// worker); each worker opens its own connection ([`Service::worker`]).
    pub redis_client: Redis,
    /// Key and channel names.
    pub keys: RedisKeys,
    /// Seals and opens upstream credentials at rest.
    pub credentials: Keyring,
    /// Where upstream connections may go (and identity providers' keys come from).
    pub egress: Egress,
    /// The gateway's external URL (`PORTCULLIS_PUBLIC_GATEWAY_URL`): server URLs are
    /// `{public_url}/mcp/{server_id}`, as their protected resource metadata names them.
    pub public_url: String,
}

/// The gateway's state, shared by every request of one worker.
pub struct Gateway {
    /// Postgres (approvals; grant and tool lookups go through the caches).
    pub db: PgPool,
    /// Grant resolution cache (shared by every worker).
    pub grants: Arc<grants::Grants>,
    /// Identity providers' keys (shared by every worker).
    pub identities: Arc<identity::Identities>,
    /// The gateway's external URL, without a trailing `/`.
    pub public_url: String,
    /// Tool catalogues (shared by every worker).
    pub catalogue: Arc<catalogue::Catalogue>,
    /// Rate limiter.
    pub limiter: Arc<limiter::Limiter>,
    /// Audit stream writer.
    pub audit: audit::AuditSink,
    /// Upstream HTTP client.
    pub upstream: upstream::Upstream,
    /// Session id sealing.
    pub sessions: sessions::SessionKeys,
    /// Request body limit.
    pub max_body: usize,
    /// How many approvals a grant may have pending at once.
    pub approvals_pending_max: u32,
    /// Metric handles.
    pub meters: Arc<meters::Meters>,
}

/// The gateway once built: what its workers share (the caches, kept current by one
/// invalidation listener; keys; settings). Each worker thread makes its own routes with
/// [`Service::worker`].
pub struct Service {
    shared: Shared,
    settings: Settings,
    grants: Arc<grants::Grants>,
    identities: Arc<identity::Identities>,
    catalogue: Arc<catalogue::Catalogue>,
    sessions: sessions::SessionKeys,
    /// The upstream client each worker copies with a pool of its own.
    upstream: upstream::Upstream,
    /// Where audit entries Redis has not taken go.
    spill: Option<spill::Spill>,
}

/// One worker's routes, and the task that writes its last audit entries once they are dropped.
pub struct Worker {
    /// The gateway's routes.
    pub router: Router,
    /// Ends when the routes (and every request holding them) are gone and the worker's queued
    /// Redis work is written; or, when the worker is forced to stop, with what it still holds
    /// (see [`Leftover`]).
    pub drained: tokio::task::JoinHandle<Option<Leftover>>,
}

/// Builds the service and starts its invalidation listener, which stops when `shutdown` is
/// cancelled.
pub async fn build(
    shared: Shared,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<Service> {
    let session_keys = match settings.session_keys.as_deref() {
        Some(spec) => Keyring::parse(spec)
            .map_err(|e| anyhow::anyhow!("invalid PORTCULLIS_SESSION_KEYS: {e}"))?,
        None => anyhow::bail!(
            "invalid PORTCULLIS_SESSION_KEYS: not set; the gateway needs it to seal session ids \
             (generate a key with `portcullis keygen`; every replica needs the same)"
        ),
    };
    let spill = settings
        .audit_spill_dir
        .as_ref()
        .map(|dir| {
            spill::Spill::open(dir).map_err(|e| {
                anyhow::anyhow!("invalid PORTCULLIS_AUDIT_SPILL_DIR {}: {e}", dir.display())
            })
        })
        .transpose()?;
    let upstream = upstream::Upstream::new(
        settings.upstream_connect_timeout,
        settings.upstream_timeout,
        shared.egress.clone(),
    )?;
    let grants = Arc::new(grants::Grants::new(
        shared.db.clone(),
        shared.credentials.clone(),
        settings.grant_cache_ttl,
        settings.grant_cache_grace,
    ));
    let identities = Arc::new(identity::Identities::new(
        shared.egress.clone(),
        settings.jwt_leeway,
        settings.jwks_refetch_interval,
    )?);
    let catalogue = Arc::new(catalogue::Catalogue::new(
        shared.db.clone(),
        settings.grant_cache_ttl,
        settings.grant_cache_grace,
    ));
    tokio::spawn(invalidation::run(
        shared.redis_client.clone(),
        shared.keys.invalidation_channel(),
        grants.clone(),
        catalogue.clone(),
        shutdown,
    ));
    let sessions = sessions::SessionKeys::new(
        session_keys,
        Some(settings.session_max_age).filter(|d| !d.is_zero()),
    );
    Ok(Service {
        shared,
        settings,
        grants,
        identities,
        catalogue,
        sessions,
        upstream,
        spill,
    })
}

impl Service {
    /// The routes of one worker, with its own upstream connection pool, batcher and Redis
    /// connection (`redis`), so that a request runs from start to finish on the thread that
    /// accepted it. Call it on the runtime that serves the routes: the worker's tasks run there.
    /// Cancelling `force` (the shutdown's grace period is over) stops its batcher at once.
    pub fn worker(&self, redis: Conn, force: CancellationToken) -> Worker {
        let settings = &self.settings;
        let (batch, drained) = batch::Batcher::spawn(
            redis.clone(),
            self.shared.keys.audit_streams(),
            settings.limiter_timeout,
            self.spill.clone(),
            (self.shared.redis_client.clone(), force),
        );
        let gateway = Gateway {
            db: self.shared.db.clone(),
            grants: self.grants.clone(),
            identities: self.identities.clone(),
            public_url: self.shared.public_url.trim_end_matches('/').to_owned(),
            catalogue: self.catalogue.clone(),
            limiter: Arc::new(limiter::Limiter::new(
                redis,
                batch.clone(),
                self.shared.keys.clone(),
                settings.limiter_timeout,
            )),
            audit: audit::AuditSink::new(batch, self.shared.keys.clone(), settings.limiter_timeout),
            upstream: self.upstream.with_own_pool(),
            sessions: self.sessions.clone(),
            max_body: settings.gateway_max_body,
            approvals_pending_max: settings.approvals_pending_max,
            meters: Arc::new(meters::Meters::new()),
        };
        Worker {
            router: router(Arc::new(gateway)),
            drained,
        }
    }
}

/// The gateway's routes: the per-grant URL, the per-server URL with a bearer token, and the
/// per-server URL's protected resource metadata.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp/{server_id}",
            axum::routing::get(resource::metadata),
        )
        .route(
            "/g/{token}/mcp",
            post(proxy::post_by_grant)
                .get(proxy::get_by_grant)
                .delete(proxy::delete_by_grant),
        )
        .route(
            "/mcp/{server_id}",
            post(proxy::post_by_server)
                .get(proxy::get_by_server)
                .delete(proxy::delete_by_server),
        )
        .with_state(gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_the_cache_ttl_are_kept_in_range() {
        assert!(positive_duration("0s").is_err());
        assert_eq!(positive_duration("250ms"), Ok(Duration::from_millis(250)));
        for refused in ["0s", "50ms", "61s", "1h"] {
            assert!(cache_ttl(refused).is_err(), "{refused}");
        }
        assert_eq!(cache_ttl("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(cache_ttl("60s"), Ok(Duration::from_secs(60)));
    }
}
