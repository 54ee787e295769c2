//! The route table and the top router.
//!
//! [`API`] and [`PAGES`] list every route with the least role it needs. The OpenAPI document
//! is generated from [`API`], and the tests walk both tables to prove tenant isolation and role
//! enforcement on every route, so a route missing here is a route nobody tested.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;

use crate::error::Error;
use crate::{
    AppState, accounts, approvals, audit, bindings, dashboard, grants, identity_pages,
    identity_providers, members, openapi, overview, policies, servers, tools,
};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (sign-up, sign-in, invitation acceptance, the OpenAPI document).
    Public,
    /// Any member.
    Viewer,
    /// Policy managers and admins.
    PolicyManager,
    /// Admins.
    Admin,
}

impl Access {
    /// The role's name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Viewer => "viewer",
            Access::PolicyManager => "policy_manager",
            Access::Admin => "admin",
        }
    }
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template with `{param}`s.
    pub path: &'static str,
    /// The least role that may call it.
    pub access: Access,
    /// What it does.
    pub summary: &'static str,
}

const fn r(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        access,
        summary,
    }
}

use Access::{Admin, PolicyManager as Manager, Public, Viewer};

/// Every REST route under `/api/v1`.
pub const API: &[Route] = &[
    r(
        "POST",
        "/api/v1/signup",
        Public,
        "Ask for an organisation and its first admin: the confirmation link goes by email, and the answer is the same whether or not the email has an account",
    ),
    r(
        "POST",
        "/api/v1/signup/confirm",
        Public,
        "Confirm a sign-up with the token of its emailed link: creates the organisation and returns an admin API token",
    ),
    r(
        "POST",
        "/api/v1/login",
        Public,
        "Sign in; sets the session cookie and returns the CSRF token",
    ),
    r(
        "POST",
        "/api/v1/invitations/accept",
        Public,
        "Accept an invitation",
    ),
    r("GET", "/api/v1/openapi.json", Public, "This document"),
    r("POST", "/api/v1/logout", Viewer, "End the current session"),
    r(
        "GET",
        "/api/v1/me",
        Viewer,
        "The caller: tenant, role, actor",
    ),
    r("GET", "/api/v1/members", Viewer, "List members"),
    r(
        "PATCH",
        "/api/v1/members/{user_id}",
        Admin,
        "Change a member's role",
    ),
    r(
        "DELETE",
        "/api/v1/members/{user_id}",
        Admin,
        "Remove a member",
    ),
    r("GET", "/api/v1/invitations", Admin, "List invitations"),
    r(
        "POST",
        "/api/v1/invitations",
        Admin,
        "Invite someone (the link is shown once)",
    ),
    r(
        "DELETE",
        "/api/v1/invitations/{id}",
        Admin,
        "Withdraw an invitation",
    ),
    r("GET", "/api/v1/tokens", Admin, "List API tokens"),
    r(
        "POST",
        "/api/v1/tokens",
        Admin,
        "Create an API token (shown once)",
    ),
    r(
        "DELETE",
        "/api/v1/tokens/{id}",
        Admin,
        "Revoke an API token",
    ),
    r("GET", "/api/v1/settings", Viewer, "Tenant settings"),
    r(
        "PUT",
        "/api/v1/settings",
        Admin,
        "Change retention, webhook, name",
    ),
    r("GET", "/api/v1/servers", Viewer, "List servers"),
    r("POST", "/api/v1/servers", Admin, "Register a server"),
    r(
        "POST",
        "/api/v1/servers/reseal",
        Admin,
        "Seal every server's credentials again with the active key",
    ),
    r(
        "GET",
        "/api/v1/servers/{id}",
        Viewer,
        "A server (header names; masked hints for admins)",
    ),
    r("PATCH", "/api/v1/servers/{id}", Admin, "Edit a server"),
    r(
        "DELETE",
        "/api/v1/servers/{id}",
        Admin,
        "Delete a server with its policies and grants",
    ),
    r(
        "POST",
        "/api/v1/servers/{id}/test",
        Manager,
        "Test the connection (initialize)",
    ),
    r(
        "POST",
        "/api/v1/servers/{id}/discover",
        Manager,
        "Discover and classify the server's tools",
    ),
    r(
        "GET",
        "/api/v1/servers/{id}/tools",
        Viewer,
        "The discovered tools",
    ),
    r(
        "GET",
        "/api/v1/servers/{id}/tools/{name}",
        Viewer,
        "One tool: risk and signals, definition status and history, the rule each policy applies, the recommended rule, guidance, attack patterns, usage",
    ),
    r(
        "POST",
        "/api/v1/servers/{id}/tools/{name}/approve",
        Manager,
        "Approve a tool's current definition",
    ),
    r(
        "GET",
        "/api/v1/tools",
        Viewer,
        "Every tool of every server: risk, status, governed (?risk=&category=&status=&governed=yes|no&q=&sort=&dir=)",
    ),
    r(
        "GET",
        "/api/v1/servers/{id}/overview",
        Viewer,
        "Calls, denials and rate limits over time",
    ),
    r(
        "GET",
        "/api/v1/servers/{id}/recommended-policy",
        Viewer,
        "The recommended policy for the tools",
    ),
    r(
        "GET",
        "/api/v1/servers/{id}/policies",
        Viewer,
        "The server's policies",
    ),
    r(
        "POST",
        "/api/v1/servers/{id}/policies",
        Manager,
        "Create a policy",
    ),
    r(
        "POST",
        "/api/v1/policies/validate",
        Viewer,
        "Validate a document",
    ),
    r(
        "GET",
        "/api/v1/policies/{id}",
        Viewer,
        "A policy and its current document",
    ),
    r(
        "PUT",
        "/api/v1/policies/{id}",
        Manager,
        "Save a new version",
    ),
    r(
        "DELETE",
        "/api/v1/policies/{id}",
        Manager,
        "Delete a policy no grant uses",
    ),
    r(
        "GET",
        "/api/v1/policies/{id}/versions",
        Viewer,
        "Every version",
    ),
    r(
        "GET",
        "/api/v1/policies/{id}/versions/{version}",
        Viewer,
        "One version",
    ),
    r(
        "GET",
        "/api/v1/policies/{id}/diff",
        Viewer,
        "Line diff between two versions",
    ),
    r(
        "POST",
        "/api/v1/policies/{id}/test",
        Viewer,
        "Evaluate a sample call (changes nothing)",
    ),
    r(
        "GET",
        "/api/v1/grants",
        Viewer,
        "List grants (never tokens)",
    ),
    r(
        "POST",
        "/api/v1/grants",
        Manager,
        "Issue a grant (the token is shown once)",
    ),
    r("GET", "/api/v1/grants/{id}", Viewer, "A grant"),
    r(
        "PATCH",
        "/api/v1/grants/{id}",
        Manager,
        "Change a grant's policy, label or expiry",
    ),
    r("DELETE", "/api/v1/grants/{id}", Manager, "Revoke a grant"),
    r(
        "POST",
        "/api/v1/grants/{id}/rotate",
        Manager,
        "Replace a grant's token",
    ),
    r(
        "GET",
        "/api/v1/identity-providers",
        Viewer,
        "List identity providers",
    ),
    r(
        "POST",
        "/api/v1/identity-providers",
        Admin,
        "Trust an OpenID provider's tokens",
    ),
    r(
        "GET",
        "/api/v1/identity-providers/{id}",
        Viewer,
        "One identity provider",
    ),
    r(
        "PUT",
        "/api/v1/identity-providers/{id}",
        Admin,
        "Replace an identity provider's settings",
    ),
    r(
        "DELETE",
        "/api/v1/identity-providers/{id}",
        Admin,
        "Stop trusting an identity provider",
    ),
    r("GET", "/api/v1/bindings", Viewer, "List policy bindings"),
    r(
        "POST",
        "/api/v1/bindings",
        Manager,
        "Bind a policy to verified identities on a server",
    ),
    r("GET", "/api/v1/bindings/{id}", Viewer, "One policy binding"),
    r(
        "PUT",
        "/api/v1/bindings/{id}",
        Manager,
        "Replace a policy binding",
    ),
    r(
        "DELETE",
        "/api/v1/bindings/{id}",
        Manager,
        "Remove a policy binding",
    ),
    r(
        "GET",
        "/api/v1/audit",
        Viewer,
        "Audit events, filtered, keyset-paginated",
    ),
    r(
        "GET",
        "/api/v1/audit/export",
        Viewer,
        "Export the filter as CSV or JSONL",
    ),
    r(
        "GET",
        "/api/v1/audit/tail",
        Viewer,
        "Live tail (Server-Sent Events)",
    ),
    r("GET", "/api/v1/audit/{id}", Viewer, "One audit event"),
    r("GET", "/api/v1/admin-audit", Admin, "Who changed what"),
    r("GET", "/api/v1/approvals", Viewer, "Approvals"),
    r("GET", "/api/v1/approvals/{id}", Viewer, "One approval"),
    r("POST", "/api/v1/approvals/{id}/approve", Manager, "Approve"),
    r("POST", "/api/v1/approvals/{id}/deny", Manager, "Deny"),
    r(
        "GET",
        "/api/v1/identity-providers/{id}/sign-in",
        Viewer,
        "A provider's dashboard sign-in settings (never the secret)",
    ),
    r(
        "PUT",
        "/api/v1/identity-providers/{id}/sign-in",
        Admin,
        "Set up dashboard sign-in through a provider",
    ),
    r(
        "DELETE",
        "/api/v1/identity-providers/{id}/sign-in",
        Admin,
        "Turn dashboard sign-in through a provider off",
    ),
];

