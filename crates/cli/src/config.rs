//! The one configuration struct: every field is a flag and an environment variable, read once
//! at start-up and validated before anything listens.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use portcullis_core::Keyring;
use portcullis_core::egress::Egress;
use portcullis_core::settings::parse_duration;

use crate::rebinding::{HostNames, WebOrigins};
use sqlx::postgres::PgConnectOptions;

/// Settings shared by `serve`, `control-plane`, `gateway` and `migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/portcullis",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Most Postgres connections this process holds (the control plane and the gateway share
    /// them). Every replica holds up to this many: keep replicas × this under the server's
    /// `max_connections`.
    #[arg(long, env = "PORTCULLIS_DATABASE_MAX_CONNECTIONS", default_value = "16", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Redis connection URL; with --redis-cluster, the seed nodes of a Redis Cluster
    /// (comma-separated `redis://` or `rediss://` URLs; the rest of the cluster is discovered).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// REDIS_URL names a Redis Cluster: keys are spread over shards, each in one hash slot.
    #[arg(long, env = "PORTCULLIS_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,

    /// On a Redis Cluster, how many shards the limiter counters and audit streams are spread
    /// over (the same in every process of an installation; changing it restarts the counters
    /// of calls in flight).
    #[arg(long, env = "PORTCULLIS_REDIS_SHARDS", default_value_t = portcullis_core::redis_keys::DEFAULT_SHARDS, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub redis_shards: u16,

    /// PEM file of the certificate authorities a `rediss://` Redis's certificate must chain to,
    /// instead of the system's trust store (a private CA). Postgres takes its own in
    /// `DATABASE_URL` (`sslmode=verify-full&sslrootcert=…`).
    #[arg(long, env = "PORTCULLIS_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Prefix of every Redis key and channel, so several installations can share one Redis.
    #[arg(long, env = "PORTCULLIS_REDIS_PREFIX", default_value = "pc")]
    pub redis_prefix: String,

    /// Address the control plane (dashboard and API) listens on.
    #[arg(
        long,
        env = "PORTCULLIS_CONTROL_PLANE_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub control_plane_addr: SocketAddr,

    /// Address the gateway listens on.
    #[arg(
        long,
        env = "PORTCULLIS_GATEWAY_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub gateway_addr: SocketAddr,

    /// More names the control plane answers to, besides its public URL's host (and the
    /// loopback names with its port, when it listens on the loopback or on every interface):
    /// `host` or `host:port`, comma-separated; without a port, any port. A request whose `Host`
    /// is none of them is refused with 421 (DNS rebinding).
    #[arg(long, env = "PORTCULLIS_CONTROL_PLANE_HOSTS", default_value = "")]
    pub control_plane_hosts: HostNames,

    /// More names the gateway answers to, besides its public URL's host (and the loopback
    /// names with its port, when it listens on the loopback or on every interface), as for
    /// the control plane: e.g. the in-cluster service name `portcullis-gateway:8081`.
    #[arg(long, env = "PORTCULLIS_GATEWAY_HOSTS", default_value = "")]
    pub gateway_hosts: HostNames,

    /// Web origins, besides its own, whose pages may call the control plane
    /// (`scheme://host[:port]`, comma-separated). A request with another `Origin` is refused
    /// with 403.
    #[arg(long, env = "PORTCULLIS_CONTROL_PLANE_ORIGINS", default_value = "")]
    pub control_plane_origins: WebOrigins,

    /// Web origins, besides its own, whose pages may call the gateway (a browser-based MCP
    /// client's, say), as for the control plane.
    #[arg(long, env = "PORTCULLIS_GATEWAY_ORIGINS", default_value = "")]
    pub gateway_origins: WebOrigins,

    /// Log format: `json` (one object a line) or `pretty`.
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,

    /// Log filter, in `tracing` directive syntax.
    #[arg(long, env = "PORTCULLIS_LOG", default_value = "info")]
    pub log: String,

    /// Where traces go: the base URL of an OTLP/HTTP receiver (a collector's port 4318, say),
    /// spans being posted to `/v1/traces` under it. Unset or empty: no tracing at all.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", hide_env_values = true)]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// The `service.name` of the exported spans (default: `portcullis-gateway`,
    /// `portcullis-control-plane`, or `portcullis` for `serve`).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,

    /// How long a shutdown waits for in-flight requests before it closes them, e.g. `30s`.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Keys that seal upstream credentials at rest: `ID:BASE64[,ID:BASE64…]`, 32-byte keys, the
    /// first one sealing. Make one with `portcullis keygen`.
    #[arg(long, env = "PORTCULLIS_ENCRYPTION_KEYS", hide_env_values = true)]
    pub encryption_keys: Option<String>,

    /// How long a readiness probe waits for Postgres or Redis before calling it down.
    #[arg(long, env = "PORTCULLIS_PROBE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub probe_timeout: Duration,

    /// Threads that serve requests, for each of the control plane and the gateway (default: one
    /// per CPU core). A gateway thread runs each request it accepts from start to finish.
    #[arg(long, env = "PORTCULLIS_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Private networks upstream MCP servers and webhooks may be on, e.g.
    /// `10.1.0.0/16,fd00::/8`: Portcullis connects on tenants' behalf to public addresses only,
    /// and to these (never to loopback, private or link-local addresses otherwise).
    #[arg(long, env = "PORTCULLIS_UPSTREAM_ALLOW", default_value = "")]
    pub upstream_allow: Egress,

    /// Gateway settings.
    #[command(flatten)]
    pub gateway: portcullis_gateway::Settings,

    /// Control-plane settings.
    #[command(flatten)]
    pub control_plane: portcullis_control_plane::Settings,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line, for machines.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

