//! One database per test, cloned from a template that is migrated once per set of migrations.

use std::str::FromStr;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// A fresh, migrated database that is dropped when this value is.
pub struct TestDatabase {
    name: String,
    options: PgConnectOptions,
    pool: PgPool,
}

impl TestDatabase {
    /// Clones the template into a new database and connects to it.
    pub async fn new() -> Self {
        let template = TEMPLATE.get_or_init(ensure_template).await.clone();
        let name = format!("portcullis_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = admin_connection().await;
        sqlx::raw_sql(AssertSqlSafe(format!(
            r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#
        )))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        admin.close().await.ok();
        let options = server_options().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone())
            .await
            .expect("cannot connect to the test database");
        Self {
            name,
            options,
            pool,
        }
    }

    /// A pool on the test database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The URL of the test database, for a service under test.
    pub fn url(&self) -> String {
        self.options.to_url_lossy().to_string()
    }

    /// The address of the server the test database is on (for a [`crate::ChaosProxy`] in
    /// front of it).
    pub fn addr(&self) -> std::net::SocketAddr {
        use std::net::ToSocketAddrs as _;
        let host = match self.options.get_host() {
            "localhost" => "127.0.0.1",
            host => host,
        };
        (host, self.options.get_port())
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.find(std::net::SocketAddr::is_ipv4))
            .unwrap_or_else(|| panic!("DATABASE_URL: no IPv4 address for {host}"))
    }

    /// The URL of the test database reached through `addr` instead (a [`crate::ChaosProxy`]).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        self.options
            .clone()
            .host(&addr.ip().to_string())
            .port(addr.port())
            .to_url_lossy()
            .to_string()
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Async work cannot run in Drop; a short-lived thread with its own runtime can.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut admin = admin_connection().await;
                let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .execute(&mut admin)
                .await;
                admin.close().await.ok();
            });
        })
        .join();
    }
}

fn server_options() -> PgConnectOptions {
    PgConnectOptions::from_str(&crate::database_url())
        .expect("DATABASE_URL is not a Postgres URL")
        .database("postgres")
}

async fn admin_connection() -> PgConnection {
    server_options()
        .connect()
        .await
        .expect("cannot connect to Postgres (is it running? see deploy/local/test)")
}

/// The template's name carries a hash of the migrations, so a changed migration gets a new one.
fn template_name() -> String {
    let mut hash = Sha256::new();
    for m in MIGRATOR.iter() {
        hash.update(m.version.to_le_bytes());
        hash.update(&*m.checksum);
    }
    format!(
        "portcullis_template_{}",
        &hex::encode(hash.finalize())[..16]
    )
}

async fn ensure_template() -> String {
    let name = template_name();
    let mut admin = admin_connection().await;
    // Test binaries run in parallel processes: serialise template creation across them.
    sqlx::query("SELECT pg_advisory_lock(7245019)")
        .execute(&mut admin)
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    if !exists {
        let building = format!("{name}_building");
        sqlx::raw_sql(AssertSqlSafe(format!(
            r#"DROP DATABASE IF EXISTS "{building}" WITH (FORCE)"#
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!(r#"CREATE DATABASE "{building}""#)))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut conn = server_options()
            .database(&building)
            .connect()
            .await
            .unwrap();
        MIGRATOR
            .run(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("migrations failed: {e}"));
        conn.close().await.unwrap();
        // Renamed only once complete, so a crash never leaves a half-migrated template.
        sqlx::raw_sql(AssertSqlSafe(format!(
            r#"ALTER DATABASE "{building}" RENAME TO "{name}""#
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
    sqlx::query("SELECT pg_advisory_unlock(7245019)")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    name
}
