//! What every listener shares, in one service around its app ([`Edge`]): request ids, request
//! logging with secrets redacted, trace spans when tracing is on, panics turned into 500s.
//!
//! One hand-written wrapper rather than a stack of general-purpose layers: it runs on every
//! request the gateway proxies, and four layers added to the router cost the gateway a tenth
//! of its instructions per call (each boxes every route again, and clones the boxed route
//! and boxes a future per request), for the same three jobs.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath};
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use axum::middleware::Next;
use tower::Service;
use tracing::Span;

use crate::rebinding::Guard;
use crate::telemetry::{ServerSpan, ServerSpans};

/// The header that carries the request id in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The shared wrapper around a listener's whole app (one per connection). For each request it:
/// - refuses, before anything else, a request whose `Host` is not one of the listener's names
///   (421) or whose `Origin` is another site's (403): see [`crate::rebinding`];
/// - keeps the client's `x-request-id` (at most 128 visible ASCII characters), or sets a new
///   one (UUID v7, so ids sort by time), on the request (handlers read it) and on the response;
/// - adds the client's address ([`ConnectInfo`]), for the handlers that throttle by it;
/// - runs the handler in a `request` span (service, request id, method, and the path with a
///   grant token redacted; never the query string) and logs the status and latency at the end;
/// - when tracing is on, runs it in a trace span too ([`ServerSpans`]), which its handlers find
///   in the request's extensions (an [`opentelemetry::Context`]), ended with the answer's head;
/// - answers 500 if the handler panics, and logs the panic.
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    service: &'static str,
    peer: SocketAddr,
    spans: Option<Arc<ServerSpans>>,
    guard: Option<Arc<Guard>>,
}

impl<S> Edge<S> {
    /// `inner` serving the connection from `peer` on the listener `service` names.
    pub fn new(inner: S, service: &'static str, peer: SocketAddr) -> Self {
        Self {
            inner,
            service,
            peer,
            spans: None,
            guard: None,
        }
    }

    /// The same, answering only to the names and origins `guard` allows.
    pub fn guarded(self, guard: Arc<Guard>) -> Self {
        Self {
            guard: Some(guard),
            ..self
        }
    }

    /// The same, with a trace span per request (`None`: tracing is off).
    pub fn traced(self, spans: Option<Arc<ServerSpans>>) -> Self {
        Self { spans, ..self }
    }
}

/// Middleware for a router's routes (`Router::route_layer`): the template of the route that
/// answered goes with the answer, for its trace span. Only the control plane's routes have it;
/// the gateway's spans need no route, and its calls no extra layer.
pub async fn route_template(
    matched: Option<MatchedPath>,
    request: Request<Body>,
    next: Next,
) -> Response<Body> {
    let mut response = next.run(request).await;
    if let Some(matched) = matched {
        response.extensions_mut().insert(matched);
    }
    response
}

/// Longest `x-request-id` taken from a client.
const REQUEST_ID_MAX: usize = 128;

/// A client's request id is kept when it is short and visible ASCII: it goes into every log
/// line of the request and into the audit log.
fn is_fit_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= REQUEST_ID_MAX && bytes.iter().all(u8::is_ascii_graphic)
}

fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"))
}