/// A setting that cannot work. The message names the setting and never echoes a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `DATABASE_URL` does not parse.
    #[error("invalid DATABASE_URL: {0}")]
    DatabaseUrl(String),
    /// `REDIS_URL` does not parse.
    #[error("invalid REDIS_URL: {0}")]
    RedisUrl(String),
    /// `PORTCULLIS_REDIS_CA_FILE` is unusable.
    #[error("invalid PORTCULLIS_REDIS_CA_FILE: {0}")]
    RedisCaFile(String),
    /// `PORTCULLIS_REDIS_PREFIX` is unusable.
    #[error("invalid PORTCULLIS_REDIS_PREFIX: {0}")]
    RedisPrefix(&'static str),
    /// `PORTCULLIS_ENCRYPTION_KEYS` is missing or malformed.
    #[error("invalid PORTCULLIS_ENCRYPTION_KEYS: {0}")]
    EncryptionKeys(String),
    /// `PORTCULLIS_LOG` does not parse.
    #[error("invalid PORTCULLIS_LOG: {0}")]
    Log(String),
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is not an http(s) URL.
    #[error("invalid OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    OtlpEndpoint(String),
}

/// The settings alone, as a command line of their own.
#[derive(clap::Parser)]
struct Standalone {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// Parses settings from flags (and the environment, as the binary does). Tests use it.
    pub fn from_flags<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser as _;
        let argv = std::iter::once(std::ffi::OsString::from("portcullis"))
            .chain(args.into_iter().map(Into::into));
        Standalone::try_parse_from(argv).map(|s| s.config)
    }

    /// The Postgres options alone (all `migrate` needs).
    pub fn database_options(&self) -> Result<PgConnectOptions, ConfigError> {
        parse_database_url(&self.database_url)
    }

    /// Where spans are posted: `/v1/traces` under `OTEL_EXPORTER_OTLP_ENDPOINT` (as the
    /// OpenTelemetry specification has it), or `None` when tracing is off.
    pub fn traces_endpoint(&self) -> Result<Option<url::Url>, ConfigError> {
        let Some(base) = self
            .otel_exporter_otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let mut url =
            url::Url::parse(base).map_err(|e| ConfigError::OtlpEndpoint(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ConfigError::OtlpEndpoint(
                "must be an http:// or https:// URL with a host (an OTLP/HTTP receiver)".into(),
            ));
        }
        let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        url.set_path(&path);
        Ok(Some(url))
    }

    /// Checks every setting and returns the parsed connection options.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let database = parse_database_url(&self.database_url)?;
        let redis = parse_redis_url(
            &self.redis_url,
            self.redis_cluster,
            self.redis_ca_file.as_deref(),
        )?;
        if self.redis_prefix.is_empty()
            || !self
                .redis_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::RedisPrefix(
                "use letters, digits, '-', '_' or '.', at least one",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| ConfigError::Log(e.to_string()))?;
        self.traces_endpoint()?;
        let credentials = match &self.encryption_keys {
            Some(spec) => {
                Keyring::parse(spec).map_err(|e| ConfigError::EncryptionKeys(e.to_string()))?
            }
            None => {
                return Err(ConfigError::EncryptionKeys(
                    "not set; generate a key with `portcullis keygen`".into(),
                ));
            }
        };
        Ok(Validated {
            database,
            redis,
            credentials,
        })
    }
}

/// Connection settings that passed validation.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Postgres connection options.
    pub database: PgConnectOptions,
    /// Where Redis is.
    pub redis: portcullis_redis::Redis,
    /// Credential keys.
    pub credentials: Keyring,
}

fn parse_database_url(url: &str) -> Result<PgConnectOptions, ConfigError> {
    // Check the scheme ourselves: the driver's message for a wrong one is not helpful.
    let parsed = url::Url::parse(url).map_err(|e| ConfigError::DatabaseUrl(e.to_string()))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(ConfigError::DatabaseUrl(format!(
            "scheme must be postgres:// or postgresql://, not {}://",
            parsed.scheme()
        )));
    }
    let options =
        PgConnectOptions::from_str(url).map_err(|e| ConfigError::DatabaseUrl(e.to_string()))?;
    // Named in `pg_stat_activity` and the server's logs, unless the URL (or PGAPPNAME) names
    // it otherwise.
    Ok(match options.get_application_name() {
        Some(_) => options,
        None => options.application_name("portcullis"),
    })
}

