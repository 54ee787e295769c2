//! The Portcullis control plane: accounts, servers, policies, grants, approvals, audit, dashboard and API.
//!
//! Every handler reaches data through an authenticated [`auth::Tenant`], and every repository
//! function takes the tenant's id as a required argument, so a query without a tenant cannot be
//! written by accident. Another tenant's object is indistinguishable from a missing one (404).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use portcullis_core::Keyring;
use portcullis_core::egress::Egress;
use portcullis_core::redis_keys::RedisKeys;
use portcullis_redis::{Conn, Redis};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

mod accounts;
mod admin_audit;
mod approvals;
pub mod audit;
mod auth;
mod dashboard;
pub mod discovery;
mod error;
mod grants;
mod input;
pub mod invalidations;
mod members;
mod openapi;
mod overview;
mod passwords;
mod policies;
pub mod routes;
mod servers;
mod throttle;
mod tools;
mod webhooks;

pub use error::Error;

/// Settings of this service alone; the `portcullis` command flattens them into its one
/// configuration, so each is a flag and a `PORTCULLIS_*` environment variable.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "control_plane")]
pub struct Settings {
    /// The dashboard's external URL; cookies are marked Secure when it is https.
    #[arg(
        long,
        env = "PORTCULLIS_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,

    /// The gateway's external URL, used in grant URLs (`{url}/g/{token}/mcp`).
    #[arg(
        long,
        env = "PORTCULLIS_PUBLIC_GATEWAY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub public_gateway_url: String,

    /// Secret that signs session cookies (any text of 32+ characters). Every replica needs the
    /// same one; without it each process makes its own and sessions end at restart.
    #[arg(long, env = "PORTCULLIS_COOKIE_KEY", hide_env_values = true)]
    pub cookie_key: Option<String>,

    /// How long a dashboard session lasts, e.g. `12h`.
    #[arg(long, env = "PORTCULLIS_SESSION_TTL", default_value = "12h", value_parser = parse_duration)]
    pub session_ttl: Duration,

    /// Failed logins allowed per account within the throttle window.
    #[arg(long, env = "PORTCULLIS_LOGIN_MAX_PER_ACCOUNT", default_value_t = 10)]
    pub login_max_per_account: u32,

    /// Failed logins allowed per client address within the throttle window.
    #[arg(long, env = "PORTCULLIS_LOGIN_MAX_PER_IP", default_value_t = 50)]
    pub login_max_per_ip: u32,

    /// The login throttle window, e.g. `15m`.
    #[arg(long, env = "PORTCULLIS_LOGIN_WINDOW", default_value = "15m", value_parser = parse_duration)]
    pub login_window: Duration,

    /// Take the client address from the first `X-Forwarded-For` entry (behind a trusted proxy).
    #[arg(long, env = "PORTCULLIS_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,

    /// Audit retention in days for new tenants (each tenant can change its own).
    #[arg(long, env = "PORTCULLIS_AUDIT_RETENTION_DAYS", default_value_t = 30)]
    pub audit_retention_days: i32,

    /// Run the audit ingester in this process.
    #[arg(long, env = "PORTCULLIS_AUDIT_INGEST", default_value_t = true, action = clap::ArgAction::Set)]
    pub audit_ingest: bool,

    /// Most stream entries the ingester writes in one transaction.
    #[arg(long, env = "PORTCULLIS_AUDIT_BATCH", default_value_t = 500)]
    pub audit_batch: usize,

    /// How long an entry may sit unacknowledged with a consumer before another ingester claims it.
    #[arg(long, env = "PORTCULLIS_AUDIT_CLAIM_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub audit_claim_idle: Duration,

    /// How often partitions are created ahead and old audit rows dropped.
    #[arg(long, env = "PORTCULLIS_AUDIT_MAINTENANCE_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub audit_maintenance_interval: Duration,

