//! Starting and stopping the services: connect, bind, serve, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use portcullis_redis::{Conn, Redis, Timeouts};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use portcullis_core::Keyring;
use portcullis_core::redis_keys::RedisKeys;
use portcullis_gateway::Leftover;

use crate::config::{Config, Validated};
use crate::health::{self, Dependencies};
use crate::http;
use crate::rebinding::{Dialect, Guard, Names};
use crate::telemetry::{ServerSpans, Traces};

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Control plane and gateway, on two listeners.
    Both,
    /// The dashboard and API only.
    ControlPlane,
    /// The gateway only.
    Gateway,
}

impl Role {
    fn runs_control_plane(self) -> bool {
        matches!(self, Role::Both | Role::ControlPlane)
    }

    fn runs_gateway(self) -> bool {
        matches!(self, Role::Both | Role::Gateway)
    }

    /// The `service.name` of its spans, unless `OTEL_SERVICE_NAME` says otherwise.
    fn service_name(self) -> &'static str {
        match self {
            Role::Both => "portcullis",
            Role::ControlPlane => "portcullis-control-plane",
            Role::Gateway => "portcullis-gateway",
        }
    }
}

/// Connections shared by the services of one process.
#[derive(Clone)]
pub struct Connections {
    /// Postgres pool; connects lazily so the process starts (and says it is not ready) while
    /// Postgres is down.
    pub db: PgPool,
    /// Redis; reconnects by itself after an outage.
    pub redis: Conn,
    /// Where Redis is, for connections of their own (pub/sub, each gateway worker's).
    pub redis_client: Redis,
    /// Key and channel names.
    pub keys: RedisKeys,
    /// Seals and opens upstream credentials.
    pub credentials: Keyring,
}

impl Connections {
    /// Opens lazy connections from validated settings.
    pub fn open(config: &Config, validated: &Validated) -> anyhow::Result<Self> {
        let db = PgPoolOptions::new()
            .max_connections(config.database_max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(validated.database.clone());
        let redis = redis_manager(&validated.redis)?;
        let keys = if validated.redis.is_cluster() {
            RedisKeys::clustered(config.redis_prefix.clone(), config.redis_shards)
        } else {
            RedisKeys::new(config.redis_prefix.clone())
        };
        Ok(Self {
            db,
            redis,
            redis_client: validated.redis.clone(),
            keys,
            credentials: validated.credentials.clone(),
        })
    }
}

/// A Redis connection that connects lazily and reconnects by itself, its tasks on the
/// current runtime.
fn redis_manager(redis: &Redis) -> anyhow::Result<Conn> {
    let timeouts = Timeouts {
        connect: Duration::from_secs(1),
        response: Duration::from_secs(2),
    };
    redis
        .connect_lazy(timeouts)
        .context("cannot set up the Redis client")
}

/// A running process: its bound addresses and the handle to stop it.
pub struct Running {
    /// Where the control plane listens, if it runs.
    pub control_plane: Option<SocketAddr>,
    /// Where the gateway listens, if it runs.
    pub gateway: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts a graceful shutdown: stop accepting, drain in-flight requests.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A token that is cancelled when shutdown starts.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every listener has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task failed")?
    }

    /// Shuts down and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown();
        self.wait().await
    }
}

/// Binds the listeners of `role` and serves until [`Running::shutdown`].
pub async fn start(config: &Config, role: Role) -> anyhow::Result<Running> {
    let validated = config.validate()?;
    let conns = Connections::open(config, &validated)?;
    start_with(config, role, conns).await
}

