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
mod bindings;
mod dashboard;
pub mod discovery;
mod error;
mod grants;
mod identity_pages;
mod identity_providers;
mod input;
pub mod invalidations;
mod mail;
mod members;
mod openapi;
mod overview;
mod passwords;
mod policies;
pub mod routes;
mod servers;
pub mod sso;
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

    /// Sign-up attempts allowed per email within the sign-up window.
    #[arg(long, env = "PORTCULLIS_SIGNUP_MAX_PER_ACCOUNT", default_value_t = 5)]
    pub signup_max_per_account: u32,

    /// Sign-up attempts allowed per client address within the sign-up window.
    #[arg(long, env = "PORTCULLIS_SIGNUP_MAX_PER_IP", default_value_t = 30)]
    pub signup_max_per_ip: u32,

    /// The sign-up throttle window, e.g. `1h`.
    #[arg(long, env = "PORTCULLIS_SIGNUP_WINDOW", default_value = "1h", value_parser = parse_duration)]
    pub signup_window: Duration,

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

    /// How often pending approvals past their expiry are closed, webhooks and mail are sent,
    /// and expired sign-up confirmations are forgotten.
    #[arg(long, env = "PORTCULLIS_APPROVAL_SWEEP_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub approval_sweep_interval: Duration,

    /// Time limit of a discovery or connection test against an upstream.
    #[arg(long, env = "PORTCULLIS_DISCOVERY_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub discovery_timeout: Duration,

    /// Time limit of one webhook delivery.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// An HTTP proxy that discovery, connection tests and webhooks go through
    /// (`http://host:port`), when the network allows no direct connection out. Its address
    /// must be one `PORTCULLIS_UPSTREAM_ALLOW` permits. Unset: they connect directly;
    /// `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` are never read, since a proxy would connect
    /// to addresses the egress guard refuses.
    #[arg(long, env = "PORTCULLIS_EGRESS_PROXY")]
    pub egress_proxy: Option<String>,

    /// Where mail (sign-up confirmations) goes: `smtp://[user:password@]host:port` (plain;
    /// `?tls=required` for STARTTLS), `smtps://[user:password@]host:port` (TLS from the start),
    /// or `file:///folder` (one `.eml` file a message, for local runs and tests). Unset: mail
    /// waits in the outbox, and nobody can finish signing up.
    #[arg(long, env = "PORTCULLIS_MAIL_TRANSPORT", hide_env_values = true)]
    pub mail_transport: Option<String>,

    /// The sender of that mail (`Name <address>` or `address`).
    #[arg(
        long,
        env = "PORTCULLIS_MAIL_FROM",
        default_value = "Portcullis <portcullis@localhost>"
    )]
    pub mail_from: String,
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

/// The client of every connection the control plane makes on a tenant's behalf (discovery,
/// connection tests, webhooks): host names resolve through the egress guard, redirects are
/// not followed, and no proxy is used but the one `egress_proxy` names. The environment's
/// `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` are ignored: a proxy resolves and connects on
/// its own, so a target the guard would refuse (`http://redis.internal:6379`) would be
/// reached through it.
fn outbound_client(egress: &Egress, egress_proxy: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver(Arc::new(egress.clone()))))
        .no_proxy();
    if let Some(proxy) = egress_proxy.map(str::trim).filter(|p| !p.is_empty()) {
        builder = builder.proxy(egress_proxy_of(egress, proxy)?);
    }
    Ok(builder.build()?)
}

/// The explicit egress proxy, whose own address goes through the guard: an address here, a
/// host name when it is resolved (through the guarded resolver, like an upstream's).
fn egress_proxy_of(egress: &Egress, proxy: &str) -> anyhow::Result<reqwest::Proxy> {
    let invalid = |why: String| anyhow::anyhow!("invalid PORTCULLIS_EGRESS_PROXY: {why}");
    let url = url::Url::parse(proxy).map_err(|e| invalid(e.to_string()))?;
    if url.scheme() != "http" || url.host().is_none() || !matches!(url.path(), "" | "/") {
        return Err(invalid("must be an http://host:port URL".into()));
    }
    egress
        .check_host(url.host_str().unwrap_or_default())
        .map_err(|e| {
            invalid(format!(
                "{e} (add its network to PORTCULLIS_UPSTREAM_ALLOW)"
            ))
        })?;
    reqwest::Proxy::all(url.as_str()).map_err(|e| invalid(e.to_string()))
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
    /// Where the outbox's mail goes, and the bell that says some is waiting.
    pub mailer: mail::Mailer,
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
    let http = outbound_client(&shared.egress, settings.egress_proxy.as_deref())?;
    let mailer = mail::Mailer::new(settings.mail_transport.as_deref(), &settings.mail_from)?;
    let state = AppState(Arc::new(Inner {
        secure_cookies: public.scheme() == "https",
        gateway_url: settings.public_gateway_url.trim_end_matches('/').to_owned(),
        shared,
        settings,
        cookie_key,
        http,
        mailer,
        shutdown: shutdown.clone(),
    }));
    audit::spawn_background(&state, &shutdown);
    approvals::spawn_background(&state, &shutdown);
    webhooks::spawn_background(&state, &shutdown);
    mail::spawn_background(&state, &shutdown);
    Ok(routes::router(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_egress_proxy_is_an_http_url_on_an_address_the_guard_permits() {
        let public: Egress = "".parse().unwrap_or_default();
        let loopback: Egress = "127.0.0.0/8".parse().unwrap_or_default();
        let err = |egress: &Egress, proxy: &str| {
            egress_proxy_of(egress, proxy)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let refused = err(&public, "http://127.0.0.1:3128");
        assert!(
            refused.starts_with("invalid PORTCULLIS_EGRESS_PROXY: ")
                && refused.contains("PORTCULLIS_UPSTREAM_ALLOW"),
            "{refused}"
        );
        assert!(egress_proxy_of(&loopback, "http://127.0.0.1:3128").is_ok());
        assert!(egress_proxy_of(&public, "http://proxy.example.com:3128").is_ok());
        for bad in [
            "socks5://127.0.0.1:1080",
            "proxy:3128",
            "http://127.0.0.1:3128/x",
        ] {
            assert!(
                err(&loopback, bad).starts_with("invalid PORTCULLIS_EGRESS_PROXY: "),
                "{bad}"
            );
        }
        assert!(outbound_client(&public, Some(" ")).is_ok());
        assert!(outbound_client(&public, Some("http://10.0.0.1:3128")).is_err());
    }
}
