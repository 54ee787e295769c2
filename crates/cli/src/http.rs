//! What every listener shares: request ids, request logging with secrets redacted, panics
//! turned into 500s.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Request};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

/// The header that carries the request id in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids are UUID v7, so they sort by time in the logs.
#[derive(Clone, Copy, Default)]
struct MakeRequestUuidV7;

impl MakeRequestId for MakeRequestUuidV7 {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let mut buf = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

/// Wraps a service's router in the shared layers. `service` names the listener in log lines.
pub fn layers(router: Router, service: &'static str) -> Router {
    router
        .layer(CatchPanicLayer::new())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |req: &Request<_>| {
                    // Field values are only computed when the span is enabled. The per-grant
                    // URL carries the bearer token in its path: log it redacted, and never the
                    // query string.
                    tracing::info_span!(
                        "request",
                        service,
                        request_id = req
                            .headers()
                            .get(&REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                        method = %req.method(),
                        path = %portcullis_core::redact::path(req.uri().path()),
                    )
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuidV7))
}