/// Like [`start`], with connections the caller opened (tests share theirs).
pub async fn start_with(
    config: &Config,
    role: Role,
    conns: Connections,
) -> anyhow::Result<Running> {
    crate::metrics::handle();
    let traces = Traces::new(config, role.service_name())?;
    let deps = Dependencies {
        db: conns.db.clone(),
        redis: conns.redis.clone(),
        timeout: config.probe_timeout,
        postgres_optional: false,
    };
    let shutdown = CancellationToken::new();
    // Cancelled when the grace period is over: what is still open is closed.
    let force = CancellationToken::new();
    // A failure below stops what was started before it (listeners, background tasks).
    let started = (shutdown.clone().drop_guard(), force.clone().drop_guard());
    let mut servers = Vec::new();
    let mut control_plane = None;
    let mut gateway = None;

    if role.runs_control_plane() {
        let shared = portcullis_control_plane::Shared {
            db: conns.db.clone(),
            redis: conns.redis.clone(),
            redis_client: conns.redis_client.clone(),
            keys: conns.keys.clone(),
            credentials: conns.credentials.clone(),
            egress: config.upstream_allow.clone(),
        };
        let router =
            portcullis_control_plane::build(shared, config.control_plane.clone(), shutdown.clone())
                .await?;
        let spans = traces
            .as_ref()
            .map(|t| t.listener("portcullis-control-plane", None));
        // A span is named by its route's template, which only the router knows.
        let router = match spans {
            Some(_) => router.route_layer(axum::middleware::from_fn(http::route_template)),
            None => router,
        };
        let names = Names {
            public_url: public_url(&config.control_plane.public_url, "PORTCULLIS_PUBLIC_URL")?,
            hosts: config.control_plane_hosts.clone(),
            origins: config.control_plane_origins.clone(),
            dialect: Dialect::Api,
        };
        let (addr, server) = bind(
            config.control_plane_addr,
            "control-plane",
            router,
            (spans, &names),
            &deps,
            (&shutdown, &force),
        )
        .await?;
        control_plane = Some(addr);
        servers.push(server);
    }
    if role.runs_gateway() {
        let shared = portcullis_gateway::Shared {
            db: conns.db.clone(),
            redis_client: conns.redis_client.clone(),
            keys: conns.keys.clone(),
            credentials: conns.credentials.clone(),
            egress: config.upstream_allow.clone(),
            public_url: config.control_plane.public_gateway_url.clone(),
        };
        let service =
            portcullis_gateway::build(shared, config.gateway.clone(), shutdown.clone()).await?;
        let client = conns.redis_client.clone();
        let make = move |force: CancellationToken| {
            let worker = service.worker(redis_manager(&client)?, force);
            Ok((worker.router, worker.drained))
        };
        let threads = config
            .worker_threads
            .map_or_else(default_threads, usize::from);
        let spans = traces
            .as_ref()
            .map(|t| t.listener("portcullis-gateway", Some("gateway.request")));
        let names = Names {
            public_url: public_url(
                &config.control_plane.public_gateway_url,
                "PORTCULLIS_PUBLIC_GATEWAY_URL",
            )?,
            hosts: config.gateway_hosts.clone(),
            origins: config.gateway_origins.clone(),
            dialect: Dialect::JsonRpc,
        };
        let (addr, server) = bind_workers(
            config.gateway_addr,
            "gateway",
            threads,
            make,
            (spans, &names),
            // A gateway with a cache grace serves through a Postgres outage: it stays ready.
            &Dependencies {
                postgres_optional: !config.gateway.grant_cache_grace.is_zero(),
                ..deps.clone()
            },
            (&shutdown, &force),
        )
        .await?;
        gateway = Some(addr);
        servers.push(server);
    }

    let (shutdown_guard, force_guard) = started;
    shutdown_guard.disarm();
    force_guard.disarm();
    let grace = config.shutdown_grace;
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let result = drain(join_servers(servers), token, grace, force).await;
        // Every request has ended, and with it its span: export what is still queued.
        if let Some(traces) = traces
            && tokio::task::spawn_blocking(move || traces.shutdown())
                .await
                .is_err()
        {
            tracing::warn!("the trace exporter's shutdown panicked");
        }
        result
    });
    Ok(Running {
        control_plane,
        gateway,
        shutdown,
        task,
    })
}

