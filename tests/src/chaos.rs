//! A TCP proxy that a test can cut and restore, or stall and let flow again, to prove what
//! happens when a dependency dies or stops answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections to `target` until cut.
pub struct ChaosProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    flowing: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl ChaosProxy {
    /// Starts a proxy on 127.0.0.1, port 0, in front of `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (flowing, _) = watch::channel(true);
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            up.clone(),
            cut.clone(),
            flowing.clone(),
        ));
        Self {
            addr,
            up,
            cut,
            flowing,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones until [`ChaosProxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Holds every byte, both ways, with every connection left open, until
    /// [`ChaosProxy::flow`]: a dependency that stopped answering without closing anything.
    pub fn stall(&self) {
        self.flowing.send_replace(false);
    }

    /// Delivers what was held, and forwards again.
    pub fn flow(&self) {
        self.flowing.send_replace(true);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    flowing: watch::Sender<bool>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if !up.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut cut = cut.subscribe();
        let (up_flow, down_flow) = (flowing.subscribe(), flowing.subscribe());
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                _ = async {
                    tokio::join!(
                        pump(client_read, server_write, up_flow),
                        pump(server_read, client_write, down_flow),
                    )
                } => {}
                _ = cut.changed() => {}
            }
        });
    }
}

/// Copies one direction of a connection, holding what it read while the proxy is stalled.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flowing: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if flowing.wait_for(|flowing| *flowing).await.is_err()
            || to.write_all(&buffer[..n]).await.is_err()
        {
            break;
        }
    }
    let _ = to.shutdown().await;
}