fn parse_redis_url(
    url: &str,
    cluster: bool,
    ca_file: Option<&std::path::Path>,
) -> Result<portcullis_redis::Redis, ConfigError> {
    let ca = match ca_file {
        None => None,
        Some(ca_file) => {
            // A CA file with plain-text URLs only would be silently unused.
            if !url.split(',').any(|u| u.trim().starts_with("rediss://")) {
                return Err(ConfigError::RedisCaFile(
                    "set, but REDIS_URL is not rediss:// (TLS)".into(),
                ));
            }
            Some(
                std::fs::read(ca_file)
                    .map_err(|e| ConfigError::RedisCaFile(format!("{}: {e}", ca_file.display())))?,
            )
        }
    };
    portcullis_redis::Redis::parse(url, cluster, ca)
        .map_err(|e| ConfigError::RedisUrl(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        let (_, key) = Keyring::generate(1);
        let mut argv = vec!["--encryption-keys".to_owned(), key];
        argv.extend(args.iter().map(|a| a.to_string()));
        Config::from_flags(argv).unwrap()
    }

    #[test]
    fn defaults_validate() {
        config(&[]).validate().unwrap();
    }

    #[test]
    fn malformed_urls_are_named() {
        let err = config(&["--database-url", "not a url"])
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid DATABASE_URL:"),
            "{err}"
        );
        let err = config(&["--database-url", "mysql://x/y"])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("scheme must be postgres"), "{err}");
        let err = config(&["--redis-url", "http://x"]).validate().unwrap_err();
        assert!(err.to_string().starts_with("invalid REDIS_URL:"), "{err}");
        let err = Config::from_flags(["--encryption-keys", "1:short"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("PORTCULLIS_ENCRYPTION_KEYS"),
            "{err}"
        );
        let err = config(&["--redis-prefix", "a b"]).validate().unwrap_err();
        assert!(err.to_string().contains("PORTCULLIS_REDIS_PREFIX"), "{err}");
    }

    #[test]
    fn a_redis_ca_file_needs_a_tls_url_and_a_readable_file() {
        let validate = |url: &str| {
            config(&["--redis-url", url, "--redis-ca-file", "/nonexistent.pem"])
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            validate("redis://127.0.0.1:6379"),
            "invalid PORTCULLIS_REDIS_CA_FILE: set, but REDIS_URL is not rediss:// (TLS)"
        );
        let missing = validate("rediss://127.0.0.1:6379");
        assert!(
            missing.starts_with("invalid PORTCULLIS_REDIS_CA_FILE: /nonexistent.pem: "),
            "{missing}"
        );
    }

    #[test]
    fn connections_are_named_portcullis_unless_the_url_names_them() {
        let name = |url: &str| {
            config(&["--database-url", url])
                .database_options()
                .unwrap()
                .get_application_name()
                .map(str::to_owned)
        };
        assert_eq!(name("postgres://h/db").as_deref(), Some("portcullis"));
        assert_eq!(
            name("postgres://h/db?application_name=gw-eu").as_deref(),
            Some("gw-eu")
        );
    }

    #[test]
    fn traces_go_under_the_otlp_endpoint_and_only_when_it_is_set() {
        let endpoint = |flags: &[&str]| {
            config(flags)
                .traces_endpoint()
                .map(|url| url.map(String::from))
                .map_err(|e| e.to_string())
        };
        assert_eq!(endpoint(&[]), Ok(None));
        assert_eq!(endpoint(&["--otel-exporter-otlp-endpoint", " "]), Ok(None));
        for (base, traces) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otlp.example/otlp/",
                "https://otlp.example/otlp/v1/traces",
            ),
        ] {
            assert_eq!(
                endpoint(&["--otel-exporter-otlp-endpoint", base]),
                Ok(Some(traces.to_owned()))
            );
        }
        for bad in ["collector:4318", "grpc://collector:4317", "not a url"] {
            let err = endpoint(&["--otel-exporter-otlp-endpoint", bad]).unwrap_err();
            assert!(
                err.starts_with("invalid OTEL_EXPORTER_OTLP_ENDPOINT: "),
                "{bad}: {err}"
            );
            assert!(
                config(&["--otel-exporter-otlp-endpoint", bad])
                    .validate()
                    .is_err()
            );
        }
    }

    #[test]
    fn the_pool_size_is_bounded() {
        assert_eq!(config(&[]).database_max_connections, 16);
        for bad in ["0", "1001", "many"] {
            let (_, key) = Keyring::generate(1);
            let err =
                Config::from_flags(["--encryption-keys", &key, "--database-max-connections", bad]);
            assert!(err.is_err(), "{bad}");
        }
    }
}