/// Every dashboard route.
pub const PAGES: &[Route] = &[
    r("GET", "/", Public, "Front door"),
    r("GET", "/signup", Public, "Sign up"),
    r("POST", "/signup", Public, "Sign up"),
    r(
        "GET",
        "/signup/confirm",
        Public,
        "Confirm a sign-up (?token=): the page",
    ),
    r(
        "POST",
        "/signup/confirm",
        Public,
        "Confirm a sign-up: creates the organisation",
    ),
    r("GET", "/login", Public, "Sign in"),
    r("POST", "/login", Public, "Sign in"),
    r(
        "POST",
        "/login/sso",
        Public,
        "Find the identity provider of an email's domain",
    ),
    r(
        "GET",
        "/login/sso/{provider_id}",
        Public,
        "Sign in through an organisation's identity provider",
    ),
    r(
        "GET",
        "/login/sso/callback",
        Public,
        "The identity provider's answer",
    ),
    r("POST", "/logout", Public, "Sign out"),
    r("GET", "/invite", Public, "Invitation (?token=)"),
    r("POST", "/invite", Public, "Accept an invitation"),
    r("GET", "/settings", Viewer, "Settings and members"),
    r("POST", "/settings", Admin, "Save settings"),
    r("POST", "/settings/invitations", Admin, "Invite"),
    r(
        "POST",
        "/settings/invitations/{id}/delete",
        Admin,
        "Withdraw an invitation",
    ),
    r("POST", "/settings/tokens", Admin, "Create an API token"),
    r(
        "POST",
        "/settings/tokens/{id}/revoke",
        Admin,
        "Revoke an API token",
    ),
    r(
        "POST",
        "/settings/members/{user_id}/role",
        Admin,
        "Change a role",
    ),
    r(
        "POST",
        "/settings/members/{user_id}/remove",
        Admin,
        "Remove a member",
    ),
    r(
        "GET",
        "/identity-providers",
        Viewer,
        "Identity providers and policy bindings",
    ),
    r(
        "POST",
        "/identity-providers",
        Admin,
        "Add an identity provider",
    ),
    r(
        "POST",
        "/identity-providers/{id}/delete",
        Admin,
        "Remove an identity provider",
    ),
    r("POST", "/bindings", Manager, "Add a policy binding"),
    r(
        "POST",
        "/bindings/{id}/delete",
        Manager,
        "Remove a policy binding",
    ),
    r("GET", "/servers", Viewer, "Servers"),
    r("POST", "/servers", Admin, "Register a server"),
    r("GET", "/servers/{id}", Viewer, "A server and its tools"),
    r("POST", "/servers/{id}", Admin, "Edit a server"),
    r("POST", "/servers/{id}/delete", Admin, "Delete a server"),
    r("POST", "/servers/{id}/test", Manager, "Test the connection"),
    r("POST", "/servers/{id}/discover", Manager, "Discover tools"),
    r("GET", "/servers/{id}/tools/{name}", Viewer, "A tool's page"),
    r(
        "GET",
        "/servers/{id}/tools/{name}/add-rule",
        Manager,
        "The diff of adding a tool's recommended rule to a policy",
    ),
    r(
        "POST",
        "/servers/{id}/tools/{name}/add-rule",
        Manager,
        "Add a tool's recommended rule to a policy (a new version)",
    ),
    r(
        "POST",
        "/servers/{id}/tools/{name}/approve",
        Manager,
        "Approve a tool",
    ),
    r("GET", "/tools", Viewer, "Every tool of every server"),
    r("GET", "/servers/{id}/overview", Viewer, "Overview"),
    r("GET", "/servers/{id}/policies/new", Manager, "New policy"),
    r("POST", "/servers/{id}/policies", Manager, "Create a policy"),
    r("GET", "/policies/{id}", Viewer, "Policy editor"),
    r(
        "POST",
        "/policies/{id}/builder",
        Manager,
        "Save from the builder",
    ),
    r(
        "POST",
        "/policies/{id}/json",
        Viewer,
        "Save JSON (managers) or test a draft (anyone)",
    ),
    r("POST", "/policies/{id}/delete", Manager, "Delete a policy"),
    r("GET", "/policies/{id}/diff", Viewer, "Diff"),
    r(
        "GET",
        "/policies/{id}/versions/{version}",
        Viewer,
        "A version",
    ),
    r("GET", "/grants", Viewer, "Grants"),
    r("POST", "/grants", Manager, "Issue a grant"),
    r("GET", "/grants/{id}", Viewer, "A grant"),
    r("POST", "/grants/{id}", Manager, "Change a grant"),
    r("POST", "/grants/{id}/rotate", Manager, "Rotate"),
    r("POST", "/grants/{id}/revoke", Manager, "Revoke"),
    r("GET", "/audit", Viewer, "Audit log"),
    r("GET", "/audit/export.csv", Viewer, "Export CSV"),
    r("GET", "/audit/export.jsonl", Viewer, "Export JSONL"),
    r("GET", "/audit/{id}", Viewer, "Audit event"),
    r(
        "POST",
        "/settings/identity-providers/{id}/sign-in",
        Admin,
        "Set up sign-in through a provider",
    ),
    r("GET", "/admin-audit", Admin, "Admin audit"),
    r("GET", "/approvals", Viewer, "Approvals"),
    r("POST", "/approvals/{id}/approve", Manager, "Approve"),
    r("POST", "/approvals/{id}/deny", Manager, "Deny"),
];

