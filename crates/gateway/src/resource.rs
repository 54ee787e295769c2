//! The MCP authorization spec's discovery: each server URL `/mcp/{server_id}` is an OAuth
//! protected resource whose metadata (RFC 9728) names its tenant's identity providers as
//! authorization servers, and a 401 there points to that metadata in `WWW-Authenticate`, so a
//! client that follows the spec finds where to get a token on its own.
//!
//! The metadata exists for servers that accept identity tokens (their tenant has a provider
//! and the server a binding); for others it is a 404, and grant tokens work as ever.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::ServerId;
use serde_json::json;

use crate::Gateway;
use crate::error::GatewayError;

/// Where the metadata of the resource `/mcp/{server}` is: RFC 9728 §3.1 inserts the
/// well-known path before the resource's path.
pub fn metadata_url(public_url: &str, server: ServerId) -> String {
    format!("{public_url}/.well-known/oauth-protected-resource/mcp/{server}")
}

/// `GET /.well-known/oauth-protected-resource/mcp/{server_id}`.
pub async fn metadata(State(gw): State<Arc<Gateway>>, Path(server): Path<String>) -> Response {
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "not_found", "error_description": "no identity-bound server has this id" })),
        )
            .into_response()
    };
    let Ok(id) = server.parse::<ServerId>() else {
        return not_found();
    };
    let access = match gw.grants.access(id).await {
        Ok(Some(access)) => access,
        Ok(None) => return not_found(),
        Err(e) => return GatewayError::from(e).into_response(),
    };
    if access.providers.is_empty() || access.bindings.is_empty() {
        return not_found();
    }
    let issuers: Vec<&str> = access.providers.iter().map(|p| p.issuer.as_str()).collect();
    let mut response = axum::Json(json!({
        "resource": format!("{}/mcp/{id}", gw.public_url),
        "authorization_servers": issuers,
        "bearer_methods_supported": ["header"],
    }))
    .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    response
}

/// Adds the metadata's URL to the `WWW-Authenticate` challenge of a 401 on `/mcp/{server}`.
pub fn challenge(mut response: Response, public_url: &str, server: &str) -> Response {
    if response.status() != StatusCode::UNAUTHORIZED {
        return response;
    }
    let Ok(id) = server.parse::<ServerId>() else {
        return response;
    };
    let current = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Bearer")
        .to_owned();
    let with = format!(
        r#"{current}, resource_metadata="{}""#,
        metadata_url(public_url, id)
    );
    if let Ok(value) = HeaderValue::from_str(&with) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