/// A listener's public URL setting (`setting` names it), which must be an http(s) URL.
fn public_url(text: &str, setting: &str) -> anyhow::Result<url::Url> {
    let url = url::Url::parse(text).map_err(|e| anyhow::anyhow!("invalid {setting}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        anyhow::bail!("invalid {setting}: must be an http:// or https:// URL with a host");
    }
    Ok(url)
}

/// Waits for the listeners (`all`) to end: after `shutdown`, for up to `grace`, and then
/// closes what is still open (cancels `force`).
async fn drain(
    all: impl Future<Output = anyhow::Result<()>>,
    shutdown: CancellationToken,
    grace: Duration,
    force: CancellationToken,
) -> anyhow::Result<()> {
    tokio::pin!(all);
    tokio::select! {
        result = &mut all => return result,
        () = shutdown.cancelled() => {}
    }
    // Draining: the listeners stopped accepting; give open requests the grace period.
    match tokio::time::timeout(grace, &mut all).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                ?grace,
                "requests still open after the shutdown grace period; closing them"
            );
            // The listeners end at once now; the gateway's workers first write the audit
            // entries of the requests they close.
            force.cancel();
            all.await
        }
    }
}

type Server = JoinHandle<anyhow::Result<()>>;

/// One worker per CPU core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The service's routes, with the routes every listener has.
fn app(router: Router, deps: &Dependencies) -> Router {
    router
        .merge(health::router(deps.clone()))
        .merge(crate::metrics::router())
}

/// Serves `app` on `listener` until `shutdown`, each connection's requests through the shared
/// [`http::Edge`] (`service` names the listener in log lines; `spans`, when tracing is on, makes
/// their trace spans; `guard` says which names and origins it answers to).
async fn serve(
    listener: TcpListener,
    app: Router,
    (spans, guard): (Option<Arc<ServerSpans>>, Arc<Guard>),
    service: &'static str,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::{IncomingStream, ListenerExt as _};
    // Answers and stream events go out as soon as they are written (no Nagle delay waiting for
    // the peer's ACK), as a proxy must; a connection's first write is rarely its last.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let connections = tower::service_fn(move |stream: IncomingStream<'_, _>| {
        let edge = http::Edge::new(app.clone(), service, *stream.remote_addr())
            .traced(spans.clone())
            .guarded(guard.clone());
        std::future::ready(Ok::<_, std::convert::Infallible>(edge))
    });
    axum::serve(listener, connections)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// What a worker thread serves, made on that thread (given the token that ends the grace
/// period): its routes, and a task to wait for once they are dropped, which ends at once when
/// forced, with the audit entries still to write.
type MakeWorker = dyn Fn(CancellationToken) -> anyhow::Result<(Router, JoinHandle<Option<Leftover>>)>
    + Send
    + Sync;

