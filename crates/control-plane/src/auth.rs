//! Who is calling: sessions (dashboard cookie) and API tokens (bearer), roles, and CSRF.
//!
//! [`authenticate`] runs before every handler. It resolves the caller to a [`Tenant`] and stores
//! it in the request; handlers take a [`Tenant`] (any member) or one of the role extractors
//! [`Manager`] and [`Admin`], so a handler's signature says who may call it and it cannot reach a
//! repository without the caller's tenant. Unsafe requests authenticated by a session cookie must
//! carry the session's CSRF token (form field `_csrf` or header `X-CSRF-Token`).

use std::net::{IpAddr, SocketAddr};

use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use portcullis_core::{TenantId, TokenHash, UserId};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::AppState;
use crate::error::{Error, Result};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "pcs";
/// The CSRF header for cookie-authenticated API calls.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The CSRF field of dashboard forms.
pub const CSRF_FIELD: &str = "_csrf";
/// Largest form body the CSRF check buffers.
const MAX_FORM_BYTES: usize = 2 * 1024 * 1024;

/// A member's role, ordered by what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything except secrets; changes nothing.
    Viewer,
    /// Also edits policies, grants, tools and approvals.
    PolicyManager,
    /// Everything: servers and their credentials, members, invitations, API tokens, settings.
    Admin,
}

impl Role {
    /// The name in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::PolicyManager => "policy_manager",
            Role::Admin => "admin",
        }
    }

    /// Reads a stored or submitted role.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "policy_manager" => Some(Role::PolicyManager),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::PolicyManager, Role::Admin];
}

/// Who acts, for the admin audit.
#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    /// The signed-in user, if a person.
    pub user_id: Option<UserId>,
    /// The API token, if automation.
    pub token_id: Option<Uuid>,
    /// `alice@example.com` or `token:deploy-bot`.
    pub label: String,
}

/// The authenticated caller: a tenant, a role within it, and who they are.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The tenant every query of this request is scoped to.
    pub id: TenantId,
    /// What the caller may do.
    pub role: Role,
    /// Who the caller is.
    pub actor: Actor,
    /// The session, for pages (absent for API tokens).
    pub session: Option<SessionInfo>,
}

/// What a page needs about the signed-in session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session row.
    pub id: Uuid,
    /// The CSRF token to embed in forms.
    pub csrf: String,
    /// The tenant's name, for the header.
    pub tenant_name: String,
}

impl Tenant {
    /// Fails unless the caller's role is at least `needed`.
    pub fn require(&self, needed: Role) -> Result<()> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(Error::Forbidden {
                role: self.role.as_str(),
                needed: needed.as_str(),
            })
        }
    }

    /// The CSRF token for forms (empty for API tokens, which never need one).
    pub fn csrf(&self) -> &str {
        self.session.as_ref().map_or("", |s| s.csrf.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self> {
        parts
            .extensions
            .get::<Tenant>()
            .cloned()
            .ok_or(Error::Unauthenticated)
    }
}

/// A caller who may edit policies, grants, tools and approvals.
#[derive(Debug, Clone)]
pub struct Manager(pub Tenant);

impl<S: Send + Sync> FromRequestParts<S> for Manager {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let tenant = Tenant::from_request_parts(parts, state).await?;
        tenant.require(Role::PolicyManager)?;
        Ok(Self(tenant))
    }
}

impl Manager {
    /// Checks the role of a caller extracted as a plain [`Tenant`] (forms that do several things).
    pub fn check(tenant: Tenant) -> Result<Tenant> {
        tenant.require(Role::PolicyManager)?;
        Ok(tenant)
    }
}

/// A caller who may do everything in the tenant.
#[derive(Debug, Clone)]
pub struct Admin(pub Tenant);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let tenant = Tenant::from_request_parts(parts, state).await?;
        tenant.require(Role::Admin)?;
        Ok(Self(tenant))
    }
}