async fn fallback() -> Error {
    Error::NoRoute
}

/// Headers every answer carries: no framing, no sniffing, no caching of pages that may show a
/// secret once, no referrer to another site (a grant URL must not leak through one), and a
/// strict CSP. `same-origin` rather than `no-referrer`: under `no-referrer` a browser sends
/// `Origin: null` with the dashboard's own forms, which the listener's Origin check refuses.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    if !is_asset && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Dashboard errors become pages; API errors stay JSON.
async fn errors_by_kind(request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/api/") {
        next.run(request).await
    } else {
        dashboard::html_errors(request, next).await
    }
}

/// The control plane's router: API, dashboard, assets.
pub(crate) fn router(state: AppState) -> Router {
    crate::passwords::warm_up();
    let api = Router::new()
        .merge(accounts::api())
        .merge(members::api())
        .merge(servers::api())
        .merge(tools::api())
        .merge(policies::api())
        .merge(grants::api())
        .merge(identity_providers::api())
        .merge(bindings::api())
        .merge(audit::api())
        .merge(approvals::api())
        .merge(overview::api())
        .merge(crate::sso::api())
        .route("/api/v1/openapi.json", get(openapi::document));
    let pages = Router::new()
        .merge(dashboard::router())
        .merge(accounts::pages())
        .merge(crate::sso::pages())
        .merge(members::pages())
        .merge(servers::pages())
        .merge(tools::pages())
        .merge(policies::pages())
        .merge(grants::pages())
        .merge(identity_pages::pages())
        .merge(audit::pages())
        .merge(approvals::pages())
        .merge(overview::pages());
    Router::new()
        .merge(api)
        .merge(pages)
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ))
        .layer(middleware::from_fn(errors_by_kind))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}