/// Binds `addr` and serves it from `threads` threads, each with a single-threaded runtime of
/// its own accepting on the one listening socket, so a request runs from start to finish on
/// one thread, with no hand-off between threads (which, measured, cost the gateway about a
/// third of its CPU time per request). Each thread makes its routes with `make`; `spans` makes
/// their trace spans when tracing is on.
async fn bind_workers(
    addr: SocketAddr,
    service: &'static str,
    threads: usize,
    make: impl Fn(CancellationToken) -> anyhow::Result<(Router, JoinHandle<Option<Leftover>>)>
    + Send
    + Sync
    + 'static,
    (spans, names): (Option<Arc<ServerSpans>>, &Names),
    deps: &Dependencies,
    (shutdown, force): (&CancellationToken, &CancellationToken),
) -> anyhow::Result<(SocketAddr, Server)> {
    // One socket per thread on the same port (SO_REUSEPORT): the kernel spreads connections
    // evenly among them, where threads accepting from one shared socket would not.
    let first = reuse_port_listener(addr)
        .with_context(|| format!("cannot listen on {addr} for the {service}"))?;
    let local = first.local_addr()?;
    let guard = Arc::new(Guard::new(names, local));
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(
            reuse_port_listener(local)
                .with_context(|| format!("cannot listen on {local} for the {service}"))?,
        );
    }
    let make: std::sync::Arc<MakeWorker> = std::sync::Arc::new(make);
    let mut ready = Vec::with_capacity(threads);
    let mut done = Vec::with_capacity(threads);
    for (i, listener) in listeners.into_iter().enumerate() {
        let (make, deps) = (make.clone(), deps.clone());
        let edge = (spans.clone(), guard.clone());
        let (shutdown, force) = (shutdown.clone(), force.clone());
        let (started, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let (finished, done_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        std::thread::Builder::new()
            .name(format!("{service}-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e.into()));
                        return;
                    }
                };
                let result = runtime.block_on(async move {
                    let made = TcpListener::from_std(listener)
                        .map_err(anyhow::Error::from)
                        .and_then(|listener| Ok((listener, make(force.clone())?)));
                    let (listener, (router, drained)) = match made {
                        Ok(made) => {
                            let _ = started.send(Ok(()));
                            made
                        }
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return Ok(None);
                        }
                    };
                    let served = serve(listener, app(router, &deps), edge, service, shutdown);
                    tokio::select! {
                        result = served => result?,
                        () = force.cancelled() => {}
                    }
                    // Ends once the requests are gone and their entries written, or at once
                    // when forced, with what is left to write.
                    Ok(drained.await.ok().flatten())
                });
                // Dropping the runtime drops the requests still open: each queues its outcome
                // entry ("cut off") on the forced worker's queue, written here before the
                // thread ends.
                drop(runtime);
                let result = match result {
                    Ok(Some(leftover)) => write_leftover(leftover),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                let _ = finished.send(result);
            })
            .with_context(|| format!("cannot start a {service} thread"))?;
        ready.push(ready_rx);
        done.push(done_rx);
    }
    for started in ready {
        started
            .await
            .map_err(|_| anyhow::anyhow!("a {service} thread stopped while starting"))??;
    }
    let server = tokio::spawn(async move {
        for finished in done {
            finished
                .await
                .map_err(|_| anyhow::anyhow!("a {service} thread stopped"))??;
        }
        Ok(())
    });
    tracing::info!(service, %local, threads, hosts = guard.hosts(), "listening");
    Ok((local, server))
}

/// Writes a forced worker's last audit entries on a runtime of their own (the worker's is gone).
fn write_leftover(leftover: Leftover) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(leftover.write());
    Ok(())
}

/// A non-blocking listening socket on `addr` that other sockets of this process may share.
fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn bind(
    addr: SocketAddr,
    service: &'static str,
    router: Router,
    (spans, names): (Option<Arc<ServerSpans>>, &Names),
    deps: &Dependencies,
    (shutdown, force): (&CancellationToken, &CancellationToken),
) -> anyhow::Result<(SocketAddr, Server)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {service}"))?;
    let local = listener.local_addr()?;
    let guard = Arc::new(Guard::new(names, local));
    let hosts = guard.hosts();
    let app = app(router, deps);
    let (token, force) = (shutdown.clone(), force.clone());
    let server = tokio::spawn(async move {
        tokio::select! {
            served = serve(listener, app, (spans, guard), service, token) => served?,
            // The connections still open are left to the process's end.
            () = force.cancelled() => {}
        }
        Ok(())
    });
    tracing::info!(service, %local, hosts, "listening");
    Ok((local, server))
}

async fn join_servers(servers: Vec<Server>) -> anyhow::Result<()> {
    for server in servers {
        server.await.context("listener task failed")??;
    }
    Ok(())
}

/// Runs the migrations, creating the database first if it does not exist.
pub async fn migrate(config: &Config) -> anyhow::Result<usize> {
    use sqlx::migrate::MigrateDatabase as _;
    config.database_options()?;
    if !sqlx::Postgres::database_exists(&config.database_url)
        .await
        .context("cannot reach Postgres")?
    {
        sqlx::Postgres::create_database(&config.database_url)
            .await
            .context("cannot create the database")?;
    }
    let pool = one_connection(config).await?;
    let migrator = sqlx::migrate!("../../migrations");
    let before: i64 = applied(&pool).await;
    migrator.run(&pool).await.context("migration failed")?;
    let after: i64 = applied(&pool).await;
    pool.close().await;
    Ok(usize::try_from(after - before).unwrap_or(0))
}

/// A pool of one connection, for the commands that run a few statements and exit.
pub(crate) async fn one_connection(config: &Config) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(config.database_options()?)
        .await
        .context("cannot connect to Postgres")
}

async fn applied(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}