/// The client's address (for login throttling), from the socket or a trusted proxy header.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        if state.settings.trust_forwarded_for
            && let Some(ip) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
        {
            return Ok(Self(Some(ip)));
        }
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Resolves the caller and checks CSRF; never rejects by itself (handlers decide).
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match resolve(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

async fn resolve(state: &AppState, mut request: Request) -> Result<Request> {
    if let Some(token) = bearer(request.headers()) {
        // A bad bearer token is an error even on public pages: automation should hear about it.
        let tenant = api_token_tenant(state, &token)
            .await?
            .ok_or(Error::Unauthenticated)?;
        request.extensions_mut().insert(tenant);
        return Ok(request);
    }
    let Some(secret) = cookie(request.headers(), SESSION_COOKIE)
        .and_then(|value| verify_cookie(&state.cookie_key, &value))
    else {
        return Ok(request);
    };
    let Some(tenant) = session_tenant(state, &secret).await? else {
        return Ok(request);
    };
    let unsafe_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if unsafe_method && is_sign_in_form(request.uri().path()) {
        // Signing in or up while a session exists: those forms carry no CSRF token and act on
        // no session, so they go through as anonymous requests.
        return Ok(request);
    }
    if unsafe_method {
        let expected = tenant.csrf().to_owned();
        request = check_csrf(request, &expected).await?;
    }
    request.extensions_mut().insert(tenant);
    Ok(request)
}

/// Forms that work without a session (their handlers never read one).
fn is_sign_in_form(path: &str) -> bool {
    matches!(
        path,
        "/login"
            | "/login/sso"
            | "/signup"
            | "/signup/confirm"
            | "/invite"
            | "/api/v1/login"
            | "/api/v1/signup"
            | "/api/v1/signup/confirm"
            | "/api/v1/invitations/accept"
    )
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The value of one cookie.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn sign(key: &[u8], secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(secret.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// The cookie value for a session secret: the secret and its signature.
pub fn signed_cookie_value(key: &[u8], secret: &str) -> String {
    format!("{secret}.{}", sign(key, secret))
}

fn verify_cookie(key: &[u8], value: &str) -> Option<String> {
    let (secret, signature) = value.rsplit_once('.')?;
    let expected = sign(key, secret);
    bool::from(expected.as_bytes().ct_eq(signature.as_bytes())).then(|| secret.to_owned())
}

async fn check_csrf(request: Request, expected: &str) -> Result<Request> {
    let matches = |given: &str| bool::from(given.as_bytes().ct_eq(expected.as_bytes()));
    if let Some(given) = request
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return if matches(given) {
            Ok(request)
        } else {
            Err(Error::Csrf)
        };
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(Error::Csrf);
    }
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| Error::BadRequest("the form is too large".into()))?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let given = fields
        .iter()
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if !matches(given) {
        return Err(Error::Csrf);
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    role: String,
    created_by: Option<Uuid>,
}

async fn api_token_tenant(state: &AppState, token: &str) -> Result<Option<Tenant>> {
    if !token.starts_with("pct_") {
        return Ok(None);
    }
    let hash = TokenHash::of(token);
    let row: Option<TokenRow> = sqlx::query_as(
        "UPDATE api_tokens SET last_used_at = now()
          WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
         RETURNING id, tenant_id, name, role, created_by",
    )
    .bind(hash.as_bytes())
    .fetch_optional(state.db())
    .await?;
    Ok(row.and_then(|row| {
        Some(Tenant {
            id: TenantId(row.tenant_id),
            role: Role::parse(&row.role)?,
            actor: Actor {
                user_id: row.created_by.map(UserId),
                token_id: Some(row.id),
                label: format!("token:{}", row.name),
            },
            session: None,
        })
    }))
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    tenant_id: Uuid,
    user_id: Uuid,
    csrf_token: String,
    role: String,
    email: String,
    tenant_name: String,
    stale: bool,
}

async fn session_tenant(state: &AppState, secret: &str) -> Result<Option<Tenant>> {
    let hash = TokenHash::of(secret);
    let row: Option<SessionRow> = sqlx::query_as(
        "SELECT s.id, s.tenant_id, s.user_id, s.csrf_token, m.role, u.email, t.name AS tenant_name,
                s.last_seen_at < now() - interval '1 minute' AS stale
           FROM sessions s
           JOIN memberships m ON m.tenant_id = s.tenant_id AND m.user_id = s.user_id
           JOIN users u ON u.id = s.user_id
           JOIN tenants t ON t.id = s.tenant_id
          WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()",
    )
    .bind(hash.as_bytes())
    .fetch_optional(state.db())
    .await?;
    let Some(row) = row else { return Ok(None) };
    if row.stale {
        // Touching the row on every request would make each page view a write.
        sqlx::query("UPDATE sessions SET last_seen_at = now() WHERE id = $1")
            .bind(row.id)
            .execute(state.db())
            .await?;
    }
    Ok(Role::parse(&row.role).map(|role| Tenant {
        id: TenantId(row.tenant_id),
        role,
        actor: Actor {
            user_id: Some(UserId(row.user_id)),
            token_id: None,
            label: row.email,
        },
        session: Some(SessionInfo {
            id: row.id,
            csrf: row.csrf_token,
            tenant_name: row.tenant_name,
        }),
    }))
}

/// The `Set-Cookie` value that starts a session.
pub fn session_cookie(state: &AppState, secret: &str) -> String {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        signed_cookie_value(&state.cookie_key, secret),
        state.settings.session_ttl.as_secs()
    )
}

/// The `Set-Cookie` value that clears the session cookie.
pub fn clear_session_cookie(state: &AppState) -> String {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}")
}

/// Opens a session for a member; returns the cookie secret (shown to the browser only).
pub async fn open_session(
    state: &AppState,
    tenant: TenantId,
    user: UserId,
    ip: Option<IpAddr>,
    user_agent: Option<&str>,
) -> Result<String> {
    let secret = portcullis_core::token::random_secret("pcs_");
    let csrf = portcullis_core::token::random_base32(32);
    let ttl = chrono::Duration::from_std(state.settings.session_ttl)
        .map_err(|e| Error::internal(anyhow::anyhow!("session ttl: {e}")))?;
    sqlx::query(
        "INSERT INTO sessions (id, tenant_id, user_id, token_hash, csrf_token, expires_at, ip, user_agent)
         VALUES ($1, $2, $3, $4, $5, now() + $6, $7, $8)",
    )
    .bind(Uuid::now_v7())
    .bind(tenant.0)
    .bind(user.0)
    .bind(TokenHash::of(&secret).as_bytes())
    .bind(csrf)
    .bind(ttl)
    .bind(ip.map(|ip| ip.to_string()))
    .bind(user_agent.map(|ua| ua.chars().take(300).collect::<String>()))
    .execute(state.db())
    .await?;
    Ok(secret)
}

/// Ends a session for good: the cookie stops working even if someone kept a copy.
pub async fn revoke_session(state: &AppState, tenant: TenantId, session: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE sessions SET revoked_at = now() WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL",
    )
    .bind(session)
    .bind(tenant.0)
    .execute(state.db())
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_by_power() {
        assert!(Role::Admin > Role::PolicyManager);
        assert!(Role::PolicyManager > Role::Viewer);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn cookies_verify_only_with_their_signature() {
        let key = b"0123456789abcdef0123456789abcdef";
        let value = signed_cookie_value(key, "pcs_secret");
        assert_eq!(verify_cookie(key, &value).as_deref(), Some("pcs_secret"));
        assert_eq!(
            verify_cookie(b"another key of 32 characters....", &value),
            None
        );
        assert_eq!(verify_cookie(key, "pcs_secret.forged"), None);
        assert_eq!(verify_cookie(key, "pcs_secret"), None);
    }
}
