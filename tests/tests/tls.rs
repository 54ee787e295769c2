//! Postgres and Redis reached over TLS, as managed services require: each behind a terminator
//! that speaks TLS with a certificate of the test's own private CA, so nothing reaches them
//! in the clear and only a client that trusts that CA gets through.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use portcullis_tests::{TestDatabase, TestRedis};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A Postgres client's request to switch to TLS (length 8, code 80877103).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A private CA, written to a PEM file, and a server certificate it issued for 127.0.0.1.
struct Pki {
    ca_file: PathBuf,
    acceptor: TlsAcceptor,
}

impl Pki {
    fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let ca_file = std::env::temp_dir().join(format!(
            "portcullis-test-ca-{}.pem",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Self {
            ca_file,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

#[derive(Clone, Copy)]
enum Protocol {
    /// TLS after the client's `SSLRequest`; a client that does not ask is turned away.
    Postgres,
    /// TLS from the first byte.
    Redis,
}

/// Terminates TLS in front of a plain-text server and counts the handshakes that succeeded.
struct Terminator {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Terminator {
    async fn start(target: SocketAddr, acceptor: TlsAcceptor, protocol: Protocol) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    if let Protocol::Postgres = protocol {
                        let mut request = [0u8; 8];
                        if client.read_exact(&mut request).await.is_err()
                            || request != SSL_REQUEST
                            || client.write_all(b"S").await.is_err()
                        {
                            return;
                        }
                    }
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        Self {
            addr,
            handshakes,
            accept,
        }
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The test database's URL through `addr`, verifying the server's certificate against
/// `root_cert` and the host name.
fn database_url_via(db: &TestDatabase, addr: SocketAddr, root_cert: &Path) -> String {
    let mut url = reqwest::Url::parse(&db.url_via(addr)).unwrap();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !k.starts_with("ssl"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("sslmode", "verify-full")
        .append_pair("sslrootcert", root_cert.to_str().unwrap());
    url.to_string()
}

async fn readyz(addr: SocketAddr) -> (u16, Value) {
    let response = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn postgres_and_redis_over_tls_with_a_private_ca() {
    let (db, redis, pki) = (
        TestDatabase::new().await,
        TestRedis::new().await,
        Pki::new(),
    );
    let pg = Terminator::start(db.addr(), pki.acceptor.clone(), Protocol::Postgres).await;
    let rd = Terminator::start(
        portcullis_tests::redis_addr(),
        pki.acceptor.clone(),
        Protocol::Redis,
    )
    .await;
    let database_url = database_url_via(&db, pg.addr, &pki.ca_file);
    let redis_url = format!("rediss://{}", rd.addr);
    let ca_file = pki.ca_file.to_str().unwrap();

    // Trusting the CA (Postgres through `sslrootcert`, Redis through
    // PORTCULLIS_REDIS_CA_FILE), both listeners are ready, over TLS only.
    let app = portcullis_tests::start_both(
        &database_url,
        &redis_url,
        redis.prefix(),
        &["--redis-ca-file", ca_file],
    )
    .await;
    for addr in [app.control_plane.unwrap(), app.gateway.unwrap()] {
        let (status, body) = readyz(addr).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["checks"], json!({"postgres": "ok", "redis": "ok"}));
    }
    // The gateway's invalidation feed is a subscription over TLS too.
    redis.subscribed(1).await;
    assert!(pg.handshakes() > 0 && rd.handshakes() > 0);
    app.stop().await.unwrap();

    // Not trusting it, neither gets through: Postgres with another CA's certificate as its
    // root, Redis with the system's trust store.
    let other = Pki::new();
    let database_url = database_url_via(&db, pg.addr, &other.ca_file);
    let before = (pg.handshakes(), rd.handshakes());
    let app = portcullis_tests::start_both(&database_url, &redis_url, redis.prefix(), &[]).await;
    let (status, body) = readyz(app.gateway.unwrap()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["failed"], json!(["postgres", "redis"]), "{body}");
    assert_eq!((pg.handshakes(), rd.handshakes()), before);
    app.stop().await.unwrap();
}
