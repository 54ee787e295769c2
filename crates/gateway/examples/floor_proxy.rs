//! The floor under the gateway's throughput: its HTTP frame with nothing inside.
//!
//! The same arrangement as the gateway (a thread per core, each with a single-threaded runtime
//! accepting on its own `SO_REUSEPORT` socket; axum's server; a pooled hyper client with
//! `TCP_NODELAY`), forwarding `POST /mcp` to one upstream with no grant, no parsing, no policy,
//! no Redis and no audit. `benches/gateway-load.sh` measures it beside the gateway and nginx:
//! no gateway built on this stack can be faster than this.
//!
//! Usage: `floor_proxy <listen addr> <upstream addr> [threads]`.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Upstream = Client<HttpConnector, Full<Bytes>>;

#[derive(Clone)]
struct Forward {
    client: Upstream,
    target: Uri,
}

async fn forward(State(to): State<Forward>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut upstream = hyper::Request::post(to.target.clone())
        .body(Full::new(body))
        .expect("a valid request");
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = parts.headers.get(&name) {
            upstream.headers_mut().insert(name, value.clone());
        }
    }
    match to.client.request(upstream).await {
        Ok(answer) => {
            let (mut parts, body) = answer.into_parts();
            parts
                .headers
                .insert(header::SERVER, HeaderValue::from_static("floor"));
            Response::from_parts(parts, Body::new(body))
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseport(true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: floor_proxy <listen addr> <upstream addr> [threads]";
    let listen: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let upstream: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let threads = match args.next() {
        Some(n) => n.parse()?,
        None => std::thread::available_parallelism()?.get(),
    };
    let target: Uri = format!("http://{upstream}/mcp").parse()?;
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let target = target.clone();
            std::thread::Builder::new()
                .name(format!("floor-{i}"))
                .spawn(move || -> anyhow::Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        let mut http = HttpConnector::new();
                        http.set_nodelay(true);
                        let client = Client::builder(TokioExecutor::new())
                            .pool_max_idle_per_host(1024)
                            .build(http);
                        let app = Router::new()
                            .route("/mcp", post(forward))
                            .with_state(Forward { client, target });
                        let listener = listener(listen)?;
                        let listener = listener.tap_io(|tcp| {
                            let _ = tcp.set_nodelay(true);
                        });
                        axum::serve(listener, app).await?;
                        Ok(())
                    })
                })
        })
        .collect::<Result<_, _>>()?;
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}