impl<S> Service<Request<Body>> for Edge<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let request_id = match request.headers().get(&REQUEST_ID) {
            Some(id) if is_fit_request_id(id) => id.clone(),
            // None, or one unfit to log and store (too long, invisible characters): ours.
            _ => {
                let id = new_request_id();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let trace = match &self.spans {
            Some(spans) => spans.start(&request),
            None => None,
        };
        if let Some(trace) = &trace {
            request.extensions_mut().insert(trace.context().clone());
        }
        // Field values are only computed when the span is enabled.
        let span = tracing::info_span!(
            "request",
            service = self.service,
            request_id = request_id.to_str().unwrap_or(""),
            method = %request.method(),
            path = %portcullis_core::redact::path(request.uri().path()),
        );
        let refused = self
            .guard
            .as_ref()
            .and_then(|guard| Some((guard, guard.check_request(&request).err()?)));
        let called = {
            let _entered = span.enter();
            match refused {
                Some((guard, refusal)) => {
                    tracing::debug!(
                        ?refusal,
                        host = ?request.headers().get(header::HOST),
                        origin = ?request.headers().get(header::ORIGIN),
                        "request refused"
                    );
                    Err(Ok(guard.refuse(refusal)))
                }
                None => catch_unwind(AssertUnwindSafe(|| self.inner.call(request))).map_err(Err),
            }
        };
        let state = match called {
            Ok(future) => State::Running { future },
            Err(Ok(refusal)) => State::Done {
                answer: Some(refusal),
            },
            Err(Err(panic)) => State::Done {
                answer: Some(panicked(panic)),
            },
        };
        EdgeFuture {
            state,
            span,
            request_id,
            started: Instant::now(),
            trace,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a request through [`Edge`].
    pub struct EdgeFuture<F> {
        #[pin]
        state: State<F>,
        span: Span,
        request_id: HeaderValue,
        started: Instant,
        // Ended with the answer's head; dropped (and so ended) with the request otherwise.
        trace: Option<ServerSpan>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// The handler's future.
        Running { #[pin] future: F },
        /// Answered without the handler (the request was refused), or the handler panicked
        /// (its 500): the answer, until it is taken.
        Done { answer: Option<Response<Body>> },
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let mut response = match this.state.as_mut().project() {
            StateProj::Running { future } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(Ok(response))) => response,
                    Err(panic) => {
                        this.state.set(State::Done { answer: None });
                        panicked(panic)
                    }
                }
            }
            // Polled again after it finished: nothing left to answer with.
            StateProj::Done { answer } => answer.take().unwrap_or_else(internal_error),
        };
        if !response.headers().contains_key(&REQUEST_ID) {
            response
                .headers_mut()
                .insert(REQUEST_ID, this.request_id.clone());
        }
        tracing::info!(
            status = response.status().as_u16(),
            latency_ms = this.started.elapsed().as_secs_f64() * 1000.0,
            "finished processing request"
        );
        if let Some(trace) = this.trace.take() {
            let route = response.extensions().get::<MatchedPath>();
            trace.end(response.status(), route.map(MatchedPath::as_str));
        }
        Poll::Ready(Ok(response))
    }
}

fn internal_error() -> Response<Body> {
    let mut response = Response::new(Body::from("internal error"));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Logs a handler's panic and makes its 500.
fn panicked(panic: Box<dyn Any + Send>) -> Response<Body> {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "request handler panicked");
    internal_error()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly by design.

    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    async fn boom() -> &'static str {
        panic!("boom")
    }

    fn edge() -> Edge<Router> {
        let router = Router::new()
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/echo-id",
                get(|headers: axum::http::HeaderMap| async move {
                    headers[&REQUEST_ID].to_str().unwrap().to_owned()
                }),
            )
            .route("/panic", get(boom))
            .route(
                "/own-id",
                get(|| async { ([(REQUEST_ID, "from-handler")], "ok") }),
            );
        Edge::new(router, "test", "127.0.0.1:4242".parse().unwrap())
    }

    async fn get_path(path: &str, request_id: Option<&str>) -> Response<Body> {
        let mut request = Request::get(path);
        if let Some(id) = request_id {
            request = request.header(REQUEST_ID, id);
        }
        edge()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn text(response: Response<Body>) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_request_id_is_made_when_missing_and_seen_by_the_handler() {
        let response = get_path("/echo-id", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let id = response.headers()[&REQUEST_ID].to_str().unwrap().to_owned();
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(text(response).await, id);
    }

    #[tokio::test]
    async fn a_request_id_unfit_to_log_is_replaced() {
        let long = "x".repeat(REQUEST_ID_MAX + 1);
        for unfit in [long.as_str(), "has space", "tab\there"] {
            let response = get_path("/echo-id", Some(unfit)).await;
            let id = response.headers()[&REQUEST_ID].to_str().unwrap().to_owned();
            assert!(
                uuid::Uuid::parse_str(&id).is_ok(),
                "{unfit:?} kept as {id:?}"
            );
            assert_eq!(text(response).await, id);
        }
        let fit = "y".repeat(REQUEST_ID_MAX);
        let response = get_path("/echo-id", Some(&fit)).await;
        assert_eq!(text(response).await, fit);
    }

    #[tokio::test]
    async fn the_clients_request_id_is_kept_and_a_handlers_own_wins() {
        let response = get_path("/echo-id", Some("req-1")).await;
        assert_eq!(response.headers()[&REQUEST_ID], "req-1");
        assert_eq!(text(response).await, "req-1");
        let response = get_path("/own-id", Some("req-2")).await;
        assert_eq!(response.headers()[&REQUEST_ID], "from-handler");
        // Unmatched paths go through the edge too.
        let response = get_path("/nowhere", Some("req-3")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[&REQUEST_ID], "req-3");
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address() {
        assert_eq!(text(get_path("/peer", None).await).await, "127.0.0.1:4242");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_server_goes_on() {
        let response = get_path("/panic", Some("req-4")).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[&REQUEST_ID], "req-4");
        assert_eq!(text(response).await, "internal error");
        assert_eq!(get_path("/echo-id", None).await.status(), StatusCode::OK);
    }
}