    /// How often pending approvals past their expiry are closed and webhooks are sent.
    #[arg(long, env = "PORTCULLIS_APPROVAL_SWEEP_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub approval_sweep_interval: Duration,

    /// Time limit of a discovery or connection test against an upstream.
    #[arg(long, env = "PORTCULLIS_DISCOVERY_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub discovery_timeout: Duration,

    /// Time limit of one webhook delivery.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        Only::parse_from(["portcullis"]).settings
    }
}

use portcullis_core::settings::parse_duration;

/// SQL assembled from constant fragments (column lists); never from user input.
pub(crate) fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// What the process shares with this service.
#[derive(Clone)]
pub struct Shared {
    /// Postgres.
    pub db: PgPool,
    /// Redis, multiplexed and reconnecting.
    pub redis: Conn,
    /// The Redis client, for connections of their own (pub/sub).
    pub redis_client: Redis,
    /// Key and channel names.
    pub keys: RedisKeys,
    /// Seals and opens upstream credentials at rest.
    pub credentials: Keyring,
    /// Where connections to upstreams and webhooks may go.
    pub egress: Egress,
}

/// Resolves upstream and webhook host names to the addresses [`Egress`] permits, and nothing
/// else. (Hosts that are addresses are checked where the URL is used.)
struct GuardedResolver(Arc<Egress>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            let addrs = egress.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Everything a handler can reach, cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

pub(crate) struct Inner {
    pub shared: Shared,
    pub settings: Settings,
    pub cookie_key: Vec<u8>,
    pub secure_cookies: bool,
    pub gateway_url: String,
    pub http: reqwest::Client,
    /// Cancelled at shutdown, so long-lived answers (the live tail) end and let the drain finish.
    pub shutdown: CancellationToken,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub(crate) fn db(&self) -> &PgPool {
        &self.shared.db
    }

    /// Announces a change to every gateway ([`invalidations::publish`]): returns after the
    /// first try; a failed one is tried again in the background.
    pub(crate) async fn publish(&self, message: portcullis_core::Invalidation) {
        invalidations::publish(
            self.shared.redis.clone(),
            self.shared.keys.invalidation_channel(),
            message,
        )
        .await;
    }
}

/// Builds the service: its routes, and its background tasks, which stop when `shutdown` is
/// cancelled.
pub async fn build(
    shared: Shared,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<Router> {
    let cookie_key = match &settings.cookie_key {
        Some(key) if key.len() >= 32 => key.as_bytes().to_vec(),
        Some(_) => anyhow::bail!("invalid PORTCULLIS_COOKIE_KEY: use at least 32 characters"),
        None => {
            tracing::warn!(
                "PORTCULLIS_COOKIE_KEY is not set: sessions will not survive a restart or move between replicas"
            );
            portcullis_core::token::random_secret("ck_").into_bytes()
        }
    };
    let public = url::Url::parse(&settings.public_url)
        .map_err(|e| anyhow::anyhow!("invalid PORTCULLIS_PUBLIC_URL: {e}"))?;
    url::Url::parse(&settings.public_gateway_url)
        .map_err(|e| anyhow::anyhow!("invalid PORTCULLIS_PUBLIC_GATEWAY_URL: {e}"))?;
    if !(1..=3650).contains(&settings.audit_retention_days) {
        anyhow::bail!("invalid PORTCULLIS_AUDIT_RETENTION_DAYS: use 1 to 3650");
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver(Arc::new(shared.egress.clone()))))
        .build()?;
    let state = AppState(Arc::new(Inner {
        secure_cookies: public.scheme() == "https",
        gateway_url: settings.public_gateway_url.trim_end_matches('/').to_owned(),
        shared,
        settings,
        cookie_key,
        http,
        shutdown: shutdown.clone(),
    }));
    audit::spawn_background(&state, &shutdown);
    approvals::spawn_background(&state, &shutdown);
    webhooks::spawn_background(&state, &shutdown);
    Ok(routes::router(state))
}
